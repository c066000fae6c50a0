"""Upkeep of one node's cache: eviction (gc), verification and status.

Eviction order: under the lock, the manifest is written without the victims
and then their directories are renamed into trash; the trash is deleted after
the lock is released. A concurrent stager therefore never leases, or merges
names into, a directory that is going away. Entries under a live lease are
never touched, nor is anything in the root prng-cache cannot prove it
created (``NodeStore.survey``).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from .hashing import StreamHasher
from .manifest import Manifest
from .reports import GcResult, VerifyResult
from .store import CHUNK, NodeStore

log = logging.getLogger(__name__)


def choose_victims(m: Manifest, now: float, *, max_age: float, max_bytes: int | None,
                   remove_all: bool) -> tuple[list[str], int]:
    """Pure policy: (keys to evict, count kept because leased)."""
    leased = m.leased_keys(now)
    candidates = [k for k in m.entries if k not in leased]
    kept_leased = len(m.entries) - len(candidates)
    if remove_all:
        return candidates, kept_leased
    # a run-scoped entry no lease holds belongs to an ended (or crashed) run
    victims = [k for k in candidates if now - m.entries[k].last_used > max_age or m.entries[k].run_scoped]
    if max_bytes is not None:
        total = m.total_bytes - sum(m.entries[k].size for k in victims)
        for k in sorted((k for k in candidates if k not in victims), key=lambda k: m.entries[k].last_used):
            if total <= max_bytes:
                break
            victims.append(k)
            total -= m.entries[k].size
    return victims, kept_leased


def gc_node(store: NodeStore, *, dry_run: bool = False, remove_all: bool = False) -> GcResult:
    res = GcResult()
    if not store.ensure_root(create=False):
        return res
    policy = store.gc
    cap = store.settings.capacity
    graves: list[str] = []
    try:
        with store.lock():
            snap = store.load()
            m = snap.manifest
            now = store.clock()
            victims, res.kept_leased = choose_victims(
                m, now, max_age=policy.max_age, max_bytes=cap.max_bytes, remove_all=remove_all)
            res.removed = victims
            res.freed_bytes = sum(m.entries[k].size for k in victims)
            res.kept = len(m.entries) - len(victims)
            if not dry_run:
                for k in victims:
                    del m.entries[k]
                res.expired_leases = m.drop_expired_leases(now)
                store.write_manifest(m)
                graves = store.bury(victims)
            else:
                res.expired_leases = [r for r, l in m.leases.items() if l.expires <= now]
    finally:
        store.empty_trash(graves)
    # what a killed stager or a reset manifest left: ours, unlisted, stale
    survey = store.survey(snap if dry_run else store.load(warn=False))
    res.foreign = survey.foreign
    res.leftovers = survey.reclaimable if dry_run else store.reclaim(survey.reclaimable)
    return res


def verify_node(store: NodeStore, *, fix: bool = False) -> VerifyResult:
    """Rehash every file of every entry, streaming it back from the node."""
    res = VerifyResult()
    if not store.ensure_root(create=False):
        return res
    snap = store.load()
    res.untracked = snap.untracked
    for key, entry in snap.manifest.entries.items():
        res.checked += 1
        problem = store.entry_ok(key, entry)
        if problem is None:
            for name, want in entry.files.items():
                got = _hash_remote(store, store.path(key, name))
                if got != want:
                    problem = f"{name}: content hash {got or 'unreadable'} != recorded {want}"
                    break
        if problem:
            res.corrupt[key] = problem
    if fix and res.corrupt:
        graves: list[str] = []
        try:
            with store.lock():
                m = store.load().manifest
                for key in res.corrupt:
                    m.entries.pop(key, None)
                store.write_manifest(m)
                graves = store.bury(list(res.corrupt))
        finally:
            store.empty_trash(graves)
        res.removed = list(res.corrupt)
    return res


def _hash_remote(store: NodeStore, path: str) -> str | None:
    h = StreamHasher()
    try:
        with store.t.open_read(path) as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


def status_node(store: NodeStore) -> dict[str, Any]:
    if not store.ensure_root(create=False, tighten=False):
        usage = None
        with contextlib.suppress(OSError):
            usage = store.t.disk_usage(store.root.rsplit("/", 1)[0] or "/")
        return {"status": "empty", "cache_root": store.root, "entries": 0, "bytes": 0,
                "shm_used_percent": round(usage.used_percent, 1) if usage else None,
                "leases": {}, "cache_id": None, "untracked": 0, "foreign": []}
    snap = store.load()
    survey = store.survey(snap)
    m = snap.manifest
    usage = store.t.disk_usage(store.root)
    now = store.clock()
    return {
        "status": "ok",
        "cache_root": store.root,
        "cache_id": m.cache_id,
        "entries": len(m.entries),
        "bytes": m.total_bytes,
        "shm_total_bytes": usage.total,
        "shm_used_percent": round(usage.used_percent, 1),
        "leases": {rid: {"entries": len(l.hashes), "expires_in_s": round(l.expires - now), "owner": l.owner}
                   for rid, l in m.leases.items()},
        "untracked": len(snap.untracked),
        # items prng-cache did not create (e.g. the users' own step2/): never touched
        "foreign": survey.foreign,
        "manifest_note": snap.reset_reason,
    }
