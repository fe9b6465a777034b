"""Differentiable producers: forward, backward and every higher derivative run as generated
Triton kernels.

``Produce.apply(key, spec, Z, *tensors)`` runs producer ``spec`` (see
:mod:`tritp.codegen.cg_spec`); its backward is again a producer of the same problem, applied
through ``Produce`` itself, so double backward (forces) and beyond need no special code.

Example:
    >>> import torch, tritp
    >>> from tritp.codegen.cg_spec import forward_spec
    >>> p = tritp.Problem.channelwise("4x0e+4x1o", "0e+1o", "0e+1o")
    >>> x1 = torch.randn(3, 16, requires_grad=True)
    >>> y = Produce.apply(p.key, forward_spec(), 3, x1, torch.randn(3, 4), torch.randn(3, 32))  # doctest: +SKIP
"""

from __future__ import annotations

from functools import lru_cache

import torch

from .codegen import Problem
from .codegen.cg_spec import ProducerSpec, compact
from .kernels import produce


@lru_cache(maxsize=256)
def problem_from_key(key: str) -> Problem:
    return Problem.from_key(key)


class Produce(torch.autograd.Function):
    """Autograd wrapper of one producer launch (see module docstring)."""

    @staticmethod
    def forward(ctx, key: str, spec: ProducerSpec, Z: int, out_dtype, *tensors):
        ctx.key, ctx.spec, ctx.Z, ctx.out_dtype = key, spec, Z, out_dtype
        ctx.save_for_backward(*tensors)
        return produce(problem_from_key(key), spec, tensors, Z, out_dtype=out_dtype)

    @staticmethod
    def backward(ctx, grad):
        tensors = ctx.saved_tensors
        args = tensors + (grad,)
        grads = [None] * len(tensors)
        for i, t in enumerate(tensors):
            if not ctx.needs_input_grad[4 + i]:
                continue
            dspec, kept = compact(ctx.spec.derivative(i))
            if not dspec.terms:
                grads[i] = torch.zeros_like(t)
                continue
            r = Produce.apply(ctx.key, dspec, ctx.Z, t.dtype, *[args[k] for k in kept])
            if t.dim() == 2 and t.shape[0] == 1 and r.shape[0] != 1:  # a broadcast row
                r = r.sum(0, keepdim=True)
            grads[i] = r
        return (None, None, None, None, *grads)
