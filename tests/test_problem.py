"""Problem: validation, identity (hash/key), and e3nn's normalization and weight layout.

e3nn.o3.TensorProduct (and its FullyConnected/Full/Elementwise subclasses) is the oracle for
every number a Problem derives; MACE's ``tp_out_irreps_with_instructions`` (written out below)
is the oracle for ``Problem.channelwise``.
"""

import dataclasses
import math
import pickle
import random

import pytest
from e3nn import o3

from tritp.codegen import MODES, Irreps, Problem, ProblemError
from tritp.codegen.problem import Instruction

from support import mace_channelwise, random_problem_args

# -- helpers -----------------------------------------------------------------------------------
IN1 = "2x0e + 2x1o"  # 0: 2x0e, 1: 2x1o
IN2 = "2x1o + 3x0e"  # 0: 2x1o, 1: 3x0e
# 0: 2x1o, 1: 3x1o, 2: 4x1o, 3: 1x1o, 4: 6x1o, 5: 2x0e, 6: 1x2e, 7: 1x3o
OUT = "2x1o + 3x1o + 4x1o + 1x1o + 6x1o + 2x0e + 1x2e + 1x3o"
GOOD = (0, 0, 0, "uvu", True)  # 0e x 1o -> 1o, mul 2 -> 2


def e3nn_tp(in1, in2, out, ins, **kw):
    """e3nn's TensorProduct without code generation (we only read its bookkeeping)."""
    return o3.TensorProduct(o3.Irreps(in1), o3.Irreps(in2), o3.Irreps(out), list(ins),
                            compile_left_right=False, internal_weights=False, **kw)


# -- invalid instructions ----------------------------------------------------------------------
BAD_INSTRUCTIONS = {
    "i_in1 too large": ((2, 0, 0, "uvu", True), "i_in1"),
    "i_in1 negative": ((-1, 0, 0, "uvu", True), "i_in1"),
    "i_in1 not int": ((0.0, 0, 0, "uvu", True), "i_in1"),
    "i_in2 too large": ((0, 2, 0, "uvu", True), "i_in2"),
    "i_in2 negative": ((0, -1, 0, "uvu", True), "i_in2"),
    "i_out too large": ((0, 0, 8, "uvu", True), "i_out"),
    "i_out negative": ((0, 0, -1, "uvu", True), "i_out"),
    "i_out bool": ((0, 0, True, "uvu", True), "i_out"),
    "unknown mode": ((0, 0, 0, "uvx", True), "mode"),
    "mode case": ((0, 0, 0, "UVU", True), "mode"),
    "mode u<vw (e3nn-only)": ((0, 0, 0, "u<vw", True), "mode"),
    "uvu mul": ((0, 0, 1, "uvu", True), "uvu"),
    "uvv mul": ((0, 1, 5, "uvv", True), "uvv"),
    "uuw mul": ((0, 1, 5, "uuw", True), "uuw"),
    "uuu mul": ((0, 0, 1, "uuu", True), "uuu"),
    "uvuv mul": ((0, 0, 0, "uvuv", False), "uvuv"),
    "uuw unweighted mul_out": ((0, 0, 0, "uuw", False), "uuw"),
    "parity": ((1, 0, 3, "uvw", True), "parity"),
    "parity 2": ((0, 1, 7, "uvw", True), "parity"),
    "triangle": ((0, 0, 7, "uvw", True), "triangle"),
    "triangle 2": ((0, 1, 0, "uvw", True), "parity|triangle"),
    "path_weight str": ((0, 0, 0, "uvu", True, "1.0"), "path_weight"),
    "path_weight bool": ((0, 0, 0, "uvu", True, True), "path_weight"),
    "path_weight negative": ((0, 0, 0, "uvu", True, -1.0), "path_weight"),
    "path_weight nan": ((0, 0, 0, "uvu", True, float("nan")), "path_weight"),
    "path_weight inf": ((0, 0, 0, "uvu", True, float("inf")), "path_weight"),
    "path_weight None": ((0, 0, 0, "uvu", True, None), "path_weight"),
    "has_weight int": ((0, 0, 0, "uvu", 1), "has_weight"),
    "has_weight str": ((0, 0, 0, "uvu", "True"), "has_weight"),
    "has_weight None": ((0, 0, 0, "uvu", None), "has_weight"),
    "uvw without weight": ((0, 0, 0, "uvw", False), "uvw"),
    "too short": ((0, 0, 0, "uvu"), "expected"),
    "too long": ((0, 0, 0, "uvu", True, 1.0, 2), "expected"),
    "empty": ((), "expected"),
}


