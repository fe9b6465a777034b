"""Fused convolution: input validation (errors before any kernel launch), empty graphs,
isolated nodes, the per-graph helper, and ``torch.compile`` with forces (design notes §4)."""

import pytest
import torch

import tritp.conv_kernels
import tritp.conv_ops
from tritp.conv_index import ConvGraph, conv_graph
from tritp.conv_module import compile_conv

F64 = torch.float64
SMALL = ("2x0e+1x1o", "0e+1o", "0e+1o")


@pytest.fixture
def no_launch(monkeypatch):
    """Fail the test if any conv kernel is fetched (i.e. a launch was about to happen)."""
    def boom(*a, **k):
        raise AssertionError("a conv kernel was launched")
    monkeypatch.setattr(tritp.conv_kernels, "get_conv_kernel", boom)


def case(scatter="atomic", e=6, n=4, **kw):
    conv = compile_conv(*SMALL, mode="channelwise", scatter=scatter, **kw)
    src = torch.tensor([0, 1, 2, 2, 1, 0][:e], dtype=torch.long)
    dst = torch.tensor([1, 0, 1, 0, 2, 2][:e], dtype=torch.long)
    x = torch.randn(n, conv.irreps_in1.dim, dtype=F64)
    ea = torch.randn(e, conv.irreps_in2.dim, dtype=F64)
    w = torch.randn(e, conv.weight_numel, dtype=F64)
    return conv, [x, ea, w, src, dst, n]


BAD = [
    ("float src", lambda a: a.__setitem__(3, a[3].float()), TypeError, "src: edge indices must be int32 or int64"),
    ("2-D dst", lambda a: a.__setitem__(4, a[4][None]), ValueError, "dst: expected a 1-D tensor"),
    ("src/dst counts", lambda a: a.__setitem__(4, a[4][:5]), ValueError, "src and dst have different edge counts"),
    ("edge_attrs count", lambda a: a.__setitem__(1, a[1][:5]), ValueError, "edge_attrs has 5 rows but src/dst have 6"),
    ("weights count", lambda a: a.__setitem__(2, a[2][:4]), ValueError, r"edge_weights: expected shape \[6, 6\]"),
    ("weights missing", lambda a: a.__setitem__(2, None), ValueError, "needs 6 weights per edge"),
    ("negative num_nodes", lambda a: a.__setitem__(5, -1), ValueError, "num_nodes must be >= 0"),
    ("float num_nodes", lambda a: a.__setitem__(5, 4.0), TypeError, "num_nodes: expected an int"),
    ("negative src", lambda a: a[3].__setitem__(2, -1), IndexError, r"src\[2\] = -1 is negative"),
    ("src too large", lambda a: a[3].__setitem__(1, 4), IndexError, r"src\[1\] = 4 is out of range for 4 nodes"),
    ("dst too large", lambda a: a[4].__setitem__(5, 9), IndexError, r"dst\[5\] = 9 is out of range for 4 nodes"),
    ("int node_feats", lambda a: a.__setitem__(0, a[0].long()), TypeError, "node_feats: expected a floating-point"),
    ("dtype mismatch", lambda a: a.__setitem__(1, a[1].float()), TypeError, "edge_attrs: dtype/device"),
    ("node_feats width", lambda a: a.__setitem__(0, a[0][:, :3]), ValueError,
     r"node_feats: expected shape \[rows, 5\]"),
]


@pytest.mark.parametrize("scatter", ["atomic", "deterministic"])
@pytest.mark.parametrize("name,mutate,exc,match", BAD, ids=[b[0] for b in BAD])
def test_bad_input_raises_before_launch(no_launch, scatter, name, mutate, exc, match):
    conv, args = case(scatter)
    mutate(args)
    with pytest.raises(exc, match=match):
        conv(*args)


def test_bad_graph_argument(no_launch):
    conv, args = case("deterministic")
    with pytest.raises(TypeError, match="graph: expected a ConvGraph"):
        conv(*args, graph=(args[3], args[4]))
    other = conv_graph(args[3][:5], args[4][:5], 4)
    with pytest.raises(ValueError, match="graph: built for 5 edges"):
        conv(*args, graph=other)
    with pytest.raises(IndexError, match=r"dst\[0\] = 7"):
        conv_graph(args[3], torch.tensor([7, 0, 0, 0, 0, 0]), 4)


def test_check_indices_false_skips_the_range_check(monkeypatch):
    def boom(*a):
        raise AssertionError("range check ran")
    monkeypatch.setattr(tritp.conv_ops, "check_ranges", boom)
    conv, args = case("atomic")
    with pytest.raises(AssertionError, match="range check ran"):
        conv(*args)
    conv, args = case("atomic", check_indices=False)
    ref = conv.unfused(*args, backend="reference")
    assert (conv(*args) - ref).abs().max() < 1e-12


