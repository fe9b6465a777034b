"""Emit the *separable* Gaunt kernel: Gauss-Legendre nodes in the polar angle, exact Fourier
coupling in the azimuth.

e3nn's real harmonics factor as ``Y_lm(b, a) = Q_l^|m|(cos b) S_m(a)``
(:mod:`~tritp.codegen.gaunt_tables`), so the grid implementation's trilinear form
``E = s sum_{j,k} w_j (2 pi / n_a) f1 f2 f3`` splits into a sum over the ``n_b`` polar nodes of
an azimuthal integral that is known in closed form::

    G_r[j, m] = sum_l A_r[j, (l, m)] x_r[(l, m)]            (per role r: a Legendre synthesis)
    E = sum_j sum_{m1, m2, m3} C(m1, m2, m3) G_1[j, m1] G_2[j, m2] G_3[j, m3]

with ``A_r[j, (l, m)] = Q_l^|m|(z_j)`` (the output's table also carries ``2 pi w_j s``,
:func:`~tritp.codegen.gaunt_tables.node_tables`) and ``C = mean over a of S_m1 S_m2 S_m3``: 1 where two of the ``m`` are
equal and the third is 0, ``+-1/sqrt2`` where ``|m3| = |m1| +- |m2|`` and the sines pair up,
else 0 (:func:`~tritp.codegen.gaunt_tables.azimuth_coupling`). The nodes are the grid's (``n_b >= ceil((L1+L2+Lo+1)/2)``:
exact), but there is no azimuthal grid and no padding: at ``L = Lo = 8`` the forward costs about
9,100 arithmetic operations per (sample, channel) in one pass (13,500 in the three passes its
registers take by default), against 79,000 multiply-adds in the grid's three dense GEMMs
(L = 6: 4,000 against 28,000). It is FMA-unit arithmetic in the kernel's dtype: exact fp32, no ``tl.dot``.

Like the grid kernel, every producer is one form: ``target[(l, m)] = sum_j A_t[j, (l, m)] sum
C(m, ma, mb) G_a[j, ma] G_b[j, mb]``. A program takes ``BLOCK_R`` rows (one row is one (sample,
channel) pair, one thread holds one row), loads both operands' coefficients as ``[BLOCK_R]``
vectors, and walks the nodes in a loop: each step reads the node's table rows, computes the
two syntheses, the azimuthal products (the ``C`` are literals) and adds their projection into
the accumulators. A loop rather than unrolled literal tables: unrolled, ptxas took 34 s at
L = 6 and 292 s at L = 7 (with a spill), against 3.4 s and 7.2 s for the loop. The tables are
laid out in the order the kernel reads them (:func:`~tritp.codegen.gaunt_sep_layout.table_columns`) so that it loads them four
entries at a time (one 16-byte load, the same address in every thread, split into scalars):
offline for sm_90 that cut the loads from 245 to 137 instructions at L = 6 (98 of them the
operands) and from 729 to 309 at L = 8 (three passes), and the whole kernel by 12-19%. With
``pairs``, mirror nodes ``z`` and ``-z`` share a step (:meth:`_Emitter.walk`): half the table
reads, syntheses and projections, for two nodes' syntheses in registers; offline (SASS, loop
bodies times trips) 14-17% fewer instructions at L = 4 and 6, so the launcher pairs where the
register estimate allows (:func:`tritp.gaunt_separable.use_pairs`: fp32, to L = 6). Registers hold both operands and the target's
accumulators, about ``K_a + K_b + K_t`` values; ``passes > 1`` splits the target's coefficients
into that many groups by ``m``, each a walk of its own (the syntheses run again, the
accumulators of one group are live at a time), for the degrees where one walk would spill. A
broadcast target is summed over the channels in the kernel where :func:`reduces_channels`
allows, as in :mod:`~tritp.codegen.gaunt_emit`, else written as partial rows.

Example:
    >>> from tritp.codegen.gaunt_problem import GauntProblem, FORWARD
    >>> p = GauntProblem("4x0e+4x1o", "0e+1o", lmax_out=2, implementation="separable")
    >>> src = emit_separable_producer(p, FORWARD, "float32")
    >>> "def gaunt_separable" in src and "tl.dot" not in src
    True
"""

