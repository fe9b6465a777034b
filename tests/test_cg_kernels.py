"""Generated sparse Clebsch-Gordan Triton kernels, run on CPU through the Triton interpreter.

Every kernel result (forward, gradients, double gradients) is compared with the float64 dense
reference (``backend="reference"``, plain einsums differentiated by torch autograd) at the
tolerances of design notes section 6: fp32 forward 1e-5, first and second derivatives 1e-4,
fp64 1e-10, bf16/fp16 1e-2 -- relative error = max abs difference / max abs of the reference.

Interpreter cost is per program and per unrolled op, so batches are tiny (Z <= 40, one or two
programs of the default BLOCK_Z = 32) and multiplicities 1-4.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from e3nn import o3

import tritp
import tritp.kernels
from tritp.codegen.cg_spec import forward_spec
from tritp.reference import to_ir_mul, to_mul_ir

from support import FakeKernels

F64 = torch.float64

# -- helpers ---------------------------------------------------------------------------------


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    """Max abs difference relative to the max abs of the reference (which must be nonzero)."""
    assert a.shape == ref.shape, (a.shape, ref.shape)
    a, ref = a.detach().to(F64), ref.detach().to(F64)
    scale = ref.abs().max().item()
    assert scale > 0, "degenerate reference: all zeros"
    return (a - ref).abs().max().item() / scale


def fits(mode, m1, m2, mo, has_weight):
    return {
        "uvw": True,
        "uvu": m1 == mo,
        "uvv": m2 == mo,
        "uuw": m1 == m2 and (has_weight or mo == 1),
        "uuu": m1 == m2 == mo,
        "uvuv": m1 * m2 == mo,
    }[mode]


def paths(in1, in2, out, mode, has_weight, path_weights=(1.0, 0.7, 1.3)):
    """Hand-built instruction list: every allowed path of ``mode`` whose multiplicities fit,
    with cycling path weights."""
    in1, in2, out = tritp.Irreps(in1), tritp.Irreps(in2), tritp.Irreps(out)
    ins = []
    for i1, (m1, r1) in enumerate(in1):
        for i2, (m2, r2) in enumerate(in2):
            for io, (mo, ro) in enumerate(out):
                if ro in list(r1 * r2) and fits(mode, m1, m2, mo, has_weight):
                    ins.append((i1, i2, io, mode, has_weight, path_weights[len(ins) % len(path_weights)]))
    assert ins
    return ins


def pair(in1, in2, out, ins, **kw):
    """The same problem compiled for the Triton kernels and for the float64 reference."""
    kw.setdefault("internal_weights", False)
    tri = tritp.compile(in1, in2, out, ins, backend="triton", **kw)
    ref = tritp.compile(in1, in2, out, ins, backend="reference", **kw)
    assert tri.problem == ref.problem
    return tri, ref


def make_inputs(tp, batch=(5,), wbatch=None, dtype=F64):
    """Float64 master inputs (x1, x2, weight-or-None); ``wbatch`` = leading dims of per-sample
    weights (default ``batch``)."""
    d1, d2 = tp.irreps_in1.dim, tp.irreps_in2.dim
    x1 = torch.randn(*batch, d1, dtype=F64)
    x2 = torch.randn(*batch, d2, dtype=F64)
    if tp.weight_numel == 0:
        w = None
    elif tp.shared_weights:
        w = torch.randn(tp.weight_numel, dtype=F64)
    else:
        w = torch.randn(*(batch if wbatch is None else wbatch), tp.weight_numel, dtype=F64)
    return tuple(None if t is None else t.to(dtype) for t in (x1, x2, w))


def run_all(tp, x1, x2, w, gy):
    """Output, first gradients of <y, gy>, and forces-style double gradients.

    Returns ``(y, grads, dgrads)``; grads/dgrads are with respect to ``[x1, x2(, w)]``."""
    leaves = [t.detach().clone().requires_grad_(True) for t in (x1, x2, w) if t is not None]
    a, b = leaves[0], leaves[1]
    c = leaves[2] if w is not None else None
    y = tp(a, b, c)
    grads = torch.autograd.grad((y * gy.to(y.dtype)).sum(), leaves, retain_graph=True)
    e = y.pow(2).sum()
    (g,) = torch.autograd.grad(e, b, create_graph=True)
    loss = (g * g).sum()
    dgrads = torch.autograd.grad(loss, leaves)
    return y.detach(), [t.detach() for t in grads], [t.detach() for t in dgrads]


def e3nn_tp(*args, **kw):
    """An e3nn TensorProduct built in float64 (built under the float32 default, its constants
    are float32-rounded and it is only good to ~1e-8)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(F64)
    try:
        return o3.TensorProduct(*args, **kw)
    finally:
        torch.set_default_dtype(old)


TOL = {torch.float32: (1e-5, 1e-4, 1e-4), torch.float64: (1e-10, 1e-10, 1e-10)}


