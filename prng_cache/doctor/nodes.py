"""doctor's node checks: reachable, host key, cache root, space (read-only)."""

from __future__ import annotations

import getpass
import os
import shlex
from collections.abc import Sequence
from typing import Any

from .. import cancel
from ..cluster import Node, fan_out, node_settings, open_transport
from ..errors import (HostKeyError, NodeError, TransportError, UnsafeNameError)
from ..policy import Policy
from ..policy.model import NodeSettings
from ..reports import fmt_bytes
from ..transport.base import Transport


from .core import MAX_PARALLEL, Check, log


# ==================================================================== nodes
def check_nodes(nodes: Sequence[Node], policy: Policy, *, need_bytes: int = 0,
                config: str = "distributed_config.json") -> list[Check]:
    """Every node's checks, nodes in parallel (an unreachable node costs at
    most ``transport.connect_timeout``). Read-only: nothing is created,
    changed or removed on a node."""
    cancel.reset()
    per_node = fan_out(list(nodes), lambda n: _safe_node_checks(n, policy, need_bytes, config),
                       max(1, min(len(nodes), MAX_PARALLEL)))
    return [c for checks in per_node for c in checks]


def _safe_node_checks(node: Node, policy: Policy, need: int, config: str) -> list[Check]:
    try:
        return node_checks(node, policy, need_bytes=need, config=config)
    except Exception as exc:  # fan_out's workers must not raise
        log.debug("%s: doctor failed", node.hostname, exc_info=True)
        return [Check(f"reachable:{node.hostname}", False, f"{node.hostname}: {type(exc).__name__}: {exc}",
                      fix="rerun with -v and report this as a prng-cache bug")]


def node_checks(node: Node, policy: Policy, *, need_bytes: int = 0,
                config: str = "distributed_config.json") -> list[Check]:
    """One node's checks (see the module docstring); ``config`` names the
    cluster file in fixes."""
    host = node.hostname
    settings = node_settings(policy, node)
    if settings.mode != "cache":
        why = {"direct": "jobs read their original paths",
               "off": "the cache is off for it: jobs keep their arguments"}.get(settings.mode, "")
        return [Check(f"mode:{host}", True, f"{host}: mode {settings.mode}: not contacted; {why}")]
    try:
        t = open_transport(node, policy)
    except TransportError as exc:
        return _connect_failure(node, policy, exc, config)
    checks: list[Check] = []
    with t, cancel.tracked(t):
        if not node.is_localhost:
            try:
                t.connect()  # type: ignore[attr-defined]
            except TransportError as exc:
                return _connect_failure(node, policy, exc, config, transport=t)
            target = t.target  # type: ignore[attr-defined]
            checks.append(Check(f"reachable:{host}", True, f"{host}: logged in as {target.address}"
                                + _route(target) + " (SFTP)"))
            checks.append(_host_key_ok(host, t, policy))
        try:
            root_check, root_exists = _check_root(host, t, settings, node)
            checks.append(root_check)
            if root_check.ok or root_exists:
                checks.append(_check_space(host, t, settings, root_exists, need_bytes))
        except (NodeError, OSError) as exc:
            checks.append(Check(f"cache_root:{host}", False, f"{host}: cannot inspect {settings.cache_root}: {exc}",
                                fix=f"check {host} by hand (ssh {host}) and rerun doctor"))
    return checks


def _route(target: Any) -> str:
    if getattr(target, "jumps", ()):
        return " via " + " -> ".join(h.address for h in target.jumps)
    if getattr(target, "proxy_command", None):
        return f" via ProxyCommand {target.proxy_command!r}"
    return ""


def _target_or_none(node: Node, policy: Policy, transport: Any = None) -> Any:
    try:
        if transport is not None:
            return transport.target
        from ..transport.ssh import resolve_target

        return resolve_target(node.hostname, node.username, policy.transport)
    except Exception:
        return None


