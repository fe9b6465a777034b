"""torch.compile over a small potential with two tritp layers: fullgraph forward on the eager,
aot_eager and inductor backends; the forces pattern (design notes section 4: energy and
``torch.autograd.grad(e, pos, create_graph=True)`` inside the compiled function with
``torch._dynamo.config.trace_autograd_ops = True``, ``loss.backward()`` outside); no graph
breaks; no recompilation as the number of atoms and edges changes.

float64 throughout, so compiled and eager results can be compared at 1e-10.
"""

import pytest
import torch
import torch._dynamo
import torch._dynamo.testing
import torch._inductor.config

from potential import Potential, clone_system, energy_forces, make_system, training_step

BACKENDS = ["eager", "aot_eager", "inductor"]


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
