"""Nodes from distributed_config.json, their transports, parallel fan-out."""

from __future__ import annotations

import getpass
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, TypeVar

from .errors import ConfigError, UnknownNodeError
from .policy import NodeSettings, Policy
from .transport.base import Transport
from .transport.names import hostname_problem, username_problem
from .userdata import attr, load_json

log = logging.getLogger(__name__)

LOCALHOST_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Node:
    """One node of the cluster file."""

    hostname: str
    username: str | None = None
    script_path: str = "."
    python_env: str = "python3"
    gpu_count: int = 0
    gpu_type: str = ""
    max_concurrent: int = 1
    use_ramdisk: bool | None = None

    @property
    def is_localhost(self) -> bool:
        return self.hostname in LOCALHOST_NAMES


def as_node(obj: Any) -> Node:
    """A Node from the coordinator's NodeConfig, a plain dict (a cluster
    file's entry), or a Node."""
    if isinstance(obj, Node):
        return obj
    return Node(
        hostname=str(attr(obj, "hostname")),
        username=attr(obj, "username") or None,  # "" (coordinators' default): none given
        script_path=attr(obj, "script_path", ".") or ".",
        python_env=attr(obj, "python_env", "python3") or "python3",
        gpu_count=attr(obj, "gpu_count", 0) or 0,
        gpu_type=attr(obj, "gpu_type", "") or "",
        max_concurrent=attr(obj, "max_concurrent", attr(obj, "max_concurrent_script_jobs", 1)) or 1,
        use_ramdisk=attr(obj, "use_ramdisk"),
    )


_FIELDS: dict[str, tuple[type | tuple[type, ...], bool, str]] = {
    # key: (types, required, expectation)
    "hostname": (str, True, "a host name or ssh config alias"),
    "username": (str, False, "a user name"),
    "script_path": (str, True, "the directory jobs run in"),
    "python_env": (str, False, "a python executable"),
    "gpu_count": (int, False, "an integer"),
    "gpu_type": (str, False, "a string"),
    "max_concurrent_script_jobs": (int, False, "an integer"),
    "use_ramdisk": (bool, False, "true or false"),
    "ramdisk_path": (str, False, "a path"),
}


def load_cluster(path: str) -> list[Node]:
    """Parse the users' cluster file; every problem names file and key."""
    doc = load_json(path, ConfigError, missing="file not found (pass --config PATH)")
    if not isinstance(doc, dict) or not isinstance(doc.get("nodes"), list):
        raise ConfigError(path, "nodes", 'expected an object {"nodes": [...]}')
    base = os.path.dirname(os.path.abspath(path))
    nodes: list[Node] = []
    seen: set[str] = set()
    for i, raw in enumerate(doc["nodes"]):
        where = f"nodes[{i}]"
        if not isinstance(raw, dict):
            raise ConfigError(path, where, "expected an object")
        for key, (types, required, expect) in _FIELDS.items():
            if key not in raw:
                if required:
                    raise ConfigError(path, f"{where}.{key}", f"missing; expected {expect}")
                continue
            val = raw[key]
            if val is None and not required:
                continue
            if not isinstance(val, types) or (types is int and isinstance(val, bool)):
                raise ConfigError(path, f"{where}.{key}", f"expected {expect}, got {type(val).__name__}")
        host = raw["hostname"]
        if not host.strip():
            raise ConfigError(path, f"{where}.hostname", "must not be empty")
        # names reach ProxyCommand %-tokens and jump hosts' command lines:
        # OpenSSH's rules, checked before any node is contacted; repr() keeps
        # the message on one line whatever the name holds
        why = hostname_problem(host)
        if why is not None:
            raise ConfigError(path, f"{where}.hostname", f"{host!r} is not a valid host name: {why} "
                              "(no whitespace, shell metacharacters or leading '-')")
        user = raw.get("username")
        if user is not None:
            why = username_problem(user)
            if why is not None:
                raise ConfigError(path, f"{where}.username", f"{user!r} is not a valid user name: {why} "
                                  "(no whitespace, shell metacharacters or leading '-')")
        if host in seen:
            raise ConfigError(path, f"{where}.hostname", f"duplicate node {host!r}")
        seen.add(host)
        script_path = raw["script_path"]
        if not script_path.startswith("/") and not script_path.startswith("~"):
            # relative script paths are relative to the cluster file
            script_path = os.path.normpath(os.path.join(base, script_path))
        # only the keys checked above: anything else in the entry is not ours
        nodes.append(as_node({**{k: raw[k] for k in _FIELDS if k in raw}, "script_path": script_path}))
    return nodes


