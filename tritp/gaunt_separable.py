"""Load and launch the separable Gaunt kernels (:mod:`tritp.codegen.gaunt_sep`).

A launch is ``(BLOCK_R, num_warps, passes)``: rows per program, warps, and the walks over the
polar nodes (the target's coefficients split into that many groups, see the generator). One
thread holds one row, so the ladder keeps ``BLOCK_R = 32 * num_warps``; ``passes`` is chosen
per producer from a register estimate unless a launch fixes it.

Example:
    >>> from tritp.codegen.gaunt_problem import GauntProblem
    >>> ls = "+".join(f"32x{l}{'eo'[l % 2]}" for l in range(9))
    >>> p = GauntProblem(ls, ls, lmax_out=8, implementation="separable")
    >>> launch_candidates(p)[0]  # L = 8: the target in three walks keeps the estimate in budget
    (128, 4, 3)
"""

from __future__ import annotations

from functools import lru_cache

from .codegen.gaunt_emit import channel_block, reduces_channels
from .codegen.gaunt_problem import ROLES, GauntProblem, parse_spec
from .codegen.gaunt_sep import KERNEL_NAME, MAX_PASSES, emit_separable_producer
from .codegen.gaunt_sep_layout import target_groups
from .kernels import interpreter_active

#: ``(BLOCK_R, num_warps)`` the tuner times, the default first: one row per thread
LADDER = ((128, 4), (64, 2), (256, 8), (32, 1))
#: The largest :func:`estimate_registers` the default's ``passes`` may give. ptxas (sm_90,
#: ``benchmarks/gaunt_ptxas.py --impl separable``, C = 32, forward) takes all 255 registers from
#: L = 6 and spills, in bytes on Triton 3.6 / 3.9: L = 6 0 / 8 (estimate 197; paired, as it runs,
#: 223: 0 / 0); L = 7 in one pass (246) 36 / 88; L = 8 in three (247) 12 / 56, in two (261)
#: - / 136. Those small spills are loop-invariant operands, 10-30 local loads and stores a node
#: in SASS against 500-1,000 FMAs, while one more pass costs a synthesis (L = 7: 97 FMAs and 32
#: quad loads more a node), so the budget admits them; the tuner also times one pass fewer, one
#: more, and one. fp64 holds a value in two registers: from L = 6 no pass count fits (588 bytes
#: of spill at L = 6, four passes), which the tuner weighs against the grid's fp64 (DMMA) kernels.
REGISTER_BUDGET = 250


def get_separable_kernel(problem: GauntProblem, spec: str, dtype: str, passes: int):
    """The jitted kernel of producer ``spec`` in ``passes`` walks (paired where
    :func:`use_pairs` says so), generated and cached on first use."""
    from .gaunt_kernels import load_kernel

    passes = len(target_groups(problem, parse_spec(spec)[0], passes))  # more walks than m values: the same kernel
    return load_kernel(problem, spec, dtype, (passes, use_pairs(problem, spec, dtype, passes)), _emit, KERNEL_NAME)


def _emit(problem: GauntProblem, spec: str, dtype: str, option: tuple) -> str:
    passes, pairs = option
    return emit_separable_producer(problem, spec, dtype, passes, pairs=pairs)


def use_pairs(problem: GauntProblem, spec: str, dtype: str, passes: int) -> bool:
    """Whether mirror nodes share a step (half the table reads, syntheses and projections; the
    two nodes' syntheses live at once): in fp32 where the estimate stays within
    :data:`REGISTER_BUDGET` at these passes (to L = 6 at C channels in and out). Not in fp64:
    at L = 4 the paired kernel spills 12 bytes where the single-node one does not, and its
    gain was counted in fp32 only."""
    return dtype == "float32" and estimate_registers(problem, spec, dtype, passes, pairs=True) <= REGISTER_BUDGET


def _active(problem: GauntProblem, role: str) -> int:
    return sum(2 * l + 1 for l in problem.active(role))


