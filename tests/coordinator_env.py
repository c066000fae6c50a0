"""The test coordinator (the users' contract, tests/e2e/scripts_coordinator.py)
running jobs on localhost + rig-a + rig-b with prng-cache as its plugin:
shared by the end-to-end and the fault tests."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import sys
from pathlib import Path

E2E = Path(__file__).resolve().parent / "e2e"
REMOTES = ("rig-a", "rig-b")


def load_coordinator():
    """tests/e2e/scripts_coordinator.py, freshly imported (its plugin manager
    is module state)."""
    sys.path.insert(0, str(E2E))
    try:
        import scripts_coordinator

        return importlib.reload(scripts_coordinator)
    finally:
        sys.path.remove(str(E2E))


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


class CoordinatorEnv:
    """A work directory shared by every node (the users' synced script_path),
    its cluster file, jobs file and policy, and the coordinator."""

    def __init__(self, cluster, tmp_path, monkeypatch, *, connect_timeout: str = "5s"):
        self.cluster = cluster
        self.connect_timeout = connect_timeout
        self.work = tmp_path / "work"
        (self.work / "data").mkdir(parents=True)
        for f in ("distributed_worker.py", "trial_worker.py"):
            shutil.copy(E2E / f, self.work / f)
        d = self.work / "data"
        (d / "bidirectional_survivors.npz").write_bytes(os.urandom(120_000))
        (d / "optimal_window_config.json").write_text('{"window": 7}')
        (self.work / "train_history.json").write_text(json.dumps(list(range(3000))))
        (d / "holdout_history.json").write_text(json.dumps(list(range(700))))
        self.config = cluster.write_distributed_config(
            tmp_path / "distributed_config.json", [cluster[h] for h in REMOTES],
            script_path=str(self.work), python_env=sys.executable, include_localhost=True)
        self.policy = tmp_path / "cache_policy.yaml"
        self.write_policy()
        monkeypatch.setenv("PRNG_CACHE_POLICY", str(self.policy))
        monkeypatch.delenv("PRNG_CACHE", raising=False)
        monkeypatch.delenv("USE_RAMDISK", raising=False)
        self.jobs = tmp_path / "jobs.json"
        self.write_jobs()
        self.mod = load_coordinator()
        self.run_no = 0

    def root(self, host: str) -> str:
        return f"{self.cluster[host].shm}/prng"

    def write_policy(self, extra: str = "") -> None:
        nodes = "".join(f"  {h}:\n    cache_root: {self.root(h)}\n" for h in REMOTES)
        self.policy.write_text(
            "inputs:\n  companions:\n    \"*survivors*.npz\": [optimal_window_config.json]\n"
            f"transport:\n  ssh_config: {self.cluster.ssh_config}\n"
            f"  known_hosts: {self.cluster.known_hosts}\n  connect_timeout: {self.connect_timeout}\n"
            f"nodes:\n{nodes}{extra}")

    def write_jobs(self, n: int = 6) -> None:
        """Jobs in the three argument shapes, round-robin over 3 nodes."""
        shapes = [
            lambda i: ["data/bidirectional_survivors.npz", "train_history.json",
                       str(self.work / "data/holdout_history.json"), str(i), '{"lr": 0.1}',
                       "--optuna-study-db", "sqlite:///./optuna_studies/x.db",
                       "--output-file", f"results/out_{i}.json"],
            lambda i: ["--survivors", "data/bidirectional_survivors.npz",
                       f"--train-history={self.work}/train_history.json",
                       "--holdout-history", "data/holdout_history.json", "-o", f"results/out_{i}.json"],
            lambda i: ["data/bidirectional_survivors.npz", "--train=train_history.json", "--holdout", "data/holdout_history.json",
                       f"--output-file=results/out_{i}.json"],
        ]
        jobs = [{"job_id": f"t{i}", "script": "trial_worker.py", "args": shapes[i % 3](i),
                 "expected_output": f"results/out_{i}.json", "timeout": 60} for i in range(n)]
        self.jobs.write_text(json.dumps(jobs))

    @property
    def original(self) -> dict[str, list]:
        """job id -> the args in the jobs file."""
        return {j["job_id"]: j["args"] for j in json.loads(self.jobs.read_text())}

    def run(self, *extra_plugins):
        """One coordinator run: (coordinator, its result, prng-cache's report)."""
        self.run_no += 1
        shutil.rmtree(self.work / "results", ignore_errors=True)
        for p in extra_plugins:
            self.mod.plugins.register(p)
        try:
            c = self.mod.ScriptsCoordinator(str(self.config), str(self.jobs), ssh_config=str(self.cluster.ssh_config),
                                            run_id=f"run-{self.run_no}", manifest_path=str(self.work / "run.json"))
            out = c.run()
        finally:
            for p in extra_plugins:
                self.mod.plugins.unregister(p)
        (report,) = [r for r in out["plugins"] if r.get("plugin") == "prng_cache"]
        return c, out, report

    def reads(self, job_id: str) -> dict:
        i = int(job_id[1:])
        return json.loads((self.work / f"results/out_{i}.json").read_text())["inputs"]

    def source(self, name: str) -> bytes:
        p = self.work / name if (self.work / name).exists() else self.work / "data" / name
        return p.read_bytes()

    def check_reads(self, coordinator, *, ram_hosts: tuple[str, ...] | None = REMOTES) -> None:
        """Every job read the bytes of the coordinator's files (the .npz with
        its companion beside it). With ``ram_hosts``, the jobs sent to those
        hosts read RAM copies and every other job read the original paths."""
        for host, jid, args in coordinator.commands:
            reads = self.reads(jid)
            assert len(reads) == 3, reads
            for path, info in reads.items():
                name = os.path.basename(path)
                assert info["sha256"] == sha(self.source(name)), (host, jid, path)
                if ram_hosts is not None:
                    if host in ram_hosts:
                        assert path.startswith(self.root(host) + "/"), (host, jid, path)
                    else:
                        assert not path.startswith("/dev/shm"), (host, jid, path)
                if name.endswith(".npz"):
                    comp = info["companion"]
                    assert os.path.dirname(comp["path"]) == os.path.dirname(path)
                    assert comp["sha256"] == sha(self.source("optimal_window_config.json"))
