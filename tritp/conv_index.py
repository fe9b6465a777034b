"""Graph bookkeeping for the fused convolution: index validation and the per-graph orders the
deterministic strategy walks.

The deterministic strategy writes each node's row from one program that sums that node's edges
in a fixed order, so it needs the edges grouped by destination (forward: ``out`` at ``dst``) and
by source (gradient of the node features at ``src``). :func:`conv_graph` prepares both once per
graph: a stable ``argsort`` (edge ids in that order), the other endpoint of each edge in that
order (saves the kernel a dependent load) and CSR row pointers. The edge tensors themselves are
never permuted -- the kernels read them through the order -- so no inverse permutation is
needed, and **unsorted input is fine: the helper sorts, it never raises for order**.

Everything here is shape-static torch (``argsort``, ``searchsorted``): no host sync, so it can
run inside ``torch.compile``. Only the range check (:func:`check_ranges`) syncs.

Example:
    >>> import torch
    >>> g = conv_graph(torch.tensor([0, 2, 1, 2]), torch.tensor([1, 0, 1, 1]), num_nodes=3)
    >>> g.dst_ptr.tolist(), g.dst_order.tolist(), g.dst_nbr.tolist()
    ([0, 1, 4, 4], [1, 0, 2, 3], [2, 0, 1, 2])
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

INDEX_DTYPES = (torch.int32, torch.int64)


class ConvGraph(NamedTuple):
    """Edges ``src -> dst`` with both CSR groupings (see the module docstring).

    ``dst_ptr [num_nodes + 1]``, ``dst_order [E]`` (edge ids sorted by dst, stable),
    ``dst_nbr [E]`` (``src[dst_order]``); the ``src_*`` three likewise grouped by source over
    ``num_src_nodes`` nodes.
    """

    src: torch.Tensor
    dst: torch.Tensor
    num_nodes: int
    num_src_nodes: int
    dst_ptr: torch.Tensor
    dst_order: torch.Tensor
    dst_nbr: torch.Tensor
    src_ptr: torch.Tensor
    src_order: torch.Tensor
    src_nbr: torch.Tensor

    @property
    def num_edges(self) -> int:
        return self.src.shape[0]

    def tensors(self) -> list:
        """The index tensors in the order the deterministic kernels expect them."""
        return [self.src, self.dst, self.dst_ptr, self.dst_order, self.dst_nbr,
                self.src_ptr, self.src_order, self.src_nbr]


def check_index_tensors(src, dst, num_nodes, num_src_nodes=None) -> None:
    """Type, shape and count checks (no host sync); raise ``TypeError``/``ValueError``."""
    for name, t in (("src", src), ("dst", dst)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor of edge indices, got {type(t).__name__}")
        if t.dtype not in INDEX_DTYPES:
            raise TypeError(f"{name}: edge indices must be int32 or int64, got dtype {t.dtype}")
        if t.dim() != 1:
            raise ValueError(f"{name}: expected a 1-D tensor [num_edges], got shape {list(t.shape)}")
    if src.shape[0] != dst.shape[0]:
        raise ValueError(f"src and dst have different edge counts: {src.shape[0]} vs {dst.shape[0]}")
    if src.device != dst.device:
        raise ValueError(f"dst: device {dst.device} does not match src's device {src.device}")
    for name, n in (("num_nodes", num_nodes), ("num_src_nodes", num_src_nodes)):
        if n is None:
            continue
        if isinstance(n, bool) or not isinstance(n, (int, torch.SymInt)):
            raise TypeError(f"{name}: expected an int, got {type(n).__name__}")
        if n < 0:
            raise ValueError(f"{name} must be >= 0, got {n}")


def check_ranges(src: torch.Tensor, dst: torch.Tensor, num_src_nodes: int, num_nodes: int) -> None:
    """Raise ``IndexError`` naming the first bad edge if an index is negative or too large.

    Costs one host sync; ``check_indices=False`` on the convolution skips it.
    """
    for name, t, n in (("src", src, num_src_nodes), ("dst", dst, num_nodes)):
        if t.numel() == 0:
            continue
        bad = (t < 0) | (t >= n)
        if bool(bad.any()):
            e = int(bad.nonzero()[0, 0])
            v = int(t[e])
            what = "is negative" if v < 0 else f"is out of range for {n} nodes (valid: 0..{n - 1})"
            raise IndexError(f"{name}[{e}] = {v} {what}")


def _group(key: torch.Tensor, other: torch.Tensor, n: int) -> tuple:
    order = torch.argsort(key, stable=True)
    ptr = torch.searchsorted(key[order], torch.arange(n + 1, device=key.device, dtype=key.dtype),
                             out_int32=key.dtype == torch.int32)
    return ptr, order.to(key.dtype), other[order]


def conv_graph(src: torch.Tensor, dst: torch.Tensor, num_nodes: int, num_src_nodes: Optional[int] = None, *,
               check_indices: bool = True) -> ConvGraph:
    """Prepare a graph once for the deterministic convolution (reuse it while edges are fixed).

    ``src``, ``dst``: int32 or int64 ``[E]``, in any order. ``num_nodes``: output rows (the
    range of ``dst``); ``num_src_nodes``: the range of ``src`` (default ``num_nodes``).
    ``check_indices`` validates the ranges (one host sync).

    Example:
        >>> import torch
        >>> g = conv_graph(torch.tensor([1, 0]), torch.tensor([0, 0]), num_nodes=2)
        >>> g.src_ptr.tolist(), g.src_order.tolist(), g.src_nbr.tolist()
        ([0, 1, 2], [1, 0], [0, 0])
    """
    n_src = num_nodes if num_src_nodes is None else num_src_nodes
    check_index_tensors(src, dst, num_nodes, n_src)
    if check_indices:
        check_ranges(src, dst, n_src, num_nodes)
    dst_ptr, dst_order, dst_nbr = _group(dst, src, num_nodes)
    src_ptr, src_order, src_nbr = _group(src, dst, n_src)
    return ConvGraph(src, dst, num_nodes, n_src, dst_ptr, dst_order, dst_nbr, src_ptr, src_order, src_nbr)
