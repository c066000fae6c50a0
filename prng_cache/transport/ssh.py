"""Transport to a remote node over SSH/SFTP (paramiko).

One ``SSHTransport`` holds one SSH connection (optionally through jump hosts)
and ONE SFTP session, opened on first use and reused for every file
operation.  uid and clock come from a probe file created over SFTP (login
directory, else /dev/shm, else /tmp); only when none of them is writable, or
the server lacks ``statvfs@openssh.com`` (free space), a fixed command runs
over an exec channel with ``shlex``-quoted arguments -- that needs a POSIX
login shell for the account, and :class:`~prng_cache.errors.NodeSetupError`
says so when it is missing.

Names are checked first: a host or user name OpenSSH would refuse
(whitespace, shell metacharacters, a leading ``-``) raises
:class:`~prng_cache.errors.UnsafeNameError` before anything runs. A
``ProxyCommand`` is run without a shell (see :mod:`.names`): split into words,
``%h %p %r %n %%`` substituted inside each word; shell syntax is refused.

How the node is reached follows the user's ssh config, as ``ssh`` would:
``HostName``, ``Port``, ``User``, ``IdentityFile``, ``IdentitiesOnly``,
``ProxyJump`` (or ``ProxyCommand``) and ``UserKnownHostsFile``; an explicit ``username`` (from the
cluster file) wins over the config's ``User``.  Host keys are checked against
the policy's ``known_hosts`` plus the config's ``UserKnownHostsFile``;
unknown or changed keys raise :class:`~prng_cache.errors.HostKeyError`
unless ``strict_host_keys`` is off (then unknown keys are accepted for this
connection only, with a warning; changed keys are still refused).

Jump hosts (config ``ProxyJump``, else the policy's ``jump_host``) are
reached first, their host keys verified the same way, and the node is then
reached through a ``direct-tcpip`` channel of the jump connection: no local
listening port and no forwarding threads (which is what
``sshtunnel.SSHTunnelForwarder`` would add).

Throughput: TCP_NODELAY and TCP_QUICKACK (no Nagle / delayed-ACK stalls), the AES-GCM cipher preferred, SFTP writes of
255 KiB pipelined with every status checked (at the latest on close), reads
with a bounded read-ahead of 255 KiB requests, a 16 MiB channel window.
Streams register as the owners of their pipelined requests, so other
operations (or a second stream) may be used while a stream is open.

Errors follow the Transport contract: FileNotFoundError, FileExistsError,
PermissionError, OSError (``errno.ENOSPC`` when a write fails and the file
system has no room left); connection problems raise ``TransportError`` (the
connection is then dropped, and the next operation reconnects). SFTP v3 says
little (OpenSSH answers EROFS with a bare "Failure", ENOTDIR with "No such
file"), so after such an answer the node is asked: the ST_RDONLY flag of
``statvfs@openssh.com`` gives ``errno.EROFS`` "Read-only file system", an
lstat of the ancestors gives ``NotADirectoryError`` "X is a file, not a
directory".
"""

from __future__ import annotations

import collections
import contextlib
import errno
import getpass
import io
import logging
import os
import posixpath
import re
import secrets
import shlex
import socket
import stat
import time
from dataclasses import dataclass, replace
from typing import BinaryIO, Iterator

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
    SFTP_FLAG_CREATE,
    SFTP_FLAG_EXCL,
    SFTP_FLAG_READ,
    SFTP_FLAG_WRITE,
    int64,
)
from paramiko.sftp_attr import SFTPAttributes

from ..errors import HostKeyError, NodeSetupError, PrngCacheError, TransportError, UnsafeNameError
from ..policy import TransportPolicy
from .base import DiskUsage, FileInfo, Transport
from .names import ProxyCommandError, hostname_problem, proxy_argv, username_problem

log = logging.getLogger(__name__)

__all__ = ["SSHTarget", "SSHTransport", "check_names", "resolve_target"]

#: SFTP read/write request size: OpenSSH's sftp-server accepts messages of up
#: to 256 KiB, which leaves room for the request header.
CHUNK_SIZE = 255 * 1024
#: outstanding pipelined write requests before we wait for the oldest status
WRITE_DEPTH = 32
#: outstanding read-ahead requests of an open_read/read_bytes stream
READ_DEPTH = 16
#: our receive window / max packet for the SFTP channel (downloads)
WINDOW_SIZE = 16 << 20
MAX_PACKET_SIZE = 128 << 10
#: ciphers to offer first: paramiko's AES-GCM needs no separate MAC pass
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr")

