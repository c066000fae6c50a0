"""Failures of SFTP operations as the Transport contract's exceptions.

FileNotFoundError, FileExistsError, PermissionError, OSError (``errno.ENOSPC``
when a write fails and the file system has no room left); connection
problems raise ``TransportError`` (the connection is then dropped, and the
next operation reconnects). SFTP v3 says little (OpenSSH answers EROFS with
a bare "Failure", ENOTDIR with "No such file", EEXIST with "Failure"), so
after such an answer the node is asked: the ST_RDONLY flag of
``statvfs@openssh.com`` gives ``errno.EROFS`` "Read-only file system", an
lstat of the ancestors gives ``NotADirectoryError`` "X is a file, not a
directory", an lstat of the path ``FileExistsError``.
"""

from __future__ import annotations

import contextlib
import errno
import posixpath
import socket
import stat
from typing import Iterator

import paramiko

from ...errors import PrngCacheError, TransportError
from . import streams

#: statvfs@openssh.com: index of f_flag, and its read-only bit
_STATVFS_FLAG = 9
_ST_RDONLY = 0x1
#: operations that change the file system (a bare SFTP "Failure" of one of
#: them on a read-only file system is reported as EROFS)
_MUTATING = frozenset({"mkdir", "create", "rename", "unlink", "rmdir", "chmod", "write"})
_CONN_ERRNOS = {
    errno.EPIPE,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.ECONNREFUSED,
    errno.ENOTCONN,
    errno.ETIMEDOUT,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ESHUTDOWN,
}


def kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "a file"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


