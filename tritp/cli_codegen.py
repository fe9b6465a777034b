"""``tritp codegen``: print the Triton source tritp generates for a tensor product.

``--direction fwd`` prints the forward producer; ``bwd`` the three producers of the backward
(grad x1, grad x2, grad w; two when the problem has no weights); ``dbl`` the producers the
double backward launches: the derivative of each backward producer with respect to each of
its tensor arguments (nine for a weighted problem). Each source is preceded by a comment
header naming it; sources come from (and fill) the kernel source cache, the same files the
runtime imports.

Example (shell)::

    tritp codegen 8x0e+8x1o 0e+1o 0e+1o --mode channelwise
    tritp codegen --preset mace-medium --direction bwd > mace_medium_bwd.py
    tritp codegen 2x1o 2x1o 2x0e+2x1e --direction dbl --dtype float64

:func:`producer_specs` is the list of kernels per direction, for scripts and tests.
"""

from __future__ import annotations

import argparse

from .cli_show import add_problem_options, problem_from_args
from .codegen import Problem
from .codegen.cg_emit import DEFAULT_BLOCK_C
from .codegen.fused_specs import fused_backward, fused_plan, fused_second
from .codegen.cg_spec import ProducerSpec, compact, forward_spec

DIRECTIONS = ("fwd", "bwd", "dbl")
DTYPES = ("float32", "float64")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Attach ``codegen`` to the ``tritp`` parser (the protocol of :mod:`tritp.cli`)."""
    p = subparsers.add_parser(
        "codegen",
        help="print the generated Triton kernels of a tensor product",
        description="Print the Triton source of the producer kernels of IN1 x IN2 -> OUT "
                    "(or of --preset NAME) for one direction.",
    )
    p.add_argument("irreps", nargs="*", metavar="IRREPS",
                   help="three irreps IN1 IN2 OUT (OUT is a filter for channelwise/full)")
    p.add_argument("--preset", metavar="NAME", help="a named problem (see tritp.presets) instead of irreps")
    add_problem_options(p)
    p.add_argument("--direction", default="fwd", choices=DIRECTIONS,
                   help="fwd: forward; bwd: the gradient producers; dbl: the double-backward producers")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="accumulation dtype (default float32)")
    p.add_argument("--block-c", type=int, default=DEFAULT_BLOCK_C, metavar="N",
                   help=f"channel tile width, a power of two (default {DEFAULT_BLOCK_C})")
    return p


def _role_names(spec: ProducerSpec) -> str:
    return ", ".join(spec.roles)


def _grad_name(role: str) -> str:
    return {"x1": "grad x1", "x2": "grad x2", "w": "grad w", "out": "out"}[role]


def producer_specs(problem: Problem, direction: str) -> list:
    """``[(label, spec)]``: the producer kernels of ``direction`` in launch order.

    Backward specs are the forward's derivatives with respect to each input, compacted to
    the tensors they use, led (where it applies and ``TRITP_FUSED_BWD`` is not 0) by the fused
    backward that computes the gradients of x1, the weights and x2 in one kernel
    (:mod:`tritp.codegen.cg_fused`; the separate kernels run when one gradient is asked for);
    double-backward specs are the fused kernel's own backward in one kernel (x1's, the weights'
    and x2's gradients, :func:`~tritp.codegen.fused_specs.fused_second`) and its derivatives (one
    per tensor, summing its parts' terms), then for each separate backward spec its fused backward where one applies
    (:func:`~tritp.codegen.cg_fused.fused_plan`) and its derivative with respect to each of its
    tensor arguments (what runs when one part alone is differentiated again), as the autograd
    formulas of :mod:`tritp.ops` build them. Raises ValueError for an unknown direction.

    Example:
        >>> p = Problem.channelwise("4x0e+4x1o", "0e+1o", "0e+1o")
        >>> [len(producer_specs(p, d)) for d in ("fwd", "bwd", "dbl")]
        [1, 4, 16]
        >>> producer_specs(p, "bwd")[0][0]
        'backward: fused grad x1+w+x2'
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"--direction {direction!r} is not one of {', '.join(DIRECTIONS)}")
    fwd = forward_spec(problem.weight_numel > 0)
    if direction == "fwd":
        return [("forward: out", fwd)]
    bwd = []
    for i, role in enumerate(fwd.roles):
        spec, _ = compact(fwd.derivative(i))
        if spec.terms:
            bwd.append((f"backward: {_grad_name(role)}", spec))
    from .kernel_forms import fused_backward_on, fused_second_on

    fused = fused_backward(problem, set(fwd.roles)) if fused_backward_on() else None
    if direction == "bwd":
        return ([(f"backward: fused grad {fused.target}", fused)] if fused else []) + bwd
    dbl = []
    second = None
    if fused and fused_second_on():
        second = fused_second(problem, fused, {fused.roles.index(r) for r in fused.targets})
    if second is not None:  # the fused kernel's backward: three gradients in one kernel
        dbl.append((f"double backward: d(fused grad {fused.target})/d {second.spec.target} (fused)", second.spec))
    for i, role in enumerate(fused.roles if fused else ()):  # every part differentiated again
        dbl.append((f"double backward: d(fused grad {fused.target})/d {role}", compact(fused.derivative(i))[0]))
    for label, spec in bwd:
        plan = fused_plan(problem, spec, set(range(len(spec.roles)))) if fused and fused_second_on() else None
        if plan is not None:  # this gradient's own backward in one kernel (x2's: forces)
            dbl.append((f"double backward: d({label.split(': ')[1]})/d {plan.spec.target} (fused)", plan.spec))
        for i, role in enumerate(spec.roles):
            d, _ = compact(spec.derivative(i))
            if d.terms:
                dbl.append((f"double backward: d({label.split(': ')[1]})/d {role}", d))
    return dbl


