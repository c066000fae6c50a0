"""Node connections opened while the coordinator hashes its inputs, and big
new inputs sent while they are hashed.

A stage first hashes (discover), then contacts the nodes: the SSH
handshakes and the start of each node's python helper (tens to hundreds of
ms) would wait for the hashing to end. :class:`EarlyConnections` opens them
in background threads as soon as the nodes are known; the stage takes each
node's transport when it gets there (:meth:`take`) and owns it from then
on. A node that could not be reached early is reported by the stage with
the same error, not tried twice.

A big input the coordinator has never hashed (no memo hit) would be read
twice, one after the other: hashed (from the disk) to learn its key, then
uploaded. Instead, as soon as discovery is about to hash it, each node's
thread starts uploading it (:meth:`EarlyConnections.presend`) into a
temporary directory of the cache root, hashing what it sends: the disk is
read once (the second reader gets the page cache) and the upload no longer
waits for the hash. The stage then publishes that temporary under the key
if what was sent hashes to the key discovery found (the same proof as any
upload), and removes it otherwise (the node already held the content, the
file changed, it was not needed after all).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Sequence

from . import cancel
from .cluster import Node, node_settings, open_transport
from .errors import PrngCacheError
from .policy import Policy
from .transport.base import Transport

log = logging.getLogger(__name__)

#: inputs at least this big are sent while they are hashed (smaller ones
#: hash in a fraction of their upload's round trips: not worth a temporary)
PRESEND_MIN = 64 << 20


class _Stopped(PrngCacheError):
    """Internal: a presend stopped because its connections are closing."""


@dataclass(frozen=True)
class Presend:
    """A big input already sent to a node: ``tmp`` holds the root's marker
    and the file under ``name``; ``digest`` is the hash of what was sent."""
    path: str
    tmp: str
    name: str
    digest: str
    size: int


@dataclass
class _Slot:
    thread: threading.Thread
    box: list = field(default_factory=list)  # the transport, or what connecting raised
    taken: bool = False
    sends: bool = True  # False for the second alias of one machine and root
    presends: dict[str, Presend] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what the presend's root check changed
    store: object = None  # the NodeStore of its presends (root checked, tokens known)
    connected: threading.Event = field(default_factory=threading.Event)  # tried (either way)


class EarlyConnections:
    """One background connection per cache-mode remote node; handed over
    once (:meth:`take`), the rest closed by :meth:`close`."""

    def __init__(self, nodes: Sequence[Node], policy: Policy,
                 jobs_of: Mapping[str, set[str]] | None = None):
        """``jobs_of``: host -> the ids of the jobs it will run (a big input
        is sent early only to the nodes whose jobs read it); None: every
        node stages every input."""
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._closed = False
        self._queue: list[tuple[str, frozenset[str] | None]] = []  # (input, its jobs), in order
        self._jobs_of = jobs_of
        self.nodes = list(nodes)  # (an interrupt removes temporaries from these)
        self._slots: dict[str, _Slot] = {}
        self._taken: dict[str, _Slot] = {}  # taken, their presends not yet handed over
        self.presend_min = PRESEND_MIN
        identities: set = set()
        for node in nodes:
            if node.is_localhost or node.hostname in self._slots:
                continue
            if node_settings(policy, node).mode != "cache":
                continue
            th = threading.Thread(target=self._run, args=(node, policy), daemon=True,
                                  name=f"prng-cache-connect-{node.hostname}")
            slot = self._slots[node.hostname] = _Slot(th)
            # one machine and root under two names is staged once (by the
            # first): only that one gets the big inputs early
            ident = _identity(node, policy)
            slot.sends = ident not in identities
            identities.add(ident)
            th.start()

    # ------------------------------------------------------------ threads
    def _run(self, node: Node, policy: Policy) -> None:
        slot = self._slots[node.hostname]
        try:
            t = open_transport(node, policy)
            t.connect()
            t.expect_batches()
        except BaseException as exc:  # reported by the stage that takes it
            slot.box.append(exc)
            slot.connected.set()
            return
        slot.connected.set()
        done = 0
        while True:
            with self._wake:
                while not self._closed and not slot.taken and done == len(self._queue):
                    self._wake.wait()
                closed = self._closed
                if not closed and done == len(self._queue):  # taken, every input sent
                    slot.box.append(t)
                    return
                if not closed:
                    path, users = self._queue[done]
            if closed:  # nobody will take it any more
                self._discard(t, slot)
                return
            done += 1
            wanted = (users is None or self._jobs_of is None
                      or not users.isdisjoint(self._jobs_of.get(node.hostname, ())))
            if slot.sends and wanted:
                self._presend(t, node, policy, slot, path)

    def _presend(self, t: Transport, node: Node, policy: Policy, slot: _Slot, path: str) -> None:
        from .store import MARKER_PREFIX, NodeStore  # (the store imports the cluster's modules)

        tmp = None

        def check() -> None:
            cancel.check()
            if self._closed:
                raise _Stopped("closing")

        try:
            with cancel.tracked(t):
                size = os.stat(path).st_size
                store = slot.store
                if store is None:
                    store = NodeStore(t, node_settings(policy, node), policy.gc)
                    store.ensure_root()
                    slot.notes.extend(store.notes)
                    store.refresh_tokens()  # the root's own token, never a new one
                    slot.store = store
                if not _fits(store, size):
                    log.debug("%s: %s not sent early: the stage decides whether it fits", node.hostname, path)
                    return
                tmp = store.path(store.tmp_name())
                t.mkdir(tmp, 0o700)
                # the marker proves, after a manifest reset or a killed
                # stager, that this directory is ours to reclaim
                with t.open_write(f"{tmp}/{MARKER_PREFIX}{store.token}", 0o400):
                    pass
                name = os.path.basename(path)
                # never more than was stat'ed: a file still growing is not sent past its room
                sent = store.send_file(path, f"{tmp}/{name}", check, limit=size)
            if not sent.unchanged:
                raise _Stopped(f"{path} changed while it was sent")
            slot.presends[path] = Presend(path, tmp, name, sent.digest, sent.size)
            log.debug("%s: %s sent while it was hashed (%d bytes)", node.hostname, path, sent.size)
        except Exception as exc:
            # never the stage's failure: it uploads (or reports) as it would have
            log.debug("%s: %s not sent early (%s)", node.hostname, path, exc)
            if tmp is not None and not cancel.cancelled():
                with contextlib.suppress(Exception):
                    t.rmtree(tmp)

    @staticmethod
    def _discard(t: Transport, slot: _Slot) -> None:
        if slot.presends:
            from .nodeops import remove_presends

            slot.store.presends = slot.presends
            remove_presends(slot.store)
        slot.presends.clear()
        with contextlib.suppress(Exception):
            t.close()

    # ------------------------------------------------------------ the caller's side
    def presend(self, path: str, users: Iterable[str] | None = None) -> None:
        """Start sending ``path`` (a big input about to be hashed) to the
        nodes that run one of ``users`` (job ids; None: every node);
        :meth:`take` waits for it."""
        with self._wake:
            if not self._closed and self._slots:
                self._queue.append((path, frozenset(users) if users is not None else None))
                self._wake.notify_all()

    @property
    def sent_early(self) -> bool:
        """Whether any input was to be sent early (temporaries may exist)."""
        return bool(self._queue)

    def take(self, node: Node) -> Transport | None:
        """``node``'s transport (connected, every presend done), waiting for
        its thread; None when none was opened early. Raises what connecting
        raised."""
        with self._wake:
            slot = self._slots.pop(node.hostname, None)
            if slot is None:
                return None
            slot.taken = True
            self._wake.notify_all()
        slot.thread.join()
        got = slot.box[0] if slot.box else None
        if isinstance(got, BaseException):
            raise got
        if got is not None:
            self._taken[node.hostname] = slot
        return got

    def handed_over(self, node: Node) -> tuple[dict[str, Presend], list[str]]:
        """What :meth:`take`'s thread sent early to ``node`` (path ->
        Presend; the stage publishes or removes each) and the notes of its
        root check (for the node's report)."""
        slot = self._taken.pop(node.hostname, None)
        return (dict(slot.presends), list(slot.notes)) if slot is not None else ({}, [])

    def close(self, wait: float = 0.0) -> None:
        """Close what was not taken (a node not staged after all), removing
        what was sent to it early; threads still connecting or sending
        close theirs when they stop (at the next chunk). ``wait``: seconds
        to wait for them (an interrupted process is about to exit)."""
        with self._wake:
            self._closed = True
            slots, self._slots = self._slots, {}
            self._wake.notify_all()
        deadline = time.monotonic() + wait
        for slot in slots.values():
            slot.thread.join(max(0.0, deadline - time.monotonic()))
        # a thread hands over its transport under the lock, and only while
        # not closed: what is in a box now is ours to close, what is not
        # there yet its thread closes
        for slot in slots.values():
            if slot.box and isinstance(slot.box[0], Transport):
                self._discard(slot.box[0], slot)

    def __enter__(self) -> "EarlyConnections":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _identity(node: Node, policy: Policy):
    from .staging import _cache_identity  # (staging imports this module)

    return _cache_identity(node, policy)


def _fits(store, size: int) -> bool:
    """Room for ``size`` more bytes under the node's capacity limits (the
    stage plans again; this only keeps an early send from filling it)."""
    from .staging import _manifest_room, _pages

    cap = store.settings.capacity
    if cap.max_bytes is not None and size > cap.max_bytes:
        return False
    usage = store.t.disk_usage(store.root)
    return usage.used + _pages(size) + 2 * _manifest_room(1) <= usage.total * cap.max_percent / 100.0
