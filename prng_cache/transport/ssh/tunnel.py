"""Single-gateway jumps through ``sshtunnel.SSHTunnelForwarder``.

A node behind one jump host (``transport.jump_host``, or a one-hop
``ProxyJump``) is reached through a local listener on 127.0.0.1 that
sshtunnel forwards over the gateway's SSH connection. One forwarder per
gateway is shared by every node behind it (one listener per node address),
reference-counted by the transports using it: the last ``close()`` or
``abort()`` (Ctrl-C: :func:`prng_cache.cancel.cancel_all`) stops its
threads and the gateway connection, and so does interpreter exit.

sshtunnel would connect to the gateway by its own rules: any key in
``~/.ssh`` or the agent, the ssh config's ProxyCommand, and no host key
check unless it is handed one. So the forwarder is built with
``ssh_config_file=None`` and no keys, and the gateway connection is the one
:mod:`.connect` opened like every other hop (known_hosts policy,
IdentityFile/IdentitiesOnly, tuned socket): :class:`_Forwarder` replaces the
two sshtunnel hooks that would connect and collect keys
(``_connect_to_gateway``, ``_consolidate_auth``). Its channel opener is
ours too, so a gateway that cannot reach the node is reported as such (and
within ``connect_timeout``), not as a node that hung up; and its handler
threads are tracked, so stopping joins them. ``pyproject.toml`` bounds
sshtunnel to the releases these hooks were checked against
(``tests/test_dependencies.py`` checks they exist).
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import functools
import inspect
import logging
import socket
import threading
from typing import Callable

import paramiko
import sshtunnel

from .quiet import quiet_logger
from .target import SSHTarget

log = logging.getLogger(__name__)


#: handed to sshtunnel, which would otherwise create its own console handler
_SSHTUNNEL_LOG = quiet_logger(__name__ + ".sshtunnel")
_LOOPBACK = ("127.0.0.1", 0)  # never 0.0.0.0 (sshtunnel's default): no tunnel for the network
#: how often a listener looks whether it is to stop: stopping waits for it
#: (sshtunnel's 0.1 s made closing a jump host's last node take ~30 ms)
_POLL_INTERVAL = 0.02
_MAX_OUTCOMES = 256  # channel outcomes nobody asked for (someone else used the port)

Address = tuple[str, int]

#: the SSHTunnelForwarder internals this module replaces or calls
_HOOKS = (
    "_connect_to_gateway", "_consolidate_auth", "_make_ssh_forward_handler_class",
    "_make_ssh_forward_server", "_serve_forever_wrapper", "tunnel_bindings", "is_active",
)
#: ... and what its code must still do with them
_CALLS = (
    (sshtunnel.SSHTunnelForwarder, "self._connect_to_gateway()", "connects through _connect_to_gateway"),
    (sshtunnel.SSHTunnelForwarder, "self._consolidate_auth(", "collects keys through _consolidate_auth"),
    (sshtunnel.SSHTunnelForwarder, "self._server_list.append(", "keeps its listeners in _server_list"),
    (sshtunnel._ForwardHandler, "self.ssh_transport.open_channel(", "opens channels on ssh_transport"),
)


_HOOK_LOCK = threading.Lock()


def hook_problems() -> tuple[str, ...]:
    """What this module needs from the installed sshtunnel and does not
    find (empty: all there). Computed once, under a lock: nodes connect in
    parallel and ``ast.parse`` (behind ``inspect.getsource``) is not
    thread-safe."""
    with _HOOK_LOCK:
        return _hook_problems()


@functools.lru_cache(maxsize=None)
def _hook_problems() -> tuple[str, ...]:
    problems = [f"SSHTunnelForwarder.{n} is missing" for n in _HOOKS if not hasattr(sshtunnel.SSHTunnelForwarder, n)]
    for cls, needle, what in _CALLS:
        try:
            if needle not in inspect.getsource(cls):
                problems.append(f"{cls.__name__} no longer {what}")
        except (OSError, TypeError):  # no source (frozen build): the names must do
            pass
    return tuple(problems)


class _Outcome:
    """Whether the gateway opened the channel for one local connection."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: BaseException | None = None