def resolve_problem(args) -> Problem:
    """The Problem named by ``--preset`` or by the three irreps and ``--mode``; ValueError
    (exit 2 on the command line) when both or neither are given."""
    if args.preset is not None:
        if args.irreps:
            raise ValueError("give either IN1 IN2 OUT or --preset NAME, not both")
        from .presets import preset

        problem, _ = preset(args.preset)
        if args.shared is not None:
            problem = problem.replace(shared_weights=args.shared)
        return problem
    if len(args.irreps) != 3:
        raise ValueError(f"expected three irreps IN1 IN2 OUT (or --preset NAME), got {len(args.irreps)}")
    return problem_from_args(*args.irreps, mode=args.mode, shared=args.shared)


def header(k: int, n: int, label: str, spec: ProducerSpec, path) -> str:
    """The comment block printed above each kernel's source."""
    rule = "# " + "=" * 92
    return "\n".join([
        rule,
        f"# kernel {k}/{n}: {label}",
        f"# target {spec.target}; tensor arguments ({_role_names(spec)}); terms {spec.tag}",
        f"# source cache: {path}",
        rule,
    ])


def run(args) -> int:
    """Execute ``tritp codegen`` (the protocol of :mod:`tritp.cli`)."""
    from .kernels import kernel_source, pieces_of  # imports torch: only when the command runs

    if args.block_c < 1 or args.block_c & (args.block_c - 1):
        raise ValueError(f"--block-c must be a power of two, got {args.block_c}")
    problem = resolve_problem(args)
    specs = producer_specs(problem, args.direction)
    print(f"# tritp codegen --direction {args.direction} --dtype {args.dtype}: {problem!r}")
    print(f"# problem key: {problem.key}")
    for k, (label, spec) in enumerate(specs, 1):
        pieces = pieces_of(problem, spec)  # a big kernel is emitted as pieces (cg_pieces, cg_fused)
        for j, piece in enumerate(pieces, 1):
            path, src = kernel_source(problem, spec, args.dtype, args.block_c, piece)
            print()
            print(header(k, len(specs), label + (f" (piece {j}/{len(pieces)})" if len(pieces) > 1 else ""), spec, path))
            print(src.rstrip("\n"))
    return 0
