"""The autotune cache: keys, entry files, the user and shipped folders.

**Key.** A dict of eight fields, hashed (sha256 of its sorted JSON, 20 hex digits)::

    gpu        torch.cuda.get_device_name(), or "cpu-interpreter"
    triton     Triton major.minor, e.g. "3.6"
    family     kernel family, e.g. "cg"
    source     hash of the generated source's identity: generator files + problem key + spec
               + dtype (block_c aside: it is a tuned knob, so the identity fixes it out)
    space      hash of the pruned search space (tritp.tuning.space)
    dtype      accumulation dtype of the kernel, "float32" or "float64"
    direction  the producer spec string (forward, each gradient, each double-backward term)
    batch      the batch rounded up to a power of two

A changed generator or problem changes ``source``, hence the hash: a stale entry is never
found. An entry is used only if the key stored in it equals the key looked up.

**User cache**: ``<cache_root>/autotune/<gpu-slug>/<family>_<dtype>_b<batch>_<hash>.json``,
one file per key, written atomically (temp file + ``os.replace``), so two tuners writing at
once lose nothing and a reader never sees half a file. **Shipped cache**: the folder of
package ``tritp.autotune_cache``; ``index.json`` lists files ``<gpu-slug>__triton-<v>.json``,
each ``{"schema", "gpu", "triton", "entries": {hash: entry}}``, pretty and sorted for review.
A corrupt, truncated or foreign-schema file is reported once (``warnings.warn``) and ignored.

Example:
    >>> e = {"schema": SCHEMA, "key": {"gpu": "x"}, "config": {"block_z": 16}}
    >>> valid_entry(e), valid_entry({"schema": 99})
    (True, False)
"""

from __future__ import annotations

import importlib.resources
import json
import re
import shutil
import warnings
from functools import lru_cache
from pathlib import Path

from ..codegen.diskcache import atomic_write, cache_root, content_hash
from ..codegen.intmath import p2
from . import Config, _memo, check_config
from .space import identity_for, space_for

SCHEMA = 1
INTERPRETER_GPU = "cpu-interpreter"
_warned: set = set()


@lru_cache(maxsize=None)
def _cuda_name(index: int) -> str:
    import torch

    return torch.cuda.get_device_name(index)


def gpu_name(device=None, interpreted: bool = False) -> str:
    """The device part of the key: the CUDA device name, or ``"cpu-interpreter"``."""
    if interpreted or device is None or getattr(device, "type", "cuda") != "cuda":
        return INTERPRETER_GPU
    return _cuda_name(device.index if device.index is not None else 0)


@lru_cache(maxsize=None)
def triton_version() -> str:
    """Triton's ``major.minor`` (``"none"`` without Triton)."""
    try:
        import triton
    except ImportError:
        return "none"
    return ".".join(triton.__version__.split(".")[:2])


def slug(text: str) -> str:
    """File-name-safe lower-case form: ``"NVIDIA H100 80GB HBM3"`` -> ``nvidia-h100-80gb-hbm3``."""
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "unknown"


def bucket(n_rows: int) -> int:
    """The batch bucket: ``n_rows`` rounded up to a power of two (``bucket(50_000) == 65536``)."""
    return p2(max(1, int(n_rows)))


def identity_salt() -> str:
    """What every source identity (and the memo of lookups) depends on beyond its inputs: the
    generator's hash, and the kernel forms the environment selects (``TRITP_SHARE_LOADS``,
    ``TRITP_COALESCE``, ``TRITP_CONV_ROWS``: the kernels differ in registers, so a launch tuned
    for one form is not the other's)."""
    from .. import kernels
    from ..kernel_forms import DEFAULT_CONV_FORM, conv_form

    h = kernels.generator_hash()
    form = conv_form()  # every form switch, the convolution's included
    return h if form == DEFAULT_CONV_FORM else content_hash(h, *form)


def source_hash(problem, spec, dtype: str) -> str:
    """Identity of the generated source for any ``block_c``: generator, problem, spec, dtype."""
    return content_hash(identity_salt(), problem.key, spec.to_str(), dtype)


def make_key(problem, spec, dtype: str, n_rows: int, gpu: str, family: str = "cg") -> dict:
    """The cache key of one kernel launch (see the module docstring)."""
    b = bucket(n_rows)
    ident = identity_for(family) or source_hash
    return {"gpu": gpu, "triton": triton_version(), "family": family, "source": ident(problem, spec, dtype),
            "space": space_for(family, problem, spec, dtype, b).hash, "dtype": dtype,
            "direction": spec.to_str() if hasattr(spec, "to_str") else str(spec), "batch": b}


def key_hash(key: dict) -> str:
    return content_hash(json.dumps(key, sort_keys=True))


def user_dir() -> Path:
    """The user autotune folder: ``$TRITP_CACHE_DIR/autotune`` or the platform cache's."""
    return cache_root() / "autotune"


@lru_cache(maxsize=None)
def _package_dir() -> Path:
    return Path(str(importlib.resources.files("tritp.autotune_cache")))


def shipped_dir() -> Path:
    """The shipped cache folder (package data ``tritp.autotune_cache``); tests monkeypatch it."""
    return _package_dir()


def entry_path(key: dict, root: Path | None = None) -> Path:
    root = user_dir() if root is None else root
    return root / slug(key["gpu"]) / f"{key['family']}_{key['dtype']}_b{key['batch']}_{key_hash(key)}.json"


def warn_once(path, reason: str) -> None:
    """Report an unusable cache file once per process."""
    if str(path) not in _warned:
        _warned.add(str(path))
        warnings.warn(f"tritp: ignoring autotune cache file {path}: {reason}", stacklevel=3)


