"""``tritp.compile_conv`` and :class:`TensorProductConv`: the fused equivariant graph
convolution -- gather, tensor product and scatter-sum in one kernel pass.

``out[n] = sum over edges e with dst[e] = n of TP(node_feats[src[e]], edge_attrs[e], w[e])``

The per-edge product (the largest tensor of a message-passing layer) never reaches memory.
Forward, backward (including the gradient w.r.t. ``edge_attrs``, which carries the forces)
and double backward are all generated kernels (:mod:`tritp.conv_ops`).

Scatter strategies (``scatter=``):

* ``"atomic"`` (default): edge blocks, ``atomic_add`` into the node rows. Fast, but the fp
  summation order varies run to run on a GPU.
* ``"deterministic"``: one program per node sums that node's edges in a fixed order and writes
  its row once: bit-identical results run to run, forward and all gradients. It needs the
  edges grouped by dst and by src: pass ``graph=tritp.conv_graph(src, dst, num_nodes)`` to
  prepare that once per graph, or leave it out and the module builds it on every call (a sort;
  no host sync). Edges may come in **any order**: the deterministic path sorts, never raises.

Index checks: dtypes, shapes and edge counts are always checked. With ``check_indices=True``
(default) the index ranges are checked too (negative or ``>= num_nodes`` raises
``IndexError`` before any kernel runs), at the cost of one host sync per call, also inside
``torch.compile`` (:mod:`tritp.conv_ops` explains how). ``check_indices=False`` skips the range
check: out-of-range indices are then undefined behaviour (atomic: memory corruption).

Example:
    >>> import torch, tritp
    >>> conv = tritp.compile_conv("8x0e+8x1o", "0e+1o", "0e+1o", mode="channelwise", backend="reference")
    >>> src, dst = torch.tensor([0, 1, 2, 2]), torch.tensor([1, 0, 0, 1])
    >>> x, ea = torch.randn(3, 32), torch.randn(4, 4)
    >>> conv(x, ea, torch.randn(4, conv.weight_numel), src, dst, 3).shape
    torch.Size([3, 64])
"""

from __future__ import annotations

from typing import Optional

import torch

from . import conv_ops
from .codegen import Problem
from .codegen.cg_spec import forward_spec
from .conv_index import ConvGraph, check_index_tensors, conv_graph
from .conv_kernels import SCATTERS
from .module import BACKENDS, TensorProduct, use_triton
from .reference import reference_tp


