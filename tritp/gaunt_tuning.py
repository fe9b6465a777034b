"""Tuning the Gaunt product: which implementation runs, and how grid, fft and separable launch.

**Space** (family ``"gaunt"``, :func:`gaunt_space`). ``sparse`` is one candidate,
``Config(impl="sparse")``: the CG kernels it runs look up their own tuned configs. ``fft``,
``grid`` and ``separable`` are one candidate per launch of
:func:`tritp.gaunt_kernels.launch_candidates` (the GPU ladder's distinct rungs, the
register-aware default first; 4-6 each), the launch encoded as ``Config(block_z=BLOCK_R,
block_c=BLOCK_P, num_warps=num_warps, num_stages=1, impl=...)``: ``block_z`` the rows per
program, ``block_c`` the point tile, or for separable the walks over the nodes
(:func:`launch_of` reads it back).
:data:`VERSION` (2; 1 tuned the implementation only) is part of the space hash: entries tuned
over another space are stale. :func:`tune_gaunt` builds the product per candidate, times each
and stores two kinds of entries in the user autotune cache (storing forgets memoized lookups).

**Keys.** Both: the forward producer ``"out:x1,x2"`` whatever was timed (the choice is per
module, not per kernel), dtype, batch bucket, GPU and Triton version; the source identity
hashes the Gaunt generator (:func:`tritp.gaunt_kernels.generator_hash`), the CG generator the
sparse implementation runs (:func:`tritp.kernels.generator_hash`), the problem key, the spec
and the dtype: editing either generator makes old entries stale (never found).

* *choice*, family ``"gaunt"``, problem: the product at ``implementation="grid"`` and the
  exact grid (one name for all four, :func:`neutral_problem`): the overall winner, its
  implementation and launch. :func:`tritp.gaunt.choose_implementation` reads its ``impl``;
* *launch*, family ``"gaunt-launch"`` (:data:`LAUNCH_FAMILY`), problem: the product at ``grid``,
  ``fft`` or ``separable`` (exact grid): that implementation's fastest launch, one entry each, so a module
  built with an explicit ``implementation="grid"`` gets a tuned launch even when fft won.

A grid/fft/separable :class:`~tritp.gaunt.GauntProduct` launches, per dtype, with :func:`tuned_launch`:
the choice entry's launch when it chose this implementation, else the launch entry, else
:func:`~tritp.gaunt_kernels.launch_shape`'s default. Like the implementation it is looked up
when the module is built (modules built before keep theirs: compile again), for batch
:data:`~tritp.gaunt.AUTO_BATCH` (10,000, bucket 16384), so tune at a batch in that bucket (the
default of :func:`tune_gaunt` and ``GauntProduct.autotune``). ``compile_gaunt(...,
implementation="auto")`` asks for float32; the float64 launch comes from float64 entries.
Under the Triton interpreter the GPU name is ``"cpu-interpreter"``: interpreter-tuned entries
apply there only, and untuned modules keep the interpreter's own default launch.

Registering the families (on ``import tritp.gaunt``) compiles nothing and touches no GPU.

Example:
    >>> from tritp.codegen.gaunt_problem import GauntProblem
    >>> from tritp.tuning.space import space_for
    >>> p = GauntProblem("8x0e+8x1o", "0e+1o", lmax_out=2)
    >>> [label(c) for c in space_for("gaunt", p, "out:x1,x2", "float32", 16384).candidates][:3]
    ['sparse', 'fft 64:4:32', 'fft 64:8:32']
"""

from __future__ import annotations

from .codegen.diskcache import content_hash
from .codegen.gaunt_problem import FORWARD, IMPLEMENTATIONS, GauntProblem
from .tuning import Config
from .tuning.space import SearchSpace, register_family

FAMILY = "gaunt"
LAUNCH_FAMILY = "gaunt-launch"
VERSION = 2  # of both spaces; 1: one candidate per implementation
LAUNCHED = ("fft", "grid", "separable")  # the implementations whose launch is tuned here
DEFAULT_BATCH = 10_000  # = tritp.gaunt.AUTO_BATCH (not imported: tritp.gaunt imports this module)


def gaunt_identity(problem, spec, dtype: str) -> str:
    """Source identity of a Gaunt product for the cache key: the Gaunt generator's hash, the
    CG generator's (the sparse implementation), the problem key, the spec and the dtype.

    Example:
        >>> from tritp.codegen.gaunt_problem import GauntProblem
        >>> len(gaunt_identity(GauntProblem("4x0e", "0e"), "out:x1,x2", "float32"))
        20
    """
    from . import gaunt_kernels
    from .tuning.cache import identity_salt  # the CG generator's, for the sparse implementation

    return content_hash("gaunt", gaunt_kernels.generator_hash(), identity_salt(), problem.key, str(spec), dtype)


def launch_of(config: Config) -> tuple:
    """The ``(BLOCK_R, num_warps, BLOCK_P)`` a grid/fft candidate encodes (separable:
    ``(BLOCK_R, num_warps, passes)``).

    Example:
        >>> launch_of(Config(block_z=64, block_c=32, num_warps=8, impl="grid"))
        (64, 8, 32)
    """
    return config.block_z, config.num_warps, config.block_c


