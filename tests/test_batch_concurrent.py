"""two stagers publishing overlapping 300-file batches at once on one node."""
from __future__ import annotations

import os
import threading

from test_faults import (  # noqa: F401 - fixtures
    cluster, src, make_policy, stage, node_names, root_of, node_bytes, jobs_for, assert_consistent,
)
from prng_cache.inputs import discover


def test_overlapping_batches_two_stagers(cluster, src):
    node = cluster["rig-a"]
    d = src / "many"
    d.mkdir()
    paths = []
    for i in range(450):
        p = d / f"c{i:04d}.bin"
        p.write_bytes(os.urandom(8000))
        paths.append(p)
    policy = make_policy(cluster, d)
    sets = [paths[:300], paths[150:]]
    reps = [None, None]

    def go(k):
        bs = list(discover(jobs_for(sets[k]), policy.inputs, str(d)).bundles.values())
        reps[k] = stage(cluster, policy, bs, hosts=["rig-a"])["rig-a"]
    ts = [threading.Thread(target=go, args=(k,)) for k in (0, 1)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for k in (0, 1):
        assert reps[k].status == "ok", reps[k].to_dict()
        assert set(reps[k].staged) == {str(p) for p in sets[k]}
    for p in paths[::29]:
        ram = (reps[0].staged.get(str(p)) or reps[1].staged[str(p)])
        assert node_bytes(node, ram) == p.read_bytes()
    m = assert_consistent(node)
    assert len(m.entries) == 450
