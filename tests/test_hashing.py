import os
import sqlite3

import pytest
import xxhash

from prng_cache import hashing
from prng_cache.errors import HashError
from prng_cache.hashing import HashMemo, Hasher, StreamHasher, bundle_key, hash_file

OLD = 1_600_000_000  # an mtime far outside the racy window


def make(path, data: bytes, old: bool = True):
    path.write_bytes(data)
    if old:
        os.utime(path, (OLD, OLD))
    return str(path)


class Counting:
    """Opener that counts opens and bytes read: proves a memo hit reads nothing."""

    def __init__(self):
        self.opens = 0
        self.bytes = 0

    def __call__(self, path):
        self.opens += 1
        return _Wrapped(open(path, "rb", buffering=0), self)


class _Wrapped:
    def __init__(self, f, counter, on_first_read=None):
        self.f, self.counter, self.on_first_read = f, counter, on_first_read

    def readinto(self, buf):
        n = self.f.readinto(buf)
        if self.counter is not None:
            self.counter.bytes += n
        if self.on_first_read is not None:
            self.on_first_read()
            self.on_first_read = None
        return n

    def fileno(self):
        return self.f.fileno()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_hash_matches_xxh3_128_and_streams_into_one_reused_buffer(tmp_path):
    data = os.urandom(hashing.CHUNK * 2 + 123)
    p = make(tmp_path / "big.npz", data)
    buffers = []

    class Recording(_Wrapped):
        def readinto(self, buf):
            buffers.append((id(buf), len(buf)))
            return super().readinto(buf)

    digest = hash_file(p, opener=lambda path: Recording(open(path, "rb", buffering=0), None))
    assert digest == xxhash.xxh3_128(data).hexdigest()
    assert len(digest) == 32 and digest == digest.lower()
    assert len(buffers) == 4  # 3 chunks and the empty read at EOF
    assert set(buffers) == {(buffers[0][0], hashing.CHUNK)}  # never the whole file; no new buffer per chunk


def test_stream_hasher_equals_hash_file(tmp_path):
    p = make(tmp_path / "a.json", b"hello world")
    h = StreamHasher()
    h.update(b"hello ")
    h.update(memoryview(b"world"))
    assert h.hexdigest() == hash_file(p) and StreamHasher is Hasher


def test_changed_content_gives_new_hash(tmp_path):
    p = make(tmp_path / "a.json", b"[1]")
    h1 = hash_file(p)
    make(tmp_path / "a.json", b"[2]")
    assert hash_file(p) != h1


def test_missing_unreadable_and_directory(tmp_path):
    with pytest.raises(HashError, match="No such file"):
        hash_file(str(tmp_path / "nope"))
    with pytest.raises(HashError, match="not a regular file"):
        hash_file(str(tmp_path))

    def failing(path):
        raise PermissionError(13, "Permission denied")

    p = make(tmp_path / "a", b"x")
    with pytest.raises(HashError, match="Permission denied") as e:
        hash_file(p, opener=failing)
    assert e.value.path == p


def test_file_changing_while_hashed_raises(tmp_path):
    p = make(tmp_path / "s.npz", b"a" * 100)

    def append():
        with open(p, "ab") as g:
            g.write(b"more")

    opener = lambda path: _Wrapped(open(path, "rb", buffering=0), None, on_first_read=append)
    with pytest.raises(HashError, match="changed while being hashed"):
        hash_file(p, opener=opener)


def test_file_replaced_between_stat_and_open_raises(tmp_path):
    p = make(tmp_path / "s.npz", b"old")

    def replacing(path):
        make(tmp_path / "new", b"new")
        os.replace(tmp_path / "new", path)
        return open(path, "rb")

    with pytest.raises(HashError, match="changed while being hashed"):
        hash_file(p, opener=replacing)


def test_bundle_key_order_independent_and_sensitive():
    a = bundle_key([("s.npz", "1" * 32), ("cfg.json", "2" * 32)])
    assert a == bundle_key([("cfg.json", "2" * 32), ("s.npz", "1" * 32)])
    assert a != bundle_key([("s.npz", "1" * 32), ("cfg.json", "3" * 32)])
    assert a != bundle_key([("s.npz", "1" * 32), ("other.json", "2" * 32)])
    raw = b"prng-bundle-v1\0cfg.json\0" + b"2" * 32 + b"\ns.npz\0" + b"1" * 32 + b"\n"
    assert a == xxhash.xxh3_128(raw).hexdigest()


def memo_at(tmp_path, **kw):
    # Files in these tests were just written, so their ctime is "now": a
    # zero racy window lets the memo trust them at once (the window itself
    # is tested in test_hashing_faults.py).
    kw.setdefault("racy_window", 0)
    return HashMemo(str(tmp_path / "memo"), **kw)


def rows(memo):
    memo.flush()  # rows are written in batches
    db = sqlite3.connect(memo.path)
    try:
        return db.execute("SELECT size, mtime_ns, ctime_ns, hash FROM hashes_v2").fetchall()
    finally:
        db.close()


