"""Issue 11 on the coordinator's own machine (LocalTransport, no sshd): path
aliases, inputs that exist nowhere, coordinator.py's objects and the
cluster file's ``use_ramdisk``. The runs over real sshd nodes are in
tests/test_e2e_pipeline.py."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import xxhash

from prng_cache.inputs import discover
from prng_cache.plugin import PrngCachePlugin
from prng_cache.policy import InputsPolicy, NodeOverride, Policy

E2E = Path(__file__).resolve().parent / "e2e"
sys.path.insert(0, str(E2E))
from gpu_coordinator import GPUWorker, JobSpec, NodeInfo  # noqa: E402
from scripts_coordinator import Job, NodeConfig  # noqa: E402

sys.path.pop(0)

NAMES = ("bidirectional_survivors_binary.npz", "train_history.json", "holdout_history.json")
COMPANION = "optimal_window_config.json"


def h(data: bytes) -> str:
    return xxhash.xxh3_128(data).hexdigest()


@dataclass
class Site:
    ssd: Path  # localhost's script_path: the real files, current
    legacy: Path  # the users' preload directory: stale copies of every one
    root: str  # the cache root (a private directory on /dev/shm)
    policy: Policy
    node: NodeConfig  # localhost, as the coordinator passes it

    def current(self, name: str) -> bytes:
        return (self.ssd / name).read_bytes()

    def step2_jobs(self, n: int = 4) -> list[Job]:
        """Jobs in the users' step 2.5 shape, naming the preload directory."""
        return [Job(f"t{i}", "scorer_trial_worker.py",
                    [*(f"{self.legacy}/{name}" for name in NAMES), str(i), '{"lr": 0.1, "window": 7}',
                     "--optuna-study-name", "s", "--optuna-study-db", "sqlite:///./optuna_studies/s.db"],
                    f"results/trial_{i}.json") for i in range(n)]


def policy_for(root: str, legacy: Path, **inputs) -> Policy:
    return Policy(cache_root=root,
                  nodes=(NodeOverride("localhost", mode="cache"), NodeOverride("rig-d", mode="direct"),
                         NodeOverride("rig-o", mode="off")),
                  inputs=InputsPolicy(path_aliases=((f"{legacy}/", "{script_path}/"),), **inputs))


@pytest.fixture
def site(tmp_path, monkeypatch):
    # the plugin reads use_ramdisk from the coordinator's cluster file: none here
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["scripts_coordinator.py"])
    for k in ("PRNG_CACHE", "USE_RAMDISK", "PRNG_CACHE_POLICY"):
        monkeypatch.delenv(k, raising=False)
    ssd, legacy = tmp_path / "ssd", tmp_path / "preload" / "step2"
    ssd.mkdir()
    legacy.mkdir(parents=True)
    for name in (*NAMES, COMPANION):
        (legacy / name).write_bytes(b"STALE " + name.encode() + os.urandom(2000))
        (ssd / name).write_bytes(b"CURRENT " + name.encode() + os.urandom(3000))
    root = f"/dev/shm/prng-aliastest-{os.getpid()}-{os.urandom(3).hex()}"
    node = NodeConfig("localhost", "", 1, "cpu", str(ssd), "python3", 2)
    yield Site(ssd, legacy, root, policy_for(root, legacy), node)
    if os.path.isdir(root):
        for p, _, _ in os.walk(root):
            os.chmod(p, 0o700)
        shutil.rmtree(root)


def start(policy, nodes, jobs, assignments=None) -> PrngCachePlugin:
    p = PrngCachePlugin(policy)
    p.coordinator_run_start(run_id="r", nodes=nodes, jobs=jobs,
                            assignments=assignments if assignments is not None else {"localhost": jobs})
    return p


