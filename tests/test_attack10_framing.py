"""Red team 10: the helper's stream after parts of 256 KB or more go
unjoined (helper._coalesced) and sends go through memoryviews
(helper._send_all), over real sshd nodes.

Every input handed out must be the source's exact bytes (sha256 read on
the node), nothing partial ever visible under a key, the manifest
consistent with the disk; a helper that dies, stalls, is cut off or runs
out of space costs SFTP (or that input), never a job."""

from __future__ import annotations

import signal
import time

import pytest

from rt10_common import (  # noqa: F401 - fixtures
    BIG, SMALL_FILE, assert_consistent, bundles, cluster, helper_pids, make_policy, mixed_files, node_names,
    record_helper_pids, root_of, served_problems, signal_pids, spy_helper, src, stage, write_files,
)

from prng_cache.policy import CapacityPolicy
from prng_cache.transport.ssh import SSHTransport, helper, operations


def _no_tmp(node):
    return [n for n in node_names(node, root_of(node)) if n.startswith(".tmp-")]


def test_boundary_sizes_through_the_helper_to_three_nodes_byte_exact(cluster, src, monkeypatch):
    """0-byte, 1-byte, 256 KB - 1, 256 KB, 256 KB + 1, 600 KB seeds chunks,
    exactly SMALL_FILE, interleaved with tiny files (and duplicates of
    the empty file under other names), to three nodes at once from one
    shared read each."""
    d = src / "mixed"
    paths = mixed_files(d)
    policy = make_policy(cluster, d, capacity=CapacityPolicy(max_percent=100))
    bs = bundles(policy, d, paths)
    seen = spy_helper(monkeypatch)
    reps = stage(cluster, policy, bs)
    assert seen["put"] >= 3, seen  # every node's batch went through its helper
    assert any(c >= BIG for c in seen["chunks"]) and any(c < BIG for c in seen["chunks"]), seen["chunks"]
    assert max(seen["chunks"]) <= SMALL_FILE + (1 << 20), max(seen["chunks"])
    for host, rep in reps.items():
        assert rep.status == "ok", (host, rep.to_dict())
        assert served_problems(cluster[host], rep, paths) == [], host
        assert_consistent(cluster[host])
    reps2 = stage(cluster, policy, bs)
    for host, rep in reps2.items():
        assert rep.status == "ok" and rep.copied_files == 0, (host, rep.to_dict())
        assert served_problems(cluster[host], rep, paths) == []


def test_step3_shape_600k_chunks_all_big_parts(cluster, src, monkeypatch):
    """The users' step 3: one ~600 KB seeds file per job (every part passes
    through unjoined, back to back), plus the two histories."""
    monkeypatch.setattr(operations, "HELPER_MIN", 2)  # a window of 13 chunks is enough for the helper
    d = src / "scoring_chunks"
    paths = write_files(d, [600_000 + (i * 977) % 20_000 - 10_000 for i in range(40)], prefix="chunk_")
    paths += [src / "train_history.json", src / "holdout_history.json"]
    policy = make_policy(cluster, src, capacity=CapacityPolicy(max_percent=100))
    bs = bundles(policy, src, paths)
    seen = spy_helper(monkeypatch)
    reps = stage(cluster, policy, bs, hosts=["rig-a", "rig-b"])
    assert seen["put"] >= 2 and sum(c >= BIG for c in seen["chunks"]) >= 80, seen
    for host, rep in reps.items():
        assert rep.status == "ok", rep.to_dict()
        assert served_problems(cluster[host], rep, paths) == [], host
        assert_consistent(cluster[host])


def _after_chunk(monkeypatch, n: int, action, min_len: int = BIG) -> list:
    """Run ``action(helper)`` once, right after the stream's n-th part of
    ``min_len`` bytes or more was produced (before it is sent)."""
    orig_co = helper._coalesced
    orig_put = helper.NodeHelper.put_dirs
    state: dict = {"fired": [], "helper": None, "count": 0}

    def put_dirs(self, items):
        state["helper"] = self
        return orig_put(self, items)

    def coalesced(parts, size=1 << 20):
        for c in orig_co(parts, size):
            if len(c) >= min_len:
                state["count"] += 1
                if state["count"] == n and not state["fired"]:
                    state["fired"].append(1)
                    action(state["helper"])
            yield c
    monkeypatch.setattr(helper.NodeHelper, "put_dirs", put_dirs)
    monkeypatch.setattr(helper, "_coalesced", coalesced)
    # every window of 600 KB parts (fewer than HELPER_MIN items in 8 MiB)
    # starts the helper: deterministic, whatever else started it or not
    monkeypatch.setattr(operations, "HELPER_MIN", 2)
    return state["fired"]