_STATVFS_FIELDS = 11
#: statvfs@openssh.com: index of f_flag, and its read-only bit
_STATVFS_FLAG = 9
_ST_RDONLY = 0x1
#: operations that change the file system (a bare SFTP "Failure" of one of
#: them on a read-only file system is reported as EROFS)
_MUTATING = frozenset({"mkdir", "create", "rename", "unlink", "rmdir", "chmod", "write"})
#: where the uid/clock probe file may be created, in order (login directory first)
_PROBE_DIRS = (".", "/dev/shm", "/tmp")
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


# ------------------------------------------------------------------ targets
@dataclass(frozen=True)
class SSHTarget:
    """Where and how to connect, after the ssh config was applied."""

    label: str  # the name as given (ssh config alias or host name)
    hostname: str
    port: int
    username: str
    identity_files: tuple[str, ...] = ()
    identities_only: bool = False
    known_hosts_files: tuple[str, ...] = ()
    jumps: tuple["SSHTarget", ...] = ()  # hops, outermost first
    #: ProxyCommand as written in the ssh config, %-tokens NOT substituted
    #: (used for the first hop; see :meth:`proxy_argv`)
    proxy_command: str | None = None

    @property
    def known_hosts_name(self) -> str:
        """The key under which known_hosts lists this host."""
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"

    @property
    def address(self) -> str:
        return f"{self.username}@{self.hostname}:{self.port}"

    def proxy_argv(self) -> list[str]:
        """The ProxyCommand as the argv that is run (no shell): split into
        words first, then %h %p %r %n %% substituted inside each word.
        Raises :class:`~prng_cache.transport.names.ProxyCommandError`."""
        if not self.proxy_command:
            raise ProxyCommandError("no ProxyCommand")
        return proxy_argv(
            self.proxy_command, host=self.hostname, port=self.port, user=self.username, alias=self.label
        )


class _SSHConfig(paramiko.SSHConfig):
    """paramiko's ssh config, except that ProxyCommand keeps its %-tokens:
    paramiko substitutes them into the command *text* (a host name with a
    space would become two words); :func:`proxy_argv` substitutes them per
    word after splitting."""

    def _allowed_tokens(self, key):
        if key == "proxycommand":
            return []
        return super()._allowed_tokens(key)


def check_names(host: str, username: str | None = None) -> None:
    """Refuse a host or user name OpenSSH would refuse (UnsafeNameError)
    before it goes anywhere near a ProxyCommand or a command line."""
    why = hostname_problem(host)
    if why is not None:
        raise UnsafeNameError(
            host,
            f"host name {host!r} refused: {why} (OpenSSH allows no whitespace, shell "
            "metacharacters or leading '-' in host names)",
        )
    if username is not None:
        why = username_problem(username)
        if why is not None:
            raise UnsafeNameError(
                host,
                f"user name {username!r} refused: {why} (no whitespace, shell "
                "metacharacters or leading '-' in user names)",
            )


def _load_ssh_config(path: str | None, host: str) -> paramiko.SSHConfig:
    if path:
        p = os.path.expanduser(path)
        if os.path.isfile(p):
            try:
                return _SSHConfig.from_path(p)
            except Exception as e:  # malformed config: be explicit about it
                raise TransportError(host, f"cannot parse ssh config {p}: {e}") from e
    return _SSHConfig()


def _split_jump(spec: str) -> tuple[str | None, str, int | None]:
    """``[user@]host[:port]`` (``[v6addr]:port`` too) -> (user, host, port)."""
    spec = spec.strip()
    if spec.startswith("ssh://"):
        spec = spec[len("ssh://"):]
    user = None
    if "@" in spec:
        user, spec = spec.rsplit("@", 1)
    port = None
    m = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", spec)
    if m:
        host, port = m.group(1), m.group(2)
    elif spec.count(":") == 1:
        host, port = spec.split(":")
    else:
        host = spec
    if not host:
        raise TransportError(spec, "empty jump host")
    return user or None, host, int(port) if port else None


