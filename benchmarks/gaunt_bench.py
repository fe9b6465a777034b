"""Gaunt tensor product: tritp's sparse, grid, fft and separable kernels side by side with e3nn's CG path
and the three-GEMM torch version, for L = 1..8, 32 and 128 channels, batch 10,000, fp32.

Both inputs carry ``C`` channels of degrees ``0..L`` (e3nn's ``mul_ir`` layout), the output
degrees ``0..Lo`` (``--lo same``: ``Lo = L`` as in design notes section 7; ``--lo full``:
``Lo = 2L``, capped at 12). Contenders:

* ``sparse``, ``grid``, ``fft``: :func:`tritp.gaunt.compile_gaunt` with that implementation
  (``grid-tf32`` / ``fft-tf32``: the same with ``tl.dot`` in tf32; ``-tf32x3``: in three tf32
  products per fp32 product, tensor cores at about fp32 accuracy -- in ``ieee`` precision an fp32
  ``tl.dot`` runs on CUDA-core FMAs, whose 67 TFLOP/s bound the grid GEMMs at L = 8 to about
  1.3 ms at C = 32, batch 10,000, above the 0.6 ms the 50x target asks);
* ``separable``: Gauss-Legendre nodes with the azimuthal integral in closed form, FMAs in fp32
  (:mod:`tritp.codegen.gaunt_sep`; a sixth to a ninth of the grid's multiply-adds at L = 8);
  ``separable-pN``: the same at its default rows and warps in ``N`` walks over the nodes (at
  L = 8 the default is 3; one walk spills, four recompute more);
* ``e3nn``: ``o3.TensorProduct`` with the same uuu paths and coefficients;
* ``torch3`` / ``torch3-tf32``: ``((x @ S1) * (y @ S2)) @ A`` on the exact grid, inputs already
  in a ``[batch * C, K]`` layout (what a user would write; generous to it: no layout change).

For each (L, C, direction) it checks every contender against the float64 reference on the
first rows, times it (``do_bench`` median on CUDA, wall clock on CPU), and reports ms, TFLOP/s
(each algorithm's own FLOPs: sparse and e3nn ``3 * nonzeros`` per (sample, channel), grid,
fft and torch3 their GEMMs; forward+backward counts three producers), % of the roofline
``min(peak, intensity * bandwidth)`` with the matching peak (fp32 CUDA cores, or tf32 tensor
cores for tf32 GEMMs; peaks are parameters, H100 SXM defaults), and the crossover degrees where
the fastest tritp implementation changes. JSON goes to ``benchmarks/results/`` on a GPU, a
temporary folder on a CPU. It reports; it never asserts.

Run::

    python benchmarks/gaunt_bench.py --time-limit 500          # a GPU
    python benchmarks/gaunt_bench.py --quick                    # CPU, Triton interpreter, tiny sizes
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

if not torch.cuda.is_available():  # triton reads it when imported, so before tritp is
    os.environ.setdefault("TRITON_INTERPRET", "1")

from tritp import bench, cli_bench  # noqa: E402
from tritp.cli import interruptible  # noqa: E402
from tritp.codegen.gaunt_tables import grid_tables  # noqa: E402
from tritp.gaunt import compile_gaunt  # noqa: E402
from tritp.gaunt_reference import gaunt_reference  # noqa: E402

TRITP = ("sparse", "grid", "fft", "separable", "grid-tf32", "fft-tf32", "grid-tf32x3", "fft-tf32x3",
         "separable-p1", "separable-p2", "separable-p3", "separable-p4")
ALL = TRITP + ("e3nn", "torch3", "torch3-tf32")


def irreps(C: int, L: int) -> str:
    return "+".join(f"{C}x{l}{'e' if l % 2 == 0 else 'o'}" for l in range(L + 1))


def to_rows(x: torch.Tensor, C: int, L: int) -> torch.Tensor:
    """mul_ir ``[B, C*(L+1)^2]`` -> ``[B*C, (L+1)^2]`` (the torch version's layout)."""
    parts, o = [], 0
    for l in range(L + 1):
        parts.append(x[:, o:o + C * (2 * l + 1)].reshape(-1, C, 2 * l + 1))
        o += C * (2 * l + 1)
    return torch.cat(parts, dim=2).reshape(-1, (L + 1) ** 2)


def build(name: str, L: int, lo: int, C: int, device):
    """``(fn(x1, x2) -> y in mul_ir, prepare(x) -> what fn takes, gaunt problem, matching peak)``."""
    ident = lambda x: x  # noqa: E731
    if name in TRITP:
        impl, _, prec = name.partition("-")
        launch = None
        if impl == "separable" and prec:  # separable-pN: the default rows and warps, N walks
            launch, prec = (128, 4, int(prec[1:])), ""
        gp = compile_gaunt(irreps(C, L), irreps(C, L), lmax_out=lo, implementation=impl,
                           precision=prec or "ieee", backend="triton", launch=launch).to(device)
        return gp, ident, gp.problem, prec or "fp32"
    grid_p = compile_gaunt(irreps(C, L), irreps(C, L), lmax_out=lo, implementation="grid", backend="reference").problem
    if name == "e3nn":
        from e3nn import o3

        ins = [i.as_tuple() for i in grid_p.cg_problem().instructions]
        tp = o3.TensorProduct(irreps(C, L), irreps(C, L), irreps(C, lo), ins, irrep_normalization="none",
                              path_normalization="none").to(device)
        return tp, ident, grid_p.replace(implementation="sparse"), "fp32"
    s, w = grid_tables(range(L + 1), *grid_p.grid_size)
    so, _ = grid_tables(range(lo + 1), *grid_p.grid_size)
    S = torch.tensor(s, dtype=torch.float32, device=device)
    A = torch.tensor((so * w).T, dtype=torch.float32, device=device)
    tf32 = name.endswith("tf32")

    def torch3(x, y):
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            return ((x @ S) * (y @ S)) @ A
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old

    return torch3, lambda x: to_rows(x, C, L), grid_p, "tf32" if tf32 else "fp32"


def run_one(name, L, lo, C, batch, directions, args, timer, device, log) -> list:
    fn, prep, problem, peak_kind = build(name, L, lo, C, device)
    g = torch.Generator().manual_seed(0)
    x64 = [torch.randn(batch, irreps_dim(C, L), generator=g, dtype=torch.float64) for _ in range(2)]
    n = min(batch, args.check_rows)
    ref = gaunt_reference(problem.replace(implementation="grid"), x64[0][:n], x64[1][:n])
    xs = [prep(x.to(device=device, dtype=torch.float32)).requires_grad_() for x in x64]
    y = fn(*xs)
    got = y[: n * C] if name.startswith("torch3") else y[:n]
    want = to_rows(ref, C, lo) if name.startswith("torch3") else ref
    err = ((got.double().cpu() - want).abs().max() / want.abs().max()).item()
    rows = batch * C
    k1, ko = (L + 1) ** 2, (lo + 1) ** 2
    out = []
    for d in directions:
        if d == "fwd":
            ms = timer(lambda: fn(*xs))
        else:
            gy = torch.randn_like(y)
            ms = timer(lambda: torch.autograd.grad(fn(*xs), xs, gy))
        mult = 1 if d == "fwd" else 3
        flops = problem.flops() * rows * mult
        nbytes = 4 * rows * ((2 * k1 + ko) if d == "fwd" else (2 * k1 + ko) + (4 * k1 + ko))
        peak = {"tf32": args.peak_tf32, "tf32x3": args.peak_tf32 / 3}.get(peak_kind, args.peak_fp32)
        roof = min(peak, flops / nbytes * args.bandwidth)
        rec = {"impl": name, "L": L, "Lo": lo, "C": C, "batch": batch, "direction": d, "ms": ms, "flops": flops,
               "tflops": flops / (ms * 1e-3) / 1e12, "bytes": nbytes, "peak": peak_kind,
               "roofline_pct": 100 * flops / (ms * 1e-3) / roof, "rel_err_fp64": err}
        log(f"L={L} C={C} {d:6s} {name:11s} {ms:9.4f} ms {rec['tflops']:7.2f} TFLOP/s "
            f"{rec['roofline_pct']:5.1f}% roof  err {err:.1e}")
        out.append(rec)
    return out


def irreps_dim(C: int, L: int) -> int:
    return C * (L + 1) ** 2


def crossovers(results: list) -> dict:
    """Per (C, direction): the fastest tritp implementation at each L and the degrees where it
    changes, plus its speedup over e3nn and over the fp32 torch version."""
    out = {}
    for C in sorted({r["C"] for r in results}):
        for d in sorted({r["direction"] for r in results}):
            rs = [r for r in results if r["C"] == C and r["direction"] == d]
            best, changes, speed = {}, [], {}
            for L in sorted({r["L"] for r in rs}):
                at = {r["impl"]: r["ms"] for r in rs if r["L"] == L}
                mine = {k: v for k, v in at.items() if k in TRITP}
                if not mine:
                    continue
                b = min(mine, key=mine.get)
                if best and best[max(best)] != b:
                    changes.append(f"{best[max(best)]}->{b} at L={L}")
                best[L] = b
                speed[L] = {peer: at[peer] / mine[b] for peer in ("e3nn", "torch3", "torch3-tf32") if peer in at}
            out[f"C={C} {d}"] = {"best": best, "crossovers": changes, "speedup_of_best": speed}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/gaunt_bench.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (L=1..2, C=4, batch 16): a CPU smoke run")
    p.add_argument("--L", default="1-8", help="degrees, e.g. 1-8 or 2,4,6")
    p.add_argument("--channels", default="32,128")
    p.add_argument("--batch", type=int, default=10_000)
    p.add_argument("--lo", choices=("same", "full"), default="same")
    p.add_argument("--impls", default="sparse,grid,fft,separable,e3nn,torch3,torch3-tf32", help=f"among {','.join(ALL)}")
    p.add_argument("--directions", default="fwd,fwdbwd")
    p.add_argument("--sparse-max-l", type=int, default=6, help="skip sparse above this L (compile time ~ L^5)")
    p.add_argument("--check-rows", type=int, default=64)
    p.add_argument("--peak-fp32", type=float, default=67e12, help="FLOP/s, CUDA cores (H100 SXM)")
    p.add_argument("--peak-tf32", type=float, default=495e12, help="FLOP/s, dense tf32 tensor cores (H100 SXM)")
    p.add_argument("--bandwidth", type=float, default=3.35e12, help="bytes/s, HBM (H100 SXM)")
    p.add_argument("--time-limit", type=float, default=None, help="seconds; stop starting new measurements after")
    p.add_argument("--out", default=None, help="folder for the JSON")
    p.add_argument("--no-precompile", action="store_true",
                   help="compile each kernel at its first launch instead of all at once, in parallel, first")
    args = p.parse_args(argv)
    ls = _ints(args.L) if not args.quick else [1, 2]
    chans = _ints(args.channels) if not args.quick else [4]
    batch = args.batch if not args.quick else 16
    impls = [i for i in args.impls.split(",") if i]
    bad = [i for i in impls if i not in ALL]
    if bad:
        p.error(f"--impls: unknown {bad}; choose among {', '.join(ALL)}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    timer = bench.default_timer(device, args.quick)
    started = time.monotonic()
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    result = {"schema": 1, "kind": "gaunt-quick" if args.quick else "gaunt",
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(sys.argv), "device_name": torch.cuda.get_device_name() if device.type == "cuda"
              else "cpu", "interpreter": bench.interpreter_active(), "dtype": "float32",
              "peaks": {"fp32": args.peak_fp32, "tf32": args.peak_tf32, "bandwidth": args.bandwidth},
              "copy_bandwidth_Bps": bench.copy_bandwidth(device, timer), "results": [], "failures": {}}
    interruptible()  # gpu_check.sh stops it with SIGINT, maybe from a background job
    try:
        if device.type == "cuda" and not args.no_precompile:
            precompile_all(impls, ls, chans, batch, args, started, log)
        for C in chans:
            for L in ls:
                lo = L if args.lo == "same" else min(2 * L, 12)
                for name in impls:
                    if name == "sparse" and L > args.sparse_max_l:
                        continue
                    if args.time_limit and time.monotonic() - started > args.time_limit:
                        raise KeyboardInterrupt
                    try:
                        result["results"] += run_one(name, L, lo, C, batch, args.directions.split(","), args, timer,
                                                     device, log)
                    except Exception as e:  # noqa: BLE001  (a benchmark reports failures, never stops on one)
                        result["failures"][f"{name} L={L} C={C}"] = f"{type(e).__name__}: {e}"[:300]
                        log(f"L={L} C={C} {name}: FAILED {type(e).__name__}: {e}"[:300])
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
    except KeyboardInterrupt:
        result["interrupted"] = True
        log("stopped: keeping what was measured")
    result["crossovers"] = crossovers(result["results"])
    result["versions"] = cli_bench.versions()
    result["elapsed_s"] = time.monotonic() - started
    for k, v in result["crossovers"].items():
        print(f"{k}: best {v['best']}; crossovers {v['crossovers'] or 'none'}")
    out = args.out or (Path(__file__).resolve().parent / "results" if device.type == "cuda"
                       else tempfile.mkdtemp(prefix="tritp-gaunt-bench-"))
    result["device_name"] = result["device_name"] or "unknown"
    print(f"wrote {cli_bench.write_json(result, out)}")
    return 0


def precompile_all(impls, ls, chans, batch, args, started, log) -> None:
    """Compile every tritp kernel the run will launch, all at once in parallel (worker processes
    on a many-core host: :func:`tritp.kernels.precompile`), within the first third of the time
    limit; what does not finish compiles at its first launch, which the timer never sees."""
    from tritp.gaunt_launch import gaunt_plans
    from tritp.kernels import precompile

    directions = {"fwd"} | ({"bwd"} if "fwdbwd" in args.directions.split(",") else set())
    plans = []
    for C in chans:
        for L in ls:
            lo = L if args.lo == "same" else min(2 * L, 12)
            for name in impls:
                if name not in TRITP or (name == "sparse" and L > args.sparse_max_l):
                    continue
                try:
                    gp, *_ = build(name, L, lo, C, torch.device("cuda"))
                    plans += gaunt_plans(gp.kernel_problem, batch, tuple(directions), torch.float32, "cuda",
                                         gp.launches["float32"])
                except Exception as e:  # noqa: BLE001  (run_one reports it)
                    log(f"precompile: {name} L={L} C={C}: {type(e).__name__}: {e}"[:200])
    budget = args.time_limit / 3 if args.time_limit else None
    t0 = time.monotonic()
    n = precompile(plans, timeout=budget, ignore_errors=True)
    log(f"precompiled {n} kernels of {len(plans)} launches in {time.monotonic() - t0:.1f} s")


def _ints(text: str) -> list:
    if "-" in text:
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(x) for x in text.split(",") if x]


if __name__ == "__main__":
    sys.exit(main())
