"""The plugin and the CLI over real sshd nodes: which nodes they contact, and
what the plugin remembers between runs.

"Contacted" is read from each node's sshd log (LogLevel VERBOSE logs every
accepted TCP connection as "Connection from ..."), not from a mock.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from test_faults import cluster, src  # noqa: F401  (the clean sshd cluster, private XDG cache; inputs)

from prng_cache.plugin import PrngCachePlugin
from prng_cache.policy import InputsPolicy, NodeOverride, Policy

HOSTS = ("rig-a", "rig-b")




def root_of(node) -> str:
    return f"{node.shm}/prng"


def make_policy(cluster, src) -> Policy:
    return Policy(inputs=InputsPolicy(min_jobs=1, base_dir=str(src)),
                  transport=cluster.policy(connect_timeout=5.0),
                  nodes=tuple(NodeOverride(n.name, cache_root=root_of(n)) for n in cluster))


def make_jobs(n: int = 4) -> list[dict]:
    return [{"job_id": f"t{i}", "script": "w.py",
             "args": ["survivors.npz", "--train-history", "train_history.json", i, "-o", f"out_{i}.json"],
             "expected_output": f"out_{i}.json", "timeout": 60} for i in range(n)]


class Contacts:
    """New connections to each node since this object was made."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.marks = {n.name: len(n.log_text()) for n in cluster}

    def __call__(self) -> dict[str, int]:
        return {n.name: n.log_text()[self.marks[n.name]:].count("Connection from") for n in self.cluster}


def run_plugin(policy, nodes: list[dict], jobs: list[dict], run_id: str = "run-1"):
    hosts = [n["hostname"] for n in nodes]
    assignments = {h: [j for i, j in enumerate(jobs) if i % len(hosts) == k] for k, h in enumerate(hosts)}
    p = PrngCachePlugin(policy)
    p.coordinator_run_start(run_id=run_id, nodes=nodes, jobs=jobs, assignments=assignments)
    return p, assignments


# ------------------------------------------------ "use_ramdisk": false is off
def test_use_ramdisk_false_makes_the_node_off_in_the_plugin(cluster, src):
    contacts = Contacts(cluster)
    nodes = [{"hostname": "rig-a", "script_path": str(src), "use_ramdisk": False},
             {"hostname": "rig-b", "script_path": str(src)}]
    p, assignments = run_plugin(make_policy(cluster, src), nodes, make_jobs())
    for job in assignments["rig-a"]:
        assert p.coordinator_job_args(node=nodes[0], job=job) is None
    for job in assignments["rig-b"]:
        assert p.coordinator_job_args(node=nodes[1], job=job)[0].startswith(root_of(cluster["rig-b"]) + "/")
    rep = p.coordinator_run_end(run_id="run-1", results={})
    assert rep["nodes"]["rig-a"]["status"] == "off" and rep["nodes"]["rig-b"]["status"] == "ok"
    seen = contacts()
    assert seen["rig-a"] == 0 and seen["rig-b"] >= 1, seen
    assert not cluster["rig-a"].exists(root_of(cluster["rig-a"]))


