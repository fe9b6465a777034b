"""``tritp.TensorProduct``: the nn.Module that ``tritp.compile`` returns.

Call signature, weight layout and attributes match ``e3nn.o3.TensorProduct``. The module holds
only plain Python values, the problem key string and tensors, so Dynamo guards stay cheap.

Example:
    >>> import torch, tritp
    >>> tp = tritp.compile("8x0e+8x1o", "0e+1o", "0e+1o", mode="channelwise", backend="reference")
    >>> tp(torch.randn(5, 32), torch.randn(5, 4), torch.randn(5, tp.weight_numel)).shape
    torch.Size([5, 64])
"""

from __future__ import annotations

import math
import os
import warnings
from typing import NamedTuple, Optional

import torch

from . import ops
from .codegen import Problem
from .codegen.cg_spec import forward_spec
from .kernels import interpreter_active
from .reference import reference_tp

BACKENDS = ("auto", "triton", "reference")
_warned: set = set()


class E3nnInstruction(NamedTuple):
    """e3nn's ``Instruction``: ``path_weight`` is the final normalization coefficient."""

    i_in1: int
    i_in2: int
    i_out: int
    connection_mode: str
    has_weight: bool
    path_weight: float
    path_shape: tuple


def strict() -> bool:
    return os.environ.get("TRITP_STRICT", "0") not in ("", "0")


def warn_once(key: str, message: str) -> None:
    """Warn the first time ``key`` is seen; under ``TRITP_STRICT=1`` raise instead."""
    if strict():
        raise RuntimeError(f"{message} (TRITP_STRICT=1 turns this fallback into an error)")
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, stacklevel=3)


def use_triton(backend: str, device: torch.device, what: str) -> bool:
    """Whether a tritp module with ``backend`` runs its Triton kernels for inputs on
    ``device``: always on CUDA, on CPU under ``TRITON_INTERPRET=1``; ``backend="triton"``
    elsewhere raises; ``"auto"`` elsewhere falls back to the PyTorch reference of ``what``,
    warning once (an error under ``TRITP_STRICT=1``).

    Example:
        >>> use_triton("reference", torch.device("cpu"), "tensor product")
        False
    """
    if backend == "reference":
        return False
    if device.type == "cuda" or interpreter_active():
        return True
    if backend == "triton":
        raise RuntimeError(f"backend='triton' needs CUDA tensors (got device {device}); set TRITON_INTERPRET=1 "
                           "before importing triton to run the kernels on CPU, or use backend='reference'")
    warn_once(f"{what}-{device}", f"tritp: inputs on {device}, no GPU kernel: using the PyTorch reference "
              f"{what} (slow); pass backend='reference' to silence this")
    return False


def check_operands(x1, x2, dims, irreps) -> None:
    """Raise a TypeError or ValueError naming the argument unless ``x1`` and ``x2`` are
    floating-point tensors of one dtype and device with last dimensions ``dims`` (the sizes of
    ``irreps``, which the message quotes).

    Example:
        >>> check_operands(torch.ones(2, 4), torch.ones(2, 2), (4, 3), ("4x0e", "1o"))
        Traceback (most recent call last):
        ...
        ValueError: x2: expected shape [..., 3] (irreps 1o), got [2, 2]
    """
    for name, x, d, irr in zip(("x1", "x2"), (x1, x2), dims, irreps):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")
        if x.dim() == 0 or x.shape[-1] != d:
            raise ValueError(f"{name}: expected shape [..., {d}] (irreps {irr}), got {list(x.shape)}")
    if x2.dtype != x1.dtype:
        raise TypeError(f"x2: dtype {x2.dtype} does not match x1's dtype {x1.dtype}")
    if x2.device != x1.device:
        raise ValueError(f"x2: device {x2.device} does not match x1's device {x1.device}")


