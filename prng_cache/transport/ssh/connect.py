"""Opening a connection to a node: the route (direct, ProxyCommand, one
gateway through an sshtunnel forwarder, a chain of jump hosts), the SSH
handshake of every hop with its host key checked, and the SFTP session.

Routes:

- no jump host: a tuned TCP socket, or the config's ``ProxyCommand``;
- one jump host (``transport.jump_host`` or a one-hop ``ProxyJump``): the
  gateway is connected like any hop, then the node through the local
  listener of the gateway's shared ``sshtunnel`` forwarder (:mod:`.tunnel`);
- a ``ProxyJump`` chain of two or more: each hop through a ``direct-tcpip``
  channel of the previous one (no listener, no forwarding threads).

Throughput: the AES-GCM cipher preferred (paramiko's needs no separate MAC
pass) and a 16 MiB channel window.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import paramiko

from ...errors import HostKeyError, PrngCacheError, TransportError
from ...policy import TransportPolicy
from . import hostkeys
from .quiet import quiet_logger
from .sockets import proxy_command, tcp_connect
from .target import SSHTarget

if TYPE_CHECKING:  # sshtunnel (.tunnel) is imported only when a jump host needs it
    from . import tunnel

log = logging.getLogger(__name__)
PARAMIKO_LOG = "prng_cache.transport.ssh.paramiko"

#: our receive window / max packet for every channel (SFTP downloads)
WINDOW_SIZE = 16 << 20
MAX_PACKET_SIZE = 128 << 10
#: ciphers to offer first: paramiko's AES-GCM needs no separate MAC pass
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr")


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


@dataclass
class Connection:
    """An open route to a node and its SFTP session."""

    client: paramiko.SSHClient  # the node
    sftp: paramiko.SFTPClient
    jumps: list[paramiko.SSHClient] = field(default_factory=list)  # chain hops, outermost first
    lease: tunnel.Lease | None = None  # the gateway's forwarder (one jump host)

    @property
    def transport(self) -> paramiko.Transport | None:
        return self.client.get_transport()

    def alive(self) -> bool:
        t = self.client.get_transport()
        return bool(t is not None and t.is_active() and not self.sftp.get_channel().closed)

    def close(self) -> None:
        for c in [self.sftp, self.client, *reversed(self.jumps)]:
            with contextlib.suppress(Exception):
                c.close()
        if self.lease is not None:
            self.lease.release()

    def abort(self) -> None:
        """Close the connections under a thread blocked in I/O (from another
        thread): its read or write fails at once. The forwarder is released:
        the last transport behind a gateway stops its threads."""
        for c in [self.client, *self.jumps]:
            t = c.get_transport()
            if t is not None:
                with contextlib.suppress(Exception):
                    t.close()
        if self.lease is not None:
            self.lease.release()


class Connector:
    """Opens connections for node ``host`` (the name as given: error
    messages name it) with the policy's timeouts and host key rules."""

    def __init__(self, host: str, settings: TransportPolicy, io_timeout: float):
        self.host = host
        self.settings = settings
        self.io_timeout = io_timeout
        self.timeout = float(settings.connect_timeout)

    def open(self, target: SSHTarget) -> Connection:
        clients: list[paramiko.SSHClient] = []
        lease = None
        try:
            if len(target.jumps) == 1:
                client, lease = self._through_forwarder(target, target.jumps[0])
                clients.append(client)
            else:
                prev: SSHTarget | None = None
                for hop in (*target.jumps, target):
                    sock = self._first_hop_socket(hop) if not clients else self._forward(clients[-1], prev, hop)
                    clients.append(self._ssh_connect(hop, sock))
                    prev = hop
            sftp = self._open_sftp(clients[-1], target)
        except BaseException:
            for c in reversed(clients):
                c.close()
            if lease is not None:
                lease.release()
            raise
        conn = Connection(clients[-1], sftp, clients[:-1], lease)
        if lease is not None:
            via = f" via {target.jumps[0].address} (sshtunnel forwarder {lease.address[0]}:{lease.address[1]})"
        elif target.jumps:
            via = " via " + " -> ".join(h.address for h in target.jumps)
        else:
            via = ""
        log.debug("%s: connected to %s%s (cipher %s)", self.host, target.address, via, conn.transport.remote_cipher)
        return conn

    def _open_sftp(self, client: paramiko.SSHClient, target: SSHTarget) -> paramiko.SFTPClient:
        """The SFTP session, within the connect timeout: a node that logs in
        but whose SFTP server never answers (a ForceCommand that hangs, a
        home on a hung NFS mount) must become this node's error, not a
        stage (and a coordinator) waiting forever. paramiko's subsystem
        request has no timeout of its own: a watchdog closes the connection."""
        stuck = threading.Event()

        def give_up() -> None:
            stuck.set()
            client.close()

        watchdog = threading.Timer(self.timeout, give_up)
        watchdog.daemon = True
        watchdog.start()
        try:
            chan = client.get_transport().open_session(
                window_size=WINDOW_SIZE, max_packet_size=MAX_PACKET_SIZE, timeout=self.timeout)
            chan.settimeout(self.timeout)
            chan.invoke_subsystem("sftp")
            sftp = paramiko.SFTPClient(chan)  # the version exchange reads with the timeout above
        except Exception as e:
            if stuck.is_set() or isinstance(e, socket.timeout):
                raise TransportError(self.host, f"the SFTP server on {target.address} did not answer within "
                                                f"{self.timeout:g} s (transport.connect_timeout)") from e
            raise TransportError(self.host, f"cannot open an SFTP session on {target.address}: {e}") from e
        finally:
            watchdog.cancel()
        if stuck.is_set():
            raise TransportError(self.host, f"the SFTP server on {target.address} did not answer within "
                                            f"{self.timeout:g} s (transport.connect_timeout)")
        chan.settimeout(self.io_timeout)
        return sftp

    # ----------------------------------------------------------- hops
    def _first_hop_socket(self, hop: SSHTarget):
        if hop.proxy_command:
            return proxy_command(self.host, hop, self.timeout)
        return tcp_connect(self.host, hop.hostname, hop.port, self.timeout)

    def _forward(self, jump: paramiko.SSHClient, jump_target: SSHTarget, hop: SSHTarget):
        try:
            return jump.get_transport().open_channel(
                "direct-tcpip", (hop.hostname, hop.port), ("127.0.0.1", 0), timeout=self.timeout
            )
        except (paramiko.SSHException, EOFError, OSError) as e:
            raise self._unreachable(jump_target, hop, e) from e

    def _unreachable(self, jump_target: SSHTarget, hop: SSHTarget, e: BaseException) -> TransportError:
        why = e.text if isinstance(e, paramiko.ChannelException) else (e or type(e).__name__)
        return TransportError(
            self.host, f"jump host {jump_target.label} cannot reach {hop.hostname}:{hop.port}: {why}"
        )

    def _through_forwarder(self, target: SSHTarget, gateway: SSHTarget) -> tuple[paramiko.SSHClient, tunnel.Lease]:
        """The node through the gateway's shared sshtunnel forwarder: the
        gateway's own connection (opened here when there is none yet) is a
        hop like any other; the node is reached on the forwarder's local
        port, its host key checked under its own name."""
        import sshtunnel

        from . import tunnel

        problems = tunnel.hook_problems()
        if problems:
            raise TransportError(
                self.host, f"sshtunnel {sshtunnel.__version__} cannot be used for jump host {gateway.label} "
                f"({'; '.join(problems)}); install an sshtunnel within the bounds in pyproject.toml",
            )
        key = (gateway, self.settings.strict_host_keys, self.timeout)
        try:
            lease = tunnel.acquire(
                key, gateway, (target.hostname, target.port),
                lambda: self._ssh_connect(gateway, self._first_hop_socket(gateway)), self.timeout,
            )
        except sshtunnel.BaseSSHTunnelForwarderError as e:
            raise TransportError(self.host, f"cannot start the sshtunnel forwarder through {gateway.label}: {e}") from e
        try:
            sock = tcp_connect(self.host, *lease.address, self.timeout)
            local = sock.getsockname()
            try:
                return self._ssh_connect(target, sock), lease
            except HostKeyError:
                raise
            except TransportError as e:
                # a node that hung up at once may be a gateway that could not reach it
                why = lease.channel_error(local, wait=self.timeout)
                if why is None:
                    raise
                raise self._unreachable(gateway, target, why) from e
        except BaseException:
            lease.release()
            raise

    # ------------------------------------------------------ handshake
    def _hop_label(self, hop: SSHTarget) -> str:
        return self.host if hop.label == self.host else f"{self.host} (jump host {hop.label})"

    def _ssh_connect(self, hop: SSHTarget, sock) -> paramiko.SSHClient:
        timeout = self.timeout
        client = paramiko.SSHClient()
        # paramiko logs (with tracebacks) what we report once per node anyway
        client.set_log_channel(quiet_logger(PARAMIKO_LOG).name)
        label = self._hop_label(hop)
        loaded = hostkeys.apply_policy(client, hop, label, self.settings.strict_host_keys, self.host)
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
                raise hostkeys.changed_key_error(e, hop, label, loaded) from e
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
