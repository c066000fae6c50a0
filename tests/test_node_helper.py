"""Batches through the node's python helper (transport/ssh/helper.py) on
real sshd nodes: the same outcomes as the SFTP pipeline, and SFTP whenever
the helper cannot serve (no python3, junk on stdout, killed mid-stream)."""
from __future__ import annotations

import errno
import json
import os
import shlex
import stat
import subprocess
import time
import zlib

import pytest

from test_batch_faults import _keys_complete, _many
from test_faults import (  # noqa: F401 - fixtures
    cluster, src, make_policy, stage, node_names, root_of, node_bytes, jobs_for, assert_consistent,
)
from prng_cache.inputs import discover
from prng_cache.policy import CapacityPolicy
from prng_cache.transport.ssh import helper, node_helper, operations


def _bundles(policy, d, paths):
    bs = list(discover(jobs_for(paths), policy.inputs, str(d)).bundles.values())
    assert len(bs) == len(paths)
    return bs


def _spy(monkeypatch) -> list:
    """Calls that went through a running helper: ("put" | "list" | "ls" | "survey")."""
    calls: list = []
    for name, tag in (("put_dirs", "put"), ("listdirs", "list"), ("listdir_attr", "ls"), ("survey", "survey")):
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
    assert "survey" in calls  # the root and the 300 entries listed by the helper at once
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
    args = " -I -S -c " + shlex.quote(helper._BOOT)
    assert helper.COMMAND == f"test -x /usr/bin/python3 && exec /usr/bin/python3{args} || exec python3{args}"


def test_coalesced_keeps_every_byte_in_order_and_passes_big_parts_through():
    parts = [b"a" * 10, b"b" * 300_000, b"c" * 5, b"d" * 400_000, b"e" * 700_000, b"", b"f" * 3]
    out = list(helper._coalesced(parts, size=1 << 20))
    assert b"".join(out) == b"".join(parts)
    # the 300/400/700 KB parts (>= 256 KB) are sent as they are, not copied into a run
    assert [len(o) for o in out] == [10, 300_000, 5, 400_000, 700_000, 3]
    assert out[1] is parts[1] and out[4] is parts[4]
    small = [bytes([i % 256]) * 1000 for i in range(3000)]
    runs = list(helper._coalesced(small, size=1 << 20))
    assert b"".join(runs) == b"".join(small) and len(runs) == 3  # ~1 MB runs


def test_python3_that_hangs_before_hello_costs_connect_timeout_once(cluster, src, monkeypatch):
    node = cluster["rig-a"]
    monkeypatch.setattr(helper, "COMMAND", "sleep 600; " + helper.COMMAND)  # stuck before python starts
    d, paths = _many(src, 40, 2_000)
    policy = make_policy(cluster, d)  # connect_timeout 3 s
    bs = _bundles(policy, d, paths)
    try:
        t0 = time.monotonic()
        rep = stage(cluster, policy, bs, hosts=["rig-a"])["rig-a"]
        first = time.monotonic() - t0
        assert rep.status == "ok" and len(rep.staged) == 40, rep.to_dict()
        assert first < 3.0 + 10, first  # bounded by connect_timeout, not the 60 s I/O timeout
        t0 = time.monotonic()
        rep2 = stage(cluster, policy, bs, hosts=["rig-a"])["rig-a"]
        assert rep2.status == "ok" and time.monotonic() - t0 < 3.0  # not asked again by this process
    finally:
        node.run("pkill -f 'sleep 600'", check=False)


def _local_helper(tmp_path):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    p = subprocess.Popen(["sh", "-c", helper.COMMAND], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         env=env, cwd=tmp_path)
    src_ = helper._source()
    p.stdin.write(b"%d\n" % len(src_) + src_)
    p.stdin.flush()
    assert p.stdout.readline() == node_helper.HELLO
    return p


def _put_request(tmp_path, n):
    items, data = [], b""
    for i in range(n):
        body = b"x%d" % i
        items.append({"tmp": helper._h(str(tmp_path / f".tmp-{i}")), "dst": helper._h(str(tmp_path / f"k{i}")),
                      "mode": 0o700, "files": [[helper._h("f"), len(body), 0o400, zlib.crc32(body)]]})
        data += body
    return json.dumps({"op": "put", "items": items}).encode() + b"\n" + data


