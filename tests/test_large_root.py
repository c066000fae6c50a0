"""A stage of a few inputs in a large root (issue 12): only those entries and
the root's token file are looked at, the manifest's records are checked when
used, and a warm stage without a lease changes nothing on the node. Every
guarantee still holds: nothing stale or planted is served, nothing foreign
touched."""
from __future__ import annotations

import os

import msgpack
import pytest

from prng_cache import manifest
from prng_cache.inputs import discover
from prng_cache.manifest import MANIFEST_NAME, Entries, Manifest, decode
from prng_cache.ownership import PARTIAL_MIN_ENTRIES, ROOT_TOKEN_PREFIX
from prng_cache.policy import CapacityPolicy, GcPolicy, InputsPolicy, NodeSettings
from prng_cache.staging import stage_node
from prng_cache.store import LeaseRequest, NodeStore
from prng_cache.transport.local import LocalTransport

from test_faults import cluster, src  # noqa: F401
from test_store import read_manifest, shm_root  # noqa: F401

N = PARTIAL_MIN_ENTRIES + 44


class Recording(LocalTransport):
    """A local transport that remembers which directories were listed."""

    def __init__(self, host: str):
        super().__init__(host)
        self.listed: list[str] = []

    def listdir_attr(self, path):
        self.listed.append(path)
        return super().listdir_attr(path)


def _store(root: str, t: LocalTransport | None = None) -> NodeStore:
    settings = NodeSettings(mode="cache", cache_root=root, capacity=CapacityPolicy(max_percent=100))
    return NodeStore(t or LocalTransport("local-test"), settings, GcPolicy())


def _bundles(d, names):
    jobs = [{"job_id": "j", "script": "w.py", "args": [str(d / n) for n in names], "expected_output": "o"}]
    found = discover(jobs, InputsPolicy(min_jobs=1), str(d)).bundles
    return [found[str(d / n)] for n in names]


@pytest.fixture(params=["one-file", "sharded"])
def big(request, tmp_path, shm_root, monkeypatch):
    """A root recording N entries, and 4 more inputs staged in it; its
    manifest one file, or sharded (thresholds lowered: 512 entries would
    make the tests slow, the code paths are the same)."""
    if request.param == "sharded":
        monkeypatch.setattr(manifest, "SHARD_MIN", 64)
        monkeypatch.setattr(manifest, "SHARD_FILL", 8)
    d = tmp_path / "many"
    d.mkdir()
    many = [f"m{i:04d}.json" for i in range(N)]
    four = [f"four{i}.npz" for i in range(4)]
    for n in many + four:
        (d / n).write_bytes(os.urandom(64) + n.encode())
    rep = stage_node(_store(shm_root), _bundles(d, many + four))
    assert rep.status == "ok" and len(rep.staged) == N + 4, rep
    if request.param == "sharded" or not request.config.getoption("--shard-min"):
        assert (read_manifest(shm_root).entries.shards is not None) == (request.param == "sharded")
    return d, four


def _record_file(root: str, key: str) -> str:
    """The file holding ``key``'s record: the manifest, or its shard."""
    sh = read_manifest(root).entries.shards
    if sh is None:
        return os.path.join(root, MANIFEST_NAME)
    return os.path.join(root, sh.dirname, sh.filename(sh.index(key)))


def _stage_four(root, d, four, **kw):
    t = Recording("local-test")
    rep = stage_node(_store(root, t), _bundles(d, four), **kw)
    return rep, t.listed


def test_warm_stage_in_a_large_root_does_not_list_the_root(big, shm_root):
    d, four = big
    before = os.stat(os.path.join(shm_root, MANIFEST_NAME))
    rep, listed = _stage_four(shm_root, d, four)
    assert rep.status == "ok" and len(rep.staged) == 4 and rep.copied_files == 0, rep
    assert shm_root not in listed, "the root of a large cache was listed for a stage of 4"
    for p in rep.staged.values():
        assert os.path.isfile(p)
    # nothing changed, no lease: the manifest was neither rewritten nor locked
    after = os.stat(os.path.join(shm_root, MANIFEST_NAME))
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_a_lease_is_still_recorded(big, shm_root):
    d, four = big
    rep, listed = _stage_four(shm_root, d, four, lease=LeaseRequest("run-1", 3600))
    assert rep.status == "ok" and len(rep.staged) == 4 and shm_root not in listed
    m = read_manifest(shm_root)
    assert "run-1" in m.leases and len(m.leases["run-1"].hashes) == 4
    assert len(m.entries) == N + 4  # the other records were written back, none lost


