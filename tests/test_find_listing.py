"""planted links among 200+ entries (the one-find warm check), and nodes whose find differs."""
from __future__ import annotations

import os

import pytest

from test_faults import (  # noqa: F401 - fixtures
    cluster, src, make_policy, stage, node_names, node_manifest, root_of, node_bytes, jobs_for, assert_consistent,
)
from prng_cache.cluster import Node
from prng_cache.inputs import discover
from prng_cache.nodeops import run_on_node
from prng_cache.reports import NodeReport
from prng_cache.staging import held_inputs
from prng_cache.transport.ssh import helper, listing, operations


def _setup(cluster, src, n=220, node_helper=False):
    d = src / "many"
    d.mkdir()
    paths = []
    for i in range(n):
        p = d / f"in{i:04d}.json"
        p.write_bytes(os.urandom(500))
        paths.append(p)
    # the find path unless asked (the helper's listing)
    policy = make_policy(cluster, d, node_helper=node_helper)
    bs = list(discover(jobs_for(paths), policy.inputs, str(d)).bundles.values())
    bs.sort(key=lambda b: b.path)
    rep = stage(cluster, policy, bs, hosts=["rig-a"])["rig-a"]
    assert rep.status == "ok" and len(rep.staged) == n
    return policy, bs


def _held(policy, bs):
    return run_on_node(Node("rig-a"), policy,
                       lambda store: NodeReport(host="rig-a", status="ok", staged=held_inputs(store, bs))).staged


@pytest.mark.parametrize("path", ["find", "helper"])
def test_planted_links_among_220_entries_never_served(cluster, src, monkeypatch, path):
    node = cluster["rig-a"]
    root = root_of(node)
    policy, bs = _setup(cluster, src, node_helper=path == "helper")
    evil = f"{node.shm}/evil"
    node.run(f"mkdir -m 700 {evil} && printf evil > {evil}/x")
    e = {i: (f"{root}/{bs[i].key}", f"{root}/{bs[i].key}/{bs[i].name}") for i in range(10, 17)}
    node.run(" && ".join([
        f"rm -f {e[10][1]} && ln -s {evil}/x {e[10][1]}",              # symlinked file
        f"ln {e[11][1]} {evil}/alias",                                # hard link
        f"rm -rf {e[12][0]} && ln -s {evil} {e[12][0]}",             # <key> itself a symlink
        f"rm -f {e[13][1]} && mkdir {e[13][1]}",                      # a directory under the name
        f"rm -f {e[14][1]} && mkfifo {e[14][1]}",                     # a FIFO under the name
        f"chmod 600 {e[15][1]} && truncate -s 10 {e[15][1]}",        # wrong size
        f"rm -rf {e[16][0]} && printf x > {e[16][0]}",               # <key> a plain file
    ]))
    calls = []
    if path == "helper":
        monkeypatch.setattr(operations, "HELPER_MIN_LISTING", 1)  # waited for: deterministic
        for meth in ("listdirs", "survey"):
            orig_h = getattr(helper.NodeHelper, meth)
            monkeypatch.setattr(helper.NodeHelper, meth, lambda self, *a, _o=orig_h: calls.append(1) or _o(self, *a))
    else:
        orig = listing.run
        monkeypatch.setattr(listing, "run", lambda *a: calls.append(1) or orig(*a))
    held = _held(policy, bs)
    assert calls  # the path under test was taken
    bad = {bs[i].path for i in range(10, 17)}
    assert not bad & set(held), sorted(bad & set(held))
    assert len(held) == 220 - 7
    rep = stage(cluster, policy, bs, hosts=["rig-a"])["rig-a"]
    assert not {bs[12].path, bs[16].path} & set(rep.staged)
    for i in (10, 11, 13, 14, 15):
        if bs[i].path in rep.staged:
            assert node_bytes(node, rep.staged[bs[i].path]) == open(bs[i].path, "rb").read()
    assert node_bytes(node, f"{evil}/x") == b"evil"
    assert sorted(node_names(node, evil)) == ["alias", "x"]


@pytest.mark.parametrize("fake", ["false", "no-printf", "exit1-after-half"])
def test_node_with_other_find_still_correct(cluster, src, monkeypatch, fake):
    node = cluster["rig-a"]
    policy, bs = _setup(cluster, src, 200)
    script = {
        "false": "#!/bin/sh\nexit 1\n",
        "no-printf": "#!/bin/sh\nfor a; do [ \"$a\" = -printf ] && { echo 'find: unrecognized: -printf' >&2; exit 1; }; done\nexec /dev/shm/find.real \"$@\"\n",
        # lists, then fails (as on an I/O error): exit 1 -> xargs 123, which the command accepts
        "exit1-after-half": "#!/bin/sh\n[ \"$1\" = . ] && exec /dev/shm/find.real \"$@\"\n"
                            "/dev/shm/find.real \"$@\" | head -z -n 301; exit 1\n",
    }[fake]
    fake_path = f"{node.shm}/fakefind"
    node.run(f"cp /usr/bin/find {node.shm}/find.real && printf %s {__import__('shlex').quote(script)} > {fake_path} "
             f"&& chmod 755 {fake_path}")
    assert node.shm == "/dev/shm"
    r = node.run(f"mount --bind {fake_path} /usr/bin/find", check=False)
    if r.returncode:
        pytest.skip(f"cannot bind-mount over find: {r.stderr}")
    try:
        calls = []
        orig = listing.run
        monkeypatch.setattr(listing, "run", lambda *a: calls.append(orig(*a)) or calls[-1])
        held = _held(policy, bs)
        assert set(held) == {b.path for b in bs}, len(held)
        rep = stage(cluster, policy, bs, hosts=["rig-a"])["rig-a"]
        # a find that stops early (exit 1 after half) must not pass for a complete listing: the
        # unlisted half would be "directory missing; restaged" (100 copies)
        assert rep.status == "ok" and len(rep.staged) == 200, rep.to_dict()
        assert rep.copied_files == 0, (rep.copied_files, rep.warnings[:2])
    finally:
        node.run("umount /usr/bin/find", check=False)