@pytest.mark.parametrize("scatter", ["atomic", "deterministic"])
def test_empty_graph_and_isolated_nodes(scatter):
    conv, (x, ea, w, src, dst, n) = case(scatter, e=0, n=3)
    x.requires_grad_(), ea.requires_grad_(), w.requires_grad_()
    y = conv(x, ea, w, src, dst, n)
    assert y.shape == (3, conv.irreps_out.dim) and torch.all(y == 0)
    gx, gea, gw = torch.autograd.grad(y.sum(), (x, ea, w))
    assert gx.shape == x.shape and torch.all(gx == 0) and gea.shape == (0, 4) and gw.shape == (0, 6)
    assert conv(x, ea, w, src, dst, 0).shape == (0, conv.irreps_out.dim)  # no nodes, no edges
    # node 3 is isolated (neither source nor destination): zero output row, zero gradient
    conv, (x, ea, w, src, dst, n) = case(scatter, n=4)
    x.requires_grad_()
    y = conv(x, ea, w, src, dst, n)
    (gx,) = torch.autograd.grad(y.pow(2).sum(), (x,))
    assert torch.all(y[3] == 0) and torch.all(gx[3] == 0) and y[:3].abs().max() > 0


def test_conv_graph_groups_unsorted_edges():
    src = torch.tensor([2, 0, 1, 2, 0], dtype=torch.int32)
    dst = torch.tensor([1, 1, 0, 0, 1], dtype=torch.int32)
    g = conv_graph(src, dst, num_nodes=3)
    assert isinstance(g, ConvGraph) and g.num_edges == 5 and g.num_src_nodes == 3
    assert g.dst_ptr.tolist() == [0, 2, 5, 5] and g.dst_order.tolist() == [2, 3, 0, 1, 4]
    assert g.dst_nbr.tolist() == [1, 2, 2, 0, 0]
    assert g.src_ptr.tolist() == [0, 2, 3, 5] and g.src_order.tolist() == [1, 4, 2, 0, 3]
    assert g.src_nbr.tolist() == [1, 1, 0, 1, 0]
    assert all(t.dtype == torch.int32 for t in g.tensors())


def test_torch_compile_fullgraph_with_forces():
    """Energy and forces compiled together (trace_autograd_ops), loss.backward() outside: equal
    to eager; the deterministic graph helper and the range check run inside the graph."""
    torch._dynamo.reset()

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = compile_conv(*SMALL, mode="channelwise", scatter="deterministic")
            self.embed = torch.nn.Parameter(torch.randn(3, 5, dtype=F64))
            self.radial = torch.nn.Parameter(torch.randn(1, self.conv.weight_numel, dtype=F64))

        def forward(self, pos, species, src, dst):
            vec = pos[dst] - pos[src]
            r = vec.norm(dim=1, keepdim=True)
            ea = torch.cat([torch.ones_like(r), vec / r], dim=1)
            out = self.conv(self.embed[species], ea, torch.exp(-r) * self.radial, src, dst, pos.shape[0])
            return out[:, :2].pow(2).sum() + out[:, 2:].sum()

    model = Model()

    def energy_and_forces(pos, species, src, dst):
        e = model(pos, species, src, dst)
        return e, -torch.autograd.grad(e, pos, create_graph=True)[0]

    pos, species = torch.randn(5, 3, dtype=F64), torch.tensor([0, 1, 2, 1, 0])
    src, dst = torch.tensor([0, 1, 2, 3, 4, 0, 2, 1]), torch.tensor([1, 0, 3, 2, 0, 4, 1, 3])
    old = torch._dynamo.config.trace_autograd_ops
    torch._dynamo.config.trace_autograd_ops = True
    try:
        compiled = torch.compile(energy_and_forces, fullgraph=True, backend="aot_eager")
        results = []
        for fn in (energy_and_forces, compiled):
            model.zero_grad()
            e, f = fn(pos.clone().requires_grad_(), species, src, dst)
            (e + f.pow(2).sum()).backward()
            results.append([e, f, model.radial.grad, model.embed.grad])
        for a, b in zip(*results):
            assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)
        # the range check runs on real indices inside a compiled graph too
        conv = torch.compile(model.conv, fullgraph=True, backend="aot_eager")
        x, ea, w = torch.randn(5, 5, dtype=F64), torch.randn(8, 4, dtype=F64), torch.randn(8, 6, dtype=F64)
        assert torch.equal(conv(x, ea, w, src, dst, 5), model.conv(x, ea, w, src, dst, 5))
        with pytest.raises(IndexError, match=r"dst\[1\] = 5 is out of range"):
            conv(x, ea, w, src, torch.tensor([1, 5, 3, 2, 0, 4, 1, 3]), 5)
    finally:
        torch._dynamo.config.trace_autograd_ops = old
        torch._dynamo.reset()