def _keyscan(target: Any, known_hosts: str) -> str:
    port = f"-p {target.port} " if target.port != 22 else ""
    return f"ssh-keyscan {port}{shlex.quote(target.hostname)} >> {shlex.quote(known_hosts)}"


def _connect_failure(node: Node, policy: Policy, exc: TransportError, config: str,
                     transport: Any = None) -> list[Check]:
    """The checks a failed connection becomes, with the fix for its cause."""
    return [_connect_check(node, policy, exc, config, transport)] if not isinstance(exc, HostKeyError) else \
        _host_key_failure(node, policy, exc, transport)


def _host_key_failure(node: Node, policy: Policy, exc: HostKeyError, transport: Any) -> list[Check]:
    """sshd answered with a key that is not trusted: reachable, host key
    refused (login and the root are not tried with it)."""
    host = node.hostname
    problem = exc.problem
    target = _target_or_none(node, policy, transport)
    known_hosts = policy.transport.known_hosts
    if "CHANGED" in problem:
        name = target.known_hosts_name if target else host
        fix = (f"if {host} was reinstalled: ssh-keygen -R {shlex.quote(name)} -f {shlex.quote(known_hosts)}, "
               f"then add its new key (after checking it); otherwise treat it as an attack")
    elif target is not None and not target.jumps and not target.proxy_command:
        fix = f"{_keyscan(target, known_hosts)} (after checking the key)"
    else:
        fix = f"ssh {host} once and accept its key after checking it (or add it to {known_hosts})"
    at = f" at {target.hostname}:{target.port}" if target is not None and not target.jumps else ""
    return [Check(f"reachable:{host}", True, f"{host}: an SSH server answers{at}"),
            Check(f"host_key:{host}", False, f"{host}: {problem}", fix=fix)]


def _connect_check(node: Node, policy: Policy, exc: TransportError, config: str, transport: Any) -> Check:
    host = node.hostname
    problem = getattr(exc, "problem", str(exc))
    target = _target_or_none(node, policy, transport)
    if isinstance(exc, UnsafeNameError):
        return Check(f"reachable:{host}", False, f"{host!r}: {problem}",
                     fix=f"correct the node's hostname/username in {config}")
    where = f"{target.address}{_route(target)}" if target is not None else host
    if "authentication failed" in problem:
        user_at = f"{target.username}@{target.hostname}" if target else host
        port = f" -p {target.port}" if target and target.port != 22 else ""
        return Check(f"reachable:{host}", False, f"{host}: {problem}",
                     fix=f"ssh-copy-id{port} {user_at} (or set IdentityFile for {host} in the ssh config)")
    if "SFTP" in problem:
        return Check(f"reachable:{host}", False, f"{host}: {problem}",
                     fix=f"enable the sftp Subsystem in {host}'s sshd_config (prng-cache needs SFTP)")
    if "jump host" in problem or "sshtunnel" in problem:
        return Check(f"reachable:{host}", False, f"{host}: {problem}",
                     fix=f"check the jump host and that it can reach {host}, or remove {host} from {config}")
    if "cannot resolve" in problem:
        return Check(f"reachable:{host}", False, f"{host}: {problem}",
                     fix=f"correct the hostname of {host} in {config} (or its HostName in the ssh config)")
    return Check(f"reachable:{host}", False, f"{host} ({where}): {problem}",
                 fix=f"start sshd on {host} (or check its address in the ssh config) or remove it from {config}")


def _host_key_ok(host: str, t: Any, policy: Policy) -> Check:
    """The key was accepted: say where it is known, or warn when it was
    accepted only because ``strict_host_keys`` is off."""
    target = t.target
    files = [f for f in target.known_hosts_files if os.path.isfile(f)]
    if policy.transport.strict_host_keys:
        return Check(f"host_key:{host}", True, f"{host}: host key known ({', '.join(files) or 'known_hosts'})")
    try:
        import paramiko

        key = t.paramiko_transport.get_remote_server_key()
        known = any(paramiko.HostKeys(f).check(target.known_hosts_name, key) for f in files)
    except Exception:
        known = False
    if known:
        return Check(f"host_key:{host}", True, f"{host}: host key known ({', '.join(files)})")
    return Check(f"host_key:{host}", True, f"{host}: host key NOT in known_hosts, accepted only because "
                 f"transport.strict_host_keys is false; add it: {_keyscan(target, policy.transport.known_hosts)} "
                 "(after checking the key)", warning=True)


