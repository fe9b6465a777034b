"""Tuning the Gaunt product's implementation choice and grid/fft launch (:mod:`tritp.gaunt_tuning`),
on CPU.

Fake timers score a candidate (``thunk.config``: implementation and launch) without running it,
so the choice is known in advance; the tests then check that ``implementation="auto"`` follows
the stored entry in this process, falls back to the size rule without one (or with a stale
one), that grid/fft modules launch their kernels with the tuned launch (auto or explicit, under
``torch.compile`` too), and that the tuned module still computes the product. One test runs the
real kernels of every candidate (forward and backward) under the Triton interpreter, at a batch
of 4.
"""

import json
import re
import os
import subprocess
import sys

import pytest
import torch

import tritp
from tritp import gaunt_kernels, gaunt_separable, gaunt_tuning, kernels
from tritp.cli import main
from tritp.codegen.gaunt_problem import FORWARD, GauntError, GauntProblem, size_rule
from tritp.gaunt import AUTO_BATCH, choose_implementation, compile_gaunt
from support import compiled_square_loss_errors
from tritp.gaunt_reference import gaunt_reference
from tritp.gaunt_ops import op_key, parse_key
from tritp.gaunt_tuning import gaunt_identity, gaunt_space, impl_configs, label, launch_of, neutral_problem, tune_gaunt
from tritp.tuning import Config, clear_memo, lookup
from tritp.tuning import cache, tuner
from tritp.tuning.space import families, identity_for

CPU = torch.device("cpu")
SMALL = ("4x0e+4x1o", "0e+1o")  # size rule: sparse (every degree <= 3)
pytestmark = pytest.mark.usefixtures("fresh_autotune_caches")
F64 = torch.float64


def prefer(impl: str):
    """A fake timer under which ``impl`` is fastest (records what it was asked to time)."""
    def timer(thunk):
        timer.seen.append(thunk.config.impl)
        return 1.0 if thunk.config.impl == impl else 2.0 + len(thunk.config.impl)
    timer.seen = []
    return timer


def auto(*irreps, **kw):
    return compile_gaunt(*irreps, lmax_out=2, implementation="auto", **kw)




def test_the_family_is_registered_on_import_without_compiling_or_touching_a_gpu(tmp_path):
    code = ("import os, torch, tritp.gaunt\n"
            "from tritp.tuning.space import families, identity_for\n"
            "from tritp.gaunt_tuning import gaunt_identity\n"
            "assert 'gaunt' in families() and identity_for('gaunt') is gaunt_identity\n"
            "assert identity_for('gaunt-launch') is gaunt_identity\n"
            "assert not torch.cuda.is_initialized()\n"
            "assert not os.path.exists(os.path.join(os.environ['TRITP_CACHE_DIR'], 'kernels'))\n")
    env = dict(os.environ, TRITP_CACHE_DIR=str(tmp_path / "fresh"))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "gaunt" in families() and identity_for("gaunt") is gaunt_identity


def test_auto_takes_the_size_rule_when_nothing_is_tuned():
    assert auto(*SMALL).implementation == "sparse"
    big = compile_gaunt("4x0e+4x1o+4x2e+4x3o+4x4e", "0e", implementation="auto")
    assert big.implementation == "grid" == size_rule(big.problem)


