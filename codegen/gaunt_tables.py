"""Float64 tables for the grid, fft and separable Gaunt implementations (numpy only, no torch).

Basis: e3nn's real spherical harmonics with ``normalization="integral"`` (orthonormal on the
sphere), polar axis y: at ``x = (sin b sin a, cos b, sin b cos a)``,
``Y_lm = Q_l^|m|(cos b) * S_m(a)`` with ``S_m = sqrt2 sin(|m| a)`` (m < 0), ``1`` (m = 0),
``sqrt2 cos(m a)`` (m > 0) and ``Q_l^m`` the orthonormalized associated Legendre function
without the Condon-Shortley phase (e3nn's ``_sympy_legendre``).

*grid* (Xie et al. 2025): Gauss-Legendre nodes in ``cos b`` times a uniform grid in ``a``.
With ``D`` the largest ``l1 + l2 + l3``, the product of three harmonics is a polynomial of
degree ``<= D`` in ``cos b`` after the ``a`` sum, so ``n_beta >= ceil((D + 1) / 2)`` and
``n_alpha >= D + 1`` make the quadrature exact; one point fewer is not.

*fft* (Luo et al. 2024): on the torus ``(t, a) in [0, 2pi)^2`` the harmonics are trigonometric
polynomials ``Q_l^m(cos t) = sum_u q_u e^{iut}`` (``sin t`` kept signed), ``|u| <= l``; their
coefficients are exact rationals here. The product of two functions has ``|u| <= L1 + L2``, so
a uniform ``N_t >= 2(L1+L2)+1`` torus recovers its 2D Fourier coefficients without wrap-around
(a DFT); the projection back to a harmonic is ``sum_u H_u z_u`` with the beta integral
``z_u = int_0^pi e^{iut} Q_l^m(cos t) sin t dt`` done analytically (``int_0^pi e^{int} dt`` is
``pi``, ``0`` or ``2i/n``). The DFTs are folded into the tables in float64, so the kernel is again
evaluate -> multiply -> project, on the torus.

Example:
    >>> import numpy as np
    >>> t, w = grid_tables([0, 1, 2], 3, 5)  # values [9, 15] and quadrature weights [15]
    >>> bool(np.allclose((t * w) @ t.T, np.eye(9), atol=1e-14))
    True
"""

from __future__ import annotations

import math
from fractions import Fraction
from functools import lru_cache

import numpy as np


def lm_list(ls) -> list:
    """``[(l, m), ...]`` in e3nn order (degrees as given, ``m = -l..l``)."""
    return [(l, m) for l in ls for m in range(-l, l + 1)]


def legendre_q(lmax: int, z, y) -> dict:
    """``{(l, m): Q_l^m}`` for ``0 <= m <= l <= lmax`` at ``cos = z``, ``sin = y`` (arrays).

    Standard stable recurrences of the orthonormalized functions; ``y`` may be negative (the
    torus extension), which keeps every ``Q_l^m(cos t)`` a trigonometric polynomial in ``t``.
    """
    z, y = np.asarray(z, dtype=np.float64), np.asarray(y, dtype=np.float64)
    q = {(0, 0): np.full(z.shape, math.sqrt(1 / (4 * math.pi)))}
    for m in range(1, lmax + 1):
        q[(m, m)] = math.sqrt((2 * m + 1) / (2 * m)) * y * q[(m - 1, m - 1)]
    for m in range(0, lmax):
        q[(m + 1, m)] = math.sqrt(2 * m + 3) * z * q[(m, m)]
        for l in range(m + 2, lmax + 1):
            a = math.sqrt((4 * l * l - 1) / (l * l - m * m))
            b = math.sqrt(((l - 1) ** 2 - m * m) / (4 * (l - 1) ** 2 - 1))
            q[(l, m)] = a * (z * q[(l - 1, m)] - b * q[(l - 2, m)])
    return q


def alpha_part(m: int, a):
    """e3nn's ``S_m(a)``."""
    a = np.asarray(a, dtype=np.float64)
    if m < 0:
        return math.sqrt(2) * np.sin(-m * a)
    if m == 0:
        return np.ones_like(a)
    return math.sqrt(2) * np.cos(m * a)


def real_sh(ls, beta, alpha) -> np.ndarray:
    """Values ``[K, n]`` of the harmonics of degrees ``ls`` at angle arrays ``beta, alpha [n]``."""
    beta, alpha = np.asarray(beta, dtype=np.float64), np.asarray(alpha, dtype=np.float64)
    q = legendre_q(max(ls, default=0), np.cos(beta), np.sin(beta))
    return np.stack([q[(l, abs(m))] * alpha_part(m, alpha) for l, m in lm_list(ls)]).reshape(-1, beta.size)