def test_memo_hit_does_no_read_and_persists(tmp_path):
    p = make(tmp_path / "s.npz", b"x" * 5000)
    memo = memo_at(tmp_path)
    assert memo.degraded is None
    c = Counting()
    h = hash_file(p, memo, opener=c)
    assert (c.opens, c.bytes) == (1, 5000)
    assert hash_file(p, memo, opener=c) == h
    assert (c.opens, c.bytes) == (1, 5000)

    # a second process (new memo object, same database) also hits
    memo.close()
    hashing.stats.reset()
    assert hash_file(p, memo_at(tmp_path)) == h
    assert (hashing.stats.opens, hashing.stats.bytes) == (0, 0)


def test_memo_hit_uses_fresh_stat(tmp_path):
    p = make(tmp_path / "s.npz", b"aaaa")
    memo = memo_at(tmp_path)
    h1 = hash_file(p, memo)
    # same size, different mtime: the memo must miss
    (tmp_path / "s.npz").write_bytes(b"bbbb")
    os.utime(p, (OLD + 10, OLD + 10))
    c = Counting()
    h2 = hash_file(p, memo, opener=c)
    assert c.opens == 1 and h2 != h1


def test_memo_records_ctime(tmp_path):
    p = make(tmp_path / "s.npz", b"abc")
    memo = memo_at(tmp_path)
    h = hash_file(p, memo)
    st = os.stat(p)
    assert rows(memo) == [(3, st.st_mtime_ns, st.st_ctime_ns, h)]


def test_racy_mtime_is_not_stored_nor_trusted(tmp_path):
    p = make(tmp_path / "s.npz", b"fresh", old=False)  # mtime == now
    memo = HashMemo(str(tmp_path / "memo"), racy_window=2.0)
    c = Counting()
    hash_file(p, memo, opener=c)
    hash_file(p, memo, opener=c)
    assert c.opens == 2  # not remembered
    assert rows(memo) == []

    # an entry stored with a racy timestamp by someone else is not trusted
    st = os.stat(p)
    other = memo_at(tmp_path)
    assert other.store(st, "0" * 32, hashed_at_ns=st.st_ctime_ns) is True
    other.close()
    assert len(rows(memo)) == 1
    assert HashMemo(str(tmp_path / "memo"), racy_window=2.0).lookup(st) is None
    assert memo.store(st, "0" * 32, hashed_at_ns=st.st_ctime_ns + 10**9) is False


