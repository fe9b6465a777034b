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

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
