"""``tritp autotune``: tune the launch configurations of tensor-product kernels on this GPU.

Problems come from irreps arguments (``IN1 IN2 OUT --mode ...``, as ``tritp show``), from
``--preset NAME`` (repeatable; ``all`` = every benchmark preset) or from ``--problems
FILE.json``: a list of objects, each a preset (``{"preset": "mace-large"}``) or irreps with a
mode or an instruction list::

    [{"name": "interaction-0", "in1": "128x0e+128x1o", "in2": "0e+1o+2e+3o", "out": "0e+1o+2e",
      "mode": "channelwise", "batch": 20000},
     {"in1": "8x0e", "in2": "0e", "out": "8x0e", "instructions": [[0, 0, 0, "uvu", true]],
      "shared_weights": false}]

``--mode gaunt`` tunes a Gaunt product's implementation choice instead (``IN1 IN2 [OUT]``, or
``--lmax-out N``; ``--normalization``; in a problems file ``"mode": "gaunt"`` with ``"lmax_out"``
/ ``"normalization"``): sparse, fft, grid and separable are timed on one step of the directions (forward,
plus gradients, plus double backward) and the fastest is stored where
``compile(..., mode="gaunt", implementation="auto")`` looks (:mod:`tritp.gaunt_tuning`; ``auto``
asks at batch 10,000, the default here for Gaunt products).

``--conv SCATTER`` (``atomic`` or ``deterministic``) tunes the fused graph convolution's kernels
(:mod:`tritp.conv_tuning`) of the CG problems instead, on a seeded random graph: ``--batch`` is
then the number of edges (default 158,000, the diamond graph of ``benchmarks/conv_bench.py``)
and ``--nodes`` the number of nodes (default: edges / 64).

Every kernel a direction launches (``--direction fwd,bwd,dbl``) is tuned at every ``--batch``;
results go to the user cache, ``--export DIR`` also merges them into the shipped format
(``autotune_cache/``). Kernels are tuned round robin over the problems (every forward, then
every fused backward, ...), so ``--time-limit S``, which starts no new kernel after S seconds
(for a lent GPU with a hard stop), leaves the kernels that run most tuned for every problem; an
interrupted run (Ctrl-C, SIGTERM) also prints and exports what it tuned.
On a GPU each kernel's candidates are compiled in parallel before they are timed. Without a CUDA GPU it exits 2, unless ``--interpret`` (the Triton
interpreter on CPU with a wall-clock timer: for testing the machinery, not for real configs).

Example (shell)::

    tritp autotune --preset mace-large --batch 50000 --direction fwd,bwd
    tritp autotune --preset all --strategy staged --export autotune_cache/
    tritp autotune 8x0e+8x1o 0e+1o 0e+1o --mode channelwise --batch 16 --interpret
    tritp autotune 32x0e+32x1o+32x2e 0e+1o+2e --mode gaunt --lmax-out 4 --direction fwd,bwd
    tritp autotune --preset mace-large --conv deterministic --batch 158000 --nodes 1000
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .cli_problems import PROBLEMS_HELP, collect_problems, parse_batches
from .cli_show import add_problem_options, make_console
from .codegen.gaunt_problem import GauntProblem

DEFAULT_BATCH, INTERPRET_BATCH = 50_000, 64
CONV_EDGES, CONV_DEGREE = 158_000, 64  # conv defaults: edges, and edges per node for --nodes
GAUNT_BATCH = 10_000  # what compile(..., mode="gaunt", implementation="auto") asks the cache about
NO_GPU = ("tritp: autotune needs a CUDA GPU and none was found (--interpret tunes the Triton "
          "interpreter on CPU, for testing only)")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Attach ``autotune`` to the ``tritp`` parser (the protocol of :mod:`tritp.cli`)."""
    p = subparsers.add_parser("autotune", help="tune kernel launch configurations on this GPU",
                              description="Tune the kernels of tensor products; write the user cache.",
                              formatter_class=argparse.RawDescriptionHelpFormatter, epilog=PROBLEMS_HELP)
    p.add_argument("in1", metavar="IN1", nargs="?", help="irreps of input 1")
    p.add_argument("in2", metavar="IN2", nargs="?", help="irreps of input 2")
    p.add_argument("out", metavar="OUT", nargs="?",
                   help="irreps of the output (a filter for channelwise/full; optional for gaunt)")
    add_problem_options(p, extra_modes=("gaunt",))
    p.add_argument("--lmax-out", type=int, metavar="N", help="gaunt: output degrees 0..N (instead of OUT)")
    p.add_argument("--normalization", default="orthonormal", choices=("orthonormal", "integral"),
                   help="gaunt: coefficient normalization (default orthonormal)")
    p.add_argument("--preset", action="append", default=[], metavar="NAME", help="a named problem, or 'all'")
    p.add_argument("--problems", metavar="FILE", help="JSON list of problems (format below)")
    p.add_argument("--batch", action="append", default=[], help="batch rows; repeatable or comma list")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--direction", default="fwd,bwd,dbl", help="comma list of fwd, bwd, dbl (default all)")
    p.add_argument("--strategy", default="full", choices=("full", "staged"),
                   help="full: every candidate; staged: tiles first, then warps/stages (~3x fewer)")
    p.add_argument("--conv", choices=("atomic", "deterministic"), metavar="SCATTER",
                   help="tune the fused convolution (atomic or deterministic); --batch = edges")
    p.add_argument("--nodes", type=int, metavar="N", help="--conv: nodes of the graph (default edges / 64)")
    p.add_argument("--rep", type=int, default=40, metavar="MS", help="do_bench time per candidate (default 40)")
    p.add_argument("--export", metavar="DIR", help="also merge the results into DIR in the shipped format")
    p.add_argument("--time-limit", type=float, metavar="S",
                   help="start no new kernel after S seconds; what was tuned is kept and exported")
    p.add_argument("--interpret", action="store_true", help="run under the Triton interpreter on CPU (testing)")
    return p