def check_against_reference(tri, ref, batch=(5,), dtype=torch.float32, wbatch=None):
    """Forward, gradients and double gradients of the kernels in ``dtype`` vs float64 reference."""
    x1, x2, w = make_inputs(tri, batch, wbatch)
    gy = torch.randn(*torch.broadcast_shapes(x1.shape[:-1], x2.shape[:-1]), ref.irreps_out.dim, dtype=F64)
    y_ref, g_ref, dg_ref = run_all(ref, x1, x2, w, gy)
    cast = [None if t is None else t.to(dtype) for t in (x1, x2, w)]
    y, g, dg = run_all(tri, *cast, gy)
    tf, tb, tdb = TOL[dtype]
    assert y.dtype == dtype and y.shape == y_ref.shape
    assert rel(y, y_ref) <= tf, ("forward", rel(y, y_ref))
    names = ["x1", "x2", "w"]
    for name, a, r in zip(names, g, g_ref):
        assert a.dtype == dtype and a.shape == r.shape
        assert rel(a, r) <= tb, ("grad", name, rel(a, r))
    for name, a, r in zip(names, dg, dg_ref):
        assert a.dtype == dtype and a.shape == r.shape
        assert rel(a, r) <= tdb, ("double grad", name, rel(a, r))
    return x1, x2, w


# -- problems --------------------------------------------------------------------------------

# Per mode: small irreps (l <= 1) on which two to five paths fit the mode's multiplicity rule;
# degree 2 is exercised by MIXED and degree 3 by test_degree_three.
MODE_IRREPS = {
    "uvw": ("2x0e+1x1o", "1x0e+1x1o", "2x0e+1x1o"),
    "uvu": ("2x0e+1x1o", "1x0e+2x1o", "2x0e+1x1o+1x1e"),
    "uvv": ("1x0e+2x1o", "2x0e+1x1o", "2x0e+1x1o+1x1e"),
    "uuw": ("2x0e+1x1o", "2x0e+1x1o", "1x0e+1x1e+3x0e"),
    "uuu": ("2x0e+2x1o", "2x1o", "2x0e+2x1o+2x1e"),
    "uvuv": ("2x0e+1x1o", "2x1o", "4x1o+2x0e+2x1e"),
}

# Every mode, weighted and not (uuw only weighted, see UUW_UNWEIGHTED), with path weights and
# several paths per output segment.
MIXED = (
    "2x0e+2x1o+1x2e",
    "2x0e+2x1o",
    "2x0e+2x1o+4x1e+3x2e+1x1e",
    [
        (1, 1, 0, "uuu", True),  # 1o x 1o -> 0e
        (0, 1, 1, "uvu", True, 0.5),  # 0e x 1o -> 1o
        (1, 0, 1, "uvv", False),  # 1o x 0e -> 1o
        (1, 1, 2, "uvuv", True),  # 1o x 1o -> 1e, 4 = 2 * 2
        (2, 0, 3, "uvw", True),  # 2e x 0e -> 2e
        (1, 1, 3, "uuw", True, 2.0),  # 1o x 1o -> 2e
        (1, 1, 4, "uvw", True),  # 1o x 1o -> 1e, mul_out 1
        (0, 0, 0, "uvu", False),
        (1, 1, 2, "uvuv", False, 0.3),
        (0, 1, 1, "uvv", True),  # 0e x 1o -> 1o
        (0, 0, 0, "uuu", False),  # 0e x 0e -> 0e
    ],
)
# MIXED plus an unweighted uuw path (into the 1x1e segment, mul_out 1).
UUW_UNWEIGHTED = (*MIXED[:3], MIXED[3] + [(1, 1, 4, "uuw", False, 0.8)])

MODE_CASES = [(m, hw, sw) for m in MODE_IRREPS for hw in (True, False) for sw in (True, False)
              if not (m == "uvw" and not hw) and not (not hw and not sw)]


@pytest.mark.parametrize("mode,has_weight,shared", MODE_CASES,
                         ids=[f"{m}-{'w' if hw else 'now'}-{'shared' if sw else 'batch'}"
                              for m, hw, sw in MODE_CASES])
def test_single_mode_fp32(mode, has_weight, shared):
    # uuw-now-shared is also a regression test of the reference: it once had no einsum for
    # mode uuw without weights (fixed in this session).
    in1, in2, out = MODE_IRREPS[mode]
    ins = paths(in1, in2, out, mode, has_weight)
    tri, ref = pair(in1, in2, out, ins, shared_weights=shared)
    assert len(tri.instructions) >= 2
    assert (tri.weight_numel > 0) == has_weight
    check_against_reference(tri, ref, batch=(4,), dtype=torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "batch"])
def test_mixed_modes(dtype, shared):
    tri, ref = pair(*MIXED, shared_weights=shared)
    assert {i.connection_mode for i in tri.instructions} == {"uvw", "uvu", "uvv", "uuw", "uuu", "uvuv"}
    check_against_reference(tri, ref, batch=(5,), dtype=dtype)


def test_degree_three():
    in1, in2, out = "2x3o", "1x0e+1x1o+1x2e", "2x1o+2x2e+2x3o"
    tri, ref = pair(in1, in2, out, paths(in1, in2, out, "uvu", True), shared_weights=False)
    assert len(tri.instructions) == 4  # 3o x 0e -> 3o, 3o x 1o -> 2e, 3o x 2e -> 1o, 3o
    check_against_reference(tri, ref, batch=(3,), dtype=torch.float32)