def test_tuned_choice_is_stored_where_auto_looks_and_flips_with_the_timer():
    gp = auto(*SMALL)
    assert gp.implementation == "sparse"
    timer = prefer("fft")
    r = tune_gaunt(gp.problem, AUTO_BATCH, timer=timer)
    space = gaunt_space(neutral_problem(gp.problem), FORWARD, "float32", AUTO_BATCH)
    assert sorted(set(timer.seen)) == ["fft", "grid", "separable", "sparse"] and timer.seen[0] == "sparse"  # size rule first
    # sparse; grid 4 rungs, fft 5 (its BLOCK_P is 32); separable 4 rungs at one pass, one at two
    assert len(timer.seen) == len(space) == 1 + 4 + 5 + 5
    fft0 = impl_configs(gp.problem, "fft")[0]  # every fft launch ties: the default, timed first, wins
    assert r.config == fft0 and r.launch == (64, 4, 32) and r.implementation == "fft"
    assert r.default == Config(impl="sparse") and r.speedup == 8.0
    key = cache.make_key(neutral_problem(gp.problem), FORWARD, "float32", AUTO_BATCH, cache.INTERPRETER_GPU, "gaunt")
    assert r.entry["key"] == key and json.loads(cache.entry_path(key).read_text()) == r.entry
    assert r.entry["config"] == fft0._asdict() and r.entry["default"]["impl"] == "sparse"
    assert r.entry["ms"] == 1.0 and r.entry["default_ms"] == 8.0 and r.entry["timed"] == len(space)
    assert sorted(r.launch_entries) == ["fft", "grid", "separable"] and r.launch_entries["grid"]["timed"] == 4
    assert r.launch_entries["separable"]["timed"] == 5
    clear_memo()
    assert lookup(neutral_problem(gp.problem), FORWARD, "float32", AUTO_BATCH, CPU, True, family="gaunt") == \
        (fft0, "user")
    assert auto(*SMALL).implementation == "fft"
    assert tritp.compile(*SMALL, lmax_out=2, mode="gaunt").implementation == "fft"
    assert choose_implementation(gp.problem, batch=100) == "sparse"  # another bucket: untuned
    assert auto(*SMALL, normalization="integral").implementation == "sparse"  # another product
    # a second tuning overwrites the first, and auto sees it at once
    assert tune_gaunt(gp.problem, AUTO_BATCH, timer=prefer("grid")).implementation == "grid"
    assert auto(*SMALL).implementation == "grid"
    # float64 entries are kept apart (auto asks for float32)
    tune_gaunt(gp.problem, AUTO_BATCH, dtype="float64", timer=prefer("sparse"))
    assert auto(*SMALL).implementation == "grid"


def test_an_entry_from_another_generator_is_stale(monkeypatch):
    for module in (gaunt_kernels, kernels):  # the Gaunt generator, and the CG one (sparse)
        problem = auto(*SMALL).problem
        with monkeypatch.context() as m:
            m.setattr(module, "generator_hash", lambda: "an-older-generator")
            tune_gaunt(problem, AUTO_BATCH, timer=prefer("grid"))
            clear_memo()
            assert auto(*SMALL).implementation == "grid"  # found while that generator is current
        clear_memo()
        assert auto(*SMALL).implementation == "sparse"  # today's generator: the entry is stale
        cache.clear_user()


def test_tuned_auto_module_matches_the_float64_reference():
    problem = GauntProblem("3x0e+3x1o+3x2e", "0e+1o", lmax_out=2)
    tune_gaunt(problem, AUTO_BATCH, timer=prefer("fft"))
    gp = compile_gaunt("3x0e+3x1o+3x2e", "0e+1o", lmax_out=2, backend="triton")
    assert gp.implementation == "fft" != size_rule(problem)
    x1, x2 = torch.randn(5, gp.irreps_in1.dim, dtype=F64), torch.randn(5, gp.irreps_in2.dim, dtype=F64)
    ref = gaunt_reference(gp.problem, x1, x2)
    assert ((gp(x1, x2) - ref).abs().max() / ref.abs().max()).item() < 1e-10


def test_module_autotune_runs_every_implementation_forward_and_backward():
    gp = compile_gaunt("2x0e+2x1o", "0e+1o", lmax_out=2, weights=("in2", "out"), backend="triton")
    ran = []

    def timer(thunk):
        x1, x2 = thunk.tensors[:2]
        g1, g2 = thunk()  # forward and both input gradients, really run
        ref = gaunt_reference(thunk.problem, x1.detach().double(), x2.detach().double())
        assert g1.shape == x1.shape and g2.shape == x2.shape and torch.isfinite(g1).all()
        ran.append((thunk.config.impl, ref.shape))
        return {"grid": 1.0}.get(thunk.config.impl, 3.0)

    (r,) = gp.autotune(batch=4, directions=("fwd", "bwd"), timer=timer)
    assert sorted(set(i for i, _ in ran)) == ["fft", "grid", "separable", "sparse"] and len(ran) == r.entry["timed"] > 3
    assert not r.errors and r.implementation == "grid" and r.entry["directions"] == ["fwd", "bwd"]
    assert r.entry["weights"] == ["in2", "out"] and r.entry["key"]["batch"] == 4
    assert choose_implementation(gp.problem, batch=4) == "grid"
    assert choose_implementation(gp.problem) == "sparse"  # auto's batch was not tuned


