"""Pipelined SFTP streams: with :mod:`.batch` (requests across many files),
the only module that touches paramiko's private SFTP API
(``SFTPClient._request``, ``_async_request``, ``_read_response``,
``_convert_status`` and the ``_async_response`` callback they make).

paramiko's public ``SFTPFile`` waits for every write's status before it
sends the next unless ``set_pipelined`` is on, and then it checks statuses
only on close, one at a time; its read-ahead (``prefetch``) reads the whole
file. Here writes of 255 KiB are pipelined with every status checked (at the
latest on close), reads have a bounded read-ahead of 255 KiB requests, and
the streams register as the owners of their requests, so other operations
(or a second stream) may be used while a stream is open.

The private API has been stable since paramiko 1.x; ``pyproject.toml``
bounds paramiko to the majors it was checked against, and importing this
module fails at once, naming what is missing, if a paramiko lacks it
(``tests/test_dependencies.py`` checks the same).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import inspect
import io
import posixpath

import paramiko
from paramiko.sftp import (
    CMD_CLOSE,
    CMD_DATA,
    CMD_EXTENDED,
    CMD_EXTENDED_REPLY,
    CMD_FSETSTAT,
    CMD_HANDLE,
    CMD_OPEN,
    CMD_READ,
    CMD_STATUS,
    CMD_WRITE,
    int64,
)
from paramiko.sftp_attr import SFTPAttributes

from ...errors import TransportError

#: SFTP read/write request size: OpenSSH's sftp-server accepts messages of up
#: to 256 KiB, which leaves room for the request header.
CHUNK_SIZE = 255 * 1024
#: outstanding pipelined write requests before we wait for the oldest status
WRITE_DEPTH = 32
#: outstanding read-ahead requests of an open_read/read_bytes stream
READ_DEPTH = 16
#: statvfs@openssh.com answers with this many uint64 fields
_STATVFS_FIELDS = 11

#: the private SFTPClient methods used here, with their parameters ("*": varargs)
PRIVATE_API = {
    "_request": ("self", "t", "*"),
    "_async_request": ("self", "fileobj", "t", "*"),
    "_read_response": ("self", "waitfor"),
    "_convert_status": ("self", "msg"),
}


def private_api_problems(cls=paramiko.SFTPClient) -> list[str]:
    """What this module needs from ``cls`` and does not find (empty: all there)."""
    problems = []
    for name, params in PRIVATE_API.items():
        fn = getattr(cls, name, None)
        if not callable(fn):
            problems.append(f"SFTPClient.{name} is missing")
            continue
        have = tuple(
            "*" if p.kind is p.VAR_POSITIONAL else p.name for p in inspect.signature(fn).parameters.values()
        )
        if have != params:
            problems.append(f"SFTPClient.{name}({', '.join(have)}) is not {name}({', '.join(params)})")
    # Answers to other owners' requests are handed to their _async_response.
    # Asked of the compiled code, not its source: inspect.getsource tokenizes
    # all of sftp_client.py (~3 ms of every start) and fails in frozen builds.
    code = getattr(getattr(cls, "_read_response", None), "__code__", None)
    if code is not None and "_async_response" not in code.co_names:
        problems.append("SFTPClient._read_response no longer calls fileobj._async_response")
    return problems


_problems = private_api_problems()
if _problems:
    raise ImportError(
        f"paramiko {paramiko.__version__} changed the private SFTP API prng-cache's pipelined "
        f"streams use ({'; '.join(_problems)}); install a paramiko within the bounds in pyproject.toml"
    )


# ------------------------------------------------------ single requests
def open_handle(sftp: paramiko.SFTPClient, path: str, flags: int, mode: int | None = None) -> bytes:
    """SSH_FXP_OPEN ``path`` with SFTP ``flags`` (and ``mode`` for a create);
    the handle. paramiko's own open() would wrap it in an SFTPFile."""
    attrs = SFTPAttributes()
    if mode is not None:
        attrs.st_mode = mode
    t, msg = sftp._request(CMD_OPEN, path, flags, attrs)
    if t != CMD_HANDLE:
        raise paramiko.SFTPError("Expected handle")
    return msg.get_binary()


def statvfs(sftp: paramiko.SFTPClient, path: str) -> list[int]:
    """The ``statvfs@openssh.com`` extension (paramiko has no call for it):
    bsize, frsize, blocks, bfree, bavail, files, ffree, favail, fsid, flag, namemax."""
    t, msg = sftp._request(CMD_EXTENDED, "statvfs@openssh.com", path)
    if t != CMD_EXTENDED_REPLY:
        raise paramiko.SFTPError("Expected extended reply")
    return [msg.get_int64() for _ in range(_STATVFS_FIELDS)]


