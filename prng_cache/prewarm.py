"""Node connections opened while the coordinator hashes its inputs.

A stage first hashes (discover), then contacts the nodes: the SSH
handshakes and the start of each node's python helper (tens to hundreds of
ms) would wait for the hashing to end. :class:`EarlyConnections` opens them
in background threads as soon as the nodes are known; the stage takes each
node's transport when it gets there (:meth:`take`) and owns it from then
on. A node that could not be reached early is reported by the stage with
the same error, not tried twice.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Sequence

from .cluster import Node, node_settings, open_transport
from .policy import Policy
from .transport.base import Transport

log = logging.getLogger(__name__)


class EarlyConnections:
    """One background connection per cache-mode remote node; handed over
    once (:meth:`take`), the rest closed by :meth:`close`."""

    def __init__(self, nodes: Sequence[Node], policy: Policy):
        self._lock = threading.Lock()
        self._closed = False
        self._slots: dict[str, tuple[threading.Thread, list]] = {}
        for node in nodes:
            if node.is_localhost or node.hostname in self._slots:
                continue
            if node_settings(policy, node).mode != "cache":
                continue
            box: list = []
            th = threading.Thread(target=self._open, args=(node, policy, box), daemon=True,
                                  name=f"prng-cache-connect-{node.hostname}")
            self._slots[node.hostname] = (th, box)
            th.start()

    def _open(self, node: Node, policy: Policy, box: list) -> None:
        try:
            t = open_transport(node, policy)
            t.connect()
            t.expect_batches()
        except BaseException as exc:  # reported by the stage that takes it
            box.append(exc)
            return
        with self._lock:
            if self._closed:  # nobody will take it any more
                with contextlib.suppress(Exception):
                    t.close()
                return
            box.append(t)

    def take(self, node: Node) -> Transport | None:
        """``node``'s transport (connected), waiting for its thread; None
        when none was opened early. Raises what connecting raised."""
        with self._lock:
            slot = self._slots.pop(node.hostname, None)
        if slot is None:
            return None
        th, box = slot
        th.join()
        got = box[0] if box else None
        if isinstance(got, BaseException):
            raise got
        return got

    def close(self) -> None:
        """Close what was not taken (a node not staged after all); threads
        still connecting close theirs when they finish."""
        with self._lock:
            self._closed = True
            slots, self._slots = self._slots, {}
        # a thread hands over its transport under the lock, and only while
        # not closed: what is in a box now is ours to close, what is not
        # there yet its thread closes
        for _, box in slots.values():
            if box and isinstance(box[0], Transport):
                with contextlib.suppress(Exception):
                    box[0].close()

    def __enter__(self) -> "EarlyConnections":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
