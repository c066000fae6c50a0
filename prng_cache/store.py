"""Cache operations on one node's cache root, over a Transport.

Layout::

    <root>/                      0700, owned by the user, never a symlink
      manifest.msgpack           the only source of trust for serving
      .prng-root-<root>          this root's ownership token (an empty file)
      .lock/                     manifest lock (mkdir is atomic everywhere)
      .tmp-<root>-<proc>-<rand>  a bundle (or one more name of a cached
                                 one) being uploaded (invisible to jobs)
      .trash-<root>-<proc>-<rand> something of ours on its way out
      <key>/<basename>           a published bundle: key = xxh3-128 of content
      <key>/.prng-<root>         marker: prng-cache created this directory

The root may hold other people's files (the users' own ``step2/`` preload,
anything at all). prng-cache deletes only what it can prove it created:
entries its manifest lists, temporaries and trash whose name carries this
root's token, and unlisted ``<key>`` directories holding this root's marker
(a killed stager's or a reset manifest's). Everything else is "foreign":
reported, never modified, moved, served or deleted.

Every deletion of a ``<key>`` directory happens as a rename into ``.trash-*``
*under the manifest lock*, after the manifest no longer lists it; only the
``rmtree`` of the trash runs after the lock is released. A stager that merges
names into an existing ``<key>`` directory and leases it does so under the
same lock, so gc can never delete a directory a stager has just recorded.

Publishing writes into ``.tmp-*`` and renames into place, so a ``<key>``
directory only ever appears complete. When ``<key>`` already exists (another
coordinator published it, or it is left over) only the missing names are
renamed into it, file by file: a directory others may read is never swapped.
The manifest is read without the lock (planning) and re-read, merged and
written under the lock (commit), so two coordinators staging at once never
lose each other's entries.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import socket
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from . import cancel
from .errors import HashError, IntegrityError, LockTimeout, NodeError, UnsafeCacheRootError
from .hashing import HashMemo, StreamHasher, file_identity, open_regular
from .inputs import Bundle, BundleFile
from .manifest import MANIFEST_NAME, MAX_MANIFEST_BYTES, Entry, Lease, Manifest, decode, is_key
from .policy import GcPolicy, NodeSettings
from .transport.base import FileInfo, Transport

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
LOCK_NAME = ".lock"
BREAKER_NAME = ".lock.break"
ROOT_TOKEN_PREFIX = ".prng-root-"
MARKER_PREFIX = ".prng-"
CHUNK = 1 << 20

# Names every temporary of this process carries (after the root token), so an
# interrupted process can remove exactly its own temporaries, at any age.
PROCESS_TOKEN = secrets.token_hex(4)
_TOKEN_RE = re.compile(r"^[0-9a-f]{16}$")


def _token() -> str:
    return secrets.token_hex(6)


def new_root_token() -> str:
    return secrets.token_hex(8)


def owner_label() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class Snapshot:
    """The manifest reconciled with one listing of the root."""

    manifest: Manifest
    listing: dict[str, FileInfo]
    # why the manifest was started afresh (missing with content, corrupt, newer)
    reset_reason: str | None = None
    dropped: list[str] = field(default_factory=list)  # entries whose dir vanished

    # this root's ownership tokens (normally one; two stagers creating a
    # fresh root at once may each leave one: both are ours)
    tokens: set[str] = field(default_factory=set)

    @property
    def untracked(self) -> list[str]:
        """Hash-named directories the manifest does not list (never served)."""
        return [n for n, i in self.listing.items() if is_key(n) and n not in self.manifest.entries]

    @property
    def leftovers(self) -> list[str]:
        """Temporaries and trash carrying this root's token: ours by name."""
        prefixes = tuple(p + t + "-" for t in self.tokens for p in (TMP_PREFIX, TRASH_PREFIX))
        return [n for n in self.listing if prefixes and n.startswith(prefixes)]

    def is_own_name(self, name: str) -> bool:
        """Items of ours recognisable by name alone."""
        return (name in (MANIFEST_NAME, LOCK_NAME) or name in self.manifest.entries
                or name.startswith(ROOT_TOKEN_PREFIX) or name in self.leftovers)


def root_tokens(listing: dict[str, FileInfo]) -> set[str]:
    return {n[len(ROOT_TOKEN_PREFIX):] for n, i in listing.items()
            if n.startswith(ROOT_TOKEN_PREFIX) and _TOKEN_RE.match(n[len(ROOT_TOKEN_PREFIX):]) and i.is_file}