def _fmt(c) -> str:
    return f"z{c.block_z} c{c.block_c} w{c.num_warps} s{c.num_stages}" + ("" if c.impl == "sparse" else f" {c.impl}")


def _row(r) -> tuple:
    """``(dir, kernel, best, timed)`` cells of one result: a kernel's config, or a Gaunt
    product's implementation (kernel ``gaunt``, every direction timed in one step)."""
    from .gaunt_tuning import GauntTuneResult, label

    if isinstance(r, GauntTuneResult):
        return ",".join(r.directions), "gaunt", label(r.config), len(r.times)
    return r.direction, r.spec.tag, _fmt(r.config), r.candidates


def results_table(results) -> Table:
    """The final table: one row per tuned kernel (per batch for a Gaunt product)."""
    t = Table(title="autotune results")
    for name, j in (("problem", "left"), ("dir", "left"), ("kernel", "left"), ("batch", "right"),
                    ("best", "left"), ("ms", "right"), ("default ms", "right"), ("speedup", "right"),
                    ("timed", "right")):
        t.add_column(name, justify=j)
    for r in results:
        d, kernel, best, timed = _row(r)
        t.add_row(r.label, d, kernel, str(r.batch), best, f"{r.ms:.4g}",
                  f"{r.default_ms:.4g}" if math.isfinite(r.default_ms) else "failed",
                  f"{r.speedup:.2f}x" if math.isfinite(r.speedup) else "-", str(timed))
    return t


