"""Timing the Gaunt product's candidates: :func:`tune_gaunt` (re-exported by
:mod:`tritp.gaunt_tuning`, which defines the search space, the cache keys and the lookups).

Each candidate of :func:`~tritp.gaunt_tuning.gaunt_space` (sparse; fft, grid and separable at each launch)
is built as a :class:`~tritp.gaunt.GauntProduct` and timed on one step of the requested
directions; the winner is stored as the choice entry, each launched implementation's fastest
launch as its launch entry.

Example:
    >>> from tritp.codegen.gaunt_problem import GauntProblem
    >>> r = tune_gaunt(GauntProblem("4x0e", "0e"), 16, timer=lambda t: 1.0, store=False)  # doctest: +SKIP
    >>> r.implementation, sorted(r.launch_entries)  # doctest: +SKIP
    ('sparse', ['fft', 'grid', 'separable'])
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

from .codegen.diskcache import content_hash
from .codegen.gaunt_problem import FORWARD, IMPLEMENTATIONS, GauntProblem, size_rule
from .gaunt_tuning import (DEFAULT_BATCH, FAMILY, LAUNCH_FAMILY, LAUNCHED, impl_configs, launch_of,
                           neutral_problem)
from .gaunt_tuning import label as name_of
from .tuning import Config

DIRECTIONS = ("fwd", "bwd", "dbl")


class GauntLaunch:
    """One timed step of one candidate: ``GauntLaunch(...)()`` runs the forward and the
    requested derivatives. Carries ``config`` (the candidate of
    :func:`~tritp.gaunt_tuning.gaunt_space`), ``problem`` (the product at that implementation),
    ``spec``, ``batch`` and ``directions``, so a fake or model-based timer can score it without
    running it."""

    def __init__(self, module, problem, batch: int, directions: tuple, tensors: tuple, config: Config = None):
        self.module, self.problem, self.batch, self.directions = module, problem, batch, directions
        self.config = config or Config(impl=problem.implementation)
        self.spec, self.tensors = FORWARD, tensors

    def __call__(self):
        import torch

        x1, x2, gy, v1, v2 = self.tensors
        y = self.module(x1, x2)
        if "bwd" not in self.directions and "dbl" not in self.directions:
            return y
        dbl = "dbl" in self.directions
        g = torch.autograd.grad(y, (x1, x2), gy, create_graph=dbl)
        if not dbl:
            return g
        return torch.autograd.grad(g, (x1, x2, gy), (v1, v2), allow_unused=True)


class GauntTuneResult(NamedTuple):
    """The outcome of :func:`tune_gaunt`: ``config`` (implementation and launch) won in
    ``ms``; ``default`` is the size rule's choice at its default launch; ``times`` maps each
    candidate's :func:`~tritp.gaunt_tuning.label` to its ms (``inf``: it failed, ``errors`` says why); ``entry``
    is the choice entry the cache stores, ``launch_entries`` the launch entries by
    implementation."""

    label: str
    directions: tuple
    batch: int
    config: Config
    ms: float
    default: Config
    default_ms: float
    times: dict
    errors: dict
    entry: dict
    launch_entries: dict

    @property
    def implementation(self) -> str:
        return self.config.impl

    @property
    def launch(self):
        """The winner's ``(BLOCK_R, num_warps, BLOCK_P)``, None for sparse."""
        return launch_of(self.config) if self.config.impl in LAUNCHED else None

    @property
    def speedup(self) -> float:
        """The size rule's default time over the tuned time (1.0 when it won)."""
        return self.default_ms / self.ms if self.ms > 0 and math.isfinite(self.default_ms) else float("nan")


def _check_directions(directions) -> tuple:
    directions = (directions,) if isinstance(directions, str) else tuple(directions)
    bad = [d for d in directions if d not in DIRECTIONS]
    if bad or not directions:
        raise ValueError(f"unknown direction {bad[0] if bad else None!r}; expected some of {', '.join(DIRECTIONS)}")
    return directions


def _finite(ms):
    return round(ms, 6) if math.isfinite(ms) else None


