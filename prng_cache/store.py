"""Publishing and serving entries in one node's cache root, over a Transport.

Publishing writes into ``.tmp-*`` and renames into place, so a ``<key>``
directory only ever appears complete. When ``<key>`` already exists (another
coordinator published it, or it is left over) only the missing names are
renamed into it, file by file: a directory others may read is never swapped.
The manifest is read without the lock (planning) and re-read, merged and
written under the lock (commit), so two coordinators staging at once never
lose each other's entries. A stager that merges names into an existing
``<key>`` directory and leases it does so under the same lock, so gc can
never delete a directory a stager has just recorded.

The root's layout, what in it is ours and its cleanup are
:mod:`prng_cache.ownership`'s; the lock is :mod:`prng_cache.locking`'s.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

from . import cancel
from .errors import IntegrityError, NodeError
from .manifest import Entry, Lease, Manifest
from .transport.base import DirUpload
from .model import Bundle, BundleFile
from .ownership import MARKER_PREFIX, PARTIAL_MIN_ENTRIES, CacheRoot, Snapshot
from .sending import Sending

log = logging.getLogger(__name__)

CHUNK = 1 << 20
#: an entry's last_used is moved forward only when older than this
LAST_USED_STEP = 60.0
#: bundles whose files are all at most this big are published in batches,
#: read whole into memory (hash-checked before a byte is sent) ...
SMALL_FILE = 1 << 20
#: ... at most this many bytes of them at a time (client memory stays bounded)
BATCH_BYTES = 8 << 20


@dataclass
class Published:
    bundle: Bundle
    # set when <key> already existed untrusted: swap it under the lock
    pending_tmp: str | None = None
    new_names: tuple[str, ...] = ()
    # one more name for a cached entry: (temporary file, name), renamed into
    # <key>/ under the lock, where gc cannot be burying <key> meanwhile
    pending_files: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class LeaseRequest:
    run_id: str
    ttl: float


class NodeStore(Sending, CacheRoot):
    """One node's cache root: what it serves, publishing into it, leases.
    Not thread-safe (neither is its Transport)."""

    def ram_path(self, bundle: Bundle) -> str:
        return bundle.ram_path(self.root)

    # ------------------------------------------------------------ lookups
    def entry_ok(self, key: str, entry: Entry, names: list[str] | None = None,
                 files: dict[str, BundleFile] | None = None) -> str | None:
        """Check an entry's files on disk; None when servable, else why not.

        Regular files only (a planted symlink is never served), ours, one
        link, of the recorded size. Content is checked by ``verify``, not here.
        """
        return self.entries_ok([(key, entry, names, files)])[key]

    def entries_ok(self, checks: list[tuple[str, Entry, list[str] | None, dict[str, BundleFile] | None]],
                   listed: dict | None = None) -> dict[str, str | None]:
        """:meth:`entry_ok` of many entries: their directories are listed
        together (one batch of overlapping requests, not one listing after
        another), unless ``listed`` (key -> listing, from the snapshot's
        ``entry_listings``) has them already. Only the entries asked about
        are looked at."""
        listed = listed or {}
        todo = [self.path(key) for key, *_ in checks if key not in listed]
        listings = self.t.listdirs_attr(todo) if todo else {}
        out: dict[str, str | None] = {}
        for key, entry, names, files in checks:
            listing = listed[key] if key in listed else listings[self.path(key)]
            if isinstance(listing, (FileNotFoundError, NotADirectoryError)):
                out[key] = "directory missing"
            elif isinstance(listing, OSError):
                raise listing
            else:
                out[key] = _listing_problem(self._uid, entry, listing, names, files)
        return out

    # ------------------------------------------------------------ publish
    @staticmethod
    def batchable(bundle: Bundle, existing: Entry | None) -> bool:
        return existing is None and all(f.size <= SMALL_FILE for f in bundle.files)

    def publish_many(self, items: list[tuple[Bundle, bool]]):
        """Publish new small bundles ((bundle, key_exists) each) with their
        requests overlapping (:meth:`Transport.put_dirs`), in windows of
        BATCH_BYTES. Yields (bundle, Published or the exception that stopped
        it, bytes sent); the same outcomes as :meth:`publish` one by one."""
        window: list[tuple[Bundle, bool, DirUpload]] = []
        size = 0
        for n, (b, key_exists) in enumerate(items):
            cancel.check()  # Ctrl-C: stop between bundles
            try:
                files = tuple((f.name, self.read_verified(f), 0o400) for f in b.files)
            except IntegrityError as exc:
                yield b, exc, 0
                continue
            # the marker proves, after a manifest reset or a killed stager,
            # that this directory is ours to reclaim
            marker = (f"{MARKER_PREFIX}{self.token}", b"", 0o400)
            tmp = self.path(self.tmp_name())
            window.append((b, key_exists, DirUpload(tmp, (marker, *files), None if key_exists
                                                    else self.path(b.key))))
            size += b.size
            if size >= BATCH_BYTES or n == len(items) - 1:
                yield from self._put_window(window)
                window, size = [], 0
        if window:
            yield from self._put_window(window)

    def _put_window(self, window):
        results = self.t.put_dirs([u for _, _, u in window])
        failed: list[str] = []
        try:
            for (b, key_exists, u), r in zip(window, results):
                if r is None:
                    if key_exists:  # a rename would replace an empty <key> directory
                        yield b, Published(b, pending_tmp=u.tmp, new_names=b.names), b.size
                    else:
                        yield b, Published(b, new_names=b.names), b.size
                elif r[0] == "rename" and (state := self._after_failed_rename(u.tmp, b.key)) is not None:
                    # <key> exists but is not trusted (or a concurrent stager
                    # just published it): decided under the lock in commit()
                    yield b, (Published(b, new_names=b.names) if state == "published"
                              else Published(b, pending_tmp=u.tmp, new_names=b.names)), b.size
                else:
                    failed.append(u.tmp)
                    yield b, r[1], 0
        finally:
            self.empty_trash(failed)

    def publish(self, bundle: Bundle, existing: Entry | None, *, key_exists: bool = False) -> tuple[Published, int]:
        """Upload a bundle (or the names it lacks). Returns (result, bytes sent).

        On any failure the temporary directory is removed; nothing partial is
        ever visible under ``<key>``.
        """
        if existing is not None:
            # same content already published under other names: add ours
            # file by file, each through a temporary name and a rename
            missing = [f for f in bundle.files if f.name not in existing.files]
            sent = 0
            done: list[tuple[str, str]] = []
            try:
                for f in missing:
                    # in the root, not inside <key>: a killed stager's leftover
                    # is then found and cleaned like any other temporary
                    tmp = self.path(self.tmp_name())
                    done.append((tmp, f.name))
                    sent += self.upload_file(f, tmp)
            except BaseException:
                self.empty_trash([t for t, _ in done])
                raise
            return Published(bundle, new_names=tuple(f.name for f in missing), pending_files=tuple(done)), sent
        early = self._presend_for(bundle)
        if early is not None:
            # sent while it was hashed, into a temporary holding the marker
            tmp, sent, todo = early.tmp, early.size, [f for f in bundle.files if f.src != early.path]
        else:
            tmp, sent, todo = self.path(self.tmp_name()), 0, list(bundle.files)
            self.t.mkdir(tmp, 0o700)
        try:
            if early is None:
                # the marker proves, after a manifest reset or a killed
                # stager, that this directory is ours to reclaim
                with self.t.open_write(f"{tmp}/{MARKER_PREFIX}{self.token}", 0o400):
                    pass
            sent += sum(self.upload_file(f, f"{tmp}/{f.name}") for f in todo)
            if key_exists:  # a rename would replace an empty <key> directory
                return Published(bundle, pending_tmp=tmp, new_names=bundle.names), sent
            try:
                self.t.rename(tmp, self.path(bundle.key))
            except OSError:
                state = self._after_failed_rename(tmp, bundle.key)
                if state is None:
                    raise
                if state == "pending":
                    # <key> exists but is not trusted (or a concurrent stager
                    # just published it): decide under the lock in commit()
                    return Published(bundle, pending_tmp=tmp, new_names=bundle.names), sent
            return Published(bundle, new_names=bundle.names), sent
        except BaseException:
            with contextlib.suppress(Exception):
                self.t.rmtree(tmp)
            raise

    def _after_failed_rename(self, tmp: str, key: str) -> str | None:
        """A complete ``tmp`` could not be renamed to ``<key>``: "pending"
        when ``<key>`` exists (commit decides under the lock), "published"
        when it did not and a second rename worked (a gc removed ``<key>``
        in between), None when neither."""
        if self.t.lstat(self.path(key)) is not None:
            return "pending"
        try:
            self.t.rename(tmp, self.path(key))
            return "published"
        except OSError:
            return "pending" if self.t.lstat(self.path(key)) is not None else None

    def commit(self, published: list[Published], used: set[str],
               lease: LeaseRequest | None = None,
               scoped: set[str] = frozenset(), plan: Snapshot | None = None) -> tuple[Manifest, dict[str, str]]:
        """Merge what this stage published into the manifest, under the lock.

        Re-reads the manifest so concurrent stagers' entries are kept; takes
        the lease on every key in ``used`` that is still present. Returns the
        manifest written and the keys refused (key -> reason): a ``<key>``
        path that exists but is not provably ours is never written through,
        moved or deleted.
        """
        now = self.clock()
        trash: list[str] = []
        refused: dict[str, str] = {}
        fresh: list[set[str]] = []

        def tokens_now() -> set[str]:  # rare: an unlisted <key> in the way; listed once
            if not fresh:
                fresh.append(self.refresh_tokens() if plan is not None else self.tokens)
            return fresh[0]
        if plan is not None and not published and lease is None and not plan.dropped:
            # a warm stage without a lease: when it changes nothing, the
            # manifest is not locked nor written, only read again (a gc
            # since the plan must not go unseen; one right after may remove
            # these lease-less entries, as it always could)
            m = plan.manifest
            changed = _mark_used(m, used, scoped, now)
            if (not changed and plan.raw is not None and not plan.reset_reason and not m.entries.malformed
                    and not plan.relisted and not (m.entries.shards is not None and m.entries.shards.bad)
                    and (not self.tokens or m.root_token == min(self.tokens))
                    # and nobody (gc) changed it since the plan: read again, not locked
                    and self._read_manifest()[0] == plan.raw):
                return m, refused
        try:
            with self.lock():
                self.check_root()
                # with the stage's own snapshot: only what it wrote is
                # looked at again (a warm stage lists nothing)
                snap = (self.reload({p.bundle.key for p in published}, plan) if plan is not None
                        else self.load(warn=False))
                m = snap.manifest
                if plan is not None and plan.listed_time is not None and (
                        m.entries.count_hint() + len(published) >= PARTIAL_MIN_ENTRIES):
                    # the plan listed the root: stages of a few entries may skip it a while
                    if m.listed_at is None or m.listed_at > now or m.listed_at < plan.listed_time:
                        m.listed_at = plan.listed_time
                m.entries.prefetch(used | {p.bundle.key for p in published})  # their shards, in one batch
                for p in published:
                    b = p.bundle
                    entry = m.entries.get(b.key)
                    files = {f.name: f for f in b.files}
                    if p.pending_files:
                        trash.extend(t for t, _ in p.pending_files)
                        if entry is None:
                            continue  # evicted meanwhile: nothing to add names to
                        try:
                            for tmp_file, name in p.pending_files:
                                self.t.rename(tmp_file, self.path(b.key, name))
                        except OSError as exc:
                            refused[b.key] = f"could not add a name to {self.path(b.key)}: {exc}"
                            continue
                    elif p.pending_tmp is not None:
                        trash.append(p.pending_tmp)
                        have = [] if entry is None else [
                            n for n in files if n in entry.files and self.entry_ok(b.key, entry, [n], files) is None]
                        if len(have) == len(files):
                            continue  # a concurrent stager won
                        if b.key not in snap.listing and self._take_place(p.pending_tmp, b.key):
                            pass  # gone meanwhile (reclaimed): took its place
                        elif entry is None and not self.owns_dir(b.key, self._listed(snap, b.key), tokens_now()):
                            refused[b.key] = (f"{self.path(b.key)} exists and is not prng-cache's "
                                              f"(no marker of this cache root); left untouched")
                            continue
                        # our files (hash-checked while uploaded) renamed into the
                        # existing directory one by one: the names other stagers
                        # published there, and their readers, stay
                        elif (why := self._merge(b.key, p.pending_tmp, [n for n in files if n not in have])):
                            refused[b.key] = why
                            continue
                    else:
                        info = snap.listing.get(b.key)
                        if info is None or not info.is_dir:
                            # gone between our upload and this commit: not
                            # recorded, so not served
                            log.warning("%s: %s vanished before it was recorded", self.host, b.key)
                            continue
                    if entry is None:
                        entry = m.entries[b.key] = Entry(size=0, files={}, added=now, last_used=now,
                                                         run_scoped=b.key in scoped)
                    for f in b.files:
                        if f.name in p.new_names or f.name not in entry.files:
                            entry.files[f.name] = f.hash
                    entry.size = _entry_size(entry, b)
                used = used - set(refused)
                _mark_used(m, used, scoped, now)
                m.drop_expired_leases(now)
                if lease is not None:
                    keys = {k for k in used if k in m.entries}
                    old = m.leases.get(lease.run_id)
                    if old is not None:
                        keys |= old.hashes
                    m.leases[lease.run_id] = Lease(hashes=keys, expires=now + lease.ttl, owner=self.owner)
                self.write_manifest(m)  # only what changed (nothing: nothing written)
        finally:
            self.empty_trash(trash)
        return m, refused

    def _take_place(self, tmp: str, key: str) -> bool:
        """Rename a complete ``tmp`` to ``<key>``, which the listing under
        the lock did not hold; False when ``<key>`` exists after all (another
        stager published it after that listing: publishing is not under the
        lock), to be merged into like any existing ``<key>``."""
        try:
            self.t.rename(tmp, self.path(key))
            return True
        except OSError:
            if self.t.lstat(self.path(key)) is None:
                raise
            return False

    def _listed(self, snap: Snapshot, key: str):
        """``<key>``'s listing entry, looked up again when the snapshot
        (taken under the lock) predates another stager's publish."""
        info = snap.listing.get(key)
        return info if info is not None else self.t.lstat(self.path(key))

    def _merge(self, key: str, tmp: str, names: list[str]) -> str | None:
        """Rename ``names`` from ``tmp`` into the existing directory ``key``;
        None when all were, else why not (the key is then refused for this
        stage; the names already moved are complete, hash-checked copies).

        Nothing is moved when ``key`` is not a real directory of ours:
        renaming into a symlink would write through it."""
        info = self.t.lstat(self.path(key))
        if info is None or info.is_symlink or not info.is_dir or info.uid != self._uid:
            return f"{self.path(key)} is not a directory of ours; left untouched"
        for name in names:
            try:
                self.t.rename(f"{tmp}/{name}", self.path(key, name))
            except OSError as exc:
                # e.g. a directory someone put in place of a recorded name
                log.warning("%s: could not add %s to %s: %s", self.host, name, self.path(key), exc)
                return f"could not add {name} to {self.path(key)}: {exc.strerror or exc}; left as it is"
        return None

    def release(self, run_id: str) -> bool:
        """Drop a run's lease and mark its entries used now; run-scoped
        entries no other live lease holds are removed (manifest first, then
        renamed into trash, under the lock)."""
        now = self.clock()
        graves: list[str] = []
        try:
            with self.lock():
                # of a large root, only the run's entries are looked at
                m = self.load(warn=False, wanted=lambda m: [], probe=lambda m: sorted(
                    set(m.leases[run_id].hashes if run_id in m.leases else ()) | set(m.entries.run_scoped_keys())
                )).manifest
                lease = m.leases.pop(run_id, None)
                if lease is not None:
                    for key in lease.hashes:
                        if key in m.entries:
                            m.entries[key].last_used = now
                m.drop_expired_leases(now)
                graves = self._drop_entries(m, m.orphaned_run_scoped(now))
        finally:
            self.empty_trash(graves)
        return lease is not None

    def renew(self, run_id: str, ttl: float) -> str:
        """Extend the lease of ``run_id`` to expire ``ttl`` from now (never
        earlier than it did): "renewed"; "lapsed" when it had expired
        (renewed too: what is left stays protected, but a gc meanwhile may
        have collected some of it); "gone" when there is no lease of that
        run (released, expired and dropped, node wiped): a renewal never
        creates one."""
        now = self.clock()
        with self.lock():
            # of a large root: the header alone (the leases live there)
            m = self.load(warn=False, wanted=lambda m: [], probe=lambda m: []).manifest
            lease = m.leases.get(run_id)
            if lease is None:
                return "gone"
            lapsed = lease.expires <= now
            lease.expires = max(lease.expires, now + ttl)
            self.write_manifest(m)
        return "lapsed" if lapsed else "renewed"

    def drop_orphaned_run_scoped(self, keep: set[str]) -> list[str]:
        """Remove run-scoped entries whose runs ended or crashed (no live
        lease), except ``keep`` (wanted by the stage in progress)."""
        now = self.clock()
        graves: list[str] = []
        try:
            with self.lock():
                m = self.load(warn=False).manifest
                gone = m.orphaned_run_scoped(now, keep)
                if not gone:
                    return []
                graves = self._drop_entries(m, gone)
        finally:
            self.empty_trash(graves)
        return gone

    def _drop_entries(self, m: Manifest, keys: list[str]) -> list[str]:
        """Under the lock: the manifest without ``keys`` first, then their
        directories renamed into trash (returned, to delete after the lock)."""
        for key in keys:
            del m.entries[key]
        self.write_manifest(m)
        return self.bury(keys)


