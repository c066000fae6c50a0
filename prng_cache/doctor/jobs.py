"""doctor's jobs checks: inputs cached and skipped, missing inputs, companions."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable, Sequence
from typing import Any

from ..cluster import Node
from ..errors import JobsFileError
from ..jobs import load_jobs
from ..policy import Policy
from ..reports import fmt_bytes
from ..inputs import discover
from ..run import RunPlan, plan_run


from .core import DATA_EXTENSIONS, LIST_LIMIT, Check, Diagnosis, _user_file_fix


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
    """Paths the jobs name as inputs that exist nowhere on the coordinator:
    resolved path -> job ids. The stage's own rule (``Discovery.missing``:
    path-shaped, not a URL, JSON, number, output or excluded; an aliased
    argument counts at its aliased file), without hashing anything."""
    # min_jobs beyond any count: candidates are stat'ed, never hashed;
    # {script_path} of an alias is the coordinator's base directory
    return discover(jobs, policy.inputs, script_path or base, min_jobs=1 << 62).missing


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


