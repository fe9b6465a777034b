"""Tuning the fused graph-convolution kernels: the ``"conv"`` autotune family.

A conv kernel (:mod:`tritp.conv_kernels`) is the sparse-CG producer with edges for rows, in
one of three write modes (``edge``, ``atomic``, ``segment``; the target role and the scatter
strategy decide). Its knobs are the CG kernel's -- ``block_z`` (edges per program; in
``segment`` mode the chunk of a node's edges one loop step holds), ``block_c``, ``num_warps``,
``num_stages`` -- so its search space is the ``cg`` space of the same producer (the same five
pruning rules, :mod:`tritp.tuning.space`) at the number of edges, under its own family name.

**Key.** Family ``"conv"``; the kernel is named by a :class:`ConvSpec` (producer spec + write
mode); the source identity hashes the CG generator, the conv emitter, the problem key, the spec,
the mode and the dtype, so an edited generator makes old entries stale; the batch bucket is the
number of edges rounded up to a power of two. :func:`tritp.conv_kernels.conv_launch_plan` looks
the entry up on every launch (memoized) and falls back to the heuristic default.

Tuning times real launches on a seeded random graph of the given size: ``num_edges`` edges
spread evenly over the ``num_nodes`` destinations, random sources, sorted by destination (as
a neighbour list comes). Registering the family (on ``import tritp``) compiles nothing.

Example:
    >>> from tritp.codegen import Problem
    >>> from tritp.codegen.cg_spec import forward_spec
    >>> from tritp.tuning.space import space_for
    >>> p = Problem.channelwise("8x0e+8x1o", "0e+1o", "0e+1o", shared_weights=False)
    >>> s = space_for("conv", p, ConvSpec(forward_spec(), "atomic"), "float32", 4096)
    >>> s.family, {c.block_c for c in s.candidates}
    ('conv', {16})
"""

from __future__ import annotations

from typing import NamedTuple

from .codegen.cg_spec import ProducerSpec
from .codegen.diskcache import content_hash
from .tuning.space import SearchSpace, cg_space, register_family

FAMILY = "conv"
#: Version of the conv rules (part of the space hash).
CONV_VERSION = 2  # 2: segment mode walks once per loop group (node accumulators)


class ConvSpec(NamedTuple):
    """One conv kernel: the producer ``spec`` and its write ``mode`` (``edge``, ``atomic`` or
    ``segment``, :func:`tritp.codegen.conv_emit.write_mode`; a fused backward's
    :func:`tritp.codegen.conv_fused.fused_mode`).

    Example:
        >>> from tritp.codegen.cg_spec import forward_spec
        >>> ConvSpec(forward_spec(), "segment").to_str()
        'segment:out|x1,x2,w|0.1.2.-.0'
    """

    spec: ProducerSpec
    mode: str

    @property
    def target(self) -> str:
        return self.spec.target

    @property
    def tag(self) -> str:
        return f"{self.spec.tag} [{self.mode}]"

    def to_str(self) -> str:
        return f"{self.mode}:{self.spec.to_str()}"


def conv_identity(problem, cspec: ConvSpec, dtype: str) -> str:
    """Source identity of a conv kernel for the cache key (``block_c`` aside: it is tuned)."""
    from .conv_kernels import conv_generator_hash
    from .tuning.cache import identity_salt

    return content_hash(conv_generator_hash(), identity_salt(), problem.key, cspec.spec.to_str(), cspec.mode, dtype)


@register_family(FAMILY, identity=conv_identity)
def conv_space(problem, cspec: ConvSpec, dtype: str, batch: int) -> SearchSpace:
    """The ``cg`` space of the producer at ``batch`` edges, as family ``conv`` (segment mode
    keeps node accumulators across its edge walk, which the register rule counts)."""
    from .kernel_forms import conv_tile_form

    walk = cspec.mode == "segment"
    space = cg_space(problem, cspec.spec, dtype, batch, walk=walk, coalesce=conv_tile_form())
    return SearchSpace(FAMILY, space.candidates, CONV_VERSION)


