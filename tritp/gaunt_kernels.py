"""The Gaunt producers' kernels, tables and launch rules: sparse through the CG kernels, grid and
fft through the fused GEMM kernel of :mod:`tritp.codegen.gaunt_emit`, separable through the
node-loop kernel of :mod:`tritp.codegen.gaunt_sep` (its launches: :mod:`tritp.gaunt_separable`);
:mod:`tritp.gaunt_launch` plans and runs one launch.

A producer is named by a spec ``"target:role_a,role_b"`` (:mod:`tritp.codegen.gaunt_problem`):
the forward is ``"out:x1,x2"``, the gradient for ``x1`` is ``"x1:x2,out"`` with the output's
cotangent in role ``out``, and so on to any order (the product is trilinear). Sources are
cached by content hash like the CG kernels (:mod:`tritp.kernels`). The grid, fft and separable
tables are tensor arguments of the op (the module's buffers), never created inside it.

Example:
    >>> from tritp.codegen.gaunt_problem import GauntProblem
    >>> launch_candidates(GauntProblem("4x0e+4x1o", "0e+1o", lmax_out=2))[0]
    (64, 4, 16)
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from .codegen.cg_spec import ProducerSpec
from .codegen.diskcache import atomic_write, cache_dir, content_hash, sources_hash
from .codegen.gaunt_emit import (DOT_MIN, KERNEL_NAME, TABLE_ALIGN, channel_block, default_block_p,
                                  emit_gemm_producer, reduces_channels, role_index, role_size, role_table)
from .codegen.gaunt_problem import ROLES, GauntProblem, parse_spec
from .codegen.gaunt_sep_layout import kernel_tables
from .kernels import interpreter_active, load_generated

# every codegen module the Gaunt sources depend on (gaunt_problem imports coupling, irreps, problem)
GENERATOR_FILES = ("gaunt_emit.py", "gaunt_sep.py", "gaunt_sep_layout.py", "gaunt_problem.py", "gaunt_tables.py",
                   "writer.py", "coupling.py", "irreps.py",
                   "problem.py", "instructions.py", "intmath.py")
_kernels: dict = {}


@lru_cache(maxsize=None)
def generator_hash() -> str:
    return sources_hash(*GENERATOR_FILES)


def load_kernel(problem: GauntProblem, spec: str, dtype: str, option: int, emit, name: str):
    """The jitted kernel ``name`` of ``emit(problem, spec, dtype, option)``'s source, written once
    to the kernel cache under its content hash and memoized. The key leaves out ``emit``:
    the implementation in ``problem.key`` names the generator (grid and fft: ``BLOCK_P``;
    separable: a ``(passes, pairs)`` tuple)."""
    key = (problem.key, spec, dtype, option)
    k = _kernels.get(key)
    if k is None:
        h = content_hash(generator_hash(), problem.key, spec, dtype, option)
        path = cache_dir("kernels") / f"gaunt_{problem.implementation}_{spec.split(':')[0]}_{h}.py"
        if not path.exists():
            atomic_write(path, emit(problem, spec, dtype, option).encode())
        k = _kernels[key] = getattr(load_generated(path), name)
    return k


def get_gemm_kernel(problem: GauntProblem, spec: str, dtype: str, block_p: int):
    return load_kernel(problem, spec, dtype, block_p, emit_gemm_producer, KERNEL_NAME)


def role_tensors(problem: GauntProblem, dtype: torch.dtype, device) -> list:
    """The six table tensors the grid and fft kernels read, in the order the ops carry them:
    ``[T_x1, T_x2, T_out]`` (``dtype``) then ``[I_x1, I_x2, I_out]`` (int32), see
    :func:`~tritp.codegen.gaunt_emit.role_table` and :func:`~tritp.codegen.gaunt_emit.role_index`;
    for separable the ``T`` are :func:`~tritp.codegen.gaunt_sep_layout.kernel_tables` (its kernel does
    not read the ``I``)."""
    if problem.implementation == "separable":  # per-node tables [n_beta, K4] (codegen.gaunt_sep)
        tabs = kernel_tables(problem)
        ts = [torch.from_numpy(np.ascontiguousarray(tabs[r])).to(device=device, dtype=dtype) for r in ROLES]
    else:
        ts = [torch.from_numpy(role_table(problem, r)).to(device=device, dtype=dtype) for r in ROLES]
    return ts + [torch.from_numpy(role_index(problem, r).reshape(-1)).to(device) for r in ROLES]


def cg_spec(spec: str) -> ProducerSpec:
    """The CG producer spec computing the same thing (roles x1, x2, out; no weights)."""
    target, roles = parse_spec(spec)
    term = [None, None, None, None, False]
    for i, r in enumerate(roles):
        term[{"x1": 0, "x2": 1, "out": 3}[r]] = i
    return ProducerSpec(target, roles, (tuple(term),))


#: ``(BLOCK_R, num_warps, BLOCK_P cap)`` rungs of the GPU default, tried in order (``None``: the
#: problem's :func:`~tritp.codegen.gaunt_emit.default_block_p`): rows per program first (each
#: program reads the whole ``[K, P]`` tables once, so halving the rows doubles that L2 traffic),
#: then the point tile, then the rows.
GPU_LADDER = ((64, 4, None), (64, 8, None), (64, 8, 32), (32, 8, 32), (16, 4, 32), (16, 4, 16))
#: The largest :func:`estimate_registers` a rung may have (its spill threshold on sm_90).
REGISTER_BUDGET = 160
#: Rungs that ptxas spills on sm_90 although the estimate fits, as (Triton major.minor, dtype,
#: dot precision, coefficients of x1, x2 and out, rung): on Triton 3.6 (the GPU image) the exact-fp32
#: kernel whose roles all hold 64 coefficients (L = 7) gets 32 registers and 5,136 bytes of
#: spill at 64:8:32 (grid and fft alike; on an H200 20.6 ms against 4.55 at L = 8); 3.9 compiles
#: it with 96 registers and no spill, and 32:8:32 does not spill on either (58 and 73 registers).
#: L = 6 pads its 49 coefficients to the same 64 and does not spill (79 registers).
#: ``benchmarks/gaunt_ptxas.py --L 1-8`` on 3.6 found no other.
KNOWN_SPILLS = frozenset({("3.6", "float32", "ieee", (64, 64, 64), (64, 8, 32))})


def known_spill(problem: GauntProblem, dtype: str, rung: tuple) -> bool:
    """Whether ``rung`` is in :data:`KNOWN_SPILLS` for this problem under the running Triton."""
    from .tuning.cache import triton_version

    ks = tuple(role_size(problem, r)[0] for r in ROLES)
    return (triton_version(), dtype, problem.precision, ks, tuple(rung)) in KNOWN_SPILLS


def estimate_registers(problem: GauntProblem, dtype: str, block_r: int, num_warps: int, block_p: int) -> int:
    """Registers per thread of a grid/fft kernel on sm_90, roughly: ``32 + c * (BLOCK_R * K +
    6 * BLOCK_R * BLOCK_P) / threads``, ``K`` the three roles' padded sizes (both operands and
    the accumulator live across the point loop), the ``[BLOCK_R, BLOCK_P]`` point tiles (``fa``,
    ``fb``, their product) weighted 6 for the dots' operand staging (fp32 ``tl.dot`` in IEEE
    precision runs on FMA units, operands staged in registers), ``c = 1`` for fp32 and ``0.75``
    for fp64 (DMMA fragments: fp64 kernels measure fewer registers than fp32 at the same tile).
    Fitted to ``benchmarks/gaunt_ptxas.py``: it is a spill predictor (above
    :data:`REGISTER_BUDGET`: spills) more than a register count (within ~40 of ptxas's).

    Example:
        >>> from tritp.codegen.gaunt_problem import GauntProblem
        >>> p = GauntProblem("32x0e+32x1o", "0e+1o", lmax_out=1, implementation="grid")
        >>> estimate_registers(p, "float32", 64, 4, 16)
        104
    """
    k = sum(role_size(problem, r)[2] for r in ROLES)
    c = 0.75 if dtype == "float64" else 1.0
    return int(32 + c * block_r * (k + 6 * block_p) / (32 * num_warps))


def default_spec(target: str) -> str:
    """The producer of ``target`` from the other two roles (x1 and x2's gradients: of the output's
    cotangent and the other input)."""
    return {"out": "out:x1,x2", "x1": "x1:x2,out", "x2": "x2:x1,out"}[target]


def launch_shape(problem: GauntProblem, n_rows: int, target: str = "out", dtype: str = "float32",
                 spec: str = None) -> tuple:
    """``(BLOCK_R, num_warps, BLOCK_P)`` of a grid/fft producer when nothing else is asked
    (separable: ``(BLOCK_R, num_warps, passes)`` of producer ``spec``, see
    :func:`tritp.gaunt_separable.launch_shape`).

    Interpreter: up to 256 rows per program (its cost is per program), 1 warp. GPU: the first
    rung of :data:`GPU_LADDER` whose :func:`estimate_registers` is within
    :data:`REGISTER_BUDGET` and that is not a :data:`KNOWN_SPILLS` case (the last rung if none). A producer that sums a broadcast
    ``target`` over the channels in the kernel (``reduces_channels``) takes a tile that whole
    samples fit or split into evenly (``channel_block``: the same unless ``C`` is a multiple
    of 16 that neither divides nor is divided by it).

    Measured (``benchmarks/gaunt_ptxas.py``, sm_90, Triton 3.9; gaunt_bench's problems: C
    channels of degrees 0..L in, 0..L out; C = 32 and 128 alike, grid and fft alike but where
    noted; forward and backward producers alike): the fixed rule before this one (64 rows, 8
    warps when the roles' K sum past 64, else 4; ``default_block_p``) spilled in fp32 from L=5:

    ====  ============  ===============================  ==========  ====================
    L     before        regs / spill bytes               now         regs / spill bytes
    ====  ============  ===============================  ==========  ====================
    1     64:4:16 (*)   96 (fft 131) / 0                 unchanged
    2     64:4:32 (*)   131 (fft 138) / 0                grid same   fft 64:8:64: 112 / 0
    3     64:4:64       221 (fft 140) / 0                64:8:64     131 (fft 118) / 0
    4     64:8:64       177-217 / 0                      unchanged
    5     64:8:64       128 / 4 (grid; fft 178 / 0)      64:8:32     80 / 0
    6     64:8:64       255 / 260 (fft 64 / 1608)        64:8:32     96-100 / 0
    7     64:8:64       64 / 1608                        64:8:32     96-100 / 0
    8     64:8:64       255 / 580-588                    64:8:32     112-116 / 0
    ====  ============  ===============================  ==========  ====================

    (``BLOCK_R:num_warps:BLOCK_P``; (*) fft's ``BLOCK_P`` is twice grid's; 128 compiles, grid and fft, L=1..8, C=32 and 128, forward
    and x1 gradient, fp32 and fp64: 28 spilled before, none now.) fp64 (DMMA tensor cores)
    never spilled at the old rule (64:8:64 at L=8: 178-180 registers) and keeps it; like fp32,
    L=3 (fft: L=2, 3) moves from 4 to 8 warps, where the estimate is conservative. The x2
    gradient of a one-channel x2 (summed over the channels in the kernel) spilled like the
    forward before (L=6: 260-300 bytes, L=8: 548); now none at L=6..8, but at L=5, C=32, fp32
    ptxas spills 8 bytes at 80 registers (grid and fft; 0 at the old 64:8:64, 124 registers).

    Example:
        >>> from tritp.codegen.gaunt_problem import GauntProblem
        >>> ls = "+".join(f"32x{l}{'eo'[l % 2]}" for l in range(9))
        >>> p = GauntProblem(ls, ls, lmax_out=8, implementation="grid")
        >>> next(r for r in GPU_LADDER if estimate_registers(p, "float32", r[0], r[1], r[2] or 64) <= REGISTER_BUDGET)
        (64, 8, 32)
    """
    if problem.implementation == "separable":
        from . import gaunt_separable

        return gaunt_separable.launch_shape(problem, n_rows, target, dtype, spec or default_spec(target))
    if interpreter_active():
        block, warps, bp = max(16, min(256, 1 << max(0, (n_rows - 1).bit_length()))), 1, default_block_p(problem)
    else:
        block, warps, bp = launch_candidates(problem, dtype)[0]
    if reduces_channels(problem, target):
        block = channel_block(problem.channels, block)
    return block, warps, bp


def launch_candidates(problem: GauntProblem, dtype: str = "float32") -> list:
    """The distinct :data:`GPU_LADDER` rungs ``(BLOCK_R, num_warps, BLOCK_P)`` of ``problem``
    (point tile capped at :func:`~tritp.codegen.gaunt_emit.default_block_p`), the GPU default
    first (the first rung within :data:`REGISTER_BUDGET`, else the last), then the others in
    ladder order: what the ``"gaunt"`` autotune family times for grid and fft.

    Example:
        >>> from tritp.codegen.gaunt_problem import GauntProblem
        >>> launch_candidates(GauntProblem("8x0e+8x1o", "0e+1o", lmax_out=2, implementation="grid"))
        [(64, 4, 16), (64, 8, 16), (32, 8, 16), (16, 4, 16)]

    A separable problem's are :func:`tritp.gaunt_separable.launch_candidates`.
    """
    if problem.implementation == "separable":
        from . import gaunt_separable

        return gaunt_separable.launch_candidates(problem, dtype)
    bp0 = default_block_p(problem)
    rungs = list(dict.fromkeys((b, w, min(cap or bp0, bp0)) for b, w, cap in GPU_LADDER))
    first = next((r for r in rungs if estimate_registers(problem, dtype, *r) <= REGISTER_BUDGET
                  and not known_spill(problem, dtype, r)), rungs[-1])
    return [first] + [r for r in rungs if r != first]


def check_launch(launch, implementation: str = "grid") -> tuple:
    """``launch`` as ``(BLOCK_R, num_warps, BLOCK_P)`` ints, or ValueError: powers of two, rows
    and points at least 16 (``tl.dot``), points at most 64 (the tables' alignment); for
    ``implementation="separable"`` ``(BLOCK_R, num_warps, passes)``
    (:func:`tritp.gaunt_separable.check_launch`).

    Example:
        >>> check_launch([32, 8, 16])
        (32, 8, 16)
    """
    if implementation == "separable":
        from . import gaunt_separable

        return gaunt_separable.check_launch(launch)
    try:
        b, w, bp = (int(v) for v in launch)
    except (TypeError, ValueError):
        raise ValueError(f"launch must be (BLOCK_R, num_warps, BLOCK_P) ints, got {launch!r}") from None
    if any(v < 1 or v & (v - 1) for v in (b, w, bp)) or b < DOT_MIN or not DOT_MIN <= bp <= TABLE_ALIGN:
        raise ValueError(f"launch {launch!r}: BLOCK_R, num_warps and BLOCK_P must be powers of two, "
                         f"BLOCK_R >= {DOT_MIN} and {DOT_MIN} <= BLOCK_P <= {TABLE_ALIGN}")
    return b, w, bp


def target_dim(problem: GauntProblem, role: str) -> int:
    return problem.irreps(role).dim


__all__ = ["load_kernel", "get_gemm_kernel", "role_tensors", "cg_spec", "target_dim", "launch_shape",
           "launch_candidates", "check_launch", "estimate_registers"]

