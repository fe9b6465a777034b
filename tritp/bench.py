"""Time tritp against e3nn, cuEquivariance and OpenEquivariance on the current device.

For each problem and direction -- ``fwd`` (forward), ``fwdbwd`` (forward, then the gradients
of x1, x2 and w) and ``dbl`` (energy -> forces: the gradient of x2 with ``create_graph``, then
the gradients of x1 and w of a loss on it) -- every implementation is first checked against
the float64 reference (:func:`tritp.reference_tp` on float64 copies of the first rows), then
timed: ``triton.testing.do_bench`` (median) on CUDA, a wall-clock median elsewhere (any
``timer(fn) -> ms`` can be passed; the timers are :mod:`tritp.bench_timing`'s). Peers are used
only when they import and build; a peer that fails is recorded with its reason, never fatal.
The copy bandwidth measured in the same run gives each direction's I/O floor
(:func:`io_bytes`). It reports; it never asserts a time.

Example:
    >>> import torch
    >>> from tritp.presets import preset
    >>> cfg = BenchConfig(device=torch.device("cpu"), peers=(), directions=("fwd",),
    ...                   timer=wall_timer(reps=1))
    >>> result = run_suite([("tiny", *preset("tiny"))], cfg)  # doctest: +SKIP
    >>> sorted(result["problems"][0]["times_ms"])  # doctest: +SKIP
    ['tritp']
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .codegen import Problem
from .kernels import interpreter_active  # noqa: F401  (re-exported)
from .bench_peers import PEERS, build_impl, peer_status  # noqa: F401  (re-exported)
from .bench_timing import copy_bandwidth, cuda_timer, default_timer, wall_timer  # noqa: F401  (re-exported)
from .presets import ANCHOR_DBL_BATCH, PEER_ANCHORS_H100

DIRECTIONS = ("fwd", "fwdbwd", "dbl")


# -- problem arithmetic -----------------------------------------------------------------------
def io_bytes(problem: Problem, batch: int, itemsize: int, direction: str) -> int:
    """Fewest bytes ``direction`` must move: each tensor read or written once.

    fwd: x1 + x2 + w + out. fwdbwd: that plus the output cotangent and the three gradients,
    2 (x1 + x2 + w + out). dbl: x1, x2, w, the output cotangent, the x2 cotangent read; out,
    grad x2, grad x1, grad w written: 2 x1 + 3 x2 + 2 w + 2 out.

    Example:
        >>> p = Problem.channelwise("4x0e", "0e", "0e")
        >>> io_bytes(p, 10, 4, "fwd")  # (4 + 1 + 4 + 4 weights) x 10 rows x 4 bytes
        520
    """
    d1, d2, do = problem.irreps_in1.dim, problem.irreps_in2.dim, problem.irreps_out.dim
    w = problem.weight_numel * (1 if problem.shared_weights else batch)
    x1, x2, out = batch * d1, batch * d2, batch * do
    n = {"fwd": x1 + x2 + w + out, "fwdbwd": 2 * (x1 + x2 + w + out),
         "dbl": 2 * x1 + 3 * x2 + 2 * w + 2 * out}[direction]
    return n * itemsize


def make_inputs(problem: Problem, batch: int, dtype, device, seed: int = 0) -> tuple:
    """``(x1, x2, w, g, h)``: inputs, weights (None without weights), the output cotangent
    and the x2 cotangent of the double backward, all standard normal."""
    gen = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device=device, dtype=dtype)

    p = problem
    w = None
    if p.weight_numel:
        w = randn(p.weight_numel) if p.shared_weights else randn(batch, p.weight_numel)
    return (randn(batch, p.irreps_in1.dim), randn(batch, p.irreps_in2.dim), w,
            randn(batch, p.irreps_out.dim), randn(batch, p.irreps_in2.dim))


def rows(t: tuple, n: int, shared: bool, dtype=None) -> tuple:
    """The first ``n`` rows of inputs from :func:`make_inputs` (shared weights whole), as
    ``dtype`` copies when given."""
    out = []
    for k, x in enumerate(t):
        if x is not None:
            x = x if (k == 2 and shared) else x[:n]
            x = x.to(dtype) if dtype is not None else x
        out.append(x)
    return tuple(out)


def direction_fn(fn: Callable, direction: str, t: tuple) -> Callable:
    """A no-argument closure running ``direction`` of ``fn(x1, x2, w)``; it returns the
    direction's result tensors (output; three gradients; grad x1 and grad w)."""
    x1, x2, w, g, h = t
    if direction == "fwd":
        def run():
            with torch.no_grad():
                return [fn(x1, x2, w)]
        return run
    a, b = x1.detach().requires_grad_(), x2.detach().requires_grad_()
    c = None if w is None else w.detach().requires_grad_()
    wrt = [a, b] + ([c] if c is not None else [])
    if direction == "fwdbwd":
        def run():
            return list(torch.autograd.grad(fn(a, b, c), wrt, g))
        return run
    if direction == "dbl":
        def run():
            (gb,) = torch.autograd.grad(fn(a, b, c), b, g, create_graph=True)
            return list(torch.autograd.grad(gb, [x for x in wrt if x is not b], h, allow_unused=True))
        return run
    raise ValueError(f"direction {direction!r} is not one of {', '.join(DIRECTIONS)}")


