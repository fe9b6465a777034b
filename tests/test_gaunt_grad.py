"""Gradients, double gradients, learnable weights and the torch ops of the Gaunt product.

Every derivative runs generated kernels (the op's backward calls the op again with a derived
producer); each is compared with torch autograd through the float64 dense reference
(``backend="reference"``): fp64 within 1e-10, fp32 within 1e-4 (design notes, section 6).
"""

import pytest
import torch

import tritp.gaunt_kernels as gaunt_kernels
import tritp.gaunt_separable as gaunt_separable
from tritp.codegen.gaunt_emit import default_block_p, reduces_channels
from tritp.codegen.gaunt_problem import FORWARD, GauntProblem, derivative_spec
from tritp.gaunt import compile_gaunt
from tritp.gaunt_launch import gaunt_produce
from support import compiled_square_loss_errors
from tritp.gaunt_reference import gaunt_reference

F64 = torch.float64
IMPLS = ("sparse", "grid", "fft", "separable")


def rel(a, ref):
    a, ref = a.detach().to(F64), ref.detach().to(F64)
    return ((a - ref).abs().max() / ref.abs().max()).item()


def pair(*args, **kw):
    """The same product on the kernels and on the reference, sharing random weights."""
    tri = compile_gaunt(*args, backend="triton", **kw)
    ref = compile_gaunt(*args, backend="reference", **kw)
    for name, p in tri.named_parameters():
        p.data = torch.rand_like(p) + 0.5
        getattr(ref, name).data = p.data.clone()
    return tri, ref


def grads(gp, x1, x2, cot):
    """First derivatives of <cot, gp(x1, x2)> for inputs and weights, and the derivatives of the
    sum of their squares (what a force loss differentiates)."""
    params = [x1, x2] + list(gp.parameters())
    d = torch.autograd.grad((gp(x1, x2) * cot).sum(), params, create_graph=True)
    dd = torch.autograd.grad(sum((g**2).sum() for g in d), params)
    return d, dd


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", [("2x0e+2x1o+2x2e", "2x0e+2x1o", 2, ()), ("3x0e+3x1o", "0e+1o", 2, True)],
                         ids=["uuu", "bcast2-weights"])
def test_first_and_second_derivatives_fp64(impl, case):
    tri, ref = pair(case[0], case[1], lmax_out=case[2], implementation=impl, weights=case[3])
    tri.double(), ref.double()
    x1 = torch.randn(4, tri.irreps_in1.dim, dtype=F64, requires_grad=True)
    x2 = torch.randn(4, tri.irreps_in2.dim, dtype=F64, requires_grad=True)
    cot = torch.randn(4, tri.irreps_out.dim, dtype=F64)
    (d, dd), (dr, ddr) = grads(tri, x1, x2, cot), grads(ref, x1, x2, cot)
    assert len(d) == (5 if case[3] else 2)
    for a, b in zip(d + dd, dr + ddr):
        assert rel(a, b) < 1e-10


@pytest.mark.parametrize("impl", IMPLS)
def test_gradients_fp32(impl):
    tri, ref = pair("2x0e+2x1o", "0e+1o+2e", lmax_out=3, implementation=impl)
    x1 = torch.randn(5, tri.irreps_in1.dim, dtype=F64, requires_grad=True)
    x2 = torch.randn(5, tri.irreps_in2.dim, dtype=F64, requires_grad=True)
    cot = torch.randn(5, tri.irreps_out.dim, dtype=F64)
    g32 = torch.autograd.grad((tri(x1.float(), x2.float()) * cot.float()).sum(), [x1, x2])
    g64 = torch.autograd.grad((ref(x1, x2) * cot).sum(), [x1, x2])
    assert all(a.dtype == torch.float64 for a in g32)  # the cast's backward
    for a, b in zip(g32, g64):
        assert rel(a, b) < 1e-4


def scaled(x, irreps, w, channels):
    """``x`` with coefficient (c, l, m) multiplied by ``w[c, index of l]``, made per-channel."""
    parts = []
    for j, (s, (mul, ir)) in enumerate(zip(irreps.slices(), irreps)):
        seg = x[..., s].reshape(*x.shape[:-1], mul, ir.dim).expand(*x.shape[:-1], channels, ir.dim)
        parts.append((seg * w[:, j, None]).reshape(*x.shape[:-1], channels * ir.dim))
    return torch.cat(parts, dim=-1)


