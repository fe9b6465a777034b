"""Launch configurations: tuned (user cache, then the shipped ``autotune_cache/``) or the
documented heuristic default.

:func:`choose` runs on every kernel launch. It never tunes: it looks the kernel up, memoized
in-process, in the user cache (``$TRITP_CACHE_DIR/autotune``, else the platform cache dir),
then in the cache shipped with tritp (``tritp.autotune_cache``), and falls back to
:func:`heuristic`. Tuning happens only when asked: ``tritp autotune`` or
``TensorProduct.autotune()`` (see :mod:`tritp.tuning.tuner`); the cache format and key are
described in :mod:`tritp.tuning.cache`, the search spaces in :mod:`tritp.tuning.space`.

Example:
    >>> from tritp.tuning import Config, heuristic
    >>> heuristic(n_rows=100_000, interpreted=False)
    Config(block_z=16, block_c=64, num_warps=4, num_stages=1, impl='sparse')
"""

from __future__ import annotations

from typing import NamedTuple

#: Cache-lookup results by (problem, spec, dtype, bucket, GPU, generator, folders), and the launch
#: recipes built on them (keys starting "recipe", :func:`tritp.kernels.recipe`): cleared together.
_memo: dict = {}


class Config(NamedTuple):
    """One launch configuration of a producer kernel.

    ``block_c`` (channel lanes) is baked into the generated source; ``block_z`` (batch rows per
    program), ``num_warps`` and ``num_stages`` are launch parameters. ``impl`` names the
    implementation where a family has several (Gaunt: ``sparse``, ``fft``, ``grid``, ``separable``); the
    sparse-CG kernels have one, ``"sparse"``.

    Example:
        >>> Config(block_z=64)._replace(num_warps=8)
        Config(block_z=64, block_c=64, num_warps=8, num_stages=1, impl='sparse')
    """

    block_z: int = 32
    block_c: int = 64
    num_warps: int = 4
    num_stages: int = 1
    impl: str = "sparse"


def check_config(config) -> Config:
    """``config`` as a :class:`Config` if it can launch; ValueError naming the bad field else
    (positive ints; ``block_z``, ``block_c`` and ``num_warps`` powers of two, as ``tl.arange``
    and Triton require).

    Example:
        >>> check_config(Config(block_z=3))
        Traceback (most recent call last):
        ...
        ValueError: config: block_z must be a power of two, got 3
    """
    if not isinstance(config, Config):
        raise TypeError(f"config: expected a tritp.tuning.Config, got {type(config).__name__}")
    for field in Config._fields[:4]:
        v = getattr(config, field)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"config: {field} must be a positive int, got {v!r}")
        if field != "num_stages" and v & (v - 1):
            raise ValueError(f"config: {field} must be a power of two, got {v}")
    return config


#: The GPU defaults the heuristic tries, in order, for a kernel of known structure:
#: (block_c, num_warps) with 8, 4, 2 and 1 tile elements per thread at 16 rows.
GPU_LADDER = ((64, 4), (64, 8), (32, 8), (16, 8))
#: The ladder of kernels with coalesced mul_ir tiles, as ``(block_z, block_c, num_warps)``: their
#: 3D tiles cost registers per row, so rows go before lanes (8:64:8 before 16:32:8: on an H200
#: the 3D form moved more bytes per second at 64 and 128 lanes than at 32).
GPU_LADDER_3D = ((16, 64, 4), (16, 64, 8), (8, 64, 8), (8, 32, 8), (8, 16, 8))
#: Heuristic configs by (problem key, spec, dtype): the estimate walks the problem once.
_heuristic_memo: dict = {}


