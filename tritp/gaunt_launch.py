"""One Gaunt producer launch: plan it (:func:`gaunt_plan`), run it (:func:`gaunt_produce`), or
compile a product's kernels ahead of time in parallel (:func:`precompile_gaunt`).

A plan is a :class:`tritp.kernels.LaunchPlan`: the kernel, grid, arguments and options of one
grid, fft or separable producer (sparse runs the CG kernels, planned by
:func:`tritp.kernels.launch_plan`). Its ``dry`` form allocates nothing and takes operands of
any row count: the configuration, integer arguments and int64 addressing follow the real batch,
which is all Triton specializes on, so :func:`tritp.kernels.precompile` compiles exactly the
kernels the real launches will look up.

Example:
    >>> import torch
    >>> from tritp.codegen.gaunt_problem import GauntProblem, FORWARD
    >>> p = GauntProblem("4x0e+4x1o", "0e+1o", lmax_out=2, implementation="separable")
    >>> gaunt_produce(p, FORWARD, [torch.randn(3, 16), torch.randn(3, 4)], 3).shape  # doctest: +SKIP
    torch.Size([3, 36])
"""

from __future__ import annotations

import torch

from . import gaunt_kernels as gk
from . import kernels
from .codegen.gaunt_emit import channel_block, channel_tiles, reduces_channels
from .codegen.gaunt_problem import FORWARD, ROLES, GauntProblem, derivative_spec, parse_spec
from .kernels import LaunchPlan, launch_dtypes, launch_plan, produce, triton_cdiv


def gaunt_plan(problem: GauntProblem, spec: str, tensors, Z: int, *, out_dtype=None, launch=None,
               dry: bool = False) -> tuple:
    """``(plan, partial)`` of producer ``spec`` (grid, fft or separable) on ``tensors`` (see
    :func:`gaunt_produce`): ``partial`` when the kernel writes one row per (sample, channel)
    that the caller sums. ``dry``: ``tensors`` may have any number of rows, ``Z`` is the real
    batch, and no output is allocated (for :func:`tritp.kernels.precompile`)."""
    target, roles = parse_spec(spec)
    a, b = tensors[0], tensors[1]
    acc, dtype_name, out_dtype = launch_dtypes([a, b], out_dtype)
    device = a.device
    dim = gk.target_dim(problem, target)
    args, strides = [], []
    for x in (a, b):
        if x.stride(-1) != 1:
            x = x.contiguous()
        strides.append(x.stride(0) if x.shape[0] != 1 else 0)
        args.append(x)
    C = problem.channels
    R = Z * C
    if problem.implementation == "separable":
        from .gaunt_separable import resolve_launch

        block_r, warps, third = resolve_launch(problem, spec, dtype_name, R, launch)
    elif launch is None:
        block_r, warps, third = gk.launch_shape(problem, R, target, dtype_name, spec)
    else:  # an explicit launch (tuned entries, benchmarks/gaunt_ptxas.py)
        block_r, warps, third = gk.check_launch(launch, problem.implementation)
        if reduces_channels(problem, target):
            block_r = channel_block(C, block_r)
    rows = block_r  # rows one program covers
    # A broadcast target (one channel, shared by the C channels of the other operand) is the sum
    # over the channels. The kernel sums them itself when its power-of-two row tiles hold whole
    # samples or split them evenly (reduces_channels: C a power of two or a multiple of 16); one
    # program then covers block_r * TILES rows and writes [Z, dim] directly. Any other C (3, 24,
    # 40, ...) would need each sample's channels padded to a power of two (up to twice the GEMM
    # work) or samples split between programs (atomics: not deterministic), so there the kernel
    # writes one partial row per (sample, channel), [Z * C, dim] in the compute dtype, and the
    # caller sums them: correct and deterministic, only the extra traffic is paid.
    partial = problem.mul(target) == 1 and C > 1
    if reduces_channels(problem, target):
        partial, rows = False, block_r * channel_tiles(C, block_r)
    shape = (0,) if dry else (R if partial else Z, dim)  # dry: only the dtype matters
    g = torch.empty(shape, dtype=acc if partial else out_dtype, device=device)
    numel = [Z * s for s in strides] if dry else [x.numel() for x in args]
    big = max([R * dim, Z * max(strides)] + numel) >= kernels.INT32_LIMIT  # read at the call: tests lower it
    tabs = list(tensors[2:]) or gk.role_tensors(problem, acc, device)
    pick = [ROLES.index(r) for r in roles + (target,)]
    tables = [tabs[i] if tabs[i].dtype == acc else tabs[i].to(acc) for i in pick]
    if problem.implementation == "separable":  # per-node tables, no index tables
        from . import gaunt_separable

        kernel = gaunt_separable.get_separable_kernel(problem, spec, dtype_name, third)
    else:
        tables += [tabs[3 + i] for i in pick]
        kernel = gk.get_gemm_kernel(problem, spec, dtype_name, third)
    plan = LaunchPlan([kernel], (triton_cdiv(R, rows),), (args[0], args[1], g, *tables, strides[0], strides[1], dim, R),
                      dict(IDX64=big, BLOCK_R=block_r, num_warps=warps), g, False, out_dtype, device)
    return plan, partial


