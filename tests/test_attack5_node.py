"""Fifth red team: a node's cache root changing under a live run's lease
renewals (wiped, rebooted, swapped for a symlink, foreign-owned, opened
up, manifest corrupted, sharded). A renewal must never create a root or a
lease, never write through an unsafe root, never clobber a manifest it
cannot read, and must log what it found. Real sshd nodes."""
from __future__ import annotations

import logging
import re

import pytest

from rt5_common import (cluster, lease_expiry, manifest_raw, node_manifest, plugin_start, policy_ttl,  # noqa: F401
                        root_of, src, stage)
from rt4_common import make_files, sharded  # noqa: F401  (fixture)
from test_faults import bundles_of

from prng_cache.lease_keeper import LeaseKeeper
from prng_cache.cluster import Node
from prng_cache.manifest import MANIFEST_NAME
from prng_cache.policy import CapacityPolicy, GcPolicy
from prng_cache.store import LeaseRequest


def _run(cluster, src, run_id="r"):
    policy = policy_ttl(cluster, src, 600.0)
    p = plugin_start(policy, ["rig-a"], [src / "survivors.npz", src / "train_history.json"], run_id=run_id)
    p.keeper.stop()  # rounds driven by hand (renew_once): deterministic
    assert p.reports["rig-a"].status == "ok" and lease_expiry(cluster["rig-a"], run_id) is not None
    return p, policy


@pytest.mark.parametrize("how", ["wipe", "reboot"])
def test_a_wiped_node_is_never_given_a_root_or_a_lease_back(cluster, src, caplog, how):
    p, policy = _run(cluster, src)
    node = cluster["rig-a"]
    getattr(node, how)()
    caplog.set_level(logging.WARNING)
    assert p.keeper.renew_once() == {"rig-a": False}
    assert not node.exists(root_of(node))  # not recreated
    assert re.search(r"rig-a: lease r~[0-9a-f]{8} is gone", caplog.text)
    # another coordinator stages there again: still no lease of run r
    b, _ = bundles_of([src / "holdout_history.json"], src)
    assert stage(cluster, policy, b, hosts=["rig-a"])["rig-a"].status == "ok"
    assert p.keeper.renew_once() == {"rig-a": False}
    assert lease_expiry(node, "r") is None
    rep = p.coordinator_run_end(run_id="r", results={})
    assert rep["leases_released"]["rig-a"] == "lease already gone (node wiped?)", rep


def test_a_root_swapped_for_a_symlink_is_never_written_through(cluster, src, caplog):
    """The root moved aside and replaced by a symlink to it (the manifest
    behind it still holds the run's lease): the renewal refuses the node
    and writes nothing there."""
    p, policy = _run(cluster, src)
    node = cluster["rig-a"]
    root = root_of(node)
    node.run(f"mv {root} {root}.real && ln -s {root}.real {root}")
    before = node.run(f"base64 -w0 {root}.real/{MANIFEST_NAME}; ls -a {root}.real").stdout
    out = p.keeper.renew_once()
    assert isinstance(out["rig-a"], str) and "symlink" in out["rig-a"], out
    assert node.run(f"base64 -w0 {root}.real/{MANIFEST_NAME}; ls -a {root}.real").stdout == before
    assert re.search(r"lease r~[0-9a-f]{8} not renewed", caplog.text)


@pytest.mark.parametrize("tamper", ["chown 4242", "chmod 0777"])
def test_an_unsafe_root_is_refused_and_left_as_is(cluster, src, caplog, tamper):
    p, policy = _run(cluster, src)
    node = cluster["rig-a"]
    root = root_of(node)
    node.run(f"{tamper} {root}")
    before = node.run(f"base64 -w0 {root}/{MANIFEST_NAME}; ls -la --time-style=+%s.%N {root}").stdout
    out = p.keeper.renew_once()
    assert isinstance(out["rig-a"], str), out
    assert node.run(f"base64 -w0 {root}/{MANIFEST_NAME}; ls -la --time-style=+%s.%N {root}").stdout == before
    assert re.search(r"lease r~[0-9a-f]{8} not renewed", caplog.text)


@pytest.mark.parametrize("garbage", [b"\x00garbage" * 50, b""])
def test_a_corrupt_manifest_is_neither_renewed_nor_rewritten(cluster, src, caplog, garbage):
    p, policy = _run(cluster, src)
    node = cluster["rig-a"]
    path = f"{root_of(node)}/{MANIFEST_NAME}"
    node.run(f"cat > {path}.x && chmod 600 {path}.x && mv -f {path}.x {path}", input=garbage)
    caplog.set_level(logging.WARNING)
    out = p.keeper.renew_once()
    assert out["rig-a"] is not True, out
    assert manifest_raw(node) == garbage  # the evidence stays for the next stage / doctor
    assert "rig-a" in caplog.text and "lease r~" in caplog.text


def test_renewing_a_sharded_manifest_keeps_every_entry(cluster, src, sharded):
    """100 entries (sharded from 64 here): the renewal rewrites the header
    alone; every entry and shard stays readable, the lease is extended."""
    node = cluster["rig-a"]
    d, paths = make_files(src, 100, size=300)
    policy = policy_ttl(cluster, d, 30.0)
    policy = type(policy)(**{**policy.__dict__, "capacity": CapacityPolicy(max_percent=100),
                             "gc": GcPolicy(lease_ttl=30.0, stale_temp=1.0)})
    bs, _ = bundles_of(paths, d)
    rep = stage(cluster, policy, bs, hosts=["rig-a"], lease=LeaseRequest("big", 30.0))["rig-a"]
    assert rep.status == "ok" and len(rep.staged) == 100, rep
    before = node_manifest(node)
    assert before.entries.shards is not None
    exp = lease_expiry(node, "big")
    k = LeaseKeeper("big", [Node("rig-a")], policy)
    import time
    time.sleep(1.2)  # listed_at now older than stale_temp: the renewal lists the root in full
    assert k.renew_once() == {"rig-a": True}
    after = node_manifest(node)
    assert sorted(after.entries) == sorted(before.entries)
    assert after.leases["big"].hashes == before.leases["big"].hashes
    assert after.leases["big"].expires > exp
    shards = node.run(f"ls -a {root_of(node)} | grep -c '^.manifest-'").stdout.strip()
    assert shards == "1", shards
