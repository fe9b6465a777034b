"""The fused backward of a graph convolution: the gradients with respect to x1 (node
features), the per-edge weights and the edge attributes (x2, which carry the forces) -- those
asked for -- in one edge kernel.

A convolution's backward ran one kernel per gradient, each gathering the output cotangent at the
edge's destination (mace-large: 9,088 numbers an edge; x1's and x2's kernels also x1 at its
source). Here one program per ``BLOCK_Z`` edges computes them all with :mod:`.cg_fused`'s walk
(each x1 segment's channel tiles once; per path the cotangent and weight tiles once): the edge
gradients are stored per edge. x1's gradient is a node target, the sum over each source's
edges; its part is written according to the scatter (:func:`fused_mode`):

* ``"edge+atomic"``: added atomically into the source nodes' rows of a zeroed fp32/fp64 buffer,
  as the separate atomic kernel did;
* ``"edge+rows"`` (deterministic): stored per edge, ``[E, dim1]`` in the accumulation dtype, and
  summed per source node in a fixed order afterwards (:mod:`.segment_sum`). The separate
  segment kernel it replaces walked each source's edges and gathered the cotangent again --
  a whole contraction, as costly as the forward -- where this buffer costs one write and one
  read of x1's width per edge (1,152 numbers for mace-large, against 9,088 for the cotangent).

Example:
    >>> from tritp.codegen import Problem
    >>> from tritp.codegen.cg_fused import fused_backward
    >>> p = Problem.channelwise("8x0e+8x1o", "0e+1o", "0e+1o", shared_weights=False)
    >>> src = emit_fused_conv(p, fused_backward(p, {"x2", "w"}))
    >>> "# conv write mode: edge" in src and "tl.load(src + z" in src
    True
    >>> "tl.atomic_add(" in emit_fused_conv(p, fused_backward(p, {"x1", "x2", "w"}), mode="edge+atomic")
    True
    >>> "tl.atomic_add(" in emit_fused_conv(p, fused_backward(p, {"x1", "x2", "w"}), mode="edge+rows")
    False
"""

from __future__ import annotations

from .cg_fused import FusedMixin
from .cg_spec import FusedSpec
from .conv_emit import EDGE_ROLES, ConvEmitter
from .problem import Problem

#: The parts a fused convolution backward may have: the edge targets, and x1
PARTS = ("x1", *EDGE_ROLES)
#: How a fused convolution backward writes x1's part (none: "edge"); see the module docstring
FUSED_MODES = ("edge", "edge+atomic", "edge+rows")


def fused_mode(spec: FusedSpec, scatter: str) -> str:
    """The write mode of fused backward ``spec`` under ``scatter`` ("atomic" or
    "deterministic"): how its x1 part, if any, reaches the nodes.

    Example:
        >>> from tritp.codegen import Problem
        >>> from tritp.codegen.cg_fused import fused_backward
        >>> p = Problem.channelwise("4x0e", "0e", "4x0e", shared_weights=False)
        >>> fused_mode(fused_backward(p, {"x1", "w"}), "deterministic")
        'edge+rows'
    """
    if "x1" not in spec.targets:
        return "edge"
    return "edge+atomic" if scatter == "atomic" else "edge+rows"


class FusedConvEmitter(FusedMixin, ConvEmitter):
    """:class:`~.cg_fused.FusedMixin`'s kernel over graph edges: edge targets stored per
    edge; x1's gradient (where a part) added atomically at each edge's source, or stored per
    edge (``mode``, :data:`FUSED_MODES`)."""

    def __init__(self, problem: Problem, spec: FusedSpec, dtype: str, block_c: int, piece=None, coalesce="3d",
                 mode: str = "edge", block_sums: bool = True):
        if mode not in FUSED_MODES or (mode == "edge") != ("x1" not in spec.targets):
            raise ValueError(f"mode must be one of {FUSED_MODES[1:]} for a fused backward with x1's gradient, "
                             f"else 'edge'; got {mode!r} for {spec.target}")
        edge = next(part for part in spec.parts if part.target in EDGE_ROLES)
        ConvEmitter.__init__(self, problem, edge, dtype, block_c, "edge", "ieee", None, True, coalesce)
        self.init_fused(spec, piece)
        self.label = mode
        self.x1_atomic = mode == "edge+atomic"
        self.block_sums = block_sums and self.x1_atomic  # (conv_emit.ConvEmitter.emit_block_sum)
        self.tg_role = {t: r for r, t in self.part_tg.items()}

    def part_role(self, t: str) -> str:
        role = self.tg_role[t]
        # x1's part stored per edge: its rows are the edges' ("x2" stands for any edge role)
        return "x2" if role == "x1" and not self.x1_atomic else role

    def atomic_parts(self) -> list:
        return [self.part_tg["x1"]] if self.x1_atomic else []


def emit_fused_conv(problem: Problem, spec: FusedSpec, dtype: str = "float32", block_c: int = 64, piece=None,
                    coalesce="3d", mode: str | None = None, block_sums: bool = True) -> str:
    """Triton source of the fused convolution backward ``spec`` (parts among x1, w and x2, at
    least one of them an edge target; :func:`~.cg_fused.fused_backward`): the kernel
    ``tp_producer(t0.., s0.., g0, sg0, g1, sg1, .., src, dst, tok, Z, IDX64, BLOCK_Z, NW)`` over
    ``Z`` edges. ``mode`` (:data:`FUSED_MODES`, :func:`fused_mode`; required with an x1
    part): x1's part is added into a zeroed ``[nodes, dim1]`` buffer ("edge+atomic") or stored
    per edge, ``[E, dim1]`` ("edge+rows"); ``piece`` one of :func:`~.cg_fused.fused_pieces`;
    ``block_sums``: as :func:`~.conv_emit.emit_conv_producer`'s, for x1's atomic adds."""
    if (not isinstance(spec, FusedSpec) or not set(spec.targets) <= set(PARTS)
            or not set(spec.targets) & set(EDGE_ROLES)):
        raise ValueError(f"a fused convolution backward computes edge gradients (x2, w), and perhaps x1's, "
                         f"got {spec!r}")
    if mode is None:
        if "x1" in spec.targets:  # how x1's part is written follows the scatter: no default
            raise ValueError(f"mode: a fused backward with x1's gradient needs 'edge+atomic' or 'edge+rows' "
                             f"(fused_mode(spec, scatter)), got None for {spec.target}")
        mode = "edge"
    return FusedConvEmitter(problem, spec, dtype, block_c, piece, coalesce, mode, block_sums).emit()
