"""Registers, spills and compile time of the generated sparse-CG kernels on an H100, without a GPU.

Triton's NVIDIA backend compiles to sm_90 cubin with its bundled ``ptxas`` and needs no
driver, so the register cost of a launch configuration can be read on any machine:
this script generates the producer kernels of the chosen presets and directions (the same
sources the runtime imports), compiles each for ``sm_90`` at each chosen configuration, and
reads ``ptxas -v``'s report (``cuobjdump --dump-resource-usage`` of the cubin where there is
none). Per kernel and configuration it prints the registers per thread (``regs``; 255 is the
ceiling), the spill stores in bytes per thread (``spill``; above 0 means local-memory traffic,
and the row says ``SPILL``), the stack frame, the CTA-wide and warp-level barriers in the PTX
(``bar``, ``wbar``: layout conversions through shared memory, across warps or within each
warp; summed over pieces), the compile time in seconds, and tritp's own
register estimate (``est``, :func:`tritp.tuning.registers.estimate_registers`), so the
estimate can be checked against ptxas whenever the generator changes. It is the tool for
tuning launch defaults without a GPU; it reports and never asserts.

A big producer runs as several kernels (*pieces* over disjoint target segments,
``tritp.codegen.cg_pieces``), all with one launch configuration; the audit compiles every
piece and prints, per producer and configuration, the number of pieces (``pcs``), the largest
registers, spill and stack of any piece, and the summed compile time (the JSON keeps each
piece). ``est`` is likewise the largest over the pieces.

Configurations are ``BLOCK_Z:BLOCK_C:NUM_WARPS[:NUM_STAGES]`` (``16:64:4``), or ``default``
for the heuristic default tritp launches when nothing is tuned (:func:`tritp.tuning.heuristic`
with the problem), or ``legacy`` for the fixed default before it became register-aware
(``16:64:4``). Kernels that use ``tl.dot`` are compiled with at least their ``MIN_BLOCK_Z``
rows, as the runtime launches them. Arguments are specialized as a launch would specialize
them (16-byte aligned pointers; strides and sizes that are multiples of 16 marked so).

Each compile runs in one worker process, one at a time (``--timeout`` seconds each, default
120: a kernel over it is killed and reported as ``timeout``). The worker uses a fresh,
temporary Triton cache so that every compile time is a cold one (``--triton-cache DIR`` reuses
a folder instead: repeated runs are then fast and their times mean nothing). Kernel sources
go to tritp's source cache (``TRITP_CACHE_DIR``), as at runtime. ``TRITON_INTERPRET`` is
ignored.

Run::

    python benchmarks/ptxas_audit.py --preset mace-large --direction fwd,bwd
    python benchmarks/ptxas_audit.py --preset all --direction fwd,bwd --config legacy,default \\
        --skip nequip-benzene:fwd --json /tmp/audit.json
    python benchmarks/ptxas_audit.py --preset mace-large --direction bwd --kernel "grad x1" \\
        --config 16:64:4,16:32:4,16:64:8,16:32:8
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

LEGACY = (16, 64, 4, 1)


# -- the worker: one compile per request line, a JSON answer line per request --------------------
def serve(compile_job) -> None:
    """The worker's loop: ``compile_job(job) -> answer`` for each JSON job line on stdin, one
    JSON answer line each; a failed job is answered with its error and the loop goes on."""
    answers = os.fdopen(os.dup(1), "w")  # the answer channel; anything else written to fd 1 goes to stderr
    os.dup2(2, 1)
    for line in sys.stdin:
        t0 = time.perf_counter()
        try:
            ans = compile_job(json.loads(line))
        except Exception as e:  # reported, the audit goes on
            ans = {"status": f"error: {type(e).__name__}: {str(e)[:400]}",
                   "seconds": round(time.perf_counter() - t0, 1)}
        answers.write(json.dumps(ans) + "\n")
        answers.flush()


def resource_usage(ptxas_log: str, cubin: bytes) -> dict:
    """Registers, stack frame and spill bytes from ptxas's ``-v`` report (printed under
    ``TRITON_DUMP_PTXAS_LOG``), else (a Triton cache hit prints none) registers and stack from
    the cubin through the ``cuobjdump`` Triton ships."""
    ans = {}
    for key, pat in (("regs", r"Used (\d+) registers"), ("stack", r"(\d+) bytes stack frame"),
                     ("spill_stores", r"(\d+) bytes spill stores"), ("spill_loads", r"(\d+) bytes spill loads")):
        r = re.search(pat, ptxas_log)
        if r:
            ans[key] = int(r.group(1))
    if "regs" in ans and "spill_stores" in ans:
        return ans
    import triton

    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        out = subprocess.run([str(cuobjdump), "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    finally:
        os.unlink(f.name)
    r = re.search(r"REG:(\d+) STACK:(\d+)", out)
    if r is None:
        raise RuntimeError(f"no ptxas log and no resource line in cuobjdump output: {out[-300:]}")
    return dict(ans, regs=int(r.group(1)), stack=int(r.group(2)))


def compile_cg(job: dict) -> dict:
    """Compile one generated CG/conv kernel file for sm_90 as a launch would specialize it."""
    import contextlib
    import importlib.util
    import io

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    t0 = time.perf_counter()
    s = importlib.util.spec_from_file_location(f"k{abs(hash(job['path']))}", job["path"])
    m = importlib.util.module_from_spec(s)
    s.loader.exec_module(m)
    fn = m.tp_producer
    names = [p.name for p in fn.params]
    block_z = max(job["block_z"], getattr(m, "MIN_BLOCK_Z", 1))
    cx = {"IDX64": False, "BLOCK_Z": block_z, "NW": job["num_warps"]}
    sig, attrs = {}, {}
    for i, n in enumerate(names):
        if n in cx:
            sig[n] = "constexpr"
        elif (n[0] in "tg" and n[1:].isdigit()) or n == "g" or n in job.get("index_ptrs", {}):
            sig[n] = "*" + job.get("index_ptrs", {}).get(n, job["ptr"])
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            v = job["ints"].get(n, 17)
            if v == 1:  # a launch specializes ints equal to 1 as constants
                sig[n], cx[n] = "constexpr", 1
                continue
            sig[n] = "i32"
            if v % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn=fn, signature=sig, constexprs={(names.index(k),): v for k, v in cx.items()}, attrs=attrs)
    log = io.StringIO()
    with contextlib.redirect_stdout(log):  # Triton prints the ptxas -v log (TRITON_DUMP_PTXAS_LOG)
        ck = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                            options={"num_warps": job["num_warps"], "num_stages": job["num_stages"]})
    ans = {"seconds": round(time.perf_counter() - t0, 1), "block_z": block_z, "status": "ok"}
    ptx = ck.asm["ptx"]
    # CTA-wide barriers (layout conversions through shared memory across warps) and warp-level
    # ones (conversions within each warp): the cost of the 3D tiles' splits and joins
    ans.update(bar_sync=len(re.findall(r"\b(?:bar|barrier)\.sync\b", ptx)), bar_warp=ptx.count("bar.warp.sync"))
    return dict(ans, **resource_usage(log.getvalue(), ck.asm["cubin"]))


class Worker:
    """A compile worker process; :meth:`run` kills and restarts it when a job times out."""

    def __init__(self, triton_cache: str | None, script: str = __file__):
        self.triton_cache = triton_cache
        self.script = script  # a file whose ``--worker`` mode runs :func:`serve`
        self.tmp = None
        self.proc = None

    def start(self):
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, without its warning
        env["TRITON_DUMP_PTXAS_LOG"] = "1"  # registers, stack frame, spill stores and loads
        if self.triton_cache:
            env["TRITON_CACHE_DIR"] = self.triton_cache
        else:
            self.tmp = tempfile.TemporaryDirectory(prefix=f"{Path(self.script).stem}_")
            env["TRITON_CACHE_DIR"] = self.tmp.name
        self.proc = subprocess.Popen([sys.executable, self.script, "--worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, start_new_session=True)

    def stop(self):
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the worker and its ptxas, nothing else
            except ProcessLookupError:
                pass
            self.proc.wait()
            self.proc = None
        if self.tmp is not None:
            self.tmp.cleanup()
            self.tmp = None

    def run(self, job: dict, timeout: float) -> dict:
        if self.proc is None:
            self.start()
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.stop()
            return {"status": f"timeout (> {timeout:g} s)" if not ready else "worker died", "seconds": timeout}
        return json.loads(line)


# -- the audit -----------------------------------------------------------------------------------
def parse_configs(text: str) -> list:
    out = []
    for item in filter(None, (x.strip() for x in text.split(","))):
        if item in ("default", "legacy"):
            out.append(item)
            continue
        parts = [int(x) for x in item.split(":")]
        if len(parts) not in (3, 4) or any(p < 1 or p & (p - 1) for p in parts[:3]):
            raise SystemExit(f"ptxas_audit: bad config {item!r}: BLOCK_Z:BLOCK_C:NUM_WARPS[:NUM_STAGES], powers of 2")
        out.append(tuple(parts) + ((1,) if len(parts) == 3 else ()))
    return out


def kernels(presets, directions, kernel_filter, skip):
    """``[(preset, direction, label, problem, spec, batch)]`` in a fixed order."""
    from tritp.cli_codegen import producer_specs
    from tritp.presets import preset

    out = []
    for name in presets:
        problem, batch = preset(name)
        for d in directions:
            if f"{name}:{d}" in skip:
                continue
            for label, spec in producer_specs(problem, d):
                short = label.split(": ", 1)[1]
                if kernel_filter and not any(k in short for k in kernel_filter):
                    continue
                if f"{name}:{d}:{short}" in skip:
                    continue
                out.append((name, d, short, problem, spec, batch))
    return out


def spilled(r: dict) -> bool:
    """Spill stores, or (without ptxas's log) a stack frame."""
    return bool(r.get("spill_stores", r.get("stack", 0)))


def audit(args, rows: list) -> list:
    from tritp.kernels import kernel_source, pieces_of, target_dim
    from tritp.tuning import Config, heuristic
    from tritp.tuning.registers import estimate_registers

    worker = Worker(args.triton_cache)
    ptr = "fp64" if args.dtype == "float64" else "fp32"
    seen = {}
    print(f"{'preset':<15} {'dir':<4} {'kernel':<24} {'pcs':>3} {'config':<10} {'est':>4} {'regs':>4} {'spill':>5} "
          f"{'stack':>5} {'bar':>4} {'wbar':>4} {'s':>6}  status", flush=True)
    try:
        for name, d, label, problem, spec, batch in kernels(args.preset, args.direction, args.kernel, args.skip):
            batch = args.batch or batch
            for cfg in args.config:
                if cfg == "default":
                    c = heuristic(batch, False, problem=problem, spec=spec, dtype=args.dtype)
                elif cfg == "legacy":
                    c = Config(*LEGACY)
                else:
                    c = Config(*cfg)
                ints = {f"s{i}": (0 if r == "w" and problem.shared_weights else target_dim(problem, r))
                        for i, r in enumerate(spec.roles)}
                ints.update(sg=target_dim(problem, spec.target), Z=batch)
                # a fused backward: one output per part (tritp.codegen.cg_fused)
                ints.update({f"sg{i}": target_dim(problem, t) for i, t in enumerate(getattr(spec, "targets", ()))})
                est = estimate_registers(problem, spec, args.dtype, c)
                parts = []
                for piece in pieces_of(problem, spec):  # the kernels one launch runs, as the runtime splits it
                    path, src = kernel_source(problem, spec, args.dtype, c.block_c, piece)
                    job = {"path": str(path), "ptr": ptr, "ints": ints, "block_z": c.block_z,
                           "num_warps": c.num_warps, "num_stages": c.num_stages}
                    # two block_c that generate the same source (narrow segments) compile once
                    same = (src, json.dumps(ints), c.block_z, c.num_warps, c.num_stages)
                    r = dict(seen[same], same_as_above=True) if same in seen else worker.run(job, args.timeout)
                    seen[same] = {k: v for k, v in r.items() if k != "same_as_above"}
                    parts.append(dict(r, piece=None if piece is None else list(piece)))
                    if r["status"] != "ok":
                        break  # a piece over the time limit: the rest would be too, most likely
                ok = all(p["status"] == "ok" for p in parts)
                agg = {"status": "ok" if ok else next(p["status"] for p in parts if p["status"] != "ok"),
                       "seconds": round(sum(p["seconds"] for p in parts if not p.get("same_as_above")), 1),
                       "pieces": len(pieces_of(problem, spec)),
                       "same_as_above": all(p.get("same_as_above") for p in parts)}
                for k in ("regs", "spill_stores", "spill_loads", "stack", "block_z"):
                    vals = [p[k] for p in parts if k in p]
                    if vals and ok:
                        agg[k] = max(vals)
                for k in ("bar_sync", "bar_warp"):  # summed over the pieces
                    if ok and all(k in p for p in parts):
                        agg[k] = sum(p[k] for p in parts)
                rec = {"preset": name, "direction": d, "kernel": label, "spec": spec.tag, "dtype": args.dtype,
                       "config": c._asdict(), "requested": cfg if isinstance(cfg, str) else "explicit",
                       "estimate": est, **agg, "parts": parts}
                rows.append(rec)
                cs = f"{agg.get('block_z', c.block_z)}:{c.block_c}:{c.num_warps}" + (
                    f":{c.num_stages}" if c.num_stages > 1 else "")
                status = ("SPILL" if spilled(agg) else "ok") if ok else agg["status"]
                if agg["same_as_above"]:
                    status += " (same kernels as an earlier row)"
                cell = lambda k: agg.get(k, "-") if ok else "-"
                print(f"{name:<15} {d:<4} {label:<24} {agg['pieces']:>3} {cs:<10} {est:>4} {cell('regs'):>4} "
                      f"{cell('spill_stores'):>5} {cell('stack'):>5} {cell('bar_sync'):>4} {cell('bar_warp'):>4} "
                      f"{agg['seconds']:>6}  {status}", flush=True)
    finally:
        worker.stop()
    return rows


def add_common_options(ap: argparse.ArgumentParser, timeout: float = 120.0) -> None:
    """``--timeout``, ``--triton-cache`` and ``--json``: the options every offline audit shares."""
    ap.add_argument("--timeout", type=float, default=timeout, help="seconds per compile before it is killed")
    ap.add_argument("--triton-cache", default=None, metavar="DIR",
                    help="reuse this Triton cache (default: a fresh temporary one, cold compile times)")
    ap.add_argument("--json", default=None, metavar="PATH", help="also write the records as JSON")


def run_audit(audit_fn, args) -> int:
    """Run ``audit_fn(args, rows)``; SIGTERM stops the worker and keeps what was measured; then
    write ``--json`` and print the summary line. Returns 0: an audit reports, never fails."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rows = []
    try:
        audit_fn(args, rows)
    finally:
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
            print(f"wrote {args.json} ({len(rows)} records)")
    print(f"{len(rows)} compiles, {sum(map(spilled, rows))} spill, {sum(r['status'] != 'ok' for r in rows)} "
          "not compiled", flush=True)
    return 0


def main(argv=None) -> int:
    from tritp.presets import BENCH_PRESETS, PRESETS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="mace-medium",
                    help=f"comma-separated presets, or 'all' ({', '.join(BENCH_PRESETS)})")
    ap.add_argument("--direction", default="fwd,bwd", help="comma-separated: fwd, bwd, dbl (default fwd,bwd)")
    ap.add_argument("--config", default="default",
                    help="comma-separated BLOCK_Z:BLOCK_C:NUM_WARPS[:NUM_STAGES], 'default' or 'legacy' "
                         "(default: default)")
    ap.add_argument("--kernel", default="", help="comma-separated substrings of kernel names to keep "
                                                 "('out', 'grad x1', 'grad w', 'd(grad x2)/d x1', ...)")
    ap.add_argument("--skip", default="", help="comma-separated PRESET:DIR or PRESET:DIR:KERNEL to leave out")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--batch", type=int, default=0, help="batch for the default config and Z (default: preset's)")
    add_common_options(ap, 120.0)
    args = ap.parse_args(argv)
    args.preset = list(BENCH_PRESETS) if args.preset == "all" else [x for x in args.preset.split(",") if x]
    bad = [p for p in args.preset if p not in PRESETS]
    if bad:
        raise SystemExit(f"ptxas_audit: unknown preset {bad[0]!r}; known: {', '.join(PRESETS)}")
    args.direction = [x for x in args.direction.split(",") if x]
    if any(d not in ("fwd", "bwd", "dbl") for d in args.direction):
        raise SystemExit("ptxas_audit: --direction takes fwd, bwd, dbl")
    args.config = parse_configs(args.config)
    args.kernel = [x.strip() for x in args.kernel.split(",") if x.strip()]
    args.skip = {x.strip() for x in args.skip.split(",") if x.strip()}
    return run_audit(audit, args)


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        serve(compile_cg)
    else:
        sys.exit(main())