@pytest.mark.parametrize("name", list(BAD_INSTRUCTIONS))
def test_invalid_instruction_names_it(name):
    bad, word = BAD_INSTRUCTIONS[name]
    with pytest.raises(ProblemError, match=word) as exc:
        Problem(IN1, IN2, OUT, [GOOD, bad, GOOD])
    msg = str(exc.value)
    assert "instruction 1" in msg, msg
    assert repr(tuple(bad)) in msg, msg
    assert isinstance(exc.value, ValueError)
    # the same instruction alone is instruction 0
    with pytest.raises(ProblemError, match="instruction 0"):
        Problem(IN1, IN2, OUT, [bad])


@pytest.mark.parametrize("bad", ["uvu", 5, None, {"a": 1}])
def test_non_tuple_instruction(bad):
    with pytest.raises(ProblemError, match="instruction 1"):
        Problem(IN1, IN2, OUT, [GOOD, bad])


def test_valid_reference_instructions_are_accepted():
    # each mode once, with the segments the invalid cases above perturb
    p = Problem(IN1, IN2, OUT, [
        GOOD, (0, 0, 2, "uvuv", False), (0, 0, 3, "uuw", False), (0, 0, 1, "uuw", True),
        (0, 0, 0, "uuu", True), (1, 0, 6, "uvw", True), (0, 1, 5, "uvu", False), (1, 1, 1, "uvv", True, 0.5),
    ])
    assert [i.mode for i in p.instructions] == ["uvu", "uvuv", "uuw", "uuw", "uuu", "uvw", "uvu", "uvv"]
    assert p.instructions[-1].path_weight == 0.5
    assert all(type(i.path_weight) is float for i in p.instructions)


@pytest.mark.parametrize("kw,word", [
    (dict(irrep_normalization="comp"), "irrep_normalization"),
    (dict(path_normalization="paths"), "path_normalization"),
    (dict(path_normalization="Element"), "path_normalization"),
    (dict(layout="mul-ir"), "layout"),
    (dict(layout="ir_mul "), "layout"),
    (dict(shared_weights=1), "shared_weights"),
    (dict(shared_weights="yes"), "shared_weights"),
    (dict(shared_weights=None), "shared_weights"),
    (dict(in1_var=[1.0]), "in1_var"),
    (dict(in2_var=[1.0, 2.0, 3.0]), "in2_var"),
    (dict(out_var=[1.0]), "out_var"),
])
def test_invalid_options(kw, word):
    with pytest.raises(ProblemError, match=word):
        Problem(IN1, IN2, OUT, [GOOD], **kw)


@pytest.mark.parametrize("ins", ["0,0,0,uvu,True", 5, None])
def test_instructions_not_a_list(ins):
    with pytest.raises(ProblemError, match="instructions"):
        Problem(IN1, IN2, OUT, ins)


@pytest.mark.parametrize("which", ["irreps_in1", "irreps_in2", "irreps_out"])
def test_bad_irreps_name_the_argument(which):
    args = dict(irreps_in1=IN1, irreps_in2=IN2, irreps_out=OUT)
    args[which] = "2x1f"
    with pytest.raises(ValueError, match=which):
        Problem(args["irreps_in1"], args["irreps_in2"], args["irreps_out"], [])


# -- identity ----------------------------------------------------------------------------------
def test_equal_problems_equal_keys_and_hashes():
    a = Problem(IN1, IN2, OUT, [GOOD, (1, 0, 6, "uvw", True)])
    b = Problem(Irreps(IN1), o3.Irreps(IN2), [(2, "1o"), (3, "1o"), (4, "1o"), (1, "1o"), (6, "1o"), (2, "0e"),
                                               (1, "2e"), (1, "3o")],
                ((0, 0, 0, "uvu", True, 1.0), [1, 0, 6, "uvw", True, 1]))
    assert a == b and a.key == b.key and hash(a) == hash(b)
    assert len({a, b}) == 1 and {a: 1}[b] == 1
    for other in [
        a.replace(layout="ir_mul"), a.replace(shared_weights=False), a.replace(irrep_normalization="norm"),
        a.replace(path_normalization="path"), a.replace(instructions=[GOOD]),
        a.replace(instructions=[GOOD, (1, 0, 6, "uvw", True, 2.0)]), a.replace(out_var=[2.0] + [1.0] * 7),
        Problem(IN1, IN2, OUT + "+0e", [GOOD, (1, 0, 6, "uvw", True)]),
    ]:
        assert other != a and other.key != a.key
    assert a != "not a problem" and a != a.key