def exact_grid_size(d: int) -> tuple:
    """Smallest exact ``(n_beta, n_alpha)`` for a trilinear integrand of total degree ``d``."""
    return (d + 2) // 2, d + 1


def gauss_legendre_grid(n_beta: int, n_alpha: int) -> tuple:
    """``(beta, alpha, weight)``, flat over ``n_beta x n_alpha`` points, beta-major; the
    weights sum to ``4 pi``."""
    x, wx = np.polynomial.legendre.leggauss(n_beta)
    a = 2 * math.pi * np.arange(n_alpha) / n_alpha
    beta = np.repeat(np.arccos(x), n_alpha)
    alpha = np.tile(a, n_beta)
    return beta, alpha, np.repeat(wx, n_alpha) * (2 * math.pi / n_alpha)


def grid_tables(ls, n_beta: int, n_alpha: int) -> tuple:
    """``(values [K, P], weights [P])`` of degrees ``ls`` on the Gauss-Legendre grid."""
    beta, alpha, w = gauss_legendre_grid(n_beta, n_alpha)
    return real_sh(ls, beta, alpha), w


# -- fft: exact Fourier series in the polar angle ---------------------------------------------------


@lru_cache(maxsize=None)
def _legendre_derivative(l: int, m: int) -> tuple:
    """Rational coefficients (ascending powers of z) of ``d^m P_l / dz^m`` (Rodrigues)."""
    # (z^2 - 1)^l = sum_k C(l,k) (-1)^(l-k) z^(2k); differentiate l + m times, divide by 2^l l!
    c = [Fraction(0)] * (2 * l + 1)
    for k in range(l + 1):
        c[2 * k] = Fraction(math.comb(l, k) * (-1) ** (l - k))
    for _ in range(l + m):
        c = [c[i] * i for i in range(1, len(c))] or [Fraction(0)]
    return tuple(x / (2**l * math.factorial(l)) for x in c)


def _laurent_mul(a: dict, b: dict) -> dict:
    out: dict = {}
    for i, x in a.items():
        for j, y in b.items():
            out[i + j] = out.get(i + j, 0) + x * y
    return {k: v for k, v in out.items() if v != 0}


@lru_cache(maxsize=None)
def theta_series(l: int, m: int) -> tuple:
    """``(unit, {u: Fraction})`` with ``Q_l^m(cos t) / N_lm = unit * sum_u c_u e^{iut}``, exact.

    ``unit`` is ``i^(-m)`` as a complex number (sin^m t brings ``(2i)^-m``); ``N_lm`` is the
    float normalization of :func:`q_norm`.
    """
    cos = {1: Fraction(1, 2), -1: Fraction(1, 2)}
    sin_i = {1: Fraction(1, 2), -1: Fraction(-1, 2)}  # i * sin t = (w - 1/w) / 2
    poly: dict = {}
    power = {0: Fraction(1)}  # cos^k t
    for ck in _legendre_derivative(l, m):
        for e, v in power.items():
            poly[e] = poly.get(e, 0) + ck * v
        power = _laurent_mul(power, cos)
    for _ in range(m):
        poly = _laurent_mul(poly, sin_i)
    return (1, -1j, -1, 1j)[m % 4], {k: v for k, v in poly.items() if v != 0}


def q_norm(l: int, m: int) -> float:
    return math.sqrt((2 * l + 1) / (4 * math.pi) * math.factorial(l - m) / math.factorial(l + m))


def theta_values(l: int, m: int, t) -> np.ndarray:
    """``Q_l^m(cos t)`` evaluated from its exact Fourier series (real)."""
    unit, c = theta_series(l, m)
    t = np.asarray(t, dtype=np.float64)
    s = sum(float(v) * np.exp(1j * u * t) for u, v in c.items())
    return np.real(unit * s) * q_norm(l, m)


def beta_integrals(l: int, m: int, umax: int) -> np.ndarray:
    """``z_u = int_0^pi e^{iut} Q_l^m(cos t) sin t dt`` for ``u = -umax..umax`` (complex),
    summed exactly in rationals and pi before one rounding per entry."""
    unit, c = theta_series(l, m)
    sc = _laurent_mul(c, {1: Fraction(1, 2), -1: Fraction(-1, 2)})  # times i sin t
    out = np.zeros(2 * umax + 1, dtype=np.complex128)
    for u in range(-umax, umax + 1):
        pi_part, i_part = Fraction(0), Fraction(0)  # z_u * i / unit = pi_part * pi + i * 2 * i_part
        for s, v in sc.items():
            n = u + s
            if n == 0:
                pi_part += v
            elif n % 2:
                i_part += v / n
        out[u + umax] = unit * (float(pi_part) * math.pi + 2j * float(i_part)) / 1j * q_norm(l, m)
    return out


