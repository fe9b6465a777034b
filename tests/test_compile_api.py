"""``tritp.compile``: its forms, its e3nn-compatible attributes and outputs, input validation
and backend selection.

e3nn is the oracle: the same arguments must give the same instructions (``path_weight`` is
e3nn's final normalization coefficient), the same flat weight layout and, with the same
weights, the same outputs in float64 (1e-10 relative). Outputs run through the generated
kernels (the Triton interpreter, see conftest.py).
"""

import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from e3nn import o3

import tritp
import tritp.module
from tritp.codegen import MODES

from support import mace_channelwise

F64 = torch.float64


def rel(a, ref):
    assert a.shape == ref.shape, (a.shape, ref.shape)
    scale = ref.detach().abs().max().item()
    assert scale > 0
    return (a.detach().to(F64) - ref.detach().to(F64)).abs().max().item() / scale


def e3nn_f64(cls, *args, **kw):
    """An e3nn module built under the float64 default dtype (so its constants are not
    float32-rounded)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(F64)
    try:
        return cls(*args, **kw)
    finally:
        torch.set_default_dtype(old)


def same_instructions(tp, e3):
    """tritp's instructions equal e3nn's, field by field (path_weight to the last bits)."""
    assert len(tp.instructions) == len(e3.instructions)
    for a, b in zip(tp.instructions, e3.instructions):
        assert (a.i_in1, a.i_in2, a.i_out, a.connection_mode, a.has_weight, tuple(a.path_shape)) == \
            (b.i_in1, b.i_in2, b.i_out, b.connection_mode, b.has_weight, tuple(b.path_shape))
        assert a.path_weight == pytest.approx(b.path_weight, rel=1e-14, abs=0)


def same_attributes(tp, e3):
    for name in ("irreps_in1", "irreps_in2", "irreps_out"):
        assert str(getattr(tp, name)) == str(getattr(e3, name)), name
        assert o3.Irreps(str(getattr(tp, name))) == getattr(e3, name), name
    same_instructions(tp, e3)
    assert tp.weight_numel == e3.weight_numel
    assert tp.shared_weights == e3.shared_weights
    assert tp.internal_weights == e3.internal_weights


# -- forms -----------------------------------------------------------------------------------

FC_CASES = [
    ("2x0e+1x1o", "1x0e+1x1o", "3x0e+2x1o+1x2e"),
    ("4x0e+2x1o+1x2e", "1x0e+1x1o+1x2e", "2x0e+2x1o+1x2e+1x1e"),
    ("1x0o+2x1e", "2x1o", "1x0o+1x1o+1x2o+3x1e"),
]


@pytest.mark.parametrize("irreps", FC_CASES, ids=["a", "b", "c"])
def test_three_irreps_is_fully_connected_with_internal_weights(irreps):
    torch.manual_seed(3)
    tp = tritp.compile(*irreps)
    torch.manual_seed(3)
    e3 = o3.FullyConnectedTensorProduct(*irreps)
    same_attributes(tp, e3)
    assert all(i.connection_mode == "uvw" and i.has_weight for i in tp.instructions)
    assert tp.internal_weights and tp.shared_weights
    assert isinstance(tp.weight, torch.nn.Parameter)
    assert tp.weight.shape == (e3.weight_numel,)
    # e3nn's initialization (torch.randn(weight_numel)): same seed, same numbers
    assert torch.equal(tp.weight.data, e3.weight.data)
    assert any(p is tp.weight for p in tp.parameters())


def _fits(mode, m1, m2, mo):
    return {"uvw": True, "uvu": m1 == mo, "uvv": m2 == mo, "uuw": m1 == m2, "uuu": m1 == m2 == mo,
            "uvuv": m1 * m2 == mo}[mode]


MODE_IRREPS = ("2x0e+1x1o+2x2e", "2x0e+1x1o", "2x0e+1x1o+4x1e+2x2e+1x0e+2x1o")


@pytest.mark.parametrize("mode", MODES)
def test_mode_name_builds_every_fitting_path(mode):
    in1, in2, out = (o3.Irreps(s) for s in MODE_IRREPS)
    allowed = [(i1, i2, io) for i1, (m1, r1) in enumerate(in1) for i2, (m2, r2) in enumerate(in2)
               for io, (mo, ro) in enumerate(out) if ro in r1 * r2]
    expected = [(i1, i2, io) for i1, i2, io in allowed if _fits(mode, in1[i1].mul, in2[i2].mul, out[io].mul)]
    assert expected
    if mode != "uvw":
        assert len(expected) < len(allowed)  # the multiplicity rule really filters
    tp = tritp.compile(*MODE_IRREPS, mode, backend="reference")
    assert [(i.i_in1, i.i_in2, i.i_out) for i in tp.instructions] == expected
    assert {i.connection_mode for i in tp.instructions} == {mode}
    assert all(i.has_weight for i in tp.instructions)
    # the keyword spelling is the same thing, and e3nn agrees on the attributes
    kw = tritp.compile(*MODE_IRREPS, mode=mode, backend="reference")
    assert kw.problem == tp.problem
    e3 = o3.TensorProduct(*MODE_IRREPS, [(*p, mode, True) for p in expected])
    same_attributes(tp, e3)


CHANNELWISE = [
    ("3x0e+3x1o", "0e+1o+2e+3o", "0e+1o+2e"),
    ("2x0e+2x1o+2x2e", "0e+1o+2e", "0e+1o+2e+3o"),
    ("2x0o+2x0e+2x1o+2x1e", "0e+1o+2e", "0o+0e+1o+1e"),
]


@pytest.mark.parametrize("irreps", CHANNELWISE, ids=["medium", "large", "nequip"])
def test_channelwise_matches_mace(irreps):
    in1, in2, target = irreps
    mace_out, mace_ins = mace_channelwise(in1, in2, target)
    tp = tritp.compile(in1, in2, target, mode="channelwise")
    assert str(tp.irreps_out) == str(mace_out)
    assert [(i.i_in1, i.i_in2, i.i_out, i.connection_mode, i.has_weight) for i in tp.instructions] == mace_ins
    assert not tp.shared_weights and not tp.internal_weights
    e3 = e3nn_f64(o3.TensorProduct, in1, in2, mace_out, mace_ins, shared_weights=False, internal_weights=False)
    same_attributes(tp, e3)
    if irreps is CHANNELWISE[0]:  # one numerical check through the kernels
        x1 = torch.randn(3, tp.irreps_in1.dim, dtype=F64)
        x2 = torch.randn(3, tp.irreps_in2.dim, dtype=F64)
        w = torch.randn(3, tp.weight_numel, dtype=F64)
        assert rel(tp(x1, x2, w), e3(x1, x2, w)) <= 1e-10


INSTRUCTION_CASES = [
    # (irreps_in1, irreps_in2, irreps_out, instructions, keywords)
    ("2x0e+2x1o", "2x0e+2x1o", "2x0e+2x1o+4x1e+1x1e",
     [(0, 0, 0, "uvu", True), (1, 1, 0, "uuw", True, 0.5), (1, 0, 1, "uvu", False), (1, 1, 3, "uvw", True, 2.0),
      (0, 1, 1, "uvv", True)], dict(shared_weights=False)),
    ("2x0e+2x1o", "2x0e+2x1o", "2x0e+2x1o+4x1e",
     [(0, 0, 0, "uuu", True), (1, 1, 0, "uuu", False), (1, 1, 2, "uvuv", True, 0.7), (0, 1, 1, "uvw", True)],
     dict(irrep_normalization="norm", path_normalization="path")),
    ("1x0e+2x1o+1x2e", "1x0e+1x1o", "2x0e+2x1o+1x2e",
     [(0, 0, 0, "uvw", True), (1, 1, 0, "uvu", True), (2, 1, 1, "uvw", True), (2, 0, 2, "uvu", True, 1.5),
      (1, 1, 2, "uvw", True)], dict(irrep_normalization="norm", path_normalization="element", shared_weights=False)),
]


@pytest.mark.parametrize("case", INSTRUCTION_CASES, ids=["uvu-mix", "norm-path", "l2"])
def test_instruction_list_attributes_and_outputs_match_e3nn(case):
    in1, in2, out, ins, kw = case
    tp = tritp.compile(in1, in2, out, ins, internal_weights=False, **kw)
    e3 = e3nn_f64(o3.TensorProduct, in1, in2, out, ins, internal_weights=False, **kw)
    same_attributes(tp, e3)
    n = tp.weight_numel
    x1 = torch.randn(4, tp.irreps_in1.dim, dtype=F64)
    x2 = torch.randn(4, tp.irreps_in2.dim, dtype=F64)
    w = torch.randn(n if tp.shared_weights else (4, n), dtype=F64)
    assert rel(tp(x1, x2, w), e3(x1, x2, w)) <= 1e-10


def test_internal_weights_output_matches_e3nn():
    irreps = FC_CASES[1]
    tp = tritp.compile(*irreps)
    e3 = e3nn_f64(o3.FullyConnectedTensorProduct, *irreps)
    with torch.no_grad():
        e3.weight.copy_(tp.weight.double())
    x1 = torch.randn(3, tp.irreps_in1.dim, dtype=F64)
    x2 = torch.randn(3, tp.irreps_in2.dim, dtype=F64)
    y = tp(x1, x2, tp.weight.double())  # explicit float64 weights
    assert rel(y, e3(x1, x2)) <= 1e-10
    # without an explicit weight the parameter is used (fp32 inputs, fp32 parameter)
    y32 = tp(x1.float(), x2.float())
    assert y32.dtype == torch.float32
    assert rel(y32, e3(x1, x2)) <= 1e-5
    # and the parameter receives the gradient
    y32.sum().backward()
    assert tp.weight.grad is not None and tp.weight.grad.abs().max() > 0


def test_mode_and_instruction_list_together_is_an_error():
    with pytest.raises(ValueError, match="not both"):
        tritp.compile("2x0e", "1x0e", "2x0e", [(0, 0, 0, "uvu", True)], mode="uvu")
    with pytest.raises(ValueError, match="uvw"):
        tritp.compile("2x0e", "1x0e", "2x0e", "uvu", mode="uvw")


@pytest.mark.parametrize("spelling", ["positional", "keyword"])
def test_unknown_mode_is_named(spelling):
    with pytest.raises(ValueError, match="uvx"):
        if spelling == "positional":
            tritp.compile("2x0e", "1x0e", "2x0e", "uvx")
        else:
            tritp.compile("2x0e", "1x0e", "2x0e", mode="uvx")


# -- input validation ------------------------------------------------------------------------

SHAPES = ("2x0e+1x1o", "1x0e+1x1o", "2x0e+1x1o+1x1e")  # dims 5, 4, 8


@pytest.fixture
def tps():
    shared = tritp.compile(*SHAPES, "uvw", internal_weights=False)
    batch = tritp.compile(*SHAPES, "uvw", shared_weights=False)
    return shared, batch


def test_wrong_last_dim_names_the_argument(tps):
    tp, _ = tps
    w = torch.randn(tp.weight_numel)
    with pytest.raises(ValueError, match=r"x1.*\b5\b") as e:
        tp(torch.randn(3, 6), torch.randn(3, 4), w)
    assert "6" in str(e.value)
    with pytest.raises(ValueError, match=r"x2.*\b4\b"):
        tp(torch.randn(3, 5), torch.randn(3, 3), w)
    with pytest.raises(ValueError, match="x1"):
        tp(torch.tensor(1.0), torch.randn(3, 4), w)


def test_dtype_errors(tps):
    tp, _ = tps
    w = torch.randn(tp.weight_numel)
    with pytest.raises(TypeError, match=r"x2.*float64.*float32"):
        tp(torch.randn(3, 5), torch.randn(3, 4, dtype=F64), w)
    with pytest.raises(TypeError, match=r"x1.*floating.*int64"):
        tp(torch.ones(3, 5, dtype=torch.int64), torch.randn(3, 4), w)
    with pytest.raises(TypeError, match=r"x2.*floating.*int32"):
        tp(torch.randn(3, 5), torch.ones(3, 4, dtype=torch.int32), w)
    with pytest.raises(TypeError, match="weight"):
        tp(torch.randn(3, 5), torch.randn(3, 4), torch.ones(tp.weight_numel, dtype=torch.int64))


def test_weight_errors(tps):
    shared, batch = tps
    n = shared.weight_numel
    x1, x2 = torch.randn(3, 5), torch.randn(3, 4)
    with pytest.raises(ValueError, match=rf"weight.*\b{n}\b"):
        shared(x1, x2)  # not internal: weights are required
    with pytest.raises(ValueError, match=rf"weight.*\[{n}\].*{n + 1}"):
        shared(x1, x2, torch.randn(n + 1))
    with pytest.raises(ValueError, match=rf"weight.*\[{n}\]"):
        shared(x1, x2, torch.randn(3, n))  # per-sample weights given to a shared-weight product
    with pytest.raises(ValueError, match=rf"weight.*\[\.\.\., {n}\].*{n - 1}"):
        batch(x1, x2, torch.randn(3, n - 1))
    with pytest.raises(ValueError, match=rf"weight.*\[\.\.\., {n}\]"):
        batch(x1, x2, torch.randn(n))  # per-sample weights need a batch dimension (as e3nn)


def test_device_mismatch_is_named(tps):
    # a second device on a CPU-only machine: the meta device
    shared, _ = tps
    x1, x2 = torch.randn(3, 5), torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"weight.*meta.*cpu"):
        shared(x1, x2, torch.randn(shared.weight_numel, device="meta"))
    with pytest.raises(ValueError, match=r"x2.*meta.*cpu"):
        shared(x1, torch.randn(3, 4, device="meta"), torch.randn(shared.weight_numel))


def test_bad_backend_and_internal_per_sample():
    with pytest.raises(ValueError, match=r"backend.*cuda_magic.*auto.*triton.*reference"):
        tritp.compile(*SHAPES, "uvw", backend="cuda_magic")
    with pytest.raises(ValueError, match="internal_weights"):
        tritp.compile(*SHAPES, "uvw", shared_weights=False, internal_weights=True)


# -- backend selection -----------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import torch
    import tritp

    for backend in ("triton", "auto"):
        tp = tritp.compile("2x0e+1x1o", "1x0e+1x1o", "2x0e+1x1o", "uvu", shared_weights=False, backend=backend)
        args = torch.randn(3, 5), torch.randn(3, 4), torch.randn(3, tp.weight_numel)
        try:
            tp(*args)
        except RuntimeError as e:
            print(f"{backend} RAISED: {e}")
        else:
            print(f"{backend} RAN")
""")