def heuristic(n_rows: int, interpreted: bool, problem=None, spec=None, dtype: str = "float32",
              share: bool | None = None, coalesce: bool | None = None, walk: bool = False) -> Config:
    """The default when nothing is tuned.

    On a GPU: ``block_z=16`` batch rows per program, ``num_stages=1``, and the first
    ``(block_c, num_warps)`` of :data:`GPU_LADDER` -- ``(64, 4)``, ``(64, 8)``, ``(32, 8)``,
    ``(16, 8)``: 8, 4, 2, 1 tile elements per thread -- whose register estimate
    (:func:`tritp.tuning.registers.estimate_registers`: 40 + (tiles alive at once + a quarter
    per segment of the kernel's piece) x elements per thread, x2 in float64) is at most
    :data:`~tritp.tuning.registers.REGISTER_BUDGET` (200); the last rung when none is. A
    segment narrower than ``block_c`` uses the next power of two of its multiplicity; kernels
    with ``tl.dot`` raise ``block_z`` to their ``MIN_BLOCK_Z`` (16). Calibrated against ptxas
    for sm_90 offline (``benchmarks/ptxas_audit.py``): 32 rows spilled on every design preset;
    at 16 rows the fixed ``(64, 4)`` spilled in the grad-x1 kernels of mace-large (760 bytes),
    sevennet-l2 (208) and nequip-benzene (8228), which the ladder runs at ``(32, 8)``,
    ``(64, 8)`` and ``(32, 8)``: 236, 181 and 180 registers, no spill; no forward, grad-x1 or
    grad-w kernel of the presets spills at its default. ``share`` says whether the kernel shares
    channel loops (default: :func:`tritp.kernels.share_loads`), and ``walk`` whether it keeps
    node accumulators across an edge walk (the fused convolution's segment mode), which the
    estimate counts. A ``mul_ir`` kernel with coalesced 3D tiles (``coalesce``: the tile form,
    default :func:`tritp.kernel_forms.tile_form`; a bool means the default form or strided
    tiles) walks :data:`GPU_LADDER_3D` instead
    -- ``16:64:4``, ``16:64:8``, ``8:64:8``, ``8:32:8``, ``8:16:8`` -- under the estimate that
    counts its 3D tiles (offline, sm_90: mace-large's forward, grad x1 and grad w at ``8:64:8``
    164, 128 and 158 registers, no spill; at ``16:64:8`` the forward spilled). Without ``problem`` and ``spec``
    (kernels outside the sparse-CG family): ``Config(block_z=16)``, i.e. ``(64, 4)``.
    Deterministic, compiles nothing, and memoized per (problem, spec, dtype).

    Under the Triton interpreter, whose cost is per program launched, as few programs as
    possible: ``block_z`` = the batch rounded up to a power of two, at most 128, one warp.

    Example:
        >>> heuristic(10, interpreted=True).block_z
        16
        >>> from tritp.codegen import Problem
        >>> from tritp.codegen.cg_spec import compact, forward_spec
        >>> p = Problem.channelwise("128x0e+128x1o+128x2e", "0e+1o+2e+3o", "0e+1o+2e+3o")  # mace-large
        >>> heuristic(50_000, False, p, forward_spec(), "float32", share=False, coalesce=False)  # 158
        Config(block_z=16, block_c=64, num_warps=4, num_stages=1, impl='sparse')
        >>> heuristic(50_000, False, p, forward_spec(), "float32", share=True, coalesce=False).num_warps  # 218
        8
        >>> heuristic(50_000, False, p, compact(forward_spec().derivative(0))[0], coalesce=False).block_c
        32
        >>> heuristic(50_000, False, p, forward_spec(), "float32", coalesce=True)  # 3D tiles
        Config(block_z=8, block_c=64, num_warps=8, num_stages=1, impl='sparse')
    """
    if interpreted:
        rows = 1
        while rows < min(max(n_rows, 1), 128):
            rows *= 2
        return Config(block_z=rows, block_c=64, num_warps=1, num_stages=1)
    if problem is None or spec is None:
        return Config(block_z=16)
    from ..kernel_forms import share_loads
    from .registers import tile_form3d

    share = share_loads() if share is None else share
    coalesce = tile_form3d(coalesce)
    key = (problem.key, spec, dtype, share, coalesce, walk)
    found = _heuristic_memo.get(key)
    if found is None:
        from .registers import REGISTER_BUDGET, estimate_registers, groups

        gs = groups(problem, spec)
        ladder = [(16, c, w) for c, w in GPU_LADDER]
        if coalesce != "strided" and any(g.dp3d for g in gs):
            # a tl.dot kernel launches at least 16 rows (MIN_BLOCK_Z) whatever its config says
            ladder = [r for r in GPU_LADDER_3D if r[0] >= 16 or all(g.min_bc == 1 for g in gs)]
        for block_z, block_c, num_warps in ladder:
            found = Config(block_z=block_z, block_c=block_c, num_warps=num_warps, num_stages=1)
            if estimate_registers(problem, spec, dtype, found, share=share, coalesce=coalesce,
                                  walk=walk) <= REGISTER_BUDGET:
                break
        _heuristic_memo[key] = found
    return found