# ------------------------------------------------------------- cache root
def _node_uid(t: Transport, node: Node) -> tuple[int | None, str]:
    """The uid prng-cache acts as on the node, learnt without writing
    anything there (the transport's own probe creates a file): ``id -u``
    over an exec channel, else the node's /etc/passwd, else the owner of
    the login directory. Returns (uid or None, how it was learnt)."""
    if node.is_localhost:
        return t.uid(), "local"
    target = t.target  # type: ignore[attr-defined]
    timeout = float(t.settings.connect_timeout)  # type: ignore[attr-defined]
    try:
        chan = t.paramiko_transport.open_session(timeout=timeout)  # type: ignore[attr-defined]
        try:
            chan.settimeout(timeout)
            chan.exec_command("id -u")
            chan.shutdown_write()
            data = b""
            while True:
                chunk = chan.recv(4096)
                if not chunk:
                    break
                data += chunk
            if chan.recv_exit_status() == 0 and data.strip().isdigit():
                return int(data.strip()), "id -u"
        finally:
            chan.close()
    except Exception as exc:
        log.debug("%s: id -u failed: %s", node.hostname, exc)
    try:
        for line in t.read_bytes("/etc/passwd", 8 << 20).decode("utf-8", "replace").splitlines():
            parts = line.split(":")
            if len(parts) >= 3 and parts[0] == target.username and parts[2].isdigit():
                return int(parts[2]), "/etc/passwd"
    except Exception as exc:
        log.debug("%s: /etc/passwd unreadable: %s", node.hostname, exc)
    try:
        home = t.sftp.normalize(".")  # type: ignore[attr-defined]
        info = t.lstat(home)
        if info is not None:
            return info.uid, f"owner of {home}"
    except Exception as exc:
        log.debug("%s: login directory: %s", node.hostname, exc)
    return None, ""


def _readlink(t: Transport, path: str) -> str | None:
    try:
        sftp = getattr(t, "sftp", None)
        return sftp.readlink(path) if sftp is not None else os.readlink(path)
    except Exception:
        return None