def label(config: Config) -> str:
    """``"sparse"``, or ``"grid 64:8:32"`` (``impl BLOCK_R:num_warps:BLOCK_P``).

    Example:
        >>> label(Config(block_z=16, block_c=16, num_warps=4, impl="fft"))
        'fft 16:4:16'
    """
    return config.impl if config.impl not in LAUNCHED else f"{config.impl} " + ":".join(map(str, launch_of(config)))


def impl_configs(problem: GauntProblem, impl: str, dtype: str = "float32") -> tuple:
    """The candidates of one implementation of ``problem`` (any implementation), default first.

    Example:
        >>> impl_configs(GauntProblem("4x0e", "0e"), "sparse")
        (Config(block_z=32, block_c=64, num_warps=4, num_stages=1, impl='sparse'),)
    """
    if impl not in LAUNCHED:
        return (Config(impl=impl),)
    from .gaunt_kernels import launch_candidates

    return tuple(Config(block_z=b, block_c=bp, num_warps=w, num_stages=1, impl=impl)
                 for b, w, bp in launch_candidates(problem.replace(implementation=impl), dtype))


@register_family(FAMILY, identity=gaunt_identity)
def gaunt_space(problem, spec, dtype: str, batch: int) -> SearchSpace:
    """Every implementation's candidates (:func:`impl_configs`), in ``IMPLEMENTATIONS`` order.

    Example:
        >>> len(gaunt_space(GauntProblem("8x0e+8x1o", "0e+1o", lmax_out=2), "out:x1,x2", "float32", 1))
        15
    """
    return SearchSpace(FAMILY, tuple(c for i in IMPLEMENTATIONS for c in impl_configs(problem, i, dtype)), VERSION)


@register_family(LAUNCH_FAMILY, identity=gaunt_identity)
def launch_space(problem, spec, dtype: str, batch: int) -> SearchSpace:
    """The launches of ``problem``'s own implementation (grid, fft or separable).

    Example:
        >>> len(launch_space(GauntProblem("8x0e+8x1o", "0e+1o", lmax_out=2), "out:x1,x2", "float32", 1))
        4
    """
    return SearchSpace(LAUNCH_FAMILY, impl_configs(problem, problem.implementation, dtype), VERSION)


def neutral_problem(problem: GauntProblem) -> GauntProblem:
    """The implementation-neutral name of a product in the cache: ``implementation="grid"``,
    exact grid (what :func:`tritp.gaunt.choose_implementation` looks up).

    Example:
        >>> neutral_problem(GauntProblem("4x0e+4x1o", "0e", implementation="fft")).implementation
        'grid'
    """
    return problem.replace(implementation="grid", grid=None)


def _lookup(problem, family: str, dtype: str, batch: int, device):
    import torch

    from .kernels import interpreter_active
    from .tuning import lookup

    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    found = lookup(problem, FORWARD, dtype, batch, device, interpreter_active(), family=family)
    return found[0] if found is not None and found[0].impl in IMPLEMENTATIONS else None


def tuned_choice(problem: GauntProblem, dtype: str = "float32", batch: int = DEFAULT_BATCH, device=None):
    """The stored winner (``Config``: ``impl`` and, for grid/fft/separable, the launch) of ``problem``
    under any implementation, or None; on ``device`` (default: CUDA if any, else CPU) or the
    interpreter when it is active.

    Example:
        >>> tuned_choice(GauntProblem("4x0e", "0e"), batch=3) is None  # doctest: +SKIP
        True
    """
    return _lookup(neutral_problem(problem), FAMILY, dtype, batch, device)


def tuned_launch(problem: GauntProblem, dtype: str = "float32", batch: int = DEFAULT_BATCH, device=None):
    """``(BLOCK_R, num_warps, BLOCK_P)`` tuned for ``problem`` at its implementation (grid, fft;
    separable: ``passes`` for ``BLOCK_P``), or None (then :func:`~tritp.gaunt_kernels.launch_shape` decides): the choice entry's
    launch if it chose this implementation, else its launch entry. None for ``sparse`` and for
    a non-exact ``grid`` override (tuned at the exact grid only).

    Example:
        >>> tuned_launch(GauntProblem("4x0e", "0e", implementation="sparse")) is None
        True
    """
    if problem.implementation not in LAUNCHED or problem.grid is not None:
        return None
    from .gaunt_kernels import check_launch
    from .tuning.cache import warn_once

    for cfg in (tuned_choice(problem, dtype, batch, device), _lookup(problem, LAUNCH_FAMILY, dtype, batch, device)):
        if cfg is not None and cfg.impl == problem.implementation:
            try:
                return check_launch(launch_of(cfg), problem.implementation)
            except ValueError as e:  # a hand-edited or foreign entry: report it, use the default
                warn_once(f"gaunt launch {problem!r} {dtype}", str(e))
    return None


def __getattr__(name):  # the timing half lives in gaunt_tuner, which imports this module
    if name in ("GauntLaunch", "GauntTuneResult", "tune_gaunt"):
        from . import gaunt_tuner

        return getattr(gaunt_tuner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["tune_gaunt", "tuned_choice", "tuned_launch", "GauntTuneResult", "GauntLaunch", "gaunt_space",
           "launch_space", "impl_configs", "launch_of", "label", "gaunt_identity", "neutral_problem", "FAMILY",
           "LAUNCH_FAMILY", "VERSION", "DEFAULT_BATCH"]
