"""The Gaunt torch ops, in the style of :mod:`tritp.ops`: one fixed schema for every problem,
implementation and derivative.

``tritp::gaunt(str key, str spec, SymInt Z, ScalarType out_dtype, Tensor[] tensors)`` runs the
Gaunt producer ``spec`` (``"target:role_a,role_b"``) of the problem whose canonical key is
``key`` (:class:`~tritp.codegen.gaunt_problem.GauntProblem`; the key names the implementation)
on ``tensors = [a, b]`` (sparse) or ``[a, b, *tables]`` (grid and fft: the six tensors of
:func:`~tritp.gaunt_kernels.role_tensors`, constants for autograd).
Two registrations share the schema:

* ``tritp::gaunt`` -- a ``custom_op``, opaque to Inductor, works everywhere (the interpreter too);
* ``tritp::gaunt_triton`` -- a ``triton_op`` whose kernels Inductor sees (used on CUDA).

Both have fake implementations and autograd formulas. The product is trilinear in
``(x1, x2, cotangent)``, so the derivative of a producer with respect to either argument is
another producer of the same op (:func:`~tritp.codegen.gaunt_problem.derivative_spec`):
backward, double backward and beyond run generated kernels.

Example:
    >>> import torch
    >>> from tritp.codegen.gaunt_problem import GauntProblem, FORWARD
    >>> p = GauntProblem("4x0e+4x1o", "0e+1o", lmax_out=2)
    >>> args = [torch.randn(3, 16), torch.randn(3, 4)]
    >>> torch.ops.tritp.gaunt(p.key, FORWARD, 3, torch.float32, args).shape  # doctest: +SKIP
    torch.Size([3, 36])
"""

from __future__ import annotations

from functools import lru_cache
from typing import List

import torch
from torch.library import custom_op, triton_op, wrap_triton

from .codegen.gaunt_problem import GauntProblem, derivative_spec, parse_spec
from .gaunt_kernels import gaunt_produce, target_dim
from .op_pair import pick, register, save_inputs, unbroadcast


@lru_cache(maxsize=512)
def problem_from_key(key: str) -> GauntProblem:
    return GauntProblem.from_key(key)


@custom_op("tritp::gaunt", mutates_args=())
def gaunt_op(key: str, spec: str, Z: int, out_dtype: torch.dtype, tensors: List[torch.Tensor]) -> torch.Tensor:
    return gaunt_produce(problem_from_key(key), spec, tensors, Z, out_dtype=out_dtype)


@triton_op("tritp::gaunt_triton", mutates_args=())
def gaunt_triton_op(key: str, spec: str, Z: int, out_dtype: torch.dtype,
                    tensors: List[torch.Tensor]) -> torch.Tensor:
    return gaunt_produce(problem_from_key(key), spec, tensors, Z, out_dtype=out_dtype, wrap=wrap_triton)


def _fake(key, spec, Z, out_dtype, tensors):
    target, _ = parse_spec(spec)
    return tensors[0].new_empty((Z, target_dim(problem_from_key(key), target)), dtype=out_dtype)


def _make_backward(op):
    def backward(ctx, grad):
        a, b, *tabs = ctx.saved_tensors
        needs = ctx.needs_input_grad[4]
        grads = [None] * (2 + len(tabs))  # the tables are constants
        for i, (t, other) in enumerate(((a, b), (b, a))):
            if needs[i]:
                grads[i] = unbroadcast(t, op(ctx.key, derivative_spec(ctx.spec, i), ctx.Z, t.dtype,
                                             [other, grad, *tabs]))
        return None, None, None, None, grads

    return backward


register((gaunt_op, gaunt_triton_op), _fake, save_inputs, _make_backward)


def run(key: str, spec: str, Z: int, out_dtype: torch.dtype, tensors: list) -> torch.Tensor:
    """Dispatch to the op Inductor can see on CUDA, and to the opaque op elsewhere."""
    return pick(gaunt_op, gaunt_triton_op, tensors)(key, spec, Z, out_dtype, tensors)
