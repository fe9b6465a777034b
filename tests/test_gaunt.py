"""The Gaunt product's four generated implementations, forward, through the Triton interpreter.

Oracles: the float64 dense reference (:mod:`tritp.gaunt_reference`, design notes section 3),
the pointwise identity ``sum_lm out_lm Y_lm(r) = f1(r) f2(r)`` with e3nn's harmonics (needs
``Lo >= L1 + L2``), and e3nn's own CG tensor product with the same paths. Tolerances: relative
max error 1e-5 (fp32) and 1e-10 (fp64). Sizes are tiny: interpreter cost is per program.
"""

import math

import pytest
import torch
from e3nn import o3

import tritp
from tritp.codegen.gaunt_problem import GauntError, GauntProblem
from tritp.gaunt import GauntProduct, compile_gaunt
from tritp.gaunt_reference import gaunt_reference

F64 = torch.float64
IMPLS = ("sparse", "grid", "fft", "separable")
CASES = [  # (irreps_in1, irreps_in2, lmax_out): equal channels, broadcast x2, broadcast x1 with gaps
    ("3x0e+3x1o+3x2e", "3x0e+3x1o", 3),
    ("2x0e+2x1o+2x2e", "0e+1o+2e", 2),
    ("0o+2o", "3x1o+3x2e", 4),
]


def rel(a, ref):
    a, ref = a.detach().to(F64), ref.detach().to(F64)
    return ((a - ref).abs().max() / ref.abs().max()).item()


def inputs(gp, batch=(6,), dtype=F64):
    return (torch.randn(*batch, gp.irreps_in1.dim, dtype=dtype), torch.randn(*batch, gp.irreps_in2.dim, dtype=dtype))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=["uuu", "bcast2", "bcast1-gaps"])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (F64, 1e-10)], ids=["fp32", "fp64"])
def test_forward_matches_float64_reference(impl, case, dtype, tol):
    gp = compile_gaunt(case[0], case[1], lmax_out=case[2], implementation=impl, backend="triton")
    x1, x2 = inputs(gp)
    y = gp(x1.to(dtype), x2.to(dtype))
    assert y.dtype == dtype and y.shape == (6, gp.irreps_out.dim)
    assert rel(y, gaunt_reference(gp.problem, x1, x2)) < tol


def sh_values(irreps, r):
    """``[n, mul, K]`` harmonics of each degree of ``irreps`` at points ``r``, per channel."""
    return o3.spherical_harmonics([ir.l for _, ir in irreps], r, normalize=True, normalization="integral")


def function_values(x, irreps, r):
    """``f_c(r_n)`` of coefficients ``x [mul_ir]``: ``[n, mul]``."""
    mul = irreps[0].mul
    parts = [x[s].reshape(mul, ir.dim) for s, (_, ir) in zip(irreps.slices(), irreps)]
    return torch.cat(parts, dim=1) @ sh_values(irreps, r).T


@pytest.mark.parametrize("impl", IMPLS)
def test_bf16_inputs_compute_in_fp32(impl):
    gp = compile_gaunt("2x0e+2x1o", "0e+1o", lmax_out=2, implementation=impl, backend="triton")
    x1, x2 = inputs(gp)
    y = gp(x1.bfloat16(), x2.bfloat16())
    assert y.dtype == torch.bfloat16
    assert rel(y, gaunt_reference(gp.problem, x1.bfloat16().double(), x2.bfloat16().double())) < 1e-2


@pytest.mark.parametrize("impl", IMPLS)
def test_pointwise_product_of_functions(impl):
    gp = compile_gaunt("2x0e+2x1o+2x2e", "0e+1o", lmax_out=3, implementation=impl, backend="triton")
    x1, x2 = inputs(gp, batch=(1,))
    y = gp(x1, x2)[0]
    r = torch.randn(20, 3, dtype=F64)
    lhs = function_values(y, gp.irreps_out, r)
    rhs = function_values(x1[0], gp.irreps_in1, r) * function_values(x2[0], gp.irreps_in2, r)
    assert rel(lhs, rhs) < 1e-12


@pytest.mark.parametrize("impl", IMPLS)
def test_outputs_without_an_even_path_are_exactly_zero(impl):
    gp = compile_gaunt("2x1o", "2x1o", lmax_out=2, implementation=impl, backend="triton")
    y = gp(*inputs(gp))
    assert (y[:, 2:8] == 0).all() and (y[:, :2] != 0).all() and (y[:, 8:] != 0).all()  # 1o: cross product
    gp = compile_gaunt("0e+2e", "1o", lmax_out=3, implementation=impl, backend="triton")
    y = gp(*inputs(gp))  # 0e (needs l1=1) and 2e (only 2x1->2, odd) vanish; 1o and 3o do not
    assert (y[:, 0] == 0).all() and (y[:, 4:9] == 0).all() and (y[:, 1:4] != 0).all() and (y[:, 9:] != 0).all()


