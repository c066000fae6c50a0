"""What the transport asks a node about itself: uid, clock, free space.

SFTP first: uid and clock come from a probe file created over SFTP (login
directory, else /dev/shm, else /tmp), free space from
``statvfs@openssh.com``. Only when no probe directory is writable, or the
server lacks the extension, does a fixed command run over an exec channel
with ``shlex``-quoted arguments -- that needs a POSIX login shell for the
account, and :class:`~prng_cache.errors.NodeSetupError` says so when it is
missing.
"""

from __future__ import annotations

import errno
import logging
import re
import secrets
import shlex
import time

import paramiko

from ...errors import NodeSetupError
from ..base import DiskUsage

log = logging.getLogger(__name__)

#: where the uid/clock probe file may be created, in order (login directory first)
_PROBE_DIRS = (".", "/dev/shm", "/tmp")


class _ExecFailed(OSError):
    """A fixed command exited non-zero; ``problem`` is its stderr or exit status."""

    def __init__(self, message: str, problem: str):
        super().__init__(message)
        self.problem = problem


class NodeProbe:
    """Mixin of :class:`~.operations.SSHTransport` (which provides the
    session, the connection, error translation and ``read_bytes``). State:
    ``_uid``, ``_clock_offset``, ``_statvfs_ext`` (None: not tried yet,
    False: unsupported, use ``df``), ``_exec_window``."""

    def disk_usage(self, path: str) -> DiskUsage:
        if self._statvfs_ext is not False:
            try:
                v = self._raw_statvfs(path)
                self._statvfs_ext = True
                _bsize, frsize, blocks, bfree, bavail = v[:5]
                total = blocks * frsize
                return DiskUsage(total=total, used=total - bfree * frsize, free=bavail * frsize)
            except Exception as e:
                err = self._error(e, "statvfs", path)
                if not (type(err) is OSError and err.errno is None and self._statvfs_ext is None):
                    raise err from e
                log.debug("%s: statvfs@openssh.com unsupported (%s); using df", self.host, e)
                self._statvfs_ext = False
        # `env` rather than `LC_ALL=C df`: works whatever shell the login shell is
        out = self._exec(f"env LC_ALL=C df -Pk -- {shlex.quote(path)}", path)
        m = None
        for line in reversed(out.splitlines()):
            m = re.search(r"\s(\d+)\s+(\d+)\s+(\d+)\s+\d+%\s", line + " ")
            if m:
                break
        if not m:
            raise OSError(f"cannot parse df output from {self.host}: {out!r}")
        total, used, free = (int(x) * 1024 for x in m.groups())
        return DiskUsage(total=total, used=used, free=free)

    def uid(self) -> int:
        if self._uid is None:
            self._node_facts()
        return self._uid  # type: ignore[return-value]

    def now(self) -> float:
        """The node's clock: read once (``date``), then local clock + offset."""
        if self._clock_offset is None:
            self._node_facts()
        return time.time() + self._clock_offset  # type: ignore[operator]

    def _node_facts(self) -> None:
        """uid and clock offset of the node.

        An exec channel makes sshd start a session and a shell (0.1-0.25 s
        here, most of a warm stage), and needs a usable login shell (service
        accounts often have ``/usr/sbin/nologin``), so first try SFTP alone:
        create a probe file in the login directory (else ``/dev/shm``, else
        ``/tmp``), lstat it (its owner is us, its mtime the node's clock to
        the second: enough for staleness checks measured in tens of
        seconds), remove it. Fall back to ``id -u && date``; when that fails
        too, :class:`~prng_cache.errors.NodeSetupError` says what the node
        needs."""
        if self._probe_facts():
            return
        command = "id -u && date +%s.%N"
        try:
            out = self._exec(command)
        except OSError as e:
            raise self._no_shell_error(command, e) from e
        t0, t1 = self._exec_window
        lines = out.split()
        try:
            uid = int(lines[0])
            stamp = lines[1]
        except (ValueError, IndexError) as e:
            raise OSError(f"unexpected 'id -u; date' output from {self.host}: {out!r}") from e
        try:
            remote = float(stamp)
        except ValueError:  # no %N support: whole seconds
            try:
                remote = float(stamp.split(".", 1)[0]) + 0.5
            except ValueError as e:
                raise OSError(f"unexpected 'date' output from {self.host}: {out!r}") from e
        self._uid = uid
        # the command ran somewhere between sending it and its first output
        self._clock_offset = remote - (t0 + t1) / 2

    def _probe_facts(self) -> bool:
        sftp = self._session()
        name = f".prng-cache-probe-{secrets.token_hex(6)}"
        for d in _PROBE_DIRS:
            probe = name if d == "." else f"{d}/{name}"
            try:
                t0 = time.time()
                sftp.open(probe, "x").close()  # O_CREAT|O_EXCL: a file of ours
                t1 = time.time()
                try:
                    st = sftp.lstat(probe)
                finally:
                    sftp.remove(probe)
            except Exception as e:
                if self._is_connection_error(e) and not isinstance(e, paramiko.SFTPError):
                    raise self._error(e, "create", probe) from e
                log.debug("%s: uid probe in %s failed (%s)", self.host, d, e)
                continue
            if st.st_uid is None or st.st_mtime is None:
                return False
            self._uid = st.st_uid
            # whole-second mtime: the file was created within [t0, t1]
            self._clock_offset = st.st_mtime + 0.5 - (t0 + t1) / 2
            return True
        log.debug("%s: no writable probe directory (%s); using id -u", self.host, ", ".join(_PROBE_DIRS))
        return False

    def _login_shell(self, user: str) -> str | None:
        """The user's login shell per the node's /etc/passwd (best effort:
        accounts from LDAP etc. are not in it)."""
        try:
            text = self.read_bytes("/etc/passwd", 8 << 20).decode("utf-8", "replace")
        except Exception:
            return None
        for line in text.splitlines():
            parts = line.split(":")
            if len(parts) >= 7 and parts[0] == user:
                return parts[6] or "/bin/sh"
        return None

    def _no_shell_error(self, command: str, e: OSError) -> NodeSetupError:
        user = self.target.username
        shell = self._login_shell(user)
        which = f" (its login shell is {shell})" if shell else ""
        return NodeSetupError(
            self.host,
            f"the node needs a POSIX login shell for user {user}{which} to run {command!r}, "
            f"or a directory where {user} may create files over SFTP (login directory, /dev/shm "
            f"or /tmp); the command failed: {e.problem if isinstance(e, _ExecFailed) else e}",
        )

    def _exec(self, command: str, path: str = "") -> str:
        """Run a fixed command (arguments already shlex-quoted); stdout text."""
        self._session()
        try:
            chan = self._conn.client.get_transport().open_session(timeout=self.settings.connect_timeout)
            chan.settimeout(self.io_timeout)
            t0 = time.time()
            chan.exec_command(command)
            chan.shutdown_write()
            out = bytearray()
            err = bytearray()
            while True:
                data = chan.recv(65536)
                if not data:
                    break
                out += data
                if len(out) == len(data):
                    self._exec_window = (t0, time.time())
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
            status = chan.recv_exit_status()
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
            chan.close()
        except Exception as e:
            raise self._error(e, "exec", command) from e
        if status != 0:
            msg = err.decode(errors="replace").strip() or f"exit status {status}"
            if path and "No such file" in msg:
                raise FileNotFoundError(errno.ENOENT, f"{command!r} on {self.host}: {msg}", path)
            raise _ExecFailed(f"{command!r} failed on {self.host}: {msg}", msg)
        return out.decode(errors="replace")