#: Rows assumed for a symbolic batch size without a hint (unbacked SymInt).
UNKNOWN_ROWS = 4096


def rows_hint(n_rows) -> int:
    """``n_rows`` as a plain int, without guarding on it: a SymInt (a dynamic batch under
    ``torch.compile``) gives its trace-time hint, so choosing a config never specializes the
    graph on the batch size (the traced graph keeps the config of the traced batch).

    Example:
        >>> rows_hint(1000)
        1000
    """
    if type(n_rows) is int:
        return n_rows
    hint = getattr(getattr(n_rows, "node", None), "hint", None)
    if hint is not None:
        return int(hint)
    try:
        return int(n_rows)  # a numpy or other plain integer
    except Exception:  # unbacked symbol: no value to go by
        return UNKNOWN_ROWS


def clear_memo() -> None:
    """Forget every memoized lookup (after writing or removing cache files by hand)."""
    _memo.clear()
    _heuristic_memo.clear()
    import sys

    cache = sys.modules.get(f"{__name__}.cache")
    if cache is not None:
        cache.shipped_entries.cache_clear()


def lookup(problem, spec, dtype: str, n_rows: int, device, interpreted: bool, family: str = "cg"):
    """The tuned entry for this launch as ``(Config, where)`` (``where`` is ``"user"`` or
    ``"shipped"``), or ``None``; memoized, so a second call costs one dict lookup."""
    from . import cache

    n_rows = rows_hint(n_rows)
    gpu = cache.gpu_name(device, interpreted)
    b = cache.bucket(n_rows)
    mk = (family, problem.key, spec, dtype, b, gpu, cache.identity_salt(), str(cache.user_dir()),
          str(cache.shipped_dir()))
    try:
        return _memo[mk]
    except KeyError:
        pass
    key = cache.make_key(problem, spec, dtype, n_rows, gpu, family)
    found = cache.find(key)
    _memo[mk] = found
    return found


def choose(problem, spec, dtype: str, n_rows: int, device, interpreted: bool) -> Config:
    """The configuration to launch with: a tuned entry if one matches, else the heuristic.

    Example:
        >>> import torch
        >>> from tritp.codegen import Problem
        >>> from tritp.codegen.cg_spec import forward_spec
        >>> p = Problem.channelwise("8x0e", "0e", "0e")
        >>> choose(p, forward_spec(), "float32", 10, torch.device("cpu"), True).block_z  # untuned
        16
    """
    n_rows = rows_hint(n_rows)
    found = lookup(problem, spec, dtype, n_rows, device, interpreted)
    if found is not None:
        return found[0]
    return heuristic(n_rows, interpreted, problem, spec, dtype)


def __getattr__(name):  # tritp.tuning.tune etc. without importing torch-heavy code up front
    if name in ("tune", "tune_problem", "TuneResult", "direction_specs"):
        from . import tuner

        return getattr(tuner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
