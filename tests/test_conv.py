"""Fused graph convolution (gather -> tensor product -> scatter-sum in one kernel), run through
the Triton interpreter on tiny graphs.

Every result is compared with the unfused float64 reference -- ``node_feats[src]`` -> dense
reference tensor product (:func:`tritp.reference_tp`) -> ``index_add`` at ``dst``, differentiated
by torch autograd -- at the design-notes tolerances (relative to the reference's max abs):
fp32 forward 1e-5, first and second derivatives 1e-4; fp64 1e-10.
"""

import pytest
import torch

import tritp.conv_kernels
import tritp.conv_segsum
import tritp.kernels
from tritp.codegen import Problem
from tritp.codegen.cg_spec import forward_spec
from tritp.codegen.conv_emit import ConvEmitter, emit_conv_producer
from tritp.conv_index import conv_graph
from tritp.conv_module import TensorProductConv, compile_conv
from tritp.tuning import Config

from support import FakeKernels

F64 = torch.float64
SMALL = ("2x0e+2x1o", "0e+1o", "0e+1o")
TOL = {torch.float32: (1e-5, 1e-4), torch.float64: (1e-10, 1e-10)}


def rel(a, ref):
    assert a.shape == ref.shape, (a.shape, ref.shape)
    a, ref = a.detach().to(F64), ref.detach().to(F64)
    scale = ref.abs().max().item()
    assert scale > 0, "degenerate reference: all zeros"
    return (a - ref).abs().max().item() / scale


