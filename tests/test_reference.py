"""tritp.reference_tp (the dense float64 oracle and CPU fallback) against e3nn.o3.TensorProduct.

Random problems mix every connection mode in one instruction list; outputs, first and second
derivatives are compared with e3nn, equivariance is checked with e3nn's Wigner D matrices, and
layouts, broadcasting, empty batches and low-precision inputs are covered. Tolerances follow
the design notes (relative to the float64 answer's norm).
"""

import contextlib
import random

import pytest
import torch
from e3nn import o3

from tritp import Problem, reference_tp
from tritp.codegen import MODES
from tritp.reference import to_ir_mul, to_mul_ir

from support import random_problem_args

# -- helpers -----------------------------------------------------------------------------------
@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tensors here are tiny; torch's thread pool only adds overhead (and contention)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)




def random_problem(seed, unweighted_uuw="never", zero_mul=True, layout="mul_ir"):
    """A Problem and the matching e3nn keyword arguments, both from one seed."""
    rng = random.Random(seed)
    in1, in2, out, ins = random_problem_args(rng, zero_mul=zero_mul, unweighted_uuw=unweighted_uuw)
    kw = dict(
        irrep_normalization=rng.choice(["component", "norm"]),
        path_normalization=rng.choice(["element", "path"]),
        shared_weights=rng.random() < 0.5,
    )
    if rng.random() < 0.2:
        kw["in1_var"] = [rng.uniform(0.5, 2.0) for _ in in1]
        kw["out_var"] = [rng.uniform(0.5, 2.0) for _ in out]
    problem = Problem(in1, in2, out, ins, layout=layout, **kw)
    return problem, (in1, in2, out, ins, kw)


