"""tritp's torch-free compiler: irreps, exact coupling, problem descriptions, Triton emitters.

Imports neither torch nor triton (sympy and numpy only), so the symbolic and generation side
runs and is tested without a GPU. Installed as ``tritp.codegen``.

Example:
    >>> from tritp.codegen import Irreps, Problem, sparse_coupling
    >>> len(sparse_coupling(1, 1, 2))
    11
"""

from .coupling import dense_coupling, gaunt_factor, sparse_coupling, sympy_coupling
from .irreps import Irrep, Irreps, MulIr
from .problem import MODES, Instruction, Problem, ProblemError

__all__ = [
    "Irrep", "Irreps", "MulIr", "Problem", "Instruction", "ProblemError", "MODES",
    "sparse_coupling", "dense_coupling", "sympy_coupling", "gaunt_factor",
]
