"""Hashing under the faults users hit: restored mtimes, tar extraction, FIFOs,
a corrupt or locked memo database. Real files, real processes throughout."""

import logging
import os
import sqlite3
import subprocess
import sys
import tarfile
import threading

import pytest
import xxhash

from prng_cache import hashing
from prng_cache import memo as memo_module
from prng_cache.errors import HashError
from prng_cache.hashing import HashMemo, hash_file

OLD = 1_600_000_000  # an mtime far outside the racy window
V1 = b'{"survivors": [1, 2, 3]}'
V2 = b'{"survivors": [7, 8, 9]}'  # same size: only the content differs
HANG = 30  # seconds; a hang detector only, the calls under test take milliseconds


def xxh(data):
    return xxhash.xxh3_128(data).hexdigest()


def write_old(path, data):
    with open(path, "wb") as f:
        f.write(data)
    os.utime(path, (OLD, OLD))


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records
            if r.name in ("prng_cache.hashing", "prng_cache.memo") and r.levelno >= logging.WARNING]


# ------------------------------------------------------- stale content (1)
# Each edit leaves size and mtime as they were (and usually the inode):
# only ctime tells the versions apart.

def edit_in_place_restore_mtime(p, d):
    with open(p, "r+b") as f:
        f.write(V2)
    os.utime(p, (OLD, OLD))


def edit_then_touch_d(p, d):
    with open(p, "r+b") as f:
        f.write(V2)
    subprocess.run(["touch", "-d", f"@{OLD}", p], check=True)


def cp_p(p, d):
    write_old(d / "incoming.json", V2)
    subprocess.run(["cp", "-p", str(d / "incoming.json"), p], check=True)


def _tar_of(d, data, name):
    src = d / "src"
    src.mkdir(exist_ok=True)
    write_old(src / "data.json", data)
    with tarfile.open(d / name, "w") as t:
        t.add(src / "data.json", arcname="data.json")
    return d / name


def tarfile_extract_over(p, d):
    # Python's tarfile rewrites an existing file in place: same inode
    trusted = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
    with tarfile.open(_tar_of(d, V2, "v2.tar")) as t:
        t.extractall(os.path.dirname(p), **trusted)


def rm_then_tar_x(p, d):
    archive = _tar_of(d, V2, "v2.tar")
    os.remove(p)
    subprocess.run(["tar", "-xf", str(archive), "-C", os.path.dirname(p)], check=True)


EDITS = [edit_in_place_restore_mtime, edit_then_touch_d, cp_p, tarfile_extract_over,
         rm_then_tar_x]


def ensure_new_ctime(p, old_ctime):
    # With coarse kernel timestamps the edit can land in the hash's own tick
    # (ctime unchanged): that racy case is what the window is for, tested
    # below; here re-apply the same mtime until the tick has passed.
    while os.stat(p).st_ctime_ns == old_ctime:
        os.utime(p, (OLD, OLD))


