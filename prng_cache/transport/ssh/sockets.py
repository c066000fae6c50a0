"""The byte pipe under an SSH connection: a tuned TCP socket, or a
``ProxyCommand`` run without a shell.

Throughput: TCP_NODELAY and TCP_QUICKACK (no Nagle / delayed-ACK stalls).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess

import paramiko

from ...errors import TransportError
from ..names import ProxyCommandError
from .target import SSHTarget


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


def tune(sock: socket.socket):
    """TCP_NODELAY now, TCP_QUICKACK after every read (see _QuickAckSocket)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:  # pragma: no cover - not a TCP socket
        return sock
    return _QuickAckSocket(sock) if hasattr(socket, "TCP_QUICKACK") else sock


def tcp_connect(host: str, hostname: str, port: int, timeout: float):
    """A tuned TCP connection to ``hostname:port``; TransportError (for node
    ``host``) saying why there is none."""
    where = f"{hostname}:{port}"
    try:
        sock = socket.create_connection((hostname, port), timeout=timeout)
    except socket.gaierror as e:
        raise TransportError(host, f"cannot resolve {hostname}: {e.strerror or e}") from e
    except (socket.timeout, TimeoutError) as e:
        raise TransportError(host, f"connection to {where} timed out after {timeout:g} s") from e
    except ConnectionRefusedError as e:
        raise TransportError(host, f"connection to {where} refused (is sshd running?)") from e
    except OSError as e:
        raise TransportError(host, f"cannot connect to {where}: {e.strerror or e}") from e
    return tune(sock)


class _ProxyCommand(paramiko.ProxyCommand):
    """paramiko's ProxyCommand started from an argv we built (no shell, no
    re-splitting), reaped on close."""

    def __init__(self, argv: list[str]):
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


def proxy_command(host: str, hop: SSHTarget, timeout: float) -> _ProxyCommand:
    """Run the hop's ProxyCommand (split into words, no shell)."""
    try:
        argv = hop.proxy_argv()
    except ProxyCommandError as e:
        raise TransportError(host, str(e)) from e
    try:
        sock = _ProxyCommand(argv)
        sock.settimeout(timeout)
        return sock
    except Exception as e:
        raise TransportError(host, f"ProxyCommand {hop.proxy_command!r} failed: {e}") from e
