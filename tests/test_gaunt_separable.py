"""The separable Gaunt implementation: its tables, its equivalence with the grid form, its
launches and register rule. Its kernels against the float64 reference, e3nn's harmonics and
autograd run with the other implementations in ``test_gaunt.py`` and ``test_gaunt_grad.py``.
"""

import math
import re

import numpy as np
import pytest
import torch

from tritp.codegen.gaunt_emit import role_table
from tritp.codegen.gaunt_problem import FORWARD, GauntProblem
from tritp.codegen.gaunt_sep import emit_separable_producer
from tritp.codegen.gaunt_sep_layout import kernel_tables, table_columns, target_groups
from tritp.codegen.gaunt_tables import azimuth_coupling, lm_list, node_tables
from tritp.gaunt import compile_gaunt
from tritp.gaunt_kernels import check_launch
from tritp.gaunt_launch import gaunt_produce
from tritp.gaunt_ops import op_key, parse_key
from tritp.gaunt_reference import gaunt_reference
from tritp import gaunt_separable
from tritp.gaunt_separable import (LADDER, REGISTER_BUDGET, default_passes, estimate_registers, launch_candidates,
                                   resolve_launch, use_pairs)

F64 = torch.float64


def bench_problem(L: int, impl: str = "separable", C: int = 32) -> GauntProblem:
    ls = "+".join(f"{C}x{l}{'eo'[l % 2]}" for l in range(L + 1))
    return GauntProblem(ls, ls, lmax_out=L, implementation=impl)


def test_azimuth_coupling_is_exact_symmetric_and_selective():
    c = azimuth_coupling(4)
    assert set(c.values()) <= {1.0, -1.0, math.sqrt(0.5), -math.sqrt(0.5)}
    for (a, b, d), v in c.items():
        assert c[(b, a, d)] == c[(d, b, a)] == c[(a, d, b)] == v  # a mean of a product: symmetric
        x, y, z = sorted(map(abs, (a, b, d)))
        assert z == x + y  # |m3| = |m1| + |m2| or ||m1| - |m2||, in some order
        assert sum(m < 0 for m in (a, b, d)) % 2 == 0  # sines pair up
    assert c[(0, 0, 0)] == 1.0 and c[(0, 3, 3)] == 1.0 and (0, 3, -3) not in c
    assert c[(1, 2, 3)] == math.sqrt(0.5) and c[(-1, -2, 3)] == -math.sqrt(0.5)


def test_node_tables_and_coupling_equal_the_grid_form():
    """sum_j sum C G1 G2 G3 over the node tables is the grid's trilinear form, in float64."""
    sep = GauntProblem("0e+1o+2e+3o", "0e+1o+2e", lmax_out=4, implementation="separable")
    grid = sep.replace(implementation="grid")
    rng = np.random.default_rng(0)
    x = {r: rng.standard_normal(sum(2 * l + 1 for l in sep.degrees(r))) for r in ("x1", "x2", "out")}
    want = 1.0
    for r in x:
        t = role_table(grid, r)
        want = want * (x[r] @ t[: len(x[r])])
    want = want.sum()
    tabs, c = node_tables(sep), azimuth_coupling(4)
    ms = {r: [m for l in sep.degrees(r) for m in range(-l, l + 1)] for r in x}
    got = 0.0
    for j in range(sep.grid_size[0]):
        g = {}
        for r in x:
            g[r] = {}
            for col, m in enumerate(ms[r]):
                g[r][m] = g[r].get(m, 0.0) + tabs[r][j, col] * x[r][col]
        got += sum(v * g["x1"][a] * g["x2"][b] * g["out"][d] for (a, b, d), v in c.items()
                   if a in g["x1"] and b in g["x2"] and d in g["out"])
    assert abs(got - want) < 1e-12 * abs(want)


