"""Seventh red team: the node changes under a presend (wiped, sshd stopped
mid-send, gc --all while sending), host aliases, two coordinators sending
the same big input at once."""

from __future__ import annotations

import os
import threading
from dataclasses import replace

from rt7_common import (MIB, NODES, PresendWatch, cluster, jobs, leftovers, make_policy, run_stage,  # noqa: F401
                        small_presend)
from test_faults import assert_consistent, node_bytes, node_names, root_of, store_for

from prng_cache import prewarm
from prng_cache.cluster import Node
from prng_cache.hashing import HashMemo
from prng_cache.maintenance import gc_node
from prng_cache.manifest import is_key
from prng_cache.policy import NodeOverride
from prng_cache.run import plan_run


def _big(tmp_path, size=6 * MIB):
    d = tmp_path / "in"
    d.mkdir()
    f = d / "big.bin"
    f.write_bytes(os.urandom(size))
    return d, f


def test_node_wiped_between_presend_and_stage_is_restaged_from_the_source(cluster, tmp_path, monkeypatch):
    d, f = _big(tmp_path)
    policy = make_policy(cluster, d)
    real_take = prewarm.EarlyConnections.take

    def take(self, node):
        t = real_take(self, node)  # every presend to the node done
        if node.hostname == "rig-b":
            cluster["rig-b"].wipe()  # as a reboot would (its sshd keeps running)
        return t

    monkeypatch.setattr(prewarm.EarlyConnections, "take", take)
    reps = run_stage(cluster, policy, [f], tmp_path / "memo")
    for h in NODES:
        assert reps[h].status == "ok", reps[h]
        assert node_bytes(cluster[h], reps[h].staged[str(f)]) == f.read_bytes()
        assert leftovers(cluster[h]) == []
        assert_consistent(cluster[h])


def test_sshd_stopped_mid_presend_node_errors_others_staged_nothing_left(cluster, tmp_path, monkeypatch):
    d, f = _big(tmp_path)
    policy = make_policy(cluster, d)
    watch = PresendWatch(monkeypatch, slow=0.03)
    hit = []

    def strike():
        if not hit:
            hit.append(True)
            cluster["rig-c"].stop()

    real_take = prewarm.EarlyConnections.take

    def take(self, node):
        if node.hostname == "rig-c":
            assert watch.started.wait(10)
            strike()
        return real_take(self, node)

    monkeypatch.setattr(prewarm.EarlyConnections, "take", take)
    reps = run_stage(cluster, policy, [f], tmp_path / "memo")
    assert reps["rig-c"].status == "error", reps["rig-c"]
    for h in ("rig-a", "rig-b"):
        assert reps[h].status == "ok", reps[h]
        assert leftovers(cluster[h]) == []
    cluster["rig-c"].start()
    # the killed connection's half-sent temporary: reclaimed later (gc.stale_temp), never served
    names = node_names(cluster["rig-c"], root_of(cluster["rig-c"]))
    assert not [n for n in names if is_key(n)], names


def test_gc_all_during_presend_then_stage_serves_the_right_bytes(cluster, tmp_path, monkeypatch):
    d, f = _big(tmp_path)
    policy = make_policy(cluster, d)
    first = run_stage(cluster, policy, [f], tmp_path / "memo0")  # something for gc --all to remove
    assert all(r.status == "ok" for r in first.values())
    f.write_bytes(os.urandom(6 * MIB))  # regenerated: a new key, sent early again
    watch = PresendWatch(monkeypatch, slow=0.03)
    real_take = prewarm.EarlyConnections.take
    done = []

    def take(self, node):
        if node.hostname == "rig-a" and not done:
            assert watch.started.wait(10)
            s = store_for(cluster, policy, "rig-a")
            try:
                gc_node(s, remove_all=True)
            finally:
                s.t.close()
            done.append(True)
        return real_take(self, node)

    monkeypatch.setattr(prewarm.EarlyConnections, "take", take)
    reps = run_stage(cluster, policy, [f], tmp_path / "memo1")
    assert done
    for h in NODES:
        assert reps[h].status == "ok", reps[h]
        assert node_bytes(cluster[h], reps[h].staged[str(f)]) == f.read_bytes()
        assert leftovers(cluster[h]) == []
        assert_consistent(cluster[h])


def test_host_alias_gets_the_presend_once(cluster, tmp_path, monkeypatch):
    d, f = _big(tmp_path)
    cfg = cluster.write_ssh_config(tmp_path / "alias_cfg", aliases={"rig-a-too": ("rig-a", None)})
    policy = make_policy(cluster, d, ssh_config=str(cfg))
    policy = replace(policy, nodes=policy.nodes + (NodeOverride("rig-a-too", cache_root=root_of(cluster["rig-a"])),))
    watch = PresendWatch(monkeypatch)
    nodes = [Node("rig-a"), Node("rig-a-too"), Node("rig-b")]
    plan = plan_run(jobs([f]), nodes, policy, min_jobs=1, memo=HashMemo(str(tmp_path / "memo")),
                    connect_early=True)
    reps = plan.stage()
    assert all(r.status == "ok" for r in reps.values()), reps
    # rig-a (two names) and rig-b: one early copy each
    assert len(watch.paths) == 2, watch.paths
    assert reps["rig-a"].copied_bytes == f.stat().st_size
    for h in ("rig-a", "rig-b"):
        assert leftovers(cluster[h]) == []
        assert_consistent(cluster[h])


def test_two_coordinators_presend_the_same_file_at_once(cluster, tmp_path):
    d, f = _big(tmp_path)
    policy = make_policy(cluster, d)
    out: dict = {}
    go = threading.Barrier(2)

    def coord(i):
        go.wait()
        out[i] = run_stage(cluster, policy, [f], tmp_path / f"memo{i}")

    ths = [threading.Thread(target=coord, args=(i,)) for i in range(2)]
    for th in ths:
        th.start()
    for th in ths:
        th.join(60)
    for i in range(2):
        for h in NODES:
            assert out[i][h].status == "ok", out[i][h]
    for h in NODES:
        assert node_bytes(cluster[h], out[0][h].staged[str(f)]) == f.read_bytes()
        assert leftovers(cluster[h]) == []
        m = assert_consistent(cluster[h])
        assert len(m.entries) == 1
