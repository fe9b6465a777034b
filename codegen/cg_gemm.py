"""Channel mixing on tensor cores: the GEMM forms of the sparse-CG producer.

With shared weights, a path whose target channel is carried by the weights alone (uvw for every
target, uuw for the output) is ``T[z, K] @ W[K, n]``: the coupling is contracted first into a
``[rows, K]`` tile, then ``tl.dot`` mixes the channels. The shared-weight gradient of such a
path is a GEMM over batch rows, ``dW[(u, v), w] += P[z, (u, v)]^T @ g[z, w]``. Mixed into
:class:`~tritp.codegen.cg_emit.CGEmitter`; kernels that use it set ``MIN_BLOCK_Z = 16``.

Example:
    >>> p2(17), _flatten("uv", {"u": 3, "v": 4}, {"u": "a", "v": "b"})
    (32, '(a) * 4 + b')
"""

from __future__ import annotations

from collections import defaultdict

from .cg_spec import ROLE_INDEX, letters
from .coupling import sparse_coupling
from .intmath import p2


def _flatten(letters: str, sizes: dict, vals: dict) -> str:
    """Row-major flat index of ``letters`` given the value expression of each letter."""
    expr = ""
    for ch in letters:
        v = vals[ch]
        if sizes[ch] == 1 and v == "0" and expr:
            continue  # (e) * 1 + 0: the same index, and a plain `c` gets lane_addr's hoisted form
        expr = v if not expr else f"({expr}) * {sizes[ch]} + {v}"
    return expr or "0"


def dot_letter(problem, target: str, ins):
    """The contraction letter K when ``ins``'s term for ``target`` is a GEMM ``T[z, K] @ W[K, n]``:
    shared weights, a target whose only letter ``n`` is carried by the weights alone (uvw for
    every target, uuw for the output), and K of at least 16 channels. None otherwise (also the
    rule the register estimate of :mod:`tritp.tuning.registers` follows).

    Example:
        >>> from tritp.codegen import Problem
        >>> p = Problem("16x0e", "16x0e", "16x0e", [(0, 0, 0, "uvw", True)])
        >>> dot_letter(p, "out", p.instructions[0])
        'v'
    """
    if target == "w" or not ins.has_weight or not problem.shared_weights:
        return None
    lt, sizes = letters(problem, ins)
    n = lt[target]
    srcs = [r for r in ("x1", "x2", "out") if r != target]
    if len(n) != 1 or sizes[n] < 16 or any(n in lt[r] for r in srcs):
        return None
    cands = [ch for ch in "uvw" if ch != n and ch in lt["w"] and sizes[ch] >= 16 and any(ch in lt[r] for r in srcs)]
    return max(cands, key=lambda ch: (sizes[ch], ch)) if cands else None


