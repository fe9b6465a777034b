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
    src = emit_producer(p, forward_spec(), "float32", 64, coalesce="3d")
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
    src = emit_producer(p, spec, "float32", 64, coalesce="3d")
    q_loads = re.findall(r"tl\.load\(tp\d\[:, :, None\] \+ \(\(\(q\d+ \* (\d)\)", src)
    assert q_loads and set(q_loads) == {"3", "5", "7"}
    assert not re.search(r"tl\.load\(tp\d \+ \(\d+ \+ \(q\d+\) \* [357]", src)  # no strided q tiles


def test_other_forms_keep_component_tiles():
    p = Problem.channelwise(*MACE_LIKE)
    for src in (emit_producer(p.replace(layout="ir_mul"), forward_spec(), "float32", 64),
                emit_producer(p, forward_spec(), "float32", 64, coalesce=False)):
        assert "tl.split(" not in src and "tl.join(" not in src and "[:, :, None]" not in src


@pytest.mark.parametrize("mode", ["atomic", "segment", "edge"])
def test_conv_tiles_follow_the_edges(mode):
    """The fused convolution's 3D tiles: by default [rows, lanes, DP] pointer tiles, and on
    request (``coalesce="rows"``, TRITP_CONV_ROWS=1) in the row-on-warp form over edge positions, with each
    tensor's rows gathered per tile position (x1 at the edge's source, out at its destination;
    in segment mode the chunk's edge ids and neighbours)."""
    p = Problem.channelwise(*MACE_LIKE, shared_weights=False)
    spec = forward_spec() if mode != "edge" else compact(forward_spec().derivative(1))[0]
    old = emit_conv_producer(p, spec, "float32", 64, mode=mode)
    assert old == emit_conv_producer(p, spec, "float32", 64, mode=mode, coalesce="3d")
    src = emit_conv_producer(p, spec, "float32", 64, mode=mode, coalesce="rows")
    if mode == "atomic":
        assert "tl.atomic_add(gp[:, :, None] + (cf" in old
        assert re.search(r"tl\.atomic_add\(g \+ wzd\d \* sg \+ \(wq\d \+ \d+\)", src)
        assert re.search(r"tl\.load\(t0 \+ wzs\d \* s0 \+ \(wq\d", src)
    elif mode == "segment":  # the node's row: a [lanes, DP] tile either way
        for s_ in (old, src):
            assert re.search(r"tl\.store\(g \+ rg \+ \(cf\d \+ \d+\)", s_)
        assert re.search(r"wz\d = e0 \+", src) and re.search(r"tl\.load\(t0 \+ wzn\d \* s0 \+ \(wq\d", src)
    else:  # a one-channel edge target: its operands come in along q
        assert re.search(r"tl\.load\(tp\d\[:, :, None\] \+ \(\(\(q", old)
        assert re.search(r"tl\.load\(t0 \+ wzs\d \* s0 \+ \(wq\d", src)
        assert re.search(r"tl\.load\(t\d \+ wzd\d \* s\d \+ \(wq\d", src)


@pytest.mark.parametrize("scatter", ["atomic", "deterministic"])
def test_conv_rows_form_equals_the_3d_form(monkeypatch, scatter):
    """Forward, grad x1 (node targets: atomic or segment) and the forces and weight gradients
    (edge targets, apart and in one fused kernel) of a small graph, row-on-warp (TRITP_CONV_ROWS=1) against the 3D form, at
    two launch configurations (one row or several per warp column block): equal (atomic node
    targets: to rounding, the adds land in another order)."""
    from tritp.conv_index import conv_graph
    from tritp.conv_kernels import produce_conv
    from tritp.conv_tuning import conv_specs
    from tritp.tuning import Config

    p = Problem.channelwise("32x0e+32x1o", "0e+1o", "0e+1o", shared_weights=False)
    g = torch.Generator().manual_seed(5)
    n, E = 7, 40
    src, dst = torch.randint(0, n, (E,), generator=g), torch.sort(torch.randint(0, n, (E,), generator=g))[0]
    graph = {"out": [src, dst], "x1": [src, dst]}
    if scatter == "deterministic":
        cg = conv_graph(src, dst, n)
        graph = {"out": cg.tensors(), "x1": cg.tensors()}
    x1 = torch.randn(n, p.irreps_in1.dim, generator=g)
    ea = torch.randn(E, p.irreps_in2.dim, generator=g)
    w = torch.randn(E, p.weight_numel, generator=g)
    gout = torch.randn(n, p.irreps_out.dim, generator=g)
    vals = {"x1": x1, "x2": ea, "w": w, "out": gout}
    for _, cs in conv_specs(p, scatter, ("fwd", "bwd")):
        ts = [vals[r] for r in cs.spec.roles]
        gl = graph.get(cs.target, graph["out"])
        for config in (Config(8, 32, 8), Config(16, 16, 1)):  # WZ 1 (a gathered column), WZ 8
            out = {}
            for form in ("1", "3d"):
                monkeypatch.setenv("TRITP_CONV_ROWS", "1" if form == "1" else "0")
                out[form] = produce_conv(p, cs.spec, scatter, ts, gl, n, n, config=config)
            # the fused edge backward (conv_fused) returns its parts
            rows, flat = (out[f] if isinstance(out[f], list) else [out[f]] for f in ("1", "3d"))
            for a, b in zip(rows, flat):
                if cs.mode == "atomic":
                    assert torch.allclose(a, b, rtol=1e-5, atol=1e-5), (cs.tag, config)
                else:
                    assert torch.equal(a, b), (cs.tag, config)
                assert a.abs().sum() > 0


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


