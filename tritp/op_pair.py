"""What the three op families (:mod:`tritp.ops`, :mod:`tritp.gaunt_ops`, :mod:`tritp.conv_ops`)
share: each registers one schema twice -- a ``custom_op`` that is opaque to Inductor and runs
everywhere, the Triton interpreter included (where ``triton_op`` tracing fails), and a
``triton_op`` whose kernels Inductor sees on CUDA -- with one fake implementation and one
autograd formula whose derivative is again a call of the same op.

The schemas and the kernels stay in each family's module; this one holds the plumbing:
:func:`register` (fake and autograd for both registrations), :func:`save_inputs` (the
``setup_context`` of the ``(key, spec, Z, out_dtype, tensors)`` schema), :func:`cg_gradients`
(the derivative loop of a CG producer spec), :func:`unbroadcast`, :func:`pick`, and
:func:`graph_inputs` / :func:`engine_needs` (a backward computes only the gradients the running
autograd pass uses).

Example:
    >>> import torch
    >>> unbroadcast(torch.ones(1, 3), torch.ones(4, 3))  # one row broadcast over 4
    tensor([[4., 4., 4.]])
"""

from __future__ import annotations

import sys
from functools import lru_cache
from typing import Callable, Sequence

import torch

from .codegen.cg_spec import ProducerSpec, compact
from .kernel_forms import prune_grads_on


def visible_op(name: str) -> Callable:
    """``torch.library.triton_op(name, mutates_args=())``, without torch's scan of the
    function's source for Triton kernels.

    Since torch 2.10 ``triton_op`` parses the decorated function's source to find the kernels it
    wraps, importing ``torch._inductor`` to do so: 3.7 s on a 2-core CPU, paid by every
    process at ``import`` of our ops, eager users included. Our kernels are generated at run
    time and reach ``wrap_triton`` as arguments, so the scan finds none of them anyway; without
    it the op is the same and a new process builds a module in milliseconds. (Under
    ``torch.compile`` Inductor sees the kernels through ``wrap_triton`` when it traces the op.)

    Example::

        @visible_op("tritp::produce_triton")
        def produce_triton_op(key: str, ...) -> torch.Tensor: ...
    """
    from torch.library import triton_op

    def deco(fn: Callable):
        mod = getattr(torch._library, "triton", None)
        scan = getattr(mod, "get_inner_triton_kernels", None)
        if scan is None:  # a torch without the scan
            return triton_op(name, mutates_args=())(fn)
        mod.get_inner_triton_kernels = lambda _fn: []
        try:
            return triton_op(name, mutates_args=())(fn)
        finally:
            mod.get_inner_triton_kernels = scan
    return deco


def register(ops: Sequence, fake: Callable, setup_context: Callable, make_backward: Callable) -> None:
    """Give every op of ``ops`` the fake implementation ``fake`` and the autograd formula
    ``make_backward(op)``. Each backward calls its own op, so a derivative stays on the
    registration (opaque or Inductor-visible) that the forward ran on.

    Example (what :mod:`tritp.ops` runs at import)::

        register((produce_op, produce_triton_op), _fake, save_inputs, _make_backward)
    """
    for op in ops:
        op.register_fake(fake)
        op.register_autograd(make_backward(op), setup_context=setup_context)


def save_inputs(ctx, inputs, output) -> None:
    """``setup_context`` of the ``(key, spec, Z, out_dtype, tensors)`` schema: keeps the strings
    and the batch on ``ctx`` and saves the tensors.

    Example:
        >>> from types import SimpleNamespace
        >>> ctx = SimpleNamespace(save_for_backward=lambda *ts: setattr(ctx, "saved", ts))
        >>> save_inputs(ctx, ("k", "s", 3, torch.float32, [torch.ones(1)]), None)
        >>> ctx.key, ctx.spec, ctx.Z, len(ctx.saved)
        ('k', 's', 3, 1)
    """
    key, spec, Z, _, tensors = inputs
    ctx.key, ctx.spec, ctx.Z = key, spec, Z
    ctx.save_for_backward(*tensors)


