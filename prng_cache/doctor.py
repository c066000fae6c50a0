"""``prng-cache doctor``: will adoption work, before a real run?

Every check is a :class:`Check` (name, ok, detail and, when it failed, a
one-line fix); :func:`diagnose` returns them all in a :class:`Diagnosis`.
Nothing here prints (cli.py does) and nothing is written anywhere but on
the coordinator's own hash memo:

- ``policy``, ``cluster``: the files parse (a malformed one is a user error:
  the CLI exits 2 after printing what it could check);
- per node in ``cache`` mode, in parallel, read-only: ``reachable:<host>``
  (sshd answers, login and SFTP work), ``host_key:<host>`` (known, not
  changed), ``cache_root:<host>`` (absent: will be created; else a real
  directory owned by the SSH user that others cannot write to),
  ``space:<host>`` (free space of the root's file system against
  ``capacity.max_percent``); a node in ``direct``/``off`` mode is
  ``mode:<host>`` and is not contacted;
- with a jobs file (``jobs``, ``inputs``, ``missing_inputs``,
  ``companions``): what the stage would cache and skip (the stage's own
  discovery, :func:`prng_cache.run.plan_run`, no node contacted), paths the
  jobs name that do not exist, companions absent beside an input;
- with a coordinator source file (``coordinator``,
  ``coordinator_dry_run``): a static check (parsed with :mod:`ast`, never
  imported or run) that it calls the hooks.
"""

from __future__ import annotations

import ast
import getpass
import inspect
import logging
import os
import posixpath
import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from . import cancel, hookspecs
from .cluster import Node, fan_out, load_cluster, node_settings, open_transport, select_nodes
from .errors import (ConfigError, HostKeyError, InputFileError, JobsFileError, NodeError, PolicyError,
                     TransportError, UnknownNodeError, UnsafeNameError, UserError)
from .jobs import job_args, job_expected_output, job_id, load_jobs
from .policy import Policy, env_disabled, load_policy
from .policy.model import NodeSettings
from .reports import fmt_bytes
from .rewrite import iter_path_tokens, resolve
from .run import RunPlan, plan_run
from .transport.base import Transport
from .userdata import read_text

log = logging.getLogger(__name__)

#: names with these extensions are taken for input paths when they do not exist
DATA_EXTENSIONS = (".json", ".npz", ".npy", ".csv")
#: nodes checked at once (each check is a connection and a few round trips)
MAX_PARALLEL = 32
#: how many paths a detail names before "and N more"
LIST_LIMIT = 8
README_SECTION = 'README section "Register in scripts_coordinator.py"'


@dataclass
class Check:
    """One thing doctor looked at. ``fix`` is set when ``ok`` is False;
    ``warning``: ok, but worth reading (a note on something that will work)."""

    name: str
    ok: bool
    detail: str
    fix: str | None = None
    warning: bool = False

    @property
    def text(self) -> str:
        """The detail, ending with the fix when there is one."""
        return f"{self.detail}; fix: {self.fix}" if self.fix else self.detail

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "ok": self.ok, "detail": self.text}
        if self.fix:
            d["fix"] = self.fix
        if self.warning:
            d["warning"] = True
        return d


@dataclass
class Diagnosis:
    checks: list[Check] = field(default_factory=list)
    #: malformed user files (policy, cluster, jobs, coordinator source, --node)
    errors: list[UserError] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return not self.errors and all(c.ok for c in self.checks)

    @property
    def exit_code(self) -> int:
        """2: a malformed user file; 1: a check failed; 0: ready."""
        return 2 if self.errors else 0 if self.ready else 1

    def to_dict(self) -> dict[str, Any]:
        return {"checks": [c.to_dict() for c in self.checks]}


# ==================================================================== entry
def diagnose(
    *,
    config: str,
    policy_file: str | None = None,
    cache_root: str | None = None,
    node: str | None = None,
    jobs_file: str | None = None,
    coordinator: str | None = None,
) -> Diagnosis:
    """Run every check that applies; never raises for a user's mistake."""
    out = Diagnosis()

    policy = _check_policy(out, policy_file, cache_root)
    nodes, selected = _check_cluster(out, config, node)
    need = 0
    if jobs_file is not None:
        need = _check_jobs(out, jobs_file, nodes, policy)
    if policy is not None and selected is not None:
        out.checks.extend(check_nodes(selected, policy, need_bytes=need, config=config))
    if coordinator is not None:
        try:
            out.checks.extend(check_coordinator(coordinator))
        except UserError as exc:
            out.errors.append(exc)
            out.checks.append(Check("coordinator", False, str(exc), fix=_user_file_fix(exc)))
    return out