def test_replace():
    a = Problem(IN1, IN2, OUT, [GOOD, (1, 0, 6, "uvw", True)])
    b = a.replace(layout="ir_mul", shared_weights=False)
    assert (b.layout, b.shared_weights) == ("ir_mul", False)
    assert b.instructions == a.instructions and b.irreps_out == a.irreps_out
    assert a.layout == "mul_ir"  # a is unchanged
    c = a.replace(instructions=[GOOD])
    assert len(c.instructions) == 1


def test_replace_irreps_with_default_vars():
    # The vars of `a` were never given (all 1.0, one per segment); changing irreps_out should
    # give the same problem as building it afresh. Regression test (a bug this found was fixed in this session): Problem.replace
    # forwards the old out_var tuple (8 entries), so the new 9-segment irreps_out raises
    # ProblemError "out_var has 8 entries; expected one per segment (9)".
    a = Problem(IN1, IN2, OUT, [GOOD])
    assert a.replace(irreps_out=OUT + "+0e") == Problem(IN1, IN2, OUT + "+0e", [GOOD])


def test_problem_is_frozen():
    p = Problem(IN1, IN2, OUT, [GOOD])
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.layout = "ir_mul"
    assert isinstance(p.instructions, tuple) and all(isinstance(i, Instruction) for i in p.instructions)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.instructions[0].mode = "uvw"


@pytest.mark.parametrize("seed", range(40))
def test_from_key_round_trip(seed):
    rng = random.Random(seed)
    in1, in2, out, ins = random_problem_args(rng)
    kw = dict(
        irrep_normalization=rng.choice(["component", "norm", "none"]),
        path_normalization=rng.choice(["element", "path", "none"]),
        shared_weights=rng.random() < 0.5, layout=rng.choice(["mul_ir", "ir_mul"]),
    )
    if rng.random() < 0.5:
        kw["in1_var"] = [rng.uniform(0.1, 3) for _ in in1]
        kw["out_var"] = [rng.uniform(0.1, 3) for _ in out]
    p = Problem(in1, in2, out, ins, **kw)
    q = Problem.from_key(p.key)
    assert q == p and q.key == p.key and hash(q) == hash(p)
    assert q.instructions == p.instructions
    assert (q.in1_var, q.in2_var, q.out_var) == (p.in1_var, p.in2_var, p.out_var)
    r = pickle.loads(pickle.dumps(p))
    assert r == p and r.instructions == p.instructions


def test_from_key_rejects_other_versions():
    p = Problem(IN1, IN2, OUT, [GOOD])
    with pytest.raises(ProblemError, match="version"):
        Problem.from_key(p.key.replace('"v":1', '"v":999'))


# -- numbers against e3nn ----------------------------------------------------------------------
def _check_against_e3nn(p, tp):
    assert len(p.instructions) == len(tp.instructions)
    for ours, ref in zip(p.instructions, tp.instructions):
        assert (ours.i_in1, ours.i_in2, ours.i_out, ours.mode, ours.has_weight) == (
            ref.i_in1, ref.i_in2, ref.i_out, ref.connection_mode, ref.has_weight)
        assert tuple(ours.path_shape) == tuple(ref.path_shape)
        # e3nn stores sqrt(alpha) in its Instruction.path_weight; same arithmetic, same bits
        assert ours.coefficient == ref.path_weight, (ours, ref)
    assert p.weight_numel == tp.weight_numel
    offsets, o = [], 0
    for ins in tp.instructions:
        offsets.append(o if ins.has_weight else None)
        o += math.prod(ins.path_shape) if ins.has_weight else 0
    assert p.weight_offsets() == offsets
    mask = tp.output_mask
    active = p.active_outputs()
    for k, s in enumerate(p.irreps_out.slices()):
        if s.stop > s.start:
            assert bool(mask[s].all()) == active[k] and bool(mask[s].any()) == active[k]


@pytest.mark.parametrize("seed", range(60))
def test_normalization_and_weights_match_e3nn(seed):
    rng = random.Random(1000 + seed)
    in1, in2, out, ins = random_problem_args(rng)
    kw = {}
    if rng.random() < 0.5:
        kw["in1_var"] = [rng.choice([0.5, 1.0, 2.0, 1 / 3]) for _ in in1]
        kw["in2_var"] = [rng.uniform(0.1, 3.0) for _ in in2]
        kw["out_var"] = [rng.uniform(0.1, 3.0) for _ in out]
    shared = rng.random() < 0.5
    for irrep_norm in ("component", "norm", "none"):
        for path_norm in ("element", "path", "none"):
            p = Problem(in1, in2, out, ins, irrep_normalization=irrep_norm, path_normalization=path_norm,
                        shared_weights=shared, **kw)
            tp = e3nn_tp(in1, in2, out, ins, irrep_normalization=irrep_norm, path_normalization=path_norm,
                         shared_weights=shared, **kw)
            _check_against_e3nn(p, tp)


