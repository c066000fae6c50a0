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
import time
from typing import Any

from .cluster import Node
from .hookspecs import hookimpl
from .jobs import job_id
from .nodeops import fan_out_nodes, run_on_node
from .policy import Policy, env_disabled, load_policy
from .reports import NodeReport, run_report
from .run import RunPlan, plan_run
from .store import LeaseRequest
from .userdata import attr

log = logging.getLogger(__name__)


class PrngCachePlugin:
    """One instance serves one coordinator process, one run at a time."""

    def __init__(self, policy: Policy | None = None):
        self._fixed_policy = policy
        self._reset()

    def _reset(self) -> None:
        self.run_id: str | None = None
        self.policy: Policy | None = None
        self.active = False
        self.plan: RunPlan | None = None
        self.reports: dict[str, NodeReport] = {}
        self.staged: dict[str, dict[str, str]] = {}  # host -> coordinator path -> RAM path
        self.rewritten: set[str] = set()
        self.fallback: set[str] = set()
        self.stage_seconds = 0.0
        self.start_error: str | None = None

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
        # each node holds its own jobs' inputs; a retry elsewhere finds what
        # that node holds (the same copy serves every path of the same bytes)
        self.plan = plan = plan_run(jobs, nodes, policy, assignments=assignments)
        for path, why in plan.skipped.items():
            log.info("prng-cache: not caching %s: %s", path, why)
        self.reports = plan.stage(lease=LeaseRequest(run_id, policy.gc.lease_ttl))
        self.staged = {h: dict(r.staged) for h, r in self.reports.items() if r.serving}
        self.active = True

    # ------------------------------------------------------------ dispatch
    @hookimpl
    def coordinator_job_args(self, node: Any, job: Any) -> list[Any] | None:
        if not self.active or env_disabled():
            return None
        try:
            host = attr(node, "hostname")
            report = self.reports.get(host)
            if report is None or report.status not in ("ok", "fallback", "error"):
                return None  # direct/off node, or one this run never staged
            jid = job_id(job)
            staged = self.staged.get(host)
            need = self.plan.job_inputs.get(jid, frozenset())
            if not staged:
                if need:
                    self.fallback.add(jid)
                return None
            if need and not need <= staged.keys():
                self.fallback.add(jid)
            new = self.plan.args_for(job, staged)
            if new is not None:
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
        if self.active and self.policy is not None and self.plan is not None and run_id == self.run_id:
            policy = self.policy
            leased = [n for n in self.plan.nodes if n.hostname in self.reports and self.reports[n.hostname].serving]

            def release(node: Node) -> bool | NodeReport:
                # never write through a root that changed since the stage
                return run_on_node(node, policy,
                                   lambda store: store.ensure_root(create=False) and store.release(run_id))

            for node, res in zip(leased, fan_out_nodes(leased, policy, release)):
                # a lease that cannot be released now simply expires (gc.lease_ttl)
                if isinstance(res, NodeReport):
                    released[node.hostname] = res.reason or res.status
                else:
                    released[node.hostname] = True if res else "lease already gone (node wiped?)"
        return run_report(
            run_id, enabled=self.active, reports=self.reports, rewritten=len(self.rewritten),
            fallback=len(self.fallback), stage_seconds=self.stage_seconds, released=released,
            error=self.start_error,
            reason="disabled by PRNG_CACHE=0 / USE_RAMDISK=false" if not self.active and env_disabled() else None)


#: the instance registered through the ``scripts_coordinator`` entry point
plugin = PrngCachePlugin()