def test_node_helper_publishes_with_exact_modes_and_answers(tmp_path):
    p = _local_helper(tmp_path)
    p.stdin.write(_put_request(tmp_path, 3))
    p.stdin.flush()
    line = p.stdout.readline()
    assert line.startswith(b"...") and json.loads(line.lstrip(b".")) == {"results": [None, None, None]}
    p.stdin.close()
    assert p.wait(10) == 0
    for i in range(3):
        assert (tmp_path / f"k{i}" / "f").read_bytes() == b"x%d" % i
        assert stat.S_IMODE((tmp_path / f"k{i}" / "f").stat().st_mode) == 0o400
        assert stat.S_IMODE((tmp_path / f"k{i}").stat().st_mode) == 0o700


def test_node_helper_abandoned_by_the_coordinator_creates_nothing_more(tmp_path):
    # the coordinator gave up (stalled helper) and closed the channel: the
    # helper, resumed with requests still in its stdin, must not go on
    p = _local_helper(tmp_path)
    p.stdout.close()  # as sshd closes our end when the channel closes
    p.stdin.write(_put_request(tmp_path, 5))
    p.stdin.close()
    p.wait(10)
    assert not [x for x in os.listdir(tmp_path) if x.startswith((".tmp-", "k"))]


def test_node_helper_refuses_bytes_that_do_not_match_their_crc(tmp_path):
    p = _local_helper(tmp_path)
    req = _put_request(tmp_path, 1)
    p.stdin.write(req[:-2] + b"yy")  # same length, other bytes
    p.stdin.flush()
    ans = json.loads(p.stdout.readline().lstrip(b"."))
    p.stdin.close()
    p.wait(10)
    assert ans["results"][0][0] == "write" and "differ" in ans["results"][0][2]
    assert not (tmp_path / "k0").exists()  # never renamed into place


def test_node_helper_never_replaces_a_directory_put_in_the_way(tmp_path):
    (tmp_path / "k0").mkdir()  # empty, someone else's: rename(2) would replace it
    p = _local_helper(tmp_path)
    p.stdin.write(_put_request(tmp_path, 2))
    p.stdin.flush()
    ans = json.loads(p.stdout.readline().lstrip(b"."))
    p.stdin.close()
    p.wait(10)
    assert ans["results"][0][0] == "rename" and ans["results"][0][1] == errno.EEXIST
    assert ans["results"][1] is None
    assert os.listdir(tmp_path / "k0") == []  # untouched
    assert (tmp_path / ".tmp-0" / "f").read_bytes() == b"x0"  # complete, left for the caller


def test_node_helper_reads_small_regular_files_and_leaves_the_rest_to_the_caller(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "a").write_bytes(b"alpha")
    (d / "empty").write_bytes(b"")
    (d / "big").write_bytes(b"x" * 100)
    (d / "link").symlink_to(d / "a")
    (d / "sub").mkdir()
    os.mkfifo(d / "fifo")  # never opened in a way that blocks
    odd = os.fsencode(str(d)) + b"/n\xffl\n"
    with open(odd, "wb") as f:
        f.write(b"odd name")
    names = ["a", "empty", "big", "link", "sub", "fifo", "missing"]
    paths = [helper._h(str(d / n)) for n in names] + [helper._h(os.fsdecode(odd))]
    p = _local_helper(tmp_path)
    p.stdin.write(json.dumps({"op": "read", "paths": paths, "max": 50}).encode() + b"\n")
    p.stdin.flush()
    ans = json.loads(p.stdout.readline())
    assert ans == {"sizes": [5, 0, -1, -1, -1, -1, None, 8]}
    assert p.stdout.read(13) == b"alphaodd name"
    p.stdin.close()
    assert p.wait(10) == 0


