"""Gradients only for the inputs the running backward pass uses (``tritp.op_pair.engine_needs``):
``torch.autograd.grad(y, x2)`` launches x2's producer and not those of x1 and the weights, even
though all three require grad; a shared weight (a leaf) is pruned through its view
(``graph_inputs``). ``TRITP_PRUNE_GRADS=0`` computes every gradient, the form before.
"""

import pytest
import torch
import torch._dynamo

import tritp
import tritp.conv_ops
import tritp.gaunt_ops
import tritp.ops
from tritp.conv_module import compile_conv

from potential import Potential, clone_system, energy_forces, make_system, training_step
from support import record_specs

F64 = torch.float64


@pytest.fixture(autouse=True, params=["eager", "ops"])
def _both_paths(request, monkeypatch):
    """Every test on both call paths: plain eager (tritp.eager_ops) and the registered ops."""
    monkeypatch.setenv("TRITP_FAST_EAGER", "1" if request.param == "eager" else "0")


def _spy(monkeypatch, module, name):
    """Record the target of every producer ``module.name`` runs (a fused one as ``"x1+w+x2"``)."""
    return record_specs(monkeypatch, module, name, lambda s: s.target if hasattr(s, "target") else s.split("|")[0])


def _conv_graph(scatter: str, seed: int, e: int, n: int = 5) -> tuple:
    """``(conv, generator, n, e, src, dst)``: a small channelwise convolution and a random graph."""
    conv = compile_conv("4x0e+4x1o", "0e+1o", "0e+1o", mode="channelwise", scatter=scatter)
    g = torch.Generator().manual_seed(seed)
    return conv, g, n, e, torch.randint(0, n, (e,), generator=g), torch.randint(0, n, (e,), generator=g)


def _leaves(g, *shapes):
    return [torch.randn(*s, generator=g, dtype=F64).requires_grad_() for s in shapes]


@pytest.mark.parametrize("prune", ["1", "0"])
def test_forces_pass_runs_only_the_x2_producer(prune, monkeypatch):
    monkeypatch.setenv("TRITP_PRUNE_GRADS", prune)
    tp = tritp.compile("4x0e+4x1o", "0e+1o", "0e+1o", mode="channelwise")
    x1, x2, w = _leaves(torch.Generator().manual_seed(0), (6, tp.irreps_in1.dim), (6, 4), (6, tp.weight_numel))
    targets = _spy(monkeypatch, tritp.ops, "produce")
    y = tp(x1, x2, w)
    cot = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    (g2,) = torch.autograd.grad(y, x2, cot, create_graph=True)
    first = targets[1:]
    # then the derivative of a function of the forces w.r.t. the weights only
    (gw,) = torch.autograd.grad((g2 * g2).sum(), w)
    second = targets[1 + len(first):]
    if prune == "1":
        assert first == ["x2"]
        assert second == ["w"]
    else:
        assert "x1" in "".join(first) and "w" in "".join(first)  # every gradient, wanted or not
        assert second == ["x1+w"]  # x2's part differentiated again, in one kernel (fused_second)
    monkeypatch.setenv("TRITP_PRUNE_GRADS", "0")
    ref = tritp.compile("4x0e+4x1o", "0e+1o", "0e+1o", mode="channelwise", backend="reference")
    y_ref = ref(x1, x2, w)
    (r2,) = torch.autograd.grad(y_ref, x2, cot, create_graph=True)
    (rw,) = torch.autograd.grad((r2 * r2).sum(), w)
    torch.testing.assert_close(g2, r2, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gw, rw, rtol=1e-10, atol=1e-12)


