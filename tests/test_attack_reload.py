"""Attack: the manifest changed by another stager between plan and commit
(CacheRoot.reload): entries lost? stale ones recorded?"""
from __future__ import annotations

from test_batch_faults import _many
from test_faults import cluster, src, make_policy, stage, root_of, assert_consistent, jobs_for, node_manifest  # noqa: F401
from prng_cache.inputs import discover
from prng_cache.policy import CapacityPolicy
from prng_cache.store import NodeStore


def test_other_stager_commits_between_plan_and_commit(cluster, src, monkeypatch):
    node = cluster["rig-a"]
    d, paths = _many(src, 200, 3000)
    policy = make_policy(cluster, d, capacity=CapacityPolicy(max_percent=100))
    bs = list(discover(jobs_for(paths), policy.inputs, str(d)).bundles.values())
    a, b = bs[:120], bs[80:]
    stage(cluster, policy, bs[:40], hosts=["rig-a"])  # some present for A
    orig = NodeStore.commit
    fired = []

    def commit(self, *args, **kw):
        if not fired:
            fired.append(1)
            monkeypatch.setattr(NodeStore, "commit", orig)
            # B: restages with one of A's present entries deleted under it
            node.run(f"rm -rf {root_of(node)}/{bs[0].key}")
            fired.append(stage(cluster, policy, b, hosts=["rig-a"])["rig-a"])
        return orig(self, *args, **kw)
    monkeypatch.setattr(NodeStore, "commit", commit)
    rep = stage(cluster, policy, a, hosts=["rig-a"])["rig-a"]
    rb = fired[1]
    print("A", rep.status, len(rep.staged), set(rep.skipped.values()), "B", rb.status, len(rb.staged))
    m = node_manifest(node)
    missing = [x.key for x in bs[1:] if x.key not in m.entries]
    assert not missing, f"{len(missing)} entries lost"
    # A must not serve bs[0] (its directory was deleted after A's plan)
    served0 = rep.staged.get(bs[0].path)
    r = node.run(f"test -f {served0}", check=False) if served0 else None
    print("A serves bs[0]:", served0, "exists:", None if r is None else r.returncode == 0)
    assert served0 is None or r.returncode == 0, "A serves a path that does not exist on the node"
    assert_consistent(node, leftovers_ok=True)
