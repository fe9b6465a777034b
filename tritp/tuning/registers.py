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

from ..codegen.cg_pieces import Partial
from ..codegen.cg_spec import FusedSpec, loop_groups
from ..codegen.cg_tiles import form_name
from ..codegen.intmath import p2
from .tile_groups import PER_FUSED_UNIT, Group, groups  # noqa: F401  (re-exported)

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
#: Tiles per node accumulator (one per component of each target segment of a loop) that a
#: convolution's segment-mode walk keeps alive across a node's edges.
PER_NODE = 0.5


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