def _lookup(
    cfg: paramiko.SSHConfig,
    name: str,
    username: str | None,
    port: int | None,
    settings: TransportPolicy,
) -> tuple[SSHTarget, str | None]:
    try:
        o = cfg.lookup(name)
    except Exception as e:  # e.g. a failing "Match exec"
        raise TransportError(name, f"ssh config lookup failed: {e}") from e
    known = []
    if settings.known_hosts:
        known.append(os.path.expanduser(settings.known_hosts))
    for f in o.get("userknownhostsfile", "").split():
        f = os.path.expanduser(f)
        if f not in known:
            known.append(f)
    ident = tuple(os.path.expanduser(f) for f in o.get("identityfile", []))
    try:
        cfg_port = int(o.get("port", 22))
    except ValueError as e:
        raise TransportError(name, f"bad Port in ssh config: {o.get('port')!r}") from e
    target = SSHTarget(
        label=name,
        hostname=o.get("hostname", name),
        port=port or cfg_port,
        username=username or o.get("user") or getpass.getuser(),
        identity_files=ident,
        identities_only=o.get("identitiesonly", "no").lower() == "yes",
        known_hosts_files=tuple(known),
    )
    jump = o.get("proxyjump")
    if jump and jump.strip().lower() == "none":
        jump = None
    proxy = o.get("proxycommand")
    if proxy and proxy.strip().lower() != "none" and not jump:
        target = replace(target, proxy_command=proxy)
    return target, jump


def resolve_target(
    host: str, username: str | None = None, settings: TransportPolicy | None = None
) -> SSHTarget:
    """Apply the ssh config (and the policy's jump host) to ``host``.

    Jump hosts come from the host's ``ProxyJump`` (comma-separated chain),
    else from ``settings.jump_host`` (unless the config gives the host a
    ``ProxyCommand``, which is then used instead); each hop is itself looked up in the
    ssh config (HostName, Port, User, IdentityFile, known hosts), with the
    user and port written in the jump spec taking precedence.

    ``host`` and ``username`` must pass OpenSSH's name rules
    (:class:`~prng_cache.errors.UnsafeNameError` otherwise). No network is
    used (unless the ssh config itself asks for it: ``Match exec``,
    ``CanonicalizeHostname``)."""
    settings = settings or TransportPolicy()
    check_names(host, username)
    cfg = _load_ssh_config(settings.ssh_config, host)
    target, jump = _lookup(cfg, host, username, None, settings)
    if not jump and not target.proxy_command and settings.jump_host:
        jump = settings.jump_host
    hops: list[SSHTarget] = []
    if jump:
        for spec in jump.split(","):
            juser, jhost, jport = _split_jump(spec)
            hop, _ = _lookup(cfg, jhost, juser, jport, settings)
            if (hop.hostname, hop.port) == (target.hostname, target.port):
                continue  # the jump host itself needs no jump
            hops.append(hop)
    if hops:
        target = replace(target, jumps=tuple(hops), proxy_command=None)
    return target


# ------------------------------------------------------- host key policies
def _fingerprint(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.fingerprint}"


class _RejectUnknown(paramiko.MissingHostKeyPolicy):
    def __init__(self, label: str, files: list[str]):
        self.label, self.files = label, files

    def missing_host_key(self, client, hostname, key):
        where = ", ".join(self.files) or "(no known_hosts file)"
        raise HostKeyError(
            self.label,
            f"host key for {hostname} not in {where} (server offered {_fingerprint(key)}); "
            "verify it and add it, e.g. by connecting once with ssh",
        )


class _AcceptUnknown(paramiko.MissingHostKeyPolicy):
    """strict_host_keys: false -- accept for this connection, never save."""

    def __init__(self, label: str):
        self.label = label

    def missing_host_key(self, client, hostname, key):
        log.warning(
            "%s: accepting unknown host key for %s (%s) because strict_host_keys is off",
            self.label, hostname, _fingerprint(key),
        )
        client.get_host_keys().add(hostname, key.get_name(), key)


def _make_paramiko_transport(sock, disabled_algorithms=None) -> paramiko.Transport:
    t = paramiko.Transport(
        sock,
        default_window_size=WINDOW_SIZE,
        default_max_packet_size=MAX_PACKET_SIZE,
        disabled_algorithms=disabled_algorithms,
    )
    opts = t.get_security_options()
    have = tuple(opts.ciphers)
    first = [c for c in PREFERRED_CIPHERS if c in have]
    opts.ciphers = tuple(first + [c for c in have if c not in first])
    return t


