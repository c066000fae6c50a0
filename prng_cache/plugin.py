"""prng-cache as a scripts_coordinator plugin.

``coordinator_run_start`` stages (once per run, nodes in parallel) the inputs
of the jobs assigned to each node and leases them for the run;
``coordinator_job_args`` maps a job's *original* args to what that node
holds (pure, no I/O); ``coordinator_run_end`` releases the leases and returns
the report. No hook ever raises into the coordinator: whatever fails, the
affected jobs keep their original arguments and the reason is logged.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from .cluster import Node, as_node, base_dir, fan_out, node_settings
from .hashing import HashMemo
from .hookspecs import hookimpl
from .inputs import discover
from .jobs import job_args, job_expected_output, job_id
from .policy import Policy, env_disabled, load_policy
from .rewrite import Plan, apply_plan, plan_rewrite, rewrite_args
from .staging import CacheIdRecord, NodeReport, run_on_node, stage_cluster
from .store import LeaseRequest

log = logging.getLogger(__name__)

def _hostname(node: Any) -> str:
    return node["hostname"] if isinstance(node, dict) else node.hostname


class PrngCachePlugin:
    """One instance serves one coordinator process, one run at a time."""

    def __init__(self, policy: Policy | None = None):
        self._fixed_policy = policy
        self._reset()

    def _reset(self) -> None:
        self.run_id: str | None = None
        self.policy: Policy | None = None
        self.active = False
        self.nodes: dict[str, Node] = {}
        self.reports: dict[str, NodeReport] = {}
        self.staged: dict[str, dict[str, str]] = {}  # host -> coordinator path -> RAM path
        self.job_inputs: dict[str, frozenset[str]] = {}  # job id -> cached input paths
        # job id -> (original args, expected_output, plan): dispatch-time work
        # done once per run, since the hook runs for every dispatch. Args are
        # kept as they are (never str()'ed): only path strings may change.
        self.plans: dict[str, tuple[tuple, str | None, Plan]] = {}
        self.base_dir = "."
        self.output_flags: tuple[str, ...] = ()
        self.rewritten: set[str] = set()
        self.fallback: set[str] = set()
        self.stage_seconds = 0.0
        self.start_error: str | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------ run start
    @hookimpl
    def coordinator_run_start(self, run_id: str, nodes: list, jobs: list, assignments: dict) -> None:
        self._reset()
        self.run_id = run_id
        if env_disabled():
            log.info("prng-cache disabled by environment; jobs keep their arguments")
            return
        t0 = time.monotonic()
        try:
            self._start(run_id, nodes, jobs, assignments)
        except Exception as exc:  # never into the coordinator
            log.exception("prng-cache: run start failed; every job keeps its original arguments")
            self.start_error = f"{type(exc).__name__}: {exc}"
            self.active = False
            self.staged = {}
        self.stage_seconds = time.monotonic() - t0

    def _start(self, run_id: str, nodes: list, jobs: list, assignments: dict) -> None:
        policy = self._fixed_policy or load_policy()
        self.policy = policy
        if not policy.enabled:
            return
        self.nodes = {n.hostname: n for n in (as_node(x) for x in nodes)}
        self.base_dir = base_dir(policy, self.nodes.values())
        self.output_flags = policy.inputs.output_flags
        disc = discover(jobs, policy.inputs, self.base_dir, memo=HashMemo())
        by_job: dict[str, set[str]] = {}
        for path in disc.bundles:
            for jid in disc.users.get(path, ()):
                by_job.setdefault(jid, set()).add(path)
        self.job_inputs = {jid: frozenset(p) for jid, p in by_job.items()}
        for job in jobs:
            args, out = job_args(job), job_expected_output(job)
            self.plans[job_id(job)] = (tuple(args), out, plan_rewrite(
                args, candidates=disc.bundles, base_dir=self.base_dir,
                output_flags=self.output_flags, expected_output=out))
        for path, why in disc.skipped.items():
            log.info("prng-cache: not caching %s: %s", path, why)

        def bundles_for(node: Node) -> list:
            paths: set[str] = set()
            for job in assignments.get(node.hostname, ()):
                paths |= self.job_inputs.get(job_id(job), frozenset())
            # most shared first, so the inputs most jobs read win any space
            return sorted((disc.bundles[p] for p in paths),
                          key=lambda b: (-len(disc.users.get(b.path, ())), b.path))

        busy = [n for h, n in self.nodes.items() if assignments.get(h)]
        lease = LeaseRequest(run_id, policy.gc.lease_ttl)
        self.reports = stage_cluster(busy, bundles_for, policy, lease=lease, ids=CacheIdRecord())
        for r in self.reports.values():
            # staging reports content held under one name once; every input
            # path with that key and basename is served by the same copy
            r.staged = disc.spread(r.staged)
            r.skipped = {p: why for p, why in disc.spread(r.skipped).items() if p not in r.staged}
        self.staged = {h: dict(r.staged) for h, r in self.reports.items() if r.status in ("ok", "fallback")}
        self.active = True

    # ------------------------------------------------------------ dispatch
    @hookimpl
    def coordinator_job_args(self, node: Any, job: Any) -> list[Any] | None:
        if not self.active or env_disabled():
            return None
        try:
            host = _hostname(node)
            report = self.reports.get(host)
            if report is None or report.status not in ("ok", "fallback", "error"):
                return None  # direct/off node, or one this run never staged
            jid = job_id(job)
            staged = self.staged.get(host)
            need = self.job_inputs.get(jid, frozenset())
            if not staged:
                if need:
                    self.fallback.add(jid)
                return None
            if need and not need <= staged.keys():
                self.fallback.add(jid)
            original = job_args(job)
            expected = job_expected_output(job)
            cached = self.plans.get(jid)
            if cached is not None and cached[0] == tuple(original) and cached[1] == expected:
                new = apply_plan(original, cached[2], staged)
            else:  # a job this run did not announce, or changed since: plan afresh
                new = rewrite_args(original, staged=staged, base_dir=self.base_dir,
                                   output_flags=self.output_flags, expected_output=expected)
            if new == original:
                return None
            self.rewritten.add(jid)
            return new
        except Exception:
            log.exception("prng-cache: rewriting a job failed; it keeps its original arguments")
            return None

    # ------------------------------------------------------------ run end
    @hookimpl
    def coordinator_run_end(self, run_id: str, results: dict) -> dict | None:
        try:
            return self._end(run_id)
        except Exception as exc:
            log.exception("prng-cache: run end failed")
            return {"plugin": "prng_cache", "run_id": run_id, "error": f"{type(exc).__name__}: {exc}"}

    def _end(self, run_id: str) -> dict:
        released: dict[str, bool | str] = {}
        if self.active and self.policy is not None and run_id == self.run_id:
            leased = [self.nodes[h] for h, r in self.reports.items() if r.status in ("ok", "fallback")]

            def release(node: Node) -> bool | NodeReport:
                # never write through a root that changed since the stage
                return run_on_node(node, self.policy,
                                   lambda store: store.ensure_root(create=False) and store.release(run_id))

            results = fan_out(leased, release, self.policy.transport.parallel_nodes)
            for node, res in zip(leased, results):
                # a lease that cannot be released now simply expires (gc.lease_ttl)
                if isinstance(res, NodeReport):
                    released[node.hostname] = res.reason or res.status
                else:
                    released[node.hostname] = True if res else "lease already gone (node wiped?)"
        copied = sum(r.copied_files for r in self.reports.values())
        present = sum(r.present_files for r in self.reports.values())
        report = {
            "plugin": "prng_cache",
            "run_id": run_id,
            "enabled": self.active,
            "nodes": {h: {k: v for k, v in r.to_dict().items()
                          if k in ("status", "copied_files", "copied_bytes", "present_files", "reason",
                                   "cache_id", "warnings", "seconds")}
                      for h, r in self.reports.items()},
            "rewritten_jobs": len(self.rewritten),
            # dispatches that had to read at least one cacheable input from its original path
            "fallback_jobs": len(self.fallback),
            "hit_rate": round(present / (present + copied), 3) if present + copied else None,
            "copied_bytes": sum(r.copied_bytes for r in self.reports.values()),
            # bytes already on the nodes that this run did not have to copy
            "bytes_saved": sum(r.present_bytes for r in self.reports.values()),
            "stage_seconds": round(self.stage_seconds, 3),
            "leases_released": released,
        }
        if self.start_error:
            report["error"] = self.start_error
        if not self.active and env_disabled():
            report["reason"] = "disabled by PRNG_CACHE=0 / USE_RAMDISK=false"
        return report


#: the instance registered through the ``scripts_coordinator`` entry point
plugin = PrngCachePlugin()
