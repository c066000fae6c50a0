"""Transport for the coordinator's own machine (and for tests on a tmpfs)."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from typing import BinaryIO, Iterator

from .base import DiskUsage, FileInfo, Transport

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _info(st: os.stat_result) -> FileInfo:
    return FileInfo(mode=st.st_mode, uid=st.st_uid, size=st.st_size, mtime=st.st_mtime, nlink=st.st_nlink)


def _not_a_directory(path: str, exc: NotADirectoryError) -> NotADirectoryError:
    """ENOTDIR naming the ancestor of ``path`` that is not a directory
    (as the SSH transport reports it)."""
    p = path.rstrip("/")
    while True:
        parent = os.path.dirname(p)
        if not parent or parent == p:
            return exc
        p = parent
        try:
            st = os.stat(p)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:
            return exc
        if stat.S_ISDIR(st.st_mode):
            return exc
        kind = "a file" if stat.S_ISREG(st.st_mode) else "not a directory"
        if os.path.islink(p):
            kind = f"a symbolic link to {kind}"
        return NotADirectoryError(errno.ENOTDIR, f"{p} is {kind}, not a directory", path)


class LocalTransport(Transport):
    def __init__(self, host: str | None = None):
        self.host = host or socket.gethostname()

    def lstat(self, path: str) -> FileInfo | None:
        try:
            return _info(os.lstat(path))
        except (FileNotFoundError, NotADirectoryError):  # below a file: not there either
            return None

    def listdir_attr(self, path: str) -> dict[str, FileInfo]:
        out: dict[str, FileInfo] = {}
        with os.scandir(path) as it:
            for e in it:
                try:
                    out[e.name] = _info(e.stat(follow_symlinks=False))
                except FileNotFoundError:  # removed while listing
                    continue
        return out

    def mkdir(self, path: str, mode: int = 0o700) -> None:
        try:
            os.mkdir(path, mode)
        except NotADirectoryError as e:
            raise _not_a_directory(path, e) from None
        os.chmod(path, mode)  # umask must not widen or narrow what we asked

    def read_bytes(self, path: str, max_bytes: int = 64 << 20) -> bytes:
        # O_NONBLOCK: a FIFO planted there must not block the open; only a
        # regular file is read
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | os.O_NONBLOCK)
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(mode):
                raise IsADirectoryError(errno.EISDIR, "cannot read a directory", path)
            if not stat.S_ISREG(mode):
                raise OSError(errno.EINVAL, "refusing to read a non-regular file", path)
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        with os.fdopen(fd, "rb") as f:
            return f.read(max_bytes)

    @contextlib.contextmanager
    def open_write(self, path: str, mode: int = 0o600) -> Iterator[BinaryIO]:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, mode)
        except NotADirectoryError as e:
            raise _not_a_directory(path, e) from None
        os.fchmod(fd, mode)  # exactly the mode asked for, whatever the umask
        with os.fdopen(fd, "wb", buffering=0) as f:
            yield f  # type: ignore[misc]

    @contextlib.contextmanager
    def open_read(self, path: str) -> Iterator[BinaryIO]:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            yield f

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def rmdir(self, path: str) -> None:
        os.rmdir(path)

    def chmod(self, path: str, mode: int) -> None:
        # Linux has no lchmod; the store lstat()s before it chmods.
        os.chmod(path, mode)

    def disk_usage(self, path: str) -> DiskUsage:
        st = os.statvfs(path)
        total = st.f_blocks * st.f_frsize
        free = st.f_bavail * st.f_frsize
        return DiskUsage(total=total, used=total - st.f_bfree * st.f_frsize, free=free)

    def uid(self) -> int:
        return os.geteuid()