@dataclass
class Survey:
    """What in a root is ours to reclaim, and what is not ours at all."""

    reclaimable: list[str] = field(default_factory=list)  # ours, unlisted, stale
    fresh: list[str] = field(default_factory=list)  # ours, unlisted, maybe in use
    foreign: list[str] = field(default_factory=list)  # not provably ours: never touched


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


class NodeStore:
    """One node's cache root. Not thread-safe (neither is its Transport)."""

    def __init__(self, transport: Transport, settings: NodeSettings, gc: GcPolicy | None = None,
                 *, owner: str | None = None, clock: Callable[[], float] = time.time):
        self.t = transport
        self.settings = settings
        self.root = settings.cache_root.rstrip("/") or "/"
        self.gc = gc or GcPolicy()
        self.owner = owner or owner_label()
        self.clock = clock
        self._uid: int | None = None
        self.tokens: set[str] = set()  # learnt from the last listing of the root

    @property
    def host(self) -> str:
        return self.t.host

    def path(self, *parts: str) -> str:
        return "/".join((self.root,) + parts)

    def ram_path(self, bundle: Bundle) -> str:
        return bundle.ram_path(self.root)

    # ------------------------------------------------------------ the root
    def ensure_root(self, create: bool = True) -> bool:
        """Check the cache root is a private directory of ours; create it.

        /dev/shm is world-writable: anyone could have made the root first,
        as a symlink to their own directory or with open permissions. Such a
        root is refused for this node rather than written through.
        Returns False when the root is missing and create is False.
        """
        if self._uid is None:
            self._uid = self.t.uid()
        info = self.t.lstat(self.root)
        if info is None:
            if not create:
                return False
            parent = self.root.rsplit("/", 1)[0] or "/"
            if self.t.lstat(parent) is None:
                raise UnsafeCacheRootError(self.host, f"cannot create {self.root}: {parent} does not exist")
            try:
                self.t.mkdir(self.root, 0o700)
            except FileExistsError:
                pass  # a concurrent stager made it: check it like any other
            info = self.t.lstat(self.root)
            if info is None:
                raise UnsafeCacheRootError(self.host, f"{self.root} vanished after creation")
        if info.is_symlink:
            raise UnsafeCacheRootError(self.host, f"cache root {self.root} is a symlink; refusing to use it")
        if not info.is_dir:
            raise UnsafeCacheRootError(self.host, f"cache root {self.root} is not a directory")
        if info.uid != self._uid:
            raise UnsafeCacheRootError(
                self.host, f"cache root {self.root} is owned by uid {info.uid}, not by us (uid {self._uid})")
        if info.perms & 0o077:
            raise UnsafeCacheRootError(
                self.host, f"cache root {self.root} has mode {info.perms:04o}; it must be private (0700)")
        return True

    # ------------------------------------------------------------ manifest
    def load(self, *, warn: bool = True) -> Snapshot:
        """Read the manifest and reconcile it with a listing of the root.

        warn=False for the re-reads under the lock: a fresh root has
        directories (just published) before it has a manifest."""
        listing = self.t.listdir_attr(self.root)
        reset = None
        try:
            data = self.t.read_bytes(self.path(MANIFEST_NAME), MAX_MANIFEST_BYTES + 1)
        except FileNotFoundError:
            data = None
        except OSError as exc:
            data, reset = None, f"manifest unreadable ({exc})"
        manifest = None
        if data is not None:
            if len(data) > MAX_MANIFEST_BYTES:
                reset = "manifest larger than any prng-cache writes"
            else:
                manifest, reset = decode(data)
        elif reset is None and any(is_key(n) for n in listing):
            reset = "manifest missing"
        if manifest is None:
            if reset and warn:
                log.warning("%s: %s; starting a new manifest, existing entries are not trusted",
                            self.host, reset)
            manifest = Manifest.new()
        dropped = []
        for key in list(manifest.entries):
            info = listing.get(key)
            if info is None or not info.is_dir:
                dropped.append(key)
                del manifest.entries[key]
        self.tokens = root_tokens(listing)
        return Snapshot(manifest, listing, reset, dropped, set(self.tokens))

    # ------------------------------------------------------------ ownership
    @property
    def token(self) -> str:
        """This root's ownership token, created on first need (an empty file
        ``.prng-root-<token>``: its name is the proof, read with the listing)."""
        if not self.tokens:
            tok = new_root_token()
            with self.t.open_write(self.path(ROOT_TOKEN_PREFIX + tok), 0o600):
                pass
            self.tokens = {tok}
        return min(self.tokens)

    def tmp_name(self, what: str = "") -> str:
        return f"{TMP_PREFIX}{self.token}-{PROCESS_TOKEN}-{what + '-' if what else ''}{_token()}"

    def trash_name(self) -> str:
        return f"{TRASH_PREFIX}{self.token}-{PROCESS_TOKEN}-{_token()}"

    def owns_dir(self, name: str, info: FileInfo | None, tokens: set[str] | None = None) -> bool:
        """A directory of ours that the manifest does not list: a real
        directory, our uid, holding this root's marker file."""
        tokens = self.tokens if tokens is None else tokens
        if info is None or not info.is_dir or info.uid != self._uid or not tokens:
            return False
        try:
            inside = self.t.listdir_attr(self.path(name))
        except OSError:
            return False
        return any((m := inside.get(MARKER_PREFIX + t)) is not None and m.is_file for t in tokens)

    def survey(self, snap: Snapshot) -> Survey:
        """Sort every item of the root into ours-to-reclaim and foreign."""
        now = self.t.now()
        out = Survey()
        leftovers = set(snap.leftovers)
        for name, info in sorted(snap.listing.items()):
            if name == MANIFEST_NAME or name in snap.manifest.entries:
                continue
            if name in (LOCK_NAME, BREAKER_NAME) and info.is_dir and not info.is_symlink:
                continue
            if name.startswith(ROOT_TOKEN_PREFIX) and name[len(ROOT_TOKEN_PREFIX):] in snap.tokens:
                continue
            if name in leftovers or (is_key(name) and self.owns_dir(name, info, snap.tokens)):
                # judge age both ways: a node clock that was wrong when the
                # item was written must not make it immortal
                stale = abs(now - self._newest_mtime(name, info)) > self.gc.stale_temp
                (out.reclaimable if stale else out.fresh).append(name)
            else:
                out.foreign.append(name)
        return out

    def reclaim(self, names: list[str]) -> list[str]:
        """Delete items of ours that the manifest does not list.

        Re-checked and renamed away under the lock (a concurrent stager may
        have recorded an unlisted directory meanwhile: then it stays);
        deleted after. Returns what was removed."""
        if not names:
            return []
        graves: list[str] = []
        removed: list[str] = []
        with self.lock():
            snap = self.load(warn=False)
            for name in names:
                if name in snap.manifest.entries or name not in snap.listing:
                    continue
                grave = self.path(self.trash_name())
                try:
                    self.t.rename(self.path(name), grave)
                except FileNotFoundError:
                    continue
                graves.append(grave)
                removed.append(name)
        self.empty_trash(graves)
        return removed

    def remove_own_temporaries(self) -> list[str]:
        """After an interrupt: delete this process's temporaries, at any age."""
        listing = self.t.listdir_attr(self.root)
        mine = tuple(p + t + "-" + PROCESS_TOKEN + "-" for t in root_tokens(listing)
                     for p in (TMP_PREFIX, TRASH_PREFIX))
        gone = []
        for name in listing:
            if mine and name.startswith(mine):
                with contextlib.suppress(FileNotFoundError):
                    self.t.rmtree(self.path(name))
                gone.append(name)
        return gone

    def write_manifest(self, m: Manifest) -> None:
        """Atomic replace: a reader sees the old or the new manifest, never half."""
        tmp = self.path(self.tmp_name("manifest"))
        try:
            with self.t.open_write(tmp, 0o600) as f:
                f.write(m.to_bytes())
            self.t.rename(tmp, self.path(MANIFEST_NAME))
        except BaseException:
            with contextlib.suppress(Exception):
                self.t.unlink(tmp)
            raise

    @contextlib.contextmanager
    def lock(self, timeout: float = 60.0) -> Iterator[None]:
        """Exclusive manifest lock: ``mkdir .lock`` is atomic locally and over SFTP.

        The lock is held only to re-read, merge and write the manifest
        (milliseconds), so a stale lock was left by a killed process and is
        broken. Stale means: its node-clock age is more than ``gc.stale_lock``
        either way (a lock dated in the future was written while the node's
        clock was wrong; waiting for the clock to catch up would wedge the
        node), or we have watched the very same lock for that long. Breaking
        renames it away (of two breakers only one succeeds); if what was
        renamed turns out to be fresh (a third process took the lock between
        our look and our rename) it is put back.
        """
        lock = self.path(LOCK_NAME)
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
                if self._lock_stale(info.mtime, watched[1]):
                    self._break_lock(lock, info.mtime)
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

    def _lock_stale(self, mtime: float, first_seen: float) -> bool:
        age = self.t.now() - mtime
        return abs(age) > self.gc.stale_lock or time.monotonic() - first_seen > self.gc.stale_lock

    def _break_lock(self, lock: str, judged_mtime: float) -> None:
        """Remove the stale lock we judged, and nothing else.

        Breakers take ``.lock.break`` (mkdir, atomic) first, so only one at a
        time looks again and removes; the lock is removed with ``rmdir`` only,
        never renamed (putting a renamed lock back could replace a live one).
        A ``.lock`` that is not an empty directory of ours is not prng-cache's:
        it is left untouched and this node refused."""
        breaker = self.path(BREAKER_NAME)
        try:
            self.t.mkdir(breaker, 0o700)
        except OSError:
            info = self.t.lstat(breaker)
            if info is not None and info.is_dir and abs(self.t.now() - info.mtime) > self.gc.stale_lock:
                with contextlib.suppress(OSError):
                    self.t.rmdir(breaker)  # a breaker killed within its few milliseconds
            return  # another process is breaking it: look again
        try:
            info = self.t.lstat(lock)
            if info is None or info.mtime != judged_mtime:
                return  # already broken, or a new live lock
            if info.is_symlink or not info.is_dir or info.uid != self._uid:
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
                        self.host, self.gc.stale_lock)
        finally:
            with contextlib.suppress(OSError):
                self.t.rmdir(breaker)

    # ------------------------------------------------------------ lookups
    def entry_ok(self, key: str, entry: Entry, names: list[str] | None = None,
                 files: dict[str, BundleFile] | None = None) -> str | None:
        """Check an entry's files on disk; None when servable, else why not.

        Regular files only (a planted symlink is never served), ours, and of
        the recorded size. Content is checked by ``verify``, not here.
        """
        try:
            listing = self.t.listdir_attr(self.path(key))
        except FileNotFoundError:
            return "directory missing"
        for name in names or entry.names:
            if name not in entry.files:
                return f"{name} not recorded"
            info = listing.get(name)
            if info is None:
                return f"{name} missing"
            if not info.is_file:
                return f"{name} is not a regular file"
            if info.uid != self._uid:
                return f"{name} owned by uid {info.uid}"
            if info.nlink is not None and info.nlink > 1:
                # another path shares these bytes: they could change under us
                return f"{name} has {info.nlink} hard links"
            if files is not None and name in files:
                bf = files[name]
                if entry.files[name] != bf.hash or info.size != bf.size:
                    return f"{name} differs from the recorded content"
        return None

    # ------------------------------------------------------------ publish
    def upload_file(self, src: BundleFile, dst: str) -> int:
        """Copy one file, hashing the bytes as they are sent.

        The file was hashed earlier on the coordinator; if it changed since
        (or changes while we read it), the bytes sent no longer match the key
        and the upload is refused, so nothing is ever published under a hash
        that does not match its bytes.
        """
        hasher = StreamHasher()
        sent = 0
        try:
            f, before = open_regular(src.src)  # never blocks on a FIFO swapped in
        except HashError as exc:
            raise IntegrityError(self.host, f"cannot read {exc}") from exc
        with f:
            buf = bytearray(CHUNK)
            view = memoryview(buf)
            with self.t.open_write(dst, 0o600) as out:
                while True:
                    cancel.check()  # Ctrl-C: stop between chunks
                    n = f.readinto(buf)
                    if not n:
                        break
                    hasher.update(view[:n])
                    out.write(view[:n])
                    sent += n
            after = os.fstat(f.fileno())
        try:
            now = file_identity(os.stat(src.src))
        except OSError:
            now = None
        if (sent != src.size or hasher.hexdigest() != src.hash
                or file_identity(after) != file_identity(before) or now != file_identity(before)):
            # the memo vouched for bytes this file no longer has: forget it,
            # or the input would fall back at every later stage
            with contextlib.suppress(Exception):
                HashMemo().invalidate(before)
            raise IntegrityError(self.host, f"{src.src} changed since it was hashed; not published")
        self.t.chmod(dst, 0o400)  # jobs must not be able to change shared inputs
        return sent

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
        tmp = self.path(self.tmp_name())
        self.t.mkdir(tmp, 0o700)
        try:
            # the marker proves, after a manifest reset or a killed stager,
            # that this directory is ours to reclaim
            with self.t.open_write(f"{tmp}/{MARKER_PREFIX}{self.token}", 0o400):
                pass
            sent = sum(self.upload_file(f, f"{tmp}/{f.name}") for f in bundle.files)
            if key_exists:  # a rename would replace an empty <key> directory
                return Published(bundle, pending_tmp=tmp, new_names=bundle_names(bundle)), sent
            try:
                self.t.rename(tmp, self.path(bundle.key))
            except OSError:
                if self.t.lstat(self.path(bundle.key)) is None:
                    raise
                # <key> exists but is not trusted (or a concurrent stager just
                # published it): decide under the lock in commit()
                return Published(bundle, pending_tmp=tmp, new_names=bundle_names(bundle)), sent
            return Published(bundle, new_names=bundle_names(bundle)), sent
        except BaseException:
            with contextlib.suppress(Exception):
                self.t.rmtree(tmp)
            raise

    def commit(self, published: list[Published], used: set[str],
               lease: LeaseRequest | None = None) -> tuple[Manifest, dict[str, str]]:
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
        try:
            with self.lock():
                snap = self.load(warn=False)
                m = snap.manifest
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
                        if b.key not in snap.listing:  # gone meanwhile (reclaimed): take its place
                            self.t.rename(p.pending_tmp, self.path(b.key))
                        elif entry is None and not self.owns_dir(b.key, snap.listing.get(b.key)):
                            refused[b.key] = (f"{self.path(b.key)} exists and is not prng-cache's "
                                              f"(no marker of this cache root); left untouched")
                            continue
                        # our files (hash-checked while uploaded) renamed into the
                        # existing directory one by one: the names other stagers
                        # published there, and their readers, stay
                        elif not self._merge(b.key, p.pending_tmp, [n for n in files if n not in have]):
                            refused[b.key] = f"{self.path(b.key)} is not a directory of ours; left untouched"
                            continue
                    else:
                        info = snap.listing.get(b.key)
                        if info is None or not info.is_dir:
                            # gone between our upload and this commit: not
                            # recorded, so not served
                            log.warning("%s: %s vanished before it was recorded", self.host, b.key)
                            continue
                    if entry is None:
                        entry = m.entries[b.key] = Entry(size=0, files={}, added=now, last_used=now)
                    for f in b.files:
                        if f.name in p.new_names or f.name not in entry.files:
                            entry.files[f.name] = f.hash
                    entry.size = _entry_size(entry, b)
                used = used - set(refused)
                for key in used:
                    if key in m.entries:
                        m.entries[key].last_used = now
                m.drop_expired_leases(now)
                if lease is not None:
                    keys = {k for k in used if k in m.entries}
                    old = m.leases.get(lease.run_id)
                    if old is not None:
                        keys |= old.hashes
                    m.leases[lease.run_id] = Lease(hashes=keys, expires=now + lease.ttl, owner=self.owner)
                self.write_manifest(m)
        finally:
            self.empty_trash(trash)
        return m, refused

    def _merge(self, key: str, tmp: str, names: list[str]) -> bool:
        """Rename ``names`` from ``tmp`` into the existing directory ``key``.

        False (nothing moved) when ``key`` is not a real directory of ours:
        renaming into a symlink would write through it."""
        info = self.t.lstat(self.path(key))
        if info is None or info.is_symlink or not info.is_dir or info.uid != self._uid:
            return False
        moved = 0
        try:
            for name in names:
                self.t.rename(f"{tmp}/{name}", self.path(key, name))
                moved += 1
        except OSError:
            if moved:
                raise
            return False
        return True

    def release(self, run_id: str) -> bool:
        """Drop a run's lease and mark its entries used now."""
        now = self.clock()
        with self.lock():
            m = self.load(warn=False).manifest
            lease = m.leases.pop(run_id, None)
            if lease is not None:
                for key in lease.hashes:
                    if key in m.entries:
                        m.entries[key].last_used = now
            m.drop_expired_leases(now)
            self.write_manifest(m)
        return lease is not None

    # ------------------------------------------------------------ cleanup
    def _newest_mtime(self, name: str, info: FileInfo) -> float:
        newest = info.mtime
        if info.is_dir:
            with contextlib.suppress(OSError):
                for child in self.t.listdir_attr(self.path(name)).values():
                    newest = max(newest, child.mtime)
        return newest

    def bury(self, keys: list[str]) -> list[str]:
        """Rename hash directories, already dropped from the manifest, into
        trash. Call under the lock: a reader never sees a half-deleted entry
        and a stager never records a directory that is going away."""
        graves = []
        for key in keys:
            grave = self.path(self.trash_name())
            try:
                self.t.rename(self.path(key), grave)
            except FileNotFoundError:
                continue
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    continue
                raise
            graves.append(grave)
        return graves

    def empty_trash(self, paths: list[str]) -> None:
        for path in paths:
            with contextlib.suppress(Exception):
                self.t.rmtree(path)


def bundle_names(bundle: Bundle) -> tuple[str, ...]:
    return tuple(f.name for f in bundle.files)


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
