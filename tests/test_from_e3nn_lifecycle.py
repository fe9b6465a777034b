"""``tritp.from_e3nn`` against e3nn on seeded random problems, and the module life cycle:
state_dict, pickle, deepcopy, ``.to(dtype)``, ``torch.export``, and a 2-process DDP run.

float64 comparisons at 1e-10; the kernels run through the Triton interpreter on CPU.
"""

import copy
import io
import os
import pickle
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import tritp
import tritp.kernels
from tritp.e3nn_compat import UnsupportedE3nnModule

o3 = pytest.importorskip("e3nn.o3")

TOL = dict(rtol=1e-10, atol=1e-10)
IRS = ["0e", "0o", "1o", "1e", "2e"]


@pytest.fixture
def f64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # e3nn builds its constants in the default dtype
    yield
    torch.set_default_dtype(old)


def random_irreps(rng, n_seg, muls):
    return "+".join(f"{rng.choice(muls)}x{rng.choice(IRS)}" for _ in range(n_seg))


def random_mixed_tp(seed):
    """An ``o3.TensorProduct`` whose instructions mix every mode tritp supports, with random
    path weights, normalizations and weight sharing; one output segment per instruction."""
    rng = random.Random(seed)
    while True:
        in1 = o3.Irreps(random_irreps(rng, 2, [2, 3]))
        in2 = o3.Irreps(random_irreps(rng, 2, [1, 2]) if rng.random() < 0.5 else "2x0e+2x1o")
        out, ins = [], []
        for i1, (m1, r1) in enumerate(in1):
            for i2, (m2, r2) in enumerate(in2):
                for r3 in r1 * r2:
                    if r3.l > 2 or rng.random() < 0.4:
                        continue
                    modes = ["uvw", "uvu", "uvv", "uvuv"] + (["uuw", "uuu"] if m1 == m2 else [])
                    mode = rng.choice(modes)
                    mo = {"uvw": rng.choice([1, 2]), "uvu": m1, "uvv": m2, "uvuv": m1 * m2, "uuw": rng.choice([1, 2]),
                          "uuu": m1}[mode]
                    has_w = True if mode == "uvw" else rng.random() < 0.7
                    if mode == "uuw" and not has_w:
                        mo = 1
                    ins.append((i1, i2, len(out), mode, has_w, rng.choice([1.0, 0.5, 2.0])))
                    out.append((mo, r3))
        modes = {i[3] for i in ins}
        if len(ins) >= 3 and len(modes) >= 3 and any(i[4] for i in ins):
            break
    shared = rng.random() < 0.5
    tp = o3.TensorProduct(in1, in2, o3.Irreps(out), ins,
                          irrep_normalization=rng.choice(["component", "norm"]),
                          path_normalization=rng.choice(["element", "path"]),
                          shared_weights=shared, internal_weights=False)
    return tp


def inputs_for(e3, batch, seed):
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(batch, e3.irreps_in1.dim, generator=g).requires_grad_()
    x2 = torch.randn(batch, e3.irreps_in2.dim, generator=g).requires_grad_()
    w = None
    if e3.weight_numel > 0 and not e3.internal_weights:
        shape = (e3.weight_numel,) if e3.shared_weights else (batch, e3.weight_numel)
        w = torch.randn(shape, generator=g).requires_grad_()
    return x1, x2, w


def check_same(e3, tp, batch=5, seed=0):
    """Outputs and gradients (x1, x2, weights) of tp equal e3nn's."""
    x1, x2, w = inputs_for(e3, batch, seed)
    args = (x1, x2) if w is None else (x1, x2, w)
    y_ref, y = e3(*args), tp(*args)
    assert y.shape == y_ref.shape
    torch.testing.assert_close(y, y_ref, **TOL)
    g = torch.Generator().manual_seed(seed + 1)
    cot = torch.randn(y.shape, generator=g)
    wrt_ref = list(args) + ([e3.weight] if e3.internal_weights else [])
    wrt = list(args) + ([tp.weight] if tp.internal_weights else [])
    g_ref = torch.autograd.grad((y_ref * cot).sum(), wrt_ref)
    g_tp = torch.autograd.grad((y * cot).sum(), wrt)
    for a, b in zip(g_tp, g_ref):
        torch.testing.assert_close(a, b, **TOL)
    assert y_ref.abs().max() > 0