@lru_cache(maxsize=4096)  # pure, and asked on every launch
def estimate_registers(problem: GauntProblem, spec: str, dtype: str, passes: int, pairs: bool = False) -> int:
    """Registers per thread, roughly: ``24 + words * (K_a + K_b + ceil(K_t / passes) + 2 M)``
    -- both operands and one group of accumulators live across the walk, plus the two
    syntheses' ``M = 2 lmax + 1`` values of one node (of two mirror nodes with ``pairs``:
    ``4 M``); ``words`` is 2 for fp64.

    Example:
        >>> from tritp.codegen.gaunt_problem import GauntProblem
        >>> p = GauntProblem("8x0e+8x1o+8x2e", "8x0e+8x1o+8x2e", lmax_out=2, implementation="separable")
        >>> estimate_registers(p, "out:x1,x2", "float32", 1)  # 24 + 9 + 9 + 9 + 10
        61
    """
    target, sources = parse_spec(spec)
    lmax = max(problem.lmax_active(r) for r in ROLES)
    live = (sum(_active(problem, r) for r in sources) + -(-_active(problem, target) // passes)
            + (4 if pairs else 2) * (2 * lmax + 1))
    return 24 + (2 if dtype == "float64" else 1) * live


@lru_cache(maxsize=4096)  # pure, and asked on every launch
def default_passes(problem: GauntProblem, spec: str, dtype: str) -> int:
    """The fewest walks whose :func:`estimate_registers` is within :data:`REGISTER_BUDGET`
    (:data:`~tritp.codegen.gaunt_sep.MAX_PASSES` if none)."""
    return next((n for n in range(1, MAX_PASSES + 1) if estimate_registers(problem, spec, dtype, n) <= REGISTER_BUDGET),
                MAX_PASSES)


def launch_candidates(problem: GauntProblem, dtype: str = "float32") -> list:
    """``(BLOCK_R, num_warps, passes)`` the ``"gaunt"`` autotune family times: the ladder at the
    forward's :func:`default_passes`, then the first rung at one walk fewer (a spill against a
    synthesis less), one more (fewer registers, one synthesis more) and one walk, where allowed
    (at L = 8 one walk spills about 70 values, reloaded each node: perhaps cheaper than two
    more syntheses; only a GPU can tell).

    Example:
        >>> from tritp.codegen.gaunt_problem import GauntProblem
        >>> launch_candidates(GauntProblem("8x0e+8x1o", "0e+1o", lmax_out=2, implementation="separable"))
        [(128, 4, 1), (64, 2, 1), (256, 8, 1), (32, 1, 1), (128, 4, 2)]
    """
    fwd = default_passes(problem, "out:x1,x2", dtype)
    most = len(target_groups(problem, "out", MAX_PASSES))  # walks beyond the m values change nothing
    b0, w0 = LADDER[0]
    extra = dict.fromkeys(n for n in (fwd - 1, fwd + 1, 1) if 1 <= n <= most and n != fwd)
    return [(b, w, fwd) for b, w in LADDER] + [(b0, w0, n) for n in extra]


def launch_shape(problem: GauntProblem, n_rows: int, target: str, dtype: str, spec: str) -> tuple:
    """``(BLOCK_R, num_warps, passes)`` when nothing is asked: the first rung (interpreter: up to
    256 rows, 1 warp) at :func:`default_passes` of this producer."""
    if interpreter_active():
        block, warps = max(16, min(256, 1 << max(0, (n_rows - 1).bit_length()))), 1
    else:
        block, warps = LADDER[0]
    if reduces_channels(problem, target):
        block = channel_block(problem.channels, block)
    return block, warps, default_passes(problem, spec, dtype)


def resolve_launch(problem: GauntProblem, spec: str, dtype: str, n_rows: int, launch=None) -> tuple:
    """``(BLOCK_R, num_warps, passes)`` producer ``spec`` runs with: :func:`launch_shape`'s, or
    ``launch``'s (checked). A launch is tuned on the forward, so its passes move by the
    difference of the two producers' :func:`default_passes` (a gradient whose target is wider
    than the forward's needs more walks), clamped to 1..MAX_PASSES. A channel-summing
    producer takes ``channel_block`` rows, and the warps shrink to one row a thread (a 16-row
    tile at ``C = 48`` runs one warp, not four with 112 idle threads).

    Example:
        >>> from tritp.codegen.gaunt_problem import GauntProblem
        >>> ls = lambda L: "+".join(f"4x{l}{'eo'[l % 2]}" for l in range(L + 1))
        >>> p = GauntProblem(ls(8), ls(7), lmax_out=8, implementation="separable")
        >>> [default_passes(p, s, "float32") for s in ("out:x1,x2", "x2:x1,out")]
        [2, 3]
        >>> resolve_launch(p, "x2:x1,out", "float32", 40, (128, 4, 2))  # tuned on the forward
        (128, 4, 3)
        >>> resolve_launch(p, "x2:x1,out", "float32", 40, (16, 4, 2))  # 16 rows: one warp
        (16, 1, 3)
    """
    target, _ = parse_spec(spec)
    if launch is None:
        block, warps, passes = launch_shape(problem, n_rows, target, dtype, spec)
    else:
        block, warps, passes = check_launch(launch)
        passes += default_passes(problem, spec, dtype) - default_passes(problem, "out:x1,x2", dtype)
        passes = min(MAX_PASSES, max(1, passes))
        if reduces_channels(problem, target):
            block = channel_block(problem.channels, block)
    return block, max(1, min(warps, block // 32)), passes


def check_launch(launch) -> tuple:
    """``launch`` as ``(BLOCK_R, num_warps, passes)`` ints, or ValueError."""
    try:
        b, w, n = (int(v) for v in launch)
    except (TypeError, ValueError):
        raise ValueError(f"launch must be (BLOCK_R, num_warps, passes) ints, got {launch!r}") from None
    if any(v < 1 or v & (v - 1) for v in (b, w)) or b < 16 or not 1 <= n <= MAX_PASSES:
        raise ValueError(f"launch {launch!r}: BLOCK_R and num_warps must be powers of two, BLOCK_R >= 16, "
                         f"passes in 1..{MAX_PASSES}")
    return b, w, n


__all__ = ["get_separable_kernel", "use_pairs", "resolve_launch", "launch_shape", "launch_candidates", "check_launch",
           "estimate_registers", "default_passes", "LADDER", "REGISTER_BUDGET"]