@contextlib.contextmanager
def default_dtype(dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def e3nn_tp(args):
    """e3nn's TensorProduct built in float64, so its Wigner 3j buffers are float64 too."""
    in1, in2, out, ins, kw = args
    with default_dtype(torch.float64):
        return o3.TensorProduct(o3.Irreps(in1), o3.Irreps(in2), o3.Irreps(out), ins, internal_weights=False,
                                _optimize_einsums=False, **kw)


def inputs(problem, batch, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(*batch, problem.irreps_in1.dim, generator=g, dtype=torch.float64)
    x2 = torch.randn(*batch, problem.irreps_in2.dim, generator=g, dtype=torch.float64)
    w = None
    if problem.weight_numel > 0:
        wshape = (problem.weight_numel,) if problem.shared_weights else (*batch, problem.weight_numel)
        w = torch.randn(*wshape, generator=g, dtype=torch.float64)
    return tuple(None if t is None else t.to(dtype) for t in (x1, x2, w))


def rel(a, b):
    """|a - b| / |b| in float64 (absolute when b is zero)."""
    a, b = a.detach().double(), b.detach().double()
    assert a.shape == b.shape, (a.shape, b.shape)
    nb = b.norm()
    return float((a - b).norm() / nb) if nb > 0 else float((a - b).norm())


def forward_and_grads(fn, x1, x2, w, v):
    leaves = [t.detach().clone().requires_grad_() for t in (x1, x2) + ((w,) if w is not None else ())]
    y = fn(*leaves) if w is not None else fn(*leaves, None)
    if not y.requires_grad:  # every path has a zero multiplicity: a constant zero output
        assert not y.any()
        return y, [torch.zeros_like(t) for t in leaves]
    grads = torch.autograd.grad(y, leaves, v.to(y.dtype), allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads)]
    return y, grads


def compare_with_e3nn(problem, args, seed, batch=(3,)):
    tp = e3nn_tp(args)
    x1, x2, w = inputs(problem, batch, seed)
    g = torch.Generator().manual_seed(seed + 1)
    v = torch.randn(*batch, problem.irreps_out.dim, generator=g, dtype=torch.float64)
    y_ref, g_ref = forward_and_grads(tp, x1, x2, w, v)
    y64, g64 = forward_and_grads(lambda a, b, c: reference_tp(problem, a, b, c), x1, x2, w, v)
    assert y64.dtype == torch.float64
    assert rel(y64, y_ref) <= 1e-10
    for a, b in zip(g64, g_ref):
        assert rel(a, b) <= 1e-10
    # float32 against the float64 truth
    f = [None if t is None else t.float() for t in (x1, x2, w)]
    y32, g32 = forward_and_grads(lambda a, b, c: reference_tp(problem, a, b, c), *f, v)
    assert y32.dtype == torch.float32
    assert rel(y32, y_ref) <= 1e-5
    for a, b in zip(g32, g_ref):
        assert a.dtype == torch.float32
        assert rel(a, b) <= 1e-4
    return y_ref


# -- against e3nn ------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(100))
def test_matches_e3nn(seed):
    problem, args = random_problem(seed)
    y = compare_with_e3nn(problem, args, seed)
    assert y.shape == (3, problem.irreps_out.dim)


def test_random_problems_cover_every_mode_and_option():
    modes, weighted, shared, norms, path_weight = set(), set(), set(), set(), False
    for seed in range(100):
        p, (_, _, _, ins, kw) = random_problem(seed)
        modes |= {i.mode for i in p.instructions}
        weighted |= {(i.mode, i.has_weight) for i in p.instructions}
        shared.add(p.shared_weights)
        norms.add((p.irrep_normalization, p.path_normalization))
        path_weight |= any(len(t) == 6 for t in ins)
    assert modes == set(MODES)
    assert {(m, False) for m in MODES if m not in ("uvw", "uuw")} <= weighted
    assert shared == {True, False}
    assert len(norms) == 4 and path_weight


@pytest.mark.parametrize("seed", range(8))
def test_matches_e3nn_unweighted_uuw(seed):
    # uuw without weights (allowed by e3nn when mul_out == 1: the sum over u of uuu).
    # Regression test (a bug this found was fixed in this session): tritp/reference.py reference_tp builds the einsum
    # "zui,zuj,ijk->zwk" for unweighted uuw, whose output index w appears in no input, so it
    # raises ValueError("Output character 'w' did not appear in the input").
    problem, args = random_problem(500 + seed, unweighted_uuw="force")
    assert any(i.mode == "uuw" and not i.has_weight for i in problem.instructions)
    compare_with_e3nn(problem, args, seed)


def test_unweighted_uuw_minimal():
    # Same bug as above on the smallest problem: 2x1o (x) 2x1o -> 1x0e, sum_u <x_u, y_u>.
    p = Problem("2x1o", "2x1o", "1x0e", [(0, 0, 0, "uuw", False)])
    x1 = torch.randn(4, 6, dtype=torch.float64)
    x2 = torch.randn(4, 6, dtype=torch.float64)
    y = reference_tp(p, x1, x2)
    expected = (x1.reshape(4, 2, 3) * x2.reshape(4, 2, 3)).sum(dim=(1, 2)) / 3**0.5 / 2**0.5
    torch.testing.assert_close(y[:, 0], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("ctor", ["channelwise", "fully_connected", "full", "elementwise"])
def test_constructors_match_e3nn(ctor):
    with default_dtype(torch.float64):
        if ctor == "channelwise":
            p = Problem.channelwise("3x0e+3x1o+2x2e", "0e+1o+2e", "0e+1o+2e")
            tp = o3.TensorProduct(p.irreps_in1, p.irreps_in2, p.irreps_out,
                                  [i.as_tuple()[:5] for i in p.instructions],
                                  shared_weights=False, internal_weights=False)
        elif ctor == "fully_connected":
            p = Problem.fully_connected("3x0e+2x1o+1x2e", "2x0e+1x1o", "2x0e+3x1o+2x2e+1x1e")
            tp = o3.FullyConnectedTensorProduct("3x0e+2x1o+1x2e", "2x0e+1x1o", "2x0e+3x1o+2x2e+1x1e",
                                                internal_weights=False)
        elif ctor == "full":
            p = Problem.full("2x0e+2x1o", "1x1o+2x2e")
            tp = o3.FullTensorProduct("2x0e+2x1o", "1x1o+2x2e")
        else:
            p = Problem.elementwise("2x0e+3x1o", "3x1e+2x0o")
            tp = o3.ElementwiseTensorProduct("2x0e+3x1o", "3x1e+2x0o")
    x1, x2, w = inputs(p, (5,), 7)
    y = reference_tp(p, x1, x2, w)
    ref = tp(x1, x2, w) if w is not None else tp(x1, x2)
    assert rel(y, ref) <= 1e-10


# -- second derivatives ------------------------------------------------------------------------
def double_grads(fn, x1, x2, w, v, u):
    leaves = [t.detach().clone().requires_grad_() for t in (x1, x2) + ((w,) if w is not None else ())]
    y = fn(*leaves) if w is not None else fn(*leaves, None)
    g = torch.autograd.grad(y, leaves, v, create_graph=True, allow_unused=True)
    s = sum((gi * ui).sum() for gi, ui in zip(g, u) if gi is not None)
    gg = torch.autograd.grad(s, leaves, allow_unused=True)
    return [torch.zeros_like(t) if x is None else x for t, x in zip(leaves, gg)]


@pytest.mark.parametrize("seed", [0, 3, 11, 42, 77])
def test_double_backward_matches_e3nn(seed):
    problem, args = random_problem(seed, zero_mul=False)
    tp = e3nn_tp(args)
    x1, x2, w = inputs(problem, (3,), seed)
    g = torch.Generator().manual_seed(seed + 2)
    v = torch.randn(3, problem.irreps_out.dim, generator=g, dtype=torch.float64)
    u = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in (x1, x2, w) if t is not None]
    ours = double_grads(lambda a, b, c: reference_tp(problem, a, b, c), x1, x2, w, v, u)
    ref = double_grads(tp, x1, x2, w, v, u)
    assert any(float(r.abs().max()) > 0 for r in ref)
    for a, b in zip(ours, ref):
        assert rel(a, b) <= 1e-10


# -- equivariance ------------------------------------------------------------------------------
def wigner_D(irreps, R):
    """e3nn's block-diagonal D(R). Built under a float64 default dtype: e3nn derives its so(3)
    generators in the default dtype, and float32 generators limit D to ~1e-7 for l >= 2."""
    blocks, cache = [], {}
    with default_dtype(torch.float64):
        for mul, ir in o3.Irreps(str(irreps)):
            if ir not in cache:
                cache[ir] = ir.D_from_matrix(R)
            blocks += [cache[ir]] * mul
    D = torch.block_diag(*blocks)
    assert D.dtype == torch.float64
    return D


@pytest.mark.parametrize("seed", range(10))
def test_equivariance(seed):
    problem, _ = random_problem(200 + seed, zero_mul=False)
    x1, x2, w = inputs(problem, (4,), seed)
    torch.manual_seed(seed)
    R = o3.rand_matrix(dtype=torch.float64)
    y = reference_tp(problem, x1, x2, w)
    assert y.abs().max() > 0
    for Q in (R, -R):  # -R also applies parity
        D1, D2, Do = (wigner_D(irreps, Q) for irreps in (problem.irreps_in1, problem.irreps_in2, problem.irreps_out))
        y_rot = reference_tp(problem, x1 @ D1.T, x2 @ D2.T, w)
        assert rel(y_rot, y @ Do.T) <= 1e-10


def test_parity_is_seen():
    # an odd output from even inputs would break under -R: make sure the check can fail
    p = Problem("1x1o", "1x1o", "1x1e", [(0, 0, 0, "uvw", True)])
    x1, x2, w = inputs(p, (2,), 0)
    R = -o3.rand_matrix(dtype=torch.float64)
    D = wigner_D("1x1o", R)
    wrong = wigner_D("1x1o", R)  # treating the 1e output as 1o
    y = reference_tp(p, x1, x2, w)
    y_rot = reference_tp(p, x1 @ D.T, x2 @ D.T, w)
    assert rel(y_rot, y @ wigner_D("1x1e", R).T) <= 1e-10
    assert rel(y_rot, y @ wrong.T) > 0.5


# -- layouts -----------------------------------------------------------------------------------
def test_layout_conversion_by_hand():
    from tritp.codegen import Irreps

    irreps = Irreps("2x0e+2x1o")
    x = torch.arange(8.0)[None]  # mul_ir: s0 s1 | a0 a1 a2 b0 b1 b2
    ir_mul = to_ir_mul(x, irreps)
    assert ir_mul.tolist() == [[0.0, 1.0, 2.0, 5.0, 3.0, 6.0, 4.0, 7.0]]
    assert torch.equal(to_mul_ir(ir_mul, irreps), x)
    y = torch.randn(2, 3, Irreps("3x2e+1x1o+0x3o+2x0e").dim)
    ir = Irreps("3x2e+1x1o+0x3o+2x0e")
    assert torch.equal(to_mul_ir(to_ir_mul(y, ir), ir), y)


@pytest.mark.parametrize("seed", range(10))
def test_ir_mul_layout_matches_mul_ir(seed):
    problem, _ = random_problem(300 + seed)
    ir_problem = problem.replace(layout="ir_mul")
    assert ir_problem.layout == "ir_mul" and ir_problem != problem
    x1, x2, w = inputs(problem, (3,), seed)
    y = reference_tp(problem, x1, x2, w)
    y_ir = reference_tp(ir_problem, to_ir_mul(x1, problem.irreps_in1), to_ir_mul(x2, problem.irreps_in2), w)
    assert rel(y_ir, to_ir_mul(y, problem.irreps_out)) <= 1e-12
    assert rel(to_mul_ir(y_ir, problem.irreps_out), y) <= 1e-12


# -- shapes ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bcast_problem():
    problem, args = random_problem(7, zero_mul=False)
    return problem.replace(shared_weights=False), e3nn_tp(args[:4] + ({**args[4], "shared_weights": False},))


@pytest.mark.parametrize("shapes", [
    ((3, 1), (1, 4), (3, 4)),
    ((3, 1), (1, 4), (4,)),
    ((3, 1), (1, 4), (3, 1)),
    ((2, 3), (), (2, 3)),
    ((), (5,), (5,)),
    ((2, 1, 3), (4, 1), (1, 4, 3)),
])
def test_broadcasting_matches_e3nn(bcast_problem, shapes):
    problem, tp = bcast_problem
    assert problem.weight_numel > 0
    s1, s2, sw = shapes
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(*s1, problem.irreps_in1.dim, generator=g, dtype=torch.float64)
    x2 = torch.randn(*s2, problem.irreps_in2.dim, generator=g, dtype=torch.float64)
    w = torch.randn(*sw, problem.weight_numel, generator=g, dtype=torch.float64)
    ref = tp(x1, x2, w)
    y = reference_tp(problem, x1, x2, w)
    assert y.shape == ref.shape == (*torch.broadcast_shapes(s1, s2, sw), problem.irreps_out.dim)
    assert rel(y, ref) <= 1e-10
    # gradients have the inputs' own (unbroadcast) shapes and e3nn's values
    v = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    _, gy = forward_and_grads(lambda a, b, c: reference_tp(problem, a, b, c), x1, x2, w, v)
    _, gr = forward_and_grads(tp, x1, x2, w, v)
    for a, b, t in zip(gy, gr, (x1, x2, w)):
        assert a.shape == t.shape
        assert rel(a, b) <= 1e-10


def test_broadcasting_shared_weights():
    problem, args = random_problem(7, zero_mul=False)
    problem = problem.replace(shared_weights=True)
    tp = e3nn_tp(args[:4] + ({**args[4], "shared_weights": True},))
    g = torch.Generator().manual_seed(1)
    x1 = torch.randn(2, 1, problem.irreps_in1.dim, generator=g, dtype=torch.float64)
    x2 = torch.randn(3, problem.irreps_in2.dim, generator=g, dtype=torch.float64)
    w = torch.randn(problem.weight_numel, generator=g, dtype=torch.float64)
    y = reference_tp(problem, x1, x2, w)
    assert y.shape == (2, 3, problem.irreps_out.dim)
    assert rel(y, tp(x1, x2, w)) <= 1e-10


@pytest.mark.parametrize("shared", [True, False])
def test_empty_batch(shared):
    # Regression test (a bug this found was fixed in this session) for shared=False: tritp/reference.py reference_tp does
    # weight.expand(*bshape, -1).reshape(z, -1) with z == 0, which torch rejects ("cannot
    # reshape tensor of 0 elements into shape [0, -1] ..."); e3nn returns a [0, dim_out] output.
    problem, args = random_problem(13, zero_mul=False)
    problem = problem.replace(shared_weights=shared)
    tp = e3nn_tp(args[:4] + ({**args[4], "shared_weights": shared},))
    x1, x2, w = inputs(problem, (0,), 0)
    assert w is not None and w.shape == ((problem.weight_numel,) if shared else (0, problem.weight_numel))
    ref = tp(x1, x2, w) if w is not None else tp(x1, x2)
    y = reference_tp(problem, x1, x2, w)
    assert y.shape == ref.shape == (0, problem.irreps_out.dim)
    x1.requires_grad_()
    reference_tp(problem, x1, x2, w).sum().backward()
    assert x1.grad.shape == x1.shape


# -- dtypes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("seed", range(5))
def test_low_precision_inputs(dtype, seed):
    problem, _ = random_problem(400 + seed)
    x1, x2, w = inputs(problem, (4,), seed, dtype=dtype)
    y = reference_tp(problem, x1, x2, w)
    assert y.dtype == dtype
    up = [None if t is None else t.float() for t in (x1, x2, w)]
    y32 = reference_tp(problem, *up)
    assert rel(y, y32) <= 1e-2


def test_mixed_dtypes_promote():
    problem, _ = random_problem(401)
    x1, x2, w = inputs(problem, (4,), 0)
    y = reference_tp(problem, x1.bfloat16(), x2.float(), None if w is None else w.float())
    assert y.dtype == torch.float32
    y2 = reference_tp(problem, x1.float(), x2.double(), w)
    assert y2.dtype == torch.float64


# -- errors ------------------------------------------------------------------------------------
def test_missing_weight_raises():
    p = Problem.channelwise("4x0e+4x1o", "0e+1o", "0e+1o")
    x1, x2 = torch.randn(2, 16), torch.randn(2, 4)
    with pytest.raises(ValueError, match="weight"):
        reference_tp(p, x1, x2)
    with pytest.raises(ValueError, match="weight"):
        reference_tp(p, x1, x2, None)
    assert reference_tp(p, x1, x2, torch.randn(2, p.weight_numel)).shape == (2, p.irreps_out.dim)


def test_no_weight_needed_without_weighted_paths():
    p = Problem.full("2x0e+1x1o", "1x1o")
    assert p.weight_numel == 0
    y = reference_tp(p, torch.randn(3, 5), torch.randn(3, 3))
    assert y.shape == (3, p.irreps_out.dim)


@pytest.mark.parametrize("module", ["tritp.reference", "tritp"])
def test_doctests(module):
    # LIBRARY BUG (reported, docs only): the example in tritp/reference.py's module docstring
    # claims torch.Size([10, 16]) for Problem.channelwise("4x0e+4x1o", "0e+1o", "0e+1o"), whose
    # output irreps are 4x0e+4x0e+4x1o+4x1o (dim 32); the code is right, the docstring is not.
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), report=True)
    assert result.attempted > 0 and result.failed == 0


