"""The eager path of the product ops: plain ``torch.autograd.Function`` s around the same kernels.

A call through a ``torch.library`` op with an autograd formula costs tens of microseconds of
Python before its kernel launches (schema defaults, pytree flattening of the tensor list, the
dispatcher's redispatch, a Dynamo-disabled frame; about 85 microseconds a call on a 2-core
machine, against 8 for an ``autograd.Function``). A small channelwise product's kernel runs
for about that long on an H200, so in eager mode, where nothing needs the ops' registration,
:func:`tritp.ops.run` goes through :class:`Produce` and :class:`ProduceFused` instead: the same
kernels (:func:`tritp.kernels.produce`), the same gradient formulas
(:mod:`tritp.op_pair`), the same pruning and fusion -- so results are bit-identical -- with
autograd's own bookkeeping only. Their backward calls :func:`tritp.ops.run_spec`, so every
higher derivative takes the same path.

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
    if torch._C._functorch.peek_interpreter_stack() is not None:
        return False
    return all(type(t) in _PLAIN for t in tensors) and fast_eager_on()


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
