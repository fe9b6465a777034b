"""tritp: generated Triton kernels for E(3)-equivariant tensor products.

``import tritp`` is cheap: it compiles nothing and touches no GPU.

Example:
    >>> import tritp
    >>> p = tritp.Problem.channelwise("8x0e+8x1o", "0e+1o", "0e+1o")
    >>> p.weight_numel
    32
"""

from .codegen import Instruction, Irrep, Irreps, Problem, ProblemError
from .reference import reference_tp
from .api import compile  # noqa: A001  (tritp.compile is the public name)
from .module import TensorProduct
from .e3nn_compat import from_e3nn

__version__ = "0.1.0"

__all__ = ["Irrep", "Irreps", "Problem", "Instruction", "ProblemError", "TensorProduct", "compile", "from_e3nn",
           "reference_tp", "__version__"]
