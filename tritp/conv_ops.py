"""The torch ops of the fused graph convolution: one fixed schema for every problem, direction
and scatter strategy, the same pattern as :mod:`tritp.ops`.

``tritp::conv_produce(str key, str spec, str scatter, SymInt n_in, SymInt n_out,
ScalarType out_dtype, Tensor[] tensors, Tensor[] graph)`` runs conv producer ``spec`` of the
problem ``key`` (:func:`tritp.conv_kernels.produce_conv`). ``graph`` holds the index tensors:
``[src, dst]`` (atomic) or :meth:`ConvGraph.tensors` (deterministic), followed by a *token*:
the output of ``tritp::conv_check_indices``, or any tensor (e.g. ``src``) when the range check
is off. Registrations:

* ``tritp::conv_produce`` -- ``custom_op``: opaque, runs everywhere incl. the interpreter;
* ``tritp::conv_produce_triton`` -- ``triton_op``: Inductor sees the kernels (CUDA);
* ``tritp::conv_produce_fused`` / ``_fused_triton`` -- the same for the backward's gradients
  in one kernel (:mod:`tritp.codegen.conv_fused`; the deterministic x1 part then summed per
  source node, :mod:`tritp.conv_segsum`): a list, one per part -- x1's, the weights' and x2's,
  those asked for;
* ``tritp::conv_check_indices(src, dst, n_in, n_out) -> Tensor`` -- the range check. It is a
  separate opaque op so that it also runs, on real tensors, inside a ``torch.compile``-d graph
  (a data-dependent check in Python would break the graph). It returns a one-element token
  that the producer passes to its kernel as an (unread) argument: a real data dependency, so
  a compiler can neither drop the check nor launch the kernel before it, even where Inductor
  looks through the ``triton_op``.

Both producer ops have fake implementations and autograd: a derivative is again a
``conv_produce`` of the derived spec with the same graph and strategy, so backward, double
backward and beyond are fused kernels and the deterministic strategy stays deterministic.

Example:
    >>> import torch, tritp
    >>> from tritp.codegen.cg_spec import forward_spec
    >>> p = tritp.Problem.channelwise("4x0e", "0e", "0e", shared_weights=False)
    >>> ts = [torch.randn(2, 4), torch.randn(3, 1), torch.randn(3, 4)]
    >>> g = [torch.tensor([0, 1, 1]), torch.tensor([1, 0, 1])]
    >>> g = g + [g[0]]  # no range check: any tensor is the token
    >>> torch.ops.tritp.conv_produce(p.key, forward_spec().to_str(), "atomic", 2, 2, torch.float32,
    ...                              ts, g).shape  # doctest: +SKIP
    torch.Size([2, 4])
"""

from __future__ import annotations

from typing import Callable, List, Sequence

import torch
from torch.library import custom_op, wrap_triton

from .codegen.conv_emit import EDGE_ROLES
from .conv_index import check_ranges
from .conv_kernels import produce_conv, target_shape
from .kernel_forms import conv_x1_rows
from .op_pair import (backward_gradients, engine_needs, fused_gradients, graph_inputs, pick, register,
                      visible_op)
from .ops import fused_for, fused_spec, problem_from_key, second_for, single_spec, spec_from_str

OP = "tritp::conv_produce"


@custom_op("tritp::conv_check_indices", mutates_args=())
def check_indices_op(src: torch.Tensor, dst: torch.Tensor, n_in: int, n_out: int) -> torch.Tensor:
    check_ranges(src, dst, n_in, n_out)
    return src.new_zeros(1)  # one element: an empty tensor may have no valid pointer to pass


@check_indices_op.register_fake
def _check_fake(src, dst, n_in, n_out):
    return src.new_empty(1)


@custom_op("tritp::conv_produce", mutates_args=())
def conv_produce_op(key: str, spec: str, scatter: str, n_in: int, n_out: int, out_dtype: torch.dtype,
                    tensors: List[torch.Tensor], graph: List[torch.Tensor]) -> torch.Tensor:
    return produce_conv(problem_from_key(key), single_spec(spec, OP), scatter, tensors, graph[:-1], n_in, n_out,
                        token=graph[-1], out_dtype=out_dtype)


