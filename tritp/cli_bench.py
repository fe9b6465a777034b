"""``tritp bench``: time tritp against e3nn, cuEquivariance and OpenEquivariance.

Runs :mod:`tritp.bench` on presets (``--preset NAME``, repeatable, or ``all``) or on one
problem given as ``IN1 IN2 OUT --mode ...``, prints a table (ms per implementation, tritp over
the best peer, % of the I/O floor, error against the float64 reference, the design's H100
anchor) and writes a JSON file ``<date>-<gpu-slug>-<kind>.json``. ``benchmarks/harness.py``
is the same command as a script. It reports; it never asserts a time.

Example (shell)::

    tritp bench --preset all                        # on a GPU: every preset, all peers
    tritp bench --preset mace-medium --directions fwd,fwdbwd --peers e3nn
    TRITON_INTERPRET=1 tritp bench --quick --out /tmp/tritp-bench   # CPU smoke run
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import re
import sys
import tempfile
from pathlib import Path

from .cli_show import add_problem_options, make_console

DEFAULT_BATCH = 50_000
QUICK_BATCH = 16
DISTRIBUTIONS = ("torch", "triton", "e3nn", "cuequivariance", "cuequivariance-torch",
                 "cuequivariance-ops-torch-cu13", "cuequivariance-ops-cu13", "openequivariance", "tritp")


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``tritp bench`` (shared with ``benchmarks/harness.py``)."""
    p.add_argument("irreps", nargs="*", metavar="IRREPS",
                   help="three irreps IN1 IN2 OUT: one problem instead of presets")
    add_problem_options(p, default_mode="channelwise")
    p.add_argument("--preset", action="append", metavar="NAME",
                   help="a named problem (repeatable, or a comma list), or 'all'")
    p.add_argument("--batch", type=int, help="rows for every direction (default: each preset's, dbl capped at 20000)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--directions", default="fwd,fwdbwd,dbl", help="comma-separated: fwd, fwdbwd, dbl")
    p.add_argument("--peers", default="e3nn,cueq,oeq", help="comma-separated: e3nn, cueq, oeq; 'none' for none")
    p.add_argument("--out", metavar="DIR", help="where the JSON goes (default: benchmarks/results on a GPU, "
                                                 "a temporary folder otherwise)")
    p.add_argument("--quick", action="store_true", help=f"small batch ({QUICK_BATCH}), few repeats; the 'tiny' "
                                                        "preset unless a problem is given (CPU smoke runs)")
    p.add_argument("--reps", type=int, help="wall-clock repeats when not timing with do_bench")
    p.add_argument("--check-rows", type=int, default=1024, help="rows checked against the float64 reference")
    p.add_argument("--time-limit", type=float, metavar="S", help="skip what is left after S seconds")
    p.add_argument("--device", help="torch device (default cuda if available, else cpu)")
    return p


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Attach ``bench`` to the ``tritp`` parser (the protocol of :mod:`tritp.cli`)."""
    p = subparsers.add_parser("bench", help="time tritp against e3nn, cuEquivariance and OpenEquivariance",
                              description="Check and time forward, forward+backward and double backward "
                                          "of tritp and its peers; print a table and write a JSON file.")
    return add_arguments(p)


def _split(text: str, allowed: tuple, what: str) -> tuple:
    items = tuple(x.strip() for x in text.split(",") if x.strip() and x.strip() != "none")
    bad = [x for x in items if x not in allowed]
    if bad:
        raise ValueError(f"--{what}: unknown {', '.join(bad)}; expected some of {', '.join(allowed)}")
    return items


def select_problems(args) -> list:
    """``[(name, Problem, batch)]`` from the arguments; ValueError on a bad choice.

    Example:
        >>> ns = argparse.Namespace(irreps=[], preset=["tiny"], quick=True, batch=None, mode="uvw", shared=None)
        >>> [(n, b) for n, _, b in select_problems(ns)]
        [('tiny', 16)]
    """
    from .presets import BENCH_PRESETS, preset

    if args.irreps:
        if len(args.irreps) != 3:
            raise ValueError(f"expected three irreps IN1 IN2 OUT, got {len(args.irreps)}")
        if args.preset:
            raise ValueError("give either IN1 IN2 OUT or --preset, not both")
        from .cli_show import problem_from_args

        problem = problem_from_args(*args.irreps, mode=args.mode, shared=args.shared)
        return [("custom", problem, QUICK_BATCH if args.quick else DEFAULT_BATCH)]
    # repeatable, and each value may be a comma list (as --directions and --peers)
    names = [n for v in args.preset or [] for n in v.split(",") if n] or (["tiny"] if args.quick else ["all"])
    if "all" in names:
        names = [n for n in names if n != "all"] + [n for n in BENCH_PRESETS if n not in names]
    out = []
    for name in names:
        problem, batch = preset(name)
        out.append((name, problem, min(batch, QUICK_BATCH) if args.quick else batch))
    return out


def versions() -> dict:
    """Versions of Python, the platform and every library the benchmark may use (None if absent)."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in DISTRIBUTIONS:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    oeq = sys.modules.get("openequivariance")  # may run from a source folder on PYTHONPATH
    if out["openequivariance"] is None and oeq is not None:
        out["openequivariance"] = getattr(oeq, "__version__", "source")
    import torch

    out["cuda"] = torch.version.cuda
    return out


