"""Load and plan the deterministic segment sum (:mod:`tritp.codegen.segment_sum`) that turns
the per-edge rows of x1's gradient, stored by the deterministic fused convolution backward
(:mod:`tritp.codegen.conv_fused`, mode ``"edge+rows"``), into node rows.

Example:
    >>> import torch
    >>> from tritp.conv_index import conv_graph
    >>> src, dst = torch.tensor([0, 1, 0]), torch.tensor([1, 1, 0])
    >>> buf = torch.arange(6.0).reshape(3, 2)
    >>> plan = segment_sum_plan(buf, conv_graph(src, dst, 2).tensors(), 2, torch.float32)
    >>> from tritp.kernels import launch_pieces
    >>> launch_pieces(plan.kernels, plan.grid, plan.args, plan.options)  # doctest: +SKIP
    >>> plan.g  # doctest: +SKIP
    tensor([[4., 6.], [2., 3.]])
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import kernels
from .codegen import segment_sum
from .codegen.diskcache import atomic_write, cache_dir, content_hash
from .kernels import LaunchPlan, load_generated, triton_cdiv

_loaded: dict = {}
#: Channels per program: a node's row of mace-large's x1 (1,152) in 9 programs
BLOCK_C = 128


def get_segment_sum(dtype: str):
    """The loaded ``tp_segment_sum`` summing in ``dtype`` ("float32" or "float64")."""
    k = _loaded.get(dtype)
    if k is None:
        src = segment_sum.emit_segment_sum(dtype)
        h = content_hash(Path(segment_sum.__file__).read_bytes(), src)
        path = cache_dir("kernels") / f"segsum_{h}.py"
        if not path.exists():
            atomic_write(path, src.encode())
        k = _loaded[dtype] = getattr(load_generated(path), segment_sum.KERNEL_NAME)
    return k


def segment_sum_plan(buf: torch.Tensor, graph: list, n_in: int, out_dtype, *, dry: bool = False,
                     num_edges: int | None = None, width: int | None = None) -> LaunchPlan:
    """The launch that sums ``buf`` (``[E, W]`` per-edge rows in the accumulation dtype) per
    source node of the deterministic ``graph`` (:meth:`ConvGraph.tensors`: its source CSR),
    into a new ``[n_in, W]`` tensor of ``out_dtype`` (``plan.g``), in a fixed order. ``dry``
    (precompile): ``buf`` may be empty, ``num_edges`` and ``width`` are the real sizes, which
    the launch options follow as a real launch's do."""
    E = buf.shape[0] if num_edges is None else num_edges
    W = buf.shape[-1] if width is None else width
    ptr, eid = (t if t.is_contiguous() else t.contiguous() for t in graph[5:7])
    out = torch.empty((0,) if dry else (n_in, W), dtype=out_dtype, device=buf.device)
    bc = min(BLOCK_C, 1 << max(W - 1, 0).bit_length())
    big = max(E * W, n_in * W) >= kernels.INT32_LIMIT
    options = dict(IDX64=big, BLOCK_E=segment_sum.BLOCK_E, BLOCK_C=bc, num_warps=4)
    kern = get_segment_sum("float64" if buf.dtype == torch.float64 else "float32")
    return LaunchPlan([kern], (n_in, triton_cdiv(W, bc)), (buf, W, ptr, eid, out, W, W), options, out, False,
                      out_dtype, buf.device)
