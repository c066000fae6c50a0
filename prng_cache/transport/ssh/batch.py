"""Many small SFTP operations in flight at once, across files and directories.

One SFTP request costs a round trip; done one after another, listing 5000
entry directories or publishing 5000 small bundles is mostly waiting. Here
every request is sent without waiting, its answer handled by a callback
that may send the next request of that chain (OPENDIR -> READDIR -> CLOSE,
MKDIR + OPEN -> WRITE -> CLOSE -> RENAME), with at most ``DEPTH`` requests
outstanding. Like :mod:`.streams` this uses paramiko's private SFTP API
(``_async_request``, ``_read_response``, ``_convert_status``, checked there
at import); the :class:`Pipeline` registers as the owner of its requests,
so other users of the session are not confused by its answers.

Failures are collected per item as raw exceptions and translated into the
Transport contract by the caller once nothing is in flight (translating may
ask the node questions over the same session).
"""

from __future__ import annotations

import collections
from typing import Callable, Iterable, Iterator

import paramiko
from paramiko.sftp import (
    CMD_ATTRS,
    CMD_CLOSE,
    CMD_DATA,
    CMD_EXTENDED,
    CMD_FSETSTAT,
    CMD_HANDLE,
    CMD_LSTAT,
    CMD_MKDIR,
    CMD_NAME,
    CMD_OPEN,
    CMD_OPENDIR,
    CMD_READ,
    CMD_READDIR,
    CMD_STATUS,
    CMD_WRITE,
    SFTP_FLAG_CREATE,
    SFTP_FLAG_EXCL,
    SFTP_FLAG_READ,
    SFTP_FLAG_WRITE,
    int64,
)
from paramiko.sftp_attr import SFTPAttributes

from .streams import CHUNK_SIZE

#: outstanding requests at most (answers are small; this bounds memory and
#: keeps the server's queue short)
DEPTH = 256

Answer = Callable[[int, paramiko.Message], None]


class Pipeline:
    """Requests in flight on one SFTP session; answers dispatched to callbacks."""

    def __init__(self, sftp: paramiko.SFTPClient):
        self._sftp = sftp
        self._waiting: dict[int, Answer] = {}
        self._arrived: collections.deque = collections.deque()

    def send(self, t: int, *args, then: Answer) -> None:
        num = self._sftp._async_request(self, t, *args)
        self._waiting[num] = then

    # called by paramiko (SFTPClient._read_response) for our requests
    def _async_response(self, t, msg, num) -> None:
        self._arrived.append((num, t, msg))

    @property
    def in_flight(self) -> int:
        return len(self._waiting)

    def pump(self) -> None:
        """Wait for one more answer, then run the callbacks of all that arrived."""
        if not self._arrived:
            self._sftp._read_response(None)
        while self._arrived:
            num, t, msg = self._arrived.popleft()
            then = self._waiting.pop(num, None)
            if then is not None:
                then(t, msg)

    def run(self, starts: Iterable[Callable[[], None]]) -> None:
        """Start each chain when there is room; return when all have ended."""
        it: Iterator[Callable[[], None]] = iter(starts)
        more = True
        while True:
            while more and self.in_flight < DEPTH:
                start = next(it, None)
                if start is None:
                    more = False
                else:
                    start()
            if not self._waiting:
                return
            self.pump()

    def handle(self, t: int, msg: paramiko.Message) -> bytes:
        """The handle an OPEN or OPENDIR answered; raises its error otherwise."""
        if t != CMD_HANDLE:
            self.status(t, msg)
            raise paramiko.SFTPError("Expected handle")
        return msg.get_binary()

    def status(self, t: int, msg: paramiko.Message) -> None:
        """Raise the error an SFTP status carries (nothing for OK)."""
        if t == CMD_STATUS:
            self._sftp._convert_status(msg)
        else:
            raise paramiko.SFTPError(f"unexpected SFTP answer type {t}")