def test_memo_unwritable_dir_degrades_with_a_warning(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where the directory should be (works as root too)
    memo = HashMemo(str(blocker / "sub"), racy_window=0)
    assert memo.degraded and "hashes.sqlite" in memo.degraded
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "hashes.sqlite" in caplog.records[0].getMessage()
    p = make(tmp_path / "s.npz", b"data")
    c = Counting()
    h = hash_file(p, memo, opener=c)
    assert h == hash_file(p)
    assert hash_file(p, memo, opener=c) == h and c.opens == 1  # in-memory hit


def test_memo_default_location_reads_env_at_call_time(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    memo = HashMemo()
    assert memo.path == str(tmp_path / "xdg" / "prng-cache" / "hashes.sqlite")
    assert os.path.exists(memo.path)
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert HashMemo().path == str(tmp_path / "home" / ".cache" / "prng-cache" / "hashes.sqlite")


def test_memo_replaces_entry_for_same_inode(tmp_path):
    p = make(tmp_path / "s.npz", b"v1")
    memo = memo_at(tmp_path)
    hash_file(p, memo)
    (tmp_path / "s.npz").write_bytes(b"v2")
    os.utime(p, (OLD + 5, OLD + 5))
    h2 = hash_file(p, memo)
    assert [r[3] for r in rows(memo)] == [h2]


def test_memo_rows_are_batched_and_read_back_before_a_flush(tmp_path):
    paths = [make(tmp_path / f"s{i}.npz", b"x%d" % i) for i in range(3)]
    memo = memo_at(tmp_path)
    hs = [hash_file(p, memo) for p in paths]
    db = sqlite3.connect(memo.path)
    try:  # nothing committed yet (one transaction per batch)...
        assert db.execute("SELECT COUNT(*) FROM hashes_v2").fetchone()[0] == 0
    finally:
        db.close()
    c = Counting()  # ...yet this memo serves them
    assert [hash_file(p, memo, opener=c) for p in paths] == hs and c.opens == 0
    memo.close()  # close writes them
    assert len(rows(memo_at(tmp_path))) == 3


def test_discover_flushes_the_memo(tmp_path):
    from prng_cache.inputs import discover
    from prng_cache.policy import InputsPolicy
    paths = [make(tmp_path / f"d{i}.npz", b"y%d" % i) for i in range(4)]
    memo = memo_at(tmp_path)
    discover([{"job_id": 1, "args": [str(p) for p in paths]}], InputsPolicy(min_jobs=1), str(tmp_path), memo=memo)
    assert len(memo._pending) == 0
    db = sqlite3.connect(memo.path)
    try:
        assert db.execute("SELECT COUNT(*) FROM hashes_v2").fetchone()[0] == 4
    finally:
        db.close()

# ------------------------------------------------------- page-aligned read buffers
@pytest.mark.parametrize("size", [0, 1, hashing.CHUNK - 1, hashing.CHUNK, hashing.CHUNK + 1,
                                  3 * hashing.CHUNK + 5])
def test_digest_equals_xxh3_128_at_chunk_boundaries(tmp_path, size):
    data = os.urandom(size)
    p = make(tmp_path / "f.bin", data)
    hashing._pool.clear()
    assert hash_file(p) == xxhash.xxh3_128(data).hexdigest()
    assert hash_file(p) == xxhash.xxh3_128(data).hexdigest()  # again, with a reused buffer


def test_pooled_buffer_is_page_aligned_and_reused():
    import ctypes
    import mmap

    hashing._pool.clear()
    buf = hashing.borrow_buffer()
    c = (ctypes.c_char * len(buf)).from_buffer(buf)
    assert len(buf) == hashing.CHUNK and ctypes.addressof(c) % mmap.PAGESIZE == 0
    del c
    hashing.return_buffer(buf)
    assert hashing.borrow_buffer() is buf  # reused
    hashing.return_buffer(buf)
    assert len(hashing._pool) == 1


def test_pool_is_bounded_and_threads_never_share_a_buffer():
    import threading

    hashing._pool.clear()
    n = hashing._POOL_MAX + 4
    barrier = threading.Barrier(n)
    held: list = []
    lock = threading.Lock()

    def run():
        buf = hashing.borrow_buffer()
        with lock:
            held.append(buf)
        barrier.wait(timeout=10)  # all threads hold one at once
        hashing.return_buffer(buf)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len({id(b) for b in held}) == n  # never shared
    assert 1 <= len(hashing._pool) <= hashing._POOL_MAX  # the rest were unmapped
    hashing._pool.clear()


def test_without_mmap_a_bytearray_is_used(monkeypatch):
    def no_mmap(*a, **k):
        raise OSError(12, "Cannot allocate memory")

    hashing._pool.clear()
    monkeypatch.setattr(hashing.mmap, "mmap", no_mmap)
    buf = hashing.borrow_buffer()
    assert isinstance(buf, bytearray) and len(buf) == hashing.CHUNK
    hashing.return_buffer(buf)
    hashing._pool.clear()


def test_prefetched_rows_answer_lookups_and_never_outlive_a_change(tmp_path):
    a = make(tmp_path / "a.npz", b"a" * 100)
    b = make(tmp_path / "b.npz", b"b" * 100)
    c = make(tmp_path / "c.npz", b"c" * 100)  # never hashed: prefetched as absent
    memo = memo_at(tmp_path)
    ha, hb = hash_file(a, memo), hash_file(b, memo)
    memo.close()
    memo = memo_at(tmp_path)
    ids = [(os.stat(p).st_dev, os.stat(p).st_ino) for p in (a, b, c)]
    with memo.prefetched(ids):
        assert len(memo._pre) == 3 and memo._pre[ids[2]] is None
        assert memo.lookup(os.stat(a)) == ha
        assert memo.lookup(os.stat(c)) is None
        # a file changed after the prefetch: its stat no longer matches the row
        (tmp_path / "b.npz").write_bytes(b"B" * 100)
        os.utime(b, (OLD + 50, OLD + 50))
        assert memo.lookup(os.stat(b)) is None
        cnt = Counting()
        hb2 = hash_file(b, memo, opener=cnt)
        assert cnt.opens == 1 and hb2 != hb
        # what this object stores meanwhile replaces the prefetched row
        assert memo.lookup(os.stat(b)) == hb2
        hc = hash_file(c, memo)
        assert memo.lookup(os.stat(c)) == hc
        # and what it forgets is forgotten
        assert memo.invalidate(a) and memo.lookup(os.stat(a)) is None
    assert memo._pre == {}
    memo.flush()
    assert memo.lookup(os.stat(b)) == hb2 and memo.lookup(os.stat(a)) is None


def test_prefetch_of_many_files_spans_batches(tmp_path):
    from prng_cache import memo as memo_mod

    paths = [make(tmp_path / f"f{i}.npz", b"%d" % i) for i in range(memo_mod._PREFETCH_BATCH + 7)]
    memo = memo_at(tmp_path)
    digests = [hash_file(p, memo) for p in paths]
    memo.close()
    memo = memo_at(tmp_path)
    with memo.prefetched([(os.stat(p).st_dev, os.stat(p).st_ino) for p in paths]):
        hashing.stats.reset()
        assert [hash_file(p, memo) for p in paths] == digests
        assert hashing.stats.opens == 0
