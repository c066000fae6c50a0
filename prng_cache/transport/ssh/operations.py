"""``SSHTransport``: the Transport contract's file operations over one SSH
connection and ONE SFTP session, opened on first use and reused.

Every operation runs inside one error-translating context manager
(:meth:`~.failures.FailureTranslation._op`); streams are the pipelined ones
of :mod:`.streams`; the connection comes from :mod:`.connect`; uid, clock
and free space from :mod:`.probe`.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
from typing import BinaryIO, Iterator

import paramiko
from paramiko.sftp import SFTP_FLAG_CREATE, SFTP_FLAG_EXCL, SFTP_FLAG_READ, SFTP_FLAG_WRITE
from paramiko.sftp_attr import SFTPAttributes

from ...policy import TransportPolicy
from ...errors import TransportError
from ..base import DirUpload, FileInfo, Transport
from . import batch, helper, listing, streams
from .connect import Connection, Connector
from .failures import FailureTranslation
from .probe import NodeProbe
from .target import SSHTarget, resolve_target

log = logging.getLogger(__name__)

#: from this many directories on, one exec channel (~one session start) is
#: cheaper than four pipelined SFTP requests per directory
FIND_MIN = 128
#: from this many items on, an upload batch waits for the node's python
#: helper (:mod:`.helper`, started with the connection; once it is up, any
#: batch or large listing uses it)
HELPER_MIN = 32
#: files read at once (read_many) from which a started helper is waited for
HELPER_MIN_READ = 16
#: a listing waits for the helper from this many directories on (the
#: helper, started with the stage, is ahead of a find started now); below,
#: pipelined SFTP unless the helper is up already
HELPER_MIN_LISTING = FIND_MIN
#: files read together by read_many in one READ each (OpenSSH answers a READ
#: with at most 256 KiB)
READ_MANY_MAX = 200 << 10


def _info(a: SFTPAttributes) -> FileInfo:
    return FileInfo(
        mode=a.st_mode or 0,
        uid=a.st_uid if a.st_uid is not None else -1,
        size=a.st_size or 0,
        mtime=float(a.st_mtime or 0),
        nlink=_nlink(getattr(a, "longname", None)),
    )


def _nlink(longname: str | bytes | None) -> int | None:
    """SFTP v3 attributes carry no link count, but OpenSSH's directory
    listings come with an ``ls -l`` style longname whose second field is it:
    enough to refuse a hard link planted in a cache directory."""
    if not longname:
        return None
    if isinstance(longname, bytes):
        longname = longname.decode("utf-8", "replace")
    parts = longname.split(None, 2)
    return int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else None


class SSHTransport(helper.HelperUse, FailureTranslation, NodeProbe, Transport):
    """File operations on a remote node over one SSH connection + one SFTP
    session (see the package docstring).  Not thread-safe: one per node and
    thread, except :meth:`abort`, which another thread may call.

    ``host`` is the node's name as given (ssh config alias or host name).
    The connection is opened by :meth:`connect` or by the first operation;
    after a connection failure the next operation reconnects."""

    def __init__(
        self,
        host: str,
        username: str | None = None,
        *,
        settings: TransportPolicy | None = None,
    ):
        self.host = host
        self.username = username
        self.settings = settings or TransportPolicy()
        self._target: SSHTarget | None = None
        self._conn: Connection | None = None
        self._uid: int | None = None
        self._clock_offset: float | None = None
        self._statvfs_ext: bool | None = None  # None: not tried yet
        self._exec_window = (0.0, 0.0)  # when the last command ran (bracket)
        self._find_ok: bool | None = None  # listing by one find command works (None: not tried)
        # the node's python helper on the current connection: (connection,
        # helper), or (connection, None) once it failed there
        self._helper: tuple[Connection, helper.NodeHelper | None] | None = None

    def __repr__(self) -> str:
        state = "connected" if self._conn is not None else "idle"
        return f"<SSHTransport {self.host} {state}>"

    # ------------------------------------------------------ connection
    @property
    def target(self) -> SSHTarget:
        """The resolved connection parameters (ssh config applied)."""
        if self._target is None:
            self._target = resolve_target(self.host, self.username, self.settings)
        return self._target

    @property
    def io_timeout(self) -> float:
        """Seconds an established connection may stall before it counts as lost."""
        return max(60.0, 6 * float(self.settings.connect_timeout))

    @property
    def connected(self) -> bool:
        return self._alive()

    def connect(self) -> "SSHTransport":
        """Open the connection and the SFTP session now (idempotent)."""
        if self._alive():
            return self
        self._drop()
        self._conn = Connector(self.host, self.settings, self.io_timeout).open(self.target)
        return self

    def expect_batches(self) -> None:
        """A stage begins: start the node's helper now, awaited at first
        use, so the node's python (and its login shell's rc files) start
        while the stage reads the manifest."""
        if self.settings.node_helper:
            self._session()
            if self._helper is None or self._helper[0] is not self._conn:
                self._start_helper()

    def _alive(self) -> bool:
        return self._conn is not None and self._conn.alive()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def close(self) -> None:
        """Close the SFTP session, the connection, any jump connections, and
        this transport's hold on a jump host's sshtunnel forwarder."""
        self._drop()

    def abort(self) -> None:
        """Close the SSH connections under a worker blocked in I/O (Ctrl-C):
        its read or write fails at once instead of after the I/O timeout;
        the sshtunnel forwarder's threads stop with its last user."""
        conn = self._conn
        if conn is not None:
            conn.abort()

    def _session(self) -> paramiko.SFTPClient:
        if not self._alive():
            self.connect()
        return self._conn.sftp  # type: ignore[union-attr]

    @property
    def _sftp(self) -> paramiko.SFTPClient | None:
        """The live SFTP session (streams check they still use it)."""
        return self._conn.sftp if self._conn is not None else None

    # ------------------------------------------------------- metadata
    def lstat(self, path: str) -> FileInfo | None:
        sftp = self._session()
        with self._op("lstat", path):
            try:
                return _info(sftp.lstat(path))
            except FileNotFoundError:
                return None

    def replace_files(self, items: list[tuple[str, str, bytes, int]]) -> None:
        """One request to the node's helper when it is up (a sharded
        manifest's shards), else all items' requests in flight together
        (see :mod:`.batch`)."""
        if len(items) < 2:
            return super().replace_files(items)
        h = self._node_helper(start=False, wait=len(items) >= HELPER_MIN_READ)
        if h is not None:
            with self._op("write", items[0][0]):
                try:
                    done = h.replace_files(items)
                except helper.HelperGone as e:
                    self._helper_failed(e)
                    done = None
                    # it may have created some of the temporaries (names
                    # made for this call alone): gone before SFTP makes them
                    for tmp, *_ in items:
                        with contextlib.suppress(Exception):
                            self.unlink(tmp)
            if done is not None:
                bad = [r for r in done if r is not None]
                if bad:
                    raise bad[0][1]  # worded like the SFTP path's errors (helper._oserror)
                return
        with self._op("write", items[0][0]):
            raw = batch.replace_files(self._session(), items)
        failed = [(item, r) for item, r in zip(items, raw) if r is not None]
        for (tmp, *_), _r in failed:
            with contextlib.suppress(Exception):
                self.unlink(tmp)
        if failed:
            (tmp, *_), (what, path, exc) = failed[0]
            raise self._translated(exc, what, path, creates=what == "create")

    def lstat_many(self, paths: list[str]) -> dict[str, FileInfo | None]:
        """All LSTATs in flight at once; an answer other than "no such
        file" is asked again alone (its error translated as :meth:`lstat`
        does)."""
        if len(paths) < 2:
            return super().lstat_many(paths)
        sftp = self._session()
        with self._op("lstat", paths[0]):
            raw = batch.lstats(sftp, paths)
        out: dict[str, FileInfo | None] = {}
        for path in paths:
            r = raw.get(path)
            if isinstance(r, FileNotFoundError):
                out[path] = None
            elif r is None or isinstance(r, BaseException):
                out[path] = self.lstat(path)
            else:
                out[path] = _info(r)
        return out

    def read_many(self, paths: list[str], max_bytes: int = 64 << 20) -> dict[str, bytes | None | OSError]:
        """One request to the node's helper when it is up (a sharded
        manifest's shards: one round trip, not 4 SFTP requests per file);
        else LSTATs of all, then every regular file opened, read and closed
        with the others' requests in flight. What is not a small regular
        file (or changed between the two) is read as :meth:`read_bytes`
        does, which also refuses it the same way."""
        if len(paths) < 2:
            return super().read_many(paths, max_bytes)
        # one request; the stage started the helper already: waited for when
        # there are many (a sharded manifest's shards; a listing waits next)
        h = self._node_helper(start=False, wait=len(paths) >= HELPER_MIN_READ)
        if h is not None:
            with self._op("read", paths[0]):
                try:
                    got = h.read_files(paths, min(max_bytes, READ_MANY_MAX))
                except helper.HelperGone as e:
                    self._helper_failed(e)
                    got = None
            if got is not None:
                done: dict[str, bytes | None | OSError] = {p: r for p, r in got.items() if r is not False}
                done.update(super().read_many([p for p, r in got.items() if r is False], max_bytes))
                return done
        infos = self.lstat_many(paths)
        small = {p: i.size for p, i in infos.items()
                 if i is not None and i.is_file and not i.is_symlink and i.size < min(max_bytes, READ_MANY_MAX)}
        with self._op("read", paths[0]):
            raw = batch.read_files(self._session(), small) if small else {}
        out: dict[str, bytes | None | OSError] = {}
        rest = []
        for p in paths:
            r = raw.get(p)
            if infos[p] is None:
                out[p] = None
            elif isinstance(r, bytes):
                out[p] = r
            else:
                rest.append(p)
        out.update(super().read_many(rest, max_bytes))
        return out

    def listdir_attr(self, path: str) -> dict[str, FileInfo]:
        sftp = self._session()
        with self._op("listdir", path):
            return {a.filename: _info(a) for a in sftp.listdir_attr(path)}

    def listdir_attr_large(self, path: str) -> dict[str, FileInfo]:
        """A directory expected to hold many names: one request to the
        node's helper when it is up, else paged over SFTP."""
        # not waited for: SFTP lists 5000 names in ~60 ms, a python starts in ~140
        h = self._node_helper(start=False)
        if h is not None:
            with self._op("listdir", path):
                try:
                    return h.listdir_attr(path)
                except helper.HelperGone as e:
                    self._helper_failed(e)
        return self.listdir_attr(path)

    def survey(self, parent: str, paths: list[str], children: list[list[str]] | None = None
               ) -> tuple[dict[str, FileInfo], dict[str, dict[str, FileInfo] | OSError]]:
        """The root and the entries a stage needs in ONE request to the
        node's helper (waited for from HELPER_MIN_LISTING entries on), which
        lstats only ``children`` of each entry when given (one system call
        per file, not a directory listing); otherwise as two listings."""
        names = [p.rsplit("/", 1)[1] for p in paths]
        if all(p.rsplit("/", 1)[0] == parent for p in paths) and (
                h := self._node_helper(start=len(paths) >= HELPER_MIN_LISTING)) is not None:
            with self._op("listdir", parent):
                try:
                    root, got = h.survey(parent, names, children)
                    return root, {p: got[n] for p, n in zip(paths, names)}
                except helper.HelperGone as e:
                    self._helper_failed(e)
        return super().survey(parent, paths)

    # --------------------------------------------------- the node's helper
    def listdirs_attr(self, paths: list[str]) -> dict[str, dict[str, FileInfo] | OSError]:
        """Many directories of one parent: one ``find`` over an exec channel
        (see :mod:`.listing`); else, or for a few, all SFTP listings
        pipelined (see :mod:`.batch`): two round trips in all, not four per
        directory one after another."""
        sftp = self._session()
        parent = paths[0].rsplit("/", 1)[0] if paths else ""
        same_parent = all(p.rsplit("/", 1)[0] == parent for p in paths)
        if paths and same_parent and (h := self._node_helper(start=len(paths) >= HELPER_MIN_LISTING)) is not None:
            with self._op("listdir", parent or "/"):
                try:
                    got = h.listdirs(parent or "/", [p.rsplit("/", 1)[1] for p in paths])
                    return {p: got[p.rsplit("/", 1)[1]] for p in paths}
                except helper.HelperGone as e:
                    self._helper_failed(e)
        if len(paths) >= FIND_MIN and self._find_ok is not False and all(
                p.rsplit("/", 1)[0] == parent for p in paths):
            got = listing.run(self, parent or "/", [p.rsplit("/", 1)[1] for p in paths])
            self._find_ok = got is not None
            if got is not None:
                return {p: got[p.rsplit("/", 1)[1]] for p in paths}
        with self._op("listdir", paths[0] if paths else "/"):
            raw = batch.list_dirs(sftp, paths)
        out: dict[str, dict[str, FileInfo] | OSError] = {}
        for path in paths:
            r = raw.get(path)
            if r is None:  # a large directory: list it the ordinary way
                try:
                    out[path] = self.listdir_attr(path)
                except OSError as exc:
                    out[path] = exc
            elif isinstance(r, BaseException):
                out[path] = self._translated(r, "listdir", path)
            else:
                out[path] = {a.filename: _info(a) for a in r}
        return out

    def put_dirs(self, items: list[DirUpload]) -> list[tuple[str, OSError] | None]:
        """Every item's requests pipelined with the others' (see :mod:`.batch`)."""
        sftp = self._session()
        if items and (h := self._node_helper(start=len(items) >= HELPER_MIN)) is not None:
            with self._op("write", items[0].tmp):
                try:
                    return h.put_dirs(items)
                except helper.HelperGone as e:
                    # what it did before it died is settled like any
                    # concurrent stager's work: tmp exists -> that item
                    # fails and is removed; dst exists -> merged at commit
                    self._helper_failed(e)
        with self._op("write", items[0].tmp if items else "/"):
            raw = batch.put_dirs(sftp, items)
        out: list[tuple[str, OSError] | None] = []
        for r in raw:
            if r is None:
                out.append(None)
                continue
            what, path, exc = r
            out.append((what, self._translated(exc, what, path, creates=what in ("mkdir", "create"))))
        return out

    def _translated(self, exc: BaseException, what: str, path: str, *, creates: bool = False) -> OSError:
        """A per-item failure as the contract's OSError; connection loss raises."""
        err = self._exists_error(exc, what, path) if creates else self._error(exc, what, path)
        if isinstance(err, TransportError) or not isinstance(err, OSError):
            raise err from exc
        if what in ("write", "close") and err.errno is None:
            # a bare "Failure" of a write: say ENOSPC when the file system is full
            with contextlib.suppress(Exception):
                du = self.disk_usage(path.rsplit("/", 1)[0] or "/")
                if du.free < 1 << 20:
                    err = OSError(errno.ENOSPC, f"write failed on {self.host}: No space left on device "
                                                f"({du.free} bytes free of {du.total})", path)
        return err

    def mkdir(self, path: str, mode: int = 0o700) -> None:
        sftp = self._session()
        with self._op("mkdir", path, creates=True):
            sftp.mkdir(path, mode)
        self.chmod(path, mode)  # the node's umask must not change the mode

    def chmod(self, path: str, mode: int) -> None:
        sftp = self._session()
        with self._op("chmod", path):
            sftp.chmod(path, mode)

    def rename(self, src: str, dst: str) -> None:
        sftp = self._session()
        with self._op("rename", src, dst):
            sftp.posix_rename(src, dst)

    def unlink(self, path: str) -> None:
        sftp = self._session()
        with self._op("unlink", path):
            sftp.remove(path)

    def rmdir(self, path: str) -> None:
        sftp = self._session()
        with self._op("rmdir", path):
            sftp.rmdir(path)

    # ---------------------------------------------------------- files
    def _open_for_read(self, path: str) -> tuple[bytes, FileInfo]:
        """lstat, then open only a regular file: symlinks are refused, and
        a FIFO or device is never opened (it could block the SFTP server)."""
        info = self.lstat(path)
        if info is None:
            raise FileNotFoundError(errno.ENOENT, f"open failed on {self.host}: No such file", path)
        if info.is_symlink:
            raise OSError(errno.ELOOP, f"refusing to read a symlink on {self.host}", path)
        if info.is_dir:
            raise IsADirectoryError(errno.EISDIR, f"cannot read a directory on {self.host}", path)
        if not info.is_file:
            raise OSError(errno.EINVAL, f"refusing to read a non-regular file on {self.host}", path)
        sftp = self._session()
        with self._op("open", path):
            return streams.open_handle(sftp, path, SFTP_FLAG_READ), info

    def read_bytes(self, path: str, max_bytes: int = 64 << 20) -> bytes:
        handle, info = self._open_for_read(path)
        reader = streams.SFTPReader(self, self._sftp, handle, path, size_hint=info.size, limit=max_bytes)
        try:
            return reader.readall()
        finally:
            reader.close()

    @contextlib.contextmanager
    def open_read(self, path: str) -> Iterator[BinaryIO]:
        handle, info = self._open_for_read(path)
        raw = streams.SFTPReader(self, self._sftp, handle, path, size_hint=info.size)
        with io.BufferedReader(raw, buffer_size=streams.CHUNK_SIZE) as f:
            yield f  # type: ignore[misc]

    @contextlib.contextmanager
    def open_write(self, path: str, mode: int = 0o600) -> Iterator[BinaryIO]:
        sftp = self._session()
        # O_CREAT|O_EXCL: fails on any existing path, symlinks included
        with self._op("create", path, creates=True):
            handle = streams.open_handle(sftp, path, SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_EXCL, mode)
        w = streams.SFTPWriter(self, sftp, handle, path)
        w.fchmod(mode)  # exact mode whatever the node's umask (pipelined)
        try:
            yield w  # type: ignore[misc]
        except BaseException:
            w.abort()
            raise
        w.close()

    # ---------------------------------------------------- diagnostics
    @property
    def sftp(self) -> paramiko.SFTPClient:
        """The (single, reused) SFTP session; connects if needed."""
        return self._session()

    @property
    def paramiko_transport(self) -> paramiko.Transport | None:
        """The connection to the node (None when not connected)."""
        return self._conn.transport if self._conn is not None else None

    @property
    def forwarder(self):
        """The ``sshtunnel.SSHTunnelForwarder`` this connection goes
        through (a node behind one jump host), else None."""
        conn = self._conn
        return conn.lease.forwarder if conn is not None and conn.lease is not None else None