def test_entry_removed_by_hand_is_restaged(big, shm_root):
    d, four = big
    b = _bundles(d, four[:1])[0]
    os.system(f"rm -rf {shm_root}/{b.key}")
    rep, listed = _stage_four(shm_root, d, four)
    assert rep.status == "ok" and len(rep.staged) == 4 and rep.copied_files == 1, rep
    assert open(rep.staged[b.path], "rb").read() == (d / four[0]).read_bytes()
    assert b.key in read_manifest(shm_root).entries


def test_entry_swapped_for_a_symlink_is_never_served_through(big, shm_root, tmp_path):
    d, four = big
    b = _bundles(d, four[:1])[0]
    elsewhere = f"{shm_root}-elsewhere"
    os.rename(f"{shm_root}/{b.key}", elsewhere)
    os.symlink(elsewhere, f"{shm_root}/{b.key}")
    rep, _ = _stage_four(shm_root, d, four)
    served = rep.staged.get(b.path)
    if served is not None:
        assert not os.path.islink(os.path.dirname(served)), "served through a planted symlink"
        assert open(served, "rb").read() == (d / four[0]).read_bytes()
    assert os.path.islink(f"{shm_root}/{b.key}") or served is not None
    assert os.path.isdir(elsewhere) and sorted(os.listdir(elsewhere))  # never deleted through the link
    os.system(f"rm -rf {elsewhere}")


def test_token_file_gone_falls_back_to_a_full_listing(big, shm_root):
    d, four = big
    token = read_manifest(shm_root).root_token
    assert token is not None
    os.unlink(os.path.join(shm_root, ROOT_TOKEN_PREFIX + token))
    rep, listed = _stage_four(shm_root, d, four)
    assert rep.status == "ok" and len(rep.staged) == 4, rep
    assert shm_root in listed


def test_foreign_directory_at_a_wanted_key_is_left_alone(big, shm_root, tmp_path):
    d, four = big
    (d / "new.npz").write_bytes(b"brand new content")
    b = _bundles(d, ["new.npz"])[0]
    os.mkdir(f"{shm_root}/{b.key}")
    with open(f"{shm_root}/{b.key}/new.npz", "wb") as f:
        f.write(b"planted, not the content")
    rep, listed = _stage_four(shm_root, d, four + ["new.npz"])
    assert rep.status == "fallback"  # one input falls back to its original path
    assert b.path not in rep.staged and b.path in rep.skipped, rep
    assert open(f"{shm_root}/{b.key}/new.npz", "rb").read() == b"planted, not the content"
    assert len(rep.staged) == 4


def test_malformed_record_is_distrusted_alone(big, shm_root):
    d, four = big
    bad, good = _bundles(d, four[:2])
    path = _record_file(shm_root, bad.key)
    doc = msgpack.unpackb(open(path, "rb").read(), raw=False)
    doc["entries"][bad.key]["size"] = "large"  # not a size
    with open(path, "wb") as f:
        f.write(msgpack.packb(doc, use_bin_type=True))
    rep, _ = _stage_four(shm_root, d, four)
    assert rep.status == "ok" and len(rep.staged) == 4, rep
    assert any("malformed" in w for w in rep.warnings), rep.warnings
    # the good record was trusted as it was; the bad one was replaced
    assert open(rep.staged[bad.path], "rb").read() == (d / four[0]).read_bytes()
    m = read_manifest(shm_root)
    assert m.entries[bad.key].size == bad.size and good.key in m.entries and len(m.entries) == N + 4


# ------------------------------------------------------------ the manifest
def _doc(n: int) -> dict:
    m = Manifest.new()
    from prng_cache.manifest import Entry
    for i in range(n):
        m.entries[f"{i:032x}"] = Entry(size=i, files={f"f{i}": f"{i + 1:032x}"}, added=1.0, last_used=2.0,
                                       run_scoped=i % 7 == 0)
    return msgpack.unpackb(m.to_bytes(), raw=False)


