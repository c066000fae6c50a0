"""Third red team (partial loads of a large root): the root token a partial load trusts (manifest `root_token`, file
`.prng-root-<token>`), attacked in a large root over real sshd nodes."""
from __future__ import annotations

import pytest

from rt3_common import *  # noqa: F401,F403
from rt3_common import (assert_consistent, assert_served_ok, big_root, new_bundles, read_doc, record_partial,
                        root_of, stage_a, token_of, write_doc)

from prng_cache.store import LeaseRequest

OUT = "/dev/shm/rt3-tok"

TOKEN_FILE = {
    "symlink-to-file": f"echo x > {OUT} && rm -f $T && ln -s {OUT} $T",
    "symlink-dangling": f"rm -f $T && ln -s {OUT}-nothing $T",
    "directory": "rm -f $T && mkdir $T && echo keep > $T/keep",
    "fifo": "rm -f $T && mkfifo $T",
    "other-owner": "chown 4242:4242 $T",
    "removed": "rm -f $T",
}


@pytest.mark.parametrize("lease", [False, True], ids=["nolease", "lease"])
@pytest.mark.parametrize("case", sorted(TOKEN_FILE))
def test_token_file_not_a_regular_file_of_ours_means_a_full_load(cluster, src, monkeypatch, case, lease):
    node, policy, bs, d = big_root(cluster, src)
    root = root_of(node)
    node.run(f"rm -rf {OUT}")
    T = f"{root}/.prng-root-{token_of(node)}"
    node.run(TOKEN_FILE[case].replace("$T", T))
    before = node.run(f"stat -c '%F %u %i' {T}; ls -A {T}/ 2>/dev/null; cat {T}/keep 2>/dev/null", check=False).stdout
    partial = record_partial(monkeypatch)
    new = new_bundles(d, ["cold.bin"])
    few = bs[:4] + new
    rep = stage_a(cluster, policy, few, lease=LeaseRequest("run-k", 600) if lease else None)
    assert partial == [False], partial
    assert rep.status == "ok" and len(rep.staged) == 5, (rep.status, rep.reason)
    assert_served_ok(node, rep, few)
    if case != "removed":  # not ours to touch (a link, a dir, another uid's file)
        assert node.run(f"stat -c '%F %u %i' {T}; ls -A {T}/ 2>/dev/null; cat {T}/keep 2>/dev/null", check=False).stdout == before
    # the next stage again: still correct (token re-learnt or still refused)
    rep = stage_a(cluster, policy, few)
    assert rep.status == "ok" and len(rep.staged) == 5, (rep.status, rep.reason)
    assert_served_ok(node, rep, few)
    node.run(f"rm -rf {OUT}")


ROOT_TOKEN = {
    "int": 12345,
    "short-hex": "abc",
    "upper-hex": "ABCDEF0123456789",
    "non-hex": "zzzzzzzzzzzzzzzz",
    "path": "../../../../etc/",
    "huge": "0" * 5_000_000,
    "map": {"a": 1},
    "list": ["0" * 16],
    "empty": "",
    "none": None,
    "hex-no-file": "0123456789abcdef",
    "newline": "0123456789abcdef\n",
}


@pytest.mark.parametrize("case", sorted(ROOT_TOKEN))
def test_garbage_root_token_in_the_manifest(cluster, src, monkeypatch, case):
    node, policy, bs, d = big_root(cluster, src)
    real = token_of(node)
    doc = read_doc(node)
    doc["root_token"] = ROOT_TOKEN[case]
    write_doc(node, doc)
    partial = record_partial(monkeypatch)
    few = bs[:4] + new_bundles(d, ["cold.bin"])
    rep = stage_a(cluster, policy, few, lease=LeaseRequest("run-g", 600))
    assert rep.status == "ok" and len(rep.staged) == 5, (rep.status, rep.reason, rep.warnings)
    assert partial in ([False], []), partial
    assert_served_ok(node, rep, few)
    assert read_doc(node)["root_token"] == real  # repaired
    assert_consistent(node)
    rep = stage_a(cluster, policy, bs[4:8])
    assert partial[-1] is True and rep.status == "ok" and len(rep.staged) == 4


def test_manifest_naming_the_other_of_two_tokens(cluster, src, monkeypatch):
    # two tokens (two stagers created the root at once): the manifest names
    # the larger; an unrecorded probed directory carrying the other token's
    # marker is still ours (merged, served), never treated as foreign forever
    node, policy, bs, d = big_root(cluster, src)
    root = root_of(node)
    tok = token_of(node)
    other = "f" * 16 if tok < "f" * 16 else "0" * 16
    node.run(f"touch {root}/.prng-root-{other} && chmod 600 {root}/.prng-root-{other}")
    doc = read_doc(node)
    doc["root_token"] = max(tok, other)
    write_doc(node, doc)
    # an unrecorded dir of ours (marker of min token), as a killed stager leaves it, fresh
    nb = new_bundles(d, ["orphan.bin"])[0]
    K = f"{root}/{nb.key}"
    node.run(f"mkdir {K} && touch {K}/.prng-{min(tok, other)}")
    partial = record_partial(monkeypatch)
    rep = stage_a(cluster, policy, bs[:4] + [nb], lease=LeaseRequest("run-2t", 600))
    assert partial[0] is True
    assert rep.status == "ok" and len(rep.staged) == 5, (rep.status, rep.reason, rep.warnings)
    assert_served_ok(node, rep, bs[:4] + [nb])
    assert_consistent(node)
