"""The coordinator plugin on the coordinator's own machine (LocalTransport).
End-to-end runs over real sshd nodes are in test_e2e_coordinator.py."""

from __future__ import annotations

import copy
import os
import shutil
import sys
from pathlib import Path

import pytest

from prng_cache.coordinator import plugin_manager
from prng_cache.manifest import MANIFEST_NAME, decode
from prng_cache.plugin import PrngCachePlugin
from prng_cache.policy import InputsPolicy, NodeOverride, Policy


# the coordinator's own dataclasses, from the test coordinator in the users' shape
sys.path.insert(0, str(Path(__file__).resolve().parent / "e2e"))
from scripts_coordinator import Job, NodeConfig  # noqa: E402

sys.path.pop(0)


@pytest.fixture
def setup(tmp_path):
    d = tmp_path / "work"
    (d / "data").mkdir(parents=True)
    (d / "data/survivors.npz").write_bytes(os.urandom(50_000))
    (d / "data/optimal_window_config.json").write_text('{"w": 1}')
    (d / "train_history.json").write_text('{"h": [1, 2, 3]}')
    (d / "chunk_0.json").write_text("[0]")
    root = f"/dev/shm/prng-plugintest-{os.getpid()}-{os.urandom(3).hex()}"
    node = NodeConfig("localhost", "", 1, "cpu", str(d), "python3", 2)
    jobs = [Job(f"j{i}", "w.py", ["data/survivors.npz", "--train-history", str(d / "train_history.json"),
                                  "--chunk", "chunk_0.json" if i == 0 else "missing.json",
                                  "--output-file", f"out_{i}.json"], f"out_{i}.json") for i in range(3)]
    policy = Policy(cache_root=root, nodes=(NodeOverride("localhost", mode="cache"),),
                    inputs=InputsPolicy(companions=(("*survivors*.npz", ("optimal_window_config.json",)),)))
    yield node, jobs, policy, root
    if os.path.isdir(root):
        for p, _, _ in os.walk(root):
            os.chmod(p, 0o700)
        shutil.rmtree(root)


def manifest(root):
    with open(os.path.join(root, MANIFEST_NAME), "rb") as f:
        return decode(f.read())[0]


def test_entry_point_registers_prng_cache():
    pm = plugin_manager()
    assert "prng_cache" in dict(pm.list_name_plugin())
    names = {h for h in dir(pm.hook) if h.startswith("coordinator_")}
    assert names == {"coordinator_run_start", "coordinator_job_args", "coordinator_job_payload",
                     "coordinator_run_end"}
    # the coordinators' calls: the three original hooks keep their signatures exactly
    spec = {n: getattr(pm.hook, n).spec for n in names}
    assert {n: s.argnames for n, s in spec.items()} == {
        "coordinator_run_start": ("run_id", "nodes", "jobs", "assignments"),
        "coordinator_job_args": ("node", "job"),
        "coordinator_job_payload": ("node", "job", "payload"),
        "coordinator_run_end": ("run_id", "results"),
    }
    assert {n: bool(s.opts.get("firstresult")) for n, s in spec.items()} == {
        "coordinator_run_start": False, "coordinator_job_args": True, "coordinator_job_payload": True,
        "coordinator_run_end": False}


def test_run_rewrites_leases_and_releases(setup):
    node, jobs, policy, root = setup
    pm = plugin_manager(load_entrypoints=False)
    pm.register(PrngCachePlugin(policy))
    originals = copy.deepcopy(jobs)
    pm.hook.coordinator_run_start(run_id="r1", nodes=[node], jobs=jobs, assignments={"localhost": jobs})
    m = manifest(root)
    (lease,) = m.leases  # named after the run, never shared with another coordinator's run of that id
    assert lease.startswith("r1~") and len(m.leases[lease].hashes) == 2
    args = pm.hook.coordinator_job_args(node=node, job=jobs[0])
    assert args[0].startswith(root) and args[0].endswith("/survivors.npz")
    assert os.path.exists(os.path.join(os.path.dirname(args[0]), "optimal_window_config.json"))
    assert args[2].startswith(root) and args[2].endswith("/train_history.json")
    assert args[4] == "chunk_0.json"  # read by one job only: not worth a copy
    assert args[5:] == ["--output-file", "out_0.json"]
    # the same job again (a retry) gets the same answer; the job is untouched
    assert pm.hook.coordinator_job_args(node=node, job=jobs[0]) == args
    assert jobs == originals
    # plain dicts work too
    assert pm.hook.coordinator_job_args(node={"hostname": "localhost"}, job=vars(jobs[1]))[0] == args[0]
    reports = pm.hook.coordinator_run_end(run_id="r1", results={})
    (rep,) = reports
    assert rep["plugin"] == "prng_cache" and rep["rewritten_jobs"] == 2 and rep["fallback_jobs"] == 0
    node_rep = rep["nodes"]["localhost"]
    assert node_rep["status"] == "ok" and node_rep["copied_files"] == 3 and node_rep["reason"] is None
    assert rep["leases_released"] == {"localhost": True}
    assert manifest(root).leases == {}