def valid_entry(e) -> bool:
    return (isinstance(e, dict) and e.get("schema") == SCHEMA and isinstance(e.get("key"), dict)
            and isinstance(e.get("config"), dict))


def to_config(d: dict) -> Config:
    try:
        return check_config(Config(**{k: d[k] for k in Config._fields if k in d}))
    except ValueError as e:  # the entry is unusable: its reader reports it
        raise ValueError(f"bad config {d!r}: {e}") from None


def read_json(path: Path):
    """Parsed JSON of ``path`` or None (missing is silent; unreadable is warned once)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        warn_once(path, f"unreadable ({e})")
        return None
    try:
        return json.loads(text)
    except ValueError as e:
        warn_once(path, f"corrupt or truncated JSON ({e})")
        return None


def read_entry(path: Path):
    """A valid entry from a user-cache file, or None (a bad file is warned once)."""
    e = read_json(path)
    if e is None:
        return None
    if not valid_entry(e):
        warn_once(path, f"not a schema-{SCHEMA} autotune entry (schema {e.get('schema') if isinstance(e, dict) else '?'})")
        return None
    return e


def _usable(e, key: dict, where: str):
    if e is None or e.get("key") != key:
        return None
    try:
        return to_config(e["config"]), where
    except (TypeError, ValueError) as err:
        warn_once(f"{where}:{key_hash(key)}", f"entry has an unusable config ({err})")
        return None


def find(key: dict):
    """``(Config, "user" | "shipped")`` for ``key``, or None: user cache first, then shipped."""
    found = _usable(read_entry(entry_path(key)), key, "user")
    if found is None:
        found = _usable(shipped_entries(str(shipped_dir()), key["gpu"], key["triton"]).get(key_hash(key)),
                        key, "shipped")
    return found


def shipped_files(root: Path) -> list:
    """The file records of ``root/index.json`` (``[]`` when missing; a bad index is warned)."""
    idx = read_json(Path(root) / "index.json")
    if idx is None:
        return []
    if not isinstance(idx, dict) or idx.get("schema") != SCHEMA or not isinstance(idx.get("files"), list):
        warn_once(Path(root) / "index.json", f"not a schema-{SCHEMA} index")
        return []
    return [f for f in idx["files"] if isinstance(f, dict) and isinstance(f.get("file"), str)]


def read_bundle(path: Path):
    """A shipped file's ``entries`` dict, or None (warned once when bad)."""
    b = read_json(path)
    if b is None:
        return None
    if not isinstance(b, dict) or b.get("schema") != SCHEMA or not isinstance(b.get("entries"), dict):
        warn_once(path, f"not a schema-{SCHEMA} shipped autotune file")
        return None
    return {h: e for h, e in b["entries"].items() if valid_entry(e)}


@lru_cache(maxsize=64)
def shipped_entries(root: str, gpu: str, triton: str) -> dict:
    """Every shipped entry for one GPU and Triton version, by key hash (read once)."""
    out = {}
    for f in shipped_files(Path(root)):
        if f.get("gpu") in (None, gpu) and f.get("triton") in (None, triton):
            out.update(read_bundle(Path(root) / f["file"]) or {})
    return out


def store(entry: dict) -> Path:
    """Write one entry into the user cache (atomically) and forget memoized lookups."""
    path = atomic_write(entry_path(entry["key"]), (json.dumps(entry, indent=2, sort_keys=True) + "\n").encode())
    _memo.clear()
    return path


def export(entries, root) -> list:
    """Merge ``entries`` into the shipped-format files under ``root`` and update its
    ``index.json``; returns the files written. Pretty JSON, sorted keys, for review."""
    root = Path(root)
    groups: dict = {}
    for e in entries:
        groups.setdefault((e["key"]["gpu"], e["key"]["triton"]), []).append(e)
    written = []
    for (gpu, tv), es in sorted(groups.items()):
        name = f"{slug(gpu)}__triton-{tv}.json"
        merged = read_bundle(root / name) or {}
        merged.update({key_hash(e["key"]): e for e in es})
        bundle = {"schema": SCHEMA, "gpu": gpu, "triton": tv, "entries": merged}
        written.append(atomic_write(root / name, (json.dumps(bundle, indent=2, sort_keys=True) + "\n").encode()))
    files = {f["file"]: f for f in shipped_files(root)}
    for p in root.glob("*__triton-*.json"):
        b = read_json(p)
        if isinstance(b, dict) and b.get("schema") == SCHEMA and isinstance(b.get("entries"), dict):
            files[p.name] = {"file": p.name, "gpu": b.get("gpu"), "triton": b.get("triton"), "entries": len(b["entries"])}
    index = {"schema": SCHEMA, "files": [files[k] for k in sorted(files)]}
    atomic_write(root / "index.json", (json.dumps(index, indent=2, sort_keys=True) + "\n").encode())
    shipped_entries.cache_clear()
    _memo.clear()
    return written


def list_entries() -> list:
    """``(where, path, entry)`` for every valid entry of the user and the shipped cache."""
    out = []
    u = user_dir()
    for p in sorted(u.glob("*/*.json")) if u.exists() else []:
        e = read_entry(p)
        if e is not None:
            out.append(("user", p, e))
    root = shipped_dir()
    for f in shipped_files(root):
        for h, e in sorted((read_bundle(root / f["file"]) or {}).items()):
            out.append(("shipped", root / f["file"], e))
    return out


def clear_user() -> tuple:
    """Remove the user autotune folder; returns ``(folder, number of entry files removed)``."""
    u = user_dir()
    n = len(list(u.glob("*/*.json"))) if u.exists() else 0
    if u.exists():
        shutil.rmtree(u)
    _memo.clear()
    return u, n
