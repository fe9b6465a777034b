"""Double backward in fused kernels (``codegen/fused_specs``), for the plain product and both
convolution scatters, against the separate kernels (``TRITP_FUSED_DBL=0``), the float64
reference and to third order:

* ``fused_plan``: x2's gradient (the forces kernel) or x1's has the forward's form with its
  cotangent in its own slot, so its gradients w.r.t. the other inputs are one fused kernel;
* ``fused_second``: the backward of the fused backward (every gradient differentiated again,
  as training with forces does) computes x1's, the weights' and x2's gradients in one kernel.
"""

import pytest
import torch

import tritp
import tritp.conv_ops
import tritp.ops
from tritp.codegen import Problem
from tritp.codegen.fused_specs import fused_backward, fused_plan, fused_second, slot_terms
from tritp.codegen.cg_spec import FusedSpec, compact, forward_spec
from tritp.conv_module import compile_conv

from support import record_specs

F64 = torch.float64
MACE_LIKE = ("8x0e+8x1o+4x2e", "0e+1o+2e+3o", "0e+1o+2e+3o")


def _fused(specs):
    return [s.target for s in specs if isinstance(s, FusedSpec)]


def _leaves(g, *shapes, dtype=F64):
    return [torch.randn(*s, generator=g, dtype=dtype).requires_grad_() for s in shapes]


def _dbl(fn, inputs, first: int, third: bool = False):
    """The bench's double backward: input ``first``'s gradient with ``create_graph``, then the
    gradients of a fixed linear function of it w.r.t. the other inputs (``third``: then one
    more derivative of a function of those, w.r.t. the other inputs: the backward of the fused
    kernel)."""
    y = fn(*inputs)
    g = torch.Generator().manual_seed(11)
    cot = torch.randn(y.shape, generator=g, dtype=F64).to(y.dtype)  # the same numbers in fp32 and fp64
    (gf,) = torch.autograd.grad(y, inputs[first], cot, create_graph=True)
    h = torch.randn(gf.shape, generator=g, dtype=F64).to(y.dtype)
    others = [t for i, t in enumerate(inputs) if i != first]
    second = torch.autograd.grad(gf, others, h, create_graph=third)
    if not third:
        return (gf,) + second
    s = sum((x * torch.sin(x)).sum() for x in second)
    return (gf,) + second + torch.autograd.grad(s, others)


def test_plan_of_the_forces_kernel_and_of_what_does_not_fuse():
    p = Problem.channelwise("8x0e+8x1o", "0e+1o", "0e+1o")
    fwd = forward_spec()
    gx1, _ = compact(fwd.derivative(0))  # tensors x2, w, gout
    plan = fused_plan(p, gx1, {1, 0})
    assert plan.spec.target == "w+x2" and plan.order == (3, 0, 1, 2) and plan.index == {"w": 1, "x2": 0}
    gw, _ = compact(fwd.derivative(2))  # the weight slot of its backward holds a tangent: no
    assert fused_plan(p, gw, {0, 1}) is None
    forces, _ = compact(fwd.derivative(1))
    assert fused_plan(p, forces, {0}) is None  # one gradient: its own kernel
    shared = Problem.channelwise("8x0e+8x1o", "0e+1o", "0e+1o", shared_weights=True)
    assert fused_plan(shared, forces, {0, 1}) is None  # shared weights: no fused backward


