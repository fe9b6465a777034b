"""Registers, spills and compile time of the Gaunt grid, fft and separable kernels on an H100, without a GPU.

The Gaunt counterpart of ``benchmarks/ptxas_audit.py`` (whose compile worker process, timeout
handling and spill test it reuses): for each implementation (``grid``, ``fft``, ``separable``), degree ``L``,
channel count ``C``, producer (the forward ``out:x1,x2`` and the backward producers
``x1:x2,out``, ``x2:x1,out``), dtype and launch configuration, it compiles the kernel
``gaunt_produce`` launches for ``sm_90`` with Triton's bundled ``ptxas`` (no driver needed) and
prints the registers per thread (255 is the ceiling), the spill stores in bytes per thread
(above 0: the row says ``SPILL``), the stack frame, the compile seconds and tritp's register
estimate (``est``, :func:`tritp.gaunt_kernels.estimate_registers`), so the estimate can be
checked against ptxas whenever the generator changes. It reports and never asserts.

Problems are those of ``benchmarks/gaunt_bench.py``: both inputs ``C`` channels of degrees
``0..L``, output degrees ``0..L`` (``--x2 1``: a one-channel ``x2`` broadcast over the
channels instead, whose ``x2`` gradient sums the channels in the kernel). The launch is
recorded through ``gaunt_produce`` on CPU tensors (batch 16: the same 16-divisibility hints as
batch 10,000) and bound the way a GPU launch binds it, as ``tests/test_gpu_compile.py`` does.

Configurations are ``BLOCK_R:NUM_WARPS[:BLOCK_P]`` (``32:4``; ``BLOCK_P`` defaults to the
problem's :func:`~tritp.codegen.gaunt_emit.default_block_p`), ``default`` (what tritp launches
when nothing is tuned: :func:`tritp.gaunt_kernels.launch_shape`) or ``legacy`` (the fixed rule
before it became register-aware: 64 rows, 8 warps when the three roles' K sum past 64, else 4).
A producer that sums the channels in the kernel takes ``channel_block(C, BLOCK_R)`` rows, as
at runtime. Each compile runs in one worker process (``--timeout`` seconds, default 300) with a
fresh Triton cache, so every time is a cold compile. ``TRITON_INTERPRET`` is ignored.

Run (one compile takes 1-20 s; the second command, 128 compiles, took ~10 minutes on 2 cores;
with both inputs at C channels the backward producers are the forward's kernel, compiled once)::

    python benchmarks/gaunt_ptxas.py --L 6,8 --C 32 --impl grid --config legacy,default
    python benchmarks/gaunt_ptxas.py --L 1-8 --C 32,128 --impl grid,fft --dtype float32,float64 \\
        --spec out:x1,x2,x1:x2,out,x2:x1,out --config legacy,default --json /tmp/gaunt_ptxas.json
    python benchmarks/gaunt_ptxas.py --L 8 --spec out:x1,x2 --config 64:8,32:8,32:4,16:4,32:8:32
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ptxas_audit import Worker, add_common_options, resource_usage, run_audit, serve, spilled  # noqa: E402

SPECS = ("out:x1,x2", "x1:x2,out", "x2:x1,out")
_compiled: dict = {}  # the worker's answers by kernel and launch
BATCH = 16  # recorded launch; R = 16 * C has the 16-divisibility of 10,000 * C


def irreps(C: int, L: int) -> str:
    """``C`` channels of degrees ``0..L``: ``benchmarks/gaunt_bench.py``'s inputs."""
    return "+".join(f"{C}x{l}{'e' if l % 2 == 0 else 'o'}" for l in range(L + 1))


def bench_problem(impl: str, L: int, C: int, x2_channels: int = 0, precision: str = "ieee"):
    """The benchmark's problem at degree ``L`` (``x2_channels=1``: a broadcast x2)."""
    from tritp.codegen.gaunt_problem import GauntProblem

    return GauntProblem(irreps(C, L), irreps(x2_channels or C, L), lmax_out=L, implementation=impl,
                        precision=precision)


