"""Shared helpers for the sixth red team's attacks: the users' job shapes
(steps 2.5, 3, 5 and 1) over the real sshd test cluster, each coordinator
stand-in (tests/e2e/) run as its own process, as on the users' coordinator.

Shapes copied from the users' generators:

- step 2.5: ``[SURVIVORS, TRAIN, HOLDOUT, trial_id, params_json,
  "--optuna-study-name", N, "--optuna-study-db", "sqlite:///./optuna_studies/N.db"]``
  with the three inputs under ``/dev/shm/prng/step2/`` (``USE_RAMDISK = True``);
- step 3: ``["--seeds-file", "<abs script_path>/scoring_chunks/chunk_NNNN.json",
  "--train-history", "/dev/shm/prng/step3/train_history.json",
  "--holdout-history", "/dev/shm/prng/step3/holdout_history.json",
  "--output-file", "<abs script_path>/full_scoring_results/<run_id>/scores_NNNN.json", ...]``;
- step 5 (coordinator.py): bare names ``bidirectional_survivors.json``,
  ``synthetic_lottery.json`` relative to script_path;
- step 1 (coordinator.py): sieve payloads whose input is ``dataset_path``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from coordinator_env import E2E

REMOTES = ("rig-a", "rig-b")
REPO = Path(__file__).resolve().parent.parent


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


# a step 3 / step 2.5 worker that announces it started, then waits for a gate
# file before reading anything: a run that lasts as long as the test wants
GATED_WORKER = '''
import os, sys, time
job = os.environ.get("RT6_JOB") or "x"
gate = os.path.join(os.getcwd(), "gate.open")
started = os.path.join(os.getcwd(), "started")
os.makedirs(started, exist_ok=True)
open(os.path.join(started, str(os.getpid())), "w").close()
deadline = time.time() + 60
while not os.path.exists(gate) and time.time() < deadline:
    time.sleep(0.05)
sys.argv = [os.path.join(os.getcwd(), "pipeline_worker.py")] + sys.argv[1:]
exec(compile(open(sys.argv[0]).read(), sys.argv[0], "exec"), {"__name__": "__main__"})
'''

DRIVER = r'''
import json, sys, os
sys.path.insert(0, {e2e!r})
kind, config, jobs, run_id, ssh_config, sieves = sys.argv[1:7]
if os.environ.get("RT6_SHARD_MIN"):  # as conftest's --shard-min, in this process
    from prng_cache import manifest
    manifest.SHARD_MIN = int(os.environ["RT6_SHARD_MIN"])
    manifest.SHARD_FILL = max(1, manifest.SHARD_MIN // 4)
if kind == "scripts":
    import scripts_coordinator as m
    c = m.ScriptsCoordinator(config, jobs, ssh_config=ssh_config, run_id=run_id)
else:
    import gpu_coordinator as m
    sv = json.load(open(sieves)) if sieves != "-" else None
    c = m.MultiGPUCoordinator(config, jobs if jobs != "-" else None, sieve_payloads=sv,
                              ssh_config=ssh_config, run_id=run_id)
out = c.run()
out["sent"] = [list(x) for x in getattr(c, "commands", getattr(c, "sent", []))]
print("RT6-RESULT " + json.dumps(out))
'''


class Site:
    """The users' working directory (script_path, shared by every machine of
    the test cluster: only /dev/shm is private per node), its cluster file,
    a policy and the inputs of steps 2.5, 3, 5 and 1."""

    def __init__(self, cluster, tmp_path: Path, *, policy_extra: str = "", chunks: int = 6):
        self.cluster = cluster
        self.tmp = tmp_path
        self.work = tmp_path / "work"
        (self.work / "scoring_chunks").mkdir(parents=True)
        (self.work / "optuna_studies").mkdir()
        for f in ("distributed_worker.py", "pipeline_worker.py", "trial_worker.py", "sieve_worker.py"):
            shutil.copy(E2E / f, self.work / f)
        (self.work / "gated_worker.py").write_text(GATED_WORKER)
        self.write_inputs("gen1")
        for i in range(chunks):
            (self.work / "scoring_chunks" / f"chunk_{i:04}.json").write_text(
                json.dumps({"seeds": list(range(i * 1000, i * 1000 + 300))}))
        self.chunks = chunks
        self.config = tmp_path / "distributed_config.json"
        cluster.write_distributed_config(self.config, [cluster[h] for h in REMOTES], script_path=str(self.work),
                                         python_env=sys.executable, include_localhost=True)
        self.policy = tmp_path / "cache_policy.yaml"
        self.write_policy(policy_extra)
        self.driver = tmp_path / "rt6_driver.py"
        self.driver.write_text(DRIVER.format(e2e=str(E2E)))

    def root(self, host: str) -> str:
        return f"{self.cluster[host].shm}/prng"

    def write_policy(self, extra: str = "") -> None:
        nodes = "".join(f"  {h}:\n    cache_root: {self.root(h)}\n" for h in REMOTES)
        self.policy.write_text(
            f"transport:\n  ssh_config: {self.cluster.ssh_config}\n  known_hosts: {self.cluster.known_hosts}\n"
            f"  connect_timeout: 5s\nnodes:\n{nodes}{extra}")

    def write_inputs(self, tag: str) -> dict[str, bytes]:
        """A generation of the shared inputs on the SSD (script_path)."""
        data = {
            "bidirectional_survivors_binary.npz": tag.encode() + os.urandom(200_000),
            "optimal_window_config.json": json.dumps({"window": 512, "gen": tag}).encode(),
            "train_history.json": json.dumps({"gen": tag, "draws": list(range(4000))}).encode(),
            "holdout_history.json": json.dumps({"gen": tag, "draws": list(range(900))}).encode(),
            "bidirectional_survivors.json": json.dumps({"gen": tag, "s": list(range(9000))}).encode(),
            "synthetic_lottery.json": json.dumps({"gen": tag, "d": list(range(3000))}).encode(),
            "daily3.json": json.dumps({"gen": tag, "draws": [[i % 10, i % 7, i % 3] for i in range(3000)]}).encode(),
        }
        for name, b in data.items():
            (self.work / name).write_bytes(b)
        return data

    # ------------------------------------------------------------ jobs
    def step2_jobs(self, name: str = "jobs_step2.json", n: int = 6, script: str = "pipeline_worker.py") -> Path:
        jobs = [{"job_id": f"trial_{i}", "script": script,
                 "args": ["/dev/shm/prng/step2/bidirectional_survivors_binary.npz",
                          "/dev/shm/prng/step2/train_history.json", "/dev/shm/prng/step2/holdout_history.json",
                          str(i), json.dumps({"lr": 0.01 * (i + 1), "window": 512}),
                          "--optuna-study-name", "scorer_meta_opt",
                          "--optuna-study-db", "sqlite:///./optuna_studies/scorer_meta_opt.db"],
                 "expected_output": f"results/trial_{i}.json", "timeout": 120} for i in range(n)]
        path = self.tmp / name
        path.write_text(json.dumps(jobs))
        return path

    def step3_jobs(self, run_id: str, name: str = "jobs_step3.json", script: str = "pipeline_worker.py") -> Path:
        """As the users' generator emits them, with --output-file already
        made run-scoped and absolute by their coordinator."""
        sp = str(self.work)
        out = f"full_scoring_results/{run_id}"
        jobs = [{"job_id": f"chunk_{i}", "script": script,
                 "args": ["--seeds-file", f"{sp}/scoring_chunks/chunk_{i:04}.json",
                          "--train-history", "/dev/shm/prng/step3/train_history.json",
                          "--holdout-history", "/dev/shm/prng/step3/holdout_history.json",
                          "--output-file", f"{sp}/{out}/scores_{i:04}.json",
                          "--batch-size", "1000", "--top-k", "50", "--gpu-id", "0", "--use-float16"],
                 "expected_output": f"{out}/scores_{i:04}.json", "timeout": 120, "chunk_file": f"chunk_{i:04}.json",
                 "seed_count": 300}
                for i in range(self.chunks)]
        path = self.tmp / name
        path.write_text(json.dumps(jobs))
        return path

    def step5_jobs(self, name: str = "jobs_step5.json", n: int = 6) -> Path:
        jobs = [{"job_id": f"s5_{i}", "script": "trial_worker.py",
                 "args": ["bidirectional_survivors.json", "synthetic_lottery.json", "--trial", str(i),
                          "--output-file", f"anti_overfit_results/s5_{i}.json"],
                 "expected_output": f"anti_overfit_results/s5_{i}.json", "timeout": 120} for i in range(n)]
        path = self.tmp / name
        path.write_text(json.dumps(jobs))
        return path

    def sieve_payloads(self, name: str = "sieves.json", n: int = 6) -> Path:
        sv = [{"analysis_type": "sieve", "job_id": f"sieve_{i:03}", "dataset_path": str(self.work / "daily3.json"),
               "seed_start": i * 1000, "seed_end": (i + 1) * 1000, "window_size": 512,
               "output_file": f"sieve_results/sieve_{i:03}.json"} for i in range(n)]
        (self.work / "sieve_results").mkdir(exist_ok=True)
        path = self.tmp / name
        path.write_text(json.dumps(sv))
        return path

    # ------------------------------------------------------------ runs
    def env(self) -> dict[str, str]:
        e = {k: v for k, v in os.environ.items() if k not in ("PRNG_CACHE", "USE_RAMDISK", "PRNG_CACHE_ROOT")}
        e.update(PRNG_CACHE_POLICY=str(self.policy), XDG_CACHE_HOME=str(self.tmp / "xdg"),
                 PYTHONPATH=str(REPO) + os.pathsep + e.get("PYTHONPATH", ""))
        return e

    def start(self, kind: str, jobs: Path | None, run_id: str, sieves: Path | None = None,
              shard_min: int | None = None) -> subprocess.Popen:
        """A coordinator process (``kind``: "scripts" or "gpu") in the
        directory the users run it from (the cluster file is
        ./distributed_config.json there)."""
        return subprocess.Popen(
            [sys.executable, str(self.driver), kind, str(self.config), str(jobs) if jobs else "-", run_id,
             str(self.cluster.ssh_config), str(sieves) if sieves else "-"],
            cwd=self.tmp, env={**self.env(), **({"RT6_SHARD_MIN": str(shard_min)} if shard_min else {})},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    @staticmethod
    def result(p: subprocess.Popen, timeout: float = 120) -> dict:
        out, err = p.communicate(timeout=timeout)
        lines = [ln for ln in out.splitlines() if ln.startswith("RT6-RESULT ")]
        assert p.returncode == 0 and lines, (p.returncode, out[-2000:], err[-4000:])
        res = json.loads(lines[-1][len("RT6-RESULT "):])
        res["stderr"] = err
        return res

    def run(self, kind: str, jobs: Path | None, run_id: str, sieves: Path | None = None) -> dict:
        return self.result(self.start(kind, jobs, run_id, sieves))

    def wait_started(self, n: int, timeout: float = 60) -> None:
        d = self.work / "started"
        deadline = time.time() + timeout
        while time.time() < deadline:
            if d.is_dir() and len(os.listdir(d)) >= n:
                return
            time.sleep(0.05)
        raise AssertionError(f"only {len(os.listdir(d)) if d.is_dir() else 0} of {n} gated jobs started")

    def open_gate(self) -> None:
        (self.work / "gate.open").write_text("")


def report(res: dict) -> dict:
    (rep,) = [r for r in res["plugins"] if r.get("plugin") == "prng_cache"]
    return rep


def ram_entries(node, root: str) -> dict[str, list[str]]:
    """key -> names in the node's cache root (entries only)."""
    out = node.run(f"cd {root} 2>/dev/null && find . -mindepth 2 -maxdepth 2 -type f -printf '%h %f\\n' || true").stdout
    got: dict[str, list[str]] = {}
    for line in out.splitlines():
        d, f = line.split(" ", 1)
        d = d[2:]
        if len(d) == 32 and all(c in "0123456789abcdef" for c in d) and not f.startswith(".prng-"):
            got.setdefault(d, []).append(f)
    return got


