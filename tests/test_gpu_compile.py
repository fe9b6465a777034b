"""Compile generated kernels for an H100 (sm_90) without a GPU.

The Triton interpreter runs kernels the GPU compiler rejects (a loop-carried variable that
changes type, say), so the interpreter tests alone cannot vouch for the GPU. Triton's NVIDIA
backend compiles to cubin here without a driver (its bundled ptxas), so a few representative
kernels are compiled all the way in a subprocess with the interpreter off."""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import importlib.util, sys
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from tritp.codegen import Problem
    from tritp.codegen.cg_spec import compact, forward_spec
    from tritp.codegen import conv_emit
    from tritp.kernels import kernel_source

    def compile_file(path, block_z=16):
        s = importlib.util.spec_from_file_location("k" + str(abs(hash(str(path)))), path)
        m = importlib.util.module_from_spec(s)
        s.loader.exec_module(m)
        fn = m.tp_producer
        names = [p.name for p in fn.params]
        cx = {"IDX64": False, "BLOCK_Z": max(block_z, getattr(m, "MIN_BLOCK_Z", 1))}
        ptrs = {"g", "ptr", "eid", "nbr", "src", "dst", "tok"}
        sig = {}
        for n in names:
            if n in cx:
                sig[n] = "constexpr"
            elif (n[0] == "t" and n[1:].isdigit()) or n == "g":
                sig[n] = "*fp32"
            elif n in ptrs:
                sig[n] = "*i32"
            else:
                sig[n] = "i32"
        src = ASTSource(fn=fn, signature=sig, constexprs={(names.index(k),): v for k, v in cx.items() if k in names})
        ck = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "num_stages": 1})
        assert ck.asm["cubin"], path
        return ck

    done = 0
    # segments of different widths (32 then 128 lanes): the loop-carried-type trap
    p = Problem.channelwise("32x0e+128x1o", "0e+1o", "0e+1o", shared_weights=False)
    fwd = forward_spec()
    specs = [fwd] + [compact(fwd.derivative(i))[0] for i in range(3)]
    for spec in specs:
        compile_file(kernel_source(p, spec, "float32", 64)[0]); done += 1
    # tensor-core paths: uvw with shared weights, forward and the weight gradient GEMM
    q = Problem.all_paths("16x0e+16x1o", "16x0e+16x1o", "16x0e+16x1o", "uvw")
    for spec in (fwd, compact(fwd.derivative(2))[0]):
        ck = compile_file(kernel_source(q, spec, "float32", 64)[0]); done += 1
        assert "dot" in ck.asm["ttgir"]
    # fused convolution, deterministic (segment) forward
    path = kernel_source(p, fwd, "float32", 64)[0].with_name("conv_seg_check.py")
    path.write_text(conv_emit.emit_conv_producer(p, fwd, "float32", 64, "segment"))
    compile_file(path); done += 1
    print("compiled", done)
''')


def test_generated_kernels_compile_for_sm90(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITP_CACHE_DIR"] = str(tmp_path)
    r = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert "compiled 7" in r.stdout
