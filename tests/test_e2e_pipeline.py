"""Issue 11 end to end, over real sshd nodes: the users' pipeline as it is.

Every machine (the nodes, and the coordinator in its own mount namespace
with a private /dev/shm) ran a stand-in of the users' preload
(tests/e2e/preload_ramdisk.sh): /dev/shm/prng made by ``mkdir -p`` (0755),
``step2/`` and ``step3/`` holding copies of the inputs, ``.ready``. Then
the inputs were regenerated on every machine's SSD (script_path), so the
preload copies are stale. Jobs name the preload paths, in the exact step 2.5
and step 3 shapes (through the scripts_coordinator stand-in), and steps 5
and 1 go through the coordinator.py stand-in (tests/e2e/gpu_coordinator.py).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from coordinator_env import E2E

REMOTES = ("rig-a", "rig-b")
MACHINES = ("localhost", *REMOTES)
DATA = ("bidirectional_survivors_binary.npz", "optimal_window_config.json", "train_history.json",
        "holdout_history.json")
CHUNKS = 6
RAM_COPY = re.compile(r"^/dev/shm/prng/[0-9a-f]{32}/[^/]+$")
q = shlex.quote


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


class CoordinatorMachine:
    """The coordinator's own machine: this one, in a mount namespace of its
    own with a private tmpfs on /dev/shm (so its /dev/shm/prng, preload and
    cache are its own, as on the users' coordinator)."""

    def __init__(self):
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             "mount -t tmpfs -o size=64m,mode=1777 tmpfs /dev/shm && echo ready && exec sleep 2147483647"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True)
        if self.holder.stdout.readline().strip() != b"ready":
            err = self.holder.stderr.read().decode(errors="replace")
            self.close()
            raise RuntimeError(f"cannot make the coordinator's namespace: {err}")

    def argv(self, *cmd: str) -> list[str]:
        return ["nsenter", "-t", str(self.holder.pid), "-m", "--", *cmd]

    def run(self, cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        r = subprocess.run(self.argv("sh", "-c", cmd), capture_output=True, text=True, timeout=300, **kw)
        if check and r.returncode != 0:
            raise AssertionError(f"coordinator: {cmd!r} exited {r.returncode}: {r.stderr.strip()}")
        return r

    def close(self) -> None:
        if self.holder.poll() is None:
            self.holder.kill()
        self.holder.wait()
        for s in (self.holder.stdout, self.holder.stderr):
            s.close()


def generation(tag: str) -> dict[str, bytes]:
    """A version of the step inputs (the preload copies one, the SSD holds the next)."""
    return {
        "bidirectional_survivors_binary.npz": tag.encode() + os.urandom(150_000),
        "optimal_window_config.json": json.dumps({"window": 512, "gen": tag}).encode(),
        "train_history.json": json.dumps({"gen": tag, "draws": list(range(4000))}).encode(),
        "holdout_history.json": json.dumps({"gen": tag, "draws": list(range(900))}).encode(),
    }


class Pipeline:
    """Each machine's SSD (its own script_path), the cluster file, jobs in
    the users' shapes, a policy; the preload stand-in on every machine."""

    def __init__(self, cluster, tmp_path: Path, *, localhost_mode: str):
        self.cluster = cluster
        self.tmp = tmp_path
        self.ssd = {m: tmp_path / "ssd" / m for m in MACHINES}
        self.current = generation("current")
        for d in self.ssd.values():
            (d / "scoring_chunks").mkdir(parents=True)
            (d / "optuna_studies").mkdir()
            for f in ("distributed_worker.py", "pipeline_worker.py", "trial_worker.py", "sieve_worker.py"):
                shutil.copy(E2E / f, d / f)
            for name, data in generation("stale").items():
                (d / name).write_bytes(data)
            for i in range(CHUNKS):  # the coordinator writes them; the nodes see the synced copy
                (d / "scoring_chunks" / f"chunk_{i:04}.json").write_text(json.dumps(list(range(i, i + 50))))
        self.config = tmp_path / "distributed_config.json"
        cluster.write_distributed_config(
            self.config, [{"hostname": h, "script_path": str(self.ssd[h])} for h in REMOTES],
            script_path=str(self.ssd["localhost"]), python_env=sys.executable, include_localhost=True)
        self.policy = tmp_path / "cache_policy.yaml"
        self.policy.write_text(
            f"transport:\n  ssh_config: {cluster.ssh_config}\n  known_hosts: {cluster.known_hosts}\n"
            f"  connect_timeout: 5s\nnodes:\n  localhost:\n    mode: {localhost_mode}\n")

    def regenerate(self) -> None:
        """New inputs on every machine's SSD (after the preload ran)."""
        for d in self.ssd.values():
            for name, data in self.current.items():
                (d / name).write_bytes(data)

    def env(self) -> dict[str, str]:
        e = {k: v for k, v in os.environ.items() if k not in ("PRNG_CACHE", "USE_RAMDISK", "PRNG_CACHE_ROOT")}
        e.update(PRNG_CACHE_POLICY=str(self.policy), SSH_CONFIG=str(self.cluster.ssh_config),
                 XDG_CACHE_HOME=str(self.tmp / "xdg"))
        return e

    # ------------------------------------------------------------ jobs
    def step2_jobs(self, n: int = 6) -> Path:
        """Step 2.5 through scripts_coordinator.py, exactly as the users' jobs name their inputs."""
        jobs = [{"job_id": f"trial_{i}", "script": "pipeline_worker.py",
                 "args": ["/dev/shm/prng/step2/bidirectional_survivors_binary.npz",
                          "/dev/shm/prng/step2/train_history.json", "/dev/shm/prng/step2/holdout_history.json",
                          str(i), json.dumps({"lr": 0.01 * (i + 1), "window": 512}),
                          "--optuna-study-name", "step25_study",
                          "--optuna-study-db", "sqlite:///./optuna_studies/step25_study.db"],
                 "expected_output": f"results/trial_{i}.json", "timeout": 120} for i in range(n)]
        path = self.tmp / "jobs_step2.json"
        path.write_text(json.dumps(jobs))
        return path

    def step3_jobs(self) -> Path:
        """Step 3: one chunk per job, named by the coordinator's absolute script_path."""
        sp = self.ssd["localhost"]
        jobs = [{"job_id": f"chunk_{i}", "script": "pipeline_worker.py",
                 "args": ["--seeds-file", f"{sp}/scoring_chunks/chunk_{i:04}.json",
                          "--train-history", "/dev/shm/prng/step3/train_history.json",
                          "--holdout-history", "/dev/shm/prng/step3/holdout_history.json",
                          "--output-file", f"results/scores_{i:04}.json",
                          "--batch-size", "1000", "--top-k", "50", "--gpu-id", "0", "--use-float16"],
                 "expected_output": f"results/scores_{i:04}.json", "timeout": 120, "chunk_file": f"chunk_{i:04}.json"}
                for i in range(CHUNKS)]
        path = self.tmp / "jobs_step3.json"
        path.write_text(json.dumps(jobs))
        return path

    def result(self, host: str, expected_output: str) -> dict:
        return json.loads((self.ssd[host] / expected_output).read_text())

    def chunk_bytes(self, i: int) -> bytes:
        return (self.ssd["localhost"] / "scoring_chunks" / f"chunk_{i:04}.json").read_bytes()


def preload_cmd(script_path: Path) -> str:
    return f"sh {q(str(E2E / 'preload_ramdisk.sh'))} {q(str(script_path))}"


SNAPSHOT = ("cd /dev/shm/prng && find step2 step3 .ready -printf '%p %y %m %s %T@ %U\\n' | sort "
            "&& find step2 step3 -type f -exec sha256sum {} + | sort")


@pytest.fixture
def cluster(ssh_cluster_clean):
    if not ssh_cluster_clean.isolated:
        pytest.skip(f"needs each node's private /dev/shm: {ssh_cluster_clean.fallback_reason}")
    return ssh_cluster_clean


@pytest.fixture
def coordinator_machine():
    m = CoordinatorMachine()
    yield m
    m.close()


# ====================================== step 2.5 and step 3 (scripts_coordinator)
@pytest.mark.parametrize("root_mode", [
    "0755",  # as the users' preload leaves it (mkdir -p)
    "0700",  # the same with the root already tightened, as prng-cache will leave it
])
def test_preloaded_pipeline_reads_the_coordinators_current_bytes_from_ram(cluster, coordinator_machine, tmp_path,
                                                                           root_mode):
    """The users' step 2.5 and step 3 jobs, naming /dev/shm/prng/step2|3/,
    read the coordinator's *current* SSD bytes from <root>/<hash>/ on every
    machine (the coordinator too: localhost in cache mode), never the stale
    preload copies, not even on the coordinator, whose own
    /dev/shm/prng/step2/ holds a stale copy too. The preload's directories
    are byte-for-byte untouched by the runs, `stage` and `gc --all`."""
    p = Pipeline(cluster, tmp_path, localhost_mode="cache")
    coord = coordinator_machine
    coord.run(preload_cmd(p.ssd["localhost"]))
    for h in REMOTES:
        assert cluster.ssh(h, preload_cmd(p.ssd[h])).stdout.strip() == "loaded"
    machines = {"localhost": coord.run, **{h: cluster[h].run for h in REMOTES}}
    for h, run in machines.items():
        assert run("stat -c %a /dev/shm/prng").stdout.strip() == "755", h  # what `mkdir -p` made
        if root_mode == "0700":
            run("chmod 0700 /dev/shm/prng")
    p.regenerate()  # the preload copies are now stale everywhere
    stale = generation("stale")
    before = {h: run(SNAPSHOT).stdout for h, run in machines.items()}
    assert all(len(s.splitlines()) == 15 for s in before.values()), before  # 9 entries, 6 file hashes

    not_from_ram: list[str] = []  # checked last: all that a 0755 root still refuses

    def check(run: dict, jobs_file: Path) -> None:
        jobs = {j["job_id"]: j for j in json.loads(jobs_file.read_text())}
        assert run["failed"] == [], run
        (rep,) = [r for r in run["plugins"] if r.get("plugin") == "prng_cache"]
        assert rep["missing_inputs"] == {} and "error" not in rep, rep
        for jid, res in run["jobs"].items():
            host = res["node"]
            out = p.result(host, jobs[jid]["expected_output"])
            given = list(out["inputs"])
            named = [a for a in jobs[jid]["args"] if a.startswith("/")]
            assert len(given) == len(named) == 3
            for arg, (path, info) in zip(named, out["inputs"].items()):
                name = os.path.basename(path)
                want = p.chunk_bytes(int(name[6:10])) if name.startswith("chunk_") else p.current[name]
                assert info["sha256"] == sha(want), (host, jid, path)
                assert info["sha256"] != sha(stale.get(name, b"")), (host, jid, path)
                if not RAM_COPY.match(info["real"]):
                    not_from_ram.append(f"{host} {jid} {path}")
                    # until then the fallback promise: an aliased argument is
                    # the node's own aliased SSD file, any other its original path
                    aliased = arg.startswith("/dev/shm/prng/step")
                    assert path == (f"{p.ssd[host]}/{name}" if aliased else arg), (host, jid, arg, path)
            if "window_config" in out:  # step 2.5: beside the survivors file, current
                wc = out["window_config"]
                assert os.path.dirname(wc["path"]) == os.path.dirname(given[0])
                assert wc["sha256"] == sha(p.current["optimal_window_config.json"]), (host, jid, wc)
            else:
                assert jid.startswith("chunk_")

    runs = {}
    for jobs_file in (p.step2_jobs(), p.step3_jobs()):
        r = subprocess.run(coord.argv(sys.executable, str(E2E / "scripts_coordinator.py"), str(p.config),
                                      str(jobs_file)),
                           cwd=tmp_path, env=p.env(), capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        runs[jobs_file.name] = json.loads(r.stdout)
        check(runs[jobs_file.name], jobs_file)
        hosts = {j["node"] for j in runs[jobs_file.name]["jobs"].values()}
        assert hosts == set(MACHINES), hosts
    # step 3's chunks (run-scoped) left every machine when the run ended; the
    # histories they were read with stay cached for the next run
    for h, run in machines.items():
        ours = run("find /dev/shm/prng -mindepth 2 -maxdepth 2 -type f -not -path '/dev/shm/prng/step*' "
                   "-printf '%f\\n'").stdout.split()
        assert not [n for n in ours if n.startswith("chunk_")], (h, ours)
        assert "train_history.json" in ours, (h, ours)
    # the CLI too, on the coordinator's machine: stage both steps, then gc --all
    cli = [sys.executable, "-m", "prng_cache"]
    common = ["--config", str(p.config), "--policy", str(p.policy), "--json"]
    done = {}
    for jobs_file in ("jobs_step2.json", "jobs_step3.json"):
        done[jobs_file] = subprocess.run(coord.argv(*cli, "stage", "--jobs-file", str(tmp_path / jobs_file), *common),
                                         cwd=tmp_path, env=p.env(), capture_output=True, text=True, timeout=300)
    done["gc"] = subprocess.run(coord.argv(*cli, "gc", "--all", *common), cwd=tmp_path, env=p.env(),
                                capture_output=True, text=True, timeout=300)

    after = {h: run(SNAPSHOT).stdout for h, run in machines.items()}
    assert after == before  # the preload's step2/, step3/ and .ready: untouched
    for h, run in machines.items():  # and they still hold the stale copies the users' preload made
        assert run("sha256sum /dev/shm/prng/step2/train_history.json").stdout.split()[0] == \
            sha(stale["train_history.json"])

    # what only works once a 0755 root is accepted (and tightened)
    for jobs_file in ("jobs_step2.json", "jobs_step3.json"):
        (rep,) = [r for r in runs[jobs_file]["plugins"] if r.get("plugin") == "prng_cache"]
        refused = {h: n["reason"] for h, n in rep["nodes"].items() if n["status"] != "ok"}
        assert all("has mode 0755" in (why or "") for why in refused.values()), refused  # nothing else
        assert {h: n["status"] for h, n in rep["nodes"].items()} == {h: "ok" for h in MACHINES}, rep["nodes"]
        assert rep["fallback_jobs"] == 0 and rep["rewritten_jobs"] == len(runs[jobs_file]["jobs"])
    assert not_from_ram == []
    for name, r in done.items():
        assert r.returncode == 0, (name, r.stdout, r.stderr)
    assert {h: n["removed"] > 0 for h, n in json.loads(done["gc"].stdout)["nodes"].items()} == \
        {h: True for h in MACHINES}


# ============================= direct nodes and fallback: each node's own SSD
def load(module: str):
    sys.path.insert(0, str(E2E))
    try:
        return importlib.reload(importlib.import_module(module))
    finally:
        sys.path.remove(str(E2E))


def test_direct_and_failed_nodes_read_their_own_aliased_ssd_files(cluster, tmp_path, monkeypatch):
    """Localhost is direct (the default); rig-b's cache root is unsafe
    (0777): their step 2.5 jobs are sent each machine's own script_path
    files, never the stale preload copies still in their /dev/shm/prng/step2/;
    rig-a's jobs read RAM copies."""
    p = Pipeline(cluster, tmp_path, localhost_mode="direct")
    for h in REMOTES:
        cluster.ssh(h, preload_cmd(p.ssd[h]))
    cluster["rig-a"].run("chmod 0700 /dev/shm/prng")
    cluster["rig-b"].run("chmod 0777 /dev/shm/prng")
    p.regenerate()
    monkeypatch.chdir(tmp_path)
    env = p.env()
    for k in ("PRNG_CACHE_POLICY", "XDG_CACHE_HOME"):
        monkeypatch.setenv(k, env[k])
    for k in ("PRNG_CACHE", "USE_RAMDISK", "PRNG_CACHE_ROOT"):
        monkeypatch.delenv(k, raising=False)
    mod = load("scripts_coordinator")
    c = mod.ScriptsCoordinator(str(p.config), str(p.step2_jobs()), ssh_config=str(cluster.ssh_config), run_id="r1")
    out = c.run()
    assert out["failed"] == []
    (rep,) = [r for r in out["plugins"] if r.get("plugin") == "prng_cache"]
    assert {h: n["status"] for h, n in rep["nodes"].items()} == {"localhost": "direct", "rig-a": "ok",
                                                                 "rig-b": "error"}
    assert "0777" in rep["nodes"]["rig-b"]["reason"]
    assert rep["fallback_jobs"] == 2 and rep["aliased_jobs"] == 4 and rep["rewritten_jobs"] == 2
    for host, jid, args in c.commands:
        res = p.result(host, f"results/trial_{jid[6:]}.json")
        for path, info in res["inputs"].items():
            assert info["sha256"] == sha(p.current[os.path.basename(path)]), (host, path)
            if host == "rig-a":
                assert RAM_COPY.match(info["real"]), (host, info)
            else:
                assert path == f"{p.ssd[host]}/{os.path.basename(path)}", (host, path)
        assert res["window_config"]["sha256"] == sha(p.current["optimal_window_config.json"])
        assert args[3:] == json.loads(p.step2_jobs().read_text())[int(jid[6:])]["args"][3:]
    assert cluster["rig-b"].run("ls -A /dev/shm/prng").stdout.split() == [".ready", "step2", "step3"]


# ================================= steps 5 and 1 (coordinator.py, its objects)
def test_step_5_and_step_1_through_the_coordinator_py_stand_in(ssh_cluster_clean, tmp_path, monkeypatch):
    """JobSpecs (step 5 args in payload["args"], bare names; step 1 sieve
    payloads whose input is dataset_path) on GPUWorkers, assignments built
    from (job, worker) pairs by the README lines. rig-a reads RAM copies;
    rig-b is marked "use_ramdisk": false in the cluster file the coordinator
    was started with (it drops that key): it is off, never staged, and its
    payloads are sent exactly as they were."""
    cluster = ssh_cluster_clean
    work = tmp_path / "work"
    work.mkdir()
    for f in ("distributed_worker.py", "trial_worker.py", "sieve_worker.py"):
        shutil.copy(E2E / f, work / f)
    (work / "bidirectional_survivors.json").write_text(json.dumps(list(range(20000))))
    (work / "optimal_window_config.json").write_text('{"window": 9}')
    (work / "train_history.json").write_text(json.dumps(list(range(3000))))
    (work / "draws").mkdir()
    (work / "draws" / "daily3.json").write_text(json.dumps([[i % 10, i % 7, i % 3] for i in range(5000)]))
    config = tmp_path / "distributed_config.json"
    cluster.write_distributed_config(config, [cluster["rig-a"], {"hostname": "rig-b", "use_ramdisk": False}],
                                     script_path=str(work), python_env=sys.executable, include_localhost=True)
    policy = tmp_path / "cache_policy.yaml"
    policy.write_text(f"transport:\n  ssh_config: {cluster.ssh_config}\n  known_hosts: {cluster.known_hosts}\n"
                      "  connect_timeout: 5s\n"
                      + "".join(f"nodes:\n  {h}:\n    cache_root: {cluster[h].shm}/prng\n" for h in ("rig-a",)))
    step5 = [{"job_id": f"s5_{i}", "script": "trial_worker.py",
              "args": ["bidirectional_survivors.json", "train_history.json", "--top-k", "20",
                       "--output-file", f"results/s5_{i}.json"],
              "expected_output": f"results/s5_{i}.json", "timeout": 120} for i in range(6)]
    jobs_file = tmp_path / "jobs_step5.json"
    jobs_file.write_text(json.dumps(step5))
    sieves = [{"analysis_type": "sieve", "job_id": f"sieve_{i:03}", "dataset_path": str(work / "draws/daily3.json"),
               "seed_start": i * 1000, "seed_end": (i + 1) * 1000, "window_size": 512,
               "output_file": f"results/sieve_{i:03}.json"} for i in range(6)]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["coordinator.py", "--config", str(config)])
    monkeypatch.setenv("PRNG_CACHE_POLICY", str(policy))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    for k in ("PRNG_CACHE", "USE_RAMDISK"):
        monkeypatch.delenv(k, raising=False)
    mod = load("gpu_coordinator")
    c = mod.MultiGPUCoordinator(str(config), str(jobs_file), sieve_payloads=json.loads(json.dumps(sieves)),
                                ssh_config=str(cluster.ssh_config), run_id="step5-and-1")
    originals = json.dumps([j.payload for j in c.jobs])
    out = c.run()
    assert out["failed"] == []
    (rep,) = [r for r in out["plugins"] if r.get("plugin") == "prng_cache"]
    assert {h: n["status"] for h, n in rep["nodes"].items()} == {"localhost": "direct", "rig-a": "ok",
                                                                 "rig-b": "off"}
    assert json.dumps([j.payload for j in c.jobs]) == originals  # never mutated
    root = f"{cluster['rig-a'].shm}/prng/"
    by_id = {j.job_id: j for j in c.jobs}
    seen = {"rig-a": 0, "rig-b": 0, "localhost": 0}
    for host, jid, sent in c.sent:
        seen[host] += 1
        job = by_id[jid]
        res = json.loads((work / job.expected_output).read_text())
        if job.job_type == "sieve":
            ((path, digest),) = res["read"].items()
            assert digest == sha((work / "draws/daily3.json").read_bytes())
            assert (path.startswith(root) and path.endswith("/daily3.json")) == (host == "rig-a"), (host, path)
            if host != "rig-a":
                assert sent == job.payload
            else:
                assert {k: v for k, v in sent.items() if k != "dataset_path"} == \
                    {k: v for k, v in job.payload.items() if k != "dataset_path"}
        else:
            for path, info in res["inputs"].items():
                assert info["sha256"] == sha((work / os.path.basename(path)).read_bytes())
                assert path.startswith(root) == (host == "rig-a"), (host, path)
            if host == "rig-a":
                assert sent["args"][2:] == job.payload["args"][2:] and sent["script"] == job.payload["script"]
            else:
                assert sent == job.payload
    assert all(seen.values()), seen
    assert rep["rewritten_jobs"] == seen["rig-a"] and rep["fallback_jobs"] == 0
    assert not cluster["rig-b"].exists(f"{cluster['rig-b'].shm}/prng")  # off: never staged


def test_readme_registration_lines_for_coordinator_py_are_what_the_stand_in_uses():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert "## Register in coordinator.py" in readme
    section = readme.split("## Register in coordinator.py", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) >= 3
    source = (E2E / "gpu_coordinator.py").read_text()
    for block in blocks:
        for line in block.splitlines():
            if line.strip() and not line.strip().startswith("#") and line.strip() != "...":
                assert line.strip() in source, line