# -- degenerate sizes --------------------------------------------------------------------------
@pytest.mark.parametrize("in1", ["0x1o", "0x0e+0x1o"])
def test_zero_dimensional_input(in1):
    # An input irreps of dimension 0 (all multiplicities 0) is valid in e3nn, which returns
    # zeros of the output's shape. Regression test (a bug this found was fixed in this session): tritp/reference.py reference_tp does
    # x1.expand(...).reshape(-1, x1.shape[-1]) with x1.shape[-1] == 0, which torch rejects
    # ("cannot reshape tensor of 0 elements into shape [-1, 0] ...").
    p = Problem(in1, "1x1o", "2x1e+1x0e", [(0, 0, 1, "uvw", True)] if in1 == "0x1o" else [(1, 0, 0, "uvw", True)])
    tp = e3nn_tp((in1, "1x1o", "2x1e+1x0e", [i.as_tuple() for i in p.instructions], {}))
    x1 = torch.zeros(3, 0, dtype=torch.float64)
    x2 = torch.randn(3, 3, dtype=torch.float64)
    w = torch.randn(p.weight_numel, dtype=torch.float64)
    ref = tp(x1, x2, w)
    y = reference_tp(p, x1, x2, w)
    assert y.shape == ref.shape == (3, 7)
    assert not y.any()