def test_failures_and_bad_arguments(monkeypatch):
    problem = GauntProblem(*SMALL, lmax_out=2)

    def flaky(thunk):
        if thunk.config.impl != "fft":
            raise RuntimeError("out of resources")
        return 5.0

    r = tune_gaunt(problem, 16, timer=flaky, store=False)
    grid = [label(c) for c in impl_configs(problem, "grid")]
    sep = [label(c) for c in impl_configs(problem, "separable")]
    assert r.implementation == "fft" and set(r.errors) == {"sparse", *grid, *sep} and r.entry["times"][grid[0]] is None
    assert list(r.launch_entries) == ["fft"]  # grid never ran: no launch entry for it
    assert not cache.user_dir().exists()  # store=False wrote nothing
    with pytest.raises(RuntimeError, match="every Gaunt implementation failed"):
        tune_gaunt(problem, 16, timer=lambda t: 1 / 0, store=False)
    with pytest.raises(ValueError, match="unknown direction 'backward'"):
        tune_gaunt(problem, 16, directions=("fwd", "backward"), timer=prefer("fft"))
    with pytest.raises(ValueError, match="dtype"):
        tune_gaunt(problem, 16, dtype="float16", timer=prefer("fft"))
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
            tune_gaunt(problem, 16, timer=prefer("fft"))


