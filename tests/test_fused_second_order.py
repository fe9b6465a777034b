"""The backward of a gradient kernel through the fused backward (``codegen/cg_fused.fused_plan``):
inside a double backward, x2's gradient (the forces kernel) or x1's has the forward's form with its
cotangent in its own slot, so its gradients w.r.t. the other inputs are one fused kernel --
checked against the separate kernels (``TRITP_FUSED_BWD=0``), the float64 reference and to
third order, for the plain product and both convolution scatters.
"""

import pytest
import torch

import tritp
import tritp.conv_ops
import tritp.ops
from tritp.codegen import Problem
from tritp.codegen.cg_fused import fused_plan
from tritp.codegen.cg_spec import FusedSpec, compact, forward_spec
from tritp.conv_module import compile_conv

F64 = torch.float64
MACE_LIKE = ("8x0e+8x1o+4x2e", "0e+1o+2e+3o", "0e+1o+2e+3o")


def _spy(monkeypatch, module, name):
    specs, inner = [], getattr(module, name)

    def spy(problem, spec, *a, **k):
        specs.append(spec)
        return inner(problem, spec, *a, **k)

    monkeypatch.setattr(module, name, spy)
    return specs


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
    specs = _spy(monkeypatch, tritp.ops, "produce")
    got = _dbl(tp, xs, first, third=True)
    assert [s.target for s in specs[:2]] == ["out", ["x1", "x2"][first]]
    assert _fused(specs)[:1] == [fused], specs  # the second pass: one kernel for both gradients
    monkeypatch.setenv("TRITP_FUSED_BWD", "0")
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
    specs = _spy(monkeypatch, tritp.ops, "produce")
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
    specs = _spy(monkeypatch, tritp.ops, "produce")
    got = _dbl(tp, xs, 1)
    assert _fused(specs) == ["x1+w"] and got[1].shape == (1, tp.irreps_in1.dim)
    ref = tritp.compile(*MACE_LIKE, mode="channelwise", backend="reference")
    for a, r in zip(got, _dbl(ref, xs, 1)):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("scatter", ["atomic", "deterministic"])
def test_conv_second_pass_is_one_fused_kernel(scatter, monkeypatch):
    conv = compile_conv("4x0e+4x1o+2x2e", "0e+1o+2e", "0e+1o+2e", mode="channelwise", scatter=scatter)
    g = torch.Generator().manual_seed(4)
    n, e = 6, 29
    src, dst = torch.randint(0, n, (e,), generator=g), torch.randint(0, n, (e,), generator=g)
    xs = _leaves(g, (n, conv.irreps_in1.dim), (e, conv.irreps_in2.dim), (e, conv.weight_numel))
    fn = lambda x, ea, w: conv(x, ea, w, src, dst, n)  # noqa: E731
    specs = _spy(monkeypatch, tritp.conv_ops, "produce_conv")
    got = _dbl(fn, xs, 1, third=True)
    assert _fused(specs)[:1] == ["x1+w"], specs
    monkeypatch.setenv("TRITP_FUSED_BWD", "0")
    apart = _dbl(fn, xs, 1, third=True)
    ref = lambda x, ea, w: conv.unfused(x, ea, w, src, dst, n, backend="reference")  # noqa: E731
    want = _dbl(ref, xs, 1, third=True)
    for a, b, r in zip(got, apart, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-10)