# ==================================================================== files
def _user_file_fix(exc: UserError) -> str:
    """One line saying what to change in the user's file."""
    if isinstance(exc, PolicyError):
        m = re.search(r"did you mean ([\w.\-*?\[\]]+)\?", exc.problem)
        if exc.source == "environment":
            return f"correct or unset {exc.key} in the environment"
        if exc.source == "command line":
            return f"correct the command-line value of {exc.key}"
        if m and exc.key:
            return f"rename {exc.key} to {m.group(1)} in {exc.source}"
        if exc.key:
            return (f"correct {exc.key} in {exc.source} (the shipped cache_policy.yaml documents every key "
                    "and its default)")
        return f"correct {exc.source} (YAML; the shipped cache_policy.yaml documents every key)"
    if isinstance(exc, InputFileError):
        if exc.problem.startswith("file not found"):
            return f"create {exc.source} or pass the right path"
        return f"correct {exc.source}" + (f" at {exc.where}" if exc.where else "")
    return "correct the file or option named above"


def _check_policy(out: Diagnosis, path: str | None, cache_root: str | None) -> Policy | None:
    try:
        policy = load_policy(path, overrides={"cache_root": cache_root} if cache_root else None)
    except PolicyError as exc:
        out.errors.append(exc)
        out.checks.append(Check("policy", False, str(exc), fix=_user_file_fix(exc)))
        return None
    src = policy.source
    where = "no policy file: built-in defaults" if src == "defaults" else f"{src} parsed"
    if env_disabled():
        out.checks.append(Check("policy", True, f"{where}; the cache is switched off by PRNG_CACHE=0 / "
                                "USE_RAMDISK=false: nothing will be staged or rewritten", warning=True))
    elif not policy.enabled:
        out.checks.append(Check("policy", True, f"{where}; enabled: false: nothing will be staged or "
                                "rewritten", warning=True))
    else:
        out.checks.append(Check("policy", True, f"{where}; cache_root {policy.cache_root}"))
    return policy


def _check_cluster(out: Diagnosis, path: str, only: str | None) -> tuple[list[Node] | None, list[Node] | None]:
    """(every node, the nodes to check) or None for what could not be read."""
    try:
        nodes = load_cluster(path)
    except ConfigError as exc:
        out.errors.append(exc)
        out.checks.append(Check("cluster", False, str(exc), fix=_user_file_fix(exc)))
        return None, None
    try:
        selected = select_nodes(nodes, only)
    except UnknownNodeError as exc:
        out.errors.append(exc)
        out.checks.append(Check("cluster", False, f"{path}: {exc}", fix=f"pass --node one of the hosts of {path}"))
        return nodes, None
    if not nodes:
        out.checks.append(Check("cluster", False, f"{path}: no nodes",
                                fix=f'list the nodes under "nodes" in {path}'))
    else:
        out.checks.append(Check("cluster", True, f"{path}: {len(nodes)} node(s): "
                                + ", ".join(n.hostname for n in nodes)))
    return nodes, selected


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
        from .transport.ssh import resolve_target

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
                     fix=f"rm -rf {root} on {host} (prng-cache recreates it private), or chmod 700 {root} "
                     "if you trust everything in it"), True
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


# ==================================================================== jobs
def _check_jobs(out: Diagnosis, path: str, nodes: list[Node] | None, policy: Policy | None) -> int:
    """Append the jobs checks; returns the bytes the cached inputs take."""
    try:
        jobs = load_jobs(path)
    except JobsFileError as exc:
        out.errors.append(exc)
        out.checks.append(Check("jobs", False, str(exc), fix=_user_file_fix(exc)))
        return 0
    if policy is None or nodes is None:
        out.checks.append(Check("jobs", True, f"{path}: {len(jobs)} job(s); inputs not checked until the "
                                "policy and cluster files parse"))
        return 0
    plan = plan_run(jobs, nodes, policy)
    out.checks.append(Check("jobs", True, f"{path}: {len(jobs)} job(s)"))
    out.checks.append(_inputs_check(plan, len(jobs)))
    out.checks.append(missing_inputs_check(jobs, policy, plan.base_dir, _coordinator_script_path(nodes, plan),
                                           path))
    out.checks.append(companions_check(plan, policy))
    seen: set[tuple[str, str]] = set()
    need = 0
    for b in plan.bundles:
        if (b.key, b.name) not in seen:
            seen.add((b.key, b.name))
            need += sum(f.size for f in b.files)
    return need


