"""The fused backward of a channelwise product (``codegen/cg_fused.py``): one kernel for the
gradients of x1, the weights and x2, against the separate kernels (``TRITP_FUSED_BWD=0``, the
form before), the float64 reference and second derivatives through it.
"""

import re

import pytest
import torch

import tritp
import tritp.codegen.cg_fused as cg_fused
import tritp.kernels
import tritp.ops
from tritp.codegen import Problem
from tritp.codegen.cg_fused import emit_fused, fused_backward, fused_pieces, segment_costs
from tritp.codegen.cg_spec import FusedSpec, forward_spec, parse_spec
from tritp.reference import reference_tp

F64 = torch.float64
MACE_LIKE = ("8x0e+8x1o+4x2e", "0e+1o+2e+3o", "0e+1o+2e+3o")


@pytest.fixture(autouse=True, params=["eager", "ops"])
def _both_paths(request, monkeypatch):
    """Every test on both call paths: plain eager (tritp.eager_ops) and the registered ops."""
    monkeypatch.setenv("TRITP_FAST_EAGER", "1" if request.param == "eager" else "0")


class Spy:
    """Wraps ``tritp.ops.produce`` and records the spec of every launch."""

    def __init__(self, monkeypatch):
        self.specs, inner = [], tritp.ops.produce

        def produce(problem, spec, *args, **kw):
            self.specs.append(spec)
            return inner(problem, spec, *args, **kw)

        monkeypatch.setattr(tritp.ops, "produce", produce)

    def fused(self) -> list:
        return [s.target for s in self.specs if isinstance(s, FusedSpec)]


def _inputs(tp, Z, dtype=F64, seed=0, needs=("x1", "x2", "w")):
    g = torch.Generator().manual_seed(seed)
    dims = {"x1": tp.irreps_in1.dim, "x2": tp.irreps_in2.dim, "w": tp.weight_numel}
    return {r: torch.randn(Z, d, generator=g, dtype=dtype).requires_grad_(r in needs) for r, d in dims.items() if d}


def _grads(tp, xs, fused: str, monkeypatch, second: bool = True):
    """First gradients of a random scalar of the output, then (``second``) the gradients of a
    nonlinear function of them, with the fused backward on or off."""
    monkeypatch.setenv("TRITP_FUSED_BWD", fused)
    args = [xs["x1"], xs["x2"]] + ([xs["w"]] if "w" in xs else [])
    y = tp(*args)
    cot = torch.randn(y.shape, generator=torch.Generator().manual_seed(7), dtype=y.dtype)
    wrt = [a for a in args if a.requires_grad]
    first = torch.autograd.grad(y, wrt, cot, create_graph=second)
    if not second:
        return first
    s = sum((g * torch.sin(g)).sum() for g in first)
    return first + torch.autograd.grad(s, wrt)


@pytest.mark.parametrize("layout", ["mul_ir", "ir_mul"])
def test_fused_backward_equals_separate_kernels_to_second_order(layout, monkeypatch):
    tp = tritp.compile(*MACE_LIKE, mode="channelwise", layout=layout)
    xs = _inputs(tp, 13)
    spy = Spy(monkeypatch)
    fused = _grads(tp, xs, "1", monkeypatch)
    # the backward ran as one kernel, and its own backward too (fused_specs.fused_second)
    assert spy.fused() == ["x1+w+x2", "x1+w+x2"]
    spy.specs.clear()
    apart = _grads(tp, xs, "0", monkeypatch)
    assert spy.fused() == []
    for a, b in zip(fused, apart):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_fused_backward_against_float64_reference(monkeypatch):
    """fp32 fused gradients against the float64 reference's autograd."""
    tp = tritp.compile(*MACE_LIKE, mode="channelwise")
    xs = _inputs(tp, 21, torch.float32)
    got = _grads(tp, xs, "1", monkeypatch, second=False)
    ref_in = [xs[r].detach().double().requires_grad_() for r in ("x1", "x2", "w")]
    y = reference_tp(tp.problem, *ref_in)
    cot = torch.randn(y.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float32).double()
    want = torch.autograd.grad(y, ref_in, cot)
    for g, r in zip(got, want):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g.double(), r, rtol=1e-5, atol=1e-5 * r.abs().max().item())


@pytest.mark.parametrize("needs", [("x1", "w"), ("x2", "w"), ("x1", "x2")])
def test_fused_parts_follow_the_gradients_asked_for(needs, monkeypatch):
    tp = tritp.compile(*MACE_LIKE, mode="channelwise")
    xs = _inputs(tp, 9, needs=needs)
    spy = Spy(monkeypatch)
    fused = _grads(tp, xs, "1", monkeypatch)
    assert spy.fused() == ["+".join(r for r in ("x1", "w", "x2") if r in needs)] * 2  # first and second order
    apart = _grads(tp, xs, "0", monkeypatch)
    for a, b in zip(fused, apart):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_one_gradient_runs_its_own_kernel(monkeypatch):
    tp = tritp.compile(*MACE_LIKE, mode="channelwise")
    xs = _inputs(tp, 5, needs=("x2",))
    spy = Spy(monkeypatch)
    _grads(tp, xs, "1", monkeypatch, second=False)
    assert spy.fused() == [] and [s.target for s in spy.specs] == ["out", "x2"]


