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

import logging
import re
from dataclasses import dataclass, field
from typing import Any

from ..cluster import Node, load_cluster, select_nodes
from ..errors import (ConfigError, InputFileError, PolicyError, UnknownNodeError, UserError)
from ..policy import Policy, env_disabled, load_policy

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
    from .jobs import _check_jobs
    from .nodes import check_nodes
    from .source import check_coordinator

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