# ------------------------------------------------------------- streams
class _Pipelined(io.RawIOBase):
    """Base of the SFTP streams: requests are sent without waiting, and the
    stream registers itself as their owner with paramiko, so an answer that
    arrives while another request (another stream, an lstat...) is waited
    for is handed to :meth:`_async_response` and kept, not dropped.

    ``owner`` is the SSHTransport: it turns failures into the Transport
    contract's exceptions (``_error``, ``_refine``, ``_is_connection_error``)
    and tells whether ``sftp`` is still its live session."""

    def __init__(self, owner, sftp: paramiko.SFTPClient, handle: bytes, path: str):
        super().__init__()
        self._owner, self._sftp, self._handle, self._path = owner, sftp, handle, path
        self._early: dict[int, tuple[int, paramiko.Message]] = {}
        self._ignore: set[int] = set()
        self._finished = False

    def _send_request(self, t: int, *args) -> int:
        return self._sftp._async_request(self, t, *args)

    # called by paramiko (SFTPClient._read_response) for our requests
    def _async_response(self, t, msg, num) -> None:
        if num in self._ignore:
            self._ignore.discard(num)
        else:
            self._early[num] = (t, msg)

    def _response(self, num: int):
        """(type, msg) answering request ``num``; IOError for an error status,
        EOFError for an end-of-file status."""
        if num in self._early:
            t, msg = self._early.pop(num)
            if t == CMD_STATUS:
                self._sftp._convert_status(msg)
            return t, msg
        return self._sftp._read_response(num)

    def _forget(self, nums) -> None:
        """We no longer want these answers (they may still be in flight)."""
        for num in nums:
            if self._early.pop(num, None) is None:
                self._ignore.add(num)

    def _usable(self) -> bool:
        return self._owner._alive() and self._sftp is self._owner._sftp


class SFTPWriter(_Pipelined):
    """Write stream on an SFTP handle: CHUNK_SIZE requests, pipelined; every
    status is collected (at the latest in close()) so no failure is lost."""

    def __init__(self, owner, sftp: paramiko.SFTPClient, handle: bytes, path: str):
        super().__init__(owner, sftp, handle, path)
        self._buf = bytearray()
        self._offset = 0
        # (request number, bytes, what) of requests whose status is not read yet
        self._pending: collections.deque[tuple[int, int, str]] = collections.deque()
        self._failed: BaseException | None = None

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._offset + len(self._buf)

    def fchmod(self, mode: int) -> None:
        attrs = SFTPAttributes()
        attrs.st_mode = mode
        self._call(lambda: self._pending.append(
            (self._send_request(CMD_FSETSTAT, self._handle, attrs), 0, "chmod")
        ))

    def write(self, data) -> int:
        if self.closed:
            raise ValueError("write to closed file")
        if self._failed is not None:
            raise self._failed
        mv = memoryview(data).cast("B")
        n = len(mv)
        pos = 0
        if self._buf:
            take = min(n, CHUNK_SIZE - len(self._buf))
            self._buf += mv[:take]
            pos = take
            if len(self._buf) == CHUNK_SIZE:
                self._send_buffered()
        # views, not copies: the request is serialised before _send returns
        while n - pos >= CHUNK_SIZE:
            self._send(mv[pos:pos + CHUNK_SIZE])
            pos += CHUNK_SIZE
        if pos < n:
            self._buf += mv[pos:]
        return n

    def _send_buffered(self) -> None:
        with memoryview(self._buf) as view:
            self._send(view)
        self._buf.clear()

    def flush(self) -> None:
        if self._buf and not self.closed and self._failed is None:
            self._send_buffered()

    def _call(self, fn):
        try:
            return fn()
        except Exception as e:
            self._failed = self._owner._error(e, "write", self._path)
            raise self._failed from e

    def _send(self, chunk: bytes | memoryview) -> None:
        def go():
            num = self._send_request(CMD_WRITE, self._handle, int64(self._offset), chunk)
            self._pending.append((num, len(chunk), "write"))
            self._offset += len(chunk)
            chan = self._sftp.get_channel()
            while self._pending and self._failed is None and (
                self._pending[0][0] in self._early or chan.recv_ready()
            ):
                self._collect_one()
            while len(self._pending) > WRITE_DEPTH and self._failed is None:
                self._collect_one()
        self._call(go)
        if self._failed is not None:
            raise self._failed

    def _collect_one(self) -> None:
        num, nbytes, what = self._pending.popleft()
        try:
            self._response(num)
        except OSError as e:
            if self._owner._is_connection_error(e):
                raise
            # the server refused a request: keep the session in step, then
            # report (ENOSPC when a write failed for lack of room)
            self._drain_quietly()
            if what == "write":
                self._failed = self._write_error(e, nbytes)
            else:
                self._failed = self._owner._error(e, what, self._path)

    def _collect_all(self) -> None:
        while self._pending and self._failed is None:
            self._collect_one()

    def _drain_quietly(self) -> None:
        while self._pending:
            num = self._pending.popleft()[0]
            try:
                self._response(num)
            except OSError as e:
                if self._owner._is_connection_error(e):
                    raise

    def _write_error(self, e: OSError, nbytes: int) -> OSError:
        if e.errno:
            return self._owner._error(e, "write", self._path)  # type: ignore[return-value]
        text = str(e) or "Failure"
        try:
            du = self._owner.disk_usage(posixpath.dirname(self._path) or "/")
        except Exception:  # the report is about the write, not this probe
            du = None
        if du is not None and du.free < max(nbytes, 1 << 20):
            return OSError(
                errno.ENOSPC,
                f"write failed on {self._owner.host}: No space left on device "
                f"({du.free} bytes free of {du.total}; server said {text!r})",
                self._path,
            )
        # a read-only file system, say so (the pipeline is drained: the
        # session is free for the question)
        return self._owner._refine(
            OSError(f"write {self._path} failed on {self._owner.host}: {text}"), "write", self._path
        )

    def close(self) -> None:
        """Send what is buffered, check every request's status, close the handle."""
        if self._finished:
            return
        try:
            if self._failed is None:
                self.flush()
                self._call(self._collect_all)
        finally:
            self._finished = True
            self._close_handle()
            super().close()
        if self._failed is not None:
            raise self._failed

    def _close_handle(self) -> None:
        if not self._usable():
            return
        try:
            self._drain_quietly()
            self._sftp._request(CMD_CLOSE, self._handle)
        except Exception as e:
            err = self._owner._error(e, "close", self._path)
            if self._failed is None:
                self._failed = err

    def abort(self) -> None:
        """Close without reporting errors (the caller is already failing)."""
        if self._finished:
            return
        self._finished = True
        with contextlib.suppress(Exception):
            self._close_handle()
        with contextlib.suppress(Exception):
            super().close()

    def __del__(self):
        with contextlib.suppress(Exception):
            self.abort()


