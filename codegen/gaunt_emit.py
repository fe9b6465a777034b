"""Emit the fused Triton kernel of the grid and fft Gaunt implementations.

Both implementations are one trilinear form over ``P`` points (grid: Gauss-Legendre x uniform
on the sphere; fft: the uniform torus), ``E(x1, x2, g) = sum_p (T1^T x1)_p (T2^T x2)_p (To^T g)_p``,
with one table ``T_r [K_r, P]`` per role (:func:`role_table`): the inputs' tables evaluate
their harmonics at the points, the output's projects back (quadrature or torus weights folded
in). Forward and every derivative is the same *producer* with another target role::

    target[k] = sum_p T_t[k, p] * (T_a^T a)_p * (T_b^T b)_p

One program takes ``BLOCK_R`` rows (a row is one (sample, channel) pair), loads both
operands once, then walks the points in tiles of ``BLOCK_P``: two synthesis GEMMs
``[BLOCK_R, K] x [K, BLOCK_P]``, the pointwise product, and the projection GEMM
``[BLOCK_R, BLOCK_P] x [BLOCK_P, K_t]`` accumulated in registers, so the point values never
leave the chip. ``K`` is split into chunks of 16/32/64 columns (``tl.dot`` needs >= 16 and
powers of two) to limit padding; tables are tensor arguments, padded with zeros.

A *broadcast* target (multiplicity 1: the gradient of a one-channel input shared by the ``C``
channels of the other) is the sum over the channels of the per-row results. When a program's
rows can hold whole samples (:func:`reduces_channels`: ``C`` a power of two, or a multiple of
16), the kernel sums them itself: a program covers ``TILES`` consecutive row tiles (``TILES =
C / BLOCK_R`` when ``C > BLOCK_R``, else 1), accumulates them into the same registers, then
folds the ``[BLOCK_R, K_t]`` accumulator as ``[S, Q, K_t]`` (``S`` samples of ``Q`` rows, ``S *
Q = BLOCK_R``) with ``tl.sum`` over ``Q`` and stores ``S`` finished sample rows: a fixed
reduction order, so bit-identical run to run, and no ``[Z * C, dim]`` buffer. Otherwise the
kernel writes one partial row per (sample, channel) and the launcher sums them.

Example:
    >>> from tritp.codegen.gaunt_problem import GauntProblem, FORWARD
    >>> p = GauntProblem("4x0e+4x1o", "0e+1o", lmax_out=2)
    >>> src = emit_gemm_producer(p, FORWARD, "float32")
    >>> "tl.dot" in src and "def gaunt_producer" in src
    True
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from .gaunt_problem import ROLES, GauntProblem, parse_spec
from .gaunt_tables import grid_tables, torus_tables
from .intmath import p2
from .writer import SourceWriter

KERNEL_NAME = "gaunt_producer"
DOT_MIN = 16
TABLE_ALIGN = 64  # the largest BLOCK_P


def chunk_width(k: int) -> int:
    """Chunk of 16, 32 or 64 columns with the least padding (ties: the wider)."""
    return min((64, 32, 16), key=lambda w: -(-k // w) * w)


def default_block_p(problem: GauntProblem) -> int:
    nb, na = problem.grid_size
    return min(64, max(DOT_MIN, p2(nb * na)))


def reduces_channels(problem: GauntProblem, target: str) -> bool:
    """Whether the kernel of a producer for ``target`` sums a broadcast target over the channels
    itself. It needs a power-of-two row tile (``tl.arange``; ``tl.dot`` also wants >= 16 rows)
    that holds whole samples or that whole samples split into evenly: ``C`` a power of two (a
    tile holds ``BLOCK_R / C`` samples, or one sample spans ``C / BLOCK_R`` tiles), or a multiple
    of 16 (tiles of the largest power of two dividing ``C``). Any other ``C`` (3, 24, 40, ...)
    would need each sample's channels padded to a power of two (up to twice the GEMM work) or a
    sample split between programs (atomics, or a second pass): those keep the partial rows."""
    c = problem.channels
    return problem.mul(target) == 1 and c > 1 and (c & (c - 1) == 0 or c % DOT_MIN == 0)


def channel_block(channels: int, block_r: int) -> int:
    """The row tile, at most ``block_r`` (a power of two >= 16), of a kernel that sums
    ``channels`` in its registers (:func:`reduces_channels`): ``block_r`` when one of the two
    divides the other, else the largest power of two dividing ``channels`` (>= 16)."""
    if block_r % channels == 0 or channels % block_r == 0:
        return block_r
    return min(block_r, channels & -channels)


@contextmanager
def kernel_head(w: SourceWriter, name: str, tensors: str, dt: str):
    """The imports, decorator and signature of a Gaunt kernel ``name`` (tensor arguments
    ``tensors``, then ``R``, ``IDX64``, ``BLOCK_R``), its compute type ``DT`` and ``pid``;
    the body goes inside."""
    w("import triton")
    w("import triton.language as tl")
    w("")
    w("")
    w("@triton.jit")
    with w.block(f"def {name}({tensors}, R, IDX64: tl.constexpr, BLOCK_R: tl.constexpr):"):
        w(f"DT: tl.constexpr = {dt}  # in the body: no module global (tritp.jit_key)")
        w("pid = tl.program_id(0)")
        yield


def emit_fold_header(w: SourceWriter, channels: int):
    """A channel-summing kernel's constants: ``TILES`` row tiles a program walks, ``Q`` rows of
    one sample in a tile, ``S`` samples a program covers (see :func:`reduces_channels`)."""
    w(f"TILES: tl.constexpr = ({channels} + BLOCK_R - 1) // BLOCK_R  # row tiles of one program")
    w(f"Q: tl.constexpr = {channels} // TILES  # rows of one sample in a tile")
    w("S: tl.constexpr = BLOCK_R // Q  # samples of one program")
    w(f"tl.static_assert(Q * TILES == {channels})")
    w("tl.static_assert(S * Q == BLOCK_R)")


def emit_rows(w: SourceWriter, first: str, channels: int):
    """Rows ``first + arange(BLOCK_R)`` (``r``, mask ``rm``, ``rr`` int64 under ``IDX64``) and
    their sample ``z`` and channel ``c``."""
    w(f"r = {first} + tl.arange(0, BLOCK_R)")
    w("rm = r < R")
    with w.block("if IDX64:"):
        w("rr = r.to(tl.int64)")
    with w.block("else:"):
        w("rr = r")
    w(f"z = rr // {channels}")
    w(f"c = rr % {channels}")


def emit_sample_rows(w: SourceWriter, channels: int):
    """The ``S`` sample rows ``zz`` (mask ``zm``) a channel-summing program stores."""
    w("zs = pid * S + tl.arange(0, S)")
    w(f"zm = zs < R // {channels}")
    with w.block("if IDX64:"):
        w("zz = zs.to(tl.int64)")
    with w.block("else:"):
        w("zz = zs")


def channel_tiles(channels: int, block_r: int) -> int:
    """Row tiles one program of a channel-summing kernel walks (the kernel's ``TILES``)."""
    return max(1, channels // block_r)


def padded_points(problem: GauntProblem, block_p: int = TABLE_ALIGN) -> int:
    """Points rounded up to ``block_p``; the tables' row length is this at ``TABLE_ALIGN``, so
    one table serves every ``block_p`` that divides it (zero columns add nothing)."""
    nb, na = problem.grid_size
    return -(-nb * na // block_p) * block_p


def role_size(problem: GauntProblem, role: str) -> tuple:
    """``(K, chunk width, padded K)`` of one role."""
    k = sum(2 * l + 1 for l in problem.degrees(role))
    w = chunk_width(k)
    return k, w, -(-k // w) * w


def role_index(problem: GauntProblem, role: str) -> np.ndarray:
    """int32 ``[2, K_pad]``: per coefficient, its offset in channel 0 of a row (``mul_ir``) and
    the channel stride (0 for a role broadcast over the channels)."""
    k, _, kp = role_size(problem, role)
    out = np.zeros((2, kp), dtype=np.int32)
    bcast = problem.mul(role) == 1
    i, off = 0, 0
    for mul, ir in problem.irreps(role):
        for m in range(ir.dim):
            out[0, i], out[1, i] = off + m, 0 if bcast else ir.dim
            i += 1
        off += mul * ir.dim
    return out


def role_table(problem: GauntProblem, role: str) -> np.ndarray:
    """float64 ``[K_pad, P_pad]`` table of ``role`` (see the module docstring); the output's
    carries the normalization factor. Rows of degrees no path uses are zero, so outputs that
    only odd-sum paths reach are exactly zero."""
    _, _, kp = role_size(problem, role)
    ls = problem.degrees(role)
    nb, na = problem.grid_size
    if problem.implementation == "grid":
        t, w = grid_tables(ls, nb, na)
        if role == "out":
            t = t * w * problem.scale
    elif problem.implementation == "fft":
        umax = problem.lmax_active("x1") + problem.lmax_active("x2")
        t = torus_tables(ls, nb, na, umax, analysis=role == "out") * (problem.scale if role == "out" else 1.0)
    else:
        raise ValueError(f"implementation {problem.implementation!r} has no point tables")
    active = problem.active(role)
    keep = np.repeat([l in active for l in ls], [2 * l + 1 for l in ls])
    out = np.zeros((kp, padded_points(problem)))
    out[: t.shape[0], : t.shape[1]] = t * keep[:, None]
    return out


class _Emitter:
    def __init__(self, problem: GauntProblem, spec: str, dtype: str, block_p: int):
        self.p, self.dtype, self.block_p = problem, dtype, block_p
        self.target, self.sources = parse_spec(spec)
        self.fold = reduces_channels(problem, self.target)
        self.pp = padded_points(problem, block_p)  # loop bound
        self.stride = padded_points(problem)  # table row length
        self.w = SourceWriter()
        prec = problem.precision if dtype == "float32" else None
        self.dot_kw = f", input_precision=\"{prec}\"" if prec else ""

    def dot(self, a: str, b: str, acc: str) -> str:
        # out_dtype: Triton 3.6 asserts that an fp64 accumulator matches it (default fp32).
        return f"tl.dot({a}, {b}, {acc}{self.dot_kw}, out_dtype=DT)"

    def chunks(self, role: str):
        k, w, kp = role_size(self.p, role)
        return [(j, j * w, w, k) for j in range(kp // w)], kp

    def emit(self) -> str:
        w, p = self.w, self.p
        dt = {"float32": "tl.float32", "float64": "tl.float64"}[self.dtype]
        w("# Generated by tritp.codegen.gaunt_emit -- do not edit.")
        w(f"# problem: {p.key}")
        w(f"# producer: {self.target} from {', '.join(self.sources)}; points: {p.grid_size} -> {self.pp}")
        if self.fold:
            w(f"# broadcast target: the {p.channels} channels are summed in the kernel")
        with kernel_head(w, KERNEL_NAME, "a, b, g, ta, tb, tt, ia, ib, it, sa, sb, sg", dt):
            for width in sorted({role_size(p, r)[1] for r in ROLES}):
                w(f"k{width} = tl.arange(0, {width})")
            for name, role in zip("ab", self.sources):
                self.indices(name, role)
            tchunks, tkp = self.chunks(self.target)
            for j, *_ in tchunks:
                w(f"acc{j} = tl.zeros([BLOCK_R, {tchunks[j][2]}], DT)")
            if self.fold:
                emit_fold_header(w, p.channels)
                with w.block("for t in range(TILES):  # whole samples: the rows of tile t add into acc"):
                    self.tile("(pid * TILES + t) * BLOCK_R")
                self.store_sums(tchunks, tkp)
            else:
                self.tile("pid * BLOCK_R")
                self.store(tchunks, tkp)
        return w.text()

    def tile(self, first: str):
        """One tile of ``BLOCK_R`` rows from row ``first``: load the operands, walk the points."""
        w, p = self.w, self.p
        emit_rows(w, first, p.channels)
        x = {name: self.load(name, role) for name, role in zip("ab", self.sources)}
        tchunks, _ = self.chunks(self.target)
        with w.block(f"for p0 in range(0, {self.pp}, {self.block_p}):"):
            w(f"pp = p0 + tl.arange(0, {self.block_p})")
            for name, role in zip("ab", self.sources):
                ch, _ = self.chunks(role)
                w(f"f{name} = tl.zeros([BLOCK_R, {self.block_p}], DT)")
                for j, k0, cw, _ in ch:
                    tab = f"tl.load(t{name} + ({k0} + k{cw})[:, None] * {self.stride} + pp[None, :])"
                    w(f"f{name} = {self.dot(x[name][j], tab, f'f{name}')}")
            w("h = fa * fb")
            for j, k0, cw, _ in tchunks:
                tab = f"tl.load(tt + ({k0} + k{cw})[None, :] * {self.stride} + pp[:, None])"
                w(f"acc{j} = {self.dot('h', tab, f'acc{j}')}")

    def indices(self, name: str, role: str):
        """Load the index table of operand ``name`` (a role): per chunk, offsets and channel strides."""
        ch, kp = self.chunks(role)
        for j, k0, cw, k in ch:
            kk = f"({k0} + k{cw})"
            self.w(f"o{name}{j} = tl.load(i{name} + {kk})")
            self.w(f"cs{name}{j} = tl.load(i{name} + {kp} + {kk})")

    def load(self, name: str, role: str) -> list:
        """Load operand ``name`` (a role) as ``[BLOCK_R, width]`` chunks; returns their names."""
        ch, kp = self.chunks(role)
        out = []
        for j, k0, cw, k in ch:
            kk = f"({k0} + k{cw})"
            addr = f"{name} + (z * s{name})[:, None] + o{name}{j}[None, :] + c[:, None] * cs{name}{j}[None, :]"
            self.w(f"x{name}{j} = tl.load({addr}, mask=rm[:, None] & ({kk} < {k})[None, :], other=0.0).to(DT)")
            out.append(f"x{name}{j}")
        return out

    def store_sums(self, tchunks, kp):
        """Fold each accumulator ``[BLOCK_R, w]`` (rows: ``S`` samples x ``Q`` channel rows,
        already summed over the ``TILES`` tiles) to ``[S, w]`` and store ``S`` sample rows."""
        w = self.w
        emit_sample_rows(w, self.p.channels)
        for j, k0, cw, k in tchunks:
            kk = f"({k0} + k{cw})"
            w(f"ot{j} = tl.load(it + {kk})")  # a broadcast target's channel stride is 0
            w(f"sum{j} = tl.sum(tl.reshape(acc{j}, [S, Q, {cw}]), axis=1)")
            addr = f"g + (zz * sg)[:, None] + ot{j}[None, :]"
            w(f"tl.store({addr}, sum{j}.to(g.dtype.element_ty), mask=zm[:, None] & ({kk} < {k})[None, :])")

    def store(self, tchunks, kp):
        # a broadcast target that reduces_channels rejects gets one partial row per (sample,
        # channel) here; the launcher sums the channels
        bcast = self.p.mul(self.target) == 1 and self.p.channels > 1
        row = "rr * sg" if bcast else "z * sg"
        for j, k0, cw, k in tchunks:
            kk = f"({k0} + k{cw})"
            self.w(f"ot{j} = tl.load(it + {kk})")
            self.w(f"cst{j} = tl.load(it + {kp} + {kk})")
            addr = f"g + ({row})[:, None] + ot{j}[None, :] + c[:, None] * cst{j}[None, :]"
            self.w(f"tl.store({addr}, acc{j}.to(g.dtype.element_ty), mask=rm[:, None] & ({kk} < {k})[None, :])")


def emit_gemm_producer(problem: GauntProblem, spec: str, dtype: str = "float32", block_p: int = None) -> str:
    """Triton source of producer ``spec`` (``"target:role_a,role_b"``) for a grid or fft
    problem; ``dtype`` is the compute type (``float32`` or ``float64``).

    The kernel ``gaunt_producer(a, b, g, ta, tb, tt, ia, ib, it, sa, sb, sg, R, IDX64, BLOCK_R)``
    takes the two operands, the target, the three role tables (:func:`role_table`), the three
    index tables (:func:`role_index`), the operands' and target's row strides and the number
    of rows ``R = batch * channels``. When :func:`reduces_channels` holds for the target, one
    program covers ``BLOCK_R * TILES`` rows, so ``BLOCK_R`` must divide ``C`` or be a multiple
    of it (:func:`channel_block`), and the grid is ``cdiv(R, BLOCK_R * channel_tiles(C,
    BLOCK_R))``; ``g`` is then ``[batch, dim]``, else ``[R, dim]`` for a broadcast target.
    """
    if problem.implementation not in ("grid", "fft"):
        raise ValueError(f"emit_gemm_producer handles grid and fft, not {problem.implementation!r}")
    block_p = block_p or default_block_p(problem)
    if block_p < DOT_MIN or block_p > TABLE_ALIGN or block_p & (block_p - 1):
        raise ValueError(f"block_p must be a power of two in {DOT_MIN}..{TABLE_ALIGN}, got {block_p}")
    return _Emitter(problem, spec, dtype, block_p).emit()
