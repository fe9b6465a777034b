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
import time
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import nullcontext
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import torch

from .codegen import Problem
from .codegen.cg_pieces import Partial, plan_pieces, slabs
from .codegen.intmath import cdiv as triton_cdiv, p2
from .codegen.cg_fused import fused_pieces
from .codegen.cg_spec import FusedSpec, ProducerSpec
from .codegen.diskcache import atomic_write, cache_dir, content_hash, sources_hash
from .compile_pool import compile_in_processes, file_backed, use_processes
from .jit_key import seed_cache_key
from .kernel_forms import (FORM_VARIABLES, form_env, getenv, kernel_form, share_loads,  # noqa: F401  (re-exported)
                           tile_form)

GENERATOR_FILES = ("cg_emit.py", "cg_fused.py", "fused_specs.py", "cg_gemm.py", "cg_spec.py", "cg_terms.py",
                   "cg_tiles.py", "coupling.py", "instructions.py", "intmath.py", "irreps.py", "problem.py",
                   "writer.py")
INT32_LIMIT = 2**31  # offsets at or past this switch the kernel to int64 addressing (tests lower it)
_loaded: dict = {}


@lru_cache(maxsize=None)
def generator_hash() -> str:
    return sources_hash(*GENERATOR_FILES)


def dot_precision() -> str:
    """tf32 tensor-core GEMMs unless ``torch.set_float32_matmul_precision("highest")``."""
    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def source_path(problem: Problem, spec: ProducerSpec, dtype: str, block_c: int, piece=None) -> Path:
    parts = (generator_hash(), problem.key, repr(spec), dtype, block_c, dot_precision(), *kernel_form())
    h = content_hash(*parts, *(() if piece is None else (piece.key() if isinstance(piece, Partial) else tuple(piece),)))
    return cache_dir("kernels") / f"cg_{spec.target.replace('+', '')}_{h}.py"


def kernel_source(problem: Problem, spec: ProducerSpec, dtype: str, block_c: int, piece=None) -> tuple:
    """``(path, source_text)`` of one kernel (one ``piece`` of it, see
    :mod:`tritp.codegen.cg_pieces`); generates and writes the file only when it is missing."""
    path = source_path(problem, spec, dtype, block_c, piece)
    if path.exists():
        return path, path.read_text()
    if isinstance(spec, FusedSpec):
        from .codegen.cg_fused import emit_fused

        src = emit_fused(problem, spec, dtype, block_c, piece, tile_form())
    else:
        from .codegen.cg_emit import emit_producer

        src = emit_producer(problem, spec, dtype, block_c, dot_precision(), piece, share_loads(), tile_form())
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
        seed_cache_key(mod)
        sys.modules[name] = mod
    return mod


def get_kernel(problem: Problem, spec: ProducerSpec, dtype: str, block_c: int, piece=None):
    key = (problem.key, spec, dtype, block_c, dot_precision(), *kernel_form(), piece)
    k = _loaded.get(key)
    if k is None:
        path, _ = kernel_source(problem, spec, dtype, block_c, piece)
        mod = load_generated(path)
        k = _loaded[key] = mod.tp_producer
        k.tritp_min_block_z = getattr(mod, "MIN_BLOCK_Z", 1)
    return k


def interpreter_active() -> bool:
    return getenv("TRITON_INTERPRET", "0") not in ("", "0")


def acc_dtype(tensors) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def launch_dtypes(tensors, out_dtype=None) -> tuple:
    """``(accumulation dtype, its kernel name, output dtype)`` of a launch: fp64 accumulation if
    any input is fp64, else fp32; the output dtype, unless given, promotes the inputs'.

    Example:
        >>> launch_dtypes([torch.ones(1, dtype=torch.bfloat16), torch.ones(1)])
        (torch.float32, 'float32', torch.float32)
    """
    acc = acc_dtype(tensors)
    if out_dtype is None:
        out_dtype = tensors[0].dtype
        for t in tensors[1:]:
            out_dtype = torch.promote_types(out_dtype, t.dtype)
    return acc, "float64" if acc == torch.float64 else "float32", out_dtype


