"""Compile generated kernels for an H100 (sm_90) without a GPU.

The Triton interpreter runs kernels the GPU compiler rejects (a loop-carried variable that
changes type, say), so the interpreter tests alone cannot vouch for the GPU. Triton's NVIDIA
backend compiles to cubin here without a driver (its bundled ptxas), so representative kernels
of every family are compiled all the way in a subprocess with the interpreter off.

The kernels are not named by hand: each goes through its real launcher (``produce``,
``produce_conv``, ``gaunt_produce``) on CPU tensors, whose launch is recorded instead of run,
and the record is bound the way ``JITFunction.run`` binds a launch (Triton 3.9's binder). So
the compiled signature -- pointer dtypes, int widths, ``1`` as a constexpr, 16-divisibility
hints, ``IDX64``, block sizes, warps -- is the one a GPU launch of the same tensors compiles."""

import os
import re
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import re
    from contextlib import contextmanager
    import torch, triton
    import tritp.gaunt_kernels
    import tritp.jit_key
    import tritp.kernels
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import JITFunction, create_function_from_signature
    from tritp.jit_key import formula_key
    from tritp.codegen import Problem
    from tritp.codegen.cg_spec import compact, forward_spec
    from tritp.codegen.gaunt_problem import GauntProblem
    from tritp.cli_codegen import producer_specs
    from tritp.conv_index import conv_graph
    from tritp.conv_kernels import produce_conv
    from tritp.gaunt_launch import gaunt_produce
    from tritp.kernels import produce, target_dim

    TARGET = GPUTarget("cuda", 90, 32)
    BACKEND = make_backend(TARGET)
    failures, done, idx64, kernels = [], 0, False, {}

    class Recorder:
        """Stands in for ``wrap_triton``: ``kernel[grid](...)`` records instead of launching."""
        def __init__(self):
            self.calls = []
        def __call__(self, fn):
            rec = self
            class Launch:
                def __getitem__(self, grid):
                    return lambda *args, **kw: rec.calls.append((fn, args, kw))
            return Launch()

    def compile_launches(label, launch, expect=()):
        """Run ``launch(wrap)`` and compile what it launched; ``expect``: ops (regexes) the ttgir must hold."""
        global done
        rec = Recorder()
        launch(rec)
        assert rec.calls, label
        for fn, args, kw in rec.calls:
            try:
                assert kw["IDX64"] == idx64, f"launched with IDX64={kw['IDX64']}"
                # the key tritp.jit_key gave it without parsing is the one Triton computes
                kernels[id(fn)] = kernels.get(id(fn), fn.hash is not None)
                want = JITFunction(fn.fn).cache_key
                assert fn.cache_key == want == formula_key(fn.src, fn.starting_line_number), "jit key"
                bound, spec, opts = create_function_from_signature(fn.signature, fn.params, BACKEND)(*args, **kw)
                options, sig, cx, attrs = fn._pack_args(BACKEND, kw, bound, spec, opts)
                ck = triton.compile(ASTSource(fn, sig, cx, attrs), target=TARGET, options=options.__dict__)
                assert ck.asm["cubin"], "empty cubin"
                for e in expect:
                    assert re.search(e, ck.asm["ttgir"]), f"no {e} in the ttgir"
                done += 1
            except Exception as exc:
                failures.append(f"{label}: {type(exc).__name__}: {str(exc)[:1500]}")

    @contextmanager
    def int64_offsets():
        """Launch as if some tensor had 2**31 elements (IDX64=True) without allocating one."""
        global idx64
        old = tritp.kernels.INT32_LIMIT  # the CG, conv and Gaunt launchers all read it there
        tritp.kernels.INT32_LIMIT = 1
        idx64 = True
        try:
            yield
        finally:
            tritp.kernels.INT32_LIMIT = old
            idx64 = False

    def tensors(problem, spec, Z, dtype=torch.float32, nodes=None):
        """One tensor per role of ``spec``: ``Z`` rows, ``nodes`` rows for a conv's node roles."""
        out = []
        for r in spec.roles:
            dim = target_dim(problem, r)
            rows = nodes if nodes and r in ("x1", "out") else Z
            out.append(torch.randn(dim, dtype=dtype) if r == "w" and problem.shared_weights else
                       torch.randn(rows, dim, dtype=dtype))
        return out

    def cg(label, problem, spec, Z=40, dtype=torch.float32, expect=()):
        compile_launches(label, lambda w: produce(problem, spec, tensors(problem, spec, Z, dtype), Z, wrap=w), expect)

    DOT = (r"= (tt\\.dot|ttng\\.warp_group_dot) ",)
    fwd = forward_spec()
    # segments of different widths (32 then 128 lanes): the loop-carried-type trap
    p = Problem.channelwise("32x0e+128x1o", "0e+1o", "0e+1o", shared_weights=False)
    bwd = [compact(fwd.derivative(i))[0] for i in range(3)]
    for s in [fwd] + bwd:
        cg(f"cw {s.to_str()}", p, s)
    dbl = dict(producer_specs(p, "dbl"))
    cg("cw double backward d(grad w)/d x1", p, dbl["double backward: d(grad w)/d x1"])
    # the forces kernel split by instruction into partial slabs (cg_pieces.Partial): 4 pieces
    import tritp.codegen.cg_pieces as cg_pieces
    cg_pieces.PIECE_BUDGET, budget = 60, cg_pieces.PIECE_BUDGET
    mace = Problem.channelwise("8x0e+8x1o+8x2e", "0e+1o+2e", "0e+1o+2e", shared_weights=False)
    cg("partial forces kernel", mace, bwd[1])
    cg_pieces.PIECE_BUDGET = budget
    # the fused backward (cg_fused): whole, fp64, and in pieces (3: later pieces add to grad x2)
    import tritp.codegen.cg_fused as cg_fused
    fused = cg_fused.fused_backward(p, {"x1", "w", "x2"})
    cg("fused backward", p, fused)
    cg("fused backward fp64", p, fused, dtype=torch.float64)
    cg("fused backward's derivative d/d out (three terms)", p, compact(fused.derivative(3))[0])
    cg_fused.PIECE_BUDGET, fbudget = 60, cg_fused.PIECE_BUDGET
    cg("fused backward in pieces", mace, cg_fused.fused_backward(mace, {"x1", "w", "x2"}))
    cg_fused.PIECE_BUDGET = fbudget
    # the fused backward's own backward (fused_specs.fused_second): seven tensors, terms of two
    second = cg_fused.fused_second(p, fused, {0, 1, 2}).spec
    cg("fused second order (x1+w+x2 of the fused backward)", p, second)
    # tensor-core paths: uvw with shared weights, forward and the weight-gradient GEMM; fp64 dot
    q = Problem.all_paths("16x0e+16x1o", "16x0e+16x1o", "16x0e+16x1o", "uvw")
    cg("uvw forward", q, fwd, expect=DOT)
    cg("uvw grad w", q, compact(fwd.derivative(2))[0], expect=DOT)
    cg("uvw forward fp64", q, fwd, dtype=torch.float64, expect=DOT)

    # fused convolution: 24 edges on 10 nodes, int64 (atomic) and int32 (segment) indices
    E, N = 24, 10
    src, dst = torch.randint(0, N, (E,)), torch.randint(0, N, (E,))
    graph32 = list(conv_graph(src.int(), dst.int(), N).tensors())

    def conv(label, spec, scatter, graph, expect=()):
        compile_launches(label, lambda w: produce_conv(p, spec, scatter, tensors(p, spec, E, nodes=N),
                                                       graph, N, N, wrap=w), expect)

    conv("conv segment forward", fwd, "deterministic", graph32)
    conv("conv atomic forward", fwd, "atomic", [src, dst], expect=(r"= tt\\.atomic_rmw ",))
    conv("conv atomic grad x1", bwd[0], "atomic", [src, dst], expect=(r"= tt\\.atomic_rmw ",))
    conv("conv fused edge backward (grad x2 + grad w)", cg_fused.fused_backward(p, {"x2", "w"}), "deterministic",
         graph32)
    conv("conv fused atomic backward (grad x1 + grad w + grad x2)", cg_fused.fused_backward(p, {"x1", "x2", "w"}),
         "atomic", [src, dst], expect=(r"= tt\\.atomic_rmw ",))
    # deterministic: x1's rows per edge, then their segment sum (two kernels)
    conv("conv fused deterministic backward + segment sum", cg_fused.fused_backward(p, {"x1", "x2", "w"}),
         "deterministic", graph32)
    conv("conv fused second order, atomic", second, "atomic", [src, dst], expect=(r"= tt\\.atomic_rmw ",))
    conv("conv fused second order, deterministic + segment sum", second, "deterministic", graph32)
    with int64_offsets():
        cg("cw forward int64", p, fwd)
        cg("fused backward int64", p, fused)
        conv("conv segment forward int64", fwd, "deterministic", graph32)

    # Gaunt grid and fft: one fused GEMM kernel per producer (sparse: a CG kernel without
    # weights); x2 has one channel, broadcast over the C (16 unless given) of x1. Gradients for
    # x2 sum the channels: in the kernel (tl.reshape + tl.sum) when whole samples fit its row
    # tiles -- C=16 (4 samples a program), C=128 (two 64-row tiles a sample), C=48 (three 16-row
    # tiles) -- else through partial rows (C=3)
    SUM = (r"= tt\\.reshape ", r"tt\\.reduce")
    def gaunt(label, impl, spec, dtype=torch.float32, precision="ieee", expect=DOT, C=16, lo=2, launch=None):
        g = GauntProblem(f"{C}x0e+{C}x1o+{C}x2e", "0e+1o+2e", lmax_out=lo, implementation=impl, precision=precision)
        Z = 40
        dims = {r: g.irreps(r).dim for r in ("x1", "x2", "out")}
        args = [torch.randn(1 if r == "x2" else Z, dims[r], dtype=dtype) for r in spec.split(":")[1].split(",")]
        compile_launches(label, lambda w: gaunt_produce(g, spec, args, Z, wrap=w, launch=launch), expect)

    gaunt("gaunt grid forward bf16", "grid", "out:x1,x2", torch.bfloat16)
    gaunt("gaunt grid grad x2 (summed over channels)", "grid", "x2:x1,out", expect=DOT + SUM)
    gaunt("gaunt fft grad x2 C=128 fp64", "fft", "x2:x1,out", torch.float64, expect=DOT + SUM, C=128)
    gaunt("gaunt grid grad x2 C=48 bf16", "grid", "x2:x1,out", torch.bfloat16, expect=DOT + SUM, C=48)
    gaunt("gaunt grid grad x2 C=3 (partial rows)", "grid", "x2:x1,out", C=3)
    gaunt("gaunt fft grad x1 tf32", "fft", "x1:x2,out", precision="tf32", expect=(r"= ttng\\.warp_group_dot ",))
    gaunt("gaunt grid forward tf32x3", "grid", "out:x1,x2", precision="tf32x3", expect=(r"= ttng\\.warp_group_dot ",))
    gaunt("gaunt fft forward fp64", "fft", "out:x1,x2", torch.float64)
    gaunt("gaunt sparse grad x2", "sparse", "x2:x1,out", expect=())
    # separable: a loop over the polar nodes, tables read in 16-byte quads split into scalars
    QUADS = (r"= tt\\.split ", r"scf\\.for")
    gaunt("gaunt separable forward bf16", "separable", "out:x1,x2", torch.bfloat16, expect=QUADS)
    gaunt("gaunt separable grad x2 (summed over channels)", "separable", "x2:x1,out", expect=QUADS + SUM)
    gaunt("gaunt separable grad x2 C=48 fp64", "separable", "x2:x1,out", torch.float64, expect=QUADS + SUM, C=48)
    gaunt("gaunt separable grad x2 C=3 (partial rows)", "separable", "x2:x1,out", expect=QUADS, C=3)
    # 5 nodes: two mirror pairs and the middle node, in two passes
    gaunt("gaunt separable forward, odd nodes, 2 passes", "separable", "out:x1,x2", expect=QUADS, lo=4,
          launch=(128, 4, 2))
    with int64_offsets():
        gaunt("gaunt grid forward int64", "grid", "out:x1,x2")
        gaunt("gaunt grid grad x2 int64 C=128", "grid", "x2:x1,out", expect=DOT + SUM, C=128)
        gaunt("gaunt separable grad x2 int64 C=128", "separable", "x2:x1,out", expect=QUADS + SUM, C=128)
    print("\\n".join(failures))
    print("compiled", done)
    print("kernels", len(kernels), "keyed", sum(kernels.values()), "formula", tritp.jit_key._verdict)
''')

# 44 kernels; the uvw forward (fp32, fp64) and weight gradient each launch as two pieces, the
# partial forces kernel as four (cg_pieces), the fused backward in pieces as three (cg_fused)
EXPECTED = 52


def test_generated_kernels_compile_for_sm90(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITP_CACHE_DIR"] = str(tmp_path)
    r = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert f"compiled {EXPECTED}" in r.stdout, r.stdout[-4000:]
    # every kernel was keyed before its launch (the first by Triton, which checked the formula)
    n = int(re.search(r"kernels (\d+)", r.stdout).group(1))
    assert f"kernels {n} keyed {n} formula True" in r.stdout, r.stdout[-4000:]
