"""Test setup: run every Triton kernel through the interpreter on CPU, and keep tritp's
caches in a fresh folder so tests never read what an earlier run left behind."""

import atexit
import os
import shutil
import tempfile

# Must happen before triton is imported anywhere; forced, so a TRITON_INTERPRET=0 left in the
# shell cannot turn every kernel test into a driver error.
os.environ["TRITON_INTERPRET"] = "1"
_CACHE = tempfile.mkdtemp(prefix="tritp-test-cache-")
os.environ["TRITP_CACHE_DIR"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
# Parallel compiles in threads on any machine (worker processes would start on a many-core one);
# tests of the worker pool ask for it explicitly.
os.environ["TRITP_COMPILE_PROCESSES"] = "0"

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    """A fixed seed, and no memoized launch recipes from an earlier test (a test may patch
    ``choose`` or ``get_kernel``, which a memoized recipe would bypass)."""
    from tritp.kernels import forget_recipes

    torch.manual_seed(0)
    forget_recipes()
    yield


@pytest.fixture
def fresh_autotune_caches(tmp_path, monkeypatch):
    """A fresh user autotune folder and an empty shipped folder (yielded) for one test; the
    kernel and coupling caches stay shared, so nothing is recomputed. Modules that tune use it
    on every test (``pytestmark = pytest.mark.usefixtures("fresh_autotune_caches")``)."""
    from tritp.tuning import cache, clear_memo

    monkeypatch.setattr(cache, "user_dir", lambda: tmp_path / "cache" / "autotune")
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    monkeypatch.setattr(cache, "shipped_dir", lambda: shipped)
    cache._warned.clear()
    clear_memo()
    yield shipped
    clear_memo()
