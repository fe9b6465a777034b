"""``tritp.from_e3nn``: turn an e3nn tensor product module into a tritp one, same weights.

e3nn stores each instruction's final normalization factor (``sqrt(alpha)``) in
``Instruction.path_weight``; tritp rebuilds the problem with ``irrep_normalization="none"``,
``path_normalization="none"`` and ``path_weight = factor**2``, which gives the same factor, so
any normalization, variance or path weight e3nn applied carries over.

Example:
    >>> from e3nn import o3
    >>> import tritp
    >>> e = o3.FullyConnectedTensorProduct("4x0e+4x1o", "0e+1o", "4x0e+4x1o")
    >>> tp = tritp.from_e3nn(e, backend="reference")
    >>> tp.weight_numel == e.weight_numel
    True
"""

from __future__ import annotations

import torch

from .codegen import MODES, Problem
from .module import TensorProduct


class UnsupportedE3nnModule(ValueError):
    """The e3nn module uses a feature tritp cannot represent."""


def from_e3nn(module, *, backend: str = "auto") -> TensorProduct:
    """Convert ``e3nn.o3.TensorProduct`` (or its subclasses ``FullyConnectedTensorProduct``,
    ``ElementwiseTensorProduct``, ``FullTensorProduct``, ``TensorSquare`` with weights as
    instructions) into a :class:`tritp.TensorProduct` computing the same function.

    Internal weights are copied (same values, dtype and device); per-sample weight layouts are
    identical, so the converted module is called exactly like the original.
    """
    try:
        from e3nn import o3
    except ImportError as e:  # pragma: no cover - e3nn is a test dependency
        raise ImportError("from_e3nn needs e3nn installed") from e
    if not isinstance(module, o3.TensorProduct):
        raise TypeError(f"module: expected an e3nn.o3.TensorProduct (or subclass), got {type(module).__name__}")
    ins = []
    for k, i in enumerate(module.instructions):
        if i.connection_mode not in MODES:
            raise UnsupportedE3nnModule(
                f"instruction {k} uses connection mode {i.connection_mode!r}, which tritp does not support "
                f"(supported: {', '.join(MODES)})")
        ins.append((i.i_in1, i.i_in2, i.i_out, i.connection_mode, i.has_weight, float(i.path_weight) ** 2))
    if type(module).forward is not o3.TensorProduct.forward:
        raise UnsupportedE3nnModule(f"{type(module).__name__} overrides forward(); tritp cannot know what it computes")
    problem = Problem(str(module.irreps_in1), str(module.irreps_in2), str(module.irreps_out), ins,
                      irrep_normalization="none", path_normalization="none",
                      shared_weights=bool(module.shared_weights))
    tp = TensorProduct(problem, internal_weights=bool(module.internal_weights), backend=backend)
    if tp.internal_weights:
        with torch.no_grad():
            tp.weight = torch.nn.Parameter(module.weight.detach().clone())
    return tp
