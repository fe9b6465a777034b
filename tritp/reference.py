"""Dense PyTorch implementation of any :class:`~tritp.codegen.Problem`: the test oracle and
the CPU fallback.

Plain einsums over dense coupling tensors, differentiable to any order by autograd. Half and
bfloat16 inputs are computed in float32 and rounded once at the end.

Example:
    >>> import torch
    >>> from tritp.codegen import Problem
    >>> from tritp.reference import reference_tp
    >>> p = Problem.channelwise("4x0e+4x1o", "0e+1o", "0e+1o")
    >>> x1, x2 = torch.randn(10, 16), torch.randn(10, 4)
    >>> reference_tp(p, x1, x2, torch.randn(10, p.weight_numel)).shape
    torch.Size([10, 32])
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from .codegen import Problem
from .codegen.coupling import dense_coupling

_UPCAST = {torch.float16: torch.float32, torch.bfloat16: torch.float32}


@lru_cache(maxsize=None)
def _w3j_cpu64(l1: int, l2: int, l3: int) -> torch.Tensor:
    return torch.from_numpy(dense_coupling(l1, l2, l3))


def _w3j(l1, l2, l3, dtype, device) -> torch.Tensor:
    return _w3j_cpu64(l1, l2, l3).to(dtype=dtype, device=device)


def to_mul_ir(x: torch.Tensor, irreps) -> torch.Tensor:
    """Convert the last axis of ``x`` from ``ir_mul`` to ``mul_ir`` layout (per segment)."""
    parts = [
        x[..., s].reshape(*x.shape[:-1], ir.dim, mul).transpose(-1, -2).reshape(*x.shape[:-1], mul * ir.dim)
        for s, (mul, ir) in zip(irreps.slices(), irreps)
    ]
    return torch.cat(parts, dim=-1) if parts else x


def to_ir_mul(x: torch.Tensor, irreps) -> torch.Tensor:
    """Convert the last axis of ``x`` from ``mul_ir`` to ``ir_mul`` layout (per segment)."""
    parts = [
        x[..., s].reshape(*x.shape[:-1], mul, ir.dim).transpose(-1, -2).reshape(*x.shape[:-1], mul * ir.dim)
        for s, (mul, ir) in zip(irreps.slices(), irreps)
    ]
    return torch.cat(parts, dim=-1) if parts else x


def batch_shape(problem: Problem, x1: torch.Tensor, x2: torch.Tensor, weight) -> torch.Size:
    """Leading shape of the output, broadcast as e3nn broadcasts it."""
    shapes = [x1.shape[:-1], x2.shape[:-1]]
    if not problem.shared_weights and weight is not None and problem.weight_numel > 0:
        shapes.append(weight.shape[:-1])
    return torch.broadcast_shapes(*shapes)


def reference_tp(problem: Problem, x1: torch.Tensor, x2: torch.Tensor, weight=None) -> torch.Tensor:
    """The tensor product of ``problem`` on ``x1 [..., dim1]``, ``x2 [..., dim2]`` with e3nn's
    flat ``weight`` (``[weight_numel]`` if shared, ``[..., weight_numel]`` otherwise)."""
    p = problem
    if p.weight_numel > 0 and weight is None:
        raise ValueError(f"weight: this problem needs {p.weight_numel} weights, got None")
    out_dtype = torch.promote_types(x1.dtype, x2.dtype)
    dtype = _UPCAST.get(out_dtype, out_dtype)
    bshape = batch_shape(p, x1, x2, weight)
    z = math.prod(bshape)
    # explicit sizes: reshape(-1, 0) and reshape(0, -1) are ambiguous for empty tensors
    x1 = x1.to(dtype).expand(*bshape, -1).reshape(z, x1.shape[-1])
    x2 = x2.to(dtype).expand(*bshape, -1).reshape(z, x2.shape[-1])
    if p.layout == "ir_mul":
        x1, x2 = to_mul_ir(x1, p.irreps_in1), to_mul_ir(x2, p.irreps_in2)
    if weight is not None and p.weight_numel > 0:
        weight = weight.to(dtype)
        if not p.shared_weights:
            weight = weight.expand(*bshape, -1).reshape(z, weight.shape[-1])
    seg1 = [x1[:, s].reshape(z, m, ir.dim) for s, (m, ir) in zip(p.irreps_in1.slices(), p.irreps_in1)]
    seg2 = [x2[:, s].reshape(z, m, ir.dim) for s, (m, ir) in zip(p.irreps_in2.slices(), p.irreps_in2)]
    outs = [[] for _ in p.irreps_out]
    for ins, off in zip(p.instructions, p.weight_offsets()):
        (m1, r1), (m2, r2), (mo, ro) = p.irreps_in1[ins.i_in1], p.irreps_in2[ins.i_in2], p.irreps_out[ins.i_out]
        if 0 in (m1, m2, mo):
            continue
        a, b = seg1[ins.i_in1], seg2[ins.i_in2]
        c = _w3j(r1.l, r2.l, ro.l, dtype, x1.device)
        if ins.has_weight:
            n = 1
            for s in ins.path_shape:
                n *= s
            w = weight[..., off:off + n]
            w = w.reshape(ins.path_shape) if p.shared_weights else w.reshape(z, *ins.path_shape)
            wz = "" if p.shared_weights else "z"
        spec = {
            "uvw": ("zui,zvj,ijk", "uvw", "zwk"),
            "uvu": ("zui,zvj,ijk", "uv", "zuk"),
            "uvv": ("zui,zvj,ijk", "uv", "zvk"),
            "uuw": ("zui,zuj,ijk", "uw", "zwk"),
            "uuu": ("zui,zuj,ijk", "u", "zuk"),
            "uvuv": ("zui,zvj,ijk", "uv", "zuvk"),
        }[ins.mode]
        if ins.has_weight:
            y = torch.einsum(f"{spec[0]},{wz}{spec[1]}->{spec[2]}", a, b, c, w)
        elif ins.mode == "uuw":  # no weights: e3nn sums over u into its single output channel
            y = torch.einsum(f"{spec[0]}->zk", a, b, c)
        else:
            y = torch.einsum(f"{spec[0]}->{spec[2]}", a, b, c)
        outs[ins.i_out].append(ins.coefficient * y.reshape(z, mo * ro.dim))
    cols = []
    for k, (mo, ro) in enumerate(p.irreps_out):
        terms = outs[k]
        if terms:
            acc = terms[0]
            for t in terms[1:]:
                acc = acc + t
        else:
            acc = x1.new_zeros(z, mo * ro.dim)
        cols.append(acc)
    y = torch.cat(cols, dim=1) if cols else x1.new_zeros(z, 0)
    if p.layout == "ir_mul":
        y = to_ir_mul(y, p.irreps_out)
    return y.reshape(*bshape, p.irreps_out.dim).to(out_dtype)