def test_cpu_without_interpreter_triton_raises_and_strict_auto_raises():
    """One fresh process without TRITON_INTERPRET and with TRITP_STRICT=1: backend="triton" on
    CPU tensors is a clear error, and the auto backend's reference fallback becomes an error."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITP_STRICT"] = "1"
    r = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in r.stdout.splitlines() if line.startswith(("triton ", "auto ")))
    assert lines["triton"].startswith("RAISED:"), r.stdout
    msg = lines["triton"]
    assert "backend='triton'" in msg and "TRITON_INTERPRET=1" in msg and "reference" in msg
    assert "TRITP_STRICT" not in msg  # the backend error itself, not the strict fallback
    assert lines["auto"].startswith("RAISED:"), r.stdout
    assert "TRITP_STRICT" in lines["auto"]


def test_auto_on_cpu_without_interpreter_warns_once_and_uses_the_reference(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("TRITP_STRICT", raising=False)
    monkeypatch.setattr(tritp.module, "_warned", set())  # forget warnings other tests triggered
    tp = tritp.compile(*SHAPES, "uvu", shared_weights=False)
    ref = tritp.compile(*SHAPES, "uvu", shared_weights=False, backend="reference")
    x1, x2, w = torch.randn(3, 5), torch.randn(3, 4), torch.randn(3, tp.weight_numel)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y1 = tp(x1, x2, w)
        y2 = tp(x1, x2, w)
    ours = [w_ for w_ in caught if "reference" in str(w_.message)]
    assert len(ours) == 1, [str(w_.message) for w_ in caught]
    assert "backend='reference'" in str(ours[0].message)
    assert torch.equal(y1, ref(x1, x2, w)) and torch.equal(y2, y1)
