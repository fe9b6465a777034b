"""The torch ops ``tritp::produce`` / ``tritp::produce_triton``: opcheck on forward and
derivative specs, fake (meta) shapes for every target role, and the autocast policy.

Everything runs through the Triton interpreter on CPU (tests/conftest.py), so problems are
tiny: multiplicities 2, l <= 1, 3-4 batch rows.
"""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import tritp
import tritp.ops  # noqa: F401  (registers torch.ops.tritp.*; `import tritp` is lazy)
from tritp.codegen.cg_spec import compact, forward_spec
from tritp.kernels import target_dim

Z = 4

# The MACE-style channelwise product (uvu, one output segment per path) and a fully connected
# one (uvw), so both weight layouts (per-sample and shared) are exercised.
PER_SAMPLE = tritp.Problem.channelwise("2x0e+2x1o", "0e+1o", "0e+1o")
SHARED = tritp.Problem.fully_connected("2x0e+2x1o", "0e+1o", "2x0e+2x1o")
PROBLEMS = {"per_sample": PER_SAMPLE, "shared": SHARED}


def role_tensor(problem, role, dtype, generator, requires_grad=True):
    """A random tensor of the shape the ops take for ``role``."""
    dim = target_dim(problem, role)
    shape = (dim,) if role == "w" and problem.shared_weights else (Z, dim)
    t = torch.randn(shape, dtype=torch.float64, generator=generator).to(dtype)
    return t.requires_grad_(requires_grad)


