"""The fused backward of a graph convolution (``codegen/conv_fused.py``): the gradients of x1,
the edge attributes and the per-edge weights in one edge kernel (x1's added atomically, or stored
per edge and summed per source node in a fixed order), against the separate kernels
(``TRITP_FUSED_BWD=0``) to second order, for both scatter strategies."""

import pytest
import torch

import tritp.conv_ops
from tritp.codegen.cg_fused import fused_backward
from tritp.codegen.cg_spec import FusedSpec, forward_spec
from tritp.codegen.conv_fused import emit_fused_conv, fused_mode
from tritp.conv_index import conv_graph
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


def _spied(monkeypatch):
    specs, inner = [], tritp.conv_ops.produce_conv

    def spy(problem, spec, *a, **k):
        specs.append(spec)
        return inner(problem, spec, *a, **k)

    monkeypatch.setattr(tritp.conv_ops, "produce_conv", spy)
    return specs


@pytest.mark.parametrize("scatter", ["atomic", "deterministic"])
def test_edge_gradients_in_one_kernel_to_second_order(scatter, monkeypatch):
    conv = compile_conv(*IRREPS, mode="channelwise", scatter=scatter)
    g = torch.Generator().manual_seed(2)
    n, e = 5, 23
    src, dst = torch.randint(0, n, (e,), generator=g), torch.randint(0, n, (e,), generator=g)
    ts = [torch.randn(n, conv.irreps_in1.dim, generator=g, dtype=F64).requires_grad_(),
          torch.randn(e, conv.irreps_in2.dim, generator=g, dtype=F64).requires_grad_(),
          torch.randn(e, conv.weight_numel, generator=g, dtype=F64).requires_grad_()]
    specs = _spied(monkeypatch)
    fused = _run(conv, ts, src, dst, n, "1", monkeypatch)
    # the whole backward is one kernel (deterministic: x1's rows then summed per source node),
    # and so is its own backward (fused_specs.fused_second)
    assert [s.target for s in specs if isinstance(s, FusedSpec)] == ["x1+w+x2"] * 2
    del specs[:]
    apart = _run(conv, ts, src, dst, n, "0", monkeypatch)
    assert not any(isinstance(s, FusedSpec) for s in specs)
    for a, b in zip(fused, apart):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("needs", [{"x2", "w"}, {"x1", "x2", "w"}])
def test_the_fused_conv_kernel_reads_each_gathered_tile_once(needs):
    conv = compile_conv(*IRREPS, mode="channelwise")
    p = conv.problem
    src = emit_fused_conv(p, fused_backward(p, needs), mode=fused_mode(fused_backward(p, needs), "atomic"))
    assert src.count("tl.load(src + z") == 1 and src.count("tl.load(dst + z") == 1
    assert src.count("for c0 in range(") == len(p.irreps_in1)
    # x1's gradient: per x1 segment (a 3D tile) one atomic add at the source rows, or of the
    # block's sum where the block has one source (two branches)
    assert src.count("tl.atomic_add(") == (2 * len(p.irreps_in1) if "x1" in needs else 0)
    assert ("rg0 = zs * sg0" in src) == ("x1" in needs)
    if "x1" in needs:  # deterministic: x1's part stored per edge, no atomics
        rows = emit_fused_conv(p, fused_backward(p, needs), mode="edge+rows")
        assert "rg0 = ze * sg0" in rows and "tl.atomic_add(" not in rows
        assert rows.count("tl.store(") > src.count("tl.store(")
        with pytest.raises(ValueError, match="mode must be one of"):
            emit_fused_conv(p, fused_backward(p, needs), mode="edge")
        with pytest.raises(ValueError, match="no default|needs 'edge"):
            emit_fused_conv(p, fused_backward(p, needs))
    with pytest.raises(ValueError, match="edge gradients"):
        emit_fused_conv(p, forward_spec())


def _graph(n_in, n_out, e, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, n_in, (e,), generator=g), torch.randint(0, n_out, (e,), generator=g), g


def test_atomic_x1_and_weights_without_x2(monkeypatch):
    """Energy-only training (the edge attributes need no gradient): x1's and the weights'
    gradients from one atomic edge kernel, on a bipartite graph with isolated nodes."""
    conv = compile_conv(*IRREPS, mode="channelwise", scatter="atomic")
    src, dst, g = _graph(7, 4, 19, 3)  # input nodes 7: some are sources of no edge
    x = torch.randn(7, conv.irreps_in1.dim, generator=g, dtype=F64, requires_grad=True)
    ea = torch.randn(19, conv.irreps_in2.dim, generator=g, dtype=F64)
    w = torch.randn(19, conv.weight_numel, generator=g, dtype=F64, requires_grad=True)
    specs = _spied(monkeypatch)
    got = []
    for flag in ("1", "0"):
        monkeypatch.setenv("TRITP_FUSED_BWD", flag)
        y = conv(x, ea, w, src, dst, 4)
        got.append(torch.autograd.grad((y * y.sin()).sum(), (x, w)))
    assert [s.target for s in specs if isinstance(s, FusedSpec)] == ["x1+w"]
    for a, b in zip(*got):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert got[0][0][torch.isin(torch.arange(7), src, invert=True)].abs().max() == 0