def test_pieces_add_their_share_of_the_x2_gradient(monkeypatch):
    """A fused backward split by x1 segment: later pieces add to the x2 gradient the earlier
    ones stored; the result is the whole kernel's."""
    tp = tritp.compile(*MACE_LIKE, mode="channelwise")
    spec = fused_backward(tp.problem, {"x1", "w", "x2"})
    costs = segment_costs(tp.problem, spec)
    monkeypatch.setattr(cg_fused, "PIECE_BUDGET", sum(costs))
    assert fused_pieces(tp.problem, spec) == (None,)
    whole = _grads(tp, _inputs(tp, 11), "1", monkeypatch, second=False)
    monkeypatch.setattr(cg_fused, "PIECE_BUDGET", min(costs))  # one segment a piece
    tritp.kernels.forget_recipes()  # the launch above memoized the one-piece kernel
    pieces = fused_pieces(tp.problem, spec)
    assert len(pieces) == 3 and [p[1] for p in pieces] == [False, True, True]
    launched, real = [], tritp.kernels.launch_pieces
    monkeypatch.setattr(tritp.kernels, "launch_pieces", lambda ks, *a, **k: launched.append(len(ks)) or real(ks, *a, **k))
    split = _grads(tp, _inputs(tp, 11), "1", monkeypatch, second=False)
    assert launched[-1] == 3  # the backward ran as three pieces
    for a, b in zip(whole, split):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_pieces_sum_the_x2_gradient_in_float32_for_bfloat16(monkeypatch):
    """bf16 operands: the later pieces add to x2's gradient in the accumulation dtype (a bf16
    buffer would round after every piece), and the parts come back in bf16."""
    tp = tritp.compile(*MACE_LIKE, mode="channelwise")
    spec = fused_backward(tp.problem, {"x1", "w", "x2"})
    monkeypatch.setattr(cg_fused, "PIECE_BUDGET", min(segment_costs(tp.problem, spec)))
    g = torch.Generator().manual_seed(5)
    dims = (tp.irreps_in1.dim, tp.irreps_in2.dim, tp.weight_numel, tp.irreps_out.dim)
    ts = [torch.randn(32, d, generator=g).bfloat16() for d in dims]
    parts = tritp.kernels.produce(tp.problem, spec, ts, 32)
    want = tritp.kernels.produce(tp.problem, spec, [t.double() for t in ts], 32)
    assert [p.dtype for p in parts] == [torch.bfloat16] * 3
    err = (parts[2].double() - want[2]).norm() / want[2].norm()
    assert err < 4e-3, err  # one bf16 rounding of the sum (2**-8 relative at most), not three


def test_weightless_and_broadcast_operands(monkeypatch):
    """Paths without weights (parts x1 and x2 only), and x2 one row broadcast over the batch
    (its gradient summed over the rows)."""
    p = Problem("6x0e+6x1o", "0e+1o", "6x0e+6x1o+6x1o", [(0, 0, 0, "uvu", False), (1, 1, 0, "uvu", False),
                                                        (1, 0, 1, "uvu", False), (0, 1, 2, "uvu", False)])
    assert fused_backward(p, {"x1", "x2", "w"}).target == "x1+x2"
    tp = tritp.TensorProduct(p)
    g = torch.Generator().manual_seed(3)
    x1 = torch.randn(7, 24, generator=g, dtype=F64, requires_grad=True)
    x2 = torch.randn(1, 4, generator=g, dtype=F64, requires_grad=True)
    cot = torch.randn(7, p.irreps_out.dim, generator=g, dtype=F64)
    spy = Spy(monkeypatch)
    got = torch.autograd.grad(tp(x1, x2), (x1, x2), cot)
    assert spy.fused() == ["x1+x2"] and got[1].shape == (1, 4)
    want = torch.autograd.grad(reference_tp(p, x1, x2.expand(7, 4)), (x1, x2), cot)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_opcheck_of_the_fused_op():
    tp = tritp.compile("4x0e+4x1o", "0e+1o", "0e+1o", mode="channelwise")
    spec = fused_backward(tp.problem, {"x1", "w", "x2"})
    g = torch.Generator().manual_seed(0)
    dims = (tp.irreps_in1.dim, tp.irreps_in2.dim, tp.weight_numel, tp.irreps_out.dim)
    ts = [torch.randn(3, d, generator=g, dtype=F64, requires_grad=True) for d in dims]
    torch.library.opcheck(torch.ops.tritp.produce_fused.default, (tp.problem.key, spec.to_str(), 3, F64, ts))
    with pytest.raises(ValueError, match="produce_fused"):
        torch.ops.tritp.produce(tp.problem.key, spec.to_str(), 3, F64, ts)
    with pytest.raises(ValueError, match="fused backward"):
        torch.ops.tritp.produce_fused(tp.problem.key, forward_spec().to_str(), 3, F64, ts[:3])


