"""Third red team (partial loads of a large root): gc --all and a second stager racing leased partial stages in a large
root, over real sshd (threads, each with its own SSH connections)."""
from __future__ import annotations

import random
import threading
import time

from rt3_common import *  # noqa: F401,F403
from rt3_common import read_doc, write_doc, assert_consistent, big_root, node_bytes, record_partial, stage_a, store_for

from prng_cache.maintenance import gc_node
from prng_cache.store import LeaseRequest

ROUNDS = 25


def test_leased_partial_stages_racing_gc_all_and_another_stager(cluster, src, monkeypatch):
    node, policy, bs, d = big_root(cluster, src)
    # a long lease on the rest keeps the root large (written directly: a warm
    # stage of 260 entries uses the find-over-exec listing, which hangs in
    # this sandbox also for tests/test_find_listing.py, at HEAD and 8a9ac19)
    doc = read_doc(node)
    doc["leases"]["pin"] = {"hashes": [b.key for b in bs[40:]], "expires": time.time() + 3600, "owner": "rt3"}
    write_doc(node, doc)
    partial = record_partial(monkeypatch)
    stop = threading.Event()
    errors: list[BaseException] = []

    def gc_loop():
        while not stop.is_set():
            s = store_for(cluster, policy, "rig-a")
            try:
                gc_node(s, remove_all=True)
            except Exception as e:  # lock contention is not the point
                if "lock" not in str(e).lower():
                    errors.append(e)
            finally:
                s.t.close()

    def other_stager():
        i = 0
        while not stop.is_set():
            i += 1
            try:
                stage_a(cluster, policy, random.sample(bs[:40], 4))
            except Exception as e:
                errors.append(e)

    threads = [threading.Thread(target=gc_loop), threading.Thread(target=other_stager)]
    for t in threads:
        t.start()
    try:
        for r in range(ROUNDS):
            few = random.sample(bs[:40], 4)
            rep = stage_a(cluster, policy, few, lease=LeaseRequest(f"run-{r}", 600))
            # leased: every path handed out must exist, complete, while the lease lives
            for b in few:
                p = rep.staged.get(b.path)
                if p is not None:
                    assert node_bytes(node, p) == open(b.path, "rb").read(), (r, p, rep.warnings)
            s = store_for(cluster, policy, "rig-a")
            try:
                s.ensure_root(create=False)
                s.release(f"run-{r}")
            finally:
                s.t.close()
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors
    assert any(partial), partial
    assert_consistent(node, leftovers_ok=True)