def op_args(problem, spec, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    tensors = [role_tensor(problem, r, dtype, g) for r in spec.roles]
    return (problem.key, spec.to_str(), Z, dtype, tensors)


def derivative_specs():
    """(label, spec): first derivatives of the forward producer w.r.t. each of x1, x2, w, and
    two second-order ones (what double backward of forces needs)."""
    fwd = forward_spec()
    out = []
    for i, name in enumerate(("x1", "x2", "w")):
        d, _ = compact(fwd.derivative(i))
        out.append((f"d/d{name}", d))
    d_x1, _ = compact(fwd.derivative(0))  # target x1, roles (x2, w, out)
    dd, _ = compact(d_x1.derivative(0))  # d/dx2 of the x1-gradient: target x2
    out.append(("d/dx1 then d/dx2", dd))
    dd_w, _ = compact(d_x1.derivative(1))  # d/dw of the x1-gradient: target w
    out.append(("d/dx1 then d/dw", dd_w))
    return out


def opcheck(args):
    # opcheck raises on failure; it also returns the per-test verdicts, all must be SUCCESS.
    result = torch.library.opcheck(torch.ops.tritp.produce.default, args)
    assert set(result.values()) == {"SUCCESS"}, result


# ---------------------------------------------------------------------------------------------
# opcheck
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weights", ["per_sample", "shared"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck_forward(dtype, weights):
    opcheck(op_args(PROBLEMS[weights], forward_spec(), dtype))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_opcheck_forward_half(dtype):
    # opcheck compares eager, fake and AOT-dispatch results in half precision; it passes here,
    # so bf16 and fp16 get the same full check as fp32/fp64.
    opcheck(op_args(PER_SAMPLE, forward_spec(), dtype))


@pytest.mark.parametrize("label,spec", derivative_specs(), ids=[s[0] for s in derivative_specs()])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_opcheck_derivative_half(dtype, label, spec):
    opcheck(op_args(PER_SAMPLE, spec, dtype))


@pytest.mark.parametrize("label,spec", derivative_specs(), ids=[s[0] for s in derivative_specs()])
@pytest.mark.parametrize("weights", ["per_sample", "shared"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck_derivative(dtype, weights, label, spec):
    # Regression (fixed in f3e8191): with shared weights the "d/dw" specs return a 1-D [numel]
    # tensor; opcheck back-propagates an expanded (stride-0) cotangent into it, which the kernel
    # used to read as contiguous (garbage / nan gradients). See test_noncontiguous_shared_weights.
    opcheck(op_args(PROBLEMS[weights], spec, dtype))


@pytest.mark.parametrize("make", ["strided", "expanded"])
def test_noncontiguous_shared_weights(make):
    # Regression (fixed in f3e8191): a 1-D shared weight vector that is a strided view (w[::2])
    # or an expanded scalar gave wrong outputs; kernels.produce only made 2-D tensors contiguous.
    tp = tritp.compile("2x0e+2x1o", "0e+1o", "2x0e+2x1o", internal_weights=False)
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(Z, tp.irreps_in1.dim, dtype=torch.float64, generator=g)
    x2 = torch.randn(Z, tp.irreps_in2.dim, dtype=torch.float64, generator=g)
    if make == "strided":
        w = torch.randn(2 * tp.weight_numel, dtype=torch.float64, generator=g)[::2]
    else:
        w = torch.randn(1, dtype=torch.float64, generator=g).expand(tp.weight_numel)
    assert not w.is_contiguous()
    torch.testing.assert_close(tp(x1, x2, w), tritp.reference_tp(tp.problem, x1, x2, w), rtol=1e-10, atol=1e-10)


def test_opcheck_forward_without_weights():
    p = tritp.Problem.full("2x0e+1x1o", "0e+1o")  # weightless paths: the spec has no w role
    assert p.weight_numel == 0
    opcheck(op_args(p, forward_spec(False), torch.float64))


@pytest.mark.parametrize("weights", ["per_sample", "shared"])
def test_op_values_match_reference(weights):
    """opcheck checks consistency, not values: the forward op against the float64 reference."""
    p = PROBLEMS[weights]
    key, spec, z, dtype, tensors = op_args(p, forward_spec(), torch.float64)
    y = torch.ops.tritp.produce(key, spec, z, dtype, tensors)
    ref = tritp.reference_tp(p, *tensors)
    torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-10)


def test_op_gradients_match_reference():
    """Backward and double backward through the op agree with autograd through the reference."""
    p = PER_SAMPLE
    key, spec, z, dtype, tensors = op_args(p, forward_spec(), torch.float64)
    g = torch.Generator().manual_seed(1)
    cot = torch.randn(Z, p.irreps_out.dim, dtype=torch.float64, generator=g)

    def grads(fn):
        y = fn(*tensors)
        first = torch.autograd.grad((y * cot).sum(), tensors, create_graph=True)
        second = torch.autograd.grad(sum((f ** 2).sum() for f in first), tensors)
        return first + second

    ours = grads(lambda *t: torch.ops.tritp.produce(key, spec, z, dtype, list(t)))
    ref = grads(lambda *t: tritp.reference_tp(p, *t))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# fake implementation
# ---------------------------------------------------------------------------------------------


def all_specs():
    fwd = forward_spec()
    specs = [("out", fwd)] + [(label, s) for label, s in derivative_specs()]
    return specs


@pytest.mark.parametrize("weights", ["per_sample", "shared"])
def test_fake_shapes_every_role(weights):
    """The fake impl gives the real output's shape and dtype for every target role
    (out, x1, x2, w; shared weights reduce to ``[numel]``), without running a kernel."""
    p = PROBLEMS[weights]
    targets = set()
    for label, spec in all_specs():
        for out_dtype in (torch.float32, torch.float64):
            key, s, z, _, tensors = op_args(p, spec, torch.float64)
            tensors = [t.detach() for t in tensors]
            real = torch.ops.tritp.produce(key, s, z, out_dtype, tensors)
            mode = FakeTensorMode()
            fake_in = [mode.from_tensor(t) for t in tensors]
            with mode:
                fake = torch.ops.tritp.produce(key, s, z, out_dtype, fake_in)
            assert fake.shape == real.shape, (label, spec.target)
            assert fake.dtype == real.dtype == out_dtype, (label, spec.target)
            expected = ((p.weight_numel,) if spec.target == "w" and p.shared_weights
                        else (Z, target_dim(p, spec.target)))
            assert tuple(fake.shape) == expected, (label, spec.target)
            targets.add(spec.target)
    assert targets == {"out", "x1", "x2", "w"}


def test_fake_runs_no_kernel_for_large_batch():
    """A fake call with a huge Z returns instantly (the interpreter would take minutes)."""
    p = PER_SAMPLE
    big = 10**7
    with FakeTensorMode():
        tensors = [torch.empty(big, p.irreps_in1.dim), torch.empty(big, p.irreps_in2.dim),
                   torch.empty(big, p.weight_numel)]
        y = torch.ops.tritp.produce(p.key, forward_spec().to_str(), big, torch.float32, tensors)
    assert tuple(y.shape) == (big, p.irreps_out.dim)


# ---------------------------------------------------------------------------------------------
# the Triton-visible op (CUDA path): registered with the same schema; not run on CPU
# ---------------------------------------------------------------------------------------------


def test_produce_triton_has_same_schema():
    a = torch.ops.tritp.produce.default._schema
    b = torch.ops.tritp.produce_triton.default._schema
    assert a.name == "tritp::produce" and b.name == "tritp::produce_triton"
    assert [(x.name, str(x.type)) for x in a.arguments] == [(x.name, str(x.type)) for x in b.arguments]
    assert [str(x.type) for x in a.returns] == [str(x.type) for x in b.returns] == ["Tensor"]
    assert str(a).replace("tritp::produce(", "X(") == str(b).replace("tritp::produce_triton(", "X(")
    assert str(a) == ("tritp::produce(str key, str spec, SymInt Z, ScalarType out_dtype, Tensor[] tensors) "
                      "-> Tensor")


# ---------------------------------------------------------------------------------------------
# autocast policy (module level): run in the autocast dtype, fp32 accumulation, output in the
# autocast dtype; outside autocast the input dtype is kept
# ---------------------------------------------------------------------------------------------


def module_inputs(tp, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(Z, tp.irreps_in1.dim, dtype=torch.float64, generator=g).to(dtype)
    x2 = torch.randn(Z, tp.irreps_in2.dim, dtype=torch.float64, generator=g).to(dtype)
    w = torch.randn(Z, tp.weight_numel, dtype=torch.float64, generator=g).to(dtype)
    return x1, x2, w


def rel_err(y, ref):
    y, ref = y.detach().double(), ref.detach().double()
    return float((y - ref).norm() / ref.norm())


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_autocast_half_output_and_accuracy(half):
    tp = tritp.compile("2x0e+2x1o", "0e+1o", "0e+1o", mode="channelwise")
    x1, x2, w = (t.requires_grad_() for t in module_inputs(tp))
    y32 = tp(x1, x2, w)
    assert y32.dtype == torch.float32  # outside autocast fp32 stays fp32
    with torch.autocast("cpu", dtype=half):
        y16 = tp(x1, x2, w)
    assert y16.dtype == half
    assert rel_err(y16, y32) <= 1e-2
    assert (y16.double() - y32.double()).abs().max() <= 1e-2 * y32.abs().max() * 4
    # gradients flow back through the casts to the fp32 leaves, in fp32
    gx1, gx2, gw = torch.autograd.grad(y16.float().sum(), (x1, x2, w))
    r1, r2, rw = torch.autograd.grad(y32.sum(), (x1, x2, w))
    for g, r in ((gx1, r1), (gx2, r2), (gw, rw)):
        assert g.dtype == torch.float32
        assert rel_err(g, r) <= 2e-2


def test_autocast_shared_weights_bf16():
    tp = tritp.compile("2x0e+2x1o", "0e+1o", "2x0e+2x1o")  # fully connected, internal fp32 weights
    x1, x2, _ = module_inputs(tp)
    y32 = tp(x1, x2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16 = tp(x1, x2)
    assert y32.dtype == torch.float32 and y16.dtype == torch.bfloat16
    assert rel_err(y16, y32) <= 1e-2


def test_autocast_fp64_inputs_stay_fp64():
    # Regression (fixed in f3e8191): the policy is "as for matmul", and torch's autocast never
    # casts float64 tensors; TensorProduct.forward used to cast them to the autocast dtype.
    a = torch.randn(3, 3, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (a @ a).dtype == torch.float64  # torch's rule
    tp = tritp.compile("2x0e+2x1o", "0e+1o", "0e+1o", mode="channelwise")
    x1, x2, w = module_inputs(tp, torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = tp(x1, x2, w)
    assert y.dtype == torch.float64


def test_bf16_inputs_without_autocast_match_reference():
    """bf16 tensors passed directly: bf16 output within 1e-2 of the float64 reference."""
    tp = tritp.compile("2x0e+2x1o", "0e+1o", "0e+1o", mode="channelwise")
    x1, x2, w = module_inputs(tp, torch.bfloat16)
    y = tp(x1, x2, w)
    assert y.dtype == torch.bfloat16
    ref = tritp.reference_tp(tp.problem, x1.double(), x2.double(), w.double())
    assert rel_err(y, ref) <= 1e-2


def test_building_modules_imports_no_compiler():
    """A new process builds a module without importing torch._inductor / torch._dynamo: torch's
    triton_op scans the decorated function's source for kernels through an Inductor import
    (3.7 s on a 2-core CPU); ours are generated at run time, so tritp skips the scan."""
    import subprocess
    import sys

    code = ("import sys, torch, tritp\n"
            "tp = tritp.compile('8x0e+8x1o', '0e+1o', '8x0e+8x1o', mode='channelwise')\n"
            "conv = tritp.compile_conv('8x0e', '0e', '8x0e', mode='channelwise')\n"
            "assert hasattr(torch.ops.tritp, 'produce_triton') and hasattr(torch.ops.tritp, 'conv_produce_triton')\n"
            "print(sorted(m for m in ('torch._inductor', 'torch._dynamo') if m in sys.modules))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