def test_shared_weight_gradient_skipped_until_asked_for(monkeypatch):
    # a leaf parameter: only its view lets the engine say it is not wanted in the forces pass
    tp = tritp.compile("16x0e+16x1o", "16x0e+16x1o", "16x0e+16x1o", shared_weights=True, internal_weights=True)
    tp = tp.double()
    g = torch.Generator().manual_seed(3)
    x1, x2 = _leaves(g, (16, tp.irreps_in1.dim), (16, tp.irreps_in2.dim))
    targets = _spy(monkeypatch, tritp.ops, "produce")
    y = tp(x1, x2)
    (g1,) = torch.autograd.grad(y.square().sum(), x1, create_graph=True)
    assert targets[1:] == ["x1"], targets
    del targets[:]
    loss = g1.square().sum() + y.sum()
    loss.backward()
    assert "w" in targets  # now the weight gradient is wanted, and computed
    ref = tritp.compile("16x0e+16x1o", "16x0e+16x1o", "16x0e+16x1o", shared_weights=True, internal_weights=True,
                        backend="reference").double()
    ref.load_state_dict(tp.state_dict())
    a, b = x1.detach().requires_grad_(), x2.detach()
    yr = ref(a, b)
    (r1,) = torch.autograd.grad(yr.square().sum(), a, create_graph=True)
    (r1.square().sum() + yr.sum()).backward()
    torch.testing.assert_close(g1, r1, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(tp.weight.grad, ref.weight.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(x1.grad, a.grad, rtol=1e-10, atol=1e-12)


def test_backward_with_inputs_and_mixed_requires_grad(monkeypatch):
    tp = tritp.compile("4x0e+4x1o", "0e+1o", "0e+1o", mode="channelwise")
    g = torch.Generator().manual_seed(5)
    x1 = torch.randn(7, tp.irreps_in1.dim, generator=g, dtype=F64)  # no grad: the list positions must still line up
    x2, w = _leaves(g, (7, 4), (7, tp.weight_numel))
    targets = _spy(monkeypatch, tritp.ops, "produce")
    y = tp(x1, x2, w)
    y.square().sum().backward(inputs=[w])
    assert targets[1:] == ["w"], targets
    assert x2.grad is None
    gw = w.grad.clone()
    w.grad = None
    monkeypatch.setenv("TRITP_PRUNE_GRADS", "0")
    tp(x1, x2, w).square().sum().backward()
    torch.testing.assert_close(gw, w.grad, rtol=1e-12, atol=1e-12)


def test_input_off_the_path_of_the_wanted_gradient(monkeypatch):
    # MACE's first layer: node features from an embedding (parameters only); forces want positions
    tp = tritp.compile("4x0e+4x1o", "0e+1o", "0e+1o", mode="channelwise")
    g = torch.Generator().manual_seed(6)
    emb = torch.nn.Linear(3, tp.irreps_in1.dim).double()
    pos, w = _leaves(g, (5, 4), (5, tp.weight_numel))
    targets = _spy(monkeypatch, tritp.ops, "produce")
    y = tp(emb(torch.randn(5, 3, generator=g, dtype=F64)), pos * 2.0, w)
    torch.autograd.grad(y.sum(), pos)
    assert targets[1:] == ["x2"], targets


@pytest.mark.parametrize("scatter", ["atomic", "deterministic"])
def test_conv_forces_pass_launches_the_edge_attribute_gradient_only(scatter, monkeypatch):
    conv, g, n, e, src, dst = _conv_graph(scatter, seed=7, e=17)
    x, ea, w = _leaves(g, (n, conv.irreps_in1.dim), (e, 4), (e, conv.weight_numel))
    targets = _spy(monkeypatch, tritp.conv_ops, "produce_conv")
    y = conv(x, ea, w, src, dst, n)
    cot = torch.randn(y.shape, generator=g, dtype=F64)
    (gea,) = torch.autograd.grad(y, ea, cot, create_graph=True)
    assert targets[1:] == ["x2"], targets
    (gx,) = torch.autograd.grad(gea.square().sum(), x)
    assert targets[2:] == ["x1"], targets
    monkeypatch.setenv("TRITP_PRUNE_GRADS", "0")
    y = conv(x, ea, w, src, dst, n)
    (r,) = torch.autograd.grad(y, ea, cot, create_graph=True)
    (rx,) = torch.autograd.grad(r.square().sum(), x)
    torch.testing.assert_close(gea, r, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gx, rx, rtol=1e-10, atol=1e-12)


def test_gaunt_gradient_of_one_input(monkeypatch):
    gp = tritp.compile("2x0e+2x1o", "2x0e+2x1o", lmax_out=2, mode="gaunt", implementation="sparse")
    g = torch.Generator().manual_seed(8)
    a, b = _leaves(g, (3, gp.irreps_in1.dim), (3, gp.irreps_in2.dim))
    specs = record_specs(monkeypatch, tritp.gaunt_ops, "gaunt_produce")
    y = gp(a, b)
    (gb,) = torch.autograd.grad(y.sum(), b)
    assert len(specs) == 2, specs  # the forward and b's gradient, not a's
    monkeypatch.setenv("TRITP_PRUNE_GRADS", "0")
    (rb,) = torch.autograd.grad(gp(a, b).sum(), b)
    assert len(specs) == 5
    torch.testing.assert_close(gb, rb, rtol=1e-12, atol=1e-12)


def test_engine_needs_outside_a_backward_pass_changes_nothing():
    from tritp.op_pair import engine_needs, graph_inputs

    assert engine_needs(None, (True, True, False)) == (True, True, False)
    w = torch.ones(2, requires_grad=True)
    with torch.no_grad():
        assert graph_inputs([w])[0] is w
    assert graph_inputs([w])[0]._base is w  # a view: no copy


@pytest.mark.parametrize("compiled", [False, True])
def test_training_step_of_a_potential_equal_with_and_without_pruning(compiled, monkeypatch):
    # the forces pass of a two-layer potential: the first layer's x1 (an embedding of species)
    # and the second layer's internal weights are off the path to the positions
    torch.manual_seed(0)
    model = Potential()
    system = make_system(4, 1)
    results, passes = {}, {}
    for prune in ("1", "0"):
        monkeypatch.setenv("TRITP_PRUNE_GRADS", prune)
        torch._dynamo.reset()
        fn = energy_forces
        if compiled:
            fn = torch.compile(energy_forces, backend="aot_eager", fullgraph=True)
        targets = _spy(monkeypatch, tritp.ops, "produce")
        with torch._dynamo.config.patch(trace_autograd_ops=True):
            model.zero_grad()
            s = clone_system(system)
            e, f = fn(model, *s)
            passes[prune] = list(targets)
            results[prune] = training_step(lambda *a: (e, f), model, s)
    torch._dynamo.reset()
    # the first layer's backward: the weights' and x2's gradients, not x1's
    assert "w+x2" in passes["1"] and "x1+w+x2" not in passes["1"], passes
    assert "x1+w+x2" in passes["0"], passes
    if not compiled:  # eager: the second layer's weight gradient waits for loss.backward()
        assert "w" not in passes["1"] and "w" in passes["0"], passes
    e1, f1, g1, p1 = results["1"]
    e0, f0, g0, p0 = results["0"]
    torch.testing.assert_close(e1, e0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(f1, f0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(p1, p0, rtol=1e-12, atol=1e-12)
    assert g1.keys() == g0.keys()
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-12, atol=1e-12)


def _first_layer_step(fn, dim1, n_rows, edges_like, g, weight_numel):
    """A first interaction layer's training step with forces: x1 from an embedding (parameters
    only), x2 and the weights from positions; forces, then the loss's backward to the parameters."""
    emb = torch.randn(n_rows, dim1, generator=g, dtype=F64, requires_grad=True)
    wpar = torch.randn(1, weight_numel, generator=g, dtype=F64, requires_grad=True)
    pos = torch.randn(edges_like, 3, generator=g, dtype=F64, requires_grad=True)
    x2 = torch.cat([pos.norm(dim=1, keepdim=True), pos], 1)
    w = pos.norm(dim=1, keepdim=True).sin() * wpar
    e = fn(emb * 1.0, x2, w).square().sum()
    (f,) = torch.autograd.grad(e, pos, create_graph=True)
    (e + f.square().sum()).backward()


def test_first_layer_kernels_are_listed_for_precompile_and_tuning(monkeypatch):
    from tritp.tuning.tuner import direction_specs

    tp = tritp.compile("4x0e+4x1o", "0e+1o", "0e+1o", mode="channelwise")
    targets = record_specs(monkeypatch, tritp.ops, "produce")
    _first_layer_step(tp, tp.irreps_in1.dim, 6, 6, torch.Generator().manual_seed(20), tp.weight_numel)
    listed = {s for _, s in direction_specs(tp.problem)}
    assert "w+x2" in [s.target for s in targets]  # the forces pass: no x1 gradient
    assert all(s in listed for s in targets), [s.to_str() for s in targets if s not in listed]


@pytest.mark.parametrize("scatter", ["atomic", "deterministic"])
def test_conv_first_layer_kernels_are_listed(scatter, monkeypatch):
    from tritp.conv_tuning import conv_specs

    conv, g, n, e, src, dst = _conv_graph(scatter, seed=21, e=13)
    specs = record_specs(monkeypatch, tritp.conv_ops, "produce_conv")
    _first_layer_step(lambda x, ea, w: conv(x, ea, w, src, dst, n), conv.irreps_in1.dim, n, e, g, conv.weight_numel)
    listed = {c.spec for _, c in conv_specs(conv.problem, scatter)}
    assert all(s in listed for s in specs), [s.to_str() for s in specs if s not in listed]