class GemmMixin:
    """GEMM emitters; relies on CGEmitter's ``w``, ``p``, ``spec``, ``letters``, ``load``,
    ``elem``, ``fresh``, ``const``, ``woffs`` and ``emit_contraction``."""

    def dot_letter(self, ins):
        """:func:`dot_letter` of this kernel's target."""
        return dot_letter(self.p, self.spec.target, ins)

    def emit_dot_term(self, k, ins, term, accs, K):
        self.uses_dot = True
        target = self.spec.target
        lt, sizes = self.letters(ins)
        n = lt[target]
        src_roles = [r for r in ("x1", "x2", "out") if r != target]
        a_role, b_role = src_roles
        l1, l2, l3 = (self.p.irreps_in1[ins.i_in1].ir.l, self.p.irreps_in2[ins.i_in2].ir.l,
                      self.p.irreps_out[ins.i_out].ir.l)
        ri = {r: i for i, r in enumerate(("x1", "x2", "out"))}
        entries = [(e[ri[a_role]], e[ri[b_role]], e[ri[target]], e[3] * ins.coefficient)
                   for e in sparse_coupling(l1, l2, l3)]
        self.w(f"# instruction {k}: {ins.mode} {l1}x{l2}->{l3}, term {term}: GEMM over {K}")
        vals = {ch: "0" for ch in "uvw" if sizes[ch] == 1}
        loops = [ch for ch in "uvw" if ch not in (n, K) and sizes[ch] > 1
                 and any(ch in lt[r] for r in src_roles + ["w"])]
        ctxs = []
        for ch in loops:
            vals[ch] = f"L{ch}{self.uid}"
            ctxs.append(self.w.block(f"for {vals[ch]} in range({sizes[ch]}):"))
            ctxs[-1].__enter__()
        bk = min(p2(sizes[K]), 64)
        kv = f"kk{self.uid}"
        # always a loop (names inside stay local; see CGEmitter.emit_segment_target)
        ctxs.append(self.w.block(f"for k0 in range(0, {sizes[K]}, {bk}):"))
        ctxs[-1].__enter__()
        self.w(f"{kv} = k0 + tl.arange(0, {bk})")
        self.w(f"km = {kv} < {sizes[K]}")
        self.w("mk = zm[:, None] & km[None, :]")
        vals[K] = kv
        ops = {}
        for role, ms in ((a_role, {e[0] for e in entries}), (b_role, {e[1] for e in entries})):
            ch = _flatten(lt[role], sizes, vals)
            ops[role] = {m: self.load(term[ROLE_INDEX[role]], role, self.elem(ins, role, ch, m), K in lt[role],
                                      mask="mk") for m in sorted(ms)}
        touched = sorted({e[2] for e in entries})
        tv = {mt: self.fresh("T") for mt in touched}
        for mt in touched:
            self.w(f"{tv[mt]} = tl.zeros([BLOCK_Z, {bk}], DT)")
        self.emit_contraction(entries, ops[a_role], ops[b_role], None, tv)
        wvals = dict(vals, **{K: f"{kv}[:, None]", n: "c[None, :]"})
        wt = self.fresh("W")
        self.w(f"{wt} = tl.load(t{term[ROLE_INDEX['w']]} + ({self.woffs[k]} + {_flatten(lt['w'], sizes, wvals)}), "
               "mask=km[:, None] & cm[None, :], other=0.0).to(DT)")
        for mt in touched:
            self.w(f"{accs[mt]} += tl.dot({tv[mt]}, {wt}, input_precision=DOT_PREC, out_dtype=DT)")
        for ctx in reversed(ctxs):
            ctx.__exit__(None, None, None)

    def weight_gemm_ok(self, ins, sizes) -> bool:
        """Shared-weight gradient of a channel-mixing path as a GEMM over the batch rows:
        ``dW[(u, v), w] += P[z, (u, v)]^T @ g[z, w]`` (uvw) or ``dW[u, w]`` (uuw)."""
        if ins.mode not in ("uvw", "uuw"):
            return False
        rows = sizes["u"] * (sizes["v"] if ins.mode == "uvw" else 1)
        return rows >= 16 and sizes["w"] >= 16

    def emit_weight_gemm(self, k, ins, lt, sizes, nz):
        self.uses_dot = True
        rows = sizes["u"] * (sizes["v"] if ins.mode == "uvw" else 1)
        br, bn = min(p2(rows), 64), min(p2(sizes["w"]), 64)
        with self.w.block(f"for wr0 in range(0, {rows}, {br}):"):  # r<i> are row offsets
            self.w(f"rr = wr0 + tl.arange(0, {br})")
            self.w(f"rm = rr < {rows}")
            with self.w.block(f"for wn0 in range(0, {sizes['w']}, {bn}):"):
                self.w(f"nn = wn0 + tl.arange(0, {bn})")
                self.w(f"nm = nn < {sizes['w']}")
                self.w(f"accw = tl.zeros([{br}, {bn}], DT)")
                with self.row_loop():  # the GEMM's K: this program's row blocks
                    self.w("mr = zm[:, None] & rm[None, :]")
                    self.w("mn = zm[:, None] & nm[None, :]")
                    if ins.mode == "uvw":
                        vals = {"u": f"(rr // {sizes['v']})", "v": f"(rr % {sizes['v']})", "w": "nn"}
                    else:
                        vals = {"u": "rr", "w": "nn"}
                    for term in self.spec.terms:
                        ops = {}
                        for role, ms in (("x1", {e[0] for e in nz}), ("x2", {e[1] for e in nz}),
                                         ("out", {e[2] for e in nz})):
                            ch = _flatten(lt[role], sizes, vals)
                            mask = "mn" if role == "out" else "mr"
                            ops[role] = {m: self.load(term[ROLE_INDEX[role]], role, self.elem(ins, role, ch, m), True,
                                                      mask=mask)[0] for m in sorted(ms)}
                        by_k = defaultdict(list)
                        for i, j, kk, c in nz:
                            by_k[kk].append((i, j, c))
                        for kk, es in sorted(by_k.items()):
                            pv = self.fma_sum([(f"{self.const(c)} * {ops['x1'][i]}", ops['x2'][j])
                                               for i, j, c in es])
                            self.w(f"accw += tl.dot(tl.trans({pv}), {ops['out'][kk]}, input_precision=DOT_PREC, "
                                   "out_dtype=DT)")
                self.w(f"tl.store(g + pg + ({self.woffs[k]} + rr[:, None] * {sizes['w']} + nn[None, :]), "
                       "accw.to(g.dtype.element_ty), mask=rm[:, None] & nm[None, :])")
