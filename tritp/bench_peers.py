"""Adapters that build each implementation the benchmark times: tritp, and the peers e3nn,
cuEquivariance and OpenEquivariance with the same problem, inputs and weights in e3nn's layout.

A peer is used only when it imports and can express the problem; otherwise the reason is
recorded (:func:`peer_status`) and the run goes on.

Example:
    >>> from tritp.presets import preset
    >>> fn, note = build_impl("e3nn", preset("tiny")[0], "cpu", torch.float32)  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import os
import threading
from typing import Optional

import torch

from .codegen import Problem

PEERS = ("e3nn", "cueq", "oeq")

# -- implementations --------------------------------------------------------------------------
_PEER_STATUS: dict = {}


def peer_status() -> dict:
    """``{peer: "ok" or the reason it could not be used}`` for every peer tried so far."""
    return dict(_PEER_STATUS)


def _form(problem: Problem) -> Optional[str]:
    """``"channelwise"`` or ``"fully_connected"`` when ``problem`` is exactly what that
    constructor builds (the two forms cuEquivariance's layers offer), else None."""
    p = problem
    keep = "+".join(sorted({str(ir) for _, ir in p.irreps_out}))
    forms = (("channelwise", Problem.channelwise, keep), ("fully_connected", Problem.fully_connected, p.irreps_out))
    for form, build, out in forms:
        try:
            if build(p.irreps_in1, p.irreps_in2, out, shared_weights=p.shared_weights) == p:
                return form
        except ValueError:
            pass
    return None


class PeerNotReady(RuntimeError):
    """A peer's import is still running after the wait the benchmark allows it."""


_imports: dict = {}


def import_peer(name: str):
    """Import a peer's package, waiting at most ``TRITP_BENCH_IMPORT_WAIT_S`` seconds when that
    is set (unset: as long as it takes).

    OpenEquivariance builds its C++ extension on first import, a minute or more.
    ``benchmarks/gpu_check.sh`` starts that build in the background and sets the wait, so a
    benchmark still importing when a problem needs the peer records it as not ready for that
    problem and asks again at the next, instead of spending its time limit on the build. The
    import runs once per process, in a daemon thread.

    Example:
        >>> import_peer("math").sqrt(4.0)
        2.0
    """
    wait = os.environ.get("TRITP_BENCH_IMPORT_WAIT_S")
    if not wait:
        return importlib.import_module(name)
    if name not in _imports:
        box: dict = {}

        def work():
            try:
                box["module"] = importlib.import_module(name)
            except BaseException as e:  # noqa: BLE001 - handed to every caller below
                box["error"] = e
        thread = threading.Thread(target=work, name=f"import {name}", daemon=True)
        thread.start()
        _imports[name] = (thread, box)
    thread, box = _imports[name]
    thread.join(float(wait))
    if thread.is_alive():
        raise PeerNotReady(f"{name} is still importing after a {wait} s wait (OpenEquivariance builds its "
                           "extension on first import); the next problem asks again")
    if "error" in box:
        raise box["error"]
    return box["module"]


def _cue_group(cue):
    """cuEquivariance's O3 with e3nn's coupling (the adapter MACE and SevenNet use), built
    from tritp's own coefficients, which equal ``e3nn.o3.wigner_3j``."""
    import numpy as np

    from .codegen.coupling import dense_coupling

    class O3e3nn(cue.O3):
        def __mul__(a, b):  # noqa: N805
            return [O3e3nn(l=ir.l, p=ir.p) for ir in cue.O3.__mul__(a, b)]

        @classmethod
        def clebsch_gordan(cls, a, b, c):
            a, b, c = cls._from(a), cls._from(b), cls._from(c)
            if a.p * b.p != c.p:
                return np.zeros((0, a.dim, b.dim, c.dim))
            return dense_coupling(a.l, b.l, c.l)[None] * np.sqrt(c.dim)

        def __lt__(a, b):  # noqa: N805
            b = a._from(b)
            return (a.l, a.p) < (b.l, b.p)

        @classmethod
        def iterator(cls):
            l = 0  # noqa: E741
            while True:
                yield O3e3nn(l=l, p=(-1) ** l)
                yield O3e3nn(l=l, p=-((-1) ** l))
                l += 1  # noqa: E741

    return O3e3nn


def _default_norms(p: Problem) -> bool:
    return (p.irrep_normalization, p.path_normalization, p.layout) == ("component", "element", "mul_ir") and all(
        v == 1.0 for v in p.in1_var + p.in2_var + p.out_var)


def cueq_module(problem: Problem, device, dtype) -> tuple:
    """``(module, note)``: cuEquivariance's layer for ``problem`` (channelwise or fully
    connected, default normalization) in e3nn's layout and coupling; raises ValueError when its
    layers cannot build ``problem``. The fused convolution benchmark calls the same module with
    ``indices_1``/``indices_out``."""
    import cuequivariance as cue
    import cuequivariance_torch as cuet

    p = problem
    form = _form(p)
    if form is None or not _default_norms(p):
        raise ValueError("cuEquivariance's layers build channelwise (uvu) and fully connected (uvw) "
                         "products with default normalization only")
    if torch.device(device).type == "cuda":
        _require_cue_ops()
    G = _cue_group(cue)
    kw = dict(layout=cue.mul_ir, shared_weights=p.shared_weights, internal_weights=False,
              device=device, dtype=dtype, math_dtype=dtype)
    in1, in2 = cue.Irreps(G, str(p.irreps_in1)), cue.Irreps(G, str(p.irreps_in2))
    if form == "channelwise":
        keep = [ir for _, ir in cue.Irreps(G, "+".join(sorted({str(ir) for _, ir in p.irreps_out})))]
        mod = cuet.ChannelWiseTensorProduct(in1, in2, keep, **kw)
    else:
        mod = cuet.FullyConnectedTensorProduct(in1, in2, cue.Irreps(G, str(p.irreps_out)), **kw)
    if mod.weight_numel != p.weight_numel:
        raise ValueError(f"cuEquivariance built {mod.weight_numel} weights, tritp {p.weight_numel}")
    # "naive" is its torch fallback: on a GPU, its choice when the segments are not uniform
    method = getattr(getattr(mod, "f", None), "method", "unknown")
    return mod, f"cuet {form}, method {method}, layout mul_ir"


def _require_cue_ops() -> None:
    """Without its CUDA kernels (cuequivariance_ops_torch) cuEquivariance falls back to plain
    torch with only a warning; timing that would misreport the peer, so it is not run."""
    try:
        importlib.import_module("cuequivariance_ops_torch")
    except Exception as e:  # noqa: BLE001 - a broken CUDA library raises more than ImportError
        raise ImportError(f"cuequivariance_ops_torch does not import ({type(e).__name__}: {e}); cuEquivariance "
                          "would time its torch fallback, not its kernels") from e


def build_impl(impl: str, problem: Problem, device, dtype) -> tuple:
    """``(fn, note)`` with ``fn(x1, x2, w) -> out`` in e3nn's layout; raises when ``impl``
    cannot run ``problem`` here (the reason is recorded by the caller)."""
    p = problem
    if impl == "tritp":
        from .module import TensorProduct

        tp = TensorProduct(p, backend="triton")
        return (lambda a, b, c: tp(a, b, c)), None
    try:
        built = _build_peer(impl, p, device, dtype)
    except PeerNotReady as e:  # still importing: "ok" once a later problem gets it
        _PEER_STATUS.setdefault(impl, f"not ready: {e}")
        raise
    except (ImportError, OSError) as e:  # a missing package, or a missing/broken shared library
        _PEER_STATUS[impl] = f"not importable: {type(e).__name__}: {e}"
        raise
    except Exception:  # imported; this is a problem it cannot build
        _PEER_STATUS[impl] = "ok"
        raise
    _PEER_STATUS[impl] = "ok"
    return built


def _build_peer(impl: str, p: Problem, device, dtype) -> tuple:
    if impl == "e3nn":
        from e3nn import o3

        if p.layout != "mul_ir":
            raise ValueError("e3nn runs the mul_ir layout only")
        tp = o3.TensorProduct(str(p.irreps_in1), str(p.irreps_in2), str(p.irreps_out),
                              [i.as_tuple() for i in p.instructions], in1_var=list(p.in1_var),
                              in2_var=list(p.in2_var), out_var=list(p.out_var),
                              irrep_normalization=p.irrep_normalization, path_normalization=p.path_normalization,
                              shared_weights=p.shared_weights, internal_weights=False).to(device=device, dtype=dtype)
        return (lambda a, b, c: tp(a, b, c)), None
    if impl == "cueq":
        mod, note = cueq_module(p, device, dtype)
        shared = p.shared_weights
        return (lambda a, b, c: mod(a, b, c.reshape(1, -1) if shared else c)), note
    if impl == "oeq":
        import numpy as np

        oeq = import_peer("openequivariance")
        modes = {i.mode for i in p.instructions}
        if not (modes <= {"uvu"} or modes <= {"uvw"}) or p.layout != "mul_ir":
            raise ValueError(f"OpenEquivariance runs pure uvu or pure uvw products; this one has {sorted(modes)}")
        npdt = {torch.float32: np.float32, torch.float64: np.float64}[dtype]
        irreps = [oeq.Irreps(str(x)) for x in (p.irreps_in1, p.irreps_in2, p.irreps_out)]
        tpp = oeq.TPProblem(*irreps, [i.as_tuple() for i in p.instructions], in1_var=list(p.in1_var),
                            in2_var=list(p.in2_var), out_var=list(p.out_var),
                            irrep_normalization=p.irrep_normalization, path_normalization=p.path_normalization,
                            shared_weights=p.shared_weights, internal_weights=False,
                            irrep_dtype=npdt, weight_dtype=npdt)
        tp = oeq.TensorProduct(tpp, torch_op=True)
        note = "uvw weights are in OpenEquivariance's own order: its error is not comparable" if "uvw" in modes else None
        return (lambda a, b, c: tp(a, b, c)), note
    raise ValueError(f"unknown implementation {impl!r}; expected tritp or one of {', '.join(PEERS)}")
