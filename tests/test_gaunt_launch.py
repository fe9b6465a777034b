"""Gaunt launch plans: a dry plan (what ``GauntProduct.precompile`` compiles ahead of time)
must be the launch the real call makes -- same kernel, grid, options and every argument that
Triton specializes on -- or the precompile compiles kernels nobody looks up."""

import pytest
import torch

from tritp.codegen.gaunt_problem import FORWARD, GauntProblem
from tritp.gaunt import compile_gaunt
from tritp.gaunt_launch import gaunt_plan, gaunt_plans, producer_specs


def signature(plan):
    """What Triton keys a compile on: tensor dtypes, the integers, the options; plus the kernel."""
    args = tuple(a.dtype if isinstance(a, torch.Tensor) else a for a in plan.args)
    return plan.kernels, plan.grid, args, plan.options


def test_producer_specs_close_over_derivatives():
    assert producer_specs(("fwd",)) == [FORWARD]
    bwd = producer_specs(("fwd", "bwd"))
    assert bwd == [FORWARD, "x1:x2,out", "x2:x1,out"]
    dbl = producer_specs(("fwd", "bwd", "dbl"))
    assert dbl[:3] == bwd and len(dbl) == len(set(dbl)) > 3
    assert {s.split(":")[0] for s in dbl} == {"out", "x1", "x2"}


@pytest.mark.parametrize("impl, irreps, dtype", [
    ("grid", ("4x0e+4x1o+4x2e", "4x0e+4x1o"), torch.float32),
    ("separable", ("16x0e+16x1o+16x2e", "0e+1o+2e"), torch.float32),  # x2's gradient sums 16 channels
    ("separable", ("3x0e+3x1o", "0e+1o"), torch.float64),  # partial rows (C = 3)
    ("fft", ("2x0e+2x1o", "2x0e+2x1o"), torch.bfloat16),
])
def test_dry_plans_are_the_real_launches(impl, irreps, dtype):
    p = GauntProblem(*irreps, lmax_out=2, implementation=impl)
    Z = 37
    dry = gaunt_plans(p, Z, ("fwd", "bwd", "dbl"), dtype, "cpu")
    specs = producer_specs(("fwd", "bwd", "dbl"))
    assert len(dry) == len(specs)
    for spec, d in zip(specs, dry):
        roles = spec.split(":")[1].split(",")
        real, _ = gaunt_plan(p, spec, [torch.randn(Z, p.irreps(r).dim, dtype=dtype) for r in roles], Z)
        assert signature(d) == signature(real), spec
        assert d.g.numel() == 0  # nothing of batch size allocated


def test_sparse_plans_and_module_precompile():
    p = GauntProblem("2x0e+2x1o", "0e+1o", lmax_out=2, implementation="sparse")
    assert len(gaunt_plans(p, 100, ("fwd", "bwd"), torch.float32, "cpu")) == 3
    gp = compile_gaunt("2x0e+2x1o", "0e+1o", lmax_out=2, implementation="separable", backend="triton")
    assert gp.precompile(batch=100, directions=("fwd", "bwd", "dbl")) == 0  # the interpreter compiles nothing
