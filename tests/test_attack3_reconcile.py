"""Third red team (partial loads of a large root): what a partial load (large root) no longer reconciles: leftovers of
a killed stager, entries removed by hand that are not probed."""
from __future__ import annotations

import time

from rt3_common import *  # noqa: F401,F403
from rt3_common import (node_manifest, assert_consistent, assert_served_ok, big_root, new_bundles, read_doc,
                        record_listings, root_of, stage_a, store_for, token_of, write_doc)

from prng_cache.maintenance import gc_node, status_node
from prng_cache.ownership import PROCESS_TOKEN  # noqa: F401
from prng_cache.policy import CapacityPolicy
from prng_cache.store import LeaseRequest


def test_killed_stagers_stale_temporary_is_removed_by_the_next_stage(cluster, src, monkeypatch):
    # Found by the third red team: in a root of >= 256 entries stages of a
    # few inputs never list the root, so a killed stager's .tmp-<token>-*
    # (here 8 MiB of a 64 MiB tmpfs) stayed in RAM until someone ran
    # `prng-cache gc`. Now a stage lists the root when the last full listing
    # is older than gc.stale_temp (the temporary is only reclaimable after
    # that long anyway), and removes it then.
    node, policy, bs, d = big_root(cluster, src)
    root = root_of(node)
    tok = token_of(node)
    tmp = f"{root}/.tmp-{tok}-deadbeef-x-0000000001"
    node.run(f"mkdir {tmp} && head -c 8388608 /dev/urandom > {tmp}/big.npz && touch -d '3 days ago' {tmp}/big.npz {tmp}")
    listed = record_listings(monkeypatch)
    rep = stage_a(cluster, policy, bs[:4], lease=LeaseRequest("run-1", 600))
    assert rep.status == "ok", rep
    assert root not in listed  # partial path: the big stage listed the root just now
    doc = read_doc(node)
    doc["listed_at"] = time.time() - policy.gc.stale_temp - 1  # as if that was a while ago
    write_doc(node, doc)
    rep = stage_a(cluster, policy, bs[:4], lease=LeaseRequest("run-2", 600))
    assert rep.status == "ok", rep
    assert root in listed  # listed in full, once
    assert not node.exists(tmp), "a killed stager's stale temporary survived the full listing"
    listed.clear()
    rep = stage_a(cluster, policy, bs[:4], lease=LeaseRequest("run-3", 600))
    assert rep.status == "ok" and root not in listed, rep  # and partial again after it


def test_entries_removed_by_hand_still_count_against_max_bytes(cluster, src, monkeypatch):
    # Found by the third red team (fixed: with capacity.max_bytes a stage
    # always lists the root): the user frees RAM on a node by removing
    # entries by hand (they are prng-cache's, the README says the cache is
    # only a cache); a partial stage never reconciles entries it does not
    # probe, so the manifest still counts their bytes: capacity.max_bytes
    # refuses new inputs that fit (jobs fall back to the SSD), and the
    # manifest written by that stage records entries whose directories are
    # gone (`status` and `verify` report them). The full load of 8a9ac19
    # dropped them at the first stage.
    node, policy, bs, d = big_root(cluster, src, capacity=CapacityPolicy(max_percent=100, max_bytes=200_000))
    root = root_of(node)
    gone = bs[4:204]  # 200 of 300 entries (100 kB of 150 kB) removed by hand
    node.run("cd " + root + " && rm -rf " + " ".join(b.key for b in gone))
    new = new_bundles(d, [f"new{i}.bin" for i in range(4)], size=25_000)  # 100 kB more: 150 kB < 200 kB
    rep = stage_a(cluster, policy, bs[:4] + new, lease=LeaseRequest("run-1", 600))
    assert rep.status == "ok" and len(rep.staged) == 8, (rep.status, rep.reason)
    assert_served_ok(node, rep, bs[:4] + new)
    assert_consistent(node)  # the manifest written by that stage records what is on disk


def test_status_and_gc_after_partial_stages_are_consistent(cluster, src, monkeypatch):
    # holds: after several partial stages (some publishing, one lease), gc
    # and status see a consistent root; nothing foreign touched
    node, policy, bs, d = big_root(cluster, src)
    root = root_of(node)
    node.run(f"mkdir {root}/step2 && echo mine > {root}/step2/x && mkdir {root}/{'ab' * 16} && echo f > {root}/{'ab' * 16}/f")
    new = new_bundles(d, [f"n{i}.bin" for i in range(6)])
    listed = record_listings(monkeypatch)
    for i in range(3):
        rep = stage_a(cluster, policy, bs[i * 4:(i + 1) * 4] + new[i * 2:(i + 1) * 2],
                      lease=LeaseRequest("run-x", 600) if i == 1 else None)
        assert rep.status == "ok" and len(rep.staged) == 6, rep
        assert_served_ok(node, rep, bs[i * 4:(i + 1) * 4] + new[i * 2:(i + 1) * 2])
    assert root not in listed
    s = store_for(cluster, policy, "rig-a")
    try:
        st = status_node(s)
        assert st["entries"] == len(bs) + 6 and st["untracked"] == 1, st
        assert sorted(st["foreign"]) == sorted(["step2", "ab" * 16]), st
        res = gc_node(s, remove_all=True)
        assert len(res.removed) == len(bs) + 6 - 6 and res.kept_leased == 6, res
    finally:
        s.t.close()
    m = node_manifest(node)
    assert len(m.entries) == 6 and set(m.leases) == {"run-x"}
    assert node.run(f"cat {root}/step2/x").stdout == "mine\n"
    assert node.run(f"cat {root}/{'ab' * 16}/f").stdout == "f\n"
