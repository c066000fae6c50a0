"""Red team 8, change 3: discovery speed-ups (glob sets compiled into one
regex, the memo's rows prefetched in bulk, discovery's stat passed into
hashing) and whole-name keys/tokens. Real files, real SQLite memo, real
processes."""
from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from fnmatch import fnmatchcase

import pytest

from prng_cache.globs import first_match
from prng_cache.hashing import Hasher, HashMemo
from prng_cache.inputs import discover
from prng_cache.model import is_key
from prng_cache.policy import InputsPolicy


def _old_matches(path, patterns):
    base = path.rsplit("/", 1)[-1]
    for pat in patterns:
        if fnmatchcase(path, pat) or fnmatchcase(base, pat):
            return pat
    return None


ALPHABET = ["a", "b", "/", ".", "*", "?", "[", "]", "!", "^", "-", "\\", "(", ")", "|", "$", "\n", "é", "{", "}",
            "+", " ", "Z", "0", "**", "[!a]", "[a-c]", "[]]", "[!]]", "(?s:", "\\Z", "%"]


def _rand(rng, n):
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, n)))


def test_first_match_is_fnmatchcase_per_pattern_random():
    rng = random.Random(8)
    for _ in range(3000):
        pats = tuple(_rand(rng, 6) for _ in range(rng.randint(1, 6)))
        for _ in range(6):
            path = _rand(rng, 10)
            assert first_match(path, pats) == _old_matches(path, pats), (path, pats)
            assert first_match(path, list(pats)) == _old_matches(path, pats), (path, pats)


@pytest.mark.parametrize("path,pats", [
    ("/data/x.npz\n", ("*.npz",)), ("/data/x.npz", ("*.npz\n",)), ("a\nb", ("a*",)), ("a\nb", ("*b",)),
    ("/d/seeds.txt", ("seeds.txt", "*.npz")), ("/d/[x].npz", ("[x].npz",)), ("/d/x.npz", ("[x].npz",)),
    ("/d/a|b", ("a|b",)), ("/d/ab", ("a|b",)), ("/d/a", ("(a)",)), ("/d/(a)", ("(a)",)),
    ("/step2/x.npz", ("/step2/*",)), ("/step2/sub/x.npz", ("/step2/*",)), ("x", ("",)), ("", ("*",)),
    ("/d/.hidden", ("*",)), ("/d/é.npz", ("?.npz",)), ("/d/ab", ("a", "ab", "b")),
])
def test_first_match_edge_cases(path, pats):
    assert first_match(path, pats) == _old_matches(path, pats)


def test_many_patterns_compile_and_match():
    # the union of hundreds of patterns (each translate() may carry groups)
    pats = tuple(f"*part{i}*x[!0-9]?.npz" for i in range(400))
    assert first_match("/d/part399-xa1.npz", pats) == _old_matches("/d/part399-xa1.npz", pats)
    assert first_match("/d/part7-x91.npz", pats) == _old_matches("/d/part7-x91.npz", pats)


def test_policy_sets_decide_as_before(tmp_path):
    pol = InputsPolicy(min_jobs=1, base_dir=str(tmp_path), run_scoped=("*.seed", "/tmp/run*/*"),
                       companions=(("*.idx", ("data.bin", "meta?")), ("a*", ("b",)), ("*", ("c?",))))
    rng = random.Random(3)
    for _ in range(2000):
        p = "/" + _rand(rng, 8)
        assert pol.is_run_scoped(p) == (_old_matches(p, pol.run_scoped) is not None), p
        names = []
        base = p.rsplit("/", 1)[-1]
        for pattern, sibs in pol.companions:
            if fnmatchcase(p, pattern) or fnmatchcase(base, pattern):
                names.extend(sibs)
        assert pol.companions_for(p) == tuple(names), p


def test_whole_names_only():
    k = "ab" * 16
    for bad in (k + "\n", k + "\r", "\n" + k, k[:31] + "\n", k + "\x00", k + " "):
        assert not is_key(bad), repr(bad)
    from prng_cache import manifest as mf, ownership
    tok = "0123456789abcdef"
    assert mf._TOKEN_RE.fullmatch(tok) and not mf._TOKEN_RE.fullmatch(tok + "\n")
    assert mf.GEN_RE.fullmatch(tok + "-01234567") and not mf.GEN_RE.fullmatch(tok + "-01234567\n")
    from prng_cache.transport.base import FileInfo
    import stat as st_
    reg = FileInfo(mode=st_.S_IFREG | 0o600, uid=0, size=0, mtime=0.0, nlink=1)
    got = ownership.root_tokens({ownership.ROOT_TOKEN_PREFIX + tok: reg,
                                 ownership.ROOT_TOKEN_PREFIX + "fedcba9876543210\n": reg})
    assert got == {tok}


# ------------------------------------------------------------------ the memo
def _xxh(data: bytes) -> str:
    h = Hasher()
    h.update(data)
    return h.hexdigest()


def _disc(paths, base, memo):
    pol = InputsPolicy(min_jobs=1, base_dir=str(base))
    jobs = [{"job_id": "j0", "args": [str(p) for p in paths]}]
    d = discover(jobs, pol, str(base), memo=memo)
    return {p: b.key for p, b in d.bundles.items()}