def test_second_run_copies_nothing(setup):
    node, jobs, policy, root = setup
    for run in ("r1", "r2"):
        p = PrngCachePlugin(policy)
        p.coordinator_run_start(run_id=run, nodes=[node], jobs=jobs, assignments={"localhost": jobs})
        rep = p.coordinator_run_end(run_id=run, results={})
    assert rep["nodes"]["localhost"]["copied_files"] == 0 and rep["hit_rate"] == 1.0
    assert rep["bytes_saved"] > 50_000


def test_direct_localhost_keeps_args(setup):
    node, jobs, _, root = setup
    p = PrngCachePlugin(Policy(cache_root=root))
    p.coordinator_run_start(run_id="r", nodes=[node], jobs=jobs, assignments={"localhost": jobs})
    assert p.coordinator_job_args(node=node, job=jobs[0]) is None
    assert not os.path.exists(root)
    assert p.coordinator_run_end(run_id="r", results={})["nodes"]["localhost"]["status"] == "direct"


@pytest.mark.parametrize("env", [{"PRNG_CACHE": "0"}, {"USE_RAMDISK": "false"}])
def test_disabled_by_environment_is_a_no_op(setup, monkeypatch, env):
    node, jobs, policy, root = setup
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    p = PrngCachePlugin(policy)
    p.coordinator_run_start(run_id="r", nodes=[node], jobs=jobs, assignments={"localhost": jobs})
    assert p.coordinator_job_args(node=node, job=jobs[0]) is None
    assert not os.path.exists(root)
    rep = p.coordinator_run_end(run_id="r", results={})
    assert rep["enabled"] is False and rep["nodes"] == {}


def test_disabled_mid_run_stops_rewriting(setup, monkeypatch):
    node, jobs, policy, root = setup
    p = PrngCachePlugin(policy)
    p.coordinator_run_start(run_id="r", nodes=[node], jobs=jobs, assignments={"localhost": jobs})
    assert p.coordinator_job_args(node=node, job=jobs[0]) is not None
    monkeypatch.setenv("PRNG_CACHE", "0")
    assert p.coordinator_job_args(node=node, job=jobs[0]) is None


def test_bad_policy_never_raises_into_the_coordinator(setup, tmp_path, monkeypatch, caplog):
    node, jobs, _, _ = setup
    bad = tmp_path / "bad.yaml"
    bad.write_text("inputs: {min_jobz: 1}\n")
    monkeypatch.setenv("PRNG_CACHE_POLICY", str(bad))
    p = PrngCachePlugin()
    p.coordinator_run_start(run_id="r", nodes=[node], jobs=jobs, assignments={"localhost": jobs})
    assert p.coordinator_job_args(node=node, job=jobs[0]) is None
    rep = p.coordinator_run_end(run_id="r", results={})
    assert "min_jobz" in rep["error"]
    assert "min_jobz" in caplog.text


def test_unsafe_root_falls_back_with_reason(setup):
    node, jobs, policy, root = setup
    os.mkdir(root, 0o777)
    os.chmod(root, 0o777)
    p = PrngCachePlugin(policy)
    p.coordinator_run_start(run_id="r", nodes=[node], jobs=jobs, assignments={"localhost": jobs})
    assert p.coordinator_job_args(node=node, job=jobs[0]) is None
    rep = p.coordinator_run_end(run_id="r", results={})
    assert rep["nodes"]["localhost"]["status"] == "error"
    assert "0777" in rep["nodes"]["localhost"]["reason"]
    assert rep["fallback_jobs"] == 1 and rep["rewritten_jobs"] == 0
    assert os.listdir(root) == []


