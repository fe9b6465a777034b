"""The terms of a sparse-CG producer: one instruction's contribution to the target tile.

:meth:`TermMixin.emit_term` opens the loops over the channel letters a term contracts (one of
them runs as vector lanes for a one-channel target), loads each operand at the shallowest
loop depth that defines it and unrolls the nonzero coupling entries as literals;
:meth:`TermMixin.emit_weight_target` writes the weight gradient, one path at a time. Mixed into
:class:`~tritp.codegen.cg_emit.CGEmitter`, whose addressing, loads and hooks it uses.

Example:
    >>> _as2d("y", "z"), _as2d("y", "2d")
    ('y[:, None]', 'y')
"""

from __future__ import annotations

from collections import defaultdict

from .cg_gemm import _flatten
from .cg_spec import ROLE_INDEX, loop_groups, tile_keys
from .coupling import sparse_coupling
from .intmath import p2


class TermMixin:
    """Term and weight-gradient emitters; relies on CGEmitter's ``w``, ``p``, ``spec``,
    ``letters``, ``vector_letters``, ``load``, ``elem``, ``fresh``, ``const``, ``woffs``,
    ``lanes``, ``block_c``, ``row_loop``, ``store_tile`` and ``store_shared_weight``."""

    def term_loops(self, ins) -> list:
        """Channel letters a term loops over: used by a source operand, absent from the target."""
        target = self.spec.target
        lt, sizes = self.letters(ins)
        src_roles = [r for r in ("x1", "x2", "out") if r != target]
        used = set("".join(lt[r] for r in src_roles) + (lt["w"] if ins.has_weight else ""))
        return [ch for ch in "uvw" if ch in used and ch not in lt[target] and sizes[ch] > 1]

    def reduction_letter(self, ins):
        """The loop letter a one-channel target vectorizes over (the largest), or None."""
        if self.dot_letter(ins) is not None:
            return None
        sizes = self.letters(ins)[1]
        loops = self.term_loops(ins)
        return max(loops, key=lambda ch: (sizes[ch], ch)) if loops else None

    def emit_term(self, k, ins, term, accs, red=None):
        """Add one (instruction, term) contribution to the target accumulators; ``red`` is a
        loop letter run as ``self.lanes`` vector lanes into the ``q``-accumulators."""
        K = self.dot_letter(ins)
        if K is not None:
            return self.emit_dot_term(k, ins, term, accs, K)
        spec = self.spec
        target = spec.target
        self.term_cache = {}
        lt, sizes = self.letters(ins)
        vals = self.vector_letters(lt[target], sizes)
        vec = {ch for ch in lt[target] if sizes[ch] > 1}
        src_roles = [r for r in ("x1", "x2", "out") if r != target]
        used = set("".join(lt[r] for r in src_roles) + (lt["w"] if ins.has_weight else ""))
        loops = self.term_loops(ins)
        if red is not None:  # the lane loop goes outermost
            loops = [red] + [ch for ch in loops if ch != red]
            accs = [f"q{a}" for a in accs]
        for ch in used:
            if ch not in vals and sizes[ch] == 1:
                vals[ch] = "0"
        l1, l2, l3 = (self.p.irreps_in1[ins.i_in1].ir.l, self.p.irreps_in2[ins.i_in2].ir.l,
                      self.p.irreps_out[ins.i_out].ir.l)
        nz = [(e[0], e[1], e[2], e[3] * ins.coefficient) for e in sparse_coupling(l1, l2, l3)]
        ri = {r: i for i, r in enumerate(("x1", "x2", "out"))}
        a_role, b_role = src_roles
        entries = [(e[ri[a_role]], e[ri[b_role]], e[ri[target]], e[3]) for e in nz]
        self.w(f"# instruction {k}: {ins.mode} {l1}x{l2}->{l3}, term {term}")

        def deps(role):
            return {ch for ch in lt[role] if sizes[ch] > 1}

        # open loops, hoisting each operand's loads to the shallowest depth that defines it
        pending = {a_role: sorted({e[0] for e in entries}), b_role: sorted({e[1] for e in entries})}
        if ins.has_weight:
            pending["w"] = None
        loaded = {}
        opened = set()
        depth_ctx = []

        def flush():
            for role in list(pending):
                if deps(role) - vec <= opened:
                    t = term[ROLE_INDEX[role]]
                    ch = _flatten(lt[role], sizes, vals)
                    laned = red in deps(role)
                    tile = bool(deps(role) & vec) or laned
                    kw = {"mask": mq, "lane_mask": qm} if laned else {}
                    if role == "w":
                        addr = self.lane_addr(f"{self.woffs[k]} + {ch}", ch, 1, self.woffs[k])
                        loaded["w"] = self.load(t, "w", addr, tile, **kw)
                    else:
                        loaded[role] = {m: self.load(t, role, self.elem(ins, role, ch, m), tile, **kw)
                                        for m in pending[role]}
                    del pending[role]

        mq = qm = None
        flush()
        for ch in loops:
            if ch == red:
                q, qm, mq = self.fresh("q"), self.fresh("qm"), self.fresh("mq")
                ctx = self.w.block(f"for {q}_0 in range(0, {sizes[ch]}, {self.lanes}):")
                ctx.__enter__()
                self.w(f"{q} = {q}_0 + tl.arange(0, {self.lanes})")
                self.w(f"{qm} = {q} < {sizes[ch]}")
                self.w(f"{mq} = zm[:, None] & {qm}[None, :]")
                vals[ch] = q
                self.qlane = (q, mq, self.lanes)
                if self.tiles3d:
                    self.rows_lanes(self.lane_dims, q, f"{q}_0", sizes[ch], self.lanes)
            else:
                vals[ch] = f"L{ch}{self.uid}"
                ctx = self.w.block(f"for {vals[ch]} in range({sizes[ch]}):")
                ctx.__enter__()
            depth_ctx.append(ctx)
            opened.add(ch)
            flush()
        self.emit_contraction(entries, loaded[a_role], loaded[b_role], loaded.get("w"), accs)
        for ctx in reversed(depth_ctx):
            ctx.__exit__(None, None, None)
        if self.qlane is not None:
            self.rows_dims.pop(self.qlane[0], None)
        self.qlane = None

    def emit_contraction(self, entries, A, B, W, accs):
        a_kind = next(iter(A.values()))[1]
        b_kind = next(iter(B.values()))[1]
        if a_kind != "2d" and b_kind == "2d":  # make A the lane operand
            entries = [(e[1], e[0], e[2], e[3]) for e in entries]
            A, B, a_kind, b_kind = B, A, b_kind, a_kind
        by_t = defaultdict(list)
        for ma, mb, mt, c in entries:
            by_t[mt].append((ma, mb, c))
        rows = {}  # row combination -> its [rows, 1] variable: target components often repeat one
        for mt, es in sorted(by_t.items()):
            acc = accs[mt]
            # the contribution as a sum of products x * y, each pair broadcastable to the tile
            if a_kind == "2d" and b_kind == "2d":
                pairs, kind = [(f"{self.const(c)} * {A[ma][0]}", B[mb][0]) for ma, mb, c in es], "2d"
            elif a_kind == "2d":
                groups = defaultdict(list)
                for ma, mb, c in es:
                    groups[ma].append((mb, c))
                pairs, kind = [], "2d"
                for ma, gs in sorted(groups.items()):
                    expr = " + ".join(self.scaled(c, B[mb][0]) for mb, c in gs)
                    if expr not in rows:
                        rows[expr] = self.fresh("y")
                        row = B[gs[0][0]][1] == "z"
                        self.w(f"{rows[expr]} = " + (f"({expr})[:, None]" if row else expr))
                    pairs.append((A[ma][0], rows[expr]))
            else:
                pairs = [(f"{self.const(c)} * {A[ma][0]}", B[mb][0]) for ma, mb, c in es]
                kind = "z" if "z" in (a_kind, b_kind) else "s"
            if W is None and kind == "2d":
                for x, y in pairs:
                    self.w(f"{acc} = tl.fma({x}, {y}, {acc})")
                continue
            t = self.fma_sum(pairs)
            if W is None:
                self.w(f"{acc} += {_as2d(t, kind)}")
            else:
                self.w(f"{acc} = tl.fma({_as2d(W[0], W[1])}, {_as2d(t, kind)}, {acc})")

    def scaled(self, c: float, x: str) -> str:
        """``c * x`` as source; ``x`` itself for ``c == 1`` (exact in every dtype)."""
        return x if c == 1.0 else f"{self.const(c)} * {x}"

    def fma_sum(self, pairs) -> str:
        """A fresh variable holding ``sum(x * y for x, y in pairs)`` as a chain of ``tl.fma``.

        Explicit fmas, not ``a * b + c``: Triton contracts those into fmas only while its
        fp-fusion default is on, which Triton 3.10 turns off (+59% floating-point instructions
        in mace-medium's forward, offline), and kernels launched through Inductor get the default.
        """
        t = self.fresh("sp")  # not "s": s<i> are the tensors' row strides
        (x0, y0), rest = pairs[0], pairs[1:]
        self.w(f"{t} = {x0} * {y0}")
        for x, y in rest:
            self.w(f"{t} = tl.fma({x}, {y}, {t})")
        return t

    def weight_groups(self) -> list:
        """The instructions whose weights this kernel writes, as groups run in one channel loop
        each: ``[[(k, ins, n, bc), ...], ...]`` (``n`` weights per sample, tile ``bc``).
        Per-sample weights of one size share a loop, ordered by the segments they read, so
        that an operand tile read by several paths is loaded once (see
        :meth:`~tritp.codegen.cg_emit.CGEmitter.segment_groups`); a shared-weight gradient
        keeps one path per loop, whose accumulator lives across the walk over the batch."""
        p = self.p
        units = []
        for k, ins in enumerate(p.instructions):
            if not ins.has_weight or 0 in ins.path_shape or (self.piece is not None and k not in self.piece):
                continue
            n = 1
            for s in ins.path_shape:
                n *= s
            units.append((k, ins, n, min(p2(n), self.block_c)))

        classes = [None if self.split_rows or not self.share_loads() else (u[2],) for u in units]
        groups = loop_groups(units, [tile_keys(p, self.spec, [u[:2]]) for u in units], classes)
        return [sorted(g, key=lambda u: ((u[1].i_in1, u[1].i_in2, u[1].i_out), u[0])) for g in groups]

    def emit_weight_target(self):
        shared = self.p.shared_weights
        for group in self.weight_groups():
            k, ins, n, bc = group[0]
            if shared and self.weight_gemm_ok(ins, self.letters(ins)[1]):
                self.w(f"# weights of instruction {k}: {self._path_name(ins)}, shape {ins.path_shape}")
                self.emit_weight_gemm(k, ins, *self.letters(ins), self._nonzeros(ins))
                continue
            with self.lane_loop(n, bc):  # always a loop: see above
                merged = len(group) > 1
                if merged:  # no row loop here (per-sample weights): one mask for every path
                    self.w("m2d = zm[:, None] & cm[None, :]")
                    self.load_cache = {}
                try:
                    for k, ins, _, bc in group:
                        self.emit_weight_path(k, ins, bc, mask=not merged)
                finally:
                    self.load_cache = None

    def _path_name(self, ins) -> str:
        p = self.p
        return f"{ins.mode} {p.irreps_in1[ins.i_in1].ir.l}x{p.irreps_in2[ins.i_in2].ir.l}->{p.irreps_out[ins.i_out].ir.l}"

    def _nonzeros(self, ins) -> list:
        p = self.p
        ls = (p.irreps_in1[ins.i_in1].ir.l, p.irreps_in2[ins.i_in2].ir.l, p.irreps_out[ins.i_out].ir.l)
        return [(e[0], e[1], e[2], e[3] * ins.coefficient) for e in sparse_coupling(*ls)]

    def emit_weight_path(self, k, ins, bc, mask: bool):
        """Path ``k``'s weight-gradient tile inside its channel loop (``mask``: define ``m2d``
        in :meth:`row_loop`, whose rows change per block of a shared-weight gradient)."""
        lt, sizes = self.letters(ins)
        nz = self._nonzeros(ins)
        self.w(f"# weights of instruction {k}: {self._path_name(ins)}, shape {ins.path_shape}")
        self.w(f"accw = tl.zeros([BLOCK_Z, {bc}], DT)")
        vals = self.vector_letters(lt["w"], sizes)
        for ch in "uvw":
            vals.setdefault(ch, "0")
        with self.row_loop():
            if mask:
                self.w("m2d = zm[:, None] & cm[None, :]")
            for term in self.spec.terms:
                self.term_cache = {}
                ops = {}
                for role, ms in (("x1", {e[0] for e in nz}), ("x2", {e[1] for e in nz}),
                                 ("out", {e[2] for e in nz})):
                    t = term[ROLE_INDEX[role]]
                    ch = _flatten(lt[role], sizes, vals)
                    tile = any(sizes[x] > 1 for x in lt[role])
                    ops[role] = {m: self.load(t, role, self.elem(ins, role, ch, m), tile) for m in sorted(ms)}
                by_k = defaultdict(list)
                for i, j, kk, c in nz:
                    by_k[kk].append((i, j, c))
                for kk, es in sorted(by_k.items()):
                    t = self.fma_sum([(f"{self.const(c)} * {_as2d(ops['x1'][i][0], ops['x1'][i][1])}",
                                       _as2d(ops['x2'][j][0], ops['x2'][j][1])) for i, j, c in es])
                    g = ops["out"][kk]
                    self.w(f"accw = tl.fma({t}, {_as2d(g[0], g[1])}, accw)")
        addr = self.lane_addr(f"{self.woffs[k]} + c", "c", 1, self.woffs[k])
        if self.p.shared_weights:
            self.store_shared_weight(addr, "accw")
        else:
            self.store_tile(addr, "accw")


def _as2d(expr: str, kind: str) -> str:
    return f"{expr}[:, None]" if kind == "z" else expr
