"""The on-disk compile cache: one directory per compiled graph under ``nkipy_cache``.

An entry is keyed by a hash of everything that changes the artifact (:class:`CacheKey`:
IR text, target, compiler and its version, compiler args, options, bucket sizes, spiky
version) and holds the IR text, the HLO proto and text, the NEFF (neuron) or nothing more
(host: IR + HLO are the artifact), the compile log and ``meta.json`` with a sha256 per file.

Safe under concurrency and crashes:

- one compile per key across processes: builders take an ``fcntl`` lock on the key, and
  whoever gets it second finds the entry and reuses it;
- atomic: an entry is built in a staging directory and renamed into place, ``meta.json``
  written last, so a killed compile never leaves an entry that looks valid;
- verified: every read checks sizes and checksums; a corrupted or truncated entry is logged
  as a warning, removed and rebuilt.

Inspect and prune it from Python or the shell::

    import spiky
    for e in spiky.cache.list_entries(): print(e.key[:12], e.kernel_name, e.size_bytes, e.age_seconds)
    spiky.cache.clear(older_than_days=30)

    python -m spiky.cache list | show <key prefix> | clear [--older-than DAYS]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from spiky.errors import SpikyCompileError, SpikyConfigError

log = logging.getLogger("spiky.cache")

CACHE_FORMAT = 1
"""Bump when the entry layout changes; it is part of every key."""
META = "meta.json"
_ENTRIES, _STAGING, _LOCKS, _FAILED = "entries", "staging", "locks", "failed"

# Well-known file names inside an entry.
IR_TEXT, HLO_PROTO, HLO_TEXT, NEFF, COMPILE_LOG, KERNEL_SOURCE = (
    "ir.txt", "model.hlo.pb", "model.hlo.txt", "model.neff", "compile.log", "kernel.py"
)


@dataclass(frozen=True)
class CacheKey:
    """Everything that determines a compiled artifact; :meth:`digest` names the entry."""

    ir_text: str
    target: str
    compiler: str
    """``"neuronx-cc"`` or the host pipeline's name."""
    compiler_version: str
    compiler_args: str = ""
    options: tuple[tuple[str, str], ...] = ()
    """Per-function options that affect the artifact, as sorted ``(name, repr(value))``."""
    buckets: tuple[tuple[str, tuple[int, ...]], ...] = ()
    """Bucket sizes per dynamic symbol the artifact was compiled for."""
    spiky_version: str = ""

    def digest(self) -> str:
        payload = json.dumps({"format": CACHE_FORMAT, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:40]

    def describe(self) -> dict[str, Any]:
        """The key's fields for ``meta.json`` (the IR by its hash; the text is in ``ir.txt``)."""
        fields = asdict(self)
        fields["ir_sha256"] = hashlib.sha256(fields.pop("ir_text").encode()).hexdigest()
        return fields


@dataclass(frozen=True)
class CacheEntry:
    """One entry on disk."""

    key: str
    path: Path
    meta: Mapping[str, Any]
    size_bytes: int
    created: float
    """Seconds since the epoch when the entry was completed."""

    @property
    def age_seconds(self) -> float:
        return max(0.0, time.time() - self.created)

    @property
    def kernel_name(self) -> str:
        return str(self.meta.get("kernel_name", ""))

    @property
    def target(self) -> str:
        return str(self.meta.get("key", {}).get("target", ""))

    def file(self, name: str) -> Path:
        """Path of one artifact file; raises ``KeyError`` naming the files the entry has."""
        if name not in self.meta.get("files", {}):
            raise KeyError(f"cache entry {self.key[:12]} has no {name!r}; it has {sorted(self.meta['files'])}")
        return self.path / name

    def read_text(self, name: str) -> str:
        return self.file(name).read_text()


@dataclass
class CacheStats:
    """Counters of this process's cache lookups (``spiky.cache.stats()``)."""

    hits: int = 0
    """Lookups served from disk without compiling."""
    misses: int = 0
    """Lookups that compiled (each is also a compile in ``spiky.get_stats()``)."""
    corrupt: int = 0
    """Entries found damaged, removed and rebuilt (each also counts as a miss)."""
    waited: int = 0
    """Lookups that waited for another process compiling the same key."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def bump(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)


_stats = CacheStats()


def stats() -> CacheStats:
    """A snapshot of this process's cache counters."""
    with _stats._lock:
        return CacheStats(_stats.hits, _stats.misses, _stats.corrupt, _stats.waited)


def reset_stats() -> None:
    with _stats._lock:
        _stats.hits = _stats.misses = _stats.corrupt = _stats.waited = 0


# --- building and reading entries ---------------------------------------------------------------

Builder = Callable[[Path], Mapping[str, Any]]
"""Writes the artifact files into the given (empty) directory; returns extra metadata."""


class CompileCache:
    """The cache rooted at one directory (``nkipy_cache``)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _dir(self, name: str) -> Path:
        path = self.root / name
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpikyConfigError(
                f"cannot create cache directory {str(path)!r}: {exc.strerror}; pass a writable nkipy_cache="
            ) from exc
        return path

    def entry_path(self, key: CacheKey | str) -> Path:
        digest = key.digest() if isinstance(key, CacheKey) else key
        return self.root / _ENTRIES / digest

    def lookup(self, key: CacheKey) -> CacheEntry | None:
        """The valid entry for ``key``, or None (a damaged entry is removed with a warning)."""
        return self._load(key.digest(), repair=True)

    def get_or_build(
        self, key: CacheKey, build: Builder, *, kernel_name: str = "", lock_timeout: float | None = None,
    ) -> tuple[CacheEntry, bool]:
        """The entry for ``key``, building it under the key's lock if needed; returns ``(entry, hit)``."""
        digest = key.digest()
        entry = self._load(digest, repair=False)
        if entry is not None:
            _stats.bump("hits")
            return entry, True
        with self._locked(digest, lock_timeout) as waited:
            entry = self._load(digest, repair=True)
            if entry is not None:
                _stats.bump("hits")
                if waited:
                    _stats.bump("waited")
                return entry, True
            _stats.bump("misses")
            return self._build(key, digest, build, kernel_name), False

    # -- internals ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, digest: str, timeout: float | None) -> Iterator[bool]:
        """Hold the key's file lock; yields whether another process held it first."""
        lock_path = self._dir(_LOCKS) / f"{digest}.lock"
        with open(lock_path, "a+b") as handle:
            waited = False
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                waited = True
                log.info("waiting for another process compiling cache entry %s", digest[:12])
                start = time.monotonic()
                while True:
                    try:
                        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if timeout is not None and time.monotonic() - start > timeout:
                            raise SpikyCompileError(
                                f"waited {timeout:.0f} s for the lock on cache entry {digest[:12]} "
                                f"({lock_path}); another process is still compiling it"
                            ) from None
                        time.sleep(0.05)
            try:
                yield waited
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _build(self, key: CacheKey, digest: str, build: Builder, kernel_name: str) -> CacheEntry:
        staging = self._dir(_STAGING) / f"{digest}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        start = time.perf_counter()
        try:
            (staging / IR_TEXT).write_text(key.ir_text)
            extra = dict(build(staging))
            files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)}
                     for p in sorted(staging.iterdir()) if p.is_file()}
            meta = {
                "format": CACHE_FORMAT, "key_digest": digest, "kernel_name": kernel_name,
                "created": time.time(), "build_seconds": round(time.perf_counter() - start, 6),
                "key": key.describe(), "files": files, **extra,
            }
            _write_atomic(staging / META, json.dumps(meta, indent=2, sort_keys=True).encode())
            _fsync_dir(staging)
            final = self.entry_path(digest)
            self._dir(_ENTRIES)
            if final.exists():  # a damaged leftover: move it aside, never rename over it
                _remove_tree(final, self._dir(_STAGING))
            os.rename(staging, final)
        except BaseException as exc:
            failed_log = staging / COMPILE_LOG
            if failed_log.exists():
                kept = self._dir(_FAILED) / f"{digest}.{int(time.time())}.log"
                shutil.copyfile(failed_log, kept)
                if isinstance(exc, SpikyCompileError):
                    exc.log_path = str(kept)
            shutil.rmtree(staging, ignore_errors=True)
            raise
        entry = self._load(digest, repair=False)
        assert entry is not None, f"cache entry {digest} vanished right after it was written"
        return entry

    def _load(self, digest: str, *, repair: bool) -> CacheEntry | None:
        path = self.entry_path(digest)
        if not path.exists():
            return None
        problem, meta = _check(path, digest)
        if problem is None:
            size = sum(f["size"] for f in meta["files"].values()) + (path / META).stat().st_size
            return CacheEntry(digest, path, meta, size, float(meta["created"]))
        if repair:
            log.warning("cache entry %s is damaged (%s); removing it and compiling again", path, problem)
            _stats.bump("corrupt")
            _remove_tree(path, self._dir(_STAGING))
        return None

    # -- maintenance ---------------------------------------------------------------------------

    def entries(self) -> list[CacheEntry]:
        """Valid entries, oldest first (damaged ones are skipped, not removed)."""
        directory = self.root / _ENTRIES
        found = []
        if directory.is_dir():
            for path in directory.iterdir():
                entry = self._load(path.name, repair=False)
                if entry is not None:
                    found.append(entry)
        return sorted(found, key=lambda e: e.created)

    def find(self, prefix: str) -> CacheEntry:
        """The entry whose key starts with ``prefix`` (or whose kernel name is ``prefix``)."""
        matches = [e for e in self.entries() if e.key.startswith(prefix) or e.kernel_name == prefix]
        if len(matches) != 1:
            what = "no entry" if not matches else f"{len(matches)} entries"
            raise KeyError(
                f"{what} in {self.root} match {prefix!r}; use a longer key prefix (see spiky.cache.list_entries())"
            )
        return matches[0]

    def clear(self, older_than_days: float | None = None) -> int:
        """Remove every entry (or those older than ``older_than_days``) and leftovers; returns entries removed."""
        if older_than_days is not None and older_than_days < 0:
            raise SpikyConfigError(f"older_than_days must be >= 0, got {older_than_days}")
        removed = 0
        directory = self.root / _ENTRIES
        cutoff = None if older_than_days is None else time.time() - older_than_days * 86400
        if directory.is_dir():
            for path in list(directory.iterdir()):
                entry = self._load(path.name, repair=False)
                created = entry.created if entry is not None else path.stat().st_mtime
                if cutoff is None or created < cutoff:
                    _remove_tree(path, self._dir(_STAGING))
                    removed += 1
        now = time.time()
        for path in _children(self.root / _STAGING):
            if now - path.stat().st_mtime > 86400:  # live compiles stage young directories
                _remove_tree(path, None)
        for path in _children(self.root / _FAILED):
            if cutoff is None or path.stat().st_mtime < cutoff:
                _remove_tree(path, None)
        return removed


