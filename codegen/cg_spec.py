"""What one generated sparse-CG kernel computes: a *producer* of the tensor product's
quadrilinear form.

Every instruction of a Problem defines ``E = coef * sum C[i,j,k] W[..] x1[.., i] x2[.., j]
out[.., k]`` over its channels (e3nn's mode decides which channel letters each operand
carries). Forward, every gradient, and every higher derivative is a derivative of ``E`` with
respect to one *role* (``x1``, ``x2``, ``w`` or ``out``), with the other three roles filled by
tensors -- possibly a sum of several such *terms* (double backward is a sum of three). One
generator therefore covers all directions to any order:

* forward: target ``out``, one term ``(x1, x2, w)``;
* backward: targets ``x1``, ``x2``, ``w`` with the cotangent in role ``out``;
* the derivative of a producer with target R with respect to the tensor in role S, given a
  cotangent G: target S, same terms with G in role R.

A weight-role tensor is either the weights themselves or a weight-shaped *tangent*; an
instruction without weights multiplies by 1 in the first case and contributes nothing in the
second (the derivative of a weightless path with respect to weights is zero).

Example:
    >>> spec = forward_spec()
    >>> spec.target, spec.roles, spec.terms
    ('out', ('x1', 'x2', 'w'), ((0, 1, 2, None, False),))
"""

from __future__ import annotations

from collections import Counter

from dataclasses import dataclass

ROLES = ("x1", "x2", "w", "out")
ROLE_INDEX = {r: i for i, r in enumerate(ROLES)}

# Channel letters of each operand per e3nn mode (weights follow e3nn's path_shape order).
MODE_LETTERS = {
    "uvw": {"x1": "u", "x2": "v", "out": "w", "w": "uvw"},
    "uvu": {"x1": "u", "x2": "v", "out": "u", "w": "uv"},
    "uvv": {"x1": "u", "x2": "v", "out": "v", "w": "uv"},
    "uuw": {"x1": "u", "x2": "u", "out": "w", "w": "uw"},
    "uuu": {"x1": "u", "x2": "u", "out": "u", "w": "u"},
    "uvuv": {"x1": "u", "x2": "v", "out": "uv", "w": "uv"},
}



def letters(problem, ins) -> tuple:
    """``(channel letters per role, size per letter)`` of instruction ``ins`` of ``problem``.

    Example:
        >>> from tritp.codegen import Problem
        >>> p = Problem.channelwise("8x0e", "2x0e", "8x0e")
        >>> letters(p, p.instructions[0])
        ({'x1': 'u', 'x2': 'v', 'out': 'u', 'w': 'uv'}, {'u': 8, 'v': 2, 'w': 8})
    """
    sizes = {"u": problem.irreps_in1[ins.i_in1].mul, "v": problem.irreps_in2[ins.i_in2].mul,
             "w": problem.irreps_out[ins.i_out].mul}
    return MODE_LETTERS[ins.mode], sizes