def legacy_launch(problem, target: str) -> tuple:
    """The fixed rule before the register-aware default: ``(64, 8 or 4 warps, default_block_p)``."""
    from tritp.codegen.gaunt_emit import default_block_p, role_size

    k = sum(role_size(problem, r)[0] for r in ("x1", "x2", "out"))
    return 64, 8 if k > 64 else 4, default_block_p(problem)


# -- the worker: one compile per request line, a JSON answer line per request --------------------
def compile_job(job: dict) -> dict:
    """Record ``gaunt_produce``'s launch for ``job`` and compile it for sm_90; parse ptxas's log."""
    import contextlib
    import io

    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    from tritp.codegen.gaunt_problem import parse_spec
    from tritp.gaunt_kernels import launch_shape
    from tritp.gaunt_launch import gaunt_produce

    target = GPUTarget("cuda", 90, 32)
    backend = make_backend(target)
    problem = bench_problem(job["impl"], job["L"], job["C"], job["x2"], job.get("precision", "ieee"))
    tgt, roles = parse_spec(job["spec"])
    dtype = getattr(torch, job["dtype"])
    Z = BATCH
    args = [torch.zeros(1 if problem.mul(r) == 1 and job["x2"] else Z, problem.irreps(r).dim, dtype=dtype)
            for r in roles]
    cfg = job["config"]
    if cfg == "default":
        launch = launch_shape(problem, Z * problem.channels, tgt, job["dtype"], job["spec"])
    elif cfg == "legacy":
        launch = legacy_launch(problem, tgt)
    else:
        launch = tuple(cfg)
    calls = []

    def record(fn):
        class Launch:
            def __getitem__(self, grid):
                return lambda *a, **kw: calls.append((fn, a, kw))
        return Launch()

    gaunt_produce(problem, job["spec"], args, Z, wrap=record, launch=launch)
    (fn, a, kw), = calls
    bound, spec, opts = create_function_from_signature(fn.signature, fn.params, backend)(*a, **kw)
    options, sig, cx, attrs = fn._pack_args(backend, kw, bound, spec, opts)
    # kernels with equal K per role are one source (the roles' tables are arguments), and a
    # Triton cache hit prints no ptxas log: answer those from the first compile
    same = repr((fn.cache_key, sig, cx, attrs, options.num_warps))
    if same in _compiled:
        return dict(_compiled[same], seconds=0.0, same_as_earlier=True)
    log = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(log):  # Triton prints ptxas -v's report (TRITON_DUMP_PTXAS_LOG)
        ck = triton.compile(ASTSource(fn, sig, cx, attrs), target=target, options=options.__dict__)
    ans = {"status": "ok", "seconds": round(time.perf_counter() - t0, 1), "block_r": kw["BLOCK_R"],
           "num_warps": kw["num_warps"], "block_p": launch[2]}
    ans.update(resource_usage(log.getvalue(), ck.asm["cubin"]))
    ans["mma"] = len(re.findall(r"\b(?:wgmma|mma)\.", ck.asm["ptx"]))  # tensor-core instructions in the PTX
    _compiled[same] = ans
    return ans


# -- the audit -----------------------------------------------------------------------------------
def parse_ints(text: str) -> list:
    out = []
    for part in filter(None, text.split(",")):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b or a) + 1))
    return out


def parse_configs(text: str) -> list:
    out = []
    for item in filter(None, (x.strip() for x in text.split(","))):
        if item in ("default", "legacy"):
            out.append(item)
            continue
        parts = [int(x) for x in item.split(":")]
        if len(parts) not in (2, 3) or any(p < 1 or p & (p - 1) for p in parts[:2]) or min(parts) < 1:
            raise SystemExit(f"gaunt_ptxas: bad config {item!r}: BLOCK_R:NUM_WARPS[:BLOCK_P or PASSES], "
                             "BLOCK_R and NUM_WARPS powers of 2")
        out.append(parts)
    return out


