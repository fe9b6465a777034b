"""The torch-free side of the Gaunt product: float64 tables, problem validation, size rule.

Tables are checked against independent sources: e3nn's spherical harmonics (values), the
identity matrix (orthonormality under the exact quadrature), a 400-point Gauss-Legendre
quadrature (the analytic beta integrals of the fft form) and direct evaluation (the fft form's
exact Fourier series).
"""

import math

import numpy as np
import pytest
import torch
from e3nn import o3

from tritp.codegen.coupling import dense_coupling, gaunt_factor
from tritp.codegen.gaunt_problem import GauntError, GauntProblem, derivative_spec, size_rule
from tritp.codegen.gaunt_tables import (beta_integrals, grid_tables, legendre_q, orthonormality_error, real_sh,
                                        theta_values, torus_tables)

LMAX = 12


def test_real_sh_equals_e3nn_integral_normalization():
    rng = np.random.default_rng(1)
    beta, alpha = rng.uniform(0, math.pi, 64), rng.uniform(0, 2 * math.pi, 64)
    xyz = o3.angles_to_xyz(torch.tensor(alpha), torch.tensor(beta))
    ref = o3.spherical_harmonics(list(range(LMAX + 1)), xyz, normalize=True, normalization="integral")
    assert np.abs(real_sh(range(LMAX + 1), beta, alpha) - ref.numpy().T).max() < 1e-13


@pytest.mark.parametrize("lmax", [1, 4, LMAX])
def test_grid_orthonormal_exactly_at_exact_size_only(lmax):
    # <Y_a Y_b> has degree 2 lmax: exact needs n_beta >= lmax + 1, n_alpha >= 2 lmax + 1
    assert orthonormality_error(lmax, lmax + 1, 2 * lmax + 1) < 1e-13
    assert orthonormality_error(lmax, lmax, 2 * lmax + 1) > 1e-3
    assert orthonormality_error(lmax, lmax + 1, 2 * lmax) > 1e-3


def test_torus_series_is_exact_and_matches_direct_evaluation():
    t = np.linspace(0, 2 * math.pi, 41)  # includes sin t < 0: the torus extension
    q = legendre_q(LMAX, np.cos(t), np.sin(t))
    err = max(np.abs(theta_values(l, m, t) - q[(l, m)]).max() for l in range(LMAX + 1) for m in range(l + 1))
    assert err < 1e-13


def test_beta_integrals_match_fine_quadrature():
    x, w = np.polynomial.legendre.leggauss(400)
    t, w = (x + 1) * math.pi / 2, w * math.pi / 2  # smooth integrand on [0, pi]: converged to ~1e-15
    q = legendre_q(8, np.cos(t), np.sin(t))
    u = np.arange(-10, 11)
    for l in range(9):
        for m in range(l + 1):
            num = (np.exp(1j * np.outer(u, t)) * (q[(l, m)] * np.sin(t) * w)).sum(1)
            assert np.abs(beta_integrals(l, m, 10) - num).max() < 1e-13, (l, m)


@pytest.mark.parametrize("lmax", [2, 5])
def test_torus_tables_project_exactly(lmax):
    n = 4 * lmax + 1
    vals = torus_tables(range(lmax + 1), n, n, 2 * lmax, analysis=False)
    proj = torus_tables(range(lmax + 1), n, n, 2 * lmax, analysis=True)
    assert np.abs(proj @ vals.T - np.eye(vals.shape[0])).max() < 1e-13


def test_gaunt_coefficients_equal_triple_integrals():
    # the fact the sparse form rests on, checked here by quadrature, independently of it
    ls = range(4)
    y, w = grid_tables(ls, 8, 15)
    off = {l: l * l for l in ls}
    for l1 in ls:
        for l2 in ls:
            for l3 in range(abs(l1 - l2), min(l1 + l2, 3) + 1):
                a, b, c = (y[off[l]: off[l] + 2 * l + 1] for l in (l1, l2, l3))
                num = np.einsum("ip,jp,kp,p->ijk", a, b, c, w)
                ref = gaunt_factor(l1, l2, l3) * dense_coupling(l1, l2, l3)
                assert np.abs(num - ref).max() < 1e-13, (l1, l2, l3)


def test_problem_structure():
    p = GauntProblem("4x1o", "4x1o", lmax_out=2)
    assert str(p.irreps_out) == "4x0e+4x1o+4x2e"
    assert p.paths == ((1, 1, 0), (1, 1, 2)) and p.active("out") == {0, 2}
    assert p.grid_size == (3, 5)
    assert GauntProblem("0o+1e", "0e+1o").irreps_out == GauntProblem("0o+1e", "0e+1o", "1x0o+1x1e+1x2o").irreps_out
    assert GauntProblem.from_key(p.key) == p
    assert p.replace(implementation="fft").grid_size == (5, 5)
    assert derivative_spec("out:x1,x2", 0) == "x1:x2,out" and derivative_spec("x1:x2,out", 1) == "out:x2,x1"
    cg = p.cg_problem()
    assert [round(i.coefficient, 12) for i in cg.instructions] == [round(gaunt_factor(1, 1, l), 12) for l in (0, 2)]
    assert GauntProblem("3x0e", "0e", normalization="integral").coefficient(0, 0, 0) == pytest.approx(1.0)


def test_size_rule_and_flops():
    small = GauntProblem("8x0e+8x1o+8x2e+8x3o", "0e+1o", lmax_out=3)
    big = GauntProblem("8x0e+8x1o+8x2e+8x3o+8x4e", "0e+1o", lmax_out=4)
    assert size_rule(small) == "sparse" and size_rule(big) == "grid"
    p = GauntProblem("0e+1o+2e", "0e+1o+2e", lmax_out=4)
    assert p.flops("sparse") == 486  # design notes, section 3: L = 2
    nb, na = p.grid_size
    assert p.flops("grid") == 2 * 18 * nb * na + nb * na + 2 * nb * na * 25


@pytest.mark.parametrize("args, kw, words", [
    (("4x0e+4x1o", "3x0e+3x1o"), {}, ["irreps_in2", "multiplicity"]),
    (("0e+13o", "0e"), {}, ["irreps_in1", "13", "12"]),
    (("0e", "0e"), {"lmax_out": 13}, ["lmax_out"]),
    (("0e+1o", "0e+1o"), {"implementation": "fast"}, ["implementation", "fast"]),
    (("0e+1e", "0e"), {}, ["irreps_in1", "parit"]),
    (("0e+0e", "0e"), {}, ["irreps_in1", "once"]),
    (("2x0e+2x1o", "0e"), {"irreps_out": "2x0o+2x1e"}, ["irreps_out", "p3 = p1 p2"]),
    (("2x0e+2x1o", "0e"), {"irreps_out": "2x0e+2x1e"}, ["irreps_out", "parit"]),
    (("2x0e+2x1o", "0e"), {"irreps_out": "3x0e"}, ["irreps_out", "multiplicity"]),
    (("0e+1o", "0e"), {"irreps_out": "0e", "lmax_out": 1}, ["irreps_out", "lmax_out"]),
    (("0e+1o", "0e"), {"normalization": "component"}, ["normalization"]),
    (("0e+1o", "0e"), {"grid": (3, 0)}, ["grid"]),
    (("0e+7o", "0e+6e"), {}, ["lmax_out", "13"]),
])
def test_problem_errors_name_the_argument(args, kw, words):
    with pytest.raises(GauntError) as e:
        GauntProblem(*args, **kw)
    for word in words:
        assert word in str(e.value), (word, str(e.value))