def unbroadcast(t: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``grad`` summed over the batch when ``t`` was one row broadcast over it (a ``[1, dim]``
    operand of a ``[Z, dim]`` product), else ``grad`` itself.

    Example:
        >>> unbroadcast(torch.ones(2, 3), torch.ones(2, 3)).shape
        torch.Size([2, 3])
    """
    if t.dim() == 2 and t.shape[0] == 1 and grad.shape[0] != 1:
        return grad.sum(0, keepdim=True)
    return grad


def graph_inputs(tensors: Sequence) -> list:
    """``tensors`` with every leaf that requires grad replaced by a view of itself.

    A backward asks the autograd engine which of its inputs the running pass will use
    (:func:`engine_needs`); for a leaf (a parameter, a tensor made with
    ``requires_grad=True``) the engine cannot tell inside ``torch.autograd.grad`` and the
    gradient would be computed whether wanted or not -- e.g. the shared-weight gradient, a GEMM
    over the whole batch, during a forces pass that only wants positions. Through a view (no
    copy) the leaf has a node of its own that the engine can answer for. Nothing changes while
    tracing (``torch.compile`` sees the plain tensors) or with grad mode off.

    Example:
        >>> w = torch.ones(3, requires_grad=True)
        >>> [t.is_leaf for t in graph_inputs([w, torch.ones(3)])]
        [False, True]
    """
    if not torch.is_grad_enabled() or torch.compiler.is_compiling() or not prune_grads_on():
        return list(tensors)
    return [t.view_as(t) if t.requires_grad and t.is_leaf else t for t in tensors]


def engine_needs(ctx, needs: Sequence) -> tuple:
    """``needs`` (``ctx.needs_input_grad`` of the first tensor-list argument) narrowed to the
    inputs whose gradient the running backward pass will use.

    ``needs_input_grad`` only says an input requires grad; ``torch.autograd.grad(y, x2)`` or
    ``backward(inputs=...)`` may want fewer (e3nn's primitive ops get this from the engine for
    free). ``ctx.next_functions`` holds one node per tensor argument, in order; an input whose
    node the engine will not execute gets no gradient. Where the engine cannot say (outside a
    backward pass, a leaf inside ``autograd.grad``, compiled autograd, ``TRITP_PRUNE_GRADS=0``)
    the input keeps its gradient.

    Example:
        >>> engine_needs(None, (True, False))  # not inside a backward pass: unchanged
        (True, False)
    """
    needs = tuple(needs)
    if not any(needs) or not prune_grads_on():
        return needs
    ca = sys.modules.get("torch._dynamo.compiled_autograd")  # not imported: not running
    if ca is not None and getattr(ca, "in_compiled_autograd_region", False):
        return needs  # its graph is cached without the pass's inputs in the key (and Dynamo traces this)
    if torch._C._current_graph_task_id() == -1:
        return needs
    nodes = getattr(ctx, "next_functions", ())
    if len(nodes) < len(needs):
        return needs
    return tuple(n and _will_run(node) for n, (node, _) in zip(needs, nodes))


def _will_run(node) -> bool:
    if node is None:
        return False
    try:
        return bool(torch._C._will_engine_execute_node(node))
    except RuntimeError:  # a leaf inside autograd.grad: the engine cannot tell
        return True


def cg_gradients(spec: ProducerSpec, tensors: Sequence, grad: torch.Tensor, needs: Sequence,
                 call: Callable) -> list:
    """The gradient of each of ``tensors`` (a producer ``spec``'s arguments) from the output
    cotangent ``grad``: ``None`` where ``needs`` is false, zeros where the derivative has no
    term (e.g. a weightless problem's weight tangent), else ``call(t, dspec, args)`` -- the
    op run on the derivative spec's text and the arguments it keeps.

    Example:
        >>> from tritp.codegen.cg_spec import forward_spec
        >>> ts = [torch.ones(2, 4), torch.ones(2, 1), torch.ones(2, 4)]
        >>> gs = cg_gradients(forward_spec(), ts, torch.ones(2, 4), (True, False, False),
        ...                   lambda t, dspec, args: print(dspec, len(args)))
        x1|x2,w,out|-.0.1.2.0 3
    """
    args = tuple(tensors) + (grad,)
    grads = []
    for i, t in enumerate(tensors):
        if not needs[i]:
            grads.append(None)
            continue
        dspec, kept = compact(spec.derivative(i))
        if not dspec.terms:
            grads.append(torch.zeros_like(t))
            continue
        grads.append(call(t, dspec.to_str(), [args[k] for k in kept]))
    return grads


def backward_gradients(spec: ProducerSpec, fused, tensors: Sequence, grad: torch.Tensor, needs: Sequence,
                       call: Callable, call_fused: Callable) -> list:
    """:func:`cg_gradients`, except that where ``fused`` (a
    :class:`~tritp.codegen.fused_specs.FusedPlan` of ``spec``'s backward, or None) applies and the
    tensors share one dtype, its parts' gradients come from one ``call_fused(fused_text,
    args)`` (a list, one per part), ``args`` being the spec's tensors and the cotangent in the
    plan's order.

    Example:
        >>> from tritp.codegen.fused_specs import FusedPlan
        >>> from tritp.codegen.cg_spec import FusedSpec, forward_spec
        >>> fwd = forward_spec()
        >>> ts = [torch.ones(2, 4), torch.ones(1, 1), torch.ones(2, 4)]
        >>> plan = FusedPlan(FusedSpec((fwd.derivative(1), fwd.derivative(2))), (0, 1, 2, 3), {"x2": 1, "w": 2})
        >>> gs = backward_gradients(fwd, plan, ts, torch.ones(2, 4), (True,) * 3,
        ...                         lambda t, dspec, args: torch.zeros_like(t),
        ...                         lambda text, args: [torch.ones(2, 1), torch.ones(2, 4)])
        >>> [tuple(g.shape) for g in gs], gs[1].tolist()  # x2 was one row: its gradient summed
        ([(2, 4), (1, 1), (2, 4)], [[2.0]])
    """
    grads = [None] * len(tensors)
    if fused is not None and len({t.dtype for t in tensors}) == 1:
        run_plan(fused, tensors, [*tensors, grad], call_fused, grads)
    rest = cg_gradients(spec, tensors, grad, [n and g is None for n, g in zip(needs, grads)], call)
    return [g if g is not None else r for g, r in zip(grads, rest)]


def fused_gradients(spec, tensors: Sequence, grads: Sequence, needs: Sequence, call: Callable, second=None,
                    call_second: Callable | None = None) -> list:
    """The gradients of a fused spec's arguments (:class:`~tritp.codegen.cg_spec.FusedSpec`)
    from the cotangents ``grads`` of its parts (None: nothing used that part): those of
    ``second`` (a :class:`~tritp.codegen.fused_specs.FusedPlan` for these cotangents, or None)
    from one ``call_second(text, args)`` (a list, one per part) where the tensors share one
    dtype; for every other tensor in ``needs``, one producer summing the derivative terms of
    every part with a cotangent (:meth:`~tritp.codegen.cg_spec.FusedSpec.derivative`;
    :func:`compact` keeps the tensors its terms read), run through ``call(t, dspec, args)``;
    None where no term reaches the tensor.

    Example:
        >>> from tritp.codegen.cg_spec import FusedSpec, forward_spec
        >>> fwd = forward_spec()
        >>> s = FusedSpec((fwd.derivative(0), fwd.derivative(2)))
        >>> ts = [torch.ones(2, 4), torch.ones(2, 1), torch.ones(2, 4), torch.ones(2, 4)]
        >>> gs = fused_gradients(s, ts, [torch.ones(2, 4), None], (True,) * 4,  # no cotangent for w
        ...                      lambda t, dspec, args: print(dspec, len(args)))
        x2|w,out,x1|2.-.0.1.0 3
        w|x2,out,x1|2.0.-.1.0 3
        out|x2,w,x1|2.0.1.-.0 3
    """
    live = [j for j, g in enumerate(grads) if g is not None]
    args = list(tensors) + [grads[j] for j in live]
    out = [None] * len(tensors)
    if second is not None and len({a.dtype for a in args}) == 1:
        run_plan(second, tensors, args, call_second, out)
    for i, t in enumerate(tensors):
        if out[i] is not None or not needs[i]:
            continue
        dspec, kept = compact(spec.derivative(i, live))
        if dspec.terms:
            out[i] = call(t, dspec.to_str(), [args[k] for k in kept])
    return out


def run_plan(plan, tensors: Sequence, args: Sequence, call: Callable, out: list) -> None:
    """Run fused kernel ``plan`` (a :class:`~tritp.codegen.fused_specs.FusedPlan`) through
    ``call(text, args)`` on ``args`` (the producer's tensors, then its cotangents) in the plan's
    order, and put each part's gradient at its tensor's place in ``out`` (summed over the batch
    where that tensor was one broadcast row).

    Example:
        >>> from tritp.codegen.fused_specs import FusedPlan
        >>> from tritp.codegen.cg_spec import FusedSpec, forward_spec
        >>> fwd = forward_spec()
        >>> plan = FusedPlan(FusedSpec((fwd.derivative(1), fwd.derivative(2))), (0, 1, 2, 3), {"x2": 1, "w": 2})
        >>> out = [None] * 3
        >>> run_plan(plan, [torch.ones(2, 4), torch.ones(2, 1), torch.ones(2, 4)], [torch.ones(2, 4)] * 4,
        ...          lambda text, args: [torch.zeros(2, 1), torch.ones(2, 4)], out)
        >>> [None if g is None else tuple(g.shape) for g in out]
        [None, (2, 1), (2, 4)]
    """
    for target, g in zip(plan.spec.targets, call(spec_text(plan.spec), [args[k] for k in plan.order])):
        i = plan.index[target]
        out[i] = unbroadcast(tensors[i], g)


@lru_cache(maxsize=1024)
def spec_text(spec) -> str:
    """``spec.to_str()``, memoized: a fused spec's text is rebuilt from its terms otherwise, on
    every backward."""
    return spec.to_str()


def pick(opaque, visible, tensors: Sequence):
    """The registration to run: the Inductor-visible ``triton_op`` on CUDA, the opaque
    ``custom_op`` elsewhere.

    Example:
        >>> pick("custom_op", "triton_op", [torch.ones(1)])
        'custom_op'
    """
    return visible if tensors[0].device.type == "cuda" else opaque