def conv_specs(problem, scatter: str, directions=("fwd", "bwd", "dbl")) -> list:
    """``[(direction, ConvSpec)]`` of the kernels a convolution launches in ``directions``: as
    :func:`tritp.tuning.tuner.direction_specs`, with the fused backward
    (:mod:`tritp.codegen.conv_fused`) and its derivatives where it applies, not the plain
    one: all three gradients and every pair of them, each running where just those gradients
    are asked for (x1's part added atomically, or stored per edge under the deterministic
    scatter; ``TRITP_CONV_X1_ROWS=0`` leaves that one x1's segment kernel and fuses the edge
    pair alone), and the double backward's kernels through each.

    Example:
        >>> from tritp.codegen import Problem
        >>> p = Problem.channelwise("4x0e", "0e", "0e", shared_weights=False)
        >>> [(d, c.mode, c.target) for d, c in conv_specs(p, "deterministic", ("fwd", "bwd"))][:3]
        [('fwd', 'segment', 'out'), ('bwd', 'edge+rows', 'x1+w+x2'), ('bwd', 'edge+rows', 'x1+w')]
        >>> [c.target for d, c in conv_specs(p, "atomic", ("bwd",))]
        ['x1+w+x2', 'x1+w', 'x1+x2', 'w+x2', 'x1', 'x2', 'w']
    """
    from .codegen.fused_specs import fused_backward, fused_second
    from .codegen.cg_spec import compact
    from .codegen.conv_emit import EDGE_ROLES, write_mode
    from .conv_kernels import SCATTERS
    from .codegen.conv_fused import fused_mode
    from .kernel_forms import conv_x1_rows, fused_backward_on, fused_second_on
    from .tuning.tuner import direction_specs

    if scatter not in SCATTERS:
        raise ValueError(f"scatter must be one of {SCATTERS}, got {scatter!r}")
    out = [(d, ConvSpec(s, write_mode(s.target, scatter)))
           for d, s in direction_specs(problem, tuple(directions), fused=False)]
    if not fused_backward_on():
        return out
    # x1 joins any of them (energy-only training: x1+w; frozen weights: x1+x2)
    joins = [{"x1", "w", "x2"}, {"x1", "w"}, {"x1", "x2"}] if scatter == "atomic" or conv_x1_rows() else []
    fused = [f for f in (fused_backward(problem, j) for j in joins + [set(EDGE_ROLES)]) if f is not None]
    if not fused:
        return out
    # the fused kernels (codegen.conv_fused) and their derivatives, each summing its parts'
    # terms: after the forward, and before the double backward's other kernels
    extra = [("bwd", ConvSpec(f, fused_mode(f, scatter))) for f in fused] if "bwd" in directions else []
    # each one's backward in one kernel: for the inputs whose gradients it computes, and for all
    # three (a first layer's w+x2 in the parameters' pass)
    every = {"x1", "w", "x2"} if joins else {"w", "x2"}
    for f in fused if "dbl" in directions and fused_second_on() else ():
        for needs in (set(f.targets), every):
            second = fused_second(problem, f, {f.roles.index(r) for r in needs})
            item = None if second is None else ("dbl", ConvSpec(second.spec, fused_mode(second.spec, scatter)))
            if item is not None and item not in extra:
                extra.append(item)
    for f in fused if "dbl" in directions else ():
        for i in range(len(f.roles)):  # (with a cotangent for every part)
            d = compact(f.derivative(i))[0]
            item = ("dbl", ConvSpec(d, write_mode(d.target, scatter)))
            if item not in extra:
                extra.append(item)
    first = 1 if "fwd" in directions else 0
    return out[:first] + extra + [x for x in out[first:] if x not in extra]


def random_graph(num_nodes: int, num_edges: int, scatter: str, device, index_dtype=None, seed: int = 0) -> list:
    """The graph tensors a conv launch takes (``[src, dst]``, or the deterministic strategy's
    :meth:`~tritp.conv_index.ConvGraph.tensors`): ``num_edges`` edges, destinations spread
    evenly and sorted, random sources; seeded.

    Example:
        >>> [t.shape[0] for t in random_graph(4, 10, "atomic", "cpu")]
        [10, 10]
    """
    import torch

    from .conv_index import conv_graph

    if num_nodes < 1 or num_edges < 1:
        raise ValueError(f"need num_nodes >= 1 and num_edges >= 1, got {num_nodes} and {num_edges}")
    index_dtype = index_dtype or torch.int64
    g = torch.Generator().manual_seed(seed)
    dst = torch.arange(num_edges) * num_nodes // num_edges
    src = torch.randint(0, num_nodes, (num_edges,), generator=g)
    src, dst = src.to(device=device, dtype=index_dtype), dst.to(device=device, dtype=index_dtype)
    if scatter == "atomic":
        return [src, dst]
    return list(conv_graph(src, dst, num_nodes, check_indices=False).tensors())


def conv_inputs(problem, spec: ProducerSpec, num_nodes: int, num_edges: int, dtype, device) -> list:
    """Random tensors for the roles of ``spec``: node roles (``x1``, ``out``) ``num_nodes``
    rows, edge roles ``num_edges`` rows, shared weights one vector; seeded."""
    import torch

    dims = {"x1": problem.irreps_in1.dim, "x2": problem.irreps_in2.dim, "out": problem.irreps_out.dim,
            "w": problem.weight_numel}
    g = torch.Generator().manual_seed(0)
    out = []
    for r in spec.roles:
        shape = (dims[r],) if r == "w" and problem.shared_weights else (
            num_nodes if r in ("x1", "out") else num_edges, dims[r])
        out.append(torch.randn(shape, generator=g, dtype=dtype).to(device))
    return out


