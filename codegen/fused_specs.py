"""Which gradients of a channelwise product one kernel computes together: the specs of the
fused backward (:mod:`.cg_fused` emits them).

* :func:`fused_backward` -- the forward's gradients with respect to x1, the weights and x2;
* :func:`fused_plan` -- the backward of x1's or x2's gradient kernel, which is the forward's with
  that kernel's cotangent in its slot (the forces kernel inside a double backward);
* :func:`fused_second` -- the backward of a fused backward (training with forces: every
  gradient differentiated again): the parts' derivatives with respect to x1, the weights and
  x2, each a sum of two terms with other tensors in the slots, in one kernel (both return a
  :class:`FusedPlan`);
* :func:`slot_terms` -- what such a kernel's parts compute, by slot tensor (the emitter's view).

Example:
    >>> from tritp.codegen import Problem
    >>> p = Problem.channelwise("8x0e+8x1o", "0e+1o", "0e+1o")
    >>> f = fused_backward(p, {"x1", "w", "x2"})
    >>> second = fused_second(p, f, {0, 1, 2})
    >>> second.spec.target, second.order
    ('x1+w+x2', (0, 1, 2, 3, 4, 5, 6))
"""

from __future__ import annotations

from typing import NamedTuple

from .cg_spec import ROLE_INDEX, FusedSpec, ProducerSpec, forward_spec
from .problem import Problem

#: The gradients a fused backward may compute, in the order its output row holds them.
FUSABLE = ("x1", "w", "x2")


def fused_backward(problem: Problem, needs) -> FusedSpec | None:
    """The fused backward of ``problem``'s forward for the gradients ``needs`` (roles), or None
    where it does not apply: fewer than two of x1, w, x2 asked for; a path not ``uvu``; x2 with
    more than one channel per segment; shared weights.

    Example:
        >>> from tritp.codegen import Problem
        >>> p = Problem.channelwise("8x0e", "0e", "8x0e")
        >>> fused_backward(p, {"x1", "w"}).target, fused_backward(p, {"x1"})
        ('x1+w', None)
    """
    inss = [i for i in problem.instructions if 0 not in i.path_shape]
    if not inss or any(i.mode != "uvu" for i in inss) or any(m > 1 for m, _ in problem.irreps_in2):
        return None
    if problem.shared_weights and problem.weight_numel > 0:
        return None
    fwd = forward_spec(problem.weight_numel > 0)
    parts = tuple(fwd.derivative(fwd.roles.index(r)) for r in FUSABLE if r in needs and r in fwd.roles)
    return FusedSpec(parts) if len(parts) > 1 else None


class FusedPlan(NamedTuple):
    """How a producer's backward runs as one fused kernel: ``spec`` (the fused kernel's),
    ``order`` (for each tensor argument of the fused kernel, the index of the tensor that fills
    it among the producer's tensor arguments followed by its cotangents) and ``index`` (each
    part's target role -> the producer's tensor argument whose gradient it is)."""

    spec: FusedSpec
    order: tuple
    index: dict


def fused_plan(problem: Problem, spec, needs) -> FusedPlan | None:
    """The fused backward of producer ``spec`` for the gradients of its tensor arguments in
    ``needs`` (argument indices), or None where none applies.

    The forward's backward is :func:`fused_backward`. So is the backward of any one-term
    derivative whose weight slot holds the weights (not a tangent): a gradient of x1 or x2 --
    e.g. the forces kernel (x2's gradient) inside a double backward. Its form ``E`` is the
    forward's, with the producer's cotangent in the slot of its target; the gradients of its
    other slots are the forward's gradients of those slots, one kernel of :func:`emit_fused`
    for the ones asked for, instead of one kernel each.

    Example:
        >>> from tritp.codegen import Problem
        >>> p = Problem.channelwise("8x0e+8x1o", "0e+1o", "0e+1o")
        >>> from tritp.codegen.cg_spec import compact
        >>> forces, _ = compact(forward_spec().derivative(1))  # x2's gradient: tensors x1, w, gout
        >>> plan = fused_plan(p, forces, {0, 1})   # its gradients w.r.t. x1 and the weights
        >>> plan.spec.target, plan.order, plan.index
        ('x1+w', (0, 3, 1, 2), {'x1': 0, 'w': 1})
    """
    fwd = forward_spec(problem.weight_numel > 0)
    if spec == fwd:
        term = fwd.terms[0]
    elif len(spec.terms) == 1 and not spec.terms[0][4] and spec.target in ("x1", "x2"):
        term = spec.terms[0]
    else:
        return None
    slots = fwd.roles + (fwd.target,)  # the fused kernel's tensor arguments
    if any(term[ROLE_INDEX[r]] is None for r in slots if r != spec.target):
        return None
    cot = len(spec.roles)
    order = tuple(cot if r == spec.target else term[ROLE_INDEX[r]] for r in slots)
    index = {r: term[ROLE_INDEX[r]] for r in slots if r != spec.target}
    fused = fused_backward(problem, {r for r, i in index.items() if i in needs})
    if fused is None:
        return None
    return FusedPlan(fused, order, {t: index[t] for t in fused.targets})


