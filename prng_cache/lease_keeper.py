"""Keeping a run's leases alive for as long as the run lasts.

A lease expires after ``gc.lease_ttl`` so that a crashed coordinator never
pins a node's RAM. A run that outlives it (a multi-day step 3) would lose
its protection while its jobs still start with arguments that name the RAM
copies: a ``gc`` or another run's stage could then remove them and fail
those jobs. So while a run is going, a daemon thread of the coordinator
process renews the run's lease on every node that serves it, a quarter of
``gc.lease_ttl`` apart, on a fixed schedule counted from before the stage
(a slow or failed round never pushes the next one later): a node missed
twice in a row (down, hung) is renewed at the third try with a quarter of
the TTL still left. When the coordinator dies, the renewals stop and the
lease expires as before.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Callable, Sequence

from .cluster import Node, fan_out
from .nodeops import run_on_node
from .policy import Policy
from .reports import NodeReport

log = logging.getLogger(__name__)

#: a renewal every quarter of the TTL: after two misses in a row, the third
#: try still finds the lease live, a quarter of the TTL before it expires
RENEW_FRACTION = 1 / 4
#: never more often than this (a tiny test TTL must not turn into a busy loop)
MIN_INTERVAL = 0.5


#: every keeper started and not yet stopped (see :func:`stop_all`)
_running: "weakref.WeakSet[LeaseKeeper]" = weakref.WeakSet()


def stop_all() -> None:
    """Stop every keeper of this process (a test's runs that never ended)."""
    for keeper in list(_running):
        keeper.stop()


class LeaseKeeper:
    """Renews the lease ``lease_id`` on ``nodes`` every ``interval`` seconds
    (default: a quarter of ``gc.lease_ttl``) until :meth:`stop`.

    ``since``: a ``time.monotonic()`` from before the lease was written (the
    stage's start); the schedule counts from it, so the first renewal is due
    while the lease as first written is surely live."""

    def __init__(self, lease_id: str, nodes: Sequence[Node], policy: Policy, *,
                 interval: float | None = None, since: float | None = None,
                 renew: Callable[[Node], str | NodeReport] | None = None):
        self.lease_id = lease_id
        self.nodes = list(nodes)
        self.policy = policy
        ttl = policy.gc.lease_ttl
        self.interval = max(MIN_INTERVAL, ttl * RENEW_FRACTION if interval is None else interval)
        self.since = time.monotonic() if since is None else since
        self._renew = renew or self._renew_on
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.renewals = 0  # rounds done (for reports and tests)
        self.last: dict[str, bool | str] = {}

    def _renew_on(self, node: Node) -> str | NodeReport:
        ttl = self.policy.gc.lease_ttl
        # never write through a root that changed since the stage
        return run_on_node(node, self.policy, lambda store: store.renew(self.lease_id, ttl)
                           if store.ensure_root(create=False) else "gone")

    def start(self) -> None:
        if self._thread is None and self.nodes:
            self._thread = threading.Thread(target=self._loop, name=f"prng-cache-lease-{self.lease_id}",
                                            daemon=True)  # a coordinator that exits is never held up
            _running.add(self)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop renewing; waits up to ``timeout`` for a renewal in progress
        (its connections are bounded by the transport timeouts)."""
        self._stop.set()
        _running.discard(self)
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)

    def _loop(self) -> None:
        due = self.since
        while True:
            due += self.interval
            # a round that overran its successor's time: the next one at once
            if self._stop.wait(max(0.0, due - time.monotonic())):
                return
            due = max(due, time.monotonic())  # late (a round overran the interval): count from now
            try:
                self.renew_once()
            except Exception:  # a bug here must not end the renewals for good
                log.exception("prng-cache: renewing lease %s failed", self.lease_id)

    def renew_once(self) -> dict[str, bool | str]:
        """One round over every node: host -> True (renewed while live),
        False (the lease is gone: what it protected may have been
        collected), or why not (the node's failure: tried again next round;
        a lease that had lapsed: renewed, but inputs may be gone)."""
        results = fan_out(self.nodes, self._renew, self.policy.transport.parallel_nodes)
        out: dict[str, bool | str] = {}
        for node, res in zip(self.nodes, results):
            host = node.hostname
            if isinstance(res, NodeReport):
                out[host] = res.reason or res.status
                log.warning("prng-cache: %s: lease %s not renewed (%s); next try in %.0f s",
                            host, self.lease_id, out[host], self.interval)
            elif res is None:  # not run (an interrupt is in progress)
                out[host] = "not tried"
            elif res == "renewed":
                out[host] = True
            elif res == "lapsed":
                out[host] = "lease had lapsed: renewed, but a gc meanwhile may have collected some of its inputs"
                log.warning("prng-cache: %s: lease %s %s", host, self.lease_id, out[host])
            else:
                out[host] = False
                log.warning("prng-cache: %s: lease %s is gone (expired, or the node was wiped); its inputs "
                            "there may be collected", host, self.lease_id)
        self.renewals += 1
        self.last = out
        return out
