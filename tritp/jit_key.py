"""Triton's source key of a generated kernel, computed without parsing the kernel.

Before Triton looks a kernel up in its on-disk cache it computes ``JITFunction.cache_key``:
it parses the kernel's source (``ast.parse``) and walks the tree for the global names and
``@jit`` functions it calls, hashing the source together with theirs. For our generated
kernels -- thousands of unrolled lines -- that walk is most of a warm start: a whole
mace-large layer (23 kernels) spent 2.4 of its 6 profiled seconds there on this CPU.

A generated file is self-contained: one ``@triton.jit`` function that names no global but the
``triton``/``tl`` modules (which the walk skips) and calls no other ``@jit`` function. For such
a kernel Triton's key reduces to::

    sha256(sha256(src).hexdigest() + str(starting_line_number) + "[]")

(Triton 3.6 and 3.9; the ``[]`` is its empty list of ``constexpr`` globals), which
:func:`seed_cache_key` sets before Triton asks -- the same key Triton would compute, so the
kernels compiled before and those compiled by Inductor share one cache entry. The first
kernel a process loads is keyed by Triton itself and compared with the formula; if a future
Triton keys differently, seeding stays off for the process (``TRITP_SEED_KEYS=0`` turns it off
outright). A file that does not look self-contained is left to Triton.

Example:
    >>> import types
    >>> seed_cache_key(types.ModuleType("empty"))  # no kernel in it: nothing to do
    False
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from types import ModuleType

_lock = threading.Lock()
_verdict: bool | None = None  # does the formula match Triton's own key in this process?


def enabled() -> bool:
    """Whether generated kernels get their Triton key from :func:`formula_key`
    (``TRITP_SEED_KEYS``, default on)."""
    return os.environ.get("TRITP_SEED_KEYS", "1") not in ("", "0")


def formula_key(src: str, starting_line_number: int) -> str:
    """Triton's ``cache_key`` of a self-contained ``@jit`` function with source ``src``.

    Example:
        >>> len(formula_key("def k(x):\\n    pass\\n", 5))
        64
    """
    inner = hashlib.sha256(src.encode("utf-8")).hexdigest()
    return hashlib.sha256((inner + str(starting_line_number) + "[]").encode("utf-8")).hexdigest()


def sole_kernel(mod: ModuleType):
    """The one compiled-mode ``JITFunction`` a generated module defines, if it is
    self-contained (see the module docstring); else None (interpreter mode included)."""
    from triton.runtime.jit import JITFunction

    kernels, others = [], []
    for name, val in vars(mod).items():
        if name.startswith("__") or isinstance(val, ModuleType):
            continue
        (kernels if isinstance(val, JITFunction) else others).append((name, val))
    if len(kernels) != 1:
        return None
    kern = kernels[0][1]
    if kern.fn.__closure__ is not None or kern.fn.__module__ != mod.__name__:
        return None
    src = kern.src
    # a module constant the kernel names would be one of Triton's checked globals
    if any(re.search(rf"\b{re.escape(name)}\b", src) for name, _ in others):
        return None
    return kern


def seed_cache_key(mod: ModuleType) -> bool:
    """Give the kernel of generated module ``mod`` its Triton key without Triton's AST walk;
    returns whether it did. The first kernel of a process is keyed by Triton and checked
    against :func:`formula_key` instead (the verdict holds for the process)."""
    global _verdict
    if not enabled():
        return False
    kern = sole_kernel(mod)
    if kern is None or kern.hash is not None or kern.used_global_vals:
        return False
    key = formula_key(kern.src, kern.starting_line_number)
    with _lock:
        if _verdict is None:
            _verdict = kern.cache_key == key and not kern.used_global_vals
            return False
    if not _verdict:
        return False
    kern.hash = key
    return True


def reset() -> None:
    """Forget the process's verdict (tests)."""
    global _verdict
    with _lock:
        _verdict = None