def test_generator_covers_every_mode():
    seen = set()
    for seed in range(60):
        seen |= {t[3] for t in random_problem_args(random.Random(1000 + seed))[3]}
    assert seen == set(MODES)


def test_docstring_example():
    p = Problem("8x0e+8x1o", "0e+1o", "8x0e+8x1o", [(0, 0, 0, "uvu", True), (1, 1, 0, "uvu", True)],
                shared_weights=False)
    assert p.weight_numel == 16
    assert [i.path_shape for i in p.instructions] == [(8, 1), (8, 1)]


# -- constructors ------------------------------------------------------------------------------
PAIRS = [
    ("2x0e+3x1o", "0e+1o"),
    ("4x0e+2x1o+2x2e", "1x0e+1x1o+1x2e+1x3o"),
    ("3x1e+1x0o", "2x1o+1x2o"),
    ("1x0e", "1x0e"),
    ("2x2o+1x1e+3x0e", "2x0e+1x1o"),
]
OUTS = ["2x0e+3x1o+1x2e", "1x0e+1x0o+1x1e+1x1o+1x2e+1x2o", "4x1o+2x0e+1x3o", "5x0e", "0e"]


@pytest.mark.parametrize("pair", PAIRS)
@pytest.mark.parametrize("out", OUTS)
@pytest.mark.parametrize("norm", [dict(), dict(irrep_normalization="norm", path_normalization="path")])
def test_fully_connected_matches_e3nn(pair, out, norm):
    p = Problem.fully_connected(*pair, out, **norm)
    tp = o3.FullyConnectedTensorProduct(*pair, out, compile_left_right=False, **norm)
    assert str(p.irreps_out) == str(tp.irreps_out)
    assert p.shared_weights is True
    _check_against_e3nn(p, tp)


@pytest.mark.parametrize("pair", PAIRS)
@pytest.mark.parametrize("filt", [None, ["0e", "1o"], ["2e", "1e", "0o"]])
def test_full_matches_e3nn(pair, filt):
    p = Problem.full(*pair, filter_ir_out=filt)
    tp = o3.FullTensorProduct(*pair, filter_ir_out=filt, compile_left_right=False)
    assert str(p.irreps_in1) == str(tp.irreps_in1) and str(p.irreps_in2) == str(tp.irreps_in2)
    assert str(p.irreps_out) == str(tp.irreps_out)
    assert p.weight_numel == 0
    _check_against_e3nn(p, tp)


ELEMENTWISE = [
    ("2x0e+3x1o", "3x1e+2x0o"),
    ("4x1o", "1x0e+2x1o+1x2e"),
    ("1x0e+1x1o+1x2e", "3x1o"),
    ("2x2e", "2x2e"),
]


@pytest.mark.parametrize("pair", ELEMENTWISE)
@pytest.mark.parametrize("filt", [None, ["0e", "0o", "1o"], ["2e"]])
def test_elementwise_matches_e3nn(pair, filt):
    p = Problem.elementwise(*pair, filter_ir_out=filt)
    tp = o3.ElementwiseTensorProduct(*pair, filter_ir_out=filt, compile_left_right=False)
    assert str(p.irreps_in1) == str(tp.irreps_in1) and str(p.irreps_in2) == str(tp.irreps_in2)
    assert str(p.irreps_out) == str(tp.irreps_out)
    _check_against_e3nn(p, tp)


@pytest.mark.parametrize("ctor,args", [
    ("full", ("1x1o+1x1o+1x0e", "1o")),
    ("full", ("2x1o+0x2e", "1o+1o")),
    ("elementwise", ("2x1o+0x2e+1x0e", "1e+2e+0o")),
    ("elementwise", ("1x0e+1x0e", "2x1o")),
])
def test_full_and_elementwise_simplify_inputs_like_e3nn(ctor, args):
    # e3nn's FullTensorProduct and ElementwiseTensorProduct call Irreps.simplify() on both
    # inputs first (merging neighbours, dropping zero multiplicities). Regression test (a bug this found was fixed in this session):
    # codegen/forms.py full() and elementwise() do not, so irreps_in1/irreps_out and the
    # instruction list differ from e3nn's whenever an input is not already simplified.
    p = getattr(Problem, ctor)(*args)
    tp = {"full": o3.FullTensorProduct, "elementwise": o3.ElementwiseTensorProduct}[ctor](
        *args, compile_left_right=False)
    assert str(p.irreps_in1) == str(tp.irreps_in1) and str(p.irreps_in2) == str(tp.irreps_in2)
    assert str(p.irreps_out) == str(tp.irreps_out)
    _check_against_e3nn(p, tp)


