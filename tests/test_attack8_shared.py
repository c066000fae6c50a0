"""Red team 8, change 2: shared reads (a small input is read and proven once
for all the nodes of a stage, kept in a bounded window). Real sshd nodes,
real files; only the moment a coordinator-side change happens is injected
(a wrapper around Sending._read_verified)."""
from __future__ import annotations

import dataclasses
import os
import threading
import time
import tracemalloc

import pytest

from rt8_common import entry_of, many_files, node_bytes, q, served_problem, stage
from test_faults import NODES, cluster, make_policy, root_of  # noqa: F401

from prng_cache import sending
from prng_cache.errors import IntegrityError
from prng_cache.hashing import Hasher
from prng_cache.model import BundleFile
from prng_cache.policy import NodeOverride


def _xxh(data: bytes) -> str:
    h = Hasher()
    h.update(data)
    return h.hexdigest()


def _check_nodes(cluster, reps, paths, keys):
    """Every staged RAM path holds bytes that hash to the key it is stored
    under (its directory name or, single-file, its own hash) and is a good
    file."""
    for h, rep in reps.items():
        node = cluster[h]
        for p in paths:
            ram = rep.staged.get(str(p))
            if ram is None:
                continue
            got = node_bytes(node, ram)
            key = entry_of(ram).rsplit("/", 1)[1]
            assert got is not None, (h, p)
            assert _xxh(got) == key == keys[str(p)], (h, p, "bytes do not match the key")


def _wrap_reads(monkeypatch, on_read):
    """on_read(store, src, phase) runs before ("before") and after ("after")
    each real proven read."""
    orig = sending.Sending._read_verified
    calls = []

    def wrapped(self, src):
        calls.append((self.host, src.src))
        on_read(self, src, "before")
        data = orig(self, src)
        on_read(self, src, "after")
        return data
    monkeypatch.setattr(sending.Sending, "_read_verified", wrapped)
    return calls


def _keys(reps_paths):
    return {str(p): _xxh(p.read_bytes()) for p in reps_paths}


@pytest.mark.parametrize("when,how", [
    ("after", "rewrite-same-size-mtime-kept"),
    ("after", "truncate"),
    ("after", "replace-by-rename"),
    ("before", "rewrite-same-size-mtime-kept"),
    ("before", "truncate"),
])
def test_input_changed_between_node_threads(cluster, tmp_path, monkeypatch, when, how):
    """Three nodes; one small input changes on the coordinator's disk right
    before/after the first node's proven read. No node may hold the NEW
    bytes under the OLD key; each holds bytes matching the key or skips."""
    policy = make_policy(cluster, tmp_path)
    paths = many_files(tmp_path / "in", n=40)
    victim = paths[11]
    keys = _keys(paths)
    old = victim.read_bytes()
    new = bytes(b ^ 0xFF for b in old)
    fired = []

    def change(store, src, phase):
        if src.src != str(victim) or phase != when or fired:
            return
        fired.append(store.host)
        st = os.stat(victim)
        if how == "rewrite-same-size-mtime-kept":
            with open(victim, "r+b") as f:
                f.write(new)
            os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
        elif how == "truncate":
            with open(victim, "r+b") as f:
                f.truncate(10)
        else:
            tmp = victim.with_suffix(".new")
            tmp.write_bytes(new)
            os.rename(tmp, victim)
    calls = _wrap_reads(monkeypatch, change)
    reps = stage(cluster, policy, paths, tmp_path / "memo", hosts=NODES)
    assert fired, calls
    _check_nodes(cluster, reps, paths, keys)
    for h, rep in reps.items():
        assert all(str(p) in rep.staged for p in paths if p != victim), (h, rep.skipped)
        if str(victim) in rep.staged:
            assert node_bytes(cluster[h], rep.staged[str(victim)]) == old
    # the next stage (a new window): every node gets the file as it is now
    keys = _keys(paths)
    reps = stage(cluster, policy, paths, tmp_path / "memo", hosts=NODES)
    _check_nodes(cluster, reps, paths, keys)
    for h, rep in reps.items():
        assert str(victim) in rep.staged, (h, rep.skipped)
        assert node_bytes(cluster[h], rep.staged[str(victim)]) == victim.read_bytes()


