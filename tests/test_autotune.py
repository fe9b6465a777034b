"""The autotuner, its cache and the ``tritp autotune`` / ``tritp cache`` commands, on CPU.

Most tests use a fake timer that scores a candidate by a formula without launching it, so
they are fast and deterministic; the API and CLI tests launch real kernels under the Triton
interpreter. Every test gets its own cache folder and shipped folder.
"""

import json
import math
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import tritp
from tritp.cli import main
from tritp.codegen import Problem
from tritp.codegen.coupling import sparse_coupling
from tritp.codegen.diskcache import cache_root
from tritp.reference import reference_tp
from tritp.tuning import Config, choose, clear_memo, heuristic, lookup
from tritp.tuning import cache, tuner
from tritp.tuning.space import space_for

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
TINY = ("8x0e+8x1o", "0e+1o", "0e+1o")


def tiny() -> Problem:
    return Problem.channelwise(*TINY)


def wide() -> Problem:  # 128 lanes: the whole block_c axis survives pruning
    return Problem.channelwise("128x0e+128x1o", "0e+1o", "0e+1o")


def score(c: Config) -> float:
    """A separable formula with a unique minimum inside the space."""
    return (1.0 + (math.log2(c.block_z) - 5) ** 2 + 0.5 * (math.log2(c.block_c) - 5) ** 2
            + 0.25 * abs(c.num_warps - 2) + 0.1 * c.num_stages)


def fake_timer(thunk) -> float:
    return score(thunk.config)


ENV_USER_DIR = cache.user_dir  # the real one, before the fixture points it elsewhere
pytestmark = pytest.mark.usefixtures("fresh_autotune_caches")




def _fwd(p):
    return tuner.direction_specs(p, ("fwd",))[0][1]


def test_space_rules_prune_what_cannot_win():
    t = space_for("cg", tiny(), _fwd(tiny()), "float32", 16)
    # 8 rows too: the kernel reads and writes its 1o segment as coalesced 3D tiles
    assert {c.block_c for c in t.candidates} == {16} and {c.block_z for c in t.candidates} == {8, 16}
    assert {c.num_stages for c in t.candidates} == {1}  # no loop to pipeline
    w = space_for("cg", wide(), _fwd(wide()), "float32", 50_000)
    assert {c.block_c for c in w.candidates} == {16, 32, 64, 128}
    assert all(c.block_z * c.block_c >= 32 * c.num_warps for c in w.candidates)
    assert (128, 128, 1) not in {(c.block_z, c.block_c, c.num_warps) for c in w.candidates}  # registers
    assert len(space_for("cg", wide(), _fwd(wide()), "float64", 50_000)) < len(w)
    assert w.hash == space_for("cg", wide(), _fwd(wide()), "float32", 40_000).hash != t.hash


def test_space_keeps_one_block_c_where_the_source_ignores_it():
    # rule 6: a shared-weight gradient of weight GEMMs is the same kernel for every block_c
    from tritp.codegen.cg_emit import emit_producer

    p = Problem.all_paths("16x0e+16x1o", "16x0e+16x1o", "16x0e+16x1o", "uvw")
    gw = _grads(p)["w"]
    srcs = {emit_producer(p, gw, "float32", bc) for bc in (16, 32, 64, 128)}
    assert len(srcs) == 1
    sw = space_for("cg", p, gw, "float32", 50_000)
    assert {c.block_c for c in sw.candidates} == {16} and {c.block_z for c in sw.candidates} >= {16, 64}
    # a per-sample weight gradient keeps its block_c axis
    q = wide()
    assert len({c.block_c for c in space_for("cg", q, _grads(q)["w"], "float32", 50_000).candidates}) > 1


def _grads(p):
    """``{"out": fwd, "x1": grad x1, "x2": grad x2, "w": grad w}`` specs of ``p``."""
    return {s.target: s for _, s in tuner.direction_specs(p, ("fwd", "bwd"))}


