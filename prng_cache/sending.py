"""Sending a coordinator file into a node's cache root, proven: the bytes
sent are hashed as they go, and the file must not change while it is read,
so nothing is ever published under a hash that does not match its bytes.
Also the early sends of big inputs (:mod:`prng_cache.prewarm`) a new entry
is published from. A part of :class:`~prng_cache.store.NodeStore`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from . import cancel
from .errors import HashError, IntegrityError
from .hashing import StreamHasher, borrow_buffer, file_identity, open_regular, return_buffer
from .memo import HashMemo
from .model import Bundle, BundleFile

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sent:
    """What :meth:`NodeStore.send_file` copied."""
    size: int
    digest: str
    before: os.stat_result  # the file's stat when it was opened
    unchanged: bool  # the same file, untouched, from open to the end of the copy


#: what keeping one file costs besides its bytes (key, bytes object, the
#: dict's slot): empty files must count against the budget too
_KEPT_COST = 256


class SharedReads:
    """Small inputs read and proven once per stage for every node: a cold
    stage of thousands of small files to several nodes read and hashed each
    file once per node, a quarter of a node's staging time. The bytes of the
    files read last are kept, up to ``budget`` bytes (nodes publish in the
    same order, so they take them soon after one another); one evicted is
    read and proven again. Thread-safe."""

    def __init__(self, budget: int = 16 << 20):
        self.budget = budget
        self._lock = threading.Lock()
        self._kept: OrderedDict[tuple[str, str, int], bytes] = OrderedDict()
        self._bytes = 0
        self._reading: dict[tuple[str, str, int], threading.Event] = {}  # read by one node now

    def get(self, src: BundleFile, read: Callable[[BundleFile], bytes]) -> bytes:
        """``src``'s bytes: kept ones (proven to hash to ``src.hash`` when
        read), else ``read(src)`` (which proves them or raises). While one
        node reads a file, the others wait for it; when that read failed,
        each reads (and fails) for itself."""
        key = (src.src, src.hash, src.size)
        with self._lock:
            data = self._kept.get(key)
            if data is not None:
                return data
            other = self._reading.get(key)
            if other is None:
                mine = self._reading[key] = threading.Event()
        if other is not None:
            other.wait()
            with self._lock:
                data = self._kept.get(key)
            return data if data is not None else read(src)
        try:
            data = read(src)
            if len(data) + _KEPT_COST <= self.budget:
                with self._lock:
                    self._kept[key] = data
                    self._bytes += len(data) + _KEPT_COST
                    while self._bytes > self.budget:
                        _, old = self._kept.popitem(last=False)
                        self._bytes -= len(old) + _KEPT_COST
            return data
        finally:
            with self._lock:
                del self._reading[key]
            mine.set()


class Sending:
    """The sending half of a node store (mixed into NodeStore: uses its
    transport ``t`` and ``host``)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        #: big inputs sent while they were hashed (path -> prewarm.Presend):
        #: :meth:`NodeStore.publish` takes the one a new entry needs; the caller
        #: removes the rest
        self.presends: dict = {}
        #: small inputs read once for all nodes of a stage (set by the stage)
        self.shared_reads: SharedReads | None = None

    def upload_file(self, src: BundleFile, dst: str) -> int:
        """Copy one file, hashing the bytes as they are sent.

        The file was hashed earlier on the coordinator; if it changed since
        (or changes while we read it), the bytes sent no longer match the key
        and the upload is refused, so nothing is ever published under a hash
        that does not match its bytes.
        """
        sent = self.send_file(src.src, dst, limit=src.size)
        if sent.size != src.size or sent.digest != src.hash or not sent.unchanged:
            # the memo vouched for bytes this file no longer has: forget it,
            # or the input would fall back at every later stage
            with contextlib.suppress(Exception):
                HashMemo().invalidate(sent.before)
            raise IntegrityError(self.host, f"{src.src} changed since it was hashed; not published")
        return sent.size

    def send_file(self, path: str, dst: str, check: Callable[[], None] = cancel.check, *,
                  limit: int | None = None) -> "Sent":
        """Copy ``path`` to ``dst`` (created read-only), hashing the bytes as
        they are sent: what was sent, its xxh3-128, and whether the file
        stayed the same while it was read. ``check`` runs between chunks
        (Ctrl-C: it raises). ``limit``: the size the file should have; a
        file found longer (still being written) is not sent past it (the
        node's room was planned for ``limit``) and counts as changed."""
        hasher = StreamHasher()
        sent = 0
        try:
            f, before = open_regular(path)  # never blocks on a FIFO swapped in
        except HashError as exc:
            raise IntegrityError(self.host, f"cannot read {exc}") from exc
        buf = borrow_buffer()  # page-aligned: the kernel's copy into it is fastest
        view = memoryview(buf)
        try:
            with f:
                # read-only from the start (jobs must not be able to change
                # shared inputs): no chmod round trip after the upload
                with self.t.open_write(dst, 0o400) as out:
                    grew = False
                    while True:
                        check()
                        n = f.readinto(buf)
                        if not n:
                            break
                        if limit is not None and sent + n > limit:
                            grew = True  # refused by the caller: what is sent need not be complete
                            break
                        hasher.update(view[:n])
                        out.write(view[:n])
                        sent += n
                after = os.fstat(f.fileno())
        finally:
            view.release()
            return_buffer(buf)
        try:
            now = file_identity(os.stat(path))
        except OSError:
            now = None
        return Sent(sent, hasher.hexdigest(), before,
                    not grew and file_identity(after) == file_identity(before) == now)

    def read_verified(self, src: BundleFile) -> bytes:
        """The whole of a small input, proven to be the bytes that were hashed
        (same checks as :meth:`upload_file`, before anything is sent); read
        once for all nodes of a stage (``shared_reads``)."""
        if self.shared_reads is not None:
            return self.shared_reads.get(src, self._read_verified)
        return self._read_verified(src)

    def _read_verified(self, src: BundleFile) -> bytes:
        try:
            f, before = open_regular(src.src)
        except HashError as exc:
            raise IntegrityError(self.host, f"cannot read {exc}") from exc
        with f:
            data = f.read(src.size + 1)
            after = os.fstat(f.fileno())
        try:
            now = file_identity(os.stat(src.src))
        except OSError:
            now = None
        hasher = StreamHasher()
        hasher.update(data)
        if (len(data) != src.size or hasher.hexdigest() != src.hash
                or file_identity(after) != file_identity(before) or now != file_identity(before)):
            with contextlib.suppress(Exception):
                HashMemo().invalidate(before)
            raise IntegrityError(self.host, f"{src.src} changed since it was hashed; not published")
        return data

    def _presend_for(self, bundle: Bundle):
        """The early send (see :mod:`~prng_cache.prewarm`) of one of the
        bundle's files, taken, when what was sent hashes to that file's key
        part (the same proof as :meth:`upload_file`'s) under the same name."""
        p = presend_of(self.presends, bundle)
        if p is None:
            return None
        del self.presends[p.path]
        # still there as sent (a wiped root, a hand-removed temporary: then
        # uploaded again, as without the early send)
        info = self.t.lstat(f"{p.tmp}/{p.name}")
        if info is None or not info.is_file or info.size != p.size or (info.nlink or 1) > 1:
            log.warning("%s: %s sent early is gone or changed; sending it again", self.host, p.path)
            self.empty_trash([p.tmp])
            return None
        log.info("%s: %s was sent while it was hashed", self.host, p.path)
        return p


def presend_of(presends: dict, bundle: Bundle):
    """The early send (``prewarm.Presend``) a new entry for ``bundle`` is
    published from: the first of its files whose early copy hashes to that
    file's hash, under the same name (what :meth:`NodeStore.upload_file`
    would prove of an upload); None if none."""
    for f in bundle.files:
        p = presends.get(f.src)
        if p is not None and (p.digest, p.size, p.name) == (f.hash, f.size, f.name):
            return p
    return None
