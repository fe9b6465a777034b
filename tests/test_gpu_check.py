"""benchmarks/gpu_check.sh's stage and budget logic, with a stand-in Python that only logs
its arguments (the real stages need a GPU; their scripts have their own CPU smoke tests)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils timeout")


def run_check(tmp_path, **env):
    calls = tmp_path / "calls.log"
    fake = tmp_path / "python"
    # one line per call, whatever newlines the arguments hold (gpu_check.sh passes code with -c),
    # appended in one write: the background OEQ build's call may log while a stage's does
    fake.write_text(f'#!/bin/sh\nline=$(echo "$@" | tr "\\n" " ")\nprintf "%s\\n" "$line" >> {calls}\nexit 0\n')
    fake.chmod(0o755)
    out = tmp_path / "out"
    full = dict(os.environ, PYTHON=str(fake), OUT=str(out), **env)
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=full, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    log = (out / "gpu_check.log").read_text()
    return log, [c.strip() for c in calls.read_text().splitlines()]


def test_every_stage_runs_in_order_within_the_budget(tmp_path):
    log, calls = run_check(tmp_path, BUDGET="300")
    stages = re.findall(r"stage (\w+): measuring for (\d+) s, hard stop (\d+) s", log)
    assert [s[0] for s in stages] == ["harness", "conv", "gaunt", "autotune"]
    assert [int(s[2]) for s in stages] == [220, 90, 90, 80]  # the fake stages take no time
    assert all(int(soft) == int(hard) * 3 // 4 for _, soft, hard in stages)
    # (pip installs, and the background OEQ build's "-c" when .whl/ holds OEQ's source, aside)
    scripts = [c.split()[0] if c.startswith("benchmarks/") else c[:15] for c in calls
               if "pip install" not in c and not c.startswith("-c")]
    assert scripts == ["-", "benchmarks/harness.py", "benchmarks/conv_bench.py", "benchmarks/gaunt_bench.py",
                       "-m tritp.cli au"]
    harness = next(c for c in calls if c.startswith("benchmarks/harness.py"))
    assert "--preset all --time-limit 165 --out benchmarks/results" in harness
    tune = next(c for c in calls if c.startswith("-m tritp.cli autotune"))
    assert "--strategy staged" in tune and "--export autotune_cache" in tune


def test_a_small_budget_cuts_and_skips_stages(tmp_path):
    log, calls = run_check(tmp_path, BUDGET="100", STAGES="conv,gaunt")
    stages = re.findall(r"stage (\w+): measuring for (\d+) s, hard stop (\d+) s", log)
    assert stages[0][0] == "conv" and 30 <= int(stages[0][2]) <= 85  # the budget, not CONV_S=90
    assert "stage gaunt skipped" in log or int(stages[1][2]) < 90
    assert not any("harness.py" in c for c in calls)


def test_harness_arguments_pass_through(tmp_path):
    _, calls = run_check(tmp_path, STAGES="harness")
    (harness,) = [c for c in calls if "harness.py" in c]
    assert harness.startswith("benchmarks/harness.py --preset all ")


def test_a_stage_started_with_sigint_ignored_still_stops_on_sigint(tmp_path):
    """A background job of a non-interactive shell starts with SIGINT ignored, and Python keeps
    it ignored; gpu_check.sh's soft stop is SIGINT, so the stages re-enable it (else the stop
    is a kill 20 s later and the stage's measurements are lost)."""
    code = ("import signal, sys; sys.path.insert(0, sys.argv[1]); ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN; "
            "from tritp.cli import interruptible; interruptible(); "
            "print(ignored, signal.getsignal(signal.SIGINT) is signal.default_int_handler)")
    r = subprocess.run(["bash", "-c", f'"$0" -c "{code}" "$1" & wait', sys.executable, str(ROOT)],
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.split() == ["True", "True"], r.stdout + r.stderr


def test_the_kernel_forms_stage_runs_only_when_asked(tmp_path):
    log, calls = run_check(tmp_path, STAGES="forms", BUDGET="300")
    (forms,) = [c for c in calls if "kernel_forms.py" in c]
    assert forms.startswith("benchmarks/kernel_forms.py --time-limit 180 --out benchmarks/results")
    (tmp_path / "default").mkdir()
    _, default = run_check(tmp_path / "default")
    assert not any("kernel_forms.py" in c for c in default)