# (preset, kernel target, dtype) -> (block_c, num_warps) of the register-aware GPU default; the
# grad-x1 kernels are the ones the fixed 16:64:4 spilled with (ptxas for sm_90, benchmarks/ptxas_audit.py)
GPU_DEFAULTS = {  # comments: estimate at each rung, 40 + (tiles + groups / 4) x elements per thread,
    # where groups counts the segments of the largest piece (codegen/cg_pieces.py) of the kernel and
    # a channel loop shared by n segments adds 1.25 tiles per extra segment (registers.PER_SHARED)
    ("mace-large", "out", "float32"): (64, 8),       # loops of 7 segments reading x1's 2e: 218, then 129
    ("mace-large", "w", "float32"): (64, 8),         # per-sample weight gradient, the same loops: 218, 129
    ("mace-large", "x1", "float32"): (32, 8),        # 43 tiles alone in its piece: 386, 213, then 126
    ("mace-medium", "x1", "float32"): (64, 8),       # 25 tiles, 2 segments: 254, then 147
    ("sevennet-l2", "x1", "float32"): (64, 8),       # 33 tiles: 306, then 173
    ("nequip-benzene", "x1", "float32"): (32, 8),    # 67 tiles: 578, 309, then 174
    ("nequip-benzene", "out", "float32"): (64, 8),   # 11 pieces, shared loops: 228, then 134
    ("nequip-l2", "x1", "float32"): (64, 4),         # 32 lanes: 4 elements per thread, 173
    ("nequip-benzene", "x2", "float32"): (32, 8),    # forces: 20 one-trip lane loops in a segment: 250, 86
    ("nequip-l2", "x2", "float32"): (64, 4),         # 12 one-trip lane loops, 4 elements per thread: 173
    ("uvu-128x3e", "w", "float32"): (64, 4),         # per-sample weight gradient, 15 tiles: 162
    ("mace-medium", "out", "float32"): (64, 4),      # loops of 3 and 5 segments: 168
    ("mace-medium", "out", "float64"): (64, 8),      # the same in two words: 296, then 168
    ("tiny", "out", "float32"): (64, 4),
}


@pytest.mark.parametrize("key", sorted(GPU_DEFAULTS))
def test_gpu_default_keeps_the_register_estimate_in_budget(key, monkeypatch):
    """The strided form (TRITP_COALESCE=0), whose tiles the ladder was calibrated on."""
    from tritp.presets import preset
    from tritp.tuning import GPU_LADDER
    from tritp.tuning.registers import REGISTER_BUDGET, estimate_registers

    monkeypatch.setenv("TRITP_COALESCE", "0")
    name, target, dtype = key
    p = preset(name)[0]
    spec = _grads(p)[target]
    c = heuristic(50_000, False, p, spec, dtype)
    assert (c.block_z, c.num_stages, c.impl) == (16, 1, "sparse") and (c.block_c, c.num_warps) == GPU_DEFAULTS[key]
    assert estimate_registers(p, spec, dtype, c) <= REGISTER_BUDGET
    for bc, nw in GPU_LADDER[:GPU_LADDER.index((c.block_c, c.num_warps))]:  # every earlier rung is over budget
        assert estimate_registers(p, spec, dtype, c._replace(block_c=bc, num_warps=nw)) > REGISTER_BUDGET
    assert heuristic(50_000, False, p, spec, dtype) is c  # memoized
    assert tuner.candidates_for(p, spec, dtype, 50_000, interpreted=False)[0] == c  # the tuner times it first


# (preset, kernel target, dtype) -> (block_z, block_c, num_warps) of the default with coalesced
# mul_ir tiles in the row-on-warp form (the default form): the 3D ladder under the estimate with
# registers.PER_3D_ROWS; ptxas for sm_90 (Triton 3.9) at the defaults: mace-large out 148, x1 196,
# w 153, forces 80 registers, no spill (no forward, backward or double-backward kernel of the
# presets spills at its default: benchmarks/ptxas_audit.py --preset ... --config default)
GPU_DEFAULTS_3D = {
    ("mace-large", "out", "float32"): (8, 64, 8),
    ("mace-large", "x1", "float32"): (8, 64, 8),
    ("mace-large", "w", "float32"): (8, 64, 8),
    ("mace-medium", "out", "float32"): (8, 64, 8),
    ("mace-medium", "out", "float64"): (8, 32, 8),
    ("nequip-benzene", "x1", "float32"): (8, 32, 8),
    ("nequip-l2", "x1", "float32"): (16, 64, 8),
    ("nequip-benzene", "x2", "float32"): (8, 32, 8),   # forces: 3D tiles along the reduced lanes
    ("mace-large", "x2", "float32"): (8, 64, 8),       # forces
}


