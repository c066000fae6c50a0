"""prng-cache as a plugin of the users' coordinators (scripts_coordinator.py
and the older coordinator.py).

``coordinator_run_start`` stages (once per run, nodes in parallel) the inputs
of the jobs assigned to each node and leases them for the run;
``coordinator_job_args`` maps a job's *original* args to what that node
holds, and ``coordinator_job_payload`` does the same for a coordinator.py
payload (its ``args`` and the values of ``inputs.payload_keys``); both are
pure (no I/O). ``coordinator_run_end`` releases the leases and returns the
report. No hook ever raises into the coordinator: whatever fails, the
affected jobs keep their original arguments and the reason is logged.

An argument under an ``inputs.path_aliases`` prefix names the aliased file:
it gets the RAM copy where the node serves one, and the node's own aliased
path (its SSD) everywhere else except on ``off`` nodes, which keep every
argument as it is.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, NamedTuple

from .cluster import Node, as_node, node_settings
from .errors import ConfigError
from .hookspecs import hookimpl
from .jobs import job_id
from .lease_keeper import LeaseKeeper
from .nodeops import fan_out_nodes, run_on_node
from .policy import Policy, env_disabled, load_policy
from .reports import SERVING_STATUSES, NodeReport, copy_line, missing_inputs_line, run_report
from .run import RunPlan, plan_run
from .store import LeaseRequest
from .userdata import attr, load_json

log = logging.getLogger(__name__)

#: where the coordinator's cluster file is when its command line names none
DEFAULT_CLUSTER_FILE = "distributed_config.json"


def lease_name(run_id: str) -> str:
    """The name of a run's lease on the nodes: the coordinator's run id and a
    random suffix. Run ids are not unique (the users' coordinators name a run
    by its start second): two coordinators starting the same second must
    never share a lease, or the first to end would release the other's."""
    return f"{run_id}~{os.urandom(4).hex()}"


def coordinator_node(obj: Any) -> Any:
    """The node object behind what a coordinator hands a hook: coordinator.py
    passes a ``GPUWorker`` whose host is ``worker.node.hostname``."""
    if attr(obj, "hostname") is None:
        inner = attr(obj, "node")
        if inner is not None:
            return inner
    return obj


def cluster_file_path(argv: Sequence[str] | None = None) -> str:
    """The cluster file the coordinator was started with: the value of
    ``--config`` on its command line, else ``./distributed_config.json``."""
    argv = sys.argv if argv is None else argv
    for i, a in enumerate(argv[1:], 1):
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--config="):
            return a.split("=", 1)[1]
    return DEFAULT_CLUSTER_FILE


def cluster_file_ramdisk(path: str) -> dict[str, bool]:
    """hostname -> ``use_ramdisk`` as the cluster file says (the users'
    coordinators drop that key from their node objects). A missing file is
    no information; an unreadable or malformed one is logged and ignored."""
    try:
        doc = load_json(path, ConfigError, missing=_NO_FILE)
    except ConfigError as exc:
        if exc.problem != _NO_FILE:
            log.warning("prng-cache: use_ramdisk not read from the cluster file: %s", exc)
        return {}
    nodes = doc.get("nodes") if isinstance(doc, dict) else None
    out: dict[str, bool] = {}
    for n in nodes if isinstance(nodes, list) else ():
        if isinstance(n, dict) and isinstance(n.get("hostname"), str) and isinstance(n.get("use_ramdisk"), bool):
            out[n["hostname"]] = n["use_ramdisk"]
    return out


_NO_FILE = "file not found"


def _by_host(assignments: Any) -> dict[str, list]:
    """hostname -> jobs; also from coordinator.py's (job, worker) pairs."""
    if isinstance(assignments, Mapping):
        return dict(assignments)
    out: dict[str, list] = {}
    for job, worker in assignments or ():
        out.setdefault(str(attr(coordinator_node(worker), "hostname")), []).append(job)
    return out


