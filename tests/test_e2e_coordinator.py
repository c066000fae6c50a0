"""End to end: the test coordinator (users' contract) runs jobs over real sshd
nodes with prng-cache registered as its plugin."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from coordinator_env import E2E, REMOTES, CoordinatorEnv

from prng_cache.hookspecs import hookimpl
from prng_cache.plugin import plugin

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def env(ssh_cluster_clean, tmp_path, monkeypatch):
    return CoordinatorEnv(ssh_cluster_clean, tmp_path, monkeypatch)


def test_remote_jobs_read_ram_copies_in_every_argument_shape(env):
    c, out, rep = env.run()
    assert out["failed"] == []
    env.check_reads(c)
    assert {h for h, _, _ in c.commands} == {"localhost", *REMOTES}
    assert rep["rewritten_jobs"] == 4 and rep["fallback_jobs"] == 0
    for h in REMOTES:
        n = rep["nodes"][h]
        assert n["status"] == "ok" and n["copied_files"] == 4 and n["reason"] is None
    assert rep["leases_released"] == {h: True for h in REMOTES}
    # the coordinator stored the report in its run manifest
    assert json.loads((env.work / "run.json").read_text())["plugins"][0]["plugin"] == "prng_cache"


def test_second_run_copies_nothing_and_changed_input_is_the_only_recopy(env):
    env.run()
    c, out, rep = env.run()
    assert out["failed"] == [] and all(rep["nodes"][h]["copied_bytes"] == 0 for h in REMOTES)
    assert rep["hit_rate"] == 1.0
    (env.work / "train_history.json").write_text(json.dumps(list(range(5000))))  # regenerated
    c, out, rep = env.run()
    assert out["failed"] == []
    for h in REMOTES:
        assert rep["nodes"][h]["copied_files"] == 1 and rep["nodes"][h]["present_files"] == 3
    env.check_reads(c)  # nobody read the stale history


def test_node_failing_its_stage_runs_its_jobs_from_ssd(env):
    node = env.cluster["rig-b"]
    node.run(f"mkdir -p {env.root('rig-b')} && chmod 0777 {env.root('rig-b')}")
    c, out, rep = env.run()
    assert out["failed"] == []
    assert rep["nodes"]["rig-b"]["status"] == "error" and "0777" in rep["nodes"]["rig-b"]["reason"]
    assert rep["nodes"]["rig-a"]["status"] == "ok"
    env.check_reads(c, ram_hosts=("rig-a",))
    assert rep["fallback_jobs"] == 2
    assert node.run(f"ls -A {env.root('rig-b')}").stdout == ""


class WipeAfterStage:
    """Reboots a node between the stage and the first dispatch."""

    def __init__(self, node):
        self.node = node

    @hookimpl(trylast=True)
    def coordinator_run_start(self, run_id, nodes, jobs, assignments):
        self.node.wipe()


def test_wiped_between_stage_and_dispatch_job_retried_on_localhost(env):
    c, out, rep = env.run(WipeAfterStage(env.cluster["rig-a"]))
    assert out["failed"] == []
    for jid, j in out["jobs"].items():
        attempts = [a["node"] for a in j["attempts"]]
        if attempts[0] == "rig-a":
            assert attempts == ["rig-a", "localhost"] and j["ok"]
    # the retry used the original args (localhost is direct)
    retried = [(h, jid, a) for h, jid, a in c.commands if h == "localhost"]
    assert any(not any(str(x).startswith("/dev/shm") for x in a) for _, _, a in retried)
    # next run detects the wipe and restages everything on that node
    c, out, rep = env.run()
    assert out["failed"] == [] and rep["nodes"]["rig-a"]["copied_files"] == 4
    env.check_reads(c)


class GcDuringRun:
    """Runs `prng-cache gc --all` against the cluster while the run holds leases."""

    def __init__(self, env):
        self.env = env
        self.result = None

    @hookimpl(trylast=True)
    def coordinator_run_start(self, run_id, nodes, jobs, assignments):
        self.result = subprocess.run(
            [sys.executable, "-m", "prng_cache", "gc", "--all", "--json", "--config", str(self.env.config),
             "--policy", str(self.env.policy)], capture_output=True, text=True, timeout=120)


def test_gc_during_a_run_keeps_leased_inputs(env):
    gc = GcDuringRun(env)
    c, out, rep = env.run(gc)
    assert gc.result.returncode == 0, gc.result.stderr
    doc = json.loads(gc.result.stdout)["nodes"]
    for h in REMOTES:
        assert doc[h]["removed"] == 0 and doc[h]["kept_leased"] == 3
    assert out["failed"] == []
    env.check_reads(c)


def test_expired_lease_of_a_crashed_run_is_reclaimed(env):
    ttl = 8.0  # long enough that the first gc surely runs inside it, even on a loaded machine
    env.write_policy(f"gc:\n  lease_ttl: {ttl:g}s\n")
    mod = env.mod
    coordinator = mod.ScriptsCoordinator(str(env.config), str(env.jobs), ssh_config=str(env.cluster.ssh_config))
    assign = {"localhost": [], "rig-a": coordinator.jobs, "rig-b": []}
    # the coordinator "crashes" after staging: run_end never comes
    mod.plugins.hook.coordinator_run_start(run_id="crashed", nodes=coordinator.nodes, jobs=coordinator.jobs,
                                           assignments=assign)
    expires = time.time() + ttl  # the lease was written before this moment
    # the coordinator process died: its lease renewals (a thread of it) end with it
    plugin.keeper.stop()
    gc = [sys.executable, "-m", "prng_cache", "gc", "--all", "--json", "--config", str(env.config),
          "--policy", str(env.policy), "--node", "rig-a"]
    first = json.loads(subprocess.run(gc, capture_output=True, text=True, check=True).stdout)
    assert first["nodes"]["rig-a"]["kept_leased"] == 3 and first["nodes"]["rig-a"]["removed"] == 0
    time.sleep(max(0.0, expires - time.time()) + 0.3)
    second = json.loads(subprocess.run(gc, capture_output=True, text=True, check=True).stdout)
    assert second["nodes"]["rig-a"]["removed"] == 3 and second["nodes"]["rig-a"]["expired_leases"] == [plugin.lease_id]
    assert plugin.lease_id.startswith("crashed~")


def test_disabled_cache_behaves_as_without_plugin(env, monkeypatch):
    monkeypatch.setenv("USE_RAMDISK", "false")
    c, out, rep = env.run()
    assert out["failed"] == [] and rep["enabled"] is False
    original = {j["job_id"]: j["args"] for j in json.loads(env.jobs.read_text())}
    assert all(args == original[jid] for _, jid, args in c.commands)
    for h in REMOTES:
        assert not env.cluster[h].exists(env.root(h))


def test_dry_run_stages_and_leases_nothing(env):
    """The run-start hook sits after the coordinator's --dry-run return (the
    README lines): a dry run contacts no node, stages and leases nothing."""
    mod = env.mod
    before = {h: env.cluster[h].log_text().count("Connection from") for h in REMOTES}
    c = mod.ScriptsCoordinator(str(env.config), str(env.jobs), ssh_config=str(env.cluster.ssh_config),
                               dry_run=True)
    out = c.run()
    assert out["dry_run"] is True and c.commands == []
    for h in REMOTES:
        assert not env.cluster[h].exists(env.root(h))
        assert env.cluster[h].log_text().count("Connection from") == before[h]


def test_readme_registration_lines_are_what_the_coordinator_uses():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Register in scripts_coordinator.py", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) >= 3
    source = (E2E / "scripts_coordinator.py").read_text()
    for block in blocks:
        for line in block.splitlines():
            if line.strip() and not line.strip().startswith("#") and line.strip() != "...":
                assert line.strip() in source, line
