"""Load and launch the fused graph-convolution kernels (:mod:`tritp.codegen.conv_emit`).

A conv source is a pure function of (generator code, problem key, producer spec, dtype, block
size, write mode), so, as for the plain kernels (:mod:`tritp.kernels`), its file is named by
the hash of those and imported from the cache dir by any later process.

Which kernel runs depends on the target role and the scatter strategy:

============  =====================  ===============================================
target        scatter="atomic"       scatter="deterministic"
============  =====================  ===============================================
out (at dst)  atomic: edge blocks    segment: one program per node, edges by dst
x1 (at src)   atomic: edge blocks    segment: one program per node, edges by src
x2, w         edge: plain stores     edge: plain stores (shared w: fixed-order sum)
backward      edge: x1, w, x2 in     edge: x1, w, x2 in one kernel, x1 per edge,
(fused)       one kernel (x1 atomic) then a fixed-order sum per source node
============  =====================  ===============================================

(The fused backwards: :mod:`tritp.codegen.conv_fused`.)

Example:
    >>> import torch, tritp
    >>> from tritp.codegen.cg_spec import forward_spec
    >>> p = tritp.Problem.channelwise("4x0e", "0e", "0e", shared_weights=False)
    >>> src, dst = torch.tensor([0, 1, 1]), torch.tensor([1, 0, 1])
    >>> x, ea, w = torch.randn(2, 4), torch.randn(3, 1), torch.randn(3, 4)
    >>> produce_conv(p, forward_spec(), "atomic", [x, ea, w], [src, dst], 2, 2).shape  # doctest: +SKIP
    torch.Size([2, 4])
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from . import kernels
from .codegen import Problem, conv_emit, conv_fused
from .codegen.cg_fused import fused_pieces
from .codegen.cg_spec import FusedSpec, ProducerSpec
from .codegen.diskcache import atomic_write, cache_dir, content_hash
from .codegen.cg_pieces import plan_pieces
from .codegen.intmath import p2
from .kernels import (LaunchPlan, dot_precision, generator_hash, interpreter_active, launch_dtypes, launch_pieces,
                      load_generated, split_programs, target_dim, triton_cdiv)
from .kernel_forms import conv_block_sums, conv_form, conv_tile_form, share_loads
from .conv_segsum import segment_sum_plan
from .conv_tuning import FAMILY, ConvSpec  # registers the "conv" autotune family
from .tuning import Config, check_config, heuristic, lookup

SCATTERS = ("atomic", "deterministic")
_loaded: dict = {}


@lru_cache(maxsize=None)
def conv_generator_hash() -> str:
    """Hash of the conv generator: the CG generator's files and ``codegen/conv_emit.py``."""
    return content_hash(generator_hash(), Path(conv_emit.__file__).read_bytes(),
                        Path(conv_fused.__file__).read_bytes())


def conv_source_path(problem: Problem, spec: ProducerSpec, dtype: str, block_c: int, mode: str, piece=None) -> Path:
    h = content_hash(conv_generator_hash(), problem.key, repr(spec), dtype, block_c, mode, dot_precision(),
                     *conv_form(), *(() if piece is None else (tuple(piece),)))
    return cache_dir("kernels") / f"conv_{mode.replace('+', '_')}_{spec.target.replace('+', '')}_{h}.py"


def conv_kernel_source(problem: Problem, spec: ProducerSpec, dtype: str, block_c: int, mode: str,
                       piece=None) -> tuple:
    """``(path, source_text)`` of one conv kernel (piece); generated and written only when
    missing (as :func:`tritp.kernels.kernel_source`)."""
    path = conv_source_path(problem, spec, dtype, block_c, mode, piece)
    if path.exists():
        return path, path.read_text()
    if isinstance(spec, FusedSpec):
        src = conv_fused.emit_fused_conv(problem, spec, dtype, block_c, piece, conv_tile_form(), mode,
                                         conv_block_sums())
    else:
        src = conv_emit.emit_conv_producer(problem, spec, dtype, block_c, mode, dot_precision(), piece,
                                           share_loads(), conv_tile_form(), conv_block_sums())
    atomic_write(path, src.encode())
    return path, src


def get_conv_kernel(problem: Problem, spec: ProducerSpec, dtype: str, block_c: int, mode: str, piece=None):
    """The loaded ``tp_producer`` of one conv source (one ``piece`` of it, see
    :mod:`tritp.codegen.cg_pieces`); generated and written on first use."""
    key = (problem.key, spec, dtype, block_c, mode, dot_precision(), *conv_form(), piece)
    k = _loaded.get(key)
    if k is None:
        path = conv_kernel_source(problem, spec, dtype, block_c, mode, piece)[0]
        mod = load_generated(path)
        k = _loaded[key] = mod.tp_producer
        k.tritp_min_block_z = getattr(mod, "MIN_BLOCK_Z", 1)
    return k


