"""Third red team (partial loads of a large root): a wanted entry tampered with by hand between stages, in a large root
(partial load), over real sshd nodes. Served paths must be regular files,
one link, ours, the right bytes; what is not ours is never touched."""
from __future__ import annotations

import pytest

from rt3_common import *  # noqa: F401,F403
from rt3_common import assert_consistent, assert_served_ok, big_root, record_partial, root_of, stage_a

from prng_cache.store import LeaseRequest

OUT = "/dev/shm/rt3-outside"

CASES = {
    # name: (shell to tamper (K = entry dir, F = its file), expect served, expect consistent after)
    "dir-removed": ("rm -rf $K", True, True),
    "file-removed": ("rm -f $F", True, True),
    "file-truncated": ("truncate -s 3 $F", True, True),
    "file-grown": ("echo more >> $F", True, True),
    "file-hardlinked-outside": (f"ln $F {OUT}", True, True),
    "file-symlink-outside": (f"head -c 500 /dev/zero > {OUT} && rm -f $F && ln -s {OUT} $F", True, True),
    "file-replaced-by-dir": ("rm -f $F && mkdir $F && echo x > $F/x", False, False),
    "dir-symlink-outside": (f"mv $K {OUT} && ln -s {OUT} $K", False, False),
    "dir-symlink-to-other-entry": ("rm -rf $K && ln -s $K2 $K", False, False),
    "dir-replaced-by-file": ("rm -rf $K && head -c 500 /dev/zero > $K", False, False),
    "dir-replaced-by-fifo": ("rm -rf $K && mkfifo $K", False, False),
    "dir-emptied": ("rm -f $K/* $K/.prng-*", True, True),
}


@pytest.mark.parametrize("lease", [False, True], ids=["nolease", "lease"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_tampered_entry_between_stages(cluster, src, monkeypatch, case, lease):
    node, policy, bs, d = big_root(cluster, src)
    root = root_of(node)
    node.run(f"rm -rf {OUT}")
    b, b2 = bs[0], bs[1]
    name = b.files[0].name
    shell, served, consistent = CASES[case]
    K, F, K2 = f"{root}/{b.key}", f"{root}/{b.key}/{name}", f"{root}/{b2.key}"
    node.run(shell.replace("$K2", K2).replace("$K", K).replace("$F", F))
    before_out = node.run(f"stat -c '%F %s' {OUT} 2>/dev/null; md5sum {OUT} {OUT}/* 2>/dev/null", check=False).stdout
    before_K = node.run(f"ls -la {K}; stat -c '%F %i' {K}", check=False).stdout
    partial = record_partial(monkeypatch)
    few = bs[:4]
    rep = stage_a(cluster, policy, few, lease=LeaseRequest("run-t", 600) if lease else None)
    assert partial == [True], "expected the partial path"
    assert_served_ok(node, rep, few)
    assert (b.path in rep.staged) == served, (rep.status, rep.reason, rep.warnings)
    assert len(rep.staged) == (4 if served else 3), rep
    # nothing outside the root changed (a link's target, a hard link's other name)
    assert node.run(f"stat -c '%F %s' {OUT} 2>/dev/null; md5sum {OUT} {OUT}/* 2>/dev/null", check=False).stdout == before_out
    if not served:  # not ours any more: left exactly as it was
        assert node.run(f"ls -la {K}; stat -c '%F %i' {K}", check=False).stdout == before_K
        assert b2.key in node_manifest(node).entries and node.exists(f"{K2}/{b2.files[0].name}")
    if consistent:
        assert_consistent(node)
    node.run(f"rm -rf {OUT}")