@dataclass(frozen=True)
class ProducerSpec:
    """One kernel: ``target`` role, the roles of its tensor arguments, and the terms.

    ``terms[t]`` is ``(x1, x2, w, out, w_tangent)``: for each role the index of the tensor
    argument that fills it (``None`` for the target role, and for ``w`` when the problem has no
    weights), and whether the weight-role tensor is a tangent.
    """

    target: str
    roles: tuple
    terms: tuple

    def __post_init__(self):
        if self.target not in ROLES:
            raise ValueError(f"target must be one of {ROLES}, got {self.target!r}")
        for t in self.terms:
            if t[ROLE_INDEX[self.target]] is not None:
                raise ValueError(f"term {t} fills the target role {self.target}")
            for r, idx in zip(ROLES, t[:4]):
                if idx is not None and self.roles[idx] != r:
                    raise ValueError(f"term {t}: tensor {idx} has role {self.roles[idx]}, not {r}")

    @property
    def tag(self) -> str:
        """Short readable name used in kernel names, e.g. ``out_x1x2w``."""
        return f"{self.target}_" + "_".join(
            "".join(self.roles[i] for i in t[:4] if i is not None) + ("T" if t[4] else "") for t in self.terms
        )

    def derivative(self, wrt_tensor: int) -> "ProducerSpec":
        """Spec of the derivative with respect to tensor ``wrt_tensor``; the cotangent of this
        spec's output is appended as the last tensor argument."""
        role = self.roles[wrt_tensor]
        g = len(self.roles)
        roles = self.roles + (self.target,)
        terms = []
        for t in self.terms:
            ri = ROLE_INDEX[role]
            if t[ri] != wrt_tensor:
                continue
            new = list(t[:4])
            new[ri] = None
            new[ROLE_INDEX[self.target]] = g
            tangent = t[4] or self.target == "w"
            terms.append(tuple(new) + (tangent if role != "w" else False,))
        return ProducerSpec(role, roles, tuple(terms))


    def to_str(self) -> str:
        """Compact text form, e.g. ``out|x1,x2,w|0.1.2.-.0`` (what the torch ops receive)."""
        terms = ";".join(".".join("-" if i is None else str(i) for i in t[:4]) + f".{int(t[4])}" for t in self.terms)
        return f"{self.target}|{','.join(self.roles)}|{terms}"

    @staticmethod
    def from_str(text: str) -> "ProducerSpec":
        try:
            target, roles, terms = text.split("|")
            parsed = []
            for t in terms.split(";") if terms else []:
                parts = t.split(".")
                parsed.append(tuple(None if x == "-" else int(x) for x in parts[:4]) + (bool(int(parts[4])),))
            return ProducerSpec(target, tuple(roles.split(",")) if roles else (), tuple(parsed))
        except (ValueError, IndexError) as e:
            raise ValueError(f"malformed producer spec {text!r}: {e}") from None


@dataclass(frozen=True)
class FusedSpec:
    """Several producers one kernel computes together: ``parts``, derivative specs over the
    same tensor arguments with distinct targets (a channelwise backward's gradients with
    respect to x1, w and x2, from one read of the cotangent; see :mod:`.cg_fused`). The
    kernel writes the parts side by side in one output row, in the order of ``parts``.

    Example:
        >>> fwd = forward_spec()
        >>> s = FusedSpec((fwd.derivative(0), fwd.derivative(2)))
        >>> s.target, s.roles
        ('x1+w', ('x1', 'x2', 'w', 'out'))
        >>> parse_spec(s.to_str()) == s
        True
    """

    parts: tuple

    def __post_init__(self):
        if len(self.parts) < 2 or not all(isinstance(p, ProducerSpec) for p in self.parts):
            raise ValueError(f"a fused spec needs two or more ProducerSpec parts, got {self.parts!r}")
        if len({p.roles for p in self.parts}) != 1:
            raise ValueError("the parts of a fused spec must take the same tensor arguments")
        if len({p.target for p in self.parts}) != len(self.parts):
            raise ValueError(f"the parts of a fused spec need distinct targets, got {self.target}")

    @property
    def target(self) -> str:
        return "+".join(p.target for p in self.parts)

    @property
    def targets(self) -> tuple:
        return tuple(p.target for p in self.parts)

    @property
    def roles(self) -> tuple:
        return self.parts[0].roles

    @property
    def tag(self) -> str:
        return "+".join(p.tag for p in self.parts)

    def part(self, target: str) -> ProducerSpec:
        """The part whose target is ``target``."""
        return self.parts[self.targets.index(target)]

    def derivative(self, wrt_tensor: int, live=None) -> ProducerSpec:
        """One producer for the derivative with respect to tensor ``wrt_tensor``: the sum of the
        derivative terms of the parts ``live`` (indices; default all), whose cotangents are
        appended as tensor arguments in that order (a part with no cotangent adds nothing).

        Example:
            >>> fwd = forward_spec()
            >>> s = FusedSpec((fwd.derivative(0), fwd.derivative(2)))
            >>> compact(s.derivative(3))[0].to_str()  # d/d out: the x1 part's term and the w part's
            'out|x1,x2,w,x1,w|3.1.2.-.0;0.1.4.-.1'
        """
        live = tuple(range(len(self.parts))) if live is None else tuple(live)
        roles = self.roles + tuple(self.parts[j].target for j in live)
        terms = []
        for pos, j in enumerate(live):
            n = len(self.parts[j].roles)  # a part's derivative appends its cotangent after its tensors
            for t in self.parts[j].derivative(wrt_tensor).terms:
                terms.append(tuple(n + pos if x == n else x for x in t[:4]) + (t[4],))
        return ProducerSpec(self.roles[wrt_tensor], roles, tuple(terms))

    def to_str(self) -> str:
        return "&".join(p.to_str() for p in self.parts)


