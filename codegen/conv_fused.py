"""The fused backward of a graph convolution: the gradients with respect to the edge
attributes (x2, which carry the forces) and the per-edge weights in one kernel, and under the
atomic scatter x1's gradient from the same kernel too.

A convolution's backward ran one kernel per gradient; the x2 and weight kernels each gather the
output cotangent at the edge's destination and x1 at its source (mace-large: 9,088 + 1,152
numbers an edge) and write edge rows. Here one ``edge``-mode program per ``BLOCK_Z`` edges does
both, with :mod:`.cg_fused`'s walk (each x1 segment's channel tiles once; per path the cotangent
and weight tiles once). x1's gradient is a node target: under the deterministic scatter it keeps
its own kernel (a segment walk over the edges sorted by source); under the atomic scatter it is a
part of this kernel too, each program adding its edges' tiles atomically into the source nodes'
rows of a zeroed fp32/fp64 buffer, as the separate atomic kernel did -- the whole backward is
then one kernel, which reads the cotangent once.

Example:
    >>> from tritp.codegen import Problem
    >>> from tritp.codegen.cg_fused import fused_backward
    >>> p = Problem.channelwise("8x0e+8x1o", "0e+1o", "0e+1o", shared_weights=False)
    >>> src = emit_fused_conv(p, fused_backward(p, {"x2", "w"}))
    >>> "# conv write mode: edge" in src and "tl.load(src + z" in src
    True
    >>> "tl.atomic_add(" in emit_fused_conv(p, fused_backward(p, {"x1", "x2", "w"}))
    True
"""

from __future__ import annotations

from .cg_fused import FusedMixin
from .cg_spec import FusedSpec
from .conv_emit import EDGE_ROLES, ConvEmitter
from .problem import Problem

#: The parts a fused convolution backward may have: the edge targets, and x1 (atomic adds)
PARTS = ("x1", *EDGE_ROLES)


class FusedConvEmitter(FusedMixin, ConvEmitter):
    """:class:`~.cg_fused.FusedMixin`'s kernel over graph edges: edge targets stored per
    edge, x1's gradient (where a part) added atomically at each edge's source."""

    def __init__(self, problem: Problem, spec: FusedSpec, dtype: str, block_c: int, piece=None, coalesce="3d"):
        edge = next(part for part in spec.parts if part.target in EDGE_ROLES)
        ConvEmitter.__init__(self, problem, edge, dtype, block_c, "edge", "ieee", None, True, coalesce)
        self.init_fused(spec, piece)
        self.tg_role = {t: r for r, t in self.part_tg.items()}

    def part_role(self, t: str) -> str:
        return self.tg_role[t]

    def atomic_target(self) -> bool:
        return self.tg_role[self.tg] == "x1"


def emit_fused_conv(problem: Problem, spec: FusedSpec, dtype: str = "float32", block_c: int = 64, piece=None,
                    coalesce="3d") -> str:
    """Triton source of the fused convolution backward ``spec`` (parts among x1, w and x2, at
    least one of them an edge target; :func:`~.cg_fused.fused_backward`): the kernel
    ``tp_producer(t0.., s0.., g0, sg0, g1, sg1, .., src, dst, tok, Z, IDX64, BLOCK_Z, NW)`` over
    ``Z`` edges; x1's part (the atomic scatter's) is added into a zeroed ``[nodes, dim]``
    buffer; ``piece`` one of :func:`~.cg_fused.fused_pieces`."""
    if (not isinstance(spec, FusedSpec) or not set(spec.targets) <= set(PARTS)
            or not set(spec.targets) & set(EDGE_ROLES)):
        raise ValueError(f"a fused convolution backward computes edge gradients (x2, w), and perhaps x1's, "
                         f"got {spec!r}")
    return FusedConvEmitter(problem, spec, dtype, block_c, piece, coalesce).emit()
