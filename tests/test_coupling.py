"""Coupling coefficients: exact (sympy) and float64 (on-disk table) against e3nn and sympy.

e3nn's ``wigner_3j`` is the oracle for the real-basis tensor, sign included; sympy's
Condon-Shortley Clebsch-Gordan coefficients are the oracle for the exact SU(2) layer and,
rotated with e3nn's change of basis written out in sympy, for the exact real tensor.
"""

import math
import os
import subprocess
import sys
import textwrap
import warnings
from fractions import Fraction

import numpy as np
import pytest
import sympy
import torch
from e3nn import o3
from sympy.physics.wigner import clebsch_gordan
from sympy.physics.wigner import wigner_3j as sympy_wigner_3j

from tritp.codegen import dense_coupling, gaunt_factor, sparse_coupling, sympy_coupling
from tritp.codegen import diskcache, tables
from tritp.codegen.coupling import (
    LMAX_SUPPORTED,
    exact_real_coupling,
    gaunt_factor_squared,
    gaunt_factor_sympy,
    su2_cg_squared,
)


def triples(lmax):
    for l1 in range(lmax + 1):
        for l2 in range(lmax + 1):
            for l3 in range(abs(l1 - l2), min(l1 + l2, lmax) + 1):
                yield l1, l2, l3


# -- float64 table against e3nn ----------------------------------------------------------------
def test_dense_equals_e3nn_wigner_3j_up_to_l8():
    worst, n = 0.0, 0
    for l1, l2, l3 in triples(8):
        ours = dense_coupling(l1, l2, l3)
        ref = o3.wigner_3j(l1, l2, l3, dtype=torch.float64).numpy()
        assert ours.shape == ref.shape == (2 * l1 + 1, 2 * l2 + 1, 2 * l3 + 1)
        assert ours.dtype == np.float64
        diff = float(np.abs(ours - ref).max())
        assert diff <= 1e-12, (l1, l2, l3, diff)
        # same sparsity pattern: no stored zeros, nothing e3nn has that we miss
        assert set(zip(*np.nonzero(np.abs(ref) > 1e-12))) == set(zip(*np.nonzero(ours)))
        worst, n = max(worst, diff), n + 1
    assert n == 369


def test_sparse_entries_are_ordered_nonzero_and_normalized():
    for l1, l2, l3 in triples(6):
        rows = sparse_coupling(l1, l2, l3)
        idx = [r[:3] for r in rows]
        assert idx == sorted(idx) and len(set(idx)) == len(idx)
        for m1, m2, m3, c in rows:
            assert 0 <= m1 <= 2 * l1 and 0 <= m2 <= 2 * l2 and 0 <= m3 <= 2 * l3
            assert isinstance(c, float) and c != 0.0
        assert abs(sum(c * c for *_, c in rows) - 1.0) < 1e-14


@pytest.mark.parametrize("L,expected", [(1, 16), (2, 137), (3, 611), (4, 2052), (5, 5265), (6, 11896)])
def test_nonzero_counts(L, expected):
    assert sum(len(sparse_coupling(*t)) for t in triples(L)) == expected


def test_docstring_example():
    assert len(sparse_coupling(1, 1, 2)) == 11
    assert [(m1, m2, m3, round(c, 6)) for m1, m2, m3, c in sparse_coupling(1, 1, 0)] == [
        (0, 0, 0, 0.57735), (1, 1, 0, 0.57735), (2, 2, 0, 0.57735)]


# -- exactness ---------------------------------------------------------------------------------
@pytest.mark.parametrize("t", [(0, 0, 0), (1, 1, 0), (1, 1, 1), (1, 1, 2), (2, 1, 3), (2, 2, 2), (3, 3, 4)])
def test_sympy_coupling_has_unit_norm_exactly(t):
    c = sympy_coupling(*t)
    total = sum((v * v for v in c.values()), sympy.Integer(0))
    assert total == 1  # exact Rational arithmetic, no tolerance
    # the floats are the exact values rounded once
    table = {r[:3]: r[3] for r in sparse_coupling(*t)}
    assert set(table) == set(c)
    for k, v in c.items():
        assert math.isclose(table[k], float(v), rel_tol=1e-15, abs_tol=0)


def _e3nn_change_of_basis(l):
    """e3nn's change_basis_real_to_complex(l), written out in exact sympy."""
    q = sympy.zeros(2 * l + 1, 2 * l + 1)
    for m in range(-l, 0):
        q[l + m, l + abs(m)] = 1 / sympy.sqrt(2)
        q[l + m, l - abs(m)] = -sympy.I / sympy.sqrt(2)
    q[l, l] = 1
    for m in range(1, l + 1):
        q[l + m, l + abs(m)] = (-1) ** m / sympy.sqrt(2)
        q[l + m, l - abs(m)] = sympy.I * (-1) ** m / sympy.sqrt(2)
    return (-sympy.I) ** l * q