@pytest.mark.parametrize("irrep_normalization", ["component", "norm"])
@pytest.mark.parametrize("path_normalization", ["element", "path"])
def test_normalizations(irrep_normalization, path_normalization):
    kw = dict(irrep_normalization=irrep_normalization, path_normalization=path_normalization)
    tri = tritp.compile(*MIXED, backend="triton", shared_weights=False, internal_weights=False, **kw)
    e3 = e3nn_tp(*MIXED[:3], MIXED[3], shared_weights=False, internal_weights=False, **kw)
    x1, x2, w = make_inputs(tri, (4,))
    y = tri(x1, x2, w)
    y_e3 = e3(x1, x2, w)
    assert rel(y, y_e3) <= 1e-10
    # the normalization must actually matter for the compared outputs
    default = tritp.compile(*MIXED, backend="reference", shared_weights=False, internal_weights=False)
    if kw != dict(irrep_normalization="component", path_normalization="element"):
        assert rel(default(x1, x2, w), y_e3) > 1e-3
    # and the gradients follow the same coefficients
    x1.requires_grad_(True)
    (g,) = torch.autograd.grad(tri(x1, x2, w).pow(2).sum(), x1)
    (g_e3,) = torch.autograd.grad(e3(x1, x2, w).pow(2).sum(), x1)
    assert rel(g, g_e3) <= 1e-10


# -- low precision ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "batch"])
def test_half_precision(dtype, shared):
    tri, ref = pair(*MIXED, shared_weights=shared)
    x1, x2, w = make_inputs(tri, (5,))
    lo = [t.to(dtype).requires_grad_(True) for t in (x1, x2, w)]
    hi = [t.detach().to(torch.float32).requires_grad_(True) for t in lo]  # same rounded values
    y = tri(*lo)
    y_ref = ref(*hi)
    assert y.dtype == dtype
    assert y_ref.dtype == torch.float32
    assert rel(y, y_ref) <= 1e-2
    gy = torch.randn(y.shape).to(dtype)
    g = torch.autograd.grad((y * gy).sum(), lo)
    g_ref = torch.autograd.grad((y_ref * gy.float()).sum(), hi)
    for a, r in zip(g, g_ref):
        assert a.dtype == dtype
        assert rel(a, r) <= 1e-2


# -- layouts ---------------------------------------------------------------------------------


def test_ir_mul_layout_matches_mul_ir():
    kw = dict(shared_weights=False, internal_weights=False, backend="triton")
    a = tritp.compile(*MIXED, layout="mul_ir", **kw)
    b = tritp.compile(*MIXED, layout="ir_mul", **kw)
    x1, x2, w = make_inputs(a, (5,), dtype=torch.float32)
    x1i = to_ir_mul(x1, a.irreps_in1).requires_grad_(True)
    x2i = to_ir_mul(x2, a.irreps_in2).requires_grad_(True)
    x1.requires_grad_(True)
    ya = a(x1, x2, w)
    yb = b(x1i, x2i, w)
    assert not torch.allclose(ya, yb)  # the layouts really differ
    assert rel(to_mul_ir(yb, a.irreps_out), ya) <= 1e-6
    assert rel(to_ir_mul(ya, a.irreps_out), yb) <= 1e-6
    gy = torch.randn(ya.shape)
    (ga,) = torch.autograd.grad((ya * gy).sum(), x1)
    g1, g2 = torch.autograd.grad((yb * to_ir_mul(gy, a.irreps_out)).sum(), [x1i, x2i])
    assert rel(to_mul_ir(g1, a.irreps_in1), ga) <= 1e-6
    # and against the float64 reference in ir_mul layout
    ref = tritp.compile(*MIXED, layout="ir_mul", shared_weights=False, internal_weights=False, backend="reference")
    assert rel(yb, ref(x1i.double(), x2i.double(), w.double())) <= 1e-5


# -- batch shapes ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape1,shape2,wshape", [
    ((2, 3), (3,), (2, 3)),
    ((1,), (5,), (5,)),
    ((2, 3), (3,), (3,)),
    ((4,), (1,), (1,)),
])
def test_broadcasting_against_reference(shape1, shape2, wshape):
    tri, ref = pair(*MIXED, shared_weights=False)
    d1, d2, n = tri.irreps_in1.dim, tri.irreps_in2.dim, tri.weight_numel
    x1 = torch.randn(*shape1, d1, dtype=F64)
    x2 = torch.randn(*shape2, d2, dtype=F64)
    w = torch.randn(*wshape, n, dtype=F64)
    bshape = torch.broadcast_shapes(shape1, shape2, wshape)
    leaves = [t.clone().requires_grad_(True) for t in (x1, x2, w)]
    y = tri(*leaves)
    y_ref = ref(x1, x2, w)
    assert y.shape == (*bshape, tri.irreps_out.dim)
    assert rel(y, y_ref) <= 1e-10
    gy = torch.randn(y.shape, dtype=F64)
    g = torch.autograd.grad((y * gy).sum(), leaves)
    rleaves = [t.clone().requires_grad_(True) for t in (x1, x2, w)]
    g_ref = torch.autograd.grad((ref(*rleaves) * gy).sum(), rleaves)
    for a, r, t in zip(g, g_ref, (x1, x2, w)):
        assert a.shape == t.shape
        assert rel(a, r) <= 1e-10


