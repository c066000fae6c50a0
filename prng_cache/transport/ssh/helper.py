"""Batches through the node's own ``python3``: the coordinator's half.

Every SFTP request is a packet built, encrypted and sent in Python, one
``send`` syscall each: publishing 1000 small bundles is ~9000 of them and
takes seconds however many are in flight. Here one exec channel runs
:mod:`.node_helper` on the node and the whole batch travels as one stream
(rsync's trick). The command line is a constant: paths and names travel
on stdin, never through the node's shell.

A node without a usable ``python3`` (or with one that says something else
first) simply has no helper: the caller uses SFTP, as before. A helper that
dies mid-request raises :class:`HelperGone`; the transport stops using it
for the rest of the connection. Connection loss raises as usual.
"""

from __future__ import annotations

import binascii
import json
import logging
import os
import shlex
import time
import zlib
from typing import Any, Iterable, Iterator

from ..base import DirUpload, FileInfo
from . import node_helper

log = logging.getLogger(__name__)

_BOOT = ('import sys; i = sys.stdin.buffer; '
         'exec(compile(i.read(int(i.readline())), "prng-cache-node-helper", "exec"))')
#: -I: no user site, no PYTHON* variables of the node's environment;
#: -S: no site import (standard library only; starts faster). The system's
#: own python3 when there is one: the helper needs only the standard
#: library, and a PATH's python3 may be a wrapper (pyenv's shim: ~50 ms of
#: a node's CPU before python even starts). ``&&``/``||``/``exec``: the
#: same in sh, bash, zsh, fish and csh (the user's login shell runs it)
_ARGS = " -I -S -c " + shlex.quote(_BOOT)
COMMAND = f"test -x /usr/bin/python3 && exec /usr/bin/python3{_ARGS} || exec python3{_ARGS}"


class HelperGone(Exception):
    """The helper ended or answered out of protocol (not a connection loss)."""


def _source() -> bytes:
    with open(node_helper.__file__, "rb") as f:
        return f.read()


def _h(s: str) -> str:
    return binascii.hexlify(os.fsencode(s)).decode("ascii")


def _s(h: str) -> str:
    return os.fsdecode(binascii.unhexlify(h))


def _info(raw: list) -> FileInfo:
    mode, nlink, uid, size, mtime = raw
    return FileInfo(mode=mode, uid=uid, size=size, mtime=float(mtime), nlink=nlink)


def _oserror(raw: list, host: str) -> OSError:
    op, err, msg, path = raw
    # worded like the SFTP path's errors; OSError picks the subclass
    return OSError(err, f"{op} failed on {host}: {msg}", _s(path))


def _coalesced(parts: list[bytes], size: int = 1 << 20) -> Iterator[bytes]:
    """Many small files as few large writes: each send is at least one
    packet, and a packet per 10 KB file is what made SFTP slow. A part of
    ``size // 4`` or more goes as it is (joining it would only copy it).
    Lazy: one run of about ``size`` bytes exists at a time."""
    run: list[bytes] = []
    n = 0
    for p in parts:
        if len(p) >= size >> 2:
            if run:
                yield b"".join(run)
                run, n = [], 0
            yield p
            continue
        run.append(p)
        n += len(p)
        if n >= size:
            yield b"".join(run)
            run, n = [], 0
    if run:
        yield b"".join(run)


def _send_all(chan, data: bytes) -> None:
    """``chan.sendall`` without its copies: it slices the rest of ``data``
    after every packet (32 KB), copying a 1 MB run about 16 times over."""
    view = memoryview(data)
    while view:
        sent = chan.send(view)
        if not sent:  # the channel was shut for sending: sendall would spin here
            raise EOFError("the helper's channel takes no more data")
        view = view[sent:]


