"""Node store, manifest and staging on a real tmpfs through LocalTransport."""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import time

import msgpack
import pytest

from prng_cache.errors import UnsafeCacheRootError
from prng_cache.inputs import discover
from prng_cache.maintenance import gc_node, status_node, verify_node
from prng_cache.manifest import MANIFEST_NAME, decode, decode_files
from prng_cache.policy import CapacityPolicy, GcPolicy, InputsPolicy, NodeSettings
from prng_cache.staging import held_inputs, stage_node
from prng_cache.store import LeaseRequest, NodeStore
from prng_cache.transport.local import LocalTransport


@pytest.fixture
def shm_root():
    """A fresh, not yet existing cache root on the real /dev/shm tmpfs."""
    root = f"/dev/shm/prng-test-{os.getpid()}-{os.urandom(4).hex()}"
    yield root
    if os.path.islink(root):
        os.unlink(root)
    elif os.path.exists(root):
        for d, subdirs, _ in os.walk(root):
            os.chmod(d, 0o700)
        shutil.rmtree(root)


def make_store(root: str, **gc) -> NodeStore:
    settings = NodeSettings(mode="cache", cache_root=root, capacity=CapacityPolicy())
    return NodeStore(LocalTransport("local-test"), settings, GcPolicy(**gc))


def jobs_for(*paths: str, n: int = 2) -> list[dict]:
    return [{"job_id": f"j{i}", "script": "w.py", "args": list(paths), "expected_output": f"out{i}.json",
             "timeout": 60} for i in range(n)]


def bundles(src, *names, companions=()):
    pol = InputsPolicy(companions=tuple(companions))
    d = discover(jobs_for(*[str(src / n) for n in names]), pol, str(src))
    return [d.bundles[str(src / n)] for n in names if str(src / n) in d.bundles]


@pytest.fixture
def src(tmp_path):
    d = tmp_path / "src"
    d.mkdir()
    (d / "survivors.npz").write_bytes(os.urandom(200_000))
    (d / "train_history.json").write_text('{"draws": [1, 2, 3]}' * 500)
    (d / "holdout_history.json").write_text('{"draws": [4, 5]}' * 100)
    (d / "optimal_window_config.json").write_text('{"w": 5}')
    return d