def test_broadcasting_matches_e3nn():
    in1, in2, out, ins = MIXED
    tri = tritp.compile(in1, in2, out, ins, backend="triton", shared_weights=False, internal_weights=False)
    e3 = e3nn_tp(in1, in2, out, ins, shared_weights=False, internal_weights=False)
    x1 = torch.randn(2, 3, tri.irreps_in1.dim, dtype=F64)
    x2 = torch.randn(3, tri.irreps_in2.dim, dtype=F64)
    w = torch.randn(2, 3, tri.weight_numel, dtype=F64)
    y = tri(x1, x2, w)
    y_e3 = e3(x1, x2, w)
    assert y.shape == y_e3.shape == (2, 3, tri.irreps_out.dim)
    assert rel(y, y_e3) <= 1e-10


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "batch"])
def test_empty_batch(shared):
    tri, _ = pair(*MIXED, shared_weights=shared)
    d1, d2, n = tri.irreps_in1.dim, tri.irreps_in2.dim, tri.weight_numel
    x1 = torch.randn(0, d1, requires_grad=True)
    x2 = torch.randn(0, d2, requires_grad=True)
    w = torch.randn(n if shared else (0, n), requires_grad=True)
    y = tri(x1, x2, w)
    assert y.shape == (0, tri.irreps_out.dim)
    assert y.dtype == torch.float32
    y.sum().backward()
    assert x1.grad.shape == x1.shape and x2.grad.shape == x2.shape
    assert w.grad.shape == w.shape
    assert torch.count_nonzero(w.grad) == 0


# -- memory layout of the inputs -------------------------------------------------------------


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "batch"])
def test_non_contiguous_inputs(shared):
    tri, ref = pair(*MIXED, shared_weights=shared)
    d1, d2, n = tri.irreps_in1.dim, tri.irreps_in2.dim, tri.weight_numel
    Z = 5
    # last dim contiguous, row stride larger than the row (a slice of a wider tensor)
    x1 = torch.randn(Z, d1 + 7)[:, 3:3 + d1]
    # last dim with stride != 1 (a transposed tensor)
    x2 = torch.randn(d2, Z).t()
    w = torch.randn(n) if shared else torch.randn(n, Z).t()
    assert x1.stride(-1) == 1 and x1.stride(0) == d1 + 7
    assert x2.stride(-1) != 1
    y = tri(x1, x2, w)
    assert rel(y, ref(x1.double(), x2.double(), w.double())) <= 1e-5
    assert torch.equal(y, tri(x1.contiguous(), x2.contiguous(), w.contiguous()))
    # the other way round: x1 with a non-unit last stride, x2 a strided slice
    x1b = torch.randn(d1, Z).t()
    x2b = torch.randn(Z, 2 * d2)[:, ::2]
    assert x2b.stride(-1) == 2
    yb = tri(x1b, x2b, w)
    assert rel(yb, ref(x1b.double(), x2b.double(), w.double())) <= 1e-5
    # gradients land in the strided inputs' shapes and match the reference
    leaves = [t.requires_grad_(True) for t in (x1b, x2b)]  # still strided views (leaves)
    gy = torch.randn(yb.shape)
    g = torch.autograd.grad((tri(*leaves, w) * gy).sum(), leaves)
    rl = [t.detach().double().requires_grad_(True) for t in (x1b, x2b)]
    g_ref = torch.autograd.grad((ref(*rl, w.double()) * gy.double()).sum(), rl)
    for a, r in zip(g, g_ref):
        assert rel(a, r) <= 1e-4


def test_strided_shared_weight():
    # Regression: tritp/kernels.py produce() used to pass a 1D shared-weight tensor with stride
    # != 1 to the kernel as is, which read it as contiguous (wrong outputs, no error); fixed in
    # d542b4c by making it contiguous.
    tri, ref = pair(*MIXED, shared_weights=True)
    x1, x2, _ = make_inputs(tri, (4,), dtype=torch.float32)
    w = torch.randn(2 * tri.weight_numel)[::2]
    assert w.stride(-1) == 2
    y = tri(x1, x2, w)
    assert rel(y, ref(x1.double(), x2.double(), w.double())) <= 1e-5
    assert torch.equal(y, tri(x1, x2, w.contiguous()))


# -- int64 addressing ------------------------------------------------------------------------


class _KernelProxy:
    """A loaded kernel that records the IDX64 argument of each launch."""

    def __init__(self, kernel, log):
        self._kernel, self._log = kernel, log

    def __getattr__(self, name):
        return getattr(self._kernel, name)

    def __getitem__(self, grid):
        def launch(*args, **kw):
            self._log.append(kw["IDX64"])
            return self._kernel[grid](*args, **kw)

        return launch