def _coordinator_script_path(nodes: list[Node], plan: RunPlan) -> str:
    for n in nodes:
        if n.is_localhost:
            return os.path.expanduser(n.script_path)
    return plan.base_dir


def _listing(items: Sequence[str], limit: int = LIST_LIMIT) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _jobs_word(ids: Iterable[str]) -> str:
    ids = sorted(ids)
    return f"{len(ids)} job" + ("s" if len(ids) != 1 else "")


def _inputs_check(plan: RunPlan, n_jobs: int) -> Check:
    users = plan.discovery.users
    bundles = plan.bundles
    total = sum(f.size for b in bundles for f in b.files)
    cached = [f"{b.path} ({_jobs_word(users.get(b.path, ()))}"
              + (f", + {', '.join(f.name for f in b.files[1:])}" if len(b.files) > 1 else "") + ")"
              for b in bundles]
    skipped = [f"{p} ({why})" for p, why in sorted(plan.skipped.items())]
    detail = (f"{len(bundles)} input(s) would be cached ({fmt_bytes(total)})"
              + (f": {_listing(cached)}" if cached else ""))
    if skipped:
        detail += f"; {len(skipped)} read from their original paths: {_listing(skipped)}"
    if not bundles and users:
        return Check("inputs", True, detail + "; nothing would be cached (see inputs.min_jobs and "
                     "inputs.include)", warning=True)
    if not users:
        return Check("inputs", True, f"the {n_jobs} job(s) name no existing input file", warning=True)
    return Check("inputs", True, detail)


def _looks_like_input(value: str) -> bool:
    """An argument that names a file the job would read, by its shape."""
    return value.startswith("/") or value.lower().endswith(DATA_EXTENSIONS)


def _aliased(path: str, policy: Policy, script_path: str) -> str | None:
    """Where a path under one of ``inputs.path_aliases`` really lives on the
    coordinator, or None."""
    for prefix, real in policy.inputs.path_aliases:
        if path.startswith(prefix):
            return real.replace("{script_path}", script_path.rstrip("/")) + path[len(prefix):]
    return None


def find_missing_inputs(jobs: Sequence[Any], policy: Policy, base: str,
                        script_path: str | None = None) -> dict[str, set[str]]:
    """Paths the jobs name as inputs that do not exist on the coordinator:
    resolved path -> job ids. A token counts when it is a path by shape
    (absolute, or a name ending in a data extension) and is not a URL, a
    JSON blob, a number, an output flag's value or the job's
    ``expected_output`` (:func:`~prng_cache.rewrite.iter_path_tokens`), nor
    excluded by ``inputs.exclude`` (databases, logs: written by the jobs).
    A path under an ``inputs.path_aliases`` prefix counts only when its
    alias does not exist either."""
    script_path = script_path or base
    missing: dict[str, set[str]] = {}
    exists: dict[str, bool] = {}
    for job in jobs:
        tokens = iter_path_tokens(job_args(job), policy.inputs.output_flags, job_expected_output(job),
                                  base_dir=base)
        for _, _, value in tokens:
            if not _looks_like_input(value):
                continue
            p = resolve(value, base)
            if p not in exists:
                base_name = posixpath.basename(p)
                excluded = any(fnmatchcase(p, g) or fnmatchcase(base_name, g) for g in policy.inputs.exclude)
                alias = _aliased(p, policy, script_path)
                exists[p] = excluded or _exists(p) or (alias is not None and _exists(alias))
            if not exists[p]:
                missing.setdefault(p, set()).add(job_id(job))
    return missing


def _exists(p: str) -> bool:
    try:
        return os.path.exists(p)
    except (ValueError, OSError):
        return False


