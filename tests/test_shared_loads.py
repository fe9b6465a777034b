"""Target segments that read one operand segment share a channel loop and its loads.

In a channelwise forward every output path of one x1 irrep reads the same x1 tile; the
generator runs those output segments in one loop over channel tiles and loads the tile once
(``CGEmitter.segment_groups``; per-sample weight gradients likewise, ``weight_groups``).
``TRITP_SHARE_LOADS=0`` generates the older form, one loop and one load per segment, kept so
the two can be timed against each other; both must compute the same thing.
"""

import re

import pytest
import torch

import tritp
import tritp.kernels
from tritp.codegen import Problem
from tritp.codegen.cg_emit import emit_producer
from tritp.codegen.cg_spec import forward_spec
from tritp.codegen.conv_emit import emit_conv_producer
from tritp.tuning import Config
from tritp.tuning.registers import REGISTER_BUDGET, estimate_registers

F64 = torch.float64
MACE_LIKE = ("8x0e+8x1o+8x2e", "0e+1o+2e+3o", "0e+1o+2e+3o")


def _x1_loads(src: str) -> list:
    """The x1 (``t0``) tile loads of a forward kernel, as their address expressions (a 3D
    segment tile's, in the row-on-warp form or not, or a component tile's)."""
    return re.findall(r"tl\.load\((?:tp0(?:\[:, :, None\] \+ (\(cf\d+ \+ \d+\))|(?: \+ ([^,]*)))"
                      r"|t0 \+ wz\d \* s0 \+ (\(wq\d+ \+ \d+\))), mask=", src)


@pytest.mark.parametrize("coalesce", [True, False])
def test_channelwise_forward_loads_each_x1_tile_once(coalesce):
    p = Problem.channelwise(*MACE_LIKE)
    shared = emit_producer(p, forward_spec(), "float32", 64, coalesce=coalesce)
    apart = emit_producer(p, forward_spec(), "float32", 64, share_loads=False, coalesce=coalesce)
    # one channel loop per x1 segment, against one per output segment
    assert shared.count("for c0 in range") == 3
    assert apart.count("for c0 in range") == len(p.irreps_out)
    # every x1 segment is loaded exactly once with sharing: as one 3D tile per segment
    # (coalesced), or one tile per component (1 + 3 + 5) ...
    per_seg = [1, 1, 1] if coalesce else [1, 3, 5]
    loads = _x1_loads(shared)
    assert len(loads) == len(set(loads)) == sum(per_seg), loads
    # ... and once per output path reading it without
    readers = {}
    for ins in p.instructions:
        readers[ins.i_in1] = readers.get(ins.i_in1, 0) + 1
    assert len(_x1_loads(apart)) == sum(readers[i] * n for i, n in enumerate(per_seg))


def test_per_sample_weight_gradient_shares_x1_and_shared_weights_do_not():
    p = Problem.channelwise(*MACE_LIKE)
    gw = forward_spec().derivative(2)
    assert gw.target == "w"
    src = emit_producer(p, gw, "float32", 64)
    assert src.count("for c0 in range") == 3  # one loop per x1 segment
    assert len(set(_x1_loads(src))) == len(_x1_loads(src))
    # a shared-weight gradient walks the batch per path (its accumulator lives across it)
    ps = Problem.channelwise(*MACE_LIKE, shared_weights=True)
    src = emit_producer(ps, gw, "float32", 64)
    assert src.count("for c0 in range") == len(ps.instructions)


def test_conv_segment_mode_walks_once_per_loop_group():
    """A node's segment walks its edges inside the channel loop, once for every target segment
    of a loop group (their node accumulators live across the walk), so each edge's x1 tile is
    gathered once per group as in the atomic kernel; ``TRITP_SHARE_LOADS=0`` walks per segment."""
    p = Problem.channelwise(*MACE_LIKE)
    walk = "for e0 in range(e_lo, e_hi, BLOCK_Z):"
    seg = emit_conv_producer(p, forward_spec(), "float32", 64, mode="segment")
    atomic = emit_conv_producer(p, forward_spec(), "float32", 64, mode="atomic")
    assert seg.count("for c0 in range") == seg.count(walk) == atomic.count("for c0 in range") == 3
    assert sorted(_x1_loads(seg)) == sorted(_x1_loads(atomic))
    own = emit_conv_producer(p, forward_spec(), "float32", 64, mode="segment", share_loads=False)
    assert own.count(walk) == len(p.irreps_out)


def test_switch_names_a_different_source(monkeypatch):
    p = Problem.channelwise(*MACE_LIKE)
    a = tritp.kernels.source_path(p, forward_spec(), "float32", 64)
    monkeypatch.setenv("TRITP_SHARE_LOADS", "0")
    assert not tritp.kernels.share_loads()
    b = tritp.kernels.source_path(p, forward_spec(), "float32", 64)
    assert a != b
    _, src = tritp.kernels.kernel_source(p, forward_spec(), "float32", 64)
    assert src.count("for c0 in range") == len(p.irreps_out)


