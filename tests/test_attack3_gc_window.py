"""Third red team (partial loads of a large root): gc between the plan and the commit of a stage in a large root
(partial load), over real sshd nodes."""
from __future__ import annotations

import pytest

from rt3_common import *  # noqa: F401,F403
from rt3_common import assert_consistent, assert_served_ok, big_root, record_listings, stage_a, store_for

from prng_cache.maintenance import gc_node
from prng_cache.store import LeaseRequest, NodeStore


def _gc_before_commit(monkeypatch, cluster, policy, remove_all=True, listed=None):
    """Run a real `gc --all` (own SSH connection) right before the stage's
    commit. ``listed`` (record_listings) is cut to what the stage listed."""
    orig = NodeStore.commit
    ran = []

    def commit(self, *a, **kw):
        if not ran:
            if listed is not None:
                ran_listed.extend(listed)
            s = store_for(cluster, policy, "rig-a")
            try:
                ran.append(gc_node(s, remove_all=remove_all))
            finally:
                s.t.close()
        return orig(self, *a, **kw)

    monkeypatch.setattr(NodeStore, "commit", commit)
    return ran


ran_listed: list[str] = []


def test_gc_between_plan_and_commit_of_a_leaseless_warm_stage(cluster, src, monkeypatch):
    # Found by the third red team (fixed): a lease-less warm stage that
    # changes nothing returned without looking at the manifest again, so a
    # gc that evicted its entries after the plan was not seen and the report
    # listed RAM paths that no longer existed. It now reads the manifest
    # again (not locked) and returns early only when it is unchanged.
    node, policy, bs, d = big_root(cluster, src)
    ran_listed.clear()
    ran = _gc_before_commit(monkeypatch, cluster, policy, listed=record_listings(monkeypatch))
    listed = ran_listed
    few = bs[:4]
    rep = stage_a(cluster, policy, few)
    assert ran and len(ran[0].removed) >= 4, ran
    assert root_of(node) not in listed  # the partial path was taken
    assert_served_ok(node, rep, few)


def test_gc_between_plan_and_commit_of_a_leased_stage_is_seen(cluster, src, monkeypatch):
    # holds: with a lease the commit locks and re-reads; evicted inputs fall back
    node, policy, bs, d = big_root(cluster, src)
    ran_listed.clear()
    ran = _gc_before_commit(monkeypatch, cluster, policy, listed=record_listings(monkeypatch))
    listed = ran_listed
    few = bs[:4]
    rep = stage_a(cluster, policy, few, lease=LeaseRequest("run-rt3", 600))
    assert ran and root_of(node) not in listed
    assert rep.staged == {} and all("evicted" in r for r in rep.skipped.values()), rep
    assert_served_ok(node, rep, few)
    m = assert_consistent(node)
    assert m.entries == {} or len(m.entries) == 0


def test_gc_then_warm_stage_after_the_minute_is_seen(cluster, src, monkeypatch):
    # holds: last_used older than LAST_USED_STEP -> the commit locks and re-reads
    import prng_cache.store as store_mod
    node, policy, bs, d = big_root(cluster, src)
    monkeypatch.setattr(store_mod, "LAST_USED_STEP", 0.0)
    ran = _gc_before_commit(monkeypatch, cluster, policy)
    rep = stage_a(cluster, policy, bs[:4])
    assert ran
    assert rep.staged == {}, rep
