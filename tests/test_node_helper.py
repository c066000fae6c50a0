"""Batches through the node's python helper (transport/ssh/helper.py) on
real sshd nodes: the same outcomes as the SFTP pipeline, and SFTP whenever
the helper cannot serve (no python3, junk on stdout, killed mid-stream)."""
from __future__ import annotations

import shlex

import pytest

from test_batch_faults import _keys_complete, _many
from test_faults import (  # noqa: F401 - fixtures
    cluster, src, make_policy, stage, node_names, root_of, node_bytes, jobs_for, assert_consistent,
)
from prng_cache.inputs import discover
from prng_cache.policy import CapacityPolicy
from prng_cache.transport.ssh import helper, operations


def _bundles(policy, d, paths):
    bs = list(discover(jobs_for(paths), policy.inputs, str(d)).bundles.values())
    assert len(bs) == len(paths)
    return bs


def _spy(monkeypatch) -> list:
    """Calls that went through a running helper: ("put" | "list" | "ls")."""
    calls: list = []
    for name, tag in (("put_dirs", "put"), ("listdirs", "list"), ("listdir_attr", "ls")):
        orig = getattr(helper.NodeHelper, name)

        def spy(self, *a, _orig=orig, _tag=tag):
            calls.append(_tag)
            return _orig(self, *a)
        monkeypatch.setattr(helper.NodeHelper, name, spy)
    return calls


def test_cold_and_warm_300_files_go_through_the_helper(cluster, src, monkeypatch):
    node = cluster["rig-a"]
    d, paths = _many(src, 300, 5_000)
    policy = make_policy(cluster, d)
    bs = _bundles(policy, d, paths)
    calls = _spy(monkeypatch)
    rep = stage(cluster, policy, bs, hosts=["rig-a"])["rig-a"]
    assert rep.status == "ok" and len(rep.staged) == 300 and rep.copied_files == 300, rep.to_dict()
    assert "put" in calls
    for p in paths[::29]:
        assert node_bytes(node, rep.staged[str(p)]) == p.read_bytes()
    m = assert_consistent(node)
    assert len(m.entries) == 300
    calls.clear()
    monkeypatch.setattr(operations, "HELPER_MIN_LISTING", 100)  # wait for it: deterministic
    rep2 = stage(cluster, policy, bs, hosts=["rig-a"])["rig-a"]
    assert rep2.status == "ok" and rep2.copied_files == 0 and len(rep2.staged) == 300, rep2.to_dict()
    assert "list" in calls  # the 300 entries checked by the helper
    assert not [n for n in node_names(node, root_of(node)) if n.startswith(".tmp-")]


@pytest.mark.parametrize("command", ["no-python3", "junk-first", "python2-like"])
def test_node_without_a_usable_python3_uses_sftp(cluster, src, monkeypatch, command):
    node = cluster["rig-a"]
    monkeypatch.setattr(helper, "COMMAND", {
        "no-python3": "prng-cache-no-such-python3 -I -c pass",
        "junk-first": "echo 'Welcome to rig-a'; " + helper.COMMAND,  # a chatty login script
        "python2-like": "python3 -c 'import sys; sys.stdout.write(\"SyntaxError\\n\"); sys.exit(1)'",
    }[command])
    d, paths = _many(src, 120, 3_000)
    policy = make_policy(cluster, d)
    bs = _bundles(policy, d, paths)
    calls = _spy(monkeypatch)
    rep = stage(cluster, policy, bs, hosts=["rig-a"])["rig-a"]
    assert rep.status == "ok" and len(rep.staged) == 120, rep.to_dict()
    assert calls == []
    assert_consistent(node)
    rep2 = stage(cluster, policy, bs, hosts=["rig-a"])["rig-a"]
    assert rep2.status == "ok" and rep2.copied_files == 0, rep2.to_dict()


def _after_chunks(monkeypatch, n: int, action) -> list:
    """Run ``action`` once after the helper stream's n-th large write."""
    orig = helper._coalesced
    fired: list = []

    def chunks(parts, size=1 << 20):
        for i, c in enumerate(orig(parts, size)):
            if i == n and not fired:
                fired.append(1)
                action()
            yield c
    monkeypatch.setattr(helper, "_coalesced", chunks)
    return fired


