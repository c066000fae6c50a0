"""Streaming xxh3-128 hashing with a stat-keyed memo.

The memo (like git's index and ccache's inode cache) maps a file's
(device, inode, size, mtime_ns, ctime_ns) to its hash so unchanged files are
never read again. ctime is what makes that safe: anyone can restore an mtime
(``touch -d``, ``cp -p``, ``rsync -t``, tar), but every content change sets
ctime to the current time. It lives in SQLite because several coordinator
processes may share it.
"""

from __future__ import annotations

import logging
import mmap
import os
import sqlite3
import stat as _stat
import threading
import time
from typing import BinaryIO, Callable, Iterable

import xxhash

from .errors import HashError

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # 1 MiB: bounded memory even for 1 GB JSON inputs
RACY_WINDOW = 2.0  # seconds; covers coarse file-system timestamp ticks
BUSY_TIMEOUT = 1.0  # seconds to wait for a memo DB locked by another process

Identity = tuple[int, int, int, int, int]
Opener = Callable[[str], BinaryIO]

# O_NONBLOCK: opening a FIFO (or a tty-like device) must never block;
# O_NOCTTY: a terminal must not become our controlling terminal.
_OPEN_FLAGS = (os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0)
               | getattr(os, "O_CLOEXEC", 0))


class ReadStats:
    """Process-wide counters so tests can prove a memo hit reads nothing."""

    def __init__(self) -> None:
        self.opens = 0
        self.bytes = 0

    def reset(self) -> None:
        self.opens = self.bytes = 0


stats = ReadStats()


class Hasher:
    """Incremental hash; the one place the algorithm is named."""

    __slots__ = ("_h",)

    def __init__(self, data: bytes = b"") -> None:
        self._h = xxhash.xxh3_128(data)

    def update(self, data: bytes | bytearray | memoryview) -> None:
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


def file_identity(st: os.stat_result) -> Identity:
    """What proves a file is unchanged: (dev, ino, size, mtime_ns, ctime_ns).

    Compare the identity of a stat taken before reading with one taken after
    (``os.fstat`` of the same descriptor): any write, truncation or
    ``utime`` in between changes ctime.
    """
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _kind(mode: int) -> str:
    for test, name in ((_stat.S_ISFIFO, "FIFO"), (_stat.S_ISDIR, "directory"),
                       (_stat.S_ISCHR, "character device"), (_stat.S_ISBLK, "block device"),
                       (_stat.S_ISSOCK, "socket"), (_stat.S_ISLNK, "symbolic link")):
        if test(mode):
            return name
    return f"file type {_stat.S_IFMT(mode):#o}"


def _check_regular(path: str, st: os.stat_result) -> None:
    if not _stat.S_ISREG(st.st_mode):
        raise HashError(path, f"not a regular file ({_kind(st.st_mode)})")


def open_regular(path: str | os.PathLike) -> tuple[BinaryIO, os.stat_result]:
    """Open a regular file for reading; return it (unbuffered) and its fstat.

    Never blocks: a FIFO or device at ``path`` (even one swapped in after any
    earlier check) raises :class:`HashError` instead of hanging in ``open``.
    The decisive check is ``fstat`` of the opened descriptor, so a swap
    between a ``stat`` and the open cannot smuggle a FIFO in. Symlinks are
    followed: a link to a regular file is the users' data and is opened.
    """
    p = os.fspath(path)
    try:
        # Not opened at all when it is not a regular file now: opening some
        # devices has side effects (a tape rewinds, a modem hangs up).
        _check_regular(p, os.stat(p))
        fd = os.open(p, _OPEN_FLAGS)
    except OSError as e:
        raise HashError(p, e.strerror or str(e)) from e
    try:
        st = os.fstat(fd)
        _check_regular(p, st)
        os.set_blocking(fd, True)  # no effect on regular files' reads, but be exact
        return os.fdopen(fd, "rb", buffering=0), st
    except OSError as e:
        os.close(fd)
        raise HashError(p, e.strerror or str(e)) from e
    except BaseException:
        os.close(fd)
        raise


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
            if self._db is not None:
                try:
                    with self._db:
                        self._db.execute(f"DELETE FROM {_TABLE} WHERE dev=? AND ino=?", key)
                except sqlite3.Error as e:
                    self._failed(e, "write")  # a rebuilt or dropped memo has no entry either
            return True

    # ------------------------------------------------------------ API
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


def _open_for_hash(path: str, opener: Opener | None) -> tuple[BinaryIO, os.stat_result]:
    if opener is None:
        return open_regular(path)
    try:
        f = opener(path)
    except OSError as e:
        raise HashError(path, e.strerror or str(e)) from e
    try:
        st = os.fstat(f.fileno())
        _check_regular(path, st)
    except OSError as e:
        f.close()
        raise HashError(path, e.strerror or str(e)) from e
    except BaseException:
        f.close()
        raise
    return f, st


