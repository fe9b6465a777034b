"""The ``tritp`` command line and the quickstart example.

Most tests call ``main([...])`` in-process (fast); a few run real subprocesses to check what
a user sees: exit status, one-line errors, no traceback.
"""

import importlib
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import sympy

from tritp import __version__
from tritp import cli
from tritp.cli import SUBCOMMANDS, build_parser, main
from tritp.codegen import MODES, Problem
from tritp.codegen.coupling import sparse_coupling

ROOT = Path(__file__).resolve().parents[1]


def _ints(line: str) -> list:
    return [int(x) for x in re.findall(r"\b\d+\b", line)]


def _totals(problem: Problem) -> list:
    """Expected totals row, computed from the coupling table, not hard-coded."""
    nnz = dense = 0
    for ins in problem.instructions:
        l1 = problem.irreps_in1[ins.i_in1].ir.l
        l2 = problem.irreps_in2[ins.i_in2].ir.l
        l3 = problem.irreps_out[ins.i_out].ir.l
        nnz += len(sparse_coupling(l1, l2, l3))
        dense += (2 * l1 + 1) * (2 * l2 + 1) * (2 * l3 + 1)
    return [nnz, dense, problem.weight_numel]


def _run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _assert_one_line_error(rc, err, needle=""):
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tritp: error: ")
    assert needle in lines[0]
    assert "Traceback" not in err


def test_every_subcommand_follows_the_protocol():
    parser = build_parser()
    for name in SUBCOMMANDS:
        mod = importlib.import_module(f"tritp.cli_{name}")
        assert callable(mod.add_parser) and callable(mod.run)
        assert name in parser.format_help()


def test_registry_dispatches_to_a_new_subcommand(capsys, monkeypatch):
    # What another file does to add `tritp hello`: a module and one more name in SUBCOMMANDS.
    fake = types.ModuleType("tritp.cli_hello")

    def add_parser(sub):
        sub.add_parser("hello").add_argument("who")

    def run(args):
        if args.who == "bad":
            raise TypeError("who must not be bad")
        print(f"hello {args.who}")
        return 3

    fake.add_parser, fake.run = add_parser, run
    monkeypatch.setitem(sys.modules, "tritp.cli_hello", fake)
    monkeypatch.setattr(cli, "SUBCOMMANDS", cli.SUBCOMMANDS + ("hello",))
    assert _run(capsys, "hello", "you")[:2] == (3, "hello you\n")
    rc, _, err = _run(capsys, "hello", "bad")
    _assert_one_line_error(rc, err, "who must not be bad")


def test_show_uvw_totals(capsys):
    rc, out, err = _run(capsys, "show", "1x1o", "1x1o", "1x0e+1x1e+1x2e")
    assert rc == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].startswith("1x1o [3] x 1x1o [3] -> 1x0e+1x1e+1x2e [9]; 3 paths, 3 shared weights")
    (total,) = [ln for ln in lines if "total" in ln]
    assert _ints(total) == _totals(Problem.fully_connected("1x1o", "1x1o", "1x0e+1x1e+1x2e"))
    assert "1o x 1o -> 2e" in out and "2.23607" in out  # e3nn's sqrt(5) for the l=2 output


def test_show_channelwise_mace_medium(capsys):
    rc, out, _ = _run(capsys, "show", "128x0e+128x1o", "0e+1o+2e+3o", "0e+1o+2e", "--mode", "channelwise")
    assert rc == 0
    p = Problem.channelwise("128x0e+128x1o", "0e+1o+2e+3o", "0e+1o+2e")
    (total,) = [ln for ln in out.splitlines() if "total" in ln]
    assert _ints(total) == _totals(p)
    assert "per-sample weights" in out.splitlines()[0]
    assert sum(" uvu " in ln for ln in out.splitlines()) == len(p.instructions)


@pytest.mark.parametrize("mode", MODES)
def test_show_every_mode(capsys, mode):
    rc, out, err = _run(capsys, "show", "2x1o", "2x1o", "2x0e+2x1e+4x2e", "--mode", mode)
    assert rc == 0, err
    p = Problem.fully_connected("2x1o", "2x1o", "2x0e+2x1e+4x2e") if mode == "uvw" else \
        Problem.all_paths("2x1o", "2x1o", "2x0e+2x1e+4x2e", mode)
    (total,) = [ln for ln in out.splitlines() if "total" in ln]
    assert _ints(total) == _totals(p)


def test_show_full_without_filter(capsys):
    rc, out, _ = _run(capsys, "show", "2x1o", "1o", "all", "--mode", "full")
    assert rc == 0
    assert "-> 2x0e+2x1e+2x2e [18]" in out.splitlines()[0]
    assert " uvuv " in out


