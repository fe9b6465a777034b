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

import torch

from .kernel_forms import fast_eager_on
from .op_pair import backward_gradients, engine_needs, fused_gradients, unbroadcast

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

        ctx.key, ctx.spec, ctx.Z = key, spec, Z
        ctx.save_for_backward(*tensors)
        return ops.produce(ops.problem_from_key(key), ops.single_spec(spec), list(tensors), Z, out_dtype=out_dtype)

    @staticmethod
    def backward(ctx, grad):
        from .ops import fused_for, run_spec, spec_from_str

        def call(t, dspec, args):
            return unbroadcast(t, run_spec(ctx.key, dspec, ctx.Z, t.dtype, args))

        def call_fused(text, args):
            return run_spec(ctx.key, text, ctx.Z, args[0].dtype, args, fused=True)

        spec, needs = spec_from_str(ctx.spec), engine_needs(ctx, ctx.needs_input_grad[4:])
        fused = fused_for(ctx.key, ctx.spec, needs)
        grads = backward_gradients(spec, fused, ctx.saved_tensors, grad, needs, call, call_fused)
        return (None, None, None, None, *grads)


class ProduceFused(torch.autograd.Function):
    """A fused backward's kernel, as ``tritp::produce_fused``: one output per part."""

    @staticmethod
    def forward(ctx, key: str, spec: str, Z: int, out_dtype: torch.dtype, *tensors):
        from . import ops

        ctx.key, ctx.spec, ctx.Z = key, spec, Z
        ctx.save_for_backward(*tensors)
        ctx.set_materialize_grads(False)  # a part nothing downstream used has no cotangent: skip its terms
        return tuple(ops.produce(ops.problem_from_key(key), ops.fused_spec(spec), list(tensors), Z,
                                 out_dtype=out_dtype))

    @staticmethod
    def backward(ctx, *grads):
        from .ops import run_spec, second_for, spec_from_str

        def call(t, dspec, args):
            return unbroadcast(t, run_spec(ctx.key, dspec, ctx.Z, t.dtype, args))

        def call_second(text, args):
            return run_spec(ctx.key, text, ctx.Z, args[0].dtype, args, fused=True)

        spec, needs = spec_from_str(ctx.spec), engine_needs(ctx, ctx.needs_input_grad[4:])
        live = tuple(j for j, g in enumerate(grads) if g is not None)
        second = second_for(ctx.key, ctx.spec, needs, live)
        out = fused_gradients(spec, ctx.saved_tensors, grads, needs, call, second, call_second)
        return (None, None, None, None, *out)


class ConvProduce(torch.autograd.Function):
    """``conv_produce(key, spec, scatter, n_in, n_out, out_dtype, n_tensors, *tensors, *graph)``:
    one fused-convolution producer, as ``tritp::conv_produce`` (:mod:`tritp.conv_ops`)."""

    @staticmethod
    def forward(ctx, key: str, spec: str, scatter: str, n_in: int, n_out: int, out_dtype: torch.dtype,
                n_tensors: int, *tensors_graph):
        from . import conv_ops

        ctx.args, ctx.n_tensors = (key, spec, scatter, n_in, n_out), n_tensors
        ctx.save_for_backward(*tensors_graph)
        tensors, graph = list(tensors_graph[:n_tensors]), list(tensors_graph[n_tensors:])
        return conv_ops.produce_conv(conv_ops.problem_from_key(key), conv_ops.single_spec(spec, conv_ops.OP), scatter,
                                     tensors, graph[:-1], n_in, n_out, token=graph[-1], out_dtype=out_dtype)

    @staticmethod
    def backward(ctx, grad):
        from .conv_ops import joined
        from .ops import fused_for, spec_from_str

        spec, tensors, graph, call, call_fused = _conv_saved(ctx)
        key, _, scatter, _, _ = ctx.args
        s, needs = spec_from_str(spec), engine_needs(ctx, ctx.needs_input_grad[7:7 + ctx.n_tensors])
        fused = fused_for(key, spec, joined(s.roles, needs, scatter))
        grads = backward_gradients(s, fused, tensors, grad, needs, call, call_fused)
        return (None,) * 7 + (*grads, *[None] * len(graph))


