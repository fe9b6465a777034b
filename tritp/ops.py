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
from typing import Callable, List, Sequence

import torch
from torch.library import custom_op, wrap_triton

from .codegen import Problem
from .codegen.fused_specs import fused_plan, fused_second
from .codegen.cg_spec import FusedSpec, ProducerSpec, parse_spec
from .kernel_forms import fused_backward_on, fused_second_on
from .kernels import produce, target_dim
from .op_pair import (backward_gradients, engine_needs, fused_gradients, graph_inputs, pick, register, save_inputs,
                      unbroadcast, visible_op)


@lru_cache(maxsize=512)
def problem_from_key(key: str) -> Problem:
    return Problem.from_key(key)


@lru_cache(maxsize=4096)
def spec_from_str(text: str):
    """A :class:`ProducerSpec` (or, for a fused backward, a :class:`FusedSpec`) from its text."""
    return parse_spec(text)


def single_spec(text: str, op: str = "tritp::produce") -> ProducerSpec:
    """The producer spec ``text`` that op ``op`` runs; ValueError for a fused backward's."""
    s = spec_from_str(text)
    if not isinstance(s, ProducerSpec):
        raise ValueError(f"spec {text!r} is a fused backward: run it with {op}_fused, not {op}")
    return s


def fused_spec(text: str, op: str = "tritp::produce") -> FusedSpec:
    """The fused backward spec ``text`` that op ``<op>_fused`` runs; ValueError for another."""
    s = spec_from_str(text)
    if not isinstance(s, FusedSpec):
        raise ValueError(f"{op}_fused runs a fused backward, not spec {text!r}: use {op}")
    return s


def fused_for(key: str, spec: str, needs: tuple):
    """The :class:`~tritp.codegen.fused_specs.FusedPlan` of producer ``spec``'s backward in
    problem ``key`` for the gradients ``needs`` (one flag per tensor), or None
    (:func:`~tritp.codegen.fused_specs.fused_plan`: the forward's backward unless
    ``TRITP_FUSED_BWD=0``, a gradient kernel's inside a double backward unless
    ``TRITP_FUSED_DBL=0``)."""
    on = fused_backward_on() if spec_from_str(spec).target == "out" else fused_second_on()
    return _fused_for(key, spec, needs) if on else None


@lru_cache(maxsize=4096)
def _fused_for(key: str, spec: str, needs: tuple):
    return fused_plan(problem_from_key(key), spec_from_str(spec), {i for i, n in enumerate(needs) if n})


def second_for(key: str, spec: str, needs: tuple, live: tuple):
    """The :class:`~tritp.codegen.fused_specs.FusedPlan` of fused backward ``spec``'s own
    backward in problem ``key`` (gradients ``needs``, one flag per tensor; parts ``live`` with
    a cotangent), or None (:func:`~tritp.codegen.fused_specs.fused_second`; ``TRITP_FUSED_DBL=0``)."""
    return _second_for(key, spec, needs, live) if fused_second_on() else None


@lru_cache(maxsize=4096)
def _second_for(key: str, spec: str, needs: tuple, live: tuple):
    return fused_second(problem_from_key(key), spec_from_str(spec), {i for i, n in enumerate(needs) if n}, live)


@custom_op("tritp::produce", mutates_args=())
def produce_op(key: str, spec: str, Z: int, out_dtype: torch.dtype, tensors: List[torch.Tensor]) -> torch.Tensor:
    return produce(problem_from_key(key), single_spec(spec), tensors, Z, out_dtype=out_dtype)


@visible_op("tritp::produce_triton")
def produce_triton_op(key: str, spec: str, Z: int, out_dtype: torch.dtype,
                      tensors: List[torch.Tensor]) -> torch.Tensor:
    return produce(problem_from_key(key), single_spec(spec), tensors, Z, out_dtype=out_dtype, wrap=wrap_triton)


@custom_op("tritp::produce_fused", mutates_args=())
def produce_fused_op(key: str, spec: str, Z: int, out_dtype: torch.dtype,
                     tensors: List[torch.Tensor]) -> List[torch.Tensor]:
    return produce(problem_from_key(key), fused_spec(spec), tensors, Z, out_dtype=out_dtype)


@visible_op("tritp::produce_fused_triton")
def produce_fused_triton_op(key: str, spec: str, Z: int, out_dtype: torch.dtype,
                            tensors: List[torch.Tensor]) -> List[torch.Tensor]:
    return produce(problem_from_key(key), fused_spec(spec), tensors, Z, out_dtype=out_dtype, wrap=wrap_triton)


#: The fused backward's op beside each single-target op, of the same registration
FUSED = {produce_op: produce_fused_op, produce_triton_op: produce_fused_triton_op}


