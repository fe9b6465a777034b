"""Precompile through Triton's real ``warmup`` path for an H100, without a GPU.

``TensorProduct.precompile`` (and the autotuner's warm hook) hand launch plans to
``kernels.compile_all``, which runs ``JITFunction.warmup`` in parallel threads. Under the
interpreter that path returns early, and the other tests stub it, so nothing else exercises it
before a GPU does. Here a stand-in CUDA driver (current device 0, an sm_90 target, no launches)
lets Triton bind, key and compile the real kernels to cubin with its bundled ptxas, in threads,
in a subprocess with the interpreter off."""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver

    class StandInCuda:
        """What ``JITFunction.run(warmup=True)`` asks of the driver; nothing is launched."""
        def get_current_device(self):
            return 0
        def get_current_stream(self, device=None):
            return 0
        def get_current_target(self):
            return GPUTarget("cuda", 90, 32)

    driver.set_active(StandInCuda())

    import tritp.kernels as K
    from tritp.codegen import Problem
    from tritp.module import TensorProduct

    tp = TensorProduct(Problem.channelwise("16x0e+16x1o", "0e+1o", "0e+1o", shared_weights=False))
    before = set(K._compiled)
    n = tp.precompile(batch=50_000, directions=("fwd", "bwd"), device="cpu")
    kernels = [k for key, k in K._compiled.items() if key not in before]
    cached = sum(len(k.device_caches[0][0]) for k in kernels)  # Triton's own kernel cache
    again = tp.precompile(batch=50_000, directions=("fwd", "bwd"), device="cpu")
    print("compiled", n, "kernels", len(kernels), "cached", cached, "again", again)
''')


def test_precompile_compiles_in_parallel_through_triton_warmup(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITP_CACHE_DIR=str(tmp_path / "tritp"), TRITON_CACHE_DIR=str(tmp_path / "triton"),
               TRITON_DEFAULT_FP_FUSION="1", TRITP_PARALLEL_COMPILE="1")
    r = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    # forward + grad x1, grad x2, grad w: four kernels, each compiled once, into Triton's cache
    assert "compiled 4 kernels 4 cached 4 again 0" in r.stdout, r.stdout[-2000:]