class _LaunchSpy:
    """Wraps tritp.kernels.get_kernel and records the IDX64 argument of every launch."""

    def __init__(self, real):
        self.real, self.idx64 = real, []

    def __call__(self, *a, **k):
        return _KernelProxy(self.real(*a, **k), self.idx64)


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "batch"])
def test_int64_addressing(monkeypatch, shared):
    tri, ref = pair(*MIXED, shared_weights=shared)
    x1, x2, w = make_inputs(tri, (5,), dtype=torch.float32)
    gy = torch.randn(5, tri.irreps_out.dim)

    def go():
        leaves = [t.clone().requires_grad_(True) for t in (x1, x2, w)]
        y = tri(*leaves)
        return [y.detach(), *torch.autograd.grad((y * gy).sum(), leaves)]

    spy = _LaunchSpy(tritp.kernels.get_kernel)
    monkeypatch.setattr(tritp.kernels, "get_kernel", spy)
    tritp.tuning.clear_memo()  # memoized launch recipes hold the kernels found before
    small = go()
    assert spy.idx64 and not any(spy.idx64)
    spy.idx64.clear()
    monkeypatch.setattr(tritp.kernels, "INT32_LIMIT", 16)
    big = go()
    assert spy.idx64 and all(spy.idx64)  # every launch took the int64 path
    for a, b in zip(small, big):
        assert torch.equal(a, b)
    assert rel(big[0], ref(x1.double(), x2.double(), w.double())) <= 1e-5


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "batch"])
def test_one_channel_target_runs_lanes_in_chunks(monkeypatch, shared):
    """A one-channel target segment (the gradient of mul-1 edge harmonics: the forces) runs the
    other operands' channels as vector lanes, summed at the end: block_c = 4 < 6 channels gives
    two lane chunks with a masked tail; the uvw path also keeps a serial loop over w."""
    from tritp.tuning import Config

    monkeypatch.setattr(tritp.tuning, "choose", lambda *a, **k: Config(block_z=4, block_c=4, num_warps=1))
    in1, in2, out = "6x0e+3x1o", "0e+1o", "6x0e+3x1o+2x1o"
    ins = paths(in1, in2, "6x0e+3x1o", "uvu", True) + [(1, 0, 2, "uvw", True, 0.9), (0, 1, 2, "uvw", True)]
    tri, ref = pair(in1, in2, out, ins, shared_weights=shared)
    spec = forward_spec().derivative(1)
    assert "tl.sum(qacc0, axis=1)" in tritp.kernels.kernel_source(tri.problem, spec, "float64", 4)[0].read_text()
    check_against_reference(tri, ref, batch=(7,), dtype=torch.float64)


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "batch"])
def test_pieces_compute_the_whole_kernel(monkeypatch, shared):
    """A big producer is emitted as pieces over disjoint target segments (instructions for a
    weight target) launched into one output: with a tiny budget every direction of MIXED runs
    in several pieces and still matches the float64 reference."""
    import tritp.codegen.cg_pieces as cg_pieces

    monkeypatch.setattr(cg_pieces, "PIECE_BUDGET", 40)
    pieces = spy_pieces(monkeypatch)
    tri, ref = pair(*MIXED, shared_weights=shared)
    check_against_reference(tri, ref, batch=(5,), dtype=torch.float64)
    split = {t for t, piece in pieces if piece is not None}
    assert split == {"out", "x1", "x2", "w"}, pieces


def spy_pieces(monkeypatch) -> list:
    """Record ``(target, piece)`` of every kernel the launches load."""
    seen, real = [], tritp.kernels.get_kernel

    def spy(problem, spec, dtype, block_c, piece=None):
        seen.append((spec.target, piece))
        return real(problem, spec, dtype, block_c, piece)

    monkeypatch.setattr(tritp.kernels, "get_kernel", spy)
    tritp.tuning.clear_memo()  # memoized launch recipes hold the kernels found before
    return seen


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_one_channel_target_in_partial_pieces(monkeypatch, dtype):
    """The forces kernel (gradient of mul-1 edge harmonics) split by instruction: each piece
    sums its instructions into its own slab of a [rows, slabs * dim] buffer, the slabs are
    summed after; gradients and double gradients still match the float64 reference. (The
    separate forces kernel: the backward's fused kernel, cg_fused, would run instead.)"""
    import tritp.codegen.cg_pieces as cg_pieces

    monkeypatch.setenv("TRITP_FUSED_BWD", "0")
    monkeypatch.setattr(cg_pieces, "PIECE_BUDGET", 30)
    seen = spy_pieces(monkeypatch)
    in1, in2 = "3x0e+3x1o+2x2e", "0e+1o+2e"
    tri, ref = pair(in1, in2, "3x0e+3x1o+2x2e", "uvu", shared_weights=False)
    check_against_reference(tri, ref, batch=(6,), dtype=dtype)
    partial = {p for t, p in seen if t == "x2" and isinstance(p, cg_pieces.Partial)}
    assert len(partial) >= 2 and {p.slabs for p in partial} == {len(partial)}
    src = tritp.kernels.kernel_source(tri.problem, forward_spec().derivative(1), "float64", 64,
                                      max(partial, key=lambda p: p.slab))[1]
    assert "summed into slab" in src
    assert f"gp + (c2 + {(len(partial) - 1) * tri.irreps_in2.dim})" in src  # its slab's first column