def _rows_io(src: str) -> tuple:
    """Loads and stores of the row-on-warp form: ``(loads, stores)``, by segment width."""
    return (re.findall(r"tl\.load\(t\d \+ wz(\d) \* s\d \+ \(wq\d \+ \d+\), mask=wm\d", src),
            re.findall(r"tl\.store\(g \+ wz(\d) \* sg \+ \(wq\d \+ \d+\)", src))


def test_rows_form_moves_every_wide_segment_of_a_program_s_own_rows():
    """The default form loads and stores each wide segment as one [R, 32] row-on-warp tile
    (cg_tiles.rows_head), where bc * DP fills a warp's 32 columns, and so does the forces
    kernel along its reduced lanes; the "3d" form and the convolution (gathered rows) keep
    [rows, lanes, DP] pointer tiles."""
    p = Problem.channelwise(*MACE_LIKE, shared_weights=False)
    src = emit_producer(p, forward_spec(), "float32", 64)
    loads, stores = _rows_io(src)
    wide = [ir.dim for _, ir in p.irreps_out if ir.dim > 1]
    assert sorted(stores) == sorted(str(d) for d in wide) and "[:, :, None]" not in src
    assert sorted(set(loads)) == ["3", "5"]  # x1's 1o and 2e, once each per loop
    assert "NW: tl.constexpr" in src and "tl.permute(" in src
    assert _rows_io(emit_producer(p, forward_spec(), "float32", 64, coalesce="3d")) == ([], [])
    assert _rows_io(emit_conv_producer(p, forward_spec(), "float32", 64, mode="atomic")) == ([], [])
    forces = emit_producer(p, compact(forward_spec().derivative(1))[0], "float32", 64)
    assert sorted(set(_rows_io(forces)[0])) == ["3", "5", "7"]
    assert not re.search(r"tl\.load\(tp\d\[:, :, None\]", forces)  # its one-lane target: 3D stores
    assert re.search(r"wc\d = q\d+_0 \+", forces)  # the rows' lanes are the reduced channels
    # 2 channels of 1o: 2 x 4 columns do not fill a warp, so that segment keeps the 3D form
    narrow = emit_producer(Problem.channelwise("2x1o+8x2e", "0e", "2x1o+8x2e"), forward_spec(), "float32", 64)
    assert _rows_io(narrow) == (["5"], ["5"]) and "tl.load(tp0[:, :, None] + (cf3" in narrow
    with pytest.raises(ValueError, match="coalesce must be one of"):
        emit_producer(p, forward_spec(), "float32", 64, coalesce="warp")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_rows_form_equals_the_3d_form_at_every_lane_split(monkeypatch, dtype):
    """The rows per warp column block (LZ, from BLOCK_Z, the lanes and NW: 1, 2, 4 and 8 below,
    clamped per width) only move data: the forward and the three gradients (the forces kernel's
    reduced lanes included) are bit-identical to the 3D form's at each launch configuration,
    with a segment too narrow for the form (3 x 1o: 16 columns) alongside."""
    from tritp.kernels import produce
    from tritp.tuning import Config

    p = Problem.channelwise("3x1o+32x2e", "0e+1o", "1o+2e", shared_weights=False)
    g = torch.Generator().manual_seed(3)
    Z = 21
    x1, x2 = (torch.randn(Z, ir.dim, generator=g, dtype=dtype) for ir in (p.irreps_in1, p.irreps_in2))
    w = torch.randn(Z, p.weight_numel, generator=g, dtype=dtype)
    gout = torch.randn(Z, p.irreps_out.dim, generator=g, dtype=dtype)
    fwd = forward_spec()
    jobs = [(fwd, [x1, x2, w])] + [(s, [[x1, x2, w, gout][k] for k in kept])
                                   for s, kept in (compact(fwd.derivative(i)) for i in range(3))]
    configs = [Config(8, 32, 8), Config(8, 16, 4), Config(16, 32, 1), Config(32, 8, 1)]
    for config in configs if dtype == torch.float32 else configs[:2]:
        for spec, ts in jobs:
            out = {}
            for form in ("1", "3d"):
                monkeypatch.setenv("TRITP_COALESCE", form)
                out[form] = produce(p, spec, ts, Z, config=config)
            assert torch.equal(out["1"], out["3d"]), (config, spec.tag)
            assert out["1"].abs().sum() > 0