def _truth(paths):
    return {str(p): _xxh(p.read_bytes()) for p in paths}


@pytest.fixture
def aged(tmp_path):
    """Files older than the memo's racy window, and a memo that holds them."""
    d = tmp_path / "in"
    d.mkdir()
    paths = []
    for i in range(1200):  # > one prefetch batch (500)
        p = d / f"x{i:04d}.npz"
        p.write_bytes(os.urandom(64) + b"%d" % i)
        paths.append(p)
    time.sleep(2.3)
    memo_dir = tmp_path / "memo"
    assert _disc(paths, tmp_path, HashMemo(str(memo_dir))) == _truth(paths)
    return paths, memo_dir


def _restore_mtime_rewrite(p, data):
    st = os.stat(p)
    with open(p, "r+b") as f:
        f.write(data)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_memo_never_serves_a_stale_hash(tmp_path, aged):
    paths, memo_dir = aged
    memo = HashMemo(str(memo_dir))
    assert _disc(paths, tmp_path, memo) == _truth(paths)  # from the memo
    # same size, mtime restored
    _restore_mtime_rewrite(paths[1], bytes(reversed(paths[1].read_bytes())))
    # deleted and recreated (the inode is often reused), same size and mtime
    st = os.stat(paths[2])
    data = bytes(reversed(paths[2].read_bytes()))
    os.unlink(paths[2])
    paths[2].write_bytes(data)
    os.utime(paths[2], ns=(st.st_atime_ns, st.st_mtime_ns))
    # swapped: two files' names exchanged (each inode keeps its row)
    tmp = paths[3].with_suffix(".t")
    os.rename(paths[3], tmp)
    os.rename(paths[4], paths[3])
    os.rename(tmp, paths[4])
    for m in (memo, HashMemo(str(memo_dir))):  # the same object (prefetched before) and a fresh one
        assert _disc(paths, tmp_path, m) == _truth(paths)


def test_memo_changed_inside_the_racy_window_between_prefetch_and_lookup(tmp_path, aged, monkeypatch):
    """The rows are read up front; a file is rewritten (same size, mtime
    restored) after the prefetch and before its lookup."""
    paths, memo_dir = aged
    memo = HashMemo(str(memo_dir))
    victim = paths[900]
    orig = HashMemo._prefetch

    def prefetch(self, files):
        orig(self, files)
        _restore_mtime_rewrite(victim, bytes(reversed(victim.read_bytes())))
    monkeypatch.setattr(HashMemo, "_prefetch", prefetch)
    assert _disc(paths, tmp_path, memo) == _truth(paths)


CHILD = textwrap.dedent('''
    import json, sys
    sys.path.insert(0, sys.argv[1])
    from prng_cache.hashing import HashMemo
    from prng_cache.inputs import discover
    from prng_cache.policy import InputsPolicy
    paths = json.load(open(sys.argv[3]))
    for _ in range(3):
        d = discover([{"job_id": "j", "args": paths}], InputsPolicy(min_jobs=1, base_dir="/"), "/",
                     memo=HashMemo(sys.argv[2]))
    print(json.dumps({p: b.key for p, b in d.bundles.items()}))
''')


def test_two_processes_and_threads_share_one_memo(tmp_path, aged):
    import json
    paths, memo_dir = aged
    for p in paths[::50]:  # changed (same size, mtime restored): rows to replace
        _restore_mtime_rewrite(p, bytes(reversed(p.read_bytes())))
    lst = tmp_path / "paths.json"
    lst.write_text(json.dumps([str(p) for p in paths]))
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, repo, str(memo_dir), str(lst)],
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    results = []

    def mine():
        results.append(_disc(paths, tmp_path, HashMemo(str(memo_dir))))
    ths = [threading.Thread(target=mine) for _ in range(2)]
    for t in ths:
        t.start()
    for t in ths:
        t.join(60)
    for p in procs:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0
        results.append(json.loads(out))
    truth = _truth(paths)
    for r in results:
        assert r == truth
    assert _disc(paths, tmp_path, HashMemo(str(memo_dir))) == truth


def test_corrupt_memo_db(tmp_path, aged):
    paths, memo_dir = aged
    db = memo_dir / "hashes.sqlite"
    for junk in (b"SQLite format 3\x00" + os.urandom(4000), os.urandom(8192)):
        with open(db, "r+b") as f:
            f.seek(0)
            f.write(junk)
        assert _disc(paths, tmp_path, HashMemo(str(memo_dir))) == _truth(paths)


def test_locked_memo_db_during_prefetch(tmp_path, aged):
    paths, memo_dir = aged
    _restore_mtime_rewrite(paths[7], bytes(reversed(paths[7].read_bytes())))
    con = sqlite3.connect(str(memo_dir / "hashes.sqlite"), timeout=0.1)
    con.execute("BEGIN EXCLUSIVE")
    try:
        t0 = time.monotonic()
        got = _disc(paths, tmp_path, HashMemo(str(memo_dir), busy_timeout=0.2))
        assert time.monotonic() - t0 < 20
        assert got == _truth(paths)
    finally:
        con.rollback()
        con.close()
    assert _disc(paths, tmp_path, HashMemo(str(memo_dir))) == _truth(paths)