def test_cli_tunes_a_gaunt_product(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(tuner, "wallclock_timer", lambda *a, **k: prefer("fft"))
    rc = main(["autotune", *SMALL, "--mode", "gaunt", "--lmax-out", "2", "--batch", str(AUTO_BATCH), "--direction",
               "fwd,bwd", "--interpret", "--export", str(tmp_path / "exp")])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "gaunt" in out and "fft" in out and "fwd,bwd" in out and "note:" not in out
    assert auto(*SMALL).implementation == "fft"
    (f,) = json.loads((tmp_path / "exp" / "index.json").read_text())["files"]
    bundle = json.loads((tmp_path / "exp" / f["file"]).read_text())
    families = sorted(e["key"]["family"] for e in bundle["entries"].values())
    assert families == ["gaunt"] + ["gaunt-launch"] * 3  # the choice, and grid's, fft's and separable's launches
    assert main(["cache", "list"]) == 0
    listed = capsys.readouterr().out
    assert "gaunt fwd+bwd" in listed and re.search(r"(grid|fft) \d+:\d+:\d+", listed)  # launches shown
    for argv in (["autotune", "4x0e", "--mode", "gaunt", "--interpret"],
                 ["autotune", *SMALL, "0e", "--lmax-out", "2", "--interpret"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith("tritp: error:"), err
    from tritp.cli import build_parser
    from tritp.cli_autotune import collect_problems

    items = tmp_path / "p.json"
    items.write_text(json.dumps([{"name": "g", "in1": "4x0e+4x1o", "in2": "0e", "mode": "gaunt", "lmax_out": 1,
                                  "normalization": "integral", "batch": 7}]))
    ((label, p, b),) = collect_problems(build_parser().parse_args(["autotune", "--problems", str(items)]))
    assert (label, b, p.normalization, str(p.irreps_out)) == ("g", 7, "integral", "4x0e+4x1o")


# -- tuned launches ------------------------------------------------------------------------------
MID = ("3x0e+3x1o+3x2e", "0e+1o")  # size rule: sparse; grid: 5 launches (BLOCK_P 32, one rung at 16)


def prefer_config(*ranked):
    """A fake timer: the candidates named (``label``) score 1, 2, ... in order, the rest 10."""
    def timer(thunk):
        name = label(thunk.config)
        return float(ranked.index(name) + 1) if name in ranked else 10.0
    return timer


def spy(monkeypatch, module, name):
    """Record ``(BLOCK_R, num_warps, option)`` of every launch of a kernel ``module.name`` builds
    from here on (option: grid/fft's ``BLOCK_P``, separable's passes)."""
    seen, real = [], getattr(module, name)

    def get(problem, spec, dtype, option):
        kernel = real(problem, spec, dtype, option)

        class Launch:
            def __getitem__(self, grid):
                def launch(*args, **kw):
                    seen.append((kw["BLOCK_R"], kw["num_warps"], option))
                    return kernel[grid](*args, **kw)
                return launch
        return Launch()

    monkeypatch.setattr(module, name, get)
    return seen


def spy_launches(monkeypatch):
    return spy(monkeypatch, gaunt_kernels, "get_gemm_kernel")


def spy_separable(monkeypatch):
    return spy(monkeypatch, gaunt_separable, "get_separable_kernel")


def check_reference(gp, seen, want, Z=5):
    x1 = torch.randn(Z, gp.irreps_in1.dim, dtype=F64, requires_grad=True)
    x2 = torch.randn(Z, gp.irreps_in2.dim, dtype=F64)
    ref = gaunt_reference(gp.problem, x1, x2)
    y = gp(x1, x2)
    assert ((y - ref).abs().max() / ref.abs().max()).item() < 1e-10
    (g,), (gr,) = torch.autograd.grad(y.sum(), [x1]), torch.autograd.grad(ref.sum(), [x1])
    assert ((g - gr).abs().max() / gr.abs().max()).item() < 1e-10
    assert seen == [want, want]  # forward and x1 gradient: the backward producer launches alike


def test_auto_module_runs_the_tuned_implementation_at_the_tuned_launch(monkeypatch):
    problem = GauntProblem(*MID, lmax_out=2)
    grid = impl_configs(problem, "grid")
    target = grid[2]  # not the default launch
    assert launch_of(target) == (32, 8, 32) and launch_of(grid[0]) != launch_of(target)
    for dtype in ("float32", "float64"):
        r = tune_gaunt(problem, AUTO_BATCH, dtype=dtype, timer=prefer_config(label(target)))
        assert r.config == target and r.launch == (32, 8, 32)
        assert r.launch_entries["grid"]["config"] == target._asdict()
    gp = compile_gaunt(*MID, lmax_out=2, implementation="auto", backend="triton")
    assert gp.implementation == "grid" != size_rule(problem)
    assert gp.launches == {"float32": (32, 8, 32), "float64": (32, 8, 32)} and "launch=" in repr(gp)
    seen = spy_launches(monkeypatch)
    check_reference(gp, seen, (32, 8, 32))


def test_separable_takes_its_tuned_launch(monkeypatch):
    """A separable launch stored by the tuner reaches the module and both of its kernels."""
    problem = GauntProblem(*MID, lmax_out=2)
    target = impl_configs(problem, "separable")[-1]  # one walk more than the default
    assert launch_of(target) == (128, 4, 2) and label(target) == "separable 128:4:2"
    r = tune_gaunt(problem, AUTO_BATCH, dtype="float64", timer=prefer_config(label(target)))
    assert r.implementation == "separable" and r.launch == (128, 4, 2)
    gp = compile_gaunt(*MID, lmax_out=2, implementation="separable", backend="triton")
    assert gp.launches["float64"] == (128, 4, 2) and gp.launches["float32"] is None
    seen = spy_separable(monkeypatch)
    check_reference(gp, seen, (128, 4, 2))


def test_explicit_implementation_takes_its_own_tuned_launch(monkeypatch):
    problem = GauntProblem(*MID, lmax_out=2)
    grid, fft = impl_configs(problem, "grid"), impl_configs(problem, "fft")
    # fft wins overall (at a non-default launch); grid's best launch is its last rung
    tune_gaunt(problem, AUTO_BATCH, dtype="float64", timer=prefer_config(label(fft[1]), label(grid[-1])))
    untuned = compile_gaunt(*MID, lmax_out=2)  # auto asks float32, which was not tuned: the size rule
    assert untuned.implementation == "sparse" and untuned.launches == {"float32": None, "float64": None}
    gp = compile_gaunt(*MID, lmax_out=2, implementation="grid", backend="triton")
    assert gp.launches["float64"] == launch_of(grid[-1]) == (16, 4, 16)
    fgp = compile_gaunt(*MID, lmax_out=2, implementation="fft")
    assert fgp.launches["float64"] == launch_of(fft[1])  # from the choice entry
    assert compile_gaunt(*MID, lmax_out=2, implementation="sparse").launches == {"float32": None, "float64": None}
    # an explicit launch wins over the tuned one; a grid override was never tuned
    assert compile_gaunt(*MID, lmax_out=2, implementation="grid", launch=(64, 8, 16)).launches["float64"] == (64, 8, 16)
    over = compile_gaunt(*MID, lmax_out=2, implementation="grid", grid=problem.replace(implementation="grid").grid_size)
    assert over.launches["float64"] is None
    seen = spy_launches(monkeypatch)
    check_reference(gp, seen, (16, 4, 16))


def test_a_launch_tuned_over_another_space_is_stale(monkeypatch):
    problem = GauntProblem(*MID, lmax_out=2)
    target = impl_configs(problem, "grid")[2]
    tune_gaunt(problem, AUTO_BATCH, timer=prefer_config(label(target)))
    assert compile_gaunt(*MID, lmax_out=2).launches["float32"] == (32, 8, 32)
    changes = ((gaunt_kernels, "GPU_LADDER", gaunt_kernels.GPU_LADDER[:-1]),  # a rung less: another space
               (gaunt_tuning, "VERSION", gaunt_tuning.VERSION + 1))  # the rules changed
    for module, attr, value in changes:
        with monkeypatch.context() as m:
            m.setattr(module, attr, value)
            clear_memo()
            gp = compile_gaunt(*MID, lmax_out=2)
            assert gp.implementation == "sparse" and gp.launches == {"float32": None, "float64": None}
            assert compile_gaunt(*MID, lmax_out=2, implementation="grid").launches["float32"] is None
        clear_memo()
        assert compile_gaunt(*MID, lmax_out=2, implementation="grid").launches["float32"] == (32, 8, 32)


def test_torch_compile_fullgraph_runs_the_tuned_launch(monkeypatch):
    problem = GauntProblem(*MID, lmax_out=2)
    target = impl_configs(problem, "grid")[1]
    tune_gaunt(problem, AUTO_BATCH, dtype="float64", timer=prefer_config(label(target)))
    gp = compile_gaunt(*MID, lmax_out=2, implementation="grid", backend="triton").double()
    assert gp.launches["float64"] == launch_of(target) == (64, 8, 32)
    seen = spy_launches(monkeypatch)
    err_y, err_g = compiled_square_loss_errors(gp)
    assert err_y < 1e-12 and err_g < 1e-10
    assert seen and set(seen) == {(64, 8, 32)}


def test_op_keys_carry_the_launch_and_bad_launches_fail_loud():
    key = GauntProblem(*SMALL, lmax_out=2, implementation="grid").key
    assert op_key(key) == key and parse_key(key)[1] is None
    assert parse_key(op_key(key, (16, 4, 32))) == (GauntProblem.from_key(key), (16, 4, 32))
    with pytest.raises(ValueError, match="bad launch suffix"):
        parse_key(key + "@16:4")
    for bad in ((8, 4, 16), (16, 3, 16), (16, 4, 128), "64"):
        with pytest.raises(ValueError, match="launch"):
            compile_gaunt(*SMALL, lmax_out=2, implementation="grid", launch=bad)
    with pytest.raises(GauntError, match="grid, fft and separable"):
        compile_gaunt(*SMALL, lmax_out=2, implementation="sparse", launch=(16, 4, 16))
