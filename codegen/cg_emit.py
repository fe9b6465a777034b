"""Emit the Triton source of one sparse Clebsch-Gordan producer kernel.

One program handles ``BLOCK_Z`` batch rows and walks every segment of the target role; within
a segment the target's channels are a vector of ``BLOCK_C`` lanes (the tile is
``[BLOCK_Z, BLOCK_C]``), and the channel letters the target does not carry become loops.
Segments of one width that read the same operand segment (every output path of one x1 irrep in
a channelwise forward) share one loop over the channel tiles, so that operand tile is loaded
once per tile, not once per segment (:meth:`CGEmitter.segment_groups`). The
nonzero coupling entries, times e3nn's normalization (and path weight), are unrolled as
literals; operands that do not depend on the vector lanes are loaded as ``[BLOCK_Z]`` rows and
contracted with the coupling *before* the broadcast, so the 2D work is one multiply-add per
(lane operand m, target m) pair rather than per nonzero.

Example:
    >>> from tritp.codegen import Problem
    >>> from tritp.codegen.cg_spec import forward_spec
    >>> p = Problem.channelwise("4x0e+4x1o", "0e+1o", "0e+1o")
    >>> src = emit_producer(p, forward_spec(), "float32")
    >>> "@triton.jit" in src and "tl.store" in src
    True
"""

from __future__ import annotations

from contextlib import contextmanager

from .cg_gemm import GemmMixin
from .cg_pieces import Partial
from .cg_spec import ProducerSpec, letters, loop_groups, tile_keys
from .cg_terms import TermMixin
from .cg_tiles import TileMixin, form_name
from .intmath import p2
from .problem import Problem
from .writer import SourceWriter

KERNEL_NAME = "tp_producer"
DEFAULT_BLOCK_C = 64


