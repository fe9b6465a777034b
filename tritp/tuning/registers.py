"""Registers per thread of a sparse-CG producer kernel, estimated from the problem's structure.

A generated kernel walks the *tile groups* of its target (a target segment; for a weight
gradient, one weight path), each as a loop over ``[BLOCK_Z, bc]`` tiles (``bc`` = the group's
lanes rounded up to a power of two, at most ``block_c``). Within a group, Triton and ptxas
hoist the loads of every instruction that writes the group ahead of the arithmetic, so what is
alive at once is not one instruction's operands but all of them:

    tiles(group) = accumulators (2l+1 of the target)
                 + sum over the instructions writing the group, straight-line operands:
                       one tile per component m of each operand that varies along the lanes
                 + max over the instructions' loops of the tiles loaded inside one loop

(a one-channel target, such as the gradient of mul-1 edge harmonics, runs the loop letter of
its instructions as lanes instead, each instruction in its own loop).
Operands that do not vary along the lanes (``[BLOCK_Z]`` rows: the edge harmonics of a MACE
product) are left out: on the sm_90 data below they changed the fit by less than its noise.
Long kernels cost more than their worst group: the segment loops are short (one or two trips)
and are unrolled into one straight-line block, and ptxas's register use grows with the number
of groups at the same worst group (15 tiles, 8 elements per thread: 8 groups 182 registers; 28
groups 255 and 320 bytes of spills; nequip-benzene's forward, 68 groups, 255 and 1408 bytes).
That is :data:`PER_GROUP` (a quarter) of a tile per group of the kernel, alive throughout.
A big producer is emitted as *pieces*, kernels over disjoint segments that share one launch
configuration (``codegen/cg_pieces.py``, at most about 10 segments each on the presets), so
``groups`` counts the groups of one piece and the estimate is the largest over the pieces.
Each tile costs ``BLOCK_Z * bc / (32 * num_warps)`` elements per thread (at least 1), each
one 32-bit register (two in float64), and the registers per thread are

    estimate = OVERHEAD + words * max over loops ((tiles + groups / 4) * elements per thread)

Groups of one width that read the same operand segment share one channel loop and load that
operand's tiles once (``CGEmitter.segment_groups`` / ``weight_groups``; not for GEMM terms,
one-channel targets or shared-weight gradients). Such a loop costs its worst group's tiles plus
:data:`PER_SHARED` (1.25) tiles per other group in it: compiled for sm_90 at 16:64:4 (8 elements
per thread), sharing raised mace-medium's forward from 112 to 164 registers (a loop of 5),
mace-large's forward pieces from 151/167 to 191/214 (loops of 6 and 7) and its per-sample
weight gradient from 183 to 254 (7): about 1.0-1.6 tiles per extra group, more than the shared
operand's tiles alone, because the loop's addresses and the scheduler's overlap of
neighbouring groups stay alive too. Over the 64 compiles of eight presets (forward and
backward, 16:64:4 and 16:64:8, Triton 3.9) the residual is then mean -2, standard deviation 32.

A one-channel target's instructions each loop over their lanes; when the channels fit in one
lane tile (``p2(lanes) <= block_c``) those loops take one trip, Triton folds them into one
straight block and ptxas overlaps the instructions: :data:`PER_SERIAL` (1.5) tiles per
instruction after the first. Measured: nequip-benzene's forces kernel (grad x2, 64 channels, up
to 20 instructions per segment) 255 registers at 16:64:8 (estimated 132 before, 250 now) and 99
at 16:32:8, where the loops take two trips; nequip-l2's (32 channels) 168 at 16:64:4 (107
before, 173 now); diffdock-L2's 165 (102, 162). With 128 channels (MACE) the loops take two
trips at the default and the estimate was already close (110-168 registers).

with ``OVERHEAD = 40`` (row offsets, pointers, masks, loop state).

Coalesced ``mul_ir`` tiles (:mod:`tritp.codegen.cg_tiles`, the default form) load and store a
segment as one ``[BLOCK_Z, bc, DP]`` tile; the joined tile, its copy in the store's layout and
their addresses are alive together, which the estimate counts as :data:`PER_3D` (4) tiles per
padded component of a loop's largest 3D tile. Fitted on sm_90 (Triton 3.9): mace-large's
forward 164 registers at 8:64:8 (estimate 148), 251-255 at 8:64:4 and 16:64:8 (estimates 257);
mace-medium's 98 at 8:64:8 (136). Conservative by design: it only moves the default to
smaller tiles (:data:`tritp.tuning.GPU_LADDER_3D`). The row-on-warp form of those tiles (the
default since; :meth:`tritp.codegen.cg_tiles.TileMixin.rows_head`) measured at or below that on
Triton 3.9 (mace-large's forward 148 at 8:64:8, mace-medium's 64; its grad x1 196, up from 128)
and far below on Triton 3.6 (mace-large's forward 64, 114 at 16:64:8); the estimate is kept
until a GPU has timed the wider tiles this would allow, except that the form counts
:data:`PER_3D_ROWS` (3.5) tiles per padded component instead of 4: over 46 sm_90 compiles
(Triton 3.9; the nine presets' kernels at their defaults, mace-large's at 16:64:8) the residual
is then +34 (standard deviation 46; +41 at 4, +27 at 3), no default of the presets changes
(at 3, thirteen kernels would move to bigger tiles and nequip-benzene's forces kernel would spill 4
bytes at 8:64:8), and the kernels that reach ptxas's ceiling stay estimated above 256 only
where ptxas spills (mace-large grad x1 at 16:64:8: 325, 148 bytes of spill), not where it
does not (its forward and grad w at 16:64:8: 241; ptxas 240 and 252 registers), so the tuner
may try those. The largest underestimate is diffdock-L2's grad w at 16:64:4 (about 140
against 242, no spill).

A fused convolution in segment mode (``walk``: :mod:`tritp.codegen.conv_emit`) walks a node's
edges once per loop and keeps the node accumulators of every segment of the loop (one tile per
component) alive across the walk: :data:`PER_NODE` (a half) tile each. Fitted offline (sm_90,
Triton 3.9, ``benchmarks/conv_ptxas.py``) on mace-large's and mace-medium's forward and grad-x1
segment kernels at six configurations: over the per-segment walk that kept one segment's
accumulators, mace-large's forward rose from 100 to 175 registers at 8:64:8 (31 accumulators of
2 elements: 1.2 per accumulator) and from 64 to 115 at 8:32:8 (1.6), but the base estimate
already ran 48 and 30 above the per-segment walk there; over all 24 compiles of the shared walk
the residual is -2 (standard deviation 27) at 0, +14 (32) at a half, +30 (43) at one tile. A
half keeps the estimate above ptxas where the tiles are largest (8:64:8).

Calibration (Triton 3.9, ptxas for sm_90, no GPU: ``benchmarks/ptxas_audit.py``). Compiled
as whole kernels (before producers were split into pieces; the estimates quoted here are of
whole kernels, ``pieces=(None,)``): fp32 forward, grad x1 and per-sample grad w of the
mace-large, mace-medium, mace-small, sevennet-l2, nequip-l2, uvu-128x3e and diffdock-L2
presets at BLOCK_Z 16 and (block_c, num_warps) in (64, 4), (32, 4), (64, 8), (32, 8), (16, 8):
105 compiles; plus the long forwards above. Registers = estimate + residual, residual mean
-10, standard deviation 27: ptxas spends spare registers on scheduling, so small kernels land
above the estimate and the count is noisy near the ceiling. The three spilling compiles of the
105 had estimates 215 (mace-large grad x1 at 16:32:4; at 16:64:8, same estimate, 233
registers and no spill), 310 (sevennet-l2 grad x1, 16:64:4) and 390 (mace-large grad x1,
16:64:4); the largest estimate that did not spill was 244 (mace-medium grad x1, 16:64:4, 240
registers); the long forwards that spilled are estimated 216 (28 groups) and 296 (68
groups). Hence :data:`REGISTER_BUDGET` (200) for the launch default, with a margin, and
``> 256`` for "will spill" in the search-space pruning (:mod:`tritp.tuning.space`, rule 4).
The model is least accurate for tensor-core (``tl.dot``) paths and gathered lanes (per-sample
``uvw`` weight gradients), which ptxas ran at up to 120 registers above it, all below 255;
fc-32x012's forward (``tl.dot``) stores 8 bytes to local memory at 168 registers at 16:64:4
(and at 16:32:4; none at 16:64:8), which is not register pressure and not modelled.

Example:
    >>> from tritp.codegen import Problem
    >>> from tritp.codegen.cg_spec import forward_spec
    >>> from tritp.tuning import Config
    >>> p = Problem.channelwise("128x0e+128x1o", "0e+1o", "0e+1o")
    >>> [g.tiles for g in groups(p, forward_spec())]
    [3, 5, 5, 7]
    >>> estimate_registers(p, forward_spec(), "float32", Config(16, 64, 4), coalesce=False)  # 40 + (7 + 1.25 + 4/4) * 8
    114
    >>> estimate_registers(p, forward_spec(), "float32", Config(16, 64, 4), share=False, coalesce=False)  # a loop each
    104
    >>> estimate_registers(p, forward_spec(), "float32", Config(16, 64, 4), coalesce="3d")  # + 4 x 4 tiles (DP 4)
    242
    >>> estimate_registers(p, forward_spec(), "float32", Config(16, 64, 4), coalesce=True)  # row-on-warp: + 3.5 x 4
    226
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

from ..codegen.cg_gemm import dot_letter
from ..codegen.cg_pieces import Partial
from ..codegen.cg_spec import FusedSpec, letters, loop_groups, tile_keys
from ..codegen.cg_tiles import form_name
from ..codegen.intmath import p2

#: Registers per thread that do not scale with the tiles (row offsets, pointers, masks, loops).
OVERHEAD = 40
#: Tiles each tile group of a kernel keeps alive for the whole (unrolled, straight-line) kernel.
PER_GROUP = 0.25
#: Estimated registers the heuristic default stays within (ptxas's ceiling is 255).
REGISTER_BUDGET = 200
#: Tiles added per extra group sharing one channel loop (and its common operand tiles).
PER_SHARED = 1.25
#: Tiles added per extra instruction of a one-channel segment whose lane loops take one trip.
PER_SERIAL = 1.5
#: Tiles added per padded component (``DP``) of a group's largest coalesced ``mul_ir`` tile.
PER_3D = 4
#: The same in the row-on-warp form of those tiles (the default; see the module docstring).
PER_3D_ROWS = 3.5
#: Tiles per work unit of an x1 segment of a fused backward (its unrolled loads and coupling
#: terms): the longer the straight-line code, the more values the compiler keeps in flight
#: (fitted to ptxas for sm_90, Triton 3.9, at 8:64:8 and 8:32:8 on six presets).
PER_FUSED_UNIT = 0.07
#: Tiles per node accumulator (one per component of each target segment of a loop) that a
#: convolution's segment-mode walk keeps alive across a node's edges.
PER_NODE = 0.5


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

    want = set(spec.targets)
    costs = segment_costs(p, spec)
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
            per_path = max(per_path, ms["out"] + (3 if want & {"w", "x2"} else 1))
            dims.append(p.irreps_out[ins.i_out].ir.dim)
        if want & {"w", "x2"} and inss:
            tiles += ir.dim
        tiles = tiles + q + per_path + PER_FUSED_UNIT * costs[seg]
        out.append(Group(mul, tiles, 1, seg, None, frozenset(), dp3d=_dp(p, dims)))
    return tuple(out)


def _dp(p, dims) -> int:
    """Padded components of the largest 3D tile among segments of ``dims`` (mul_ir only)."""
    big = [d for d in dims if d > 1]
    return p2(max(big)) if big and p.layout == "mul_ir" else 0


def _serial(g: Group, config) -> float:
    """Extra tiles of a one-channel segment whose lane loops take one trip each (channels at
    most the lanes): Triton folds them into one straight block, and ptxas overlaps its
    instructions (:data:`PER_SERIAL` per instruction after the first)."""
    one_trip = g.serial > 1 and p2(g.lanes) <= config.block_c
    return PER_SERIAL * (g.serial - 1) if one_trip else 0.0


def estimate_registers(problem, spec, dtype: str, config, pieces=None, share=None, coalesce=None,
                       walk: bool = False) -> int:
    """Estimated 32-bit registers per thread of ``spec``'s kernel launched with ``config``:
    ``OVERHEAD + words * max over loops of (tiles + PER_GROUP * groups) * elements per
    thread``, where ``groups`` counts the groups of one piece (a big producer is emitted as
    several kernels over disjoint segments, :mod:`tritp.codegen.cg_pieces`; ``pieces``
    defaults to its plan), and the largest over the pieces, which share the launch config.
    A loop shared by ``n`` groups (``share``, default :func:`tritp.kernels.share_loads`) counts
    its worst group's tiles plus :data:`PER_SHARED` per other group. A ``mul_ir`` kernel with
    coalesced 3D tiles (``coalesce``, default :func:`tritp.kernel_forms.tile_form`;
    :mod:`tritp.codegen.cg_tiles`) adds :data:`PER_3D` tiles per padded component of the
    loop's largest 3D tile: the joined tile, its copy in the store's layout and their 64-bit
    addresses are alive at once (sm_90, Triton 3.9, mace-large forward: 8:64:8 164 registers
    against 84 for strided tiles; 16:64:8 and 8:64:4 at or over 251). ``walk`` adds
    :data:`PER_NODE` tiles per node accumulator of the loop (a convolution's segment mode).
    ``coalesce`` may also name the tile form (:func:`tritp.kernel_forms.tile_form`): True is
    the default form, ``"rows"``, whose 3D tiles count :data:`PER_3D_ROWS` tiles per padded
    component; ``"3d"`` counts :data:`PER_3D`."""
    from ..kernel_forms import share_loads

    if share is None:
        share = share_loads()
    form = tile_form3d(coalesce)
    per3d = {"rows": PER_3D_ROWS, "3d": PER_3D, "strided": 0}[form]
    words = 2 if dtype == "float64" else 1
    worst = 0.0
    for members, n_groups in _loops(problem, spec, None if pieces is None else tuple(pieces), bool(share)):
        lanes = max(g.lanes for g in members)
        bc = max(min(p2(lanes), config.block_c), max(g.min_bc for g in members))
        per_thread = max(1.0, config.block_z * bc / (32 * config.num_warps))
        tiles = max(g.tiles + _serial(g, config) for g in members) + PER_SHARED * (len(members) - 1)
        tiles += per3d * max(g.dp3d for g in members)
        if walk:
            tiles += PER_NODE * sum(g.accs for g in members)
        worst = max(worst, (tiles + PER_GROUP * n_groups) * per_thread)
    return int(round(OVERHEAD + words * worst))


def tile_form3d(coalesce=None) -> str:
    """A ``coalesce`` argument as a tile form name (:func:`tritp.codegen.cg_tiles.form_name`;
    True is the default, row-on-warp form); None: the environment's
    (:func:`tritp.kernel_forms.tile_form`).

    Example:
        >>> tile_form3d(True), tile_form3d(False), tile_form3d("3d")
        ('rows', 'strided', '3d')
    """
    from ..kernel_forms import tile_form

    return tile_form() if coalesce is None else form_name(coalesce)


@lru_cache(maxsize=1024)  # the tuner's space asks once per candidate launch configuration
def _loops(problem, spec, pieces, share: bool) -> tuple:
    """The emitter's channel loops (``CGEmitter.segment_groups`` / ``weight_groups``) of each
    piece, as ``(groups in the loop, groups in the piece)``: everything of the estimate that
    does not depend on the launch configuration."""
    fused = isinstance(spec, FusedSpec)
    if pieces is None:
        from ..codegen.cg_fused import fused_pieces
        from ..codegen.cg_pieces import plan_pieces

        pieces = fused_pieces(problem, spec) if fused else plan_pieces(problem, spec)
    every = groups(problem, spec)
    out = []
    for piece in pieces:
        if fused and piece is not None:
            piece = piece[0]  # (x1 segments, adds)
        # a Partial piece (one-channel target) runs every segment loop, on fewer instructions:
        # counted as the whole kernel (an upper bound)
        gs = every if piece is None or isinstance(piece, Partial) else [g for g in every if g.unit in piece]
        for members in loop_groups(gs, [g.tiles_read for g in gs], [g.loop if share else None for g in gs]):
            out.append((tuple(members), len(gs)))
    return tuple(out)
