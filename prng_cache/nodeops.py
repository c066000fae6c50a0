"""Running one operation on a node's store, or on many nodes in parallel.

Whatever fails on one node (unreachable, unsafe root, connection lost)
becomes that node's ``error`` report and never stops the others; a node in
``direct``/``off`` mode is not contacted at all.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Sequence, TypeVar

from . import cancel
from .cluster import Node, fan_out, node_settings, open_transport
from .errors import NodeError
from .policy import Policy
from .prewarm import EarlyConnections
from .reports import NodeReport
from .store import NodeStore, ensure_node_error

log = logging.getLogger(__name__)

R = TypeVar("R")


def run_on_node(node: Node, policy: Policy, fn: Callable[[NodeStore], R],
                early: EarlyConnections | None = None) -> R | NodeReport:
    """Open the node (or take its connection from ``early``), run fn on its
    store and return fn's result.

    A node in direct/off mode is not contacted, and any failure (unreachable,
    unsafe root, connection lost...) is logged and turned into an ``error``
    report: in both cases a NodeReport comes back instead of fn's result."""
    settings = node_settings(policy, node)
    if settings.mode != "cache":
        return NodeReport(host=node.hostname, status=settings.mode, cache_root=settings.cache_root,
                          reason=None if policy.enabled else "cache disabled (PRNG_CACHE=0 / USE_RAMDISK=false)")
    try:
        t = early.take(node) if early is not None else None
        with (t or open_transport(node, policy)) as t, cancel.tracked(t):
            store = NodeStore(t, settings, policy.gc)
            if early is not None:
                store.presends, notes = early.handed_over(node)
                store.notes.extend(notes)
            try:
                return fn(store)
            finally:
                if store.presends:  # sent early and not published (not needed, or the stage failed)
                    remove_presends(store)
    except Exception as exc:  # never let one node take the others down
        if cancel.cancelled():  # aborted by Ctrl-C: not this node's fault
            log.debug("%s: interrupted: %s", node.hostname, exc)
            return NodeReport(host=node.hostname, status="error", cache_root=settings.cache_root,
                              reason="interrupted")
        err = ensure_node_error(exc, node.hostname)
        if not isinstance(exc, (NodeError, OSError)):
            log.exception("%s: unexpected error", node.hostname)
        log.warning("%s: error: %s", node.hostname, err.problem)
        return NodeReport(host=node.hostname, status="error", cache_root=settings.cache_root, reason=err.problem)


def remove_presends(store: NodeStore) -> None:
    """Remove what was sent early and not published, only through a root
    that is still what the stage accepted (else gc reclaims it later)."""
    try:
        store.check_root()
    except Exception as exc:
        log.warning("%s: left %d early copy(ies) for gc: %s", store.host, len(store.presends), exc)
        return
    store.empty_trash([p.tmp for p in store.presends.values()])
    store.presends = {}


def fan_out_nodes(nodes: Sequence[Node], policy: Policy, fn: Callable[[Node], R]) -> list[R]:
    """``fn(node)`` for every node in parallel, at most
    ``transport.parallel_nodes`` at once; results in order. fn must not
    raise (see :func:`run_on_node`).

    On Ctrl-C the nodes' transfers are aborted (:func:`~prng_cache.cluster.fan_out`);
    then, so no half-copied temporaries stay in the nodes' RAM, this
    process's temporaries are removed from every node that can be reached,
    and the interrupt goes on."""
    cancel.reset()  # an earlier interrupt of this (long-lived) process is over
    try:
        return fan_out(list(nodes), fn, policy.transport.parallel_nodes)
    except KeyboardInterrupt:
        remove_own_temporaries(nodes, policy)
        raise


def on_nodes(nodes: Sequence[Node], policy: Policy,
             fn: Callable[[NodeStore], R]) -> dict[str, R | NodeReport]:
    """:func:`run_on_node` on every node, in parallel: host -> fn's result
    or the node's NodeReport."""
    results = fan_out_nodes(nodes, policy, lambda node: run_on_node(node, policy, fn))
    return {node.hostname: r for node, r in zip(nodes, results)}


def remove_own_temporaries(nodes: Sequence[Node], policy: Policy, wait: float | None = None) -> dict[str, int]:
    """After an interrupt: on every node it can reach (fresh connections, in
    parallel, bounded by ``transport.connect_timeout`` + a few seconds),
    delete this process's temporaries. Further interrupts do not stop it."""
    done: dict[str, int] = {}

    def clean(node: Node) -> None:
        settings = node_settings(policy, node)
        if settings.mode != "cache":
            return
        try:
            with open_transport(node, policy) as t:
                store = NodeStore(t, settings, policy.gc)
                if store.ensure_root(create=False):
                    done[node.hostname] = len(store.remove_own_temporaries())
        except Exception as exc:
            log.info("%s: could not remove temporaries after the interrupt: %s", node.hostname, exc)

    threads = [threading.Thread(target=clean, args=(n,), daemon=True) for n in nodes]
    deadline = time.monotonic() + (wait if wait is not None else float(policy.transport.connect_timeout) + 5.0)
    for th in threads:
        th.start()
    for th in threads:
        while th.is_alive() and time.monotonic() < deadline:
            try:
                th.join(max(0.0, min(0.1, deadline - time.monotonic())))
            except KeyboardInterrupt:
                continue  # a second Ctrl-C: the clean-up is already bounded
    return done
