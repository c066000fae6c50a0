"""One run's pipeline, the same for ``prng-cache stage`` and the coordinator
plugin: find the jobs' inputs, decide what each node holds (most shared
first), stage it, and map a job's arguments to what its node holds.

:func:`plan_run` does the coordinator-side work (stat, hash, plan every
job's rewrite) once; :meth:`RunPlan.stage` contacts the nodes;
:meth:`RunPlan.args_for` is the per-dispatch part and does no I/O.
"""

from __future__ import annotations

import weakref

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .cluster import Node, as_node, base_dir
from .memo import HashMemo
from .inputs import Discovery, discover
from .jobs import job_args, job_expected_output, job_id, job_payload, payload_values
from .localstate import CacheIdRecord
from .model import Bundle
from .nodeops import remove_own_temporaries
from .policy import Policy
from .prewarm import EarlyConnections
from .reports import NodeReport
from .rewrite import Plan, alias_target, apply_plan, plan_rewrite, rewrite_args
from .staging import Progress, no_progress, stage_cluster
from .store import LeaseRequest


@dataclass
class RunPlan:
    """A run's inputs, where they go and how each job's arguments are rewritten."""

    policy: Policy
    nodes: list[Node]  # the whole cluster
    base_dir: str  # where bare relative input names live on the coordinator
    discovery: Discovery
    # host -> the jobs it runs; None: every node holds every cached input
    assignments: Mapping[str, Sequence[Any]] | None = None
    # job id -> the cached inputs it reads
    job_inputs: dict[str, frozenset[str]] = field(default_factory=dict)
    # job id -> (original args, expected_output, where its args name inputs):
    # dispatch-time work done once per run. Args are kept as they are (never
    # str()'ed): only path strings may change.
    arg_plans: dict[str, tuple[tuple, str | None, Plan]] = field(default_factory=dict)
    # job id -> ((payload key, original value, plan), ...) for inputs.payload_keys
    value_plans: dict[str, tuple[tuple[str, str, Plan], ...]] = field(default_factory=dict)
    # job id -> the aliased files its arguments name through a legacy path
    job_aliases: dict[str, frozenset[str]] = field(default_factory=dict)
    # node connections opened while hashing (plan_run's connect_early)
    early: EarlyConnections | None = field(default=None, repr=False, compare=False)

    @property
    def skipped(self) -> dict[str, str]:
        """Inputs not cached (coordinator path -> why): jobs read them where they are."""
        return self.discovery.skipped

    @property
    def missing(self) -> dict[str, int]:
        """Path-like arguments that exist nowhere on the coordinator (for an
        aliased one: its aliased path) -> how many jobs name them. Jobs keep
        those arguments as they are."""
        return {p: len(j) for p, j in sorted(self.discovery.missing.items())}

    @property
    def found(self) -> int:
        """How many distinct input files the jobs name that exist here."""
        return len(self.discovery.users)

    @property
    def bundles(self) -> list[Bundle]:
        """Every cached input, most shared first."""
        return self._ordered(self.discovery.bundles)

    def _ordered(self, paths: Iterable[str]) -> list[Bundle]:
        # most shared first: if space runs out, the inputs most jobs read win
        users, bundles = self.discovery.users, self.discovery.bundles
        return sorted((bundles[p] for p in paths), key=lambda b: (-len(users.get(b.path, ())), b.path))

    def bundles_for(self, node: Node) -> list[Bundle]:
        """What ``node`` should hold: its jobs' cached inputs, most shared first."""
        if self.assignments is None:
            return self.bundles
        paths: set[str] = set()
        for job in self.assignments.get(node.hostname, ()):
            paths |= self.job_inputs.get(job_id(job), frozenset())
        return self._ordered(paths)

    @property
    def targets(self) -> list[Node]:
        """The nodes to stage: those with jobs, or every node without assignments."""
        if self.assignments is None:
            return list(self.nodes)
        return [n for n in self.nodes if self.assignments.get(n.hostname)]

    def stage(self, nodes: Sequence[Node] | None = None, *, lease: LeaseRequest | None = None,
              progress: Progress = no_progress) -> dict[str, NodeReport]:
        """Stage ``nodes`` (default: :attr:`targets`) in parallel; host -> report.

        A node holds each (key, name) once and staging reports it under one
        of the paths that name it: each report is extended to every input
        path the same copy serves (or that is skipped for the same reason)."""
        early, self.early = self.early, None
        try:
            reports = stage_cluster(list(self.targets if nodes is None else nodes), self.bundles_for, self.policy,
                                    lease=lease, progress=progress, ids=CacheIdRecord(), early=early)
        finally:
            if early is not None:
                early.close()
        spread = self.discovery.spread
        for r in reports.values():
            r.staged = spread(r.staged)
            r.skipped = {p: why for p, why in spread(r.skipped).items() if p not in r.staged}
        return reports

    def mapping_for(self, node: Node, staged: Mapping[str, str]) -> dict[str, str]:
        """What ``node``'s jobs get: ``staged`` (coordinator path -> RAM path
        on the node), and every legacy path an argument names under an
        alias prefix -> its RAM copy when ``staged`` has it, else the
        node's own aliased path (on its SSD). Pure; built once per node."""
        out = dict(staged)
        for legacy, a in self.discovery.aliased.items():
            there = staged.get(a.path)
            if there is None:
                there = alias_target(a.target, a.rest, node.script_path, local=node.is_localhost)
            if there is not None:
                out[legacy] = there
        return out

    def args_for(self, job: Any, staged: Mapping[str, str], *, jid: str | None = None) -> list[Any] | None:
        """``job``'s arguments with every path ``staged`` maps (a path as
        the job names it, resolved -> the path to send; see
        :meth:`mapping_for`) replaced, as a new list; None when nothing is
        replaced (the job keeps its own arguments). Never changes ``job``.
        ``jid``: the job's id, when the caller has it already."""
        original = job_args(job)
        new = self._args(job_id(job) if jid is None else jid, original, job_expected_output(job), staged)
        return None if new == original else new

    def _args(self, jid: str, original: list[Any], expected: str | None, staged: Mapping[str, str]) -> list[Any]:
        cached = self.arg_plans.get(jid)
        if cached is not None and cached[0] == tuple(original) and cached[1] == expected:
            return apply_plan(original, cached[2], staged)
        # a job this run did not announce, or changed since: plan afresh
        return rewrite_args(original, staged=staged, base_dir=self.base_dir,
                            output_flags=self.policy.inputs.output_flags, expected_output=expected)

    def payload_for(self, job: Any, payload: Mapping[str, Any], staged: Mapping[str, str]) -> dict | None:
        """A copy of ``payload`` (what coordinator.py sends for ``job``) with
        ``payload["args"]`` and the values of ``inputs.payload_keys``
        mapped as :meth:`args_for` maps args; None when nothing changes.
        Never changes ``job`` or ``payload``."""
        jid = job_id(job)
        expected = job_expected_output(job)
        new: dict | None = None
        args = payload.get("args")
        if isinstance(args, (list, tuple)):
            original = list(args)
            mapped = self._args(jid, original, expected, staged)
            if mapped != original:
                new = dict(payload)
                new["args"] = mapped
        planned = {k: (v, p) for k, v, p in self.value_plans.get(jid, ())}
        for k, v in payload_values(payload, self.policy.inputs.payload_keys):
            c = planned.get(k)
            if c is not None and c[0] == v:
                mapped = apply_plan((v,), c[1], staged)[0]
            else:
                mapped = rewrite_args((v,), staged=staged, base_dir=self.base_dir,
                                      output_flags=self.policy.inputs.output_flags, expected_output=expected)[0]
            if mapped != v:
                if new is None:
                    new = dict(payload)
                new[k] = mapped
        return new