def test_piece_plan_partitions_the_target():
    from tritp.codegen.cg_pieces import plan_pieces, unit_costs, unit_groups

    tri = tritp.compile(*MIXED, backend="reference", shared_weights=False)
    fwd = forward_spec()
    for spec in [fwd] + [fwd.derivative(i) for i in range(3)]:
        costs = unit_costs(tri.problem, spec)
        for budget in (1, 25, 60, sum(costs) - 1):
            plan = plan_pieces(tri.problem, spec, budget)
            assert sorted(u for p in plan for u in p) == list(range(len(costs)))  # a partition
            assert all(sum(costs[u] for u in p) <= budget or sum(1 for u in p if costs[u]) == 1 for p in plan)
        assert plan_pieces(tri.problem, spec, sum(costs)) == (None,)
    # a one-channel target (mul-1 edge harmonics' gradient) is not split by segment (pieces
    # would re-read x1) but by instruction, into partial slabs; or not at all (partial=False)
    mace = tritp.compile("8x0e+8x1o+8x2e", "0e+1o+2e+3o", "0e+1o+2e+3o", mode="channelwise",
                         backend="reference").problem
    assert len(plan_pieces(mace, fwd, 30)) > 1 and plan_pieces(mace, fwd.derivative(1), 30, partial=False) == (None,)
    partial = plan_pieces(mace, fwd.derivative(1), 30)
    assert [type(p).__name__ for p in partial] == ["Partial"] * len(partial) and len(partial) > 1
    assert sorted(k for p in partial for k in p) == list(range(len(mace.instructions)))
    assert [(p.slab, p.slabs) for p in partial] == [(j, len(partial)) for j in range(len(partial))]
    costs = unit_costs(mace, fwd.derivative(1), per_instruction=True)
    loads = [sum(costs[k] for k in p) for p in partial]
    assert max(loads) - min(loads) <= max(costs)  # balanced: the largest sets the compile time
    # output segments are sorted by irrep, not by the x1 segment they read; a piece takes whole
    # x1 groups where they fit, so no x1 segment is read by two pieces
    groups = unit_groups(mace, fwd)
    group_cost = max(sum(c for c, g in zip(unit_costs(mace, fwd), groups) if g == k) for k in set(groups))
    plan = plan_pieces(mace, fwd, group_cost)
    owners = {}
    for u, g in enumerate(groups):
        owners.setdefault(g, set()).update(i for i, p in enumerate(plan) if u in p)
    assert len(plan) > 1 and all(len(o) == 1 for o in owners.values())
    with pytest.raises(ValueError, match="budget must be a positive"):
        plan_pieces(mace, fwd, 0)


def test_launch_pieces_compiles_in_parallel_once(monkeypatch):
    """On a GPU the pieces of a kernel are compiled in parallel threads before the first launch
    (Triton's warmup), then launched in order; later launches skip the warmup, and a failing
    parallel compile warns and leaves compiling to the launches. Fake kernels stand in here."""
    import threading

    log = []

    class Fake:
        def __init__(self, name, fail=False):
            self.name, self.fail = name, fail

        def warmup(self, *args, grid, **kw):
            log.append(("warm", self.name, threading.current_thread() is threading.main_thread()))
            if self.fail:
                raise RuntimeError("boom")

        def __getitem__(self, grid):
            return lambda *args, **kw: log.append(("launch", self.name, kw["BLOCK_Z"]))

    monkeypatch.setattr(tritp.kernels, "interpreter_active", lambda: False)
    ks = [Fake("a"), Fake("b")]
    for _ in range(2):
        tritp.kernels.launch_pieces(ks, (3,), (torch.zeros(2), 5), {"BLOCK_Z": 16})
    warms = [e for e in log if e[0] == "warm"]
    assert sorted(e[1] for e in warms) == ["a", "b"] and not any(e[2] for e in warms)  # once each, in threads
    assert [e for e in log if e[0] == "launch"] == [("launch", "a", 16), ("launch", "b", 16)] * 2
    log.clear()
    with pytest.warns(UserWarning, match="compiling kernel pieces in parallel failed"):
        tritp.kernels.launch_pieces([Fake("c", fail=True), Fake("d")], (3,), (5,), {"BLOCK_Z": 16})
    assert [e[1] for e in log if e[0] == "launch"] == ["c", "d"]
    # the CUDA path launches through wrap_triton: still compiled ahead, unless tensors are fake
    # (a traced triton_op, whose kernels Inductor compiles)
    log.clear()
    tritp.kernels.launch_pieces([Fake("g"), Fake("h")], (3,), (torch.zeros(2),), {"BLOCK_Z": 16}, wrap=lambda k: k)
    assert sorted(e[1] for e in log if e[0] == "warm") == ["g", "h"]
    log.clear()
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        fake = torch.zeros(2)
    tritp.kernels.launch_pieces([Fake("i"), Fake("j")], (3,), (fake,), {"BLOCK_Z": 16}, wrap=lambda k: k)
    assert [e[0] for e in log] == ["launch", "launch"]
    log.clear()
    monkeypatch.setenv("TRITP_PARALLEL_COMPILE", "0")
    tritp.kernels.launch_pieces([Fake("e"), Fake("f")], (3,), (5,), {"BLOCK_Z": 16})
    assert [e[0] for e in log] == ["launch", "launch"]


