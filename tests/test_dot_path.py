"""The tensor-core path: channel-mixing terms with shared weights (uvw, and uuw into the
output) are emitted as ``tl.dot`` GEMMs. Checked against the float64 reference through
forward, backward and double backward, with multiplicities that need padding and chunking."""

import pytest
import torch

import tritp
from tritp.kernels import get_kernel, kernel_source
from tritp.codegen.cg_spec import forward_spec

# (irreps, mode, dtype, tolerance, with double backward); the interpreter is slow on these
CASES = [
    ("16x0e+16x1o", "16x0e+16x1o", "16x0e+16x1o", "uuw", torch.float64, 1e-10, True),
    # padding: none of 17, 20, 18 is a power of two
    ("17x0e", "20x0e", "18x0e", "uvw", torch.float64, 1e-10, True),
    ("17x0e", "20x0e", "18x0e", "uvw", torch.float32, 1e-4, True),
    # K = v with a loop over u, and l > 0 couplings
    ("3x1o", "16x1o", "16x0e+16x1e", "uvw", torch.float32, 1e-4, False),
]


def _run(m, x1, x2, double):
    y = m(x1, x2)
    g = torch.autograd.grad(y.pow(2).sum(), [x1, x2, m.weight], create_graph=double)
    if not double:
        return (y, *g)
    gg = torch.autograd.grad(g[1].pow(2).sum() + g[2].pow(2).sum(), [x1, x2, m.weight])
    return (y, *g, *gg)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[3]}-{c[0]}-{str(c[4])[6:]}")
def test_dot_path_matches_reference(case):
    *irreps, mode, dtype, tol, double = case
    tp = tritp.compile(*irreps, mode=mode, backend="triton").to(dtype)
    ref = tritp.compile(*irreps, mode=mode, backend="reference").to(torch.float64)
    with torch.no_grad():
        ref.weight.copy_(tp.weight)
    x1 = torch.randn(5, tp.irreps_in1.dim, dtype=dtype, requires_grad=True)
    x2 = torch.randn(5, tp.irreps_in2.dim, dtype=dtype, requires_grad=True)
    x1r, x2r = (x.detach().double().requires_grad_() for x in (x1, x2))
    for k, (a, b) in enumerate(zip(_run(tp, x1, x2, double), _run(ref, x1r, x2r, double))):
        err = (a.double() - b).abs().max() / b.abs().max()
        # design section 6: fp32 forward 1e-5, derivatives 1e-4; fp64 1e-10 throughout
        assert err < (min(tol, 1e-5) if k == 0 else tol), (k, err)


def test_dot_path_is_taken_and_forces_16_rows():
    tp = tritp.compile("16x0e", "16x0e", "16x0e", mode="uvw", backend="triton")
    _, src = kernel_source(tp.problem, forward_spec(), "float32", 64)
    assert "tl.dot(" in src and "MIN_BLOCK_Z = 16" in src
    assert get_kernel(tp.problem, forward_spec(), "float32", 64).tritp_min_block_z == 16
    # a batch smaller than 16 rows still works (the launcher raises BLOCK_Z to the minimum)
    x1, x2 = torch.randn(3, 16), torch.randn(3, 16)
    ref = tritp.reference_tp(tp.problem, x1.double(), x2.double(), tp.weight.detach().double())
    assert torch.allclose(tp(x1, x2).double(), ref, rtol=1e-5, atol=1e-5)


def test_small_multiplicities_stay_on_the_scalar_path():
    tp = tritp.compile("4x0e", "4x0e", "4x0e", mode="uvw", backend="triton")
    _, src = kernel_source(tp.problem, forward_spec(), "float32", 64)
    assert "tl.dot(" not in src and "MIN_BLOCK_Z = 1" in src


def test_tf32_follows_matmul_precision():
    tp = tritp.compile("16x0e", "16x0e", "16x0e", mode="uvw", backend="triton")
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        _, a = kernel_source(tp.problem, forward_spec(), "float32", 64)
        torch.set_float32_matmul_precision("high")
        _, b = kernel_source(tp.problem, forward_spec(), "float32", 64)
        _, c = kernel_source(tp.problem, forward_spec(), "float64", 64)
    finally:
        torch.set_float32_matmul_precision(old)
    assert "DOT_PREC: tl.constexpr = 'ieee'" in a
    assert "DOT_PREC: tl.constexpr = 'tf32'" in b
    assert "DOT_PREC: tl.constexpr = 'ieee'" in c  # fp64 never uses tf32