def read_manifest(root):
    def read(name):
        try:
            with open(os.path.join(root, name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None
    m, why = decode_files(read)
    assert why is None
    return m


def test_cold_then_warm_stage_copies_once(shm_root, src):
    store = make_store(shm_root)
    bs = bundles(src, "survivors.npz", "train_history.json", "holdout_history.json")
    rep = stage_node(store, bs)
    assert rep.status == "ok" and rep.copied_files == 3
    assert rep.copied_bytes == sum(b.size for b in bs)
    assert os.stat(shm_root).st_mode & 0o777 == 0o700
    for b in bs:
        ram = rep.staged[b.path]
        assert ram == f"{shm_root}/{b.key}/{b.name}"
        assert open(ram, "rb").read() == open(b.path, "rb").read()
        assert os.stat(ram).st_mode & 0o777 == 0o400
    m = read_manifest(shm_root)
    assert set(m.entries) == {b.key for b in bs}
    assert m.entries[bs[0].key].names == ["survivors.npz"]

    rep2 = stage_node(make_store(shm_root), bs)
    assert (rep2.copied_files, rep2.copied_bytes, rep2.present_files) == (0, 0, 3)
    assert read_manifest(shm_root).cache_id == m.cache_id


def test_changed_file_gets_new_hash_and_only_it_is_recopied(shm_root, src):
    bs = bundles(src, "survivors.npz", "train_history.json")
    stage_node(make_store(shm_root), bs)
    (src / "train_history.json").write_text('{"draws": "regenerated"}')
    bs2 = bundles(src, "survivors.npz", "train_history.json")
    assert bs2[0].key == bs[0].key and bs2[1].key != bs[1].key
    rep = stage_node(make_store(shm_root), bs2)
    assert rep.copied_files == 1 and rep.present_files == 1
    assert open(rep.staged[bs2[1].path]).read() == '{"draws": "regenerated"}'


def test_companions_sit_beside_the_input(shm_root, src):
    bs = bundles(src, "survivors.npz", companions=[("*survivors*.npz", ("optimal_window_config.json",))])
    rep = stage_node(make_store(shm_root), bs)
    ram = rep.staged[bs[0].path]
    assert os.path.basename(ram) == "survivors.npz"
    assert open(os.path.join(os.path.dirname(ram), "optimal_window_config.json")).read() == '{"w": 5}'


def test_same_content_under_two_names(shm_root, src):
    shutil.copy(src / "holdout_history.json", src / "holdout_copy.json")
    bs = bundles(src, "holdout_history.json", "holdout_copy.json")
    assert bs[0].key == bs[1].key
    rep = stage_node(make_store(shm_root), bs)
    assert rep.status == "ok"
    assert os.path.exists(rep.staged[bs[0].path]) and os.path.exists(rep.staged[bs[1].path])
    assert read_manifest(shm_root).entries[bs[0].key].names == ["holdout_copy.json", "holdout_history.json"]


def _stage_in_child(root, src, names, q):
    try:
        rep = stage_node(make_store(root), bundles(src, *names))
        q.put((rep.status, rep.copied_files))
    except Exception as exc:  # report to the parent rather than die silently
        q.put(("exception", repr(exc)))


def test_concurrent_publishers_both_succeed(shm_root, src):
    for i in range(6):
        (src / f"extra{i}.json").write_text(f'{{"i": {i}}}' * 1000)
    names_a = ["survivors.npz", "train_history.json"] + [f"extra{i}.json" for i in range(0, 6, 2)]
    names_b = ["survivors.npz", "holdout_history.json"] + [f"extra{i}.json" for i in range(1, 6, 2)]
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_stage_in_child, args=(shm_root, src, names, q))
             for names in (names_a, names_b, names_a, names_b)]
    for p in procs:
        p.start()
    results = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    assert all(status == "ok" for status, _ in results), results
    m = read_manifest(shm_root)
    want = {b.key for b in bundles(src, *set(names_a) | set(names_b))}
    assert set(m.entries) == want
    assert not [n for n in os.listdir(shm_root) if n.startswith((".tmp-", ".trash-", ".lock"))]