@pytest.mark.parametrize("impl, shrink", [("grid", (1, 0)), ("grid", (0, 1)), ("fft", (1, 0)), ("fft", (0, 1)),
                                         ("separable", (1, 0))],
                         ids=["grid-beta", "grid-alpha", "fft-theta", "fft-phi", "separable-beta"])
def test_one_point_fewer_than_exact_is_wrong(impl, shrink):
    # Lo = L1 + L2: every direction of the exact size is tight
    args = ("2x0e+2x1o+2x2e", "2x0e+2x1o")
    exact = compile_gaunt(*args, lmax_out=3, implementation=impl, backend="triton")
    nb, na = exact.problem.grid_size
    smaller = (nb - shrink[0], na - shrink[1])
    small = compile_gaunt(*args, lmax_out=3, implementation=impl, backend="triton", grid=smaller)
    x1, x2 = inputs(exact)
    ref = gaunt_reference(exact.problem, x1, x2)
    assert rel(exact(x1, x2), ref) < 1e-12
    assert rel(small(x1, x2), ref) > 1e-6


def test_integral_normalization_is_sqrt_4pi_times_orthonormal():
    a = compile_gaunt("2x0e+2x1o", "0e+1o", implementation="grid", backend="triton")
    b = compile_gaunt("2x0e+2x1o", "0e+1o", implementation="grid", backend="triton", normalization="integral")
    x1, x2 = inputs(a)
    assert rel(b(x1, x2), math.sqrt(4 * math.pi) * a(x1, x2)) < 1e-13


def test_reference_equals_e3nn_cg_path():
    gp = compile_gaunt("3x0e+3x1o+3x2e", "3x0e+3x1o+3x2e", lmax_out=4, backend="reference")
    ins = [tuple(i.as_tuple()) for i in gp.problem.cg_problem().instructions]
    old = torch.get_default_dtype()
    torch.set_default_dtype(F64)  # e3nn builds its wigner_3j in the default dtype
    try:
        tp = o3.TensorProduct(str(gp.irreps_in1), str(gp.irreps_in2), str(gp.irreps_out), ins,
                              irrep_normalization="none", path_normalization="none")
    finally:
        torch.set_default_dtype(old)
    x1, x2 = inputs(gp)
    assert rel(gp(x1, x2), tp(x1, x2)) < 1e-10


def test_compile_spelling_batch_broadcast_and_auto():
    gp = tritp.compile("4x0e+4x1o", "0e+1o", lmax_out=2, mode="gaunt", backend="triton")
    assert isinstance(gp, GauntProduct) and gp.implementation == "sparse"  # size rule: L <= 3
    assert tritp.compile("4x0e+4x1o+4x2e+4x3o+4x4e", "0e", mode="gaunt").implementation == "grid"
    x1 = torch.randn(2, 1, 16, dtype=F64)
    x2 = torch.randn(3, 4, dtype=F64)
    y = gp(x1, x2)
    assert y.shape == (2, 3, 36)
    assert rel(y, gaunt_reference(gp.problem, x1, x2)) < 1e-12


def test_module_dtype_casts_keep_the_tables_exact():
    gp = compile_gaunt("2x0e+2x1o+2x2e", "0e+1o", implementation="fft", backend="triton").float()
    x1, x2 = inputs(gp)
    assert rel(gp(x1, x2), gaunt_reference(gp.problem, x1, x2)) < 1e-10  # fp64 tables survived .float()
    gp.double()
    assert gp._t32_out.dtype == torch.float32 and gp._t64_out.dtype == F64 and gp._idx_out.dtype == torch.int32


def test_bad_input_raises_clear_errors():
    with pytest.raises(GauntError, match="implementation='fast'"):
        tritp.compile("4x0e", "0e", mode="gaunt", implementation="fast")
    with pytest.raises(GauntError, match="irreps_in2"):
        compile_gaunt("4x0e+4x1o", "2x0e+2x1o")
    with pytest.raises(GauntError, match="irreps_in1: degree 13"):
        compile_gaunt("0e+13o", "0e", lmax_out=2)
    with pytest.raises(GauntError, match="weights"):
        compile_gaunt("4x0e", "0e", weights=("in3",))
    with pytest.raises(TypeError, match="layout"):
        tritp.compile("4x0e", "0e", mode="gaunt", layout="ir_mul")
    gp = compile_gaunt("4x0e+4x1o", "0e+1o", backend="reference")
    with pytest.raises(ValueError, match=r"x1: expected shape \[..., 16\]"):
        gp(torch.randn(3, 15), torch.randn(3, 4))
    with pytest.raises(ValueError, match="x2: expected shape"):
        gp(torch.randn(3, 16), torch.randn(3, 16))
    with pytest.raises(TypeError, match="x2: dtype"):
        gp(torch.randn(3, 16), torch.randn(3, 4, dtype=F64))