def test_where_fusion_applies():
    fwd = forward_spec()
    ch = Problem.channelwise(*MACE_LIKE)
    assert fused_backward(ch, {"x1", "w", "x2", "out"}).targets == ("x1", "w", "x2")
    assert fused_backward(ch, {"w"}) is None
    assert fused_backward(Problem.fully_connected("4x0e", "4x0e", "4x0e"), {"x1", "w"}) is None  # uvw
    assert fused_backward(Problem.channelwise("4x0e", "2x0e", "4x0e"), {"x1", "w"}) is None  # x2 of 2 channels
    assert fused_backward(Problem.channelwise("4x0e", "0e", "4x0e", shared_weights=True), {"x1", "w"}) is None
    spec = fused_backward(ch, {"x1", "w"})
    assert parse_spec(spec.to_str()) == spec and spec.part("w") == fwd.derivative(2)
    with pytest.raises(ValueError, match="distinct targets"):
        FusedSpec((fwd.derivative(0), fwd.derivative(0)))
    with pytest.raises(ValueError, match="budget"):
        fused_pieces(ch, spec, budget=0)
    with pytest.raises(TypeError, match="FusedSpec"):
        emit_fused(ch, fwd)


def test_the_cotangent_is_read_once_per_path():
    """Each path's cotangent tile is loaded once for all three gradients, each x1 segment's
    channels are walked once, and x2's gradient is summed along the lanes once per pair of x1
    and x2 segments (every component of the x2 segment in one reduction)."""
    p = Problem.channelwise(*MACE_LIKE)
    src = emit_fused(p, fused_backward(p, {"x1", "w", "x2"}), "float32")
    n_paths = len(p.instructions)
    assert len(re.findall(r"tl\.load\(tp?3\b", src)) == n_paths
    assert src.count("for c0 in range(") == len(p.irreps_in1)
    assert src.count("tl.sum(") == len({(i.i_in1, i.i_in2) for i in p.instructions})


def test_second_order_runs_one_kernel_per_tensor_and_skips_unused_parts(monkeypatch):
    """The fused op's derivative sums the terms of every part with a cotangent into one kernel
    per tensor; a part nothing used (forces: only x2's gradient is differentiated again) has
    no cotangent and no terms, so the double backward launches what the separate kernels did
    (with every gradient computed, ``TRITP_PRUNE_GRADS=0``; by default the forces pass runs x2's
    kernel alone and its backward is one fused kernel, tests/test_fused_second_order.py). The
    per-tensor kernels are the double backward's form under ``TRITP_FUSED_DBL=0`` (by default
    x1's, the weights' and x2's come from one kernel, and the cotangent's stays its own)."""
    monkeypatch.setenv("TRITP_FUSED_DBL", "0")
    tp = tritp.compile(*MACE_LIKE, mode="channelwise")
    xs = _inputs(tp, 6)
    args = [xs["x1"], xs["x2"], xs["w"]]
    cot = torch.randn(6, tp.irreps_out.dim, dtype=F64)
    spy = Spy(monkeypatch)
    first = torch.autograd.grad(tp(*args), args, cot, create_graph=True)
    del spy.specs[:]
    torch.autograd.grad(sum((g * g).sum() for g in first), args)
    assert sorted((s.target, len(s.terms)) for s in spy.specs) == [("w", 2), ("x1", 2), ("x2", 2)]
    # forces: differentiate x2's gradient alone; x1's and w's parts have no cotangent
    monkeypatch.setenv("TRITP_PRUNE_GRADS", "0")
    (gx2,) = torch.autograd.grad(tp(*args), args[1], cot, create_graph=True)
    assert [s.target for s in spy.specs[-1:]] == ["x1+w+x2"]
    del spy.specs[:]
    got = torch.autograd.grad((gx2 * gx2).sum(), [args[0], args[2]])
    assert sorted((s.target, len(s.terms)) for s in spy.specs) == [("w", 1), ("x1", 1)]
    monkeypatch.setenv("TRITP_FUSED_BWD", "0")
    (gx2,) = torch.autograd.grad(tp(*args), args[1], cot, create_graph=True)
    want = torch.autograd.grad((gx2 * gx2).sum(), [args[0], args[2]])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
