"""Atomic convolution kernels can add the sum of a block's rows once where the block's edges share
one destination (``ConvEmitter.emit_block_sum``, ``TRITP_CONV_BLOCK_SUMS=1``; the default adds every row):
equal to the row-by-row adds and to the unfused reference whatever the order of the edges --
one destination per block, two, many, every edge its own -- to second order."""

import pytest
import torch

from tritp.codegen import Problem
from tritp.codegen.cg_fused import fused_backward
from tritp.codegen.cg_spec import compact, forward_spec
from tritp.codegen.conv_emit import emit_conv_producer
from tritp.codegen.conv_fused import emit_fused_conv
from tritp.conv_kernels import produce_conv
from tritp.conv_module import compile_conv
from tritp.tuning import Config

F64 = torch.float64
IRREPS = ("3x0e+2x1o+1x2e", "0e+1o+2e", "0e+1o+2e")


def _problem():
    return Problem.channelwise(*IRREPS, shared_weights=False)


def test_only_destination_targets_sum_blocks():
    p = _problem()
    fwd = forward_spec()
    src = emit_conv_producer(p, fwd, "float32", mode="atomic")
    assert "one = tl.sum((zm & (zd != kf)).to(tl.int32), axis=0) == 0" in src
    # per target store: the block's sum where it has one destination, else every row
    stores = sum(1 for (mul, _) in p.irreps_out if mul)
    assert src.count("tl.atomic_add(") == 2 * stores and src.count("if one:") == stores
    assert src.count("tl.atomic_add(g + rf + (") == stores
    plain = emit_conv_producer(p, fwd, "float32", mode="atomic", block_sums=False)
    assert "if one:" not in plain and plain.count("tl.atomic_add(") == stores
    # x1's gradient adds at the sources: a block of one source (edges sorted by source) sums
    gx1 = emit_conv_producer(p, compact(fwd.derivative(0))[0], "float32", mode="atomic")
    assert "kf = tl.load(src + pid * BLOCK_Z)" in gx1 and "one = tl.sum((zm & (zs != kf))" in gx1
    assert "if one:" not in emit_conv_producer(p, fwd, "float32", mode="segment")
    # the fused atomic backward: its x1 part (suffix 0)
    fused = emit_fused_conv(p, fused_backward(p, {"x1", "x2", "w"}), mode="edge+atomic")
    assert "one0 = tl.sum((zm & (zs != kf0))" in fused and fused.count("if one0:") == len(p.irreps_in1)
    assert "if one" not in emit_fused_conv(p, fused_backward(p, {"x1", "x2", "w"}), mode="edge+rows")


def _graphs(n: int, g: torch.Generator) -> dict:
    """Edge lists whose blocks of 4 hold one destination, two, several, or one per edge."""
    return {
        "sorted, long runs": torch.arange(n).repeat_interleave(9)[:36],  # 4 nodes, blocks of one or two
        "sorted, runs of 1-3": torch.sort(torch.randint(0, n, (3 * n,), generator=g))[0],
        "unsorted": torch.randint(0, n, (40,), generator=g),
        "all distinct": torch.randperm(n, generator=g),
    }


def _with_and_without(monkeypatch, run) -> tuple:
    """``run()`` with block sums and with row-by-row adds (the default), at 4 edges a block."""
    out = []
    for sums in ("1", "0"):
        monkeypatch.setenv("TRITP_CONV_BLOCK_SUMS", sums)
        out.append(run(Config(4, 16, 1)))
    return tuple(out)