@pytest.mark.parametrize("key", sorted(GPU_DEFAULTS_3D))
def test_gpu_default_of_coalesced_tiles_walks_the_3d_ladder(key, monkeypatch):
    from tritp.presets import preset
    from tritp.tuning import GPU_LADDER_3D
    from tritp.tuning.registers import REGISTER_BUDGET, estimate_registers, groups

    monkeypatch.delenv("TRITP_COALESCE", raising=False)
    name, target, dtype = key
    p = preset(name)[0]
    spec = _grads(p)[target]
    c = heuristic(50_000, False, p, spec, dtype)
    assert (c.block_z, c.block_c, c.num_warps) == GPU_DEFAULTS_3D[key]
    assert estimate_registers(p, spec, dtype, c) <= REGISTER_BUDGET
    if any(g.dp3d for g in groups(p, spec)):
        for z, bc, nw in GPU_LADDER_3D[:GPU_LADDER_3D.index((c.block_z, c.block_c, c.num_warps))]:
            assert estimate_registers(p, spec, dtype, Config(z, bc, nw)) > REGISTER_BUDGET
        # the 3D tiles cost registers the strided form does not have
        assert estimate_registers(p, spec, dtype, c) > estimate_registers(p, spec, dtype, c, coalesce=False)


def test_space_keeps_what_ptxas_compiles_without_spilling(monkeypatch):
    """Row-on-warp tiles (the default form) count PER_3D_ROWS tiles per padded component: the
    tuner keeps 16:64:8 for mace-large's forward and grad w (sm_90, Triton 3.9: 240 and 252
    registers, no spill) and drops it for grad x1 (148 bytes of spill); the plain 3D form's
    estimate drops all three."""
    from tritp.presets import preset
    from tritp.tuning.space import cg_space

    monkeypatch.delenv("TRITP_COALESCE", raising=False)
    p = preset("mace-large")[0]
    grads = _grads(p)
    wide = Config(16, 64, 8)
    for target, kept in (("out", True), ("w", True), ("x1", False)):
        assert (wide in cg_space(p, grads[target], "float32", 50_000).candidates) == kept, target
        assert wide not in cg_space(p, grads[target], "float32", 50_000, coalesce="3d").candidates


def test_register_estimate_matches_its_calibration(monkeypatch):
    """The formula of tritp.tuning.registers on the kernels it was calibrated on (ptxas registers
    in the comments: sm_90, Triton 3.9; the spill boundary lies between 212 and 304), all in the
    strided form of mul_ir tiles (``TRITP_COALESCE=0``)."""
    monkeypatch.setenv("TRITP_COALESCE", "0")
    from tritp.presets import preset
    from tritp.tuning.registers import estimate_registers, groups

    p = preset("mace-large")[0]
    x1 = _grads(p)["x1"]
    assert max(g.tiles for g in groups(p, x1)) == 43 and len(groups(p, x1)) == 3  # 2e: 5 accumulators + 38
    whole = (None,)  # as one kernel, the form the calibration compiled
    est = lambda bc, nw, z=16, dt="float32": estimate_registers(p, x1, dt, Config(z, bc, nw), whole)
    assert est(64, 4) == 390     # 255 registers + 1072 bytes of spill stores
    assert est(64, 8) == est(32, 4) == 215  # 233 registers, no spill / 255 + spills
    assert est(32, 8) == 128     # 248 registers, no spill
    assert est(16, 8) == 84 and est(16, 8, z=128) == est(64, 4)  # 8 elements per thread either way
    assert est(32, 8, dt="float64") == est(64, 8) == 40 + 4 * 43.75  # 2 elements x 2 words = 4 words
    assert estimate_registers(p, x1, "float32", Config(16, 64, 4)) == 386  # in pieces: 2e alone, 43.25 tiles
    q = preset("mace-medium")[0]
    assert estimate_registers(q, _grads(q)["x1"], "float32", Config(16, 64, 4)) == 244  # 240 registers, no spill
    b = preset("nequip-benzene")[0]  # 68 segments of at most 15 tiles, one kernel: 255 registers + 1408 bytes
    fwd, c = _grads(b)["out"], Config(16, 64, 4)
    # these compiles had one channel loop per segment (before loops were shared)
    assert estimate_registers(b, fwd, "float32", c, whole, share=False) == 296
    assert estimate_registers(b, fwd, "float32", c, share=False) == 40 + 8 * (15 + 6 / 4)  # pieces: 15 tiles, 6 segments
    # shared loops (registers.PER_SHARED), ptxas at 16:64:4: mace-large forward 214, its per-sample weight
    # gradient 254 (loops of 7 segments reading x1's 2e), mace-medium forward 164 (loops of 3 and 5)
    grads = _grads(p)
    assert estimate_registers(p, grads["out"], "float32", c) == estimate_registers(p, grads["w"], "float32", c) == 218
    assert estimate_registers(q, _grads(q)["out"], "float32", c) == 168
    # one-channel targets whose lane loops take one trip (registers.PER_SERIAL), ptxas: nequip-benzene's
    # grad x2 255 at 16:64:8 and 99 at 16:32:8 (two trips); nequip-l2's 168 at 16:64:4; diffdock-L2's 165
    g2 = _grads(b)["x2"]
    assert estimate_registers(b, g2, "float32", Config(16, 64, 8)) == 250
    assert estimate_registers(b, g2, "float32", Config(16, 32, 8)) == 86
    n = preset("nequip-l2")[0]
    assert estimate_registers(n, _grads(n)["x2"], "float32", c) == 173
    d = preset("diffdock-L2")[0]
    assert estimate_registers(d, _grads(d)["x2"], "float32", c) == 162