@pytest.mark.parametrize("edit", EDITS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("window", [0, 2.0], ids=["keyed-on-ctime", "default-racy-window"])
def test_same_size_same_mtime_new_content_is_never_served_stale(tmp_path, edit, window):
    d = tmp_path
    data = d / "data"
    data.mkdir()
    p = str(data / "data.json")
    write_old(p, V1)
    memo = HashMemo(str(d / "memo"), racy_window=window)
    assert hash_file(p, memo) == xxh(V1)
    before = os.stat(p)

    edit(p, d)
    ensure_new_ctime(p, before.st_ctime_ns)
    after = os.stat(p)
    # the scenario is what users do: the stat the old memo trusted is unchanged
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    if edit is not rm_then_tar_x:
        assert after.st_ino == before.st_ino

    # the next coordinator run (a new memo object on the same database)
    assert hash_file(p, HashMemo(str(d / "memo"), racy_window=window)) == xxh(V2)
    assert hash_file(p, memo) == xxh(V2)


def test_no_hash_is_stored_or_served_for_a_file_whose_ctime_is_within_the_window(tmp_path):
    p = str(tmp_path / "s.json")
    write_old(p, V1)  # mtime old, ctime now: a restored mtime proves nothing
    st = os.stat(p)
    memo = HashMemo(str(tmp_path / "memo"))  # default 2 s window
    hashing.stats.reset()
    assert hash_file(p, memo) == hash_file(p, memo) == xxh(V1)
    assert hashing.stats.opens == 2  # hashed both times, never memoised

    # even an entry that claims the file was old when hashed (a process
    # with a skewed clock, a clock step) is not served while ctime is young
    assert memo.store(st, "0" * 32, hashed_at_ns=st.st_ctime_ns + 10 * 10**9) is False
    trusting = HashMemo(str(tmp_path / "memo"), racy_window=0)
    assert trusting.store(st, "0" * 32, hashed_at_ns=st.st_ctime_ns + 10 * 10**9) is True
    assert trusting.lookup(st) == "0" * 32  # the entry is really there...
    assert memo.lookup(st) is None  # ...and not served
    assert hash_file(p, memo) == xxh(V1)


def test_a_read_that_disagrees_drops_the_entry(tmp_path):
    p = str(tmp_path / "s.json")
    write_old(p, V1)
    trusting = HashMemo(str(tmp_path / "memo"), racy_window=0)
    hash_file(p, trusting)
    c1 = os.stat(p).st_ctime_ns
    edit_in_place_restore_mtime(p, tmp_path)
    ensure_new_ctime(p, c1)
    memo = HashMemo(str(tmp_path / "memo"))
    assert hash_file(p, memo) == xxh(V2)  # too young to store...
    db = sqlite3.connect(memo.path)
    assert db.execute("SELECT COUNT(*) FROM hashes_v2").fetchone()[0] == 0  # ...and v1's entry is gone


def test_invalidate_by_path_or_stat_forces_a_reread(tmp_path):
    p = str(tmp_path / "s.json")
    write_old(p, V1)
    memo = HashMemo(str(tmp_path / "memo"), racy_window=0)
    st = os.stat(p)
    # a memo entry that disagrees with the bytes, as the uploader finds it
    assert memo.store(st, "0" * 32, hashed_at_ns=st.st_ctime_ns) is True
    assert hash_file(p, memo) == "0" * 32
    assert memo.invalidate(st) is True
    hashing.stats.reset()
    assert hash_file(p, memo) == xxh(V1) and hashing.stats.opens == 1
    assert hash_file(p, memo) == xxh(V1) and hashing.stats.opens == 1  # re-memoised

    assert memo.invalidate(p) is True
    assert memo.invalidate(p) is False  # nothing left to forget
    assert memo.invalidate(str(tmp_path / "gone.json")) is False
    hash_file(p, memo)
    assert hashing.stats.opens == 2


def test_entries_of_the_old_memo_format_are_never_served(tmp_path):
    # An older prng-cache keyed the memo without ctime; its entries could be stale.
    p = str(tmp_path / "s.json")
    write_old(p, V2)
    st = os.stat(p)
    (tmp_path / "memo").mkdir()
    db = sqlite3.connect(tmp_path / "memo" / "hashes.sqlite")
    db.execute("CREATE TABLE hashes (dev INTEGER, ino INTEGER, size INTEGER, mtime_ns INTEGER,"
               " hash TEXT NOT NULL, hashed_at_ns INTEGER NOT NULL, PRIMARY KEY (dev, ino))")
    db.execute("INSERT INTO hashes VALUES (?,?,?,?,?,?)",
               (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, xxh(V1), OLD * 10**9 + 10**10))
    db.commit()
    db.close()
    memo = HashMemo(str(tmp_path / "memo"), racy_window=0)
    assert memo.degraded is None
    assert hash_file(p, memo) == xxh(V2)
    db = sqlite3.connect(memo.path)
    assert db.execute("SELECT name FROM sqlite_master WHERE name='hashes'").fetchall() == []


# ------------------------------------------------------ non-regular files (2)

def run_with_hang_detector(fn, fifo):
    """Run fn() in a thread; return what it returned or raised.

    If it is still blocked (in open() of the FIFO) after HANG seconds, open
    the FIFO's write end to release it and fail."""
    out = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(HANG)
    if t.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # unblock the reader
        t.join(HANG)
        pytest.fail(f"blocked opening the FIFO {fifo}")
    return out


class SwapForFifoOnLookup(HashMemo):
    """The input is replaced by a FIFO after it was stat'ed, before it is
    opened: the memo lookup runs exactly there, so it performs the swap."""

    def __init__(self, directory, victim):
        super().__init__(directory)
        self.victim = victim

    def lookup(self, st):
        os.remove(self.victim)
        os.mkfifo(self.victim)
        return super().lookup(st)


def test_input_replaced_by_fifo_before_it_is_read_raises_instead_of_hanging(tmp_path):
    p = str(tmp_path / "s.json")
    write_old(p, V1)
    memo = SwapForFifoOnLookup(str(tmp_path / "memo"), p)
    out = run_with_hang_detector(lambda: hash_file(p, memo), p)
    assert isinstance(out.get("error"), HashError), out
    assert "not a regular file (FIFO)" in str(out["error"]) and out["error"].path == p


def test_input_replaced_by_fifo_after_hashing_open_regular_raises(tmp_path):
    # what the uploader opens with, between hashing and upload
    p = str(tmp_path / "s.json")
    write_old(p, V1)
    hash_file(p)
    os.remove(p)
    os.mkfifo(p)
    out = run_with_hang_detector(lambda: hashing.open_regular(p), p)
    assert isinstance(out.get("error"), HashError), out
    assert "not a regular file (FIFO)" in str(out["error"])


def test_fifo_swapped_in_between_check_and_open_is_caught_on_the_descriptor(tmp_path, monkeypatch):
    p = str(tmp_path / "s.json")
    write_old(p, V1)
    real_stat = os.stat
    swapped = []

    def stat_then_swap(path, *a, **kw):
        # fault injection: the race cannot be timed for real in a test
        st = real_stat(path, *a, **kw)
        if os.fspath(path) == p and not swapped:
            swapped.append(True)
            os.remove(p)
            os.mkfifo(p)
        return st

    monkeypatch.setattr(hashing.os, "stat", stat_then_swap)
    out = run_with_hang_detector(lambda: hashing.open_regular(p), p)
    monkeypatch.undo()
    assert swapped and isinstance(out.get("error"), HashError), out
    assert "not a regular file (FIFO)" in str(out["error"])


def test_non_regular_inputs_raise_and_symlinks_to_regular_files_work(tmp_path):
    p = str(tmp_path / "s.json")
    write_old(p, V1)
    os.symlink(p, tmp_path / "link.json")
    assert hash_file(str(tmp_path / "link.json")) == xxh(V1)  # the users' own symlinks
    f, st = hashing.open_regular(str(tmp_path / "link.json"))
    with f:
        assert f.read() == V1 and st.st_ino == os.stat(p).st_ino
        assert os.get_blocking(f.fileno())  # O_NONBLOCK cleared for the reader

    os.mkfifo(tmp_path / "fifo")
    os.symlink(tmp_path / "fifo", tmp_path / "link-to-fifo")
    cases = {"fifo": "FIFO", "link-to-fifo": "FIFO", ".": "directory"}
    for name, kind in cases.items():
        for fn in (hash_file, hashing.open_regular):
            with pytest.raises(HashError, match=rf"not a regular file \({kind}\)"):
                fn(str(tmp_path / name))
    with pytest.raises(HashError, match=r"not a regular file \(character device\)"):
        hashing.open_regular("/dev/null")
    with pytest.raises(HashError, match="No such file"):
        hashing.open_regular(str(tmp_path / "missing"))


def test_file_identity_includes_ctime(tmp_path):
    p = str(tmp_path / "s.json")
    write_old(p, V1)
    st = os.stat(p)
    assert hashing.file_identity(st) == (st.st_dev, st.st_ino, st.st_size,
                                         st.st_mtime_ns, st.st_ctime_ns)
    edit_in_place_restore_mtime(p, tmp_path)
    ensure_new_ctime(p, st.st_ctime_ns)
    assert hashing.file_identity(os.stat(p)) != hashing.file_identity(st)


# ------------------------------------------------------ corrupt memo DB (3)

def test_garbage_memo_db_is_moved_aside_and_rebuilt_with_one_warning(tmp_path, caplog):
    d = tmp_path / "memo"
    d.mkdir()
    garbage = b"this is not a database" * 100
    (d / "hashes.sqlite").write_bytes(garbage)
    p = str(tmp_path / "s.json")
    write_old(p, V1)

    memo = HashMemo(str(d), racy_window=0)
    assert memo.degraded is None
    [w] = warnings_of(caplog)
    assert "hashes.sqlite" in w and "corrupt" in w
    assert (d / "hashes.sqlite.corrupt").read_bytes() == garbage  # kept for inspection
    assert hash_file(p, memo) == xxh(V1)
    memo.close()

    caplog.clear()
    hashing.stats.reset()
    assert hash_file(p, HashMemo(str(d), racy_window=0)) == xxh(V1)  # the rebuilt memo persists
    assert hashing.stats.opens == 0 and warnings_of(caplog) == []


def test_memo_db_with_corrupt_pages_is_rebuilt_when_a_lookup_hits_them(tmp_path, caplog):
    d = tmp_path / "memo"
    memo = HashMemo(str(d), racy_window=0)
    db = sqlite3.connect(memo.path)
    with db:  # enough rows that the table spans many pages
        db.executemany("INSERT INTO hashes_v2 VALUES (?,?,?,?,?,?,?)",
                       [(1, i, 1, 1, 1, "0" * 32, 1) for i in range(5000)])
    db.close()
    memo.close()  # the last connection checkpoints the WAL into the file
    size = os.path.getsize(memo.path)
    with open(memo.path, "r+b") as f:
        f.seek(4096)  # keep page 1 (the schema): opening works, lookups do not
        f.write(os.urandom(size - 4096))

    p = str(tmp_path / "s.json")
    write_old(p, V1)
    memo = HashMemo(str(d), racy_window=0)
    assert memo.degraded is None and warnings_of(caplog) == []
    assert hash_file(p, memo) == xxh(V1)
    [w] = warnings_of(caplog)
    assert "hashes.sqlite" in w and "corrupt" in w
    assert os.path.exists(str(d / "hashes.sqlite.corrupt"))
    hashing.stats.reset()
    assert hash_file(p, memo) == xxh(V1) and hashing.stats.opens == 0  # stored in the new file
    assert memo.degraded is None


# ------------------------------------------------------- locked memo DB (4)

HOLDER = r"""
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
if sys.argv[2] == "exclusive-locking-mode":
    db.execute("PRAGMA locking_mode=EXCLUSIVE")  # blocks readers too
db.execute("BEGIN EXCLUSIVE")
db.execute("PRAGMA user_version = 7")  # a write, never committed
print("locked", flush=True)
sys.stdin.read()  # hold the lock until the test closes our stdin
"""


@pytest.mark.parametrize("how", ["writer-holds-lock", "exclusive-locking-mode"])
def test_locked_memo_db_is_given_up_after_the_busy_timeout_with_a_warning(tmp_path, caplog, how):
    d = str(tmp_path / "memo")
    memo = HashMemo(d, racy_window=0)
    if how == "exclusive-locking-mode":
        memo.close()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, memo.path, how],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        if how == "exclusive-locking-mode":
            memo = HashMemo(d, racy_window=0)  # a coordinator starting meanwhile
        p, q = str(tmp_path / "a.json"), str(tmp_path / "b.json")
        write_old(p, V1)
        write_old(q, V2)
        hashing.stats.reset()
        assert hash_file(p, memo) == xxh(V1)
        assert hash_file(q, memo) == xxh(V2)
        memo.flush()  # rows are written in batches: here the lock is met
        assert hash_file(p, memo) == xxh(V1)  # the in-memory memo still saves reads
        assert hashing.stats.opens == 2
    finally:
        holder.stdin.close()
        holder.wait()
    [w] = warnings_of(caplog)  # once, not once per file
    assert "hashes.sqlite" in w and "locked" in w
    assert "locked" in memo.degraded
    # the wait is SQLite's busy timeout: about 1 s, not the 10 s it was
    memo = HashMemo(d)
    assert memo.busy_timeout == memo_module.BUSY_TIMEOUT == 1.0
    assert memo._db.execute("PRAGMA busy_timeout").fetchone()[0] == 1000
