"""The ``TRITP_*`` switches that select how the sparse-CG and convolution kernels are generated.

Each alternative form is kept so that it can be timed against the default on a GPU
(``benchmarks/kernel_forms.py``, ``benchmarks/conv_bench.py``); the form enters a generated
source's file name, a loaded kernel's key and the autotune cache's source identity, so kernels
of two forms never mix. :func:`form_env` selects forms for a block of code.

Example:
    >>> tile_form(), share_loads()
    ('rows', True)
"""

from __future__ import annotations

import os
from contextlib import contextmanager


def getenv(name: str, default: str | None = None) -> str | None:
    """``os.environ.get(name, default)`` without its encode and decode: about 0.1 microseconds
    instead of 0.75, for the switches read on every kernel launch. ``os.environ`` keeps its
    variables in ``_data`` (bytes keys on POSIX, the same dict across ``setenv``/``putenv``);
    elsewhere, or if that ever changes, the plain lookup.

    Example:
        >>> getenv("TRITP_SURELY_UNSET_VARIABLE", "1")
        '1'
    """
    data = getattr(os.environ, "_data", None)
    if os.name != "posix" or not isinstance(data, dict):
        return os.environ.get(name, default)
    key = _KEYS.get(name)
    if key is None:
        key = _KEYS[name] = os.fsencode(name)
    value = data.get(key)
    return default if value is None else os.fsdecode(value)


_KEYS: dict = {}


def share_loads() -> bool:
    """Whether generated kernels load an operand tile once for all target segments that read
    it (the default) or once per segment (``TRITP_SHARE_LOADS=0``: the form before, kept so the
    two can be timed against each other on a GPU; see ``CGEmitter.segment_groups``)."""
    return getenv("TRITP_SHARE_LOADS", "1") != "0"


def tile_form() -> str:
    """How generated kernels read and write ``mul_ir`` segments (:mod:`tritp.codegen.cg_tiles`):
    ``"rows"`` (the default) one coalesced 3D tile per segment, loaded in the row-on-warp form
    where a kernel's rows are its own; ``"3d"`` (``TRITP_COALESCE=3d``) the 3D tiles without
    that form; ``"strided"`` (``TRITP_COALESCE=0``) one strided tile per component, 2-3x slower
    per segment on an H200. The other two are kept to time the forms against each other."""
    value = getenv("TRITP_COALESCE", "1")
    if value == "0":
        return "strided"
    return "3d" if value == "3d" else "rows"


def conv_rows() -> bool:
    """Whether the fused convolution's ``mul_ir`` tiles take the row-on-warp form too
    (``TRITP_CONV_ROWS=1``; see :class:`tritp.codegen.conv_emit.ConvEmitter`), gathering
    each tensor's rows per tile position. Off by default until a GPU has timed it: offline it
    halves the atomic kernels' CTA barriers but costs registers."""
    return tile_form() == "rows" and getenv("TRITP_CONV_ROWS", "0") == "1"


def conv_tile_form() -> str:
    """The tile form of the fused convolution's kernels: :func:`tile_form`, except that its
    default keeps the plain 3D tiles unless :func:`conv_rows`."""
    form = tile_form()
    return "3d" if form == "rows" and not conv_rows() else form


def conv_block_sums() -> bool:
    """Whether an atomic convolution kernel's block of edges that share one target node (the
    destination, or x1's gradient's source) sums its rows before adding them
    (``TRITP_CONV_BLOCK_SUMS=1``; :meth:`tritp.codegen.conv_emit.ConvEmitter.emit_block_sum`) or
    adds every edge's row (the default). Block sums were the default until an H200 timed the
    atomic forward (mace-large, 158,000 edges sorted by destination) at 16.7 ms with them,
    against 10.3 ms row by row in the run before (README, "Performance")."""
    return getenv("TRITP_CONV_BLOCK_SUMS", "0") == "1"


def conv_x1_rows() -> bool:
    """Whether the deterministic convolution's fused backward computes x1's gradient too,
    stored per edge and summed per source node afterwards (the default;
    :mod:`tritp.codegen.conv_fused`, mode ``"edge+rows"``), or leaves it to its own segment
    kernel, which gathers the cotangent again (``TRITP_CONV_X1_ROWS=0``: the form before)."""
    return getenv("TRITP_CONV_X1_ROWS", "1") != "0"


