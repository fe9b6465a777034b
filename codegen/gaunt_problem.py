"""The frozen description of one Gaunt tensor product (design notes, section 3).

Two spherical functions per channel, given by their real spherical-harmonic coefficients
(e3nn's basis, orthonormal on the sphere), multiplied pointwise; the result is projected back
onto the harmonics up to the output degrees::

    out[c, l3] = s * sum over l1+l2+l3 even of c(l1,l2,l3) * W^{l1 l2 l3} x1[c, l1] x2[c, l2]

with ``c`` the Gaunt factor (:func:`~tritp.codegen.coupling.gaunt_factor`), ``W`` e3nn's
``wigner_3j`` and ``s = 1`` (``normalization="orthonormal"``: coefficients of the product
function) or ``s = sqrt(4 pi)`` (``"integral"``, e3nn-jax's s2grid convention, where a function
is ``sum c_lm sqrt(4 pi) Y_lm``: its ``l = 0`` coefficient is the mean over the sphere).

An input's segments are its degrees, each once, increasing, all with one multiplicity: the
channel count ``C``, or 1 to broadcast over the channels. Parities follow one rule
``p = s (-1)^l`` per input (``s = -1``: a pseudo function), and the output's is ``s1 s2 (-1)^l``,
so ``p3 = p1 p2`` on every path. Output degrees that no even-sum path reaches are exactly zero.

Example:
    >>> p = GauntProblem("8x0e+8x1o", "0e+1o", lmax_out=2)
    >>> str(p.irreps_out), p.channels, p.paths
    ('8x0e+8x1o+8x2e', 8, ((0, 0, 0), (0, 1, 1), (1, 0, 1), (1, 1, 0), (1, 1, 2)))
    >>> p.grid_size  # n_beta x n_alpha, exact for l1 + l2 + l3 <= 4
    (3, 5)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cached_property

from .coupling import LMAX_SUPPORTED, gaunt_factor, sparse_coupling
from .gaunt_tables import exact_grid_size
from .irreps import Irreps, as_irreps
from .problem import Problem

IMPLEMENTATIONS = ("sparse", "fft", "grid", "separable")
NORMALIZATIONS = ("orthonormal", "integral")
PRECISIONS = ("ieee", "tf32", "tf32x3")
ROLES = ("x1", "x2", "out")
FORWARD = "out:x1,x2"
KEY_VERSION = 1
SPARSE_MAX_L = 3  # the documented size rule: see size_rule


class GauntError(ValueError):
    """An invalid Gaunt product description; the message names the argument."""


def _spherical(irreps, name: str) -> tuple:
    """``(mul, degrees, s)`` of one spherical-function irreps, or a GauntError naming ``name``."""
    irreps = as_irreps(irreps, name)
    if not irreps or any(m == 0 for m, _ in irreps):
        raise GauntError(f"{name}: expected degrees with a positive multiplicity, got {str(irreps)!r}")
    muls = {m for m, _ in irreps}
    if len(muls) != 1:
        raise GauntError(f"{name}: every degree needs the same multiplicity (the channels), got {irreps}")
    ls = [ir.l for _, ir in irreps]
    if ls != sorted(set(ls)):
        raise GauntError(f"{name}: degrees must increase and appear once (one function per channel), got {irreps}")
    if ls[-1] > LMAX_SUPPORTED:
        raise GauntError(f"{name}: degree {ls[-1]} exceeds the supported maximum {LMAX_SUPPORTED}")
    signs = {ir.p * (-1) ** ir.l for _, ir in irreps}
    if len(signs) != 1:
        raise GauntError(f"{name}: parities must follow one rule p = s*(-1)^l (e.g. 0e+1o+2e, or 0o+1e+2o "
                         f"for a pseudo function), got {irreps}")
    return muls.pop(), tuple(ls), signs.pop()


def _build(mul: int, ls, s: int) -> Irreps:
    return Irreps([(mul, (l, s * (-1) ** l)) for l in ls])


@dataclass(frozen=True, init=False)
class GauntProblem:
    """Inputs, output degrees, normalization and implementation of a Gaunt product.

    ``implementation`` is one of ``sparse``, ``fft``, ``grid``, ``separable`` (``auto`` is
    resolved by :mod:`tritp.gaunt`); ``grid`` overrides the exact ``(n_beta, n_alpha)`` (grid;
    separable reads ``n_beta`` only, its azimuthal integral is exact in closed form, though
    ``n_alpha`` stays part of the key) or
    ``(n_theta, n_phi)`` (fft) sizes, for experiments only: smaller is wrong. ``precision`` is
    the ``tl.dot`` input precision for fp32 on a GPU (``ieee`` is exact fp32); sparse and
    separable have no ``tl.dot``, so a separable problem always records ``ieee``.
    """

    irreps_in1: Irreps
    irreps_in2: Irreps
    irreps_out: Irreps
    normalization: str
    implementation: str
    grid: tuple
    precision: str

    def __init__(self, irreps_in1, irreps_in2, irreps_out=None, *, lmax_out=None, normalization="orthonormal",
                 implementation="grid", grid=None, precision="ieee"):
        m1, ls1, s1 = _spherical(irreps_in1, "irreps_in1")
        m2, ls2, s2 = _spherical(irreps_in2, "irreps_in2")
        if m1 != m2 and 1 not in (m1, m2):
            raise GauntError(f"irreps_in2: multiplicity {m2} does not match irreps_in1's {m1}; give equal "
                             "channels, or multiplicity 1 to broadcast one input over the channels")
        c = max(m1, m2)
        if irreps_out is not None and lmax_out is not None:
            raise GauntError("give irreps_out or lmax_out, not both")
        if irreps_out is None:
            if lmax_out is None:
                lmax_out = ls1[-1] + ls2[-1]
                if lmax_out > LMAX_SUPPORTED:
                    raise GauntError(f"lmax_out: the full product has degree {lmax_out} > {LMAX_SUPPORTED}; "
                                     f"pass lmax_out <= {LMAX_SUPPORTED}")
            if isinstance(lmax_out, bool) or not isinstance(lmax_out, int) or not 0 <= lmax_out <= LMAX_SUPPORTED:
                raise GauntError(f"lmax_out must be an int in 0..{LMAX_SUPPORTED}, got {lmax_out!r}")
            out = _build(c, range(lmax_out + 1), s1 * s2)
        else:
            mo, lso, so = _spherical(irreps_out, "irreps_out")
            out = _build(c, lso, s1 * s2)
            if mo != c:
                raise GauntError(f"irreps_out: multiplicity {mo} must be the channel count {c}")
            if so != s1 * s2:
                raise GauntError(f"irreps_out: parity p3 = p1 p2 on every even path gives {out}, got "
                                 f"{as_irreps(irreps_out, 'irreps_out')}")
        for name, v, ok in (("normalization", normalization, NORMALIZATIONS),
                            ("implementation", implementation, IMPLEMENTATIONS), ("precision", precision, PRECISIONS)):
            if v not in ok:
                raise GauntError(f"{name}={v!r} is not one of {', '.join(map(repr, ok))}")
        if grid is not None:
            if (not isinstance(grid, (tuple, list)) or len(grid) != 2
                    or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in grid)):
                raise GauntError(f"grid must be None or two positive ints, got {grid!r}")
            grid = tuple(grid)
        if implementation == "separable":
            precision = "ieee"  # FMAs only: one key whatever torch's matmul precision
        set_ = object.__setattr__
        set_(self, "irreps_in1", _build(m1, ls1, s1))
        set_(self, "irreps_in2", _build(m2, ls2, s2))
        set_(self, "irreps_out", out)
        set_(self, "normalization", normalization)
        set_(self, "implementation", implementation)
        set_(self, "grid", grid)
        set_(self, "precision", precision)

    # -- identity ------------------------------------------------------------------------------
    @cached_property
    def key(self) -> str:
        """Canonical string (what the torch ops receive); :meth:`from_key` inverts it."""
        return json.dumps({"v": KEY_VERSION, "kind": "gaunt", "in1": str(self.irreps_in1),
                           "in2": str(self.irreps_in2), "out": str(self.irreps_out), "norm": self.normalization,
                           "impl": self.implementation, "grid": self.grid, "prec": self.precision},
                          separators=(",", ":"))

    @classmethod
    def from_key(cls, key: str) -> "GauntProblem":
        d = json.loads(key)
        if d.get("v") != KEY_VERSION or d.get("kind") != "gaunt":
            raise GauntError(f"not a version-{KEY_VERSION} Gaunt problem key: {key[:80]!r}")
        return cls(d["in1"], d["in2"], d["out"], normalization=d["norm"], implementation=d["impl"],
                   grid=d["grid"], precision=d["prec"])

    def __eq__(self, other) -> bool:
        return isinstance(other, GauntProblem) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return (f"GauntProblem({self.irreps_in1} x {self.irreps_in2} -> {self.irreps_out}, "
                f"{self.implementation}, {self.normalization})")

    def replace(self, **changes) -> "GauntProblem":
        kw = dict(irreps_in1=self.irreps_in1, irreps_in2=self.irreps_in2, irreps_out=self.irreps_out,
                  normalization=self.normalization, implementation=self.implementation, grid=self.grid,
                  precision=self.precision)
        kw.update(changes)
        return GauntProblem(**kw)

    # -- structure -----------------------------------------------------------------------------
    def irreps(self, role: str) -> Irreps:
        return {"x1": self.irreps_in1, "x2": self.irreps_in2, "out": self.irreps_out}[role]

    def degrees(self, role: str) -> tuple:
        return tuple(ir.l for _, ir in self.irreps(role))

    def mul(self, role: str) -> int:
        return self.irreps(role)[0].mul

    @property
    def channels(self) -> int:
        return self.irreps_out[0].mul

    @cached_property
    def paths(self) -> tuple:
        """``(l1, l2, l3)`` with the triangle rule and ``l1 + l2 + l3`` even."""
        return tuple((a, b, c) for a in self.degrees("x1") for b in self.degrees("x2") for c in self.degrees("out")
                     if abs(a - b) <= c <= a + b and (a + b + c) % 2 == 0)

    def active(self, role: str) -> frozenset:
        """Degrees of ``role`` that some path uses; the others are exactly zero (or unused)."""
        return frozenset(p[ROLES.index(role)] for p in self.paths)

    def lmax_active(self, role: str) -> int:
        return max(self.active(role), default=0)

    @property
    def scale(self) -> float:
        return math.sqrt(4 * math.pi) if self.normalization == "integral" else 1.0

    def coefficient(self, l1: int, l2: int, l3: int) -> float:
        return self.scale * gaunt_factor(l1, l2, l3)

    @property
    def exact_grid(self) -> tuple:
        """grid and separable: Gauss-Legendre ``(n_beta, n_alpha)`` for ``D = L1 + L2 + Lo``
        (active degrees); fft: torus ``(2(L1+L2)+1, 2(L1+L2)+1)``; sparse: None."""
        l1, l2, lo = (self.lmax_active(r) for r in ROLES)
        if self.implementation in ("grid", "separable"):
            return exact_grid_size(l1 + l2 + lo)
        if self.implementation == "fft":
            return (2 * (l1 + l2) + 1,) * 2
        return None

    @property
    def grid_size(self) -> tuple:
        return self.grid if self.grid is not None else self.exact_grid

    # -- the sparse form -----------------------------------------------------------------------
    def cg_problem(self) -> Problem:
        """The same product as a CG :class:`Problem`: uuu paths (uvu / uvv when input 2 / 1 is
        broadcast), no weights, no normalization, path weight ``coefficient**2``."""
        m1, m2 = self.mul("x1"), self.mul("x2")
        mode = "uuu" if m1 == m2 else ("uvu" if m2 == 1 else "uvv")
        d1, d2, do = (self.degrees(r) for r in ROLES)
        ins = [(d1.index(a), d2.index(b), do.index(c), mode, False, self.coefficient(a, b, c) ** 2)
               for a, b, c in self.paths]
        return Problem(self.irreps_in1, self.irreps_in2, self.irreps_out, ins, irrep_normalization="none",
                       path_normalization="none")

    # -- cost ----------------------------------------------------------------------------------
    def flops(self, implementation: str = None) -> int:
        """Forward FLOPs per (sample, channel): sparse ``3 * nonzeros``; grid and fft
        ``2 (K1 + K2) P + P + 2 P Ko`` (two synthesis GEMMs, product, analysis GEMM);
        separable: two per arithmetic operation of its kernel in one pass
        (:func:`~tritp.codegen.gaunt_sep.flops`)."""
        impl = implementation or self.implementation
        if impl == "sparse":
            return 3 * sum(len(sparse_coupling(*p)) for p in self.paths)
        p = self if impl == self.implementation else self.replace(implementation=impl, grid=None)
        if impl == "separable":
            from .gaunt_sep import flops

            return flops(p)
        nb, na = p.grid_size
        k1, k2, ko = (sum(2 * l + 1 for l in self.degrees(r)) for r in ROLES)
        return 2 * (k1 + k2) * nb * na + nb * na + 2 * nb * na * ko


def size_rule(problem: GauntProblem) -> str:
    """The documented choice when nothing is tuned: ``sparse`` while every active degree is
    <= 3, else ``grid``. Counted FLOPs favour sparse longer (design table: L=6 sparse 37k vs
    grid 40k), but the sparse kernel unrolls O(L^5) literals (2229 nonzeros at L=4: long
    compiles, register spills) while the grid's O(L^4) work is three dense GEMMs on tensor
    cores; fft does the grid's work on a torus about twice as large, so the rule never picks it."""
    lmax = max(problem.lmax_active(r) for r in ROLES)
    return "sparse" if lmax <= SPARSE_MAX_L else "grid"


# -- producer specs: "target:role_a,role_b" -------------------------------------------------------
def parse_spec(spec: str) -> tuple:
    """``"x1:x2,out"`` -> ``("x1", ("x2", "out"))``."""
    target, _, roles = spec.partition(":")
    roles = tuple(roles.split(","))
    if target not in ROLES or len(roles) != 2 or sorted(roles + (target,)) != sorted(ROLES):
        raise GauntError(f"malformed Gaunt producer spec {spec!r}")
    return target, roles


def derivative_spec(spec: str, i: int) -> str:
    """The producer of ``d/d tensor_i`` of ``spec``: its arguments are the other tensor and the
    cotangent of this producer's output (in that order). The product is trilinear, so every
    derivative of every order is again one producer."""
    target, roles = parse_spec(spec)
    return f"{roles[i]}:{roles[1 - i]},{target}"