# ------------------------------------------------------------ path aliases
def test_aliased_args_are_staged_from_the_aliased_file_never_the_stale_legacy_copy(site):
    jobs = site.step2_jobs()
    originals = [list(j.args) for j in jobs]
    p = start(site.policy, [site.node], jobs)
    for job, orig in zip(jobs, originals):
        new = p.coordinator_job_args(node=site.node, job=job)
        for k, name in enumerate(NAMES):
            assert new[k].startswith(site.root + "/") and new[k].endswith("/" + name)
            assert Path(new[k]).read_bytes() == site.current(name)  # never the preload's copy
        # the optional companion sits beside the survivors copy: the current one
        assert Path(new[0]).with_name(COMPANION).read_bytes() == site.current(COMPANION)
        assert all(b is a for a, b in zip(orig[3:], new[3:]))  # the rest: the very same objects
        assert job.args == orig
    rep = p.coordinator_run_end(run_id="r", results={})
    assert (rep["rewritten_jobs"], rep["fallback_jobs"], rep["aliased_jobs"]) == (4, 0, 0)
    assert rep["missing_inputs"] == {}


def test_the_default_aliases_never_read_the_preload_directory(tmp_path):
    """With the shipped policy, /dev/shm/prng/step2/NAME is NAME in the
    coordinator's script_path (base_dir), whether or not the preload made
    the legacy file on this machine: its key is the SSD file's hash."""
    base = tmp_path / "w"
    base.mkdir()
    (base / "train_history.json").write_bytes(b"[1, 2, 3]")
    (base / "chunk.json").write_bytes(b"[7]")
    jobs = [{"job_id": i, "args": ["/dev/shm/prng/step2/train_history.json", "--seeds-file",
                                   "/dev/shm/prng/step3/chunk.json"]} for i in range(2)]
    d = discover(jobs, InputsPolicy(), str(base))
    assert set(d.bundles) == {f"{base}/train_history.json", f"{base}/chunk.json"}
    assert d.bundles[f"{base}/train_history.json"].key == h(b"[1, 2, 3]")
    assert d.aliased["/dev/shm/prng/step2/train_history.json"].path == f"{base}/train_history.json"
    assert d.missing == {}


@pytest.mark.parametrize("glob", ["include", "exclude", "companions", "run_scoped"])
def test_every_glob_matches_the_aliased_path(site, glob):
    """Each pattern names the SSD directory only: it cannot match the path
    as the jobs spell it (the preload directory)."""
    ssd = f"{site.ssd}/*"
    jobs = site.step2_jobs(1 if glob == "include" else 2)
    settings = {
        "include": dict(include=(ssd,)),  # one job < min_jobs: cached only because included
        "exclude": dict(exclude=(ssd,)),
        "companions": dict(companions=((f"{site.ssd}/*.npz", (COMPANION,)),)),  # required here
        "run_scoped": dict(run_scoped=(ssd,)),
    }[glob]
    d = discover(jobs, site.policy.inputs.__class__(
        path_aliases=site.policy.inputs.path_aliases, **settings), str(site.ssd))
    survivors = f"{site.ssd}/{NAMES[0]}"
    if glob == "exclude":
        assert d.bundles == {} and "excluded" in d.skipped[survivors]
    elif glob == "include":
        assert set(d.bundles) == {f"{site.ssd}/{n}" for n in NAMES}
    elif glob == "companions":
        b = d.bundles.get(survivors)
        assert b is not None and [f.src for f in b.files] == [survivors, f"{site.ssd}/{COMPANION}"]
    else:
        assert all(b.run_scoped for b in d.bundles.values()) and len(d.bundles) == 3


def test_each_node_gets_its_own_answer(site, tmp_path):
    """RAM copy on a cache node; on a direct node, and on a node this run
    never staged (a retry target), that node's own aliased path; an off node
    (mode off, or "use_ramdisk": false in the cluster file) keeps the args."""
    (tmp_path / "distributed_config.json").write_text(json.dumps({"nodes": [
        {"hostname": "rig-u", "script_path": "/srv/u", "use_ramdisk": False}]}))
    nodes = [site.node, NodeConfig("rig-d", "", 1, "", "/srv/d/work", "python3"),
             NodeConfig("rig-o", "", 1, "", "/srv/o", "python3"), NodeConfig("rig-u", "", 1, "", "/srv/u", "python3")]
    jobs = site.step2_jobs(8)
    assign = {n.hostname: jobs[i::4] for i, n in enumerate(nodes)}
    p = start(site.policy, nodes, jobs, assign)
    by_host = {n.hostname: n for n in nodes}
    ram = p.coordinator_job_args(node=site.node, job=jobs[0])
    assert all(a.startswith(site.root + "/") for a in ram[:3])
    for job in jobs:
        assert p.coordinator_job_args(node=by_host["rig-d"], job=job)[:3] == [f"/srv/d/work/{n}" for n in NAMES]
        assert p.coordinator_job_args(node=by_host["rig-o"], job=job) is None
        assert p.coordinator_job_args(node=by_host["rig-u"], job=job) is None
        late = NodeConfig("rig-late", "", 1, "", "/srv/late/", "python3")  # not announced at run start
        assert p.coordinator_job_args(node=late, job=job)[:3] == [f"/srv/late/{n}" for n in NAMES]
    rep = p.coordinator_run_end(run_id="r", results={})
    assert {h: n["status"] for h, n in rep["nodes"].items()} == {
        "localhost": "ok", "rig-d": "direct", "rig-o": "off", "rig-u": "off"}
    assert rep["fallback_jobs"] == 0 and rep["aliased_jobs"] == 8


