"""Tuning the Gaunt product's implementation choice: the ``"gaunt"`` autotune family.

The three implementations (``sparse``, ``grid``, ``fft``) compute one function, so the tuned
knob is which one runs: the family's search space is one :class:`~tritp.tuning.Config` per
implementation (its ``impl`` field; the other fields stay at their defaults, as each
implementation keeps its own launch heuristics). :func:`tune_gaunt` builds the product once per
implementation, times each, and stores the fastest in the user autotune cache under the key
:func:`tritp.gaunt.choose_implementation` looks up, so ``implementation="auto"`` picks it from
then on (in this process too: storing forgets memoized lookups). Modules built before keep
their implementation; compile again.

**Key.** Family ``"gaunt"``; problem: the product at ``implementation="grid"`` and the exact
grid (one name for all three); direction: the forward producer ``"out:x1,x2"`` whatever was
timed (the choice is per module, not per kernel); dtype; batch bucket; GPU and Triton version.
The source identity hashes the Gaunt generator (:func:`tritp.gaunt_kernels.generator_hash`),
the CG generator the sparse implementation runs (:func:`tritp.kernels.generator_hash`), the
problem key, the spec and the dtype: editing either generator makes old entries stale (never
found). ``compile_gaunt(..., implementation="auto")`` asks for float32 at batch
:data:`~tritp.gaunt.AUTO_BATCH` (10,000, bucket 16384), so tune at a batch in that bucket for
``auto`` to see it (the default of :func:`tune_gaunt` and ``GauntProduct.autotune``).

Registering the family (on ``import tritp.gaunt``) compiles nothing and touches no GPU.

Example:
    >>> from tritp.codegen.gaunt_problem import GauntProblem
    >>> from tritp.tuning.space import space_for
    >>> p = GauntProblem("8x0e+8x1o", "0e+1o", lmax_out=2)
    >>> [c.impl for c in space_for("gaunt", p, "out:x1,x2", "float32", 16384).candidates]
    ['sparse', 'fft', 'grid']
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

from .codegen.diskcache import content_hash
from .codegen.gaunt_problem import FORWARD, IMPLEMENTATIONS, GauntProblem, size_rule
from .tuning import Config
from .tuning.space import SearchSpace, register_family

FAMILY = "gaunt"
DIRECTIONS = ("fwd", "bwd", "dbl")
DEFAULT_BATCH = 10_000  # = tritp.gaunt.AUTO_BATCH (not imported: tritp.gaunt imports this module)


def gaunt_identity(problem, spec, dtype: str) -> str:
    """Source identity of a Gaunt product for the cache key: the Gaunt generator's hash, the
    CG generator's (the sparse implementation), the problem key, the spec and the dtype.

    Example:
        >>> from tritp.codegen.gaunt_problem import GauntProblem
        >>> len(gaunt_identity(GauntProblem("4x0e", "0e"), "out:x1,x2", "float32"))
        20
    """
    from . import gaunt_kernels, kernels

    return content_hash("gaunt", gaunt_kernels.generator_hash(), kernels.generator_hash(), problem.key, str(spec),
                        dtype)


@register_family(FAMILY, identity=gaunt_identity)
def gaunt_space(problem, spec, dtype: str, batch: int) -> SearchSpace:
    """One candidate per implementation (``Config(impl=...)``, other knobs at their defaults).

    Example:
        >>> len(gaunt_space(None, "out:x1,x2", "float32", 1))
        3
    """
    return SearchSpace(FAMILY, tuple(Config(impl=i) for i in IMPLEMENTATIONS))


def neutral_problem(problem: GauntProblem) -> GauntProblem:
    """The implementation-neutral name of a product in the cache: ``implementation="grid"``,
    exact grid (what :func:`tritp.gaunt.choose_implementation` looks up).

    Example:
        >>> neutral_problem(GauntProblem("4x0e+4x1o", "0e", implementation="fft")).implementation
        'grid'
    """
    return problem.replace(implementation="grid", grid=None)


class GauntLaunch:
    """One timed step of one implementation: ``GauntLaunch(...)()`` runs the forward and the
    requested derivatives. Carries ``config`` (``Config(impl=...)``), ``problem`` (the
    product at that implementation), ``spec``, ``batch`` and ``directions``, so a fake or
    model-based timer can score it without running it."""

    def __init__(self, module, problem, batch: int, directions: tuple, tensors: tuple):
        self.module, self.problem, self.batch, self.directions = module, problem, batch, directions
        self.config, self.spec, self.tensors = Config(impl=problem.implementation), FORWARD, tensors

    def __call__(self):
        import torch

        x1, x2, gy, v1, v2 = self.tensors
        y = self.module(x1, x2)
        if "bwd" not in self.directions and "dbl" not in self.directions:
            return y
        dbl = "dbl" in self.directions
        g = torch.autograd.grad(y, (x1, x2), gy, create_graph=dbl)
        if not dbl:
            return g
        return torch.autograd.grad(g, (x1, x2, gy), (v1, v2), allow_unused=True)


class GauntTuneResult(NamedTuple):
    """The outcome of :func:`tune_gaunt`: ``config.impl`` won in ``ms``; ``default`` is the
    size rule's choice; ``times`` maps each implementation to its ms (``inf``: it failed,
    ``errors`` says why); ``entry`` is what the cache stores."""

    label: str
    directions: tuple
    batch: int
    config: Config
    ms: float
    default: Config
    default_ms: float
    times: dict
    errors: dict
    entry: dict

    @property
    def implementation(self) -> str:
        return self.config.impl

    @property
    def speedup(self) -> float:
        """The size rule's time over the tuned time (1.0 when the size rule won)."""
        return self.default_ms / self.ms if self.ms > 0 and math.isfinite(self.default_ms) else float("nan")


