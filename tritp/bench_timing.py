"""The clocks of ``tritp bench``: how a benchmark turns a no-argument function into milliseconds,
and the copy bandwidth that sets each direction's I/O floor.

A timer is any ``timer(fn) -> ms``: :func:`cuda_timer` (``triton.testing.do_bench``, median) on a
GPU, :func:`wall_timer` (wall-clock median) anywhere, the Triton interpreter included;
:func:`default_timer` picks one for a device.

Example:
    >>> import torch
    >>> timer = default_timer(torch.device("cpu"), quick=True)
    >>> timer(lambda: sum(range(10))) >= 0
    True
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Optional

import torch

from .kernels import interpreter_active


def wall_timer(reps: int = 5, warmup: int = 1) -> Callable:
    """``timer(fn) -> ms``: median of ``reps`` wall-clock runs after ``warmup`` runs
    (synchronizing CUDA around each run). Works everywhere, the Triton interpreter included.

    Example:
        >>> wall_timer(reps=3)(lambda: sum(range(10))) >= 0
        True
    """
    def sync():
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()

    def timer(fn) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(max(1, reps)):
            sync()
            t = time.perf_counter()
            fn()
            sync()
            times.append((time.perf_counter() - t) * 1e3)
        return statistics.median(times)

    return timer


def cuda_timer(warmup_ms: int = 25, rep_ms: int = 100) -> Callable:
    """``timer(fn) -> ms`` from ``triton.testing.do_bench`` (median; needs a GPU driver)."""
    from triton.testing import do_bench

    def timer(fn) -> float:
        return float(do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))

    return timer


def default_timer(device: torch.device, quick: bool = False) -> Callable:
    """``do_bench`` on CUDA without the interpreter, else :func:`wall_timer` (``quick``: two
    runs, no warm-up, since the correctness check has already run every kernel once)."""
    if device.type == "cuda" and not interpreter_active():
        return cuda_timer(rep_ms=50 if quick else 100)
    return wall_timer(reps=2, warmup=0) if quick else wall_timer(reps=5, warmup=1)  # quick: the check warmed up


def copy_bandwidth(device: torch.device, timer: Callable, nbytes: Optional[int] = None) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus bytes written.

    Example:
        >>> copy_bandwidth(torch.device("cpu"), wall_timer(reps=1), 1 << 20) > 0
        True
    """
    n = nbytes or ((1 << 30) if device.type == "cuda" else (1 << 26))
    src = torch.rand(n // 4, device=device)
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src))
    return 2 * src.numel() * 4 / (ms * 1e-3)