def fused_backward_on() -> bool:
    """Whether the backward of a channelwise product runs as one fused kernel for the
    gradients of x1, the weights and x2 (the default; :mod:`tritp.codegen.cg_fused`) or as one
    kernel per gradient (``TRITP_FUSED_BWD=0``: the form before, kept to time the two)."""
    return getenv("TRITP_FUSED_BWD", "1") != "0"


def fused_second_on() -> bool:
    """Whether a double backward fuses too (the default): the backward of a fused backward (all
    its gradients differentiated again, as training with forces does) computes the gradients of
    x1, the weights and x2 in one kernel (:func:`tritp.codegen.fused_specs.fused_second`), and
    the backward of x1's or x2's gradient kernel is a fused backward
    (:func:`tritp.codegen.fused_specs.fused_plan`); ``TRITP_FUSED_DBL=0``: one kernel per
    gradient, each reading the output cotangent (the form before, kept to time the two)."""
    return fused_backward_on() and getenv("TRITP_FUSED_DBL", "1") != "0"


def prune_grads_on() -> bool:
    """Whether a backward computes only the gradients the running autograd pass uses (the
    default; :func:`tritp.op_pair.engine_needs`) or every gradient of an input that requires
    grad (``TRITP_PRUNE_GRADS=0``: the behaviour before, kept to time the two)."""
    return getenv("TRITP_PRUNE_GRADS", "1") != "0"


def fast_eager_on() -> bool:
    """Whether eager calls skip the ``torch.library`` op dispatch (the default;
    :mod:`tritp.eager_ops`) or go through the registered ops as traced code does
    (``TRITP_FAST_EAGER=0``: the path before, kept to time the two)."""
    return getenv("TRITP_FAST_EAGER", "1") != "0"


def kernel_form() -> tuple:
    """What the ``TRITP_*`` form switches add to a generated source's identity and to a loaded
    kernel's key (:func:`share_loads`, :func:`tile_form`)."""
    form = tile_form()
    return (share_loads(), *(() if form == "rows" else ("strided mul_ir tiles",) if form == "strided" else ("3d tiles",)))


def conv_form() -> tuple:
    """What the form switches add to a fused-convolution source's identity: the plain kernels'
    (:func:`kernel_form`), ``TRITP_CONV_ROWS`` (:func:`conv_rows`) and ``TRITP_CONV_BLOCK_SUMS``
    (:func:`conv_block_sums`)."""
    # "row-by-row atomics" names the row adds, the default since block sums were timed (a cached
    # source of either form keeps its name, so neither is ever loaded for the other)
    return (*kernel_form(), *(("conv rows",) if conv_rows() else ()),
            *(() if conv_block_sums() else ("row-by-row atomics",)))


#: :func:`conv_form` with every switch at its default
DEFAULT_CONV_FORM = (True, "row-by-row atomics")


#: The environment variables that select a kernel form (:func:`share_loads`, :func:`tile_form`,
#: :func:`conv_rows`, :func:`conv_block_sums`, :func:`conv_x1_rows`, :func:`fused_backward_on`,
#: :func:`fused_second_on`, :func:`prune_grads_on`, :func:`fast_eager_on`).
FORM_VARIABLES = ("TRITP_SHARE_LOADS", "TRITP_COALESCE", "TRITP_CONV_ROWS", "TRITP_CONV_BLOCK_SUMS",
                  "TRITP_CONV_X1_ROWS", "TRITP_FUSED_BWD", "TRITP_FUSED_DBL", "TRITP_PRUNE_GRADS",
                  "TRITP_FAST_EAGER")


@contextmanager
def form_env(env: dict):
    """Select kernel forms for a block: ``env`` (some of :data:`FORM_VARIABLES`) is set and the
    others are at their defaults while kernels are generated, chosen and launched; restored
    after. For benchmarks that time the forms against each other in one process.

    Example:
        >>> with form_env({"TRITP_COALESCE": "3d"}):
        ...     tile_form()
        '3d'
    """
    old = {k: os.environ.get(k) for k in FORM_VARIABLES}
    for k in FORM_VARIABLES:
        os.environ.pop(k, None)
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