def default_config(mode: str, num_edges: int, num_programs_rows: int, interpreted: bool, problem=None, spec=None,
                   dtype: str = "float32") -> Config:
    """The heuristic default where nothing is tuned (:func:`choose_config`): the plain
    heuristic, sized by edges per program (edge/atomic) or by the mean degree (segment:
    ``BLOCK_Z`` is the edge chunk); with ``problem`` and ``spec``, its register-aware lanes and
    warps (the conv kernel holds the plain kernel's tiles, plus node accumulators in segment
    mode)."""
    form = conv_tile_form()  # the registers of the tiles the conv kernels use
    if mode == "segment":  # node accumulators live across the edge walk (ConvEmitter.row_block)
        rows = max(1, -(-num_edges // max(num_programs_rows, 1)))
        return heuristic(rows, interpreted, problem, spec, dtype, walk=True, coalesce=form)
    return heuristic(num_edges, interpreted, problem, spec, dtype, coalesce=form)


def choose_config(problem: Problem, spec: ProducerSpec, mode: str, dtype: str, num_edges, nrows, device,
                  interpreted: bool) -> Config:
    """The launch configuration: the tuned entry of the ``conv`` family for this kernel and
    bucket of ``num_edges`` (user cache, then shipped; :mod:`tritp.conv_tuning`), else
    :func:`default_config`. Memoized: one dict lookup after the first launch."""
    found = lookup(problem, ConvSpec(spec, mode), dtype, num_edges, device, interpreted, family=FAMILY)
    if found is not None:
        return found[0]
    return default_config(mode, num_edges, nrows, interpreted, problem, spec, dtype)


def conv_recipe(problem: Problem, spec, mode: str, dtype: str, num_edges, nrows, device, config=None) -> tuple:
    """``(config, piece kernels, block_z)`` of a conv launch, memoized as
    :func:`tritp.kernels.recipe` is (same store, same environment), per bucket of edges and, in
    segment mode, of the mean degree (what :func:`default_config` sizes by)."""
    from .tuning import rows_hint

    e, r = rows_hint(num_edges), rows_hint(nrows)
    deg = -(-e // max(r, 1)) if mode == "segment" else 0

    def build() -> tuple:
        cfg = choose_config(problem, spec, mode, dtype, num_edges, nrows, device, interpreter_active()) \
            if config is None else check_config(config)
        kerns = [get_conv_kernel(problem, spec, dtype, cfg.block_c, mode, piece) for piece in conv_pieces(problem, spec)]
        block_z = max([cfg.block_z] + [k.tritp_min_block_z for k in kerns])  # tl.dot paths need 16 rows
        return cfg, kerns, block_z

    return kernels.memo_recipe(("conv", problem.key, spec, mode, dtype, p2(e), p2(deg), device, config), build)


def conv_pieces(problem: Problem, spec) -> tuple:
    """The kernels one conv producer launches: :func:`~tritp.codegen.cg_pieces.plan_pieces`
    without partial slabs (nothing here sums them), or a fused backward's
    :func:`~tritp.codegen.cg_fused.fused_pieces`."""
    if isinstance(spec, FusedSpec):
        return fused_pieces(problem, spec)
    return plan_pieces(problem, spec, partial=False)


def target_shape(problem: Problem, target: str, num_edges, n_in, n_out) -> tuple:
    dim = target_dim(problem, target)
    if target == "w" and problem.shared_weights:
        return (dim,)
    return ({"x1": n_in, "out": n_out}.get(target, num_edges), dim)


def produce_conv(problem: Problem, spec: ProducerSpec, scatter: str, tensors, graph, n_in: int, n_out: int, *,
                 token=None, out_dtype=None, config=None, wrap=None) -> torch.Tensor:
    """Run conv producer ``spec``: node-role tensors (``x1``, ``out``) are ``[n_in or n_out,
    dim]``, edge-role tensors ``[E, dim]`` (shared weights ``[numel]``). ``graph`` is
    ``[src, dst]`` (atomic) or :meth:`ConvGraph.tensors` (deterministic). Indices are trusted:
    validate them first (:func:`tritp.conv_index.check_ranges`). ``token`` (default ``src``) is
    passed to the kernel unread, so that a compiler keeps whatever produced it before the launch.

    Returns the target: ``[n_in or n_out, dim]`` for node roles, ``[E, dim]`` for edge roles,
    ``[numel]`` for shared weights.
    """
    plan = conv_launch_plan(problem, spec, scatter, tensors, graph, n_in, n_out, token=token, out_dtype=out_dtype,
                            config=config)
    if not plan.kernels:
        return plan.g
    launch_pieces(plan.kernels, plan.grid, plan.args, plan.options, wrap)
    if isinstance(plan.g, list):  # a fused backward's gradients, one per part
        parts = list(plan.g)
        if plan.then is not None:  # x1's per-edge rows, summed per source node (conv_segsum)
            launch_pieces(plan.then.kernels, plan.then.grid, plan.then.args, plan.then.options, wrap)
            parts[spec.targets.index("x1")] = plan.then.g  # (already in the output dtype)
        return [g.to(plan.out_dtype) for g in parts]
    if plan.shared_w:
        return plan.g.sum(0).to(plan.out_dtype)
    return plan.g.to(plan.out_dtype)


def conv_launch_plan(problem: Problem, spec: ProducerSpec, scatter: str, tensors, graph, n_in: int, n_out: int, *,
                     token=None, out_dtype=None, config=None, num_edges=None, dry: bool = False) -> LaunchPlan:
    """Everything :func:`produce_conv` launches, without launching. ``dry`` (for
    :func:`tritp.kernels.precompile`): ``tensors`` and ``graph`` may be tiny while ``num_edges``,
    ``n_in`` and ``n_out`` are the real sizes (configuration and int64 addressing follow them),
    and no output buffer is allocated."""
    if scatter not in SCATTERS:
        raise ValueError(f"scatter must be one of {SCATTERS}, got {scatter!r}")
    acc, dtype_name, out_dtype = launch_dtypes(tensors, out_dtype)
    fused = isinstance(spec, FusedSpec)  # the gradients in one edge kernel (conv_fused)
    mode = conv_fused.fused_mode(spec, scatter) if fused else conv_emit.write_mode(spec.target, scatter)
    device = tensors[0].device
    E = graph[0].shape[0] if num_edges is None else num_edges
    shape = target_shape(problem, spec.target, E, n_in, n_out)
    nrows = shape[0] if mode == "segment" else E
    if E == 0 or shape[-1] == 0 or nrows == 0:
        zeros = ([torch.zeros(target_shape(problem, t, E, n_in, n_out), dtype=out_dtype, device=device)
                  for t in spec.targets] if fused
                 else torch.zeros(shape, dtype=out_dtype, device=device))
        return LaunchPlan([], (0,), (), {}, zeros, False, out_dtype, device)
    strides, args, rows = [], [], []
    for role, t in zip(spec.roles, tensors):
        if t.stride(-1) != 1:  # rows may be strided, channels must be contiguous
            t = t.contiguous()
        strides.append(0 if t.dim() == 1 or t.shape[0] == 1 else t.stride(0))
        rows.append({"x1": n_in, "out": n_out}.get(role, E))
        args.append(t)
    config, kerns, block_z = conv_recipe(problem, spec, mode, dtype_name, E, nrows, device, config)
    nprog = nrows if mode == "segment" else triton_cdiv(E, block_z)
    shared_w = len(shape) == 1
    if shared_w:  # shared-weight gradient: rows split over a fixed grid (see split_programs)
        nprog = split_programs(nprog, device)
    g_shape = (nprog, shape[0]) if shared_w else shape  # per-program partials / the target
    g_dtype = acc if mode == "atomic" or shared_w else out_dtype  # atomics add at full precision
    if dry or fused:  # (a fused backward's are allocated below)
        g = torch.empty((0,), dtype=g_dtype, device=device)
    elif mode == "atomic":
        g = torch.zeros(g_shape, dtype=g_dtype, device=device)
    else:
        g = torch.empty(g_shape, dtype=g_dtype, device=device)
    sg = shape[-1]
    targets = (g, sg)
    then, outs = None, [g_shape[0] * g_shape[-1]]
    if fused:  # one [E, width] gradient per part (x1 under atomics: [n_in, width])
        nodes = {"x1": n_in} if mode == "edge+atomic" else {}
        keep = ("x1",) if mode == "edge+rows" else ()
        outs = [nodes.get(t, E) * d for t, d in zip(spec.targets, kernels.part_widths(problem, spec))]
        g, targets = kernels.fused_outputs(problem, spec, E, len(kerns), acc, out_dtype, device, dry, nodes, keep)
        if mode == "edge+rows":
            then = segment_sum_plan(g[spec.targets.index("x1")], graph, n_in, out_dtype, dry=dry, num_edges=E,
                                    width=target_dim(problem, "x1"))
    if mode == "segment":
        off = 2 if spec.target == "out" else 5
        gargs = graph[off:off + 3]
    else:
        gargs = graph[:2]
    # the kernels index `src + z`: a strided index tensor (a column of an [E, 2] edge list) is copied
    gargs = [t if t.is_contiguous() else t.contiguous() for t in gargs]
    # element offsets reach (rows - 1) * row stride + dim: strided rows can pass 2**31 with few elements
    reach = [t.numel() if st == 0 else (r - 1) * st + t.shape[-1] for t, st, r in zip(args, strides, rows)]
    big = max(outs + reach) >= kernels.INT32_LIMIT
    tok = graph[0] if token is None else token
    options = dict(IDX64=big, BLOCK_Z=block_z, NW=config.num_warps, num_warps=config.num_warps,
                   num_stages=config.num_stages)
    return LaunchPlan(kerns, (nprog,), (*args, *strides, *targets, *gargs, tok, nrows), options, g, shared_w,
                      out_dtype, device, then=then)