class TensorProduct(torch.nn.Module):
    """An E(3)-equivariant tensor product running generated Triton kernels.

    Built by :func:`tritp.compile`; ``tp(x1, x2[, weight])`` as in e3nn.
    """

    def __init__(self, problem: Problem, *, internal_weights: bool = False, backend: str = "auto"):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r} is not one of {', '.join(map(repr, BACKENDS))}")
        if internal_weights and not problem.shared_weights:
            raise ValueError("internal_weights=True needs shared_weights=True (one weight vector for all samples)")
        self.problem = problem
        self.key = problem.key
        self.backend = backend
        self.irreps_in1 = problem.irreps_in1
        self.irreps_in2 = problem.irreps_in2
        self.irreps_out = problem.irreps_out
        self.instructions = [
            E3nnInstruction(i.i_in1, i.i_in2, i.i_out, i.mode, i.has_weight, i.coefficient, i.path_shape)
            for i in problem.instructions
        ]
        self.weight_numel = problem.weight_numel
        self.shared_weights = problem.shared_weights
        self.internal_weights = bool(internal_weights and self.weight_numel > 0)
        self._dims = (problem.irreps_in1.dim, problem.irreps_in2.dim, problem.irreps_out.dim)
        self._spec = forward_spec(self.weight_numel > 0).to_str()
        if self.internal_weights:
            self.weight = torch.nn.Parameter(torch.randn(self.weight_numel))  # e3nn's initialization
        else:
            self.register_buffer("weight", torch.Tensor(), persistent=False)

    def extra_repr(self) -> str:
        return (f"{self.irreps_in1} x {self.irreps_in2} -> {self.irreps_out} | {len(self.instructions)} paths | "
                f"{self.weight_numel} weights | backend={self.backend}")

    def _check(self, x1, x2, weight) -> Optional[torch.Tensor]:
        check_operands(x1, x2, self._dims[:2], (self.irreps_in1, self.irreps_in2))
        if self.weight_numel == 0:
            return None
        if weight is None:
            if not self.internal_weights:
                raise ValueError(f"weight: this tensor product needs {self.weight_numel} weights "
                                 "(internal_weights=False), got None")
            weight = self.weight
        if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
            raise TypeError(f"weight: expected a floating-point tensor, got {getattr(weight, 'dtype', type(weight))}")
        if weight.device != x1.device:
            raise ValueError(f"weight: device {weight.device} does not match x1's device {x1.device}")
        if weight.dtype != x1.dtype and not torch.is_autocast_enabled(x1.device.type):
            # a silent promotion would compile and run a float64 kernel for float32 inputs
            raise TypeError(f"weight: dtype {weight.dtype} does not match x1's dtype {x1.dtype}")
        if self.shared_weights and tuple(weight.shape) != (self.weight_numel,):
            raise ValueError(f"weight: expected shape [{self.weight_numel}] (shared weights), got {list(weight.shape)}")
        if not self.shared_weights and (weight.dim() < 2 or weight.shape[-1] != self.weight_numel):
            raise ValueError(f"weight: expected shape [..., {self.weight_numel}] (per-sample weights), "
                             f"got {list(weight.shape)}")
        return weight

    def _use_triton(self, device: torch.device) -> bool:
        return use_triton(self.backend, device, "tensor product")

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        weight = self._check(x1, x2, weight)
        if torch.is_autocast_enabled(x1.device.type) and x1.dtype != torch.float64:
            # Autocast policy, as for matmul: run in the autocast dtype (halving memory traffic),
            # accumulate in fp32 inside the kernel, return the autocast dtype; fp64 is left alone.
            dt = torch.get_autocast_dtype(x1.device.type)
            x1, x2 = x1.to(dt), x2.to(dt)
            weight = weight.to(dt) if weight is not None else None
        if not self._use_triton(x1.device):
            return reference_tp(self.problem, x1, x2, weight)
        d1, d2, do = self._dims
        shapes = [x1.shape[:-1], x2.shape[:-1]]
        if weight is not None and not self.shared_weights:
            shapes.append(weight.shape[:-1])
        # torch.broadcast_shapes costs ~10 us of Python; equal batch shapes need none of it
        bshape = shapes[0] if all(s == shapes[0] for s in shapes) else torch.broadcast_shapes(*shapes)
        Z = math.prod(bshape)
        args = [_rows(x1, bshape, d1, Z), _rows(x2, bshape, d2, Z)]
        if weight is not None:
            args.append(weight if self.shared_weights else _rows(weight, bshape, self.weight_numel, Z))
        y = ops.run(self.key, self._spec, Z, x1.dtype, args)
        return y.reshape(*bshape, do)

    def autotune(self, batch=50_000, directions=("fwd", "bwd", "dbl"), dtype=None, timer=None, strategy="full"):
        """Tune this module's kernels on this GPU (or the interpreter) and write the user cache.

        ``batch`` is one batch size or a list; ``directions`` are some of ``fwd``, ``bwd``
        (gradients), ``dbl`` (double backward, for forces); ``dtype`` ``"float32"`` (default)
        or ``"float64"``; ``timer`` maps a launch thunk to milliseconds (default: ``do_bench``
        on CUDA). Returns a list of :class:`tritp.tuning.tuner.TuneResult`, one per kernel.

        Example:
            >>> tp = tritp.compile("128x0e+128x1o", "0e+1o+2e", "0e+1o", mode="channelwise")  # doctest: +SKIP
            >>> [r.speedup for r in tp.autotune(batch=50_000, directions=("fwd",))]  # doctest: +SKIP
            [1.4]
        """
        from .tuning.tuner import tune_problem

        return tune_problem(self.problem, batch, tuple(directions), dtype=dtype or "float32", timer=timer,
                            strategy=strategy)


    def precompile(self, batch=50_000, directions=("fwd", "bwd", "dbl"), dtype=torch.float32, device=None) -> int:
        """Compile this module's kernels now, all at once in parallel (threads or worker processes), rather than one
        after another on their first launches (a force-training step launches a dozen).

        Kernels are specialized on dtype and layout, not on the batch size, but the launch
        configuration (tuned or heuristic) depends on ``batch``: pass the batch you will run.
        Nothing of batch size is allocated. Returns the number of kernels compiled (0 under the
        Triton interpreter). For eager use: under ``torch.compile`` Inductor compiles the
        kernels it launches itself.

        Example:
            >>> tp = tritp.compile("128x0e+128x1o", "0e+1o+2e", "0e+1o", mode="channelwise")  # doctest: +SKIP
            >>> tp.precompile(batch=50_000, directions=("fwd", "bwd"))  # doctest: +SKIP
            4
        """
        from .kernels import launch_plan, precompile
        from .tuning.tuner import direction_specs, make_inputs

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(device)
        # two rows of data suffice (nothing runs); the configuration follows the real batch
        plans = [launch_plan(self.problem, spec, make_inputs(self.problem, spec, 2, dtype, device), batch, dry=True)
                 for _, spec in direction_specs(self.problem, tuple(directions))]
        return precompile(plans)


def _rows(x: torch.Tensor, bshape, d: int, Z: int) -> torch.Tensor:
    """``x`` as ``[Z, d]`` rows, or one ``[1, d]`` row when it is broadcast over the whole batch."""
    if math.prod(x.shape[:-1]) == 1:
        return x.reshape(1, d)
    return x.expand(*bshape, d).reshape(Z, d)
