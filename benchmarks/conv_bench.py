"""Fused equivariant graph convolution: tritp (atomic, deterministic, unfused) side by side
with OpenEquivariance's TensorProductConv and cuEquivariance's indexed tensor product.

Problem: mace-large (design notes §7): ``128x0e+128x1o+128x2e`` x ``0e+1o+2e+3o``, channelwise
(uvu), outputs filtered to ``0e+1o+2e+3o``, per-edge weights. Graphs, built here:

* ``diamond``: carbon diamond cubic (a = 3.567 A, 8 atoms per cell), ``--cells``^3 unit cells
  (default 5: 1000 atoms), **periodic** (minimum image; needs the box >= 2 x cutoff), every
  ordered pair closer than ``--cutoff`` (default 6 A) is an edge: 158 neighbours per atom,
  158,000 edges at the defaults;
* ``random``: ``--random-nodes`` nodes (default 2500), each receiving 64 edges from distinct
  random other nodes (160,000 edges).

Edges are sorted by (dst, src) -- the order OpenEquivariance's deterministic kernel requires --
and every variant gets the same arrays. Inputs are random normal. Directions: ``fwd``;
``fwdbwd`` (forward + gradients of node features, edge attributes and weights); ``dbl``
(forward, first gradients with ``create_graph``, then the gradient of a random linear function
of them: the forces-training pattern). Variants: ``tritp-atomic``, ``tritp-det`` (graph helper
built once, outside the timing), ``tritp-det-segwalk`` (the deterministic kernels as before
session 8: one edge walk per output segment, ``TRITP_SHARE_LOADS=0``, to time the shared walk
against), ``tritp-det-rows`` and ``tritp-atomic-rows`` (the convolution's tiles in the
row-on-warp form, ``TRITP_CONV_ROWS=1``; the atomic one on request), ``tritp-det-bwd-apart``
and ``tritp-atomic-bwd-apart`` (one backward kernel per gradient, as before the fused backward
-- which is one kernel for all three gradients under atomics, and one for the two edge
gradients beside x1's segment kernel under the deterministic scatter --
``TRITP_FUSED_BWD=0``; the forward is the same), ``tritp-atomic-blocksums`` (a block of edges
with one destination adds the sum of its rows once, ``TRITP_CONV_BLOCK_SUMS=1``: the default
until an H200 timed it slower than the row-by-row adds), ``tritp-det-x1-segment`` (the deterministic
backward's x1 gradient from its own segment kernel beside the fused edge pair, as before the
per-edge rows, ``TRITP_CONV_X1_ROWS=0``), ``tritp-atomic-dbl-apart`` and ``tritp-det-dbl-apart`` (``dbl``
only: the double backward's gradients one kernel each, as before they were fused into one
kernel, ``TRITP_FUSED_DBL=0``), ``tritp-unfused``
(gather -> tritp.compile layer ->
index_add), ``oeq-atomic``, ``oeq-det``, ``cueq`` (``ChannelWiseTensorProduct`` with
``indices_1``/``indices_out``, built by ``tritp.bench_peers.cueq_module`` with e3nn's coupling,
so its values compare).
Per variant: median ms (``triton.testing.do_bench`` on a GPU), peak memory above the inputs
(``torch.cuda.max_memory_allocated``), whether a second run is bit-identical and, for every
variant but the unfused one, the max error relative to the unfused tritp result. It reports, never asserts; results go to
``benchmarks/results/<date>-<gpu>-conv.json`` (GPU name, versions, date, command).

Run::

    python benchmarks/conv_bench.py                      # GPU: both graphs, fp32 + fp64
    python benchmarks/conv_bench.py --graphs diamond --dtypes float32 --directions fwd
    python benchmarks/conv_bench.py --quick               # CPU, Triton interpreter, tiny graph
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("tritp-atomic", "tritp-det", "tritp-det-segwalk", "tritp-det-rows", "tritp-atomic-rows",
            "tritp-det-bwd-apart", "tritp-det-x1-segment", "tritp-atomic-bwd-apart", "tritp-atomic-blocksums",
            "tritp-atomic-dbl-apart", "tritp-det-dbl-apart", "tritp-unfused", "oeq-atomic", "oeq-det", "cueq")
DEFAULT_VARIANTS = tuple(v for v in VARIANTS if v != "tritp-atomic-rows")
#: tritp variants that run another kernel form: (the variant they are, the environment set
#: while they compile and run)
FORM_ENV = {"tritp-det-segwalk": ("tritp-det", {"TRITP_SHARE_LOADS": "0"}),
            "tritp-det-rows": ("tritp-det", {"TRITP_CONV_ROWS": "1"}),
            "tritp-atomic-rows": ("tritp-atomic", {"TRITP_CONV_ROWS": "1"}),
            "tritp-det-bwd-apart": ("tritp-det", {"TRITP_FUSED_BWD": "0"}),
            "tritp-atomic-bwd-apart": ("tritp-atomic", {"TRITP_FUSED_BWD": "0"}),
            "tritp-atomic-blocksums": ("tritp-atomic", {"TRITP_CONV_BLOCK_SUMS": "1"}),
            "tritp-det-x1-segment": ("tritp-det", {"TRITP_CONV_X1_ROWS": "0"}),
            "tritp-atomic-dbl-apart": ("tritp-atomic", {"TRITP_FUSED_DBL": "0"}),
            "tritp-det-dbl-apart": ("tritp-det", {"TRITP_FUSED_DBL": "0"})}
#: Variants that differ from their base only in some directions: not run in the others
ONLY = {"tritp-atomic-dbl-apart": ("dbl",), "tritp-det-dbl-apart": ("dbl",)}
DIRECTIONS = ("fwd", "fwdbwd", "dbl")
MACE_LARGE = ("128x0e+128x1o+128x2e", "0e+1o+2e+3o", "0e+1o+2e+3o")
QUICK = ("4x0e+4x1o", "0e+1o", "0e+1o")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--graphs", nargs="+", default=["diamond", "random"], choices=["diamond", "random"])
    p.add_argument("--dtypes", nargs="+", default=None, choices=["float32", "float64"],
                   help="default: float32 float64 (--quick: float32)")
    p.add_argument("--directions", nargs="+", default=list(DIRECTIONS), choices=DIRECTIONS)
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=VARIANTS)
    p.add_argument("--cells", type=int, default=5, help="diamond unit cells per side")
    p.add_argument("--cutoff", type=float, default=6.0, help="diamond cutoff radius, Angstrom")
    p.add_argument("--random-nodes", type=int, default=2500)
    p.add_argument("--degree", type=int, default=64, help="in-degree of the random graph")
    p.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results on a GPU)")
    p.add_argument("--quick", action="store_true", help="CPU smoke run: interpreter, tiny problem and graphs")
    p.add_argument("--time-limit", type=float, default=None, metavar="S",
                   help="start no new (graph, dtype, direction) row after S seconds; Ctrl-C/SIGTERM also keep "
                        "what was measured")
    return p.parse_args(argv)


def diamond_graph(torch, cells: int, cutoff: float, a: float = 3.567):
    fcc = torch.tensor([[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0]], dtype=torch.float64)
    basis = torch.cat([fcc, fcc + 0.25])
    grid = torch.stack(torch.meshgrid(*[torch.arange(cells)] * 3, indexing="ij"), -1).reshape(-1, 3).double()
    pos = ((grid[:, None] + basis[None]) * a).reshape(-1, 3)
    box = cells * a
    if box < 2 * cutoff:
        print(f"warning: box {box:.2f} A < 2 x cutoff: minimum image misses periodic copies", file=sys.stderr)
    d = pos[None] - pos[:, None]  # d[i, j] = pos[j] - pos[i]
    d -= box * torch.round(d / box)
    r = d.norm(dim=-1)
    dst, src = ((r < cutoff) & (r > 0)).nonzero(as_tuple=True)  # row-major: sorted by (dst, src)
    return src, dst, pos.shape[0]


def random_graph(torch, n: int, degree: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    src = torch.argsort(torch.rand(n, n - 1, generator=g), dim=1)[:, :degree]
    src = torch.sort(src, dim=1).values
    dst = torch.arange(n).repeat_interleave(degree)
    src = src.reshape(-1)
    src = src + (src >= dst).long()  # skip self loops
    return src, dst, n


def build(variant, torch, problem, dtype, device, src, dst, n):
    """``fn(x, ea, w) -> out [n, dim_out]`` for one variant; raises if it cannot run here."""
    import tritp.conv_module as cm

    if variant in FORM_ENV:
        from tritp.kernels import form_env

        base, env = FORM_ENV[variant]
        with form_env(env):
            fn = build(base, torch, problem, dtype, device, src, dst, n)

        def run(*args):
            with form_env(env):
                return fn(*args)
        run.form_env = env  # directional() keeps it set through the backward too
        return run
    if variant.startswith("tritp"):
        scatter = "deterministic" if variant == "tritp-det" else "atomic"
        conv = cm.TensorProductConv(problem, scatter=scatter, check_indices=False, backend="triton")
        if variant == "tritp-unfused":
            conv.unfused_tp("triton").precompile(batch=src.shape[0], dtype=dtype, device=device)  # in parallel, now
            return lambda x, ea, w: conv.unfused(x, ea, w, src, dst, n, backend="triton")
        conv.precompile(n, src.shape[0], dtype=dtype, index_dtype=src.dtype, device=device)
        graph = cm.conv_graph(src, dst, n) if scatter == "deterministic" else None
        return lambda x, ea, w: conv(x, ea, w, src, dst, n, graph=graph)
    if variant.startswith("oeq"):
        import numpy as np

        from tritp.bench_peers import import_peer

        oeq = import_peer("openequivariance")  # bounded under gpu_check.sh, which builds OEQ in the background

        npdt = {torch.float32: np.float32, torch.float64: np.float64}[dtype]
        tpp = oeq.TPProblem(str(problem.irreps_in1), str(problem.irreps_in2), str(problem.irreps_out),
                            [(i.i_in1, i.i_in2, i.i_out, i.mode, i.has_weight) for i in problem.instructions],
                            shared_weights=False, internal_weights=False, irrep_dtype=npdt, weight_dtype=npdt)
        det = variant == "oeq-det"
        conv = oeq.TensorProductConv(tpp, torch_op=True, deterministic=det)
        rows, cols = dst.long(), src.long()  # OEQ: receiver rows, sender cols; edges sorted by row
        if det:
            sender_perm = torch.argsort(cols * n + rows)
            return lambda x, ea, w: conv.forward(x, ea, w, rows, cols, sender_perm)
        return lambda x, ea, w: conv.forward(x, ea, w, rows, cols)
    from tritp.bench_peers import cueq_module

    tp, _ = cueq_module(problem, device, dtype)
    return lambda x, ea, w: tp(x, ea, w, indices_1=src, indices_out=dst, size_out=n)


def directional(torch, fn, direction, x, ea, w):
    """The timed closure of one direction; a kernel-form variant's environment (``FORM_ENV``)
    stays set through its backward and double backward, whose kernels are chosen at launch."""
    gen = torch.Generator(device=x.device).manual_seed(1)
    go = None
    env = getattr(fn, "form_env", None)

    def run():
        if env is None:
            return body()
        from tritp.kernels import form_env

        with form_env(env):
            return body()

    def body():
        nonlocal go
        if direction == "fwd":  # inference: nothing saved for backward
            with torch.no_grad():
                return fn(x, ea, w)
        y = fn(x, ea, w)
        if go is None:
            go = torch.randn(y.shape, generator=gen, device=y.device, dtype=y.dtype)
        g = torch.autograd.grad(y, (x, ea, w), go, create_graph=direction == "dbl")
        if direction == "fwdbwd":
            return g
        s = sum((gi * gi.detach().flip(0)).sum() for gi in g)  # a fixed linear function of the grads
        return torch.autograd.grad(s, (x, ea, w))

    return run


def timer(torch, fn, device, quick):
    if device.type == "cuda":
        from triton.testing import do_bench

        return do_bench(fn, warmup=25, rep=100, return_mode="median")
    ts = []
    for _ in range(1 if quick else 3):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts)


def peak_mb(torch, fn, device):
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def max_rel(torch, a, b):
    a, b = (a if isinstance(a, (tuple, list)) else [a]), (b if isinstance(b, (tuple, list)) else [b])
    return max(((u.double() - v.double()).abs().max() / v.double().abs().max().clamp_min(1e-300)).item()
               for u, v in zip(a, b))


def versions():
    from tritp.bench_peers import import_peer

    out = {"python": platform.python_version()}
    for mod in ("torch", "triton", "tritp", "openequivariance", "cuequivariance", "cuequivariance_torch"):
        try:
            out[mod] = getattr(import_peer(mod), "__version__", "?")
        except Exception as e:  # noqa: BLE001 - record any import failure as the reason
            out[mod] = f"not importable: {type(e).__name__}: {e}"
    return out


def main(argv=None) -> int:
    args = parse(argv)
    args.dtypes = args.dtypes or (["float32"] if args.quick else ["float32", "float64"])
    if args.quick:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported
    sys.path.insert(0, str(ROOT))
    import torch

    from tritp.codegen import Problem

    # the unfused path first: the reference the fused variants' errors are measured against
    args.variants = sorted(args.variants, key=lambda v: v != "tritp-unfused")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.quick else "cpu")
    irreps = QUICK if args.quick else MACE_LARGE
    problem = Problem.channelwise(*irreps, shared_weights=False)
    graphs = {}
    if "diamond" in args.graphs:
        graphs["diamond"] = diamond_graph(torch, 1 if args.quick else args.cells, 1.7 if args.quick else args.cutoff)
    if "random" in args.graphs:
        n, k = (12, 3) if args.quick else (args.random_nodes, args.degree)
        graphs["random"] = random_graph(torch, n, k)
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({platform.processor() or 'unknown'})"
    report = {"gpu": gpu, "device": str(device), "versions": versions(), "date": datetime.datetime.now().isoformat(),
              "command": " ".join([sys.executable] + sys.argv), "problem": problem.key, "interpreter": args.quick,
              "graphs": {}, "results": []}
    print(f"# {gpu}; problem {' x '.join(irreps)} (channelwise, per-edge weights)")
    signal.signal(signal.SIGTERM, _interrupt)  # a hard stop still writes what was measured
    from tritp.cli import interruptible

    interruptible()  # gpu_check.sh stops it with SIGINT, maybe from a background job
    try:
        measure(args, torch, problem, graphs, device, report)
    except KeyboardInterrupt:
        report["interrupted"] = True
        print("\ninterrupted: writing what was measured")
    report["versions"] = versions()  # again: a peer still importing at the start may be there now
    write(args, report, gpu, device)
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def measure(args, torch, problem, graphs, device, report) -> None:
    """Every (graph, dtype, direction, variant) row into ``report["results"]``."""
    start = time.monotonic()
    for gname, (src, dst, n) in graphs.items():
        src, dst = src.to(device), dst.to(device)
        E = src.shape[0]
        report["graphs"][gname] = {"nodes": n, "edges": E, "periodic": gname == "diamond"}
        print(f"\n## graph {gname}: {n} nodes, {E} edges ({E / n:.1f} per node)")
        for dname in args.dtypes:
            dtype = getattr(torch, dname)
            g = torch.Generator(device=device).manual_seed(0)
            x = torch.randn(n, problem.irreps_in1.dim, generator=g, device=device, dtype=dtype, requires_grad=True)
            ea = torch.randn(E, problem.irreps_in2.dim, generator=g, device=device, dtype=dtype, requires_grad=True)
            w = torch.randn(E, problem.weight_numel, generator=g, device=device, dtype=dtype, requires_grad=True)
            fns, refs = {}, {}
            for v in args.variants:
                try:
                    fns[v] = build(v, torch, problem, dtype, device, src, dst, n)
                except Exception as e:  # noqa: BLE001 - a peer that cannot run is reported, not fatal
                    fns[v] = f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
            for direction in args.directions:
                if args.time_limit is not None and time.monotonic() - start > args.time_limit:
                    report.setdefault("skipped_time_limit", []).append(f"{gname}/{dname}/{direction}")
                    continue
                print(f"{dname:8s} {direction:7s}", end="", flush=True)
                for v in args.variants:
                    if direction not in ONLY.get(v, (direction,)):
                        continue
                    row = {"graph": gname, "dtype": dname, "direction": direction, "variant": v}
                    fn = fns[v]
                    if isinstance(fn, str):
                        row["status"] = fn
                    else:
                        try:
                            run = directional(torch, fn, direction, x, ea, w)
                            res = run()
                            if v == "tritp-unfused":
                                refs[direction] = res
                            elif direction in refs:
                                row["max_rel_err_vs_unfused"] = max_rel(torch, res, refs[direction])
                            again = run()  # determinism: is a second run bit-identical?
                            pairs = zip(*(r if isinstance(r, tuple) else [r] for r in (res, again)))
                            row["bit_identical_rerun"] = all(torch.equal(a, b) for a, b in pairs)
                            row["peak_extra_mb"] = peak_mb(torch, run, device)
                            row["ms"] = timer(torch, run, device, args.quick)
                            row["status"] = "ok"
                        except Exception as e:  # noqa: BLE001
                            row["status"] = f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
                    report["results"].append(row)
                    cell = f"{row['ms']:.3f} ms" if "ms" in row else "n/a"
                    if row.get("peak_extra_mb") is not None:
                        cell += f" {row['peak_extra_mb']:.0f} MB"
                    print(f" | {v} {cell}", end="", flush=True)
                print()


def write(args, report, gpu, device) -> None:
    """Print the notes and write the JSON."""
    if report.get("skipped_time_limit"):
        print(f"note: --time-limit {args.time_limit:g} s: skipped {', '.join(report['skipped_time_limit'])}")
    notes = {}
    for row in report["results"]:
        if row["status"] != "ok":
            where = f"{row['graph']}/{row['dtype']}/{row['direction']}"
            notes.setdefault((row["variant"], row["status"]), []).append(where)
    for (variant, status), where in notes.items():
        print(f"note: {variant}: {status} ({len(where)} cases, first {where[0]})")
    out = args.out or (ROOT / "benchmarks" / "results" if device.type == "cuda" else Path("/tmp/tritp-bench"))
    out.mkdir(parents=True, exist_ok=True)
    slug = "".join(c if c.isalnum() else "-" for c in gpu.lower()).strip("-")[:40]
    stem = f"{datetime.date.today().isoformat()}-{slug}-conv"
    path, k = out / f"{stem}.json", 2
    while path.exists():  # never over an older run's file (as tritp.cli_bench.write_json)
        path, k = out / f"{stem}-{k}.json", k + 1
    path.write_text(json.dumps(report, indent=1))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    sys.exit(main())