def missing_inputs_check(jobs: Sequence[Any], policy: Policy, base: str, script_path: str,
                         jobs_file: str) -> Check:
    missing = find_missing_inputs(jobs, policy, base, script_path)
    if not missing:
        return Check("missing_inputs", True, "every input path the jobs name exists on the coordinator")
    items = [f"{p} ({_jobs_word(ids)})" for p, ids in sorted(missing.items())]
    return Check("missing_inputs", False,
                 f"{len(missing)} path(s) the jobs name do not exist on the coordinator (relative names are "
                 f"resolved in {base}): {_listing(items)}",
                 fix=f"create or copy them before the run, or correct the paths in {jobs_file} (an output? "
                 "add its flag to inputs.output_flags)")


def companions_check(plan: RunPlan, policy: Policy) -> Check:
    """Companions declared in ``inputs.companions`` absent beside an input
    that would otherwise be cached (required: the input is not cached;
    optional, ``name?``: it is cached alone)."""
    required: list[str] = []
    optional: list[str] = []
    present = 0
    for p in sorted(plan.discovery.users):
        if p not in plan.discovery.bundles and "companion" not in plan.skipped.get(p, ""):
            continue  # not cached for another reason: its companions do not matter
        parent = posixpath.dirname(p)
        for c in policy.inputs.companions_for(p):
            opt = c.endswith("?")
            name = c.rstrip("?")
            if os.path.isfile(posixpath.join(parent, name)):
                present += 1
            elif opt:
                optional.append(f"{name} beside {p}")
            else:
                required.append(f"{name} beside {p}")
    note = f"; optional, absent (the input is cached alone): {_listing(optional)}" if optional else ""
    if required:
        return Check("companions", False,
                     f"required companion(s) absent, so these inputs will not be cached: {_listing(required)}{note}",
                     fix="put the companion files beside their inputs, or mark them optional with a trailing "
                     "'?' (or drop them) in inputs.companions")
    if optional:
        return Check("companions", True, f"{present} companion(s) present{note}", warning=True)
    return Check("companions", True, f"{present} companion(s) present, none absent")


# ============================================================== coordinator
#: hook -> alternatives that satisfy it (coordinator.py calls the payload form)
HOOKS: dict[str, tuple[str, ...]] = {
    "coordinator_run_start": ("coordinator_run_start",),
    "coordinator_job_args": ("coordinator_job_args", "coordinator_job_payload"),
    "coordinator_run_end": ("coordinator_run_end",),
}


@dataclass
class _HookCall:
    name: str
    line: int
    positional: bool
    keywords: frozenset[str] | None  # None: **kwargs passed
    function: ast.AST | None  # the function it is called in


def _hook_calls(tree: ast.AST) -> list[_HookCall]:
    """Every ``<x>.hook.<name>(...)`` call, with the function holding it."""
    calls: list[_HookCall] = []

    def visit(node: ast.AST, func: ast.AST | None) -> None:
        for child in ast.iter_child_nodes(node):
            here = child if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
            if (isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute)
                    and isinstance(child.func.value, ast.Attribute) and child.func.value.attr == "hook"):
                kws = None if any(k.arg is None for k in child.keywords) else frozenset(
                    k.arg for k in child.keywords if k.arg)
                calls.append(_HookCall(child.func.attr, child.lineno, bool(child.args), kws, func))
            visit(child, here)

    visit(tree, None)
    return calls


def _plugin_manager_use(tree: ast.AST) -> tuple[int | None, int | None]:
    """(line of the import of plugin_manager, line of its first call)."""
    imported: int | None = None
    names: set[str] = set()
    modules: set[str] = set()  # names bound to prng_cache.coordinator
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for a in node.names:
                if a.name == "plugin_manager":
                    imported = imported or node.lineno
                    names.add(a.asname or a.name)
                elif node.module == "prng_cache" and a.name == "coordinator":
                    imported = imported or node.lineno
                    modules.add(a.asname or a.name)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name in ("prng_cache.coordinator", "plugin_manager") or a.name.endswith(".plugin_manager"):
                    imported = imported or node.lineno
                    modules.add(a.asname or a.name)
    called: int | None = None
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if (isinstance(f, ast.Name) and f.id in names) or (
                    isinstance(f, ast.Attribute) and f.attr == "plugin_manager"):
                called = node.lineno if called is None else min(called, node.lineno)
    return imported, called


