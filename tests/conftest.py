"""Test setup: run every Triton kernel through the interpreter on CPU, and keep tritp's
caches in a fresh folder so tests never read what an earlier run left behind."""

import os
import tempfile

# Must happen before triton is imported anywhere.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ["TRITP_CACHE_DIR"] = tempfile.mkdtemp(prefix="tritp-test-cache-")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
