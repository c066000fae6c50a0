"""Fourth red team (sharded manifest): a sharded manifest's files tampered with between stages, over real
sshd nodes. Served paths must be regular files, one link, ours, the right
bytes; what is not ours is never modified; no traceback; leases hold."""
from __future__ import annotations

import time

import msgpack
import pytest

from rt4_common import *  # noqa: F401,F403
from rt4_common import (header_count, assert_consistent, new_bundles, node_bytes, node_manifest, read_doc, root_of,
                        shard_path, sharded_root, stage_a, store_for, write_doc)
from rt3_common import assert_served_ok

from prng_cache.maintenance import gc_node, status_node, verify_node
from prng_cache.manifest import SHARD_DIR_PREFIX
from prng_cache.policy import GcPolicy
from prng_cache.store import LeaseRequest


def outside(node) -> str:
    return f"{node.shm}/rt4-outside"


def snapshot_outside(node) -> str:
    o = outside(node)
    return node.run(f"cd {o} 2>/dev/null && find . -printf '%p %y %s %i\\n' | sort && md5sum $(find . -type f | sort)",
                    check=False).stdout


def shard_dir(node) -> str:
    return f"{root_of(node)}/{SHARD_DIR_PREFIX}{read_doc(node)['shards']['gen']}"


# ------------------------------------------------------------ shard files
def _other_shard(node, key):
    """A shard file of the current generation other than key's."""
    mine = shard_path(node, key)
    d = shard_dir(node)
    names = node.run(f"ls {d}").stdout.split()
    return next(f"{d}/{n}" for n in names if f"{d}/{n}" != mine)


FILE_CASES = {
    # name: shell (S = the wanted key's shard, O = another shard of this generation, OUT = outside dir)
    "garbage": "head -c 300 /dev/urandom > $S",
    "truncated": "truncate -s 7 $S",
    "empty": ": > $S",
    "removed": "rm -f $S",
    "other-shard-content": "cp $O $S",
    "symlink-to-other-shard": "rm -f $S && ln -s $O $S",
    "symlink-outside": "cp $S $OUT/copy && rm -f $S && ln -s $OUT/copy $S",
    "hardlink-outside": "ln $S $OUT/hard",
    "fifo": "rm -f $S && mkfifo $S",
    # FAILS (heal): a directory in place of a shard wedges every later write
    # of that shard (rename of the new shard over a non-empty directory
    # fails): each stage needing it errors for good, gc does not repair it
    "directory": "rm -f $S && mkdir $S && echo x > $S/x",
    "huge-sparse": "truncate -s 20M $S",
}


@pytest.mark.parametrize("lease", [False, True], ids=["nolease", "lease"])
@pytest.mark.parametrize("case", sorted(FILE_CASES))
def test_tampered_shard_file(cluster, src, sharded, case, lease):
    node, policy, bs, d = sharded_root(cluster, src, n=100, size=500)
    o = outside(node)
    node.run(f"rm -rf {o} && mkdir -p {o}")
    few = bs[:4]
    S, O = shard_path(node, few[0].key), _other_shard(node, few[0].key)
    node.run(FILE_CASES[case].replace("$OUT", o).replace("$S", S).replace("$O", O))
    before = snapshot_outside(node)
    rep = stage_a(cluster, policy, few, lease=LeaseRequest("run-t", 600) if lease else None)
    assert_served_ok(node, rep, few)
    # a failure is allowed here (the job keeps its paths, a reason logged) ...
    assert rep.status == "ok" and len(rep.staged) == 4 or (rep.reason and not rep.staged), rep
    assert snapshot_outside(node) == before, "something outside the root changed"
    st = store_for(cluster, policy, "rig-a")
    try:
        res = gc_node(st)
        s = status_node(st)
        v = verify_node(st)
    finally:
        st.t.close()
    assert not v.corrupt, v.corrupt
    assert snapshot_outside(node) == before, "something outside the root changed"
    # ... but the cache heals: the next stage (after a gc) works
    rep2 = stage_a(cluster, policy, few, lease=LeaseRequest("run-t2", 600))
    assert rep2.status == "ok" and len(rep2.staged) == 4, (rep.status, rep.reason, rep2.status, rep2.reason)
    assert_served_ok(node, rep2, few)
    assert s["status"] == "ok"
    node.run(f"rm -rf {o}")


