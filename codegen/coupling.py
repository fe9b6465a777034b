"""Exact real-basis coupling coefficients, equal to ``e3nn.o3.wigner_3j`` sign included.

Derivation (the sign rule is derived, not guessed): e3nn builds its real coupling tensor as
``C_real[j,k,n] = sum Q1[a,j] Q2[b,k] conj(Q3[c,n]) CG[a,b,c] / |C|`` where CG is the
Condon-Shortley SU(2) Clebsch-Gordan tensor (Racah's formula) and ``Q_l`` is e3nn's
real-to-complex change of basis, including its ``(-i)^l`` phase. We do exactly that, in exact
arithmetic. Every complex CG entry is ``s * sqrt(F)`` with F rational; every Q entry is a
Gaussian-integer phase times ``2^(-1/2)`` or 1. In the real basis each entry collects at most
two CG entries of equal magnitude (the pair ``(m1, m2, m3)`` and ``(-m1, -m2, -m3)``), so the
result is again ``sign * sqrt(rational)``: we keep it as ``(sign, Fraction)`` -- exact, and
``sympy.sqrt(Rational)`` on demand. Since the Q are unitary and each column of CG has norm 1,
``|C|^2 = 2 l3 + 1`` exactly.

Example:
    >>> from tritp.codegen.coupling import sparse_coupling
    >>> [(m1, m2, m3, round(c, 6)) for m1, m2, m3, c in sparse_coupling(1, 1, 0)]
    [(0, 0, 0, 0.57735), (1, 1, 0, 0.57735), (2, 2, 0, 0.57735)]
"""

from __future__ import annotations

import math
from fractions import Fraction
from functools import lru_cache

from .tables import coupling_table

LMAX_SUPPORTED = 12


@lru_cache(maxsize=None)
def _fact(n: int) -> int:
    return math.factorial(n)


def su2_cg_squared(j1: int, m1: int, j2: int, m2: int, j3: int, m3: int):
    """Condon-Shortley CG <j1 m1 j2 m2 | j3 m3> as ``(sign, value**2)`` in exact arithmetic.

    Racah's formula, the same one e3nn evaluates in floating point.
    """
    if m3 != m1 + m2 or abs(m1) > j1 or abs(m2) > j2 or abs(m3) > j3:
        return 0, Fraction(0)
    if not abs(j1 - j2) <= j3 <= j1 + j2:
        return 0, Fraction(0)
    f = _fact
    pre = (2 * j3 + 1) * Fraction(
        f(j3 + m3) * f(j3 - m3) * f(j1 + j2 - j3) * f(j1 - j2 + j3) * f(-j1 + j2 + j3),
        f(j1 + m1) * f(j1 - m1) * f(j2 + m2) * f(j2 - m2) * f(j1 + j2 + j3 + 1),
    )
    vmin = max(-j1 + j2 + m3, -j1 + m1, 0)
    vmax = min(j2 + j3 + m1, j3 - j1 + j2, j3 + m3)
    s = Fraction(0)
    for v in range(vmin, vmax + 1):
        s += (-1) ** (v + j2 + m2) * Fraction(
            f(j2 + j3 + m1 - v) * f(j1 - m1 + v),
            f(v) * f(j3 - j1 + j2 - v) * f(j3 + m3 - v) * f(j1 - j2 - m3 + v),
        )
    if s == 0:
        return 0, Fraction(0)
    return (1 if s > 0 else -1), pre * s * s


def _q_column(l: int, col: int):
    """Nonzeros of column ``col`` of e3nn's Q_l as ``(row, phase, halves)``: the entry is
    ``phase * 2**(-halves/2)`` with ``phase`` a Gaussian integer ``(re, im)``."""
    # e3nn: q[l+m, l+|m|] and q[l+m, l-|m|] for each m, then q *= (-i)^l.
    out = []
    for m in range(-l, l + 1):
        row = l + m
        if m < 0:
            entries = {l + abs(m): (1, 0), l - abs(m): (0, -1)}
        elif m == 0:
            entries = {l: (1, 0)}
        else:
            s = (-1) ** m
            entries = {l + m: (s, 0), l - m: (0, s)}
        if col in entries:
            out.append((row, _cmul(entries[col], _ipow(-1, l)), 0 if m == 0 else 1))
    return out


def _ipow(sign: int, n: int):
    """``(sign * i) ** n`` as a Gaussian integer."""
    z = (1, 0)
    for _ in range(n):
        z = _cmul(z, (0, sign))
    return z


def _cmul(a, b):
    return (a[0] * b[0] - a[1] * b[1], a[0] * b[1] + a[1] * b[0])


