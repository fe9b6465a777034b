"""The eager path of the product, convolution and Gaunt ops: plain ``torch.autograd.Function`` s
around the same kernels.

A call through a ``torch.library`` op with an autograd formula costs tens of microseconds of
Python before its kernel launches (schema defaults, pytree flattening of the tensor list, the
dispatcher's redispatch, a Dynamo-disabled frame; about 85 microseconds a call on a 2-core
machine, against 8 for an ``autograd.Function``). A small channelwise product's kernel runs
for about that long on an H200, so in eager mode, where nothing needs the ops' registration,
:func:`tritp.ops.run` goes through :class:`Produce` and :class:`ProduceFused` instead: the same
kernels (:func:`tritp.kernels.produce`), the same gradient formulas
(:mod:`tritp.op_pair`), the same pruning and fusion -- so results are bit-identical -- with
autograd's own bookkeeping only. Their backward calls :func:`tritp.ops.run_spec`, so every
higher derivative takes the same path. :class:`ConvProduce` and :class:`ConvProduceFused` do
the same for the fused graph convolution (:func:`tritp.conv_ops.run_spec`), and
:class:`GauntProduce` for the Gaunt product (:func:`tritp.gaunt_ops.run_spec`).

The registered ops still run whenever something may trace or transform the call
(:func:`eager_ok`): ``torch.compile`` (Dynamo, compiled autograd), ``make_fx`` and
``torch.export`` (dispatch modes, fake tensors), tensor subclasses, ``torch.func`` transforms,
torch-function modes (such as ``with torch.device(...)``). ``TRITP_FAST_EAGER=0`` routes eager
calls through the ops too.

Example:
    >>> import torch
    >>> eager_ok([torch.ones(2)])
    True
    >>> from torch._subclasses.fake_tensor import FakeTensorMode
    >>> with FakeTensorMode():
    ...     eager_ok([torch.ones(2)])
    False
"""

from __future__ import annotations

from functools import partial

import torch

from .kernel_forms import fast_eager_on
from .op_pair import save_inputs

_PLAIN = (torch.Tensor, torch.nn.Parameter)


def eager_ok(tensors) -> bool:
    """Whether a call on ``tensors`` can skip the registered ops: plain tensors, nothing
    tracing or transforming, and ``TRITP_FAST_EAGER`` not ``0``."""
    if torch.compiler.is_compiling():  # first: Dynamo folds it, and cannot trace the calls below
        return False
    if torch._C._len_torch_dispatch_stack() or torch._C._len_torch_function_stack():
        return False
    if torch._C._functorch.peek_interpreter_stack() is not None or torch._C._get_tracing_state() is not None:
        return False  # a torch.func transform, or torch.jit.trace (which records the ops)
    if any(type(t) not in _PLAIN or _legacy_batched(t) for t in tensors):
        return False  # subclasses; is_grads_batched / vectorized jacobians (their batching errors are the ops')
    return fast_eager_on()


_legacy_batched = getattr(torch._C._functorch, "is_legacy_batchedtensor", lambda t: False)


def no_forward_ad(tensors) -> None:
    """Raise where an input carries a forward-mode tangent: tritp has no ``jvp`` formula (the
    registered ops would silently drop the tangent)."""
    from torch.autograd import forward_ad

    if forward_ad._current_level < 0:  # no dual level open: nothing can carry a tangent
        return
    for i, t in enumerate(tensors):
        if forward_ad.unpack_dual(t).tangent is not None:
            raise NotImplementedError(f"tritp: forward-mode AD is not supported (input {i} carries a tangent); "
                                      "use reverse mode (torch.autograd.grad, backward)")


class Produce(torch.autograd.Function):
    """``produce(key, spec, Z, out_dtype, *tensors)``: one producer, as ``tritp::produce``."""

    @staticmethod
    def forward(ctx, key: str, spec: str, Z: int, out_dtype: torch.dtype, *tensors):
        from . import ops  # its produce (tests spy on it)

        save_inputs(ctx, (key, spec, Z, out_dtype, tensors), None)  # as the ops' setup_context
        return ops.produce(ops.problem_from_key(key), ops.single_spec(spec), list(tensors), Z, out_dtype=out_dtype)

    @staticmethod
    def backward(ctx, grad):
        from .ops import product_backward, run_spec

        grads = product_backward(ctx, grad, ctx.needs_input_grad[4:], run_spec, partial(run_spec, fused=True))
        return (None, None, None, None, *grads)