def target_dim(problem: Problem, role: str) -> int:
    """Width of target ``role``'s row; a fused spec's target (``"x1+w+x2"``) sums its parts'."""
    key = (problem.key, role)
    d = _dims.get(key)
    if d is None:
        if "+" in role:
            d = sum(target_dim(problem, r) for r in role.split("+"))
        else:
            d = {"x1": problem.irreps_in1.dim, "x2": problem.irreps_in2.dim, "out": problem.irreps_out.dim,
                 "w": problem.weight_numel}[role]
        _dims[key] = d
    return d


_dims: dict = {}  # (problem key, role) -> row width: summing the irreps' dims costs microseconds a launch


def produce(problem: Problem, spec: ProducerSpec, tensors, Z: int, *, out_dtype=None, config=None,
            wrap=None) -> torch.Tensor:
    """Run producer ``spec`` on 2D tensors ``[Z or 1, dim]`` (shared weights: 1D ``[numel]``).

    Returns the target: ``[Z, dim]``, or ``[numel]`` for shared weights (summed over the batch
    deterministically: per-program partials, then one ``sum``); for a fused backward
    (:class:`~tritp.codegen.cg_spec.FusedSpec`) the list of its parts' ``[Z, dim]`` gradients. ``config`` (a
    :class:`tritp.tuning.Config`) overrides the tuned or heuristic launch configuration.
    ``wrap`` (``wrap_triton`` inside a ``triton_op``) wraps the kernel so that Inductor sees it.
    """
    plan = launch_plan(problem, spec, tensors, Z, out_dtype=out_dtype, config=config)
    if not plan.kernels:
        return plan.g
    launch_pieces(plan.kernels, plan.grid, plan.args, plan.options, wrap)
    if isinstance(plan.g, list):  # a fused backward's parts
        return [g if g.dtype == plan.out_dtype else g.to(plan.out_dtype) for g in plan.g]
    if plan.slabs > 1:  # Partial pieces (cg_pieces): each wrote its own slab of [Z, slabs * dim]
        return plan.g.view(Z, plan.slabs, -1).sum(1).to(plan.out_dtype)
    return plan.g.sum(0).to(plan.out_dtype) if plan.shared_w else plan.g


def pieces_of(problem: Problem, spec) -> tuple:
    """The kernels one producer launches (:func:`~tritp.codegen.cg_pieces.plan_pieces`; a
    fused backward's, :func:`~tritp.codegen.cg_fused.fused_pieces`)."""
    return fused_pieces(problem, spec) if isinstance(spec, FusedSpec) else plan_pieces(problem, spec)


def part_widths(problem: Problem, spec: FusedSpec) -> list:
    """The row width of each part of a fused backward."""
    return [target_dim(problem, t) for t in spec.targets]


def fused_outputs(problem: Problem, spec: FusedSpec, rows: int, n_kernels: int, acc, out_dtype, device,
                  dry: bool = False, nodes: dict | None = None, keep: tuple = ()) -> tuple:
    """``(outputs, kernel arguments)`` of a fused backward (:mod:`tritp.codegen.cg_fused`, or
    a convolution's, ``conv_fused``): one ``[rows, width]`` tensor per part and the ``g<i>,
    sg<i>`` arguments. Pieces after the first add their share of x2's gradient to it, so with
    several kernels that part is kept in the accumulation dtype (as the separate kernel's
    partial slabs are summed), and the launcher casts it; ``nodes`` (``{part: rows}``): parts
    the kernel adds atomically into node rows (a convolution's x1), zeroed, in the
    accumulation dtype; ``keep``: parts in the accumulation dtype (summed afterwards); ``dry``:
    empty tensors (dtypes only)."""
    widths, nodes = part_widths(problem, spec), nodes or {}
    g = []
    for t, d in zip(spec.targets, widths):
        n = nodes.get(t, rows)
        if t in nodes:
            g.append(torch.zeros((0,) if dry else (n, d), dtype=acc, device=device))
        else:
            dt = acc if (n_kernels > 1 and t == "x2") or t in keep else out_dtype
            g.append(torch.empty((0,) if dry else (n, d), dtype=dt, device=device))
    return g, tuple(x for gd in zip(g, widths) for x in gd)