def _info(a: SFTPAttributes) -> FileInfo:
    return FileInfo(
        mode=a.st_mode or 0,
        uid=a.st_uid if a.st_uid is not None else -1,
        size=a.st_size or 0,
        mtime=float(a.st_mtime or 0),
        nlink=_nlink(getattr(a, "longname", None)),
    )


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "a file"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


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


class _QuickAckSocket:
    """A TCP socket that acknowledges every read at once.

    sshd does not set TCP_NODELAY on non-interactive sessions, so when it
    writes two small packets in a row (after authentication: the success
    reply, then its host-keys notice) Nagle holds the second until our ACK,
    which Linux delays by ~40 ms. That stall was a third of a warm stage.
    TCP_QUICKACK is not sticky, hence re-armed after every recv."""

    __slots__ = ("_sock",)

    def __init__(self, sock: socket.socket):
        self._sock = sock

    def recv(self, n: int, *flags: int) -> bytes:
        data = self._sock.recv(n, *flags)
        try:
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        except OSError:
            pass
        return data

    def __getattr__(self, name: str):
        return getattr(self._sock, name)


class _ExecFailed(OSError):
    """A fixed command exited non-zero; ``problem`` is its stderr or exit status."""

    def __init__(self, message: str, problem: str):
        super().__init__(message)
        self.problem = problem


class _ProxyCommand(paramiko.ProxyCommand):
    """paramiko's ProxyCommand started from an argv we built (no shell, no
    re-splitting), reaped on close."""

    def __init__(self, argv: list[str]):
        import subprocess

        self.cmd = list(argv)
        self.process = subprocess.Popen(
            self.cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            bufsize=0,
        )
        self.timeout = None

    def close(self):
        import subprocess

        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for f in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(Exception):
                f.close()