@pytest.mark.parametrize("t", list(triples(2)) + [(3, 1, 2), (3, 3, 2)])
def test_real_coupling_equals_sympy_cg_rotated_to_e3nn_basis(t):
    """C[j,k,n] = sum Q1[a,j] Q2[b,k] conj(Q3[c,n]) CG[a,b,c] / |C|, with sympy's CG and e3nn's
    real basis (documented in coupling.py), computed independently in exact arithmetic."""
    l1, l2, l3 = t
    q1, q2, q3 = (_e3nn_change_of_basis(l) for l in t)
    cg = {}
    for a in range(2 * l1 + 1):
        for b in range(2 * l2 + 1):
            c = (a - l1) + (b - l2) + l3
            if 0 <= c <= 2 * l3:
                v = clebsch_gordan(l1, l2, l3, a - l1, b - l2, c - l3)
                if v != 0:
                    cg[(a, b, c)] = v
    ref = {}
    for j in range(2 * l1 + 1):
        for k in range(2 * l2 + 1):
            for n in range(2 * l3 + 1):
                s = sympy.expand(sum(q1[a, j] * q2[b, k] * sympy.conjugate(q3[c, n]) * v
                                     for (a, b, c), v in cg.items()))
                if s != 0:
                    ref[(j, k, n)] = s
    norm2 = sympy.expand(sum(v * sympy.conjugate(v) for v in ref.values()))
    assert norm2.is_Rational and norm2 == 2 * l3 + 1
    ours = sympy_coupling(*t)
    assert set(ours) == set(ref)
    for key, v in ref.items():
        assert sympy.expand(v / sympy.sqrt(norm2) - ours[key]) == 0, (t, key)


def test_su2_cg_equals_sympy_exactly_up_to_3():
    n = 0
    for j1 in range(4):
        for j2 in range(4):
            for j3 in range(0, 7):
                for m1 in range(-j1, j1 + 1):
                    for m2 in range(-j2, j2 + 1):
                        for m3 in (m1 + m2, m1 + m2 + 1):
                            if abs(m3) > j3:
                                continue
                            sign, sq = su2_cg_squared(j1, m1, j2, m2, j3, m3)
                            ref = clebsch_gordan(j1, j2, j3, m1, m2, m3)
                            assert isinstance(sq, Fraction) and sign in (-1, 0, 1)
                            assert sympy.Rational(sq.numerator, sq.denominator) == ref**2
                            assert sign == sympy.sign(ref)
                            n += 1
    assert n > 1000


def test_su2_cg_matches_e3nn_racah_float():
    from e3nn.o3._wigner import _su2_clebsch_gordan

    for j1, j2, j3 in triples(5):
        ref = _su2_clebsch_gordan(j1, j2, j3).numpy()
        for a in range(2 * j1 + 1):
            for b in range(2 * j2 + 1):
                for c in range(2 * j3 + 1):
                    s, sq = su2_cg_squared(j1, a - j1, j2, b - j2, j3, c - j3)
                    assert abs(s * math.sqrt(sq) - ref[a, b, c]) < 1e-13


def test_exact_real_coupling_matches_floats():
    for t in triples(4):
        rows = exact_real_coupling(*t)
        assert [(j, k, n) for j, k, n, _, _ in rows] == [r[:3] for r in sparse_coupling(*t)]
        total = sum(f for *_, f in rows)
        assert total == 1  # sum of squares, exact Fraction
        assert all(s in (-1, 1) and f > 0 for *_, s, f in rows)


# -- Gaunt factors -----------------------------------------------------------------------------
@pytest.mark.parametrize("t,value", [((1, 1, 2), 0.690988), ((2, 2, 2), 0.753930), ((2, 2, 4), 1.011503)])
def test_gaunt_values(t, value):
    assert round(gaunt_factor(*t), 6) == value


def test_gaunt_against_sympy_3j():
    for l1, l2, l3 in triples(6):
        g = gaunt_factor(l1, l2, l3)
        if (l1 + l2 + l3) % 2:
            assert g == 0.0
            assert gaunt_factor_squared(l1, l2, l3) == 0
            continue
        w = sympy_wigner_3j(l1, l2, l3, 0, 0, 0)
        ref = sympy.sqrt(sympy.Rational((2 * l1 + 1) * (2 * l2 + 1) * (2 * l3 + 1), 4) / sympy.pi) * abs(w)
        assert abs(g - float(ref)) < 1e-14, (l1, l2, l3)
        assert g > 0
        if max(l1, l2, l3) <= 3:
            assert sympy.simplify(gaunt_factor_sympy(l1, l2, l3) - ref) == 0