def test_heuristic_without_a_problem_and_under_the_interpreter():
    assert heuristic(100_000, False) == Config(block_z=16, block_c=64, num_warps=4)  # other kernel families
    p = Problem.channelwise("128x0e+128x1o+128x2e", "0e+1o+2e+3o", "0e+1o+2e+3o")
    assert heuristic(100, True, p, _grads(p)["x1"]) == Config(block_z=128, block_c=64, num_warps=1)


def test_rule_4_prunes_what_the_estimate_says_spills(monkeypatch):
    from tritp.presets import preset
    from tritp.tuning.registers import estimate_registers
    from tritp.tuning.space import CG_VERSION, REGISTER_WORDS

    p = preset("mace-large")[0]
    x1 = _grads(p)["x1"]
    # coalesced 3D tiles: 16 rows at 64 lanes would spill; their default 8:64:8 stays
    s3 = {(c.block_z, c.block_c, c.num_warps) for c in space_for("cg", p, x1, "float32", 50_000).candidates}
    assert (8, 64, 8) in s3 and (16, 64, 4) not in s3 and (16, 64, 8) not in s3
    monkeypatch.setenv("TRITP_COALESCE", "0")  # the strided form, as calibrated
    s = space_for("cg", p, x1, "float32", 50_000)
    cfgs = {(c.block_z, c.block_c, c.num_warps) for c in s.candidates}
    assert (16, 64, 4) not in cfgs and (16, 64, 8) in cfgs and (16, 32, 8) in cfgs  # 390 > 256 spilled
    assert all(estimate_registers(p, x1, "float32", c) <= REGISTER_WORDS for c in s.candidates)
    assert s.version == CG_VERSION == 4
    fwd = space_for("cg", p, _grads(p)["out"], "float32", 50_000)
    assert (16, 64, 4) in {(c.block_z, c.block_c, c.num_warps) for c in fwd.candidates} and len(fwd) > len(s)


def test_a_family_registers_its_space_and_source_identity():
    from tritp.tuning.space import SearchSpace, register_family

    register_family("toy-family", identity=lambda p, s, d: f"toy:{s}:{d}")(
        lambda p, s, d, b: SearchSpace("toy-family", (Config(impl="grid"), Config(impl="fft"))))
    key = cache.make_key(tiny(), "spec-a", "float32", 100, "gpu", family="toy-family")
    assert key["source"] == "toy:spec-a:float32" and key["batch"] == 128 and key["direction"] == "spec-a"
    with pytest.raises(ValueError, match="unknown kernel family"):
        space_for("no-such-family", tiny(), "s", "float32", 1)


