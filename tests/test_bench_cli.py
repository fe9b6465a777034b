"""``tritp codegen``, ``tritp bench`` and the presets.

codegen runs in-process (cheap: it only writes source text); one bench run goes through a real
subprocess under the Triton interpreter on a one-path problem, to check what a user gets: a
table, a JSON file with the documented keys, and tritp's results checked against float64.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tritp.cli import main
from tritp.codegen import Problem
from tritp.presets import BENCH_PRESETS, PEER_ANCHORS_H100, PRESETS, preset

from support import FakeKernels

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["4x0e+4x1o", "0e+1o", "0e+1o", "--mode", "channelwise"]


def _run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("direction, n", [("fwd", 1), ("bwd", 4), ("dbl", 16)])
def test_codegen_prints_every_kernel_of_a_direction(capsys, direction, n):
    rc, out, err = _run(capsys, "codegen", *SMALL, "--direction", direction)
    assert rc == 0, err
    assert out.count("@triton.jit") == n
    assert out.count("def tp_producer(") == n
    headers = [ln for ln in out.splitlines() if ln.startswith("# kernel ")]
    assert [h.split(":")[0] for h in headers] == [f"# kernel {k}/{n}" for k in range(1, n + 1)]
    names = {"fwd": "forward", "bwd": "backward: ", "dbl": "double backward: d("}[direction]
    assert all(names in h for h in headers)
    fused = {"fwd": 0, "bwd": 1, "dbl": 5}[direction]  # the fused backward's kernels first, then the rest
    assert all("fused grad x1+w+x2" in h for h in headers[:fused])
    assert not any("fused grad" in h for h in headers[fused:])
    # its own backward in one kernel first; then, among the rest, x1's and x2's gradient
    # kernels' own backwards as one kernel each
    assert ("(fused)" in headers[0]) == (direction == "dbl")
    assert sum("(fused)" in h for h in headers[fused:]) == (2 if direction == "dbl" else 0)
    for ln in out.splitlines():  # the headers point at the files the runtime imports
        if ln.startswith("# source cache: "):
            assert Path(ln.split(": ", 1)[1]).is_file()


def test_codegen_without_weights_and_float64(capsys):
    counts = []
    for d in ("fwd", "bwd", "dbl"):
        rc, out, _ = _run(capsys, "codegen", "2x1o", "1o", "all", "--mode", "full", "--direction", d,
                          "--dtype", "float64")
        assert rc == 0
        assert "DT: tl.constexpr = tl.float64" in out
        counts.append(out.count("@triton.jit"))
    assert counts == [1, 2, 4]  # no weight gradient; each backward producer has two inputs


def test_codegen_preset(capsys):
    rc, out, _ = _run(capsys, "codegen", "--preset", "tiny", "--direction", "bwd")
    assert rc == 0 and out.count("@triton.jit") == 4  # the fused backward and three gradients alone
    assert preset("tiny")[0].key in out


@pytest.mark.parametrize("argv, needle", [
    (["codegen", "1x1q", "0e", "0e"], "irreps_in1"),
    (["codegen", "1o", "1o"], "expected three irreps"),
    (["codegen", "1o", "1o", "1e", "--preset", "tiny"], "not both"),
    (["codegen", "--preset", "nope"], "unknown preset"),
    (["codegen", "1o", "1o", "1e", "--block-c", "3"], "power of two"),
    (["codegen", "2x1o", "1o", "3x1e", "--mode", "uvu"], "no uvu path"),
    (["bench", "--preset", "nope"], "unknown preset"),
    (["bench", "--preset", "tiny,nope"], "unknown preset 'nope'"),
    (["bench", "--quick", "--directions", "sideways"], "--directions"),
    (["bench", "--quick", "--peers", "torchmd"], "--peers"),
])
def test_bad_arguments_exit_2_with_one_line(capsys, argv, needle):
    rc, out, err = _run(capsys, *argv)
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tritp: error: ") and needle in lines[0], err


def test_codegen_usage_error_exits_2(capsys):
    assert _run(capsys, "codegen", "1o", "1o", "1e", "--direction", "sideways")[0] == 2


def test_presets_match_the_design_io_floors():
    # design section 7: I/O floor = (x1 + x2 + weights + out) fp32 bytes at batch 50,000 / 3.00 TB/s
    from tritp.bench import io_bytes

    for name, anchors in PEER_ANCHORS_H100.items():
        if name.startswith("_"):
            continue
        problem, batch = preset(name)
        floor_ms = io_bytes(problem, batch, 4, "fwd") / 3.00e12 * 1e3
        assert floor_ms == pytest.approx(anchors["io_floor_ms"], rel=0.01), name
    assert "tiny" in PRESETS and "tiny" not in BENCH_PRESETS
    assert all(isinstance(preset(n)[0], Problem) for n in PRESETS)


def test_bench_quick_writes_json(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1", TRITP_CACHE_DIR=str(tmp_path / "cache"),
               PYTHONPATH=str(ROOT), TRITP_SHARE_LOADS="0")
    out_dir = tmp_path / "results"
    r = subprocess.run([sys.executable, "-m", "tritp.cli", "bench", "4x0e+4x1o", "0e+1o", "0e", "--quick",
                        "--peers", "e3nn", "--out", str(out_dir)],
                       capture_output=True, text=True, env=env, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    (path,) = out_dir.glob("*.json")
    assert path.name.endswith("-cpu-tp-quick.json") and "wrote" in r.stdout
    data = json.loads(path.read_text())
    for key in ("schema", "kind", "date", "command", "device_name", "dtype", "versions", "bandwidth_Bps",
                "directions", "peers_requested", "peer_status", "problems", "interpreter"):
        assert key in data, key
    assert data["interpreter"] is True and data["device_name"] == "cpu"
    # settings that change the kernels are recorded with the run
    assert data["tritp_env"]["TRITP_SHARE_LOADS"] == "0" and data["tritp_env"]["TRITP_CACHE_DIR"] == env["TRITP_CACHE_DIR"]
    assert {"torch", "triton", "e3nn", "cuequivariance", "openequivariance"} <= set(data["versions"])
    (rec,) = data["problems"]
    for key in ("name", "problem", "batch", "io_bytes", "io_floor_ms", "times_ms", "errors", "failures",
                "best_peer", "ratio_to_best_peer", "pct_of_io_floor"):
        assert key in rec, key
    assert set(rec["times_ms"]["tritp"]) == {"fwd", "fwdbwd", "dbl"}
    assert all(t > 0 for t in rec["times_ms"]["tritp"].values())
    # each timing says what it launched: every kernel of the direction with its configuration
    cfgs = rec["launch_configs"]
    assert set(cfgs) == {"fwd", "fwdbwd", "dbl"} and list(cfgs["fwd"]) == ["out_x1x2w"]
    assert len(cfgs["dbl"]) > len(cfgs["fwdbwd"]) > len(cfgs["fwd"])
    assert all(re.fullmatch(r"\d+:\d+:\d+:\d+ \((default|tuned)\)", c) for d in cfgs.values() for c in d.values())
    tol = {"fwd": 1e-5, "fwdbwd": 1e-4, "dbl": 1e-4}  # design section 6, fp32 against float64
    assert all(rec["errors"]["tritp"][d] <= tol[d] for d in tol), rec["errors"]
    assert Problem.from_key(rec["problem"]).irreps_out.dim == 4 + 4  # 4x0e from two paths
    assert "tritp" in r.stdout and "I/O floor" in r.stdout  # the table


def test_precompile_suite_compiles_each_kernel_once(monkeypatch):
    """Before timing on a GPU the harness compiles every tritp kernel the suite will launch,
    once per (problem, producer), in parallel; fake kernels stand in for Triton's here."""
    import torch

    import tritp.kernels
    from tritp.bench import BenchConfig, precompile_suite

    fakes = FakeKernels()
    monkeypatch.setattr(tritp.kernels, "get_kernel", fakes)
    monkeypatch.setattr(tritp.kernels, "interpreter_active", lambda: False)
    entries = [("tiny", *preset("tiny")), ("mace-small", preset("mace-small")[0], 64)]
    logs = []
    cfg = BenchConfig(device=torch.device("cpu"), directions=("fwd", "fwdbwd", "dbl"))
    n = precompile_suite(entries, cfg, logs.append)
    warmed = [w[0] for w in fakes.warmed]
    # per problem: fwd, the fused backward, 3 grads alone, its 4 derivatives, 9 double, and the
    # fused backwards of the fused kernel and of x1's and x2's gradient kernels (fused_specs)
    assert n == len(warmed) == len(set(warmed)) == 2 * (1 + 1 + 3 + 1 + 4 + 9 + 2)
    assert "precompiled 42 tritp kernels" in logs[-1]


def test_preset_takes_a_comma_list_and_repeats():
    import argparse

    from tritp.cli_bench import select_problems

    ns = argparse.Namespace(irreps=[], preset=["mace-large,tiny", "mace-medium"], quick=True, batch=None,
                            mode="uvw", shared=None)
    assert [n for n, _, _ in select_problems(ns)] == ["mace-large", "tiny", "mace-medium"]
