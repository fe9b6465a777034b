"""The fused edge backward of a graph convolution (``codegen/conv_fused.py``): the gradients of
the edge attributes and the per-edge weights in one edge kernel, against the separate kernels
(``TRITP_FUSED_BWD=0``) to second order, for both scatter strategies."""

import pytest
import torch

import tritp.conv_ops
from tritp.codegen.cg_fused import fused_backward
from tritp.codegen.cg_spec import FusedSpec
from tritp.codegen.conv_fused import emit_fused_conv
from tritp.conv_module import compile_conv

F64 = torch.float64
IRREPS = ("4x0e+4x1o+2x2e", "0e+1o+2e", "0e+1o+2e")


def _run(conv, ts, src, dst, n, fused: str, monkeypatch):
    monkeypatch.setenv("TRITP_FUSED_BWD", fused)
    y = conv(*ts, src, dst, n)
    cot = torch.randn(y.shape, generator=torch.Generator().manual_seed(7), dtype=F64)
    first = torch.autograd.grad(y, ts, cot, create_graph=True)
    second = torch.autograd.grad(sum((g * torch.cos(g)).sum() for g in first), ts)
    return first + second


@pytest.mark.parametrize("scatter", ["atomic", "deterministic"])
def test_edge_gradients_in_one_kernel_to_second_order(scatter, monkeypatch):
    conv = compile_conv(*IRREPS, mode="channelwise", scatter=scatter)
    g = torch.Generator().manual_seed(2)
    n, e = 5, 23
    src, dst = torch.randint(0, n, (e,), generator=g), torch.randint(0, n, (e,), generator=g)
    ts = [torch.randn(n, conv.irreps_in1.dim, generator=g, dtype=F64).requires_grad_(),
          torch.randn(e, conv.irreps_in2.dim, generator=g, dtype=F64).requires_grad_(),
          torch.randn(e, conv.weight_numel, generator=g, dtype=F64).requires_grad_()]
    specs, inner = [], tritp.conv_ops.produce_conv

    def spy(problem, spec, *a, **k):
        specs.append(spec)
        return inner(problem, spec, *a, **k)

    monkeypatch.setattr(tritp.conv_ops, "produce_conv", spy)
    fused = _run(conv, ts, src, dst, n, "1", monkeypatch)
    assert [s.target for s in specs if isinstance(s, FusedSpec)] == ["w+x2"]
    del specs[:]
    apart = _run(conv, ts, src, dst, n, "0", monkeypatch)
    assert not any(isinstance(s, FusedSpec) for s in specs)
    for a, b in zip(fused, apart):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_the_fused_conv_kernel_reads_each_gathered_tile_once():
    conv = compile_conv(*IRREPS, mode="channelwise")
    p = conv.problem
    src = emit_fused_conv(p, fused_backward(p, {"x2", "w"}))
    assert src.count("tl.load(src + z") == 1 and src.count("tl.load(dst + z") == 1
    assert src.count("for c0 in range(") == len(p.irreps_in1)
    with pytest.raises(ValueError, match="edge gradients"):
        emit_fused_conv(p, fused_backward(p, {"x1", "w"}))


def test_each_op_names_the_other_for_the_wrong_spec():
    conv = compile_conv("2x0e", "0e", "2x0e", mode="channelwise")
    p = conv.problem
    fused = fused_backward(p, {"x2", "w"}).to_str()
    ts = [torch.randn(2, 2), torch.randn(3, 1), torch.randn(3, 2), torch.randn(2, 2)]
    g = [torch.tensor([0, 1, 1]), torch.tensor([1, 0, 1])]
    g = g + [g[0]]
    with pytest.raises(ValueError, match="tritp::conv_produce_fused, not tritp::conv_produce"):
        torch.ops.tritp.conv_produce(p.key, fused, "atomic", 2, 2, torch.float32, ts, g)
    with pytest.raises(ValueError, match="tritp::conv_produce_fused runs a fused backward"):
        torch.ops.tritp.conv_produce_fused(p.key, "out|x1,x2,w|0.1.2.-.0", "atomic", 2, 2, torch.float32, ts[:3], g)