from __future__ import annotations

import math

from .gaunt_emit import emit_fold_header, emit_rows, emit_sample_rows, kernel_head, reduces_channels
from .gaunt_problem import GauntProblem, parse_spec
from .gaunt_sep_layout import QUAD, m_order, sum_ops, table_columns, table_width, target_groups, tree_sum
from .gaunt_tables import azimuth_coupling
from .writer import SourceWriter

KERNEL_NAME = "gaunt_separable"
MAX_PASSES = 4


def _mname(m: int) -> str:
    return f"{'n' if m < 0 else 'p'}{abs(m)}"


def flops(problem: GauntProblem) -> int:
    """Forward FLOPs per (sample, channel) of the separable kernel: two per arithmetic
    operation (the syntheses, the azimuthal products, the projection) in one pass, the
    algorithm's work; a launch in more passes runs the syntheses again."""
    return 2 * _Emitter(problem, "out:x1,x2", "float32", 1).count_terms()


class _Emitter:
    def __init__(self, problem: GauntProblem, spec: str, dtype: str, passes: int, pairs: bool = False):
        self.p, self.dtype, self.pairs = problem, dtype, pairs
        self.target, self.sources = parse_spec(spec)
        self.fold = reduces_channels(problem, self.target)
        self.exact = dtype == "float64"
        self.groups = target_groups(problem, self.target, passes)
        self.w = SourceWriter()
        self.nb = problem.grid_size[0]
        self.ms = {r: sorted({m for l in problem.active(r) for m in range(-l, l + 1)})
                   for r in (self.target, *self.sources)}
        self.coupling = azimuth_coupling(max(abs(m) for ms in self.ms.values() for m in ms) if problem.paths else 0)

    def lit(self, c: float) -> str:
        # fp32 literals would round the fp64 tables; tl.full keeps every bit
        return f"tl.full([], {c!r}, DT)" if self.exact else repr(float(c))

    def coeffs(self, role: str) -> list:
        """``(l, m, name)`` of the role's active coefficients, in e3nn order."""
        active = self.p.active(role)
        return [(l, m, f"{l}_{m + l}") for l in self.p.degrees(role) if l in active for m in range(-l, l + 1)]

    def offsets(self, role: str) -> dict:
        """``{l: offset of degree l's segment}`` in a row of ``role`` (``mul_ir``)."""
        return dict(zip(self.p.degrees(role), self.p.irreps(role).offsets()))

    def position(self, role: str) -> dict:
        """``{(l, m): column}`` of the role's kernel table (:func:`~tritp.codegen.gaunt_sep_layout.kernel_tables`)."""
        return {lm: i for i, lm in enumerate(table_columns(self.p, role))}

    def synthesis(self, name: str, role: str) -> list:
        """``(m, var, [(table column, operand var, l)])`` per ``m`` of ``G_role[j, m]``, in the
        table's order."""
        pos, by_m = self.position(role), {}
        for l, m, var in self.coeffs(role):
            by_m.setdefault(m, []).append((pos[(l, m)], f"{name}{var}", l))
        return [(m, f"g{name}_{_mname(m)}", sorted(by_m[m])) for m in m_order(by_m)]

    def products(self, m: int, ga: set, gb: set) -> tuple:
        """``(unit terms, 1/sqrt2 terms)`` of ``h_m``: ``(sign, ma, mb)`` with both factors present."""
        one, half = [], []
        for ma in sorted(ga):
            for mb in sorted(gb):
                c = self.coupling.get((m, ma, mb))
                if c is not None:
                    (one if abs(c) == 1.0 else half).append((1 if c > 0 else -1, ma, mb))
        return one, half

    def count_terms(self) -> int:
        """Arithmetic operations per row (multiplies, FMAs, the adds that join interleaved
        chains) of one walk over the nodes with every target ``m``: one pass; more passes run
        the syntheses again."""
        ga, gb = self.synthesis("a", self.sources[0]), self.synthesis("b", self.sources[1])
        n = sum(sum_ops(len(t)) for *_, t in ga + gb)
        sa, sb = {m for m, *_ in ga}, {m for m, *_ in gb}
        for group in self.groups:
            for m in group:
                one, half = self.products(m, sa, sb)
                if one or half:
                    n += sum_ops(len(one)) + sum_ops(len(half)) + (1 if half else 0)
                    n += sum(1 for _, mm, _ in self.coeffs(self.target) if mm == m)
        return n * self.nb

    def emit(self) -> str:
        w, p = self.w, self.p
        dt = {"float32": "tl.float32", "float64": "tl.float64"}[self.dtype]
        w("# Generated by tritp.codegen.gaunt_sep -- do not edit.")
        w(f"# problem: {p.key}")
        w(f"# producer: {self.target} from {', '.join(self.sources)}; {self.nb} polar nodes, "
          f"{len(self.groups)} pass(es)")
        with kernel_head(w, KERNEL_NAME, "a, b, g, ta, tb, tt, sa, sb, sg", dt):
            w("K4 = tl.arange(0, 4)")
            if self.fold:
                emit_fold_header(w, p.channels)
            for k, group in enumerate(self.groups):
                w(f"# pass {k}: target m in {group}")
                accs = [c for c in self.coeffs(self.target) if c[1] in group]
                for *_, var in accs:
                    w(f"acc{var} = tl.zeros([BLOCK_R], DT)")
                if self.fold:  # each tile's operands are loaded again in every pass
                    with w.block("for t in range(TILES):  # whole samples: the rows of tile t add into acc"):
                        self.rows_and_operands("(pid * TILES + t) * BLOCK_R")
                        self.walk(group)
                    self.store_sums(accs, k == 0)
                else:  # one tile: its operands are loaded once, before the first pass
                    if k == 0:
                        self.rows_and_operands("pid * BLOCK_R")
                    self.walk(group)
                    self.store(accs, k == 0)
        return w.text()

    def load(self, name: str, role: str):
        """``<name><l>_<i>``: the operand's active coefficients as ``[BLOCK_R]`` vectors, one
        strided load each. (Read as ``[BLOCK_R, DP]`` tiles split into components, the
        coalesced form of :mod:`~tritp.codegen.cg_tiles`, and stored joined likewise, the kernel
        compiled offline for sm_90 to 2.3x the instructions at L = 6 -- layout conversions
        through shared memory, 35 barriers -- and at L = 8 to 4,096 with 630 local loads and
        stores of spilled values, against 1,864.)"""
        w, p = self.w, self.p
        bcast = p.mul(role) == 1
        for l, off in self.offsets(role).items():
            dim = 2 * l + 1
            if l in p.active(role):
                chan = "" if bcast else f" + c * {dim}"
                w(f"p{name}{l} = {name} + z * s{name} + {off}{chan}")
                for i in range(dim):
                    w(f"{name}{l}_{i} = tl.load(p{name}{l} + {i}, mask=rm, other=0.0).to(DT)")

    def rows_and_operands(self, first: str):
        emit_rows(self.w, first, self.p.channels)
        for name, role in zip("ab", self.sources):
            self.load(name, role)

    def walk(self, group: list):
        """For every node the two syntheses, the azimuthal products of the group's ``m`` and
        their projection into the accumulators (of the loaded rows). With :attr:`pairs`, node
        ``j`` and its mirror ``n_b - 1 - j`` (``z -> -z``) share one step: ``Q_l^m(-z) =
        (-1)^(l+m) Q_l^m(z)``, so one table read and one synthesis of the even and the odd
        degrees give both nodes (``E + O`` and ``E - O``), and one projection takes ``h_u + h_v``
        or ``h_u - h_v``; an odd node count leaves the middle node (``z = 0``) to a plain step."""
        w = self.w
        if not self.pairs:
            with w.block(f"for j in range({self.nb}):  # the polar nodes"):
                self.step("j", group, paired=False)
            return
        half, mid = divmod(self.nb, 2)
        with w.block(f"for j in range({half}):  # node j and its mirror {self.nb - 1} - j"):
            self.step("j", group, paired=True)
        if mid:
            w("# the middle node (z = 0)")
            self.step(str(half), group, paired=False)

    def step(self, j: str, group: list, paired: bool):
        w = self.w
        pos_t = self.position(self.target)
        accs = sorted((c for c in self.coeffs(self.target) if c[1] in group), key=lambda c: pos_t[(c[0], c[1])])
        width = {r: table_width(self.p, r) for r in (self.target, *self.sources)}
        nodes = ("u", "v") if paired else ("",)
        have = {}
        for name, tab, role in zip("ab", ("ta", "tb"), self.sources):
            w(f"q{name} = {tab} + {j} * {width[role]}")
            have[name], loaded = set(), set()
            for m, var, terms in self.synthesis(name, role):
                self.quads(name, [c for c, _, _ in terms], loaded)
                have[name].add(m)
                if not paired:
                    w(f"{var} = " + tree_sum([f"+ {x} * t{name}{c}" for c, x, _ in terms]))
                    continue
                even = tree_sum([f"+ {x} * t{name}{c}" for c, x, l in terms if (l + m) % 2 == 0])
                odd = tree_sum([f"+ {x} * t{name}{c}" for c, x, l in terms if (l + m) % 2])
                if even and odd:
                    w(f"e = {even}")
                    w(f"o = {odd}")
                    w(f"{var}u = e + o")
                    w(f"{var}v = e - o")
                elif even:
                    w(f"{var}u = {even}")
                    w(f"{var}v = {var}u")
                else:
                    assert odd, f"no synthesis term for m = {m}"  # tree_sum([]) is empty
                    w(f"{var}u = {odd}")
                    w(f"{var}v = -{var}u")
        w(f"qt = tt + {j} * {width[self.target]}")
        loaded = set()
        for m in group:
            one, half = self.products(m, have["a"], have["b"])
            if not one and not half:
                continue
            for node in nodes:
                parts = []
                for terms, scale in ((one, None), (half, math.sqrt(0.5))):
                    if terms:
                        s = tree_sum([f"{'+' if sg > 0 else '-'} ga_{_mname(ma)}{node} * gb_{_mname(mb)}{node}"
                                      for sg, ma, mb in terms])
                        parts.append(f"({s})" if scale is None else f"({s}) * {self.lit(scale)}")
                w(f"h{node} = {' + '.join(parts)}")
            mine = [(pos_t[(l, mm)], var, l) for l, mm, var in accs if mm == m]
            if paired:
                parities = {(l + m) % 2 for _, _, l in mine}
                if 0 in parities:
                    w("he = hu + hv")
                if 1 in parities:
                    w("ho = hu - hv")
            self.quads("t", [c for c, _, _ in mine], loaded)
            for c, var, l in mine:
                h = ("ho" if (l + m) % 2 else "he") if paired else "h"
                w(f"acc{var} += {h} * tt{c}")

    def quads(self, name: str, cols: list, loaded: set):
        """Load the table entries ``cols`` of table ``q<name>`` not yet in ``loaded``, four at a
        time (one 16-byte load of a ``[4]`` tensor, split into scalars: ``t<name><column>``)."""
        w = self.w
        for k in sorted({c // QUAD for c in cols} - loaded):
            loaded.add(k)
            c0 = k * QUAD
            w(f"v = tl.load(q{name} + {c0} + K4)")
            w("u0, u1 = tl.split(tl.reshape(v, [2, 2]))")
            w(f"t{name}{c0}, t{name}{c0 + 2} = tl.split(u0)")
            w(f"t{name}{c0 + 1}, t{name}{c0 + 3} = tl.split(u1)")

    def inactive(self) -> list:
        """``(offset, dim)`` of the target's degrees no path reaches: stored as zeros."""
        active = self.p.active(self.target)
        return [(off, 2 * l + 1) for l, off in self.offsets(self.target).items() if l not in active]

    def store_sums(self, accs: list, zeros: bool):
        """Fold each ``[BLOCK_R]`` accumulator (``S`` samples x ``Q`` channel rows, summed over
        the tiles) to ``[S]`` and store ``S`` sample rows of the one-channel target."""
        w = self.w
        emit_sample_rows(w, self.p.channels)
        w("pg = g + zz * sg")
        off = self.offsets(self.target)
        for l, m, var in accs:
            w(f"tl.store(pg + {off[l] + m + l}, tl.sum(tl.reshape(acc{var}, [S, Q]), axis=1)"
              ".to(g.dtype.element_ty), mask=zm)")
        if zeros:
            for off, dim in self.inactive():
                for i in range(dim):
                    w(f"tl.store(pg + {off + i}, tl.zeros([S], g.dtype.element_ty), mask=zm)")

    def store(self, accs: list, zeros: bool):
        # a broadcast target that reduces_channels rejects gets one partial row per (sample,
        # channel); the launcher sums the channels
        w, p = self.w, self.p
        bcast = p.mul(self.target) == 1 and p.channels > 1
        w(f"pg = g + {'rr' if bcast else 'z'} * sg")
        chan = (lambda dim: "") if p.mul(self.target) == 1 else (lambda dim: f" + c * {dim}")
        off = self.offsets(self.target)
        for l, m, var in accs:
            w(f"tl.store(pg + {off[l] + m + l}{chan(2 * l + 1)}, acc{var}.to(g.dtype.element_ty), mask=rm)")
        if zeros:
            for off, dim in self.inactive():
                for i in range(dim):
                    w(f"tl.store(pg + {off + i}{chan(dim)}, tl.zeros([BLOCK_R], g.dtype.element_ty), mask=rm)")


def emit_separable_producer(problem: GauntProblem, spec: str, dtype: str = "float32", passes: int = 1,
                            pairs: bool = False) -> str:
    """Triton source of producer ``spec`` (``"target:role_a,role_b"``) of a separable problem;
    ``dtype`` is the compute type (``float32`` or ``float64``), ``passes`` the walks over the
    nodes (1..:data:`MAX_PASSES`; see the module docstring), ``pairs`` whether mirror nodes
    share a step (:meth:`_Emitter.walk`).

    The kernel ``gaunt_separable(a, b, g, ta, tb, tt, sa, sb, sg, R, IDX64, BLOCK_R)`` takes the
    two operands, the target, the three roles' node tables (:func:`~tritp.codegen.gaunt_sep_layout.kernel_tables`, ``[n_b, K4]``,
    the operands' first), the operands' and target's row strides and the number of rows ``R =
    batch * channels``. The grid and the channel summing of a broadcast target are as for
    :func:`~tritp.codegen.gaunt_emit.emit_gemm_producer`.
    """
    if problem.implementation != "separable":
        raise ValueError(f"emit_separable_producer handles separable problems, not {problem.implementation!r}")
    if isinstance(passes, bool) or not isinstance(passes, int) or not 1 <= passes <= MAX_PASSES:
        raise ValueError(f"passes must be an int in 1..{MAX_PASSES}, got {passes!r}")
    if not problem.paths:  # the kernel would store nothing; gaunt_produce returns zeros instead
        raise ValueError(f"{problem!r} has no even path: its product is zero, there is no kernel to emit")
    return _Emitter(problem, spec, dtype, passes, pairs).emit()