class _ChannelOpener:
    """What a sshtunnel handler sees as the gateway transport: it opens the
    channel for the handler's connection and notes the outcome."""

    def __init__(self, forwarder: "_Forwarder", client: Address):
        self._forwarder, self._client = forwarder, client

    def open_channel(self, kind, dest_addr=None, src_addr=None, timeout=None):
        return self._forwarder._open_channel(self._client, kind, dest_addr, src_addr)


class _Forwarder(sshtunnel.SSHTunnelForwarder):
    """An SSHTunnelForwarder over a gateway connection we opened and
    verified (see the module docstring)."""

    def __init__(self, gateway: paramiko.SSHClient, hop: SSHTarget, remote: Address, timeout: float):
        self._gateway = gateway
        self._channel_timeout = timeout
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._outcomes: collections.OrderedDict[Address, _Outcome] = collections.OrderedDict()
        self.refs = 0
        self.closed = False
        self._stopped = False
        super().__init__(
            ssh_address_or_host=(hop.hostname, hop.port),
            ssh_username=hop.username,
            ssh_config_file=None,  # never read a config: no ProxyCommand built from it
            ssh_proxy_enabled=False,
            allow_agent=False,
            host_pkey_directories=[],
            remote_bind_address=remote,
            local_bind_address=_LOOPBACK,
            set_keepalive=0.0,
            compression=False,
            logger=_SSHTUNNEL_LOG,
        )

    # ------------------------------------------------ sshtunnel hooks
    @staticmethod
    def _consolidate_auth(*args, **kwargs):
        return None, []  # authentication happened on our gateway connection

    def _connect_to_gateway(self):
        self._transport = self._gateway.get_transport()

    def _serve_forever_wrapper(self, _srv, poll_interval=_POLL_INTERVAL):
        self._track()
        super()._serve_forever_wrapper(_srv, poll_interval)

    def _make_ssh_forward_handler_class(self, remote_address_):
        base = super()._make_ssh_forward_handler_class(remote_address_)
        forwarder = self

        class Handler(base):
            @property
            def ssh_transport(self):
                return _ChannelOpener(forwarder, self.client_address)

            def handle(self):
                forwarder._track()
                with contextlib.suppress(OSError):  # replies must not wait for Nagle either
                    self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                try:
                    super().handle()
                except sshtunnel.HandlerSSHTunnelForwarderError:
                    pass  # the outcome is noted for the connecting transport, which reports it

        return Handler

    def _track(self) -> None:
        """Note the calling thread (a listener's or a connection's) so that
        shutdown() can join it; forget the finished ones."""
        with self._lock:
            self._threads = {t for t in self._threads if t.is_alive()}
            self._threads.add(threading.current_thread())

    # ------------------------------------------------------ channels
    def _open_channel(self, client: Address, kind, dest_addr, src_addr) -> paramiko.Channel:
        outcome = _Outcome()
        with self._lock:
            self._outcomes[client] = outcome
            while len(self._outcomes) > _MAX_OUTCOMES:
                self._outcomes.popitem(last=False)
        try:
            return self._transport.open_channel(kind, dest_addr, src_addr, timeout=self._channel_timeout)
        except BaseException as e:
            outcome.error = e
            raise
        finally:
            outcome.done.set()

    def channel_error(self, client: Address, wait: float) -> BaseException | None:
        """Why the gateway opened no channel for our connection from
        ``client`` (None: it did, or it is still trying after ``wait`` s)."""
        with self._lock:
            outcome = self._outcomes.get(client)
        if outcome is None or not outcome.done.wait(wait):
            return None
        with self._lock:
            self._outcomes.pop(client, None)
        return outcome.error

    # ---------------------------------------------------- listeners
    def listen(self, remote: Address) -> int | None:
        """One more user of the forwarder: the local port forwarding to
        ``remote`` (a new listener the first time). None once closed."""
        with self._lock:
            if self.closed:
                return None
            bound = self.tunnel_bindings.get(remote)
            if bound is None:
                self._make_ssh_forward_server(remote, _LOOPBACK)  # appended to _server_list
                srv = self._server_list[-1]
                self.tunnel_is_up[srv.local_address] = True
                threading.Thread(
                    target=self._serve_forever_wrapper, args=(srv,), name=f"Srv-{srv.local_port}", daemon=True
                ).start()
                bound = srv.local_address
            self.refs += 1
            return bound[1]

    @property
    def usable(self) -> bool:
        return not self.closed and self.is_active

    def release(self) -> None:
        with self._lock:
            self.refs -= 1
            last = self.refs <= 0 and not self.closed
        if last:
            self.shutdown()

    def shutdown(self) -> None:
        """Stop the listeners and the gateway connection; join the threads.
        Idempotent."""
        with self._lock:
            self.closed = True
            if self._stopped:
                return
            self._stopped = True
        gateway = self._gateway.get_transport()
        if gateway is not None:
            with contextlib.suppress(Exception):  # wakes its reader thread now (close() alone does not)
                gateway.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(Exception):
            self.stop(force=True)
        with contextlib.suppress(Exception):
            self._gateway.close()
        me = threading.current_thread()
        with self._lock:
            threads = [*self._threads, *([gateway] if gateway is not None else [])]
        for t in threads:
            if t is not me:
                t.join(timeout=5)