class CGEmitter(TermMixin, GemmMixin, TileMixin):
    """Writes one producer kernel; subclasses override the row/store hooks below."""

    def __init__(self, problem: Problem, spec: ProducerSpec, dtype: str, block_c: int, dot_precision: str = "ieee",
                 piece=None, share_loads: bool = True, coalesce: bool = True):
        self.p, self.spec, self.block_c = problem, spec, block_c
        self.share = share_loads
        # mul_ir segments as one coalesced 3D tile per load and store (see cg_tiles), in the
        # row-on-warp form where this kernel's rows allow it unless coalesce == "3d"
        form = form_name(coalesce)
        self.tiles3d = form != "strided" and problem.layout == "mul_ir"
        self.rows_form = self.tiles3d and form == "rows"
        self.rows_dims = {}  # {lanes: segment widths loaded along them in row-on-warp form} (cg_tiles)
        self.row_first = None  # this program's first row, where its rows are its own (emit_rows)
        self.row_bound = "Z"  # the rows past which a row-on-warp tile is masked
        self.seg3d = {}  # {lane address: how to load it as part of a 3D tile} (cg_tiles)
        self.qlane = None  # (lanes, mask, width) of a one-channel target's reduced lanes, inside them
        self.term_cache = {}  # 3D tiles loaded by the current term (no shared loop)
        self.lane_bc = None  # the open channel loop's tile width
        # target segments (instructions for a weight target) this kernel writes; None: all
        self.piece = None if piece is None else frozenset(piece)
        # a Partial piece (one-channel target): its instructions, into its own slab of the target
        self.partial = piece if isinstance(piece, Partial) else None
        self.dot_precision = "ieee" if dtype == "float64" else dot_precision
        self.uses_dot = False
        self.load_cache = None  # {load key: (variable, kind)} while a channel loop shares loads
        # {lane address: its [1, bc] form from the loop head's offsets}; see lane_offsets
        self.lane_forms = {}
        self.in_lane_loop = False
        self.dt = {"float32": "tl.float32", "float64": "tl.float64"}[dtype]
        self.exact_consts = dtype == "float64"
        self.w = SourceWriter()
        self.uid = 0
        self.segs = {"x1": problem.irreps_in1, "x2": problem.irreps_in2, "out": problem.irreps_out}
        self.offs = {r: s.offsets() for r, s in self.segs.items()}
        self.slab_off = self.partial.slab * self.segs[spec.target].dim if self.partial is not None else 0
        # irrep dimensions a mul_ir lane offset is scaled by (lane_loop's cd<k>)
        self.lane_dims = sorted({ir.dim for segs in self.segs.values() for _, ir in segs} - {1})
        self.woffs = problem.weight_offsets()
        # shared-weight gradients sum over the whole batch: a fixed grid of programs strides
        # over the row blocks and writes one partial row each (split-K), not one per block
        self.split_rows = spec.target == "w" and problem.shared_weights
        # suffix of the target names g<s>, sg<s>, rg<s>, gp<s> the stores use (a kernel with
        # several targets, cg_fused, switches it per target); the names of each target
        self.tg, self.tgs = "", ("",)

    def fresh(self, stem: str) -> str:
        self.uid += 1
        return f"{stem}{self.uid}"

    def const(self, c: float) -> str:
        # fp32 literals would round fp64 coefficients; tl.full keeps every bit
        return f"tl.full([], {c!r}, DT)" if self.exact_consts else repr(c)

    # -- operand addressing --------------------------------------------------------------------
    def seg_index(self, ins, role: str) -> int:
        return ins.segment(role)

    def elem(self, ins, role: str, ch: str, m: int) -> str:
        seg = self.seg_index(ins, role)
        mul, ir = self.segs[role][seg]
        off = self.offs[role][seg]
        if self.p.layout == "mul_ir":
            addr = self.lane_addr(f"{off} + ({ch}) * {ir.dim} + {m}", ch, ir.dim, off + m)
            self.note_seg3d(addr, off, ir.dim, m, ch)
            return addr
        return self.lane_addr(f"{off + m * mul} + ({ch})", ch, 1, off + m * mul)

    def lane_addr(self, addr: str, ch: str, scale: int, const: int) -> str:
        """``addr`` (``const + ch * scale`` along the lanes); where ``ch`` is the channel loop's
        ``c``, its ``[1, bc]`` form ``cd<scale> + const`` is noted for :meth:`lanes2d`."""
        if ch == "c" and self.in_lane_loop:
            # parenthesized: one pointer add of a 32-bit offset, not two 64-bit adds
            self.lane_forms[addr] = f"({'c2' if scale == 1 else f'cd{scale}'} + {const})"
        return addr

    def lanes2d(self, addr: str) -> str:
        """Lane offsets ``addr`` as a ``[1, bc]`` tile: from the loop head's ``c2``/``cd<k>``
        where :meth:`lane_addr` noted one (a few front-end ops instead of the whole expression
        per load: the source is thousands of loads, and Triton's Python front end and MLIR
        passes pay per op; the compiled kernel is the same after CSE)."""
        form = self.lane_forms.get(addr) if self.in_lane_loop else None
        return form if form is not None else f"({addr})[None, :]"

    @contextmanager
    def lane_loop(self, n: int, bc: int):
        """A channel loop ``for c0 in range(0, n, bc)`` opened with ``c``, ``cm`` and the lane
        offsets its loads and stores share: ``c2 = c[None, :]`` and ``cd<k> = c2 * k`` for each
        irrep dimension ``k > 1`` of the problem (unused ones are dead code)."""
        with self.w.block(f"for c0 in range(0, {n}, {bc}):"):
            self.w(f"c = c0 + tl.arange(0, {bc})")
            self.w(f"cm = c < {n}")
            self.w("c2 = c[None, :]")
            if self.p.layout == "mul_ir":
                for k in self.lane_dims:
                    self.w(f"cd{k} = c2 * {k}")
            if self.tiles3d:
                self.lane_head3d(self.lane_dims, n, bc)
            self.in_lane_loop, self.lane_bc = True, bc
            try:
                yield
            finally:
                self.in_lane_loop, self.lane_bc = False, None
                self.seg3d, self.rows_dims = {}, {}

    def load(self, t: int, role: str, addr: str, tile: bool, mask: str = "m2d", lane_mask: str = "cm") -> tuple:
        """Emit a load; returns (variable, kind) with kind in '2d', 'z', 's'. Within one channel
        loop (:meth:`segment_groups`, while loads are shared) an identical tile load already
        emitted there is reused: a load inside a term's own loop names that loop's variable,
        so it can only match within it."""
        if not tile:  # [rows] operands are cheap to reload and costly to keep (registers)
            return self._load(t, role, addr, tile, mask, lane_mask)
        if addr in self.seg3d and mask == self.seg3d[addr].mask:
            return self.load3d(t, role, addr)
        key = (t, role, addr, tile, mask, lane_mask)
        if self.load_cache is not None and key in self.load_cache:
            return self.load_cache[key]
        ans = self._load(t, role, addr, tile, mask, lane_mask)
        if self.load_cache is not None:
            self.load_cache[key] = ans
        return ans

    def _load(self, t, role, addr, tile, mask, lane_mask) -> tuple:
        v = self.fresh("v")
        shared_w = role == "w" and self.p.shared_weights
        if shared_w:
            if tile:
                self.w(f"{v} = tl.load(t{t} + ({addr}), mask={lane_mask}, other=0.0).to(DT)[None, :]")
                return v, "2d"
            self.w(f"{v} = tl.load(t{t} + ({addr})).to(DT)")
            return v, "s"
        if tile:
            self.w(f"{v} = tl.load(tp{t} + {self.lanes2d(addr)}, mask={mask}, other=0.0).to(DT)")
            return v, "2d"
        self.w(f"{v} = tl.load(t{t} + r{t} + ({addr}), mask=zm, other=0.0).to(DT)")
        return v, "z"

    # -- kernel ----------------------------------------------------------------------------------
    def emit(self) -> str:
        w, spec = self.w, self.spec
        w("# Generated by tritp.codegen.cg_emit -- do not edit.")
        w(f"# problem: {self.p.key}")
        w(f"# target: {spec.target}; terms: {spec.tag}")
        if self.partial is not None:
            w(f"# piece: instructions {sorted(self.piece)}, summed into slab {self.partial.slab} of {self.partial.slabs}")
        elif self.piece is not None:
            w(f"# piece: {'instructions' if spec.target == 'w' else 'segments'} {sorted(self.piece)}")
        w("import triton")
        w("import triton.language as tl")
        w("")
        w("")
        # Z (rows) is only compared with: specializing it (Z % 16 == 0, Z == 1) would compile a
        # second copy the first time a batch size crosses that line, and keep precompile honest
        w('@triton.jit(do_not_specialize=["Z"])')
        with w.block(f"def {KERNEL_NAME}({', '.join(self.kernel_args())}):"):
            # constants live in the body: a kernel that names no module global is keyed by
            # tritp.jit_key without Triton's walk over its source
            w(f"DT: tl.constexpr = {self.dt}")
            w(f"DOT_PREC: tl.constexpr = {self.dot_precision!r}")
            self.emit_prologue()
            if self.split_rows:
                with w.block("if IDX64:"):  # shared-weight partials: row pid of [programs, numel]
                    w("pg = pid.to(tl.int64) * sg")
                with w.block("else:"):
                    w("pg = pid * sg")
            if spec.target == "w":
                self.emit_weight_target()
            else:
                self.emit_segment_target()
        w("")
        w("")
        w("# tl.dot needs at least 16 rows per program")
        w(f"MIN_BLOCK_Z = {16 if self.uses_dot else 1}")
        return w.text()

    # -- hooks a subclass (e.g. the fused graph convolution) overrides --------------------------
    def kernel_args(self) -> list:
        n = len(self.spec.roles)
        # NW: the launch's num_warps, which the row-on-warp tiles follow (cg_tiles.rows_head)
        return ([f"t{i}" for i in range(n)] + [f"s{i}" for i in range(n)] + self.target_args()
                + ["Z", "IDX64: tl.constexpr", "BLOCK_Z: tl.constexpr", "NW: tl.constexpr"])

    def part_role(self, t: str) -> str:
        """The role of the target named with suffix ``t`` (``g<t>``): the spec's one target (a
        fused graph-convolution kernel's parts have rows of their own, conv_fused)."""
        return self.spec.target

    def target_args(self) -> list:
        """Each target's pointer and row stride: ``g, sg`` (``g<s>, sg<s>`` per suffix ``tgs``)."""
        return [x for t in self.tgs for x in (f"g{t}", f"sg{t}")]

    def emit_prologue(self):
        """The program id ``pid``, and unless rows are split (see :meth:`row_loop`) this
        program's rows (:meth:`emit_rows`)."""
        self.w("pid = tl.program_id(0)")
        if not self.split_rows:
            self.emit_rows("pid * BLOCK_Z")

    @contextmanager
    def row_loop(self):
        """Context of a shared-weight gradient's accumulation: a loop over this program's row
        blocks (every ``num_programs``-th), each opened by :meth:`emit_rows`."""
        if not self.split_rows:
            yield
            return
        with self.w.block("for zb in range(pid * BLOCK_Z, Z, tl.num_programs(0) * BLOCK_Z):"):
            self.emit_rows("zb")
            yield

    def emit_rows(self, first: str):
        """Rows ``first + arange(BLOCK_Z)``: ``z``, mask ``zm``, row offsets ``r<i>`` / ``rg``."""
        w = self.w
        self.row_first = first
        w(f"z = {first} + tl.arange(0, BLOCK_Z)")
        w("zm = z < Z")
        with w.block("if IDX64:"):
            w("zz = z.to(tl.int64)")
        with w.block("else:"):
            w("zz = z")
        for i in range(len(self.spec.roles)):
            w(f"r{i} = zz * s{i}")
        for t in self.tgs:
            w(f"rg{t} = zz * sg{t}")
        self.emit_row_pointers(target=True)

    def emit_row_pointers(self, target: bool):
        """Each operand's row pointers ``tp<i> = t<i> + r<i>[:, None]`` (and the target's,
        ``gp``), once per row block: a tile load or store adds only its lane offsets."""
        for i in range(len(self.spec.roles)):
            self.w(f"tp{i} = t{i} + r{i}[:, None]")
        if target:
            for t in self.tgs:
                self.w(f"gp{t} = g{t} + rg{t}[:, None]")

    def store_tile(self, addr: str, value: str):
        """Store a ``[BLOCK_Z, BLOCK_C]`` target tile at channel offsets ``addr``."""
        t = self.tg
        self.w(f"tl.store(gp{t} + {self.lanes2d(addr)}, {value}.to(g{t}.dtype.element_ty), mask=m2d)")

    def store_shared_weight(self, addr: str, value: str):
        """Store this program's batch-reduced partial of a shared-weight gradient."""
        self.w(f"tl.store(g + pg + ({addr}), tl.sum({value}, axis=0).to(g.dtype.element_ty), mask=cm)")

    @contextmanager
    def row_block(self, group: list, bc: int):
        """Context around one channel loop group's accumulation (its segments' masks, zeroed
        accumulators and terms); each segment is finished by :meth:`segment_done` inside it. A
        fused variant wraps it, e.g. in a walk over row chunks, and stores after that walk."""
        yield

    def segment_done(self, role, seg, ir, accs: list):
        """A target segment's accumulators ``accs`` are complete: store them (here, at once)."""
        self.store_segment(role, seg, ir, accs)

    def store_segment(self, role, seg, ir, accs: list):
        """Store a target segment's accumulator tiles ``accs`` (one per component)."""
        if self.tiles3d and ir.dim > 1:
            self.store_tile3d(self.offs[role][seg] + self.slab_off, ir.dim, accs)
            return
        for m, a in enumerate(accs):
            self.store_tile(self._target_addr(role, seg, m), a)

    def share_loads(self) -> bool:
        """Whether target segments of one tile width may share one channel loop (and the loads
        their terms have in common)."""
        return self.share

    def segment_groups(self) -> list:
        """The target segments this kernel writes, as groups run in one channel loop each:
        ``[[(seg, mul, ir, inss, bc), ...], ...]``. Segments of one channel count and tile
        width that read one operand tile (:func:`~tritp.codegen.cg_spec.loop_keys`: x1 under
        every output path of one x1 irrep in a channelwise forward), without GEMM terms or a
        one-channel target, share a loop, ordered by the segments they read: that tile is
        loaded once per channel tile and its registers are freed after its last reader."""
        role = self.spec.target
        units, classes = [], []
        for seg, (mul, ir) in enumerate(self.segs[role]):
            if mul == 0 or (self.piece is not None and self.partial is None and seg not in self.piece):
                continue
            # (index, instruction): a problem may hold equal instructions twice (e3nn allows it),
            # each with its own weights, so never look an instruction up by equality
            inss = [(k, i) for k, i in enumerate(self.p.instructions)
                    if self.seg_index(i, role) == seg and 0 not in i.path_shape
                    and not (self.partial is not None and k not in self.piece)]
            dot = any(self.dot_letter(i) for _, i in inss)
            units.append((seg, mul, ir, inss, max(min(p2(mul), self.block_c), 16 if dot else 1)))
            # one tile width; not a one-channel target (lanes of its own) nor GEMM terms
            classes.append((mul,) if self.share_loads() and mul > 1 and not dot else None)
        src = [r for r in ("x1", "x2", "out") if r != role]
        reads = lambda u: sorted(tuple(self.seg_index(i, r) for r in src) for _, i in u[3])
        groups = loop_groups(units, [tile_keys(self.p, self.spec, u[3]) for u in units], classes)
        return [sorted(g, key=lambda u: (reads(u), u[0])) for g in groups]

    def emit_segment_target(self):
        role = self.spec.target
        for group in self.segment_groups():
            _, mul, _, _, bc = group[0]
            # always a loop, even of one trip: names defined in its body (c, cm, m2d, acc*) stay
            # local to it, so a later segment with another tile width is not a loop-carried
            # type change (which Triton's compiler rejects and the interpreter does not notice)
            with self.lane_loop(mul, bc):
                shared = self.share_loads()
                with self.row_block(group, bc):
                    if shared:  # every segment of the group reads rows and lanes under one mask
                        self.w("m2d = zm[:, None] & cm[None, :]")
                        self.load_cache = {}
                    try:
                        for seg, _, ir, inss, _ in group:
                            accs = self.emit_segment(role, seg, mul, ir, inss, bc, mask=not shared)
                            self.segment_done(role, seg, ir, accs)
                    finally:
                        self.load_cache = None

    def emit_segment(self, role, seg, mul, ir, inss, bc, mask: bool) -> list:
        """One target segment's accumulation inside its group's :meth:`row_block` (``mask``:
        define ``m2d`` first, as the group did not); returns its accumulator names."""
        self.w(f"# target segment {seg}: {mul}x{ir}")
        accs = [f"acc{m}" for m in range(ir.dim)]
        # a one-channel target (e.g. the gradient of mul-1 edge harmonics) would leave a
        # [rows, 1] tile and loop serially over the other operands' channels: instead
        # those channels become lanes of [rows, lanes] accumulators, summed once at the end
        red = {k: self.reduction_letter(i) for k, i in inss} if mul == 1 else {}
        lanes = max([self.letters(i)[1][ch] for k, i in inss if (ch := red.get(k))] + [0])
        self.lanes = min(p2(lanes), self.block_c) if lanes else 0
        if mask:
            self.w("m2d = zm[:, None] & cm[None, :]")
        for a in accs:
            self.w(f"{a} = tl.zeros([BLOCK_Z, {bc}], DT)")
            if self.lanes:
                self.w(f"q{a} = tl.zeros([BLOCK_Z, {self.lanes}], DT)")
        for k, ins in inss:
            for term in self.spec.terms:
                if not ins.has_weight and term[4]:
                    continue
                self.emit_term(k, ins, term, accs, red.get(k))
        if self.lanes:
            for a in accs:
                self.w(f"{a} += tl.sum(q{a}, axis=1)[:, None]")
        return accs

    def _target_addr(self, role, seg, m):
        mul, ir = self.segs[role][seg]
        off = self.offs[role][seg] + self.slab_off
        if self.p.layout == "mul_ir":
            return self.lane_addr(f"{off} + c * {ir.dim} + {m}", "c", ir.dim, off + m)
        return self.lane_addr(f"{off + m * mul} + c", "c", 1, off + m * mul)

    def letters(self, ins):
        return letters(self.p, ins)

    def vector_letters(self, tl_letters: str, sizes: dict) -> dict:
        vals, inner = {}, 1
        for ch in reversed(tl_letters):
            e = "c" if inner == 1 else f"(c // {inner})"
            vals[ch] = "0" if sizes[ch] == 1 else (e if ch == tl_letters[0] else f"({e} % {sizes[ch]})")
            inner *= sizes[ch]
        return vals


