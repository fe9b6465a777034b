"""Coalesced ``mul_ir`` segment tiles: one ``[rows, lanes, DP]`` load or store per segment.

In ``mul_ir`` a segment ``mul x (2l+1)`` stores channel ``c``, component ``m`` at
``c * (2l+1) + m``. A kernel that computes on one ``[rows, lanes]`` tile per component reads
and writes each of those tiles at stride ``2l+1``: every warp access then touches ``2l+1``
times the sectors it uses, and the stores (which no cache merges) are what costs most. On an
H200 (``benchmarks/layout_micro.py``) a scale-by-row kernel over ``128 x (2l+1)`` moved 500 to
1,400 GB/s with strided component tiles, 1,600 to 3,000 GB/s with the tiles below, and 3,400 to
4,000 GB/s in ``ir_mul`` (where a component tile is contiguous).

So a segment is loaded as one 3D tile over ``(row, channel, component)``, the component axis
padded to ``DP = 2**ceil(log2(2l+1))`` and masked: its addresses run in memory order across a
warp's lanes, so the access is coalesced. ``tl.reshape`` to ``[.., 2, .., 2]`` and a tree of
``tl.split`` give the per-component ``[rows, lanes]`` tiles the sparse coupling works on
(Triton moves the data between the two layouts through shared memory); a store joins the
component accumulators back with a tree of ``tl.join``. Components and lanes keep their
meaning, so the terms and the coupling are unchanged. The lanes are the channel loop's ``c``, or,
for a one-channel target (the forces kernel), the reduced channels ``q`` its operands are read
along. On sm_90 the 3D tiles cost registers, which the launch estimate counts
(:data:`tritp.tuning.registers.PER_3D`).

Where a program's rows are one range of its own (not a shared-weight gradient's strided
blocks) and a segment's lanes times ``DP`` fill a warp's 32 columns, the tile is loaded and
stored in the *row-on-warp* form (:meth:`TileMixin.rows_head`): a 2D ``[R, 32]`` pointer tile
whose warps run along the rows as in the compute layout, permuted to ``[rows, lanes, DP]`` --
the same values, with the split and join conversions kept within each warp. A fused
convolution's rows are edge positions whose tensors' rows are gathered per tile position
(:meth:`TileMixin.rows_index`; on request only, see ``conv_emit``). ``coalesce="3d"``
(``TRITP_COALESCE=3d``) keeps the 3D pointer tiles everywhere.

Example:
    >>> from tritp.codegen import Problem
    >>> from tritp.codegen.cg_emit import emit_producer
    >>> from tritp.codegen.cg_spec import forward_spec
    >>> src = emit_producer(Problem.channelwise("8x1o", "0e", "8x1o"), forward_spec(), "float32")
    >>> "tl.split(" in src and "tl.join(" in src
    True
"""

from __future__ import annotations

from typing import NamedTuple

from .intmath import p2


#: ``coalesce`` values: True or "rows" (3D tiles, row-on-warp where rows allow), "3d" (3D tiles
#: only), False or "strided" (one strided tile per component)
TILE_FORMS = (True, False, "rows", "3d", "strided")


def form_name(coalesce) -> str:
    """A ``coalesce`` argument as the name of its tile form: True is the default, ``"rows"``.

    Example:
        >>> form_name(True), form_name(False), form_name("3d")
        ('rows', 'strided', '3d')
    """
    if coalesce not in TILE_FORMS:
        raise ValueError(f"coalesce must be one of {TILE_FORMS}, got {coalesce!r}")
    return {True: "rows", False: "strided"}.get(coalesce, coalesce)


class Tile3D(NamedTuple):
    """How one component address is read as part of its segment's 3D tile."""

    off: int        # the segment's offset in the row
    dim: int        # its components, 2l+1
    m: int          # this address's component
    lane: str       # the lane variable ("c", or a one-channel target's reduced lanes)
    mask: str       # the [rows, lanes] mask a component tile load of these lanes uses
    offs: str       # [lanes, DP] offsets lane * dim + arange(DP)
    comp_mask: str  # [1, 1, DP] mask of the real components
    width: int      # lanes