def gaunt_produce(problem: GauntProblem, spec: str, tensors, Z: int, *, out_dtype=None, wrap=None,
                  launch=None) -> torch.Tensor:
    """Run producer ``spec`` on ``tensors = [a, b]`` or ``[a, b, *role_tensors]`` (``[Z or 1,
    dim]`` operands; a one-row operand is broadcast over the batch); returns ``[Z, dim_target]``.
    Grid, fft and separable need the tables: built here when not given (eager use only: the
    module passes its buffers, so nothing is created while torch traces the op). ``wrap`` is
    ``wrap_triton``. ``launch``: ``(BLOCK_R, num_warps, BLOCK_P)`` (separable: ``passes`` for
    ``BLOCK_P``) instead of :func:`~tritp.gaunt_kernels.launch_shape`'s (a channel-summing
    producer still takes ``channel_block(C, BLOCK_R)`` rows)."""
    target, _ = parse_spec(spec)
    a, b = tensors[0], tensors[1]
    _, _, out_dtype = launch_dtypes([a, b], out_dtype)
    dim = gk.target_dim(problem, target)
    if Z == 0 or not problem.paths:
        return torch.zeros((Z, dim), dtype=out_dtype, device=a.device)
    if problem.implementation == "sparse":
        return produce(problem.cg_problem(), gk.cg_spec(spec), [a, b], Z, out_dtype=out_dtype, wrap=wrap)
    plan, partial = gaunt_plan(problem, spec, tensors, Z, out_dtype=out_dtype, launch=launch)
    kernel = plan.kernels[0] if wrap is None else wrap(plan.kernels[0])
    kernel[plan.grid](*plan.args, **plan.options)
    if partial:
        return plan.g.view(Z, problem.channels, dim).sum(1).to(out_dtype)
    return plan.g


def producer_specs(directions) -> list:
    """The producers a pass in ``directions`` (``fwd``, ``bwd``, ``dbl``) runs: the forward, its
    two input gradients, and their derivatives in turn (the product is trilinear: every
    derivative is again a producer, with its operands in some order)."""
    specs, frontier = [FORWARD], [FORWARD]
    for d in ("bwd", "dbl"):
        if d not in directions:
            break
        frontier = [derivative_spec(s, i) for s in frontier for i in (0, 1)]
        specs += [s for s in frontier if s not in specs]
    return specs


def gaunt_plans(problem: GauntProblem, batch: int, directions=("fwd", "bwd"), dtype=torch.float32, device=None,
                launch=None) -> list:
    """Dry :class:`~tritp.kernels.LaunchPlan` s of ``problem``'s producers for ``directions``
    at ``batch`` samples (``launch`` as the module runs it, :attr:`tritp.gaunt.GauntProduct.launches`),
    for :func:`tritp.kernels.precompile`; nothing of batch size is allocated."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    tables = [] if problem.implementation == "sparse" else gk.role_tensors(problem, acc, device)
    plans = []
    for spec in producer_specs(directions):
        _, roles = parse_spec(spec)
        ops = [torch.empty(2, problem.irreps(r).dim, dtype=dtype, device=device) for r in roles]
        if problem.implementation == "sparse":
            plans.append(launch_plan(problem.cg_problem(), gk.cg_spec(spec), ops, batch, dry=True))
        elif problem.paths:
            plans.append(gaunt_plan(problem, spec, ops + tables, batch, launch=launch, dry=True)[0])
    return plans


def precompile_gaunt(problem: GauntProblem, batch: int, directions=("fwd", "bwd"), dtype=torch.float32, device=None,
                     launch=None) -> int:
    """Compile :func:`gaunt_plans`' kernels now, all at once in parallel (threads or worker
    processes, :func:`tritp.kernels.precompile`); returns how many were compiled (0 under the
    interpreter, which compiles nothing)."""
    from .kernels import precompile

    return precompile(gaunt_plans(problem, batch, directions, dtype, device, launch))


__all__ = ["gaunt_plan", "gaunt_plans", "gaunt_produce", "precompile_gaunt", "producer_specs"]
