"""The ``conv`` autotune family: the fused convolution's kernels tuned, stored and used.

A fake timer scores candidates by a formula (fast, deterministic); the launches that check a
tuned configuration is really used and still correct run under the Triton interpreter.
"""

import math

import pytest
import torch

import tritp
from tritp import conv_kernels
from tritp.cli import main
from tritp.codegen import Problem
from tritp.codegen.cg_spec import forward_spec
from tritp.conv_tuning import ConvSpec, candidates, conv_specs, random_graph, tune_conv, tune_conv_kernel
from tritp.tuning import Config, lookup
from tritp.tuning.space import space_for

CPU = torch.device("cpu")
IRREPS = ("8x0e+8x1o", "0e+1o", "0e+1o")
pytestmark = pytest.mark.usefixtures("fresh_autotune_caches")


def problem() -> Problem:
    return Problem.channelwise(*IRREPS, shared_weights=False)


def score(c: Config) -> float:
    """Unique minimum: 1 warp, 32 rows, 1 stage (the interpreter default is 1 warp, 64 rows)."""
    return 1.0 + abs(math.log2(c.block_z) - 5) + 0.5 * c.num_warps + 0.1 * c.num_stages


def fake_timer(thunk) -> float:
    assert isinstance(thunk.spec, ConvSpec) and thunk.batch > 0
    return score(thunk.config)




def test_space_is_the_cg_space_under_its_own_name():
    p, spec = problem(), forward_spec()
    conv = space_for("conv", p, ConvSpec(spec, "atomic"), "float32", 4096)
    cg = space_for("cg", p, spec, "float32", 4096)
    assert conv.candidates == cg.candidates and conv.family == "conv" and conv.hash != cg.hash


@pytest.mark.parametrize("scatter", ["atomic", "deterministic"])
def test_modes_and_kernels_per_scatter(scatter, monkeypatch):
    node = "atomic" if scatter == "atomic" else "segment"
    modes = {(d, c.target): c.mode for d, c in conv_specs(problem(), scatter, ("fwd", "bwd"))}
    # x1+w+x2: the whole backward in one edge kernel (x1's part atomic, or rows per edge); a
    # pair: where the third needs no gradient
    x1 = "edge+atomic" if scatter == "atomic" else "edge+rows"
    fused = {("bwd", "x1+w+x2"): x1, ("bwd", "x1+w"): x1, ("bwd", "x1+x2"): x1, ("bwd", "w+x2"): "edge"}
    assert modes == {("fwd", "out"): node, **fused, ("bwd", "x1"): node, ("bwd", "x2"): "edge", ("bwd", "w"): "edge"}
    monkeypatch.setenv("TRITP_CONV_X1_ROWS", "0")  # deterministic: x1's own segment kernel
    fused = {t for d, c in conv_specs(problem(), scatter, ("bwd",)) if "+" in (t := c.target)}
    assert fused == ({"x1+w+x2", "x1+w", "x1+x2", "w+x2"} if scatter == "atomic" else {"w+x2"})
    with pytest.raises(ValueError, match="scatter must be one of"):
        conv_specs(problem(), "sorted")


def test_random_graph_is_seeded_sorted_and_in_range():
    a = random_graph(7, 50, "atomic", CPU)
    b = random_graph(7, 50, "atomic", CPU)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    src, dst = a
    assert bool((dst[1:] >= dst[:-1]).all()) and int(src.max()) < 7 and int(dst.max()) == 6
    assert torch.bincount(dst).tolist() == [8, 7, 7, 7, 7, 7, 7]  # spread evenly
    assert len(random_graph(7, 50, "deterministic", CPU, torch.int32)) == 8
    with pytest.raises(ValueError, match="num_nodes >= 1"):
        random_graph(0, 5, "atomic", CPU)