class LaunchPlan(NamedTuple):
    """What one producer launch needs: its piece kernels, grid, arguments and options; ``g``
    is the output buffer (the result itself when there is nothing to launch)."""

    kernels: list
    grid: tuple
    args: tuple
    options: dict
    g: torch.Tensor  # a list of one tensor per part for a fused backward
    shared_w: bool
    out_dtype: torch.dtype
    device: torch.device
    slabs: int = 1  # > 1: g is [Z, slabs * dim] partial sums (Partial pieces), summed by produce
    then: object = None  # a LaunchPlan launched after this one (conv_segsum), or None


def launch_plan(problem: Problem, spec: ProducerSpec, tensors, Z: int, *, out_dtype=None, config=None,
                dry: bool = False) -> LaunchPlan:
    """Everything :func:`produce` launches, without launching. ``dry`` (for :func:`precompile`):
    ``tensors`` may have as few as 2 rows while ``Z`` is the real batch (configuration and
    int64 addressing follow ``Z``), and no output buffer is allocated."""
    acc, dtype_name, out_dtype = launch_dtypes(tensors, out_dtype)
    device = tensors[0].device
    fused = isinstance(spec, FusedSpec)
    dim = target_dim(problem, spec.target)
    shared_w = spec.target == "w" and problem.shared_weights
    if Z == 0 or dim == 0:
        if fused:  # one [Z, width] gradient per part
            zeros = [torch.zeros(Z, d, dtype=out_dtype, device=device) for d in part_widths(problem, spec)]
        else:
            zeros = torch.zeros((dim,) if shared_w else (Z, dim), dtype=out_dtype, device=device)
        return LaunchPlan([], (0,), (), {}, zeros, False, out_dtype, device)
    config, kerns, n_slabs, block_z = recipe(problem, spec, dtype_name, Z, device, config)
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
    # shared-weight gradients: one partial row per program, summed by produce (deterministic)
    # Partial pieces: summed in the accumulation dtype, like the shared-weight partials
    width = dim * n_slabs
    if fused:  # a fused backward writes each part to its own [Z, width] tensor (cg_fused)
        g, targets = fused_outputs(problem, spec, Z, len(kerns), acc, out_dtype, device, dry)
    else:
        shape = (0,) if dry else (nprog, dim) if shared_w else (Z, width)  # dry: only the dtype matters
        g = torch.empty(shape, dtype=acc if shared_w or n_slabs > 1 else out_dtype, device=device)
        targets = (g, width)
    big = bool(max([Z * max(strides + [width]), nprog * dim] + [t.numel() for t in args]) >= INT32_LIMIT)
    options = dict(IDX64=big, BLOCK_Z=block_z, NW=config.num_warps, num_warps=config.num_warps,
                   num_stages=config.num_stages)
    return LaunchPlan(kerns, (nprog,), (*args, *strides, *targets, Z), options, g, shared_w, out_dtype, device,
                      n_slabs)


class Recipe(NamedTuple):
    """What a launch derives from its problem, spec, dtype, batch bucket, device and
    environment alone: the configuration, the piece kernels, their slab count and the rows
    per program."""

    config: object
    kernels: list
    slabs: int
    block_z: int


#: What besides its arguments a recipe depends on: the switches of the generated forms and of the
#: tuning cache's identity salt (:func:`tritp.kernel_forms.conv_form`), where caches live, the
#: interpreter. (The other form switches choose which specs run, not how one launches.)
RECIPE_ENV = ("TRITP_SHARE_LOADS", "TRITP_COALESCE", "TRITP_CONV_ROWS", "TRITP_CONV_BLOCK_SUMS", "TRITON_INTERPRET",
              "TRITP_CACHE_DIR", "XDG_CACHE_HOME", "HOME")