# ------------------------------------------------------------- listings
def list_dirs(sftp: paramiko.SFTPClient, paths: list[str]) -> dict[str, object]:
    """path -> list of SFTPAttributes (with longname) or the raw exception.

    Per directory: OPENDIR, then two READDIRs and the CLOSE sent together
    (two rounds, not four). A directory whose second READDIR still returns
    names (hundreds of entries) is marked ``None``: the caller lists it
    the ordinary way."""
    p = Pipeline(sftp)
    out: dict[str, object] = {}

    def chain(path: str) -> Callable[[], None]:
        got: list[SFTPAttributes] = []
        reads = {"names": 0, "done": 0}

        def on_read(t, msg):
            reads["done"] += 1
            if path in out:
                return
            if t == CMD_NAME:
                reads["names"] += 1
                for _ in range(msg.get_int()):
                    name, longname = msg.get_text(), msg.get_text()
                    got.append(SFTPAttributes._from_msg(msg, name, longname))
                if reads["names"] == 2:
                    out[path] = None  # more than two batches: list it in full
                    return
            else:
                try:
                    p.status(t, msg)
                except EOFError:  # end of the directory
                    pass
                except Exception as e:
                    out[path] = e
                    return
            if reads["done"] == 2:
                out[path] = [a for a in got if a.filename not in (".", "..")]

        def on_open(t, msg):
            try:
                handle = p.handle(t, msg)
            except Exception as e:
                out[path] = e
                return
            p.send(CMD_READDIR, handle, then=on_read)
            p.send(CMD_READDIR, handle, then=on_read)
            p.send(CMD_CLOSE, handle, then=lambda t, m: None)

        return lambda: p.send(CMD_OPENDIR, path, then=on_open)

    p.run(chain(path) for path in paths)
    return out


def lstats(sftp: paramiko.SFTPClient, paths: list[str]) -> dict[str, object]:
    """path -> SFTPAttributes, or the raw exception of its LSTAT; all sent
    at once (one round trip for a few paths)."""
    p = Pipeline(sftp)
    out: dict[str, object] = {}

    def chain(path: str) -> Callable[[], None]:
        def on(t, msg):
            if t == CMD_ATTRS:
                out[path] = SFTPAttributes._from_msg(msg)
                return
            try:
                p.status(t, msg)
                raise paramiko.SFTPError("Expected attributes")
            except Exception as e:
                out[path] = e

        return lambda: p.send(CMD_LSTAT, path, then=on)

    p.run(chain(path) for path in paths)
    return out


def read_files(sftp: paramiko.SFTPClient, sizes: dict[str, int]) -> dict[str, object]:
    """path -> its bytes, or the raw exception; ``sizes``: each file's size
    by an lstat just before (one READ of that size; a file that has grown or
    shrunk since maps to None: the caller reads it the ordinary way). Per
    file: OPEN, then READ and CLOSE together (two rounds in all)."""
    p = Pipeline(sftp)
    out: dict[str, object] = {}

    def chain(path: str, size: int) -> Callable[[], None]:
        def on_data(t, msg):
            if t == CMD_DATA:
                data = msg.get_string()
                out[path] = data if len(data) == size else None  # it changed meanwhile
                return
            try:
                p.status(t, msg)
            except EOFError:  # empty (or emptied) file
                out[path] = b"" if size == 0 else None
            except Exception as e:
                out[path] = e

        def on_open(t, msg):
            try:
                handle = p.handle(t, msg)
            except Exception as e:
                out[path] = e
                return
            p.send(CMD_READ, handle, int64(0), size + 1, then=on_data)
            p.send(CMD_CLOSE, handle, then=lambda t, m: None)

        return lambda: p.send(CMD_OPEN, path, SFTP_FLAG_READ, SFTPAttributes(), then=on_open)

    p.run(chain(path, size) for path, size in sizes.items())
    return out


