"""faults in the middle of a many-file batch (put_dirs pipeline)."""
from __future__ import annotations

import os

import pytest

from test_faults import (  # noqa: F401 - fixtures
    cluster, src, make_policy, stage, node_names, node_manifest, root_of, bundles_of, node_bytes, jobs_for,
    assert_consistent,
)
from prng_cache.hashing import Hasher
from prng_cache.inputs import discover
from prng_cache.manifest import is_key
from prng_cache.policy import CapacityPolicy
from prng_cache.transport.ssh import batch


_PUMP = batch.Pipeline.pump


def _many(src, n, size):
    d = src / "many"
    d.mkdir()
    paths = []
    for i in range(n):
        p = d / f"f{i:04d}.bin"
        p.write_bytes(os.urandom(size))
        paths.append(p)
    return d, paths


def _hook_pumps(monkeypatch, after, action):
    orig = batch.Pipeline.pump
    count = [0]

    def pump(self):
        count[0] += 1
        if count[0] == after:
            action()
        return orig(self)
    monkeypatch.setattr(batch.Pipeline, "pump", pump)
    return count


def _keys_complete(node, bs_by_key):
    """Every <key> directory on the node holds complete, hash-correct files."""
    root = root_of(node)
    for k in [n for n in node_names(node, root) if is_key(n)]:
        b = bs_by_key[k]
        names = [n for n in node_names(node, f"{root}/{k}") if not n.startswith(".prng-")]
        assert names == [b.name], (k, names)
        assert Hasher(node_bytes(node, f"{root}/{k}/{b.name}")).hexdigest() == b.key


def test_enospc_mid_500_file_batch(cluster, src, monkeypatch):
    node = cluster["rig-a"]
    d, paths = _many(src, 500, 60_000)
    # the SFTP pipeline (the helper's stream: test_node_helper.py)
    policy = make_policy(cluster, d, capacity=CapacityPolicy(max_percent=100), node_helper=False)
    bs = list(discover(jobs_for(paths), policy.inputs, str(d)).bundles.values())

    def fill():  # leave ~700 KiB free
        node.run("avail=$(df -k --output=avail /dev/shm | tail -1); "
                 "head -c $(( (avail - 700) * 1024 )) /dev/zero > /dev/shm/filler", check=False)
    count = _hook_pumps(monkeypatch, 150, fill)
    rep = stage(cluster, policy, bs, hosts=["rig-a"])["rig-a"]
    assert count[0] >= 150
    by_key = {b.key: b for b in bs}
    print("ENOSPC outcome:", rep.status, rep.reason, len(rep.staged), len(rep.skipped))
    if rep.status == "fallback":
        nospc = [r for r in rep.skipped.values() if "No space left" in r]
        assert nospc, set(rep.skipped.values())
        other = {r for r in rep.skipped.values() if "No space left" not in r}
        assert not other, other  # every fallback reason should be the real one
        m = assert_consistent(node)
        assert len(rep.staged) + len(rep.skipped) == 500
        for p, ram in rep.staged.items():
            assert ram.split("/")[-2] in m.entries
    else:
        assert rep.status == "error" and "manifest update failed" in rep.reason, rep.to_dict()
        assert not [n for n in node_names(node, root_of(node)) if n.startswith(".tmp-")]
    _keys_complete(node, by_key)


def test_connection_killed_mid_batch(cluster, src, monkeypatch):
    node = cluster["rig-a"]
    d, paths = _many(src, 400, 30_000)
    policy = make_policy(cluster, d, node_helper=False)  # the SFTP pipeline
    bs = list(discover(jobs_for(paths), policy.inputs, str(d)).bundles.values())
    count = _hook_pumps(monkeypatch, 200, node.stop)
    rep = stage(cluster, policy, bs, hosts=["rig-a"])["rig-a"]
    assert count[0] >= 200 and not node.running
    assert rep.status == "error" and rep.staged == {}, rep.to_dict()
    node.start()
    by_key = {b.key: b for b in bs}
    _keys_complete(node, by_key)  # anything visible as <key> is complete and hash-correct
    names = node_names(node, root_of(node))
    print("after kill:", sum(is_key(n) for n in names), "unrecorded <key>,",
          sum(n.startswith(".tmp-") for n in names), ".tmp-*")
    monkeypatch.setattr(batch.Pipeline, "pump", _PUMP)
    rep2 = stage(cluster, policy, bs, hosts=["rig-a"])["rig-a"]
    assert rep2.status == "ok" and len(rep2.staged) == 400, rep2.to_dict()
    for p in paths[::37]:
        assert node_bytes(node, rep2.staged[str(p)]) == p.read_bytes()
    assert_consistent(node, leftovers_ok=True)


@pytest.mark.parametrize("how", ["modified", "fifo", "truncated-same-mtime"])
def test_source_changed_after_hashing_in_300_file_batch(cluster, src, how):
    node = cluster["rig-a"]
    d, paths = _many(src, 300, 20_000)
    policy = make_policy(cluster, d)
    bs = list(discover(jobs_for(paths), policy.inputs, str(d)).bundles.values())
    victim = paths[250]
    done = []

    def progress(host, event, detail):
        if event == "upload" and detail["name"] == paths[-1].name and not done:
            st = victim.stat()
            if how == "modified":
                victim.write_bytes(os.urandom(20_000))
            elif how == "fifo":
                victim.unlink()
                os.mkfifo(victim)
            else:
                with open(victim, "r+b") as f:
                    f.write(b"\0" * 10)
                os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
            done.append(1)
    rep = stage(cluster, policy, bs, hosts=["rig-a"], progress=progress)["rig-a"]
    assert done
    assert rep.status == "fallback" and str(victim) not in rep.staged, rep.to_dict()
    vb = [b for b in bs if b.path == str(victim)][0]
    assert vb.key not in node_names(node, root_of(node))
    assert len(rep.staged) == 299
    assert_consistent(node)