def recipe(problem: Problem, spec, dtype_name: str, Z, device, config=None) -> Recipe:
    """The :class:`Recipe` of a launch, memoized: choosing a configuration and finding the
    kernels costs about 100 microseconds in Python (the cache key's hashes, the environment's
    kernel forms), as long as a small kernel runs on a GPU, so it is done once per (problem,
    spec, dtype, batch bucket, device, config, environment). The memo lives in
    ``tritp.tuning._memo``, which every cache write and :func:`tritp.tuning.clear_memo` empty."""
    from .tuning import rows_hint

    rows = rows_hint(Z)

    def build() -> Recipe:
        from .tuning import check_config, choose

        cfg = choose(problem, spec, dtype_name, rows, device, interpreter_active()) if config is None \
            else check_config(config)
        pieces = pieces_of(problem, spec)
        kerns = [get_kernel(problem, spec, dtype_name, cfg.block_c, piece) for piece in pieces]
        block_z = max([cfg.block_z] + [k.tritp_min_block_z for k in kerns])  # one grid for every piece
        return Recipe(cfg, kerns, slabs(pieces), block_z)

    return memo_recipe((problem.key, spec, dtype_name, p2(rows), device, config), build)


def memo_recipe(key: tuple, build):
    """``build()``, memoized under ``key`` and what every launch recipe depends on besides its
    arguments (the float32 matmul precision, :data:`RECIPE_ENV`), in ``tritp.tuning._memo``."""
    from .tuning import _memo

    mk = ("recipe", *key, torch.get_float32_matmul_precision(), *map(getenv, RECIPE_ENV))
    r = _memo.get(mk)
    if r is None:
        r = _memo[mk] = build()
    return r


def forget_recipes() -> None:
    """Drop the memoized launch recipes (after patching how kernels are found, in tests)."""
    from .tuning import _memo

    for k in [k for k in _memo if k[0] == "recipe"]:
        del _memo[k]


def precompile(plans, timeout: float | None = None, ignore_errors: bool = False) -> int:
    """Compile the kernels of many launch plans (:func:`launch_plan`, best ``dry``) in parallel
    (:func:`compile_all`: threads, or worker processes) without running them; returns how many
    kernels were compiled (0 under the interpreter, which compiles nothing). Kernels are
    specialized on their arguments' dtypes, alignments and strides but not on the batch size,
    so one compile serves every batch.
    Under ``torch.compile`` Inductor compiles the kernels it launches itself. ``timeout``
    (seconds): stop waiting then and cancel the compiles not yet started (a best-effort warm-up
    within a time budget; the launches compile what is missing). ``ignore_errors``: a kernel
    that fails to compile is not counted and not raised (the autotuner warms candidates that
    may not fit; their launch reports the failure).

    Example:
        >>> precompile([])
        0
    """
    if interpreter_active():
        return 0
    jobs = []
    plans = list(plans)
    plans += [p.then for p in plans if p.then is not None]  # (one level: conv_segsum)
    for p in plans:
        # tensors as dtypes: Triton's warmup treats them as aligned pointers, allocating nothing
        args = tuple(a.dtype if isinstance(a, torch.Tensor) else a for a in p.args)
        jobs += [(k, args, p.grid, p.options, p.device) for k in _not_compiled(p.kernels, p.args, p.options)]
    return compile_all(jobs, timeout, ignore_errors)