class TensorProductConv(torch.nn.Module):
    """Fused graph convolution over a tensor product problem; built by :func:`compile_conv`.

    ``conv(node_feats [n_src, dim1], edge_attrs [E, dim2], edge_weights [E, weight_numel] (or
    [weight_numel] if shared, or None), src [E], dst [E], num_nodes, graph=None)`` returns
    ``[num_nodes, dim_out]``. ``src`` indexes the rows of ``node_feats`` (usually
    ``n_src == num_nodes``), ``dst`` the output rows. ``graph``: a :func:`tritp.conv_graph` of
    these same ``src``/``dst`` (only counts are checked), reused by the deterministic strategy;
    the atomic strategy ignores it.

    Example:
        >>> import torch, tritp
        >>> conv = tritp.compile_conv("4x0e", "0e", "0e", mode="channelwise", scatter="deterministic",
        ...                           backend="reference")
        >>> src, dst = torch.tensor([0, 1, 1]), torch.tensor([1, 0, 1])
        >>> g = tritp.conv_graph(src, dst, 2)  # once per graph
        >>> conv(torch.randn(2, 4), torch.randn(3, 1), torch.randn(3, 4), src, dst, 2, graph=g).shape
        torch.Size([2, 4])
    """

    def __init__(self, problem: Problem, *, scatter: str = "atomic", check_indices: bool = True,
                 internal_weights: bool = False, backend: str = "auto"):
        super().__init__()
        if scatter not in SCATTERS:
            raise ValueError(f"scatter={scatter!r} is not one of {', '.join(map(repr, SCATTERS))}")
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r} is not one of {', '.join(map(repr, BACKENDS))}")
        self.problem = problem
        self.key = problem.key
        self.scatter = scatter
        self.check_indices = bool(check_indices)
        self.backend = backend
        self.irreps_in1, self.irreps_in2, self.irreps_out = problem.irreps_in1, problem.irreps_in2, problem.irreps_out
        self.weight_numel = problem.weight_numel
        self.shared_weights = problem.shared_weights
        self.internal_weights = bool(internal_weights and self.weight_numel > 0)
        if internal_weights and not problem.shared_weights:
            raise ValueError("internal_weights=True needs shared_weights=True (one weight vector for all edges)")
        self._dims = (problem.irreps_in1.dim, problem.irreps_in2.dim, problem.irreps_out.dim)
        self._spec = forward_spec(self.weight_numel > 0).to_str()
        self._unfused_tp = {}  # backend -> TensorProduct, for unfused() only (never in forward)
        if self.internal_weights:
            self.weight = torch.nn.Parameter(torch.randn(self.weight_numel))
        else:
            self.register_buffer("weight", torch.Tensor(), persistent=False)

    def extra_repr(self) -> str:
        return (f"{self.irreps_in1} x {self.irreps_in2} -> {self.irreps_out} | {self.weight_numel} weights | "
                f"scatter={self.scatter} | check_indices={self.check_indices} | backend={self.backend}")

    def _check(self, x, ea, w, src, dst, num_nodes, graph):
        d1, d2, _ = self._dims
        for name, t, d in (("node_feats", x, d1), ("edge_attrs", ea, d2)):
            if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                got = getattr(t, "dtype", type(t).__name__)
                raise TypeError(f"{name}: expected a floating-point tensor, got {got}")
            if t.dim() != 2 or t.shape[1] != d:
                raise ValueError(f"{name}: expected shape [rows, {d}], got {list(t.shape)}")
            if t.dtype != x.dtype or t.device != x.device:
                raise TypeError(f"{name}: dtype/device {t.dtype}/{t.device} differ from node_feats' "
                                f"{x.dtype}/{x.device}")
        check_index_tensors(src, dst, num_nodes)
        E = src.shape[0]
        if ea.shape[0] != E:
            raise ValueError(f"edge_attrs has {ea.shape[0]} rows but src/dst have {E} edges")
        if src.device != x.device:
            raise ValueError(f"src/dst: device {src.device} does not match node_feats' device {x.device}")
        if self.weight_numel == 0:
            w = None
        elif w is None:
            if not self.internal_weights:
                raise ValueError(f"edge_weights: this convolution needs {self.weight_numel} weights per "
                                 f"{'graph' if self.shared_weights else 'edge'}, got None")
            w = self.weight
        else:
            if not isinstance(w, torch.Tensor) or w.dtype != x.dtype or w.device != x.device:
                raise TypeError(f"edge_weights: expected a {x.dtype} tensor on {x.device}, got "
                                f"{getattr(w, 'dtype', type(w).__name__)}")
            want = [self.weight_numel] if self.shared_weights else [E, self.weight_numel]
            if list(w.shape) != want:
                what = "shared weights" if self.shared_weights else f"one row per edge, {E} edges"
                raise ValueError(f"edge_weights: expected shape {want} ({what}), got {list(w.shape)}")
        if graph is not None:
            if not isinstance(graph, ConvGraph):
                raise TypeError(f"graph: expected a ConvGraph from tritp.conv_graph, got {type(graph).__name__}")
            if graph.num_edges != E or graph.num_nodes != num_nodes or graph.num_src_nodes != x.shape[0]:
                raise ValueError(f"graph: built for {graph.num_edges} edges, {graph.num_src_nodes} -> "
                                 f"{graph.num_nodes} nodes; this call has {E} edges, {x.shape[0]} -> {num_nodes}")
        return w

    def _use_triton(self, device) -> bool:
        return use_triton(self.backend, device, "unfused convolution")

    def forward(self, node_feats: torch.Tensor, edge_attrs: torch.Tensor, edge_weights: Optional[torch.Tensor],
                src: torch.Tensor, dst: torch.Tensor, num_nodes: int,
                graph: Optional[ConvGraph] = None) -> torch.Tensor:
        w = self._check(node_feats, edge_attrs, edge_weights, src, dst, num_nodes, graph)
        n_in = node_feats.shape[0]
        if not self._use_triton(node_feats.device):
            if self.check_indices:
                torch.ops.tritp.conv_check_indices(src, dst, n_in, num_nodes)
            return self.unfused(node_feats, edge_attrs, w, src, dst, num_nodes, backend="reference")
        if self.scatter == "deterministic":
            if graph is None:
                graph = conv_graph(src, dst, num_nodes, n_in, check_indices=False)
            gl = graph.tensors()
        else:
            gl = [src, dst]
        token = conv_ops.check_token(src, dst, n_in, num_nodes) if self.check_indices else src
        gl = gl + [token]
        args = [node_feats, edge_attrs] + ([w] if w is not None else [])
        return conv_ops.run(self.key, self._spec, self.scatter, n_in, num_nodes, node_feats.dtype, args, gl)

    def precompile(self, num_nodes: int, num_edges: int, directions=("fwd", "bwd", "dbl"), dtype=torch.float32,
                   index_dtype=torch.int64, device=None) -> int:
        """Compile this convolution's kernels now, all at once in parallel (threads or worker processes), for graphs
        of about ``num_nodes`` nodes and ``num_edges`` edges (the launch configuration depends
        on them; the compiled kernels serve every size) with ``index_dtype`` indices. Nothing of
        graph size is allocated. Returns the number of kernels compiled (0 under the Triton
        interpreter); for eager use, as :meth:`tritp.TensorProduct.precompile`.

        Example:
            >>> conv = tritp.compile_conv("128x0e+128x1o", "0e+1o+2e+3o", "0e+1o+2e")  # doctest: +SKIP
            >>> conv.precompile(num_nodes=5_000, num_edges=150_000)  # doctest: +SKIP
            13
        """
        from .conv_kernels import conv_launch_plan
        from .kernels import precompile
        from .conv_tuning import conv_specs
        from .tuning.tuner import make_inputs

        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        # a two-edge stand-in graph: only its index dtype reaches the compiled kernels
        src = torch.zeros(2, dtype=index_dtype, device=device)
        graph = [src, src] if self.scatter == "atomic" else list(conv_graph(src, src, 2, check_indices=False).tensors())
        plans = [conv_launch_plan(self.problem, cs.spec, self.scatter,
                                  make_inputs(self.problem, cs.spec, 2, dtype, device), graph, num_nodes, num_nodes,
                                  num_edges=num_edges, dry=True)
                 for _, cs in conv_specs(self.problem, self.scatter, tuple(directions))]
        return precompile(plans)

    def autotune(self, num_nodes: int, num_edges: int, directions=("fwd", "bwd", "dbl"), dtype=None, timer=None,
                 strategy: str = "full", index_dtype=torch.int64) -> list:
        """Tune this convolution's kernels on this GPU (or the interpreter) for graphs of about
        ``num_edges`` edges (the cache bucket: edges rounded up to a power of two) and
        ``num_nodes`` nodes, and write the user cache, where every later launch finds them
        (:mod:`tritp.conv_tuning`; timed on a seeded random graph of that size). Arguments as
        :meth:`tritp.TensorProduct.autotune`; one TuneResult per kernel.

        Example:
            >>> conv = tritp.compile_conv("128x0e+128x1o", "0e+1o+2e+3o", "0e+1o+2e")  # doctest: +SKIP
            >>> [r.speedup for r in conv.autotune(1000, 158_000, directions=("fwd",))]  # doctest: +SKIP
            [1.2]
        """
        from .conv_tuning import tune_conv

        return tune_conv(self.problem, self.scatter, num_nodes, num_edges, tuple(directions), dtype=dtype or "float32",
                         timer=timer, strategy=strategy, index_dtype=index_dtype)

    def unfused_tp(self, backend: str = "auto") -> TensorProduct:
        """The :class:`tritp.TensorProduct` :meth:`unfused` runs over the edges (one per backend,
        built on first use), e.g. to ``precompile`` it.

        Example:
            >>> conv = tritp.compile_conv("4x0e", "0e", "0e", mode="channelwise")
            >>> conv.unfused_tp("reference").weight_numel
            4
        """
        tp = self._unfused_tp.get(backend)
        if tp is None:
            tp = self._unfused_tp[backend] = TensorProduct(self.problem, backend=backend)
        return tp

    def unfused(self, node_feats, edge_attrs, edge_weights, src, dst, num_nodes: int, backend: str = "auto"):
        """The same convolution as three steps -- gather, a :class:`tritp.TensorProduct` over the
        edges, ``index_add`` -- the baseline the fused kernel saves the per-edge output of.
        ``backend="reference"`` uses the dense float64-exact reference tensor product.
        """
        x = node_feats.index_select(0, src.long())
        if backend == "reference":
            y = reference_tp(self.problem, x, edge_attrs, edge_weights)
        else:
            y = self.unfused_tp(backend)(x, edge_attrs, edge_weights)
        out = y.new_zeros(num_nodes, self._dims[2])
        return out.index_add(0, dst.long(), y)


