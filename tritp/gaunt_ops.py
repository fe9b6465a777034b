"""The Gaunt torch ops, in the style of :mod:`tritp.ops`: one fixed schema for every problem,
implementation and derivative.

``tritp::gaunt(str key, str spec, SymInt Z, ScalarType out_dtype, Tensor[] tensors)`` runs the
Gaunt producer ``spec`` (``"target:role_a,role_b"``) of the problem whose canonical key is
``key`` (:class:`~tritp.codegen.gaunt_problem.GauntProblem`; the key names the implementation)
on ``tensors = [a, b]`` (sparse) or ``[a, b, *tables]`` (grid, fft, separable: the six tensors of
:func:`~tritp.gaunt_kernels.role_tensors`, constants for autograd). A grid/fft/separable launch other
than :func:`~tritp.gaunt_kernels.launch_shape`'s default (a tuned one) rides in the key as a
suffix, ``op_key(problem.key, (BLOCK_R, num_warps, BLOCK_P))`` = ``"<problem key>@64:8:32"``:
the schema stays fixed, the string is a constant to ``torch.compile``, and the backward
producers (built from the same key) launch alike.
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
from torch.library import custom_op, wrap_triton

from .codegen.gaunt_problem import GauntProblem, derivative_spec, parse_spec
from .gaunt_kernels import check_launch, target_dim
from .gaunt_launch import gaunt_produce
from .op_pair import engine_needs, graph_inputs, pick, register, save_inputs, unbroadcast, visible_op


def op_key(problem_key: str, launch=None) -> str:
    """The ops' ``key``: the problem's, with ``"@BLOCK_R:num_warps:BLOCK_P"`` appended when a
    launch is given (``None``: the default launch, the bare problem key).

    Example:
        >>> k = op_key(GauntProblem("4x0e", "0e").key, (64, 8, 32))
        >>> k.endswith("}@64:8:32"), parse_key(k)[1]
        (True, (64, 8, 32))
    """
    if launch is None:
        return problem_key
    impl = GauntProblem.from_key(problem_key).implementation
    return problem_key + "@" + ":".join(map(str, check_launch(launch, impl)))


@lru_cache(maxsize=512)
def parse_key(key: str) -> tuple:
    """``(GauntProblem, launch or None)`` of an op key (:func:`op_key`); GauntError or ValueError
    when malformed."""
    if key.endswith("}"):  # a problem key (JSON) without a launch
        return GauntProblem.from_key(key), None
    head, _, tail = key.rpartition("@")
    problem = GauntProblem.from_key(head)
    try:
        launch = check_launch(tail.split(":"), problem.implementation)
    except ValueError as e:
        raise ValueError(f"Gaunt op key {key[-60:]!r}: bad launch suffix ({e})") from None
    return problem, launch


def problem_from_key(key: str) -> GauntProblem:
    return parse_key(key)[0]


@custom_op("tritp::gaunt", mutates_args=())
def gaunt_op(key: str, spec: str, Z: int, out_dtype: torch.dtype, tensors: List[torch.Tensor]) -> torch.Tensor:
    problem, launch = parse_key(key)
    return gaunt_produce(problem, spec, tensors, Z, out_dtype=out_dtype, launch=launch)


@visible_op("tritp::gaunt_triton")
def gaunt_triton_op(key: str, spec: str, Z: int, out_dtype: torch.dtype,
                    tensors: List[torch.Tensor]) -> torch.Tensor:
    problem, launch = parse_key(key)
    return gaunt_produce(problem, spec, tensors, Z, out_dtype=out_dtype, wrap=wrap_triton, launch=launch)


def _fake(key, spec, Z, out_dtype, tensors):
    target, _ = parse_spec(spec)
    return tensors[0].new_empty((Z, target_dim(problem_from_key(key), target)), dtype=out_dtype)


def gaunt_backward(ctx, grad, needs, run) -> list:
    """The gradients of a Gaunt producer's two operands that the pass uses (of those ``needs``
    marks; the tables are constants), each a producer run by ``run(key, spec, Z, out_dtype,
    tensors)``: the op itself, or :func:`run_spec` on the eager path (:mod:`tritp.eager_ops`)."""
    a, b, *tabs = ctx.saved_tensors
    needs = engine_needs(ctx, needs)
    grads = [None] * (2 + len(tabs))
    for i, (t, other) in enumerate(((a, b), (b, a))):
        if needs[i]:
            grads[i] = unbroadcast(t, run(ctx.key, derivative_spec(ctx.spec, i), ctx.Z, t.dtype, [other, grad, *tabs]))
    return grads


def _make_backward(op):
    def backward(ctx, grad):
        return None, None, None, None, gaunt_backward(ctx, grad, ctx.needs_input_grad[4], op)

    return backward


register((gaunt_op, gaunt_triton_op), _fake, save_inputs, _make_backward)


def run(key: str, spec: str, Z: int, out_dtype: torch.dtype, tensors: list) -> torch.Tensor:
    """A Gaunt producer (a module's forward): see :func:`run_spec`; a leaf that requires grad
    goes in as a view (:func:`~tritp.op_pair.graph_inputs`)."""
    from .eager_ops import no_forward_ad

    no_forward_ad(tensors)
    return run_spec(key, spec, Z, out_dtype, graph_inputs(tensors))


def run_spec(key: str, spec: str, Z: int, out_dtype: torch.dtype, tensors: list) -> torch.Tensor:
    """One Gaunt producer: in plain eager mode through :class:`tritp.eager_ops.GauntProduce` (no
    op dispatch), else through the op Inductor can see on CUDA, and the opaque op elsewhere."""
    from .eager_ops import GauntProduce, eager_ok

    if eager_ok(tensors):
        return GauntProduce.apply(key, spec, Z, out_dtype, *tensors)
    return pick(gaunt_op, gaunt_triton_op, tensors)(key, spec, Z, out_dtype, tensors)
