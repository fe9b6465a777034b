"""Where tritp keeps what it derives, and how it writes there safely.

Everything tritp caches (coupling tables, generated kernel sources, tuned configs) lives under
one folder: ``$TRITP_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/tritp``, else
``~/.cache/tritp``. Files are named by the hash of what they contain or of what produced them,
and written atomically (temp file in the same folder, then ``os.replace``), so two processes
writing the same entry at once both succeed and a reader never sees half a file.

Example:
    >>> from tritp.codegen.diskcache import cache_dir, atomic_write
    >>> p = atomic_write(cache_dir("doc") / "hello.txt", b"hi")
    >>> p.read_bytes()
    b'hi'
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


def cache_root() -> Path:
    """The user cache folder (not created here)."""
    env = os.environ.get("TRITP_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "tritp"


def cache_dir(kind: str) -> Path:
    """A subfolder of the cache root for one kind of entry, created on demand."""
    d = cache_root() / kind
    d.mkdir(parents=True, exist_ok=True)
    return d


def content_hash(*parts) -> str:
    """Short, stable hex digest of strings/bytes (sha256, first 20 hex digits)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:20]


def sources_hash(*names: str) -> str:
    """:func:`content_hash` of the named files of this folder, in order: the generator code a
    cached kernel source depends on (any edit to one of them names new cache files).

    Example:
        >>> len(sources_hash("diskcache.py"))
        20
    """
    root = Path(__file__).parent  # the generator's folder, wherever tritp.codegen is installed
    return content_hash(*((root / n).read_bytes() for n in names))


def atomic_write(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; safe against concurrent writers of any content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp's 0600 would hide a shared cache from other users
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path