@pytest.mark.parametrize("impl", ["grid", "sparse"])
def test_weights_scale_each_channel_and_degree(impl):
    gp = compile_gaunt("3x0e+3x1o+3x2e", "0e+1o", lmax_out=3, implementation=impl, weights=True, backend="triton")
    gp.double()
    for p in gp.parameters():
        p.data = torch.rand_like(p) + 0.5
    x1, x2 = torch.randn(4, gp.irreps_in1.dim, dtype=F64), torch.randn(4, gp.irreps_in2.dim, dtype=F64)
    C = gp.problem.channels
    plain = compile_gaunt("3x0e+3x1o+3x2e", "3x0e+3x1o", lmax_out=3, backend="reference")  # x2 made per-channel
    want = gaunt_reference(plain.problem, scaled(x1, gp.irreps_in1, gp.weight_in1, C),
                           scaled(x2, gp.irreps_in2, gp.weight_in2, C))
    want = scaled(want, gp.irreps_out, gp.weight_out, C)
    assert rel(gp(x1, x2), want) < 1e-10
    assert not torch.allclose(gp(x1, x2), gaunt_reference(gp.problem, x1, x2))
    # weights get gradients equal to the reference's
    ref = compile_gaunt("3x0e+3x1o+3x2e", "0e+1o", lmax_out=3, weights=True, backend="reference").double()
    ref.load_state_dict(gp.state_dict())
    for m in (gp, ref):
        m.zero_grad()
        (m(x1, x2) ** 2).sum().backward()
    for (name, a), b in zip(gp.named_parameters(), ref.parameters()):
        assert a.grad is not None and rel(a.grad, b.grad) < 1e-10, name


@pytest.mark.parametrize("impl", ["grid", "sparse"])
def test_batch_broadcast_row_gradient(impl):
    tri, ref = pair("2x0e+2x1o", "0e+1o", lmax_out=2, implementation=impl)
    x1 = torch.randn(5, tri.irreps_in1.dim, dtype=F64, requires_grad=True)
    x2 = torch.randn(1, tri.irreps_in2.dim, dtype=F64, requires_grad=True)  # one row for the whole batch
    a = torch.autograd.grad((tri(x1, x2) ** 2).sum(), [x1, x2])
    b = torch.autograd.grad((ref(x1, x2) ** 2).sum(), [x1, x2])
    assert a[1].shape == (1, 4)
    for u, v in zip(a, b):
        assert rel(u, v) < 1e-10


def produce_spied(problem, spec, tensors, Z, launch=None):
    """``gaunt_produce`` that also returns the shapes of the buffers its kernel launches wrote."""
    shapes = []

    def wrap(kernel):
        class Launch:
            def __getitem__(self, grid):
                def launch(*args, **kw):
                    shapes.append(tuple(args[2].shape))
                    return kernel[grid](*args, **kw)
                return launch
        return Launch()

    return gaunt_produce(problem, spec, tensors, Z, wrap=wrap, launch=launch), shapes


@pytest.mark.parametrize("impl", ["grid", "fft", "separable"])
@pytest.mark.parametrize("C, role, block, summed", [
    (4, "x2", None, True),  # power of two: 8 samples a program (5 of them real)
    (32, "x2", 16, True),  # power of two above the row tile: 2 tiles a sample (the GPU's C=128)
    (48, "x1", None, True),  # multiple of 16: 3 tiles of 16 rows a sample
    (3, "x2", None, False),  # neither: partial rows, summed by the launcher
], ids=["C4", "C32-tiles", "C48-x1", "C3-partial"])
def test_broadcast_gradient_sums_channels_in_the_kernel(impl, C, role, block, summed, monkeypatch):
    """The gradient for a one-channel input sums its C channels: in the kernel whenever whole
    samples fit the row tiles (no [Z * C, dim] buffer), deterministic either way."""
    if block:
        monkeypatch.setattr(gaunt_kernels, "launch_shape", lambda problem, rows, target="out", dtype="float32", spec=None:
                            (block, 1, default_block_p(problem)))
        monkeypatch.setattr(gaunt_separable, "launch_shape", lambda problem, rows, target, dtype, spec: (block, 1, 1))
    per, one = f"{C}x0e+{C}x1o+{C}x2e", "0e+1o"
    problem = GauntProblem(one if role == "x1" else per, one if role == "x2" else per, lmax_out=2,
                           implementation=impl)
    assert reduces_channels(problem, role) == summed
    Z, i = (5 if C < 8 else 2), ("x1", "x2").index(role)
    x = [torch.randn(Z, problem.irreps(r).dim, dtype=F64) for r in ("x1", "x2", "out")]
    dim = problem.irreps(role).dim
    for dtype, tol in ((F64, 1e-10), (torch.float32, 1e-5), (torch.bfloat16, 1e-2)):
        xr = [t.to(dtype).to(F64).requires_grad_() for t in x]
        (want,) = torch.autograd.grad((gaunt_reference(problem, xr[0], xr[1]) * xr[2]).sum(), [xr[i]])
        args = [x[1 - i].to(dtype), x[2].to(dtype)]
        got, shapes = produce_spied(problem, derivative_spec(FORWARD, i), args, Z)
        assert shapes == [(Z if summed else Z * C, dim)]
        assert got.dtype == dtype and got.shape == (Z, dim)
        assert rel(got, want) < tol, dtype
        if dtype == torch.float32:
            again, _ = produce_spied(problem, derivative_spec(FORWARD, i), args, Z)
            assert torch.equal(got, again)  # bit-identical run to run