class _Route(NamedTuple):
    """What one node's jobs get, built once per run."""

    mapping: dict[str, str]  # path as a job names it (resolved) -> path to send
    staged: Mapping[str, str]  # cached inputs the node serves: coordinator path -> RAM path
    cache: bool  # meant to serve from RAM this run (staged, or failed to be)


class PrngCachePlugin:
    """One instance serves one coordinator process, one run at a time."""

    def __init__(self, policy: Policy | None = None):
        self._fixed_policy = policy
        self._reset()

    def _reset(self) -> None:
        keeper = getattr(self, "keeper", None)
        if keeper is not None:  # a run that never ended (its coordinator skipped run_end)
            keeper.stop()
        self.keeper: LeaseKeeper | None = None
        self.run_id: str | None = None
        self.lease_id: str | None = None  # this run's lease on the nodes (see lease_name)
        self.policy: Policy | None = None
        self.active = False
        self.plan: RunPlan | None = None
        self.reports: dict[str, NodeReport] = {}
        self.staged: dict[str, dict[str, str]] = {}  # host -> coordinator path -> RAM path
        self.routes: dict[str, _Route | None] = {}  # host -> what its jobs get (None: keep args)
        self.rewritten: set[str] = set()
        self.fallback: set[str] = set()
        self.aliased: set[str] = set()
        self.counted: set[tuple[str, str]] = set()  # (job id, host) dispatches counted
        self.missing: dict[str, int] = {}
        self.stage_seconds = 0.0
        self.start_error: str | None = None

    # ------------------------------------------------------------ run start
    @hookimpl
    def coordinator_run_start(self, run_id: str, nodes: list, jobs: list, assignments: dict) -> None:
        self._reset()
        self.run_id = run_id
        self.lease_id = lease_name(run_id)
        if env_disabled():
            log.info("prng-cache disabled by environment; jobs keep their arguments")
            return
        t0 = time.monotonic()
        try:
            self._start(self.lease_id, nodes, jobs, assignments)
        except Exception as exc:  # never into the coordinator
            log.exception("prng-cache: run start failed; every job keeps its original arguments")
            self.start_error = f"{type(exc).__name__}: {exc}"
            self.active = False
            self.staged = {}
            self.routes = {}
        self.stage_seconds = time.monotonic() - t0

    def _start(self, lease_id: str, nodes: list, jobs: list, assignments: Any) -> None:
        policy = self._fixed_policy or load_policy()
        self.policy = policy
        if not policy.enabled:
            return
        cluster = [as_node(coordinator_node(n)) for n in nodes]
        ramdisk = cluster_file_ramdisk(cluster_file_path())
        cluster = [replace(n, use_ramdisk=ramdisk[n.hostname])
                   if n.use_ramdisk is None and n.hostname in ramdisk else n for n in cluster]
        # each node holds its own jobs' inputs; a retry elsewhere finds what
        # that node holds (the same copy serves every path of the same bytes)
        # the nodes are connected while the inputs are hashed
        self.plan = plan = plan_run(jobs, cluster, policy, assignments=_by_host(assignments), connect_early=True)
        for path, why in plan.skipped.items():
            log.info("prng-cache: not caching %s: %s", path, why)
        self.missing = plan.missing
        line = missing_inputs_line(self.missing, plan.discovery.missing_aliases)
        if line:
            log.warning("prng-cache: %s", line)
        leased_since = time.monotonic()  # every lease of this stage is written after this
        self.reports = plan.stage(lease=LeaseRequest(lease_id, policy.gc.lease_ttl))
        for host, rep in self.reports.items():
            log.info("prng-cache: %s", copy_line(host, rep))
        self.staged = {h: dict(r.staged) for h, r in self.reports.items() if r.serving}
        self.routes = {n.hostname: self._route_for(n) for n in plan.nodes}
        self.active = True
        # a run longer than gc.lease_ttl keeps its inputs: renewed until run end
        leased = [n for n in plan.nodes if n.hostname in self.reports and self.reports[n.hostname].serving]
        self.keeper = LeaseKeeper(lease_id, leased, policy, since=leased_since)
        self.keeper.start()

    def _route_for(self, node: Node) -> _Route | None:
        rep = self.reports.get(node.hostname)
        status = rep.status if rep is not None else node_settings(self.policy, node).mode
        if status == "off":
            return None  # exactly as without the plugin
        staged = self.staged.get(node.hostname, {}) if status in SERVING_STATUSES else {}
        # a node not staged this run (no jobs at run start) counts as direct
        return _Route(self.plan.mapping_for(node, staged), staged, rep is not None and status != "direct")

    def _route(self, node: Any) -> tuple[str, _Route | None]:
        # the common shapes first: this runs on every dispatch
        host = node.get("hostname") if type(node) is dict else getattr(node, "hostname", None)
        if host is None:
            host = attr(coordinator_node(node), "hostname")
        try:
            return host, self.routes[host]
        except KeyError:  # a node the run did not announce (a retry target)
            r = self.routes[host] = self._route_for(as_node(coordinator_node(node)))
            return host, r

    def _count(self, jid: str, host: str, route: _Route) -> None:
        """Count a dispatch once per (job, node): the outcome is fixed for the run."""
        seen = (jid, host)
        if seen in self.counted:
            return
        self.counted.add(seen)
        need = self.plan.job_inputs.get(jid)
        staged = route.staged
        if need:
            if route.cache and not need <= staged.keys():
                self.fallback.add(jid)  # the cache could not serve this node
            if any(p in staged for p in need):
                self.rewritten.add(jid)
        aliased = self.plan.job_aliases.get(jid)
        if aliased and not aliased <= staged.keys():
            self.aliased.add(jid)  # a legacy path sent to the node's own aliased file

    # ------------------------------------------------------------ dispatch
    @hookimpl
    def coordinator_job_args(self, node: Any, job: Any) -> list[Any] | None:
        if not self.active or env_disabled():
            return None
        try:
            host, route = self._route(node)
            if route is None:
                return None
            jid = job_id(job)
            self._count(jid, host, route)
            if not route.mapping:
                return None
            return self.plan.args_for(job, route.mapping, jid=jid)
        except Exception:
            log.exception("prng-cache: rewriting a job failed; it keeps its original arguments")
            return None

    @hookimpl
    def coordinator_job_payload(self, node: Any, job: Any, payload: dict) -> dict | None:
        if not self.active or env_disabled():
            return None
        try:
            host, route = self._route(node)
            if route is None or not isinstance(payload, Mapping):
                return None
            self._count(job_id(job), host, route)
            if not route.mapping:
                return None
            return self.plan.payload_for(job, payload, route.mapping)
        except Exception:
            log.exception("prng-cache: rewriting a job's payload failed; it keeps its original payload")
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
        if self.keeper is not None and run_id == self.run_id:
            self.keeper.stop()  # (a renewal never creates a lease: one after the release is a no-op)
        if self.active and self.policy is not None and self.plan is not None and run_id == self.run_id:
            policy = self.policy
            lease_id = self.lease_id
            leased = [n for n in self.plan.nodes if n.hostname in self.reports and self.reports[n.hostname].serving]

            def release(node: Node) -> bool | NodeReport:
                # never write through a root that changed since the stage
                return run_on_node(node, policy,
                                   lambda store: store.ensure_root(create=False) and store.release(lease_id))

            for node, res in zip(leased, fan_out_nodes(leased, policy, release)):
                # a lease that cannot be released now simply expires (gc.lease_ttl)
                if isinstance(res, NodeReport):
                    released[node.hostname] = res.reason or res.status
                else:
                    released[node.hostname] = True if res else "lease already gone (node wiped?)"
        return run_report(
            run_id, enabled=self.active, reports=self.reports, rewritten=len(self.rewritten),
            fallback=len(self.fallback), aliased=len(self.aliased), missing=self.missing,
            stage_seconds=self.stage_seconds, released=released, error=self.start_error,
            reason="disabled by PRNG_CACHE=0 / USE_RAMDISK=false" if not self.active and env_disabled() else None)


#: the instance registered through the ``scripts_coordinator`` entry point
plugin = PrngCachePlugin()
