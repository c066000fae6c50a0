"""Attack: planted symlinks / directories at <key> names the helper writes."""
from __future__ import annotations

import os

from test_batch_faults import _many
from test_faults import cluster, src, make_policy, stage, node_bytes, node_names, root_of, jobs_for  # noqa: F401
from prng_cache.inputs import discover
from prng_cache.store import NodeStore
from prng_cache.transport.ssh import helper


def _bs(policy, d, paths):
    return list(discover(jobs_for(paths), policy.inputs, str(d)).bundles.values())


def _plant(node, root, keys, outside):
    k = keys
    node.run(f"rm -rf {outside}; mkdir -p {outside}/d; echo precious > {outside}/d/keep.txt; "
             f"ln -s {outside}/d {root}/{k[0]}; mkdir {root}/{k[1]}; "
             f"mkdir {root}/{k[2]}; echo theirs > {root}/{k[2]}/foreign.txt; "
             f"echo x > {root}/{k[3]}; ln -s {outside}/nonexistent {root}/{k[4]}")


def _check(node, root, keys, outside, rep, bs):
    by_key = {b.key: b for b in bs}
    out = []
    assert node.run(f"cat {outside}/d/keep.txt").stdout.strip() == "precious"
    assert node_names(node, f"{outside}/d") == ["keep.txt"], node_names(node, f"{outside}/d")
    assert not node.run(f"test -e {outside}/nonexistent", check=False).returncode == 0, "wrote through dangling link"
    assert node_names(node, f"{root}/{keys[2]}") == ["foreign.txt"], node_names(node, f"{root}/{keys[2]}")
    for i in range(5):
        ram = rep.staged.get(by_key[keys[i]].path)
        out.append((i, ram is not None, rep.skipped.get(by_key[keys[i]].path)))
    for p, ram in rep.staged.items():
        assert node_bytes(node, ram) == open(p, "rb").read(), p
    r = node.run(f"test -d {root}/{keys[1]} && ls -A {root}/{keys[1]}", check=False)
    return out, r.returncode, r.stdout


def test_planted_before_plan(cluster, src):
    node = cluster["rig-a"]
    root = root_of(node)
    d, paths = _many(src, 60, 3000)
    policy = make_policy(cluster, d)
    bs = _bs(policy, d, paths)
    stage(cluster, policy, bs[50:], hosts=["rig-a"])  # root + token exist
    keys = [b.key for b in bs[:5]]
    _plant(node, root, keys, "/tmp/rt13-outside")
    rep = stage(cluster, policy, bs, hosts=["rig-a"])["rig-a"]
    res = _check(node, root, keys, "/tmp/rt13-outside", rep, bs)
    print("before-plan:", res)


def test_planted_after_plan_before_helper_put(cluster, src, monkeypatch):
    node = cluster["rig-a"]
    root = root_of(node)
    d, paths = _many(src, 60, 3000)
    policy = make_policy(cluster, d)
    bs = _bs(policy, d, paths)
    stage(cluster, policy, bs[50:], hosts=["rig-a"])
    keys = [b.key for b in bs[:5]]
    orig = helper.NodeHelper.put_dirs
    done = []

    def put_dirs(self, items):
        if not done:
            done.append(1)
            _plant(node, root, keys, "/tmp/rt13-outside2")
        return orig(self, items)
    monkeypatch.setattr(helper.NodeHelper, "put_dirs", put_dirs)
    rep = stage(cluster, policy, bs, hosts=["rig-a"])["rig-a"]
    assert done
    res = _check(node, root, keys, "/tmp/rt13-outside2", rep, bs)
    print("after-plan:", res)
    # the planted empty directory (not prng-cache's) must still be there
    assert res[1] == 0, f"planted empty directory {keys[1]} was replaced/removed"
