"""The benchmark's peer adapters compute the same function as tritp.

A timing table is only worth something if every column runs the same problem on the same
inputs and weights. cuEquivariance's layers run on a CPU through their torch fallback, so its
adapters (the plain tensor product and the indexed one the convolution benchmark times) are
checked here against tritp's float64 reference, values and gradients. OpenEquivariance needs a
GPU at import and is checked only by the harness's error column on one."""

import sys
from pathlib import Path

import pytest
import torch

from tritp.bench_peers import build_impl, cueq_module
from tritp.codegen import Problem
from tritp.presets import preset
from tritp.reference import reference_tp

pytest.importorskip("cuequivariance_torch")

ROOT = Path(__file__).resolve().parents[1]


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def _inputs(p, rows, gen):
    x1 = torch.randn(rows, p.irreps_in1.dim, dtype=torch.float64, generator=gen)
    x2 = torch.randn(rows, p.irreps_in2.dim, dtype=torch.float64, generator=gen)
    shape = (p.weight_numel,) if p.shared_weights else (rows, p.weight_numel)
    w = torch.randn(shape, dtype=torch.float64, generator=gen)
    return [t.requires_grad_() for t in (x1, x2, w)]


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", ["mace-large", "nequip-benzene", "diffdock-L2", "fc-32x012", "uvu-128x3e"])
def test_cueq_adapter_matches_reference(name):
    p, _ = preset(name)
    gen = torch.Generator().manual_seed(0)
    x1, x2, w = _inputs(p, 5, gen)
    fn, note = build_impl("cueq", p, "cpu", torch.float64)
    out, ref = fn(x1, x2, w), reference_tp(p, x1, x2, w)
    assert _rel(out, ref) < 1e-12, note
    go = torch.randn(ref.shape, dtype=torch.float64, generator=gen)
    got = torch.autograd.grad(out, (x1, x2, w), go)
    want = torch.autograd.grad(ref, (x1, x2, w), go)
    for g, r in zip(got, want):
        assert _rel(g, r) < 1e-12


@pytest.mark.filterwarnings("ignore")
def test_cueq_adapter_refuses_what_its_layers_cannot_build():
    p = Problem.all_paths("4x0e+4x1o", "4x0e+4x1o", "4x0e+4x1o", "uuu")
    with pytest.raises(ValueError, match="channelwise .* and fully connected"):
        cueq_module(p, "cpu", torch.float64)


@pytest.mark.filterwarnings("ignore")
def test_cueq_convolution_adapter_matches_the_unfused_path(monkeypatch):
    """conv_bench's ``cueq`` variant (indices_1/indices_out) against tritp's reference conv."""
    import tritp.conv_module as cm

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sys.modules.pop("conv_bench", None)
    import conv_bench

    p, _ = preset("nequip-benzene")  # both parities: cuEquivariance's own O3 orders them differently
    gen = torch.Generator().manual_seed(1)
    n, E = 6, 20
    src = torch.randint(0, n, (E,), generator=gen)
    dst = torch.randint(0, n, (E,), generator=gen)
    x = torch.randn(n, p.irreps_in1.dim, dtype=torch.float64, generator=gen, requires_grad=True)
    ea = torch.randn(E, p.irreps_in2.dim, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(E, p.weight_numel, dtype=torch.float64, generator=gen, requires_grad=True)
    fn = conv_bench.build("cueq", torch, p, torch.float64, "cpu", src, dst, n)
    ref = cm.TensorProductConv(p, scatter="atomic", backend="reference")(x, ea, w, src, dst, n)
    out = fn(x, ea, w)
    assert _rel(out, ref) < 1e-12
    go = torch.randn(ref.shape, dtype=torch.float64, generator=gen)
    for g, r in zip(torch.autograd.grad(out, (x, ea, w), go), torch.autograd.grad(ref, (x, ea, w), go)):
        assert _rel(g, r) < 1e-12


@pytest.mark.filterwarnings("ignore")
def test_cueq_without_its_cuda_kernels_is_not_timed_on_a_gpu(monkeypatch):
    """cuEquivariance silently runs plain torch when cuequivariance_ops_torch is missing; on
    CUDA the adapter refuses (the harness reports the peer unavailable) instead of timing that."""
    monkeypatch.setitem(sys.modules, "cuequivariance_ops_torch", None)  # import fails
    p, _ = preset("mace-medium")
    with pytest.raises(ImportError, match="cuequivariance_ops_torch does not import"):
        cueq_module(p, "cuda", torch.float32)
    _, note = cueq_module(p, "cpu", torch.float64)  # on a CPU the fallback is all there is
    assert "method naive" in note


def test_a_slow_peer_import_is_waited_for_only_so_long(tmp_path, monkeypatch):
    """gpu_check.sh builds OpenEquivariance's extension in the background; a benchmark that needs
    it meanwhile records 'not ready' for that problem and gets it at a later one."""
    import tritp.bench_peers as bp

    (tmp_path / "slowpeer.py").write_text("import time\ntime.sleep(1.0)\nVALUE = 7\n")
    (tmp_path / "brokenpeer.py").write_text("raise ImportError('no extension')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(bp, "_imports", {})
    monkeypatch.setenv("TRITP_BENCH_IMPORT_WAIT_S", "0.1")
    with pytest.raises(bp.PeerNotReady, match="slowpeer is still importing"):
        bp.import_peer("slowpeer")
    monkeypatch.setenv("TRITP_BENCH_IMPORT_WAIT_S", "5")
    assert bp.import_peer("slowpeer").VALUE == 7  # the same import, finished
    for _ in range(2):  # a failed import fails the same way every time it is asked
        with pytest.raises(ImportError, match="no extension"):
            bp.import_peer("brokenpeer")
    monkeypatch.delenv("TRITP_BENCH_IMPORT_WAIT_S")
    assert bp.import_peer("slowpeer").VALUE == 7  # unset: a plain import