def exact_real_coupling(l1: int, l2: int, l3: int) -> list:
    """Exact nonzeros of the real coupling tensor, ``[(m1, m2, m3, sign, value**2)]``.

    Indices run over ``0..2l`` (m + l), lexicographic order. ``value = sign * sqrt(value**2)``
    equals ``e3nn.o3.wigner_3j(l1, l2, l3)[m1, m2, m3]``.
    """
    _check_triple(l1, l2, l3)
    cg = {}
    for a in range(2 * l1 + 1):
        for b in range(2 * l2 + 1):
            c = (a - l1) + (b - l2) + l3
            if 0 <= c <= 2 * l3:
                sgn, sq = su2_cg_squared(l1, a - l1, l2, b - l2, l3, c - l3)
                if sgn:
                    cg[(a, b, c)] = (sgn, sq)
    q1 = [_q_column(l1, j) for j in range(2 * l1 + 1)]
    q2 = [_q_column(l2, j) for j in range(2 * l2 + 1)]
    q3 = [_q_column(l3, j) for j in range(2 * l3 + 1)]
    norm2 = 2 * l3 + 1
    out = []
    for j in range(2 * l1 + 1):
        for k in range(2 * l2 + 1):
            for n in range(2 * l3 + 1):
                # terms grouped by the CG magnitude they carry: {F: (Gaussian sum, halves)}
                acc: dict = {}
                for a, pa, ha in q1[j]:
                    for b, pb, hb in q2[k]:
                        for c, pc, hc in q3[n]:
                            e = cg.get((a, b, c))
                            if e is None:
                                continue
                            ph = _cmul(_cmul(pa, pb), (pc[0], -pc[1]))  # conj(Q3)
                            g, h = acc.get(e[1], ((0, 0), ha + hb + hc))
                            acc[e[1]] = ((g[0] + e[0] * ph[0], g[1] + e[0] * ph[1]), h)
                terms = [(f, g, h) for f, (g, h) in acc.items() if g != (0, 0)]
                if not terms:
                    continue
                if len(terms) != 1:  # never seen; the symmetry argument above forbids it
                    raise AssertionError(f"coupling ({l1},{l2},{l3})[{j},{k},{n}] mixes magnitudes")
                f, g, h = terms[0]
                if g[1] != 0:
                    raise AssertionError(f"coupling ({l1},{l2},{l3}) is not real at [{j},{k},{n}]")
                out.append((j, k, n, 1 if g[0] > 0 else -1, f * g[0] * g[0] / (2**h * norm2)))
    return out


def _check_triple(l1: int, l2: int, l3: int) -> None:
    for name, l in (("l1", l1), ("l2", l2), ("l3", l3)):
        if not isinstance(l, int) or l < 0:
            raise ValueError(f"{name} must be a non-negative int, got {l!r}")
        if l > LMAX_SUPPORTED:
            raise ValueError(f"{name}={l} exceeds the supported maximum degree {LMAX_SUPPORTED}")
    if not abs(l1 - l2) <= l3 <= l1 + l2:
        raise ValueError(f"degrees ({l1}, {l2}, {l3}) violate the triangle rule |l1-l2| <= l3 <= l1+l2")


def to_float(sign: int, sq: Fraction) -> float:
    """``sign * sqrt(sq)`` rounded once: float(sq) and sqrt are each correctly rounded."""
    return sign * math.sqrt(float(sq))


def sparse_coupling(l1: int, l2: int, l3: int) -> tuple:
    """Float64 nonzeros ``((m1, m2, m3, c), ...)`` of ``wigner_3j(l1, l2, l3)``, from the
    on-disk table (computed once per machine). Exact zeros are absent by construction."""
    _check_triple(l1, l2, l3)
    return coupling_table(max(l1, l2, l3))[(l1, l2, l3)]


def dense_coupling(l1: int, l2: int, l3: int):
    """Dense float64 numpy array ``[2l1+1, 2l2+1, 2l3+1]`` equal to ``e3nn.o3.wigner_3j``."""
    import numpy as np

    _check_triple(l1, l2, l3)  # before sizing the array: numpy's own error would name no degree
    c = np.zeros((2 * l1 + 1, 2 * l2 + 1, 2 * l3 + 1))
    for m1, m2, m3, v in sparse_coupling(l1, l2, l3):
        c[m1, m2, m3] = v
    return c


def sympy_coupling(l1: int, l2: int, l3: int) -> dict:
    """Exact nonzeros as sympy expressions ``{(m1, m2, m3): sign*sqrt(Rational)}``."""
    import sympy

    return {
        (j, k, n): s * sympy.sqrt(sympy.Rational(f.numerator, f.denominator))
        for j, k, n, s, f in exact_real_coupling(l1, l2, l3)
    }


def gaunt_factor_squared(l1: int, l2: int, l3: int) -> Fraction:
    """``c(l1,l2,l3)**2 * pi`` as an exact Fraction; ``c`` is the Gaunt coefficient of the
    orthonormal real spherical harmonics (design notes, section 3):
    ``c = sqrt((2l1+1)(2l2+1)(2l3+1)/(4 pi)) |(l1 l2 l3; 0 0 0)|``, zero when l1+l2+l3 is odd."""
    _check_triple(l1, l2, l3)
    if (l1 + l2 + l3) % 2:
        return Fraction(0)
    # (l1 l2 l3; 0 0 0)^2 = <l1 0 l2 0 | l3 0>^2 / (2 l3 + 1)
    _, cg2 = su2_cg_squared(l1, 0, l2, 0, l3, 0)
    return Fraction((2 * l1 + 1) * (2 * l2 + 1), 4) * cg2


def gaunt_factor(l1: int, l2: int, l3: int) -> float:
    """The Gaunt factor ``c(l1, l2, l3)`` in float64; ``gaunt_factor(1, 1, 2) = 0.690988...``."""
    return math.sqrt(float(gaunt_factor_squared(l1, l2, l3)) / math.pi)


def gaunt_factor_sympy(l1: int, l2: int, l3: int):
    """The Gaunt factor as an exact sympy expression."""
    import sympy

    f = gaunt_factor_squared(l1, l2, l3)
    return sympy.sqrt(sympy.Rational(f.numerator, f.denominator) / sympy.pi)