def rel_error(got: list, ref: list) -> float:
    """Largest ``|got - ref| / |ref|`` over the result tensors (None counts as zero)."""
    worst = 0.0
    for a, r in zip(got, ref):
        if r is None and a is None:
            continue
        r = torch.zeros_like(a, dtype=torch.float64) if r is None else r.detach().double()
        a = torch.zeros_like(r) if a is None else a.detach().to(device=r.device, dtype=torch.float64)
        if a.shape != r.shape:
            raise ValueError(f"result shape {list(a.shape)} is not the reference's {list(r.shape)}")
        num, den = (a - r).norm().item(), r.norm().item()
        e = num / den if den > 0 else num
        if not math.isfinite(e):
            return float("nan")
        worst = max(worst, e)
    return worst


# -- the run ----------------------------------------------------------------------------------
@dataclass
class BenchConfig:
    """What to run and how: device, dtype, directions, peers, timer, batch overrides, the
    number of rows checked against the reference, and a time limit in seconds."""

    device: torch.device
    dtype: torch.dtype = torch.float32
    directions: tuple = DIRECTIONS
    peers: tuple = PEERS
    timer: Optional[Callable] = None
    batch: Optional[int] = None
    check_rows: int = 1024
    time_limit: Optional[float] = None
    started: float = field(default_factory=time.monotonic)

    def out_of_time(self) -> bool:
        return self.time_limit is not None and time.monotonic() - self.started > self.time_limit