@pytest.mark.parametrize("scatter", ["atomic", "deterministic"])
def test_fused_float32_and_pieces_against_float64(scatter, monkeypatch):
    """fp32: x1's part added atomically in fp32 (or its per-edge rows summed per source node);
    split into one piece per x1 segment (each writes its own x1 columns, later ones add to
    x2's): the float64 result."""
    import tritp.conv_kernels as ck
    from tritp.codegen import cg_fused

    conv = compile_conv(*IRREPS, mode="channelwise", scatter=scatter)
    p = conv.problem
    spec = fused_backward(p, {"x1", "x2", "w"})
    monkeypatch.setattr(cg_fused, "PIECE_BUDGET", min(cg_fused.segment_costs(p, spec)))
    assert len(ck.conv_pieces(p, spec)) == 3
    src, dst, g = _graph(5, 5, 31, 4)
    graph = [src, dst] if scatter == "atomic" else conv_graph(src, dst, 5).tensors()
    ts = [torch.randn(5, conv.irreps_in1.dim, generator=g), torch.randn(31, conv.irreps_in2.dim, generator=g),
          torch.randn(31, conv.weight_numel, generator=g), torch.randn(5, conv.irreps_out.dim, generator=g)]
    parts = ck.produce_conv(p, spec, scatter, ts, graph, 5, 5)
    monkeypatch.setattr(cg_fused, "PIECE_BUDGET", 10 ** 9)
    want = ck.produce_conv(p, spec, scatter, [t.double() for t in ts], graph, 5, 5)
    assert [tuple(t.shape) for t in parts] == [(5, ts[0].shape[1]), (31, ts[2].shape[1]), (31, ts[1].shape[1])]
    assert [t.dtype for t in parts] == [torch.float32] * 3
    for a, b in zip(parts, want):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5)
    empty = ck.produce_conv(p, spec, scatter, [ts[0], ts[1][:0], ts[2][:0], ts[3]], [t[:0] for t in graph[:2]]
                            + list(graph[2:]), 5, 5)
    assert [tuple(t.shape) for t in empty] == [(5, ts[0].shape[1]), (0, ts[2].shape[1]), (0, ts[1].shape[1])]
    assert all(t.abs().sum() == 0 for t in empty)


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


@pytest.mark.parametrize("scatter", ["atomic", "deterministic"])
@pytest.mark.parametrize("needs", [(1, 1, 1), (1, 0, 1), (1, 1, 0), (0, 1, 1)], ids=["all", "x1+w", "x1+x2", "w+x2"])
def test_every_backward_kernel_is_listed_for_precompile_and_tuning(needs, scatter, monkeypatch):
    """What a backward and a double backward through all its gradients launch, for any set of
    needed gradients, is in ``conv_specs`` (which precompile and autotune walk)."""
    from tritp.conv_tuning import conv_specs

    conv = compile_conv("4x0e+4x1o", "0e+1o", "0e+1o", mode="channelwise", scatter=scatter)
    listed = {c.spec for _, c in conv_specs(conv.problem, scatter, ("fwd", "bwd", "dbl"))}
    src, dst, g = _graph(5, 5, 9, 8)
    ts = [torch.randn(5, 16, generator=g, dtype=F64), torch.randn(9, 4, generator=g, dtype=F64),
          torch.randn(9, conv.weight_numel, generator=g, dtype=F64)]
    for t, n in zip(ts, needs):
        t.requires_grad_(bool(n))
    specs = _spied(monkeypatch)
    need = [t for t in ts if t.requires_grad]
    first = torch.autograd.grad(conv(*ts, src, dst, 5).pow(2).sum(), need, create_graph=True)
    assert sum(isinstance(s, FusedSpec) for s in specs) == (sum(needs) > 1)  # any two fuse
    torch.autograd.grad(sum((f * f).sum() for f in first), need)
    assert len(specs) > 1 and all(s in listed for s in specs), [s.target for s in specs if s not in listed]


