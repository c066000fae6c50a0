"""Fifth red team: the renewal thread's life cycle over many runs of one
coordinator process, failed run starts, PRNG_CACHE=0, direct/off nodes, and
the users' test coordinator (real sshd nodes)."""
from __future__ import annotations

import threading
import time
from dataclasses import replace

from coordinator_env import CoordinatorEnv

from rt5_common import cluster, lease_expiry, plugin_start, policy_ttl, src, wait_for  # noqa: F401

from prng_cache import plugin as plugin_mod
from prng_cache.policy import NodeOverride


def lease_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("prng-cache-lease-") and t.is_alive()]


def test_many_runs_in_one_process_leave_no_renewal_threads(cluster, src):
    policy = policy_ttl(cluster, src, 1.5)  # a renewal every 0.5 s
    paths = [src / "survivors.npz"]
    from prng_cache.plugin import PrngCachePlugin
    from test_faults import jobs_for
    p = PrngCachePlugin(policy)
    jobs = jobs_for(paths, n=2)
    nodes = [{"hostname": h, "script_path": "/tmp"} for h in ("rig-a", "rig-b")]
    assign = {"rig-a": jobs[:1], "rig-b": jobs[1:]}
    base = len(threading.enumerate())
    for i in range(6):
        p.coordinator_run_start(run_id=f"r{i}", nodes=nodes, jobs=jobs, assignments=assign)
        assert p.keeper is not None and len(lease_threads()) == 1, lease_threads()
        if i % 2:  # every other run never ends (a coordinator that skipped run end)
            time.sleep(0.6)
            rep = p.coordinator_run_end(run_id=f"r{i}", results={})
            assert rep["leases_released"] == {"rig-a": True, "rig-b": True}, rep
            assert lease_threads() == []
    p.coordinator_run_end(run_id="r5", results={})
    assert wait_for(lambda: lease_threads() == [] and len(threading.enumerate()) <= base, 5), threading.enumerate()
    # unended runs' leases were never renewed after the next run started: they expire
    time.sleep(1.6)
    for i in (0, 2, 4):
        exp = lease_expiry(cluster["rig-a"], f"r{i}")
        assert exp is None or exp <= time.time(), (i, exp)


def test_a_failed_run_start_stops_the_previous_renewals_and_starts_none(cluster, src):
    policy = policy_ttl(cluster, src, 1.5)
    p = plugin_start(policy, ["rig-a"], [src / "survivors.npz"], run_id="ok")
    old = p.keeper
    assert old is not None and old._thread.is_alive()
    p.coordinator_run_start(run_id="bad", nodes=[{"hostname": "rig-a"}], jobs=42, assignments={"rig-a": 42})
    assert p.start_error and p.keeper is None and not old._thread.is_alive(), p.start_error
    assert lease_threads() == []


def test_disabled_direct_and_off_nodes_get_no_renewals(cluster, src, monkeypatch):
    policy = policy_ttl(cluster, src, 1.5)
    nodes = tuple(NodeOverride(o.pattern, cache_root=o.cache_root,
                               mode={"rig-b": "direct", "rig-c": "off"}.get(o.pattern)) for o in policy.nodes)
    policy = replace(policy, nodes=nodes)
    p = plugin_start(policy, ["rig-a", "rig-b", "rig-c"], [src / "survivors.npz"], run_id="modes")
    assert [n.hostname for n in p.keeper.nodes] == ["rig-a"]
    p.coordinator_run_end(run_id="modes", results={})
    monkeypatch.setenv("PRNG_CACHE", "0")
    p = plugin_start(policy, ["rig-a"], [src / "survivors.npz"], run_id="off")
    assert p.keeper is None and lease_threads() == []
    assert lease_expiry(cluster["rig-a"], "off") is None


def test_the_users_coordinator_renews_during_a_run_and_stops_at_its_end(cluster, tmp_path, monkeypatch):
    """The users' test coordinator, lease_ttl 1.5 s: renewed while its jobs
    run, released and stopped at its end; a second run in the same process
    likewise; no renewal thread outlives a run."""
    env = CoordinatorEnv(cluster, tmp_path, monkeypatch)
    env.write_policy("gc:\n  lease_ttl: 1.5s\n")
    for _ in range(2):
        c, out, rep = env.run()
        assert out["failed"] == [] and rep["leases_released"] == {"rig-a": True, "rig-b": True}, rep
        k = plugin_mod.plugin.keeper
        assert k is not None and not k._thread.is_alive()
        assert lease_threads() == []
        env.check_reads(c)
        for h in ("rig-a", "rig-b"):
            assert lease_expiry(cluster[h], f"run-{env.run_no}") is None