@pytest.mark.parametrize("damage", ["truncated", "garbage", "newer", "empty"])
def test_bad_manifest_is_rebuilt_not_a_crash(shm_root, src, damage):
    bs = bundles(src, "survivors.npz", "train_history.json")
    stage_node(make_store(shm_root), bs)
    path = os.path.join(shm_root, MANIFEST_NAME)
    data = open(path, "rb").read()
    bad = {"truncated": data[: len(data) // 2], "garbage": b"\x00\xffnot msgpack" * 7, "empty": b"",
           "newer": msgpack.packb({"format": 99, "cache_id": "x", "future": True})}[damage]
    os.chmod(path, 0o600)
    with open(path, "wb") as f:
        f.write(bad)
    rep = stage_node(make_store(shm_root), bs)
    assert rep.status == "ok"
    # untrusted directories are replaced, not served on faith
    assert rep.copied_files == 2
    assert any("rebuilt" in w for w in rep.warnings)
    assert set(read_manifest(shm_root).entries) == {b.key for b in bs}
    for b in bs:
        assert open(rep.staged[b.path], "rb").read() == open(b.path, "rb").read()


def test_vanished_entry_dropped_and_restaged(shm_root, src):
    bs = bundles(src, "survivors.npz", "train_history.json")
    stage_node(make_store(shm_root), bs)
    shutil.rmtree(os.path.join(shm_root, bs[0].key))
    store = make_store(shm_root)
    store.ensure_root()
    snap = store.load()
    assert snap.dropped == [bs[0].key] and bs[0].key not in snap.manifest.entries
    rep = stage_node(store, bs)
    assert rep.copied_files == 1 and rep.present_files == 1


def test_untracked_directory_is_never_served_nor_touched(shm_root, src):
    bs = bundles(src, "train_history.json", "holdout_history.json")
    os.makedirs(shm_root, mode=0o700)
    planted = os.path.join(shm_root, bs[0].key)
    os.mkdir(planted)
    with open(os.path.join(planted, "train_history.json"), "w") as f:
        f.write("poisoned")
    assert held_inputs(make_store(shm_root), bs) == {}
    rep = stage_node(make_store(shm_root), bs)
    # not provably ours (no marker of this root): never served, never
    # written through, moved or deleted; that input falls back, others stage
    assert bs[0].path not in rep.staged and "not prng-cache's" in rep.skipped[bs[0].path]
    assert open(os.path.join(planted, "train_history.json")).read() == "poisoned"
    assert sorted(os.listdir(planted)) == ["train_history.json"]
    assert open(rep.staged[bs[1].path]).read() == (src / "holdout_history.json").read_text()
    assert bs[0].key not in read_manifest(shm_root).entries
    assert not [n for n in os.listdir(shm_root) if n.startswith((".tmp-", ".trash-"))]


def _plant_foreign(root: str) -> dict[str, str]:
    """Items a cache root may hold that prng-cache did not create: the
    users' preload directories, a 32-hex directory, a .tmp-* and a .trash-*
    of someone else's, a sentinel. Returns relative path -> content."""
    items = {
        "step2/train_history.json": "users' preload",
        "step2/.ready": "",
        ".ready": "",
        "0123456789abcdef0123456789abcdef/data.json": "not ours",
        ".tmp-deadbeef/half": "someone's",
        ".trash-cafe/x": "someone's",
        "notes.txt": "keep me",
    }
    for rel, text in items.items():
        os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
        with open(os.path.join(root, rel), "w") as f:
            f.write(text)
    old = time.time() - 7 * 86400
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            os.utime(os.path.join(d, n), (old, old))
    return items


def _assert_foreign_intact(root: str, items: dict[str, str]) -> None:
    for rel, text in items.items():
        with open(os.path.join(root, rel)) as f:
            assert f.read() == text, rel


def test_foreign_items_are_never_deleted_by_stage_or_gc(shm_root, src):
    os.makedirs(shm_root, mode=0o700)
    items = _plant_foreign(shm_root)
    bs = bundles(src, "survivors.npz", "train_history.json")
    rep = stage_node(make_store(shm_root, stale_temp=1), bs)
    assert rep.status == "ok" and not any("removed" in w for w in rep.warnings)
    _assert_foreign_intact(shm_root, items)

    dry = gc_node(make_store(shm_root, stale_temp=1), remove_all=True, dry_run=True)
    assert sorted(dry.removed) == sorted(b.key for b in bs) and dry.leftovers == []
    assert sorted(dry.foreign) == sorted([".ready", ".tmp-deadbeef", ".trash-cafe",
                                          "0123456789abcdef0123456789abcdef", "notes.txt", "step2"])
    res = gc_node(make_store(shm_root, stale_temp=1), remove_all=True)
    assert sorted(res.removed) == sorted(b.key for b in bs) and res.leftovers == []
    _assert_foreign_intact(shm_root, items)
    st = status_node(make_store(shm_root))
    assert sorted(st["foreign"]) == sorted(dry.foreign)


def test_own_leftovers_are_reclaimed_after_a_manifest_reset(shm_root, src):
    """What prng-cache created is still reclaimed when the manifest that
    listed it is lost: its marker proves it is ours. Dry run names it."""
    os.makedirs(shm_root, mode=0o700)
    items = _plant_foreign(shm_root)
    bs = bundles(src, "survivors.npz", "train_history.json")
    stage_node(make_store(shm_root), bs)
    store = make_store(shm_root)
    store.load()
    leftover = os.path.join(shm_root, store.tmp_name())  # a killed stager's
    os.mkdir(leftover)
    os.unlink(os.path.join(shm_root, MANIFEST_NAME))  # manifest reset
    old = time.time() - 3600
    for d, dirs, files in os.walk(shm_root):
        for n in dirs + files:
            os.utime(os.path.join(d, n), (old, old))
    dry = gc_node(make_store(shm_root, stale_temp=60), dry_run=True)
    assert sorted(dry.leftovers) == sorted([b.key for b in bs] + [os.path.basename(leftover)])
    res = gc_node(make_store(shm_root, stale_temp=60))
    assert sorted(res.leftovers) == sorted(dry.leftovers)
    names = set(os.listdir(shm_root))
    assert not names & set(dry.leftovers)
    _assert_foreign_intact(shm_root, items)


def test_unsafe_cache_roots_refused(tmp_path, shm_root, src):
    bs = bundles(src, "train_history.json")
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    os.symlink(target, shm_root)
    with pytest.raises(UnsafeCacheRootError, match="symlink"):
        stage_node(make_store(shm_root), bs)
    assert os.listdir(target) == []
    os.unlink(shm_root)
    os.mkdir(shm_root)
    os.chmod(shm_root, 0o777)
    with pytest.raises(UnsafeCacheRootError, match="0777"):
        stage_node(make_store(shm_root), bs)
    assert os.listdir(shm_root) == []
    if os.geteuid() == 0:
        os.chmod(shm_root, 0o700)
        os.chown(shm_root, 65534, 65534)
        with pytest.raises(UnsafeCacheRootError, match="owned by uid 65534"):
            stage_node(make_store(shm_root), bs)
        assert os.listdir(shm_root) == []


def test_source_changed_after_hashing_is_not_published(shm_root, src):
    bs = bundles(src, "train_history.json", "holdout_history.json")
    (src / "train_history.json").write_text("changed after hashing")
    rep = stage_node(make_store(shm_root), bs)
    assert rep.status == "fallback"
    assert "changed" in rep.skipped[bs[0].path]
    assert bs[0].path not in rep.staged and bs[1].path in rep.staged
    assert not os.path.exists(os.path.join(shm_root, bs[0].key))
    assert not [n for n in os.listdir(shm_root) if n.startswith(".tmp-")]


def test_capacity_max_bytes_falls_back_without_partial_files(shm_root, src):
    bs = bundles(src, "survivors.npz", "train_history.json")
    settings = NodeSettings(mode="cache", cache_root=shm_root, capacity=CapacityPolicy(max_bytes=100_000))
    rep = stage_node(NodeStore(LocalTransport("t"), settings), bs)
    assert rep.status == "fallback" and "capacity.max_bytes" in rep.reason
    assert bs[0].path in rep.skipped and bs[1].path in rep.staged  # the small one fits
    assert not os.path.exists(os.path.join(shm_root, bs[0].key))


def test_stale_lock_and_temporaries_of_a_killed_stager_are_cleaned(shm_root, src):
    bs = bundles(src, "train_history.json")
    killed = make_store(shm_root)
    killed.ensure_root()
    killed.load()
    tmp = killed.tmp_name()  # carries this root's token: provably ours
    os.makedirs(os.path.join(shm_root, ".lock"))
    os.makedirs(os.path.join(shm_root, tmp))
    open(os.path.join(shm_root, tmp, "half"), "w").write("partial")
    old = time.time() - 3600
    for p in (".lock", f"{tmp}/half", tmp):
        os.utime(os.path.join(shm_root, p), (old, old))
    rep = stage_node(make_store(shm_root, stale_lock=5, stale_temp=60), bs)
    assert rep.status == "ok"
    assert sorted(n for n in os.listdir(shm_root) if not n.startswith(".prng-root-")) == \
        sorted([MANIFEST_NAME, bs[0].key])


@pytest.mark.parametrize("skew", [+3600, -3600], ids=["future", "past"])
def test_lock_dated_by_a_wrong_node_clock_cannot_wedge_the_node(shm_root, src, skew):
    """A lock whose mtime is far in the future (the node's clock was wrong
    when a killed process took it) is stale too; so is one far in the past."""
    bs = bundles(src, "train_history.json")
    store = make_store(shm_root, stale_lock=30)
    store.ensure_root()
    os.mkdir(os.path.join(shm_root, ".lock"))
    t = time.time() + skew
    os.utime(os.path.join(shm_root, ".lock"), (t, t))
    with store.lock(timeout=5):  # before the fix: LockTimeout
        assert os.path.isdir(os.path.join(shm_root, ".lock"))
    assert not os.path.exists(os.path.join(shm_root, ".lock"))
    assert not [n for n in os.listdir(shm_root) if n.startswith(".trash-")]
    assert stage_node(make_store(shm_root, stale_lock=30), bs).status == "ok"


def test_a_lock_watched_unchanged_for_stale_lock_is_broken(shm_root, src, monkeypatch):
    """Whatever its date says, a lock we have watched unchanged for
    gc.stale_lock seconds (by our own monotonic clock) was abandoned."""
    store = make_store(shm_root, stale_lock=30)
    store.ensure_root()
    os.mkdir(os.path.join(shm_root, ".lock"))
    t = time.time() + 10  # within stale_lock of now: not judged by age
    os.utime(os.path.join(shm_root, ".lock"), (t, t))
    clock = [1000.0]

    def fake_monotonic():
        clock[0] += 5.0  # every look at the clock: 5 s later
        return clock[0]

    monkeypatch.setattr("prng_cache.locking.time.monotonic", fake_monotonic)
    monkeypatch.setattr("prng_cache.locking.time.sleep", lambda s: None)
    with store.lock(timeout=1000):
        pass
    assert not os.path.exists(os.path.join(shm_root, ".lock"))


def test_live_lock_is_waited_for_not_broken(shm_root, src):
    store = make_store(shm_root, stale_lock=30)
    store.ensure_root()
    os.mkdir(os.path.join(shm_root, ".lock"))
    from prng_cache.errors import LockTimeout

    with pytest.raises(LockTimeout):
        with store.lock(timeout=0.3):
            pass
    assert os.path.isdir(os.path.join(shm_root, ".lock"))


def test_gc_respects_leases_age_and_size(shm_root, src):
    bs = bundles(src, "survivors.npz", "train_history.json", "holdout_history.json")
    store = make_store(shm_root)
    stage_node(store, bs[:1], lease=LeaseRequest("run-1", ttl=3600))
    stage_node(store, bs[1:])
    # everything is fresh: the default max_age keeps it
    assert gc_node(make_store(shm_root)).removed == []
    res = gc_node(make_store(shm_root, max_age=0), dry_run=True)
    assert sorted(res.removed) == sorted(b.key for b in bs[1:]) and res.kept_leased == 1
    assert all(os.path.isdir(os.path.join(shm_root, b.key)) for b in bs)
    res = gc_node(make_store(shm_root), remove_all=True)
    assert sorted(res.removed) == sorted(b.key for b in bs[1:])
    assert os.path.isdir(os.path.join(shm_root, bs[0].key))
    assert [n for n in os.listdir(shm_root) if len(n) == 32] == [bs[0].key]
    assert set(read_manifest(shm_root).entries) == {bs[0].key}


def test_expired_lease_is_collectable(shm_root, src):
    """An expired lease protects nothing; a live one still does (so the test
    fails both when gc ignores leases and when it ignores expiry)."""
    bs = bundles(src, "survivors.npz", "train_history.json")
    at = lambda t: NodeStore(LocalTransport("t"), NodeSettings(mode="cache", cache_root=shm_root,
                                                               capacity=CapacityPolicy()),
                             GcPolicy(), clock=lambda: t)
    stage_node(at(1000.0), [bs[0]], lease=LeaseRequest("crashed-run", ttl=50))
    stage_node(at(1000.0), [bs[1]], lease=LeaseRequest("live-run", ttl=5000))
    res = gc_node(at(1100.0), remove_all=True)
    assert res.removed == [bs[0].key] and res.expired_leases == ["crashed-run"]
    assert res.kept_leased == 1 and os.path.isdir(os.path.join(shm_root, bs[1].key))


def test_gc_size_limit_evicts_least_recently_used(shm_root, src):
    bs = bundles(src, "survivors.npz", "train_history.json", "holdout_history.json")
    for b in bs:
        stage_node(make_store(shm_root), [b])
        time.sleep(0.01)
    settings = NodeSettings(mode="cache", cache_root=shm_root, capacity=CapacityPolicy(max_bytes=bs[2].size + 1))
    res = gc_node(NodeStore(LocalTransport("t"), settings))
    assert res.removed == [bs[0].key, bs[1].key]


def test_verify_detects_and_fixes_corruption(shm_root, src):
    bs = bundles(src, "survivors.npz", "train_history.json")
    stage_node(make_store(shm_root), bs)
    victim = os.path.join(shm_root, bs[1].key, bs[1].name)
    os.chmod(victim, 0o600)
    with open(victim, "r+b") as f:
        f.write(b"X")
    res = verify_node(make_store(shm_root))
    assert list(res.corrupt) == [bs[1].key] and res.checked == 2
    res = verify_node(make_store(shm_root), fix=True)
    assert res.removed == [bs[1].key]
    assert not os.path.exists(os.path.join(shm_root, bs[1].key))
    assert verify_node(make_store(shm_root)).corrupt == {}
    rep = stage_node(make_store(shm_root), bs)
    assert rep.copied_files == 1
    assert open(victim, "rb").read() == open(bs[1].path, "rb").read()


def test_planted_symlink_inside_entry_is_not_served(shm_root, src, tmp_path):
    bs = bundles(src, "train_history.json")
    stage_node(make_store(shm_root), bs)
    ram = os.path.join(shm_root, bs[0].key, bs[0].name)
    evil = tmp_path / "evil.json"
    evil.write_text("evil")
    os.unlink(ram)
    os.symlink(evil, ram)
    assert held_inputs(make_store(shm_root), bs) == {}
    rep = stage_node(make_store(shm_root), bs)
    assert rep.copied_files == 1
    assert not os.path.islink(ram) and open(ram).read() == (src / "train_history.json").read_text()
    assert evil.read_text() == "evil"


def test_planted_hard_link_inside_entry_is_not_served(shm_root, src):
    bs = bundles(src, "train_history.json")
    stage_node(make_store(shm_root), bs)
    ram = os.path.join(shm_root, bs[0].key, bs[0].name)
    os.link(ram, os.path.join(shm_root, "outside-alias"))
    assert held_inputs(make_store(shm_root), bs) == {}
    rep = stage_node(make_store(shm_root), bs)
    assert rep.copied_files == 1 and os.stat(ram).st_nlink == 1


def test_directories_with_wrong_name_format_are_ignored(shm_root, src):
    bs = bundles(src, "train_history.json")
    stage_node(make_store(shm_root), bs)
    os.mkdir(os.path.join(shm_root, "not-a-hash"))
    os.mkdir(os.path.join(shm_root, bs[0].key.upper()))
    snap = make_store(shm_root).load()
    assert set(snap.manifest.entries) == {bs[0].key} and snap.untracked == []
    from prng_cache.maintenance import gc_node as _gc
    _gc(make_store(shm_root), remove_all=True)
    # not ours to delete: names outside the cache's formats are left alone
    assert os.path.isdir(os.path.join(shm_root, "not-a-hash"))


def test_a_breaker_never_removes_a_lock_taken_after_its_judgement(shm_root, src):
    """A judged the lock stale; meanwhile B broke it and took a new one.
    A must leave B's live lock alone (it is removed by rmdir only after a
    second look, never renamed away and put back over a third process's)."""
    store = make_store(shm_root, stale_lock=5)
    store.ensure_root()
    lock = os.path.join(shm_root, ".lock")
    os.mkdir(lock)
    old = time.time() - 3600
    os.utime(lock, (old, old))
    judged = store.t.lstat(lock).mtime
    os.rmdir(lock)
    os.mkdir(lock)  # B's fresh lock
    store.manifest_lock().break_stale(judged)
    assert os.path.isdir(lock)
    assert not os.path.exists(os.path.join(shm_root, ".lock.break"))
    store.manifest_lock().break_stale(store.t.lstat(lock).mtime)  # judged stale itself: removed
    assert not os.path.exists(lock)


@pytest.mark.parametrize("kind", ["file", "non-empty-dir"])
def test_a_lock_that_is_not_ours_is_never_removed(shm_root, src, kind):
    bs = bundles(src, "train_history.json")
    os.makedirs(shm_root, mode=0o700)
    lock = os.path.join(shm_root, ".lock")
    if kind == "file":
        open(lock, "w").write("users' notes")
    else:
        os.mkdir(lock)
        open(os.path.join(lock, "data"), "w").write("users' notes")
    old = time.time() - 3600
    os.utime(lock, (old, old))
    rep = stage_node(make_store(shm_root, stale_lock=5), bs)
    assert rep.status == "error" and "not prng-cache's lock" in rep.reason and rep.staged == {}, rep
    with pytest.raises(UnsafeCacheRootError, match="not prng-cache's lock"):
        gc_node(make_store(shm_root, stale_lock=5, stale_temp=1), remove_all=True)
    if kind == "file":
        assert ".lock" in status_node(make_store(shm_root))["foreign"]
    target = lock if kind == "file" else os.path.join(lock, "data")
    assert open(target).read() == "users' notes"
    assert not [n for n in os.listdir(shm_root) if n.startswith(".trash-")]


def test_an_empty_foreign_key_directory_is_not_replaced(shm_root, src):
    bs = bundles(src, "train_history.json")
    os.makedirs(shm_root, mode=0o700)
    keydir = os.path.join(shm_root, bs[0].key)
    os.mkdir(keydir, 0o755)
    ino = os.stat(keydir).st_ino
    rep = stage_node(make_store(shm_root), bs)
    assert rep.status == "fallback" and "not prng-cache's" in rep.skipped[bs[0].path]
    assert os.stat(keydir).st_ino == ino and os.listdir(keydir) == []


def test_input_replaced_by_a_fifo_between_hashing_and_upload_falls_back(shm_root, src):
    """The uploader opens inputs non-blocking and checks the descriptor: a
    FIFO swapped in after hashing makes that input fall back, never hang."""
    import threading

    bs = bundles(src, "train_history.json", "holdout_history.json")
    os.unlink(src / "train_history.json")
    os.mkfifo(src / "train_history.json")
    out = {}
    th = threading.Thread(target=lambda: out.setdefault("rep", stage_node(make_store(shm_root), bs)), daemon=True)
    th.start()
    th.join(30)  # a hang detector: before the fix this blocked forever in open()
    assert not th.is_alive(), "stage blocked on a FIFO"
    rep = out["rep"]
    assert rep.status == "fallback" and "not a regular file" in rep.skipped[bs[0].path], rep.skipped
    assert bs[1].path in rep.staged
    assert not [n for n in os.listdir(shm_root) if n.startswith((".tmp-", ".trash-"))]


def test_a_root_of_ours_readable_by_others_is_tightened_not_refused(shm_root, src):
    """The users' preload made /dev/shm/prng with `mkdir -p` (0755, theirs):
    accepted, made private, with a note naming the old and new mode; their
    step directory is left exactly as it was."""
    bs = bundles(src, "train_history.json")
    os.makedirs(os.path.join(shm_root, "step2"))
    os.chmod(shm_root, 0o755)
    open(os.path.join(shm_root, "step2", "train_history.json"), "w").write("stale copy")
    st = status_node(make_store(shm_root))  # read-only: reports, changes nothing
    assert os.stat(shm_root).st_mode & 0o777 == 0o755 and "step2" in st["foreign"]
    rep = stage_node(make_store(shm_root), bs)
    assert rep.status == "ok" and rep.staged, rep
    assert any("had mode 0755; tightened to 0700" in w for w in rep.warnings), rep.warnings
    assert os.stat(shm_root).st_mode & 0o777 == 0o700
    assert open(os.path.join(shm_root, "step2", "train_history.json")).read() == "stale copy"


def _at(root, t):
    return NodeStore(LocalTransport("t"), NodeSettings(mode="cache", cache_root=root, capacity=CapacityPolicy()),
                     GcPolicy(), clock=lambda: t)


def _scoped(src):
    """A run-scoped chunk (read by one job) and a shared history file."""
    (src / "scoring_chunks").mkdir()
    (src / "scoring_chunks" / "chunk_0001.json").write_text("[1, 2, 3]" * 100)
    pol = InputsPolicy(run_scoped=("*/scoring_chunks/*",))
    jobs = [{"job_id": "j0", "script": "w.py", "args": [str(src / "scoring_chunks" / "chunk_0001.json"),
                                                          str(src / "train_history.json")], "expected_output": "o0"},
            {"job_id": "j1", "script": "w.py", "args": [str(src / "train_history.json")], "expected_output": "o1"}]
    d = discover(jobs, pol, str(src))
    chunk = d.bundles[str(src / "scoring_chunks" / "chunk_0001.json")]
    hist = d.bundles[str(src / "train_history.json")]
    assert chunk.run_scoped and not hist.run_scoped
    return chunk, hist


def test_run_scoped_inputs_leave_the_node_when_their_run_ends(shm_root, src):
    chunk, hist = _scoped(src)
    rep = stage_node(_at(shm_root, 1000.0), [chunk, hist], lease=LeaseRequest("run-1", ttl=3600))
    assert set(rep.staged) == {chunk.path, hist.path}  # staged though read by one job
    stage_node(_at(shm_root, 1000.0), [chunk], lease=LeaseRequest("run-2", ttl=3600))
    _at(shm_root, 1001.0).release("run-1")
    assert chunk.key in read_manifest(shm_root).entries  # run-2 still holds it
    _at(shm_root, 1002.0).release("run-2")
    m = read_manifest(shm_root)
    assert chunk.key not in m.entries and hist.key in m.entries  # histories kept
    assert not os.path.exists(os.path.join(shm_root, chunk.key))
    assert not [n for n in os.listdir(shm_root) if n.startswith(".trash-")]


def test_run_scoped_copies_of_a_crashed_run_go_at_the_next_stage_or_gc(shm_root, src):
    chunk, hist = _scoped(src)
    stage_node(_at(shm_root, 1000.0), [chunk, hist], lease=LeaseRequest("crashed", ttl=60))
    # still leased: a gc keeps it
    assert gc_node(_at(shm_root, 1010.0)).removed == []
    # the lease expired; a later stage that does not need the chunk removes it
    rep = stage_node(_at(shm_root, 2000.0), [hist], lease=LeaseRequest("next", ttl=60))
    assert any("run-scoped" in w for w in rep.warnings), rep.warnings
    assert chunk.key not in read_manifest(shm_root).entries
    assert not os.path.exists(os.path.join(shm_root, chunk.key))
    # and gc (without --all, long before gc.max_age) removes an orphaned one too
    stage_node(_at(shm_root, 3000.0), [chunk], lease=LeaseRequest("crashed-2", ttl=60))
    res = gc_node(_at(shm_root, 4000.0))
    assert res.removed == [chunk.key] and hist.key in read_manifest(shm_root).entries


def test_a_run_scoped_input_needed_beyond_its_run_is_kept(shm_root, src):
    """The same content later staged as a normal input stops being run-scoped."""
    chunk, hist = _scoped(src)
    stage_node(_at(shm_root, 1000.0), [chunk], lease=LeaseRequest("run-1", ttl=3600))
    (src / "kept.json").write_bytes((src / "scoring_chunks" / "chunk_0001.json").read_bytes())
    plain = bundles(src, "kept.json")[0]  # the same bytes, needed beyond the run
    assert not plain.run_scoped and plain.key == chunk.key
    stage_node(_at(shm_root, 1001.0), [plain])
    _at(shm_root, 1002.0).release("run-1")
    assert chunk.key in read_manifest(shm_root).entries