def run_cli(tmp_path, *args, check=None, env=None):
    e = dict(os.environ)
    for k in ("PRNG_CACHE", "USE_RAMDISK", "PRNG_CACHE_POLICY", "PRNG_CACHE_ROOT"):
        e.pop(k, None)
    e["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    e.update(env or {})
    p = subprocess.run([sys.executable, "-m", "prng_cache", *map(str, args)], cwd=tmp_path, env=e,
                       capture_output=True, text=True, timeout=120)
    if check is not None:
        assert p.returncode == check, (p.returncode, p.stdout, p.stderr)
    return p


def policy_yaml(cluster, src) -> str:
    nodes = "".join(f"  {n.name}:\n    cache_root: {root_of(n)}\n" for n in cluster)
    return (f"inputs:\n  min_jobs: 1\n  base_dir: {src}\n"
            f"transport:\n  ssh_config: {cluster.ssh_config}\n  known_hosts: {cluster.known_hosts}\n"
            f"  connect_timeout: 5s\nnodes:\n{nodes}")


def test_use_ramdisk_false_makes_the_node_off_in_the_cli(cluster, src, tmp_path):
    (tmp_path / "cache_policy.yaml").write_text(policy_yaml(cluster, src))
    cluster.write_distributed_config(tmp_path / "distributed_config.json",
                                     [{"hostname": "rig-a", "use_ramdisk": False}, cluster["rig-b"]],
                                     script_path=str(src))
    jobs = make_jobs()
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    contacts = Contacts(cluster)
    out = json.loads(run_cli(tmp_path, "stage", "--jobs-file", "jobs.json", "--json", check=0).stdout)
    assert out["nodes"]["rig-a"]["status"] == "off" and out["nodes"]["rig-b"]["status"] == "ok"
    rewritten = json.loads(run_cli(tmp_path, "rewrite", "--jobs-file", "jobs.json", "--node", "rig-a",
                                   check=0).stdout)
    assert rewritten == jobs
    seen = contacts()
    assert seen["rig-a"] == 0 and seen["rig-b"] >= 1, seen
    assert not cluster["rig-a"].exists(root_of(cluster["rig-a"]))


# ------------------------------------------- malformed user files: no contact
MALFORMED = {
    "policy": ("cache_policy.yaml", "inputs:\n  min_jobz: 1\n", "inputs.min_jobz"),
    "policy-yaml": ("cache_policy.yaml", "inputs: [oops\n", "line"),
    "jobs": ("jobs.json", json.dumps([{"job_id": 1, "script": "w.py", "args": "survivors.npz",
                                       "expected_output": "o", "timeout": 5}]), "jobs[0].args"),
    "jobs-json": ("jobs.json", '[{"job_id": 1,\n "args": ]', "line 2"),
    # the first node is fine: a loader that skipped bad entries would contact it
    "cluster": ("distributed_config.json", None, "nodes[1].script_path"),
}
COMMANDS = {
    "stage": ["stage", "--jobs-file", "jobs.json"],
    "rewrite": ["rewrite", "--jobs-file", "jobs.json", "--node", "rig-a"],
    "status": ["status"],
}


def test_malformed_user_files_contact_no_node(cluster, src, tmp_path, monkeypatch):
    """Every user file is read and checked before the first connection: a
    mistake in one costs an error line, never a half-done stage. To make
    "no contact" meaningful, the nodes are reachable without the policy file
    too (HOME/.ssh/config names them), and the same commands with the files
    fixed do connect."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    shutil.copy(cluster.ssh_config, home / ".ssh" / "config")
    shutil.copy(cluster.known_hosts, home / ".ssh" / "known_hosts")
    env = {"HOME": str(home)}
    good = {
        "cache_policy.yaml": policy_yaml(cluster, src),
        "jobs.json": json.dumps(make_jobs()),
    }

    def write_good():
        for name, text in good.items():
            (tmp_path / name).write_text(text)
        cluster.write_distributed_config(tmp_path / "distributed_config.json", [cluster[h] for h in HOSTS],
                                         script_path=str(src))

    def break_cluster_file() -> str:  # the second node lacks script_path
        doc = json.loads((tmp_path / "distributed_config.json").read_text())
        del doc["nodes"][1]["script_path"]
        return json.dumps(doc)

    contacts = Contacts(cluster)
    none = {n.name: 0 for n in cluster}
    for case, (name, text, words) in MALFORMED.items():
        for cmd, args in COMMANDS.items():
            if name == "jobs.json" and cmd == "status":
                continue  # status reads no jobs file
            write_good()
            (tmp_path / name).write_text(break_cluster_file() if text is None else text)
            p = run_cli(tmp_path, *args, env=env)
            assert contacts() == none, (case, cmd, contacts(), p.stdout, p.stderr)
            assert p.returncode == 2 and words in p.stderr and len(p.stderr.strip().splitlines()) == 1, \
                (case, cmd, p.returncode, p.stderr)

    # the plugin, with a malformed policy file, contacts no node either
    (tmp_path / "cache_policy.yaml").write_text(MALFORMED["policy"][1])
    monkeypatch.setenv("PRNG_CACHE_POLICY", str(tmp_path / "cache_policy.yaml"))
    nodes = [{"hostname": h, "script_path": str(src)} for h in HOSTS]
    p, _ = run_plugin(None, nodes, make_jobs())
    rep = p.coordinator_run_end(run_id="run-1", results={})
    assert "min_jobz" in rep["error"] and rep["nodes"] == {}
    assert contacts() == none

    # control: the same commands with good files do reach both nodes
    write_good()
    for cmd, args in COMMANDS.items():
        run_cli(tmp_path, *args, env=env, check=0)
    seen = contacts()
    assert seen["rig-a"] >= 3 and seen["rig-b"] >= 2, seen  # rewrite asks rig-a only


# ------------------------------------------------ the plugin remembers cache_ids
def test_plugin_remembers_each_nodes_cache_id(cluster, src, tmp_path):
    """A node whose cache was wiped (a reboot) between two coordinator runs
    is named in the second run's report; the record outlives the plugin
    object (it is a file: a new coordinator process reads it)."""
    policy = make_policy(cluster, src)
    nodes = [{"hostname": h, "script_path": str(src)} for h in HOSTS]
    p1, _ = run_plugin(policy, nodes, make_jobs(), "run-1")
    first = p1.coordinator_run_end(run_id="run-1", results={})["nodes"]
    ids = {h: first[h]["cache_id"] for h in HOSTS}
    assert all(ids.values()) and not any(first[h]["warnings"] for h in HOSTS)
    record = json.loads((tmp_path / "xdg" / "prng-cache" / "nodes.json").read_text())
    assert record == {f"{h}:{root_of(cluster[h])}": ids[h] for h in HOSTS}

    cluster["rig-b"].wipe()
    p2, _ = run_plugin(policy, nodes, make_jobs(), "run-2")
    second = p2.coordinator_run_end(run_id="run-2", results={})["nodes"]
    new_b = second["rig-b"]["cache_id"]
    assert new_b != ids["rig-b"] and second["rig-a"]["cache_id"] == ids["rig-a"]
    assert any(f"cache_id {ids['rig-b']} -> {new_b}" in w for w in second["rig-b"]["warnings"]), second["rig-b"]
    assert not second["rig-a"]["warnings"]
    assert second["rig-b"]["copied_files"] == 2 and second["rig-a"]["copied_files"] == 0
    record = json.loads((tmp_path / "xdg" / "prng-cache" / "nodes.json").read_text())
    assert record[f"rig-b:{root_of(cluster['rig-b'])}"] == new_b