@pytest.mark.parametrize("t", [(1, 1, 1), (2, 1, 2), (3, 2, 2), (1, 2, 2), (3, 3, 3)])
def test_gaunt_odd_sum_is_zero(t):
    assert gaunt_factor(*t) == 0.0
    assert gaunt_factor_sympy(*t) == 0


# -- invalid degrees ---------------------------------------------------------------------------
INVALID = [
    ((1, 1, 3), "triangle"),
    ((0, 1, 2), "triangle"),
    ((3, 0, 2), "triangle"),
    ((-1, 1, 1), "l1"),
    ((1, -1, 1), "l2"),
    ((1, 1, -1), "l3"),
    ((LMAX_SUPPORTED + 1, LMAX_SUPPORTED + 1, 0), "l1"),
    ((1, LMAX_SUPPORTED + 1, LMAX_SUPPORTED), "l2"),
    ((LMAX_SUPPORTED, 1, LMAX_SUPPORTED + 1), "l3"),
]


@pytest.mark.parametrize("t,word", INVALID)
def test_invalid_degrees_raise(t, word):
    for fn in (sparse_coupling, dense_coupling, sympy_coupling, gaunt_factor, exact_real_coupling):
        with pytest.raises(ValueError, match=word):
            fn(*t)


@pytest.mark.parametrize("bad", [1.0, "1", None])
def test_non_int_degree_raises(bad):
    with pytest.raises(ValueError, match="l2"):
        sparse_coupling(1, bad, 1)