def _check_directions(directions) -> tuple:
    directions = (directions,) if isinstance(directions, str) else tuple(directions)
    bad = [d for d in directions if d not in DIRECTIONS]
    if bad or not directions:
        raise ValueError(f"unknown direction {bad[0] if bad else None!r}; expected some of {', '.join(DIRECTIONS)}")
    return directions


def _finite(ms):
    return round(ms, 6) if math.isfinite(ms) else None


def tune_gaunt(problem: GauntProblem, batch: int = DEFAULT_BATCH, *, directions=("fwd",), dtype="float32",
               device=None, timer: Optional[Callable] = None, store: bool = True, weights=(), label: str = "",
               progress=None) -> GauntTuneResult:
    """Time ``sparse``, ``fft`` and ``grid`` on ``batch`` random samples, keep the fastest and
    (``store``) write it to the user autotune cache, where ``implementation="auto"`` finds it.

    ``directions``: what one timed step runs: ``("fwd",)`` the forward; with ``"bwd"`` also the
    gradients of both inputs; with ``"dbl"`` also the double backward (the forward always
    runs). ``dtype``: ``"float32"`` (what ``auto`` asks for) or ``"float64"``. ``timer`` maps a
    :class:`GauntLaunch` thunk to milliseconds (default: ``do_bench`` median on CUDA, wall clock
    under the Triton interpreter; without either, RuntimeError). ``weights``: the weight roles
    of the module whose kernels are timed (``GauntProduct.autotune`` passes its own).
    ``progress(done, total, config, ms)`` is called after each implementation. A failing
    implementation counts as infinitely slow; a generator ``CompilationError`` is raised.
    The size rule's choice is timed first and wins ties.

    Example:
        >>> from tritp.codegen.gaunt_problem import GauntProblem
        >>> p = GauntProblem("8x0e+8x1o", "0e+1o", lmax_out=2)
        >>> r = tune_gaunt(p, 10_000, timer=lambda t: {"fft": 1.0}.get(t.config.impl, 2.0))  # doctest: +SKIP
        >>> import tritp
        >>> gp = tritp.compile("8x0e+8x1o", "0e+1o", lmax_out=2, mode="gaunt")  # doctest: +SKIP
        >>> r.implementation, gp.implementation  # doctest: +SKIP
        ('fft', 'fft')
    """
    import torch

    from .gaunt import GauntProduct
    from .kernels import interpreter_active
    from .tuning import clear_memo
    from .tuning.cache import SCHEMA, gpu_name, make_key, store as store_entry
    from .tuning.tuner import DTYPES, cuda_timer, default_device, wallclock_timer

    directions = _check_directions(directions)
    dtype = str(dtype).replace("torch.", "")
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    batch = int(batch)
    if batch < 1:
        raise ValueError(f"batch must be positive, got {batch}")
    device = torch.device(device) if device is not None else default_device()
    interpreted = device.type != "cuda" or interpreter_active()  # as choose_implementation looks it up
    if device.type != "cuda" and not interpreter_active():
        if not torch.cuda.is_available():
            default_device()  # raises the tuner's error: neither a CUDA GPU nor the interpreter
        raise RuntimeError(f"tune_gaunt: device {device} runs no Triton kernel; use a CUDA device, or set "
                           "TRITON_INTERPRET=1 to tune the interpreter on CPU (for testing only)")
    timer = timer or (wallclock_timer() if interpreted else cuda_timer())
    neutral = neutral_problem(problem)
    rule = size_rule(neutral)
    order = [rule] + [i for i in IMPLEMENTATIONS if i != rule]

    g = torch.Generator().manual_seed(0)
    dt = DTYPES[dtype]
    d1, d2, do = (neutral.irreps(r).dim for r in ("x1", "x2", "out"))
    grad = "bwd" in directions or "dbl" in directions
    x1, x2, gy = (torch.randn(batch, d, generator=g, dtype=dt).to(device) for d in (d1, d2, do))
    v1, v2 = (torch.randn(batch, d, generator=g, dtype=dt).to(device) for d in (d1, d2))
    for t in (x1, x2):
        t.requires_grad_(grad)
    gy.requires_grad_("dbl" in directions)

    times, errors = {}, {}
    for impl in order:
        p = neutral.replace(implementation=impl)
        module = GauntProduct(p, weights=weights, backend="triton").to(device)
        try:
            ms = float(timer(GauntLaunch(module, p, batch, directions, (x1, x2, gy, v1, v2))))
        except Exception as e:
            if type(e).__name__ == "CompilationError":
                raise  # a generator bug, not a slow implementation: never hide it in the search
            ms, errors[impl] = math.inf, f"{type(e).__name__}: {e}"
        times[impl] = ms if ms == ms else math.inf
        if progress is not None:
            progress(len(times), len(order), Config(impl=impl), times[impl])
    best = min(order, key=lambda i: (times[i], order.index(i)))
    if not math.isfinite(times[best]):
        raise RuntimeError(f"every Gaunt implementation failed for {neutral!r}; first error: "
                           f"{next(iter(errors.values()))}")
    config, default = Config(impl=best), Config(impl=rule)
    key = make_key(neutral, FORWARD, dtype, batch, gpu_name(device, interpreted), FAMILY)
    label = label or f"{neutral.irreps_in1} x {neutral.irreps_in2} -> {neutral.irreps_out} (gaunt)"
    entry = {"schema": SCHEMA, "key": key, "config": config._asdict(), "ms": _finite(times[best]),
             "default": default._asdict(), "default_ms": _finite(times[rule]), "timed": len(times),
             "space": len(order), "failed": len(errors), "strategy": "full", "label": label,
             "spec_tag": "gaunt " + "+".join(directions), "problem": repr(neutral),
             "problem_hash": content_hash(neutral.key), "tuned_batch": batch, "directions": list(directions),
             "weights": list(weights), "times": {i: _finite(times[i]) for i in order}, "errors": errors}
    if store:
        store_entry(entry)
        clear_memo()  # store() forgets memoized lookups; also drop the shipped-file cache
    return GauntTuneResult(label, directions, batch, config, times[best], default, times[rule], times, errors, entry)


__all__ = ["tune_gaunt", "GauntTuneResult", "GauntLaunch", "gaunt_space", "gaunt_identity", "neutral_problem",
           "FAMILY", "DEFAULT_BATCH"]