def select_nodes(nodes: list[Node], host: str | None) -> list[Node]:
    if host is None:
        return nodes
    chosen = [n for n in nodes if n.hostname == host]
    if not chosen:
        raise UnknownNodeError(host, [n.hostname for n in nodes])
    return chosen


def node_settings(policy: Policy, node: Node) -> NodeSettings:
    """The policy for one node. A node marked ``use_ramdisk: false`` in the
    cluster file is off, as the users' own preload treats it."""
    s = policy.for_node(node.hostname, node.is_localhost)
    if node.use_ramdisk is False and s.mode != "off":
        s = NodeSettings(mode="off", cache_root=s.cache_root, capacity=s.capacity)
    return s


def base_dir(policy: Policy, nodes: Iterable[Node]) -> str:
    """Where bare relative input names live on the coordinator."""
    if policy.inputs.base_dir:
        return policy.inputs.base_dir
    for n in nodes:
        if n.is_localhost:
            return os.path.expanduser(n.script_path)
    return os.getcwd()


def open_transport(node: Node, policy: Policy) -> Transport:
    if node.is_localhost:
        from .transport.local import LocalTransport

        return LocalTransport(node.hostname)
    from .transport.ssh import SSHTransport

    return SSHTransport(node.hostname, node.username, settings=policy.transport)


def connection_identity(node: Node, policy: Policy) -> tuple[str, int, str]:
    """``(hostname, port, username)`` the transport would connect to for
    ``node``: the ssh config's HostName/Port/User applied, the cluster
    file's ``username`` winning over ``User``. No network is used.

    The hostname is lower-cased. For a node reached through jump hosts or a
    ProxyCommand it is qualified by the route (``"u@jump:22 -> 10.0.0.5"``,
    ``"proxy(ssh -W %h:%p bastion) -> 10.0.0.5"``): the same private address
    behind two different bastions may be two machines, so only identical
    routes compare equal. A localhost node (not reached over SSH) is
    ``("localhost", 0, <username or the local user>)``.

    Raises :class:`~prng_cache.errors.TransportError` when the node's name
    is refused (:class:`~prng_cache.errors.UnsafeNameError`) or the ssh
    config cannot be read; such a node has no identity to share."""
    if node.is_localhost:
        return ("localhost", 0, node.username or getpass.getuser())
    from .transport.ssh import resolve_target

    t = resolve_target(node.hostname, node.username, policy.transport)
    route = [f"{h.username}@{h.hostname.lower()}:{h.port}" for h in t.jumps]
    if t.proxy_command:
        route.insert(0, f"proxy({t.proxy_command})")
    host = t.hostname.lower()
    return (" -> ".join([*route, host]), t.port, t.username)


def fan_out(items: list[T], fn: Callable[[T], R], parallel: int) -> list[R]:
    """Run fn over items with at most ``parallel`` at once; results in order.

    fn must not raise (callers turn per-node failures into reports). Workers
    are daemon threads and the main thread waits in short slices, so a
    Ctrl-C reaches it at once: it aborts every open transport (the workers'
    blocked I/O then fails), waits briefly for the workers and re-raises."""
    from . import cancel

    if not items:
        return []
    results: list = [None] * len(items)
    pending = list(enumerate(items))
    pending.reverse()
    lock = threading.Lock()
    done = threading.Event()
    remaining = [len(items)]
    errors: list[BaseException] = []

    def worker() -> None:
        while True:
            with lock:
                if not pending or cancel.cancelled():
                    return
                i, item = pending.pop()
            try:
                results[i] = fn(item)
            except BaseException as exc:  # a bug in fn: surface it in the caller
                errors.append(exc)
            finally:
                with lock:
                    remaining[0] -= 1
                    if remaining[0] == 0:
                        done.set()

    threads = [threading.Thread(target=worker, name=f"prng-node-{k}", daemon=True)
               for k in range(max(1, min(parallel, len(items))))]
    try:
        for th in threads:
            th.start()
        while not done.wait(0.1):
            if not any(th.is_alive() for th in threads):
                break
    except BaseException:
        cancel.cancel_all()
        deadline = time.monotonic() + 2.0
        for th in threads:
            th.join(max(0.0, deadline - time.monotonic()))
        raise
    if errors:
        raise errors[0]
    return results