def test_a_sharded_manifest_is_read_through_the_helper_in_one_request(cluster, src, monkeypatch):
    from prng_cache import manifest

    monkeypatch.setattr(manifest, "SHARD_MIN", 64)
    monkeypatch.setattr(manifest, "SHARD_FILL", 8)
    node = cluster["rig-a"]
    d, paths = _many(src, 200, 300)
    policy = make_policy(cluster, d)
    bs = _bundles(policy, d, paths)
    rep = stage(cluster, policy, bs, hosts=["rig-a"])["rig-a"]
    assert rep.status == "ok" and len(rep.staged) == 200, rep.to_dict()
    sh = assert_consistent(node).entries.shards
    assert sh is not None and sh.n > 8
    reads = []
    orig = helper.NodeHelper.read_files

    def spy(self, ps, limit):
        got = orig(self, ps, limit)
        reads.append(got)
        return got
    monkeypatch.setattr(helper.NodeHelper, "read_files", spy)
    writes = []
    orig_w = helper.NodeHelper.replace_files

    def spy_w(self, items):
        writes.append(len(items))
        return orig_w(self, items)
    monkeypatch.setattr(helper.NodeHelper, "replace_files", spy_w)
    # one shard replaced by a symlink to a copy of itself: read the ordinary
    # way, refused (a link is never read), its records not trusted
    shard_dir = f"{root_of(node)}/{sh.dirname}"
    victim = f"{shard_dir}/{sh.filename(3)}"
    node.run(f"cp {shlex.quote(victim)} {shlex.quote(victim)}.copy && rm {shlex.quote(victim)} && "
             f"ln -s {shlex.quote(victim)}.copy {shlex.quote(victim)}")
    # as the CLI and the plugin stage: the helper started with the connection, while hashing
    from prng_cache.cluster import Node
    from prng_cache.run import plan_run
    rep2 = plan_run(jobs_for(paths), [Node("rig-a", cluster.user)], policy, min_jobs=1,
                    connect_early=True).stage()["rig-a"]
    assert rep2.status == "ok" and len(rep2.staged) == 200, rep2.to_dict()
    assert reads and all(isinstance(v, (bytes, bool)) for v in reads[0].values())
    assert [p for p, v in reads[0].items() if v is False] == [victim]  # the link: left to the caller
    assert any("shard" in w for w in rep2.warnings), rep2.warnings
    for p in paths[::37]:
        assert node_bytes(node, rep2.staged[str(p)]) == p.read_bytes()
    # the shard that was not trusted made a new generation: every shard
    # holding records written through the helper, in one request, and it all reads back
    assert writes and writes[0] >= sh.n // 2  # every shard holding records (one may be empty)
    m = assert_consistent(node)
    assert m.entries.shards.gen != sh.gen and len(m.entries) >= 200 - 200 // sh.n - 1


def test_node_helper_replaces_files_exactly_and_removes_what_failed(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    (d / "dst1").write_bytes(b"old")
    (d / ".tmp-taken").write_bytes(b"someone's")  # in the way: create fails, nothing replaced
    items = [(str(d / ".tmp-a"), str(d / "dst1"), b"new one", 0o600),
             (str(d / ".tmp-taken"), str(d / "dst2"), b"never", 0o600),
             (str(d / ".tmp-c"), str(d / "nodir" / "dst3"), b"no dir", 0o600),
             (str(d / ".tmp-e"), str(d / "empty"), b"", 0o400)]
    reqs = [[helper._h(t), helper._h(x), len(b), m, zlib.crc32(b)] for t, x, b, m in items]
    p = _local_helper(tmp_path)
    p.stdin.write(json.dumps({"op": "replace", "items": reqs}).encode() + b"\n" + b"".join(i[2] for i in items))
    p.stdin.flush()
    res = json.loads(p.stdout.readline())["results"]
    p.stdin.close()
    assert p.wait(10) == 0
    assert res[0] is None and res[3] is None
    assert res[1][0] == "create" and res[1][1] == errno.EEXIST
    assert res[2][0] == "rename" and res[2][1] == errno.ENOENT
    assert (d / "dst1").read_bytes() == b"new one" and stat.S_IMODE((d / "dst1").stat().st_mode) == 0o600
    assert (d / "empty").read_bytes() == b"" and stat.S_IMODE((d / "empty").stat().st_mode) == 0o400
    assert (d / ".tmp-taken").read_bytes() == b"someone's"  # not ours: untouched
    assert sorted(os.listdir(d)) == [".tmp-taken", "dst1", "empty"]  # the failed rename's tmp removed


def test_a_channel_shut_for_sending_fails_the_helper_instead_of_spinning(cluster):
    # paramiko's send returns 0 once the channel's write side is shut, and
    # sendall would loop on it forever: the request fails (HelperGone, the
    # caller falls back to SFTP) at once
    from prng_cache.transport.ssh import SSHTransport
    with SSHTransport("rig-a", cluster.user, settings=cluster.policy()) as t:
        t.connect()
        h = t._node_helper(start=True, wait=True)
        assert h is not None and h.ready(True)
        h._chan.shutdown_write()
        t0 = time.monotonic()
        with pytest.raises(helper.HelperGone, match="takes no more data"):
            h.listdir_attr("/")
        assert time.monotonic() - t0 < 5