def compile_conv(irreps_in1, irreps_in2, irreps_out=None, instructions=None, *, mode=None, scatter: str = "atomic",
                 check_indices: bool = True, shared_weights=None, internal_weights=None, backend: str = "auto",
                 **problem_kw) -> TensorProductConv:
    """Compile a fused graph convolution; problem arguments exactly as :func:`tritp.compile`
    (``irrep_normalization``, ``path_normalization``, ``layout``, ``in1_var``... in
    ``problem_kw``). Typical: ``mode="channelwise"`` (uvu, per-edge weights, as MACE/NequIP).
    ``scatter``: ``"atomic"`` or ``"deterministic"``; ``check_indices``: see the module doc.

    Example:
        >>> conv = compile_conv("16x0e+16x1o", "0e+1o+2e", "0e+1o", mode="channelwise", scatter="deterministic")
        >>> conv.weight_numel, conv.shared_weights, str(conv.irreps_out)
        (80, False, '16x0e+16x0e+16x1o+16x1o+16x1o')
    """
    from .api import compile as compile_tp

    tp = compile_tp(irreps_in1, irreps_in2, irreps_out, instructions, mode=mode, shared_weights=shared_weights,
                    internal_weights=internal_weights, backend="reference", **problem_kw)
    return TensorProductConv(tp.problem, scatter=scatter, check_indices=check_indices,
                             internal_weights=tp.internal_weights, backend=backend)
