"""Interrupting a stage: the first Ctrl-C must stop every upload at once.

Uploads run in worker threads, one per node, blocked in socket I/O that a
KeyboardInterrupt (delivered to the main thread only) cannot reach. So the
main thread, on an interrupt, calls :func:`cancel_all`: it sets a flag that
local copies check between chunks and aborts every open transport (for SSH:
closes the connection, which makes a blocked read or write fail at once).
The stager then removes this process's temporaries on every node it can
reach with a fresh connection (``NodeStore.remove_own_temporaries``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Iterator

from .errors import PrngCacheError

log = logging.getLogger(__name__)

_cancelled = threading.Event()
_lock = threading.Lock()
_open: set = set()


class Cancelled(PrngCacheError):
    """The operation was interrupted (Ctrl-C); nothing half-done is visible."""

    def __init__(self) -> None:
        super().__init__("interrupted")


def cancelled() -> bool:
    return _cancelled.is_set()


def check() -> None:
    """Raise Cancelled if an interrupt was requested (cheap; call per chunk)."""
    if _cancelled.is_set():
        raise Cancelled()


@contextlib.contextmanager
def tracked(transport) -> Iterator[None]:
    """Register an open transport so an interrupt can abort its I/O."""
    with _lock:
        _open.add(transport)
    try:
        yield
    finally:
        with _lock:
            _open.discard(transport)


def cancel_all() -> None:
    """Request cancellation and abort every open transport's I/O."""
    _cancelled.set()
    with _lock:
        victims = list(_open)
    for t in victims:
        with contextlib.suppress(Exception):
            t.abort()


def reset() -> None:
    """Forget an earlier interrupt (a long-lived coordinator goes on)."""
    _cancelled.clear()