def _children(directory: Path) -> list[Path]:
    return list(directory.iterdir()) if directory.is_dir() else []


def _check(path: Path, digest: str) -> tuple[str | None, dict[str, Any]]:
    """``(None, meta)`` for a complete, intact entry, else ``(what is wrong, {})``."""
    try:
        meta = json.loads((path / META).read_text())
    except FileNotFoundError:
        return "no meta.json (an interrupted write)", {}
    except (OSError, ValueError) as exc:
        return f"unreadable meta.json: {exc}", {}
    if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT or meta.get("key_digest") != digest:
        return "meta.json of another format or key", {}
    for name, info in meta.get("files", {}).items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing", {}
        if file.stat().st_size != info["size"]:
            return f"{name} has {file.stat().st_size} bytes, expected {info['size']} (truncated?)", {}
        if _sha256(file) != info["sha256"]:
            return f"{name} fails its checksum", {}
    return None, meta


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    for file in path.iterdir():
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())


def _remove_tree(path: Path, trash: Path | None) -> None:
    """Remove a directory; renamed away first so no reader sees it half-deleted."""
    if trash is not None:
        doomed = trash / f"removing.{path.name}.{uuid.uuid4().hex[:8]}"
        try:
            os.rename(path, doomed)
            path = doomed
        except OSError:
            pass
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# --- the public API over the configured cache ------------------------------------------------------


