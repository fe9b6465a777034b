"""Helpers several test files share (pytest puts this folder on sys.path: ``import support``).

* :func:`mace_channelwise` -- MACE's own construction of a channelwise interaction, the oracle
  for ``Problem.channelwise`` and ``tritp.compile(mode="channelwise")``;
* :class:`FakeKernels` -- a stand-in for tritp's kernel loaders that records compiles
  (Triton's ``warmup``) and refuses launches, for the precompile paths the interpreter skips;
* :func:`random_problem_args` -- a seeded random problem mixing every e3nn mode;
* :func:`record_specs` -- records the spec of every producer a module function runs.
"""

from e3nn import o3

from tritp.codegen import MODES


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


def random_problem_args(rng, lmax=3, zero_mul=True, unweighted_uuw="allow"):
    """Random (in1, in2, out, instructions) mixing every mode; multiplicities are built so that
    each mode fits, some output segments collect several paths, some are never written.

    ``unweighted_uuw``: "allow" (random, as every other has_weight), "never", or "force" (every
    uuw path is unweighted, mul_out = 1).
    """
    muls1 = [1, 2, 3] + ([0] if zero_mul else [])
    in1 = [(rng.choice(muls1), (rng.randint(0, lmax), rng.choice((1, -1)))) for _ in range(rng.randint(1, 3))]
    if all(m == 0 for m, _ in in1):  # inputs of dimension 0: see test_zero_dimensional_input
        in1[0] = (1, in1[0][1])
    in2 = [(rng.choice([1, 2]), (rng.randint(0, lmax), rng.choice((1, -1)))) for _ in range(rng.randint(1, 3))]
    k = rng.randrange(len(in2))
    in2[k] = (rng.choice([m for m, _ in in1 if m > 0] or [1]), in2[k][1])  # so that uuw / uuu fit
    out, ins = [], []
    modes = list(MODES)
    rng.shuffle(modes)
    for mode in modes:
        for _ in range(rng.randint(1, 2)):
            pairs = [(i, j) for i in range(len(in1)) for j in range(len(in2))
                     if mode not in ("uuw", "uuu") or in1[i][0] == in2[j][0]]
            if not pairs:
                break
            i, j = rng.choice(pairs)
            (m1, (l1, p1)), (m2, (l2, p2)) = in1[i], in2[j]
            ir = (rng.randint(abs(l1 - l2), min(l1 + l2, lmax)), p1 * p2)
            hw = True if mode == "uvw" else rng.random() < 0.6
            if mode == "uuw":
                hw = {"allow": hw, "never": True, "force": False}[unweighted_uuw]
            mo = {"uvw": rng.randint(1, 3), "uvu": m1, "uvv": m2, "uuw": rng.randint(1, 3) if hw else 1,
                  "uuu": m1, "uvuv": m1 * m2}[mode]
            same = [k for k, seg in enumerate(out) if seg == (mo, ir)]
            if same and rng.random() < 0.6:
                k = rng.choice(same)
            else:
                out.append((mo, ir))
                k = len(out) - 1
            t = (i, j, k, mode, hw)
            if rng.random() < 0.3:
                t += (rng.choice([0.25, 0.5, 2.0, 3.0]),)
            ins.append(t)
    if rng.random() < 0.3:
        out.append((rng.randint(1, 2), (rng.randint(0, lmax), rng.choice((1, -1)))))  # never written
    perm = list(range(len(out)))
    rng.shuffle(perm)
    new_out = [None] * len(out)
    for old, new in enumerate(perm):
        new_out[new] = out[old]
    ins = [(a, b, perm[k]) + tuple(rest) for a, b, k, *rest in ins]
    rng.shuffle(ins)
    return in1, in2, new_out, ins


def compiled_square_loss_errors(gp, rows: int = 4) -> tuple:
    """``torch.compile(fullgraph=True)`` of ``sum(gp(x1, x2) ** 2)`` for a float64 Gaunt module
    ``gp``: relative errors of the loss and of its x1-gradient against the float64 reference."""
    import torch

    from tritp.gaunt_reference import gaunt_reference

    x1 = torch.randn(rows, gp.irreps_in1.dim, dtype=torch.float64, requires_grad=True)
    x2 = torch.randn(rows, gp.irreps_in2.dim, dtype=torch.float64)
    f = torch.compile(lambda a, b: (gp(a, b) ** 2).sum(), backend="aot_eager", fullgraph=True)
    y = f(x1, x2)
    (g,) = torch.autograd.grad(y, [x1])
    want = (gaunt_reference(gp.problem, x1, x2) ** 2).sum()
    (gw,) = torch.autograd.grad(want, [x1])
    return abs((y - want) / want).item(), ((g - gw).abs().max() / gw.abs().max()).item()


def record_specs(monkeypatch, module, name: str, key=lambda spec: spec) -> list:
    """Wrap the producer ``module.name`` (called as ``(problem, spec, ...)``) for this test;
    returns the list that gets ``key(spec)`` of every call, in order."""
    seen, inner = [], getattr(module, name)

    def spy(problem, spec, *args, **kwargs):
        seen.append(key(spec))
        return inner(problem, spec, *args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return seen