def plan_run(jobs: Sequence[Any], nodes: Iterable[Any], policy: Policy, *,
             assignments: Mapping[str, Sequence[Any]] | None = None, min_jobs: int | None = None,
             memo: HashMemo | None = None, connect_early: Sequence[Any] | bool = False) -> RunPlan:
    """Discover and hash the inputs of ``jobs`` (dicts, the coordinator's
    Job objects, coordinator.py's JobSpecs) and plan every job's rewrite.
    ``nodes`` is the whole cluster (Nodes, dicts or the coordinator's
    NodeConfigs); ``assignments`` (host -> jobs) limits each node to its own
    jobs' inputs; ``min_jobs`` overrides ``inputs.min_jobs``.
    ``connect_early``: the nodes the caller will stage next (True: the
    plan's targets), connected while the inputs are hashed; only for a
    caller that stages right after (:meth:`RunPlan.stage` takes them and
    closes the rest)."""
    cluster = list({n.hostname: n for n in map(as_node, nodes)}.values())
    root = base_dir(policy, cluster)
    early = None
    if connect_early and policy.enabled:
        soon = (RunPlan(policy, cluster, root, Discovery(), assignments).targets if connect_early is True
                else [as_node(n) for n in connect_early])
        jobs_of = ({host: {job_id(j) for j in js} for host, js in assignments.items()}
                   if assignments is not None else None)
        early = EarlyConnections(soon, policy, jobs_of)
    try:
        disc = discover(jobs, policy.inputs, root, memo=memo if memo is not None else HashMemo(),
                        min_jobs=min_jobs, presend=early)
    except BaseException as exc:
        if early is not None:
            interrupted = isinstance(exc, KeyboardInterrupt) and early.sent_early
            # an interrupted process exits next: what was sent early goes first
            early.close(wait=2.0 if interrupted else 0.0)
            if interrupted:
                remove_own_temporaries(early.nodes, policy)
        raise
    by_job: dict[str, set[str]] = {}
    for path in disc.bundles:
        for jid in disc.users.get(path, ()):
            by_job.setdefault(jid, set()).add(path)
    plan = RunPlan(policy, cluster, root, disc, assignments,
                   job_inputs={jid: frozenset(p) for jid, p in by_job.items()}, early=early)
    if early is not None:
        # a plan dropped without stage(): its connections close with it
        weakref.finalize(plan, early.close)
    # what a dispatch may replace: cached inputs, and every legacy alias path
    # (to the RAM copy, or to the node's own aliased path)
    candidates = set(disc.bundles) | set(disc.aliased)
    flags = policy.inputs.output_flags
    for job in jobs:
        jid = job_id(job)
        args, out = job_args(job), job_expected_output(job)
        arg_plan = plan_rewrite(args, candidates=candidates, base_dir=root, output_flags=flags, expected_output=out)
        plan.arg_plans[jid] = (tuple(args), out, arg_plan)
        planned = [arg_plan]
        values = payload_values(job_payload(job), policy.inputs.payload_keys)
        if values:
            plan.value_plans[jid] = tuple(
                (k, v, plan_rewrite((v,), candidates=candidates, base_dir=root, output_flags=flags,
                                    expected_output=out)) for k, v in values)
            planned += [p for _, _, p in plan.value_plans[jid]]
        aliased = frozenset(disc.aliased[r].path for p in planned for _, _, r in p if r in disc.aliased)
        if aliased:
            plan.job_aliases[jid] = aliased
    return plan