def test_job_changed_after_run_start_is_rewritten_from_its_current_args(setup):
    node, jobs, policy, root = setup
    p = PrngCachePlugin(policy)
    p.coordinator_run_start(run_id="r", nodes=[node], jobs=jobs, assignments={"localhost": jobs})
    changed = Job("j1", "w.py", ["--extra", "x", "data/survivors.npz", "-o", "o.json"], "o.json")
    args = p.coordinator_job_args(node=node, job=changed)
    assert args[:2] == ["--extra", "x"] and args[2].startswith(root) and args[3:] == ["-o", "o.json"]


# ------------------------------------------- only rewritten path strings change
def test_non_path_items_keep_their_type_and_value(setup):
    """Only the staged path strings may change: every other item comes back
    as the very same object (not its str()), including after a flag."""
    node, jobs, policy, root = setup
    d = Path(node.script_path)
    for name in ("None", "True", "nan"):  # str() of some items names a file
        (d / name).write_text(name)
    items = [{"window": 7}, None, True, False, ["x"], 7, 0.5, float("nan")]
    args = ["data/survivors.npz", *items, "--window", {"w": 7}, "-o", None,
            "--train-history", str(d / "train_history.json"), "--output-file", "out.json"]
    typed = [Job(f"t{i}", "w.py", list(args), "out.json") for i in range(2)]
    p = PrngCachePlugin(policy)
    p.coordinator_run_start(run_id="r", nodes=[node], jobs=typed, assignments={"localhost": typed})
    changed = Job("t9", "w.py", list(args), "out.json")  # not announced: planned at dispatch
    for job in (typed[0], changed):
        new = p.coordinator_job_args(node=node, job=job)
        assert new[0].startswith(root + "/") and new[14].startswith(root + "/")
        for i, (a, b) in enumerate(zip(job.args, new)):
            if i not in (0, 14):
                assert b is a, (i, a, b)
    assert not any(k.endswith(("/None", "/True", "/nan")) for k in p.staged["localhost"])


def test_an_argument_that_would_not_open_the_file_is_left_alone(setup):
    """`data/survivors.npz/` fails with ENOTDIR on its own: it must not start
    working (or read something else) because another job's input was staged."""
    node, jobs, policy, root = setup
    odd = Job("odd", "w.py", ["data/survivors.npz/", "--holdout=data/survivors.npz/.", "-o", "o.json"], "o.json")
    jobs = [*jobs, odd]
    p = PrngCachePlugin(policy)
    p.coordinator_run_start(run_id="r", nodes=[node], jobs=jobs, assignments={"localhost": jobs})
    assert p.coordinator_job_args(node=node, job=jobs[0])[0].startswith(root + "/")
    assert p.coordinator_job_args(node=node, job=odd) is None


def test_same_name_and_content_in_two_directories_both_rewritten(setup):
    node, _, policy, root = setup
    d = Path(node.script_path)
    for sub in ("one", "two"):
        (d / sub).mkdir()
        (d / sub / "x.npz").write_bytes(b"the same bytes")
    jobs = [Job(f"j{i}", "w.py", [f"{sub}/x.npz", "-o", f"o{i}.json"], f"o{i}.json")
            for i, sub in enumerate(("one", "two", "one", "two"))]
    p = PrngCachePlugin(policy)
    p.coordinator_run_start(run_id="r", nodes=[node], jobs=jobs, assignments={"localhost": jobs})
    new = [p.coordinator_job_args(node=node, job=j) for j in jobs]
    assert all(a is not None for a in new), new
    assert len({a[0] for a in new}) == 1 and new[0][0].startswith(root + "/")
    assert Path(new[1][0]).read_bytes() == b"the same bytes"
    rep = p.coordinator_run_end(run_id="r", results={})
    assert (rep["rewritten_jobs"], rep["fallback_jobs"]) == (4, 0)
    assert rep["nodes"]["localhost"]["copied_files"] == 1
