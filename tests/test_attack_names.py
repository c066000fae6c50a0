"""Attack: hostile file names through the node helper's put/list path."""
from __future__ import annotations

import os

from test_faults import cluster, src, make_policy, stage, node_bytes, node_names, root_of, assert_consistent, jobs_for  # noqa: F401
from prng_cache.inputs import discover
from test_node_helper import _spy

HOSTILE = [
    "new\nline.bin", "quote'single.bin", 'quote"double.bin', "$(touch PWNED_DOLLAR).bin",
    "`touch PWNED_TICK`.bin", "-rf.bin", "--help.bin", "a" * 251 + ".bin", "b" * 255,
    "semi;touch PWNED_SEMI.bin", "pipe|x.bin", "back\\slash.bin", "tab\tname.bin",
    '{"op":"put","items":[]}', '{"op":"ls","dir":"2f"}\n{"op":"x"}',
    "\x01ctrl\x7f.bin", "sp ace .bin", " leading-space.bin", "*glob?[x].bin", "%s%n.bin",
    "uni-é-中文.bin", "~tilde.bin", "..dots.bin", "a..b", ":colon.bin",
]
NONUTF8 = [b"latin1-\xe9\xff.bin", b"\x80\x81\xfe.bin", b"half-\xed\xa0\x80.bin"]


def test_hostile_names_via_helper(cluster, src, monkeypatch):
    node = cluster["rig-a"]
    d = src / "hostile"
    d.mkdir()
    paths = []
    for i, n in enumerate(HOSTILE):
        p = d / n
        p.write_bytes(os.urandom(1000 + i) + n.encode("utf-8", "surrogateescape"))
        paths.append(p)
    for i, n in enumerate(NONUTF8):
        p = d / os.fsdecode(n)
        p.write_bytes(os.urandom(2000 + i))
        paths.append(p)
    for i in range(40):  # make the batch >= HELPER_MIN
        p = d / f"filler{i}.bin"
        p.write_bytes(os.urandom(500 + i))
        paths.append(p)
    policy = make_policy(cluster, d)
    disc = discover(jobs_for(paths), policy.inputs, str(d))
    bs = list(disc.bundles.values())
    calls = _spy(monkeypatch)
    rep = stage(cluster, policy, bs, hosts=["rig-a"])["rig-a"]
    assert "put" in calls, calls
    bad = []
    for p in paths:
        ram = rep.staged.get(str(p))
        if ram is None:
            continue
        if node_bytes(node, ram) != p.read_bytes():
            bad.append(str(p))
    assert not bad, bad
    # nothing executed, on the node or here
    r = node.run("find / -xdev -name 'PWNED*' 2>/dev/null; find /dev/shm -name 'PWNED*'", check=False)
    assert "PWNED" not in r.stdout, r.stdout
    assert not list(d.glob("PWNED*")) and not [x for x in os.listdir(".") if x.startswith("PWNED")]
    assert_consistent(node)
    # warm: the helper's listing path judges them all present
    calls.clear()
    from prng_cache.transport.ssh import operations
    monkeypatch.setattr(operations, "HELPER_MIN_LISTING", 1)
    rep2 = stage(cluster, policy, bs, hosts=["rig-a"])["rig-a"]
    assert rep2.copied_files == 0 and rep2.staged == rep.staged, rep2.to_dict()
    assert "list" in calls or "survey" in calls, calls
    assert len(rep.staged) == len(disc.bundles), (len(rep.staged), len(disc.bundles), rep.skipped)
