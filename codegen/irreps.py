"""Irreducible representations of O(3) and their direct sums, spelled as e3nn spells them.

Torch-free on purpose: everything the code generator reasons about is plain ints and tuples,
so Dynamo can guard on it and nothing here needs a GPU.

Example:
    >>> from tritp.codegen import Irreps
    >>> x = Irreps("128x0e + 128x1o")
    >>> x.dim, x.lmax, str(x)
    (512, 1, '128x0e+128x1o')
"""

from __future__ import annotations

import re
from typing import Iterator, NamedTuple

_INT = re.compile(r"\s*(\d+)\s*$")
_IRREP = re.compile(r"\s*(\d+)([eoy])\s*$")


class _IrrepTuple(NamedTuple):
    l: int  # noqa: E741
    p: int


class Irrep(_IrrepTuple):
    """One irrep of O(3): degree ``l >= 0`` and parity ``p`` in {+1, -1}.

    Built from ``"1o"`` (parity ``e``, ``o``, or ``y`` = (-1)^l), from ``(l, p)``, from
    another Irrep or from an e3nn ``Irrep``.

    Example:
        >>> Irrep("1o"), Irrep(2, 1), Irrep("3y")
        (Irrep('1o'), Irrep('2e'), Irrep('3o'))
    """

    __slots__ = ()

    def __new__(cls, l, p=None):
        if p is None:
            if isinstance(l, Irrep):
                return l
            if isinstance(l, str):
                m = _IRREP.match(l)
                if m is None:
                    raise ValueError(
                        f"invalid irrep {l!r}: expected a degree and a parity such as '0e', '1o' or '2y'"
                    )
                deg = int(m.group(1))
                return super().__new__(cls, deg, {"e": 1, "o": -1, "y": (-1) ** deg}[m.group(2)])
            if hasattr(l, "l") and hasattr(l, "p"):  # e3nn's Irrep
                l, p = int(l.l), int(l.p)
            elif isinstance(l, tuple) and len(l) == 2:
                l, p = l
            else:
                raise TypeError(f"cannot interpret {l!r} as an irrep: give a string like '1o' or a pair (l, p)")
        if not isinstance(l, int) or isinstance(l, bool) or l < 0:
            raise ValueError(f"irrep degree l must be a non-negative int, got {l!r}")
        if p not in (-1, 1):
            raise ValueError(f"irrep parity p must be +1 or -1, got {p!r}")
        return super().__new__(cls, int(l), int(p))

    @classmethod
    def parse(cls, x) -> "Irrep":
        """Same as ``Irrep(x)``."""
        return cls(x)

    def __repr__(self) -> str:
        return f"Irrep('{self}')"

    def __getnewargs__(self):
        return (self.l, self.p)

    @property
    def dim(self) -> int:
        return 2 * self.l + 1

    def __str__(self) -> str:
        return f"{self.l}{'e' if self.p == 1 else 'o'}"

    def __mul__(self, other: "Irrep") -> Iterator["Irrep"]:
        """Selection rule: the irreps in ``self (x) other``, by increasing degree."""
        other = Irrep.parse(other)
        p = self.p * other.p
        for l in range(abs(self.l - other.l), self.l + other.l + 1):
            yield Irrep(l, p)

    def couples(self, other: "Irrep", out: "Irrep") -> bool:
        """True when ``out`` appears in ``self (x) other`` (triangle and parity rules)."""
        return (
            abs(self.l - other.l) <= out.l <= self.l + other.l and self.p * other.p == out.p
        )


class MulIr(NamedTuple):
    """``mul`` copies of one irrep: a segment of an :class:`Irreps`."""

    mul: int
    ir: Irrep

    @property
    def dim(self) -> int:
        return self.mul * self.ir.dim

    def __str__(self) -> str:
        return f"{self.mul}x{self.ir}"


def _parse_string(text: str) -> list:
    out = []
    if text.strip() == "":
        return out
    pos = 0
    for token in text.split("+"):
        where = f"token {token!r} at position {pos} of {text!r}"
        if "x" in token:
            parts = token.split("x")
            if len(parts) != 2:
                raise ValueError(f"invalid irreps string: {where} has more than one 'x'")
            m = _INT.match(parts[0])
            if m is None:
                raise ValueError(
                    f"invalid irreps string: {where}: multiplicity {parts[0]!r} is not a non-negative integer"
                )
            mul, ir_text = int(m.group(1)), parts[1]
        else:
            mul, ir_text = 1, token
        if _IRREP.match(ir_text) is None:
            raise ValueError(
                f"invalid irreps string: {where}: expected an irrep like '0e', '1o' or '2y', got {ir_text.strip()!r}"
            )
        out.append(MulIr(mul, Irrep.parse(ir_text)))
        pos += len(token) + 1
    return out