# ---------------------------------------------------------------------------------------------
# from_e3nn
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_from_e3nn_tensor_product_mixed_modes(f64, seed):
    e3 = random_mixed_tp(seed)
    tp = tritp.from_e3nn(e3)
    assert tp.weight_numel == e3.weight_numel and tp.shared_weights == e3.shared_weights
    assert [i.connection_mode for i in tp.instructions] == [i.connection_mode for i in e3.instructions]
    check_same(e3, tp)


@pytest.mark.parametrize("shared", [False, True])
def test_from_e3nn_all_six_modes(f64, shared):
    """Every mode in one module, two paths into one output segment, weightless uvuv/uuw paths."""
    ins = [(0, 0, 0, "uvw", True), (1, 1, 0, "uvw", True, 0.5), (1, 1, 1, "uvu", True), (0, 1, 2, "uvv", True),
           (1, 1, 3, "uuw", True), (1, 0, 4, "uuu", True, 2.0), (1, 1, 5, "uvuv", False), (1, 1, 6, "uuw", False)]
    e3 = o3.TensorProduct("2x0e+2x1o", "2x0e+2x1o", "2x0e+2x1e+2x1o+3x0e+2x1o+4x2e+1x0e", ins,
                          shared_weights=shared, internal_weights=False)
    tp = tritp.from_e3nn(e3)
    check_same(e3, tp)


def test_from_e3nn_per_sample_weights_broadcast(f64):
    """Per-sample weights with e3nn's broadcasting: x2 is one row for the whole batch."""
    e3 = o3.TensorProduct("2x0e+2x1o", "0e+1o", "2x0e+2x1o",
                          [(0, 0, 0, "uvu", True), (1, 1, 0, "uvu", True), (1, 0, 1, "uvu", True),
                           (0, 1, 1, "uvu", True)], shared_weights=False, internal_weights=False)
    tp = tritp.from_e3nn(e3)
    g = torch.Generator().manual_seed(3)
    x1 = torch.randn(4, 8, generator=g)
    x2 = torch.randn(1, 4, generator=g)
    w = torch.randn(4, e3.weight_numel, generator=g)
    torch.testing.assert_close(tp(x1, x2, w), e3(x1, x2, w), **TOL)


@pytest.mark.parametrize("seed", [0, 1])
def test_from_e3nn_fully_connected(f64, seed):
    rng = random.Random(100 + seed)
    e3 = o3.FullyConnectedTensorProduct(random_irreps(rng, 2, [2, 3]), random_irreps(rng, 2, [1, 2]),
                                        "2x0e+2x1o+2x1e+2x2e")
    if e3.weight_numel == 0:
        pytest.fail(f"seed {seed} draws a problem without paths; pick another")
    torch.manual_seed(seed)
    e3.weight.data = torch.randn_like(e3.weight)
    tp = tritp.from_e3nn(e3)
    assert tp.internal_weights and torch.equal(tp.weight, e3.weight)
    assert tp.weight.data_ptr() != e3.weight.data_ptr()  # a copy, not shared storage
    check_same(e3, tp)


def test_from_e3nn_fully_connected_external_per_sample(f64):
    e3 = o3.FullyConnectedTensorProduct("2x0e+2x1o", "0e+1o", "3x0e+2x1o", shared_weights=False,
                                        internal_weights=False)
    check_same(e3, tritp.from_e3nn(e3))


def test_from_e3nn_elementwise(f64):
    e3 = o3.ElementwiseTensorProduct("2x0e+2x1o+1x2e", "2x1o+2x0e+1x1e")
    check_same(e3, tritp.from_e3nn(e3))


def test_from_e3nn_elementwise_filtered(f64):
    e3 = o3.ElementwiseTensorProduct("3x1o+2x1e", "3x1o+2x2e", ["0e", "1e", "2o"])
    check_same(e3, tritp.from_e3nn(e3))


def test_from_e3nn_full(f64):
    e3 = o3.FullTensorProduct("2x0e+1x1o", "1x0e+2x1o")
    check_same(e3, tritp.from_e3nn(e3))


def test_from_e3nn_full_filtered(f64):
    e3 = o3.FullTensorProduct("2x1o+1x2e", "1x1o+1x1e", filter_ir_out=["0e", "1e", "2o"])
    check_same(e3, tritp.from_e3nn(e3))