class ProduceFused(torch.autograd.Function):
    """A fused backward's kernel, as ``tritp::produce_fused``: one output per part."""

    @staticmethod
    def forward(ctx, key: str, spec: str, Z: int, out_dtype: torch.dtype, *tensors):
        from . import ops

        save_inputs(ctx, (key, spec, Z, out_dtype, tensors), None)  # as the ops' setup_context
        ctx.set_materialize_grads(False)  # a part nothing downstream used has no cotangent: skip its terms
        return tuple(ops.produce(ops.problem_from_key(key), ops.fused_spec(spec), list(tensors), Z,
                                 out_dtype=out_dtype))

    @staticmethod
    def backward(ctx, *grads):
        from .ops import fused_product_backward, run_spec

        out = fused_product_backward(ctx, grads, ctx.needs_input_grad[4:], run_spec, partial(run_spec, fused=True))
        return (None, None, None, None, *out)


class ConvProduce(torch.autograd.Function):
    """``conv_produce(key, spec, scatter, n_in, n_out, out_dtype, n_tensors, *tensors, *graph)``:
    one fused-convolution producer, as ``tritp::conv_produce`` (:mod:`tritp.conv_ops`)."""

    @staticmethod
    def forward(ctx, key: str, spec: str, scatter: str, n_in: int, n_out: int, out_dtype: torch.dtype,
                n_tensors: int, *tensors_graph):
        from . import conv_ops

        tensors, graph = _conv_setup(ctx, key, spec, scatter, n_in, n_out, n_tensors, tensors_graph)
        return conv_ops.produce_conv(conv_ops.problem_from_key(key), conv_ops.single_spec(spec, conv_ops.OP), scatter,
                                     tensors, graph[:-1], n_in, n_out, token=graph[-1], out_dtype=out_dtype)

    @staticmethod
    def backward(ctx, grad):
        from .conv_ops import conv_backward, run_spec

        grads = conv_backward(ctx, grad, ctx.needs_input_grad[7:7 + ctx.n_tensors], run_spec,
                              partial(run_spec, fused=True))
        return (None,) * 7 + (*grads, *[None] * ctx.n_graph)


class ConvProduceFused(torch.autograd.Function):
    """A fused convolution backward's kernel, as ``tritp::conv_produce_fused``: one output per part."""

    @staticmethod
    def forward(ctx, key: str, spec: str, scatter: str, n_in: int, n_out: int, out_dtype: torch.dtype,
                n_tensors: int, *tensors_graph):
        from . import conv_ops

        tensors, graph = _conv_setup(ctx, key, spec, scatter, n_in, n_out, n_tensors, tensors_graph)
        ctx.set_materialize_grads(False)  # a part nothing downstream used has no cotangent
        return tuple(conv_ops.produce_conv(conv_ops.problem_from_key(key), conv_ops.fused_spec(spec, conv_ops.OP),
                                           scatter, tensors, graph[:-1], n_in, n_out, token=graph[-1],
                                           out_dtype=out_dtype))

    @staticmethod
    def backward(ctx, *grads):
        from .conv_ops import conv_fused_backward, run_spec

        out = conv_fused_backward(ctx, grads, ctx.needs_input_grad[7:7 + ctx.n_tensors], run_spec,
                                  partial(run_spec, fused=True))
        return (None,) * 7 + (*out, *[None] * ctx.n_graph)


def _conv_setup(ctx, key, spec, scatter, n_in, n_out, n_tensors, tensors_graph) -> tuple:
    """Keep on ``ctx`` what :func:`tritp.conv_ops.conv_backward` reads, as the ops' setup does;
    ``(tensors, graph)``."""
    from .conv_ops import save_conv_inputs

    tensors, graph = list(tensors_graph[:n_tensors]), list(tensors_graph[n_tensors:])
    save_conv_inputs(ctx, (key, spec, scatter, n_in, n_out, None, tensors, graph), None)
    return tensors, graph


class GauntProduce(torch.autograd.Function):
    """``gaunt(key, spec, Z, out_dtype, *tensors)``: one Gaunt producer, as ``tritp::gaunt``
    (:mod:`tritp.gaunt_ops`; the tensors are x1's and x2's roles, then the constant tables)."""

    @staticmethod
    def forward(ctx, key: str, spec: str, Z: int, out_dtype: torch.dtype, *tensors):
        from . import gaunt_ops

        save_inputs(ctx, (key, spec, Z, out_dtype, tensors), None)  # as the ops' setup_context
        problem, launch = gaunt_ops.parse_key(key)
        return gaunt_ops.gaunt_produce(problem, spec, list(tensors), Z, out_dtype=out_dtype, launch=launch)

    @staticmethod
    def backward(ctx, grad):
        from .gaunt_ops import gaunt_backward, run_spec

        return (None, None, None, None, *gaunt_backward(ctx, grad, ctx.needs_input_grad[4:], run_spec))
