"""One e3nn instruction: its record, the rules that validate it, and its weight shape.

An instruction is the tuple ``(i_in1, i_in2, i_out, mode, has_weight[, path_weight])`` of
``e3nn.o3.TensorProduct``; :func:`check_instruction` applies e3nn's rules (segment ranges, parity,
triangle, each mode's multiplicities) with an error that names the instruction, and
:class:`~tritp.codegen.problem.Problem` builds an :class:`Instruction` from what it returns.

Example:
    >>> from tritp.codegen.irreps import Irreps
    >>> check_instruction(0, (0, 0, 0, "uvu", True), Irreps("8x0e"), Irreps("0e"), Irreps("8x0e"))
    (0, 0, 0, 'uvu', True, 1.0)
    >>> path_shape("uvu", 8, 1, 8), num_elements("uvu", 8, 1)
    ((8, 1), 1)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MODES = ("uvw", "uvu", "uvv", "uuw", "uuu", "uvuv")


@dataclass(frozen=True)
class Instruction:
    """One coupling path, as e3nn's ``Instruction`` after construction.

    ``path_weight`` is what the user gave (e3nn's sixth tuple element, default 1.0);
    ``coefficient`` is e3nn's final normalization factor ``sqrt(alpha)``, which e3nn stores
    in its own ``Instruction.path_weight``.
    """

    i_in1: int
    i_in2: int
    i_out: int
    mode: str
    has_weight: bool
    path_weight: float
    path_shape: tuple
    coefficient: float

    @property
    def connection_mode(self) -> str:
        return self.mode

    def as_tuple(self) -> tuple:
        return (self.i_in1, self.i_in2, self.i_out, self.mode, self.has_weight, self.path_weight)

    def segment(self, role: str) -> int:
        """The segment this path reads or writes in ``role`` (``"x1"``, ``"x2"`` or ``"out"``)."""
        return {"x1": self.i_in1, "x2": self.i_in2, "out": self.i_out}[role]


class ProblemError(ValueError):
    """An invalid tensor product description."""


def _describe(k: int, ins) -> str:
    return f"instruction {k} {tuple(ins)!r}"


def path_shape(mode: str, m1: int, m2: int, mo: int) -> tuple:
    """The weight shape of one path of ``mode`` with multiplicities ``m1 x m2 -> mo`` (e3nn's).

    Example:
        >>> path_shape("uvw", 2, 3, 4), path_shape("uuu", 4, 4, 4)
        ((2, 3, 4), (4,))
    """
    return {
        "uvw": (m1, m2, mo),
        "uvu": (m1, m2),
        "uvv": (m1, m2),
        "uuw": (m1, mo),
        "uuu": (m1,),
        "uvuv": (m1, m2),
    }[mode]


def num_elements(mode: str, m1: int, m2: int) -> int:
    """How many input products one output channel of the path sums (e3nn's ``num_elements``,
    what ``path_normalization="element"`` divides by).

    Example:
        >>> num_elements("uvw", 2, 3), num_elements("uvu", 2, 3)
        (6, 3)
    """
    return {"uvw": m1 * m2, "uvu": m2, "uvv": m1, "uuw": m1, "uuu": 1, "uvuv": 1}[mode]


def check_instruction(k, raw, in1, in2, out) -> tuple:
    """Instruction ``k`` of a list, ``raw`` as the user gave it, checked against the irreps;
    returns ``(i_in1, i_in2, i_out, mode, has_weight, path_weight)`` with the default path weight
    filled in, or raises :class:`ProblemError` naming the instruction and the broken rule.

    Example:
        >>> from tritp.codegen.irreps import Irreps
        >>> try:
        ...     check_instruction(3, (0, 0, 0, "uvu", True), Irreps("2x0e"), Irreps("0e"), Irreps("2x1o"))
        ... except ProblemError as e:
        ...     print(e)
        instruction 3 (0, 0, 0, 'uvu', True): parity rule violated: 0e x 0e cannot give 1o
    """
    if not isinstance(raw, (tuple, list)) or len(raw) not in (5, 6):
        raise ProblemError(
            f"{_describe(k, raw if isinstance(raw, (tuple, list)) else (raw,))}: expected "
            "(i_in1, i_in2, i_out, mode, has_weight[, path_weight])"
        )
    i1, i2, io, mode, has_weight = raw[:5]
    pw = raw[5] if len(raw) == 6 else 1.0
    what = _describe(k, raw)
    for name, i, irreps in (("i_in1", i1, in1), ("i_in2", i2, in2), ("i_out", io, out)):
        if not isinstance(i, int) or isinstance(i, bool):
            raise ProblemError(f"{what}: {name} must be an int, got {i!r}")
        if not 0 <= i < len(irreps):
            raise ProblemError(f"{what}: {name}={i} is out of range for {len(irreps)} segments ({irreps})")
    if mode not in MODES:
        raise ProblemError(f"{what}: unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    if not isinstance(has_weight, bool):
        raise ProblemError(f"{what}: has_weight must be True or False, got {has_weight!r}")
    if isinstance(pw, bool) or not isinstance(pw, (int, float)) or not math.isfinite(pw) or pw < 0:
        raise ProblemError(f"{what}: path_weight must be a finite non-negative float, got {pw!r}")
    (m1, r1), (m2, r2), (mo, ro) = in1[i1], in2[i2], out[io]
    if r1.p * r2.p != ro.p:
        raise ProblemError(f"{what}: parity rule violated: {r1} x {r2} cannot give {ro}")
    if not abs(r1.l - r2.l) <= ro.l <= r1.l + r2.l:
        raise ProblemError(f"{what}: triangle rule violated: {r1} x {r2} cannot give {ro}")
    rule = {
        "uvw": (True, ""),
        "uvu": (m1 == mo, f"mode uvu needs mul_in1 == mul_out, got {m1} and {mo}"),
        "uvv": (m2 == mo, f"mode uvv needs mul_in2 == mul_out, got {m2} and {mo}"),
        "uuw": (m1 == m2, f"mode uuw needs mul_in1 == mul_in2, got {m1} and {m2}"),
        "uuu": (m1 == m2 == mo, f"mode uuu needs equal multiplicities, got {m1}, {m2}, {mo}"),
        "uvuv": (m1 * m2 == mo, f"mode uvuv needs mul_out == mul_in1 * mul_in2, got {mo} != {m1}*{m2}"),
    }[mode]
    if not rule[0]:
        raise ProblemError(f"{what}: {rule[1]}")
    if mode == "uvw" and not has_weight:
        raise ProblemError(f"{what}: mode uvw needs has_weight=True (the weights mix the channels)")
    if mode == "uuw" and not has_weight and mo != 1:
        raise ProblemError(f"{what}: mode uuw without weight needs mul_out == 1, got {mo}")
    return i1, i2, io, mode, has_weight, float(pw)