# --------------------------------------------------------------- transport
class SSHTransport(Transport):
    """File operations on a remote node over one SSH connection + one SFTP
    session (see the module docstring).  Not thread-safe: one per node and
    thread.

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
        self._client: paramiko.SSHClient | None = None
        self._jump_clients: list[paramiko.SSHClient] = []
        self._sftp: paramiko.SFTPClient | None = None
        self._uid: int | None = None
        self._clock_offset: float | None = None
        self._statvfs_ext: bool | None = None  # None: not tried yet
        self._exec_window = (0.0, 0.0)  # when the last command ran (bracket)

    def __repr__(self) -> str:
        state = "connected" if self._sftp is not None else "idle"
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
        target = self.target
        timeout = float(self.settings.connect_timeout)
        clients: list[paramiko.SSHClient] = []
        try:
            prev: SSHTarget | None = None
            for hop in (*target.jumps, target):
                if not clients and hop.proxy_command:
                    sock = self._proxy_command(hop, timeout)
                elif not clients:
                    sock = self._tcp_connect(hop, timeout)
                else:
                    sock = self._forward(clients[-1], prev, hop, timeout)
                clients.append(self._ssh_connect(hop, sock, timeout))
                prev = hop
            t = clients[-1].get_transport()
            try:
                sftp = paramiko.SFTPClient.from_transport(
                    t, window_size=WINDOW_SIZE, max_packet_size=MAX_PACKET_SIZE
                )
            except Exception as e:
                raise TransportError(self.host, f"cannot open an SFTP session on {target.address}: {e}") from e
            if sftp is None:
                raise TransportError(self.host, f"cannot open an SFTP session on {target.address}")
            sftp.get_channel().settimeout(self.io_timeout)
        except BaseException:
            for c in reversed(clients):
                c.close()
            raise
        self._client, self._jump_clients, self._sftp = clients[-1], clients[:-1], sftp
        via = " via " + " -> ".join(h.address for h in target.jumps) if target.jumps else ""
        log.debug(
            "%s: connected to %s%s (cipher %s)",
            self.host, target.address, via, t.remote_cipher,
        )
        return self

    def _tcp_connect(self, hop: SSHTarget, timeout: float) -> socket.socket:
        where = f"{hop.hostname}:{hop.port}"
        try:
            sock = socket.create_connection((hop.hostname, hop.port), timeout=timeout)
        except socket.gaierror as e:
            raise TransportError(self.host, f"cannot resolve {hop.hostname}: {e.strerror or e}") from e
        except (socket.timeout, TimeoutError) as e:
            raise TransportError(self.host, f"connection to {where} timed out after {timeout:g} s") from e
        except ConnectionRefusedError as e:
            raise TransportError(self.host, f"connection to {where} refused (is sshd running?)") from e
        except OSError as e:
            raise TransportError(self.host, f"cannot connect to {where}: {e.strerror or e}") from e
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # pragma: no cover - not a TCP socket
            return sock
        return _QuickAckSocket(sock) if hasattr(socket, "TCP_QUICKACK") else sock

    def _proxy_command(self, hop: SSHTarget, timeout: float):
        try:
            argv = hop.proxy_argv()
        except ProxyCommandError as e:
            raise TransportError(self.host, str(e)) from e
        try:
            sock = _ProxyCommand(argv)
            sock.settimeout(timeout)
            return sock
        except Exception as e:
            raise TransportError(self.host, f"ProxyCommand {hop.proxy_command!r} failed: {e}") from e

    def _forward(
        self, jump: paramiko.SSHClient, jump_target: SSHTarget, hop: SSHTarget, timeout: float
    ):
        where = f"{hop.hostname}:{hop.port}"
        try:
            return jump.get_transport().open_channel(
                "direct-tcpip", (hop.hostname, hop.port), ("127.0.0.1", 0), timeout=timeout
            )
        except paramiko.ChannelException as e:
            raise TransportError(
                self.host, f"jump host {jump_target.label} cannot reach {where}: {e.text}"
            ) from e
        except (paramiko.SSHException, EOFError, OSError) as e:
            raise TransportError(
                self.host, f"jump host {jump_target.label} cannot reach {where}: {e or type(e).__name__}"
            ) from e

    def _ssh_connect(self, hop: SSHTarget, sock, timeout: float) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        loaded: list[str] = []
        for f in hop.known_hosts_files:
            if not os.path.isfile(f):
                continue
            try:
                client.load_system_host_keys(f)  # "system": never written back
                loaded.append(f)
            except Exception as e:
                log.warning("%s: ignoring unreadable known_hosts %s: %s", self.host, f, e)
        if self.settings.strict_host_keys:
            client.set_missing_host_key_policy(_RejectUnknown(self._hop_label(hop), loaded or list(hop.known_hosts_files)))
        else:
            client.set_missing_host_key_policy(_AcceptUnknown(self._hop_label(hop)))
        keys = [f for f in hop.identity_files if os.path.isfile(f)]
        for f in hop.identity_files:
            if f not in keys:
                log.debug("%s: IdentityFile %s does not exist", self.host, f)
        only = hop.identities_only and bool(hop.identity_files)
        where = hop.address
        started = time.monotonic()
        try:
            client.connect(
                hop.hostname,
                port=hop.port,
                username=hop.username,
                key_filename=keys or None,
                timeout=timeout,
                allow_agent=not only,
                look_for_keys=not only,
                sock=sock,
                banner_timeout=timeout,
                auth_timeout=timeout,
                channel_timeout=timeout,
                transport_factory=_make_paramiko_transport,
            )
        except BaseException as e:
            client.close()
            with contextlib.suppress(Exception):
                sock.close()
            if isinstance(e, PrngCacheError):
                raise
            if isinstance(e, paramiko.BadHostKeyException):
                files = ", ".join(loaded) or "known_hosts"
                raise HostKeyError(
                    self._hop_label(hop),
                    f"host key CHANGED for {hop.known_hosts_name}: server offered "
                    f"{_fingerprint(e.key)}, {files} has {_fingerprint(e.expected_key)}; "
                    "possible man-in-the-middle, or the node was reinstalled "
                    "(then replace its entry)",
                ) from e
            if isinstance(e, paramiko.AuthenticationException) or (
                isinstance(e, paramiko.SSHException) and "No authentication methods" in str(e)
            ):
                missing = [f for f in hop.identity_files if f not in keys]
                tried = ", ".join(keys) if keys else "no IdentityFile"
                if missing:
                    tried += f"; missing: {', '.join(missing)}"
                extra = "" if only else " + agent and ~/.ssh default keys"
                raise TransportError(
                    self.host, f"authentication failed for {where} (keys: {tried}{extra}): {e}"
                ) from e
            if isinstance(e, (socket.timeout, TimeoutError)) or (
                isinstance(e, paramiko.SSHException) and time.monotonic() - started >= 0.95 * timeout
            ):
                raise TransportError(self.host, f"SSH handshake with {where} timed out after {timeout:g} s") from e
            if isinstance(e, paramiko.SSHException):
                msg = str(e)
                if "banner" in msg.lower():
                    msg = f"no SSH banner within {timeout:g} s ({msg})"
                raise TransportError(self.host, f"SSH connection to {where} failed: {msg}") from e
            if isinstance(e, EOFError):
                raise TransportError(self.host, f"{where} closed the connection during the handshake") from e
            if isinstance(e, OSError):
                raise TransportError(self.host, f"SSH connection to {where} failed: {e.strerror or e}") from e
            raise
        return client

    def _hop_label(self, hop: SSHTarget) -> str:
        return self.host if hop.label == self.host else f"{self.host} (jump host {hop.label})"

    def _alive(self) -> bool:
        if self._sftp is None or self._client is None:
            return False
        t = self._client.get_transport()
        return bool(t is not None and t.is_active() and not self._sftp.get_channel().closed)

    def _drop(self) -> None:
        sftp, client, jumps = self._sftp, self._client, self._jump_clients
        self._sftp, self._client, self._jump_clients = None, None, []
        for c in [sftp, client, *reversed(jumps)]:
            if c is not None:
                with contextlib.suppress(Exception):
                    c.close()

    def close(self) -> None:
        """Close the SFTP session, the connection and any jump connections."""
        self._drop()

    def abort(self) -> None:
        """Close the SSH connections under a worker blocked in I/O (Ctrl-C):
        its read or write fails at once instead of after the I/O timeout."""
        for c in [self._client, *self._jump_clients]:
            t = c.get_transport() if c is not None else None
            if t is not None:
                with contextlib.suppress(Exception):
                    t.close()

    def _session(self) -> paramiko.SFTPClient:
        if self._sftp is None or not self._alive():
            self.connect()
        return self._sftp  # type: ignore[return-value]

    # -------------------------------------------------------- errors
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
                        where, kind = culprit
                        return NotADirectoryError(
                            errno.ENOTDIR,
                            f"{what} failed on {self.host}: {where} is {kind}, not a directory",
                            path, None, path2,
                        )
        except PrngCacheError:
            pass  # the connection went away meanwhile: report the original error
        return err

    def _raw_statvfs(self, path: str) -> list[int]:
        sftp = self._session()
        t, msg = sftp._request(CMD_EXTENDED, "statvfs@openssh.com", path)
        if t != CMD_EXTENDED_REPLY:
            raise paramiko.SFTPError("Expected extended reply")
        return [msg.get_int64() for _ in range(_STATVFS_FIELDS)]

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
                    self._drop()
                    raise TransportError(self.host, f"connection lost during statvfs {p}: {e}") from e
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
                    self._drop()
                    raise TransportError(self.host, f"connection lost during lstat {p}: {e}") from e
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
                return p, f"a symbolic link to {_kind(target)}"
            return p, _kind(mode)
        return None

    # ------------------------------------------------------- metadata
    def lstat(self, path: str) -> FileInfo | None:
        sftp = self._session()
        try:
            return _info(sftp.lstat(path))
        except FileNotFoundError:
            return None
        except Exception as e:
            raise self._error(e, "lstat", path) from e

    def listdir_attr(self, path: str) -> dict[str, FileInfo]:
        sftp = self._session()
        try:
            return {a.filename: _info(a) for a in sftp.listdir_attr(path)}
        except Exception as e:
            raise self._error(e, "listdir", path) from e

    def mkdir(self, path: str, mode: int = 0o700) -> None:
        sftp = self._session()
        try:
            sftp.mkdir(path, mode)
        except Exception as e:
            raise self._exists_error(e, "mkdir", path) from e
        self.chmod(path, mode)  # the node's umask must not change the mode

    def chmod(self, path: str, mode: int) -> None:
        sftp = self._session()
        try:
            sftp.chmod(path, mode)
        except Exception as e:
            raise self._error(e, "chmod", path) from e

    def rename(self, src: str, dst: str) -> None:
        sftp = self._session()
        try:
            sftp.posix_rename(src, dst)
        except Exception as e:
            raise self._error(e, "rename", src, dst) from e

    def unlink(self, path: str) -> None:
        sftp = self._session()
        try:
            sftp.remove(path)
        except Exception as e:
            raise self._error(e, "unlink", path) from e

    def rmdir(self, path: str) -> None:
        sftp = self._session()
        try:
            sftp.rmdir(path)
        except Exception as e:
            raise self._error(e, "rmdir", path) from e

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
        try:
            return self._read_handle(sftp, sftp._async_request(
                type(None), CMD_OPEN, path, SFTP_FLAG_READ, SFTPAttributes()
            )), info
        except Exception as e:
            raise self._error(e, "open", path) from e

    @staticmethod
    def _read_handle(sftp, num: int, close: bool = False) -> bytes:
        t, msg = sftp._read_response(num)
        if t != CMD_HANDLE:
            raise paramiko.SFTPError("Expected handle")
        handle = msg.get_binary()
        if close:
            sftp._request(CMD_CLOSE, handle)
        return handle

    def read_bytes(self, path: str, max_bytes: int = 64 << 20) -> bytes:
        handle, info = self._open_for_read(path)
        reader = _SFTPReader(self, self._sftp, handle, path, size_hint=info.size, limit=max_bytes)
        try:
            return reader.readall()
        finally:
            reader.close()

    @contextlib.contextmanager
    def open_read(self, path: str) -> Iterator[BinaryIO]:
        handle, info = self._open_for_read(path)
        raw = _SFTPReader(self, self._sftp, handle, path, size_hint=info.size)
        with io.BufferedReader(raw, buffer_size=CHUNK_SIZE) as f:
            yield f  # type: ignore[misc]

    @contextlib.contextmanager
    def open_write(self, path: str, mode: int = 0o600) -> Iterator[BinaryIO]:
        sftp = self._session()
        attrs = SFTPAttributes()
        attrs.st_mode = mode
        try:
            # O_CREAT|O_EXCL: fails on any existing path, symlinks included
            t, msg = sftp._request(
                CMD_OPEN, path, SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_EXCL, attrs
            )
            if t != CMD_HANDLE:
                raise paramiko.SFTPError("Expected handle")
            handle = msg.get_binary()
        except Exception as e:
            raise self._exists_error(e, "create", path) from e
        w = _SFTPWriter(self, sftp, handle, path)
        w.fchmod(mode)  # exact mode whatever the node's umask (pipelined)
        try:
            yield w  # type: ignore[misc]
        except BaseException:
            w.abort()
            raise
        w.close()

    # ---------------------------------------------------- file system
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
            chan = self._client.get_transport().open_session(timeout=self.settings.connect_timeout)
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

    # ---------------------------------------------------- diagnostics
    @property
    def sftp(self) -> paramiko.SFTPClient:
        """The (single, reused) SFTP session; connects if needed."""
        return self._session()

    @property
    def paramiko_transport(self) -> paramiko.Transport | None:
        """The connection to the node (None when not connected)."""
        return self._client.get_transport() if self._client else None


# ------------------------------------------------------------- streams
class _Pipelined(io.RawIOBase):
    """Base of the SFTP streams: requests are sent without waiting, and the
    stream registers itself as their owner with paramiko, so an answer that
    arrives while another request (another stream, an lstat...) is waited
    for is handed to :meth:`_async_response` and kept, not dropped."""

    def __init__(self, owner: "SSHTransport", sftp: paramiko.SFTPClient, handle: bytes, path: str):
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


class _SFTPWriter(_Pipelined):
    """Write stream on an SFTP handle: CHUNK_SIZE requests, pipelined; every
    status is collected (at the latest in close()) so no failure is lost."""

    def __init__(self, owner: "SSHTransport", sftp: paramiko.SFTPClient, handle: bytes, path: str):
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
                self._send(bytes(self._buf))
                self._buf.clear()
        while n - pos >= CHUNK_SIZE:
            self._send(bytes(mv[pos:pos + CHUNK_SIZE]))
            pos += CHUNK_SIZE
        if pos < n:
            self._buf += mv[pos:]
        return n

    def flush(self) -> None:
        if self._buf and not self.closed and self._failed is None:
            self._send(bytes(self._buf))
            self._buf.clear()

    def _call(self, fn):
        try:
            return fn()
        except Exception as e:
            self._failed = self._owner._error(e, "write", self._path)
            raise self._failed from e

    def _send(self, chunk: bytes) -> None:
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


class _SFTPReader(_Pipelined):
    """Sequential read stream on an SFTP handle with a bounded read-ahead
    of READ_DEPTH requests of CHUNK_SIZE bytes."""

    def __init__(
        self,
        owner: "SSHTransport",
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