def _mark_used(m: Manifest, used: set[str], scoped: set[str], now: float) -> bool:
    """Mark entries used now; True when that changed any."""
    changed = False
    for key in used:
        if key in m.entries:
            e = m.entries[key]
            # to the minute is enough for gc's ages and LRU order; a warm
            # stage then changes nothing
            if not 0 <= now - e.last_used < LAST_USED_STEP:
                e.last_used = now
                changed = True
            if key not in scoped and e.run_scoped:  # needed beyond one run now
                e.run_scoped = False
                changed = True
    return changed


def _listing_problem(uid: int | None, entry: Entry, listing: dict, names: list[str] | None,
                     files: dict[str, BundleFile] | None) -> str | None:
    for name in names or entry.names:
        if name not in entry.files:
            return f"{name} not recorded"
        info = listing.get(name)
        if info is None:
            return f"{name} missing"
        if not info.is_file:
            return f"{name} is not a regular file"
        if info.uid != uid:
            return f"{name} owned by uid {info.uid}"
        if info.nlink is not None and info.nlink > 1:
            # another path shares these bytes: they could change under us
            return f"{name} has {info.nlink} hard links"
        if files is not None and name in files:
            bf = files[name]
            if entry.files[name] != bf.hash or info.size != bf.size:
                return f"{name} differs from the recorded content"
    return None


def _entry_size(entry: Entry, bundle: Bundle) -> int:
    """Bytes on disk for an entry: same content under several names counts
    once per name (each is a separate copy)."""
    sizes = {f.name: f.size for f in bundle.files}
    # a single-file bundle's key is its content hash: every name has its size
    default = bundle.files[0].size if len(bundle.files) == 1 else 0
    return sum(sizes.get(n, default) for n in entry.files)


def ensure_node_error(exc: BaseException, host: str) -> NodeError:
    """Wrap an unexpected exception from one node into a NodeError."""
    if isinstance(exc, NodeError):
        return exc
    if isinstance(exc, OSError) and exc.strerror:
        return NodeError(host, exc.strerror if not exc.filename else f"{exc.filename}: {exc.strerror}")
    return NodeError(host, f"{type(exc).__name__}: {exc}")
