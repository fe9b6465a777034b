"""The fused backward of a graph convolution's edge targets: the gradients with respect to
the edge attributes (x2, which carry the forces) and the per-edge weights in one kernel.

A convolution's backward ran one kernel per gradient; the x2 and weight kernels each gather the
output cotangent at the edge's destination and x1 at its source (mace-large: 9,088 + 1,152
numbers an edge) and write edge rows. Here one ``edge``-mode program per ``BLOCK_Z`` edges does
both, with :mod:`.cg_fused`'s walk (each x1 segment's channel tiles once; per path the cotangent
and weight tiles once); x1's gradient, a node target, keeps its own kernel (atomic or segment).

Example:
    >>> from tritp.codegen import Problem
    >>> from tritp.codegen.cg_fused import fused_backward
    >>> p = Problem.channelwise("8x0e+8x1o", "0e+1o", "0e+1o", shared_weights=False)
    >>> src = emit_fused_conv(p, fused_backward(p, {"x2", "w"}))
    >>> "# conv write mode: edge" in src and "tl.load(src + z" in src
    True
"""

from __future__ import annotations

from .cg_fused import FusedMixin
from .cg_spec import FusedSpec
from .conv_emit import EDGE_ROLES, ConvEmitter
from .problem import Problem


class FusedConvEmitter(FusedMixin, ConvEmitter):
    """:class:`~.cg_fused.FusedMixin`'s kernel over graph edges, its parts edge targets."""

    def __init__(self, problem: Problem, spec: FusedSpec, dtype: str, block_c: int, piece=None, coalesce="3d"):
        ConvEmitter.__init__(self, problem, spec.parts[0], dtype, block_c, "edge", "ieee", None, True, coalesce)
        self.init_fused(spec, piece)

    def row_var(self, role: str) -> str:
        return "ze" if role == self.spec.target else super().row_var(role)


def emit_fused_conv(problem: Problem, spec: FusedSpec, dtype: str = "float32", block_c: int = 64, piece=None,
                    coalesce="3d") -> str:
    """Triton source of the fused edge backward ``spec`` (parts among x2 and w,
    :func:`~.cg_fused.fused_backward`): the kernel ``tp_producer(t0.., s0.., g0, sg0, g1, sg1,
    src, dst, tok, Z, IDX64, BLOCK_Z, NW)`` over ``Z`` edges; ``piece`` one of
    :func:`~.cg_fused.fused_pieces`."""
    if not isinstance(spec, FusedSpec) or not set(spec.targets) <= set(EDGE_ROLES):
        raise ValueError(f"a fused convolution backward computes edge gradients (x2, w), got {spec!r}")
    return FusedConvEmitter(problem, spec, dtype, block_c, piece, coalesce).emit()
