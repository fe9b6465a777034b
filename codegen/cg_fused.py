"""One kernel for a channelwise backward: the gradients with respect to x1, the weights and x2
from one read of the output cotangent.

A backward run as separate producers (:mod:`.cg_spec`) launches one kernel per gradient, and
each reads the cotangent ``gout`` -- the largest tensor of a channelwise product (mace-large:
9,088 numbers a row against 1,152 for x1): three reads where one would do, plus each kernel's
other operands (37,300 numbers moved a row against 15,800). Here one program walks each x1
segment's channel tiles once and, for every path ``k`` of that segment (``uvu``, x2 of one
channel), loads ``gout_k`` and the path weight tile ``w_k`` once and computes, with ``C`` the
path's coupling (times its normalization):

* ``gx1_i += w_k * sum_jk C_ijk x2_j gout_k`` (lanes: channels);
* ``t_j = sum_ik C_ijk x1_i gout_k``, shared by the next two;
* ``gw_k = sum_j x2_j t_j`` (the path's weight gradient, one tile, stored at once);
* ``gx2_j += sum over lanes of w_k * t_j`` (summed along the channels after the loop).

The same body runs a double backward's fused kernels (:mod:`.fused_specs`: the backward of
x1's or x2's gradient kernel; the backward of this kernel itself, whose parts are sums of two
terms with cotangents in some slots): the terms come by slot tensor -- each x1 term its own
contraction over the x2-slot tensor it reads, each x1-slot tensor one ``t_j`` shared by every
weight and x2 term that reads it -- and ``gout`` stays one load per path.

The parts (:class:`~.cg_spec.FusedSpec`: those of gx1, gw, gx2 asked for, in that order) go
to one output tensor each: the kernel takes a pointer and a row stride per part (``g<i>``,
``sg<i>``). A big kernel is split into pieces by x1 segment (:func:`fused_pieces`): the pieces
read disjoint parts of x1, w and gout, write disjoint parts of gx1 and gw, and launched in order
on one stream, each later piece adds its share of gx2 to what the earlier ones stored (a few
numbers a row).

Example:
    >>> from tritp.codegen import Problem
    >>> p = Problem.channelwise("8x0e+8x1o", "0e+1o", "0e+1o")
    >>> spec = fused_backward(p, {"x1", "x2", "w"})
    >>> spec.target
    'x1+w+x2'
    >>> "tl.sum(" in emit_fused(p, spec, "float32")
    True
"""

from __future__ import annotations

from collections import defaultdict

from .cg_emit import CGEmitter
from .cg_pieces import PIECE_BUDGET, pack
from .cg_spec import FusedSpec
from .coupling import sparse_coupling
from .intmath import p2
from .fused_specs import FUSABLE, FusedPlan, fused_backward, fused_plan, fused_second, slot_terms  # noqa: F401 (re-exported)
from .problem import Problem

def _paths(problem: Problem, seg: int) -> list:
    return [(k, i) for k, i in enumerate(problem.instructions) if i.i_in1 == seg and 0 not in i.path_shape]


def segment_costs(problem: Problem, spec: FusedSpec) -> list:
    """Work units (as :func:`~.cg_pieces.unit_costs`: operand components loaded plus unrolled
    coupling terms, per contraction) of each x1 segment's loop: one contraction per term of
    x1's part and one per x1-slot tensor the other parts share (:func:`~.fused_specs.slot_terms`),
    two components per use of a ``t_j``."""
    st = slot_terms(spec)
    n_x2, n_w = max(1, len(st.x2_tensors())), max(1, len(st.w_tensors()))
    passes = len(st.s) + len(st.t)
    uses = sum(len(a) + len(b) for a, b in st.t.values())
    costs = []
    for seg in range(len(problem.irreps_in1)):
        c = 0
        for _, ins in _paths(problem, seg):
            ls = [problem.irreps(r)[ins.segment(r)].ir.l for r in ("x1", "x2", "out")]
            loads = (2 * ls[0] + 1) * max(1, len(st.t)) + (2 * ls[1] + 1) * n_x2 + 2 * ls[2] + 1
            c += loads + n_w + passes * len(sparse_coupling(*ls))
            c += (2 * ls[1] + 1) * uses
        costs.append(c)
    return costs