def run(args) -> int:
    """Execute ``tritp autotune`` (the protocol of :mod:`tritp.cli`)."""
    import torch

    if not args.interpret and not torch.cuda.is_available():
        print(NO_GPU, file=sys.stderr)
        return 2
    from .conv_tuning import conv_specs
    from .tuning import tuner
    from .tuning.cache import bucket, export

    directions = tuple(d.strip() for d in args.direction.split(",") if d.strip())
    problems = collect_problems(args)
    batches = parse_batches(args.batch)
    conv = args.conv
    if args.nodes is not None and (not conv or args.nodes < 1):
        raise ValueError("--nodes needs --conv and a positive count" if conv else "--nodes is for --conv")
    if conv and any(isinstance(p, GauntProblem) for _, p, _ in problems):
        raise ValueError("--conv tunes convolutions of CG problems, not Gaunt products")
    if args.interpret:
        os.environ["TRITON_INTERPRET"] = "1"  # read when a generated kernel is decorated
        device, timer = torch.device("cpu"), tuner.wallclock_timer(1)
    else:
        device, timer = torch.device("cuda"), tuner.cuda_timer(rep=args.rep)
    def default_batch(p, b0):
        if args.interpret:
            return INTERPRET_BATCH
        if conv:
            return CONV_EDGES  # a preset's batch counts samples, not edges
        return b0 or (GAUNT_BATCH if isinstance(p, GauntProblem) else DEFAULT_BATCH)

    def kernels_of(p):
        if isinstance(p, GauntProblem):
            return [(directions, None)]
        return conv_specs(p, conv, directions) if conv else tuner.direction_specs(p, directions)
    per_problem = [[(label, p, b, d, s) for d, s in kernels_of(p)]
                   for label, p, b0 in problems for b in (batches or [default_batch(p, b0)])]
    # round robin, each kernel with its place (problem, rank): every problem's forward, then every
    # fused backward, and so on, so that a --time-limit leaves what a training step runs most tuned
    plan = sorted((((i, k), item) for i, items in enumerate(per_problem) for k, item in enumerate(items)),
                  key=lambda placed: placed[0][::-1])
    console = make_console()
    results, stopped = [], None
    deadline = None if args.time_limit is None else time.monotonic() + args.time_limit
    old_term = signal.signal(signal.SIGTERM, _interrupt)  # a killed run still exports what it tuned
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=Console(stderr=True), transient=True) as bar:
            kernels = bar.add_task("kernels", total=len(plan))
            cands = bar.add_task("candidates", total=None)
            for place, item in plan:
                if deadline is not None and time.monotonic() > deadline:
                    stopped = f"--time-limit {args.time_limit:g} s reached"
                    break
                results.append((place, _tune_one(item, args, conv, device, timer, bar, cands)))
                bar.advance(kernels)
    except KeyboardInterrupt:
        stopped = "interrupted"
    finally:
        signal.signal(signal.SIGTERM, old_term)
    results = [r for _, r in sorted(results, key=lambda pr: pr[0])]  # shown and exported by problem
    console.print(results_table(results))
    if stopped:
        console.print(f"note: {stopped}: {len(results)} of {len(plan)} kernels tuned", markup=False, soft_wrap=True)
    if any(isinstance(p, GauntProblem) and (bucket(b) != bucket(GAUNT_BATCH) or args.dtype != "float32")
           for _, (_, p, b, _, _) in plan):
        console.print(f"note: compile(..., mode='gaunt', implementation='auto') reads the float32 entry at batch "
                      f"{GAUNT_BATCH} (bucket {bucket(GAUNT_BATCH)}); tritp.gaunt.choose_implementation(problem, "
                      "batch) reads other float32 batches", markup=False, soft_wrap=True)
    if args.export and results:
        entries = [e for r in results for e in (r.entry, *getattr(r, "launch_entries", {}).values())]
        for path in export(entries, args.export):  # a Gaunt result also has its launch entries
            console.print(f"exported to {path}", markup=False, soft_wrap=True)
    return 130 if stopped == "interrupted" else 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _tune_one(item, args, conv, device, timer, bar, cands):
    """Tune one plan item: a kernel, or a Gaunt product's implementation choice."""
    from .conv_tuning import tune_conv_kernel
    from .gaunt_tuning import tune_gaunt
    from .tuning import tuner

    label, p, b, d, s = item
    progress = lambda n, total, cfg, ms: bar.update(cands, completed=n, total=total)  # noqa: E731
    if s is None:  # a Gaunt product: its implementations compete, one step of all directions
        bar.update(cands, description=f"{label} gaunt @ {b}", completed=0, total=None)
        return tune_gaunt(p, b, directions=d, dtype=args.dtype, device=device, timer=timer, label=label,
                          progress=progress)
    if conv:
        nodes = args.nodes or max(1, b // CONV_DEGREE)
        bar.update(cands, description=f"{label} conv {d} {s.tag} @ {b} edges", completed=0, total=None)
        return tune_conv_kernel(p, s, conv, nodes, b, dtype=args.dtype, device=device, timer=timer, direction=d,
                                label=f"{label} (conv {conv}, {nodes} nodes)", strategy=args.strategy,
                                progress=progress)
    bar.update(cands, description=f"{label} {d} {s.tag} @ {b}", completed=0, total=None)
    return tuner.tune(p, s, b, dtype=args.dtype, device=device, timer=timer, direction=d, label=label,
                      strategy=args.strategy, progress=progress)