def _big_batch(src, n=24):
    d = src / "big"
    sizes = []
    for i in range(n):
        sizes += [600_000 + i, 100 + i, BIG + i % 3]
    return d, write_files(d, sizes)


@pytest.mark.parametrize("fault", [
    "kill", "close-channel",
    # our side shut for sending while the helper lives on: the helper still
    # renames what it had fully received; the coordinator waits for it to
    # exit (HELPER_SETTLE) before SFTP retries the same items, so that is
    # settled, not left as an unlisted <key> directory (RT10, fixed)
    "shutdown-write",
])
def test_helper_cut_off_mid_big_part_falls_back_and_publishes_nothing_partial(cluster, src, monkeypatch, tmp_path,
                                                                           fault):
    node = cluster["rig-a"]
    d, paths = _big_batch(src)
    policy = make_policy(cluster, d, capacity=CapacityPolicy(max_percent=100))
    bs = bundles(policy, d, paths)
    pid_file = tmp_path / "helper-pids"
    record_helper_pids(monkeypatch, pid_file)

    def act(h):
        if fault == "kill":
            pids = helper_pids(pid_file, node)
            assert len(pids) == 1, pids
            signal_pids(pids, signal.SIGKILL)
            time.sleep(0.3)
        elif fault == "shutdown-write":  # our side shut for sending: send() returns 0
            h._chan.shutdown_write()
        else:
            h._chan.close()
    fired = _after_chunk(monkeypatch, 5, act)
    t0 = time.monotonic()
    rep = stage(cluster, policy, bs, hosts=["rig-a"])["rig-a"]
    assert fired
    assert time.monotonic() - t0 < 30
    assert rep.status in ("ok", "fallback"), rep.to_dict()
    # what was handed out is exact; what could not be is the source path
    problems = [p for p in served_problems(node, rep, paths) if not p.startswith("not staged")]
    assert problems == []
    assert len(rep.staged) >= len(paths) - 3, (len(rep.staged), sorted(set(rep.skipped.values())))
    assert_consistent(node, leftovers_ok=True)
    monkeypatch.undo()
    rep2 = stage(cluster, policy, bs, hosts=["rig-a"])["rig-a"]
    assert rep2.status == "ok" and served_problems(node, rep2, paths) == [], rep2.to_dict()
    assert_consistent(node, leftovers_ok=True)


def test_helper_stalled_mid_big_part_costs_the_io_timeout_then_sftp(cluster, src, monkeypatch, tmp_path):
    """The helper stopped (SIGSTOP) while the coordinator is sending a
    600 KB part: the send waits for the channel's window, times out,
    HelperGone, SFTP. When the helper resumes later it publishes nothing
    that is served."""
    node = cluster["rig-a"]
    d, paths = _big_batch(src)
    policy = make_policy(cluster, d, capacity=CapacityPolicy(max_percent=100))
    bs = bundles(policy, d, paths)
    monkeypatch.setattr(SSHTransport, "io_timeout", property(lambda self: 4.0))
    pid_file = tmp_path / "helper-pids"
    record_helper_pids(monkeypatch, pid_file)
    stopped: list = []

    def act(h):
        pids = helper_pids(pid_file, node)
        assert len(pids) == 1, pids
        signal_pids(pids, signal.SIGSTOP)
        stopped.extend(pids)
    fired = _after_chunk(monkeypatch, 2, act)
    try:
        t0 = time.monotonic()
        rep = stage(cluster, policy, bs, hosts=["rig-a"])["rig-a"]
        took = time.monotonic() - t0
    finally:
        signal_pids(stopped, signal.SIGCONT)
    assert fired and took < 25, took
    assert rep.status in ("ok", "fallback"), rep.to_dict()
    problems = [p for p in served_problems(node, rep, paths) if not p.startswith("not staged")]
    assert problems == []
    assert len(rep.staged) >= len(paths) - 3, (len(rep.staged), sorted(set(rep.skipped.values())))
    time.sleep(1.0)  # the resumed helper does what it still does
    assert served_problems(node, rep, paths) == [p for p in served_problems(node, rep, paths)
                                                 if p.startswith("not staged")]
    assert_consistent(node, leftovers_ok=True)
    monkeypatch.undo()
    rep2 = stage(cluster, policy, bs, hosts=["rig-a"])["rig-a"]
    assert rep2.status == "ok" and served_problems(node, rep2, paths) == [], rep2.to_dict()


