"""The examples run (as a user runs them, in a subprocess, on CPU through the Triton
interpreter) and print what they promise: a decreasing training loss, same results as e3nn."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOAT = r"[-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?"


def run_example(name, *args, timeout=600):
    env = dict(os.environ, TRITON_INTERPRET="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / name), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{name} exited with {proc.returncode}:\n{out[-4000:]}"
    return proc.stdout


def test_interaction_block_trains_and_compares_with_e3nn():
    pytest.importorskip("e3nn")
    out = run_example("interaction_block.py", "--steps", "3", "--repeats", "1", "--device", "cpu")
    losses = [float(m.group(2)) for m in re.finditer(rf"^step\s+(\d+)\s+loss ({FLOAT})", out, re.M)]
    assert len(losses) == 3, out
    assert losses[-1] < losses[0], out
    assert all(b < a for a, b in zip(losses, losses[1:])), losses  # full batch, Adam: down every step
    m = re.search(rf"^loss ({FLOAT}) -> ({FLOAT}) \(decreased\)", out, re.M)
    assert m and float(m.group(1)) == pytest.approx(losses[0], rel=1e-5), out
    m = re.search(rf"max \|E_tritp - E_e3nn\| = ({FLOAT}), max \|F_tritp - F_e3nn\| = ({FLOAT})", out)
    assert m, out
    assert float(m.group(1)) < 1e-4 and float(m.group(2)) < 1e-4
    m = re.search(rf"speedup of tritp over e3nn: ({FLOAT})x", out)
    assert m and float(m.group(1)) > 0, out
    assert "Triton interpreter" in out  # the CPU caveat is printed


def test_swap_e3nn_identical():
    pytest.importorskip("e3nn")
    out = run_example("swap_e3nn.py")
    m = re.search(rf"^outputs: max abs diff ({FLOAT})", out, re.M)
    assert m and float(m.group(1)) <= 1e-12, out
    diffs = [float(x) for x in re.findall(rf"^  (?:input|param) .*? ({FLOAT})$", out, re.M)]
    assert len(diffs) >= 8 and max(diffs) <= 1e-12, out
    assert "identical within tolerance" in out
    assert out.count("<- swapped") == 2


def test_gaunt_product_checks_every_implementation():
    out = run_example("gaunt_product.py", "--L", "2", "--channels", "4", "--batch", "4", "--repeats", "1")
    for impl in ("sparse", "grid", "fft", "separable", "auto"):
        assert re.search(rf"^\s*{impl}\b.* rel\. error ({FLOAT}) ok", out, re.M), out
    if "reference vs f1*f2" in out:  # e3nn installed
        m = re.search(rf"reference vs f1\*f2 at points ({FLOAT})", out)
        assert float(m.group(1)) < 1e-10, out
    assert "all checks passed" in out
