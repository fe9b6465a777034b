"""The first call of a new tensor product, and a new process's, for an H100, measured on this CPU.

What a user waits for the first time a layer runs is CPU work: generating the kernel sources
(the coupling coefficients come from the shipped table or the on-disk cache) and Triton's
compile to cubin. A new process with warm caches -- the generated files and Triton's cache on
disk -- pays for loading them only. Neither needs a GPU: a stand-in driver that reports an
sm_90 target (:class:`tritp.compile_pool.CompileTarget`; nothing is launched) lets
``TensorProduct.precompile`` run Triton's real ``warmup`` path, which is what a first launch
compiles through. For each preset this script runs, each in a fresh subprocess:

* **cold**: empty ``TRITP_CACHE_DIR`` and ``TRITON_CACHE_DIR``: ``tritp.compile`` (build) then
  ``precompile`` of the asked directions (generate + compile, in parallel as at a first call);
* **warm**: a new process on the same caches: import, build, precompile (every kernel a hit).

and prints the seconds of each phase. Issue 3's targets, for mace-large's forward on the GPU
host: cold under 5 s, warm under 1 s (imports of torch and Triton aside). It reports; it never
asserts a time. Machines differ: say which CPU ran it (``--json`` records ``os.cpu_count()``).

Run::

    python benchmarks/first_call.py                         # mace-large and mace-medium, forward
    python benchmarks/first_call.py --preset nequip-benzene --directions fwd,bwd --json /tmp/fc.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r'''
import json, sys, time
t0 = time.perf_counter()
import torch
from triton.backends.compiler import GPUTarget
from triton.runtime import driver
import tritp
from tritp.compile_pool import CompileTarget
from tritp.presets import preset
t1 = time.perf_counter()
driver.set_active(CompileTarget(GPUTarget("cuda", 90, 32)))
name, directions = sys.argv[1], tuple(sys.argv[2].split(","))
problem, batch = preset(name)
tp = tritp.TensorProduct(problem, backend="triton")
t2 = time.perf_counter()
n = tp.precompile(batch=batch, directions=directions, device="cpu")
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "build_s": t2 - t1, "compile_s": t3 - t2, "kernels": n}))
'''


def run_child(name: str, directions: str, caches: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITP_CACHE_DIR=str(caches / "tritp"), TRITON_CACHE_DIR=str(caches / "triton"),
               TRITON_DEFAULT_FP_FUSION=env.get("TRITON_DEFAULT_FP_FUSION", "1"), PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", CHILD, name, directions], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        return {"error": (r.stderr or r.stdout).strip().splitlines()[-1][:300]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="mace-large,mace-medium", help="comma-separated presets")
    ap.add_argument("--directions", default="fwd", help="comma-separated: fwd, bwd, dbl (default fwd)")
    ap.add_argument("--json", metavar="PATH", help="also write the records as JSON")
    args = ap.parse_args(argv)
    rows = []
    print(f"{'preset':<16} {'dirs':<12} {'run':<5} {'import':>7} {'build':>7} {'compile':>8} {'kernels':>8}", flush=True)
    for name in [n for n in args.preset.split(",") if n]:
        with tempfile.TemporaryDirectory(prefix="tritp-first-call-") as tmp:
            for run in ("cold", "warm"):
                rec = dict(run_child(name, args.directions, Path(tmp)), preset=name, directions=args.directions, run=run)
                rows.append(rec)
                if "error" in rec:
                    print(f"{name:<16} {args.directions:<12} {run:<5} failed: {rec['error']}", flush=True)
                    break
                print(f"{name:<16} {args.directions:<12} {run:<5} {rec['import_s']:7.2f} {rec['build_s']:7.2f} "
                      f"{rec['compile_s']:8.2f} {rec['kernels']:>8}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu_count": os.cpu_count(), "rows": rows}, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