def fused_pieces(problem: Problem, spec: FusedSpec, budget: int | None = None) -> tuple:
    """The kernels of a fused backward: ``(None,)`` (one kernel) when its cost fits ``budget``
    (default :data:`~.cg_pieces.PIECE_BUDGET`), else pieces ``(x1 segments, adds)`` of whole
    segments in order, as close to ``budget`` as whole segments allow; ``adds``: the piece adds
    its share of gx2 to the earlier pieces' (every piece but the first).

    Example:
        >>> from tritp.codegen import Problem
        >>> p = Problem.channelwise("8x0e+8x1o+8x2e", "0e+1o+2e", "0e+1o+2e")
        >>> fused_pieces(p, fused_backward(p, {"x1", "w", "x2"}), budget=100)
        (((0,), False), ((1,), True), ((2,), True))
    """
    budget = PIECE_BUDGET if budget is None else budget
    if budget < 1:
        raise ValueError(f"budget must be a positive number of work units, got {budget}")
    costs = segment_costs(problem, spec)
    if sum(costs) <= budget:
        return (None,)
    groups = pack([[seg] for seg in range(len(costs))], costs, budget)
    return tuple((tuple(g), j > 0) for j, g in enumerate(groups))


class FusedMixin:
    """The fused backward's body, over the rows of a :class:`~.cg_emit.CGEmitter` (this
    module's :class:`FusedEmitter`) or of a graph convolution's edges (``conv_fused``), whose
    operand addressing, tiles and stores it uses; :meth:`init_fused` after the emitter's own
    ``__init__``."""

    def init_fused(self, spec: FusedSpec, piece):
        self.spec = spec  # the kernel's header and argument list follow the fused spec
        self.want = set(spec.targets)
        self.tgs = tuple(str(i) for i in range(len(spec.parts)))  # target i: g<i>, sg<i>, rg<i>, gp<i>
        self.part_tg = dict(zip(spec.targets, self.tgs))
        self.slots = slot_terms(spec)
        self.segs_done = None if piece is None else set(piece[0])
        self.adds = piece is not None and piece[1]

    def emit_segment_target(self):
        w, p = self.w, self.p
        segs = [seg for seg, (mul, _) in enumerate(p.irreps_in1)
                if mul and (self.segs_done is None or seg in self.segs_done)]
        # x2 segment -> its gradient rows, [BLOCK_Z, DP] (one component: [BLOCK_Z]), carried
        # across the loops
        rows = {}
        if "x2" in self.want:
            for s2 in sorted({i.i_in2 for seg in segs for _, i in _paths(p, seg)}):
                dim = p.irreps_in2[s2].ir.dim
                rows[s2] = f"gx2_{s2}"
                w(f"{rows[s2]} = tl.zeros([BLOCK_Z" + (f", {p2(dim)}" if dim > 1 else "") + "], DT)")
        for seg in segs:
            self.emit_x1_segment(seg, *p.irreps_in1[seg], rows)
        if "x2" in self.want:
            self.store_x2(rows)

    def emit_x1_segment(self, seg, mul, ir, rows):
        """One loop over x1 segment ``seg``'s channel tiles. Its paths run grouped by the x2
        segment they read: that segment's lane partials of gx2 (one tile per component) live
        only through its paths and are then summed along the lanes into ``rows``."""
        w, p = self.w, self.p
        # grouped by x2 segment: its lane partials of gx2 are alive only through its paths
        paths = sorted(_paths(p, seg), key=lambda kp: (kp[1].i_in2, kp[0]))
        if not paths and "x1" not in self.want:
            return
        bc = min(p2(mul), self.block_c)
        w(f"# x1 segment {seg}: {mul}x{ir}, {len(paths)} paths")
        with self.lane_loop(mul, bc):
            w("m2d = zm[:, None] & cm[None, :]")
            self.load_cache = {}
            try:
                gx1 = [f"acc{m}" for m in range(ir.dim)]
                if "x1" in self.want:
                    for a in gx1:
                        w(f"{a} = tl.zeros([BLOCK_Z, {bc}], DT)")
                for s2 in sorted({i.i_in2 for _, i in paths}):
                    group = [(k, i) for k, i in paths if i.i_in2 == s2]
                    qs = {}
                    if "x2" in self.want:
                        for m in sorted({m for _, i in group for m in self._ms(i, 1)}):
                            qs[m] = f"q{s2}_{m}"
                            w(f"{qs[m]} = tl.zeros([BLOCK_Z, {bc}], DT)")
                    for k, ins in group:
                        self.emit_path(k, ins, gx1, qs)
                    if qs:
                        self.sum_lanes(s2, qs, rows[s2], bc)
                if "x1" in self.want:
                    self.tg = self.part_tg["x1"]
                    self.store_segment("x1", seg, ir, gx1)
            finally:
                self.load_cache = None

    def sum_lanes(self, s2: int, qs: dict, row: str, bc: int):
        """Add the lane partials ``qs`` (by component) of x2 segment ``s2``'s gradient, summed
        along the lanes, to its rows ``row``: joined into one ``[BLOCK_Z, bc, DP]`` tile first,
        so that one reduction (one exchange between warps) serves every component."""
        dim = self.p.irreps_in2[s2].ir.dim
        if dim == 1:
            self.w(f"{row} += tl.sum({qs[0]}, axis=1)")
            return
        zero = None
        tiles = []
        for m in range(dim):
            if m not in qs and zero is None:
                zero = self.fresh("zq")
                self.w(f"{zero} = tl.zeros([BLOCK_Z, {bc}], DT)")
            tiles.append(qs.get(m, zero))
        joined = self.join3d(tiles, f"BLOCK_Z, {bc}")
        self.w(f"{row} += tl.sum({joined}, axis=1)")

    def _ms(self, ins, which: int) -> list:
        return sorted({e[which] for e in self._nonzeros(ins)})

    def emit_path(self, k, ins, gx1, qs):
        """Path ``k``'s share of every part, inside its x1 segment's channel loop (``qs``: the
        lane partials of gx2 by component of the path's x2 segment). The parts' terms come by
        slot tensor (:func:`~.fused_specs.slot_terms`): x1's, ``w_b * s(x2_a)`` per term; the
        weights' and x2's share ``t(x1_y)``, one per x1-slot tensor ``y``, one component at a
        time. A tangent in the weight slot adds nothing on a path without weights."""
        w, st = self.w, self.slots
        nz = self._nonzeros(ins)
        w(f"# instruction {k}: {self._path_name(ins)}")
        g = {m: self.load(st.out, "out", self.elem(ins, "out", "c", m), True) for m in self._ms(ins, 2)}
        s_terms = [(a, b) for a, b, tangent in st.s if ins.has_weight or not tangent]
        x2s, wts = {}, {}
        for a in [a for a, _ in s_terms] + [a for uses, _ in st.t.values() for a in uses]:
            if a not in x2s:
                x2s[a] = {m: self.load(a, "x2", self.elem(ins, "x2", "0", m), False) for m in self._ms(ins, 1)}
        if ins.has_weight:
            addr = self.lane_addr(f"{self.woffs[k]} + c", "c", 1, self.woffs[k])
            for b in [b for _, b in s_terms] + [b for _, uses in st.t.values() for b, _ in uses]:
                if b is not None and b not in wts:
                    wts[b] = self.load(b, "w", addr, True)
        for a, b in s_terms:
            self.emit_contraction([(e[2], e[1], e[0], e[3]) for e in nz], g, x2s[a], wts.get(b), gx1)
        gw = None
        for y, (w_uses, x2_uses) in st.t.items():
            x1 = {m: self.load(y, "x1", self.elem(ins, "x1", "c", m), True) for m in self._ms(ins, 0)}
            by_j = defaultdict(list)
            for i, j, kk, c in nz:
                by_j[j].append((self.scaled(c, x1[i][0]), g[kk][0]))
            # one t_j at a time: each is consumed by the weight gradient and the x2 partial at once
            for j, pairs in sorted(by_j.items()):
                t = self.fma_sum(pairs)
                for a in w_uses if ins.has_weight else ():
                    if gw is None:
                        gw = self.fresh("gw")
                        w(f"{gw} = {x2s[a][j][0]}[:, None] * {t}")
                    else:
                        w(f"{gw} = tl.fma({x2s[a][j][0]}[:, None], {t}, {gw})")
                for b, tangent in x2_uses if j in qs else ():
                    wt = wts.get(b)
                    if wt:
                        w(f"{qs[j]} = tl.fma({wt[0]}, {t}, {qs[j]})")
                    elif not tangent:
                        w(f"{qs[j]} += {t}")
        if gw is not None:
            self.tg = self.part_tg["w"]
            self.store_tile(self.lane_addr(f"{self.woffs[k]} + c", "c", 1, self.woffs[k]), gw)

    def store_x2(self, rows):
        """Store the x2 gradient rows (the first piece: every segment, zeros where no path of
        it reaches; a later piece adds its rows to what is there)."""
        w, t = self.w, self.part_tg["x2"]
        for s2, (mul, ir) in enumerate(self.p.irreps_in2):
            row = rows.get(s2)
            if mul == 0 or (row is None and self.adds):
                continue
            off = self.offs["x2"][s2]
            dp = p2(ir.dim)
            if ir.dim == 1:
                addr, mask = f"g{t} + rg{t} + {off}", "zm"
            else:
                addr = f"g{t} + rg{t}[:, None] + ({off} + tl.arange(0, {dp}))[None, :]"
                mask = f"zm[:, None] & (tl.arange(0, {dp}) < {ir.dim})[None, :]"
            if row is None:
                row = "tl.zeros([BLOCK_Z" + (f", {dp}" if ir.dim > 1 else "") + "], DT)"
            elif self.adds:
                row = f"{row} + tl.load({addr}, mask={mask}, other=0.0).to(DT)"
            w(f"tl.store({addr}, ({row}).to(g{t}.dtype.element_ty), mask={mask})")


