"""Compile many generated kernels at once in worker processes.

Threads (``kernels.compile_all``) overlap the parts of a Triton compile that release the GIL
(the MLIR and LLVM passes, ptxas), but the front end that walks the kernel's Python AST holds
it: about a fifth of a compile, which caps threads at about 4x however many cores there are.
A precompile of a whole benchmark suite or of an autotuner stage is hundreds of compiles, so on
a machine with many cores they go to ``python -m tritp.compile_pool`` workers instead.

A worker never touches the GPU: it is told the parent's compile target and answers Triton's
driver questions with it, then runs the same ``JITFunction.warmup`` the parent would, on the
same generated file, arguments and options. Triton keys its on-disk cache on exactly those, so
the compiled kernel lands in the cache the parent reads (same environment, so same
``TRITON_CACHE_DIR``), and the parent's first launch loads it instead of compiling. Workers are
plain subprocesses, not ``multiprocessing``: spawning those re-imports the user's main script.

Example (what ``kernels.compile_all`` does with 8+ jobs on an 8+ core machine)::

    n = compile_in_processes(jobs, timeout=60.0, ignore_errors=True)
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import nullcontext


def file_backed(kernel) -> bool:
    """A ``@triton.jit`` function defined in a file (a worker loads it from there)."""
    code = getattr(getattr(kernel, "fn", None), "__code__", None)
    return code is not None and os.path.isfile(code.co_filename)


def use_processes(n_jobs: int) -> bool:
    """Whether ``n_jobs`` compiles go to worker processes: ``TRITP_COMPILE_PROCESSES=1``
    always, ``=0`` never, unset when there are 8+ jobs and 8+ cores (a worker pays about 2 s
    importing torch, a compile takes 1-10 s)."""
    flag = os.environ.get("TRITP_COMPILE_PROCESSES", "")
    if flag in ("0", "1"):
        return flag == "1" and n_jobs > 0
    return n_jobs >= 8 and (os.cpu_count() or 1) >= 8


def _target(device):
    import torch
    from triton.runtime import driver

    with torch.cuda.device(device) if device.type == "cuda" else nullcontext():
        return driver.active.get_current_target()


def _partition(payloads: list, n: int) -> list:
    """Longest first onto the least loaded worker; a kernel's source size stands in for its
    compile time."""
    size = {i: os.path.getsize(p[1]) for i, p in enumerate(payloads)}
    loads, parts = [0] * n, [[] for _ in range(n)]
    for i in sorted(size, key=size.get, reverse=True):
        w = loads.index(min(loads))
        parts[w].append(payloads[i])
        loads[w] += size[i]
    return [p for p in parts if p]


def compile_in_processes(jobs, timeout: float | None = None, ignore_errors: bool = False) -> int:
    """Compile ``(kernel, args, grid, options, device)`` jobs (as ``kernels.compile_all``
    takes them) in up to ``os.cpu_count()`` worker processes; returns how many compiled. After
    ``timeout`` seconds the workers are stopped (Triton writes its cache atomically, so a
    stopped compile leaves nothing half-written). A failed compile raises ``RuntimeError``
    with the worker's message unless ``ignore_errors``."""
    targets = {}
    payloads = []
    for i, (k, args, grid, options, device) in enumerate(jobs):
        if device not in targets:
            targets[device] = _target(device)
        payloads.append((i, k.fn.__code__.co_filename, k.fn.__name__, args, grid, options, targets[device]))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # the parent's import path (a script may have put a checkout on it), so workers import the same tritp
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    deadline = None if timeout is None else time.monotonic() + timeout
    results, workers = {}, []
    try:
        for part in _partition(payloads, min(len(payloads), os.cpu_count() or 1)):
            log = tempfile.TemporaryFile()
            proc = subprocess.Popen([sys.executable, "-m", "tritp.compile_pool"], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=log, env=env)
            reader = threading.Thread(target=_read, args=(proc, results), daemon=True)
            workers.append((proc, reader, log))
            proc.stdin.write(pickle.dumps(part))
            proc.stdin.close()
            reader.start()
        for proc, reader, _ in workers:
            reader.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
    finally:  # at the deadline, or interrupted: no worker outlives the call
        for proc, _, _ in workers:
            if proc.poll() is None:
                proc.kill()
    for proc, _, log in workers:
        proc.wait()
        log.seek(0)
        err = log.read().decode(errors="replace")
        log.close()
        if proc.returncode not in (0, -9) and not ignore_errors and not results:
            raise RuntimeError(f"tritp compile worker failed (exit {proc.returncode}): {err[-2000:]}")
    failed = [r for r in results.values() if r is not True]
    if failed and not ignore_errors:
        raise RuntimeError(f"compiling a kernel failed in a worker process: {failed[0]}")
    return sum(r is True for r in results.values())


def _read(proc, results: dict) -> None:
    for line in proc.stdout:
        r = json.loads(line)
        results[r["i"]] = True if r["ok"] else r["error"]


class CompileTarget:
    """A stand-in for Triton's active driver that answers with a compile target and launches
    nothing: ``triton.runtime.driver.set_active(CompileTarget(GPUTarget("cuda", 90, 32)))``
    lets ``JITFunction.warmup`` bind, key and compile kernels for that GPU on a machine without
    one (the workers here, and ``benchmarks/first_call.py``)."""

    def __init__(self, target):
        self.target = target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return self.target


def _worker() -> None:
    """Read pickled jobs on stdin; compile each; answer one JSON line per job on stdout."""
    os.environ.pop("TRITON_INTERPRET", None)
    jobs = pickle.loads(sys.stdin.buffer.read())
    from pathlib import Path

    from triton.runtime import driver

    from .kernels import load_generated

    for i, path, name, args, grid, options, target in jobs:
        driver.set_active(CompileTarget(target))
        try:
            getattr(load_generated(Path(path)), name).warmup(*args, grid=grid, **options)
            answer = {"i": i, "ok": True}
        except Exception as e:  # noqa: BLE001 - reported to the parent, which decides
            answer = {"i": i, "ok": False, "error": f"{name} in {Path(path).name}: {type(e).__name__}: {e}"[:2000]}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    _worker()
