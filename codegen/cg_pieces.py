"""Split one big producer kernel into *pieces*: kernels over disjoint parts of the target.

Triton's compile time grows faster than linearly with the size of one kernel (its coalescing
pass walks the whole dependence slice of every memory access), so a large unrolled kernel --
NequIP's forward has 2,000 unrolled loads and coupling terms -- takes minutes to compile, while
the same work in pieces of a few hundred takes seconds each, and the pieces compile in
parallel. A piece is a set of target segments (or, for a weight target, of instructions): it
writes only those, so the pieces of one producer launch one after another into the same output
and together compute exactly what the whole kernel does. For the output and the weights, the
units that read one x1 segment stay in one piece where the budget allows, so that no two pieces
read it; other units are taken in order.

A one-channel target (the edge harmonics' gradient: the forces) is not split by segment: each
of its segments reads the wide operands, so such pieces would read them once per piece.
It is split by *instruction* instead (:class:`Partial`): each piece sums the contributions of
its instructions to every target segment into a slab of its own, ``[rows, slabs * dim]``, and
the slabs are summed after the launches -- every wide operand is still read once, and the
extra traffic is the slabs (``slabs * dim`` numbers a row against thousands). NequIP's forces
kernel (68 instructions, one kernel) took 114 s to compile for sm_90 here; in 9 pieces of
about equal cost, 29 s in all, and the pieces compile in parallel.

Example:
    >>> from tritp.codegen import Problem
    >>> from tritp.codegen.cg_spec import forward_spec
    >>> small = Problem.channelwise("8x0e+8x1o", "0e+1o", "0e+1o")
    >>> plan_pieces(small, forward_spec())
    (None,)
    >>> big = Problem.channelwise("8x0e+8x1o+8x2e+8x3o", "0e+1o+2e+3o", "0e+1o+2e+3o")
    >>> pieces = plan_pieces(big, forward_spec(), budget=100)
    >>> len(pieces) > 1 and sorted(u for p in pieces for u in p) == list(range(len(big.irreps_out)))
    True
"""

from __future__ import annotations

from functools import lru_cache

from .cg_spec import ProducerSpec
from .coupling import sparse_coupling
from .problem import Problem

#: Most work units (unrolled loads + coupling terms, see :func:`unit_costs`) in one piece.
PIECE_BUDGET = 256
#: Extra cost of one ``tl.dot`` GEMM term (its tiles, layouts and loops compile slowly).
DOT_COST = 32


def _units(problem: Problem, target: str) -> int:
    if target == "w":
        return len(problem.instructions)
    return len(problem.irreps(target))


def _unit_of(ins, k: int, target: str) -> int:
    return k if target == "w" else ins.segment(target)


def unit_costs(problem: Problem, spec: ProducerSpec, per_instruction: bool = False) -> list:
    """Cost of each unit of the target (segment, or instruction for ``w``): per instruction and
    term, the operand components loaded plus the nonzero coupling terms unrolled, plus
    :data:`DOT_COST` per ``tl.dot`` GEMM; a unit no instruction writes costs 0 (zeros).
    ``per_instruction``: the cost of each instruction instead."""
    from .cg_emit import CGEmitter  # the emitter knows which terms become GEMMs

    em = CGEmitter(problem, spec, "float32", 64)
    costs = [0] * (len(problem.instructions) if per_instruction else _units(problem, spec.target))
    for k, ins in enumerate(problem.instructions):
        if 0 in ins.path_shape or (spec.target == "w" and not ins.has_weight):
            continue
        ls = (problem.irreps_in1[ins.i_in1].ir.l, problem.irreps_in2[ins.i_in2].ir.l,
              problem.irreps_out[ins.i_out].ir.l)
        nnz = len(sparse_coupling(*ls))
        if spec.target == "w":
            dots = (2 * ls[2] + 1) if problem.shared_weights and em.weight_gemm_ok(ins, em.letters(ins)[1]) else 0
        else:
            dots = (2 * ls[("x1", "x2", "out").index(spec.target)] + 1) if em.dot_letter(ins) else 0
        per_term = sum(2 * l + 1 for l in ls) + 1 + nnz + DOT_COST * dots
        costs[k if per_instruction else _unit_of(ins, k, spec.target)] += per_term * len(spec.terms)
    return costs


def _one_channel(problem: Problem, target: str) -> bool:
    # a one-channel target (the edge harmonics' gradient) reads the wide operands in every
    # segment: pieces would read them once each, and that kernel runs every training step
    if target == "w":
        return False
    return all(mul <= 1 for mul, _ in problem.irreps(target))