def cli(site: Site, *args: str, check: bool = True) -> dict:
    """``prng-cache ARGS --json`` with the site's cluster file and policy."""
    r = subprocess.run([sys.executable, "-m", "prng_cache", *args, "--json", "--config", str(site.config),
                        "--policy", str(site.policy)], cwd=site.tmp, env=site.env(), capture_output=True,
                       text=True, timeout=120)
    if check:
        assert r.returncode in (0, 1) and r.stdout.strip(), (args, r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    doc = json.loads(r.stdout) if r.stdout.strip() else {}
    doc["_rc"], doc["_stderr"] = r.returncode, r.stderr
    return doc


def prefill(site: Site, n: int, *, tag: str = "old") -> list[Path]:
    """``n`` small inputs of earlier runs already cached on both rigs (a large,
    sharded root from 512 entries on): staged by ``prng-cache stage``."""
    d = site.work / f"earlier_{tag}"
    d.mkdir()
    paths = []
    for i in range(n):
        p = d / f"trial_{i:05}.json"
        p.write_text(json.dumps({"tag": tag, "i": i}))
        paths.append(p)
    jobs = [{"job_id": f"{tag}_{k}", "script": "x.py", "args": [str(p) for p in paths],
             "expected_output": f"out_{tag}_{k}.json", "timeout": 60} for k in range(2)]
    jf = site.tmp / f"prefill_{tag}.json"
    jf.write_text(json.dumps(jobs))
    doc = cli(site, "stage", "--jobs-file", str(jf))
    for h in REMOTES:
        assert doc["nodes"][h]["status"] == "ok", doc["nodes"][h]
    return paths
