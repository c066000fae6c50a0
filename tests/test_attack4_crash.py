"""Fourth red team (sharded manifest): a writer that fails or dies between the shard writes and the header
write, over real sshd nodes. The header's counts (count, bytes, scoped) are
then behind the shards for good: they are only ever adjusted by deltas
against what the shards held when read."""
from __future__ import annotations

import errno

import pytest

from rt4_common import *  # noqa: F401,F403
from rt4_common import (assert_consistent, disk_entry_bytes, new_bundles, node_manifest, read_doc,
                        sharded_root, stage_a)

from prng_cache.maintenance import gc_node, status_node
from prng_cache.manifest import MANIFEST_NAME
from prng_cache.ownership import CacheRoot
from prng_cache.policy import CapacityPolicy


def fail_header_write(monkeypatch, times=1):
    """The header's write fails (connection lost / ENOSPC at that moment),
    after the shards were written."""
    orig = CacheRoot._replace
    left = [times]

    def _replace(self, name, data):
        if name == MANIFEST_NAME and left[0] > 0:
            left[0] -= 1
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        return orig(self, name, data)

    monkeypatch.setattr(CacheRoot, "_replace", _replace)


def test_failed_header_write_leaves_bytes_drift_that_allows_overfilling_max_bytes(cluster, src, sharded,
                                                                                      monkeypatch):
    """Found by the fourth red team (fixed): capacity.max_bytes is exceeded. A stage whose header write
    fails (after its shard writes) leaves shards recording entries the
    header's 'bytes' never counted (or, after the stage removes what it
    could not record, the next writer subtracts bytes the header never
    added). The drift is permanent (only deltas are ever applied) and
    cumulative: every such failure lets the root hold that much more than
    max_bytes; status reports the wrong size; gc's max_bytes pass under-evicts."""
    cap = CapacityPolicy(max_percent=100, max_bytes=110_000)
    node, policy, bs, d = sharded_root(cluster, src, n=100, size=1000, capacity=cap)
    for round_ in range(3):
        fail_header_write(monkeypatch)
        extra = new_bundles(d, [f"x{round_}-{i}.bin" for i in range(10)], size=1000)
        rep = stage_a(cluster, policy, extra)
        assert rep.status != "ok" or not rep.staged, rep  # the job keeps its original paths
    more = new_bundles(d, [f"y{i}.bin" for i in range(30)], size=1000)
    rep = stage_a(cluster, policy, more)
    m = node_manifest(node)
    recorded = sum(e.size for e in m.entries.values())
    st = store_for(cluster, policy, "rig-a")
    try:
        reported = status_node(st)["bytes"]
    finally:
        st.t.close()
    assert reported == recorded, f"status reports {reported} bytes, the entries hold {recorded}"
    assert recorded <= cap.max_bytes, (f"root holds {recorded} bytes of entries > capacity.max_bytes "
                                       f"{cap.max_bytes} ({len(rep.staged)} of 30 more staged)")


def test_failed_gc_header_write_leaves_bytes_drift_that_makes_gc_evict_too_much(cluster, src, sharded,
                                                                                  monkeypatch):
    """Found by the fourth red team (fixed): the opposite drift. A gc whose header write fails after the
    shards dropped its victims: the header still counts their bytes (the
    victims' directories are reclaimed later as unrecorded). Every later gc
    with capacity.max_bytes evicts that many bytes too many, for good, and
    stages are refused room that is there."""
    node, policy, bs, d = sharded_root(cluster, src, n=100, size=1000)
    st = store_for(cluster, policy, "rig-a")
    try:
        # evict 40 entries by max_bytes, header write fails
        from dataclasses import replace
        st.settings = replace(st.settings, capacity=CapacityPolicy(max_percent=100, max_bytes=60_000))
        fail_header_write(monkeypatch)
        with pytest.raises(OSError):
            gc_node(st)
        st.settings = replace(st.settings, capacity=CapacityPolicy(max_percent=100, max_bytes=90_000))
        res = gc_node(st)
        m = node_manifest(node)
        recorded = sum(e.size for e in m.entries.values())
        reported = status_node(st)["bytes"]
    finally:
        st.t.close()
    assert reported == recorded, f"status reports {reported} bytes, the entries hold {recorded}"
    # 60 entries (60 kB) are left, well under 90 kB: nothing more should go
    assert not res.removed, f"gc evicted {len(res.removed)} entries under max_bytes (holding {recorded})"