class FusedEmitter(FusedMixin, CGEmitter):
    """Writes the fused backward kernel over a batch of rows."""

    def __init__(self, problem: Problem, spec: FusedSpec, dtype: str, block_c: int, piece=None, coalesce=True):
        CGEmitter.__init__(self, problem, spec.parts[0], dtype, block_c, "ieee", None, True, coalesce)
        self.init_fused(spec, piece)


def emit_fused(problem: Problem, spec: FusedSpec, dtype: str = "float32", block_c: int = 64, piece=None,
               coalesce=True) -> str:
    """Triton source of the fused backward ``spec`` (:func:`fused_backward`) of ``problem``:
    the kernel ``tp_producer(t0.., s0.., g0, sg0, g1, sg1, .., Z, IDX64, BLOCK_Z, NW)``, one
    pointer and row stride per tensor argument and per part (its target, ``[Z, width]``), as
    :func:`~.cg_emit.emit_producer`'s; ``piece`` one of :func:`fused_pieces`."""
    if not isinstance(spec, FusedSpec):
        raise TypeError(f"spec must be a FusedSpec, got {type(spec).__name__}")
    if block_c < 1 or block_c & (block_c - 1):
        raise ValueError(f"block_c must be a power of two, got {block_c}")
    return FusedEmitter(problem, spec, dtype, block_c, piece, coalesce).emit()