class TileMixin:
    """3D segment tiles for :class:`~tritp.codegen.cg_emit.CGEmitter` (``self.tiles3d``);
    relies on its ``w``, ``fresh``, ``load_cache``, ``lane_bc`` and the lane-loop names
    ``cf<k>`` (``[lanes, DP]`` offsets ``c * k + arange(DP)``) and ``ef<k>`` (``[1, DP]`` mask
    ``arange(DP) < k``) that :meth:`lane_head3d` defines."""

    def lane_head3d(self, dims, n: int, bc: int):
        """Offsets and component masks of the 3D tiles, once per channel loop of ``n`` channels
        in tiles of ``bc`` lanes; and, where the rows are this program's own (:meth:`warp_rows`),
        the row-on-warp pointer tiles of each segment width (:meth:`rows_head`)."""
        for k in dims:
            dp = p2(k)
            self.w(f"cf{k} = (c * {k})[:, None] + tl.arange(0, {dp})[None, :]")
            self.w(f"ef{k} = (tl.arange(0, {dp}) < {k})[None, :]")
        if self.rows_in_lane_head():
            self.rows_lanes(dims, "c", "c0", n, bc)

    def rows_in_lane_head(self) -> bool:
        """Whether the channel loop's head opens its row-on-warp tiles (a fused convolution's
        segment mode opens them per chunk of a node's edges instead)."""
        return True

    def rows_index(self, role: str, k: int) -> str:
        """The ``[R, 32]`` row indices of tensor ``role`` in width ``k``'s row-on-warp tile:
        this program's rows themselves (a fused convolution gathers endpoints there)."""
        return f"wz{k}"

    def rows_gather(self, k: int):
        """Hook after width ``k``'s row-on-warp tiles: gathered row indices (conv_emit)."""

    def rows_lanes(self, dims, lane: str, first: str, n: int, bc: int):
        """Row-on-warp pointer tiles (:meth:`rows_head`) of the segment widths ``dims`` whose
        ``bc`` lanes of ``DP`` components fill a warp's 32 columns, for lanes ``lane`` (the
        channel loop's ``c``, or a one-channel target's reduced lanes) from ``first``, of
        extent ``n``."""
        fit = [k for k in dims if bc * p2(k) >= 32]
        if self.warp_rows() and fit:
            self.rows_dims[lane] = set()
            self.rows_head(fit, n, bc, lane, first)

    def warp_rows(self) -> bool:
        """Whether this kernel's 3D tiles use the row-on-warp form (:meth:`rows_head`): its rows
        are ``row_first + arange(BLOCK_Z)`` (for a convolution, edge positions, whose tensors'
        rows :meth:`rows_index` gathers), not a shared-weight gradient's blocks strided over
        the batch."""
        return self.rows_form and self.row_first is not None and not self.split_rows

    def rows_head(self, dims, n: int, bc: int, lane: str = "c", first: str = "c0"):
        """Pointer tiles of the row-on-warp form of ``[BLOCK_Z, bc, DP]`` segment tiles.

        Triton computes the component tiles in a layout with warps along the rows and, at
        ``LZ`` lanes per row, the rest of a warp's lanes along the channels. A 3D tile
        ``[BLOCK_Z, bc, DP]`` of ``mul_ir`` addresses has no contiguous axis but the
        components, so Triton's load layout puts warps along the channels (3.9) or splits a
        warp over rows (3.6, which then reads 4-8 separate runs per warp instruction); every
        split or join then moves data across warps through shared memory with two CTA-wide
        barriers. Here the tile is loaded as ``[R, 32]``: its 32 columns are (LZ rows, LF
        channels, DP components) -- one warp, whose lanes read ``LF * DP`` contiguous words per
        row -- and its rows are (channel blocks, row blocks): the warps' axis, as in the
        compute layout. A reshape and permute give ``[BLOCK_Z, bc, DP]`` with the same
        warp-to-row map, so Triton converts within each warp (offline sm_90 PTX of mace-large's
        forward at 8:64:8: 7 ``bar.sync`` + 7 ``bar.warp.sync`` instead of 14 ``bar.sync``,
        on Triton 3.6 and 3.9). ``LZ`` follows Triton's default blocked layout of the
        ``[BLOCK_Z, bc]`` compute tiles (elements per thread ``min(4, BLOCK_Z * bc / (32 * NW))``
        in fp32, lanes along the channels first); a different ``LZ`` computes the same values.
        """
        w = self.w
        ept = 2 if self.dt == "tl.float64" else 4  # 16-byte vectors
        x, sp, lz = f"WX{bc}", f"WS{bc}", f"WL{bc}"
        w(f"{x}: tl.constexpr = BLOCK_Z * {bc} // (32 * NW)")
        w(f"{sp}: tl.constexpr = 1 if {x} < 1 else ({ept} if {x} > {ept} else {x})")
        w(f"{lz}: tl.constexpr = 32 // (32 if {bc} // {sp} > 32 else ({bc} // {sp} if {bc} // {sp} > 0 else 1))")
        w("wj = tl.arange(0, 32)[None, :]")
        for k in dims:
            dp = p2(k)
            a, lz_k, lf = f"WA{k}", f"WZ{k}", f"WF{k}"
            # clamped so that a warp's 32 columns hold whole rows and a row block is not empty
            w(f"{a}: tl.constexpr = {lz} if {lz} < {32 // dp} else {32 // dp}")
            w(f"{lz_k}: tl.constexpr = {a} if {a} < BLOCK_Z else BLOCK_Z")
            w(f"{lf}: tl.constexpr = 32 // ({lz_k} * {dp})")
            w(f"wr{k} = tl.arange(0, ({bc} // {lf}) * (BLOCK_Z // {lz_k}))[:, None]")
            w(f"wz{k} = {self.row_first} + (wr{k} % (BLOCK_Z // {lz_k})) * {lz_k} + wj // ({lf} * {dp})")
            w(f"wc{k} = {first} + (wr{k} // (BLOCK_Z // {lz_k})) * {lf} + (wj // {dp}) % {lf}")
            w(f"wq{k} = wc{k} * {k} + wj % {dp}")
            w(f"wm{k} = (wz{k} < {self.row_bound}) & (wc{k} < {n}) & (wj % {dp} < {k})")
            self.rows_gather(k)
            with w.block("if IDX64:"):
                w(f"wz{k} = wz{k}.to(tl.int64)")
            self.rows_dims[lane].add(k)

    def rows_tile(self, k: int, bc: int) -> tuple:
        """``(shape of the [R, 32] tile as 5 axes, lead)`` names for width ``bc``, dim ``k``."""
        dp = p2(k)
        return (f"[{bc} // WF{k}, BLOCK_Z // WZ{k}, WZ{k}, WF{k}, {dp}]",
                f"[BLOCK_Z // WZ{k}, WZ{k}, {bc} // WF{k}, WF{k}, {dp}]",
                f"[({bc} // WF{k}) * (BLOCK_Z // WZ{k}), 32]")

    def note_seg3d(self, addr: str, off: int, dim: int, m: int, ch: str) -> None:
        """Where ``addr`` is component ``m`` of the ``mul_ir`` segment at ``off`` indexed by the
        lanes themselves (``ch`` is the channel loop's ``c``, or, inside its lanes, a one-channel
        target's reduced lanes ``self.qlane``), mark it loadable through one 3D tile."""
        if not self.tiles3d or dim == 1:
            return
        if ch == "c" and self.in_lane_loop:
            self.seg3d[addr] = Tile3D(off, dim, m, ch, "m2d", f"cf{dim}", f"ef{dim}[None, :, :]", self.lane_bc)
        elif self.qlane is not None and ch == self.qlane[0]:
            q, mq, width = self.qlane
            dp = p2(dim)
            self.seg3d[addr] = Tile3D(off, dim, m, ch, mq, f"(({q} * {dim})[:, None] + tl.arange(0, {dp})[None, :])",
                                      f"(tl.arange(0, {dp}) < {dim})[None, None, :]", width)

    @staticmethod
    def at3d(base: str, offs: str, off: int) -> str:
        """Pointers of a 3D tile: ``[rows, 1]`` row pointers ``base`` plus ``[lanes, DP]`` offsets."""
        return f"{base}[:, :, None] + ({offs} + {off})[None, :, :]"

    def load3d(self, t: int, role: str, addr: str) -> tuple:
        """Component tile of ``addr`` (noted by :meth:`note_seg3d`) as ``(variable, '2d')``: the
        segment's 3D tile is loaded and split once per channel loop group (or term)."""
        tile = self.seg3d[addr]
        cache = self.load_cache if self.load_cache is not None else self.term_cache
        key = ("3d", t, role, tile.off, tile.dim, tile.lane)
        comps = cache.get(key)
        if comps is None:
            v = self.fresh("v")
            if tile.dim in self.rows_dims.get(tile.lane, ()):  # row-on-warp form (rows_head)
                k, dp = tile.dim, p2(tile.dim)
                loaded, _, _ = self.rows_tile(k, tile.width)
                self.w(f"{v} = tl.load(t{t} + {self.rows_index(role, k)} * s{t} + (wq{k} + {tile.off}), "
                       f"mask=wm{k}, other=0.0).to(DT)")
                self.w(f"{v} = tl.reshape(tl.permute(tl.reshape({v}, {loaded}), (1, 2, 0, 3, 4)), "
                       f"[BLOCK_Z, {tile.width}, {dp}])")
            else:
                self.w(f"{v} = tl.load({self.at3d(f'tp{t}', tile.offs, tile.off)}, "
                       f"mask={tile.mask}[:, :, None] & {tile.comp_mask}, other=0.0).to(DT)")
            comps = cache[key] = self.split3d(v, tile.dim, f"BLOCK_Z, {tile.width}")
        return comps[tile.m], "2d"

    def split3d(self, v: str, dim: int, lead: str) -> list:
        """Split tile ``v`` of shape ``[lead..., DP]`` into its first ``dim`` component tiles."""
        dp = p2(dim)
        n = dp.bit_length() - 1
        if n == 0:
            return [v]
        self.w(f"{v} = tl.reshape({v}, [{lead}{', 2' * n}])")
        comps = [None] * dp

        def rec(x, depth, prefix):
            if depth == n:
                comps[prefix] = x
                return
            if all(prefix + (j << depth) >= dim for j in range(1 << (n - depth))):
                return  # only padding below here
            a, b = self.fresh("e"), self.fresh("o")
            self.w(f"{a}, {b} = tl.split({x})")
            rec(a, depth + 1, prefix)
            rec(b, depth + 1, prefix + (1 << depth))

        rec(v, 0, 0)
        return comps[:dim]

    def join3d(self, exprs: list, lead: str) -> str:
        """A fresh variable holding the tiles ``exprs`` (one per component) joined along a new
        last axis of ``DP`` entries, zero-padded; ``lead`` is the shape before that axis."""
        dim = len(exprs)
        dp = p2(dim)
        n = dp.bit_length() - 1
        names = []
        for e in exprs:
            if e.isidentifier():
                names.append(e)
            else:
                names.append(self.fresh("j"))
                self.w(f"{names[-1]} = {e}")
        if dp > dim:
            zero = self.fresh("zp")
            self.w(f"{zero} = tl.zeros_like({names[0]})")
            names += [zero] * (dp - dim)

        def rec(items):
            # the last axis of the join is the low bit of the component
            if len(items) == 1:
                return items[0]
            lo, hi = rec(items[0::2]), rec(items[1::2])
            v = self.fresh("jt")
            self.w(f"{v} = tl.join({lo}, {hi})")
            return v

        v = rec(names)
        if n > 1:
            self.w(f"{v} = tl.reshape({v}, [{lead}, {dp}])")
        return v

    def rows_flat(self, v: str, dim: int) -> str:
        """Joined ``[BLOCK_Z, lanes, DP]`` tile ``v`` permuted back to its ``[R, 32]`` row-on-warp
        form (the inverse of the load's permutation)."""
        _, joined, flat = self.rows_tile(dim, self.lane_bc)
        self.w(f"{v} = tl.reshape(tl.permute(tl.reshape({v}, {joined}), (2, 0, 1, 3, 4)), {flat})")
        return v

    def rows_target(self, dim: int, off: int) -> str:
        """Pointers of the target's row-on-warp tile of width ``dim`` at ``off``."""
        t = self.tg
        return f"g{t} + {self.rows_index(self.part_role(t), dim)} * sg{t} + (wq{dim} + {off})"

    def store_tile3d(self, off: int, dim: int, accs: list):
        """Store a segment's component accumulators ``accs`` as one 3D tile at ``off``."""
        v = self.join3d(accs, f"BLOCK_Z, {self.lane_bc}")
        if dim in self.rows_dims.get("c", ()):  # row-on-warp form (rows_head): the load's permutation reversed
            v = self.rows_flat(v, dim)
            self.w(f"tl.store({self.rows_target(dim, off)}, {v}.to(g{self.tg}.dtype.element_ty), mask=wm{dim})")
            return
        self.w(f"tl.store({self.at3d(f'gp{self.tg}', f'cf{dim}', off)}, {v}.to(g{self.tg}.dtype.element_ty), "
               f"mask=m2d[:, :, None] & ef{dim}[None, :, :])")