def test_same_path_other_content_across_two_stages(cluster, tmp_path):
    policy = make_policy(cluster, tmp_path)
    paths = many_files(tmp_path / "in", n=30)
    for rnd in range(3):
        keys = _keys(paths)
        reps = stage(cluster, policy, paths, tmp_path / "memo", hosts=NODES)
        _check_nodes(cluster, reps, paths, keys)
        for h, rep in reps.items():
            assert all(str(p) in rep.staged for p in paths), (h, rep.skipped)
        for p in paths[::3]:  # same size, mtime restored: only ctime tells
            st = os.stat(p)
            data = p.read_bytes()
            p.write_bytes(bytes(reversed(data)))
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_reading_nodes_sshd_stopped_while_the_others_wait(cluster, tmp_path, monkeypatch):
    """The node whose thread reads a shared input loses its sshd while the
    two others wait for that read: they must not hang, and must stage."""
    policy = make_policy(cluster, tmp_path)
    paths = many_files(tmp_path / "in", n=40)
    keys = _keys(paths)
    victim = paths[0]
    stopped = []

    def slow(store, src, phase):
        if src.src == str(victim) and phase == "after" and not stopped:
            stopped.append(store.host)
            cluster[store.host].stop()
            time.sleep(1.0)  # the others now wait on this read
    _wrap_reads(monkeypatch, slow)
    t0 = time.monotonic()
    reps = stage(cluster, policy, paths, tmp_path / "memo", hosts=NODES)
    took = time.monotonic() - t0
    assert stopped
    assert took < 30, took
    assert reps[stopped[0]].status in ("error", "fallback"), reps[stopped[0]]
    others = [h for h in NODES if h != stopped[0]]
    for h in others:
        assert reps[h].status == "ok", reps[h]
        assert all(str(p) in reps[h].staged for p in paths)
    _check_nodes(cluster, {h: reps[h] for h in others}, paths, keys)


def test_reader_raises_keyboardinterrupt_waiters_do_not_hang(tmp_path):
    """A KeyboardInterrupt (or any BaseException) inside the reading
    thread's read: the waiters are released and read for themselves."""
    p = tmp_path / "s"
    p.write_bytes(b"y" * 64)
    f = BundleFile(name="s", src=str(p), size=64, hash=_xxh(b"y" * 64))
    shared = sending.SharedReads()
    started, release = threading.Event(), threading.Event()
    out = {}

    def bad(src):
        started.set()
        release.wait(5)
        raise KeyboardInterrupt

    def reader():
        try:
            shared.get(f, bad)
        except KeyboardInterrupt:
            out["reader"] = "interrupted"

    def waiter(i):
        out[i] = shared.get(f, lambda s: b"y" * 64)
    t = threading.Thread(target=reader)
    t.start()
    assert started.wait(5)
    ws = [threading.Thread(target=waiter, args=(i,)) for i in range(2)]
    for w in ws:
        w.start()
    release.set()
    for th in [t, *ws]:
        th.join(5)
        assert not th.is_alive(), "a waiter hangs"
    assert out == {"reader": "interrupted", 0: b"y" * 64, 1: b"y" * 64}


def test_host_aliases_of_one_machine(cluster, tmp_path):
    """rig-a under two host names (two stagers of one root at once, with
    shared reads between them): both report good RAM paths."""
    cfg = cluster.write_ssh_config(tmp_path / "ssh_config", aliases={"rig-a-too": ("rig-a", None)})
    policy = make_policy(cluster, tmp_path)
    policy = dataclasses.replace(
        policy, transport=dataclasses.replace(policy.transport, ssh_config=str(cfg)),
        nodes=policy.nodes + (NodeOverride("rig-a-too", cache_root=root_of(cluster["rig-a"])),))
    paths = many_files(tmp_path / "in", n=60)
    keys = _keys(paths)
    for _ in range(2):
        reps = stage(cluster, policy, paths, tmp_path / "memo", hosts=("rig-a", "rig-a-too", "rig-b"))
        for h, rep in reps.items():
            assert rep.status == "ok", (h, rep.status, rep.reason)
            node = cluster["rig-a" if h.startswith("rig-a") else h]
            for p in paths:
                if str(p) in rep.staged:
                    assert served_problem(node, rep.staged[str(p)], p.read_bytes()) is None, (h, p)
        _check_nodes({"rig-a": cluster["rig-a"], "rig-a-too": cluster["rig-a"], "rig-b": cluster["rig-b"]},
                     reps, paths, keys)


def test_thousands_of_tiny_files_memory_is_bounded(tmp_path):
    """The window is 16 MiB of bytes. Tiny (here: empty and 1-byte) inputs
    add nothing to its byte count, so they are never evicted: what the
    window holds must still be bounded (here: well under its 16 MiB)."""
    n = 120_000
    files = [BundleFile(name=f"t{i}", src=f"{tmp_path}/t{i:06d}", size=i % 2, hash="%032x" % i) for i in range(n)]
    shared = sending.SharedReads()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for f in files:
        shared.get(f, lambda s: bytes(s.size))
    grown = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    kept = len(shared._kept)
    # a bounded window forgets old files; this one keeps every tiny file
    assert grown <= shared.budget, f"{kept} tiny files kept: {grown / 2**20:.1f} MiB held by a {shared.budget >> 20} MiB window"