def test_helper_killed_mid_stream_falls_back_to_sftp(cluster, src, monkeypatch):
    node = cluster["rig-a"]
    d, paths = _many(src, 400, 30_000)  # 12 MB: several 1 MiB writes
    policy = make_policy(cluster, d, capacity=CapacityPolicy(max_percent=100))
    bs = _bundles(policy, d, paths)
    fired = _after_chunks(monkeypatch, 3, lambda: node.run("pkill -KILL -f prng-cache-node-helper", check=False))
    rep = stage(cluster, policy, bs, hosts=["rig-a"])["rig-a"]
    assert fired
    # what the helper did before it died is settled like a concurrent
    # stager's work; the rest went over SFTP
    assert rep.status in ("ok", "fallback"), rep.to_dict()
    assert len(rep.staged) >= 380, (len(rep.staged), sorted(set(rep.skipped.values()))[:3])
    for p, ram in list(rep.staged.items())[::23]:
        assert node_bytes(node, ram) == open(p, "rb").read()
    _keys_complete(node, {b.key: b for b in bs})
    assert_consistent(node, leftovers_ok=True)
    rep2 = stage(cluster, policy, bs, hosts=["rig-a"])["rig-a"]
    assert rep2.status == "ok" and len(rep2.staged) == 400, rep2.to_dict()
    assert_consistent(node, leftovers_ok=True)


def test_enospc_through_the_helper(cluster, src, monkeypatch):
    node = cluster["rig-a"]
    d, paths = _many(src, 500, 60_000)
    policy = make_policy(cluster, d, capacity=CapacityPolicy(max_percent=100))
    bs = _bundles(policy, d, paths)

    def fill():  # leave ~700 KiB free once the stream has begun
        node.run("avail=$(df -k --output=avail /dev/shm | tail -1); "
                 "head -c $(( (avail - 700) * 1024 )) /dev/zero > /dev/shm/filler", check=False)
    fired = _after_chunks(monkeypatch, 1, fill)
    rep = stage(cluster, policy, bs, hosts=["rig-a"])["rig-a"]
    assert fired
    if rep.status == "fallback":
        reasons = set(rep.skipped.values())
        assert reasons and all("No space left" in r for r in reasons), reasons
        m = assert_consistent(node)
        assert len(rep.staged) + len(rep.skipped) == 500
        for ram in rep.staged.values():
            assert ram.split("/")[-2] in m.entries
    else:  # the manifest itself could not be written: nothing served, nothing left half-made
        assert rep.status == "error" and "manifest update failed" in rep.reason, rep.to_dict()
        assert rep.staged == {}
        assert not [n for n in node_names(node, root_of(node)) if n.startswith(".tmp-")]
    _keys_complete(node, {b.key: b for b in bs})
    node.run("rm -f /dev/shm/filler")


def test_connection_killed_mid_helper_stream(cluster, src, monkeypatch):
    node = cluster["rig-a"]
    d, paths = _many(src, 400, 30_000)
    policy = make_policy(cluster, d, capacity=CapacityPolicy(max_percent=100))
    bs = _bundles(policy, d, paths)
    fired = _after_chunks(monkeypatch, 2, node.stop)
    rep = stage(cluster, policy, bs, hosts=["rig-a"])["rig-a"]
    assert fired and not node.running
    assert rep.status == "error" and rep.staged == {}, rep.to_dict()
    node.start()
    _keys_complete(node, {b.key: b for b in bs})
    monkeypatch.undo()
    rep2 = stage(cluster, policy, bs, hosts=["rig-a"])["rig-a"]
    assert rep2.status == "ok" and len(rep2.staged) == 400, rep2.to_dict()
    assert_consistent(node, leftovers_ok=True)


def test_helper_command_line_is_constant():
    # paths and names travel on stdin: nothing of the node's or the user's
    # reaches the node's shell
    assert helper.COMMAND == "python3 -I -S -c " + shlex.quote(helper._BOOT)
