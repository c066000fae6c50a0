"""Third red team (partial loads of a large root): lazily checked manifest records, the 1/8 threshold, old-format
manifests and unrecorded wanted keys, in a large root over real sshd."""
from __future__ import annotations

import dataclasses
import math
import time

import msgpack

import pytest

from rt3_common import *  # noqa: F401,F403
from rt3_common import (N, assert_consistent, assert_served_ok, big_root, new_bundles, node_manifest, read_doc,
                        record_partial, root_of, stage_a, store_for, token_of, write_doc)

from prng_cache.maintenance import gc_node, status_node, verify_node
from prng_cache.policy import CapacityPolicy, GcPolicy
from prng_cache.store import LeaseRequest


def _bad(rec):
    """Ways a record can be malformed (each: a function of the good record)."""
    return {
        "none": None, "int": 5, "str": "x", "list": [1, 2], "empty": {},
        "no-files": {k: v for k, v in rec.items() if k != "files"},
        "files-empty": {**rec, "files": {}},
        "files-escape": {**rec, "files": {"../x": next(iter(rec["files"].values()))}},
        "files-reserved": {**rec, "files": {".prng-x": next(iter(rec["files"].values()))}},
        "files-hash-bad": {**rec, "files": {k: "nothex" for k in rec["files"]}},
        "files-hash-int": {**rec, "files": {k: 5 for k in rec["files"]}},
        "files-list": {**rec, "files": list(rec["files"])},
        "size-str": {**rec, "size": "large"}, "size-neg": {**rec, "size": -1},
        "size-bool": {**rec, "size": True}, "size-float": {**rec, "size": 1.5},
        "added-nan": {**rec, "added": math.nan}, "added-inf": {**rec, "added": math.inf},
        "added-str": {**rec, "added": "now"}, "no-last-used": {k: v for k, v in rec.items() if k != "last_used"},
        "scoped-str": {**rec, "run_scoped": "yes"}, "scoped-none": {**rec, "run_scoped": None},
    }


def test_malformed_records_probed_and_not(cluster, src, monkeypatch):
    node, gc_policy, bs, d = big_root(cluster, src, gc=GcPolicy(stale_temp=0))
    # stages with the default gc.stale_temp (with 0 every stage lists the
    # root); gc below with 0, to reclaim at once
    policy = dataclasses.replace(gc_policy, gc=GcPolicy())
    doc = read_doc(node)
    doc["listed_at"] = time.time()  # as if the big stage had just listed it
    ents = doc["entries"]
    variants = _bad(ents[bs[0].key])
    names = sorted(variants)
    # probed keys bs[0..len) malformed one way each; the same ways for keys never probed
    for i, v in enumerate(names):
        ents[bs[i].key] = _bad(ents[bs[i].key])[v]
        ents[bs[100 + i].key] = _bad(ents[bs[100 + i].key])[v]
    extra = dict(ents[bs[200].key], pinned=True, future={"x": [1, 2]})  # a newer version's fields: still valid
    ents[bs[200].key] = extra
    ents["not-a-key"] = dict(ents[bs[201].key])
    ents["A" * 32] = dict(ents[bs[201].key])
    ents[b"\x00bytes"] = dict(ents[bs[201].key])
    doc["future_top_level"] = {"anything": [1, 2, 3]}
    write_doc(node, doc)
    partial = record_partial(monkeypatch)
    probed = bs[:len(names)] + [bs[200]]
    rep = stage_a(cluster, policy, probed, lease=LeaseRequest("run-m", 600))
    assert partial == [True]
    assert rep.status == "ok" and len(rep.staged) == len(probed), (rep.status, rep.reason)
    assert any("malformed" in w for w in rep.warnings), rep.warnings
    assert_served_ok(node, rep, probed)
    after = read_doc(node)["entries"]
    # untouched: written back exactly as read (those with a run_scoped value
    # are checked, hence dropped, by the run-scoped orphan scan: fine)
    lost = [v for i, v in enumerate(names) if bs[100 + i].key not in after]
    assert lost in ([], ["scoped-none", "scoped-str"]), lost
    for i, v in enumerate(names):
        if v not in lost:
            assert msgpack.packb(after[bs[100 + i].key]) == msgpack.packb(ents[bs[100 + i].key]), v
    assert after["not-a-key"] == ents["not-a-key"]
    assert set(after[bs[200].key]) >= {"size", "files", "added", "last_used"}
    # a warm lease-less stage of the valid ones: fine too
    rep = stage_a(cluster, policy, bs[250:254])
    assert rep.status == "ok" and len(rep.staged) == 4
    s = store_for(cluster, gc_policy, "rig-a")
    try:
        st = status_node(s)
        assert st["status"] == "ok", st
        v = verify_node(s)
        assert v.corrupt == {}, v.corrupt
        res = gc_node(s)  # reclaims the directories of the records dropped as malformed
        assert not res.removed, res
    finally:
        s.t.close()
    m = assert_consistent(node)
    assert len(m.entries) == N - len(names)  # probed ones restaged, the unprobed malformed reclaimed
    assert all(bs[i].key in m.entries for i in range(len(names)))  # restaged and recorded
    assert "run-m" in m.leases


