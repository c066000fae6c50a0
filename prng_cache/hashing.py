"""Streaming xxh3-128 hashing with a stat-keyed memo.

The memo (like dvc-data's state and ccache's inode cache) maps
(device, inode, size, mtime_ns) to a hash so unchanged files are never read
again. It lives in SQLite because several coordinator processes may share it.
"""

from __future__ import annotations

import os
import sqlite3
import stat as _stat
import threading
import time
from typing import BinaryIO, Callable, Iterable

import xxhash

from .errors import HashError

CHUNK = 1 << 20  # 1 MiB: bounded memory even for 1 GB JSON inputs
RACY_WINDOW = 2.0  # seconds; covers coarse file-system timestamp ticks

Opener = Callable[[str], BinaryIO]


class ReadStats:
    """Process-wide counters so tests can prove a memo hit reads nothing."""

    def __init__(self) -> None:
        self.opens = 0
        self.bytes = 0

    def reset(self) -> None:
        self.opens = self.bytes = 0


stats = ReadStats()


def _default_opener(path: str) -> BinaryIO:
    return open(path, "rb", buffering=0)


class Hasher:
    """Incremental hash; the one place the algorithm is named."""

    __slots__ = ("_h",)

    def __init__(self, data: bytes = b"") -> None:
        self._h = xxhash.xxh3_128(data)

    def update(self, data: bytes | memoryview) -> None:
        self._h.update(data)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


StreamHasher = Hasher  # name used by the uploader


def bundle_key(files: Iterable[tuple[str, str]]) -> str:
    """Key of an input plus its companions: changes when any member changes."""
    h = Hasher(b"prng-bundle-v1\0")
    for name, digest in sorted(files):
        h.update(f"{name}\0{digest}\n".encode())
    return h.hexdigest()


def _identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _i64(x: int) -> int:
    # st_dev/st_ino are unsigned 64-bit; SQLite integers are signed.
    return x - (1 << 64) if x >= 1 << 63 else x


class HashMemo:
    """Persistent (dev, ino, size, mtime_ns) -> hash memo.

    Never raises for its own storage problems: if the database cannot be
    opened or written it falls back to an in-memory dict and records why in
    ``degraded`` (None while healthy).
    """

    def __init__(
        self,
        directory: str | None = None,
        *,
        racy_window: float = RACY_WINDOW,
        timeout: float = 10.0,
    ) -> None:
        if directory is None:
            base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
                os.path.expanduser("~"), ".cache"
            )
            directory = os.path.join(base, "prng-cache")
        self.path = os.path.join(directory, "hashes.sqlite")
        self.racy_window_ns = int(racy_window * 1e9)
        self.degraded: str | None = None
        self._mem: dict[tuple[int, int], tuple[int, int, str, int]] = {}
        self._lock = threading.Lock()  # one connection shared by threads
        self._db: sqlite3.Connection | None = None
        try:
            os.makedirs(directory, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=timeout, check_same_thread=False)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(
                    "CREATE TABLE IF NOT EXISTS hashes (dev INTEGER, ino INTEGER,"
                    " size INTEGER, mtime_ns INTEGER, hash TEXT NOT NULL,"
                    " hashed_at_ns INTEGER NOT NULL, PRIMARY KEY (dev, ino))"
                )
                db.commit()
            except sqlite3.Error:
                db.close()
                raise
            self._db = db
        except (OSError, sqlite3.Error) as e:
            self._degrade(f"cannot open {self.path}: {e}")

    def _degrade(self, reason: str) -> None:
        self.degraded = reason
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None

    def _trusted(self, mtime_ns: int, hashed_at_ns: int) -> bool:
        # A write in the same timestamp tick as the hash would leave
        # (size, mtime) unchanged, so only trust mtimes clearly older.
        return hashed_at_ns - mtime_ns >= self.racy_window_ns

    def lookup(self, st: os.stat_result) -> str | None:
        dev, ino = _i64(st.st_dev), _i64(st.st_ino)
        with self._lock:
            row = self._mem.get((dev, ino))
            if row is None and self._db is not None:
                try:
                    row = self._db.execute(
                        "SELECT size, mtime_ns, hash, hashed_at_ns FROM hashes"
                        " WHERE dev=? AND ino=?",
                        (dev, ino),
                    ).fetchone()
                except sqlite3.Error as e:
                    self._degrade(f"cannot read {self.path}: {e}")
        if row is None:
            return None
        size, mtime_ns, digest, hashed_at_ns = row
        if size != st.st_size or mtime_ns != st.st_mtime_ns:
            return None
        return digest if self._trusted(mtime_ns, hashed_at_ns) else None

    def store(self, st: os.stat_result, digest: str, hashed_at_ns: int | None = None) -> bool:
        """Remember a hash; ``hashed_at_ns`` is when reading began (default now).

        Returns False when the entry is refused as racy.
        """
        if hashed_at_ns is None:
            hashed_at_ns = time.time_ns()
        if not self._trusted(st.st_mtime_ns, hashed_at_ns):
            return False
        dev, ino = _i64(st.st_dev), _i64(st.st_ino)
        row = (st.st_size, st.st_mtime_ns, digest, hashed_at_ns)
        with self._lock:
            self._mem[(dev, ino)] = row
            if self._db is not None:
                try:
                    with self._db:
                        self._db.execute(
                            "INSERT OR REPLACE INTO hashes VALUES (?,?,?,?,?,?)",
                            (dev, ino, *row),
                        )
                except sqlite3.Error as e:
                    self._degrade(f"cannot write {self.path}: {e}")
        return True

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


def hash_and_stat(
    path: str, memo: HashMemo | None = None, *, opener: Opener | None = None
) -> tuple[str, os.stat_result]:
    """Hash ``path``; also return the stat the hash belongs to (for its size)."""
    try:
        st = os.stat(path)  # fresh every call: the memo is keyed on it
    except OSError as e:
        raise HashError(path, e.strerror or str(e)) from e
    if not _stat.S_ISREG(st.st_mode):
        raise HashError(path, "not a regular file")
    if memo is not None:
        hit = memo.lookup(st)
        if hit is not None:
            return hit, st
    started = time.time_ns()
    h = Hasher()
    try:
        with (opener or _default_opener)(path) as f:
            stats.opens += 1
            while chunk := f.read(CHUNK):
                stats.bytes += len(chunk)
                h.update(chunk)
            after = os.fstat(f.fileno())
    except OSError as e:
        raise HashError(path, e.strerror or str(e)) from e
    # Also catches the file being replaced between stat() and open().
    if _identity(st) != _identity(after):
        raise HashError(path, "changed while being hashed")
    digest = h.hexdigest()
    if memo is not None:
        memo.store(st, digest, started)
    return digest, st


def hash_file(path: str, memo: HashMemo | None = None, *, opener: Opener | None = None) -> str:
    """xxh3-128 hex digest (32 lowercase hex chars) of a file's content."""
    return hash_and_stat(path, memo, opener=opener)[0]