class NodeHelper:
    """One running helper on one SSH connection (a paramiko transport)."""

    def __init__(self, ssh_transport, host: str, timeout: float, io_timeout: float):
        """Start the helper; its hello is awaited by :meth:`ready` (the
        node's python starts while the coordinator does other work), for
        ``timeout`` at most."""
        self.host = host
        self._ssh = ssh_transport
        self._hello = False
        self._timeouts = (timeout, io_timeout)
        self._chan = ssh_transport.open_session(timeout=timeout)
        try:
            self._chan.settimeout(io_timeout)
            self._chan.exec_command(COMMAND)
            src = _source()
            self._chan.sendall(b"%d\n" % len(src) + src)
            self._out = self._chan.makefile("rb")
        except BaseException:
            self.close()
            raise

    def ready(self, wait: bool) -> bool:
        """True once the helper said hello; False while it is still starting
        and ``wait`` is false. Raises HelperGone when it never will."""
        if self._hello:
            return True
        if not wait and not self._chan.recv_ready() and not self._chan.closed:
            return False
        try:
            # a python that hangs before its hello (a wrapper waiting on a
            # lock, a stuck home) costs connect_timeout, not the I/O timeout
            self._chan.settimeout(self._timeouts[0])
            hello = self._out.readline()
            self._chan.settimeout(self._timeouts[1])
        except Exception as e:
            if not self._ssh.is_active():
                raise
            self.close()
            raise HelperGone(f"no helper ({e or type(e).__name__})") from e
        if hello != node_helper.HELLO:
            self.close()
            raise HelperGone(f"no helper ({hello[:60]!r})")
        self._hello = True
        return True

    def close(self, settle: float = 0.0) -> None:
        """``settle``: first end the helper's input and wait up to that long
        for it to exit. A helper given up on mid-request still finishes
        (renames into place) what it had fully received; waiting for it
        makes that happen before the caller retries the same items over SFTP
        and settles what is there, not after."""
        try:
            if settle > 0 and not self._chan.closed:
                self._chan.shutdown_write()
                deadline = time.monotonic() + settle
                while not self._chan.exit_status_ready() and time.monotonic() < deadline:
                    time.sleep(0.01)
            self._chan.close()
        except Exception:
            pass

    def _ask(self, req: dict, payload: Iterable[bytes] = ()) -> dict:
        try:
            _send_all(self._chan, json.dumps(req, separators=(",", ":")).encode("ascii") + b"\n")
            for data in payload:
                _send_all(self._chan, data)
            line = self._out.readline()
        except Exception as e:
            if not self._ssh.is_active():
                raise  # the connection: the caller reports the node
            # the helper's channel alone failed (it died, or stalls)
            raise HelperGone(f"helper channel failed ({e or type(e).__name__})") from e
        line = line.lstrip(b".")  # a put's progress marks
        if not line.endswith(b"\n"):
            raise HelperGone("helper ended mid-request")
        try:
            ans = json.loads(line)
        except ValueError as e:
            raise HelperGone(f"helper answered out of protocol ({e})") from e
        if "error" in ans and ans["error"][0] == "request":
            raise HelperGone(f"helper refused the request ({ans['error'][2]})")
        return ans

    # ------------------------------------------------------------ requests
    def listdir_attr(self, path: str) -> dict[str, FileInfo]:
        ans = self._ask({"op": "ls", "dir": _h(path)})
        if "error" in ans:
            raise _oserror(ans["error"], self.host)
        return {_s(n): _info(i) for n, i in ans["items"]}

    def survey(self, parent: str, names: list[str], children: list[list[str]] | None = None
               ) -> tuple[dict[str, FileInfo], dict[str, dict[str, FileInfo] | OSError]]:
        """:meth:`listdir_attr` of ``parent`` and :meth:`listdirs` of some
        of its directories, in one request; of a directory with
        ``children`` given, only those (the ones that exist)."""
        req: dict[str, Any] = {"op": "survey", "dir": _h(parent), "names": [_h(n) for n in names]}
        if children is not None:
            req["children"] = [[_h(c) for c in cs] for cs in children]
        ans = self._ask(req)
        if "error" in ans:
            raise _oserror(ans["error"], self.host)
        return {_s(n): _info(i) for n, i in ans["root"]}, self._listed(parent, ans)

    def replace_files(self, items: list[tuple[str, str, bytes, int]]) -> list[tuple[str, OSError] | None]:
        """Per item ``(tmp, dst, data, mode)``: ``tmp`` created exclusively
        with exactly ``mode`` and ``data``, renamed over ``dst``; one request.
        Per item None or (operation, OSError) of its failure (``tmp`` gone)."""
        reqs = [[_h(tmp), _h(dst), len(data), mode, zlib.crc32(data) & 0xFFFFFFFF] for tmp, dst, data, mode in items]
        ans = self._ask({"op": "replace", "items": reqs}, _coalesced([data for _, _, data, _ in items]))
        results = ans.get("results")
        if not isinstance(results, list) or len(results) != len(items):
            raise HelperGone("helper answered out of protocol (results)")
        return [None if r is None else (r[0], _oserror(r, self.host)) for r in results]

    def read_files(self, paths: list[str], max_bytes: int) -> dict[str, bytes | None | bool]:
        """Small regular files, whole, in one request: path -> bytes; None
        when absent; False when it is anything else (the caller reads it the
        ordinary way, which refuses it the same way)."""
        ans = self._ask({"op": "read", "paths": [_h(p) for p in paths], "max": max_bytes})
        sizes = ans.get("sizes")
        if (not isinstance(sizes, list) or len(sizes) != len(paths)
                or not all(s is None or type(s) is int for s in sizes)):
            raise HelperGone("helper answered out of protocol (sizes)")
        total = sum(s for s in sizes if s is not None and s > 0)
        try:
            data = self._out.read(total) if total else b""
        except Exception as e:
            if not self._ssh.is_active():
                raise
            raise HelperGone(f"helper channel failed ({e or type(e).__name__})") from e
        if len(data) != total:
            raise HelperGone("helper ended mid-answer")
        out: dict[str, bytes | None | bool] = {}
        pos = 0
        for p, s in zip(paths, sizes):
            if s is None or s < 0:
                out[p] = None if s is None else False
            else:
                out[p] = data[pos:pos + s]
                pos += s
        return out

    def listdirs(self, parent: str, names: list[str]) -> dict[str, dict[str, FileInfo] | OSError]:
        """name -> its children, or the OSError of listing ``parent/name``
        (NotADirectoryError for anything but a real directory)."""
        return self._listed(parent, self._ask({"op": "list", "dir": _h(parent), "names": [_h(n) for n in names]}))

    def _listed(self, parent: str, ans: dict) -> dict[str, dict[str, FileInfo] | OSError]:
        out: dict[str, Any] = {}
        for hname, info, children in ans["items"]:
            name = _s(hname)
            if info is None:
                out[name] = _oserror(children, self.host)
            elif children is None:
                out[name] = NotADirectoryError(20, "Not a directory", f"{parent}/{name}")
            else:
                out[name] = {_s(n): _info(i) for n, i in children}
        return out

    def put_dirs(self, items: list[DirUpload]) -> list[tuple[str, OSError] | None]:
        payload: list[bytes] = []
        reqs = []
        for it in items:
            files = []
            for name, data, mode in it.files:
                files.append([_h(name), len(data), mode, zlib.crc32(data) & 0xFFFFFFFF])
                payload.append(data)
            reqs.append({"tmp": _h(it.tmp), "dst": _h(it.dst) if it.dst is not None else None,
                         "mode": it.mode, "files": files})
        ans = self._ask({"op": "put", "items": reqs}, _coalesced(payload))
        results = ans.get("results")
        if not isinstance(results, list) or len(results) != len(items):
            raise HelperGone("helper answered out of protocol (results)")
        return [None if r is None else (r[0], _oserror(r, self.host)) for r in results]


