"""CPU smoke runs of two benchmark scripts: kernel_forms.py (the six kernel forms -- row-on-warp,
3D and strided mul_ir tiles, per-segment channel loops, the backward unfused, ir_mul -- of the
tiny preset through the interpreter, each checked against the float64 reference) and first_call.py (compile for sm_90 without a GPU, then load warm)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_run_checks_and_times_every_form(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1", TRITP_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("TRITP_SHARE_LOADS", None)
    env.pop("TRITP_COALESCE", None)
    env.pop("TRITP_FUSED_BWD", None)
    env.pop("TRITP_PRUNE_GRADS", None)
    env.pop("TRITP_FUSED_DBL", None)
    env.pop("TRITP_FAST_EAGER", None)
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "kernel_forms.py"), "--quick", "--out",
                        str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    (path,) = (tmp_path / "out").glob("*-kernel-forms.json")
    data = json.loads(path.read_text())
    assert data["forms"] == ["mul_ir/rows", "mul_ir/3d", "mul_ir/strided", "mul_ir/unshared", "mul_ir/unfused",
                             "mul_ir/allgrads", "mul_ir/dbl-apart", "mul_ir/ops", "ir_mul"]
    (rec,) = data["problems"]
    assert rec["failures"] == {}
    # the unfused backward's forward is the default's: not timed twice; every gradient
    # (allgrads) and the unfused double backward (dbl-apart) differ from the default only in dbl,
    # not run by default
    timed = {"mul_ir/unfused": {"fwdbwd"}, "mul_ir/allgrads": set(), "mul_ir/dbl-apart": set()}
    for form in data["forms"]:
        assert set(rec["times_ms"].get(form, {})) == timed.get(form, {"fwd", "fwdbwd"})
        if form in ("mul_ir/allgrads", "mul_ir/dbl-apart"):
            continue
        assert all(e <= 1e-5 for e in rec["errors"][form].values()), (form, rec["errors"][form])
    # every form was generated (the kernel files differ by the form): both channel-loop
    # forms, and 3D tiles (row-on-warp or not) beside strided ones
    sources = [p.read_text() for p in (tmp_path / "cache" / "kernels").glob("cg_out_*.py")]
    loops = {src.count("for c0 in range") for src in sources}
    assert len(sources) >= 5 and len(loops) == 2, (len(sources), loops)
    assert {"tl.split(" in src for src in sources} == {True, False}
    assert {"tl.permute(" in src for src in sources if "tl.split(" in src} == {True, False}
    assert list((tmp_path / "cache" / "kernels").glob("cg_x1wx2_*.py"))  # the fused backward ran


def test_first_call_compiles_cold_then_loads_warm(tmp_path):
    """benchmarks/first_call.py: the tiny preset compiled for sm_90 through Triton's real warm-up
    path with the stand-in driver (no GPU), in a fresh process, then loaded by a second one."""
    out = tmp_path / "fc.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "first_call.py"), "--preset", "tiny",
                        "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [row["run"] for row in rows] == ["cold", "warm"], rows
    assert all("error" not in row and row["kernels"] >= 1 for row in rows), rows
    assert rows[0]["kernels"] == rows[1]["kernels"]