class Partial(tuple):
    """A piece of a one-channel target: the indices of the instructions it sums, into slab
    ``slab`` (of ``slabs``) of a ``[rows, slabs * dim]`` buffer whose slabs are summed after.

    Example:
        >>> Partial((0, 3), 1, 2)
        Partial((0, 3), slab=1, slabs=2)
        >>> Partial((0, 3), 1, 2) == (0, 3), Partial((0, 3), 1, 2) == Partial((0, 3), 0, 2)
        (False, False)
    """

    def __new__(cls, instructions, slab: int, slabs: int):
        self = super().__new__(cls, instructions)
        self.slab, self.slabs = slab, slabs
        return self

    def key(self) -> tuple:
        return ("partial", tuple(self), self.slab, self.slabs)

    def __eq__(self, other):
        return isinstance(other, Partial) and self.key() == other.key()

    def __hash__(self):
        return hash(self.key())

    def __repr__(self):
        return f"Partial({tuple(self)}, slab={self.slab}, slabs={self.slabs})"

    def __reduce__(self):
        return Partial, (tuple(self), self.slab, self.slabs)


def slabs(pieces) -> int:
    """How many partial slabs the pieces of one producer write (1: they write the target)."""
    return pieces[0].slabs if isinstance(pieces[0], Partial) else 1


def plan_pieces(problem: Problem, spec: ProducerSpec, budget: int | None = None, partial: bool = True) -> tuple:
    """The pieces of producer ``spec``: ``(None,)`` (one whole kernel) when its cost fits
    ``budget`` (default :data:`PIECE_BUDGET`), else a partition of the units into sorted
    tuples, each as close to ``budget`` as whole units (and whole x1 groups, see
    :func:`unit_groups`, where they fit) allow; a unit never splits. A one-channel target is
    split into :class:`Partial` pieces of whole instructions instead, or not at all with
    ``partial=False`` (a launcher that cannot sum slabs)."""
    budget = PIECE_BUDGET if budget is None else budget
    if budget < 1:
        raise ValueError(f"budget must be a positive number of work units, got {budget}")
    return _plan(problem, spec, budget, partial)


def unit_groups(problem: Problem, spec: ProducerSpec) -> list:
    """The x1 segment each unit reads (None when it reads none or is itself an x1 segment):
    for the output and the weights, runs of units reading one x1 segment are kept in one piece
    where the budget allows, so that no two pieces read it."""
    keys = [None] * _units(problem, spec.target)
    if spec.target in ("out", "w"):
        for k, ins in enumerate(problem.instructions):
            u = _unit_of(ins, k, spec.target)
            keys[u] = ins.i_in1 if keys[u] is None else min(keys[u], ins.i_in1)
    return keys


@lru_cache(maxsize=1024)
def _plan(problem: Problem, spec: ProducerSpec, budget: int, partial: bool) -> tuple:
    costs = unit_costs(problem, spec)
    if sum(costs) <= budget:
        return (None,)
    if _one_channel(problem, spec.target):
        return _partials(problem, spec, budget) if partial else (None,)
    keys = unit_groups(problem, spec)
    runs, where = [], {}  # units by group key, in order of first appearance (None: alone)
    for u in range(len(costs)):
        if keys[u] is None:
            runs.append([u])
        elif keys[u] in where:
            runs[where[keys[u]]].append(u)
        else:
            where[keys[u]] = len(runs)
            runs.append([u])
    return tuple(tuple(sorted(p)) for p in pack(runs, costs, budget))


def pack(runs, costs, budget: int) -> list:
    """Runs of units (lists of indices into ``costs``) packed in order into pieces of at most
    ``budget`` where whole runs fit; a run larger than ``budget`` is split unit by unit, and a
    unit never splits (so a piece may pass ``budget`` by one unit). Zero-cost units join the
    piece at hand.

    Example:
        >>> pack([[0, 1], [2], [3]], [40, 40, 30, 90], 100)
        [[0, 1], [2], [3]]
    """
    pieces, cur, acc = [], [], 0

    def add(units, c):
        nonlocal cur, acc
        if cur and acc + c > budget and c > 0:
            pieces.append(cur)
            cur, acc = [], 0
        cur = cur + list(units)
        acc += c

    for run in runs:
        c = sum(costs[u] for u in run)
        if c <= budget:
            add(run, c)
        else:  # a group larger than a piece: split it unit by unit
            for u in run:
                add([u], costs[u])
    if cur:
        pieces.append(cur)
    return pieces


def _partials(problem: Problem, spec: ProducerSpec, budget: int) -> tuple:
    """A one-channel target's instructions in order, cut into as few :class:`Partial` pieces of
    at most about ``budget`` as there can be, of about equal cost (as :func:`unit_costs`, per
    instruction)."""
    costs = unit_costs(problem, spec, per_instruction=True)
    n = -(-sum(costs) // budget)
    share = sum(costs) / n  # balanced: the largest piece sets the compile time
    groups, cur, acc = [], [], 0
    for k, c in enumerate(costs):
        if c == 0:
            continue
        cur.append(k)
        acc += c
        if acc >= share * (len(groups) + 1) and len(groups) < n - 1:
            groups.append(cur)
            cur = []
    if cur:
        groups.append(cur)
    if len(groups) < 2:
        return (None,)
    return tuple(Partial(g, j, len(groups)) for j, g in enumerate(groups))