def graph(n=6, e=18, n_src=None, seed=1, dtype=torch.int64):
    """Random edges (unsorted, repeated pairs allowed); node n-1 is isolated on both sides."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(0, (n_src or n) - 1, (e,), generator=g)
    dst = torch.randint(0, n - 1, (e,), generator=g)
    return src.to(dtype), dst.to(dtype)


def inputs(conv, n_src, e, dtype=F64):
    x = torch.randn(n_src, conv.irreps_in1.dim, dtype=F64)
    ea = torch.randn(e, conv.irreps_in2.dim, dtype=F64)
    if conv.weight_numel == 0:
        w = None
    else:
        w = torch.randn(conv.weight_numel if conv.shared_weights else (e, conv.weight_numel), dtype=F64)
    return [t.to(dtype).requires_grad_() if t is not None else None for t in (x, ea, w)]


def derivatives(f, ts, second=True):
    """Output, first derivatives (random cotangent) and second derivatives (random tangents) of
    ``f`` w.r.t. the tensors ``ts``; fixed seeds so two calls see the same directions."""
    gen = torch.Generator().manual_seed(7)
    y = f(*ts)
    go = torch.randn(y.shape, generator=gen, dtype=F64).to(y.dtype)
    live = [t for t in ts if t is not None]
    g1 = torch.autograd.grad(y, live, go, create_graph=second)
    if not second:
        return [y], list(g1)
    tangents = [torch.randn(g.shape, generator=gen, dtype=F64).to(g.dtype) for g in g1]
    s = sum((g * v).sum() for g, v in zip(g1, tangents))
    g2 = torch.autograd.grad(s, live, allow_unused=True)
    g2 = [torch.zeros_like(t) if g is None else g for g, t in zip(g2, live)]
    return [y], list(g1), g2


def compare(conv, dtype, src, dst, num_nodes, n_src=None, second=True):
    n_src = num_nodes if n_src is None else n_src
    ts = inputs(conv, n_src, src.shape[0], dtype)
    ref_ts = [t.detach().to(F64).requires_grad_() if t is not None else None for t in ts]
    got = derivatives(lambda *a: conv(*a, src, dst, num_nodes), ts, second)
    ref = derivatives(lambda *a: conv.unfused(*a, src, dst, num_nodes, backend="reference"), ref_ts, second)
    ftol, dtol = TOL[dtype]
    for level, (gs, rs, tol) in enumerate(zip(got, ref, (ftol, dtol, dtol))):
        for k, (a, b) in enumerate(zip(gs, rs)):
            if b.abs().max() == 0:  # e.g. d2/dw2 of a product linear in w
                assert a.abs().max() == 0
                continue
            assert rel(a, b) <= tol, (level, k, rel(a, b))
    return got


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("scatter", ["atomic", "deterministic"])
def test_matches_unfused_reference(scatter, dtype):
    conv = compile_conv(*SMALL, mode="channelwise", scatter=scatter)
    src, dst = graph()
    out = compare(conv, dtype, src, dst, 6)[0][0]
    assert out.dtype == dtype and out.shape == (6, conv.irreps_out.dim)
    assert torch.all(out[5] == 0)  # isolated node: zero row


def test_deterministic_is_bit_identical_and_order_free():
    conv = compile_conv(*SMALL, mode="channelwise", scatter="deterministic")
    src, dst = graph()
    torch.manual_seed(3)
    ts = inputs(conv, 6, src.shape[0], torch.float32)
    g = conv_graph(src, dst, 6)
    runs = [derivatives(lambda *a: conv(*a, src, dst, 6, graph=g), ts) for _ in range(2)]
    for a, b in zip(sum(runs[0], []), sum(runs[1], [])):
        assert torch.equal(a, b)
    # unsorted edges are sorted by the module, never rejected: a shuffle gives the same sums
    perm = torch.randperm(src.shape[0])
    y = conv(ts[0], ts[1][perm], ts[2][perm], src[perm], dst[perm], 6)
    assert rel(y, runs[0][0][0]) <= 1e-6


@pytest.mark.parametrize("scatter", ["atomic", "deterministic"])
def test_many_chunks_and_programs(monkeypatch, scatter):
    """BLOCK_Z = 2: atomic runs several edge blocks, deterministic loops over several edge
    chunks per node; BLOCK_C = 2 < 3 channels: a channel loop around the chunk loop."""
    monkeypatch.setattr(tritp.conv_kernels, "default_config", lambda *a: Config(block_z=2, block_c=2, num_warps=1))
    conv = compile_conv("3x0e+1x1o", "0e+1o", "0e+1o", mode="channelwise", scatter=scatter)
    src, dst = graph(n=4, e=9, seed=4)
    compare(conv, F64, src, dst, 4, second=False)


@pytest.mark.parametrize("scatter, rows", [("deterministic", "0"), ("deterministic", "1"), ("atomic", "1")],
                         ids=["deterministic-3d", "deterministic-rows", "atomic-rows"])
def test_loop_groups_and_tile_forms_to_second_order(monkeypatch, scatter, rows):
    """A node's edge walk shared by a loop group of several output segments (x1's 8x1o under
    0e, 1o and 2e edge harmonics), beside one-channel targets (1x2e paths), over several edge
    chunks (BLOCK_Z = 2); in the 3D and the row-on-warp (TRITP_CONV_ROWS=1) tile forms: values,
    gradients and second derivatives against the unfused reference."""
    monkeypatch.setenv("TRITP_CONV_ROWS", rows)
    monkeypatch.setattr(tritp.conv_kernels, "default_config", lambda *a: Config(block_z=2, block_c=8, num_warps=1))
    conv = compile_conv("8x0e+8x1o+1x2e", "0e+1o+2e", "0e+1o+2e", mode="channelwise", scatter=scatter)
    src, dst = graph(n=5, e=13, seed=6)
    compare(conv, F64, src, dst, 5)


@pytest.mark.parametrize("scatter", ["atomic", "deterministic"])
def test_shared_internal_weights_bipartite_int32(scatter):
    """Shared weights (grad: fixed-order per-program partials), n_src != num_nodes, int32."""
    conv = compile_conv("2x0e+1x1o", "0e+1o", "2x0e+1x1o", mode="uvw", scatter=scatter)
    assert conv.internal_weights and conv.shared_weights
    src, dst = graph(n=4, e=12, n_src=7, dtype=torch.int32)
    x, ea = inputs(conv, 7, 12)[:2]
    y = conv(x, ea, None, src, dst, 4)
    y.pow(2).sum().backward()
    x2, ea2 = x.detach().requires_grad_(), ea.detach().requires_grad_()
    w2 = conv.weight.detach().clone().requires_grad_()
    yr = conv.unfused(x2, ea2, w2, src, dst, 4, backend="reference")
    yr.pow(2).sum().backward()
    assert rel(y, yr) <= 1e-10
    for a, b in ((x.grad, x2.grad), (ea.grad, ea2.grad), (conv.weight.grad, w2.grad)):
        assert rel(a, b) <= 1e-10


def test_non_contiguous_inputs():
    """Column slices (row stride > width), a transposed view and a strided shared-weight view."""
    conv = compile_conv("2x0e+1x1o", "0e+1o", "2x0e+1x1o", mode="uvw", internal_weights=False)
    src, dst = graph(n=4, e=8)
    x = torch.randn(4, 9, dtype=F64)[:, 2:7]
    ea = torch.randn(4, 8, dtype=F64).t()
    w = torch.randn(2 * conv.weight_numel, dtype=F64)[::2]
    assert not (x.is_contiguous() or ea.is_contiguous() or w.is_contiguous())
    y = conv(x, ea, w, src, dst, 4)
    assert rel(y, conv.unfused(x, ea, w, src, dst, 4, backend="reference")) <= 1e-10


def test_weightless_problem():
    p = Problem("2x0e+2x1o", "0e+1o", "2x0e+2x1o", [(0, 0, 0, "uvu", False), (1, 0, 1, "uvu", False)])
    for scatter in ("atomic", "deterministic"):
        conv = TensorProductConv(p, scatter=scatter)
        src, dst = graph(n=4, e=8)
        compare(conv, F64, src, dst, 4)


def test_int64_addressing(monkeypatch):
    """Offsets past the (lowered) int32 limit switch every mode to int64 arithmetic."""
    monkeypatch.setattr(tritp.kernels, "INT32_LIMIT", 16)
    for scatter in ("atomic", "deterministic"):
        conv = compile_conv(*SMALL, mode="channelwise", scatter=scatter)
        src, dst = graph(n=4, e=10)
        compare(conv, F64, src, dst, 4)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("scatter", ["atomic", "deterministic"])
def test_opcheck(scatter, dtype):
    """Schema, fake and autograd registrations of the opaque ops (``conv_produce_triton`` is
    the CUDA path: its aot-dispatch check needs a GPU, see design notes §4)."""
    p = Problem.channelwise("2x0e+1x1o", "0e+1o", "0e+1o", shared_weights=False)
    src, dst = graph(n=4, e=6)
    ts = [torch.randn(4, 5, dtype=dtype), torch.randn(6, 4, dtype=dtype), torch.randn(6, p.weight_numel, dtype=dtype)]
    ts = [t.requires_grad_() for t in ts]
    gl = [src, dst] if scatter == "atomic" else conv_graph(src, dst, 4).tensors()
    args = (p.key, forward_spec().to_str(), scatter, 4, 4, dtype, ts, gl + [src])
    torch.library.opcheck(torch.ops.tritp.conv_produce.default, args)
    torch.library.opcheck(torch.ops.tritp.conv_check_indices.default, (src, dst, 4, 4))


def test_emitter_modes():
    p = Problem.channelwise(*SMALL, shared_weights=False)
    f = forward_spec()
    src = emit_conv_producer(p, f, "float32", mode="atomic")
    assert "tl.atomic_add" in src and "tl.store" not in src
    seg = emit_conv_producer(p, f, "float32", mode="segment")
    walk = "for e0 in range(e_lo, e_hi, BLOCK_Z):"
    # one edge walk per channel loop group (the output paths of x1's 0e, of x1's 1o), each
    # gathering its x1 segment once per edge; without shared loads, one walk per output segment
    assert "tl.atomic_add" not in seg and seg.count(walk) == 2 and seg.count("tl.load(tp0") == 2
    own = emit_conv_producer(p, f, "float32", mode="segment", share_loads=False)
    assert own.count(walk) == 4 and own.count("tl.load(tp0") == 4
    with pytest.raises(ValueError, match="does not fit"):
        ConvEmitter(p, f, "float32", 64, "edge")
    with pytest.raises(ValueError, match="mode must be"):
        emit_conv_producer(p, f, "float32", mode="scatter")


@pytest.mark.parametrize("scatter", ["atomic", "deterministic"])
def test_tensor_core_path_with_shared_weights(scatter):
    """A fully connected (uvw) convolution with shared weights and 16 channels takes the
    tl.dot path (16-row minimum enforced by the launcher) in both scatter strategies."""
    conv = compile_conv("16x0e", "0e", "16x0e", mode="uvw", scatter=scatter)
    assert conv.shared_weights
    src, dst = graph()
    compare(conv, F64, src, dst, 6, second=False)


def test_tensor_core_precision_follows_torch(monkeypatch):
    """Shared-weight uvw convolutions mix channels with tl.dot: tf32 by default, full fp32
    under ``torch.set_float32_matmul_precision("highest")`` -- and the two are different sources."""
    p = compile_conv("16x0e", "0e", "16x0e", mode="uvw", scatter="atomic").problem
    paths = {}
    for prec, want in (("high", "tf32"), ("highest", "ieee")):
        monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda prec=prec: prec)
        paths[want] = tritp.conv_kernels.conv_source_path(p, forward_spec(), "float32", 64, "atomic")
        tritp.conv_kernels.get_conv_kernel(p, forward_spec(), "float32", 64, "atomic")
        src = paths[want].read_text()
        assert "tl.dot(" in src and f"DOT_PREC: tl.constexpr = '{want}'" in src
    assert paths["tf32"] != paths["ieee"]


def test_int64_check_counts_row_strides(monkeypatch):
    """Few rows far apart (a strided view) need int64 offsets even though the tensor is small."""
    seen = []
    real = tritp.conv_kernels.get_conv_kernel

    def spy(*a, **k):
        kernel = real(*a, **k)

        class Launcher:
            tritp_min_block_z = kernel.tritp_min_block_z

            def __getitem__(self, grid):
                def launch(*args, **kw):
                    seen.append(kw["IDX64"])
                    return kernel[grid](*args, **kw)
                return launch

        return Launcher()

    p = Problem.channelwise(*SMALL, shared_weights=False)
    src, dst = graph(n=4, e=6)
    x = torch.randn(4, 100, dtype=F64)[:, :p.irreps_in1.dim]  # rows 100 apart: reach 308
    ea, w = torch.randn(6, 4, dtype=F64), torch.randn(6, p.weight_numel, dtype=F64)
    plain = tritp.conv_kernels.produce_conv(p, forward_spec(), "atomic", [x.contiguous(), ea, w], [src, dst], 4, 4)
    monkeypatch.setattr(tritp.conv_kernels, "get_conv_kernel", spy)
    tritp.kernels.forget_recipes()  # the launch above memoized the unwrapped kernel
    monkeypatch.setattr(tritp.kernels, "INT32_LIMIT", 200)  # above every numel, below x's reach
    y = tritp.conv_kernels.produce_conv(p, forward_spec(), "atomic", [x, ea, w], [src, dst], 4, 4)
    assert seen == [True]
    assert torch.allclose(y, plain, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("scatter", ["atomic", "deterministic"])
def test_pieces(monkeypatch, scatter):
    """Split into pieces (tiny budget), each conv producer still equals the unfused reference,
    double backward included."""
    import tritp.codegen.cg_pieces as cg_pieces

    monkeypatch.setattr(cg_pieces, "PIECE_BUDGET", 12)
    conv = compile_conv("2x0e+2x1o", "0e+1o", "2x0e+2x1o", mode="channelwise", scatter=scatter)
    assert len(cg_pieces.plan_pieces(conv.problem, forward_spec())) > 1
    src, dst = graph(n=4, e=9)
    compare(conv, F64, src, dst, 4)


def test_default_config_is_register_aware(monkeypatch):
    """Conv kernels take the register-aware heuristic of the plain kernels: offline for sm_90,
    mace-large's deterministic grad x1 spilled 3.4 KB at the fixed 64 lanes x 4 warps and does
    not at the chosen 32 x 8 (strided tiles; with 3D tiles, the 3D ladder's 8 rows)."""
    from tritp.codegen.cg_spec import compact
    from tritp.tuning import heuristic

    p = Problem.channelwise("128x0e+128x1o+128x2e", "0e+1o+2e+3o", "0e+1o+2e+3o", shared_weights=False)
    g1 = compact(forward_spec().derivative(0))[0]
    c = tritp.conv_kernels.default_config("segment", 10**6, 10**5, False, p, g1)
    assert c == heuristic(10, False, p, g1) and c.block_z == 8
    monkeypatch.setenv("TRITP_COALESCE", "0")

    p = Problem.channelwise("128x0e+128x1o+128x2e", "0e+1o+2e+3o", "0e+1o+2e+3o", shared_weights=False)
    g1 = compact(forward_spec().derivative(0))[0]
    c = tritp.conv_kernels.default_config("segment", 10**6, 10**5, False, p, g1)
    assert c == heuristic(10, False, p, g1) and (c.block_c, c.num_warps) == (32, 8)


@pytest.mark.parametrize("scatter", ["atomic", "deterministic"])
def test_precompile_warms_every_kernel_without_launching(monkeypatch, scatter):
    """TensorProductConv.precompile compiles every kernel of forward, backward and double
    backward once, for the given graph size, launching nothing (fake kernels stand in for
    Triton's; the interpreter compiles nothing)."""
    conv = compile_conv(*SMALL, mode="channelwise", scatter=scatter)
    assert conv.precompile(num_nodes=10, num_edges=40) == 0  # interpreter
    fakes = FakeKernels()
    monkeypatch.setattr(tritp.conv_kernels, "get_conv_kernel", fakes)
    monkeypatch.setattr(tritp.conv_segsum, "get_segment_sum", lambda dtype: fakes(Problem.channelwise(
        "0e", "0e", "0e"), "segment sum", dtype))
    monkeypatch.setattr(tritp.kernels, "interpreter_active", lambda: False)
    monkeypatch.setattr(tritp.conv_kernels, "interpreter_active", lambda: False)
    n = conv.precompile(num_nodes=1000, num_edges=40_000, directions=("fwd", "bwd", "dbl"))
    warmed = fakes.warmed
    # forward, the fused x1+w+x2, x1+w, x1+x2 and w+x2, 3 gradients alone, 9 double-backward
    # producers, the derivatives of x1+w+x2 (2, 2, 2 and 3 terms) and the out-derivatives of the
    # three pairs (their other derivatives are among these), the backward of each fused kernel
    # in one kernel (fused_specs.fused_second: 4, and 3 more with all three gradients asked for);
    # deterministic: and the segment sum of x1's per-edge rows (one kernel, after each fused
    # kernel with an x1 part)
    assert n == len(warmed) == len(fakes.kernels) == {"atomic": 31, "deterministic": 32}[scatter]
    nrows = {w[1][-1] for w in warmed if w[0][1] != "segment sum"}  # the last argument: edges, or target nodes
    assert nrows <= {40_000, 1000} and 40_000 in nrows
