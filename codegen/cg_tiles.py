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

    def lane_head3d(self, dims):
        """Offsets and component masks of the 3D tiles, once per channel loop."""
        for k in dims:
            dp = p2(k)
            self.w(f"cf{k} = (c * {k})[:, None] + tl.arange(0, {dp})[None, :]")
            self.w(f"ef{k} = (tl.arange(0, {dp}) < {k})[None, :]")

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

    def store_tile3d(self, off: int, dim: int, accs: list):
        """Store a segment's component accumulators ``accs`` as one 3D tile at ``off``."""
        v = self.join3d(accs, f"BLOCK_Z, {self.lane_bc}")
        self.w(f"tl.store({self.at3d('gp', f'cf{dim}', off)}, {v}.to(g.dtype.element_ty), "
               f"mask=m2d[:, :, None] & ef{dim}[None, :, :])")
