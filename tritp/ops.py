"""The torch ops: one fixed schema for every problem and direction.

``tritp::produce(str key, str spec, SymInt Z, ScalarType out_dtype, Tensor[] tensors)`` runs the
producer ``spec`` (:mod:`tritp.codegen.cg_spec`) of the problem whose canonical key is ``key``.
The problem travels as a string, so a model with many layers registers nothing new. Two
registrations share the schema:

* ``tritp::produce`` -- a ``custom_op``: opaque to Inductor, works everywhere, including the
  Triton interpreter on CPU (where ``triton_op`` tracing fails);
* ``tritp::produce_triton`` -- a ``triton_op`` whose kernels Inductor sees (used for CUDA).

Both have fake implementations and autograd formulas; a derivative is again a ``produce`` of a
derived spec, so backward, double backward and beyond are generated Triton kernels.

Example:
    >>> import torch, tritp
    >>> from tritp.codegen.cg_spec import forward_spec
    >>> p = tritp.Problem.channelwise("4x0e", "0e", "0e")
    >>> args = [torch.randn(3, 4), torch.randn(3, 1), torch.randn(3, 4)]
    >>> torch.ops.tritp.produce(p.key, forward_spec().to_str(), 3, torch.float32, args).shape  # doctest: +SKIP
    torch.Size([3, 4])
"""

from __future__ import annotations

from functools import lru_cache
from typing import List

import torch
from torch.library import custom_op, wrap_triton

from .codegen import Problem
from .codegen.cg_spec import ProducerSpec
from .kernels import produce, target_dim
from .op_pair import cg_gradients, pick, register, save_inputs, unbroadcast, visible_op


@lru_cache(maxsize=512)
def problem_from_key(key: str) -> Problem:
    return Problem.from_key(key)


@lru_cache(maxsize=4096)
def spec_from_str(text: str) -> ProducerSpec:
    return ProducerSpec.from_str(text)


@custom_op("tritp::produce", mutates_args=())
def produce_op(key: str, spec: str, Z: int, out_dtype: torch.dtype, tensors: List[torch.Tensor]) -> torch.Tensor:
    return produce(problem_from_key(key), spec_from_str(spec), tensors, Z, out_dtype=out_dtype)


@visible_op("tritp::produce_triton")
def produce_triton_op(key: str, spec: str, Z: int, out_dtype: torch.dtype,
                      tensors: List[torch.Tensor]) -> torch.Tensor:
    return produce(problem_from_key(key), spec_from_str(spec), tensors, Z, out_dtype=out_dtype, wrap=wrap_triton)


def _fake(key, spec, Z, out_dtype, tensors):
    p, s = problem_from_key(key), spec_from_str(spec)
    dim = target_dim(p, s.target)
    shape = (dim,) if s.target == "w" and p.shared_weights else (Z, dim)
    return tensors[0].new_empty(shape, dtype=out_dtype)


def _make_backward(op):
    def backward(ctx, grad):
        def call(t, dspec, args):
            return unbroadcast(t, op(ctx.key, dspec, ctx.Z, t.dtype, args))

        grads = cg_gradients(spec_from_str(ctx.spec), ctx.saved_tensors, grad, ctx.needs_input_grad[4], call)
        return None, None, None, None, grads

    return backward


register((produce_op, produce_triton_op), _fake, save_inputs, _make_backward)


def run(key: str, spec: str, Z: int, out_dtype: torch.dtype, tensors: list) -> torch.Tensor:
    """Dispatch to the op Inductor can see on CUDA, and to the opaque op elsewhere."""
    return pick(produce_op, produce_triton_op, tensors)(key, spec, Z, out_dtype, tensors)
