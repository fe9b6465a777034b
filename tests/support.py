"""Helpers several test files share (pytest puts this folder on sys.path: ``import support``).

* :func:`mace_channelwise` -- MACE's own construction of a channelwise interaction, the oracle
  for ``Problem.channelwise`` and ``tritp.compile(mode="channelwise")``;
* :class:`FakeKernels` -- a stand-in for tritp's kernel loaders that records compiles
  (Triton's ``warmup``) and refuses launches, for the precompile paths the interpreter skips.
"""

from e3nn import o3


def mace_channelwise(irreps1, irreps2, target):
    """MACE's ``tp_out_irreps_with_instructions`` (mace/modules/irreps_tools.py), on e3nn objects:
    ``(irreps_out, instructions)``."""
    irreps1, irreps2, target = o3.Irreps(irreps1), o3.Irreps(irreps2), o3.Irreps(target)
    trainable = True
    out_list, instructions = [], []
    for i, (mul, ir_in) in enumerate(irreps1):
        for j, (_, ir_edge) in enumerate(irreps2):
            for ir_out in ir_in * ir_edge:
                if ir_out in target:
                    k = len(out_list)
                    out_list.append((mul, ir_out))
                    instructions.append((i, j, k, "uvu", trainable))
    irreps_out = o3.Irreps(out_list)
    irreps_out, permut, _ = irreps_out.sort()
    instructions = [(i1, i2, permut[io], mode, train) for i1, i2, io, mode, train in instructions]
    instructions = sorted(instructions, key=lambda x: x[2])
    return irreps_out, instructions


class FakeKernel:
    """One fake compiled kernel: ``warmup`` (a compile) appends ``(key, args, grid, options)``
    to the shared log; launching it fails the test."""

    tritp_min_block_z = 1

    def __init__(self, key, log):
        self.key, self.log = key, log

    def warmup(self, *args, grid, **options):
        self.log.append((self.key, args, grid, options))

    def __getitem__(self, grid):
        raise AssertionError("precompile launched a kernel")


class FakeKernels:
    """Replaces ``get_kernel`` / ``get_conv_kernel``: like the real loaders, one kernel object
    per source (``key`` = problem key, spec, then the loader's other arguments); ``warmed``
    logs every compile."""

    def __init__(self):
        self.kernels, self.warmed = {}, []

    def __call__(self, problem, spec, *rest):
        key = (problem.key, spec, *rest)
        return self.kernels.setdefault(key, FakeKernel(key, self.warmed))
