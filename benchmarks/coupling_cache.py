"""How long a process waits for the coupling table: first run on a machine (cold) and after.

tritp derives every coupling coefficient exactly once per machine and saves the float64 table
in its cache (``codegen/tables.py``). This script measures what that costs a user process:

- cold: a fresh, empty ``TRITP_CACHE_DIR`` (a temporary folder), so the table is computed
  and written (for lmax <= 6 it is taken from the table shipped in the package,
  ``codegen/coupling_L6.npz``, and only written; lmax 7 or 8 derives the 8-table);
- warm: a second process on the same folder, so the table is read back.

Each measurement runs in its own subprocess. Timing starts inside it, after interpreter
start-up, and is split into phases: ``import numpy``; ``from tritp.codegen.coupling import
sparse_coupling`` (this includes whatever ``tritp/__init__.py`` imports, which the report
names); the first ``sparse_coupling`` call (load or compute); and the loop that touches every
triple ``(l1, l2, l3)`` with all degrees <= lmax. It reports; it never asserts, and it
writes nothing outside its temporary folders.

Run::

    python benchmarks/coupling_cache.py             # lmax 6, 3 repeats
    python benchmarks/coupling_cache.py --lmax 8 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# Runs in the child. Kept as source text so the parent never imports tritp (and so never
# warms anything the child is meant to measure).
CHILD = r"""
import gc, json, sys, time
lmax = int(sys.argv[1])
# Python's cyclic GC can run a full collection of everything imported so far in the middle of
# the lookups; time it so the report can tell the table's cost from the collector's.
gc_time, gc_start = [0.0], [0.0]
def _gc(phase, info):
    if phase == "start":
        gc_start[0] = time.perf_counter()
    else:
        gc_time[0] += time.perf_counter() - gc_start[0]
gc.callbacks.append(_gc)
t0 = time.perf_counter()
import numpy
t1 = time.perf_counter()
from tritp.codegen.coupling import sparse_coupling
t2 = time.perf_counter()
gc_before = gc_time[0]
triples = nnz = 0
t_first = None
for l1 in range(lmax + 1):
    for l2 in range(lmax + 1):
        for l3 in range(abs(l1 - l2), min(l1 + l2, lmax) + 1):
            nnz += len(sparse_coupling(l1, l2, l3))
            triples += 1
            if t_first is None:
                t_first = time.perf_counter()
t3 = time.perf_counter()
print(json.dumps({"numpy": t1 - t0, "import": t2 - t1, "first": t_first - t2, "loop": t3 - t2,
                  "total": t3 - t1, "loop_gc": gc_time[0] - gc_before, "triples": triples, "nnz": nnz,
                  "heavy": [m for m in ("torch", "triton", "sympy") if m in sys.modules]}))
"""

PHASES = (
    ("numpy", "import numpy"),
    ("import", "import tritp.codegen"),
    ("first", "first lookup"),
    ("loop", "all lookups"),
    ("loop_gc", "  of which Python GC"),
    ("total", "import+lookups"),
)


def measure(lmax: int, cache_dir: Path) -> dict:
    """One child process with ``TRITP_CACHE_DIR=cache_dir``; its phase times in seconds.

    Example:
        >>> with tempfile.TemporaryDirectory() as d:  # doctest: +SKIP
        ...     measure(6, Path(d))["nnz"]
        11896
    """
    env = dict(os.environ, TRITP_CACHE_DIR=str(cache_dir))
    proc = subprocess.run([sys.executable, "-c", CHILD, str(lmax)], env=env, capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed (status {proc.returncode}):\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(lmax: int, repeats: int) -> dict:
    """``repeats`` cold/warm pairs, each pair on its own empty cache folder.

    Returns ``{"cold": [...], "warm": [...], "table_bytes": int}``.
    """
    cold, warm, size = [], [], 0
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="tritp-bench-cache-") as d:
            cold.append(measure(lmax, Path(d)))
            warm.append(measure(lmax, Path(d)))
            size = sum(p.stat().st_size for p in Path(d).rglob("*.npz"))
    return {"cold": cold, "warm": warm, "table_bytes": size}


def report(lmax: int, results: dict) -> str:
    """The results as a small plain-text table of median times in milliseconds."""
    cold, warm = results["cold"], results["warm"]
    n = len(cold)
    lines = [
        f"coupling table, all triples with l1, l2, l3 <= {lmax}: {cold[0]['triples']} triples, "
        f"{cold[0]['nnz']} nonzeros; cache files {results['table_bytes'] / 1024:.1f} KiB",
        f"median of {n} run{'s' * (n != 1)}, ms, measured inside each process after start-up",
        "",
        f"{'phase':<22}{'cold':>12}{'warm':>12}",
    ]
    for key, label in PHASES:
        c = statistics.median(r[key] for r in cold) * 1e3
        w = statistics.median(r[key] for r in warm) * 1e3
        lines.append(f"{label:<22}{c:>12.1f}{w:>12.1f}")
    lines.append("")
    lines.append("'first lookup' loads (warm) or computes and saves (cold) the table; "
                 "'all lookups' includes it.")
    lines.append("'of which Python GC': the cyclic collector's passes during the lookups, mostly a first "
                 "full pass over the objects imported before (torch's); any allocation burst would trigger it.")
    if cold[0]["heavy"]:
        lines.append(f"note: 'import tritp.codegen' loads {', '.join(cold[0]['heavy'])} (through "
                     "tritp/__init__.py), so most of that phase is not the coupling code.")
    if lmax > 6:
        lines.append("note: sparse_coupling reads the table of max(l1, l2, l3) (at least 6), so touching "
                     f"every triple up to {lmax} loads or computes {lmax - 5} tables (L = 6..{lmax}).")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Cold and warm cost of tritp's coupling table.")
    ap.add_argument("--lmax", type=int, default=6, help="largest degree to touch (default 6)")
    ap.add_argument("--repeats", type=int, default=3, help="cold/warm pairs, median reported (default 3)")
    ap.add_argument("--json", action="store_true", help="print the raw per-run numbers as JSON too")
    args = ap.parse_args(argv)
    if args.lmax < 0 or args.repeats < 1:
        ap.error("--lmax must be >= 0 and --repeats >= 1")
    results = run(args.lmax, args.repeats)
    print(report(args.lmax, results))
    if args.json:
        print(json.dumps({"lmax": args.lmax, **results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