def test_a_node_that_cannot_be_served_reads_its_own_aliased_files(site):
    """The fallback promise for an aliased argument: 'original path' is the
    aliased SSD path, never the legacy copy."""
    os.mkdir(site.root, 0o777)
    os.chmod(site.root, 0o777)  # refused: not private
    jobs = site.step2_jobs()
    p = start(site.policy, [site.node], jobs)
    for job in jobs:
        assert p.coordinator_job_args(node=site.node, job=job)[:3] == [f"{site.ssd}/{n}" for n in NAMES]
    rep = p.coordinator_run_end(run_id="r", results={})
    assert rep["nodes"]["localhost"]["status"] == "error"
    assert (rep["rewritten_jobs"], rep["fallback_jobs"], rep["aliased_jobs"]) == (0, 4, 4)
    assert os.listdir(site.root) == []


@pytest.mark.parametrize("off", ["PRNG_CACHE=0", "USE_RAMDISK=false", "enabled: false", "mode: off"])
def test_with_the_cache_off_aliased_args_stay_exactly_as_given(site, monkeypatch, off):
    policy = site.policy
    if "=" in off:
        monkeypatch.setenv(*off.split("="))
    elif off == "enabled: false":
        policy = Policy(cache_root=site.root, enabled=False, inputs=policy.inputs, nodes=policy.nodes)
    else:
        policy = Policy(cache_root=site.root, inputs=policy.inputs, nodes=(NodeOverride("*", mode="off"),))
    jobs = site.step2_jobs()
    p = start(policy, [site.node], jobs)
    worker = GPUWorker(NodeInfo("localhost", "", str(site.ssd), "python3"), 0)
    spec = JobSpec("t0", "script", {"args": list(jobs[0].args), "script": "w.py"}, "o.json")
    for job in jobs:
        assert p.coordinator_job_args(node=site.node, job=job) is None
    assert p.coordinator_job_payload(node=worker, job=spec, payload=spec.payload) is None
    assert not os.path.exists(site.root)


# ----------------------------------------------------------- nothing silent
def test_inputs_that_exist_nowhere_are_reported_not_counted_as_fallback(site, caplog):
    (site.legacy / "gone.json").write_text("stale, and its aliased file is missing")
    d = site.ssd
    missing_args = [f"{site.legacy}/gone.json", "data/nothere.npz", f"{d.parent}/abs/none", "bare.csv"]
    never = ["study_name", "sqlite:///./optuna_studies/x.db", '{"a": 1}', "7", "-0.5", "nothere.db",
             "http://host/x.json", "--output-file", "results/o.json", "results/expected.json"]
    jobs = [Job(f"m{i}", "w.py", [*missing_args, *never], "results/expected.json") for i in range(2)]
    jobs.append(Job("only-missing", "w.py", ["data/nothere.npz", "-o", "results/x.json"], "results/x.json"))
    jobs += site.step2_jobs(2)
    caplog.set_level(logging.WARNING)
    p = start(site.policy, [site.node], jobs)
    for job in jobs:
        new = p.coordinator_job_args(node=site.node, job=job)
        if job.job_id.startswith("t"):
            assert new[0].startswith(site.root + "/")
        else:
            assert new is None  # missing inputs are left as given
    rep = p.coordinator_run_end(run_id="r", results={})
    assert rep["missing_inputs"] == {f"{d}/gone.json": 2, f"{d}/data/nothere.npz": 3,
                                     f"{d.parent}/abs/none": 2, f"{d}/bare.csv": 2}
    assert rep["fallback_jobs"] == 0 and rep["rewritten_jobs"] == 2
    (line,) = [r.getMessage() for r in caplog.records if "exist nowhere" in r.getMessage()]
    assert f"{d}/gone.json (2 job(s), named as {site.legacy}/gone.json)" in line