def emit_producer(problem: Problem, spec: ProducerSpec, dtype: str = "float32",
                  block_c: int = DEFAULT_BLOCK_C, dot_precision: str = "ieee", piece=None,
                  share_loads: bool = True, coalesce: bool = True) -> str:
    """Triton source of the producer kernel ``spec`` for ``problem`` (``dtype`` is the
    accumulation type: ``float32`` for fp16/bf16/fp32 inputs, ``float64`` for fp64).

    The kernel ``tp_producer(t0.., s0.., g, sg, Z, IDX64, BLOCK_Z)`` takes one pointer and one
    row stride per tensor argument, the target pointer and its row stride, and the batch size.
    Channel-mixing terms with shared weights become ``tl.dot`` GEMMs (tensor cores) with
    ``dot_precision`` ("tf32" or "ieee"; fp64 kernels always "ieee"); the module then sets
    ``MIN_BLOCK_Z = 16``. ``piece`` (see :mod:`.cg_pieces`) restricts the kernel to those target
    segments (instructions for a weight target); the default writes the whole target.
    ``share_loads=False`` gives every target segment its own channel loop, reloading the
    operand tiles segments have in common (see :meth:`CGEmitter.segment_groups`).
    ``coalesce=False`` reads and writes ``mul_ir`` segments as one strided tile per component
    instead of one coalesced 3D tile (:mod:`.cg_tiles`; kept to time the two forms).
    """
    if block_c < 1 or block_c & (block_c - 1):
        raise ValueError(f"block_c must be a power of two, got {block_c}")
    if dot_precision not in ("ieee", "tf32"):
        raise ValueError(f"dot_precision must be 'ieee' or 'tf32', got {dot_precision!r}")
    return CGEmitter(problem, spec, dtype, block_c, dot_precision, piece, share_loads, coalesce).emit()