def compile_all(jobs, timeout: float | None = None, ignore_errors: bool = False) -> int:
    """Run Triton's ``warmup`` (compile, do not launch) of ``(kernel, args, grid, options,
    device)`` jobs in parallel threads -- Triton releases the GIL in its passes and ptxas is a
    subprocess -- each under its job's CUDA device (the current device is per thread);
    ``TRITP_PARALLEL_COMPILE=0``: one after another in this thread; many jobs on many cores go
    to worker processes instead (:mod:`tritp.compile_pool`). Returns the number of jobs
    finished; after ``timeout`` seconds the jobs not yet started are cancelled.
    ``ignore_errors``: a failed compile is neither counted nor raised."""
    def one(job):
        k, args, grid, options, device = job
        try:
            with torch.cuda.device(device) if device.type == "cuda" else nullcontext():
                k.warmup(*args, grid=grid, **options)
        except Exception:
            if not ignore_errors:
                raise
            return False
        return True

    if parallel_compile() and use_processes(len(jobs)) and all(file_backed(j[0]) for j in jobs):
        return compile_in_processes(jobs, timeout, ignore_errors)  # many jobs, many cores: past the GIL
    start, n_ok = time.monotonic(), 0
    if len(jobs) < 2 or not parallel_compile():
        for j in jobs:
            if timeout is not None and time.monotonic() - start > timeout:
                break
            n_ok += one(j)
        return n_ok
    ex = ThreadPoolExecutor(min(len(jobs), os.cpu_count() or 1))
    futures = [ex.submit(one, j) for j in jobs]
    done, _ = wait(futures, timeout=timeout)
    ex.shutdown(wait=False, cancel_futures=True)  # compiles already running finish on their own
    return sum(f.result() for f in done)  # a compile error is raised here, not lost


def parallel_compile() -> bool:
    """False under ``TRITP_PARALLEL_COMPILE=0``."""
    return os.environ.get("TRITP_PARALLEL_COMPILE", "1") != "0"


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
    # sym_min: a symbolic batch under torch.compile gets no guard (min() would add one)
    return torch.sym_min(nblocks, SPLIT_PROGRAMS_PER_SM * _sm_count(device))


#: (id(kernel), argument dtypes, launch options) handed to compile_all once: later launches and
#: precompiles skip them (Triton's own cache then has the kernel; a new layout still compiles).
#: The value keeps the kernel alive, so its id is never reused for another one.
_compiled: dict = {}


def _not_compiled(kernels: list, args: tuple, options: dict) -> list:
    """The kernels not yet handed to :func:`compile_all` for this signature; marks them."""
    sig = (tuple(getattr(a, "dtype", type(a)) for a in args), tuple(sorted(options.items())))
    todo = [k for k in kernels if (id(k), sig) not in _compiled]
    _compiled.update(((id(k), sig), k) for k in todo)
    return todo


def launch_pieces(kernels: list, grid: tuple, args: tuple, options: dict, wrap=None) -> None:
    """Launch the pieces of one producer, in order, into the same target. On first use of a
    signature outside tracing the pieces are first compiled in parallel (:func:`compile_all`),
    so a split kernel compiles in about the time of its largest piece; ``wrap``
    (``wrap_triton``) still wraps the launches (inside a traced ``triton_op`` the tensors are
    fake, and Inductor compiles the kernels itself)."""
    if len(kernels) > 1 and parallel_compile() and not interpreter_active() and _eager(args):
        todo = _not_compiled(kernels, args, options)
        if todo:
            device = next((a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu"))
            try:
                compile_all([(k, args, grid, options, device) for k in todo])
            except Exception as e:  # the launches below compile one by one and raise real errors
                from .module import warn_once

                warn_once("parallel-compile", f"tritp: compiling kernel pieces in parallel failed ({type(e).__name__}: "
                          f"{e}); compiling them one by one (TRITP_PARALLEL_COMPILE=0 skips the attempt)")
    for k in kernels:
        (k if wrap is None else wrap(k))[grid](*args, **options)


def _eager(args) -> bool:
    """Plain tensors, not tracing: compiling ahead of the launch is safe and useful."""
    if torch.compiler.is_compiling():
        return False
    return all(type(a) in (torch.Tensor, torch.nn.Parameter) for a in args if isinstance(a, torch.Tensor))
