"""A small coordinator in the shape of the users' older coordinator.py
(steps 5 and 1): jobs are ``JobSpec`` objects whose payload is the whole
jobs-file entry (script jobs: ``payload["args"]``) or a sieve payload dict
with ``dataset_path``; each GPU is a ``GPUWorker`` whose host is
``worker.node.hostname``; assignments are (job, worker) pairs. Jobs run over
ssh (localhost: a local shell) in the node's script_path; success is judged
by the output file; failed jobs are re-run on localhost with the same job.
The prng-cache lines are those of the README section for coordinator.py.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field

# --- prng-cache: plugin manager (optional) ---
try:
    from prng_cache.coordinator import plugin_manager
    plugins = plugin_manager()
except ImportError:  # prng-cache not installed: run exactly as before
    plugins = None
# --- end prng-cache ---


@dataclass
class NodeInfo:
    hostname: str
    username: str
    script_path: str
    python_env: str
    gpu_count: int = 1

    @property
    def is_localhost(self) -> bool:
        return self.hostname in ("localhost", "127.0.0.1")


@dataclass
class GPUWorker:
    node: NodeInfo
    gpu_id: int


@dataclass
class JobSpec:
    job_id: str
    job_type: str  # "script" (step 5) or "sieve" (step 1)
    payload: dict
    expected_output: str
    timeout: int = 600


@dataclass
class Result:
    ok: bool
    host: str
    attempts: list = field(default_factory=list)


class MultiGPUCoordinator:
    def __init__(self, config_path: str, jobs_path: str | None = None, sieve_payloads: list | None = None,
                 ssh_config: str | None = None, run_id: str | None = None, dry_run: bool = False):
        with open(config_path) as f:
            cfg = json.load(f)
        self.nodes = [NodeInfo(n["hostname"], n.get("username") or "", n["script_path"],
                               n.get("python_env", "python3"), n.get("gpu_count", 1)) for n in cfg["nodes"]]
        self.jobs: list[JobSpec] = []
        if jobs_path:
            with open(jobs_path) as f:
                for entry in json.load(f):
                    self.jobs.append(JobSpec(entry["job_id"], "script", entry, entry["expected_output"],
                                             entry.get("timeout", 600)))
        for p in sieve_payloads or []:
            self.jobs.append(JobSpec(p["job_id"], "sieve", p, p["output_file"]))
        self.ssh_config = ssh_config
        self.run_id = run_id or time.strftime("run-%Y%m%d-%H%M%S")
        self.dry_run = dry_run
        self.localhost = next(n for n in self.nodes if n.is_localhost)
        self.sent: list[tuple[str, str, dict]] = []  # (host, job id, payload sent)

    def run(self) -> dict:
        workers = [GPUWorker(n, g) for n in self.nodes for g in range(max(1, n.gpu_count))]
        pairs = [(job, workers[i % len(workers)]) for i, job in enumerate(self.jobs)]
        if self.dry_run:
            return {"run_id": self.run_id, "dry_run": True, "jobs": len(pairs)}

        # --- prng-cache: stage once per run (after the dry-run return) ---
        if plugins is not None:
            assignments: dict[str, list] = {}
            for job, worker in pairs:
                assignments.setdefault(worker.node.hostname, []).append(job)
            plugins.hook.coordinator_run_start(
                run_id=self.run_id, nodes=self.nodes, jobs=self.jobs, assignments=assignments)
        # --- end prng-cache ---

        done = {job.job_id: self.execute(job, worker) for job, worker in pairs}
        for job, worker in pairs:  # failed jobs: again on localhost, same job object
            r = done[job.job_id]
            if not r.ok and not worker.node.is_localhost:
                retry = self.execute(job, GPUWorker(self.localhost, 0))
                retry.attempts = r.attempts + retry.attempts
                done[job.job_id] = retry
        results = {"run_id": self.run_id,
                   "jobs": {jid: {"ok": r.ok, "node": r.host, "attempts": r.attempts} for jid, r in done.items()},
                   "failed": sorted(jid for jid, r in done.items() if not r.ok)}

        # --- prng-cache: report ---
        if plugins is not None:
            results["plugins"] = [r for r in plugins.hook.coordinator_run_end(run_id=self.run_id, results=results) if r]
        # --- end prng-cache ---
        return results

    def execute(self, job: JobSpec, worker: GPUWorker) -> Result:
        node = worker.node
        payload = job.payload
        # --- prng-cache: the payload for this job on this worker ---
        if plugins is not None:
            payload = plugins.hook.coordinator_job_payload(node=worker, job=job, payload=payload) or payload
        # --- end prng-cache ---
        self.sent.append((node.hostname, job.job_id, payload))
        name = f"payload_{job.job_id}.json"
        with open(os.path.join(node.script_path, name), "w") as f:  # the shared disk stands in for scp
            json.dump(payload, f)
        worker_script = "distributed_worker.py" if job.job_type == "script" else "sieve_worker.py"
        cmd = f"cd {shlex.quote(node.script_path)} && {node.python_env} -u {worker_script} {name}"
        if node.is_localhost:
            argv = ["sh", "-c", cmd]
        else:
            argv = ["ssh", "-o", "BatchMode=yes"] + (["-F", self.ssh_config] if self.ssh_config else [])
            argv += [f"{node.username}@{node.hostname}" if node.username else node.hostname, cmd]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=job.timeout)
        try:
            with open(os.path.join(node.script_path, job.expected_output), "rb") as f:
                ok = f.read(1) in (b"{", b"[")
        except OSError:
            ok = False
        return Result(ok, node.hostname, [{"node": node.hostname, "ok": ok, "stderr": p.stderr[-400:]}])


if __name__ == "__main__":
    c = MultiGPUCoordinator(sys.argv[1], sys.argv[2], ssh_config=os.environ.get("SSH_CONFIG"))
    print(json.dumps(c.run(), indent=2))