def bench_problem(L, C=32, impl="grid", x2=None):
    """benchmarks/gaunt_bench.py's problem: C channels of degrees 0..L in (x2: its channels), 0..L out."""
    ls = lambda c: "+".join(f"{c}x{l}{'eo'[l % 2]}" for l in range(L + 1))  # noqa: E731
    return GauntProblem(ls(C), ls(x2 or C), lmax_out=L, implementation=impl)


@pytest.mark.parametrize("impls, L, C, dtype, want", [
    (("grid",), 2, 32, "float32", (64, 4, 32)),  # small K: as before
    (("fft",), 3, 128, "float32", (64, 8, 64)),  # 4 warps estimated over budget (measured 140 regs, no spill)
    (("grid", "fft"), 5, 32, "float32", (64, 8, 32)),  # 64:8:64 spilled 4 bytes (grid)
    (("grid", "fft"), 6, 128, "float32", (64, 8, 32)),  # 64:8:64 spilled 260 (grid) / 1588 (fft) bytes
    (("grid", "fft"), 8, 32, "float32", (64, 8, 32)),  # 64:8:64 spilled 580 bytes
    (("grid", "fft"), 8, 128, "float64", (64, 8, 64)),  # fp64 (DMMA) never spilled: 178 registers
])
def test_gpu_launch_default_is_the_documented_rung(impls, L, C, dtype, want, monkeypatch):
    """The GPU default of launch_shape's docstring table: the first ladder rung within budget."""
    from tritp import gaunt_kernels as gk

    monkeypatch.setattr(gk, "interpreter_active", lambda: False)
    for impl in impls:
        p = bench_problem(L, C, impl)
        for target in ("out", "x1", "x2"):
            assert gk.launch_shape(p, 10_000 * C, target, dtype) == want, (impl, target)
        assert gk.estimate_registers(p, dtype, *want) <= gk.REGISTER_BUDGET
        bp0 = gk.default_block_p(p)
        rungs = [(b, w, min(c or bp0, bp0)) for b, w, c in gk.GPU_LADDER]
        assert all(gk.estimate_registers(p, dtype, *r) > gk.REGISTER_BUDGET for r in rungs[:rungs.index(want)])


@pytest.mark.parametrize("triton, precision, want", [
    ("3.6", "ieee", (32, 8, 32)),  # 64:8:32 spills 5,136 bytes there (gaunt_ptxas.py)
    ("3.9", "ieee", (64, 8, 32)),  # 96 registers, no spill
    ("3.6", "tf32x3", (64, 8, 32)),  # another kernel: timed at 1.59 ms on an H200
])
def test_gpu_launch_skips_a_rung_the_running_triton_spills_on(triton, precision, want, monkeypatch):
    """L = 7 (64 coefficients in every role) in exact fp32 on Triton 3.6: the estimate's first
    rung is a known spill there, so the default takes the next; elsewhere it stays."""
    from tritp import gaunt_kernels as gk
    from tritp.tuning import cache

    monkeypatch.setattr(gk, "interpreter_active", lambda: False)
    monkeypatch.setattr(cache, "triton_version", lambda: triton)
    for impl in ("grid", "fft"):
        ls = "+".join(f"32x{l}{'eo'[l % 2]}" for l in range(8))
        p = GauntProblem(ls, ls, lmax_out=7, implementation=impl, precision=precision)
        assert gk.launch_shape(p, 320_000, "out", "float32") == want
        assert gk.launch_candidates(p, "float32")[0] == want  # what a tuning run times first
        assert len(gk.launch_candidates(p, "float32")) == len(set(gk.launch_candidates(p, "float32")))


@pytest.mark.parametrize("C, rows", [(32, 64), (128, 64), (48, 16), (80, 16)])
def test_gpu_launch_keeps_whole_samples_in_channel_summing_kernels(C, rows, monkeypatch):
    """A one-channel x2's gradient sums the C channels in the kernel: the row tile divides C or
    is a multiple of it, whatever rung the register estimate picked."""
    from tritp import gaunt_kernels as gk

    monkeypatch.setattr(gk, "interpreter_active", lambda: False)
    p = bench_problem(6, C, x2=1)
    block, warps, bp = gk.launch_shape(p, 10_000 * C, "x2", "float32")
    assert (block, warps, bp) == (rows, 8, 32)
    assert block % C == 0 or C % block == 0
    assert gk.launch_shape(p, 10_000 * C, "out", "float32") == (64, 8, 32)
