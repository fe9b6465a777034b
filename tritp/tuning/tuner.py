"""The tuner: time every candidate of a kernel's search space and keep the fastest.

Timing is pluggable: a *timer* is any callable that takes a thunk (one kernel launch) and
returns milliseconds. On CUDA the default is :func:`cuda_timer` (``triton.testing.do_bench``,
median); on CPU, under ``TRITON_INTERPRET=1``, :func:`wallclock_timer`. The thunk carries the
candidate as ``thunk.config`` (and ``thunk.problem``, ``thunk.spec``, ``thunk.batch``), so a
model-based or fake timer can score a candidate without running it. The heuristic default is
timed first, competes like any candidate (it wins ties) and gives the reported speedup.

Example:
    >>> from tritp.codegen import Problem
    >>> from tritp.codegen.cg_spec import forward_spec
    >>> p = Problem.channelwise("8x0e+8x1o", "0e+1o", "0e+1o")
    >>> fake = lambda thunk: 1.0 + thunk.config.num_warps  # fewest warps wins
    >>> r = tune(p, forward_spec(), 16, timer=fake, store=False)  # doctest: +SKIP
    >>> r.config.num_warps  # doctest: +SKIP
    1
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Callable, NamedTuple, Optional

import torch

from ..codegen.fused_specs import FUSABLE, fused_backward, fused_plan, fused_second
from ..codegen.cg_spec import FusedSpec, ProducerSpec, compact, forward_spec
from ..codegen.diskcache import content_hash
from ..kernel_forms import fused_backward_on, fused_second_on
from ..kernels import launch_plan, precompile
from . import Config, heuristic
from .cache import SCHEMA, bucket, gpu_name, make_key, store as store_entry
from .space import space_for

Timer = Callable[[Callable[[], object]], float]
DIRECTIONS = ("fwd", "bwd", "dbl")
STRATEGIES = ("full", "staged")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def cuda_timer(rep: int = 40, warmup: int = 10) -> Timer:
    """``triton.testing.do_bench`` median over about ``rep`` ms after ``warmup`` ms."""
    from triton.testing import do_bench

    return lambda thunk: float(do_bench(thunk, warmup=warmup, rep=rep, return_mode="median"))


def wallclock_timer(repeats: int = 3) -> Timer:
    """One warm-up call, then the median of ``repeats`` wall-clock runs (CPU, interpreter)."""
    def timer(thunk) -> float:
        thunk()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            thunk()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)
    return timer


class Launch:
    """One kernel launch with a fixed candidate: ``Launch(...)()`` runs it."""

    def __init__(self, problem, spec: ProducerSpec, tensors: list, batch: int, config: Config):
        self.problem, self.spec, self.tensors, self.batch, self.config = problem, spec, tensors, batch, config

    def __call__(self):
        from ..kernels import produce

        return produce(self.problem, self.spec, self.tensors, self.batch, config=self.config)


class TuneResult(NamedTuple):
    """The outcome of tuning one kernel at one batch; ``entry`` is what the cache stores."""

    label: str
    direction: str
    spec: ProducerSpec
    batch: int
    config: Config
    ms: float
    default: Config
    default_ms: float
    candidates: int
    failed: int
    entry: dict

    @property
    def speedup(self) -> float:
        """Heuristic default time over tuned time (1.0 when the default won)."""
        return self.default_ms / self.ms if self.ms > 0 and math.isfinite(self.default_ms) else float("nan")


def direction_specs(problem, directions=DIRECTIONS, fused: bool = True, first_layer: bool = True) -> list:
    """``[(direction, spec)]`` of the kernels a forward, backward and double backward launch.
    The backward's are the fused kernel of x1's, the weights' and x2's gradients where it
    applies (:mod:`tritp.codegen.cg_fused`, unless ``TRITP_FUSED_BWD=0``), then the kernel of
    each gradient alone (what runs when one gradient is asked for); the double backward's, the
    fused kernel's own backward (x1's, the weights' and x2's gradients in one kernel,
    :func:`~tritp.codegen.fused_specs.fused_second`) and its derivatives (one kernel per tensor
    summing every part's terms: the cotangent's, and each when run alone), then those of
    each gradient alone (what runs when only one part is differentiated again, as for forces),
    each led by its fused backward where one applies (:func:`~tritp.codegen.cg_fused.fused_plan`).
    ``first_layer``: also a first interaction layer's (node features from an embedding, so the
    forces pass wants no x1 gradient): the fused ``w+x2`` backward, its own backward for the
    parameters' pass (x1's gradient too) or without x1, and its cotangent's derivative.
    ``fused=False``: no fused kernels (the fused graph convolution's kernels, which have none).

    Example:
        >>> from tritp.codegen import Problem
        >>> p = Problem.channelwise("4x0e", "0e", "0e")
        >>> [s.target for _, s in direction_specs(p, ("fwd", "bwd"))]
        ['out', 'x1+w+x2', 'w+x2', 'x1', 'x2', 'w']
        >>> [s.target for _, s in direction_specs(p, ("fwd", "bwd"), first_layer=False)]
        ['out', 'x1+w+x2', 'x1', 'x2', 'w']
    """
    bad = [d for d in directions if d not in DIRECTIONS]
    if bad:
        raise ValueError(f"unknown direction {bad[0]!r}; expected some of {', '.join(DIRECTIONS)}")
    fwd = forward_spec(problem.weight_numel > 0)
    bwd = [compact(fwd.derivative(i))[0] for i in range(len(fwd.roles))]
    bwd = [s for s in bwd if s.terms]
    out, seen = [], set()

    def add(d, s):
        if (isinstance(s, FusedSpec) or s.terms) and s not in seen:
            seen.add(s)
            out.append((d, s))
    if "fwd" in directions:
        add("fwd", fwd)
    wants = [set(fwd.roles)] + ([{"w", "x2"}] if first_layer else [])
    fuseds = [f for f in (fused_backward(problem, n) for n in wants) if f is not None]
    fuseds = fuseds if fused and fused_backward_on() else []
    for f in fuseds if "bwd" in directions else ():
        add("bwd", f)
    for s in bwd if "bwd" in directions else ():
        add("bwd", s)
    for j, f in enumerate(fuseds if "dbl" in directions else ()):
        if fused_second_on():  # x1's, the weights' and x2's gradients of every part in one kernel
            for needs in ({f.roles.index(r) for r in f.targets}, {f.roles.index(r) for r in FUSABLE if r in f.roles}):
                second = fused_second(problem, f, needs)
                if second is not None:
                    add("dbl", second.spec)
        # every part differentiated again, one kernel per tensor (the cotangent's, or all)
        for i in range(len(f.roles)) if j == 0 or not fused_second_on() else (f.roles.index("out"),):
            add("dbl", compact(f.derivative(i))[0])
    for b in bwd if "dbl" in directions else ():
        plan = fused_plan(problem, b, set(range(len(b.roles)))) if fuseds and fused_second_on() else None
        if plan is not None:  # a gradient's own backward as one kernel (x2's: the bench's dbl)
            add("dbl", plan.spec)
        for i in range(len(b.roles)):
            add("dbl", compact(b.derivative(i))[0])
    return out


def make_inputs(problem, spec: ProducerSpec, batch: int, dtype: torch.dtype, device) -> list:
    """Random tensors for the roles of ``spec`` (shared weights as one ``[numel]`` vector)."""
    dims = {"x1": problem.irreps_in1.dim, "x2": problem.irreps_in2.dim, "out": problem.irreps_out.dim,
            "w": problem.weight_numel}
    g = torch.Generator().manual_seed(0)
    shapes = [(dims[r],) if r == "w" and problem.shared_weights else (batch, dims[r]) for r in spec.roles]
    return [torch.randn(s, generator=g, dtype=dtype).to(device) for s in shapes]


def candidates_for(problem, spec, dtype: str, batch: int, interpreted: bool, family: str = "cg") -> list:
    """The configurations :func:`tune` times, the heuristic default first."""
    structure = (problem, spec) if family == "cg" else ()  # the register estimate is sparse CG's
    default = heuristic(batch, interpreted, *structure, dtype=dtype)
    return [default] + [c for c in space_for(family, problem, spec, dtype, bucket(batch)).candidates if c != default]


def default_device() -> torch.device:
    """CUDA if present, else the CPU when the Triton interpreter is on; RuntimeError otherwise."""
    from ..kernels import interpreter_active

    if torch.cuda.is_available():
        return torch.device("cuda")
    if interpreter_active():
        return torch.device("cpu")
    raise RuntimeError("autotuning needs a CUDA GPU (none found); set TRITON_INTERPRET=1 to tune the "
                       "interpreter on CPU (for testing only)")


def _stage1(cands: list) -> list:
    """Per (impl, block_z, block_c), the candidate nearest 4 warps and 1 stage."""
    best = {}
    for c in cands:
        k, score = (c.impl, c.block_z, c.block_c), (c.num_stages != 1, abs(c.num_warps.bit_length() - 3))
        if k not in best or score < best[k][0]:
            best[k] = (score, c)
    return [cands[0]] + [c for _, c in best.values() if c != cands[0]]


def check_args(strategy: str, dtype) -> str:
    """``dtype`` as ``"float32"``/``"float64"``; ValueError for an unknown strategy or dtype."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
    dtype = str(dtype).replace("torch.", "")
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    return dtype


def prepare(strategy: str, dtype, device, timer: Optional[Timer]) -> tuple:
    """``(dtype name, device, interpreted, timer)`` of one tuning run: arguments checked
    (:func:`check_args`), the default device and, on it, the default timer."""
    dtype = check_args(strategy, dtype)
    device = torch.device(device) if device is not None else default_device()
    interpreted = device.type != "cuda"
    return dtype, device, interpreted, timer or (wallclock_timer() if interpreted else cuda_timer())


def search(cands: list, thunk_for: Callable, timer: Timer, strategy: str = "full", progress=None,
           warm: Optional[Callable] = None) -> tuple:
    """Time ``cands`` (the default first) as ``strategy`` says; ``(best, times, errors)``.

    ``thunk_for(config)`` builds one launch; ``times`` maps each timed config to ms (``inf``
    when it failed, the reason in ``errors``). Ties go to the earlier candidate, so the
    default wins a tie. A Triton ``CompilationError`` is a generator bug and is raised.
    ``warm(configs)``, if given, is called with each group of configs before they are timed
    (all of them, or each stage): it compiles them in parallel so that timing does not wait
    for one compile after another.

    Example:
        >>> cs = [Config(num_warps=4), Config(num_warps=1), Config(num_warps=2)]
        >>> best, times, _ = search(cs, lambda c: c, lambda t: t.num_warps)
        >>> best.num_warps, len(times)
        (1, 3)
    """
    times, errors = {}, {}
    todo = cands if strategy == "full" else _stage1(cands)

    def run(cfgs, total):
        if warm is not None:
            warm([c for c in cfgs if c not in times])
        for cfg in cfgs:
            if cfg in times:
                continue
            try:
                ms = float(timer(thunk_for(cfg)))
            except Exception as e:
                if type(e).__name__ == "CompilationError":
                    raise  # a generator bug, not a bad candidate: never hide it in the search
                ms, errors[cfg] = math.inf, f"{type(e).__name__}: {e}"  # e.g. out of resources
            times[cfg] = ms if ms == ms else math.inf
            if progress is not None:
                progress(len(times), total, cfg, times[cfg])
    run(todo, len(todo))
    if strategy == "staged":
        b = min(times, key=lambda c: (times[c], cands.index(c)))
        rest = [c for c in cands if (c.impl, c.block_z, c.block_c) == (b.impl, b.block_z, b.block_c) and c not in times]
        run(rest, len(times) + len(rest))
    best = min(times, key=lambda c: (times[c], cands.index(c)))
    if not math.isfinite(times[best]):
        raise RuntimeError(f"every candidate failed; first error: {next(iter(errors.values()))}")
    return best, times, errors


def make_result(key: dict, problem, spec, batch: int, cands: list, found: tuple, *, strategy: str, direction: str,
                label: str, store: bool, **extra) -> TuneResult:
    """The :class:`TuneResult` and cache entry of one :func:`search` (``found``); ``store``
    writes the entry to the user cache. ``extra`` fields go into the entry as they are."""
    best, times, errors = found
    default, default_ms = cands[0], times[cands[0]]
    entry = {"schema": SCHEMA, "key": key, "config": best._asdict(), "ms": round(times[best], 6),
             "default": default._asdict(), "default_ms": round(default_ms, 6) if math.isfinite(default_ms) else None,
             "timed": len(times), "space": len(cands), "failed": len(errors), "strategy": strategy,
             "label": label, "spec_tag": spec.tag, "problem": repr(problem),
             "problem_hash": content_hash(problem.key), "tuned_batch": batch, **extra}
    if store:
        store_entry(entry)
    return TuneResult(label, direction, spec, batch, best, times[best], default, default_ms, len(times), len(errors),
                      entry)


def tune(problem, spec: ProducerSpec, batch: int, *, dtype="float32", device=None, timer: Optional[Timer] = None,
         direction: str = "", label: str = "", family: str = "cg", strategy: str = "full", progress=None,
         store: bool = True) -> TuneResult:
    """Time the candidates of one kernel at ``batch`` rows; ``store`` writes the user cache.

    ``strategy="full"`` times every candidate; ``"staged"`` times, for each (impl, block_z,
    block_c), the candidate nearest 4 warps and 1 stage, then every warps/stages variant of
    the winner (about 30 instead of about 100 compiles; exact when the time is separable).
    ``progress(done, total, config, ms)`` is called after each candidate (``ms`` is ``inf``
    when it failed; ``total`` may grow once, in stage two).
    """
    dtype, device, interpreted, timer = prepare(strategy, dtype, device, timer)
    tensors = make_inputs(problem, spec, batch, DTYPES[dtype], device)
    cands = candidates_for(problem, spec, dtype, batch, interpreted, family)

    def warm(cfgs):
        precompile([launch_plan(problem, spec, tensors, batch, config=c, dry=True) for c in cfgs], ignore_errors=True)
    try:
        found = search(cands, lambda cfg: Launch(problem, spec, tensors, batch, cfg), timer, strategy, progress,
                       warm)
    except RuntimeError as e:
        raise RuntimeError(f"{spec.tag}: {e}") from None
    key = make_key(problem, spec, dtype, batch, gpu_name(device, interpreted), family)
    label = label or f"{problem.irreps_in1} x {problem.irreps_in2} -> {problem.irreps_out}"
    return make_result(key, problem, spec, batch, cands, found, strategy=strategy, direction=direction, label=label,
                       store=store)


def tune_problem(problem, batches, directions=DIRECTIONS, *, dtype="float32", device=None, timer=None, label="",
                 strategy: str = "full", progress=None, store: bool = True) -> list:
    """Tune every kernel of ``problem`` (per direction) at every batch; a list of TuneResult.

    Example:
        >>> import tritp
        >>> p = tritp.Problem.channelwise("8x0e", "0e", "0e")
        >>> rs = tune_problem(p, [16], ("fwd",), timer=lambda t: 1.0, store=False)  # doctest: +SKIP
    """
    batches = [batches] if isinstance(batches, int) else list(batches)
    out = []
    for b in batches:
        for d, spec in direction_specs(problem, directions):
            out.append(tune(problem, spec, b, dtype=dtype, device=device, timer=timer, direction=d, label=label,
                            strategy=strategy, progress=progress, store=store))
    return out