# ------------------------------------------------------------ shard directory
def test_shard_dir_replaced_by_symlink_to_foreign_dir_is_never_written_through(cluster, src, sharded):
    """Found by the fourth red team (fixed): foreign files modified. The current generation's directory
    is replaced by a symlink to a directory prng-cache does not own (a
    user's, holding files that happen to be named like shards). Shards are
    then read through it (distrusted: wrong content) and, worse, WRITTEN
    through it: the next stage renames its new shard over the foreign
    file <outside>/<idx>.msgpack. Nothing checks that the shard directory
    is a real directory of ours before writing into it."""
    node, policy, bs, d = sharded_root(cluster, src, n=100, size=500)
    o = outside(node)
    sd = shard_dir(node)
    node.run(f"rm -rf {o} && mkdir -p {o} && for i in $(seq 0 15); do printf 'precious %s' $i > {o}/$(printf %04x $i).msgpack; done"
             f" && rm -rf {sd} && ln -s {o} {sd}")
    before = snapshot_outside(node)
    extra = new_bundles(d, [f"x{i}.bin" for i in range(8)], size=500)
    rep = stage_a(cluster, policy, extra + bs[:4], lease=LeaseRequest("run-s", 600))
    assert_served_ok(node, rep, extra + bs[:4])
    after = snapshot_outside(node)
    assert after == before, f"files outside the root modified through the shard dir symlink:\n{before}\n---\n{after}"


def test_shard_dir_replaced_by_symlink_gc(cluster, src, sharded):
    """The same, gc (which rewrites the shards it reads) and gc --all."""
    node, policy, bs, d = sharded_root(cluster, src, n=100, size=500)
    o = outside(node)
    sd = shard_dir(node)
    node.run(f"rm -rf {o} && cp -a {sd} {o} && rm -rf {sd} && ln -s {o} {sd}")
    before = snapshot_outside(node)
    st = store_for(cluster, policy, "rig-a")
    try:
        gc_node(st)
        gc_node(st, remove_all=True)
    finally:
        st.t.close()
    assert node.run(f"test -d {o} && ! test -L {o}", check=False).returncode == 0, "outside dir removed"
    after = snapshot_outside(node)
    assert after == before, f"files outside the root modified through the shard dir symlink:\n{before}\n---\n{after}"


@pytest.mark.parametrize("how", ["file", "removed"])
def test_shard_dir_replaced_by_file_heals(cluster, src, sharded, how):
    """Found by the fourth red team (fixed; a new generation is written): the current generation's
    directory removed by hand (e.g. `rm -rf <root>/.manifest-*`, a cleanup of
    dot-directories) or replaced by a regular file. Stages stay safe (error with a reason, original paths),
    but every stage that writes the manifest fails for good ("... is a file,
    not a directory"): nothing makes a new generation. Expected: the cache
    heals (the writer moves to a new generation when the current one's
    directory or a shard of it is not a real directory / regular file)."""
    node, policy, bs, d = sharded_root(cluster, src, n=100, size=500)
    sd = shard_dir(node)
    node.run(f"rm -rf {sd}" + (f" && echo notadir > {sd}" if how == "file" else ""))
    for i in range(3):
        extra = new_bundles(d, [f"x{i}-{j}.bin" for j in range(3)], size=500)
        rep = stage_a(cluster, policy, extra + bs[:2], lease=LeaseRequest(f"run-f{i}", 600))
        assert rep.reason is None or "Traceback" not in rep.reason
        if i == 1:  # even a gc --all does not repair it
            st = store_for(cluster, policy, "rig-a")
            try:
                gc_node(st, remove_all=True)
            finally:
                st.t.close()
    assert rep.status == "ok" and len(rep.staged) == 5, (rep.status, rep.reason, rep.warnings)
    assert_served_ok(node, rep, extra + bs[:2])


# ------------------------------------------------------------ leases
def test_garbled_shard_leased_entries_of_a_running_job_survive_gc(cluster, src, sharded):
    """Found by the fourth red team (fixed): a running job's inputs deleted. A run holds a lease on 10
    entries (the lease lives in the header, still trusted). One shard is
    garbled (or unreadable): its records are distrusted, so those leased
    entries are 'unrecorded directories of ours', and gc reclaims them once
    their mtime is older than gc.stale_temp, while the lease is live. A
    garbled shard distrusts its records, but the header's leases still name
    those keys: gc should not remove a leased key's directory."""
    node, policy, bs, d = sharded_root(cluster, src, n=100, size=500, gc=GcPolicy(stale_temp=2.0))
    rep = stage_a(cluster, policy, bs[:10], lease=LeaseRequest("run-live", 3600))
    assert rep.status == "ok" and len(rep.staged) == 10
    S = shard_path(node, bs[0].key)
    node.run(f"head -c 200 /dev/urandom > {S}")
    time.sleep(3)
    st = store_for(cluster, policy, "rig-a")
    try:
        res = gc_node(st)
    finally:
        st.t.close()
    gone = [rep.staged[b.path] for b in bs[:10] if not node.exists(rep.staged[b.path])]
    assert not gone, f"gc deleted {len(gone)} leased inputs of a running job: {gone} (leftovers {res.leftovers})"