def test_untouched_records_are_written_back_as_read():
    doc = _doc(50)
    doc["entries"][f"{3:032x}"]["extra"] = "from a newer version"
    m, why = decode(msgpack.packb(doc, use_bin_type=True))
    assert why is None
    m.entries[f"{5:032x}"].last_used = 9.0
    out = msgpack.unpackb(m.to_bytes(), raw=False)["entries"]
    assert out[f"{3:032x}"] == doc["entries"][f"{3:032x}"]
    assert out[f"{5:032x}"]["last_used"] == 9.0 and len(out) == 50


def test_entries_check_only_what_is_used():
    doc = _doc(40)
    doc["entries"][f"{1:032x}"]["files"] = {"../escape": "0" * 32}
    doc["entries"]["not-a-key"] = doc["entries"][f"{2:032x}"]
    m, why = decode(msgpack.packb(doc, use_bin_type=True))
    assert why is None and isinstance(m.entries, Entries)
    assert f"{2:032x}" in m.entries and m.entries.malformed == []
    assert f"{1:032x}" not in m.entries and m.entries.malformed == [f"{1:032x}"]
    assert m.entries.count_hint() == 40  # the bad one dropped, "not-a-key" not yet looked at
    assert sorted(m.entries.run_scoped_keys()) == [f"{i:032x}" for i in range(0, 40, 7)]
    assert len(m.entries) == 39 and "not-a-key" in m.entries.malformed
    assert set(msgpack.unpackb(m.to_bytes(), raw=False)["entries"]) == set(m.entries)


# ------------------------------------------------------------ over real sshd
def test_over_ssh_a_few_inputs_of_a_large_root(cluster, src, monkeypatch):
    from test_batch_faults import _many
    from test_faults import assert_consistent, make_policy, node_bytes, root_of, stage
    from prng_cache.transport.ssh import SSHTransport

    node = cluster["rig-a"]
    d, paths = _many(src, N, 500)
    policy = make_policy(cluster, d, capacity=CapacityPolicy(max_percent=100))
    bs = _bundles(d, [p.name for p in paths])
    assert stage(cluster, policy, bs, hosts=["rig-a"])["rig-a"].staged.__len__() == N
    listed: list[str] = []
    for name in ("listdir_attr", "listdir_attr_large"):
        orig = getattr(SSHTransport, name)
        monkeypatch.setattr(SSHTransport, name, lambda self, path, _o=orig: (listed.append(path), _o(self, path))[1])
    root = root_of(node)
    node.run(f"rm -rf {root}/{bs[1].key}")  # one removed by hand: restaged
    rep = stage(cluster, policy, bs[:3], hosts=["rig-a"], lease=LeaseRequest("run-ssh", 600))["rig-a"]
    assert rep.status == "ok" and len(rep.staged) == 3 and rep.copied_files == 1, rep
    assert root not in listed, listed
    for b in bs[:3]:
        assert node_bytes(node, rep.staged[b.path]) == open(b.path, "rb").read()
    m = assert_consistent(node)
    assert len(m.entries) == N and m.leases["run-ssh"].hashes == {b.key for b in bs[:3]}


def test_release_in_a_large_root_looks_only_at_the_runs_entries(big, shm_root):
    d, four = big
    rep, _ = _stage_four(shm_root, d, four, lease=LeaseRequest("run-2", 3600))
    assert rep.status == "ok"
    t = Recording("local-test")
    assert _store(shm_root, t).release("run-2") is True
    assert shm_root not in t.listed
    m = read_manifest(shm_root)
    assert "run-2" not in m.leases and len(m.entries) == N + 4


# ------------------------------------------------------------ sharded manifest
class Counting(Recording):
    """Also remembers which files were read and which names were renamed to."""

    def __init__(self, host: str):
        super().__init__(host)
        self.reads: list[str] = []
        self.renamed_to: list[str] = []

    def read_bytes(self, path, max_bytes=64 << 20):
        self.reads.append(path)
        return super().read_bytes(path, max_bytes)

    def rename(self, src, dst):
        self.renamed_to.append(dst)
        return super().rename(src, dst)


@pytest.fixture
def sharded(monkeypatch):
    monkeypatch.setattr(manifest, "SHARD_MIN", 64)
    monkeypatch.setattr(manifest, "SHARD_FILL", 8)


def _sharded_root(d, root, n=N):
    many = [f"m{i:04d}.json" for i in range(n)]
    for name in many:
        (d / name).write_bytes(os.urandom(32) + name.encode())
    rep = stage_node(_store(root), _bundles(d, many))
    assert rep.status == "ok" and len(rep.staged) == n
    m = read_manifest(root)
    assert m.entries.shards is not None and m.entries.shards.n >= 32
    return many, m


