"""A warm stage of a large root over real sshd nodes (issue 12): the node's
helper lstats only the files recorded for each entry and reuses the root
listing's lstat of each entry directory. Every served file is still checked
(regular, one link, ours, right size): each kind of tampering below is
found and the entry restaged, and jobs get the right bytes. Also: small
inputs are read once for all the nodes of a cold stage, and a key is a
whole name."""
from __future__ import annotations

import os

import pytest

from test_faults import NODES, cluster, make_policy, q, root_of  # noqa: F401

from prng_cache import sending
from prng_cache.cluster import Node
from prng_cache.errors import IntegrityError
from prng_cache.hashing import HashMemo
from prng_cache.model import BundleFile, is_key
from prng_cache.run import plan_run
from prng_cache.transport.ssh import operations

N = operations.HELPER_MIN_LISTING + 22  # the helper's survey, children included


def _jobs(paths):
    return [{"job_id": f"j{i}", "args": [str(p) for p in paths[i::4]]} for i in range(4)]


def _stage(cluster, policy, paths, memo, hosts=NODES[:2]):
    nodes = [Node(h, cluster.user) for h in hosts]
    plan = plan_run(_jobs(paths), nodes, policy, min_jobs=1, memo=HashMemo(str(memo)), connect_early=True)
    return plan.stage()