def _mentions_dry_run(expr: ast.AST) -> bool:
    for n in ast.walk(expr):
        if isinstance(n, ast.Name) and "dry_run" in n.id.lower():
            return True
        if isinstance(n, ast.Attribute) and "dry_run" in n.attr.lower():
            return True
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value.lower().lstrip("-") in (
                "dry_run", "dry-run"):
            return True
    return False


def _leaves(body: list[ast.stmt]) -> bool:
    """The block returns or exits."""
    for n in (x for stmt in body for x in ast.walk(stmt)):
        if isinstance(n, ast.Return):
            return True
        if isinstance(n, ast.Raise) and n.exc is not None and "SystemExit" in ast.dump(n.exc):
            return True
        if isinstance(n, ast.Call):
            f = n.func
            if (isinstance(f, ast.Name) and f.id in ("exit", "quit")) or (
                    isinstance(f, ast.Attribute) and f.attr in ("exit", "_exit")):
                return True
    return False


def _dry_run_returns_after(call: _HookCall) -> int | None:
    """Line of a dry-run early return placed after ``call`` in its function."""
    if call.function is None:
        return None
    for n in ast.walk(call.function):
        if isinstance(n, ast.If) and n.lineno > call.line and _mentions_dry_run(n.test) and _leaves(n.body):
            return n.lineno
    return None


def _spec_args(hook: str) -> tuple[str, ...] | None:
    spec = getattr(hookspecs, hook, None)
    if spec is None:
        return None
    return tuple(inspect.signature(spec).parameters)


def check_coordinator(path: str) -> list[Check]:
    """Static check of the users' coordinator source: the plugin manager is
    imported and made, the three hooks are called (keyword arguments only,
    as pluggy requires, with every argument the specification names), and
    ``coordinator_run_start`` does not run before a dry-run early return.
    The file is parsed, never imported or run. Raises :class:`InputFileError`
    when it cannot be read or is not Python."""
    text = read_text(path, InputFileError, unreadable="cannot read the coordinator source")
    try:
        tree = ast.parse(text, filename=path)
    except SyntaxError as exc:
        raise InputFileError(path, f"line {exc.lineno}", f"not valid Python: {exc.msg}") from None
    base = os.path.basename(path)
    calls = _hook_calls(tree)
    imported, made = _plugin_manager_use(tree)
    problems: list[str] = []
    found: list[str] = []
    if imported is None:
        problems.append("no import of prng_cache.coordinator.plugin_manager")
    else:
        found.append(f"imports plugin_manager (line {imported})")
        if made is None:
            problems.append("plugin_manager() is never called")
    for hook, names in HOOKS.items():
        mine = [c for c in calls if c.name in names]
        if not mine:
            alt = f" (or {' / '.join(names[1:])})" if len(names) > 1 else ""
            problems.append(f"hook.{hook}{alt} is never called")
            continue
        found.append(", ".join(f"hook.{c.name} (line {c.line})" for c in mine))
        for c in mine:
            if c.positional:
                problems.append(f"hook.{c.name} at line {c.line} is given positional arguments "
                                "(pluggy hooks take keyword arguments only)")
                continue
            want = _spec_args(c.name)
            if want is not None and c.keywords is not None:
                lacking = [a for a in want if a not in c.keywords]
                if lacking:
                    problems.append(f"hook.{c.name} at line {c.line} lacks {', '.join(lacking)}= "
                                    "(the call would raise)")
    checks: list[Check] = []
    if problems:
        checks.append(Check("coordinator", False, f"{base}: " + "; ".join(problems),
                            fix=f"add the lines of the {README_SECTION} to {base}"))
    else:
        checks.append(Check("coordinator", True, f"{base}: " + "; ".join(found)))
    late = [(c, line) for c in calls if c.name == "coordinator_run_start"
            for line in [_dry_run_returns_after(c)] if line is not None]
    if late:
        c, line = late[0]
        checks.append(Check("coordinator_dry_run", True,
                            f"{base}: hook.coordinator_run_start (line {c.line}) runs before the dry-run "
                            f"return at line {line}: a dry run would stage and lease inputs for a run that "
                            f"never happens; move the hook call after that return ({README_SECTION})",
                            warning=True))
    return checks