class Irreps(tuple):
    """A direct sum of irreps, ``"128x0e+128x1o"``; a tuple of :class:`MulIr`.

    Accepts what ``e3nn.o3.Irreps`` accepts: a string, another Irreps (tritp's or e3nn's), one
    Irrep, or an iterable of ``(mul, ir)`` pairs / irrep strings.

    Example:
        >>> Irreps("2x1e + 0e").simplify()
        Irreps('2x1e+1x0e')
        >>> Irreps("0e + 1o").slices()
        [slice(0, 1, None), slice(1, 4, None)]
    """

    def __new__(cls, irreps=None):
        if isinstance(irreps, Irreps):
            return super().__new__(cls, irreps)
        if irreps is None:
            items: list = []
        elif isinstance(irreps, str):
            items = _parse_string(irreps)
        elif isinstance(irreps, Irrep) or (hasattr(irreps, "l") and hasattr(irreps, "p")):
            items = [MulIr(1, Irrep(irreps))]  # one irrep, ours or e3nn's
        else:
            items = [cls._item(x) for x in irreps]
        return super().__new__(cls, items)

    @staticmethod
    def _item(x) -> MulIr:
        if isinstance(x, MulIr):
            return x
        if isinstance(x, (str, Irrep)):
            return MulIr(1, Irrep.parse(x))
        if hasattr(x, "mul") and hasattr(x, "ir"):  # e3nn's _MulIr
            return MulIr(int(x.mul), Irrep.parse(x.ir))
        if hasattr(x, "l") and hasattr(x, "p"):
            return MulIr(1, Irrep.parse(x))
        if isinstance(x, (tuple, list)) and len(x) == 2:
            mul, ir = x
            if not isinstance(mul, int) or isinstance(mul, bool) or mul < 0:
                raise ValueError(f"multiplicity must be a non-negative int, got {mul!r} in {x!r}")
            return MulIr(mul, Irrep.parse(ir))
        raise ValueError(f"unable to interpret {x!r} as a (mul, irrep) pair")

    # -- sizes -------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return sum(m.dim for m in self)

    @property
    def num_irreps(self) -> int:
        return sum(m.mul for m in self)

    @property
    def lmax(self) -> int:
        """Largest degree among irreps actually present (multiplicity > 0), as e3nn."""
        ls = [m.ir.l for m in self if m.mul > 0]
        if not ls:
            raise ValueError("lmax of an empty Irreps is undefined")
        return max(ls)

    @property
    def ls(self) -> list:
        return [m.ir.l for m in self for _ in range(m.mul)]

    def offsets(self) -> list:
        """Start offset of each segment in a flat ``mul_ir`` (or ``ir_mul``) vector."""
        out, o = [], 0
        for m in self:
            out.append(o)
            o += m.dim
        return out

    def slices(self) -> list:
        return [slice(o, o + m.dim) for o, m in zip(self.offsets(), self)]

    # -- algebra -----------------------------------------------------------------------------
    def simplify(self) -> "Irreps":
        """Merge neighbouring segments of the same irrep and drop empty ones (as e3nn)."""
        out: list = []
        for mul, ir in self:
            if out and out[-1][1] == ir:
                out[-1] = (out[-1][0] + mul, ir)
            elif mul > 0:
                out.append((mul, ir))
        return Irreps(out)

    def sort(self):
        """Sort by (l, p) as e3nn does; returns ``(irreps, p, inv)`` with e3nn's meaning:
        ``p[i_old] = i_new`` and ``inv[i_new] = i_old``."""
        key = [(ir.l, ir.p, i) for i, (_, ir) in enumerate(self)]
        inv = tuple(i for _, _, i in sorted(key))
        p = [0] * len(inv)
        for new, old in enumerate(inv):
            p[old] = new
        return Irreps([self[i] for i in inv]), tuple(p), inv

    def __add__(self, other) -> "Irreps":
        return Irreps(tuple(self) + tuple(Irreps(other)))

    def __radd__(self, other) -> "Irreps":
        return Irreps(other) + self

    def __mul__(self, n) -> "Irreps":
        if not isinstance(n, int):
            raise TypeError("Irreps * n repeats the irreps; n must be an int")
        return Irreps(tuple(self) * n)

    __rmul__ = __mul__

    def __getitem__(self, i):
        x = super().__getitem__(i)
        return Irreps(x) if isinstance(i, slice) else x

    def __contains__(self, ir) -> bool:
        ir = Irrep.parse(ir)
        return any(m.ir == ir for m in self)

    def count(self, ir) -> int:
        ir = Irrep.parse(ir)
        return sum(m.mul for m in self if m.ir == ir)

    def __str__(self) -> str:
        return "+".join(str(m) for m in self)

    def __repr__(self) -> str:
        return f"Irreps({str(self)!r})"


def as_irreps(x, name: str) -> Irreps:
    """Coerce a user argument to Irreps; the error names the argument."""
    try:
        return Irreps(x)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{name}: {e}") from None