def test_flops_a_fraction_of_the_grid_at_high_degree():
    assert bench_problem(8).flops() * 8.5 < bench_problem(8).flops("grid")
    assert bench_problem(6).flops() * 6.5 < bench_problem(6).flops("grid")
    # one operation per product term, one per table entry used, plus the chains' joining adds
    p = GauntProblem("0e", "0e", lmax_out=0, implementation="separable")  # one node: a * b * t
    assert p.flops() == 2 * (1 + 1 + 1 + 1)


def test_precision_is_recorded_as_ieee():
    a = GauntProblem("2x0e+2x1o", "0e+1o", implementation="separable", precision="tf32")
    assert a.precision == "ieee" and a == GauntProblem("2x0e+2x1o", "0e+1o", implementation="separable")
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        assert compile_gaunt("2x0e+2x1o", "0e+1o", implementation="separable").key == a.key
    finally:
        torch.set_float32_matmul_precision(old)


@pytest.mark.parametrize("L, passes, estimate", [(6, 1, 197), (7, 1, 246), (8, 3, 247)])
def test_default_passes_follow_the_ptxas_audit(L, passes, estimate):
    """sm_90, fp32 (REGISTER_BUDGET's comment): small spills up to an estimate of 247, 136 bytes
    at 261 (L = 8, two passes), so L = 8 takes three walks and L <= 7 one."""
    p = bench_problem(L)
    assert default_passes(p, FORWARD, "float32") == passes
    assert estimate_registers(p, FORWARD, "float32", passes) == estimate <= REGISTER_BUDGET
    if passes > 1:
        assert estimate_registers(p, FORWARD, "float32", passes - 1) > REGISTER_BUDGET
    assert launch_candidates(p)[0] == (128, 4, passes)


def test_target_groups_split_by_m_and_cover_every_coefficient():
    p = bench_problem(8, C=4)
    for n in (1, 2, 3, 4):
        groups = target_groups(p, "out", n)
        assert len(groups) == n and sorted(m for g in groups for m in g) == list(range(-8, 9))
        sizes = [sum(9 - abs(m) for m in g) for g in groups]
        assert max(sizes) - min(sizes) <= 17  # about equal accumulator counts


def test_passes_give_bit_identical_results():
    """Each accumulator adds the same terms in the same order whatever the walks: equal bits."""
    p = GauntProblem("4x0e+4x1o+4x2e+4x3o", "4x0e+4x1o+4x2e", lmax_out=3, implementation="separable")
    x = [torch.randn(3, p.irreps(r).dim) for r in ("x1", "x2")]
    outs = [gaunt_produce(p, FORWARD, x, 3, launch=(16, 1, n)) for n in (1, 2, 3, 4)]
    assert all(torch.equal(outs[0], o) for o in outs[1:])
    ref = gaunt_reference(p, x[0].double(), x[1].double())
    assert ((outs[0].double() - ref).abs().max() / ref.abs().max()).item() < 1e-6