def test_a_sharded_stage_reads_and_writes_only_the_shards_it_needs(sharded, tmp_path, shm_root):
    d = tmp_path / "s"
    d.mkdir()
    _, m = _sharded_root(d, shm_root)
    (d / "new.npz").write_bytes(b"new content")
    b = _bundles(d, ["new.npz"])[0]
    t = Counting("local-test")
    rep = stage_node(_store(shm_root, t), [b])
    assert rep.status == "ok" and rep.copied_files == 1, rep
    sh = m.entries.shards
    shard = os.path.join(shm_root, sh.dirname, sh.filename(sh.index(b.key)))
    assert shm_root not in t.listed
    # the header and this key's shard (the commit reads the header again)
    assert set(t.reads) == {os.path.join(shm_root, MANIFEST_NAME), shard}, t.reads
    assert set(t.renamed_to) - {os.path.join(shm_root, b.key)} == {os.path.join(shm_root, MANIFEST_NAME), shard}
    after = read_manifest(shm_root)
    assert len(after.entries) == N + 1 and after.entries[b.key].size == b.size
    assert after.entries.count_hint() == N + 1 and after.serial == m.serial + 1


def test_a_garbled_shard_distrusts_its_records_only(sharded, tmp_path, shm_root):
    d = tmp_path / "s"
    d.mkdir()
    many, m = _sharded_root(d, shm_root)
    bs = _bundles(d, many[:4])
    sh = m.entries.shards
    victim = sh.index(bs[0].key)
    lost = [k for k in m.entries if sh.index(k) == victim and k not in {b.key for b in bs}]  # read before
    path = os.path.join(shm_root, sh.dirname, sh.filename(victim))
    with open(path, "wb") as f:
        f.write(b"\x93garbage")
    rep = stage_node(_store(shm_root), bs)
    assert rep.status == "ok" and len(rep.staged) == 4, rep
    assert any("shard" in w for w in rep.warnings), rep.warnings
    for b in bs:
        assert open(rep.staged[b.path], "rb").read() == open(b.path, "rb").read()
    after = read_manifest(shm_root)
    assert lost and all(k not in after.entries for k in lost)  # never served again on the garbled shard's word
    assert len(after.entries) == N - len(lost)
    # their directories are ours (marker): reclaimed once stale, never served meanwhile
    t = LocalTransport("local-test")
    st = _store(shm_root, t)
    st.ensure_root()
    survey = st.survey(st.load())
    assert set(lost) <= set(survey.fresh) | set(survey.reclaimable) and not survey.foreign


def test_shards_of_another_generation_are_reclaimed_the_current_never(sharded, tmp_path, shm_root):
    from prng_cache.maintenance import gc_node, status_node

    d = tmp_path / "s"
    d.mkdir()
    _, m = _sharded_root(d, shm_root)
    old = os.path.join(shm_root, f".manifest-{m.root_token}-deadbeef")
    os.mkdir(old, 0o700)
    open(os.path.join(old, "0000.msgpack"), "wb").close()
    os.utime(old, (1, 1))
    os.utime(os.path.join(old, "0000.msgpack"), (1, 1))
    alien = os.path.join(shm_root, ".manifest-0000000000000000-deadbeef")  # not this root's token
    os.mkdir(alien)
    st = _store(shm_root)
    assert status_node(st)["foreign"] == [os.path.basename(alien)]
    res = gc_node(_store(shm_root))
    assert os.path.basename(old) in res.leftovers and not os.path.exists(old)
    assert os.path.isdir(alien) and os.path.isdir(os.path.join(shm_root, m.entries.shards.dirname))
    assert len(read_manifest(shm_root).entries) == N


def test_gc_of_most_entries_goes_back_to_one_file(sharded, tmp_path, shm_root):
    from prng_cache.maintenance import gc_node

    d = tmp_path / "s"
    d.mkdir()
    _, m = _sharded_root(d, shm_root)
    res = gc_node(_store(shm_root), remove_all=True)
    assert len(res.removed) == N
    after = read_manifest(shm_root)
    assert after.entries.shards is None and len(after.entries) == 0
    assert not os.path.exists(os.path.join(shm_root, m.entries.shards.dirname))
    assert not [n for n in os.listdir(shm_root) if n.startswith(".manifest-")]
