"""Attack: the batched hash memo (kill before flush, edit after discover,
two processes sharing the memo)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

from prng_cache.hashing import Hasher, HashMemo, hash_file

CHILD = textwrap.dedent('''
    import os, sys, time
    from prng_cache.hashing import HashMemo, hash_file
    memo = HashMemo()
    files = sys.argv[1:]
    for i, f in enumerate(files):
        hash_file(f, memo)
        if i == len(files) - 5:
            print("ready", flush=True)
            time.sleep(60)  # killed here: rows pending, never flushed
''')


def test_kill_before_flush_then_edit(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    d = tmp_path / "f"
    d.mkdir()
    files = []
    for i in range(1300):
        p = d / f"x{i}.npz"
        p.write_bytes(os.urandom(64))
        files.append(str(p))
    time.sleep(2.2)  # out of the racy window
    p = subprocess.Popen([sys.executable, "-c", CHILD, *files], stdout=subprocess.PIPE, text=True,
                         env=dict(os.environ))
    assert p.stdout.readline().strip() == "ready"
    p.kill()
    p.wait()
    # edit two files: one whose row was flushed (first 1000), one pending
    for f in (files[10], files[1200]):
        st = os.stat(f)
        with open(f, "r+b") as fh:
            fh.write(os.urandom(64))
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime
    time.sleep(2.2)
    # a second process (and a concurrent third) share the memo
    memo, memo2 = HashMemo(), HashMemo()
    for f in files:
        want = Hasher(open(f, "rb").read()).hexdigest()
        assert hash_file(f, memo) == want, f
        assert hash_file(f, memo2) == want, f
    memo.close()
    memo2.close()