class ConvLaunch:
    """One conv kernel launch with a fixed candidate: ``ConvLaunch(...)()`` runs it. Carries
    ``config``, ``problem``, ``spec`` (a :class:`ConvSpec`) and ``batch`` (edges) for timers."""

    def __init__(self, problem, cspec: ConvSpec, scatter: str, tensors, graph, num_nodes: int, config):
        self.problem, self.spec, self.scatter, self.tensors, self.graph = problem, cspec, scatter, tensors, graph
        self.num_nodes, self.batch, self.config = num_nodes, graph[0].shape[0], config

    def __call__(self):
        from .conv_kernels import produce_conv

        return produce_conv(self.problem, self.spec.spec, self.scatter, self.tensors, self.graph, self.num_nodes,
                            self.num_nodes, config=self.config)


def candidates(problem, cspec: ConvSpec, dtype: str, num_nodes: int, num_edges: int, interpreted: bool) -> list:
    """The configurations :func:`tune_conv_kernel` times, the heuristic default first."""
    from .conv_kernels import default_config, target_shape

    rows = target_shape(problem, cspec.target, num_edges, num_nodes, num_nodes)[0] if cspec.mode == "segment" \
        else num_edges
    default = default_config(cspec.mode, num_edges, rows, interpreted, problem, cspec.spec, dtype)
    space = conv_space(problem, cspec, dtype, num_edges).candidates
    return [default] + [c for c in space if c != default]


def tune_conv_kernel(problem, cspec: ConvSpec, scatter: str, num_nodes: int, num_edges: int, *, dtype="float32",
                     device=None, timer=None, direction: str = "", label: str = "", strategy: str = "full",
                     progress=None, store: bool = True, index_dtype=None):
    """Time the candidates of one conv kernel on a random graph of ``num_nodes`` nodes and
    ``num_edges`` edges (:func:`random_graph`); ``store`` writes the user cache under the key
    the launch looks up. Strategies, ``timer`` and ``progress`` as
    :func:`tritp.tuning.tuner.tune`. Returns a :class:`tritp.tuning.tuner.TuneResult`.

    Example:
        >>> from tritp.codegen import Problem
        >>> p = Problem.channelwise("8x0e", "0e", "8x0e", shared_weights=False)
        >>> _, cs = conv_specs(p, "atomic", ("fwd",))[0]
        >>> r = tune_conv_kernel(p, cs, "atomic", 16, 64, timer=lambda t: t.config.num_warps)  # doctest: +SKIP
    """
    from .conv_kernels import conv_launch_plan
    from .kernels import precompile
    from .tuning.cache import gpu_name, make_key
    from .tuning.tuner import DTYPES, make_result, prepare, search

    dtype, device, interpreted, timer = prepare(strategy, dtype, device, timer)
    graph = random_graph(num_nodes, num_edges, scatter, device, index_dtype)
    tensors = conv_inputs(problem, cspec.spec, num_nodes, num_edges, DTYPES[dtype], device)
    cands = candidates(problem, cspec, dtype, num_nodes, num_edges, interpreted)

    def warm(cfgs):  # every candidate's kernels compiled in parallel before the timing
        precompile([conv_launch_plan(problem, cspec.spec, scatter, tensors, graph, num_nodes, num_nodes, config=c,
                                     dry=True) for c in cfgs], ignore_errors=True)
    try:
        found = search(cands, lambda cfg: ConvLaunch(problem, cspec, scatter, tensors, graph, num_nodes, cfg), timer,
                       strategy, progress, warm)
    except RuntimeError as e:
        raise RuntimeError(f"conv {cspec.tag}: {e}") from None
    key = make_key(problem, cspec, dtype, num_edges, gpu_name(device, interpreted), FAMILY)
    label = label or f"conv {problem.irreps_in1} x {problem.irreps_in2} -> {problem.irreps_out}"
    return make_result(key, problem, cspec, num_edges, cands, found, strategy=strategy, direction=direction,
                       label=label, store=store, scatter=scatter, tuned_nodes=num_nodes)


def tune_conv(problem, scatter: str, num_nodes: int, num_edges: int, directions=("fwd", "bwd", "dbl"), **kw) -> list:
    """Tune every kernel a ``scatter`` convolution launches in ``directions`` (keywords as
    :func:`tune_conv_kernel`); one TuneResult per kernel."""
    return [tune_conv_kernel(problem, cs, scatter, num_nodes, num_edges, direction=d, **kw)
            for d, cs in conv_specs(problem, scatter, directions)]