def test_a_path_under_the_cache_root_that_no_alias_covers_is_reported(tmp_path):
    base = tmp_path / "w"
    base.mkdir()
    step4 = f"/dev/shm/prng/step4-{os.getpid()}-{os.urandom(3).hex()}/scores.json"
    d = discover([{"job_id": 1, "args": [step4, "/dev/shm/prng/step2/absent.npz"]}], InputsPolicy(), str(base))
    assert {p: len(j) for p, j in d.missing.items()} == {step4: 1, f"{base}/absent.npz": 1}
    assert d.missing_aliases == {f"{base}/absent.npz": "/dev/shm/prng/step2/absent.npz"}


def run_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PRNG_CACHE", "USE_RAMDISK", "PRNG_CACHE_POLICY")}
    return subprocess.run([sys.executable, "-m", "prng_cache", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def cli_site(tmp_path: Path, jobs: list[dict]) -> Path:
    """A localhost-only cluster (direct: nothing is contacted) and a jobs file."""
    work = tmp_path / "cli"
    (work / "ssd").mkdir(parents=True)
    (work / "ssd" / "train_history.json").write_text("[1]")
    (work / "distributed_config.json").write_text(json.dumps(
        {"nodes": [{"hostname": "localhost", "script_path": str(work / "ssd")}]}))
    (work / "cache_policy.yaml").write_text(f'inputs:\n  path_aliases:\n    "{work}/preload/": "{{script_path}}/"\n')
    (work / "jobs.json").write_text(json.dumps(jobs))
    return work


def job(i: int, *args: str) -> dict:
    return {"job_id": i, "script": "w.py", "args": list(args), "expected_output": f"o{i}.json", "timeout": 5}


def test_stage_reports_missing_inputs_and_keeps_its_exit_code(tmp_path):
    work = tmp_path / "cli"
    jobs = [job(i, f"{work}/preload/train_history.json", f"{work}/preload/holdout_history.json",
                "chunks/c.json", "--output-file", f"o{i}.json") for i in range(2)]
    work = cli_site(tmp_path, jobs)
    p = run_cli(work, "stage", "--jobs-file", "jobs.json", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["inputs"]["missing"] == {f"{work}/ssd/holdout_history.json": 2, f"{work}/ssd/chunks/c.json": 2}
    assert doc["inputs"]["found"] == 1
    (warning,) = [ln for ln in p.stderr.splitlines() if "exist nowhere" in ln]
    assert f"named as {work}/preload/holdout_history.json" in warning
    text = run_cli(work, "stage", "--jobs-file", "jobs.json")
    assert text.returncode == 0 and f"  {work}/ssd/chunks/c.json: 2 job(s)" in text.stdout
    # rewrite for the (direct) coordinator: the aliased file that exists is its own SSD path
    out = json.loads(run_cli(work, "rewrite", "--jobs-file", "jobs.json", "--node", "localhost").stdout)
    assert [j["args"][:3] for j in out] == [[f"{work}/ssd/train_history.json", *jobs[0]["args"][1:3]]] * 2


def test_stage_says_when_a_jobs_file_names_no_input_at_all(tmp_path):
    work = cli_site(tmp_path, [job(i, "study", str(i), "--output-file", f"o{i}.json") for i in range(3)])
    p = run_cli(work, "stage", "--jobs-file", "jobs.json", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["inputs"]["found"] == 0
    assert "no input files found in the 3 job(s)" in p.stderr


# ----------------------------------------------------- coordinator.py objects
def test_payload_hook_takes_coordinator_py_objects(site):
    """Step 5 (a JobSpec whose args are payload["args"], bare names) and
    step 1 (sieve payloads: dataset_path, no args) on GPUWorkers."""
    d = site.ssd
    (d / "bidirectional_survivors.json").write_text(json.dumps(list(range(500))))
    (d / "draws.json").write_text(json.dumps(list(range(900))))
    step5 = [JobSpec(f"s5_{i}", "script", {"job_id": f"s5_{i}", "script": "w.py", "args": [
        "bidirectional_survivors.json", "train_history.json", "--output-file", f"o{i}.json"],
        "expected_output": f"o{i}.json"}, f"o{i}.json") for i in range(2)]
    step1 = [JobSpec(f"sieve_{i:03}", "sieve", {"analysis_type": "sieve", "job_id": f"sieve_{i:03}",
                                                 "dataset_path": str(d / "draws.json"), "seed_start": i * 10,
                                                 "seed_end": i * 10 + 10, "output_file": f"s{i}.json"},
                     f"s{i}.json") for i in range(3)]
    info = NodeInfo("localhost", "", str(d), "python3")
    workers = [GPUWorker(info, 0), GPUWorker(info, 1)]
    jobs = step5 + step1
    before = json.dumps([j.payload for j in jobs])
    # coordinator.py's README lines: (job, worker) pairs -> hostname -> jobs
    pairs = [(j, workers[i % 2]) for i, j in enumerate(jobs)]
    assignments: dict[str, list] = {}
    for j, w in pairs:
        assignments.setdefault(w.node.hostname, []).append(j)
    p = start(site.policy, [info], jobs, assignments)
    for j, w in pairs:
        new = p.coordinator_job_payload(node=w, job=j, payload=j.payload)
        assert new is not j.payload
        if j.job_type == "script":
            assert new["args"][0].startswith(site.root + "/") and new["args"][0].endswith("/bidirectional_survivors.json")
            assert Path(new["args"][0]).with_name(COMPANION).read_bytes() == site.current(COMPANION)
            assert new["args"][2:] == j.payload["args"][2:]
            assert p.coordinator_job_args(node=w, job=j) == new["args"]
        else:
            assert new["dataset_path"].startswith(site.root + "/")
            assert Path(new["dataset_path"]).read_bytes() == (d / "draws.json").read_bytes()
            assert {k: v for k, v in new.items() if k != "dataset_path"} == \
                {k: v for k, v in j.payload.items() if k != "dataset_path"}
    assert json.dumps([j.payload for j in jobs]) == before  # nothing mutated
    # a payload without paths the node holds: None (send it as is)
    assert p.coordinator_job_payload(node=workers[0], job=step1[0], payload={"job_id": "x"}) is None
    rep = p.coordinator_run_end(run_id="r", results={})
    assert rep["rewritten_jobs"] == 5 and rep["fallback_jobs"] == 0
    assert rep["nodes"]["localhost"]["copied_files"] == 4  # survivors + companion, history, draws


# ------------------------------------------ use_ramdisk from the cluster file
@pytest.mark.parametrize("how", ["--config FILE", "--config=FILE", "./distributed_config.json"])
def test_use_ramdisk_false_in_the_coordinators_cluster_file_makes_the_node_off(site, tmp_path, monkeypatch, how):
    cfg = tmp_path / ("distributed_config.json" if how.startswith("./") else "cluster.json")
    cfg.write_text(json.dumps({"nodes": [{"hostname": "localhost", "script_path": str(site.ssd),
                                          "use_ramdisk": False}]}))
    if how == "--config FILE":
        monkeypatch.setattr(sys, "argv", ["coordinator.py", "--config", str(cfg), "--resume"])
    elif how == "--config=FILE":
        monkeypatch.setattr(sys, "argv", ["coordinator.py", f"--config={cfg}"])
    jobs = site.step2_jobs()
    p = start(site.policy, [site.node], jobs)  # the node object carries no use_ramdisk
    assert p.coordinator_job_args(node=site.node, job=jobs[0]) is None
    assert p.coordinator_run_end(run_id="r", results={})["nodes"]["localhost"]["status"] == "off"
    assert not os.path.exists(site.root)


def test_an_unreadable_cluster_file_is_ignored_with_a_warning(site, tmp_path, caplog):
    (tmp_path / "distributed_config.json").write_text('{"nodes": [')
    caplog.set_level(logging.WARNING)
    jobs = site.step2_jobs()
    p = start(site.policy, [site.node], jobs)
    assert p.coordinator_job_args(node=site.node, job=jobs[0])[0].startswith(site.root + "/")
    assert any("use_ramdisk not read" in r.getMessage() for r in caplog.records)