def test_deterministic_x1_rows_are_summed_in_a_fixed_order(monkeypatch):
    """Deterministic scatter: x1's gradient stored per edge by the fused kernel and summed per
    source node: bit-identical run to run, equal (to rounding) to x1's own segment kernel
    (``TRITP_CONV_X1_ROWS=0``), fp32; isolated sources get zero rows; bipartite graph."""
    conv = compile_conv(*IRREPS, mode="channelwise", scatter="deterministic")
    src, dst, g = _graph(9, 4, 37, 12)
    src[src == 3] = 4  # source 3 has no edge
    graph = conv_graph(src, dst, 4, 9)
    ts = [torch.randn(9, conv.irreps_in1.dim, generator=g).requires_grad_(),
          torch.randn(37, conv.irreps_in2.dim, generator=g).requires_grad_(),
          torch.randn(37, conv.weight_numel, generator=g).requires_grad_()]
    specs = _spied(monkeypatch)
    cot = torch.randn(4, conv.irreps_out.dim, generator=g)

    def grads():
        return torch.autograd.grad(conv(*ts, src, dst, 4, graph=graph), ts, cot)

    first, again = grads(), grads()
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert [s.target for s in specs if isinstance(s, FusedSpec)] == ["x1+w+x2"] * 2
    assert first[0][3].abs().max() == 0 and first[0][4].abs().max() > 0
    monkeypatch.setenv("TRITP_CONV_X1_ROWS", "0")
    del specs[:]
    apart = grads()
    assert [s.target for s in specs if isinstance(s, FusedSpec)] == ["w+x2"]
    for a, b in zip(first, apart):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_segment_sum_kernel():
    """The segment sum alone: every node's rows in CSR order, float64, with empty nodes, more
    edges per node than one chunk, IDX64 addressing, and channel blocks narrower than the row."""
    import tritp.conv_segsum as cs
    from tritp.kernels import launch_pieces

    src = torch.tensor([2, 0, 2, 2, 5, 0] + [4] * 19)
    dst = torch.zeros_like(src)
    buf = torch.randn(src.shape[0], 300, dtype=F64, generator=torch.Generator().manual_seed(1))
    for idx64 in (False, True):
        plan = cs.segment_sum_plan(buf, conv_graph(src, dst, 1, 6).tensors(), 6, F64)
        launch_pieces(plan.kernels, plan.grid, plan.args, dict(plan.options, IDX64=idx64))
        want = torch.zeros(6, 300, dtype=F64).index_add_(0, src, buf)
        torch.testing.assert_close(plan.g, want, rtol=1e-12, atol=1e-12)
        assert plan.grid == (6, 3) and plan.g[[1, 3]].abs().max() == 0


@pytest.mark.parametrize("scatter", ["atomic", "deterministic"])
def test_strided_index_tensors(scatter):
    """src and dst as columns of an [E, 2] edge list (strided): the same as contiguous ones,
    forward and every gradient."""
    conv = compile_conv("4x0e+4x1o", "0e+1o", "0e+1o", mode="channelwise", scatter=scatter)
    src, dst, g = _graph(5, 5, 13, 9)
    pairs = torch.stack([src, dst], 1)
    assert not pairs[:, 0].is_contiguous()
    ts = [torch.randn(5, 16, generator=g, dtype=F64, requires_grad=True),
          torch.randn(13, 4, generator=g, dtype=F64, requires_grad=True),
          torch.randn(13, conv.weight_numel, generator=g, dtype=F64, requires_grad=True)]
    out = []
    for s, d in ((src, dst), (pairs[:, 0], pairs[:, 1])):
        y = conv(*ts, s, d, 5)
        out.append((y, *torch.autograd.grad((y * y).sum(), ts)))
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_precompile_plans_the_segment_sum_as_it_launches(monkeypatch):
    """The dry plan (precompile) of the deterministic fused backward's segment sum has the
    launch options and grid of the real one (a real launch would compile anew otherwise)."""
    import tritp.conv_kernels as ck

    conv = compile_conv(*IRREPS, mode="channelwise", scatter="deterministic")
    p = conv.problem
    spec = fused_backward(p, {"x1", "x2", "w"})
    src, dst, g = _graph(5, 5, 31, 4)
    graph = conv_graph(src, dst, 5).tensors()
    ts = [torch.randn(5, conv.irreps_in1.dim), torch.randn(31, conv.irreps_in2.dim),
          torch.randn(31, conv.weight_numel), torch.randn(5, conv.irreps_out.dim)]
    real = ck.conv_launch_plan(p, spec, "deterministic", ts, graph, 5, 5).then
    dry = ck.conv_launch_plan(p, spec, "deterministic", [t[:2] for t in ts], graph, 5, 5, num_edges=31,
                              dry=True).then
    assert dry.options == real.options and dry.grid == real.grid and dry.args[1] == real.args[1] == conv.irreps_in1.dim