@pytest.mark.parametrize("share", ["1", "0"])
def test_both_forms_match_the_reference(monkeypatch, share):
    """Forward, gradients (per-sample weights: the shared weight-gradient loop) and the
    forces-style double gradient of both forms against the float64 reference."""
    monkeypatch.setenv("TRITP_SHARE_LOADS", share)
    kw = dict(mode="channelwise", shared_weights=False, internal_weights=False)
    irreps = ("3x0e+3x1o+3x2e", "0e+1o+2e", "0e+1o+2e")
    tri = tritp.compile(*irreps, backend="triton", **kw)
    ref = tritp.compile(*irreps, backend="reference", **kw)
    torch.manual_seed(0)
    x1 = torch.randn(6, tri.irreps_in1.dim, dtype=F64, requires_grad=True)
    x2 = torch.randn(6, tri.irreps_in2.dim, dtype=F64, requires_grad=True)
    w = torch.randn(6, tri.weight_numel, dtype=F64, requires_grad=True)
    outs = []
    for tp in (tri, ref):
        y = tp(x1, x2, w)
        (g2,) = torch.autograd.grad(y.pow(2).sum(), x2, create_graph=True)
        grads = torch.autograd.grad(y.sum() + g2.pow(2).sum(), (x1, x2, w))
        outs.append((y.detach(), *grads))
    for a, b in zip(*outs):
        assert (a - b).abs().max().item() <= 1e-10 * b.abs().max().item()


def test_register_estimate_counts_the_shared_loop(monkeypatch):
    """Calibrated on ptxas for sm_90 (strided mul_ir tiles, TRITP_COALESCE=0): mace-large's
    forward at 16:64:4 took 214 registers with shared loops (167 without), above the default's
    budget; 16:64:8 took 116."""
    from tritp.presets import preset

    monkeypatch.setenv("TRITP_COALESCE", "0")

    p, _ = preset("mace-large")
    shared = estimate_registers(p, forward_spec(), "float32", Config(16, 64, 4), share=True)
    apart = estimate_registers(p, forward_spec(), "float32", Config(16, 64, 4), share=False)
    assert apart <= REGISTER_BUDGET < shared
    assert estimate_registers(p, forward_spec(), "float32", Config(16, 64, 8), share=True) <= REGISTER_BUDGET


def test_conv_segment_default_counts_node_accumulators():
    """Segment mode walks a node's edges once per channel loop group and keeps every segment
    of the group's node accumulators across the walk: the estimate counts PER_NODE tiles per
    accumulator (mace-large's forward: 31 over its largest loop, 2 elements per thread at
    8:64:8), and the default stays within the budget (offline sm_90: 175 registers, no spill)."""
    from tritp.conv_kernels import default_config
    from tritp.presets import preset
    from tritp.tuning.registers import PER_NODE, REGISTER_BUDGET, estimate_registers

    p, _ = preset("mace-large")
    fwd = forward_spec()
    c = Config(8, 64, 8)
    walked = estimate_registers(p, fwd, "float32", c, walk=True)
    # at least the second largest loop's 24 accumulators (of 16, 24, 31)
    assert walked - estimate_registers(p, fwd, "float32", c) >= PER_NODE * 24 * 2
    seg = default_config("segment", 160_000, 1_000, False, p, fwd)
    assert seg == c and estimate_registers(p, fwd, "float32", seg, walk=True) <= REGISTER_BUDGET
    assert default_config("atomic", 160_000, 160_000, False, p, fwd) == c


def test_tuned_entries_are_per_form(monkeypatch):
    """A launch tuned for the shared-loop kernels is not used for the one-loop-per-segment ones
    (their registers differ): the source identity of every family's cache key changes."""
    from tritp.conv_tuning import ConvSpec
    from tritp.tuning import cache

    p = Problem.channelwise(*MACE_LIKE)
    fwd = forward_spec()
    keys = lambda: (cache.make_key(p, fwd, "float32", 1000, "gpu")["source"],
                    cache.make_key(p, ConvSpec(fwd, "atomic"), "float32", 1000, "gpu", family="conv")["source"])
    shared = keys()
    monkeypatch.setenv("TRITP_SHARE_LOADS", "0")
    apart = keys()
    assert shared[0] != apart[0] and shared[1] != apart[1]
    monkeypatch.setenv("TRITP_SHARE_LOADS", "1")
    assert keys() == shared
    forms = set()
    for form in ("0", "3d", "1"):  # the tile forms differ in registers too
        monkeypatch.setenv("TRITP_COALESCE", form)
        forms.add(keys())
    assert len(forms) == 3 and keys() == shared


def test_conv_segment_space_counts_node_accumulators(monkeypatch):
    """The tuner's register rule sizes segment-mode candidates for the node accumulators its
    edge walk keeps: fewer fit than in the atomic kernel (strided tiles, whose estimate leaves
    room for more candidates than the 3D tiles')."""
    from tritp.conv_tuning import ConvSpec
    from tritp.presets import preset
    from tritp.tuning.space import cg_space, space_for

    monkeypatch.setenv("TRITP_COALESCE", "0")
    p, _ = preset("mace-large")
    seg = space_for("conv", p, ConvSpec(forward_spec(), "segment"), "float32", 4096)
    atomic = space_for("conv", p, ConvSpec(forward_spec(), "atomic"), "float32", 4096)
    assert seg.candidates == cg_space(p, forward_spec(), "float32", 4096, walk=True).candidates
    assert atomic.candidates == cg_space(p, forward_spec(), "float32", 4096).candidates
    assert set(seg.candidates) < set(atomic.candidates)