def torus_tables(ls, n_theta: int, n_phi: int, umax: int, analysis: bool) -> np.ndarray:
    """Table ``[K, n_theta * n_phi]`` (theta-major) on the uniform torus.

    ``analysis=False``: the harmonics' values (their Fourier series evaluated at the nodes).
    ``analysis=True``: the projection weights: ``out_k = sum_p table[k, p] h_p`` equals
    ``int_S2 h Y_k`` for every ``h`` whose polar band is ``<= umax`` and azimuthal band
    ``< n_phi - l``; needs ``n_theta >= 2 umax + 1``.
    """
    t = 2 * math.pi * np.arange(n_theta) / n_theta
    a = 2 * math.pi * np.arange(n_phi) / n_phi
    rows = []
    for l, m in lm_list(ls):
        if analysis:
            z = beta_integrals(l, abs(m), umax)
            u = np.arange(-umax, umax + 1)
            th = np.real(np.exp(-1j * np.outer(t, u)) @ z) / n_theta  # inverse DFT folded into z
            ph = alpha_part(m, a) * (2 * math.pi / n_phi)
        else:
            th, ph = theta_values(l, abs(m), t), alpha_part(m, a)
        rows.append(np.outer(th, ph).reshape(-1))
    return np.array(rows).reshape(-1, n_theta * n_phi)


# -- separable: Gauss-Legendre nodes x the exact azimuthal integral ----------------------------------


def node_tables(problem) -> dict:
    """``{role: float64 [n_b, K_role]}`` of a separable ``GauntProblem``: ``Q_l^|m|`` at the
    Gauss-Legendre nodes (e3nn order of the role's coefficients); the output's rows carry
    ``2 pi w_j`` and the normalization scale (:mod:`~tritp.codegen.gaunt_sep`).

    Example:
        >>> from tritp.codegen.gaunt_problem import GauntProblem
        >>> p = GauntProblem("0e+1o", "0e+1o", lmax_out=2, implementation="separable")
        >>> {r: t.shape for r, t in node_tables(p).items()}
        {'x1': (3, 4), 'x2': (3, 4), 'out': (3, 9)}
    """
    nb = problem.grid_size[0]
    z, w = np.polynomial.legendre.leggauss(nb)
    out = {}
    for role in ("x1", "x2", "out"):
        ls = problem.degrees(role)
        q = legendre_q(max(ls), z, np.sqrt(1 - z * z))
        t = np.stack([q[(l, abs(m))] for l, m in lm_list(ls)], axis=1)
        out[role] = t * (2 * math.pi * problem.scale * w)[:, None] if role == "out" else t
    return out


@lru_cache(maxsize=None)
def azimuth_coupling(mmax: int) -> dict:
    """``{(m1, m2, m3): C}`` for ``|m| <= mmax``: the mean over the azimuth of ``S_m1 S_m2 S_m3``,
    nonzero entries only, snapped to their exact values ``1`` and ``+-1/sqrt2`` (a uniform
    quadrature of ``3 mmax + 1`` points is exact for these products; the snap is checked).

    Example:
        >>> c = azimuth_coupling(1)
        >>> c[(0, 0, 0)], c[(1, 1, 0)], round(c[(1, 1, 1)] if (1, 1, 1) in c else 0.0, 6)
        (1.0, 1.0, 0.0)
    """
    n = 3 * mmax + 1
    a = 2 * math.pi * np.arange(n) / n
    s = {m: alpha_part(m, a) for m in range(-mmax, mmax + 1)}
    exact = (1.0, -1.0, math.sqrt(0.5), -math.sqrt(0.5))
    out = {}
    for m1 in s:
        for m2 in s:
            p12 = s[m1] * s[m2]
            for m3 in s:
                v = float(np.mean(p12 * s[m3]))
                if abs(v) < 1e-9:
                    continue
                snapped = min(exact, key=lambda e: abs(e - v))
                if abs(snapped - v) > 1e-9:
                    raise AssertionError(f"azimuthal coupling {(m1, m2, m3)} = {v} is not 1 or 1/sqrt2")
                out[(m1, m2, m3)] = snapped
    return out


def orthonormality_error(lmax: int, n_beta: int, n_alpha: int) -> float:
    """``max |Y W Y^T - I|`` on the grid: 0 (to rounding) when ``n_beta > lmax``, ``n_alpha > 2 lmax``."""
    y, w = grid_tables(range(lmax + 1), n_beta, n_alpha)
    return float(np.abs((y * w) @ y.T - np.eye(y.shape[0])).max())