def _fake(key, spec, Z, out_dtype, tensors):
    p, s = problem_from_key(key), single_spec(spec)
    dim = target_dim(p, s.target)
    shape = (dim,) if s.target == "w" and p.shared_weights else (Z, dim)
    return tensors[0].new_empty(shape, dtype=out_dtype)


def _fused_fake(key, spec, Z, out_dtype, tensors):
    p = problem_from_key(key)
    return [tensors[0].new_empty((Z, target_dim(p, t)), dtype=out_dtype) for t in fused_spec(spec).targets]


def product_backward(ctx, grad, needs: Sequence, single: Callable, fused: Callable) -> list:
    """The gradients of a producer's tensors (``ctx``: its key, spec, batch and saved tensors)
    from the output cotangent: the gradients the pass uses of those ``needs`` marks, the fused
    backward's kernel where one applies. ``single`` and ``fused`` run a derivative spec, with
    ``(key, spec, Z, out_dtype, tensors)`` as the ops take it: the op itself for the registered
    ops, :func:`run_spec` for the eager path (:mod:`tritp.eager_ops`)."""
    def call(t, dspec, args):
        return unbroadcast(t, single(ctx.key, dspec, ctx.Z, t.dtype, args))

    def call_fused(text, args):  # several gradients in one kernel (cg_fused)
        return fused(ctx.key, text, ctx.Z, args[0].dtype, args)

    spec, needs = spec_from_str(ctx.spec), engine_needs(ctx, needs)
    plan = fused_for(ctx.key, ctx.spec, needs)
    return backward_gradients(spec, plan, ctx.saved_tensors, grad, needs, call, call_fused)


def fused_product_backward(ctx, grads, needs: Sequence, single: Callable, fused: Callable) -> list:
    """:func:`product_backward` of a fused backward's kernel, from its parts' cotangents
    (``None``: that part unused): the gradients of x1, the weights and x2 again in one fused
    kernel where one applies (``fused``), the others one producer each (``single``)."""
    def call(t, dspec, args):
        return unbroadcast(t, single(ctx.key, dspec, ctx.Z, t.dtype, args))

    def call_second(text, args):  # the gradients of x1, the weights and x2 in one kernel
        return fused(ctx.key, text, ctx.Z, args[0].dtype, args)

    spec, needs = spec_from_str(ctx.spec), engine_needs(ctx, needs)
    live = tuple(j for j, g in enumerate(grads) if g is not None)
    second = second_for(ctx.key, ctx.spec, needs, live)
    return fused_gradients(spec, ctx.saved_tensors, grads, needs, call, second, call_second)


def _make_backward(op):
    def backward(ctx, grad):
        return None, None, None, None, product_backward(ctx, grad, ctx.needs_input_grad[4], op, FUSED[op])

    return backward


def _save_fused(ctx, inputs, output):
    save_inputs(ctx, inputs, output)
    ctx.set_materialize_grads(False)  # a part nothing downstream used has no cotangent: skip its terms


def _make_fused_backward(op):
    single = {v: k for k, v in FUSED.items()}[op]  # derivatives run on the single-target op

    def backward(ctx, grads):
        return None, None, None, None, fused_product_backward(ctx, grads, ctx.needs_input_grad[4], single, op)

    return backward


register((produce_op, produce_triton_op), _fake, save_inputs, _make_backward)
register((produce_fused_op, produce_fused_triton_op), _fused_fake, _save_fused, _make_fused_backward)


def run(key: str, spec: str, Z: int, out_dtype: torch.dtype, tensors: list) -> torch.Tensor:
    """Run producer ``spec`` of problem ``key`` on ``tensors`` (a module's forward): see
    :func:`run_spec`; a leaf that requires grad goes in as a view (:func:`graph_inputs`)."""
    from .eager_ops import no_forward_ad

    no_forward_ad(tensors)
    return run_spec(key, spec, Z, out_dtype, graph_inputs(tensors))


def run_spec(key: str, spec: str, Z: int, out_dtype: torch.dtype, tensors: list, fused: bool = False):
    """One producer (``fused``: a fused backward's kernel, a list of outputs): in plain eager
    mode through :mod:`tritp.eager_ops` (no op dispatch), else through the op Inductor can see
    on CUDA, and the opaque op elsewhere."""
    from .eager_ops import Produce, ProduceFused, eager_ok

    if eager_ok(tensors):
        fn = ProduceFused if fused else Produce
        out = fn.apply(key, spec, Z, out_dtype, *tensors)
        return list(out) if fused else out
    op = pick(produce_op, produce_triton_op, tensors)
    return (FUSED[op] if fused else op)(key, spec, Z, out_dtype, tensors)