def test_kernel_tables_are_node_tables_in_reading_order():
    """Columns by m then l (a synthesis reads consecutive entries), rows padded to quads."""
    p = GauntProblem("0e+2e+3o", "0e+1o", lmax_out=3, implementation="separable")
    nodes, kern = node_tables(p), kernel_tables(p)
    for role in ("x1", "x2", "out"):
        cols = table_columns(p, role)
        e3nn = {lm: i for i, lm in enumerate(lm_list(p.degrees(role)))}
        assert kern[role].shape == (p.grid_size[0], -(-len(cols) // 4) * 4)
        assert np.array_equal(kern[role][:, : len(cols)], nodes[role][:, [e3nn[lm] for lm in cols]])
        assert not kern[role][:, len(cols):].any()
        ms = [m for _, m in cols]
        assert ms == sorted(ms, key=lambda m: (abs(m), m)) and len(set(cols)) == len(cols)
    assert (1, 0) not in table_columns(p, "x1")  # an inactive degree has no column (x1 has no 1o)


def test_kernel_source_loops_over_nodes_without_dots():
    p = bench_problem(3, C=4)
    src = emit_separable_producer(p, FORWARD, "float32", passes=2)
    assert "tl.dot" not in src and src.count(f"for j in range({p.grid_size[0]}):") == 2
    offsets = [int(k) for k in re.findall(r"tl\.load\(q[abt] \+ (\d+) \+ K4\)", src)]
    assert offsets and all(k % 4 == 0 for k in offsets)  # quads: 16-byte table loads only
    assert not re.search(r"tl\.load\(q[abt] \+ \d+\)", src)
    assert "tl.full([], " in emit_separable_producer(p, FORWARD, "float64")  # fp64 constants keep every bit
    with pytest.raises(ValueError, match="passes"):
        emit_separable_producer(p, FORWARD, "float32", passes=5)
    with pytest.raises(ValueError, match="separable"):
        emit_separable_producer(p.replace(implementation="grid"), FORWARD)


def test_launch_checks_and_op_keys():
    assert check_launch((128, 4, 3), "separable") == (128, 4, 3)
    for bad in ((128, 4, 0), (128, 4, 5), (8, 4, 1), (128, 3, 1), "64"):
        with pytest.raises(ValueError, match="launch"):
            check_launch(bad, "separable")
    key = bench_problem(2, C=4).key
    assert parse_key(op_key(key, (64, 2, 2))) == (GauntProblem.from_key(key), (64, 2, 2))
    gp = compile_gaunt("4x0e+4x1o", "0e+1o", lmax_out=2, implementation="separable", launch=(16, 1, 2))
    assert gp.launches == {"float32": (16, 1, 2), "float64": (16, 1, 2)} and "launch=" in repr(gp)
    with pytest.raises(ValueError, match="passes"):
        compile_gaunt("4x0e+4x1o", "0e+1o", implementation="separable", launch=(16, 1, 9))


def test_degree_eight_forward_and_gradients_fp64():
    """The benchmark's top degree (13 nodes, |m| up to 8, three walks by default) with a
    broadcast x2, whose gradient is summed over the channels in the kernel."""
    ls = lambda c: "+".join(f"{c}x{l}{'eo'[l % 2]}" for l in range(9))  # noqa: E731
    p = GauntProblem(ls(2), ls(1), lmax_out=8, implementation="separable")
    assert default_passes(p, FORWARD, "float64") > 1
    x = [torch.randn(3, p.irreps(r).dim, dtype=F64) for r in ("x1", "x2", "out")]
    xr = [t.clone().requires_grad_() for t in x]
    y = gaunt_reference(p, xr[0], xr[1])
    want = [y, *torch.autograd.grad((y * xr[2]).sum(), xr[:2])]
    got = [gaunt_produce(p, FORWARD, x[:2], 3), gaunt_produce(p, "x1:x2,out", [x[1], x[2]], 3),
           gaunt_produce(p, "x2:x1,out", [x[0], x[2]], 3)]
    for a, b in zip(got, want):
        assert a.shape == b.shape and ((a - b).abs().max() / b.abs().max()).item() < 1e-12


def test_launch_edges_passes_beyond_m_values_and_empty_products():
    scalar_out = GauntProblem("4x0e+4x1o+4x2e", "0e+1o+2e", lmax_out=0, implementation="separable")
    assert launch_candidates(scalar_out) == [(b, w, 1) for b, w in LADDER]  # one m: one walk is all there is
    with pytest.raises(ValueError, match="no even path"):
        emit_separable_producer(GauntProblem("1o", "0e", lmax_out=0, implementation="separable"), FORWARD)
    empty = compile_gaunt("2x1o", "0e", lmax_out=0, implementation="separable", backend="triton")
    assert torch.equal(empty(torch.randn(3, 6), torch.randn(3, 1)), torch.zeros(3, 2))
    # a 16-row tile keeps one warp; a gradient wider than the tuned forward takes more walks
    p = GauntProblem(*(("+".join(f"4x{l}{'eo'[l % 2]}" for l in range(L + 1))) for L in (8, 7)), lmax_out=8,
                     implementation="separable")
    assert resolve_launch(p, FORWARD, "float32", 40, (16, 4, 2)) == (16, 1, 2)
    assert resolve_launch(p, "x2:x1,out", "float32", 40, (128, 4, 1)) == (128, 4, 2)


@pytest.mark.parametrize("lo", [2, 3], ids=["even-nodes", "odd-nodes"])
def test_mirror_node_pairs_equal_single_nodes(lo):
    """Nodes z and -z in one step (Q(-z) = (-1)^(l+m) Q(z)): the same product, to rounding."""
    p = GauntProblem("2x0e+2x1o+2x2e+2x3o", "2x0e+2x1o+2x2e", lmax_out=lo, implementation="separable")
    nb = p.grid_size[0]
    assert nb % 2 == (lo == 3)
    src = emit_separable_producer(p, FORWARD, "float64", pairs=True)
    assert f"for j in range({nb // 2}):" in src and ("# the middle node" in src) == bool(nb % 2)
    x = [torch.randn(3, p.irreps(r).dim, dtype=F64) for r in ("x1", "x2")]
    ref = gaunt_reference(p, *x)
    for pairs in (False, True):
        monkey = {"use_pairs": lambda *a, pairs=pairs: pairs}
        with pytest.MonkeyPatch.context() as m:
            for k, v in monkey.items():
                m.setattr(gaunt_separable, k, v)
            for spec, args in ((FORWARD, x), ("x1:x2,out", [x[1], ref])):
                got = gaunt_produce(p, spec, args, 3)
                want = ref if spec == FORWARD else torch.autograd.functional.vjp(
                    lambda a: gaunt_reference(p, a, x[1]), x[0], ref)[1]
                assert ((got - want).abs().max() / want.abs().max()).item() < 1e-13, (pairs, spec)


def test_pairs_where_registers_allow():
    """fp32, C = 32: pairs at L = 6 (estimate 223), not at L = 7 (276) nor L = 8 in three walks."""
    assert use_pairs(bench_problem(6), FORWARD, "float32", 1)
    assert estimate_registers(bench_problem(6), FORWARD, "float32", 1, pairs=True) == 223
    assert not use_pairs(bench_problem(7), FORWARD, "float32", 1)
    assert not use_pairs(bench_problem(8), FORWARD, "float32", 3)
    assert not use_pairs(bench_problem(2), FORWARD, "float64", 1)  # fp32 only


@pytest.mark.parametrize("passes", [1, 2, 3])
def test_mirror_pairs_with_passes_and_a_channel_fold(passes, monkeypatch):
    """Pairs (odd node count) under every split of the target, and the x2 gradient of a
    one-channel x2 summed over 16 channels in the kernel."""
    monkeypatch.setattr(gaunt_separable, "use_pairs", lambda *a: True)
    p = GauntProblem("16x0e+16x1o+16x2e", "0e+1o+2e", lmax_out=4, implementation="separable")
    assert p.grid_size[0] % 2 == 1
    x = [torch.randn(2, p.irreps(r).dim, dtype=F64) for r in ("x1", "x2", "out")]
    xr = [t.clone().requires_grad_() for t in x]
    y = gaunt_reference(p, xr[0], xr[1])
    want = [y, *torch.autograd.grad((y * xr[2]).sum(), xr[:2])]
    got = [gaunt_produce(p, spec, args, 2, launch=(16, 1, passes))
           for spec, args in ((FORWARD, x[:2]), ("x1:x2,out", [x[1], x[2]]), ("x2:x1,out", [x[0], x[2]]))]
    for a, b in zip(got, want):
        assert ((a - b).abs().max() / b.abs().max()).item() < 1e-12