def test_from_e3nn_unsupported_mode_names_feature():
    e3 = o3.TensorProduct("3x1o", "3x1o", "3x0e", [(0, 0, 0, "uvu<v", False)])
    with pytest.raises(UnsupportedE3nnModule, match="uvu<v"):
        tritp.from_e3nn(e3)
    # TensorSquare builds "uvu<v" paths too
    with pytest.raises(UnsupportedE3nnModule, match="uvu<v"):
        tritp.from_e3nn(o3.TensorSquare("2x0e+2x1o"))
    assert issubclass(UnsupportedE3nnModule, ValueError)


def test_from_e3nn_rejects_non_e3nn_module():
    with pytest.raises(TypeError, match="Linear"):
        tritp.from_e3nn(torch.nn.Linear(3, 3))
    with pytest.raises(TypeError, match="expected an e3nn.o3.TensorProduct"):
        tritp.from_e3nn(o3.Linear("2x0e", "2x0e"))


# ---------------------------------------------------------------------------------------------
# life cycle
# ---------------------------------------------------------------------------------------------


def fc_layer(seed):
    torch.manual_seed(seed)
    return tritp.compile("2x0e+2x1o", "0e+1o", "2x0e+2x1o").to(torch.float64)  # internal weights


class TwoLayer(torch.nn.Module):
    def __init__(self, seed):
        super().__init__()
        self.tp = fc_layer(seed)
        self.lin = torch.nn.Linear(8, 8, dtype=torch.float64)

    def forward(self, x1, x2):
        return self.lin(self.tp(x1, x2))


def fc_inputs(batch=4, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 8, dtype=torch.float64, generator=g).to(dtype),
            torch.randn(batch, 4, dtype=torch.float64, generator=g).to(dtype))


def test_state_dict_round_trip():
    a, b = TwoLayer(0), TwoLayer(1)
    x = fc_inputs()
    assert not torch.allclose(a(*x), b(*x))
    assert "tp.weight" in a.state_dict()
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b.load_state_dict(torch.load(buf, weights_only=True))
    torch.testing.assert_close(b(*x), a(*x), **TOL)


def test_pickle_round_trip():
    a = TwoLayer(0)
    x = fc_inputs()
    b = pickle.loads(pickle.dumps(a))
    assert b.tp.key == a.tp.key and b.tp.problem == a.tp.problem
    torch.testing.assert_close(b(*x), a(*x), **TOL)
    # the unpickled module is independent and still differentiable
    b(*x).sum().backward()
    assert b.tp.weight.grad is not None and a.tp.weight.grad is None


def test_deepcopy_independent():
    a = TwoLayer(0)
    x = fc_inputs()
    y = a(*x).detach()
    b = copy.deepcopy(a)
    torch.testing.assert_close(b(*x), y, **TOL)
    with torch.no_grad():
        a.tp.weight.mul_(2.0)
    torch.testing.assert_close(b(*x), y, **TOL)
    assert not torch.allclose(a(*x), y)


def test_to_dtype_uses_kernels_per_dtype():
    tp = fc_layer(0)
    x64 = fc_inputs()
    ref = lambda m, x1, x2: tritp.reference_tp(m.problem, x1.double(), x2.double(), m.weight.double())  # noqa: E731
    y64 = tp(*x64)
    assert y64.dtype == torch.float64
    torch.testing.assert_close(y64, ref(tp, *x64), **TOL)

    tp32 = tp.to(torch.float32)
    assert tp32.weight.dtype == torch.float32
    x32 = fc_inputs(dtype=torch.float32)
    y32 = tp32(*x32)
    assert y32.dtype == torch.float32
    torch.testing.assert_close(y32.double(), ref(tp32, *x32), rtol=1e-5, atol=1e-5)

    back = tp32.to(torch.float64)  # and back again: still the float64 result
    torch.testing.assert_close(back(*x64), ref(back, *x64), **TOL)

    mine = [k for k in tritp.kernels._loaded if k[0] == tp.key]
    dtypes = {k[2] for k in mine}
    assert {"float32", "float64"} <= dtypes, mine
    by_dtype = {}
    for k in mine:
        by_dtype.setdefault((k[1],) + tuple(k[3:]), {})[k[2]] = tritp.kernels._loaded[k]
    pairs = [d for d in by_dtype.values() if len(d) == 2]
    assert pairs, "no spec was loaded in both dtypes"
    for d in pairs:
        assert d["float32"] is not d["float64"]