def test_fake_timer_picks_the_predicted_best_and_choose_uses_it(monkeypatch):
    # the strided form's space: staged descent reaches a separable score's minimum there (with
    # 3D tiles the space gains 8 rows, pruned per config, where it need not)
    monkeypatch.setenv("TRITP_COALESCE", "0")
    p, spec = wide(), _fwd(wide())
    cands = tuner.candidates_for(p, spec, "float32", 256, interpreted=True)
    expected = min(cands, key=score)
    assert expected != cands[0]
    r = tuner.tune(p, spec, 256, device=CPU, timer=fake_timer)
    assert r.config == expected and r.candidates == len(cands) and r.ms == score(expected)
    assert r.speedup == pytest.approx(score(cands[0]) / score(expected))
    assert choose(p, spec, "float32", 200, CPU, True) == expected  # same bucket (256)
    assert choose(p, spec, "float32", 257, CPU, True) == heuristic(257, True)  # next bucket: untuned
    assert choose(p, spec, "float64", 200, CPU, True) == heuristic(200, True)
    staged = tuner.tune(p, spec, 256, device=CPU, timer=fake_timer, strategy="staged", store=False)
    assert staged.config == expected and staged.candidates < len(cands)


def test_a_symbolic_batch_is_looked_up_by_its_hint_without_guards():
    from torch._dynamo.source import ConstantSource
    from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv

    p, spec = wide(), _fwd(wide())
    r = tuner.tune(p, spec, 256, device=CPU, timer=fake_timer)
    env = ShapeEnv()
    z = env.create_symintnode(env.create_symbol(200, ConstantSource("z"), DimDynamic.DYNAMIC), hint=200)
    assert choose(p, spec, "float32", z, CPU, True) == r.config and not env.guards


def test_cache_round_trip_and_list(capsys):
    p = tiny()
    rs = tritp.compile(*TINY, mode="channelwise").autotune(batch=[16, 100], directions=("fwd", "bwd"),
                                                              timer=fake_timer)
    assert len(rs) == 12  # two batches: forward, the fused backwards (x1+w+x2, w+x2), three gradients alone
    assert any(r.spec.target == "x1+w+x2" for r in rs)
    for r in rs:
        key = cache.make_key(p, r.spec, "float32", r.batch, cache.INTERPRETER_GPU)
        path = cache.entry_path(key)
        assert json.loads(path.read_text()) == r.entry
        assert cache.find(key) == (r.config, "user")
        assert lookup(p, r.spec, "float32", r.batch, CPU, True) == (r.config, "user")
    assert main(["cache", "list"]) == 0
    out = capsys.readouterr().out
    assert "12 user entries" in out and "out_x1x2w" in out
    assert main(["cache", "path"]) == 0
    assert capsys.readouterr().out.strip() == str(cache.user_dir())
    assert main(["cache", "clear"]) == 0
    assert "removed 12 autotune entries" in capsys.readouterr().out
    assert not cache.user_dir().exists() and lookup(p, rs[0].spec, "float32", 16, CPU, True) is None
    assert main(["cache", "clear"]) == 0 and "nothing to remove" in capsys.readouterr().out


def test_lookup_order_user_then_shipped_then_heuristic(fresh_autotune_caches):
    p, spec = wide(), _fwd(wide())
    r = tuner.tune(p, spec, 64, device=CPU, timer=fake_timer, store=False)
    shipped_cfg = Config(16, 16, 1, 1)
    cache.export([dict(r.entry, config=shipped_cfg._asdict())], fresh_autotune_caches)
    index = json.loads((fresh_autotune_caches / "index.json").read_text())
    assert index["schema"] == cache.SCHEMA and index["files"][0]["entries"] == 1
    assert choose(p, spec, "float32", 64, CPU, True) == shipped_cfg
    assert [where for where, _, _ in cache.list_entries()] == ["shipped"]
    cache.store(r.entry)
    assert lookup(p, spec, "float32", 64, CPU, True) == (r.config, "user")
    cache.clear_user()
    assert lookup(p, spec, "float32", 64, CPU, True) == (shipped_cfg, "shipped")
    for f in fresh_autotune_caches.iterdir():
        f.unlink()
    clear_memo()
    assert lookup(p, spec, "float32", 64, CPU, True) is None
    assert choose(p, spec, "float32", 64, CPU, True) == heuristic(64, True)


