"""Fourth red team (sharded manifest): a writer killed (os._exit, as SIGKILL) between two writes of a
sharded manifest, over real sshd nodes: then stage/gc/verify/status."""
from __future__ import annotations

import pytest

from rt4_common import *  # noqa: F401,F403
from rt4_common import (header_count, assert_consistent, disk_entry_bytes, is_header, is_shard, new_bundles, node_manifest,
                        read_doc, root_of, run_killed, sharded_root, stage_a, store_for)
from rt3_common import assert_served_ok

from prng_cache.maintenance import gc_node, status_node, verify_node
from prng_cache.policy import CapacityPolicy, GcPolicy
from prng_cache.store import LeaseRequest

GC = GcPolicy(stale_lock=1.0, stale_temp=2.0)


def _after(cluster, policy, node, bs, d, tmp_path):
    """Stage again (with a lease), served ok; then gc, verify, status agree."""
    import time
    time.sleep(2.5)  # the killed writer's lock and temporaries are stale
    rep = stage_a(cluster, policy, bs, lease=LeaseRequest("run-after", 600))
    assert rep.status == "ok" and len(rep.staged) == len(bs), rep
    assert_served_ok(node, rep, bs)
    st = store_for(cluster, policy, "rig-a")
    try:
        res = gc_node(st)
        assert not [k for k in res.removed if k in {b.key for b in bs}], "gc removed leased entries"
        v = verify_node(st)
        assert not v.corrupt and not v.untracked, v
        s = status_node(st)
    finally:
        st.t.close()
    m = assert_consistent(node)
    recorded = sum(e.size for e in m.entries.values())
    assert s["entries"] == len(m.entries), s
    return m, s, recorded


@pytest.mark.parametrize("kill_on,nth", [(is_header, 1), (is_shard, 1), (is_shard, 2)],
                         ids=["before-header", "first-shard", "second-shard"])
def test_stage_killed_between_manifest_writes(cluster, src, sharded, tmp_path, kill_on, nth):
    node, policy, bs, d = sharded_root(cluster, src, n=100, size=1000, gc=GC)
    extra = new_bundles(d, [f"x{i}.bin" for i in range(40)], size=1000)
    rc = run_killed(tmp_path, policy, bundles=extra, lease="run-k", kill_on=kill_on, kill_nth=nth)
    assert rc == 9
    _after(cluster, policy, node, extra[:5] + bs[:5], d, tmp_path)


def test_stage_killed_before_header_status_bytes_and_capacity_drift(cluster, src, sharded, tmp_path):
    """Found by the fourth red team (fixed; per-shard counts healed on read): after a stager is killed
    between its shard writes and its header write, the header's bytes (and
    count) stay behind the shards for good: status under-reports the cache's
    size and capacity.max_bytes / gc's eviction work from the wrong total."""
    node, policy, bs, d = sharded_root(cluster, src, n=100, size=1000, gc=GC)
    extra = new_bundles(d, [f"x{i}.bin" for i in range(40)], size=1000)
    assert run_killed(tmp_path, policy, bundles=extra, lease="run-k", kill_on=is_header) == 9
    m, s, recorded = _after(cluster, policy, node, extra[:5] + bs[:5], d, tmp_path)
    assert s["bytes"] == recorded, f"status bytes {s['bytes']} != recorded {recorded}"
    assert header_count(read_doc(node)) == len(m.entries), "header count drifted"


@pytest.mark.parametrize("kill_on,nth", [(is_header, 1), (is_shard, 1), (is_shard, 3)],
                         ids=["before-header", "first-shard", "third-shard"])
def test_stage_killed_while_resharding(cluster, src, sharded, tmp_path, kill_on, nth):
    """100 entries in 16 shards; 500 more make it 128 shards (a new generation)."""
    node, policy, bs, d = sharded_root(cluster, src, n=100, size=200, gc=GC)
    gen0 = read_doc(node)["shards"]["gen"]
    extra = new_bundles(d, [f"x{i}.bin" for i in range(500)], size=200)
    rc = run_killed(tmp_path, policy, bundles=extra, kill_on=kill_on, kill_nth=nth)
    assert rc == 9
    assert read_doc(node)["shards"]["gen"] == gen0
    m, _, _ = _after(cluster, policy, node, extra[:5] + bs[:5], d, tmp_path)
    assert len(m.entries) >= 100


def test_gc_all_killed_going_back_to_one_file(cluster, src, sharded, tmp_path):
    node, policy, bs, d = sharded_root(cluster, src, n=100, size=500, gc=GC)
    rc = run_killed(tmp_path, policy, what="gc", all=True, kill_on=is_header)
    assert rc == 9
    _after(cluster, policy, node, bs[:5], d, tmp_path)


@pytest.mark.parametrize("kill_on,nth", [(is_header, 1), (is_shard, 2)], ids=["before-header", "second-shard"])
def test_gc_by_max_bytes_killed_between_manifest_writes(cluster, src, sharded, tmp_path, kill_on, nth):
    from dataclasses import replace
    node, policy, bs, d = sharded_root(cluster, src, n=100, size=500, gc=GC)
    small = replace(policy, capacity=CapacityPolicy(max_percent=100, max_bytes=30_000))
    assert run_killed(tmp_path, small, what="gc", kill_on=kill_on, kill_nth=nth) == 9
    m, s, recorded = _after(cluster, policy, node, bs[:5], d, tmp_path)
    assert len(m.entries) >= 5


def test_gc_killed_with_a_running_lease(cluster, src, sharded, tmp_path):
    """A run's lease holds 10 entries; a gc --all is killed before its header."""
    node, policy, bs, d = sharded_root(cluster, src, n=100, size=500, gc=GC)
    rep = stage_a(cluster, policy, bs[:10], lease=LeaseRequest("run-live", 600))
    assert rep.status == "ok"
    rc = run_killed(tmp_path, policy, what="gc", all=True, kill_on=is_header)
    assert rc == 9
    import time
    time.sleep(2.5)
    st = store_for(cluster, policy, "rig-a")
    try:
        gc_node(st, remove_all=True)
    finally:
        st.t.close()
    for b in bs[:10]:
        p = rep.staged[b.path]
        assert node.exists(p), f"leased input {p} of a running job deleted"
    assert_consistent(node)
