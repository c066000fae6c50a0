"""Fifth red team: lease renewals racing real `gc --all` loops and another
coordinator's stages and releases (another process), on real sshd nodes.
A live run's inputs (run-scoped ones too) must never be removed, however
many times its first lease's TTL passes; after run end its lease must never
come back."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time

from rt5_common import cluster, entry_keys, lease_expiry, plugin_start, policy_ttl, src  # noqa: F401

RACER = r'''
import json, os, pickle, sys, time
sys.path.insert(0, os.path.join(os.environ["WT"], "tests"))
spec = pickle.load(open(sys.argv[1], "rb"))
from prng_cache.cluster import Node, node_settings, open_transport
from prng_cache.maintenance import gc_node
from prng_cache.staging import stage_cluster
from prng_cache.store import LeaseRequest, NodeStore
pol, bundles = spec["policy"], spec["bundles"]
removed, errors, rounds = [], [], 0
deadline = time.monotonic() + spec["seconds"]
while time.monotonic() < deadline:
    rounds += 1
    try:
        # another coordinator: stages its own run-scoped chunks, then releases
        run = f"other-{rounds}"
        rep = stage_cluster([Node("rig-a")], lambda n: bundles, pol, lease=LeaseRequest(run, 3.0))["rig-a"]
        assert rep.status == "ok", rep
        with open_transport(Node("rig-a"), pol) as t:
            st = NodeStore(t, node_settings(pol, Node("rig-a")), pol.gc)
            st.ensure_root(create=False)
            st.release(run)
        with open_transport(Node("rig-a"), pol) as t:
            st = NodeStore(t, node_settings(pol, Node("rig-a")), pol.gc)
            removed.extend(gc_node(st, remove_all=True).removed)
    except Exception as exc:
        errors.append(repr(exc))
        time.sleep(0.1)
print(json.dumps({"removed": removed, "errors": errors[:5], "nerrors": len(errors), "rounds": rounds}))
'''


def test_renewals_racing_gc_all_and_another_coordinator_keep_a_live_runs_inputs(cluster, src, tmp_path):
    node = cluster["rig-a"]
    chunks = src / "scoring_chunks"
    chunks.mkdir()
    mine = [chunks / f"chunk_{i}.bin" for i in range(3)] + [src / "survivors.npz"]
    for p in mine[:3]:
        p.write_bytes(os.urandom(20_000))
    others = src / "other" / "scoring_chunks"
    others.mkdir(parents=True)
    theirs = [others / f"o_{i}.bin" for i in range(3)]
    for p in theirs:
        p.write_bytes(os.urandom(10_000))
    ttl = 3.0
    policy = policy_ttl(cluster, src, ttl, connect_timeout=3.0)
    from test_faults import bundles_of
    tb, _ = bundles_of(theirs, src)
    assert all(b.run_scoped for b in tb)
    spec = tmp_path / "racer.pickle"
    spec.write_bytes(pickle.dumps(dict(policy=policy, bundles=tb, seconds=4 * ttl)))
    (tmp_path / "racer.py").write_text(RACER)

    p = plugin_start(policy, ["rig-a"], mine, run_id="live")
    try:
        keeper = p.keeper
        assert keeper is not None and p.reports["rig-a"].status == "ok", p.reports
        staged = entry_keys(node)
        assert len(staged) == 4, staged
        env = dict(os.environ, WT=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        racer = subprocess.Popen([sys.executable, str(tmp_path / "racer.py"), str(spec)], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lost: list[tuple[float, set]] = []
        lapsed: list[float] = []
        while racer.poll() is None:
            now = time.time()
            exp = lease_expiry(node, "live")
            if exp is None or exp <= now:
                lapsed.append(now)
            missing = staged - entry_keys(node)
            if missing:
                lost.append((now, missing))
            time.sleep(0.2)
        out, err = racer.communicate()
        assert racer.returncode == 0, err[-3000:]
        doc = json.loads(out)
        assert doc["rounds"] >= 3 and doc["nerrors"] == 0, doc
        assert not set(doc["removed"]) & staged, doc
        assert not lost and not lapsed, (lost[:3], lapsed[:3])
        assert keeper.renewals >= 3 and keeper.last == {"rig-a": True}
    finally:
        rep = p.coordinator_run_end(run_id="live", results={})
    assert rep["leases_released"] == {"rig-a": True}, rep
    # the run-scoped chunks left with the run; the lease never comes back
    n = keeper.renewals
    deadline = time.monotonic() + 2.5 * keeper.interval
    while time.monotonic() < deadline:
        assert lease_expiry(node, "live") is None
        time.sleep(0.2)
    assert keeper.renewals == n and not keeper._thread.is_alive()
    left = entry_keys(node)
    assert len(left & staged) == 1, (left, staged)  # survivors.npz (not run-scoped) stays
