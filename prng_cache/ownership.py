"""One node's cache root: is it ours, what in it is ours, and removing that.

Layout::

    <root>/                      0700, owned by the user, never a symlink
      manifest.msgpack           the only source of trust for serving
                                 (a large one: its header, and
      .manifest-<root>-<gen>/    its records in shards; see manifest.py)
      .prng-root-<root>          this root's ownership token (an empty file)
      .lock/                     manifest lock (mkdir is atomic everywhere)
      .tmp-<root>-<proc>-<rand>  a bundle (or one more name of a cached
                                 one) being uploaded (invisible to jobs)
      .trash-<root>-<proc>-<rand> something of ours on its way out
      <key>/<basename>           a published bundle: key = xxh3-128 of content
      <key>/.prng-<root>         marker: prng-cache created this directory

The root may hold other people's files (the users' own ``step2/`` preload,
anything at all). prng-cache deletes only what it can prove it created:
entries its manifest lists; temporaries, trash and shard directories of
other manifest generations whose name carries this root's token; and
unlisted ``<key>`` directories holding this root's marker (a killed
stager's or a reset manifest's) that no live lease names. Everything else
is "foreign": reported, never modified, moved, served or deleted.

Every deletion of a ``<key>`` directory happens as a rename into ``.trash-*``
*under the manifest lock*, after the manifest no longer lists it; only the
``rmtree`` of the trash runs after the lock is released.

Publishing and committing entries is :mod:`prng_cache.store`'s; the lock is
:mod:`prng_cache.locking`'s.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, ContextManager

from .errors import UnsafeCacheRootError
from .layout import (  # noqa: F401 - ROOT_TOKEN_PREFIX, PROCESS_TOKEN: re-exported
    MARKER_PREFIX, PROCESS_TOKEN, ROOT_TOKEN_PREFIX, TMP_PREFIX, TRASH_PREFIX, new_root_token, owner_label,
    root_tokens, unique_suffix,
)
from .locking import BREAKER_NAME, LOCK_NAME, ManifestLock
from .manifest import MANIFEST_NAME, SHARD_DIR_PREFIX, Manifest, is_key
from .manifest_files import ManifestFiles
from .policy import GcPolicy, NodeSettings
from .transport.base import FileInfo, Transport

log = logging.getLogger(__name__)

#: ~100 entries: from here on the root is listed as a large directory
LARGE_MANIFEST_BYTES = 16 << 10
#: a stage that looks at no more than 1/PARTIAL_RATIO of the entries of a
#: manifest recording at least PARTIAL_MIN_ENTRIES checks only those (and the
#: root's token file) instead of listing the root: a warm stage of 4 inputs in
#: a root of 5000 then costs about what it does in a root of 4
PARTIAL_MIN_ENTRIES = 256
PARTIAL_RATIO = 8

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
    # the manifest's bytes as read (a re-read that finds them unchanged
    # need not decode them again)
    raw: bytes | None = field(default=None, repr=False)
    # listings of the entry directories asked for with the root's (load's
    # ``wanted``): key -> {name: info} or the OSError of listing it
    entry_listings: dict = field(default_factory=dict, repr=False)
    # only the names a stage asked about were looked at, not the whole root
    # (``listing`` holds those; leftovers and other unrecorded items are not
    # known: gc and full loads find them)
    partial: bool = False
    # a full listing of a large root renewed the manifest's listed_at: the
    # stage writes the manifest for it
    relisted: bool = False
    # when the root was listed in full for it (None: partial, or a reload)
    listed_time: float | None = None

    @property
    def untracked(self) -> list[str]:
        """Hash-named directories the manifest does not list (never served)."""
        return [n for n, i in self.listing.items() if is_key(n) and n not in self.manifest.entries]

    @property
    def shard_dir(self) -> str | None:
        """The directory of the manifest's shards (None: one file)."""
        sh = self.manifest.entries.shards
        return sh.dirname if sh is not None else None

    @property
    def leftovers(self) -> list[str]:
        """Temporaries, trash and shards of other manifest generations
        carrying this root's token: ours by name."""
        prefixes = tuple(p + t + "-" for t in self.tokens for p in (TMP_PREFIX, TRASH_PREFIX, SHARD_DIR_PREFIX))
        current = self.shard_dir
        return [n for n in self.listing if prefixes and n.startswith(prefixes) and n != current]

    def is_own_name(self, name: str) -> bool:
        """Items of ours recognisable by name alone."""
        return (name in (MANIFEST_NAME, LOCK_NAME) or name in self.manifest.entries
                or name.startswith(ROOT_TOKEN_PREFIX) or name == self.shard_dir or name in self.leftovers)


