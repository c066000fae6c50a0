"""Trust cases over real sshd nodes: one machine under two host aliases,
a manifest write that fails after the uploads (tmpfs exactly full)."""

from __future__ import annotations

import os

from test_faults import (bundles_of, cluster, make_policy, node_names, root_of, src,  # noqa: F401
                         stage)

from prng_cache.cluster import Node
from prng_cache.policy import CapacityPolicy
from prng_cache.staging import stage_cluster


def _connections(node) -> int:
    return node.log_text().count("Connection from")


def test_same_node_under_two_aliases_is_staged_once(cluster, tmp_path, src):
    node = cluster["rig-a"]
    cfg = cluster.write_ssh_config(tmp_path / "ssh_config", aliases={"rig-a-too": ("rig-a", None)})
    policy = make_policy(cluster, src, ssh_config=str(cfg))
    bs, _ = bundles_of([src / "survivors.npz", src / "train_history.json"], src)
    before = _connections(node)
    reps = stage_cluster([Node("rig-a"), Node("rig-a-too")], lambda n: list(bs), policy)
    assert _connections(node) - before == 1  # one stager, not two racing on one root
    a, b = reps["rig-a"], reps["rig-a-too"]
    assert a.status == b.status == "ok", (a, b)
    assert a.copied_files == 2 and set(a.staged) == set(b.staged) == {x.path for x in bs}
    assert not any("manifest" in w for w in a.warnings + b.warnings), a.warnings + b.warnings
    assert any("staged once" in w for w in b.warnings)


def test_manifest_write_failing_after_uploads_reports_what_was_sent_and_cleans_up(cluster, src):
    """The tmpfs is exactly full once the input is uploaded, so the manifest
    cannot be written: nothing is recorded, so nothing may be served, and the
    uploaded bytes must not sit in the node's RAM until gc.stale_temp."""
    node = cluster["rig-a"]
    big = src / "big.bin"
    big.write_bytes(os.urandom(4 << 20))  # whole pages: fills the tmpfs exactly
    policy = make_policy(cluster, src, capacity=CapacityPolicy(max_percent=100, warn_percent=100))
    bs, _ = bundles_of([big], src)

    def progress(host, event, detail):
        if event == "upload":
            # leave exactly the input's size free
            node.run(f"avail=$(df -B1 --output=avail /dev/shm | tail -1); "
                     f"fallocate -l $(( avail - {big.stat().st_size} )) /dev/shm/filler")

    rep = stage(cluster, policy, bs, hosts=["rig-a"], progress=progress)["rig-a"]
    assert rep.status == "error" and "manifest update failed" in rep.reason, rep
    assert "No space left" in rep.reason or "Failure" in rep.reason, rep.reason
    assert rep.copied_bytes == big.stat().st_size and rep.copied_files == 1  # what was sent
    assert rep.staged == {} and str(big) in rep.skipped
    names = node_names(node, root_of(node))
    assert bs[0].key not in names, names  # removed now, not after gc.stale_temp
    assert not [n for n in names if n.startswith((".tmp-", ".trash-", ".lock"))], names
    node.run("rm -f /dev/shm/filler")
    again = stage(cluster, policy, bs, hosts=["rig-a"])["rig-a"]
    assert again.status == "ok" and again.copied_files == 1


def test_node_id_record_leaves_no_temporary_when_it_cannot_be_saved(tmp_path):
    """A real failure of the final rename (nodes.json is a directory): the
    record is best effort, but its temporary must not pile up."""
    from prng_cache.localstate import CacheIdRecord

    (tmp_path / "nodes.json").mkdir()
    rec = CacheIdRecord(str(tmp_path))
    rec.swap("rig-a", "/dev/shm/prng", "abc")
    rec.save()  # must not raise
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nodes.json"]
