"""Keeping a run's leases alive for as long as the run lasts.

A lease expires after ``gc.lease_ttl`` so that a crashed coordinator never
pins a node's RAM. A run that outlives it (a multi-day step 3) would lose
its protection while its jobs still start with arguments that name the RAM
copies: a ``gc`` or another run's stage could then remove them and fail
those jobs. So while a run is going, a daemon thread of the coordinator
process renews the run's lease on every node that serves it, every third of
``gc.lease_ttl``: a node missed once or twice (down, unreachable) is renewed
at the next try with the lease still live. When the coordinator dies, the
renewals stop and the lease expires as before.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Sequence

from .cluster import Node, fan_out
from .nodeops import run_on_node
from .policy import Policy
from .reports import NodeReport

log = logging.getLogger(__name__)

#: a renewal every third of the TTL: two missed renewals still leave a live lease
RENEW_FRACTION = 1 / 3
#: never more often than this (a tiny test TTL must not turn into a busy loop)
MIN_INTERVAL = 0.5


class LeaseKeeper:
    """Renews ``run_id``'s lease on ``nodes`` every ``interval`` seconds
    (default: a third of ``gc.lease_ttl``) until :meth:`stop`."""

    def __init__(self, run_id: str, nodes: Sequence[Node], policy: Policy, *,
                 interval: float | None = None,
                 renew: Callable[[Node], bool | NodeReport] | None = None):
        self.run_id = run_id
        self.nodes = list(nodes)
        self.policy = policy
        ttl = policy.gc.lease_ttl
        self.interval = max(MIN_INTERVAL, ttl * RENEW_FRACTION if interval is None else interval)
        self._renew = renew or self._renew_on
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.renewals = 0  # rounds done (for reports and tests)
        self.last: dict[str, bool | str] = {}

    def _renew_on(self, node: Node) -> bool | NodeReport:
        ttl = self.policy.gc.lease_ttl
        # never write through a root that changed since the stage
        return run_on_node(node, self.policy,
                           lambda store: store.ensure_root(create=False) and store.renew(self.run_id, ttl))

    def start(self) -> None:
        if self._thread is None and self.nodes:
            self._thread = threading.Thread(target=self._loop, name=f"prng-cache-lease-{self.run_id}",
                                            daemon=True)  # a coordinator that exits is never held up
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop renewing; waits up to ``timeout`` for a renewal in progress
        (its connections are bounded by the transport timeouts)."""
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.renew_once()
            except Exception:  # a bug here must not end the renewals for good
                log.exception("prng-cache: renewing the lease of run %s failed", self.run_id)

    def renew_once(self) -> dict[str, bool | str]:
        """One round over every node: host -> True (renewed), False (the
        lease is gone: what it protected may have been collected), or the
        node's failure (renewed at the next round)."""
        results = fan_out(self.nodes, self._renew, self.policy.transport.parallel_nodes)
        out: dict[str, bool | str] = {}
        for node, res in zip(self.nodes, results):
            host = node.hostname
            if isinstance(res, NodeReport):
                out[host] = res.reason or res.status
                log.warning("prng-cache: %s: lease of run %s not renewed (%s); retrying in %.0f s",
                            host, self.run_id, out[host], self.interval)
            elif res is None:  # not run (an interrupt is in progress)
                out[host] = "not tried"
            else:
                out[host] = bool(res)
                if not res:
                    log.warning("prng-cache: %s: the lease of run %s is gone (expired, or the node was "
                                "wiped); its inputs there may be collected", host, self.run_id)
        self.renewals += 1
        self.last = out
        return out
