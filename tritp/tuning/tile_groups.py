"""The tile groups of a sparse-CG producer kernel: what :mod:`tritp.tuning.registers` counts.

A generated kernel walks the tile groups of its target (a target segment; for a weight
gradient, one weight path; for a fused backward, one x1 segment), each as a loop over
``[BLOCK_Z, bc]`` tiles. :func:`groups` describes each group -- its lanes, the tiles alive at
once, what it may share a channel loop through -- from the problem's structure alone, without
generating the kernel; the register estimate and the tuner's search space read it.

Example:
    >>> from tritp.codegen import Problem
    >>> from tritp.codegen.cg_spec import forward_spec
    >>> p = Problem.channelwise("8x0e+8x1o", "0e+1o", "0e+1o")
    >>> [(g.unit, g.lanes, g.tiles) for g in groups(p, forward_spec())]
    [(0, 8, 3), (1, 8, 5), (2, 8, 5), (3, 8, 7)]
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

from ..codegen.cg_gemm import dot_letter
from ..codegen.cg_spec import FusedSpec, letters, tile_keys
from ..codegen.intmath import p2

#: Tiles per work unit of an x1 segment of a fused backward (its unrolled loads and coupling
#: terms): the longer the straight-line code, the more values the compiler keeps in flight
#: (fitted to ptxas for sm_90, Triton 3.9, at 8:64:8 and 8:32:8 on six presets).
PER_FUSED_UNIT = 0.07


class Group(NamedTuple):
    """One tile group of a kernel: a target segment, or one weight path of a weight gradient."""

    lanes: int   # channel extent of its tiles (their width is min(p2(lanes), block_c))
    tiles: int   # [BLOCK_Z, width] tiles alive at once
    min_bc: int  # 16 where a tl.dot needs 16 lanes, else 1
    unit: int    # its target segment (for a weight gradient, its instruction): what pieces split
    loop: tuple = None  # its class (tile width): groups of one class may share a loop; None: never
    tiles_read: frozenset = frozenset()  # the operand tiles it could share a loop through
    serial: int = 0     # one-channel target: instructions running their channels as lanes
    dp3d: int = 0       # mul_ir: padded components of its largest 3D segment tile (cg_tiles)
    accs: int = 0       # its target segment's accumulator tiles (2l+1), 0 for a weight path


@lru_cache(maxsize=None)
def _ms(l1: int, l2: int, l3: int) -> tuple:
    """How many components of (x1, x2, out) the nonzero couplings of (l1, l2, l3) touch."""
    from ..codegen.coupling import sparse_coupling

    nz = sparse_coupling(l1, l2, l3)
    return tuple(len({e[i] for e in nz}) for i in range(3))


def _info(p, ins):
    lt, sizes = letters(p, ins)
    ls = (p.irreps_in1[ins.i_in1].ir.l, p.irreps_in2[ins.i_in2].ir.l, p.irreps_out[ins.i_out].ir.l)
    ms = dict(zip(("x1", "x2", "out"), _ms(*ls)), w=1)
    return lt, sizes, ms


@lru_cache(maxsize=4096)  # the tuner's space asks once per candidate launch configuration
def groups(problem, spec) -> tuple:
    """The :class:`Group` of every tile group of ``spec``'s kernel, in kernel order."""
    if isinstance(spec, FusedSpec):
        return _fused_groups(problem, spec)
    p, target = problem, spec.target
    out = []
    if target == "w":
        for k, ins in enumerate(p.instructions):
            if not ins.has_weight or 0 in ins.path_shape:
                continue
            lt, sizes, ms = _info(p, ins)
            n = 1
            for s in ins.path_shape:
                n *= s
            tiles = 1 + sum(ms[r] for _ in spec.terms for r in ("x1", "x2", "out")
                            if any(sizes[x] > 1 for x in lt[r]))
            # operands along the weight lanes alone are loaded as 3D tiles (uvu, uvv, uuu)
            sized = lambda r: [x for x in lt[r] if sizes[x] > 1]
            dims = [p.irreps(r)[ins.segment(r)].ir.dim for r in ("x1", "x2", "out")
                    if len(sized("w")) == 1 and sized(r) == sized("w")]
            # as CGEmitter.weight_groups: per-sample weights of one size share a loop per operand tile
            out.append(Group(n, tiles, 1, k, None if p.shared_weights else (n,), tile_keys(p, spec, [(k, ins)]),
                             dp3d=_dp(p, dims)))
        return tuple(out)
    srcs = [r for r in ("x1", "x2", "out") if r != target]
    for seg, (mul, ir) in enumerate(p.irreps(target)):
        inss = [i for i in p.instructions if i.segment(target) == seg and 0 not in i.path_shape]
        if mul == 0 or not inss:
            continue
        straight = looped = red_lanes = serial = 0
        min_bc = 1
        # the target's store (a one-channel target's is one lane wide), and the operand tiles
        # along its lanes alone
        dims = [ir.dim] if mul > 1 else []
        for ins in inss:
            lt, sizes, ms = _info(p, ins)
            used = set("".join(lt[r] for r in srcs) + (lt["w"] if ins.has_weight else ""))
            loops = [ch for ch in "uvw" if ch in used and ch not in lt[target] and sizes[ch] > 1]
            K = dot_letter(p, target, ins)
            vec = {ch for ch in lt[target] if sizes[ch] > 1}
            red = mul == 1 and K is None and bool(loops)  # a one-channel target: a loop letter as lanes
            if red:
                ch = max(loops, key=lambda ch: (sizes[ch], ch))
                vec, red_lanes, serial = {ch}, max(red_lanes, sizes[ch]), serial + 1
            if K is not None:
                min_bc = 16
            for term in spec.terms:
                if not ins.has_weight and term[4]:
                    continue
                inner = ms[target] + 1 if K is not None else 0  # GEMM: the [rows, K] tiles and W
                for role in srcs + (["w"] if ins.has_weight else []):
                    deps = {ch for ch in lt[role] if sizes[ch] > 1}
                    if not deps & (vec | {K}):
                        continue  # a [BLOCK_Z] row or a scalar, not a tile
                    if red or K is not None or deps - vec:
                        inner += ms[role]  # loaded inside this term's own loop
                        if red and role != "w" and deps == vec:  # 3D tiles along the reduced lanes
                            dims.append(p.irreps(role)[ins.segment(role)].ir.dim)
                    else:
                        straight += ms[role]
                        if role != "w" and deps == vec and len(vec) == 1:
                            dims.append(p.irreps(role)[ins.segment(role)].ir.dim)
                looped = max(looped, inner)
        lanes = red_lanes or mul
        # as CGEmitter.segment_groups: no GEMM term, more than one channel
        loop = (mul,) if mul > 1 and min_bc == 1 else None
        out.append(Group(lanes, ir.dim + straight + looped, min_bc, seg, loop, tile_keys(p, spec, list(enumerate(inss))),
                         serial, _dp(p, dims), ir.dim))
    return tuple(out)


