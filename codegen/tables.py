"""The float64 coupling table of all triples up to a degree, computed once per machine.

Computing the exact coefficients of every triple with l <= 6 takes one to three seconds; a
second process should pay nothing, so the table is saved as one ``.npz`` in the user cache,
named by the degree and a hash of the deriving code (``coupling.py``), so that a change of
derivation can never serve stale numbers. A corrupt file is recomputed and replaced.

The l <= 6 table (every degree of the common models) also ships with the package
(:data:`SHIPPED`, holding that hash), so even a new machine's first call derives nothing; it is
used only while its hash equals the code's (a test fails when ``coupling.py`` changes until
``python -c "from tritp.codegen.tables import write_shipped; write_shipped()"`` rewrites it), else the table is computed as above.
"""

from __future__ import annotations

import io
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np

from .diskcache import atomic_write, cache_dir, content_hash

TABLE_FORMAT = 1
#: The table shipped in the package: every triple with degrees <= 6, and the deriving code's hash.
SHIPPED = Path(__file__).parent / "coupling_L6.npz"


def _source_key() -> str:
    src = (Path(__file__).parent / "coupling.py").read_bytes()
    return content_hash(b"coupling-table", TABLE_FORMAT, src)


def table_path(lmax: int) -> Path:
    return cache_dir("coupling") / f"w3j-L{lmax}-{_source_key()}.npz"


class CouplingTable:
    """Read-only mapping ``(l1, l2, l3) -> ((m1, m2, m3, c), ...)`` for all triples <= lmax."""

    def __init__(self, lmax: int, triples, offsets, ms, values):
        self.lmax = lmax
        self._index = {tuple(int(x) for x in t): i for i, t in enumerate(triples)}
        self._offsets, self._ms, self._values = offsets, ms, values
        self._rows: dict = {}

    def __getitem__(self, key):
        rows = self._rows.get(key)
        if rows is None:
            i = self._index[key]
            a, b = int(self._offsets[i]), int(self._offsets[i + 1])
            ms = self._ms[a:b].tolist()
            vs = self._values[a:b].tolist()
            rows = tuple((m[0], m[1], m[2], v) for m, v in zip(ms, vs))
            self._rows[key] = rows
        return rows

    def __contains__(self, key) -> bool:
        return key in self._index

    def triples(self):
        return list(self._index)

    def nnz(self) -> int:
        return int(self._offsets[-1])


def _compute(lmax: int):
    from .coupling import exact_real_coupling, to_float

    triples, offsets, ms, values = [], [0], [], []
    for l1 in range(lmax + 1):
        for l2 in range(lmax + 1):
            for l3 in range(abs(l1 - l2), min(l1 + l2, lmax) + 1):
                rows = exact_real_coupling(l1, l2, l3)
                triples.append((l1, l2, l3))
                for j, k, n, s, f in rows:
                    ms.append((j, k, n))
                    values.append(to_float(s, f))
                offsets.append(len(values))
    return (
        np.asarray(triples, dtype=np.int16).reshape(-1, 3),
        np.asarray(offsets, dtype=np.int64),
        np.asarray(ms, dtype=np.int16).reshape(-1, 3),
        np.asarray(values, dtype=np.float64),
    )


def _npz(arrays, compressed: bool = False, **extra) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, triples=arrays[0], offsets=arrays[1], ms=arrays[2],
                                                       values=arrays[3], **extra)
    return buf.getvalue()


def shipped_arrays(lmax: int):
    """The shipped table's arrays if it is of degree ``lmax`` and of this code, else None."""
    if lmax != 6 or not SHIPPED.exists():
        return None
    try:
        with np.load(SHIPPED) as z:
            if str(z["source_key"]) != _source_key():
                return None  # derived by other code: never serve it
            return z["triples"], z["offsets"], z["ms"], z["values"]
    except Exception:  # an unreadable package file: derive instead
        return None


def write_shipped() -> Path:
    """Derive the l <= 6 table and write it into the package (after a change of ``coupling.py``)."""
    return atomic_write(SHIPPED, _npz(_compute(6), compressed=True, source_key=np.asarray(_source_key())))


@lru_cache(maxsize=None)
def _load(lmax: int) -> CouplingTable:
    _loaded_sizes.add(lmax)
    try:
        path = table_path(lmax)
    except OSError as e:  # an unusable cache folder must not stop the computation
        warnings.warn(f"tritp: could not save coupling table: cache folder unusable ({e})")
        return CouplingTable(lmax, *_compute(lmax))
    if path.exists():
        try:
            with np.load(path) as z:
                arrays = (z["triples"], z["offsets"], z["ms"], z["values"])
            return CouplingTable(lmax, *arrays)
        except Exception as e:  # corrupt or truncated: report, recompute, replace
            warnings.warn(f"tritp: ignoring unreadable coupling table {path} ({e}); recomputing")
    arrays = shipped_arrays(lmax) or _compute(lmax)
    try:
        atomic_write(path, _npz(arrays))
    except OSError as e:  # a read-only cache must not stop the computation
        warnings.warn(f"tritp: could not save coupling table to {path} ({e})")
    return CouplingTable(lmax, *arrays)


_BUCKETS = (6, 8, 12)  # a few table sizes, so mixed degrees never recompute the lower triples


def coupling_table(lmax: int) -> CouplingTable:
    """A table covering all triples with every degree <= lmax (one of a few fixed sizes; a
    larger table already loaded in this process is reused)."""
    fits = [b for b in _BUCKETS if b >= int(lmax)]
    for b in fits:
        if b in _loaded_sizes:
            return _load(b)
    return _load(fits[0])


_loaded_sizes: set = set()
