"""Emit the Triton source of one fused graph-convolution producer: gather, tensor product and
scatter-sum in one kernel pass.

A convolution is the tensor product's quadrilinear form over graph *edges* with row
indirection: tensors in roles ``x1`` (node features) are read at the edge's source node,
``out`` at its destination node, ``x2`` (edge attributes) and ``w`` (per-edge weights) at the
edge itself. The derivative rule of :mod:`cg_spec` is unchanged -- it works on roles -- so
every direction to any order is again a producer; only the row indexing and the way the
target is written depend on the target's role. Three write modes:

* ``"edge"``: the target is edge-indexed (``x2``, ``w``); one program per ``BLOCK_Z`` edges,
  plain stores (shared weights: per-program partials, as in the plain kernel);
* ``"atomic"``: the target is node-indexed (``out`` at dst, ``x1`` at src); one program per
  ``BLOCK_Z`` edges, each tile is ``tl.atomic_add``-ed into a zeroed fp32/fp64 buffer (a block
  of edges that share one target node adds the sum of its rows once);
* ``"segment"``: node-indexed target, deterministic: one program per target node, which walks
  that node's edges (a CSR segment of edges sorted by the target's endpoint) in chunks of
  ``BLOCK_Z``, adds every chunk's tile into a register tile, and stores the node's row once
  (one row-sum per target segment). The addition order is fixed, so results are bit-identical
  run to run. Target segments that share a channel loop (every output path of one x1 irrep,
  :meth:`CGEmitter.segment_groups`) share one walk, so each edge's x1 row is gathered once per
  loop group (3 times per edge for mace-large's forward, not once per output segment, 17).

Example:
    >>> from tritp.codegen import Problem
    >>> from tritp.codegen.cg_spec import forward_spec
    >>> p = Problem.channelwise("4x0e+4x1o", "0e+1o", "0e+1o", shared_weights=False)
    >>> src = emit_conv_producer(p, forward_spec(), "float32", mode="segment")
    >>> "for e0 in range(e_lo, e_hi, BLOCK_Z):" in src
    True
"""

from __future__ import annotations

from contextlib import contextmanager

from .cg_emit import DEFAULT_BLOCK_C, CGEmitter
from .cg_spec import ProducerSpec
from .problem import Problem

MODES = ("edge", "atomic", "segment")
EDGE_ROLES = ("x2", "w")
#: the index array of each endpoint's row variable (edge and atomic modes)
ENDPOINTS = {"zs": "src", "zd": "dst"}
# which endpoint of an edge indexes a node-role tensor


def write_mode(target: str, scatter: str) -> str:
    """The kernel mode for a target role under ``scatter`` ("atomic" or "deterministic")."""
    if target in EDGE_ROLES:
        return "edge"
    return "atomic" if scatter == "atomic" else "segment"


