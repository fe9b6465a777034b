"""``tritp cache``: look at and clear the autotune caches.

``list`` prints every entry of the user cache and of the cache shipped with tritp (GPU,
Triton, dtype, kernel, batch bucket, config, time); ``path`` prints the user autotune folder
(``$TRITP_CACHE_DIR/autotune``, else the platform cache dir); ``clear`` removes the user
autotune folder without asking and says what it removed. The shipped cache is never touched.

Example (shell)::

    tritp cache list
    tritp cache path
    tritp cache clear
"""

from __future__ import annotations

import argparse

from rich.table import Table

from .cli_show import make_console


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Attach ``cache`` to the ``tritp`` parser (the protocol of :mod:`tritp.cli`)."""
    p = subparsers.add_parser("cache", help="list, locate or clear the autotune caches",
                              description="List, locate or clear the autotune caches.")
    p.add_argument("action", choices=("list", "path", "clear"),
                   help="list: entries of the user and shipped caches; path: the user folder; "
                        "clear: remove the user autotune cache")
    return p


def entries_table(rows) -> Table:
    """A table of ``(where, path, entry)`` rows from :func:`tritp.tuning.cache.list_entries`.

    Example:
        >>> entries_table([]).row_count
        0
    """
    t = Table(title="autotune cache")
    for name in ("where", "gpu", "triton", "dtype", "problem", "kernel", "batch", "config", "ms", "default ms"):
        t.add_column(name, justify="right" if name in ("batch", "ms", "default ms") else "left")
    for where, _, e in rows:
        k, c = e["key"], e["config"]
        cfg = " ".join(f"{a}{c.get(f, '?')}" for a, f in (("z", "block_z"), ("c", "block_c"), ("w", "num_warps"),
                                                        ("s", "num_stages")))
        if k.get("family") in ("gaunt", "gaunt-launch"):  # implementation (and launch): tritp.gaunt_tuning
            cfg = gaunt_label(c)
        elif c.get("impl", "sparse") != "sparse":
            cfg += f" {c['impl']}"
        t.add_row(where, str(k.get("gpu")), str(k.get("triton")), str(k.get("dtype")), str(e.get("label", "")),
                  str(e.get("spec_tag", k.get("direction"))), str(k.get("batch")), cfg,
                  _num(e.get("ms")), _num(e.get("default_ms")))
    return t


def gaunt_label(c: dict) -> str:
    """A Gaunt entry's config as ``grid 64:8:32`` (BLOCK_R:warps:BLOCK_P), or ``sparse``."""
    from .gaunt_tuning import label
    from .tuning import Config

    try:
        return label(Config(**c))
    except (TypeError, ValueError):  # a hand-edited entry: show what is there
        return str(c.get("impl"))


def _num(x) -> str:
    return f"{x:.4g}" if isinstance(x, (int, float)) else "-"


def run(args) -> int:
    """Execute ``tritp cache`` (the protocol of :mod:`tritp.cli`)."""
    from .tuning import cache

    console = make_console()
    if args.action == "path":
        console.print(str(cache.user_dir()), markup=False, soft_wrap=True)
    elif args.action == "clear":
        folder, n = cache.clear_user()
        if n:
            console.print(f"removed {n} autotune entr{'y' if n == 1 else 'ies'} from {folder}", markup=False,
                          soft_wrap=True)
        else:
            console.print(f"nothing to remove: no autotune entries in {folder}", markup=False, soft_wrap=True)
    else:
        rows = cache.list_entries()
        console.print(entries_table(rows))
        users = sum(1 for r in rows if r[0] == "user")
        console.print(f"{users} user entr{'y' if users == 1 else 'ies'} in {cache.user_dir()}; "
                      f"{len(rows) - users} shipped in {cache.shipped_dir()}", markup=False, soft_wrap=True)
    return 0
