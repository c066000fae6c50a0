"""The Transport contract: every file operation the store performs on a node.

The store never touches the file system or paramiko directly; it is handed a
Transport. Paths are POSIX strings on the node. Errors follow Python's
built-in OSError family so the store can react the same way for every
transport:

- ``FileNotFoundError`` when a path is missing,
- ``NotADirectoryError`` from ``mkdir`` / ``open_write`` when a component of
  the path is a file (the message names it: "X is a file, not a directory"),
- ``FileExistsError`` from ``mkdir`` / ``open_write`` when it already exists,
- ``OSError`` with ``errno.EROFS`` ("Read-only file system") for a change on
  a read-only file system,
- ``OSError`` (errno set where the transport knows it, e.g. ENOSPC) for
  other file-level failures,
- :class:`prng_cache.errors.TransportError` when the connection itself is
  unusable (unreachable, host key refused, connection dropped).
"""

from __future__ import annotations

import contextlib

import stat as _stat
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import BinaryIO, ContextManager


@dataclass(frozen=True)
class FileInfo:
    """lstat() result: never follows symlinks."""

    mode: int  # full st_mode (type bits + permissions)
    uid: int
    size: int
    mtime: float
    # hard-link count where the transport can tell (None: unknown)
    nlink: int | None = None

    @property
    def is_dir(self) -> bool:
        return _stat.S_ISDIR(self.mode)

    @property
    def is_file(self) -> bool:
        return _stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return _stat.S_ISLNK(self.mode)

    @property
    def perms(self) -> int:
        return _stat.S_IMODE(self.mode)


@dataclass(frozen=True)
class DiskUsage:
    """statvfs() of a file system, in bytes."""

    total: int
    used: int
    free: int

    @property
    def used_percent(self) -> float:
        return 100.0 * self.used / self.total if self.total else 100.0


@dataclass(frozen=True)
class DirUpload:
    """A directory to create with small files in it, then rename (see
    :meth:`Transport.put_dirs`)."""

    tmp: str  # created exclusively
    files: tuple[tuple[str, bytes, int], ...]  # (name, bytes, mode), each created exclusively
    dst: str | None  # renamed to this once complete; None: left at tmp
    mode: int = 0o700


