"""Named tensor products from real models, with the batch size they are benchmarked at.

The first six are the problems of the design notes (section 7), whose peer timings on one H100
are kept here as :data:`PEER_ANCHORS_H100` so that reports can print them next to a run; the
others are further layers that MACE, NequIP and SevenNet build. Every preset returns a fresh
:class:`~tritp.codegen.Problem` and its default batch (rows; for a message-passing layer, edges).

Example:
    >>> from tritp.presets import preset, PRESETS
    >>> problem, batch = preset("mace-medium")
    >>> len(problem.instructions), problem.shared_weights, batch
    (8, False, 50000)
    >>> "fc-32x012" in PRESETS
    True
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from .codegen import Problem

#: Batch of the design's forward and forward+backward anchors.
ANCHOR_BATCH = 50_000
#: Batch of the design's double-backward anchors.
ANCHOR_DBL_BATCH = 20_000

NEQUIP_L3 = "64x0o+64x0e+64x1o+64x1e+64x2o+64x2e+64x3o+64x3e"
NEQUIP_L2 = "32x0o+32x0e+32x1o+32x1e+32x2o+32x2e"
DIFFDOCK = "10x1o+10x1e+48x0e+48x0o"
FC012 = "32x0e+32x1o+32x2e"


class Preset(NamedTuple):
    """A named problem: ``build()`` makes the Problem, ``batch`` is its default batch."""

    build: Callable[[], Problem]
    batch: int
    description: str


def _channelwise(in1: str, in2: str, keep: str, batch: int, text: str) -> Preset:
    return Preset(lambda: Problem.channelwise(in1, in2, keep, shared_weights=False), batch, text)


PRESETS = {
    "mace-large": _channelwise(
        "128x0e+128x1o+128x2e", "0e+1o+2e+3o", "0e+1o+2e+3o", ANCHOR_BATCH,
        "MACE large (L=2) interaction: uvu, one output per path, per-sample weights"),
    "mace-medium": _channelwise(
        "128x0e+128x1o", "0e+1o+2e+3o", "0e+1o+2e", ANCHOR_BATCH,
        "MACE medium (L=1) interaction: uvu, one output per path, per-sample weights"),
    "nequip-benzene": _channelwise(
        NEQUIP_L3, "0e+1o+2e+3o", NEQUIP_L3, ANCHOR_BATCH,
        "NequIP benzene (64 features, l=3, both parities): uvu filtered to the input's irreps"),
    "diffdock-L2": Preset(
        lambda: Problem.all_paths(DIFFDOCK, "0e+1o+2e", DIFFDOCK, "uvw", shared_weights=False), ANCHOR_BATCH,
        "DiffDock score model, L=2: every uvw path, per-sample weights"),
    "fc-32x012": Preset(
        lambda: Problem.fully_connected(FC012, FC012, FC012, shared_weights=True), ANCHOR_BATCH,
        "32x(0e+1o+2e) squared, fully connected uvw, shared weights"),
    "uvu-128x3e": Preset(
        lambda: Problem.all_paths("128x3e", "1x3e", "128x3e", "uvu", shared_weights=False), ANCHOR_BATCH,
        "128x3e x 1x3e -> 128x3e, one uvu path (a large l=3 coupling), per-sample weights"),
    # Further layers from model configurations (not in the design's anchor table).
    "mace-small": _channelwise(
        "128x0e", "0e+1o+2e+3o", "0e+1o+2e+3o", ANCHOR_BATCH,
        "MACE small (L=0 hidden features) interaction: 128 scalars x l<=3 edge harmonics"),
    "nequip-l2": _channelwise(
        NEQUIP_L2, "0e+1o+2e", NEQUIP_L2, ANCHOR_BATCH,
        "NequIP with 32 features and l_max=2, both parities: uvu filtered to the input's irreps"),
    "sevennet-l2": _channelwise(
        "128x0e+128x1e+128x2e", "0e+1e+2e", "0e+1e+2e", ANCHOR_BATCH,
        "SevenNet-style convolution without parity (128 channels, lmax 2): uvu filtered to l<=2"),
    # Small enough for the Triton interpreter on a CPU (tests, --quick).
    "tiny": _channelwise(
        "8x0e+8x1o", "0e+1o", "0e+1o", 16,
        "a toy uvu product for CPU smoke runs under TRITON_INTERPRET=1"),
}

#: The presets ``--preset all`` runs: every one but the CPU toy.
BENCH_PRESETS = tuple(name for name in PRESETS if name != "tiny")

# Peer timings of the design notes, section 7: one NVIDIA H100 80GB HBM3, fp32, median ms
# (triton do_bench), torch 2.11+cu130, e3nn 0.6.0, cuEquivariance 0.12.0, OpenEquivariance
# 0.7.0, copy bandwidth 3.00 TB/s. fwd and fwdbwd at batch 50,000; dbl at batch 20,000.
PEER_ANCHORS_H100 = {
    "_meta": {
        "gpu": "NVIDIA H100 80GB HBM3", "dtype": "float32", "bandwidth_TBps": 3.00,
        "batch": {"fwd": ANCHOR_BATCH, "fwdbwd": ANCHOR_BATCH, "dbl": ANCHOR_DBL_BATCH},
        "versions": {"torch": "2.11+cu130", "e3nn": "0.6.0", "cuequivariance": "0.12.0",
                     "openequivariance": "0.7.0"},
    },
    "mace-large": {"io_floor_ms": 0.829, "fwd": {"e3nn": 9.80, "cueq": 3.85, "oeq": 0.991},
                   "fwdbwd": {"e3nn": 39.9, "cueq": 7.84, "oeq": 2.51},
                   "dbl": {"e3nn": 37.3, "cueq": 6.59, "oeq": 3.29}},
    "mace-medium": {"io_floor_ms": 0.325, "fwd": {"e3nn": 2.91, "cueq": 0.990, "oeq": 0.409},
                    "fwdbwd": {"e3nn": 10.6, "cueq": 2.52, "oeq": 0.934},
                    "dbl": {"e3nn": 15.4, "cueq": 4.64, "oeq": 1.27}},
    "nequip-benzene": {"io_floor_ms": 1.76, "fwd": {"e3nn": 27.4, "cueq": 18.8, "oeq": 4.78},
                       "fwdbwd": {"e3nn": 168.0, "cueq": 39.6, "oeq": 13.1},
                       "dbl": {"e3nn": 151.0, "cueq": 22.2, "oeq": 11.7}},
    "diffdock-L2": {"io_floor_ms": 0.497, "fwd": {"e3nn": 2.45, "cueq": 2.72, "oeq": 0.818},
                    "fwdbwd": {"e3nn": 30.3, "cueq": 6.97, "oeq": 2.30}},
    "fc-32x012": {"io_floor_ms": 0.058, "fwd": {"e3nn": 10.2, "cueq": 244.0, "oeq": 16.9},
                  "fwdbwd": {"e3nn": 27.0, "cueq": 1460.0, "oeq": 79.8}},
    "uvu-128x3e": {"io_floor_ms": 0.128, "fwd": {"e3nn": 0.635, "cueq": 0.681, "oeq": 0.154},
                   "fwdbwd": {"e3nn": 2.01, "cueq": 3.02, "oeq": 0.372}},
}


def preset(name: str) -> tuple:
    """``(Problem, default batch)`` of preset ``name``; ValueError names the known ones.

    Example:
        >>> p, b = preset("fc-32x012")
        >>> p.shared_weights, p.weight_numel
        (True, 360448)
    """
    try:
        entry = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None
    return entry.build(), entry.batch


def anchor(name: str, direction: str) -> dict:
    """The H100 peer anchors of preset ``name`` for ``direction`` (``fwd``, ``fwdbwd``,
    ``dbl``) as ``{peer: ms}``; empty when the design has none.

    Example:
        >>> anchor("mace-medium", "fwd")["oeq"]
        0.409
        >>> anchor("tiny", "fwd")
        {}
    """
    return dict(PEER_ANCHORS_H100.get(name, {}).get(direction, {}))


def best_anchor(name: str, direction: str):
    """``(peer, ms)`` of the fastest H100 anchor, or ``None``.

    Example:
        >>> best_anchor("fc-32x012", "fwd")
        ('e3nn', 10.2)
    """
    a = anchor(name, direction)
    return min(a.items(), key=lambda kv: kv[1]) if a else None
