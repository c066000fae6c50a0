"""A run longer than gc.lease_ttl keeps its inputs: the plugin renews its
lease on every serving node until run end (real sshd nodes, real gc runs)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from dataclasses import replace

import pytest

from coordinator_env import REMOTES, CoordinatorEnv

from prng_cache import plugin as plugin_mod
from prng_cache.cluster import Node
from prng_cache.lease_keeper import MIN_INTERVAL, LeaseKeeper
from prng_cache.manifest import MANIFEST_NAME, decode
from prng_cache.policy import GcPolicy, NodeOverride, Policy
from prng_cache.run import plan_run
from prng_cache.store import LeaseRequest


@pytest.fixture
def env(ssh_cluster_clean, tmp_path, monkeypatch):
    e = CoordinatorEnv(ssh_cluster_clean, tmp_path, monkeypatch)
    yield e
    keeper = plugin_mod.plugin.keeper
    if keeper is not None:
        keeper.stop()


def gc_all(env, host: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "prng_cache", "gc", "--all", "--json", "--config", str(env.config),
                          "--policy", str(env.policy), "--node", host],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    return json.loads(out)["nodes"][host]


def lease_expiry(node, run_id: str) -> float | None:
    """The expiry of ``run_id``'s lease in the node's manifest (the leases
    live in the manifest's header, sharded or not), None if it has none."""
    raw = base64.b64decode(node.run(f"base64 -w0 -- {node.shm}/prng/{MANIFEST_NAME}").stdout)
    m, why = decode(raw)
    assert why is None, why
    lease = m.leases.get(run_id)
    return None if lease is None else lease.expires


def test_a_run_longer_than_the_lease_ttl_keeps_its_inputs_until_run_end(env):
    ttl = 4.0  # renewed every 1 s: a loaded machine still renews well inside it
    env.write_policy(f"gc:\n  lease_ttl: {ttl:g}s\n")
    mod = env.mod
    c = mod.ScriptsCoordinator(str(env.config), str(env.jobs), ssh_config=str(env.cluster.ssh_config))
    assign = {"localhost": [], "rig-a": c.jobs, "rig-b": []}
    mod.plugins.hook.coordinator_run_start(run_id="long", nodes=c.nodes, jobs=c.jobs, assignments=assign)
    keeper = plugin_mod.plugin.keeper
    assert keeper is not None and [n.hostname for n in keeper.nodes] == ["rig-a"]
    assert keeper.interval == pytest.approx(ttl / 4)
    first = lease_expiry(env.cluster["rig-a"], plugin_mod.plugin.lease_id)
    time.sleep(2.5 * ttl)  # the lease as first written is long gone
    assert keeper.renewals >= 2 and keeper.last == {"rig-a": True}
    renewed = lease_expiry(env.cluster["rig-a"], plugin_mod.plugin.lease_id)
    assert first is not None and renewed is not None and renewed > first + ttl
    doc = gc_all(env, "rig-a")
    assert doc["removed"] == 0 and doc["kept_leased"] == 3 and doc["expired_leases"] == []
    rep = mod.plugins.hook.coordinator_run_end(run_id="long", results={})
    (report,) = [r for r in rep if r.get("plugin") == "prng_cache"]
    assert report["leases_released"] == {"rig-a": True}
    n = keeper.renewals
    time.sleep(keeper.interval + 0.5)
    assert keeper.renewals == n  # stopped at run end
    assert lease_expiry(env.cluster["rig-a"], plugin_mod.plugin.lease_id) is None
    assert gc_all(env, "rig-a")["removed"] == 3


def test_a_new_run_stops_the_renewals_of_one_that_never_ended(env):
    env.write_policy("gc:\n  lease_ttl: 3s\n")
    mod = env.mod
    c = mod.ScriptsCoordinator(str(env.config), str(env.jobs), ssh_config=str(env.cluster.ssh_config))
    assign = {"localhost": [], "rig-a": c.jobs, "rig-b": []}
    mod.plugins.hook.coordinator_run_start(run_id="first", nodes=c.nodes, jobs=c.jobs, assignments=assign)
    old = plugin_mod.plugin.keeper
    mod.plugins.hook.coordinator_run_start(run_id="second", nodes=c.nodes, jobs=c.jobs, assignments=assign)
    assert old is not None and old._stop.is_set() and not old._thread.is_alive()
    assert plugin_mod.plugin.keeper is not old


def stage_with_lease(cluster, run_id: str, ttl: float, tmp_path) -> Policy:
    f = tmp_path / "input.bin"
    f.write_bytes(b"x" * 5000)
    jobs = [{"job_id": f"j{i}", "args": [str(f)]} for i in range(2)]
    policy = Policy(transport=cluster.policy(), gc=GcPolicy(lease_ttl=ttl),
                    nodes=tuple(NodeOverride(h, cache_root=f"{cluster[h].shm}/prng") for h in REMOTES))
    reps = plan_run(jobs, [Node(h, cluster.user) for h in REMOTES], policy, min_jobs=1).stage(
        lease=LeaseRequest(run_id, ttl))
    assert all(r.status == "ok" for r in reps.values()), reps
    return policy


def test_a_node_down_at_a_renewal_is_renewed_at_the_next_one(ssh_cluster_clean, tmp_path, caplog):
    cluster = ssh_cluster_clean
    policy = stage_with_lease(cluster, "r1", 600.0, tmp_path)
    keeper = LeaseKeeper("r1", [Node(h, cluster.user) for h in REMOTES], policy, interval=3600)
    before = lease_expiry(cluster["rig-a"], "r1")
    cluster["rig-b"].stop()
    try:
        out = keeper.renew_once()
    finally:
        cluster["rig-b"].start()
    assert out["rig-a"] is True and lease_expiry(cluster["rig-a"], "r1") > before
    assert isinstance(out["rig-b"], str) and out["rig-b"]  # the node's failure, logged
    assert "rig-b: lease r1 not renewed" in caplog.text
    assert keeper.renew_once() == {"rig-a": True, "rig-b": True}


def test_renewal_never_creates_or_shortens_a_lease(ssh_cluster_clean, tmp_path):
    cluster = ssh_cluster_clean
    policy = stage_with_lease(cluster, "r2", 600.0, tmp_path)
    nodes = [Node(h, cluster.user) for h in REMOTES]
    before = {h: lease_expiry(cluster[h], "r2") for h in REMOTES}
    # a shorter TTL than the lease still has: the expiry stays
    short = replace(policy, gc=GcPolicy(lease_ttl=1.0))
    assert LeaseKeeper("r2", nodes, short).renew_once() == {h: True for h in REMOTES}
    assert {h: lease_expiry(cluster[h], "r2") for h in REMOTES} == before
    # a run that holds no lease there gets none
    assert LeaseKeeper("never-staged", nodes, policy).renew_once() == {h: False for h in REMOTES}
    assert all(lease_expiry(cluster[h], "never-staged") is None for h in REMOTES)


def test_the_renewal_interval_is_a_quarter_of_the_ttl_and_never_a_busy_loop():
    nodes = [Node("rig-a", "u")]
    assert LeaseKeeper("r", nodes, Policy(gc=GcPolicy(lease_ttl=12 * 3600.0))).interval == 3 * 3600.0
    assert LeaseKeeper("r", nodes, Policy(gc=GcPolicy(lease_ttl=0.01))).interval == MIN_INTERVAL
    k = LeaseKeeper("r", [], Policy())
    k.start()  # nothing to renew: no thread
    assert k._thread is None


def test_a_lapsed_lease_is_renewed_and_reported_as_lapsed(ssh_cluster_clean, tmp_path, caplog):
    cluster = ssh_cluster_clean
    policy = stage_with_lease(cluster, "r3", 1.0, tmp_path)
    time.sleep(1.3)
    expired = {h: lease_expiry(cluster[h], "r3") for h in REMOTES}
    assert all(e < time.time() for e in expired.values())
    out = LeaseKeeper("r3", [Node(h, cluster.user) for h in REMOTES], replace(policy, gc=GcPolicy(lease_ttl=600.0))
                      ).renew_once()
    assert all(isinstance(v, str) and v.startswith("lease had lapsed") for v in out.values()), out
    assert all(lease_expiry(cluster[h], "r3") > time.time() + 500 for h in REMOTES)
    assert "lease r3 lease had lapsed" in caplog.text