def default_cache_dir() -> Path:
    """``$SPIKY_CACHE``, else ``$XDG_CACHE_HOME/spiky``, else ``~/.cache/spiky``."""
    if os.environ.get("SPIKY_CACHE"):
        return Path(os.environ["SPIKY_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "spiky"


_configured_dir: Path | None = None


def set_cache_dir(path: str | os.PathLike[str] | None) -> None:
    """The directory the functions below use by default (``init_nkipy_backend`` sets its ``nkipy_cache``;
    None: back to :func:`default_cache_dir`)."""
    global _configured_dir
    _configured_dir = Path(path) if path is not None else None


def cache_dir() -> Path:
    """The cache directory in use: the backend's ``nkipy_cache`` once initialised, else :func:`default_cache_dir`."""
    return _configured_dir if _configured_dir is not None else default_cache_dir()


def _cache(directory: str | os.PathLike[str] | None) -> CompileCache:
    return CompileCache(directory if directory is not None else cache_dir())


def list_entries(cache_dir: str | os.PathLike[str] | None = None) -> list[CacheEntry]:
    """Valid entries of the cache (default: the backend's ``nkipy_cache``), oldest first.

    >>> for e in spiky.cache.list_entries():  # doctest: +SKIP
    ...     print(e.key[:12], e.kernel_name, e.target, e.size_bytes, round(e.age_seconds))
    """
    return _cache(cache_dir).entries()


def show(key_prefix: str, cache_dir: str | os.PathLike[str] | None = None) -> CacheEntry:
    """The entry whose key starts with ``key_prefix`` (or whose kernel name it is)."""
    return _cache(cache_dir).find(key_prefix)


def clear(older_than_days: float | None = None, cache_dir: str | os.PathLike[str] | None = None) -> int:
    """Remove all entries, or those older than ``older_than_days``; returns how many were removed."""
    return _cache(cache_dir).clear(older_than_days)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m spiky.cache list | show KEY | clear [--older-than DAYS] [--dir DIR]``."""
    parser = argparse.ArgumentParser(prog="python -m spiky.cache", description="Inspect the spiky compile cache.")
    parser.add_argument("--dir", help="cache directory (default: $SPIKY_CACHE or ~/.cache/spiky)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", aliases=["ls"], help="entries with sizes and ages")
    show_p = sub.add_parser("show", help="one entry's metadata and files")
    show_p.add_argument("key", help="key prefix or kernel name")
    clear_p = sub.add_parser("clear", help="remove entries")
    clear_p.add_argument("--older-than", type=float, metavar="DAYS", help="only entries older than DAYS")
    args = parser.parse_args(argv)
    cache = CompileCache(args.dir or default_cache_dir())
    out = sys.stdout
    if args.command in ("list", "ls"):
        entries = cache.entries()
        out.write(f"{'key':14} {'kernel':20} {'target':7} {'size':>10} {'age':>9}\n")
        for e in entries:
            out.write(f"{e.key[:12]:14} {e.kernel_name:20} {e.target:7} {e.size_bytes:>10} {_age(e.age_seconds):>9}\n")
        out.write(f"{len(entries)} entries, {sum(e.size_bytes for e in entries)} bytes in {cache.root}\n")
    elif args.command == "show":
        try:
            entry = cache.find(args.key)
        except KeyError as exc:
            sys.stderr.write(f"{exc.args[0]}\n")
            return 1
        out.write(f"{entry.path}\n{json.dumps(entry.meta, indent=2, sort_keys=True)}\n")
    else:
        removed = cache.clear(args.older_than)
        out.write(f"removed {removed} entries from {cache.root}\n")
    return 0


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


if __name__ == "__main__":
    raise SystemExit(main())
