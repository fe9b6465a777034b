"""tritp: generated Triton kernels for E(3)-equivariant tensor products.

``import tritp`` is cheap: it compiles nothing, touches no GPU, and loads torch only when a
runtime name (``compile``, ``TensorProduct``, ...) is first used, so ``tritp.codegen`` and the
command line stay light.

Example:
    >>> import tritp
    >>> p = tritp.Problem.channelwise("8x0e+8x1o", "0e+1o", "0e+1o")
    >>> p.weight_numel
    32
"""

from importlib import import_module

from .codegen import Instruction, Irrep, Irreps, Problem, ProblemError

__version__ = "0.1.0"

# name -> module that defines it; imported on first attribute access (PEP 562)
_LAZY = {
    "compile": "api",
    "TensorProduct": "module",
    "from_e3nn": "e3nn_compat",
    "reference_tp": "reference",
    "compile_conv": "conv_module",
    "TensorProductConv": "conv_module",
    "conv_graph": "conv_index",
    "ConvGraph": "conv_index",
}

__all__ = ["Irrep", "Irreps", "Problem", "Instruction", "ProblemError", "__version__", *_LAZY]


def __getattr__(name):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'tritp' has no attribute {name!r}")
    value = getattr(import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