@pytest.mark.parametrize("first, fused, layout", [(1, "x1+w", "mul_ir"), (0, "w+x2", "mul_ir"), (1, "x1+w", "ir_mul")])
def test_second_pass_is_one_fused_kernel(first, fused, layout, monkeypatch):
    tp = tritp.compile(*MACE_LIKE, mode="channelwise", layout=layout)
    g = torch.Generator().manual_seed(1)
    xs = _leaves(g, (11, tp.irreps_in1.dim), (11, tp.irreps_in2.dim), (11, tp.weight_numel))
    specs = record_specs(monkeypatch, tritp.ops, "produce")
    got = _dbl(tp, xs, first, third=True)
    assert [s.target for s in specs[:2]] == ["out", ["x1", "x2"][first]]
    assert _fused(specs)[:1] == [fused], specs  # the second pass: one kernel for both gradients
    monkeypatch.setenv("TRITP_FUSED_DBL", "0")  # the first pass still fused, not the second
    del specs[:]
    apart = _dbl(tp, xs, first, third=True)
    assert _fused(specs) == []
    ref = tritp.compile(*MACE_LIKE, mode="channelwise", layout=layout, backend="reference")
    want = _dbl(ref, xs, first, third=True)
    for a, b, r in zip(got, apart, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-10)


def test_second_pass_fp32_against_float64(monkeypatch):
    tp = tritp.compile(*MACE_LIKE, mode="channelwise")
    g = torch.Generator().manual_seed(2)
    xs = _leaves(g, (17, tp.irreps_in1.dim), (17, tp.irreps_in2.dim), (17, tp.weight_numel), dtype=torch.float32)
    specs = record_specs(monkeypatch, tritp.ops, "produce")
    got = _dbl(tp, xs, 1)
    assert _fused(specs) == ["x1+w"]
    ref = tritp.compile(*MACE_LIKE, mode="channelwise", backend="reference")
    want = _dbl(ref, [x.detach().double().requires_grad_() for x in xs], 1)
    for a, r in zip(got, want):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), r, rtol=1e-5, atol=1e-5 * r.abs().max().item())


def test_broadcast_row_of_x1(monkeypatch):
    # x1 one row broadcast over the batch: the fused part's gradient is summed back to it
    tp = tritp.compile(*MACE_LIKE, mode="channelwise")
    g = torch.Generator().manual_seed(3)
    xs = _leaves(g, (1, tp.irreps_in1.dim), (9, tp.irreps_in2.dim), (9, tp.weight_numel))
    specs = record_specs(monkeypatch, tritp.ops, "produce")
    got = _dbl(tp, xs, 1)
    assert _fused(specs) == ["x1+w"] and got[1].shape == (1, tp.irreps_in1.dim)
    ref = tritp.compile(*MACE_LIKE, mode="channelwise", backend="reference")
    for a, r in zip(got, _dbl(ref, xs, 1)):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-10)


def _conv_case(scatter: str, seed: int, e: int, n: int = 6):
    """A random graph convolution: ``(fused fn, float64 reference fn, [x, edge_attr, w] leaves)``."""
    conv = compile_conv("4x0e+4x1o+2x2e", "0e+1o+2e", "0e+1o+2e", mode="channelwise", scatter=scatter)
    g = torch.Generator().manual_seed(seed)
    src, dst = torch.randint(0, n, (e,), generator=g), torch.randint(0, n, (e,), generator=g)
    xs = _leaves(g, (n, conv.irreps_in1.dim), (e, conv.irreps_in2.dim), (e, conv.weight_numel))
    return (lambda x, ea, w: conv(x, ea, w, src, dst, n),
            lambda x, ea, w: conv.unfused(x, ea, w, src, dst, n, backend="reference"), xs)


@pytest.mark.parametrize("scatter", ["atomic", "deterministic"])
def test_conv_second_pass_is_one_fused_kernel(scatter, monkeypatch):
    fn, ref, xs = _conv_case(scatter, 4, 29)
    specs = record_specs(monkeypatch, tritp.conv_ops, "produce_conv")
    got = _dbl(fn, xs, 1, third=True)
    assert _fused(specs)[:1] == ["x1+w"], specs
    monkeypatch.setenv("TRITP_FUSED_DBL", "0")
    del specs[:]
    apart = _dbl(fn, xs, 1, third=True)
    assert _fused(specs) == []
    want = _dbl(ref, xs, 1, third=True)
    for a, b, r in zip(got, apart, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-10)