def audit(args, rows: list) -> None:
    from tritp.codegen.gaunt_emit import default_block_p
    from tritp.gaunt_kernels import estimate_registers
    from tritp.gaunt_separable import default_passes, use_pairs
    from tritp.gaunt_separable import estimate_registers as separable_estimate

    worker = Worker(args.triton_cache, script=__file__)
    print(f"{'impl':<9} {'L':>2} {'C':>4} {'spec':<10} {'dtype':<7} {'config':<10} {'launch':<9} {'est':>4} "
          f"{'regs':>4} {'spill':>5} {'stack':>5} {'s':>6} {'mma':>4}  status", flush=True)
    try:
        for impl in args.impl:
            for L in args.L:
                for C in args.C:
                    problem = bench_problem(impl, L, C, args.x2, args.precision)
                    for spec in args.spec:
                        for dtype in args.dtype:
                            for cfg in args.config:
                                if isinstance(cfg, list) and len(cfg) == 2:  # separable: the walks
                                    cfg = cfg + [default_passes(problem, spec, dtype) if impl == "separable"
                                                 else default_block_p(problem)]
                                if impl == "separable" and cfg == "legacy":
                                    continue
                                job = {"impl": impl, "L": L, "C": C, "x2": args.x2, "spec": spec, "dtype": dtype,
                                       "config": cfg, "precision": args.precision}
                                r = worker.run(job, args.timeout)
                                ok = r["status"] == "ok"
                                launch = f"{r['block_r']}:{r['num_warps']}:{r['block_p']}" if ok else "-"
                                est = "-"
                                if ok and impl == "separable":  # as it runs: paired where use_pairs says so
                                    paired = use_pairs(problem, spec, dtype, r["block_p"])
                                    est = separable_estimate(problem, spec, dtype, r["block_p"], pairs=paired)
                                elif ok:
                                    est = estimate_registers(problem, dtype, r["block_r"], r["num_warps"], r["block_p"])
                                rows.append(dict(job, config=cfg if isinstance(cfg, str) else "explicit",
                                                 estimate=est, **r))
                                cell = lambda k: r.get(k, "-")  # noqa: E731
                                status = ("SPILL" if spilled(r) else "ok") if ok else r["status"]
                                name = cfg if isinstance(cfg, str) else ":".join(map(str, cfg))
                                print(f"{impl:<9} {L:>2} {C:>4} {spec:<10} {dtype:<7} {name:<10} {launch:<9} "
                                      f"{est:>4} {cell('regs'):>4} {cell('spill_stores'):>5} {cell('stack'):>5} "
                                      f"{r['seconds']:>6} {cell('mma'):>4}  {status}"
                                      + (" (same kernel as an earlier row)" if r.get("same_as_earlier") else ""),
                                      flush=True)
    finally:
        worker.stop()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--impl", default="grid,fft", help="comma-separated: grid, fft, separable (default grid,fft)")
    ap.add_argument("--L", default="6,8", help="degrees: 1-8, or 2,4,6 (default 6,8)")
    ap.add_argument("--C", default="32", help="channels (default 32)")
    ap.add_argument("--x2", type=int, default=0, choices=(0, 1), help="1: a one-channel x2 (default: C channels)")
    ap.add_argument("--spec", default=",".join(SPECS), help="producers, comma-separated (default all three)")
    ap.add_argument("--dtype", default="float32", help="comma-separated: float32, float64")
    ap.add_argument("--precision", default="ieee", choices=("ieee", "tf32", "tf32x3"),
                    help="fp32 tl.dot input precision (default ieee; mma counts tensor-core instructions)")
    ap.add_argument("--config", default="legacy,default",
                    help="BLOCK_R:NUM_WARPS[:BLOCK_P] (separable: [:PASSES]), default, legacy (grid and fft)")
    add_common_options(ap, 300.0)
    args = ap.parse_args(argv)
    args.impl = [x for x in args.impl.split(",") if x]
    args.L, args.C = parse_ints(args.L), parse_ints(args.C)
    items = args.spec.split(",")  # "out:x1,x2,x1:x2,out" -> the specs
    args.spec = [",".join(items[i:i + 2]) for i in range(0, len(items), 2)]
    if any(s not in SPECS for s in args.spec) or any(i not in ("grid", "fft", "separable") for i in args.impl):
        raise SystemExit(f"gaunt_ptxas: --spec among {', '.join(SPECS)}; --impl among grid, fft, separable")
    args.dtype = [x for x in args.dtype.split(",") if x]
    args.config = parse_configs(args.config)
    return run_audit(audit, args)


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        serve(compile_job)
    else:
        sys.exit(main())