# -- the on-disk table -------------------------------------------------------------------------
@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty TRITP_CACHE_DIR and an empty in-memory table cache; restored afterwards."""
    monkeypatch.setenv("TRITP_CACHE_DIR", str(tmp_path))
    tables._load.cache_clear()
    tables._loaded_sizes.clear()
    yield tmp_path
    tables._load.cache_clear()
    tables._loaded_sizes.clear()


def _npz_files(root):
    return sorted((root / "coupling").glob("*.npz"))


def test_table_written_then_loaded_by_another_process(fresh_cache):
    expected = sparse_coupling(2, 1, 3)
    files = _npz_files(fresh_cache)
    assert len(files) == 1 and files[0] == tables.table_path(6)
    assert files[0].name.startswith("w3j-L6-")
    mtime = files[0].stat().st_mtime_ns
    assert not list((fresh_cache / "coupling").glob(".*.tmp"))

    script = textwrap.dedent("""
        import time
        t = time.perf_counter()
        import tritp.codegen.tables as tables

        def _compute(lmax):
            raise AssertionError("recomputed instead of loading the cached table")

        tables._compute = _compute
        from tritp.codegen import sparse_coupling
        rows = sparse_coupling(2, 1, 3)
        print(repr(rows))
        print(f"load time {time.perf_counter() - t:.3f}s")
    """)
    env = dict(os.environ, TRITP_CACHE_DIR=str(fresh_cache))
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert eval(r.stdout.splitlines()[0]) == expected
    assert files[0].stat().st_mtime_ns == mtime
    assert _npz_files(fresh_cache) == files


def test_corrupt_table_is_reported_and_recomputed(fresh_cache):
    good = sparse_coupling(3, 2, 1)
    path = tables.table_path(6)
    path.write_bytes(b"this is not an npz file \x00\xff" * 10)
    tables._load.cache_clear()
    with pytest.warns(UserWarning, match="unreadable coupling table"):
        again = sparse_coupling(3, 2, 1)
    assert again == good
    # replaced by a readable file
    with np.load(path) as z:
        assert set(z.files) == {"triples", "offsets", "ms", "values"}
    tables._load.cache_clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sparse_coupling(3, 2, 1) == good


def test_truncated_table_is_recomputed(fresh_cache):
    good = sparse_coupling(1, 1, 2)
    path = tables.table_path(6)
    path.write_bytes(path.read_bytes()[:200])
    tables._load.cache_clear()
    with pytest.warns(UserWarning):
        assert sparse_coupling(1, 1, 2) == good


def test_unusable_cache_dir_does_not_stop_computation(tmp_path, monkeypatch):
    # tables.py: "a read-only cache must not stop the computation". Here the cache root lies
    # below a regular file, so it can be neither created nor written (the same happens with a
    # read-only $HOME). Regression test (a bug this found was fixed in this session): table_path() -> cache_dir() calls mkdir outside
    # the try/except in tables._load, so NotADirectoryError escapes from sparse_coupling.
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    monkeypatch.setenv("TRITP_CACHE_DIR", str(blocker / "cache"))
    tables._load.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rows = sparse_coupling(1, 1, 0)
        assert [r[:3] for r in rows] == [(0, 0, 0), (1, 1, 0), (2, 2, 0)]
        assert any("could not save" in str(w.message) for w in caught), [str(w.message) for w in caught]
    finally:
        tables._load.cache_clear()


def test_table_name_depends_on_deriving_code(monkeypatch, fresh_cache):
    a = tables.table_path(6)
    assert tables.table_path(7) != a
    monkeypatch.setattr(tables, "TABLE_FORMAT", tables.TABLE_FORMAT + 1)
    assert tables.table_path(6) != a


# -- diskcache ---------------------------------------------------------------------------------
def test_cache_root_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("TRITP_CACHE_DIR", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert diskcache.cache_root() == tmp_path / "a"
    monkeypatch.delenv("TRITP_CACHE_DIR")
    assert diskcache.cache_root() == tmp_path / "x" / "tritp"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert diskcache.cache_root() == tmp_path / "home" / ".cache" / "tritp"
    monkeypatch.setenv("TRITP_CACHE_DIR", str(tmp_path / "a"))
    d = diskcache.cache_dir("kind")
    assert d == tmp_path / "a" / "kind" and d.is_dir()


def test_content_hash_and_atomic_write(tmp_path):
    h = diskcache.content_hash("a", b"b", 1)
    assert h == diskcache.content_hash("a", b"b", 1)
    assert len(h) == 20 and int(h, 16) >= 0
    assert h != diskcache.content_hash("a", b"b", 2)
    assert diskcache.content_hash("ab") != diskcache.content_hash("a", "b")
    p = diskcache.atomic_write(tmp_path / "sub" / "f.bin", b"one")
    assert p.read_bytes() == b"one"
    diskcache.atomic_write(p, b"two")
    assert p.read_bytes() == b"two"
    assert sorted(x.name for x in p.parent.iterdir()) == ["f.bin"]


@pytest.mark.parametrize("module", ["tritp.codegen.coupling", "tritp.codegen.diskcache", "tritp.codegen.cg_spec",
                                    "tritp.codegen.cg_emit", "tritp.codegen.cg_pieces", "tritp.codegen.cg_fused",
                                    "tritp.codegen.conv_fused", "tritp.codegen.segment_sum", "tritp.tuning.registers",
                                    "tritp.tuning", "tritp.op_pair", "tritp.kernel_forms",
                                    "tritp.codegen.fused_specs"])
def test_doctests(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), report=True)
    assert result.attempted > 0 and result.failed == 0


def test_shipped_table_is_of_this_code_and_equals_a_fresh_derivation():
    with np.load(tables.SHIPPED) as z:
        assert str(z["source_key"]) == tables._source_key(), \
            "coupling.py changed: rewrite the shipped table (tritp.codegen.tables.write_shipped())"
        for name, fresh in zip(("triples", "offsets", "ms", "values"), tables._compute(6)):
            np.testing.assert_array_equal(z[name], fresh)


def test_a_new_machine_derives_nothing(fresh_cache, monkeypatch):
    def _compute(lmax):
        raise AssertionError("derived instead of taking the shipped table")
    monkeypatch.setattr(tables, "_compute", _compute)
    assert [r[:3] for r in sparse_coupling(1, 1, 0)] == [(0, 0, 0), (1, 1, 0), (2, 2, 0)]
    assert _npz_files(fresh_cache) == [tables.table_path(6)]  # and saved to the user cache as before


def test_a_shipped_table_of_other_code_is_never_used(fresh_cache, tmp_path, monkeypatch):
    with np.load(tables.SHIPPED) as z:
        arrays = (z["triples"], z["offsets"], z["ms"], 2 * z["values"])
    other = tmp_path / "other.npz"
    other.write_bytes(tables._npz(arrays, source_key=np.asarray("derived-by-other-code")))
    monkeypatch.setattr(tables, "SHIPPED", other)
    assert tables.shipped_arrays(6) is None
    rows = sparse_coupling(1, 1, 0)
    assert abs(sum(v * v for *_, v in rows) - 1) < 1e-12  # derived: unit norm, not the doubled values
