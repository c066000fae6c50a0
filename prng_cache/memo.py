"""The hash memo: a file's (device, inode, size, mtime_ns, ctime_ns) -> its
xxh3-128, so unchanged files are never read again (like git's index and
ccache's inode cache). ctime is what makes that safe: anyone can restore an
mtime (``touch -d``, ``cp -p``, ``rsync -t``, tar), but every content change
sets ctime to the current time. It lives in SQLite because several
coordinator processes may share it.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

RACY_WINDOW = 2.0  # seconds; covers coarse file-system timestamp ticks
BUSY_TIMEOUT = 1.0  # seconds to wait for a memo DB locked by another process


def _i64(x: int) -> int:
    # st_dev/st_ino are unsigned 64-bit; SQLite integers are signed.
    return x - (1 << 64) if x >= 1 << 63 else x


def _sqlite_problem(e: sqlite3.Error) -> str:
    """'corrupt', 'locked' or 'other' (errorcode exists from Python 3.11)."""
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None:
        primary = code & 0xFF
        if primary in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
            return "corrupt"
        if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            return "locked"
        return "other"
    msg = str(e).lower()
    if "malformed" in msg or "not a database" in msg:
        return "corrupt"
    if "locked" in msg or "busy" in msg:
        return "locked"
    return "other"


_TABLE = "hashes_v2"
_SCHEMA = (
    f"CREATE TABLE IF NOT EXISTS {_TABLE} (dev INTEGER NOT NULL, ino INTEGER NOT NULL,"
    " size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,"
    " hash TEXT NOT NULL, hashed_at_ns INTEGER NOT NULL, PRIMARY KEY (dev, ino))"
)

Row = tuple[int, int, int, str, int]  # size, mtime_ns, ctime_ns, hash, hashed_at_ns
_PREFETCH_BATCH = 500  # inodes per query (SQLite allows 999 variables before 3.32)


#: memo rows written per transaction at most
FLUSH_EVERY = 1000


class HashMemo:
    """Persistent (dev, ino, size, mtime_ns, ctime_ns) -> hash memo.

    Never raises for its own storage problems. A corrupt ``hashes.sqlite`` is
    moved aside (to ``hashes.sqlite.corrupt``) and rebuilt, with a warning.
    A database locked by another process for more than ``busy_timeout``
    seconds, or one that cannot be opened or written, is given up for the
    life of this object (a warning; ``degraded`` says why, None while
    healthy) and an in-memory dict is used instead: hashing goes on, only
    slower.

    A hash is never stored nor served for a file whose ctime or mtime is
    within ``racy_window`` seconds of the time it was hashed, or of now: a
    write in the same timestamp tick would leave the stat unchanged.
    """

    def __init__(
        self,
        directory: str | None = None,
        *,
        racy_window: float = RACY_WINDOW,
        busy_timeout: float = BUSY_TIMEOUT,
    ) -> None:
        if directory is None:
            from .localstate import cache_dir

            directory = cache_dir()
        self.directory = directory
        self.path = os.path.join(directory, "hashes.sqlite")
        self.racy_window_ns = int(racy_window * 1e9)
        self.busy_timeout = busy_timeout
        self.degraded: str | None = None
        self._mem: dict[tuple[int, int], Row] = {}  # the memo while degraded
        # written in one transaction per FLUSH_EVERY rows (and at flush()):
        # a commit per file cost more than hashing 10 KB inputs
        self._pending: dict[tuple[int, int], Row] = {}
        # rows read up front for a run's lookups (see prefetched); None: absent
        self._pre: dict[tuple[int, int], Row | None] = {}
        self._lock = threading.Lock()  # one connection shared by threads
        self._db: sqlite3.Connection | None = None
        self._db_file: tuple[int, int] | None = None  # (dev, ino) of the file we opened
        self._repaired = False  # at most one rebuild per object: never loop
        with self._lock:
            self._open()

    # ----------------------------------------------------------- storage
    def _file_id(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino)

    def _connect(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        self._db_file = self._file_id()
        db = sqlite3.connect(self.path, timeout=self.busy_timeout, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # no fsync per commit: a crash may lose the last rows (hashed
            # again), never leave a wrong one (WAL commits stay atomic)
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(_SCHEMA)
            legacy = db.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='hashes'"
            ).fetchall()
            if legacy:
                # keyed without ctime: its entries cannot prove sameness
                db.execute("DROP TABLE hashes")
            db.commit()
        except BaseException:
            db.close()
            raise
        self._db = db
        if self._db_file is None:
            self._db_file = self._file_id()

    def _open(self) -> None:
        try:
            self._connect()
        except sqlite3.Error as e:
            self._failed(e, "open")
        except OSError as e:
            self._degrade(f"cannot open {self.path}: {e.strerror or e}")

    def _failed(self, e: sqlite3.Error, doing: str) -> None:
        """A database operation failed: repair a corrupt file, else give up on it."""
        problem = _sqlite_problem(e)
        if problem == "corrupt" and not self._repaired:
            self._repaired = True
            self._close_db()
            self._move_aside(e)
            self._open()
        elif problem == "locked":
            self._degrade(f"{self.path} is locked by another process"
                          f" (waited {self.busy_timeout:g} s)")
        else:
            self._degrade(f"cannot {doing} {self.path}: {e}")

    def _move_aside(self, e: sqlite3.Error) -> None:
        aside = self.path + ".corrupt"
        now = self._file_id()
        if now is not None and now == self._db_file:
            try:
                os.replace(self.path, aside)
                # the old WAL belongs to the corrupt file; the new one must not replay it
                if os.path.exists(self.path + "-wal"):
                    os.replace(self.path + "-wal", aside + "-wal")
                if os.path.exists(self.path + "-shm"):
                    os.unlink(self.path + "-shm")
            except OSError as oe:
                log.warning("%s is corrupt (%s) and cannot be moved aside: %s",
                            self.path, e, oe.strerror or oe)
                return
            log.warning("%s is corrupt (%s); moved it to %s and started a new one"
                        " (hashes are recomputed once)", self.path, e, aside)
        # else: another process already replaced it; just reopen

    def _close_db(self) -> None:
        self._pre = {}
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None

    def _degrade(self, reason: str) -> None:
        self._close_db()
        if self.degraded is None:
            log.warning("hash memo not used: %s; hashing without it", reason)
        self.degraded = reason

    def _get(self, key: tuple[int, int]) -> Row | None:
        # caller holds self._lock
        if key in self._pending:
            return self._pending[key]
        if key in self._pre:
            return self._pre[key]
        if self._db is not None:
            try:
                rows = self._db.execute(
                    f"SELECT size, mtime_ns, ctime_ns, hash, hashed_at_ns FROM {_TABLE}"
                    " WHERE dev=? AND ino=?", key,
                ).fetchall()  # fetchall: never leave a read transaction open
                return rows[0] if rows else None
            except sqlite3.Error as e:
                self._failed(e, "read")
                return None  # a rebuilt or dropped memo knows nothing
        return self._mem.get(key)

    def _put(self, key: tuple[int, int], row: Row) -> None:
        # caller holds self._lock
        self._pre.pop(key, None)
        if self._db is None:
            self._mem[key] = row
            return
        self._pending[key] = row
        if len(self._pending) >= FLUSH_EVERY:
            self._flush()

    def _flush(self) -> None:
        # caller holds self._lock
        rows, self._pending = self._pending, {}
        if not rows:
            return
        if self._db is not None:
            try:
                with self._db:
                    self._db.executemany(f"INSERT OR REPLACE INTO {_TABLE} VALUES (?,?,?,?,?,?,?)",
                                         [(*k, *r) for k, r in rows.items()])
                return
            except sqlite3.Error as e:
                self._failed(e, "write")
                if self._db is not None:  # rebuilt: write into the new file
                    self._pending = rows
                    return self._flush()
        self._mem.update(rows)

    def flush(self) -> None:
        """Write what was stored since the last flush (also done every
        FLUSH_EVERY rows and by :meth:`close`)."""
        with self._lock:
            self._flush()

    def _forget(self, key: tuple[int, int]) -> bool:
        with self._lock:
            if self._get(key) is None:
                return False  # a read only: no write lock when there is nothing to do
            self._mem.pop(key, None)
            self._pending.pop(key, None)
            self._pre.pop(key, None)
            if self._db is not None:
                try:
                    with self._db:
                        self._db.execute(f"DELETE FROM {_TABLE} WHERE dev=? AND ino=?", key)
                except sqlite3.Error as e:
                    self._failed(e, "write")  # a rebuilt or dropped memo has no entry either
            return True

    # ------------------------------------------------------------ API
    @contextmanager
    def prefetched(self, files: Iterable[tuple[int, int]]) -> Iterator[None]:
        """Within the block, lookups of these files (``(st_dev, st_ino)``)
        are answered from rows read up front, a few queries in all: a run's
        discovery looks up thousands of files, and one query each was a
        third of it. Rows this object stores or forgets meanwhile replace
        them; they are dropped at the end of the block. (Another process's
        writes meanwhile are not seen: a row is still only used when the
        file's stat matches it.)"""
        self._prefetch(files)
        try:
            yield
        finally:
            with self._lock:
                self._pre = {}

    def _prefetch(self, files: Iterable[tuple[int, int]]) -> None:
        by_dev: dict[int, list[int]] = {}
        for dev, ino in set(files):
            by_dev.setdefault(_i64(dev), []).append(_i64(ino))
        with self._lock:
            if self._db is None:
                return
            pre: dict[tuple[int, int], Row | None] = {}
            try:
                for dev, inos in by_dev.items():
                    for i in range(0, len(inos), _PREFETCH_BATCH):
                        part = inos[i:i + _PREFETCH_BATCH]
                        rows = self._db.execute(
                            f"SELECT ino, size, mtime_ns, ctime_ns, hash, hashed_at_ns FROM {_TABLE}"
                            f" WHERE dev=? AND ino IN ({','.join('?' * len(part))})", (dev, *part),
                        ).fetchall()
                        pre.update(dict.fromkeys([(dev, ino) for ino in part]))
                        for ino, *row in rows:
                            pre[(dev, ino)] = tuple(row)  # type: ignore[assignment]
            except sqlite3.Error as e:
                self._failed(e, "read")  # as a single lookup would: nothing prefetched
                return
            self._pre = pre

    def _racy(self, st: os.stat_result, at_ns: int) -> bool:
        # A write in the same timestamp tick as ``at_ns`` would leave the stat
        # unchanged; max() also covers a ctime of 0 from odd file systems.
        return at_ns - max(st.st_mtime_ns, st.st_ctime_ns) < self.racy_window_ns

    def lookup(self, st: os.stat_result) -> str | None:
        """The memoised hash of the file ``st`` describes, or None."""
        if self._racy(st, time.time_ns()):
            return None  # whatever an entry says, the file is too young to trust
        key = (_i64(st.st_dev), _i64(st.st_ino))
        with self._lock:
            row = self._get(key)
        if row is None:
            return None
        size, mtime_ns, ctime_ns, digest, hashed_at_ns = row
        if (size, mtime_ns, ctime_ns) != (st.st_size, st.st_mtime_ns, st.st_ctime_ns):
            return None  # the caller re-hashes, then store() replaces or drops it
        if hashed_at_ns - max(mtime_ns, ctime_ns) < self.racy_window_ns:
            return None
        return digest

    def store(self, st: os.stat_result, digest: str, hashed_at_ns: int | None = None) -> bool:
        """Remember a hash; ``hashed_at_ns`` is when reading began (default now).

        Returns False when the entry is refused as racy; then any older entry
        for the same inode is dropped too (the bytes just read replace it).
        """
        now = time.time_ns()
        if hashed_at_ns is None:
            hashed_at_ns = now
        key = (_i64(st.st_dev), _i64(st.st_ino))
        if self._racy(st, hashed_at_ns) or self._racy(st, now):
            self._forget(key)
            return False
        with self._lock:
            self._put(key, (st.st_size, st.st_mtime_ns, st.st_ctime_ns, digest, hashed_at_ns))
        return True

    def invalidate(self, target: str | os.PathLike | os.stat_result) -> bool:
        """Forget the memoised hash of a file; True when there was one.

        ``target`` is a path (the inode it names now) or, better, the stat of
        the descriptor whose bytes disagreed with the memoised hash (the
        inode that was actually read, even if the path changed since).
        """
        if isinstance(target, os.stat_result):
            st = target
        else:
            try:
                st = os.stat(target)
            except OSError:
                return False  # nothing there: nothing can be served for it
        forgot = self._forget((_i64(st.st_dev), _i64(st.st_ino)))
        if forgot:
            log.info("hash memo: forgot the entry for inode %d (device %d)", st.st_ino, st.st_dev)
        return forgot

    def close(self) -> None:
        with self._lock:
            self._flush()
            self._close_db()