# Read buffers. The page-cache copy in read(2) is the cost that bounds hashing
# (xxh3 itself runs several times faster than the copy), and its speed depends
# on where the destination lies within a page: on the AMD EPYC VM the
# benchmarks ran on, a destination 8 or 16 bytes past a page boundary (16 is
# where glibc puts the first 1 MiB ``bytearray`` of a process) copied at 1/5
# and 1/2 the speed of a page-aligned one; any offset from 32 up was as fast
# (benchmarks/bench_hashing.py, read_page_off16). An anonymous private
# mapping is page-aligned by definition; a few are kept for reuse so a small
# file costs no mmap, page faults or zero-fill of a fresh megabyte. Only the
# n bytes just read are hashed, never what a previous file left in a buffer.
_POOL_MAX = 4  # buffers kept between calls (one per concurrent hasher)
# list.pop and list.append are atomic, so threads never share a buffer; no
# lock, so a fork can never inherit one held.
_pool: list[mmap.mmap | bytearray] = []


def borrow_buffer() -> mmap.mmap | bytearray:
    """A CHUNK-sized, page-aligned read buffer (a reused one when available)."""
    try:
        return _pool.pop()
    except IndexError:
        pass
    try:
        return mmap.mmap(-1, CHUNK, flags=mmap.MAP_PRIVATE,
                         prot=mmap.PROT_READ | mmap.PROT_WRITE)
    except (OSError, ValueError, AttributeError):  # no mmap here: any buffer will do
        return bytearray(CHUNK)


def return_buffer(buf: mmap.mmap | bytearray) -> None:
    _pool.append(buf)
    while len(_pool) > _POOL_MAX:  # every buffer in the pool is free: drop any
        try:
            extra = _pool.pop()
        except IndexError:
            break
        if isinstance(extra, mmap.mmap):
            try:
                extra.close()
            except BufferError:  # a view still alive (in a traceback): the GC unmaps it
                pass


def _sequential(f: BinaryIO) -> None:
    """Tell the kernel the whole file is read once, in order: a larger
    read-ahead window for a cold file (no effect on one already cached)."""
    try:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
    except (AttributeError, OSError, ValueError):  # not Linux, or not a plain file descriptor
        pass


def hash_and_stat(
    path: str, memo: HashMemo | None = None, *, opener: Opener | None = None
) -> tuple[str, os.stat_result]:
    """Hash ``path``; also return the stat the hash belongs to (for its size).

    Raises :class:`HashError` when the file is missing, unreadable, not a
    regular file (never blocks on a FIFO) or changes while being hashed.
    """
    try:
        st = os.stat(path)  # fresh every call: the memo is keyed on it
    except OSError as e:
        raise HashError(path, e.strerror or str(e)) from e
    _check_regular(path, st)
    if memo is not None:
        hit = memo.lookup(st)
        if hit is not None:
            return hit, st
    started = time.time_ns()
    h = Hasher()
    f, opened = _open_for_hash(path, opener)
    stats.opens += 1
    # a plain buffer, not borrow_buffer(): measured, hashing into the pooled
    # mappings made the upload that follows a cold stage's hash 30 % slower
    # (1 GiB: 230 against 320 MB/s; benchmarks/bench_ssh_staging.py), and
    # hashing is bounded by the disk there anyway
    buf = bytearray(CHUNK)
    view, size = memoryview(buf), len(buf)
    total = 0
    try:
        with f:
            _sequential(f)
            readinto, update = f.readinto, h.update  # no attribute look-ups per chunk
            while n := readinto(buf):
                total += n
                update(view if n == size else view[:n])
            after = os.fstat(f.fileno())
    except OSError as e:
        raise HashError(path, e.strerror or str(e)) from e
    finally:
        stats.bytes += total
        view.release()
    # `opened` catches a replacement between stat() and open(), `after` a
    # change while reading; a short read catches a size the stat lied about.
    ident = file_identity(st)
    if file_identity(opened) != ident or file_identity(after) != ident or total != st.st_size:
        if memo is not None:
            memo.invalidate(st)
        raise HashError(path, "changed while being hashed")
    digest = h.hexdigest()
    if memo is not None:
        memo.store(st, digest, started)
    return digest, st


def hash_file(path: str, memo: HashMemo | None = None, *, opener: Opener | None = None) -> str:
    """xxh3-128 hex digest (32 lowercase hex chars) of a file's content."""
    return hash_and_stat(path, memo, opener=opener)[0]
