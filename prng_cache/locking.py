"""The manifest lock of one cache root: ``mkdir <root>/.lock``.

``mkdir`` is atomic locally and over SFTP, so whoever creates ``.lock``
holds it. It is held only to re-read, merge and write the manifest
(milliseconds), so a lock that stays is a killed process's and is broken.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Iterator

from .errors import LockTimeout, UnsafeCacheRootError
from .transport.base import Transport

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
BREAKER_NAME = ".lock.break"


class ManifestLock:
    """The lock of the root ``root`` on ``transport``; ``uid`` is ours (a
    lock owned by anyone else is never broken), ``stale_after`` is
    ``gc.stale_lock`` in seconds."""

    def __init__(self, transport: Transport, root: str, *, uid: int | None, stale_after: float):
        self.t = transport
        self.path = f"{root}/{LOCK_NAME}"
        self.breaker = f"{root}/{BREAKER_NAME}"
        self.uid = uid
        self.stale_after = stale_after

    @property
    def host(self) -> str:
        return self.t.host

    @contextlib.contextmanager
    def held(self, timeout: float = 60.0) -> Iterator[None]:
        """Take the lock (waiting up to ``timeout`` s), yield, release it.

        Stale means: its node-clock age is more than ``stale_after`` either
        way (a lock dated in the future was written while the node's clock
        was wrong; waiting for the clock to catch up would wedge the node),
        or we have watched the very same lock for that long. A stale lock is
        removed by :meth:`break_stale`.
        """
        lock = self.path
        deadline = time.monotonic() + timeout
        delay = 0.01
        watched: tuple[tuple, float] | None = None  # (lock identity, first seen)
        while True:
            try:
                self.t.mkdir(lock, 0o700)
                break
            except FileExistsError:
                pass
            except OSError as exc:
                # SFTP reports EEXIST as a bare "Failure"; the transport looks
                # whether the path exists, but the holder may have released
                # the lock in between: that is contention, not an error
                if exc.errno is not None or time.monotonic() > deadline:
                    raise
            info = self.t.lstat(lock)
            if info is not None:
                ident = (info.mtime, info.uid, info.mode)
                if watched is None or watched[0] != ident:
                    watched = (ident, time.monotonic())
                if self._stale(info.mtime, watched[1]):
                    self.break_stale(info.mtime)
                    watched = None
                    continue
            if time.monotonic() > deadline:
                raise LockTimeout(self.host, f"manifest lock {lock} held for more than {timeout:.0f}s")
            time.sleep(delay)
            delay = min(delay * 2, 0.25)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                self.t.rmdir(lock)

    def _stale(self, mtime: float, first_seen: float) -> bool:
        age = self.t.now() - mtime
        return abs(age) > self.stale_after or time.monotonic() - first_seen > self.stale_after

    def break_stale(self, judged_mtime: float) -> None:
        """Remove the stale lock we judged (the one of that mtime), and nothing else.

        Breakers take ``.lock.break`` (mkdir, atomic) first, so only one at a
        time looks again and removes; the lock is removed with ``rmdir`` only,
        never renamed (putting a renamed lock back could replace a live one).
        A ``.lock`` that is not an empty directory of ours is not prng-cache's:
        it is left untouched and this node refused."""
        lock, breaker = self.path, self.breaker
        try:
            self.t.mkdir(breaker, 0o700)
        except OSError:
            info = self.t.lstat(breaker)
            if info is not None and info.is_dir and abs(self.t.now() - info.mtime) > self.stale_after:
                with contextlib.suppress(OSError):
                    self.t.rmdir(breaker)  # a breaker killed within its few milliseconds
            return  # another process is breaking it: look again
        try:
            info = self.t.lstat(lock)
            if info is None or info.mtime != judged_mtime:
                return  # already broken, or a new live lock
            if info.is_symlink or not info.is_dir or info.uid != self.uid:
                raise UnsafeCacheRootError(self.host, f"{lock} is not prng-cache's lock (not a directory of "
                                                      f"ours); left untouched, remove it by hand")
            try:
                self.t.rmdir(lock)
            except FileNotFoundError:
                return
            except OSError as exc:
                raise UnsafeCacheRootError(self.host, f"{lock} is not prng-cache's lock (not an empty "
                                                      f"directory); left untouched, remove it by hand") from exc
            log.warning("%s: broke a stale manifest lock (older than %.0fs, or dated in the future)",
                        self.host, self.stale_after)
        finally:
            with contextlib.suppress(OSError):
                self.t.rmdir(breaker)