# ------------------------------------------------------------- uploads
def put_dirs(sftp: paramiko.SFTPClient, items) -> list[tuple[str, str, BaseException] | None]:
    """Create each item's directory with its files, then rename it into place.

    ``items``: objects with ``tmp`` (directory to create), ``mode`` (its
    mode), ``files`` ((name, bytes, mode) each, created exclusively with
    exactly that mode) and ``dst`` (rename target, or None to leave it).
    The rename is sent only once every request of the item has answered OK.
    Returns, per item, None or (operation, path, raw exception) of its first
    failure.
    """
    p = Pipeline(sftp)
    results: list[tuple[str, str, BaseException] | None] = [None] * len(items)

    def chain(i: int, item) -> Callable[[], None]:
        pending = [0]  # this item's requests not answered yet
        renamed = [False]

        def fail(what: str, path: str, e: BaseException) -> None:
            if results[i] is None:
                results[i] = (what, path, e)

        def send(t: int, *args, then: Answer) -> None:
            def on(t, msg):
                then(t, msg)  # may send more of this item's requests first
                pending[0] -= 1
                if pending[0] == 0 and results[i] is None and item.dst is not None and not renamed[0]:
                    renamed[0] = True
                    p.send(CMD_EXTENDED, "posix-rename@openssh.com", item.tmp, item.dst,
                           then=checked("rename", item.tmp))
            pending[0] += 1
            p.send(t, *args, then=on)

        def checked(what: str, path: str) -> Answer:
            def on(t, msg):
                try:
                    p.status(t, msg)
                except Exception as e:
                    fail(what, path, e)
            return on

        def opened(path: str, data: bytes, fattrs: SFTPAttributes) -> Answer:
            def on(t, msg):
                if t != CMD_HANDLE:
                    checked("create", path)(t, msg)
                    if results[i] is None:
                        fail("create", path, paramiko.SFTPError("Expected handle"))
                    return
                handle = msg.get_binary()
                # the exact mode whatever the node's umask
                send(CMD_FSETSTAT, handle, fattrs, then=checked("chmod", path))
                for o in range(0, len(data), CHUNK_SIZE):
                    send(CMD_WRITE, handle, int64(o), data[o:o + CHUNK_SIZE], then=checked("write", path))
                send(CMD_CLOSE, handle, then=checked("close", path))
            return on

        def start() -> None:
            attrs = SFTPAttributes()
            attrs.st_mode = item.mode
            send(CMD_MKDIR, item.tmp, attrs, then=checked("mkdir", item.tmp))
            # the server handles requests in order: the OPENs come after the MKDIR
            for name, data, mode in item.files:
                path = f"{item.tmp}/{name}"
                fattrs = SFTPAttributes()
                fattrs.st_mode = mode
                send(CMD_OPEN, path, SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_EXCL, fattrs,
                     then=opened(path, data, fattrs))

        return start

    p.run(chain(i, item) for i, item in enumerate(items))
    return results


def replace_files(sftp: paramiko.SFTPClient, items: list[tuple[str, str, bytes, int]]) -> list[tuple[str, str, BaseException] | None]:
    """Per item ``(tmp, dst, data, mode)``: create ``tmp`` exclusively with
    exactly ``mode``, write ``data``, close, then ``posix-rename`` it over
    ``dst``; all items' requests in flight together. Returns, per item, None
    or (operation, path, raw exception) of its first failure (``tmp`` may
    then be left: the caller removes it)."""
    p = Pipeline(sftp)
    results: list[tuple[str, str, BaseException] | None] = [None] * len(items)

    def chain(i: int, tmp: str, dst: str, data: bytes, mode: int) -> Callable[[], None]:
        def checked(what: str, path: str, then: Callable[[], None] | None = None) -> Answer:
            def on(t, msg):
                try:
                    p.status(t, msg)
                except Exception as e:
                    if results[i] is None:
                        results[i] = (what, path, e)
                    return
                if then is not None and results[i] is None:
                    then()
            return on

        def on_open(t, msg):
            if t != CMD_HANDLE:
                checked("create", tmp)(t, msg)
                if results[i] is None:
                    results[i] = ("create", tmp, paramiko.SFTPError("Expected handle"))
                return
            handle = msg.get_binary()
            attrs = SFTPAttributes()
            attrs.st_mode = mode
            p.send(CMD_FSETSTAT, handle, attrs, then=checked("chmod", tmp))
            for o in range(0, len(data), CHUNK_SIZE):
                p.send(CMD_WRITE, handle, int64(o), data[o:o + CHUNK_SIZE], then=checked("write", tmp))
            # answered in order: the CLOSE's answer comes after every WRITE's
            p.send(CMD_CLOSE, handle, then=checked("close", tmp, then=lambda: p.send(
                CMD_EXTENDED, "posix-rename@openssh.com", tmp, dst, then=checked("rename", tmp))))

        def start() -> None:
            attrs = SFTPAttributes()
            attrs.st_mode = mode
            p.send(CMD_OPEN, tmp, SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_EXCL, attrs, then=on_open)
        return start

    p.run(chain(i, *item) for i, item in enumerate(items))
    return results