# --- the backward of the fused backward: training with forces (fused_specs.fused_second) ---

def _train(fn, inputs, use=(0, 1, 2), nonlinear_cot=False):
    """All first gradients with ``create_graph`` (as a forces pass computes them), then the
    gradients w.r.t. every input of a nonlinear function of the ones in ``use``;
    ``nonlinear_cot``: the output's cotangent depends on the output (so it needs a gradient)."""
    y = fn(*inputs)
    g = torch.Generator().manual_seed(12)
    cot = torch.randn(y.shape, generator=g, dtype=F64).to(y.dtype)
    if nonlinear_cot:
        cot = cot * torch.tanh(y)
    first = torch.autograd.grad(y, inputs, cot, create_graph=True)
    s = sum((first[i] * torch.sin(first[i])).sum() for i in use)
    return first + torch.autograd.grad(s, inputs, allow_unused=True)


def test_second_spec_structure():
    p = Problem.channelwise("8x0e+8x1o", "0e+1o", "0e+1o")
    f = fused_backward(p, {"x1", "w", "x2"})
    s = fused_second(p, f, {0, 1, 2})
    assert s.spec.target == "x1+w+x2" and s.order == tuple(range(7))
    assert [len(part.terms) for part in s.spec.parts] == [2, 2, 2]
    assert s.index == {"x1": 0, "w": 2, "x2": 1}
    # the terms by slot: x1's from the weights' tangent and x2's cotangent, t() of x1 and its cotangent
    st = slot_terms(s.spec)
    assert st.out == 3 and sorted(st.t) == [0, 4] and len(st.s) == 2
    assert fused_second(p, f, {0}) is None  # one gradient
    assert fused_second(p, fused_backward(p, {"x1", "w"}), {0, 1, 2}).spec.target == "x1+w+x2"
    forces, _ = compact(forward_spec().derivative(1))
    assert fused_second(p, forces, {0, 1, 2}) is None  # not a fused backward


@pytest.mark.parametrize("layout", ["mul_ir", "ir_mul"])
def test_training_second_pass_is_one_kernel(layout, monkeypatch):
    tp = tritp.compile(*MACE_LIKE, mode="channelwise", layout=layout)
    g = torch.Generator().manual_seed(13)
    xs = _leaves(g, (10, tp.irreps_in1.dim), (10, tp.irreps_in2.dim), (10, tp.weight_numel))
    specs = record_specs(monkeypatch, tritp.ops, "produce")
    got = _train(tp, xs)
    assert [getattr(s, "target") for s in specs] == ["out", "x1+w+x2", "x1+w+x2"]
    assert len(specs[2].parts[0].terms) == 2  # the second pass, not the first again
    monkeypatch.setenv("TRITP_FUSED_DBL", "0")
    del specs[:]
    apart = _train(tp, xs)
    assert [s.target for s in specs] == ["out", "x1+w+x2", "x1", "x2", "w"]
    ref = tritp.compile(*MACE_LIKE, mode="channelwise", layout=layout, backend="reference")
    want = _train(ref, xs)
    for a, b, r in zip(got, apart, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("use", [(0, 1, 2), (0, 2), (1,)])
def test_training_second_pass_with_a_nonlinear_cotangent(use, monkeypatch):
    # the cotangent's own gradient (a separate kernel) beside the fused one; parts without a
    # cotangent (gradients the loss does not use) add no terms
    tp = tritp.compile(*MACE_LIKE, mode="channelwise")
    g = torch.Generator().manual_seed(14)
    xs = _leaves(g, (9, tp.irreps_in1.dim), (9, tp.irreps_in2.dim), (9, tp.weight_numel))
    specs = record_specs(monkeypatch, tritp.ops, "produce")
    got = _train(tp, xs, use, nonlinear_cot=True)
    second = [s for s in specs if isinstance(s, FusedSpec) and s.roles != ("x1", "x2", "w", "out")]
    assert len(second) == 1, specs  # one second-order kernel (x2's part alone: x1+w)
    monkeypatch.setenv("TRITP_FUSED_DBL", "0")
    apart = _train(tp, xs, use, nonlinear_cot=True)
    want = _train(tritp.compile(*MACE_LIKE, mode="channelwise", backend="reference"), xs, use, nonlinear_cot=True)
    for a, b, r in zip(got, apart, want):
        if r is None:
            assert a is None and b is None
            continue
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-10)