def test_input_rewritten_while_its_big_part_is_in_flight(cluster, src, monkeypatch):
    """An input rewritten (same size, mtime restored) after it was read
    and verified, while the stream is sending it: the bytes sent are the
    verified ones (the key's), never the new ones under the old key."""
    import os
    node = cluster["rig-a"]
    d, paths = _big_batch(src, 16)
    policy = make_policy(cluster, d, capacity=CapacityPolicy(max_percent=100))
    bs = bundles(policy, d, paths)
    originals = {str(p): p.read_bytes() for p in paths}
    victims = [p for p in paths if p.stat().st_size >= 600_000][3:8]

    def act(_h):
        for p in victims:
            st = p.stat()
            with open(p, "r+b") as f:
                f.write(os.urandom(st.st_size))
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    fired = _after_chunk(monkeypatch, 1, act)
    rep = stage(cluster, policy, bs, hosts=["rig-a"])["rig-a"]
    assert fired and rep.status in ("ok", "fallback"), rep.to_dict()
    m = assert_consistent(node)  # every recorded file hashes to its record
    for s, ram in rep.staged.items():
        from rt10_common import node_bytes
        got = node_bytes(node, ram)
        assert got == originals[s] or got == open(s, "rb").read(), s
        key = ram[len(root_of(node)) + 1:].split("/")[0]
        assert key in m.entries


def test_enospc_mid_big_parts_on_the_node(cluster, src, monkeypatch):
    """The node's tmpfs fills while 600 KB parts stream: failures are per
    input (the source path is kept), nothing partial served."""
    node = cluster["rig-a"]
    if not cluster.isolated:
        pytest.skip("needs the node's own tmpfs")
    d, paths = _big_batch(src, 30)
    policy = make_policy(cluster, d, capacity=CapacityPolicy(max_percent=100))
    bs = bundles(policy, d, paths)

    def fill(_h):  # leave ~2 MiB free once the stream has begun
        node.run("avail=$(df -k --output=avail /dev/shm | tail -1); "
                 "head -c $(( (avail - 2048) * 1024 )) /dev/zero > /dev/shm/filler", check=False)
    fired = _after_chunk(monkeypatch, 2, fill)
    try:
        rep = stage(cluster, policy, bs, hosts=["rig-a"])["rig-a"]
        assert fired
        if rep.status == "error":
            assert "manifest update failed" in rep.reason and rep.staged == {}, rep.to_dict()
        else:
            assert rep.status == "fallback", rep.to_dict()
            assert all("No space left" in r for r in rep.skipped.values()), set(rep.skipped.values())
            problems = [p for p in served_problems(node, rep, paths) if not p.startswith("not staged")]
            assert problems == []
            assert_consistent(node)
        assert not _no_tmp(node) or rep.status != "error"
    finally:
        node.run("rm -f /dev/shm/filler")
    rep2 = stage(cluster, policy, bs, hosts=["rig-a"])["rig-a"]
    assert rep2.status == "ok" and served_problems(node, rep2, paths) == [], rep2.to_dict()


def test_cli_stage_of_the_boundary_sizes_byte_exact(cluster, src, tmp_path):
    """``python3 -m prng_cache stage`` (its own process, the real command
    line and /usr/bin/python3 on the nodes) with the boundary sizes."""
    import json

    from test_faults import bundles_of, jobs_for, run_cli, write_policy_yaml
    from rt10_common import node_bytes
    d = src / "mixed"
    paths = mixed_files(d)
    pol = write_policy_yaml(cluster, tmp_path / "policy.yaml", d, capacity={"max_percent": 100})
    nodes = [cluster["rig-a"], cluster["rig-b"]]
    cfg = cluster.write_distributed_config(tmp_path / "cluster.json", nodes, script_path=str(d))
    jf = tmp_path / "jobs.json"
    jf.write_text(json.dumps(jobs_for(paths, n=2)))
    out = json.loads(run_cli("stage", "--jobs-file", jf, "--json", "--config", cfg, "--policy", pol,
                             tmp_path=tmp_path, check=0).stdout)
    bs, _ = bundles_of(paths, d)
    for node in nodes:
        assert out["nodes"][node.name]["status"] == "ok", out["nodes"][node.name]
        # one command per node: sha256 of every entry
        for b in bs[::5] + [b for b in bs if b.size in (0, BIG - 1, BIG, SMALL_FILE)]:
            f = b.files[0]
            assert node_bytes(node, f"{root_of(node)}/{b.key}/{f.name}") == open(f.src, "rb").read(), f.src
        assert_consistent(node)
