"""One run's pipeline, the same for ``prng-cache stage`` and the coordinator
plugin: find the jobs' inputs, decide what each node holds (most shared
first), stage it, and map a job's arguments to what its node holds.

:func:`plan_run` does the coordinator-side work (stat, hash, plan every
job's rewrite) once; :meth:`RunPlan.stage` contacts the nodes;
:meth:`RunPlan.args_for` is the per-dispatch part and does no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .cluster import Node, as_node, base_dir
from .hashing import HashMemo
from .inputs import Discovery, discover
from .jobs import job_args, job_expected_output, job_id
from .localstate import CacheIdRecord
from .model import Bundle
from .policy import Policy
from .reports import NodeReport
from .rewrite import Plan, apply_plan, plan_rewrite, rewrite_args
from .staging import Progress, no_progress, stage_cluster
from .store import LeaseRequest


@dataclass
class RunPlan:
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

    @property
    def skipped(self) -> dict[str, str]:
        """Inputs not cached (coordinator path -> why): jobs read them where they are."""
        return self.discovery.skipped

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
        reports = stage_cluster(list(self.targets if nodes is None else nodes), self.bundles_for, self.policy,
                                lease=lease, progress=progress, ids=CacheIdRecord())
        spread = self.discovery.spread
        for r in reports.values():
            r.staged = spread(r.staged)
            r.skipped = {p: why for p, why in spread(r.skipped).items() if p not in r.staged}
        return reports

    def args_for(self, job: Any, staged: Mapping[str, str]) -> list[Any] | None:
        """``job``'s arguments with every input ``staged`` holds (coordinator
        path -> path on the node) replaced, as a new list; None when nothing
        is replaced (the job keeps its own arguments). Never changes ``job``."""
        original = job_args(job)
        expected = job_expected_output(job)
        cached = self.arg_plans.get(job_id(job))
        if cached is not None and cached[0] == tuple(original) and cached[1] == expected:
            new = apply_plan(original, cached[2], staged)
        else:  # a job this run did not announce, or changed since: plan afresh
            new = rewrite_args(original, staged=staged, base_dir=self.base_dir,
                               output_flags=self.policy.inputs.output_flags, expected_output=expected)
        return None if new == original else new


def plan_run(jobs: Sequence[Any], nodes: Iterable[Any], policy: Policy, *,
             assignments: Mapping[str, Sequence[Any]] | None = None, min_jobs: int | None = None,
             memo: HashMemo | None = None) -> RunPlan:
    """Discover and hash the inputs of ``jobs`` (dicts or the coordinator's
    Job objects) and plan every job's rewrite. ``nodes`` is the whole
    cluster (Nodes, dicts or the coordinator's NodeConfigs); ``assignments``
    (host -> jobs) limits each node to its own jobs' inputs; ``min_jobs``
    overrides ``inputs.min_jobs``."""
    cluster = list({n.hostname: n for n in map(as_node, nodes)}.values())
    root = base_dir(policy, cluster)
    disc = discover(jobs, policy.inputs, root, memo=memo if memo is not None else HashMemo(), min_jobs=min_jobs)
    by_job: dict[str, set[str]] = {}
    for path in disc.bundles:
        for jid in disc.users.get(path, ()):
            by_job.setdefault(jid, set()).add(path)
    plan = RunPlan(policy, cluster, root, disc, assignments,
                   job_inputs={jid: frozenset(p) for jid, p in by_job.items()})
    for job in jobs:
        args, out = job_args(job), job_expected_output(job)
        plan.arg_plans[job_id(job)] = (tuple(args), out, plan_rewrite(
            args, candidates=disc.bundles, base_dir=root, output_flags=policy.inputs.output_flags,
            expected_output=out))
    return plan