# ------------------------------------------------------------ header
HEADER_CASES = {
    "n-4096": lambda doc: doc["shards"].update(n=4096),
    "n-1": lambda doc: doc["shards"].update(n=1),
    "n-0": lambda doc: doc["shards"].update(n=0),
    "count-huge": lambda doc: doc["shards"].update(count=10 ** 18),
    "bytes-huge": lambda doc: doc["shards"].update(bytes=10 ** 18),
    "count-zero": lambda doc: doc["shards"].update(count=0, bytes=0),
    "serial-negative": lambda doc: doc.update(serial=-1),
    "gen-garbage": lambda doc: doc["shards"].update(gen="../../etc"),
    "gen-other-token": lambda doc: doc["shards"].update(gen="0123456789abcdef-deadbeef"),
    "scoped-garbage": lambda doc: doc["shards"].update(scoped=["zz", 3, None] + ["f" * 32] * 3),
    "scoped-all": lambda doc: None,  # filled in the test
    "shards-missing": lambda doc: doc.pop("shards"),
    "format-3": lambda doc: doc.update(format=3),
    "format-1-no-entries": lambda doc: doc.update(format=1),
}


@pytest.mark.parametrize("case", sorted(HEADER_CASES))
def test_tampered_header(cluster, src, sharded, case):
    """FAILS for count-huge (every new input refused for capacity.max_percent:
    _manifest_room(count_hint) is huge; heals only when something else
    writes the manifest) and bytes-huge (status reports ~1e18 bytes for
    good; with capacity.max_bytes every new input would be refused and gc
    would evict every unleased entry): the header's counts are trusted
    without a plausibility bound and never recomputed."""
    node, policy, bs, d = sharded_root(cluster, src, n=100, size=500)
    o = outside(node)
    node.run(f"rm -rf {o} && mkdir -p {o} && echo keep > {o}/keep")
    doc = read_doc(node)
    if case == "scoped-all":
        doc["shards"]["scoped"] = sorted(b.key for b in bs)
    HEADER_CASES[case](doc)
    write_doc(node, doc)
    extra = new_bundles(d, [f"x{i}.bin" for i in range(3)], size=500)
    want = extra + bs[:3]
    rep = stage_a(cluster, policy, want, lease=LeaseRequest("run-h", 600))
    assert rep.status == "ok" and len(rep.staged) == 6, (rep.status, rep.reason, rep.warnings)
    assert_served_ok(node, rep, want)
    st = store_for(cluster, policy, "rig-a")
    try:
        gc_node(st)
        s = status_node(st)
    finally:
        st.t.close()
    m = node_manifest(node)
    for b in want:  # leased: still there
        assert node.exists(rep.staged[b.path])
    recorded = sum(e.size for e in m.entries.values())
    assert s["bytes"] == recorded, f"status bytes {s['bytes']} != recorded {recorded}"
    # another lease-less stage of new inputs is not refused for capacity
    more = new_bundles(d, [f"y{i}.bin" for i in range(3)], size=500)
    rep = stage_a(cluster, policy, more)
    assert rep.status == "ok" and len(rep.staged) == 3, (rep.status, rep.reason, rep.warnings)
    assert node.run(f"cat {o}/keep").stdout.strip() == "keep"


@pytest.mark.parametrize("how", ["garbage", "removed"])
def test_lost_shard_records_stay_counted_in_header_for_good(cluster, src, sharded, how):
    """Found by the fourth red team (fixed): permanent capacity/status drift (same root cause as
    test_attack4_crash). A garbled or missing shard's records are distrusted,
    but the header's count/bytes keep counting them: read_stats of a bad
    shard are (0, 0), so no delta ever takes them out. status over-reports
    for good (even after gc and stages rewrite the manifest), and
    capacity.max_bytes refuses / gc evicts as if they were still there."""
    node, policy, bs, d = sharded_root(cluster, src, n=100, size=1000)
    S = shard_path(node, bs[0].key)
    node.run(f"head -c 300 /dev/urandom > {S}" if how == "garbage" else f"rm -f {S}")
    rep = stage_a(cluster, policy, bs[:4], lease=LeaseRequest("run-g", 600))
    assert rep.status == "ok" and len(rep.staged) == 4, rep
    st = store_for(cluster, policy, "rig-a")
    try:
        gc_node(st)
        s = status_node(st)
    finally:
        st.t.close()
    m = node_manifest(node)
    recorded = sum(e.size for e in m.entries.values())
    assert header_count(read_doc(node)) == len(m.entries), (header_count(read_doc(node)), len(m.entries))
    assert s["bytes"] == recorded, f"status bytes {s['bytes']} != recorded {recorded}"