def _fused_groups(p, spec) -> tuple:
    """One group per x1 segment of a fused backward (:mod:`tritp.codegen.cg_fused`): its x1
    gradient accumulators and x1 tile (alive through the segment's loop), the lane partials of
    one x2 segment's gradient (alive through that segment's paths), per path the cotangent tile,
    the weight tile, one ``t_j`` and the weight gradient; plus :data:`PER_FUSED_UNIT` tiles per
    work unit of the segment (:func:`~tritp.codegen.cg_fused.segment_costs`)."""
    from ..codegen.cg_fused import segment_costs
    from ..codegen.fused_specs import slot_terms

    want = set(spec.targets)
    costs = segment_costs(p, spec)
    st = slot_terms(spec)  # a second-order kernel: x1 and its cotangent's tiles, two weight tiles
    n_x1 = max(1, len(st.t))
    n_w = max(1, len(st.w_tensors()))
    out = []
    for seg, (mul, ir) in enumerate(p.irreps_in1):
        inss = [i for i in p.instructions if i.i_in1 == seg and 0 not in i.path_shape]
        if mul == 0 or not (inss or "x1" in want):
            continue
        tiles = ir.dim if "x1" in want else 0
        per_path, q, dims = 0, 0, [ir.dim]
        for ins in inss:
            _, _, ms = _info(p, ins)
            if "x2" in want:
                q = max(q, p.irreps_in2[ins.i_in2].ir.dim)
            per_path = max(per_path, ms["out"] + (3 if want & {"w", "x2"} else 1) + n_w - 1)
            dims.append(p.irreps_out[ins.i_out].ir.dim)
        if want & {"w", "x2"} and inss:
            tiles += ir.dim * n_x1
        # a second-order kernel's extra contractions keep their operand products alive too
        extra = max(0, len(st.s) - 1) + max(0, len(st.t) - 1)
        tiles = tiles + q + per_path + PER_FUSED_UNIT * costs[seg] + extra
        out.append(Group(mul, tiles, 1, seg, None, frozenset(), dp3d=_dp(p, dims)))
    return tuple(out)


def _dp(p, dims) -> int:
    """Padded components of the largest 3D tile among segments of ``dims`` (mul_ir only)."""
    big = [d for d in dims if d > 1]
    return p2(max(big)) if big and p.layout == "mul_ir" else 0