def tune_gaunt(problem: GauntProblem, batch: int = DEFAULT_BATCH, *, directions=("fwd",), dtype="float32",
               device=None, timer: Optional[Callable] = None, store: bool = True, weights=(), label: str = "",
               progress=None) -> GauntTuneResult:
    """Time every candidate of :func:`~tritp.gaunt_tuning.gaunt_space` (sparse; fft, grid and
    separable at each launch) on ``batch`` random samples, keep the fastest and (``store``) write the choice
    and launch entries to the user autotune cache, where ``GauntProduct`` finds them (see
    :mod:`tritp.gaunt_tuning`).

    ``directions``: what one timed step runs: ``("fwd",)`` the forward; with ``"bwd"`` also the
    gradients of both inputs; with ``"dbl"`` also the double backward (the forward always
    runs). ``dtype``: ``"float32"`` (what ``auto`` asks for) or ``"float64"``. ``timer`` maps a
    :class:`GauntLaunch` thunk to milliseconds (default: ``do_bench`` median on CUDA, wall clock
    under the Triton interpreter; without either, RuntimeError). ``weights``: the weight roles
    of the module whose kernels are timed (``GauntProduct.autotune`` passes its own).
    ``progress(done, total, config, ms)`` is called after each candidate. A failing candidate
    counts as infinitely slow; a generator ``CompilationError`` is raised. The size rule's
    implementation is timed first, each implementation's default launch first: they win ties.

    Example:
        >>> p = GauntProblem("8x0e+8x1o", "0e+1o", lmax_out=2)
        >>> timer = lambda t: {"fft 32:8:32": 1.0}.get(name_of(t.config), 2.0)
        >>> r = tune_gaunt(p, 10_000, timer=timer)  # doctest: +SKIP
        >>> import tritp
        >>> gp = tritp.compile("8x0e+8x1o", "0e+1o", lmax_out=2, mode="gaunt")  # doctest: +SKIP
        >>> r.implementation, r.launch, gp.implementation, gp.launches["float32"]  # doctest: +SKIP
        ('fft', (32, 8, 32), 'fft', (32, 8, 32))
    """
    import torch

    from .gaunt import GauntProduct
    from .kernels import interpreter_active
    from .tuning import clear_memo
    from .tuning.cache import SCHEMA, gpu_name, make_key, store as store_entry
    from .tuning.tuner import DTYPES, check_args, cuda_timer, default_device, search, wallclock_timer

    directions = _check_directions(directions)
    dtype = check_args("full", dtype)
    batch = int(batch)
    if batch < 1:
        raise ValueError(f"batch must be positive, got {batch}")
    device = torch.device(device) if device is not None else default_device()
    interpreted = device.type != "cuda" or interpreter_active()  # as choose_implementation looks it up
    if device.type != "cuda" and not interpreter_active():
        if not torch.cuda.is_available():
            default_device()  # raises the tuner's error: neither a CUDA GPU nor the interpreter
        raise RuntimeError(f"tune_gaunt: device {device} runs no Triton kernel; use a CUDA device, or set "
                           "TRITON_INTERPRET=1 to tune the interpreter on CPU (for testing only)")
    timer = timer or (wallclock_timer() if interpreted else cuda_timer())
    neutral = neutral_problem(problem)
    rule = size_rule(neutral)
    order = [c for i in [rule] + [i for i in IMPLEMENTATIONS if i != rule] for c in impl_configs(neutral, i, dtype)]

    g = torch.Generator().manual_seed(0)
    dt = DTYPES[dtype]
    d1, d2, do = (neutral.irreps(r).dim for r in ("x1", "x2", "out"))
    grad = "bwd" in directions or "dbl" in directions
    x1, x2, gy = (torch.randn(batch, d, generator=g, dtype=dt).to(device) for d in (d1, d2, do))
    v1, v2 = (torch.randn(batch, d, generator=g, dtype=dt).to(device) for d in (d1, d2))
    for t in (x1, x2):
        t.requires_grad_(grad)
    gy.requires_grad_("dbl" in directions)

    tensors = (x1, x2, gy, v1, v2)

    def thunk_for(config):
        p = neutral.replace(implementation=config.impl)
        launch = launch_of(config) if config.impl in LAUNCHED else None
        module = GauntProduct(p, weights=weights, backend="triton", launch=launch).to(device)
        return GauntLaunch(module, p, batch, directions, tensors, config)
    try:
        _, ctimes, cerrors = search(order, thunk_for, timer, "full", progress)
    except RuntimeError as e:
        raise RuntimeError(f"every Gaunt implementation failed for {neutral!r}: {e}") from None
    times = {name_of(c): ms for c, ms in ctimes.items()}
    errors = {name_of(c): err for c, err in cerrors.items()}
    gpu = gpu_name(device, interpreted)
    label_ = label or f"{neutral.irreps_in1} x {neutral.irreps_in2} -> {neutral.irreps_out} (gaunt)"

    def entry(family, prob, configs, tag):
        win = min(configs, key=lambda c: (times[name_of(c)], configs.index(c)))
        labels = [name_of(c) for c in configs]
        return win, {"schema": SCHEMA, "key": make_key(prob, FORWARD, dtype, batch, gpu, family),
                     "config": win._asdict(), "ms": _finite(times[name_of(win)]), "default": configs[0]._asdict(),
                     "default_ms": _finite(times[labels[0]]), "timed": len(configs), "space": len(configs),
                     "failed": sum(n in errors for n in labels), "strategy": "full", "label": label_,
                     "spec_tag": f"gaunt{tag} " + "+".join(directions), "problem": repr(prob),
                     "problem_hash": content_hash(prob.key), "tuned_batch": batch, "directions": list(directions),
                     "weights": list(weights), "times": {n: _finite(times[n]) for n in labels},
                     "errors": {n: errors[n] for n in labels if n in errors}}

    config, choice = entry(FAMILY, neutral, order, "")
    launches = {}
    for impl in LAUNCHED:
        configs = [c for c in order if c.impl == impl]
        if any(math.isfinite(times[name_of(c)]) for c in configs):
            launches[impl] = entry(LAUNCH_FAMILY, neutral.replace(implementation=impl), configs, f" {impl} launch")[1]
    if store:
        for e in (choice, *launches.values()):
            store_entry(e)
        clear_memo()  # store() forgets memoized lookups; also drop the shipped-file cache
    default = next(c for c in order if c.impl == rule)
    return GauntTuneResult(label_, directions, batch, config, times[name_of(config)], default,
                           times[name_of(default)], times, errors, choice, launches)


__all__ = ["tune_gaunt", "GauntTuneResult", "GauntLaunch", "DIRECTIONS"]