@visible_op("tritp::conv_produce_triton")
def conv_produce_triton_op(key: str, spec: str, scatter: str, n_in: int, n_out: int, out_dtype: torch.dtype,
                           tensors: List[torch.Tensor], graph: List[torch.Tensor]) -> torch.Tensor:
    return produce_conv(problem_from_key(key), single_spec(spec, OP), scatter, tensors, graph[:-1], n_in, n_out,
                        token=graph[-1], out_dtype=out_dtype, wrap=wrap_triton)


@custom_op("tritp::conv_produce_fused", mutates_args=())
def conv_produce_fused_op(key: str, spec: str, scatter: str, n_in: int, n_out: int, out_dtype: torch.dtype,
                          tensors: List[torch.Tensor], graph: List[torch.Tensor]) -> List[torch.Tensor]:
    return produce_conv(problem_from_key(key), fused_spec(spec, OP), scatter, tensors, graph[:-1], n_in, n_out,
                        token=graph[-1], out_dtype=out_dtype)


@visible_op("tritp::conv_produce_fused_triton")
def conv_produce_fused_triton_op(key: str, spec: str, scatter: str, n_in: int, n_out: int, out_dtype: torch.dtype,
                                 tensors: List[torch.Tensor], graph: List[torch.Tensor]) -> List[torch.Tensor]:
    return produce_conv(problem_from_key(key), fused_spec(spec, OP), scatter, tensors, graph[:-1], n_in, n_out,
                        token=graph[-1], out_dtype=out_dtype, wrap=wrap_triton)


#: The fused backward's op beside each single-target op, of the same registration
FUSED = {conv_produce_op: conv_produce_fused_op, conv_produce_triton_op: conv_produce_fused_triton_op}


def _fake(key, spec, scatter, n_in, n_out, out_dtype, tensors, graph):
    shape = target_shape(problem_from_key(key), single_spec(spec, OP).target, graph[0].shape[0], n_in, n_out)
    return tensors[0].new_empty(shape, dtype=out_dtype)


def _fused_fake(key, spec, scatter, n_in, n_out, out_dtype, tensors, graph):
    p, E = problem_from_key(key), graph[0].shape[0]
    return [tensors[0].new_empty(target_shape(p, t, E, n_in, n_out), dtype=out_dtype) for t in fused_spec(spec, OP).targets]


def save_conv_inputs(ctx, inputs, output):
    """``setup_context`` of the conv ops' schema: the strings, sizes and tensor counts on ``ctx``,
    the tensors and the graph saved (what :func:`conv_backward` reads)."""
    key, spec, scatter, n_in, n_out, _, tensors, graph = inputs
    ctx.args = (key, spec, scatter, n_in, n_out)
    ctx.n_tensors, ctx.n_graph = len(tensors), len(graph)
    ctx.save_for_backward(*tensors, *graph)


def _calls(ctx, single: Callable, fused: Callable) -> tuple:
    """``(spec text, tensors, call, call_fused)`` of a backward (``ctx``: the forward's
    arguments and saved tensors): ``call(t, dspec, args)`` runs a derivative on ``single``,
    ``call_fused(text, args)`` a fused one on ``fused``, both with the forward's graph and
    strategy and ``(key, spec, scatter, n_in, n_out, out_dtype, tensors, graph)`` as the ops take
    them -- the ops themselves, or :func:`run_spec` on the eager path (:mod:`tritp.eager_ops`)."""
    key, spec, scatter, n_in, n_out = ctx.args
    saved = ctx.saved_tensors
    tensors, graph = saved[:ctx.n_tensors], list(saved[ctx.n_tensors:])

    def call(t, dspec, args):
        return single(key, dspec, scatter, n_in, n_out, t.dtype, args, graph)

    def call_fused(text, args):  # several gradients in one kernel (codegen.conv_fused)
        return fused(key, text, scatter, n_in, n_out, args[0].dtype, args, graph)

    return spec, tensors, call, call_fused


def conv_backward(ctx, grad, needs: Sequence, single: Callable, fused: Callable) -> list:
    """The gradients of a conv producer's tensors that the pass uses (of those ``needs``
    marks), the fused edge kernel's where one applies; ``single`` and ``fused`` as :func:`_calls`."""
    spec, tensors, call, call_fused = _calls(ctx, single, fused)
    key, _, scatter, _, _ = ctx.args
    s, needs = spec_from_str(spec), engine_needs(ctx, needs)
    plan = fused_for(key, spec, joined(s.roles, needs, scatter))
    return backward_gradients(s, plan, tensors, grad, needs, call, call_fused)


