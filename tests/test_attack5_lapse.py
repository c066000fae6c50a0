"""Fifth red team: the README promises "A node unreachable at a renewal is
logged and renewed at the next one; two misses in a row still leave the
lease live". Real sshd nodes, a real hung sshd (SIGSTOP: TCP accepted, no
banner), a real gc --all."""
from __future__ import annotations

import time

from rt5_common import (cluster, entry_keys, frozen, gc_all_now, lease_expiry, plugin_start,  # noqa: F401
                        policy_ttl, src, wait_for)


def test_two_missed_renewals_on_a_hung_node_still_leave_the_lease_live(cluster, src, caplog):
    """ttl 12 s: a renewal every 3 s (every 4 s when this was found). rig-a hangs (no SSH banner: each miss
    costs connect_timeout, 1 s) for exactly two renewals, then answers
    again. Expected: the lease is live the whole time, so a gc --all run
    just after the node came back (before the third renewal) removes none
    of the run's inputs. The renewals drift by the duration of every
    round (the wait starts when a round ends), so after two misses the
    third renewal comes ttl + 2 x connect_timeout after the last write:
    the lease lapsed, gc collected inputs of a live run, and the next
    renewal revived a lease over files that were gone. Fixed: a renewal
    every quarter of the TTL on a fixed schedule from before the stage."""
    node = cluster["rig-a"]
    policy = policy_ttl(cluster, src, 12.0, connect_timeout=1.0)
    paths = [src / "survivors.npz", src / "train_history.json"]
    p = None
    try:
        p = plugin_start(policy, ["rig-a"], paths, run_id="long")
        k = p.keeper
        assert k is not None and k.interval == 3.0
        staged = entry_keys(node)
        assert len(staged) == 2, staged
        first = lease_expiry(node, "long")
        assert first is not None
        with frozen(node):
            # two rounds, both missed (banner timeout)
            assert wait_for(lambda: k.renewals >= 2, 20), k.renewals
            assert all(v is not True for v in k.last.values()), k.last
        assert k.renewals == 2
        # the node answers again; the run is live; the third renewal is due
        # at the latest when the lease would expire
        assert wait_for(lambda: k.renewals >= 3 or time.time() > lease_expiry(node, "long") + 0.3, 20)
        lapsed_before_renewal = k.renewals < 3
        gc = gc_all_now(cluster, policy, "rig-a")
        assert wait_for(lambda: k.renewals >= 3, 20)
        assert gc.removed == [] and not lapsed_before_renewal, (
            f"lease of a live run expired before its next renewal (lapsed: {lapsed_before_renewal}); "
            f"gc --all removed {len(gc.removed)} of its inputs: {gc.removed}")
        assert entry_keys(node) == staged
        assert "had lapsed" not in caplog.text
    finally:
        if p is not None and p.keeper is not None:
            p.keeper.stop()
