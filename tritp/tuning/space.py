"""Search spaces: the candidate launch configurations of one kernel, per kernel family.

A family (``"cg"`` now; ``"gaunt"`` and ``"conv"`` later) registers a function that builds the
space for one kernel, ``(problem, spec, dtype, batch) -> SearchSpace``. It starts from the
full product of its axes (:data:`AXES`, plus an ``impl`` axis where several implementations
compute the same function) and prunes what cannot win, using what it knows of the problem.
The space's :attr:`SearchSpace.hash` is part of the cache key, so changing an axis or a rule
invalidates the entries tuned over the old space.

Rules of the ``cg`` family (``lanes`` = the widest channel extent of the target's segments,
``bc`` = ``min(block_c, p2(lanes))`` the lanes a segment really uses):

1. ``block_c`` above ``p2(lanes)`` generates the same source as ``p2(lanes)``: dropped;
2. ``block_z`` above ``p2(batch)`` only adds masked rows: dropped (16 is always kept);
3. ``block_z * bc < 32 * num_warps`` leaves whole warps idle: dropped;
4. an estimate above :data:`REGISTER_WORDS` (256) 32-bit registers per thread cannot stay in
   registers: dropped. The estimate is :func:`tritp.tuning.registers.estimate_registers`:
   ``40 + words * (tiles + groups / 4) * block_z * bc / (32 * num_warps)`` for the worst
   tile group, where ``tiles`` counts the accumulators plus the operand tiles of *every*
   instruction writing the group (Triton hoists their loads, so they are alive together),
   ``groups`` is the number of tile groups (segments) of the kernel's piece and ``words`` is
   2 in float64. Calibrated with ptxas for sm_90 (``benchmarks/ptxas_audit.py``): the compiles
   estimated above 256 all spilled (296, 310, 390); of those at or below 244, two did (215, 216).
   In version 1 the rule counted only the accumulators plus the widest operand irrep, which
   for mace-large's grad x1 was 12 tiles where 43 are alive (the kept ``16:64:4`` spilled);
5. ``num_stages > 1`` pipelines loads across loop iterations: only kept when the kernel loops
   (over channel chunks or over a channel letter the target does not carry);
6. a kernel whose source is the same for every ``block_c`` -- a shared-weight gradient made of
   weight GEMMs (:mod:`tritp.codegen.cg_gemm`), whose tiles are their own -- keeps one
   ``block_c``: the others would time the same kernel again (fc-32x012's grad w: 30 candidates,
   not 60).

A kernel with coalesced ``mul_ir`` 3D tiles (:mod:`tritp.codegen.cg_tiles`; no ``tl.dot``) also
tries ``block_z = 8`` (version 3): its tiles cost registers per row, and its launch default is
often ``8:64:8``.

Example:
    >>> from tritp.codegen import Problem
    >>> from tritp.codegen.cg_spec import forward_spec
    >>> s = space_for("cg", Problem.channelwise("8x0e+8x1o", "0e+1o", "0e+1o"), forward_spec(), "float32", 16)
    >>> {c.block_c for c in s.candidates}, len(s.hash)
    ({16}, 20)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from itertools import product
from typing import Callable

from ..codegen.cg_spec import FusedSpec, ProducerSpec, letters
from ..codegen.diskcache import content_hash
from ..codegen.intmath import p2
from . import Config

#: The axes every family starts from (``impl`` lists the implementations of the function).
AXES = {
    "impl": ("sparse",),
    "block_z": (16, 32, 64, 128),
    "block_c": (16, 32, 64, 128),
    "num_warps": (1, 2, 4, 8),
    "num_stages": (1, 2, 3),
}
#: Most 32-bit registers per thread a candidate's estimate may need (rule 4).
REGISTER_WORDS = 256
#: Version of the ``cg`` rules (part of the space hash): 2 since rule 4 counts every tile alive,
#: 3 since kernels with coalesced 3D tiles also try 8 rows, 4 since rule 6.
CG_VERSION = 4


@dataclass(frozen=True)
class SearchSpace:
    """The candidates of one kernel, in a fixed order; ``version`` bumps when rules change."""

    family: str
    candidates: tuple
    version: int = 1

    @property
    def hash(self) -> str:
        """Content hash of the family, its version and every candidate (part of the cache key)."""
        return content_hash(self.family, self.version, *(tuple(c) for c in self.candidates))

    def __len__(self) -> int:
        return len(self.candidates)


_FAMILIES: dict = {}
_IDENTITIES: dict = {}


def register_family(name: str, identity: Callable | None = None):
    """Decorator: register ``fn(problem, spec, dtype, batch) -> SearchSpace`` as family ``name``.

    ``identity(problem, spec, dtype) -> str`` is the family's source identity for the cache
    key (its generator's hash, the problem, the spec, the dtype: everything the source depends
    on but the tuned knobs); without it, the sparse-CG generator's identity is used.

    Example:
        >>> @register_family("toy")
        ... def _toy(problem, spec, dtype, batch):
        ...     return SearchSpace("toy", (Config(),))
        >>> len(space_for("toy", None, None, "float32", 1))
        1
    """
    def deco(fn: Callable) -> Callable:
        _FAMILIES[name] = fn
        if identity is not None:
            _IDENTITIES[name] = identity
        return fn
    return deco


def identity_for(family: str):
    """The registered source-identity function of ``family``, or None (sparse CG's)."""
    return _IDENTITIES.get(family)


def families() -> tuple:
    """Names of the registered families."""
    return tuple(_FAMILIES)


def space_for(family: str, problem, spec, dtype: str, batch: int) -> SearchSpace:
    """The pruned search space of one kernel; ValueError for an unknown family."""
    try:
        fn = _FAMILIES[family]
    except KeyError:
        raise ValueError(f"unknown kernel family {family!r}; registered: {', '.join(_FAMILIES)}") from None
    return fn(problem, spec, dtype, batch)


def cg_shape(problem, spec: ProducerSpec) -> dict:
    """What the ``cg`` rules need: ``lanes``, ``tiles`` (most tiles alive at once, see
    :func:`tritp.tuning.registers.groups`), ``loops`` (bool), ``nnz``."""
    from ..codegen.coupling import sparse_coupling
    from .registers import groups

    p, target = problem, spec.target
    lanes, loops, nnz = 1, False, 0
    if isinstance(spec, FusedSpec):  # channels along x1's segments, no loops of their own
        nnz = sum(len(sparse_coupling(p.irreps_in1[i.i_in1].ir.l, p.irreps_in2[i.i_in2].ir.l,
                                      p.irreps_out[i.i_out].ir.l)) for i in p.instructions)
        gs = groups(p, spec)
        return {"lanes": max([g.lanes for g in gs] + [1]), "tiles": max([g.tiles for g in gs] + [1]),
                "loops": False, "nnz": nnz}
    for ins in p.instructions:
        if 0 in ins.path_shape or (target == "w" and not ins.has_weight):
            continue
        l3 = (p.irreps_in1[ins.i_in1].ir.l, p.irreps_in2[ins.i_in2].ir.l, p.irreps_out[ins.i_out].ir.l)
        nnz += len(sparse_coupling(*l3))
        lt, sz = letters(p, ins)
        if target == "w":
            n = 1
            for s in ins.path_shape:
                n *= s
            lanes = max(lanes, n)
            continue
        used = set("".join(lt[r] for r in ("x1", "x2", "out", "w") if r != target))
        loops = loops or any(ch not in lt[target] and sz[ch] > 1 for ch in used)
    if target != "w":
        for seg, mi in enumerate(p.irreps(target)):
            if any(i.segment(target) == seg for i in p.instructions):
                lanes = max(lanes, mi.mul)
    tiles = max([g.tiles for g in groups(p, spec)] + [1])
    return {"lanes": lanes, "tiles": tiles, "loops": loops, "nnz": nnz}


@lru_cache(maxsize=256)  # asked by every cache lookup of the kernel (make_key hashes its space)
def block_c_free(problem, spec) -> bool:
    """Whether producer ``spec``'s source is the same for every ``block_c`` (rule 6): checked
    on the generated pieces, for shared-weight gradients (the only kernels where it can be).

    Example:
        >>> from tritp.codegen import Problem
        >>> from tritp.codegen.cg_spec import compact, forward_spec
        >>> gw = compact(forward_spec().derivative(2))[0]
        >>> fc = Problem.all_paths("16x0e+16x1o", "16x0e+16x1o", "16x0e+16x1o", "uvw")
        >>> block_c_free(fc, gw), block_c_free(Problem.channelwise("8x0e", "0e", "8x0e"), gw)
        (True, False)
    """
    if isinstance(spec, FusedSpec) or spec.target != "w" or not problem.shared_weights:
        return False
    from ..codegen.cg_emit import emit_producer
    from ..codegen.cg_pieces import plan_pieces

    lo, hi = AXES["block_c"][0], AXES["block_c"][-1]
    return all(emit_producer(problem, spec, "float32", lo, piece=pc)
               == emit_producer(problem, spec, "float32", hi, piece=pc) for pc in plan_pieces(problem, spec))


def _cg_keep(c: Config, shape: dict, batch: int, registers: Callable) -> bool:
    bc = min(c.block_c, p2(shape["lanes"]))
    if c.block_c > max(AXES["block_c"][0], p2(shape["lanes"])):  # rule 1
        return False
    if c.block_z > max(AXES["block_z"][0], p2(batch)):  # rule 2
        return False
    if c.num_warps > 1 and c.block_z * bc < 32 * c.num_warps:  # rule 3
        return False
    if registers(c) > REGISTER_WORDS:  # rule 4
        return False
    loops = shape["loops"] or shape["lanes"] > bc
    return c.num_stages == 1 or loops  # rule 5


@register_family("cg")
def cg_space(problem, spec: ProducerSpec, dtype: str, batch: int, share: bool | None = None,
             walk: bool = False, coalesce=None) -> SearchSpace:
    """The sparse-CG producer space: :data:`AXES` pruned by the six rules of this module
    (``share``: whether the kernel shares channel loops; ``walk``: whether it keeps node
    accumulators across an edge walk; ``coalesce``: the tile form, default the environment's;
    as in :func:`~tritp.tuning.registers.estimate_registers`)."""
    from .registers import estimate_registers, groups, tile_form3d

    form = tile_form3d(coalesce)
    shape = cg_shape(problem, spec)
    registers = lambda c: estimate_registers(problem, spec, dtype, c, share=share, walk=walk, coalesce=form)
    zs = AXES["block_z"]
    gs = groups(problem, spec)
    if form != "strided" and any(g.dp3d for g in gs) and all(g.min_bc == 1 for g in gs):
        zs = (8,) + zs  # 3D tiles: rows cost registers (the default is often 8:64:8)
    bcs = AXES["block_c"][:1] if block_c_free(problem, spec) else AXES["block_c"]  # rule 6
    every = [Config(block_z=z, block_c=c, num_warps=nw, num_stages=ns, impl=i)
             for i, z, c, nw, ns in product(AXES["impl"], zs, bcs, AXES["num_warps"], AXES["num_stages"])]
    kept = tuple(c for c in every if _cg_keep(c, shape, batch, registers))
    if not kept:  # everything spills: keep the smallest tile, one warp and up
        z0, c0 = AXES["block_z"][0], AXES["block_c"][0]
        kept = tuple(c for c in every if c.block_z == z0 and c.block_c == c0 and c.num_stages == 1)
    return SearchSpace("cg", kept, CG_VERSION)