def test_training_second_pass_third_order_and_fp32(monkeypatch):
    tp = tritp.compile(*MACE_LIKE, mode="channelwise")
    g = torch.Generator().manual_seed(15)
    xs = _leaves(g, (8, tp.irreps_in1.dim), (8, tp.irreps_in2.dim), (8, tp.weight_numel))

    ref = tritp.compile(*MACE_LIKE, mode="channelwise", backend="reference")
    y = tp(*xs)
    cot = torch.randn(y.shape, generator=g, dtype=F64)
    first = torch.autograd.grad(y, xs, cot, create_graph=True)
    second = torch.autograd.grad(sum((f * torch.sin(f)).sum() for f in first), xs, create_graph=True)
    got = torch.autograd.grad(sum((x ** 3).sum() for x in second), xs)
    yr = ref(*xs)
    fr = torch.autograd.grad(yr, xs, cot, create_graph=True)
    sr = torch.autograd.grad(sum((f * torch.sin(f)).sum() for f in fr), xs, create_graph=True)
    want = torch.autograd.grad(sum((x ** 3).sum() for x in sr), xs)
    for a, r in zip(got, want):
        torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-9)
    xs32 = [x.detach().float().requires_grad_() for x in xs]
    got32 = _train(tp, xs32)
    want64 = _train(ref, xs)
    for a, r in zip(got32, want64):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), r, rtol=1e-5, atol=1e-5 * r.abs().max().item())


def test_training_second_pass_with_weightless_paths(monkeypatch):
    # a tangent in the weight slot adds nothing on a path without weights; the weights
    # themselves multiply by one there
    ins = [(0, 0, 0, "uvu", True), (1, 1, 0, "uvu", False), (1, 0, 1, "uvu", True), (0, 1, 1, "uvu", False)]
    kw = dict(shared_weights=False)
    tp = tritp.compile("4x0e+4x1o", "0e+1o", "4x0e+4x1o", ins, **kw)
    g = torch.Generator().manual_seed(16)
    xs = _leaves(g, (7, tp.irreps_in1.dim), (7, tp.irreps_in2.dim), (7, tp.weight_numel))
    specs = record_specs(monkeypatch, tritp.ops, "produce")
    got = _train(tp, xs)
    assert [s.target for s in specs] == ["out", "x1+w+x2", "x1+w+x2"]
    want = _train(tritp.compile("4x0e+4x1o", "0e+1o", "4x0e+4x1o", ins, backend="reference", **kw), xs)
    for a, r in zip(got, want):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("scatter", ["atomic", "deterministic"])
def test_conv_training_second_pass_is_one_kernel(scatter, monkeypatch):
    fn, ref, xs = _conv_case(scatter, 17, 31)
    specs = record_specs(monkeypatch, tritp.conv_ops, "produce_conv")
    got = _train(fn, xs, nonlinear_cot=True)
    # the first pass, the second pass in one kernel (7 tensors), the first pass again through the
    # cotangent's dependence on the output
    fused = [s for s in specs if isinstance(s, FusedSpec)]
    assert sorted(len(s.roles) for s in fused) == [4, 4, 7] and {s.target for s in fused} == {"x1+w+x2"}
    monkeypatch.setenv("TRITP_FUSED_DBL", "0")
    apart = _train(fn, xs, nonlinear_cot=True)
    want = _train(ref, xs, nonlinear_cot=True)
    for a, b, r in zip(got, apart, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-10)
