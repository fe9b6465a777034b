"""Coalesced mul_ir tiles (codegen/cg_tiles.py): what the generated source does, and that every
component still lands where it belongs.

The kernel-level tests elsewhere (test_cg_kernels, test_conv) run the default form, so they
already check 3D tiles numerically; this file pins the form itself -- every mul_ir segment wider
than one component is read and written as one 3D tile, the forces kernel's reduced lanes too,
ir_mul and TRITP_COALESCE=0 keep component tiles -- and checks the padding and split trees of
degrees whose 2l+1 is far from a power of two (l = 2, 4: 5 of 8 and 9 of 16 components).
"""

import re

import pytest
import torch

import tritp
from tritp.codegen import Problem
from tritp.codegen.cg_emit import emit_producer
from tritp.codegen.cg_spec import compact, forward_spec
from tritp.codegen.conv_emit import emit_conv_producer
from tritp.codegen.intmath import p2

from test_cg_kernels import check_against_reference, pair, paths

MACE_LIKE = ("8x0e+8x1o+8x2e", "0e+1o+2e+3o", "0e+1o+2e+3o")


def _stores(src: str) -> list:
    return re.findall(r"tl\.store\(gp(\[:, :, None\])? \+", src)


def test_forward_stores_each_segment_once_as_a_3d_tile():
    p = Problem.channelwise(*MACE_LIKE)
    src = emit_producer(p, forward_spec(), "float32", 64)
    wide = [ir for _, ir in p.irreps_out if ir.dim > 1]
    stores = _stores(src)
    assert stores.count("[:, :, None]") == len(wide)  # one 3D store per wide output segment
    assert stores.count("") == len(p.irreps_out) - len(wide)  # 0e segments: one plain store each
    # every padded width is a power of two, masked back to 2l+1
    for ir in {ir for _, ir in p.irreps_out if ir.dim > 1}:
        assert f"cf{ir.dim} = (c * {ir.dim})[:, None] + tl.arange(0, {p2(ir.dim)})[None, :]" in src
        assert f"ef{ir.dim} = (tl.arange(0, {p2(ir.dim)}) < {ir.dim})[None, :]" in src


def test_forces_kernel_loads_its_reduced_lanes_as_3d_tiles():
    """The gradient of mul-1 edge harmonics runs the x1 channels as lanes ``q``: x1 and the
    output cotangent are read along them, as 3D tiles over (row, q, component)."""
    p = Problem.channelwise(*MACE_LIKE, shared_weights=False)
    spec = compact(forward_spec().derivative(1))[0]
    src = emit_producer(p, spec, "float32", 64)
    q_loads = re.findall(r"tl\.load\(tp\d\[:, :, None\] \+ \(\(\(q\d+ \* (\d)\)", src)
    assert q_loads and set(q_loads) == {"3", "5", "7"}
    assert not re.search(r"tl\.load\(tp\d \+ \(\d+ \+ \(q\d+\) \* [357]", src)  # no strided q tiles


def test_other_forms_keep_component_tiles():
    p = Problem.channelwise(*MACE_LIKE)
    for src in (emit_producer(p.replace(layout="ir_mul"), forward_spec(), "float32", 64),
                emit_producer(p, forward_spec(), "float32", 64, coalesce=False)):
        assert "tl.split(" not in src and "tl.join(" not in src and "[:, :, None]" not in src


@pytest.mark.parametrize("mode", ["atomic", "segment", "edge"])
def test_conv_stores_are_3d(mode):
    p = Problem.channelwise(*MACE_LIKE, shared_weights=False)
    spec = forward_spec() if mode != "edge" else compact(forward_spec().derivative(1))[0]
    src = emit_conv_producer(p, spec, "float32", 64, mode=mode)
    if mode == "atomic":
        assert "tl.atomic_add(gp[:, :, None] + (cf" in src
    elif mode == "segment":  # the node's row: a [lanes, DP] tile
        assert re.search(r"tl\.store\(g \+ rg \+ \(cf\d \+ \d+\)", src)
    else:  # a one-channel edge target: its operands come in along q as 3D tiles
        assert re.search(r"tl\.load\(tp\d\[:, :, None\] \+ \(\(\(q", src)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_high_degrees_round_trip_through_the_split_and_join_trees(dtype):
    """l = 2 (5 of 8 padded components) and l = 4 (9 of 16: four levels of tl.split), forward,
    gradients and forces-style double gradients against the float64 reference."""
    in1, in2, out = "3x2e+2x4e", "0e+2e", "3x2e+2x4e+2x0e"
    tri, ref = pair(in1, in2, out, paths(in1, in2, out, "uvu", True), shared_weights=False)
    assert {ir.l for _, ir in tri.irreps_out} >= {2, 4}
    check_against_reference(tri, ref, batch=(4,), dtype=dtype)


def test_strided_form_computes_the_same(monkeypatch):
    in1, in2, out = "3x1o+2x2e", "0e+1o", "3x1o+2x2e+2x1e"
    tri, ref = pair(in1, in2, out, paths(in1, in2, out, "uvu", True), shared_weights=False)
    x1 = torch.randn(5, tri.irreps_in1.dim)
    x2 = torch.randn(5, tri.irreps_in2.dim)
    w = torch.randn(5, tri.weight_numel)
    a = tri(x1, x2, w)
    monkeypatch.setenv("TRITP_COALESCE", "0")
    b = tritp.compile(in1, in2, out, paths(in1, in2, out, "uvu", True), shared_weights=False,
                      internal_weights=False, backend="triton")(x1, x2, w)
    assert torch.allclose(a, b, rtol=1e-6, atol=1e-6) and not torch.equal(a, torch.zeros_like(a))