class SFTPReader(_Pipelined):
    """Sequential read stream on an SFTP handle with a bounded read-ahead
    of READ_DEPTH requests of CHUNK_SIZE bytes."""

    def __init__(
        self,
        owner,
        sftp: paramiko.SFTPClient,
        handle: bytes,
        path: str,
        size_hint: int = 0,
        limit: int | None = None,
    ):
        super().__init__(owner, sftp, handle, path)
        self._limit = limit  # never read past this offset
        self._hint = size_hint  # read ahead up to here (and one request more)
        self._next = 0  # offset of the next request to send
        self._pending: collections.deque[tuple[int, int, int]] = collections.deque()
        self._chunk = memoryview(b"")
        self._eof = False

    def readable(self) -> bool:
        return True

    def _fill(self) -> None:
        while len(self._pending) < READ_DEPTH and self._next <= self._hint:
            length = CHUNK_SIZE
            if self._limit is not None:
                length = min(length, self._limit - self._next)
                if length <= 0:
                    break
            num = self._send_request(CMD_READ, self._handle, int64(self._next), length)
            self._pending.append((num, self._next, length))
            self._next += length

    def _cancel(self) -> None:
        self._forget([p[0] for p in self._pending])
        self._pending.clear()

    def _next_chunk(self) -> bool:
        self._fill()
        if not self._pending:
            self._eof = True
            return False
        num, off, length = self._pending.popleft()
        try:
            t, msg = self._response(num)
        except EOFError:  # SFTP status EOF (connection loss is an SSHException)
            self._eof = True
            self._cancel()
            return False
        if t != CMD_DATA:
            raise paramiko.SFTPError("Expected data")
        data = msg.get_string()
        if not data:
            self._eof = True
            self._cancel()
            return False
        end = off + len(data)
        self._hint = max(self._hint, end)
        if len(data) < length:  # short read: re-request from where it ended
            self._cancel()
            self._next = end
        self._chunk = memoryview(data)
        return True

    def _more(self) -> bool:
        try:
            return not self._eof and self._next_chunk()
        except Exception as e:
            raise self._owner._error(e, "read", self._path) from e

    def readinto(self, b) -> int:
        if self.closed:
            raise ValueError("read from closed file")
        if not self._chunk and not self._more():
            return 0
        n = min(len(b), len(self._chunk))
        b[:n] = self._chunk[:n]
        self._chunk = self._chunk[n:]
        return n

    def readall(self) -> bytes:
        parts = []
        while self._chunk or self._more():
            parts.append(bytes(self._chunk))
            self._chunk = memoryview(b"")
        return b"".join(parts)

    def close(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._cancel()
        self._early.clear()
        try:
            if self._usable():
                # also collects the answers to read-ahead we did not use
                self._sftp._request(CMD_CLOSE, self._handle)
        except Exception as e:
            err = self._owner._error(e, "close", self._path)
            if isinstance(err, TransportError):
                raise err from e
        finally:
            super().close()

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()