def test_compile_all_stops_waiting_at_its_timeout(monkeypatch):
    """A time-budgeted warm-up (the bench harness gives it half its time limit) cancels the
    compiles not yet started and reports how many finished."""
    import time

    class Slow:
        def warmup(self, *args, grid, **kw):
            time.sleep(0.3)

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    jobs = [(Slow(), (), (1,), {}, torch.device("cpu"))] * 6
    t0 = time.monotonic()
    assert tritp.kernels.compile_all(jobs, timeout=0.05) < 6
    assert time.monotonic() - t0 < 0.3  # did not wait for the queue
    assert tritp.kernels.compile_all(jobs[:3]) == 3


def test_precompile_warms_every_piece_of_every_direction(monkeypatch):
    """TensorProduct.precompile compiles (Triton's warmup, in threads) every piece of every
    kernel of the chosen directions once, launching nothing; a no-op under the interpreter."""
    import tritp.codegen.cg_pieces as cg_pieces

    tri, _ = pair(*MIXED, shared_weights=True)
    assert tri.precompile(batch=8, directions=("fwd",)) == 0  # interpreter: nothing to compile
    monkeypatch.setattr(cg_pieces, "PIECE_BUDGET", 40)
    fakes = FakeKernels()
    monkeypatch.setattr(tritp.kernels, "get_kernel", fakes)
    monkeypatch.setattr(tritp.kernels, "interpreter_active", lambda: False)
    tritp.tuning.clear_memo()  # the launch recipes memoized above hold the unpatched pieces
    n = tri.precompile(batch=8, directions=("fwd", "bwd", "dbl"))
    warmed = fakes.warmed
    keys = [w[0] for w in warmed]
    assert n == len(warmed) == len(set(keys)) > 8  # every piece once
    assert {key[1].target for key in keys} == {"out", "x1", "x2", "w"}
    assert all(w[1][-1] == 8 for w in warmed)  # the batch is the last argument


def test_duplicate_instructions_keep_their_own_weights():
    """e3nn accepts the same path twice, each with its own weights; the kernels once looked
    instructions up by equality and gave both copies the first one's weights (off by 2x)."""
    ins = [(0, 0, 0, "uvu", True), (0, 0, 0, "uvu", True), (1, 1, 0, "uvu", True), (1, 1, 0, "uvu", True, 0.5)]
    tri, ref = pair("4x0e+4x1o", "1x0e+1x1o", "4x0e", ins, shared_weights=False)
    check_against_reference(tri, ref, batch=(3,), dtype=torch.float64)


# -- determinism -----------------------------------------------------------------------------


def test_shared_weight_gradient_is_deterministic(monkeypatch):
    tri, ref = pair(*MIXED, shared_weights=True)
    # more rows than one program takes (the interpreter heuristic caps BLOCK_Z at 128), so the
    # weight gradient is a sum of per-program partials, the last program partly masked
    Z = 130
    nprog = []
    real = tritp.kernels.get_kernel

    def spy(*a, **k):
        kernel = real(*a, **k)

        class P:
            def __getattr__(self, name):
                return getattr(kernel, name)

            def __getitem__(self, grid):
                nprog.append(grid[0])
                return kernel[grid]

        return P()

    x1, x2, w = make_inputs(tri, (Z,), dtype=torch.float32)
    gy = torch.randn(Z, tri.irreps_out.dim)

    def wgrad():
        ww = w.clone().requires_grad_(True)
        (tri(x1, x2, ww) * gy).sum().backward()
        return ww.grad

    g1 = wgrad()
    monkeypatch.setattr(tritp.kernels, "get_kernel", spy)
    tritp.tuning.clear_memo()  # memoized launch recipes hold the kernels found before
    g2 = wgrad()
    assert max(nprog) >= 2, nprog
    assert torch.equal(g1, g2)
    wr = w.double().requires_grad_(True)
    (ref(x1.double(), x2.double(), wr) * gy.double()).sum().backward()
    assert rel(g1, wr.grad) <= 1e-4
    assert rel(tri(x1, x2, w), ref(x1.double(), x2.double(), w.double())) <= 1e-5
    # split-K: one program strides over both row blocks into a single partial row
    monkeypatch.setattr(tritp.kernels, "SPLIT_PROGRAMS_PER_SM", 1)
    monkeypatch.setattr(tritp.kernels, "_sm_count", lambda device: 1)
    nprog.clear()
    g3, g4 = wgrad(), wgrad()
    assert 1 in nprog and torch.equal(g3, g4)
    assert rel(g3, wr.grad) <= 1e-4


# -- source cache ----------------------------------------------------------------------------