@pytest.mark.parametrize("bad", ["corrupt", "truncated", "foreign"])
def test_bad_files_are_reported_once_and_ignored(bad, fresh_autotune_caches):
    p, spec = wide(), _fwd(wide())
    r = tuner.tune(p, spec, 64, device=CPU, timer=fake_timer)
    text = json.dumps(r.entry)
    bodies = {"corrupt": "{not json", "truncated": text[: len(text) // 2],
              "foreign": json.dumps(dict(r.entry, schema=cache.SCHEMA + 1))}
    path = cache.entry_path(r.entry["key"])
    path.write_text(bodies[bad])
    cache.export([r.entry], fresh_autotune_caches)
    bundle = next(fresh_autotune_caches.glob("*__triton-*.json"))
    bundle.write_text(bodies[bad])  # the shipped file is bad too: the heuristic remains
    clear_memo()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            assert choose(p, spec, "float32", 64, CPU, True) == heuristic(64, True)
            clear_memo()
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2, messages  # once for the user file, once for the shipped file
    assert any(str(path) in m for m in messages) and any(str(bundle) in m for m in messages)
    assert main(["cache", "list"]) == 0  # listing a bad cache is not fatal either


def test_changed_source_or_problem_invalidates(monkeypatch):
    p, spec = wide(), _fwd(wide())
    r = tuner.tune(p, spec, 64, device=CPU, timer=fake_timer)
    assert lookup(p, spec, "float32", 64, CPU, True) == (r.config, "user")
    other = Problem.channelwise("128x0e+128x1o", "0e+1o", "0e+1o", irrep_normalization="norm")
    assert lookup(other, spec, "float32", 64, CPU, True) is None
    monkeypatch.setattr(tritp.kernels, "generator_hash", lambda: "a-changed-generator")
    assert lookup(p, spec, "float32", 64, CPU, True) is None
    assert choose(p, spec, "float32", 64, CPU, True) == heuristic(64, True)
    stale = dict(r.entry, key=dict(r.entry["key"], source="0" * 20))  # a key that does not match its file
    cache.entry_path(r.entry["key"]).write_text(json.dumps(stale))
    monkeypatch.undo()
    clear_memo()
    assert lookup(p, spec, "float32", 64, CPU, True) is None


WORKER = """
import math, sys
from tritp.codegen import Problem
from tritp.tuning import tuner
timer = lambda t: 1.0 + abs(math.log2(t.config.block_z) - 5) + t.config.num_warps
n = 0
for irreps in (sys.argv[1], "24x0e+24x1o"):  # the second problem is tuned by both processes
    p = Problem.channelwise(irreps, "0e+1o", "0e+1o")
    n += len(tuner.tune_problem(p, [16, 64, 256], ("fwd", "bwd"), device="cpu", timer=timer))
print(n)
"""


def test_user_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITP_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert ENV_USER_DIR() == tmp_path / "elsewhere" / "autotune"
    monkeypatch.delenv("TRITP_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert ENV_USER_DIR() == tmp_path / "xdg" / "tritp" / "autotune"


def test_two_processes_tuning_into_one_cache_lose_nothing(tmp_path):
    sparse_coupling(1, 1, 1)  # the coupling table exists in the session cache: copy it, do not recompute
    shutil.copytree(cache_root() / "coupling", tmp_path / "cache" / "coupling")
    env = dict(os.environ, TRITP_CACHE_DIR=str(tmp_path / "cache"), TRITON_INTERPRET="1")
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, i], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in ("16x0e+16x1o", "32x0e+32x1o")]
    outs = [pr.communicate(timeout=150) for pr in procs]
    assert all(pr.returncode == 0 for pr in procs), [o[1][-2000:] for o in outs]
    n = int(outs[0][0])  # kernels (forward, 2 fused backwards, 3 gradients) x batches per process; half shared
    files = list((tmp_path / "cache" / "autotune").glob("*/*.json"))
    assert n == 36 and len(files) == 3 * n // 2 and not list((tmp_path / "cache" / "autotune").glob("*/.*.tmp"))
    for f in files:
        assert json.loads(f.read_text())["schema"] == cache.SCHEMA