#: a node whose helper failed is not asked again by this process for this
#: long (a python that hangs before its hello costs connect_timeout once)
HELPER_RETRY_AFTER = 600.0
#: how long a failed helper is given to finish what it had received (see
#: NodeHelper.close) before SFTP takes over
HELPER_SETTLE = 2.0
#: host -> when its helper last failed in this process
failed_at: dict[str, float] = {}


class HelperUse:
    """When an SSH transport starts, waits for and gives up on its
    connection's helper (a part of ``SSHTransport``: uses its connection,
    settings and error translation). ``self._helper``: (the connection it
    runs on, the helper or None when it cannot serve there)."""

    _helper: "tuple[Any, NodeHelper | None] | None"

    def _start_helper(self) -> None:
        conn, h = self._conn, None
        failed = failed_at.get(self.host)
        if failed is not None and time.monotonic() - failed < HELPER_RETRY_AFTER:
            self._helper = (conn, None)
            return
        with self._op("exec", "python3"):
            try:
                h = NodeHelper(conn.client.get_transport(), self.host, self.settings.connect_timeout,
                                      self.io_timeout)
            except Exception as e:
                if self._is_connection_error(e) and not self._alive():
                    raise
                log.debug("%s: python helper failed to start (%s); batches go over SFTP", self.host, e)
        self._helper = (conn, h)

    def _node_helper(self, start: bool = True, wait: bool | None = None) -> NodeHelper | None:
        """The helper of this connection when it can serve: started and
        waited for when ``start`` (a batch worth it); else only if it is up
        already, or (``wait``) once started. None: SFTP (no helper on this
        node, or it failed here)."""
        wait = start if wait is None else wait
        if not self.settings.node_helper:
            return None
        self._session()
        if self._helper is None or self._helper[0] is not self._conn:
            if not start:  # not started for this connection (not a stage): SFTP
                return None
            self._start_helper()
        h = self._helper[1]
        if h is None:
            return None
        with self._op("exec", "python3"):
            try:
                return h if h.ready(wait=wait) else None
            except HelperGone as e:
                log.debug("%s: no python helper (%s); batches go over SFTP", self.host, e)
                self._helper = (self._helper[0], None)
                failed_at[self.host] = time.monotonic()
                return None

    def _helper_failed(self, e: BaseException) -> None:
        log.warning("%s: python helper failed (%s); using SFTP", self.host, e)
        failed_at[self.host] = time.monotonic()
        if self._helper is not None and self._helper[1] is not None:
            self._helper[1].close(settle=HELPER_SETTLE)
            self._helper = (self._helper[0], None)