def conv_fused_backward(ctx, grads, needs: Sequence, single: Callable, fused: Callable) -> list:
    """:func:`conv_backward` of a fused conv kernel, from its parts' cotangents (``None``: unused)."""
    spec, tensors, call, call_second = _calls(ctx, single, fused)
    key, _, scatter, _, _ = ctx.args
    needs = engine_needs(ctx, needs)
    s = fused_spec(spec, OP)
    live = tuple(j for j, g in enumerate(grads) if g is not None)
    second = second_for(key, spec, joined(s.roles, needs, scatter), live)
    return fused_gradients(s, tensors, grads, needs, call, second, call_second)


def joined(roles: tuple, needs: tuple, scatter: str) -> tuple:
    """``needs`` (one flag per tensor of ``roles``) kept for the gradients a fused conv kernel
    computes: x2's and the weights', and x1's (a node target: atomic adds, or rows per edge
    summed per source afterwards) unless the deterministic strategy keeps its own segment
    kernel (``TRITP_CONV_X1_ROWS=0``)."""
    joins = EDGE_ROLES + (("x1",) if scatter == "atomic" or conv_x1_rows() else ())
    return tuple(n and r in joins for r, n in zip(roles, needs))


def _make_backward(op):
    def backward(ctx, grad):
        grads = conv_backward(ctx, grad, ctx.needs_input_grad[6], op, FUSED[op])
        return None, None, None, None, None, None, grads, [None] * ctx.n_graph

    return backward


def _setup_fused(ctx, inputs, output):
    save_conv_inputs(ctx, inputs, output)
    ctx.set_materialize_grads(False)  # a part nothing downstream used has no cotangent


def _make_fused_backward(op):
    single = {v: k for k, v in FUSED.items()}[op]  # derivatives run on the single-target op

    def backward(ctx, grads):
        out = conv_fused_backward(ctx, grads, ctx.needs_input_grad[6], single, op)
        return None, None, None, None, None, None, out, [None] * ctx.n_graph

    return backward


register((conv_produce_op, conv_produce_triton_op), _fake, save_conv_inputs, _make_backward)
register((conv_produce_fused_op, conv_produce_fused_triton_op), _fused_fake, _setup_fused, _make_fused_backward)


def run(key: str, spec: str, scatter: str, n_in: int, n_out: int, out_dtype: torch.dtype, tensors: list,
        graph: list) -> torch.Tensor:
    """A convolution producer (a module's forward): see :func:`run_spec`; a leaf that requires
    grad goes in as a view (:func:`~tritp.op_pair.graph_inputs`)."""
    from .eager_ops import no_forward_ad

    no_forward_ad(tensors)
    return run_spec(key, spec, scatter, n_in, n_out, out_dtype, graph_inputs(tensors), graph)


def run_spec(key: str, spec: str, scatter: str, n_in: int, n_out: int, out_dtype: torch.dtype, tensors: list,
             graph: list, fused: bool = False):
    """One convolution producer (``fused``: a fused backward's kernel, a list of outputs): in
    plain eager mode through :mod:`tritp.eager_ops` (no op dispatch), else through the op
    Inductor can see on CUDA, and the opaque op elsewhere."""
    from .eager_ops import ConvProduce, ConvProduceFused, eager_ok

    if eager_ok([*tensors, *graph]):
        fn = ConvProduceFused if fused else ConvProduce
        out = fn.apply(key, spec, scatter, n_in, n_out, out_dtype, len(tensors), *tensors, *graph)
        return list(out) if fused else out
    op = pick(conv_produce_op, conv_produce_triton_op, tensors)
    return (FUSED[op] if fused else op)(key, spec, scatter, n_in, n_out, out_dtype, tensors, graph)


def check_token(src: torch.Tensor, dst: torch.Tensor, n_in: int, n_out: int) -> torch.Tensor:
    """The range check (``tritp::conv_check_indices``) and its token; in plain eager mode a
    direct call (no op dispatch)."""
    from .eager_ops import eager_ok

    if eager_ok([src, dst]):
        check_ranges(src, dst, n_in, n_out)
        return src.new_zeros(1)
    return torch.ops.tritp.conv_check_indices(src, dst, n_in, n_out)
