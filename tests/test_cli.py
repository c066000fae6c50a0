"""The prng-cache command as a user runs it: a real process on the shipped example."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run(cwd, *args, env=None, check=None):
    e = dict(os.environ)
    e.pop("PRNG_CACHE", None)
    e.pop("USE_RAMDISK", None)
    e.pop("PRNG_CACHE_POLICY", None)
    e.update(env or {})
    p = subprocess.run([sys.executable, "-m", "prng_cache", *args], cwd=cwd, env=e,
                       capture_output=True, text=True, timeout=120)
    if check is not None:
        assert p.returncode == check, (p.returncode, p.stdout, p.stderr)
    return p


@pytest.fixture
def example(tmp_path):
    """A copy of examples/ with its own cache root on the real /dev/shm."""
    d = tmp_path / "example"
    shutil.copytree(REPO / "examples", d)
    root = f"/dev/shm/prng-clitest-{os.getpid()}-{os.urandom(3).hex()}"
    pol = (d / "cache_policy.yaml").read_text().replace("/dev/shm/prng-example", root)
    (d / "cache_policy.yaml").write_text(pol)
    yield d, root
    if os.path.isdir(root):
        for dirpath, _, _ in os.walk(root):
            os.chmod(dirpath, 0o700)
        shutil.rmtree(root)


def test_stage_twice_copies_everything_then_nothing(example):
    d, root = example
    first = json.loads(run(d, "stage", "--jobs-file", "jobs.json", "--json", check=0).stdout)
    node = first["nodes"]["localhost"]
    assert node["status"] == "ok" and node["copied_files"] == 4 and node["copied_bytes"] > 30_000
    assert node["reason"] is None
    # the chunk file is read by one job only: not worth a copy
    assert any("chunk_001.json" in p for p in first["inputs"]["skipped"])
    second = json.loads(run(d, "stage", "--jobs-file", "jobs.json", "--json", check=0).stdout)
    n2 = second["nodes"]["localhost"]
    assert (n2["copied_files"], n2["copied_bytes"], n2["present_files"]) == (0, 0, 4)


def test_rewrite_points_at_ram_copies_and_keeps_the_rest(example):
    d, root = example
    before = json.loads(run(d, "rewrite", "--jobs-file", "jobs.json", "--node", "localhost", check=0).stdout)
    assert before == json.loads((d / "jobs.json").read_text())  # nothing staged yet: unchanged
    run(d, "stage", "--jobs-file", "jobs.json", check=0)
    jobs = json.loads(run(d, "rewrite", "--jobs-file", "jobs.json", "--node", "localhost", check=0).stdout)
    a0, a1, a2 = (j["args"] for j in jobs)
    assert a0[0].startswith(root + "/") and a0[0].endswith("/bidirectional_survivors.npz")
    assert Path(a0[0]).read_bytes() == (d / "data/bidirectional_survivors.npz").read_bytes()
    # the declared companion sits beside it
    comp = Path(a0[0]).parent / "optimal_window_config.json"
    assert comp.read_bytes() == (d / "data/optimal_window_config.json").read_bytes()
    assert a0[3:] == ["0", '{"lr": 0.1}', "--optuna-study-db", "sqlite:///./optuna_studies/x.db",
                      "--output-file", "results/trial_000.json"]
    assert a1[1] == a0[0] and a1[2].startswith("--train-history=" + root)
    assert a1[6] == "data/chunk_001.json" and a1[7] == "--output-file=results/trial_001.json"
    assert a2[-2:] == ["-o", "results/trial_002.json"]
    assert [j["expected_output"] for j in jobs] == [f"results/trial_00{i}.json" for i in range(3)]


def test_cache_disabled_by_environment(example):
    d, root = example
    for env in ({"PRNG_CACHE": "0"}, {"USE_RAMDISK": "false"}):
        out = json.loads(run(d, "stage", "--jobs-file", "jobs.json", "--json", env=env, check=0).stdout)
        assert out["nodes"]["localhost"]["status"] == "off"
        assert not os.path.exists(root)
        jobs = json.loads(run(d, "rewrite", "--jobs-file", "jobs.json", "--node", "localhost",
                              env=env, check=0).stdout)
        assert jobs == json.loads((d / "jobs.json").read_text())


def test_localhost_defaults_to_direct(example):
    d, root = example
    (d / "cache_policy.yaml").write_text(f"cache_root: {root}\n")
    out = json.loads(run(d, "stage", "--jobs-file", "jobs.json", "--json", check=0).stdout)
    assert out["nodes"]["localhost"]["status"] == "direct" and not os.path.exists(root)


def test_fallback_exits_1_with_reason(example):
    d, root = example
    pol = (d / "cache_policy.yaml").read_text() + "capacity:\n  max_bytes: 10KiB\n"
    (d / "cache_policy.yaml").write_text(pol)
    p = run(d, "stage", "--jobs-file", "jobs.json", "--json", check=1)
    node = json.loads(p.stdout)["nodes"]["localhost"]
    assert node["status"] == "fallback" and "capacity.max_bytes" in node["reason"]


def test_status_gc_verify(example):
    d, root = example
    run(d, "stage", "--jobs-file", "jobs.json", check=0)
    st = json.loads(run(d, "status", "--json", check=0).stdout)["nodes"]["localhost"]
    assert st["entries"] == 3 and st["bytes"] > 30_000 and st["cache_id"]
    assert json.loads(run(d, "verify", "--json", check=0).stdout)["nodes"]["localhost"]["corrupt"] == {}
    victim = next(Path(root).glob("*/train_history.json"))
    os.chmod(victim, 0o600)
    victim.write_text("bit rot")
    v = run(d, "verify", check=1)
    assert "corrupt 1" in v.stdout
    run(d, "verify", "--fix", check=1)
    run(d, "verify", check=0)
    dry = json.loads(run(d, "gc", "--all", "--dry-run", "--json", check=0).stdout)
    ours = lambda: sorted(p.name for p in Path(root).iterdir() if not p.name.startswith(".prng-root-"))
    assert dry["nodes"]["localhost"]["removed"] == 2 and len(ours()) == 3
    run(d, "gc", "--all", check=0)
    assert ours() == ["manifest.msgpack"]


USER_ERRORS = [
    # (files to write, args, words the one-line message must contain)
    ({"cache_policy.yaml": "inputs:\n  min_jobz: 2\n"}, ["stage", "--jobs-file", "jobs.json"],
     ["cache_policy.yaml", "inputs.min_jobz", "min_jobs"]),
    ({"cache_policy.yaml": "capacity:\n  max_bytes: -5\n"}, ["stage", "--jobs-file", "jobs.json"],
     ["cache_policy.yaml", "capacity.max_bytes", "size"]),
    ({"cache_policy.yaml": "inputs: [oops\n"}, ["stage", "--jobs-file", "jobs.json"],
     ["cache_policy.yaml", "line"]),
    ({"jobs.json": "[{\"job_id\": 1, \"script\": \"w.py\", \"args\": \"notalist\"}]"},
     ["stage", "--jobs-file", "jobs.json"], ["jobs.json", "jobs[0].args", "list"]),
    ({"jobs.json": "[{,}]"}, ["stage", "--jobs-file", "jobs.json"], ["jobs.json", "line 1"]),
    ({}, ["stage", "--jobs-file", "nope.json"], ["nope.json"]),
    ({"distributed_config.json": "{\"nodes\": [{\"hostname\": 5}]}"}, ["status"],
     ["distributed_config.json", "nodes[0].hostname"]),
    ({"distributed_config.json": "not json"}, ["status"], ["distributed_config.json", "JSON"]),
    ({}, ["rewrite", "--jobs-file", "jobs.json", "--node", "rig-z"], ["rig-z", "localhost"]),
    ({}, ["status", "--config", "missing.json"], ["missing.json", "not found"]),
]


@pytest.mark.parametrize("files,args,words", USER_ERRORS)
def test_user_errors_are_one_clear_line(example, files, args, words):
    d, _ = example
    for name, text in files.items():
        (d / name).write_text(text)
    p = run(d, *args, check=2)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert "Traceback" not in p.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


def test_rewrite_keeps_json_types(example):
    """Numbers in a job's args stay numbers: only rewritten paths change."""
    d, root = example
    jobs = json.loads((d / "jobs.json").read_text())
    jobs[0]["args"][3:4] = [0, 0.5, -7, 2**63, 1e-300]
    (d / "jobs.json").write_text(json.dumps(jobs))
    run(d, "stage", "--jobs-file", "jobs.json", check=0)
    out = json.loads(run(d, "rewrite", "--jobs-file", "jobs.json", "--node", "localhost", check=0).stdout)
    a0 = out[0]["args"]
    assert a0[0].startswith(root + "/")
    assert a0[3:8] == [0, 0.5, -7, 2**63, 1e-300]
    assert [type(v) for v in a0[3:8]] == [int, float, int, int, float]
    assert a0[8:] == jobs[0]["args"][8:]


def test_environment_and_option_beat_the_files_node_root(example):
    """defaults < file < environment < command line, for per-node roots too."""
    d, root = example
    roots = {k: f"{root}-{k}" for k in ("file", "env", "cli")}
    (d / "cache_policy.yaml").write_text(
        f"cache_root: {root}\nnodes:\n  localhost:\n    mode: cache\n    cache_root: {roots['file']}\n")

    def staged_under(*args, env=None):
        out = json.loads(run(d, "stage", "--jobs-file", "jobs.json", "--json", *args, env=env, check=0).stdout)
        return out["nodes"]["localhost"]["cache_root"]

    try:
        assert staged_under() == roots["file"]
        assert staged_under(env={"PRNG_CACHE_ROOT": roots["env"]}) == roots["env"]
        assert staged_under("--cache-root", roots["cli"], env={"PRNG_CACHE_ROOT": roots["env"]}) == roots["cli"]
        for r in roots.values():
            assert (Path(r) / "manifest.msgpack").is_file(), r
        assert not os.path.exists(root)
    finally:
        for r in roots.values():
            if os.path.isdir(r):
                for dirpath, _, _ in os.walk(r):
                    os.chmod(dirpath, 0o700)
                shutil.rmtree(r)
