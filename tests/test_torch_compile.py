"""torch.compile over a small potential with two tritp layers: fullgraph forward on the eager,
aot_eager and inductor backends; the forces pattern (design notes section 4: energy and
``torch.autograd.grad(e, pos, create_graph=True)`` inside the compiled function with
``torch._dynamo.config.trace_autograd_ops = True``, ``loss.backward()`` outside); no graph
breaks; no recompilation as the number of atoms and edges changes.

float64 throughout, so compiled and eager results can be compared at 1e-10.
"""

import math

import pytest
import torch
import torch._dynamo
import torch._dynamo.testing
import torch._inductor.config

import tritp

BACKENDS = ["eager", "aot_eager", "inductor"]
DT = torch.float64


def sh_l01(vec):
    """Real spherical harmonics l = 0, 1 in e3nn's basis, component normalization."""
    n = vec / vec.norm(dim=-1, keepdim=True)
    return torch.cat([torch.ones_like(n[..., :1]), math.sqrt(3.0) * n], dim=-1)


class Potential(torch.nn.Module):
    """Species embedding -> channelwise tensor product with edge SH and per-edge radial
    weights (tritp layer 1) -> scatter-sum to nodes -> fully connected tensor product of the
    node features with themselves into scalars, internal weights (tritp layer 2) -> energy."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Linear(2, 3, bias=False, dtype=DT)
        self.tp1 = tritp.compile("3x0e", "0e+1o", "0e+1o", mode="channelwise")
        self.radial = torch.nn.Sequential(torch.nn.Linear(4, 8, dtype=DT), torch.nn.SiLU(),
                                          torch.nn.Linear(8, self.tp1.weight_numel, dtype=DT))
        mid = str(self.tp1.irreps_out)
        self.tp2 = tritp.compile(mid, mid, "2x0e", mode="fully_connected").to(DT)
        self.n_mid = self.tp1.irreps_out.dim

    def forward(self, pos, species, src, dst):
        vec = pos[dst] - pos[src]
        r = vec.norm(dim=-1, keepdim=True)
        freqs = torch.arange(1, 5, dtype=pos.dtype, device=pos.device)
        basis = torch.sin(freqs * r) / r  # Bessel-like radial basis
        h = self.embed(species)
        msg = self.tp1(h[src], sh_l01(vec), self.radial(basis))
        node = torch.zeros(pos.shape[0], self.n_mid, dtype=msg.dtype, device=msg.device).index_add(0, dst, msg)
        return self.tp2(node, node).sum()


def energy_forces(model, pos, species, src, dst):
    e = model(pos, species, src, dst)
    f = -torch.autograd.grad(e, pos, create_graph=True)[0]
    return e, f


def make_system(n, seed):
    g = torch.Generator().manual_seed(seed)
    pos = (1.5 * torch.randn(n, 3, dtype=DT, generator=g)).requires_grad_()
    species = torch.nn.functional.one_hot(torch.arange(n) % 2, 2).to(DT)
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    keep = i != j
    return pos, species, i[keep], j[keep]


def clone_system(system):
    pos, *rest = system
    return (pos.detach().clone().requires_grad_(), *rest)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Potential()


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    # One compile worker: the worker pool's start-up dominates a tiny inductor compile on CPU.
    with torch._inductor.config.patch(compile_threads=1):
        yield
    torch._dynamo.reset()


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def training_step(fn, model, system):
    """Energy and forces from ``fn``; loss on both; ``loss.backward()`` outside ``fn``."""
    model.zero_grad()
    pos = system[0]
    e, f = fn(model, *system)
    loss = (e - 1.0) ** 2 + (f ** 2).sum()
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return e.detach(), f.detach(), grads, pos.grad.detach().clone()


# inductor's forward is covered by the forces test (the energy); its compile is the slow part.
@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_forward_fullgraph(model, backend):
    """A forward-only fullgraph compile needs no flag and matches eager."""
    system = make_system(4, 0)
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    with torch.no_grad():
        close(compiled(*system), model(*system))


@pytest.mark.parametrize("backend", BACKENDS)
def test_forces_fullgraph_matches_eager(model, backend):
    system = make_system(4, 1)
    e0, f0, g0, gpos0 = training_step(energy_forces, model, clone_system(system))
    assert f0.abs().max() > 1e-3 and all(g.abs().max() > 0 for g in g0.values())
    before = torch._dynamo.config.trace_autograd_ops
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        fn = torch.compile(energy_forces, backend=backend, fullgraph=True)
        e1, f1, g1, gpos1 = training_step(fn, model, clone_system(system))
    assert torch._dynamo.config.trace_autograd_ops == before  # the flag is restored
    close(e1, e0)
    close(f1, f0)
    close(gpos1, gpos0)
    assert g1.keys() == g0.keys()
    for name in g0:
        close(g1[name], g0[name])


def count_tritp_ops(graph_module):
    return sum(1 for n in graph_module.graph.nodes
               if n.op == "call_function" and "tritp" in str(getattr(n.target, "namespace", n.target)))


def test_no_graph_breaks(model):
    system = make_system(4, 2)
    ex = torch._dynamo.explain(model)(*system)
    assert ex.graph_break_count == 0 and ex.graph_count == 1
    assert count_tritp_ops(ex.graphs[0]) == 2  # both tensor products are in the graph as ops
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        torch._dynamo.reset()
        ex = torch._dynamo.explain(energy_forces)(model, *clone_system(system))
    assert ex.graph_break_count == 0 and ex.graph_count == 1
    assert count_tritp_ops(ex.graphs[0]) >= 2


def run_sizes(fn, model, sizes, mark=False, counter=None):
    outs, frames = [], []
    for k, n in enumerate(sizes):
        system = make_system(n, 10 + k)
        if mark:
            pos, species, src, dst = system
            for t in (pos, species, src, dst):
                torch._dynamo.mark_dynamic(t, 0)
        e, f = fn(model, *system)
        e0, f0 = energy_forces(model, *clone_system(system))
        close(e.detach(), e0.detach())
        close(f.detach(), f0.detach())
        outs.append(f.shape[0])
        frames.append(counter.frame_count if counter is not None else None)
    assert outs == list(sizes)
    return frames


def test_no_recompile_automatic_dynamic(model):
    """First call static, second call recompiles once with a dynamic batch, third reuses it."""
    cnt = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        fn = torch.compile(energy_forces, backend=cnt, fullgraph=True)
        frames = run_sizes(fn, model, (3, 4, 5), counter=cnt)
    # static first graph, one automatic-dynamic recompile at the second size, none at the third
    assert frames == [1, 2, 2], frames


def test_no_recompile_mark_dynamic(model):
    cnt = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        fn = torch.compile(energy_forces, backend=cnt, fullgraph=True)
        run_sizes(fn, model, (3, 5, 6), mark=True)
    assert cnt.frame_count == 1