class Lease:
    """One transport's use of a gateway's forwarder; :meth:`release` once
    (more calls do nothing)."""

    def __init__(self, forwarder: _Forwarder, port: int):
        self.forwarder = forwarder
        self.address: Address = ("127.0.0.1", port)
        self._released = False
        self._lock = threading.Lock()

    def channel_error(self, client: Address, wait: float) -> BaseException | None:
        return self.forwarder.channel_error(client, wait)

    def release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        self.forwarder.release()


class _Slot:
    def __init__(self) -> None:
        self.lock = threading.Lock()  # one gateway connect at a time; the others wait and share it
        self.forwarder: _Forwarder | None = None


_slots_lock = threading.Lock()
_slots: dict[tuple, _Slot] = {}


def acquire(
    key: tuple,
    hop: SSHTarget,
    remote: Address,
    open_gateway: Callable[[], paramiko.SSHClient],
    timeout: float,
) -> Lease:
    """A lease on the forwarder for gateway ``key`` (everything that makes
    two gateway connections interchangeable: the hop as resolved, the host
    key policy), listening for ``remote``. The gateway is connected with
    ``open_gateway()`` when there is no usable forwarder yet; its errors
    propagate."""
    with _slots_lock:
        slot = _slots.setdefault(key, _Slot())
    with slot.lock:
        for _ in range(2):
            fwd = slot.forwarder
            if fwd is None or not fwd.usable:
                if fwd is not None:
                    fwd.shutdown()  # the gateway connection died: its listeners are useless
                    slot.forwarder = None
                fwd = _start(open_gateway(), hop, remote, timeout)
                slot.forwarder = fwd
            port = fwd.listen(remote)
            if port is not None:
                return Lease(fwd, port)
            slot.forwarder = None  # released to zero meanwhile: start another
    raise RuntimeError("sshtunnel forwarder closed while starting")  # pragma: no cover


def _start(gateway: paramiko.SSHClient, hop: SSHTarget, remote: Address, timeout: float) -> _Forwarder:
    try:
        fwd = _Forwarder(gateway, hop, remote, timeout)
        fwd.start()
    except BaseException:
        gateway.close()
        raise
    log.debug("sshtunnel forwarder through %s started", hop.address)
    return fwd


def stop_all() -> None:
    """Stop every forwarder (interpreter exit; the transports using them fail)."""
    with _slots_lock:
        slots = list(_slots.values())
    for slot in slots:
        fwd = slot.forwarder
        if fwd is not None:
            fwd.shutdown()


atexit.register(stop_all)