def test_show_gaunt_lists_every_implementation(capsys):
    rc, out, err = _run(capsys, "show", "4x0e+4x1o+4x2e+4x3o+4x4e", "4x0e+4x1o+4x2e+4x3o+4x4e", "--mode", "gaunt",
                        "--lmax-out", "4")
    assert rc == 0, err
    from tritp.codegen.gaunt_problem import GauntProblem

    p = GauntProblem("4x0e+4x1o+4x2e+4x3o+4x4e", "4x0e+4x1o+4x2e+4x3o+4x4e", lmax_out=4)
    assert f"4 channels, {len(p.paths)} even paths" in out.splitlines()[0]
    rows = {ln.split()[1]: ln for ln in out.splitlines() if ln.startswith("│")}
    assert set(rows) == {"sparse", "grid", "fft", "separable"}
    for impl, row in rows.items():
        assert f"{p.replace(implementation=impl).flops():,}" in row, row
    assert "(auto, untuned)" in rows["grid"] and "polar nodes" in rows["separable"]
    rc, _, err = _run(capsys, "show", "4x0e", "0e", "--mode", "gaunt", "--lmax-out", "0", "--path", "0")
    _assert_one_line_error(rc, err, "no --path")
    rc, _, err = _run(capsys, "show", "1x1o", "1x1o")
    _assert_one_line_error(rc, err, "OUT (the output irreps) is required")


def test_show_shared_and_normalization_flags(capsys):
    rc, out, _ = _run(capsys, "show", "4x0e", "0e", "0e", "--mode", "channelwise", "--shared",
                      "--irrep-normalization", "norm", "--path-normalization", "none")
    assert rc == 0
    head = out.splitlines()[0]
    assert "4 shared weights" in head and "irrep_normalization=norm" in head and "path_normalization=none" in head


def test_show_path_exact_matches_float_table(capsys):
    rc, out, _ = _run(capsys, "show", "1x1o", "1x1o", "1x0e+1x1e+1x2e", "--path", "2", "--exact")
    assert rc == 0
    rows = [ln for ln in out.splitlines() if "m=(" in ln]
    table = {(a, b, c): v for a, b, c, v in sparse_coupling(1, 1, 2)}
    assert len(rows) == len(table)
    assert any("sqrt(" in ln for ln in rows)
    for ln in rows:
        m = re.match(r"\((\d+), (\d+), (\d+)\)\s+m=\(([-+]\d+), ([-+]\d+), ([-+]\d+)\): (.+)$", ln)
        assert m, ln
        idx = tuple(int(x) for x in m.groups()[:3])
        assert tuple(int(x) for x in m.groups()[3:6]) == tuple(i - 1 for i in idx[:2]) + (idx[2] - 2,)
        assert float(sympy.sympify(m.group(7))) == pytest.approx(table[idx], abs=1e-15)


def test_show_path_float(capsys):
    rc, out, _ = _run(capsys, "show", "1x1o", "1x1o", "1x0e", "--path", "0")
    assert rc == 0
    assert sum("m=(" in ln for ln in out.splitlines()) == 3 and "sqrt" not in out


@pytest.mark.parametrize("argv, needle", [
    (["show", "1xq", "1o", "0e"], "irreps_in1"),
    (["show", "1o", "1o", "1e", "--path", "1"], "--path 1 is out of range"),
    (["show", "1o", "1o", "1e", "--path", "-1"], "out of range"),
    (["show", "1o", "1o", "1e", "--exact"], "--exact needs --path"),
    (["show", "2x1o", "1o", "3x1e", "--mode", "uvu"], "no uvu path"),
])
def test_bad_arguments_are_one_line(capsys, argv, needle):
    rc, _, err = _run(capsys, *argv)
    _assert_one_line_error(rc, err, needle)


def test_usage_errors_exit_2(capsys):
    assert _run(capsys, "show", "1o", "1o", "1e", "--mode", "nope")[0] == 2
    assert _run(capsys, "show", "1o")[0] == 2
    assert _run(capsys)[0] == 2


def test_version(capsys):
    rc, out, _ = _run(capsys, "--version")
    assert rc == 0 and out.strip() == f"tritp {__version__}"


def test_subprocess_bad_irreps_and_success():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    bad = subprocess.run([sys.executable, "-m", "tritp.cli", "show", "1x1q", "1o", "0e"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("tritp: error: ")
    assert "Traceback" not in bad.stderr
    good = subprocess.run([sys.executable, "-m", "tritp.cli", "show", "1o", "1o", "0e+1e+2e", "--path", "1",
                           "--exact"], capture_output=True, text=True, env=env, timeout=120)
    assert good.returncode == 0, good.stderr
    assert "sqrt(" in good.stdout


def test_quickstart_runs():
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py"), "--batch", "16",
                        "--repeats", "1", "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "check vs float64 reference" in r.stdout and "all checks passed" in r.stdout
    assert "total" in r.stdout  # the coupling summary came from cli_show
