"""Precompile through Triton's real ``warmup`` path for an H100, without a GPU: in threads and in
worker processes.

``TensorProduct.precompile`` (and the autotuner's warm hook) hand launch plans to
``kernels.compile_all``, which runs ``JITFunction.warmup`` in parallel threads. Under the
interpreter that path returns early, and the other tests stub it, so nothing else exercises it
before a GPU does. Here a stand-in CUDA driver (current device 0, an sm_90 target, no launches)
lets Triton bind, key and compile the real kernels to cubin with its bundled ptxas, in threads
or in ``tritp.compile_pool`` workers, in a subprocess with the interpreter off."""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import sys
    import torch
    import triton.backends.nvidia.compiler as nvidia
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
    compiles = []  # front-end runs in this process: a kernel found in Triton's disk cache has none
    ttir = nvidia.CUDABackend.make_ttir
    nvidia.CUDABackend.make_ttir = staticmethod(lambda *a, **k: compiles.append(1) or ttir(*a, **k))

    import tritp.kernels as K
    from tritp.codegen import Problem
    from tritp.module import TensorProduct
    from tritp.tuning.tuner import direction_specs, make_inputs

    tp = TensorProduct(Problem.channelwise("16x0e+16x1o", "0e+1o", "0e+1o", shared_weights=False))
    before = set(K._compiled)
    n = tp.precompile(batch=50_000, directions=("fwd", "bwd"), device="cpu")
    jobs = [key for key in K._compiled if key not in before]
    here = len(compiles)
    kernels = [K._compiled[key] for key in jobs]
    cached = sum(len(k.device_caches[0][0]) for k in kernels)  # Triton's in-memory cache
    again = tp.precompile(batch=50_000, directions=("fwd", "bwd"), device="cpu")
    # a launch's own compile: none when the precompile compiled (here or in a worker)
    for _, spec in direction_specs(tp.problem, ("fwd", "bwd")):
        p = K.launch_plan(tp.problem, spec, make_inputs(tp.problem, spec, 2, torch.float32, torch.device("cpu")),
                          50_000, dry=True)
        for k in p.kernels:
            k.warmup(*(t.dtype if isinstance(t, torch.Tensor) else t for t in p.args), grid=p.grid, **p.options)
    print("compiled", n, "kernels", len(kernels), "here", here, "cached", cached, "again", again,
          "relaunch", len(compiles) - here)
''')


POOL_SCRIPT = SCRIPT.split("\nimport tritp.kernels as K")[0] + "\n" + textwrap.dedent('''
    import time
    import tritp.kernels as K
    from tritp.codegen import Problem
    from tritp.compile_pool import compile_in_processes
    from tritp.tuning.tuner import make_inputs
    from tritp.codegen.cg_spec import forward_spec

    p = Problem.channelwise("8x0e+8x1o", "0e+1o", "0e+1o", shared_weights=False)
    plan = K.launch_plan(p, forward_spec(), make_inputs(p, forward_spec(), 2, torch.float32, torch.device("cpu")),
                         1000, dry=True)
    args = tuple(t.dtype if isinstance(t, torch.Tensor) else t for t in plan.args)
    good = (plan.kernels[0], args, plan.grid, plan.options, plan.device)
    bad = (plan.kernels[0], args, plan.grid, dict(plan.options, num_warps=3), plan.device)  # not a power of 2
    print("ignored", compile_in_processes([good, bad], ignore_errors=True))
    try:
        compile_in_processes([bad])
    except RuntimeError as e:
        print("raised", "tp_producer" in str(e))
    t = time.monotonic()
    other = (plan.kernels[0], args, plan.grid, dict(plan.options, BLOCK_Z=64), plan.device)
    print("timeout", compile_in_processes([other], timeout=0.2), time.monotonic() - t < 5)
''')


def test_compile_pool_reports_failures_and_stops_at_its_timeout(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITP_CACHE_DIR=str(tmp_path / "tritp"), TRITON_CACHE_DIR=str(tmp_path / "triton"),
               TRITON_DEFAULT_FP_FUSION="1")
    r = subprocess.run([sys.executable, "-c", POOL_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert r.stdout.split() == ["ignored", "1", "raised", "True", "timeout", "0", "True"], r.stdout + r.stderr[-2000:]


def run(tmp_path, processes: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITP_CACHE_DIR=str(tmp_path / "tritp"), TRITON_CACHE_DIR=str(tmp_path / "triton"),
               TRITON_DEFAULT_FP_FUSION="1", TRITP_PARALLEL_COMPILE="1", TRITP_COMPILE_PROCESSES=processes)
    r = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return r.stdout


def test_precompile_compiles_in_threads_through_triton_warmup(tmp_path):
    # forward, the fused backwards (x1+w+x2, and w+x2 of a first layer), grad x1, grad x2, grad w:
    # six kernels, each compiled once,
    # into Triton's cache
    out = run(tmp_path, "0")
    assert "compiled 6 kernels 6 here 6 cached 6 again 0 relaunch 0" in out, out[-2000:]


def test_precompile_in_worker_processes_fills_the_cache_the_launches_read(tmp_path):
    """Workers compile everything (nothing here), and this process then finds every kernel in
    Triton's disk cache: the same cache key, so no compile at launch."""
    out = run(tmp_path, "1")
    assert "compiled 6 kernels 6 here 0 cached 0 again 0 relaunch 0" in out, out[-2000:]


def test_worker_processes_only_for_many_jobs_on_many_cores(monkeypatch):
    from tritp.compile_pool import use_processes

    monkeypatch.delenv("TRITP_COMPILE_PROCESSES", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert use_processes(8) and not use_processes(7)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert not use_processes(100)
    monkeypatch.setenv("TRITP_COMPILE_PROCESSES", "1")
    assert use_processes(1) and not use_processes(0)
    monkeypatch.setenv("TRITP_COMPILE_PROCESSES", "0")
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert not use_processes(100)


def test_jobs_are_shared_longest_first(tmp_path):
    """Source size stands in for compile time: the big kernels go to different workers."""
    from tritp.compile_pool import _partition

    payloads = []
    for i, size in enumerate([100, 900, 300, 800, 200]):
        f = tmp_path / f"k{i}.py"
        f.write_text("x" * size)
        payloads.append((i, str(f)))
    parts = _partition(payloads, 2)
    loads = sorted(sum(len(open(p[1]).read()) for p in part) for part in parts)
    assert loads == [1100, 1200] and sorted(p[0] for part in parts for p in part) == [0, 1, 2, 3, 4]
    assert len(_partition(payloads[:1], 4)) == 1  # no empty workers


def test_kernels_without_a_source_file_stay_in_threads(monkeypatch):
    """Only a @triton.jit function defined in a file can be loaded by a worker; anything else
    (a test's stand-in kernel, say) compiles in threads even when workers are asked for."""
    import torch

    import tritp.kernels as K
    from tritp.compile_pool import file_backed

    class Stub:
        def warmup(self, *args, grid, **kw):
            pass

    monkeypatch.setenv("TRITP_COMPILE_PROCESSES", "1")
    assert not file_backed(Stub())
    assert K.compile_all([(Stub(), (), (1,), {}, torch.device("cpu"))] * 9) == 9