def fused_second(problem: Problem, spec, needs, live=None) -> FusedPlan | None:
    """One kernel for the gradients, in ``needs`` (tensor indices), of fused backward ``spec``
    of ``problem`` (:func:`fused_backward`) whose parts ``live`` (indices; default all) have a
    cotangent, as a :class:`FusedPlan` (``order``: which of the fused backward's tensors and
    live parts' cotangents the kernel reads), or None: fewer than two of x1, the weights and x2
    asked for with any term.

    Each gradient is a sum over the live parts of the forward's gradient of that slot with a
    part's cotangent in the part's slot. With ``c1, cw, c2`` the parts' cotangents, ``s(y)_i =
    sum_jk C_ijk y_j gout_k`` and ``t(y)_j = sum_ik C_ijk y_i gout_k``: x1's is ``cw * s(x2) +
    w * s(c2)``, the weights' ``x2 . t(c1) + c2 . t(x1)``, x2's the lane sum of ``w * t(c1) + cw
    * t(x1)`` -- four contractions for all three (six as separate kernels), and the cotangent
    ``gout``, the widest tensor, read once (three times).

    Example:
        >>> from tritp.codegen import Problem
        >>> p = Problem.channelwise("8x0e+8x1o", "0e+1o", "0e+1o")
        >>> f = fused_backward(p, {"x1", "w", "x2"})
        >>> s = fused_second(p, f, {0, 2})  # x1's and the weights' gradients
        >>> s.spec.target, [len(part.terms) for part in s.spec.parts], s.index
        ('x1+w', [2, 2], {'x1': 0, 'w': 2})
        >>> fused_second(p, f, {0, 1, 2}, live=(2,)).spec.target  # only x2's part differentiated
        'x1+w'
    """
    if not isinstance(spec, FusedSpec) or spec != fused_backward(problem, set(spec.targets)):
        return None
    live = tuple(range(len(spec.parts))) if live is None else tuple(live)
    fwd = forward_spec(problem.weight_numel > 0)
    parts = []
    for r in FUSABLE:
        if r not in fwd.roles or spec.roles.index(r) not in needs:
            continue
        d = spec.derivative(spec.roles.index(r), live)
        if d.terms:
            parts.append(d)
    if len(parts) < 2:
        return None
    used = sorted({i for part in parts for t in part.terms for i in t[:4] if i is not None})
    remap = {old: new for new, old in enumerate(used)}
    roles = tuple(parts[0].roles[i] for i in used)
    parts = tuple(ProducerSpec(part.target, roles, tuple(
        tuple(None if i is None else remap[i] for i in t[:4]) + (t[4],) for t in part.terms)) for part in parts)
    return FusedPlan(FusedSpec(parts), tuple(used), {part.target: spec.roles.index(part.target) for part in parts})


class SlotTerms(NamedTuple):
    """A fused kernel's parts by the tensors in their slots (indices among its arguments):
    ``out`` (the cotangent every term reads); ``s`` -- x1's part, ``(x2-slot tensor, w-slot
    tensor or None, w is a tangent)`` per term; ``t`` -- for each x1-slot tensor ``y`` whose
    ``t(y) = sum C y gout`` some term needs, ``(x2-slot tensors of the weights' part, (w-slot
    tensor, tangent) pairs of x2's part)``."""

    out: int
    s: tuple
    t: dict

    def x2_tensors(self) -> tuple:
        """The x2-slot tensors, in order of first use (x1's terms, then the weights')."""
        return tuple(dict.fromkeys([a for a, _, _ in self.s] + [a for uses, _ in self.t.values() for a in uses]))

    def w_tensors(self) -> tuple:
        """The weight-slot tensors, in order of first use (x1's terms, then x2's)."""
        ws = [b for _, b, _ in self.s] + [b for _, uses in self.t.values() for b, _ in uses]
        return tuple(b for b in dict.fromkeys(ws) if b is not None)


def slot_terms(spec: FusedSpec) -> SlotTerms:
    """:class:`SlotTerms` of fused spec ``spec`` (:func:`fused_backward`, :func:`fused_second`).

    Example:
        >>> from tritp.codegen import Problem
        >>> f = fused_backward(Problem.channelwise("8x0e", "0e", "8x0e"), {"x1", "w", "x2"})
        >>> slot_terms(f)
        SlotTerms(out=3, s=((1, 2, False),), t={0: ((1,), ((2, False),))})
    """
    outs = {t[3] for part in spec.parts for t in part.terms}
    if len(outs) != 1 or None in outs:
        raise ValueError(f"the terms of a fused spec read one cotangent, got tensors {sorted(outs, key=str)}")
    s, t = [], {}
    for part in spec.parts:
        for term in part.terms:
            if part.target == "x1":
                s.append((term[1], term[2], term[4]))
            elif part.target == "w":
                t.setdefault(term[0], ([], []))[0].append(term[1])
            elif part.target == "x2":
                t.setdefault(term[0], ([], []))[1].append((term[2], term[4]))
            else:
                raise ValueError(f"a fused spec's parts are among {FUSABLE}, got {part.target}")
    return SlotTerms(outs.pop(), tuple(s), {y: (tuple(a), tuple(b)) for y, (a, b) in t.items()})