class ConvProduceFused(torch.autograd.Function):
    """A fused convolution backward's kernel, as ``tritp::conv_produce_fused``: one output per part."""

    @staticmethod
    def forward(ctx, key: str, spec: str, scatter: str, n_in: int, n_out: int, out_dtype: torch.dtype,
                n_tensors: int, *tensors_graph):
        from . import conv_ops

        ctx.args, ctx.n_tensors = (key, spec, scatter, n_in, n_out), n_tensors
        ctx.save_for_backward(*tensors_graph)
        ctx.set_materialize_grads(False)  # a part nothing downstream used has no cotangent
        tensors, graph = list(tensors_graph[:n_tensors]), list(tensors_graph[n_tensors:])
        return tuple(conv_ops.produce_conv(conv_ops.problem_from_key(key), conv_ops.fused_spec(spec, conv_ops.OP),
                                           scatter, tensors, graph[:-1], n_in, n_out, token=graph[-1],
                                           out_dtype=out_dtype))

    @staticmethod
    def backward(ctx, *grads):
        from .conv_ops import OP, joined
        from .ops import fused_spec, second_for

        spec, tensors, graph, call, call_second = _conv_saved(ctx)
        key, _, scatter, _, _ = ctx.args
        needs = engine_needs(ctx, ctx.needs_input_grad[7:7 + ctx.n_tensors])
        s = fused_spec(spec, OP)
        live = tuple(j for j, g in enumerate(grads) if g is not None)
        second = second_for(key, spec, joined(s.roles, needs, scatter), live)
        out = fused_gradients(s, tensors, grads, needs, call, second, call_second)
        return (None,) * 7 + (*out, *[None] * len(graph))


def _conv_saved(ctx) -> tuple:
    """``(spec text, tensors, graph, call, call_fused)`` of a convolution backward: the calls run
    a derivative spec (fused: a fused one) with the forward's graph and strategy."""
    from .conv_ops import run_spec

    key, spec, scatter, n_in, n_out = ctx.args
    saved = ctx.saved_tensors
    tensors, graph = saved[:ctx.n_tensors], list(saved[ctx.n_tensors:])

    def call(t, dspec, args):
        return run_spec(key, dspec, scatter, n_in, n_out, t.dtype, args, graph)

    def call_fused(text, args):
        return run_spec(key, text, scatter, n_in, n_out, args[0].dtype, args, graph, fused=True)

    return spec, tensors, graph, call, call_fused


class GauntProduce(torch.autograd.Function):
    """``gaunt(key, spec, Z, out_dtype, *tensors)``: one Gaunt producer, as ``tritp::gaunt``
    (:mod:`tritp.gaunt_ops`; the tensors are x1's and x2's roles, then the constant tables)."""

    @staticmethod
    def forward(ctx, key: str, spec: str, Z: int, out_dtype: torch.dtype, *tensors):
        from . import gaunt_ops

        ctx.key, ctx.spec, ctx.Z = key, spec, Z
        ctx.save_for_backward(*tensors)
        problem, launch = gaunt_ops.parse_key(key)
        return gaunt_ops.gaunt_produce(problem, spec, list(tensors), Z, out_dtype=out_dtype, launch=launch)

    @staticmethod
    def backward(ctx, grad):
        from .codegen.gaunt_problem import derivative_spec
        from .gaunt_ops import run_spec

        a, b, *tabs = ctx.saved_tensors
        needs = engine_needs(ctx, ctx.needs_input_grad[4:])
        grads = [None] * (2 + len(tabs))  # the tables are constants
        for i, (t, other) in enumerate(((a, b), (b, a))):
            if needs[i]:
                grads[i] = unbroadcast(t, run_spec(ctx.key, derivative_spec(ctx.spec, i), ctx.Z, t.dtype,
                                                   [other, grad, *tabs]))
        return (None, None, None, None, *grads)