@pytest.mark.parametrize("n_probe,expect", [(N // 8, True), (N // 8 + 1, False)])
def test_probe_at_the_ratio(cluster, src, monkeypatch, n_probe, expect):
    node, policy, bs, d = big_root(cluster, src)
    node.run(f"rm -rf {root_of(node)}/{bs[0].key}")  # one of them removed by hand
    partial = record_partial(monkeypatch)
    rep = stage_a(cluster, policy, bs[:n_probe], lease=LeaseRequest("r", 600))
    assert partial == [expect]
    assert rep.status == "ok" and len(rep.staged) == n_probe and rep.copied_files == 1, rep
    assert_served_ok(node, rep, bs[:n_probe])
    assert_consistent(node)


def test_garbage_records_inflate_the_count_partial_still_safe(cluster, src, monkeypatch):
    # 40 real entries + 300 records that are not entries at all: the count
    # (unchecked) says "large", the partial path is taken; still correct
    node, policy, bs, d = big_root(cluster, src, n=40)
    doc = read_doc(node)
    for i in range(300):
        doc["entries"][f"junk-{i}"] = {"size": 1}
    doc["root_token"] = token_of(node) if "root_token" in doc else doc.get("root_token")
    doc["listed_at"] = time.time()  # a full listing just now: the next stage may skip it
    write_doc(node, doc)
    if "root_token" not in doc:
        pytest.skip("a 40-entry root's manifest has no token recorded")
    partial = record_partial(monkeypatch)
    node.run(f"rm -rf {root_of(node)}/{bs[1].key}")
    rep = stage_a(cluster, policy, bs[:5], lease=LeaseRequest("r", 600))
    assert partial == [True]
    assert rep.status == "ok" and len(rep.staged) == 5 and rep.copied_files == 1, rep
    assert_served_ok(node, rep, bs[:5])


def test_old_format_manifest_without_root_token(cluster, src, monkeypatch):
    node, policy, bs, d = big_root(cluster, src)
    doc = read_doc(node)
    real = doc.pop("root_token")
    write_doc(node, doc)
    partial = record_partial(monkeypatch)
    rep = stage_a(cluster, policy, bs[:4])  # warm, no lease: must still record the token
    assert rep.status == "ok" and len(rep.staged) == 4
    assert partial == [False] and read_doc(node).get("root_token") == real
    rep = stage_a(cluster, policy, bs[4:8])
    assert partial == [False, True] and rep.status == "ok" and len(rep.staged) == 4
    assert_consistent(node)


UNRECORDED = {
    # what sits at a wanted, unrecorded <key>; expect served
    "ours-marker-stale": ("mkdir $K && echo junk > $K/$N && touch $K/.prng-$T && touch -d '2 days ago' $K/* $K/.prng-$T $K", True),
    "ours-marker-fresh": ("mkdir $K && echo junk > $K/$N && touch $K/.prng-$T", True),
    "ours-marker-empty": ("mkdir $K && touch $K/.prng-$T", True),
    "foreign-dir": ("mkdir $K && echo junk > $K/$N", False),
    "foreign-dir-stale": ("mkdir $K && echo junk > $K/$N && touch -d '2 days ago' $K/$N $K", False),
    "foreign-marker-of-other-root": ("mkdir $K && echo junk > $K/$N && touch $K/.prng-0123456789abcdef", False),
    "foreign-file": ("echo junk > $K", False),
    "symlink-to-our-entry": ("ln -s $K2 $K", False),
    "marker-is-symlink": ("mkdir $K && ln -s /etc/hostname $K/.prng-$T", False),
}


@pytest.mark.parametrize("case", sorted(UNRECORDED))
def test_unrecorded_wanted_key(cluster, src, monkeypatch, case):
    node, policy, bs, d = big_root(cluster, src, gc=GcPolicy(stale_temp=3600))
    root = root_of(node)
    nb = new_bundles(d, ["unrec.bin"])[0]
    K, K2 = f"{root}/{nb.key}", f"{root}/{bs[5].key}"
    shell, served = UNRECORDED[case]
    node.run(shell.replace("$K2", K2).replace("$K", K).replace("$N", nb.files[0].name).replace("$T", token_of(node)))
    before = node.run(f"stat -c '%F %i' {K}; ls -A {K}/ 2>/dev/null; md5sum {K}/* 2>/dev/null", check=False).stdout
    partial = record_partial(monkeypatch)
    few = bs[:4] + [nb]
    rep = stage_a(cluster, policy, few, lease=LeaseRequest("run-u", 600))
    assert partial[0] is True
    assert_served_ok(node, rep, few)
    assert (nb.path in rep.staged) == served, (rep.status, rep.reason)
    assert len(rep.staged) == 4 + served
    if served:
        assert_consistent(node)
    else:
        assert node.run(f"stat -c '%F %i' {K}; ls -A {K}/ 2>/dev/null; md5sum {K}/* 2>/dev/null",
                        check=False).stdout == before
        assert nb.key not in node_manifest(node).entries
