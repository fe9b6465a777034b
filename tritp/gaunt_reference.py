"""Dense PyTorch Gaunt product (design notes, section 3): the test oracle and the CPU fallback.

``out[c, l3] = s * sum over paths of c(l1,l2,l3) * einsum(x1[c,l1], x2[c,l2], W^{l1l2l3})``,
plain einsums over e3nn's ``wigner_3j`` (exact tables of :mod:`tritp.codegen.coupling`),
differentiable to any order by autograd. Independent of the four implementations: it shares
neither their tables nor their kernels.

Example:
    >>> import torch
    >>> from tritp.codegen.gaunt_problem import GauntProblem
    >>> p = GauntProblem("2x0e+2x1o", "0e+1o", lmax_out=2)
    >>> gaunt_reference(p, torch.randn(5, 8), torch.randn(5, 4)).shape
    torch.Size([5, 18])
"""

from __future__ import annotations

import torch

from .codegen.gaunt_problem import GauntProblem
from .reference import _w3j

_UPCAST = {torch.float16: torch.float32, torch.bfloat16: torch.float32}


def _segments(x: torch.Tensor, irreps, channels: int) -> dict:
    """``{l: [z, C, 2l+1]}``; a multiplicity-1 input is expanded over the channels."""
    z = x.shape[0]
    return {ir.l: x[:, s].reshape(z, mul, ir.dim).expand(z, channels, ir.dim)
            for s, (mul, ir) in zip(irreps.slices(), irreps)}


def gaunt_reference(problem: GauntProblem, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """The Gaunt product of ``problem`` on ``x1 [..., dim1]`` and ``x2 [..., dim2]`` (leading
    dimensions broadcast); fp16/bf16 are computed in fp32 and rounded once."""
    p = problem
    out_dtype = torch.promote_types(x1.dtype, x2.dtype)
    dtype = _UPCAST.get(out_dtype, out_dtype)
    bshape = torch.broadcast_shapes(x1.shape[:-1], x2.shape[:-1])
    x1 = x1.to(dtype).expand(*bshape, -1).reshape(-1, x1.shape[-1])
    x2 = x2.to(dtype).expand(*bshape, -1).reshape(-1, x2.shape[-1])
    z, C = x1.shape[0], p.channels
    a, b = _segments(x1, p.irreps_in1, C), _segments(x2, p.irreps_in2, C)
    cols = []
    for _, ir in p.irreps_out:
        acc = x1.new_zeros(z, C, ir.dim)
        for l1, l2, l3 in p.paths:
            if l3 == ir.l:
                w = _w3j(l1, l2, l3, dtype, x1.device)
                acc = acc + p.coefficient(l1, l2, l3) * torch.einsum("zci,zcj,ijk->zck", a[l1], b[l2], w)
        cols.append(acc.reshape(z, C * ir.dim))
    return torch.cat(cols, dim=1).reshape(*bshape, p.irreps_out.dim).to(out_dtype)
