"""Load generated kernels from the source cache and launch them.

A generated source is a pure function of (generator code, problem key, producer spec, dtype,
block size), so its file is named by the hash of those: a second process finds the file and
imports it without deriving a coefficient or writing a line of source. Files are written
atomically; Triton needs them on disk to read the kernel's source.

Example:
    >>> import torch, tritp
    >>> from tritp.codegen.cg_spec import forward_spec
    >>> from tritp.kernels import produce
    >>> p = tritp.Problem.channelwise("4x0e", "0e", "0e")
    >>> x1, x2, w = torch.randn(3, 4), torch.randn(3, 1), torch.randn(3, 4)
    >>> produce(p, forward_spec(), [x1, x2, w], 3).shape  # doctest: +SKIP
    torch.Size([3, 4])
"""

from __future__ import annotations

import importlib.util
import os
import sys
from functools import lru_cache
from pathlib import Path

import torch

from .codegen import Problem
from .codegen.cg_spec import ProducerSpec
from .codegen.diskcache import atomic_write, cache_dir, content_hash, sources_hash

GENERATOR_FILES = ("cg_emit.py", "cg_gemm.py", "cg_spec.py", "coupling.py", "instructions.py", "irreps.py", "problem.py",
                   "writer.py")
INT32_LIMIT = 2**31  # offsets at or past this switch the kernel to int64 addressing (tests lower it)
_loaded: dict = {}


@lru_cache(maxsize=None)
def generator_hash() -> str:
    return sources_hash(*GENERATOR_FILES)


def dot_precision() -> str:
    """tf32 tensor-core GEMMs unless ``torch.set_float32_matmul_precision("highest")``."""
    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def source_path(problem: Problem, spec: ProducerSpec, dtype: str, block_c: int) -> Path:
    h = content_hash(generator_hash(), problem.key, repr(spec), dtype, block_c, dot_precision())
    return cache_dir("kernels") / f"cg_{spec.target}_{h}.py"


def kernel_source(problem: Problem, spec: ProducerSpec, dtype: str, block_c: int) -> tuple:
    """``(path, source_text)``; generates and writes the file only when it is missing."""
    path = source_path(problem, spec, dtype, block_c)
    if path.exists():
        return path, path.read_text()
    from .codegen.cg_emit import emit_producer

    src = emit_producer(problem, spec, dtype, block_c, dot_precision())
    atomic_write(path, src.encode())
    return path, src


def load_generated(path: Path):
    """Import a generated source file once per process (Triton reads kernels from real files)."""
    name = f"tritp_gen_{path.stem}"
    mod = sys.modules.get(name)
    if mod is None:
        s = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(s)
        s.loader.exec_module(mod)
        sys.modules[name] = mod
    return mod


def get_kernel(problem: Problem, spec: ProducerSpec, dtype: str, block_c: int):
    key = (problem.key, spec, dtype, block_c, dot_precision())
    k = _loaded.get(key)
    if k is None:
        path, _ = kernel_source(problem, spec, dtype, block_c)
        mod = load_generated(path)
        k = _loaded[key] = mod.tp_producer
        k.tritp_min_block_z = getattr(mod, "MIN_BLOCK_Z", 1)
    return k


def interpreter_active() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def acc_dtype(tensors) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def target_dim(problem: Problem, role: str) -> int:
    return {"x1": problem.irreps_in1.dim, "x2": problem.irreps_in2.dim, "out": problem.irreps_out.dim,
            "w": problem.weight_numel}[role]


def produce(problem: Problem, spec: ProducerSpec, tensors, Z: int, *, out_dtype=None, config=None,
            wrap=None) -> torch.Tensor:
    """Run producer ``spec`` on 2D tensors ``[Z or 1, dim]`` (shared weights: 1D ``[numel]``).

    Returns the target: ``[Z, dim]``, or ``[numel]`` for shared weights (summed over the batch
    deterministically: per-program partials, then one ``sum``). ``config`` (a
    :class:`tritp.tuning.Config`) overrides the tuned or heuristic launch configuration.
    ``wrap`` (``wrap_triton`` inside a ``triton_op``) wraps the kernel so that Inductor sees it.
    """
    acc = acc_dtype(tensors)
    dtype_name = "float64" if acc == torch.float64 else "float32"
    if out_dtype is None:
        out_dtype = tensors[0].dtype
        for t in tensors[1:]:
            out_dtype = torch.promote_types(out_dtype, t.dtype)
    device = tensors[0].device
    dim = target_dim(problem, spec.target)
    shared_w = spec.target == "w" and problem.shared_weights
    if Z == 0 or dim == 0:
        return torch.zeros((dim,) if shared_w else (Z, dim), dtype=out_dtype, device=device)
    if config is None:
        from .tuning import choose

        config = choose(problem, spec, dtype_name, Z, device, interpreter_active())
    kernel = get_kernel(problem, spec, dtype_name, config.block_c)
    block_z = max(config.block_z, kernel.tritp_min_block_z)
    nprog = split_programs(triton_cdiv(Z, block_z), device) if shared_w else triton_cdiv(Z, block_z)
    args, strides = [], []
    for t in tensors:
        if t.dim() == 1:
            t = t.contiguous()  # shared weights: read as one contiguous row
            strides.append(0)
        else:
            if t.stride(-1) != 1:
                t = t.contiguous()
            strides.append(t.stride(0) if t.shape[0] != 1 else 0)
        args.append(t)
    # shared-weight gradients: one partial row per program, summed below (deterministic)
    g = torch.empty((nprog, dim) if shared_w else (Z, dim), dtype=acc if shared_w else out_dtype, device=device)
    big = bool(max([Z * max(strides + [dim]), nprog * dim] + [t.numel() for t in args]) >= INT32_LIMIT)
    if wrap is not None:
        kernel = wrap(kernel)
    kernel[(nprog,)](*args, *strides, g, dim, Z, IDX64=big, BLOCK_Z=block_z,
                     num_warps=config.num_warps, num_stages=config.num_stages)
    return g.sum(0).to(out_dtype) if shared_w else g


#: Programs per SM of a shared-weight gradient; each strides over the row blocks (split-K).
SPLIT_PROGRAMS_PER_SM = 4


@lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1  # the interpreter runs programs one after another


def split_programs(nblocks: int, device: torch.device) -> int:
    """Grid of a shared-weight gradient kernel: a few programs per SM, each summing every
    ``grid``-th block of rows into one partial row (fewer, longer partials than one per block;
    the fixed assignment keeps the sum deterministic on a given GPU)."""
    return max(1, min(nblocks, SPLIT_PROGRAMS_PER_SM * _sm_count(device)))


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b