def _free(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_problem(name: str, problem: Problem, batch: int, cfg: BenchConfig, log=print) -> dict:
    """Check and time every implementation of one problem; returns its JSON record."""
    default_batch = batch
    batch = cfg.batch or batch
    batches = {d: batch if cfg.batch or d != "dbl" else min(batch, ANCHOR_DBL_BATCH) for d in cfg.directions}
    itemsize = torch.finfo(cfg.dtype).bits // 8
    rec = {"name": name, "problem": problem.key, "summary": repr(problem), "batch": batches,
           "default_batch": default_batch,
           "io_bytes": {d: io_bytes(problem, b, itemsize, d) for d, b in batches.items()},
           "times_ms": {}, "errors": {}, "failures": {}, "notes": {},
           "anchors_h100": {k: v for k, v in PEER_ANCHORS_H100.get(name, {}).items()},
           "launch_configs": launch_configs(problem, batches, cfg.dtype, cfg.device)}
    impls = {}
    for impl in ("tritp",) + tuple(cfg.peers):
        try:
            impls[impl], note = build_impl(impl, problem, cfg.device, cfg.dtype)
            if note:
                rec["notes"][impl] = note
        except Exception as e:  # a peer that cannot build this problem is a result, not a crash
            rec["failures"][impl] = f"build: {type(e).__name__}: {' '.join(str(e).split())[:300]}"
            log(f"  {name}: {impl} unavailable: {rec['failures'][impl]}")
    full = make_inputs(problem, max(batches.values()), cfg.dtype, cfg.device)
    nchk = min(cfg.check_rows, batch)
    chk = rows(full, nchk, problem.shared_weights)
    chk64 = rows(full, nchk, problem.shared_weights, torch.float64)
    from .reference import reference_tp

    def ref_fn(a, b, c):
        return reference_tp(problem, a, b, c)

    try:
        for d in cfg.directions:
            ref = direction_fn(ref_fn, d, chk64)()
            t_d = rows(full, batches[d], problem.shared_weights)
            for impl, fn in impls.items():
                _measure(rec, impl, d, fn, chk, ref, t_d, cfg, log)
            del ref, t_d
    except KeyboardInterrupt:  # keep this problem's finished measurements; the caller stops
        rec["interrupted"] = True
    del full, chk, chk64
    _free(cfg.device)
    return rec


def _measure(rec: dict, impl: str, d: str, fn, chk, ref, t_d, cfg: BenchConfig, log) -> None:
    """Check one implementation and direction against the reference, then time it."""
    key = f"{impl}:{d}"
    if cfg.out_of_time():
        rec["failures"][key] = "skipped: time limit"
        return
    try:
        err = rel_error(direction_fn(fn, d, chk)(), ref)
        rec["errors"].setdefault(impl, {})[d] = err
        ms = cfg.timer(direction_fn(fn, d, t_d))
        rec["times_ms"].setdefault(impl, {})[d] = ms
        log(f"  {rec['name']} {d:6s} {impl:5s} {ms:10.4f} ms   rel. error vs float64 {err:.2e}")
    except Exception as e:  # an implementation that fails here is a result, not a crash
        rec["failures"][key] = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
        log(f"  {rec['name']} {d:6s} {impl:5s} failed: {rec['failures'][key]}")
    finally:
        _free(cfg.device)


#: The kernel kinds a bench direction launches: forward, + gradients, + double backward.
BENCH_KERNELS = {"fwd": ("fwd",), "fwdbwd": ("fwd", "bwd"), "dbl": ("fwd", "bwd", "dbl")}


def launch_configs(problem: Problem, batches: dict, dtype: torch.dtype, device) -> dict:
    """``{direction: {kernel: "BLOCK_Z:BLOCK_C:NUM_WARPS:NUM_STAGES (default|tuned)"}}``: the
    launch configuration of each tritp kernel a bench direction runs, so that a timing says
    what it timed.

    Example:
        >>> from tritp.presets import preset
        >>> p, _ = preset("tiny")
        >>> cfgs = launch_configs(p, {"fwd": 16}, torch.float32, torch.device("cpu"))["fwd"]
        >>> list(cfgs), cfgs["out_x1x2w"].endswith(" (default)")
        (['out_x1x2w'], True)
    """
    from .tuning import choose, lookup
    from .tuning.tuner import direction_specs

    dt, interp, out = str(dtype).replace("torch.", ""), interpreter_active(), {}
    for d, b in batches.items():
        for _, spec in direction_specs(problem, BENCH_KERNELS[d], first_layer=False):
            c = choose(problem, spec, dt, b, device, interp)
            how = "tuned" if lookup(problem, spec, dt, b, device, interp) else "default"
            out.setdefault(d, {})[spec.tag] = f"{c.block_z}:{c.block_c}:{c.num_warps}:{c.num_stages} ({how})"
    return out


def finish_record(rec: dict, bandwidth: float) -> dict:
    """Add I/O floors, the best peer, ratios and % of floor to a :func:`run_problem` record."""
    rec["io_floor_ms"] = {d: b / bandwidth * 1e3 for d, b in rec["io_bytes"].items()}
    rec["best_peer"], rec["ratio_to_best_peer"], rec["pct_of_io_floor"] = {}, {}, {}
    for d, floor in rec["io_floor_ms"].items():
        peers = {k: v[d] for k, v in rec["times_ms"].items() if k != "tritp" and d in v}
        if peers:
            rec["best_peer"][d] = min(peers.items(), key=lambda kv: kv[1])
        for impl, times in rec["times_ms"].items():
            if d in times and times[d] > 0:
                rec["pct_of_io_floor"].setdefault(impl, {})[d] = 100.0 * floor / times[d]
        mine = rec["times_ms"].get("tritp", {}).get(d)
        if mine is not None and d in rec["best_peer"]:
            rec["ratio_to_best_peer"][d] = mine / rec["best_peer"][d][1]
    return rec


def precompile_suite(entries, cfg: BenchConfig, log=print) -> int:
    """Compile every tritp kernel the suite will launch, all in parallel (threads, or worker
    processes on a many-core machine: :mod:`tritp.compile_pool`), before any timing (first
    launches would otherwise compile one by one inside the time limit)."""
    from .kernels import launch_plan, precompile
    from .tuning.tuner import direction_specs, make_inputs as tune_inputs

    t0, plans = time.monotonic(), []
    try:
        for _, problem, batch in entries:
            for bd in cfg.directions:
                b = cfg.batch or (min(batch, ANCHOR_DBL_BATCH) if bd == "dbl" else batch)
                for _, spec in direction_specs(problem, BENCH_KERNELS[bd], first_layer=False):
                    # two rows of data: nothing runs, the configuration follows b; repeats of a
                    # kernel and configuration are compiled once (precompile dedupes)
                    t = tune_inputs(problem, spec, 2, cfg.dtype, cfg.device)
                    plans.append(launch_plan(problem, spec, t, b, dry=True))
        # at most half the time limit: compiles still queued then are left to the launches
        n = precompile(plans, timeout=cfg.time_limit / 2 if cfg.time_limit else None)
    except Exception as e:  # the launches compile what is missing; report and go on
        log(f"precompile failed ({type(e).__name__}: {e}); kernels compile on first launch")
        return 0
    finally:
        del plans
        _free(cfg.device)
    log(f"precompiled {n} tritp kernels in {time.monotonic() - t0:.1f} s")
    return n


def run_suite(entries, cfg: BenchConfig, log=print) -> dict:
    """Run ``entries`` (``(name, Problem, default batch)``); returns the JSON-ready result
    (bandwidth, per-problem records, peer status); :mod:`tritp.cli_bench` adds the run's
    metadata (device, versions, command line)."""
    if cfg.timer is None:
        cfg.timer = default_timer(cfg.device)
    bw = copy_bandwidth(cfg.device, cfg.timer)
    log(f"copy bandwidth: {bw / 1e9:.1f} GB/s (read + write) on {cfg.device}")
    entries = list(entries)
    if cfg.device.type == "cuda":
        precompile_suite(entries, cfg, log)
    problems, interrupted = [], False
    try:
        for name, problem, batch in entries:
            log(f"{name}: {problem!r}")
            problems.append(finish_record(run_problem(name, problem, batch, cfg, log), bw))
            if problems[-1].get("interrupted"):
                raise KeyboardInterrupt
    except KeyboardInterrupt:  # keep what was measured (gpu_check.sh stops a run with SIGINT)
        interrupted = True
        log("interrupted: keeping the problems finished so far")
    return {"bandwidth_Bps": bw, "problems": problems, "peer_status": peer_status(),
            "elapsed_s": time.monotonic() - cfg.started, "interrupted": interrupted}