@dataclass
class Survey:
    """What in a root is ours to reclaim, and what is not ours at all."""

    reclaimable: list[str] = field(default_factory=list)  # ours, unlisted, stale
    fresh: list[str] = field(default_factory=list)  # ours, unlisted, maybe in use
    foreign: list[str] = field(default_factory=list)  # not provably ours: never touched




class CacheRoot(ManifestFiles):
    """One node's cache root: checks, manifest reads and writes, ownership
    and cleanup. Not thread-safe (neither is its Transport)."""

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
        self.notes: list[str] = []  # what ensure_root changed (for the report)

    @property
    def host(self) -> str:
        return self.t.host

    def path(self, *parts: str) -> str:
        return "/".join((self.root,) + parts)

    # ------------------------------------------------------------ the root
    def ensure_root(self, create: bool = True, tighten: bool = True) -> bool:
        """Check the cache root is a private directory of ours; create it.

        /dev/shm is world-writable: anyone could have made the root first,
        as a symlink to their own directory or with open permissions. Such a
        root is refused for this node rather than written through. A root of
        ours that others may read but not write (0755) is tightened to 0700
        (``tighten=False``: reported as is, for read-only commands).
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
        if info.perms & 0o022:
            # others could plant or swap entries: never trust, never tighten
            raise UnsafeCacheRootError(
                self.host, f"cache root {self.root} has mode {info.perms:04o} (group or others may write); "
                           f"it must be private (0700)")
        if info.perms & 0o077 and tighten:
            # e.g. the users' own preload made it with `mkdir -p` (0755): ours,
            # and nobody else can write in it; make it private
            self.t.chmod(self.root, 0o700)
            note = f"cache root {self.root} had mode {info.perms:04o}; tightened to 0700"
            log.warning("%s: %s", self.host, note)
            self.notes.append(note)
        return True

    def check_root(self) -> None:
        """The root is still what :meth:`ensure_root` accepted: a real
        directory of ours that only we can write. Re-checked under the lock
        before the manifest is written: a root swapped for a symlink in the
        meantime is refused, never written through."""
        info = self.t.lstat(self.root)
        if info is None or info.is_symlink or not info.is_dir or info.uid != self._uid or info.perms & 0o022:
            what = ("gone" if info is None else "a symlink" if info.is_symlink else
                    "not a directory" if not info.is_dir else f"owned by uid {info.uid}"
                    if info.uid != self._uid else f"mode {info.perms:04o}")
            raise UnsafeCacheRootError(self.host, f"cache root {self.root} changed during the stage (now {what}); "
                                                  f"refusing to use it")

    # ------------------------------------------------------------ manifest
    def load(self, *, warn: bool = True, wanted: Callable[[Manifest], list[str]] | None = None,
             probe: list[str] | Callable[[Manifest], list[str]] | None = None) -> Snapshot:
        """Read the manifest and reconcile it with a listing of the root.

        warn=False for the re-reads under the lock: a fresh root has
        directories (just published) before it has a manifest. ``wanted``:
        the entries (keys) of the manifest whose directories to list along
        with the root (``entry_listings``; one request where the transport
        can). ``probe``: every key the caller will look at (a stage's keys,
        or a function of the manifest giving them);
        when they are few against a large manifest, only they (and the root's
        token file) are looked at, not the whole root: the snapshot is then
        ``partial`` (its ``listing`` holds only those names)."""
        data, reset = self._read_manifest()
        # listed after the manifest is read: an entry recorded meanwhile is
        # then in both; one removed meanwhile is dropped below (either order
        # is safe, the manifest's writes are merged under the lock). A large
        # manifest means a large root: list it the way that scales.
        manifest = None
        if wanted is not None and data is not None:
            manifest, reset = self._manifest_of(data, reset, False, warn)
            if reset is None and probe is not None:
                probe = probe(manifest) if callable(probe) else probe
                manifest.entries.prefetch(probe)  # their shards, in one batch
                snap = self._load_partial(manifest, data, wanted, probe)
                if snap is not None:
                    return snap
        keys = wanted(manifest) if manifest is not None else []
        entry_listings: dict = {}
        if keys:
            # of an entry only the files recorded for it are looked at (entries_ok)
            listing, by_path = self.t.survey(self.root, [self.path(k) for k in keys],
                                             children=[list(manifest.entries[k].files) for k in keys])
            entry_listings = {k: by_path[self.path(k)] for k in keys}
        elif data is not None and len(data) > LARGE_MANIFEST_BYTES:
            listing = self.t.listdir_attr_large(self.root)
        else:
            listing = self.t.listdir_attr(self.root)
        if manifest is None:
            manifest, reset = self._manifest_of(data, reset, any(is_key(n) for n in listing), warn)
        if self._uid is not None:  # ensure_root ran: what was listed must still be that root
            self.check_root()
        dropped = []
        for key in list(manifest.entries):
            info = listing.get(key)
            if info is None or not info.is_dir:
                dropped.append(key)
                del manifest.entries[key]
        self.tokens = root_tokens(listing)
        return Snapshot(manifest, listing, reset, dropped, set(self.tokens), raw=data,
                        entry_listings=entry_listings, relisted=self._note_listed(manifest),
                        listed_time=self.clock())

    def _note_listed(self, manifest: Manifest) -> bool:
        """After a full listing of a large root: remember when (renewed at
        half of gc.stale_temp, so it costs a manifest write that often at
        most). True when the manifest changed for it."""
        if manifest.entries.count_hint() < PARTIAL_MIN_ENTRIES:
            return False
        now = self.clock()
        if manifest.listed_at is not None and 0 <= now - manifest.listed_at < self.gc.stale_temp / 2:
            return False
        manifest.listed_at = now
        return True

    def _load_partial(self, manifest: Manifest, data: bytes, wanted: Callable[[Manifest], list[str]],
                      probe: list[str]) -> Snapshot | None:
        """:meth:`load` looking only at ``probe`` and the token file the
        manifest names: O(what a stage needs), not O(root). None when the
        root should be listed after all (a small or token-less manifest,
        many keys, the token file gone)."""
        count = manifest.entries.count_hint()
        token, listed = manifest.root_token, manifest.listed_at
        if token is None or count < PARTIAL_MIN_ENTRIES or len(probe) * PARTIAL_RATIO > count:
            return None
        if listed is None or not 0 <= self.clock() - listed < self.gc.stale_temp:
            return None  # time to list it in full: leftovers, entries removed by hand
        token_name = ROOT_TOKEN_PREFIX + token
        names = sorted(set(probe)) + [token_name]
        infos = self.t.lstat_many([self.path(n) for n in names])
        tok = infos.get(self.path(token_name))
        if tok is None or not tok.is_file or tok.uid != (self.t.uid() if self._uid is None else self._uid):
            return None
        listing = {n: infos[self.path(n)] for n in names if infos.get(self.path(n)) is not None}
        # listed like the full load does: only real directories (a symlink
        # is judged by its lstat above, never followed)
        keys = [k for k in wanted(manifest) if (i := listing.get(k)) is not None and i.is_dir]
        by_path = self.t.listdirs_attr([self.path(k) for k in keys]) if keys else {}
        entry_listings = {k: by_path[self.path(k)] for k in keys}
        if self._uid is not None:
            self.check_root()
        dropped = []
        for key in probe:
            if key in manifest.entries and ((info := listing.get(key)) is None or not info.is_dir):
                dropped.append(key)
                del manifest.entries[key]
        self.tokens = {token}
        return Snapshot(manifest, listing, None, dropped, {token}, raw=data, entry_listings=entry_listings,
                        partial=True)

    def reload(self, names: set[str], plan: Snapshot) -> Snapshot:
        """:meth:`load` for a commit under the lock, O(what it touches): the
        manifest again, and of the root only ``names`` (what this stage
        wrote) and the entries ``plan`` found gone, re-checked. Entries
        others recorded meanwhile are kept as they are; the next full load
        reconciles them. ``listing`` holds only those names. Takes over
        ``plan.manifest`` when the manifest is unchanged since."""
        data, reset = self._read_manifest()
        recheck = set(names) | set(plan.dropped)
        listing = self._infos(recheck)
        if data is not None and data == plan.raw:
            # nobody wrote it since the plan: the plan's own (reconciled)
            # manifest, not a second decode of thousands of entries
            manifest = plan.manifest
        else:
            manifest, reset = self._manifest_of(data, reset, any(is_key(n) for n in listing), warn=False)
        dropped = []
        manifest.entries.prefetch(recheck)  # their shards, in one batch
        for key in [k for k in recheck if k in manifest.entries]:
            info = listing.get(key)
            if info is None or not info.is_dir:
                dropped.append(key)
                del manifest.entries[key]
        return Snapshot(manifest, listing, reset, dropped, set(self.tokens), raw=data)

    def _infos(self, names: set[str]) -> dict[str, FileInfo]:
        """lstat of some names in the root (absent: missing). Many are
        cheaper as one listing of the root than one request each."""
        if len(names) > 16:
            return {n: i for n, i in self.t.listdir_attr_large(self.root).items() if n in names}
        out = {}
        for n in sorted(names):
            info = self.t.lstat(self.path(n))
            if info is not None:
                out[n] = info
        return out

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
        return f"{TMP_PREFIX}{self.token}-{PROCESS_TOKEN}-{what + '-' if what else ''}{unique_suffix()}"

    def trash_name(self) -> str:
        return f"{TRASH_PREFIX}{self.token}-{PROCESS_TOKEN}-{unique_suffix()}"

    def refresh_tokens(self) -> set[str]:
        """This root's tokens as the root holds them now (a concurrent
        stager creating the root may have left its own): one listing."""
        self.tokens = set(self.tokens) | root_tokens(self.t.listdir_attr_large(self.root))
        return self.tokens

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
        # a live lease names it: a running job may read it even though the
        # manifest no longer records it (a distrusted record or shard)
        leased = snap.manifest.leased_keys(self.clock())
        for name, info in sorted(snap.listing.items()):
            if name == MANIFEST_NAME or name in snap.manifest.entries:
                continue
            if name == snap.shard_dir and info.is_dir and not info.is_symlink:
                continue
            if name in (LOCK_NAME, BREAKER_NAME) and info.is_dir and not info.is_symlink:
                continue
            if name.startswith(ROOT_TOKEN_PREFIX) and name[len(ROOT_TOKEN_PREFIX):] in snap.tokens:
                continue
            if name in leased and is_key(name):
                out.fresh.append(name)
            elif name in leftovers or (is_key(name) and self.owns_dir(name, info, snap.tokens)):
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
            leased = snap.manifest.leased_keys(self.clock())
            for name in names:
                if name in snap.manifest.entries or name not in snap.listing or name in leased:
                    continue
                grave = self._to_trash(name)
                if grave is not None:
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

    # ------------------------------------------------------------ lock
    def manifest_lock(self) -> ManifestLock:
        return ManifestLock(self.t, self.root, uid=self._uid, stale_after=self.gc.stale_lock)

    def lock(self, timeout: float = 60.0) -> ContextManager[None]:
        """Exclusive manifest lock (see :class:`~prng_cache.locking.ManifestLock`)."""
        return self.manifest_lock().held(timeout)

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
        return [g for g in map(self._to_trash, keys) if g is not None]

    def _to_trash(self, name: str) -> str | None:
        """Rename ``name`` to a fresh trash path and return that path; None
        when it is already gone."""
        grave = self.path(self.trash_name())
        try:
            self.t.rename(self.path(name), grave)
        except OSError as exc:
            # some transports report a vanished source only by errno
            if isinstance(exc, FileNotFoundError) or exc.errno == errno.ENOENT:
                return None
            raise
        return grave

    def empty_trash(self, paths: list[str]) -> None:
        for path in paths:
            with contextlib.suppress(Exception):
                self.t.rmtree(path)
