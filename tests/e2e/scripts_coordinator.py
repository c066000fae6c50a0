"""A small coordinator that follows the users' scripts_coordinator.py contract.

Reads distributed_config.json and a jobs file, assigns jobs round-robin,
runs each as ``ssh user@host "cd <script_path> && <python_env> -u
distributed_worker.py job_<id>.json --gpu-id N"`` (localhost: the same
command through a local shell), judges success by the output file only, and
re-runs failed jobs on localhost with the same job object. The prng-cache
lines are exactly those of the README section "Register in
scripts_coordinator.py" (a test checks that).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

# --- prng-cache: plugin manager (optional) ---
try:
    from prng_cache.coordinator import plugin_manager
    plugins = plugin_manager()
except ImportError:  # prng-cache not installed: run exactly as before
    plugins = None
# --- end prng-cache ---


@dataclass
class NodeConfig:
    hostname: str
    username: str
    gpu_count: int
    gpu_type: str
    script_path: str
    python_env: str
    max_concurrent: int = 1

    @property
    def is_localhost(self) -> bool:
        return self.hostname in ("localhost", "127.0.0.1")


@dataclass
class Job:
    job_id: str
    script: str
    args: list
    expected_output: str
    chunk_file: str | None = None
    seed_count: int | None = None
    timeout: int = 600


@dataclass
class JobResult:
    job_id: str
    node: str
    ok: bool
    seconds: float
    attempts: list = field(default_factory=list)


class ScriptsCoordinator:
    def __init__(self, config_path: str, jobs_path: str, ssh_config: str | None = None,
                 run_id: str | None = None, manifest_path: str | None = None, dry_run: bool = False):
        with open(config_path) as f:
            cfg = json.load(f)
        self.nodes = [NodeConfig(n["hostname"], n.get("username") or "", n.get("gpu_count", 1),
                                 n.get("gpu_type", ""), n["script_path"], n.get("python_env", "python3"),
                                 n.get("max_concurrent_script_jobs", 1)) for n in cfg["nodes"]]
        with open(jobs_path) as f:
            self.jobs = [Job(j["job_id"], j["script"], list(j["args"]), j["expected_output"],
                             j.get("chunk_file"), j.get("seed_count"), j.get("timeout", 600)) for j in json.load(f)]
        self.ssh_config = ssh_config
        self.run_id = run_id or time.strftime("run-%Y%m%d-%H%M%S")
        self.manifest_path = manifest_path
        self.dry_run = dry_run
        self.localhost = next(n for n in self.nodes if n.is_localhost)
        self.commands: list[tuple[str, str, list]] = []  # (host, job id, args sent)

    # ------------------------------------------------------------------ run
    def run(self) -> dict:
        assignments: dict[str, list[Job]] = {n.hostname: [] for n in self.nodes}
        for i, job in enumerate(self.jobs):
            assignments[self.nodes[i % len(self.nodes)].hostname].append(job)
        if self.dry_run:  # as the users' --dry-run: nothing dispatched
            return {"run_id": self.run_id, "dry_run": True,
                    "assignments": {h: [j.job_id for j in js] for h, js in assignments.items()}}

        # --- prng-cache: stage once per run (after the dry-run return) ---
        if plugins is not None:
            plugins.hook.coordinator_run_start(
                run_id=self.run_id, nodes=self.nodes, jobs=self.jobs, assignments=assignments)
        # --- end prng-cache ---

        job_results: dict[str, JobResult] = {}
        by_host = {n.hostname: n for n in self.nodes}

        def run_node(host: str) -> None:
            node = by_host[host]
            with ThreadPoolExecutor(max_workers=max(1, node.max_concurrent)) as ex:
                futs = {job.job_id: ex.submit(self._execute_job, node, job, i % max(1, node.gpu_count))
                        for i, job in enumerate(assignments[host])}
                for jid, fut in futs.items():
                    job_results[jid] = fut.result()

        with ThreadPoolExecutor(max_workers=len(self.nodes)) as ex:
            list(ex.map(run_node, [h for h in assignments if assignments[h]]))

        # failed jobs are re-run on localhost with the same job object
        for job in self.jobs:
            r = job_results[job.job_id]
            if not r.ok and not by_host[r.node].is_localhost:
                retry = self._execute_job(self.localhost, job, 0)
                retry.attempts = r.attempts + retry.attempts
                job_results[job.job_id] = retry

        results = {"run_id": self.run_id,
                   "jobs": {jid: {"node": r.node, "ok": r.ok, "attempts": r.attempts}
                            for jid, r in job_results.items()},
                   "failed": sorted(jid for jid, r in job_results.items() if not r.ok)}

        # --- prng-cache: report, before the run manifest is written ---
        if plugins is not None:
            results["plugins"] = [r for r in plugins.hook.coordinator_run_end(
                run_id=self.run_id, results=results) if r]
        # --- end prng-cache ---

        if self.manifest_path:
            with open(self.manifest_path, "w") as f:
                json.dump(results, f, indent=2)
        return results

    # ------------------------------------------------------------- dispatch
    def _build_command(self, node: NodeConfig, job: Job, gpu_id: int) -> str:
        args = job.args
        # --- prng-cache: arguments for this job on this node ---
        if plugins is not None:
            args = plugins.hook.coordinator_job_args(node=node, job=job) or job.args
        # --- end prng-cache ---
        payload = {"job_id": job.job_id, "script": job.script, "args": args,
                   "expected_output": job.expected_output, "timeout": job.timeout}
        # the shared disk stands in for the users' scp of the payload
        with open(os.path.join(node.script_path, f"job_{job.job_id}.json"), "w") as f:
            json.dump(payload, f)
        self.commands.append((node.hostname, job.job_id, list(args)))
        return (f"cd {shlex.quote(node.script_path)} && {node.python_env} -u distributed_worker.py "
                f"job_{job.job_id}.json --gpu-id {gpu_id}")

    def _execute_job(self, node: NodeConfig, job: Job, gpu_id: int) -> JobResult:
        t0 = time.monotonic()
        cmd = self._build_command(node, job, gpu_id)
        if node.is_localhost:
            argv = ["sh", "-c", cmd]
        else:
            argv = ["ssh", "-o", "BatchMode=yes"]
            if self.ssh_config:
                argv += ["-F", self.ssh_config]
            argv += [f"{node.username}@{node.hostname}" if node.username else node.hostname, cmd]
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=job.timeout,
                               cwd=node.script_path if node.is_localhost else None)
            detail = (p.stderr or "")[-400:]
        except subprocess.TimeoutExpired:
            detail = "timeout"
        ok = self._output_ok(node, job)
        return JobResult(job.job_id, node.hostname, ok, time.monotonic() - t0,
                         attempts=[{"node": node.hostname, "ok": ok, "stderr": detail}])

    @staticmethod
    def _output_ok(node: NodeConfig, job: Job) -> bool:
        """Success is judged only by the output file, as in the users' coordinator."""
        path = os.path.join(node.script_path, job.expected_output)
        try:
            with open(path, "rb") as f:
                head = f.read(1)
        except OSError:
            return False
        return head in (b"{", b"[")


if __name__ == "__main__":
    c = ScriptsCoordinator(sys.argv[1], sys.argv[2], ssh_config=os.environ.get("SSH_CONFIG"))
    print(json.dumps(c.run(), indent=2))