@pytest.fixture
def many(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    paths = []
    for i in range(N):
        p = d / f"f{i:04d}.npz"
        p.write_bytes(os.urandom(200) + b"%d" % i)
        paths.append(p)
    return paths


def _entry_of(rep, path):
    ram = rep.staged[str(path)]
    return ram.rsplit("/", 1)[0], ram


TAMPER = {
    # the served file replaced by a symlink to a copy of the same bytes
    "symlink": lambda e, f: f"cp {q(f)} {q(e)}/.x && rm -f {q(f)} && ln -s {q(e)}/.x {q(f)}",
    # a second link to the served file: its bytes could change under the job
    "hardlink": lambda e, f: f"ln {q(f)} {q(e)}/../hl-{os.path.basename(f)}",
    "deleted": lambda e, f: f"rm -f {q(f)}",
    # same name, other size
    "truncated": lambda e, f: f"chmod u+w {q(f)} && truncate -s 10 {q(f)}",
    # the entry directory replaced by a file
    "dir-is-file": lambda e, f: f"rm -rf {q(e)} && echo x > {q(e)}",
    # the entry directory replaced by a symlink to a directory with the same file
    "dir-symlink": lambda e, f: f"cp -a {q(e)} {q(e)}.real && rm -rf {q(e)} && ln -s {q(e)}.real {q(e)}",
    # the served file replaced by a directory
    "file-is-dir": lambda e, f: f"rm -f {q(f)} && mkdir {q(f)}",
}


@pytest.mark.parametrize("kind", sorted(TAMPER))
def test_warm_survey_finds_every_tampered_entry_and_restages_it(cluster, tmp_path, many, kind):
    policy = make_policy(cluster, tmp_path)
    reps = _stage(cluster, policy, many, tmp_path / "memo")
    assert all(r.status == "ok" and len(r.staged) == N for r in reps.values()), reps
    node = cluster[NODES[0]]
    victim = many[7]
    entry, ram = _entry_of(reps[NODES[0]], victim)
    node.run(TAMPER[kind](entry, ram))
    reps = _stage(cluster, policy, many, tmp_path / "memo")
    rep = reps[NODES[0]]
    key = entry.rsplit("/", 1)[1]
    if kind in ("dir-is-file", "dir-symlink"):
        # not a real directory, and not provably ours: left untouched, the
        # input not served there (its jobs keep their path), or restaged
        # into a real directory; never served through the link
        if str(victim) in rep.staged:
            assert rep.status == "ok", rep
            assert node.run(f"test -d {q(entry)} -a ! -L {q(entry)}", check=False).returncode == 0
        else:
            assert "not prng-cache's" in rep.skipped[str(victim)], rep
    else:
        # found (a warning names the entry), and restaged; or, when what is
        # in the entry now is not provably ours, the input is left out
        assert any(key[:12] in w for w in rep.warnings), rep.warnings
        assert rep.status == "ok" or set(rep.skipped) == {str(victim)}, rep
    if str(victim) in rep.staged:
        ram = rep.staged[str(victim)]
        got = node.run(f"test -f {q(ram)} -a ! -L {q(ram)} && stat -c %h {q(ram)} && cat {q(ram)} | base64 -w0",
                       check=False)
        assert got.returncode == 0, got
        links, data = got.stdout.split("\n", 1)
        assert links.strip() == "1"
        import base64
        assert base64.b64decode(data.strip()) == victim.read_bytes()
    # the other entries are served untouched, on both nodes
    for h, r in reps.items():
        assert len([p for p in many if str(p) in r.staged]) >= N - 1, (h, r)


def test_cold_stage_reads_each_small_input_once_for_all_nodes(cluster, tmp_path, many, monkeypatch):
    reads = []
    orig = sending.Sending._read_verified

    def counted(self, src):
        reads.append(src.src)
        return orig(self, src)
    monkeypatch.setattr(sending.Sending, "_read_verified", counted)
    policy = make_policy(cluster, tmp_path)
    reps = _stage(cluster, policy, many, tmp_path / "memo", hosts=NODES)
    assert all(r.status == "ok" and len(r.staged) == N for r in reps.values()), reps
    assert sorted(reads) == sorted(str(p) for p in many)  # once each, not once per node
    for h in NODES:
        node = cluster[h]
        ram = reps[h].staged[str(many[3])]
        assert node.run(f"cat {q(ram)} | md5sum").stdout.split()[0] == __import__("hashlib").md5(
            many[3].read_bytes()).hexdigest()


def test_shared_reads_keep_a_bounded_window_and_never_keep_a_failure(tmp_path):
    files = []
    for i in range(5):
        p = tmp_path / f"s{i}"
        p.write_bytes(bytes([i]) * 100)
        files.append(BundleFile(name=p.name, src=str(p), size=100, hash="%032x" % i))
    calls = []

    def read(src):
        calls.append(src.src)
        if src.src.endswith("s4"):
            raise IntegrityError("n", "changed")
        return open(src.src, "rb").read()
    shared = sending.SharedReads(budget=2 * (100 + sending._KEPT_COST) + 50)  # two files' worth
    for f in files[:3]:
        assert shared.get(f, read) == open(f.src, "rb").read()
    assert shared.get(files[2], read) and shared.get(files[1], read)
    assert len(calls) == 3  # the last two were kept
    shared.get(files[0], read)  # evicted (oldest): read again
    assert len(calls) == 4
    for _ in range(2):
        with pytest.raises(IntegrityError):
            shared.get(files[4], read)
    assert calls.count(files[4].src) == 2  # a failure is raised for every node, never kept
    # same path, other content (another stage's hash): never the kept bytes
    other = BundleFile(name="s1", src=files[1].src, size=100, hash="f" * 32)
    shared.get(other, read)
    assert calls[-1] == files[1].src


def test_a_key_is_a_whole_name():
    k = "0123456789abcdef" * 2
    assert is_key(k)
    for bad in (k + "\n", k[:-1], k + "0", k.upper(), "\n" + k, k[:-1] + "g", ""):
        assert not is_key(bad), repr(bad)


def test_shared_reads_one_reader_at_a_time_and_a_failed_read_is_each_nodes_own(tmp_path):
    import threading

    p = tmp_path / "s"
    p.write_bytes(b"x" * 100)
    f = BundleFile(name="s", src=str(p), size=100, hash="a" * 32)
    started, release = threading.Event(), threading.Event()
    calls, results = [], []

    def slow(src, fail):
        calls.append(fail)
        started.set()
        release.wait(5)
        if fail:
            raise IntegrityError("n", "changed")
        return b"x" * 100

    for fail in (False, True):
        shared, calls[:], results[:] = sending.SharedReads(), [], []
        started.clear()
        release.clear()

        def node(first, fail=fail):
            try:
                results.append(shared.get(f, lambda s: slow(s, fail and first)))
            except IntegrityError as e:
                results.append(e)
        threads = [threading.Thread(target=node, args=(True,))]
        threads[0].start()
        assert started.wait(5)
        threads += [threading.Thread(target=node, args=(False,)) for _ in range(2)]
        for t in threads[1:]:
            t.start()
        release.set()
        for t in threads:
            t.join(5)
        if not fail:
            assert calls == [False] and results == [b"x" * 100] * 3  # read once, for all three
        else:
            # the first read failed: the others read for themselves (here: fine)
            assert calls == [True, False, False]
            assert sum(isinstance(r, IntegrityError) for r in results) == 1