def test_elementwise_needs_same_number_of_irreps():
    with pytest.raises(ValueError, match="same number of irreps on both inputs, got 2 and 3"):
        Problem.elementwise("2x0e", "3x0e")


CHANNELWISE = [
    ("128x0e+128x1o", "0e+1o+2e+3o", "0e+1o+2e"),
    ("8x0e+8x1o", "0e+1o", "0e+1o"),
    ("4x0e+4x1o+4x2e", "1x0e+1x1o+1x2e+1x3o", "0e+1o+2e+3o"),
    ("2x1o+3x0e+2x2e", "0e+1o+2e", "1o+0e"),
    ("16x0e", "0e+1o+2e+3o", "0e+1o+2e+3o"),
    ("3x1e+2x0o", "1o+2o", "0e+1e+2e+0o+1o+2o+3e"),
]


@pytest.mark.parametrize("in1,in2,target", CHANNELWISE)
def test_channelwise_matches_mace(in1, in2, target):
    ref_out, ref_ins = mace_channelwise(in1, in2, target)
    p = Problem.channelwise(in1, in2, target)
    assert str(p.irreps_out) == str(ref_out)
    assert [i.as_tuple()[:5] for i in p.instructions] == [tuple(t) for t in ref_ins]
    assert p.shared_weights is False
    tp = e3nn_tp(in1, in2, ref_out, ref_ins, shared_weights=False)
    _check_against_e3nn(p, tp)
    # target given as an e3nn Irreps or a list of irreps gives the same problem
    assert Problem.channelwise(in1, in2, o3.Irreps(target)) == p
    assert Problem.channelwise(in1, in2, [str(ir) for _, ir in o3.Irreps(target)]) == p


def test_channelwise_docstring_example():
    p = Problem.channelwise("8x0e+8x1o", "0e+1o", "0e+1o")
    assert p.weight_numel == 32
    p = Problem.channelwise("128x0e+128x1o", "0e+1o+2e+3o", "0e+1o+2e")
    assert str(p.irreps_out) == "128x0e+128x0e+128x1o+128x1o+128x1o+128x2e+128x2e+128x2e"
    assert len(p.instructions) == 8


@pytest.mark.parametrize("mode", MODES)
def test_all_paths_matches_filter_by_hand(mode):
    in1, in2, out = "2x0e+2x1o+1x2e", "2x1o+1x0e", "2x1o+2x0e+4x1e+1x2e+2x2o+1x1o"
    p = Problem.all_paths(in1, in2, out, mode)
    fits = {"uvw": lambda a, b, c: True, "uvu": lambda a, b, c: a == c, "uvv": lambda a, b, c: b == c,
            "uuw": lambda a, b, c: a == b, "uuu": lambda a, b, c: a == b == c,
            "uvuv": lambda a, b, c: a * b == c}[mode]
    I1, I2, O = o3.Irreps(in1), o3.Irreps(in2), o3.Irreps(out)
    expected = [(a, b, c, mode, True) for a, (m1, r1) in enumerate(I1) for b, (m2, r2) in enumerate(I2)
                for c, (mo, ro) in enumerate(O) if ro in r1 * r2 and fits(m1, m2, mo)]
    assert [i.as_tuple()[:5] for i in p.instructions] == expected
    _check_against_e3nn(p, e3nn_tp(in1, in2, out, expected))


def test_all_paths_rejects_unknown_mode_and_empty():
    with pytest.raises(ValueError, match="mode='uvx' is not one of"):
        Problem.all_paths("1x0e", "1x0e", "1x0e", "uvx")
    with pytest.raises(ValueError, match="no uvw path couples"):
        Problem.all_paths("1x0e", "1x0e", "1x1o", "uvw")



@pytest.mark.parametrize("module", ["tritp.codegen.problem", "tritp.codegen.instructions", "tritp.codegen.forms",
                                    "tritp.codegen.cg_pieces", "tritp.codegen.intmath", "tritp.codegen.cg_terms",
                                    "tritp.codegen"])
def test_doctests(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), report=True)
    assert result.attempted > 0 and result.failed == 0
