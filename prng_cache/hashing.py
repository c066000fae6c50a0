"""Streaming xxh3-128 hashing: regular files only, opened so a FIFO never
blocks, checked unchanged while read. The stat-keyed memo that spares
unchanged files a read is :mod:`prng_cache.memo`.
"""

from __future__ import annotations

import logging
import mmap
import os
import stat as _stat
import time
from typing import BinaryIO, Callable, Iterable

import xxhash

from .errors import HashError
from .memo import HashMemo

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # 1 MiB: bounded memory even for 1 GB JSON inputs

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
    path: str, memo: HashMemo | None = None, *, opener: Opener | None = None,
    st: os.stat_result | None = None,
) -> tuple[str, os.stat_result]:
    """Hash ``path``; also return the stat the hash belongs to (for its size).
    ``st``: a stat of ``path`` the caller took just before (else one is taken).

    Raises :class:`HashError` when the file is missing, unreadable, not a
    regular file (never blocks on a FIFO) or changes while being hashed.
    """
    if st is None:
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