def test_torch_export_dynamic_batch():
    m = TwoLayer(0).eval()
    x = fc_inputs(batch=4)
    batch = torch.export.Dim("batch", min=2, max=1024)
    ep = torch.export.export(m, x, dynamic_shapes=({0: batch}, {0: batch}))
    ops = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert any("tritp" in o for o in ops), ops
    runner = ep.module()
    for b in (4, 7):
        xb = fc_inputs(batch=b, seed=b)
        torch.testing.assert_close(runner(*xb), m(*xb), **TOL)
    # the exported program survives save/load
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    buf.seek(0)
    xb = fc_inputs(batch=6, seed=6)
    torch.testing.assert_close(torch.export.load(buf).module()(*xb), m(*xb), **TOL)


# ---------------------------------------------------------------------------------------------
# DistributedDataParallel: 2 processes, gloo, CPU
# ---------------------------------------------------------------------------------------------

DDP_WORKER = textwrap.dedent('''
    import os, sys
    os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton
    rank, world, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    sys.path.insert(0, os.path.dirname(out))
    from ddp_model import Net, batch_for, loss_fn, LR, STEPS

    # a file store: no port to race for with other processes
    dist.init_process_group("gloo", rank=rank, world_size=world, init_method=f"file://{port}")
    torch.manual_seed(100 + rank)  # different initial weights per rank: DDP must broadcast rank 0's
    model = DDP(Net())
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    losses = []
    for step in range(STEPS):
        x1, x2, y = batch_for(rank, step)  # different data per rank: gradients must be averaged
        loss = loss_fn(model(x1, x2), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    torch.save({"params": {k: v.detach() for k, v in model.module.state_dict().items()}, "losses": losses}, out)
    dist.barrier()
    # DDP's reducer and the optimizer go before the process group; then exit without interpreter
    # finalization: gloo's worker threads may still hold work whose teardown during finalization
    # aborts the process ("terminate called without an active exception", exit -6; seen once in
    # about ten full runs; pytorch/pytorch#190489 and #179291 describe it)
    del model, opt
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)
''')

DDP_MODEL = textwrap.dedent('''
    import torch
    import tritp

    LR, STEPS = 0.05, 2

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.tp = tritp.compile("2x0e+2x1o", "0e+1o", "2x0e+1x1o").to(torch.float64)
            self.head = torch.nn.Linear(5, 1, dtype=torch.float64)

        def forward(self, x1, x2):
            return self.head(self.tp(x1, x2))

    def batch_for(rank, step):
        g = torch.Generator().manual_seed(1000 * rank + step)
        return (torch.randn(4, 8, dtype=torch.float64, generator=g),
                torch.randn(4, 4, dtype=torch.float64, generator=g),
                torch.randn(4, 1, dtype=torch.float64, generator=g))

    def loss_fn(pred, y):
        return ((pred - y) ** 2).mean()
''')


def test_ddp_two_processes_gloo(tmp_path):
    (tmp_path / "ddp_model.py").write_text(DDP_MODEL)
    (tmp_path / "worker.py").write_text(DDP_WORKER)
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, TRITON_INTERPRET="1", TRITP_CACHE_DIR=str(tmp_path / "cache"), MASTER_ADDR="127.0.0.1",
               PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")  # else gloo binds to whatever the hostname resolves to
    port = str(tmp_path / "ddp-store")  # the worker's rendezvous file (argument kept positional)
    outs = [tmp_path / f"rank{r}.pt" for r in range(2)]
    procs = [subprocess.Popen([sys.executable, str(tmp_path / "worker.py"), str(r), "2", port, str(outs[r])],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(2)]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    r0, r1 = (torch.load(o, weights_only=True) for o in outs)
    assert r0["params"].keys() == r1["params"].keys() and "tp.weight" in r0["params"]
    for k in r0["params"]:
        assert torch.equal(r0["params"][k], r1["params"][k]), k
    for r in (r0, r1):
        assert len(r["losses"]) == 2 and all(torch.isfinite(torch.tensor(r["losses"])))

    # Single-process replay: rank 0's initial weights, the mean of both ranks' losses per step.
    sys.path.insert(0, str(tmp_path))
    try:
        import ddp_model
    finally:
        sys.path.remove(str(tmp_path))
    torch.manual_seed(100)
    net = ddp_model.Net()
    init = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.SGD(net.parameters(), lr=ddp_model.LR)
    for step in range(ddp_model.STEPS):
        loss = sum(ddp_model.loss_fn(net(*ddp_model.batch_for(r, step)[:2]), ddp_model.batch_for(r, step)[2])
                   for r in range(2)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
    for k, v in net.state_dict().items():
        torch.testing.assert_close(r0["params"][k], v, **TOL)
        assert not torch.equal(v, init[k]), f"{k} did not train"