def _check_root(host: str, t: Transport, settings: NodeSettings, node: Node) -> tuple[Check, bool]:
    """(check, the root exists). The root is looked at, never created or changed."""
    root = settings.cache_root.rstrip("/") or "/"
    name = f"cache_root:{host}"
    other_root = f"or set nodes.{host}.cache_root in the policy to a directory of your own (e.g. {root}-$USER)"
    info = t.lstat(root)
    if info is None:
        parent = root.rsplit("/", 1)[0] or "/"
        pinfo = t.lstat(parent)
        if pinfo is None:
            return Check(name, False, f"{host}: cannot create {root}: {parent} does not exist",
                         fix=f"set cache_root (or nodes.{host}.cache_root) to a directory on a tmpfs that exists "
                         f"on {host}, such as /dev/shm/prng"), False
        if not pinfo.is_dir:
            return Check(name, False, f"{host}: cannot create {root}: {parent} is not a directory",
                         fix=f"set cache_root (or nodes.{host}.cache_root) to a directory on a tmpfs of {host}"), False
        return Check(name, True, f"{host}: {root} absent: will be created (mode 0700) by the first stage"), False
    uid, how = _node_uid(t, node)
    user = (getattr(getattr(t, "target", None), "username", None) if not node.is_localhost
            else node.username or getpass.getuser())
    if info.is_symlink:
        dest = _readlink(t, root)
        what = f"a symlink to {dest}" if dest else "a symlink"
        mine = uid is not None and info.uid == uid
        fix = (f"rm {root} (it is {what}; this removes the link only) {other_root}" if mine else
               f"ask root or uid {info.uid}, who made it, to remove {root} (it is {what}), {other_root}")
        return Check(name, False, f"{host}: cache root {root} is {what}: prng-cache refuses to write through it",
                     fix=fix), True
    if not info.is_dir:
        return Check(name, False, f"{host}: cache root {root} exists and is not a directory",
                     fix=f"remove {root} on {host} if it is yours to remove, {other_root}"), True
    if uid is None:
        return Check(name, False, f"{host}: {root} is owned by uid {info.uid}; could not learn {user}'s uid "
                     "without writing to the node (no shell for id -u, not in /etc/passwd)",
                     fix=f"check on {host} that {root} belongs to {user} (ls -ldn {root}; id -u)"), True
    learnt = "" if how in ("id -u", "local") else f", per {how}"
    if info.uid != uid:
        return Check(name, False, f"{host}: cache root {root} is owned by uid {info.uid}, not by {user} "
                     f"(uid {uid}{learnt}): it is someone else's",
                     fix=f"ask its owner (uid {info.uid}) or root to remove {root}, {other_root}"), True
    mode = info.perms
    if mode & 0o022:
        return Check(name, False, f"{host}: cache root {root} has mode {mode:04o}: others can write into it, "
                     "so its content cannot be trusted",
                     fix=f"chmod 700 {root} on {host} if everything in it is yours (others could have "
                     f"written there), or set nodes.{host}.cache_root to a new directory; never delete files "
                     "in it you still need"), True
    if mode & 0o077:
        return Check(name, True, f"{host}: {root} is a directory of {user} (uid {uid}) with mode {mode:04o}: "
                     "will be tightened to 0700", warning=True), True
    return Check(name, True, f"{host}: {root} is a private directory of {user} (uid {uid}, mode {mode:04o})"), True


def _check_space(host: str, t: Transport, settings: NodeSettings, exists: bool, need: int) -> Check:
    root = settings.cache_root.rstrip("/") or "/"
    path = root if exists else (root.rsplit("/", 1)[0] or "/")
    cap = settings.capacity
    name = f"space:{host}"
    try:
        usage = t.disk_usage(path)
    except (NodeError, OSError) as exc:
        return Check(name, False, f"{host}: cannot read the free space of {path}: {exc}",
                     fix=f"check that {path} exists on {host} and that its sshd serves statvfs or df works")
    if not usage.total:
        return Check(name, False, f"{host}: the file system of {path} has size 0",
                     fix=f"mount a tmpfs there or set nodes.{host}.cache_root to one")
    limit = usage.total * cap.max_percent / 100.0
    room = max(0.0, limit - usage.used)
    if cap.max_bytes is not None:
        room = min(room, float(cap.max_bytes))
    pct = usage.used_percent
    state = (f"{host}: file system of {path}: {fmt_bytes(usage.used)} of {fmt_bytes(usage.total)} used "
             f"({pct:.0f}%), {fmt_bytes(usage.free)} free; up to {fmt_bytes(room)} can be cached "
             f"(capacity.max_percent {cap.max_percent:g}%"
             + (f", capacity.max_bytes {fmt_bytes(cap.max_bytes)}" if cap.max_bytes is not None else "") + ")")
    free_fix = (f"free RAM on {host} (prng-cache gc --node {host}; remove other files under {path}) "
                f"or raise capacity.max_percent")
    if usage.used >= limit:
        return Check(name, False, f"{state}: already past capacity.max_percent, nothing can be staged",
                     fix=free_fix)
    if need and need > room:
        return Check(name, True, f"{state}; the jobs' inputs take up to {fmt_bytes(need)}: those that do not "
                     "fit (and are not cached already) will be read from their original paths", warning=True)
    if pct > cap.warn_percent:
        return Check(name, True, f"{state}; above capacity.warn_percent ({cap.warn_percent:g}%)", warning=True)
    return Check(name, True, state + (f"; the jobs' inputs take up to {fmt_bytes(need)}" if need else ""))