class FailureTranslation:
    """Mixin of :class:`~.operations.SSHTransport`: needs ``host``,
    ``_session()``, ``_alive()``, ``_drop()``, ``lstat()`` and the
    ``_statvfs_ext`` flag (None: not tried, False: unsupported)."""

    host: str
    _statvfs_ext: bool | None

    @contextlib.contextmanager
    def _op(self, what: str, path: str, path2: str | None = None, *, creates: bool = False) -> Iterator[None]:
        """Run an SFTP operation; its failure becomes the contract exception
        (``creates``: a bare failure of a create may be "it exists")."""
        try:
            yield
        except Exception as e:
            if creates:
                raise self._exists_error(e, what, path) from e
            raise self._error(e, what, path, path2) from e

    def _is_connection_error(self, e: BaseException) -> bool:
        if isinstance(
            e,
            (paramiko.SSHException, paramiko.SFTPError, EOFError, ConnectionError, socket.timeout, TimeoutError),
        ):
            return True
        if isinstance(e, OSError) and e.errno in _CONN_ERRNOS:
            return True
        return not self._alive()

    def _error(
        self, e: BaseException, what: str, path: str, path2: str | None = None, *, refine: bool = True
    ) -> BaseException:
        """The contract exception for a failure of ``what`` on ``path``.

        SFTP v3 has few status codes: OpenSSH answers EROFS (and most other
        errors) with a bare "Failure" and ENOTDIR with "No such file". With
        ``refine`` the node is asked what really happened (see
        :meth:`_refine`)."""
        if isinstance(e, PrngCacheError):
            return e
        if self._is_connection_error(e):
            self._drop()
            return TransportError(
                self.host, f"connection lost during {what} {path}: {e or type(e).__name__}"
            )
        if isinstance(e, OSError):
            text = e.strerror if e.errno else (str(e) or "Failure")
            if e.errno:
                err = OSError(e.errno, f"{what} failed on {self.host}: {text}", path, None, path2)
            else:
                err = OSError(f"{what} {path}{' -> ' + path2 if path2 else ''} failed on {self.host}: {text}")
            return self._refine(err, what, path, path2) if refine else err
        return e

    def _exists_error(self, e: BaseException, what: str, path: str) -> BaseException:
        """After a generic SFTP failure of a create: FileExistsError if the
        path is there (OpenSSH reports EEXIST as a bare "Failure")."""
        err = self._error(e, what, path, refine=False)
        if type(err) is OSError and err.errno is None:
            with contextlib.suppress(Exception):
                if self.lstat(path) is not None:
                    return FileExistsError(errno.EEXIST, f"{what} failed on {self.host}: File exists", path)
        return self._refine(err, what, path) if isinstance(err, OSError) else err

    def _refine(self, err: OSError, what: str, path: str, path2: str | None = None) -> OSError:
        """Turn a vague SFTP error into what happened, asking the node.

        - a bare "Failure" of a change on a read-only file system (the
          statvfs@openssh.com flags say ST_RDONLY): EROFS;
        - "No such file" because a component of the path is a file (or
          another non-directory): ENOTDIR naming that component.
        Best effort: when the node cannot tell, ``err`` is returned as is."""
        try:
            if err.errno is None and what in _MUTATING:
                for p in dict.fromkeys(x for x in (path, path2) if x):
                    flags = self._statvfs_flags(p)
                    if flags is not None and flags & _ST_RDONLY:
                        return OSError(
                            errno.EROFS, f"{what} failed on {self.host}: Read-only file system", path, None, path2
                        )
            elif err.errno == errno.ENOENT and what != "lstat":
                for p in dict.fromkeys(x for x in (path2, path) if x):
                    culprit = self._non_directory_ancestor(p)
                    if culprit is not None:
                        where, what_it_is = culprit
                        return NotADirectoryError(
                            errno.ENOTDIR,
                            f"{what} failed on {self.host}: {where} is {what_it_is}, not a directory",
                            path, None, path2,
                        )
        except PrngCacheError:
            pass  # the connection went away meanwhile: report the original error
        return err

    def _raw_statvfs(self, path: str) -> list[int]:
        return streams.statvfs(self._session(), path)

    def _lost(self, e: BaseException, what: str, path: str) -> TransportError:
        self._drop()
        return TransportError(self.host, f"connection lost during {what} {path}: {e}")

    def _statvfs_flags(self, path: str) -> int | None:
        """f_flag of the file system holding ``path`` (or its nearest
        existing ancestor); None when the server cannot tell."""
        if self._statvfs_ext is False:
            return None
        p = path
        for _ in range(64):
            try:
                return self._raw_statvfs(p)[_STATVFS_FLAG]
            except FileNotFoundError:
                parent = posixpath.dirname(p.rstrip("/")) or ("/" if p.startswith("/") else ".")
                if parent == p:
                    return None
                p = parent
            except Exception as e:  # unsupported, or an odd answer: cannot tell
                if not isinstance(e, paramiko.SFTPError) and self._is_connection_error(e):
                    raise self._lost(e, "statvfs", p) from e
                return None
        return None

    def _non_directory_ancestor(self, path: str) -> tuple[str, str] | None:
        """(ancestor, what it is) for the nearest existing ancestor of
        ``path`` when that is not a directory (following symlinks)."""
        sftp = self._session()
        p = path.rstrip("/")
        for _ in range(64):
            parent = posixpath.dirname(p)
            if not parent or parent == p:
                return None
            p = parent
            try:
                st = sftp.lstat(p)
            except FileNotFoundError:
                continue  # missing too (or below a non-directory): look further up
            except Exception as e:
                if not isinstance(e, paramiko.SFTPError) and self._is_connection_error(e):
                    raise self._lost(e, "lstat", p) from e
                return None
            mode = st.st_mode or 0
            if stat.S_ISDIR(mode):
                return None
            if stat.S_ISLNK(mode):
                try:
                    target = sftp.stat(p).st_mode or 0
                except FileNotFoundError:
                    return p, "a symbolic link to nothing"
                except Exception:
                    return None
                if stat.S_ISDIR(target):
                    return None
                return p, f"a symbolic link to {kind(target)}"
            return p, kind(mode)
        return None