@pytest.mark.parametrize("case", ["sorted, long runs", "sorted, runs of 1-3", "unsorted", "all distinct"])
def test_block_sums_equal_row_adds_forward(case, monkeypatch):
    p = _problem()
    g = torch.Generator().manual_seed(11)
    n = 13
    dst = _graphs(n, g)[case]
    E = dst.shape[0]
    src = torch.randint(0, n, (E,), generator=g)
    ts = [torch.randn(n, p.irreps_in1.dim, generator=g, dtype=F64), torch.randn(E, p.irreps_in2.dim, generator=g,
          dtype=F64), torch.randn(E, p.weight_numel, generator=g, dtype=F64)]
    sums, rows = _with_and_without(monkeypatch, lambda c: produce_conv(p, forward_spec(), "atomic", ts, [src, dst],
                                                                       n, n, config=c))
    torch.testing.assert_close(sums, rows, rtol=1e-12, atol=1e-12)
    assert sums[torch.unique(dst)].abs().min() > 0


@pytest.mark.parametrize("sort", [True, False], ids=["sorted", "unsorted"])
def test_block_sums_to_second_order_against_reference(sort, monkeypatch):
    """The module's atomic forward and the double backward's destination targets (all with
    block sums) against the unfused float64 reference."""
    monkeypatch.setenv("TRITP_CONV_BLOCK_SUMS", "1")
    conv = compile_conv(*IRREPS, mode="channelwise", scatter="atomic")
    g = torch.Generator().manual_seed(4)
    n, E = 6, 29
    dst = torch.randint(0, n, (E,), generator=g)
    dst = torch.sort(dst)[0] if sort else dst
    src = torch.randint(0, n, (E,), generator=g)
    ts = [torch.randn(n, conv.irreps_in1.dim, generator=g, dtype=F64).requires_grad_(),
          torch.randn(E, conv.irreps_in2.dim, generator=g, dtype=F64).requires_grad_(),
          torch.randn(E, conv.weight_numel, generator=g, dtype=F64).requires_grad_()]
    res = []
    for run in (lambda *a: conv(*a, src, dst, n), lambda *a: conv.unfused(*a, src, dst, n, backend="reference")):
        y = run(*ts)
        first = torch.autograd.grad((y * y.sin()).sum(), ts, create_graph=True)
        second = torch.autograd.grad(sum((f * f.cos()).sum() for f in first), ts)
        res.append((y, *first, *second))
    for a, b in zip(*res):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", ["sorted, long runs", "unsorted"])
def test_block_sums_at_the_sources(case, monkeypatch):
    """x1's gradient (the atomic kernel alone, and the fused backward's x1 part) with edges
    sorted by source, as a neighbour list gives them: block sums equal the row-by-row adds."""
    p = _problem()
    g = torch.Generator().manual_seed(6)
    n = 11
    src = _graphs(n, g)[case]
    E = src.shape[0]
    dst = torch.randint(0, n, (E,), generator=g)
    x1, ea = torch.randn(n, p.irreps_in1.dim, generator=g, dtype=F64), torch.randn(E, p.irreps_in2.dim, generator=g,
                                                                                   dtype=F64)
    w, gout = torch.randn(E, p.weight_numel, generator=g, dtype=F64), torch.randn(n, p.irreps_out.dim, generator=g,
                                                                                  dtype=F64)
    dx1, kept = compact(forward_spec().derivative(0))
    fused = fused_backward(p, {"x1", "x2", "w"})
    vals = [x1, ea, w, gout]
    sums, rows = _with_and_without(monkeypatch, lambda c: [
        produce_conv(p, dx1, "atomic", [vals[k] for k in kept], [src, dst], n, n, config=c),
        *produce_conv(p, fused, "atomic", vals, [src, dst], n, n, config=c)])
    for a, b in zip(sums, rows):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sums[0], sums[1], rtol=1e-12, atol=1e-12)


def test_row_adds_are_the_default(monkeypatch):
    """Block sums are opt-in: the H200 timed the atomic forward slower with them."""
    from tritp.kernel_forms import conv_block_sums

    monkeypatch.delenv("TRITP_CONV_BLOCK_SUMS", raising=False)
    assert not conv_block_sums()
    monkeypatch.setenv("TRITP_CONV_BLOCK_SUMS", "1")
    assert conv_block_sums()