def gpu_slug(name: str) -> str:
    """``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia-h100-80gb-hbm3"``.

    Example:
        >>> gpu_slug("NVIDIA H100 80GB HBM3")
        'nvidia-h100-80gb-hbm3'
    """
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


def _fmt(v, spec=".4g") -> str:
    return "-" if v is None else format(v, spec)


def render(result: dict, console=None) -> None:
    """Print the result table and the failures under it."""
    from rich.table import Table

    console = console or make_console()
    peers = list(result["peers_requested"])
    t = Table(title=f"{result['device_name']} | {result['dtype']} | copy {result['bandwidth_Bps'] / 1e9:.0f} GB/s "
                    f"| times in ms ({result['timer']})" + (" | INTERRUPTED" if result.get("interrupted") else ""))
    for col in ["problem", "dir", "batch", "tritp"] + peers + ["tritp/best", "I/O floor", "% floor",
                                                               "err tritp", "H100 best peer"]:
        t.add_column(col, justify="left" if col in ("problem", "dir", "H100 best peer") else "right")
    for rec in result["problems"]:
        for d in result["directions"]:
            times = {k: v.get(d) for k, v in rec["times_ms"].items()}
            ratio = rec["ratio_to_best_peer"].get(d)
            anchor = rec.get("anchors_h100", {}).get(d)
            best = min(anchor.items(), key=lambda kv: kv[1]) if anchor else None
            t.add_row(rec["name"], d, str(rec["batch"][d]), _fmt(times.get("tritp")),
                      *[_fmt(times.get(p)) for p in peers],
                      "-" if ratio is None else f"{ratio:.2f}x", _fmt(rec["io_floor_ms"][d]),
                      _fmt(rec["pct_of_io_floor"].get("tritp", {}).get(d), ".3g"),
                      _fmt(rec["errors"].get("tritp", {}).get(d), ".1e"),
                      f"{best[0]} {best[1]:.4g}" if best else "-")
        t.add_section()
    console.print(t)
    for rec in result["problems"]:
        for key, why in rec["failures"].items():
            console.print(f"  {rec['name']} {key}: {why}", markup=False, soft_wrap=True)
        for impl, errs in rec["errors"].items():
            if impl != "tritp":
                text = ", ".join(f"{d} {e:.1e}" for d, e in errs.items())
                console.print(f"  {rec['name']} {impl} rel. error vs float64: {text}", markup=False, soft_wrap=True)
    for peer, why in result["peer_status"].items():
        if why != "ok":
            console.print(f"  peer {peer}: {why}", markup=False, soft_wrap=True)


def write_json(result: dict, out_dir) -> Path:
    """Write ``<date>-<gpu-slug>-<kind>.json`` under ``out_dir`` (never over an older file)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{result['date'][:10]}-{gpu_slug(result['device_name'])}-{result['kind']}"
    path, k = out_dir / f"{stem}.json", 2
    while path.exists():
        path, k = out_dir / f"{stem}-{k}.json", k + 1
    path.write_text(json.dumps(result, indent=1, sort_keys=False) + "\n")
    return path


def _default_out(device) -> Path:
    if device.type == "cuda":
        repo = Path(__file__).resolve().parents[1] / "benchmarks"
        return (repo if repo.is_dir() else Path("benchmarks")) / "results"
    return Path(tempfile.mkdtemp(prefix="tritp-bench-"))


def run(args) -> int:
    """Execute ``tritp bench`` (the protocol of :mod:`tritp.cli`)."""
    entries = select_problems(args)
    directions = _split(args.directions, ("fwd", "fwdbwd", "dbl"), "directions")
    peers = _split(args.peers, ("e3nn", "cueq", "oeq"), "peers")
    if args.batch is not None and args.batch < 1:
        raise ValueError(f"--batch must be positive, got {args.batch}")
    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        # triton reads it when imported, which `import tritp` already did: too late to set here
        print(f"tritp bench: warning: no GPU kernels on {device}; set TRITON_INTERPRET=1 before starting "
              "to run tritp's kernels through the Triton interpreter", file=sys.stderr)
    from . import bench

    timer = bench.default_timer(device, args.quick)
    timer_name = "do_bench median" if device.type == "cuda" and not bench.interpreter_active() else "wall-clock median"
    if args.reps is not None and timer_name == "wall-clock median":
        timer = bench.wall_timer(reps=args.reps)
    dtype = getattr(torch, args.dtype)
    cfg = bench.BenchConfig(device=device, dtype=dtype, directions=directions, peers=peers, timer=timer,
                            batch=args.batch, check_rows=min(args.check_rows, QUICK_BATCH) if args.quick
                            else args.check_rows, time_limit=args.time_limit)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    result = {"schema": 1, "kind": "tp-quick" if args.quick else "tp",
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(["tritp bench"] + sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv),
              "device": str(device),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "interpreter": bench.interpreter_active(), "dtype": args.dtype, "timer": timer_name,
              "float32_matmul_precision": torch.get_float32_matmul_precision(),
              # settings that change the generated kernels (TRITP_SHARE_LOADS) or their launch
              "tritp_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("TRITP_")},
              "directions": list(directions), "peers_requested": list(peers)}
    result.update(bench.run_suite(entries, cfg, log))
    result["versions"] = versions()
    from .presets import PEER_ANCHORS_H100

    result["anchors_h100_meta"] = PEER_ANCHORS_H100["_meta"]
    render(result)
    path = write_json(result, args.out or _default_out(device))
    print(f"wrote {path}")
    return 0