def parse_spec(text: str):
    """A spec's text form (:meth:`ProducerSpec.to_str`, :meth:`FusedSpec.to_str`) parsed back.

    Example:
        >>> parse_spec("out|x1,x2,w|0.1.2.-.0") == forward_spec()
        True
    """
    if "&" in text:
        return FusedSpec(tuple(ProducerSpec.from_str(t) for t in text.split("&")))
    return ProducerSpec.from_str(text)


def forward_spec(has_weights: bool = True) -> ProducerSpec:
    if has_weights:
        return ProducerSpec("out", ("x1", "x2", "w"), ((0, 1, 2, None, False),))
    return ProducerSpec("out", ("x1", "x2"), ((0, 1, None, None, False),))


def compact(spec: ProducerSpec) -> tuple:
    """Drop tensor arguments no term uses, renumbering; returns ``(spec, kept_indices)``."""
    used = sorted({i for t in spec.terms for i in t[:4] if i is not None})
    remap = {old: new for new, old in enumerate(used)}
    terms = tuple(tuple(None if i is None else remap[i] for i in t[:4]) + (t[4],) for t in spec.terms)
    return ProducerSpec(spec.target, tuple(spec.roles[i] for i in used), terms), tuple(used)


def tile_keys(problem, spec: ProducerSpec, inss) -> frozenset:
    """The operand tiles through which one target unit (a segment, or a weight path for a
    weight target; ``inss`` = its ``(index, instruction)`` pairs) may share a channel loop with
    others: every ``(tensor, role, segment)`` among its operands that vary along the lanes and
    are loaded once per tile (not inside a term's own loop). Weights belong to one path and are
    never shared.

    Example:
        >>> from tritp.codegen import Problem
        >>> p = Problem.channelwise("4x0e+4x1o", "0e+1o", "0e+1o")
        >>> [sorted(tile_keys(p, forward_spec(), [(k, i)])) for k, i in enumerate(p.instructions)]
        [[(0, 'x1', 0)], [(0, 'x1', 1)], [(0, 'x1', 0)], [(0, 'x1', 1)]]
    """
    target, keys = spec.target, set()
    for _, ins in inss:
        lt, sizes = letters(problem, ins)
        lanes = {ch for ch in lt[target] if sizes[ch] > 1}
        for term in spec.terms:
            if not ins.has_weight and term[4]:
                continue
            for role in ("x1", "x2", "out"):
                deps = {ch for ch in lt[role] if sizes[ch] > 1}
                if role != target and deps & lanes and not deps - lanes:
                    keys.add((term[ROLE_INDEX[role]], role, ins.segment(role)))
    return frozenset(keys)


def loop_keys(candidates: list, classes: list) -> list:
    """For each unit (its candidate tiles, :func:`tile_keys`, and its class: units of one class
    -- one tile width -- may share a loop; None: it shares none), the tile it shares a loop
    through: among its candidates the one most units of its class read (ties: the smallest),
    or None when no other unit of its class reads any of them.

    Example:
        >>> loop_keys([{1, 2}, {2}, {3}, {2}], ["a", "a", "a", None])
        [2, 2, None, None]
    """
    count = Counter((cls, k) for c, cls in zip(candidates, classes) if cls is not None for k in c)
    out = []
    for c, cls in zip(candidates, classes):
        best = min(c, key=lambda k: (-count[cls, k], k), default=None) if cls is not None else None
        out.append(best if best is not None and count[cls, best] > 1 else None)
    return out


def loop_groups(units, candidates: list, classes: list) -> list:
    """``units`` grouped into shared channel loops, in order of first appearance: units of one
    class sharing the tile :func:`loop_keys` chooses for them run together; a unit that shares
    none forms a group of its own. The emitters' grouping and the register estimate's.

    Example:
        >>> loop_groups(["a", "b", "c", "d"], [{1, 2}, {2}, {3}, {2}], [0, 0, 0, None])
        [['a', 'b'], ['c'], ['d']]
    """
    groups, where = [], {}
    for u, cls, tile in zip(units, classes, loop_keys(candidates, classes)):
        k = None if tile is None else (cls, tile)
        if k is None:
            groups.append([u])
        elif k in where:
            groups[where[k]].append(u)
        else:
            where[k] = len(groups)
            groups.append([u])
    return groups