@pytest.mark.parametrize("impl", ["grid", "fft", "separable"])
def test_broadcast_input_derivatives_fp64(impl):
    """Backward and double backward of a product with a one-channel x2 over 4 channels: every
    producer that targets x2 sums the channels in the kernel."""
    tri, ref = pair("4x0e+4x1o", "0e+1o", lmax_out=2, implementation=impl)
    tri.double(), ref.double()
    assert reduces_channels(tri.kernel_problem, "x2")
    x1 = torch.randn(3, tri.irreps_in1.dim, dtype=F64, requires_grad=True)
    x2 = torch.randn(3, tri.irreps_in2.dim, dtype=F64, requires_grad=True)
    cot = torch.randn(3, tri.irreps_out.dim, dtype=F64)
    (d, dd), (dr, ddr) = grads(tri, x1, x2, cot), grads(ref, x1, x2, cot)
    for a, b in zip(d + dd, dr + ddr):
        assert rel(a, b) < 1e-10


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("impl", ["grid", "sparse", "fft", "separable"])
def test_opcheck(impl, dtype):
    gp = compile_gaunt("2x0e+2x1o", "0e+1o", lmax_out=2, implementation=impl)
    x1 = torch.randn(3, gp.irreps_in1.dim, dtype=dtype, requires_grad=True)
    x2 = torch.randn(3, gp.irreps_in2.dim, dtype=dtype, requires_grad=True)
    torch.library.opcheck(torch.ops.tritp.gaunt.default,
                          (gp.key, FORWARD, 3, dtype, [x1, x2] + gp._tables(dtype)))


@pytest.mark.parametrize("impl", ["grid", "separable"])
def test_torch_compile_fullgraph_forward_backward(impl):
    gp = compile_gaunt("2x0e+2x1o", "0e+1o", lmax_out=2, implementation=impl, backend="triton").double()
    err_y, err_g = compiled_square_loss_errors(gp)
    assert err_y < 1e-12 and err_g < 1e-10


@pytest.mark.parametrize("impl, launch", [(i, lc) for i in ("grid", "fft") for lc in ((64, 8, 32), (16, 4, 16))]
                         + [("separable", (128, 4, 3)), ("separable", (16, 4, 2))],
                         ids=["grid-gpu-L8-rung", "grid-small", "fft-gpu-L8-rung", "fft-small", "separable-gpu-L8",
                              "separable-small"])
def test_explicit_launch_matches_the_reference(impl, launch):
    """gaunt_produce(launch=(BLOCK_R, warps, BLOCK_P or passes)) -- the GPU defaults' shapes,
    run by the interpreter -- gives the reference's forward and x2 gradient; a channel-summing
    producer over C=48 still gets 16-row tiles (64 would break the kernel's whole-sample assert)."""
    problem = GauntProblem("48x0e+48x1o+48x2e", "0e+1o+2e", lmax_out=2, implementation=impl)
    Z = 2
    x = [torch.randn(Z, problem.irreps(r).dim, dtype=F64) for r in ("x1", "x2", "out")]
    xr = [t.clone().requires_grad_() for t in x]
    y = gaunt_reference(problem, xr[0], xr[1])
    (g2,) = torch.autograd.grad((y * xr[2]).sum(), [xr[1]])
    for dtype, tol in ((F64, 1e-10), (torch.float32, 1e-5)):
        got = gaunt_produce(problem, FORWARD, [x[0].to(dtype), x[1].to(dtype)], Z, launch=launch)
        assert rel(got, y) < tol
        got, shapes = produce_spied(problem, derivative_spec(FORWARD, 1), [x[0].to(dtype), x[2].to(dtype)], Z,
                                    launch=launch)
        assert shapes == [(Z, problem.irreps("x2").dim)]  # summed in the kernel
        assert rel(got, g2) < tol