CACHE_CHILD = textwrap.dedent("""
    import sys
    import torch
    import tritp
    import tritp.codegen.cg_emit as cg_emit
    import tritp.codegen.coupling as coupling

    def boom(*a, **k):
        raise RuntimeError("REGENERATED")

    cg_emit.emit_producer = boom
    coupling.exact_real_coupling = boom
    d = torch.load(sys.argv[1])
    tp = tritp.compile(d["in1"], d["in2"], d["out"], d["ins"], backend="triton", shared_weights=False,
                       internal_weights=False)
    leaves = [d[k].clone().requires_grad_(True) for k in ("x1", "x2", "w")]
    y = tp(*leaves)
    grads = torch.autograd.grad((y * d["gy"]).sum(), leaves)
    torch.save({"y": y.detach(), "grads": [g.detach() for g in grads]}, sys.argv[2])
    # the patch is live: a problem never seen before has to be generated, and fails
    other = tritp.compile("3x0e", "1x0e", "3x0e", "uvu", backend="triton", shared_weights=False)
    try:
        other(torch.randn(2, 3), torch.randn(2, 1), torch.randn(2, 3))
    except RuntimeError as e:
        assert "REGENERATED" in str(e), e
        print("PATCH-LIVE")
""")


def test_source_cache_is_reused_by_a_new_process(tmp_path):
    in1, in2, out = "2x0e+1x1o", "1x0e+1x1o", "2x0e+1x1o+2x1e"
    ins = [(0, 0, 0, "uvu", True), (1, 1, 0, "uvw", True), (0, 1, 1, "uvw", True), (1, 1, 2, "uvw", True)]
    # The file name hashes the generator's source, memoized at this process's first launch; if
    # codegen/ was edited since then (a long session), the child would compute another name.
    tritp.kernels.generator_hash.cache_clear()
    tp = tritp.compile(in1, in2, out, ins, backend="triton", shared_weights=False, internal_weights=False)
    x1, x2, w = make_inputs(tp, (3,), dtype=torch.float32)
    gy = torch.randn(3, tp.irreps_out.dim)
    leaves = [t.clone().requires_grad_(True) for t in (x1, x2, w)]
    y = tp(*leaves)
    grads = torch.autograd.grad((y * gy).sum(), leaves)
    kernels = Path(os.environ["TRITP_CACHE_DIR"]) / "kernels"
    assert tritp.kernels.source_path(tp.problem, forward_spec(True), "float32", 64).is_file()
    assert len(list(kernels.glob("cg_*.py"))) >= 4  # forward, grad x1, grad x2, grad w
    torch.save({"in1": in1, "in2": in2, "out": out, "ins": ins, "x1": x1, "x2": x2, "w": w, "gy": gy},
               tmp_path / "in.pt")
    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, "-c", CACHE_CHILD, str(tmp_path / "in.pt"), str(tmp_path / "out.pt")],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "PATCH-LIVE" in r.stdout
    child = torch.load(tmp_path / "out.pt")
    assert torch.equal(child["y"], y.detach())
    for a, b in zip(child["grads"], grads):
        assert torch.equal(a, b)


# -- equivariance ----------------------------------------------------------------------------


def test_equivariance():
    tri = tritp.compile(*MIXED, backend="triton", shared_weights=False, internal_weights=False)
    x1, x2, w = make_inputs(tri, (4,))
    # e3nn builds D from float32 constants unless the default dtype is float64 (D is then off by
    # ~1e-7); build the D matrices in float64
    old = torch.get_default_dtype()
    torch.set_default_dtype(F64)
    try:
        R = o3.rand_matrix()
        Ds = {name: [o3.Irreps(str(i)).D_from_matrix(Rm) for i in (tri.irreps_in1, tri.irreps_in2, tri.irreps_out)]
              for name, Rm in (("rotation", R), ("rotation+inversion", -R))}
    finally:
        torch.set_default_dtype(old)
    y = tri(x1, x2, w)
    for name, (D1, D2, Do) in Ds.items():
        err = rel(tri(x1 @ D1.T, x2 @ D2.T, w), y @ Do.T)
        assert err <= 1e-10, (name, err)
        assert rel(y, y @ Do.T) > 1e-2  # the transformation is not trivial on these irreps


def test_uuw_unweighted_against_e3nn():
    """Mode uuw without weights, mixed with every other mode, against e3nn directly."""
    for shared in (True, False):
        tri = tritp.compile(*UUW_UNWEIGHTED, backend="triton", shared_weights=shared, internal_weights=False)
        e3 = e3nn_tp(*UUW_UNWEIGHTED, shared_weights=shared, internal_weights=False)
        assert tri.weight_numel == e3.weight_numel
        x1, x2, w = make_inputs(tri, (4,))
        x1.requires_grad_(True)
        x2.requires_grad_(True)
        y = tri(x1, x2, w)
        y_e3 = e3(x1, x2, w)
        assert rel(y, y_e3) <= 1e-10
        assert rel(y[:, -3:], y_e3[:, -3:]) <= 1e-10  # the 1x1e segment the uuw path writes
        gy = torch.randn(y.shape, dtype=F64)
        g = torch.autograd.grad((y * gy).sum(), [x1, x2])
        g_e3 = torch.autograd.grad((y_e3 * gy).sum(), [x1, x2])
        for a, b in zip(g, g_e3):
            assert rel(a, b) <= 1e-10