class ConvEmitter(CGEmitter):
    """A :class:`CGEmitter` whose rows are edges: overrides the row and store hooks."""

    def __init__(self, problem: Problem, spec: ProducerSpec, dtype: str, block_c: int, mode: str,
                 dot_precision: str = "ieee", piece=None, share_loads: bool = True, coalesce="3d",
                 block_sums: bool = True):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if (mode == "edge") != (spec.target in EDGE_ROLES):
            raise ValueError(f"mode {mode!r} does not fit target role {spec.target!r}")
        # coalesce defaults to the plain 3D tiles: the row-on-warp form over edge positions (rows
        # gathered per tile position, coalesce="rows") halves the atomic kernels' CTA barriers
        # offline (sm_90, mace-large at 8:64:8) but raises registers (Triton 3.6: 123 -> 162
        # forward, 128 -> 254 segment grad x1), so it waits for a GPU to time it (TRITP_CONV_ROWS=1)
        super().__init__(problem, spec, dtype, block_c, dot_precision, piece, share_loads, coalesce)
        self.mode = mode
        self.label = mode  # the write mode the source's first line names (a fused kernel's, conv_fused)
        # an atomic kernel's block of edges that share one target node sums its rows before
        # adding them (see emit_block_sum)
        self.block_sums = block_sums and mode == "atomic"

    def row_var(self, role: str) -> str:
        """The index variable that selects a tensor's row, by the tensor's role."""
        if role in EDGE_ROLES:
            return "ze"
        if self.mode == "segment":
            # edges of this program all share the target's endpoint: the node itself
            return "zself" if role == self.spec.target else "zn"
        return "zs" if role == "x1" else "zd"

    def kernel_args(self) -> list:
        n = len(self.spec.roles)
        graph = ["ptr", "eid", "nbr"] if self.mode == "segment" else ["src", "dst"]
        # tok: never read; it makes the launch depend on the index range check (see conv_ops)
        return ([f"t{i}" for i in range(n)] + [f"s{i}" for i in range(n)] + self.target_args() + graph
                + ["tok", "Z", "IDX64: tl.constexpr", "BLOCK_Z: tl.constexpr", "NW: tl.constexpr"])

    def _cast(self, names):
        # int32 arithmetic unless some offset can pass 2**31; index arrays may be int32 or int64
        with self.w.block("if IDX64:"):
            for n in names:
                self.w(f"{n} = {n}.to(tl.int64)")
        with self.w.block("else:"):
            for n in names:
                self.w(f"{n} = {n}.to(tl.int32)")

    def _offsets(self):
        for i, role in enumerate(self.spec.roles):
            self.w(f"r{i} = {self.row_var(role)} * s{i}")

    def _needed(self) -> set:
        return {self.row_var(r) for r in self.spec.roles}

    def _target_rows(self) -> set:
        return {self.row_var(self.part_role(t)) for t in self.tgs}

    def atomic_target(self) -> bool:
        """Whether the target being stored is added atomically into node rows (a fused edge
        kernel, conv_fused, adds x1's gradient so and stores its edge gradients)."""
        return self.tg in self.atomic_parts()

    def emit(self) -> str:
        return f"# conv write mode: {self.label}\n" + super().emit()

    def emit_prologue(self):
        w = self.w
        w("pid = tl.program_id(0)")
        if self.mode == "segment":
            # Z = number of target nodes; this program owns node pid and its edges e_lo..e_hi
            w("node = pid")
            w("e_lo = tl.load(ptr + node)")
            w("e_hi = tl.load(ptr + node + 1)")
            w("nsel = node")
            self._cast(["nsel"])
            w("rg = nsel * sg")
        elif not self.split_rows:
            self.emit_rows("pid * BLOCK_Z")

    def emit_rows(self, first: str):
        """Edges ``first + arange(BLOCK_Z)`` and the rows of their endpoints (edge modes)."""
        w = self.w
        need = self._needed() | self._target_rows()
        self.row_first = first
        w(f"z = {first} + tl.arange(0, BLOCK_Z)")
        w("zm = z < Z")
        w("ze = z")
        names = ["ze"]
        for var, arr in ENDPOINTS.items():
            if var in need:
                w(f"{var} = tl.load({arr} + z, mask=zm, other=0)")
                names.append(var)
        self._cast(names)
        self._offsets()
        for t in self.tgs:
            w(f"rg{t} = {self.row_var(self.part_role(t))} * sg{t}")
        if self.block_sums:
            self.emit_block_sum(first)
        self.emit_row_pointers(target=True)

    def atomic_parts(self) -> list:
        """The name suffixes of the targets this kernel adds atomically (:meth:`atomic_target`)."""
        return list(self.tgs) if self.mode == "atomic" else []

    def emit_block_sum(self, first: str):
        """For each atomic target (suffix ``t``): whether all edges of this block share one node
        of it (``one<t>``; that node's row offset ``rf<t>``), for :meth:`store_block_sum`. Each
        atomic add is an L2 operation, and their rate, not the arithmetic, bounds an atomic
        forward (mace-large: 9,088 per edge, 32 per output element of a node of the diamond
        graph). With the edges sorted by destination (as the caller passes them: the atomic
        strategy keeps their order), nearly every block of ``BLOCK_Z`` edges has one
        destination; sorted by source (a neighbour list's order), one source, which x1's
        gradient adds to.
        Such a block sums its rows and adds them once (``BLOCK_Z`` times fewer adds, and fewer
        adds contending for one address); a block of several adds every row, as before.
        Offline for sm_90 (mace-large, 8:64:8, Triton 3.9) the forward needs fewer registers so
        (124, row by row 146; mace-medium 114 against 102); its rows span the warps, so each
        sum is an exchange through shared memory (CTA barriers 32 -> 256 in the code, in the
        branch a block takes). The sum's layout replicates it across threads; Triton masks the
        replicas of an atomic's operand, so each element is added once. In the row-on-warp
        form (``TRITP_CONV_ROWS=1``) the 3D tiles keep row-by-row adds."""
        w = self.w
        for t in self.atomic_parts():
            var = self.row_var(self.part_role(t))
            w(f"kf{t} = tl.load({ENDPOINTS[var]} + {first})")
            self._cast([f"kf{t}"])
            w(f"one{t} = tl.sum((zm & ({var} != kf{t})).to(tl.int32), axis=0) == 0")
            w(f"rf{t} = kf{t} * sg{t}")

    def store_block_sum(self, value: str, rows: tuple, lanes: str, lane_mask: str):
        """Atomic adds of target tile ``value``: summed over its rows at lane offsets ``lanes``
        of the one node's row where the block has one (:meth:`emit_block_sum`), else row by
        row (``rows``: pointers and mask)."""
        w, t = self.w, self.tg
        with w.block(f"if one{t}:"):
            w(f"tl.atomic_add(g{t} + rf{t} + ({lanes}), tl.sum({value}, axis=0), mask={lane_mask}, sem='relaxed')")
        with w.block("else:"):
            w(f"tl.atomic_add({rows[0]}, {value}, mask={rows[1]}, sem='relaxed')")

    @contextmanager
    def row_block(self, group: list, bc: int):
        if self.mode != "segment":
            yield
            return
        w = self.w
        # one walk over the node's edges for the whole channel loop group: every operand tile
        # the group's segments share (x1's segment under all its output paths) is gathered
        # once per edge, not once per segment. Each segment's node accumulators stay
        # [BLOCK_Z, bc] tiles across chunks (no reduction per chunk) and are row-summed once at
        # the store; acc<m> starts at zero each chunk, so `n += acc` folds away.
        for seg, _, ir, _, _ in group:
            for m in range(ir.dim):
                w(f"n{seg}_{m} = tl.zeros([BLOCK_Z, {bc}], DT)")
        self.walked = []
        with w.block("for e0 in range(e_lo, e_hi, BLOCK_Z):"):
            w("z = e0 + tl.arange(0, BLOCK_Z)")
            w("zm = z < e_hi")
            w("ze = tl.load(eid + z, mask=zm, other=0)")
            names = ["ze"]
            if "zn" in self._needed():
                w("zn = tl.load(nbr + z, mask=zm, other=0)")
                names.append("zn")
            self._cast(names)
            if "zself" in self._needed():
                w("zself = tl.zeros([BLOCK_Z], ze.dtype) + nsel")
            self._offsets()
            self.emit_row_pointers(target=False)  # the node's row (rg) is one scalar here
            if self.tiles3d:  # this chunk's edges in the row-on-warp form (cg_tiles.rows_head)
                self.row_first, self.row_bound = "e0", "e_hi"
                self.rows_lanes(self.lane_dims, "c", "c0", group[0][1], bc)
            yield
        for role, seg, ir, nodes in self.walked:
            self.store_segment(role, seg, ir, nodes)

    # -- row-on-warp tiles over edges: positions are edges, rows are their endpoints -----------
    def rows_in_lane_head(self) -> bool:
        return self.mode != "segment"  # a node's tiles open per chunk of its edges (row_block)

    def rows_gather(self, k: int):
        """Width ``k``'s row indices of every gathered role: the endpoints (or, in segment
        mode, the edge ids and neighbours) of the tile's edge positions ``wz<k>``."""
        arrays = ENDPOINTS if self.mode != "segment" else {"ze": "eid", "zn": "nbr"}
        names = [(f"w{var}{k}", arrays[var]) for var in sorted(self._needed() | self._target_rows())
                 if var in arrays]
        if not names:
            return
        w = self.w
        # one row per tile row (WZ == 1, the usual case): gather a [R, 1] column, not [R, 32]
        # copies of it -- index tiles as large as the data tiles cost ~100 registers at 8:64:8
        with w.block(f"if WZ{k} == 1:"):
            w(f"wp{k} = {self.row_first} + wr{k} % BLOCK_Z")
            for name, arr in names:
                w(f"{name} = tl.load({arr} + wp{k}, mask=wp{k} < {self.row_bound}, other=0)")
        with w.block("else:"):
            for name, arr in names:
                w(f"{name} = tl.load({arr} + wz{k}, mask=wm{k}, other=0)")
        self._cast([name for name, _ in names])

    def rows_index(self, role: str, k: int) -> str:
        var = self.row_var(role)
        if var == "zself":
            return "nsel"
        return f"wz{k}" if var == "ze" and self.mode != "segment" else f"w{var}{k}"

    def segment_done(self, role, seg, ir, accs: list):
        if self.mode != "segment":
            super().segment_done(role, seg, ir, accs)
            return
        nodes = [f"n{seg}_{m}" for m in range(len(accs))]
        for n, a in zip(nodes, accs):
            self.w(f"{n} += {a}")
        self.walked.append((role, seg, ir, nodes))  # stored after the walk (row_block)

    def store_tile(self, addr: str, value: str):
        if self.mode == "segment":
            # masked rows hold zeros, so summing the whole tile is exact
            self.w(f"tl.store(g + rg + ({addr}), tl.sum({value}, axis=0).to(g.dtype.element_ty), mask=cm)")
        elif self.block_sums and self.atomic_target():
            self.store_block_sum(value, (f"gp{self.tg} + {self.lanes2d(addr)}", "m2d"), addr, "cm")
        elif self.atomic_target():
            # g is a zeroed fp32/fp64 buffer; relaxed order suffices for a pure sum
            self.w(f"tl.atomic_add(gp{self.tg} + {self.lanes2d(addr)}, {value}, mask=m2d, sem='relaxed')")
        else:
            super().store_tile(addr, value)

    def store_tile3d(self, off: int, dim: int, accs: list):
        if self.mode == "segment":  # the node's row: [lanes, DP], one sum over its edges each
            v = self.join3d([f"tl.sum({a}, axis=0)" for a in accs], str(self.lane_bc))
            self.w(f"tl.store(g + rg + (cf{dim} + {off}), {v}.to(g.dtype.element_ty), mask=cm[:, None] & ef{dim})")
        elif self.atomic_target():
            v = self.join3d(accs, f"BLOCK_Z, {self.lane_bc}")
            if dim in self.rows_dims.get("c", ()):  # row-on-warp form (one add per row)
                v = self.rows_flat(v, dim)
                self.w(f"tl.atomic_add({self.rows_target(dim, off)}, {v}, mask=wm{dim}, sem='relaxed')")
                return
            if self.block_sums:
                rows = (self.at3d(f"gp{self.tg}", f"cf{dim}", off), f"m2d[:, :, None] & ef{dim}[None, :, :]")
                self.store_block_sum(v, rows, f"cf{dim} + {off}", f"cm[:, None] & ef{dim}")
                return
            self.w(f"tl.atomic_add({self.at3d(f'gp{self.tg}', f'cf{dim}', off)}, {v}, "
                   f"mask=m2d[:, :, None] & ef{dim}[None, :, :], sem='relaxed')")
        else:
            super().store_tile3d(off, dim, accs)


