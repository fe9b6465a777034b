"""The frozen, hashable description of one tensor product, with e3nn's exact semantics.

A :class:`Problem` is what every other layer consumes: the reference, the code generators, the
autotune cache key and the torch ops (which receive it as its :attr:`Problem.key` string).

Example:
    >>> from tritp.codegen import Problem
    >>> p = Problem("8x0e+8x1o", "0e+1o", "8x0e+8x1o",
    ...             [(0, 0, 0, "uvu", True), (1, 1, 0, "uvu", True)], shared_weights=False)
    >>> p.weight_numel, [i.path_shape for i in p.instructions]
    (16, [(8, 1), (8, 1)])
    >>> Problem.from_key(p.key) == p
    True
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cached_property

from .instructions import MODES  # noqa: F401  (re-exported: tritp.codegen.problem.MODES)
from .instructions import Instruction, ProblemError, check_instruction, num_elements, path_shape
from .irreps import Irreps, as_irreps

IRREP_NORMALIZATIONS = ("component", "norm", "none")
PATH_NORMALIZATIONS = ("element", "path", "none")
LAYOUTS = ("mul_ir", "ir_mul")
KEY_VERSION = 1


def _check_choice(name, value, choices):
    if value not in choices:
        raise ProblemError(f"{name}={value!r} is not supported; expected one of {', '.join(map(repr, choices))}")


def _check_vars(name, v, n):
    if v is None:
        return (1.0,) * n
    v = tuple(float(x) for x in v)
    if len(v) != n:
        raise ProblemError(f"{name} has {len(v)} entries; expected one per segment ({n})")
    return v


@dataclass(frozen=True, init=False)
class Problem:
    """A tensor product: irreps, instructions, normalization, weights, layout.

    Arguments follow ``e3nn.o3.TensorProduct``: ``instructions`` is a list of
    ``(i_in1, i_in2, i_out, mode, has_weight[, path_weight])``; ``irrep_normalization`` is
    ``"component"`` (default), ``"norm"`` or ``"none"``; ``path_normalization`` is
    ``"element"`` (default), ``"path"`` or ``"none"``; ``in1_var``, ``in2_var``, ``out_var``
    as in e3nn. ``shared_weights`` says whether one weight vector serves the whole batch.
    ``layout`` is ``"mul_ir"`` (e3nn) or ``"ir_mul"`` (cuEquivariance).
    """

    irreps_in1: Irreps
    irreps_in2: Irreps
    irreps_out: Irreps
    instructions: tuple
    irrep_normalization: str = "component"
    path_normalization: str = "element"
    shared_weights: bool = True
    layout: str = "mul_ir"
    in1_var: tuple = field(default=())
    in2_var: tuple = field(default=())
    out_var: tuple = field(default=())

    def __init__(self, irreps_in1, irreps_in2, irreps_out, instructions, *, irrep_normalization="component",
                 path_normalization="element", shared_weights=True, layout="mul_ir",
                 in1_var=None, in2_var=None, out_var=None):
        in1 = as_irreps(irreps_in1, "irreps_in1")
        in2 = as_irreps(irreps_in2, "irreps_in2")
        out = as_irreps(irreps_out, "irreps_out")
        # None means the default, as in e3nn
        irrep_normalization = "component" if irrep_normalization is None else irrep_normalization
        path_normalization = "element" if path_normalization is None else path_normalization
        _check_choice("irrep_normalization", irrep_normalization, IRREP_NORMALIZATIONS)
        _check_choice("path_normalization", path_normalization, PATH_NORMALIZATIONS)
        _check_choice("layout", layout, LAYOUTS)
        if not isinstance(shared_weights, bool):
            raise ProblemError(f"shared_weights must be True or False, got {shared_weights!r}")
        if isinstance(instructions, str) or not hasattr(instructions, "__iter__"):
            raise ProblemError(f"instructions must be a list of tuples, got {instructions!r}")
        raw = [check_instruction(k, ins, in1, in2, out) for k, ins in enumerate(instructions)]
        v1 = _check_vars("in1_var", in1_var, len(in1))
        v2 = _check_vars("in2_var", in2_var, len(in2))
        vo = _check_vars("out_var", out_var, len(out))

        def elems(r):
            return num_elements(r[3], in1[r[0]].mul, in2[r[1]].mul)

        built = []
        for r in raw:
            i1, i2, io, mode, hw, pw = r
            # e3nn's exact arithmetic order, so float results agree bit for bit
            alpha = {"component": out[io].ir.dim, "norm": in1[i1].ir.dim * in2[i2].ir.dim, "none": 1}[
                irrep_normalization
            ]
            if path_normalization == "element":
                x = sum(v1[s[0]] * v2[s[1]] * elems(s) for s in raw if s[2] == io)
            elif path_normalization == "path":
                x = v1[i1] * v2[i2] * elems(r)
                x *= len([s for s in raw if s[2] == io])
            else:
                x = 1
            if x > 0.0:
                alpha /= x
            alpha *= vo[io]
            alpha *= pw
            shape = path_shape(mode, in1[i1].mul, in2[i2].mul, out[io].mul)
            built.append(Instruction(i1, i2, io, mode, hw, pw, shape, math.sqrt(alpha)))
        set_ = object.__setattr__
        set_(self, "irreps_in1", in1)
        set_(self, "irreps_in2", in2)
        set_(self, "irreps_out", out)
        set_(self, "instructions", tuple(built))
        set_(self, "irrep_normalization", irrep_normalization)
        set_(self, "path_normalization", path_normalization)
        set_(self, "shared_weights", shared_weights)
        set_(self, "layout", layout)
        set_(self, "in1_var", v1)
        set_(self, "in2_var", v2)
        set_(self, "out_var", vo)

    # -- identity ----------------------------------------------------------------------------
    @cached_property
    def key(self) -> str:
        """Canonical string: equal problems, equal keys; :meth:`from_key` inverts it."""
        d = {
            "v": KEY_VERSION,
            "in1": str(self.irreps_in1),
            "in2": str(self.irreps_in2),
            "out": str(self.irreps_out),
            "ins": [list(i.as_tuple()) for i in self.instructions],
            "irrep_norm": self.irrep_normalization,
            "path_norm": self.path_normalization,
            "shared": self.shared_weights,
            "layout": self.layout,
        }
        if any(v != 1.0 for v in self.in1_var + self.in2_var + self.out_var):
            d["vars"] = [list(self.in1_var), list(self.in2_var), list(self.out_var)]
        return json.dumps(d, separators=(",", ":"))

    @classmethod
    def from_key(cls, key: str) -> "Problem":
        d = json.loads(key)
        if d.get("v") != KEY_VERSION:
            raise ProblemError(f"problem key version {d.get('v')!r} is not {KEY_VERSION}")
        v = d.get("vars", [None, None, None])
        return cls(d["in1"], d["in2"], d["out"], [tuple(i) for i in d["ins"]],
                   irrep_normalization=d["irrep_norm"], path_normalization=d["path_norm"],
                   shared_weights=d["shared"], layout=d["layout"], in1_var=v[0], in2_var=v[1], out_var=v[2])

    def __eq__(self, other) -> bool:
        return isinstance(other, Problem) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return (f"Problem({str(self.irreps_in1)!r} x {str(self.irreps_in2)!r} -> {str(self.irreps_out)!r}, "
                f"{len(self.instructions)} paths, {self.weight_numel} weights)")

    def replace(self, **changes) -> "Problem":
        """A copy with some constructor arguments changed."""
        def given(v):  # defaults (all 1.0) are rebuilt for the new irreps, not carried over
            return None if all(x == 1.0 for x in v) else v

        args = dict(irrep_normalization=self.irrep_normalization, path_normalization=self.path_normalization,
                    shared_weights=self.shared_weights, layout=self.layout, in1_var=given(self.in1_var),
                    in2_var=given(self.in2_var), out_var=given(self.out_var))
        pos = dict(irreps_in1=self.irreps_in1, irreps_in2=self.irreps_in2, irreps_out=self.irreps_out,
                   instructions=[i.as_tuple() for i in self.instructions])
        for k, v in changes.items():
            (pos if k in pos else args)[k] = v
        return Problem(pos["irreps_in1"], pos["irreps_in2"], pos["irreps_out"], pos["instructions"], **args)

    def irreps(self, role: str):
        """The irreps of ``role`` (``"x1"``, ``"x2"`` or ``"out"``)."""
        return {"x1": self.irreps_in1, "x2": self.irreps_in2, "out": self.irreps_out}[role]

    # -- weights -----------------------------------------------------------------------------
    @property
    def weight_numel(self) -> int:
        return sum(math.prod(i.path_shape) for i in self.instructions if i.has_weight)

    def weight_offsets(self) -> list:
        """Offset of each instruction's weights in e3nn's flat weight vector (None if unweighted)."""
        out, o = [], 0
        for i in self.instructions:
            if i.has_weight:
                out.append(o)
                o += math.prod(i.path_shape)
            else:
                out.append(None)
        return out

    def active_outputs(self) -> list:
        """Per output segment: whether any nonzero path writes it (e3nn's ``output_mask``)."""
        return [
            any(i.i_out == k and i.coefficient != 0 and 0 not in i.path_shape for i in self.instructions)
            for k in range(len(self.irreps_out))
        ]



def _attach_forms():
    # The constructors live in forms.py (one file, one job); they take ``cls`` so that this
    # module need not import that one at the top.
    from . import forms

    for name in ("channelwise", "fully_connected", "elementwise", "full", "all_paths"):
        setattr(Problem, name, classmethod(getattr(forms, name)))


_attach_forms()