def test_api_tunes_real_kernels_and_forward_uses_the_result():
    tp = tritp.compile(*TINY, mode="channelwise", backend="triton")
    launched = []

    def timer(thunk):
        thunk()
        launched.append(thunk.config)
        return 1.0 + thunk.config.num_warps  # one warp wins, among the real candidates

    rs = tp.autotune(batch=16, directions=("fwd",), timer=timer)
    assert len(rs) == 1 and rs[0].config.num_warps == 1 and len(launched) == rs[0].candidates
    x1, x2, w = torch.randn(10, tp.irreps_in1.dim), torch.randn(10, 4), torch.randn(10, tp.weight_numel)
    assert lookup(tp.problem, rs[0].spec, "float32", 10, CPU, True) == (rs[0].config, "user")
    torch.testing.assert_close(tp(x1, x2, w), reference_tp(tp.problem, x1, x2, w).float(), rtol=1e-5, atol=1e-5)


def test_cli_without_cuda_says_so_in_one_line(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["autotune", *TINY, "--mode", "channelwise"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and "CUDA" in err


def test_cli_interpret_tunes_and_exports(tmp_path, capsys):
    rc = main(["autotune", *TINY, "--mode", "channelwise", "--batch", "16", "--direction", "fwd", "--interpret",
               "--export", str(tmp_path / "exp")])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "out_x1x2w" in out and "speedup" in out
    index = json.loads((tmp_path / "exp" / "index.json").read_text())
    (f,) = index["files"]
    bundle = json.loads((tmp_path / "exp" / f["file"]).read_text())
    assert bundle["gpu"] == "cpu-interpreter" and len(bundle["entries"]) == f["entries"] == 1
    assert (tmp_path / "exp" / f["file"]).read_text().startswith('{\n  "entries"')  # pretty, sorted


def test_cli_errors_and_problem_files(tmp_path, capsys):
    for argv in (["autotune", "--preset", "no-such", "--interpret"], ["autotune", "--interpret"],
                 ["autotune", "8x0e", "0e", "--interpret"], ["autotune", "--problems", str(tmp_path / "x.json"),
                                                             "--interpret"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith("tritp: error:"), err
    from tritp.cli_autotune import collect_problems, parse_batches
    from tritp.cli import build_parser

    f = tmp_path / "model.json"
    f.write_text(json.dumps([{"preset": "tiny"}, {"name": "l0", "in1": "8x0e", "in2": "0e", "out": "8x0e",
                                                  "instructions": [[0, 0, 0, "uvu", True]], "shared_weights": False},
                             {"in1": "4x1o", "in2": "1o", "out": "0e", "mode": "channelwise", "batch": 7}]))
    args = build_parser().parse_args(["autotune", "--problems", str(f), "--preset", "mace-medium"])
    got = collect_problems(args)
    assert [g[0] for g in got] == ["mace-medium", "tiny", "l0", "4x1o x 1o"] and got[3][2] == 7
    assert parse_batches(["16,32", "1_000"]) == [16, 32, 1000]


@pytest.mark.parametrize("strategy", ["full", "staged"])
def test_candidates_are_compiled_in_parallel_before_timing(strategy, monkeypatch):
    """On a GPU every candidate the search will time is compiled first, in one parallel batch
    per stage (Triton compiles one at a time otherwise, each on its first launch); a candidate
    that fails to compile does not stop the warm-up (its timing reports it)."""
    from support import FakeKernels

    import tritp.kernels as kernels

    monkeypatch.setattr(kernels, "get_kernel", FakeKernels())
    monkeypatch.setattr(kernels, "interpreter_active", lambda: False)
    monkeypatch.setattr(kernels, "_compiled", {})
    events = []
    real_compile_all = kernels.compile_all

    def spy(jobs, timeout=None, ignore_errors=False):
        assert ignore_errors
        events.append(("warm", {(j[0].key[3], j[3]["BLOCK_Z"], j[3]["num_warps"], j[3]["num_stages"]) for j in jobs}))
        jobs[0][0].warmup = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("out of resources"))
        return real_compile_all(jobs, timeout, ignore_errors)

    def timer(thunk):
        c = thunk.config
        events.append(("time", (c.block_c, c.block_z, c.num_warps, c.num_stages)))
        return fake_timer(thunk)
    monkeypatch.setattr(kernels, "compile_all", spy)
    p = wide()
    r = tuner.tune(p, _fwd(p), 4096, device=CPU, timer=timer, strategy=strategy, store=False)
    warmed = set()
    for kind, what in events:
        if kind == "warm":
            assert not what & warmed  # each candidate compiled once
            warmed |= what
        else:
            assert what in warmed  # compiled before it was timed
    assert [k for k, _ in events].count("warm") == (1 if strategy == "full" else 2)
    assert len(warmed) == r.candidates == len(events) - (1 if strategy == "full" else 2)


def test_cli_time_limit_and_interrupt_keep_what_was_tuned(tmp_path, capsys, monkeypatch):
    argv = ["autotune", *TINY, "--mode", "channelwise", "--batch", "16", "--direction", "fwd,bwd", "--interpret"]
    assert main(argv + ["--time-limit", "0"]) == 0
    out = capsys.readouterr().out
    assert "--time-limit 0 s reached: 0 of 6 kernels tuned" in out  # forward, 2 fused backwards, 3 gradients
    calls = []
    real = tuner.tune

    def second_interrupts(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as Ctrl-C, or SIGTERM through the command's handler
        return real(*a, **k)
    monkeypatch.setattr(tuner, "tune", second_interrupts)
    assert main(argv + ["--export", str(tmp_path / "exp")]) == 130
    out = capsys.readouterr().out
    assert "interrupted: 1 of 6 kernels tuned" in out
    (f,) = json.loads((tmp_path / "exp" / "index.json").read_text())["files"]
    assert f["entries"] == 1


def test_cli_tunes_round_robin_over_problems(tmp_path, capsys, monkeypatch):
    """Every problem's forward first, then every fused backward, ...: a time limit leaves the
    kernels a training step runs most tuned across all the problems. The table and the export
    still list them by problem."""
    problems = tmp_path / "p.json"
    problems.write_text(json.dumps([{"name": "a", "in1": "8x0e+8x1o", "in2": "0e+1o", "out": "0e+1o",
                                     "mode": "channelwise"},
                                    {"name": "b", "in1": "4x0e+4x1o", "in2": "0e+1o", "out": "0e+1o",
                                     "mode": "channelwise"}]))
    seen, real = [], tuner.tune

    def spy(problem, spec, *a, **k):
        seen.append((problem.irreps_in1.dim, spec.target))
        return real(problem, spec, *a, **k)

    monkeypatch.setattr(tuner, "tune", spy)
    argv = ["autotune", "--problems", str(problems), "--batch", "16", "--direction", "fwd,bwd", "--interpret"]
    assert main(argv) == 0
    assert seen[:4] == [(32, "out"), (16, "out"), (32, "x1+w+x2"), (16, "x1+w+x2")]
    assert len(seen) == 12
    table = capsys.readouterr().out
    assert table.rindex("│ a ") < table.index("│ b ")  # one problem's rows, then the other's
    assert table.count("│ a ") == table.count("│ b ") == 6


@pytest.mark.parametrize("bad, says", [(Config(block_z=3), "block_z must be a power of two, got 3"),
                                       (Config(block_c=0), "block_c must be a positive int"),
                                       (Config(num_warps=6), "num_warps must be a power of two")])
def test_an_explicit_bad_config_fails_before_launch(bad, says):
    """A hand-made config reached Triton and failed there ("arange's range must be a power of
    2"); now plain and conv launches name the field first."""
    from tritp.conv_kernels import produce_conv
    from tritp.kernels import produce

    p = Problem.channelwise("4x0e", "0e", "4x0e", shared_weights=False)
    spec = _fwd(p)
    ts = [torch.randn(5, 4), torch.randn(5, 1), torch.randn(5, 4)]
    with pytest.raises(ValueError, match=says):
        produce(p, spec, ts, 5, config=bad)
    with pytest.raises(ValueError, match=says):
        produce_conv(p, spec, "atomic", ts, [torch.zeros(5, dtype=torch.long)] * 2, 5, 5, config=bad)