def emit_conv_producer(problem: Problem, spec: ProducerSpec, dtype: str = "float32",
                       block_c: int = DEFAULT_BLOCK_C, mode: str = "atomic", dot_precision: str = "ieee",
                       piece=None, share_loads: bool = True, coalesce="3d", block_sums: bool = True) -> str:
    """Triton source of the convolution producer ``spec`` for ``problem`` in write ``mode``.

    Kernel signature ``tp_producer(t0.., s0.., g, sg, <graph>, tok, Z, IDX64, BLOCK_Z)``: one
    pointer and row stride per tensor argument, the target and its row stride, then ``src, dst``
    (edge and atomic modes; ``Z`` = number of edges) or ``ptr, eid, nbr`` (segment mode: CSR
    pointers of the target's endpoint, edge ids in that order, and each edge's other endpoint;
    ``Z`` = number of target nodes), and an unread ``tok`` pointer (a data dependency only).
    ``dot_precision``, ``piece``, ``share_loads`` and ``coalesce`` are as in ``emit_producer``,
    except that ``coalesce`` defaults to the plain 3D tiles: ``"rows"`` (or True) puts the
    convolution's tiles in the row-on-warp form (``cg_tiles``) over edge positions, gathering
    each tensor's rows per tile position. ``block_sums`` (atomic mode): a block of edges with
    one target node sums its rows before adding them (:meth:`ConvEmitter.emit_block_sum`);
    False adds every row.
    """
    if block_c < 1 or block_c & (block_c - 1):
        raise ValueError(f"block_c must be a power of two, got {block_c}")
    if dot_precision not in ("ieee", "tf32"):
        raise ValueError(f"dot_precision must be 'ieee' or 'tf32', got {dot_precision!r}")
    return ConvEmitter(problem, spec, dtype, block_c, mode, dot_precision, piece, share_loads, coalesce,
                       block_sums).emit()