class Transport(ABC):
    """File operations on one node. Not thread-safe: one per node and thread."""

    #: label used in messages and reports (the node's hostname)
    host: str = "?"

    @abstractmethod
    def lstat(self, path: str) -> FileInfo | None:
        """Stat without following symlinks; None when the path is missing
        (a component of it being a file included)."""

    @abstractmethod
    def listdir_attr(self, path: str) -> dict[str, FileInfo]:
        """Names in a directory with their lstat info, in one round trip."""

    @abstractmethod
    def mkdir(self, path: str, mode: int = 0o700) -> None:
        """Create one directory; FileExistsError when the path exists."""

    @abstractmethod
    def read_bytes(self, path: str, max_bytes: int = 64 << 20) -> bytes:
        """Whole small file (manifests, lock owners). Refuses symlinks."""

    @abstractmethod
    def open_write(self, path: str, mode: int = 0o600) -> ContextManager[BinaryIO]:
        """Create a new file exclusively and yield a writable binary stream.

        FileExistsError when the path exists. The stream accepts large
        ``write()`` calls; the transport chunks them as it needs."""

    @abstractmethod
    def open_read(self, path: str) -> ContextManager[BinaryIO]:
        """Yield a readable binary stream (``read(n)``); refuses symlinks."""

    @abstractmethod
    def rename(self, src: str, dst: str) -> None:
        """Atomic POSIX rename. Replaces an existing file; fails with OSError
        when dst is a non-empty directory."""

    @abstractmethod
    def unlink(self, path: str) -> None: ...

    @abstractmethod
    def rmdir(self, path: str) -> None: ...

    @abstractmethod
    def chmod(self, path: str, mode: int) -> None: ...

    @abstractmethod
    def disk_usage(self, path: str) -> DiskUsage:
        """Size of the file system holding path (statvfs / df)."""

    @abstractmethod
    def uid(self) -> int:
        """Numeric uid the transport acts as on the node."""

    def now(self) -> float:
        """The node's idea of the current time (used to judge staleness of
        locks and temporary files by their mtime). Default: local clock."""
        import time

        return time.time()

    def close(self) -> None:
        """Release the connection. Idempotent."""

    def abort(self) -> None:
        """From another thread: make this transport's blocked I/O fail now
        (Ctrl-C). Default: nothing to abort (local copies check
        ``prng_cache.cancel`` between chunks)."""

    def __enter__(self) -> "Transport":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ batches
    def expect_batches(self) -> None:
        """Hint: batch operations (:meth:`put_dirs`, many listings) follow;
        a transport may get ready for them in the background."""

    def listdir_attr_large(self, path: str) -> dict[str, FileInfo]:
        """:meth:`listdir_attr` of a directory expected to hold many names;
        transports override it with a cheaper way to list many."""
        return self.listdir_attr(path)

    def survey(self, parent: str, paths: list[str], children: list[list[str]] | None = None
               ) -> tuple[dict[str, FileInfo], dict[str, dict[str, FileInfo] | OSError]]:
        """:meth:`listdir_attr_large` of ``parent`` and :meth:`listdirs_attr`
        of ``paths`` (directories in it); transports may do both at once.
        ``children`` (one list per path): the only children the caller will
        look at; a transport may then leave the others out of a listing."""
        return self.listdir_attr_large(parent), self.listdirs_attr(paths) if paths else {}

    def read_many(self, paths: list[str], max_bytes: int = 64 << 20) -> dict[str, bytes | None | OSError]:
        """:meth:`read_bytes` of many small files: path -> bytes, None when
        missing, or the OSError of reading it (connection failures still
        raise); transports override it to overlap the round trips."""
        out: dict[str, bytes | None | OSError] = {}
        for p in paths:
            try:
                out[p] = self.read_bytes(p, max_bytes)
            except FileNotFoundError:
                out[p] = None
            except OSError as exc:
                out[p] = exc
        return out

    def replace_files(self, items: list[tuple[str, str, bytes, int]]) -> None:
        """Per item ``(tmp, dst, data, mode)``: write ``data`` to the new file
        ``tmp`` (exactly ``mode``), then rename it over ``dst`` (atomic per
        file). Raises the first failure; a ``tmp`` left behind is removed.
        Transports override it to overlap the round trips."""
        for tmp, dst, data, mode in items:
            try:
                with self.open_write(tmp, mode) as f:
                    f.write(data)
                self.rename(tmp, dst)
            except BaseException:
                with contextlib.suppress(Exception):
                    self.unlink(tmp)
                raise

    def lstat_many(self, paths: list[str]) -> dict[str, FileInfo | None]:
        """:meth:`lstat` of many paths; transports override it to overlap
        the round trips."""
        return {p: self.lstat(p) for p in paths}

    def listdirs_attr(self, paths: list[str]) -> dict[str, dict[str, FileInfo] | OSError]:
        """``listdir_attr`` of many directories; a directory that cannot be
        listed maps to its OSError (a symlink to a directory may be followed
        or refused: callers judge each directory itself by its lstat). Transports override it to overlap the
        round trips; connection failures still raise."""
        out: dict[str, dict[str, FileInfo] | OSError] = {}
        for path in paths:
            try:
                out[path] = self.listdir_attr(path)
            except OSError as exc:
                out[path] = exc
        return out

    def put_dirs(self, items: list[DirUpload]) -> list[tuple[str, OSError] | None]:
        """Create each item's directory and files, rename it to ``dst`` once
        complete; per item None or (operation, OSError) of its first failure
        (operation "rename": the directory is complete at ``tmp``; otherwise
        it may be left half-made: the caller removes it).
        Transports override it to overlap the round trips; connection
        failures still raise."""
        out: list[tuple[str, OSError] | None] = []
        for item in items:
            what = "create"
            try:
                self.mkdir(item.tmp, item.mode)
                for name, data, mode in item.files:
                    with self.open_write(f"{item.tmp}/{name}", mode) as f:
                        f.write(data)
                if item.dst is not None:
                    what = "rename"
                    self.rename(item.tmp, item.dst)
                out.append(None)
            except OSError as exc:
                out.append((what, exc))
        return out

    # ------------------------------------------------------------ helpers
    def rmtree(self, path: str) -> None:
        """Remove a directory tree without following symlinks."""
        info = self.lstat(path)
        if info is None:
            return
        if not info.is_dir:
            self.unlink(path)
            return
        if not info.perms & 0o200:
            self.chmod(path, 0o700)
        for name, child in self.listdir_attr(path).items():
            p = f"{path}/{name}"
            if child.is_dir:
                self.rmtree(p)
            else:
                self.unlink(p)
        self.rmdir(path)
