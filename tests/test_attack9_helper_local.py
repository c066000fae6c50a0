"""Red team 9: the node helper's throttled put marks and its entry listing
(names that are not names), run locally as tests/test_node_helper.py does
(the same source the nodes get, over pipes)."""
from __future__ import annotations

import json
import os
import threading
import time
import zlib

from test_node_helper import _local_helper
from prng_cache.transport.ssh import helper


def _big_put(tmp_path, n):
    items, data = [], []
    for i in range(n):
        body = b"x%d" % i
        items.append({"tmp": helper._h(str(tmp_path / f".tmp-{i}")), "dst": helper._h(str(tmp_path / f"k{i}")),
                      "mode": 0o700, "files": [[helper._h("f"), len(body), 0o400, zlib.crc32(body)]]})
        data.append(body)
    return json.dumps({"op": "put", "items": items}).encode() + b"\n" + b"".join(data)


def test_abandoned_mid_put_stops_soon_and_leaves_nothing_partial(tmp_path):
    """A put of 20000 tiny files; the coordinator reads the first progress
    mark, then gives up (its end of the channel closes). The helper may go
    on until its next flush (at most MARK_EVERY later): it must then stop,
    long before the batch is done, and every <key> it published must be
    complete (no partial file under a key, no half-built key)."""
    n = 20000
    p = _local_helper(tmp_path)
    req = _big_put(tmp_path, n)
    def feed():
        try:
            p.stdin.write(req)
            p.stdin.flush()
        except BrokenPipeError:
            pass  # the helper stopped reading: what this test wants
    w = threading.Thread(target=feed, daemon=True)
    w.start()
    assert p.stdout.read(1) == b"."
    p.stdout.close()  # as sshd closes our end when the channel closes
    t0 = time.monotonic()
    try:
        p.wait(20)
    finally:
        if p.poll() is None:
            p.kill()
    took = time.monotonic() - t0
    keys = [x for x in os.listdir(tmp_path) if x.startswith("k")]
    tmps = [x for x in os.listdir(tmp_path) if x.startswith(".tmp-")]
    print(f"abandoned helper exited {took:.2f}s after the close; {len(keys)} keys published after it, "
          f"{len(tmps)} tmps left")
    assert len(keys) < n // 2, "the abandoned helper went on with the whole batch"
    for k in keys:
        assert (tmp_path / k / "f").read_bytes() == b"x%s" % k[1:].encode(), k
    assert took < 10


def test_survey_children_that_are_not_names_are_skipped(tmp_path):
    """Records of an entry naming '..', '.', '', 'a/b' or '../x' (a
    tampered manifest): the helper must never lstat outside the entry."""
    root = tmp_path / "root"
    (root / "e").mkdir(parents=True)
    (root / "e" / "ok").write_bytes(b"1")
    (root / "x").write_bytes(b"outside")
    (root / "e" / "sub").mkdir()
    (root / "e" / "sub" / "deep").write_bytes(b"2")
    kids = ["ok", "..", ".", "", "sub/deep", "../x", "/etc/passwd"]
    p = _local_helper(tmp_path)
    req = {"op": "survey", "dir": helper._h(str(root)), "names": [helper._h("e")],
           "children": [[helper._h(c) for c in kids]]}
    p.stdin.write(json.dumps(req).encode() + b"\n")
    p.stdin.flush()
    ans = json.loads(p.stdout.readline())
    p.stdin.close()
    assert p.wait(10) == 0
    (name, info, children), = ans["items"]
    got = sorted(helper._s(c[0]) for c in children)
    assert got == ["ok"], got