def test_tuner_picks_the_fastest_and_the_launch_uses_it():
    p = problem()
    (d, cs), = conv_specs(p, "atomic", ("fwd",))
    r = tune_conv_kernel(p, cs, "atomic", 24, 96, timer=fake_timer)
    cands = candidates(p, cs, "float32", 24, 96, True)
    assert r.config == min(cands, key=lambda c: (score(c), cands.index(c)))
    assert r.config != r.default and r.speedup > 1 and r.candidates == len(cands)
    assert r.entry["key"]["family"] == "conv" and r.entry["scatter"] == "atomic" and r.entry["tuned_nodes"] == 24
    # the launch looks it up: same bucket of edges (65..128), other sizes fall back to the default
    assert lookup(p, cs, "float32", 100, CPU, True, family="conv") == (r.config, "user")
    assert conv_kernels.choose_config(p, cs.spec, "atomic", "float32", 100, 100, CPU, True) == r.config
    assert conv_kernels.choose_config(p, cs.spec, "atomic", "float32", 300, 300, CPU, True) == r.default
    # the deterministic strategy's forward is another kernel (segment mode): not found
    assert conv_kernels.choose_config(p, cs.spec, "segment", "float32", 100, 20, CPU, True) != r.config
    x, ea, w = torch.randn(20, p.irreps_in1.dim), torch.randn(100, 4), torch.randn(100, p.weight_numel)
    src, dst = random_graph(20, 100, "atomic", CPU)
    plan = conv_kernels.conv_launch_plan(p, cs.spec, "atomic", [x, ea, w], [src, dst], 20, 20)
    assert (plan.options["BLOCK_Z"], plan.options["num_warps"]) == (r.config.block_z, r.config.num_warps)
    conv = tritp.compile_conv(*IRREPS, mode="channelwise")
    torch.testing.assert_close(conv(x, ea, w, src, dst, 20), conv.unfused(x, ea, w, src, dst, 20, "reference").float(),
                               rtol=1e-5, atol=1e-5)


def test_module_autotune_covers_every_kernel_of_the_directions():
    conv = tritp.compile_conv(*IRREPS, mode="channelwise", scatter="deterministic")
    rs = conv.autotune(num_nodes=16, num_edges=64, directions=("fwd", "bwd"), timer=fake_timer)
    assert [r.spec for r in rs] == [cs for _, cs in conv_specs(conv.problem, "deterministic", ("fwd", "bwd"))]
    for r in rs:
        assert lookup(conv.problem, r.spec, "float32", 64, CPU, True, family="conv") == (r.config, "user")
    assert len(tune_conv(conv.problem, "atomic", 16, 64, ("fwd",), timer=fake_timer, store=False)) == 1


def test_tuned_deterministic_conv_stays_exact():
    """A tuned, non-default segment-mode config: still the reference, bit-identical run to run."""
    conv = tritp.compile_conv(*IRREPS, mode="channelwise", scatter="deterministic")
    (r,) = conv.autotune(num_nodes=12, num_edges=40, directions=("fwd",), timer=fake_timer, strategy="staged")
    assert r.config.block_z == 32 and r.config != r.default
    x, ea, w = torch.randn(12, conv.irreps_in1.dim), torch.randn(40, 4), torch.randn(40, conv.weight_numel)
    src, dst = torch.randint(0, 12, (40,)), torch.randint(0, 12, (40,))
    y = conv(x, ea, w, src, dst, 12)
    assert torch.equal(y, conv(x, ea, w, src, dst, 12))
    torch.testing.assert_close(y, conv.unfused(x, ea, w, src, dst, 12, "reference").float(), rtol=1e-5, atol=1e-5)


def test_cli_tunes_a_convolution(capsys):
    rc = main(["autotune", *IRREPS, "--mode", "channelwise", "--conv", "atomic", "--batch", "32",
               "--nodes", "8", "--direction", "fwd", "--interpret"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "atomic" in out and "8 nodes" in out
    p = problem()
    assert lookup(p, ConvSpec(forward_spec(), "atomic"), "float32", 32, CPU, True, family="conv") is not None


@pytest.mark.parametrize("argv, says", [
    (["--nodes", "8"], "--nodes is for --conv"),
    (["--conv", "atomic", "--nodes", "0"], "positive"),
])
def test_cli_conv_errors(argv, says, capsys):
    assert main(["autotune", *IRREPS, "--mode", "channelwise", "--interpret", *argv]) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1
