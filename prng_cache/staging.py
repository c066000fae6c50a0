"""Stage bundles onto nodes: one manifest read, upload only what is missing,
one locked manifest update per node. Per-node failures become reports."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable

from .cluster import Node, connection_identity, node_settings
from .errors import IntegrityError, TransportError
from .model import Bundle
from .nodeops import fan_out_nodes, run_on_node
from .policy import Policy
from .reports import NodeReport, fmt_bytes
from .sending import SharedReads, presend_of
from .store import LeaseRequest, NodeStore, Published, ensure_node_error

if TYPE_CHECKING:
    from .localstate import CacheIdRecord
    from .prewarm import EarlyConnections

log = logging.getLogger(__name__)

#: progress callback: (host, event, detail) — the CLI prints, the library never does
Progress = Callable[[str, str, dict], None]


def no_progress(host: str, event: str, detail: dict) -> None:
    pass


def stage_node(store: NodeStore, bundles: list[Bundle], *, lease: LeaseRequest | None = None,
               progress: Progress = no_progress, reads: SharedReads | None = None) -> NodeReport:
    """Make the node hold every bundle that fits; report what it can serve.
    ``reads``: small inputs read once for all the nodes staged at once.

    Raises NodeError/TransportError only for node-wide failures (unsafe root,
    connection lost); a bundle that cannot be staged is skipped with a reason.
    """
    host = store.host
    store.shared_reads = reads
    rep = NodeReport(host=host, status="ok", cache_root=store.root)
    store.t.expect_batches()
    store.ensure_root()
    rep.warnings.extend(store.notes)
    unique: dict[str, Bundle] = {}
    for b in bundles:
        unique.setdefault(b.key + "/" + b.name, b)
    # one directory per key: the same content named twice is published once,
    # with both names, instead of two publishers racing for one directory
    groups: dict[str, Bundle] = {}
    for b in unique.values():
        g = groups.get(b.key)
        if g is None:
            groups[b.key] = b
        else:
            extra_files = tuple(f for f in b.files if f.name not in {x.name for x in g.files})
            groups[b.key] = replace(g, files=g.files + extra_files)
    # the root and the entries this stage needs, listed together
    # (of a large root, only those entries are looked at: see CacheRoot.load)
    # (not with capacity.max_bytes: its total must count only what is there)
    snap = store.load(wanted=lambda m: [k for k in groups if k in m.entries],
                      probe=list(groups) if store.settings.capacity.max_bytes is None else None)
    m = snap.manifest
    if snap.reset_reason:
        rep.warnings.append(f"{snap.reset_reason}: rebuilt")
    _report_malformed(rep, m)
    # run-scoped copies of a run that crashed (its lease expired): RAM on an
    # 8 GB node is not kept for gc.max_age; what this stage wants again stays
    wanted = {b.key for b in bundles}
    if m.orphaned_run_scoped(store.clock(), wanted):
        gone = store.drop_orphaned_run_scoped(wanted)
        for key in gone:
            m.entries.pop(key, None)
            snap.listing.pop(key, None)
        if gone:
            rep.warnings.append(f"removed {len(gone)} run-scoped input(s) of ended runs")
    if snap.leftovers or snap.untracked:
        # what a killed stager or a reset manifest left is never served; once
        # stale it only holds the node's RAM (8 GB rigs): reclaim what is
        # provably ours, leave everything else alone
        cleaned = store.reclaim(store.survey(snap).reclaimable)
        for name in cleaned:
            snap.listing.pop(name, None)
        if cleaned:
            rep.warnings.append(f"removed {len(cleaned)} stale temporary or unrecorded item(s) of prng-cache's own "
                                f"left by an interrupted run")

    # kept only for their run: unless another bundle of this stage needs the
    # same content beyond it
    # (a stage without a run's lease, `prng-cache stage`, keeps them like any input)
    scoped = ({b.key for b in bundles if b.run_scoped} - {b.key for b in bundles if not b.run_scoped}
              if lease is not None else set())

    present: list[Bundle] = []
    missing: list[tuple[Bundle, Any]] = []  # (bundle, existing entry to extend or None)
    # only the entries this stage needs are checked, all their listings at once
    checks = []
    for b in groups.values():
        entry = m.entries.get(b.key)
        have = [f.name for f in b.files if f.name in entry.files] if entry is not None else []
        if have:
            checks.append((b.key, entry, have, {f.name: f for f in b.files}))
    problems = store.entries_ok(checks, snap.entry_listings)
    for b in groups.values():
        entry = m.entries.get(b.key)
        if entry is not None:
            have = [f.name for f in b.files if f.name in entry.files]
            problem = problems.get(b.key)
            if problem is None and len(have) == len(b.files):
                present.append(b)
                continue
            if problem is not None:
                # listed but not servable (deleted, replaced, planted link):
                # republish from scratch and swap it out under the lock
                log.warning("%s: entry %s not servable (%s); restaging", host, b.key, problem)
                rep.warnings.append(f"entry {b.key[:12]} for {b.name}: {problem}; restaged")
                missing.append((b, None))
                continue
            missing.append((b, entry))
        else:
            missing.append((b, None))
    rep.present_files = sum(len(b.files) for b in present)
    rep.present_bytes = sum(b.size for b in present)

    # headroom: decide up front what fits, in the order given (most shared first)
    cap = store.settings.capacity
    if store.presends:
        # sent early: what a new entry will be published from stays (and is
        # counted once, as that entry's need); the rest goes before anything
        # else is written
        _keep_presends(store, [b for b, entry in missing if entry is None])
    usage = store.t.disk_usage(store.root)
    if store.presends:
        early = sum(_pages(p.size) + 2 * PAGE for p in store.presends.values())
        usage = replace(usage, used=max(0, usage.used - early))
    planned: list[tuple[Bundle, Any]] = []
    extra = 0  # content bytes (capacity.max_bytes counts these)
    # what the file system really spends: tmpfs gives every file and
    # directory whole pages, and the manifest must still fit afterwards
    extra_disk = 0
    # what the manifest write rewrites: all of it, or (sharded) the shards read
    entries = m.entries.count_hint() if m.entries.shards is None else m.entries.in_memory()
    for b, entry in missing:
        new_files = [f for f in b.files if entry is None or f.name not in entry.files]
        need = sum(f.size for f in new_files)
        need_disk = sum(_pages(f.size) for f in new_files) + (PAGE if entry is None else 0)
        after = usage.used + extra_disk + need_disk + _manifest_room(entries + (entry is None))
        if cap.max_bytes is not None and m.total_bytes + extra + need > cap.max_bytes:
            _skip(rep, bundles, b.key, f"would exceed capacity.max_bytes ({fmt_bytes(cap.max_bytes)}) on {host}")
        elif after > usage.total * cap.max_percent / 100.0:
            _skip(rep, bundles, b.key, f"would fill {store.root} past capacity.max_percent "
                                      f"({cap.max_percent:g}% of {fmt_bytes(usage.total)}) on {host}")
        else:
            planned.append((b, entry))
            extra += need
            extra_disk += need_disk
            entries += entry is None
    if store.presends:  # of inputs that do not fit: their room is given back now
        _keep_presends(store, [b for b, _ in planned])
    if usage.total and (usage.used + extra_disk) > usage.total * cap.warn_percent / 100.0:
        pct = 100.0 * (usage.used + extra_disk) / usage.total
        rep.warnings.append(f"/dev/shm use {pct:.0f}% is above capacity.warn_percent ({cap.warn_percent:g}%)")

    published: list[Published] = []

    def outcome(b: Bundle, pub: Published | BaseException, sent: int) -> None:
        if isinstance(pub, IntegrityError):
            _skip(rep, bundles, b.key, pub.problem)
        elif isinstance(pub, TransportError) or not isinstance(pub, (Published, OSError)):
            raise pub
        elif isinstance(pub, OSError):
            _skip(rep, bundles, b.key, f"upload failed: {pub.strerror or pub}")
        else:
            published.append(pub)
            rep.copied_files += len(pub.new_names)
            rep.copied_bytes += sent

    # new small bundles: many in flight at once; the rest one by one (each
    # file's writes are pipelined by the transport)
    small = [(b, b.key in snap.listing) for b, entry in planned if store.batchable(b, entry)]
    for b, _ in small:
        progress(host, "upload", {"name": b.name, "bytes": b.size})
    for b, pub, sent in store.publish_many(small):
        outcome(b, pub, sent)
    for b, entry in planned:
        if store.batchable(b, entry):
            continue
        progress(host, "upload", {"name": b.name, "bytes": b.size})
        try:
            pub, sent = store.publish(b, entry, key_exists=b.key in snap.listing)
        except (IntegrityError, TransportError, OSError) as exc:
            pub, sent = exc, 0
        outcome(b, pub, sent)

    used = {b.key for b in present} | {p.bundle.key for p in published}
    try:
        m, refused = store.commit(published, used, lease, scoped=scoped, plan=snap)
    except Exception as exc:
        # nothing was recorded, so nothing is served: what this stage just
        # published would only hold the node's RAM until gc.stale_temp
        err = ensure_node_error(exc, host)
        removed = _unpublish(store, published)
        rep.status = "error"
        rep.reason = (f"manifest update failed ({err.problem}); nothing staged"
                      + (f"; removed the {removed} entry(ies) just uploaded" if removed else ""))
        rep.skipped = {b.path: rep.reason for b in bundles}
        return rep
    rep.cache_id = m.cache_id
    for b in bundles:  # every path, also two paths to one (key, name)
        if b.path in rep.skipped:
            continue
        entry = m.entries.get(b.key)
        if b.key in refused:
            rep.skipped[b.path] = refused[b.key]
        elif entry is not None and all(f.name in entry.files for f in b.files):
            rep.staged[b.path] = store.ram_path(b)
        else:  # evicted by a concurrent gc between planning and commit
            rep.skipped[b.path] = "evicted concurrently; try again"
    if rep.skipped:
        rep.status = "fallback"
        rep.reason = f"{len(rep.skipped)} input(s) not staged: " + "; ".join(
            sorted({r for r in rep.skipped.values()}))
    return rep


def _keep_presends(store: NodeStore, bundles: list[Bundle]) -> None:
    """Keep the early sends ``store.publish`` will take for ``bundles`` (one
    per bundle, as it takes them); remove the others."""
    keep = {p.path: p for b in bundles if (p := presend_of(store.presends, b)) is not None}
    drop = [p.tmp for src, p in store.presends.items() if src not in keep]
    store.presends = keep
    store.empty_trash(drop)


#: the allocation unit assumed for the cache root's file system (tmpfs: a page)
PAGE = 4096
#: manifest bytes per entry, generously (msgpack: ~150)
MANIFEST_ENTRY = 256


def _pages(size: int) -> int:
    return -(-size // PAGE) * PAGE


def _manifest_room(entries: int) -> int:
    """Room for the new manifest of ``entries`` entries: it is written
    beside the old one (already in use) before it replaces it."""
    return _pages(entries * MANIFEST_ENTRY)


def _unpublish(store: NodeStore, published: list[Published]) -> int:
    """Best effort after a failed commit: remove the directories this stage
    created and could not record (re-checked under the lock by reclaim)."""
    keys = [p.bundle.key for p in published if p.pending_tmp is None and not p.pending_files]
    for p in published:
        store.empty_trash([p.pending_tmp] if p.pending_tmp else [t for t, _ in p.pending_files])
    try:
        return len(store.reclaim(keys))
    except Exception as exc:  # the node may be full or gone: gc reclaims later
        log.warning("%s: could not remove unrecorded uploads now (%s)", store.host, exc)
        return 0


def _report_malformed(rep: NodeReport, m) -> None:
    """Entries whose manifest record did not check: not trusted (dropped
    from the manifest when it is next written; the directory, if ours, is
    reclaimed like any unrecorded one)."""
    sh = m.entries.shards
    if sh is not None and sh.bad:
        log.warning("%s: %d manifest shard(s) unreadable; their records are not trusted", rep.host, len(sh.bad))
        rep.warnings.append(f"{len(sh.bad)} manifest shard(s) unreadable or garbled: their records not trusted")
    if m.entries.malformed:
        keys = ", ".join(k[:12] for k in m.entries.malformed[:3]) + (" ..." if len(m.entries.malformed) > 3 else "")
        log.warning("%s: %d manifest record(s) malformed (%s); not trusted", rep.host, len(m.entries.malformed), keys)
        rep.warnings.append(f"{len(m.entries.malformed)} manifest record(s) malformed ({keys}): not trusted, dropped")


def _skip(rep: NodeReport, bundles: list[Bundle], key: str, reason: str) -> None:
    for b in bundles:
        if b.key == key:
            rep.skipped[b.path] = reason


def held_inputs(store: NodeStore, bundles: list[Bundle]) -> dict[str, str]:
    """Coordinator path -> RAM path for the bundles the node already holds
    (manifest-listed and servable); reads, never writes."""
    if not store.ensure_root(create=False):
        return {}
    m = store.load().manifest
    held = [b for b in bundles
            if (e := m.entries.get(b.key)) is not None and all(f.name in e.files for f in b.files)]
    checks: dict[str, tuple] = {}
    for b in held:  # one check per key, with every name the bundles need
        prev = checks.get(b.key)
        names = sorted({f.name for f in b.files} | (set(prev[2]) if prev else set()))
        files = {**(prev[3] if prev else {}), **{f.name: f for f in b.files}}
        checks[b.key] = (b.key, m.entries[b.key], names, files)
    problems = store.entries_ok(list(checks.values()))
    # a key with a problem may still serve some bundles' names: ask per bundle (rare)
    return {b.path: store.ram_path(b) for b in held
            if problems[b.key] is None or store.entry_ok(b.key, m.entries[b.key], [f.name for f in b.files],
                                                         {f.name: f for f in b.files}) is None}


def stage_cluster(nodes: list[Node], bundles_for: Callable[[Node], list[Bundle]], policy: Policy, *,
                  lease: LeaseRequest | None = None, progress: Progress = no_progress,
                  ids: CacheIdRecord | None = None,
                  early: EarlyConnections | None = None) -> dict[str, NodeReport]:
    """Stage every node in parallel (bounded by transport.parallel_nodes);
    ``early``: connections opened while the inputs were hashed."""

    reads = SharedReads()

    def one(node: Node) -> NodeReport:
        progress(node.hostname, "start", {})
        t0 = time.monotonic()
        rep = run_on_node(node, policy, lambda s: stage_node(s, bundles_for(node), lease=lease, progress=progress,
                                                             reads=reads), early)
        rep.seconds = time.monotonic() - t0
        if rep.status == "fallback":
            log.warning("%s: fallback: %s", node.hostname, rep.reason)
        if ids is not None and rep.cache_id:
            old = ids.swap(node.hostname, rep.cache_root or "", rep.cache_id)
            if old is not None and old != rep.cache_id:
                rep.warnings.append(f"cache was wiped or replaced since the last stage "
                                    f"(cache_id {old} -> {rep.cache_id}); restaged")
        progress(node.hostname, "done", rep.to_dict())
        return rep

    # The same machine and cache root under two host aliases is staged once,
    # with the union of what both need: two stagers on one fresh root would
    # see each other's half-done work ("manifest missing") and upload twice.
    groups: dict[Any, list[Node]] = {}
    for node in nodes:
        groups.setdefault(_cache_identity(node, policy), []).append(node)
    leaders = [g[0] for g in groups.values()]
    union = {g[0].hostname: g for g in groups.values() if len(g) > 1}
    if union:
        plain = bundles_for

        def bundles_for(node: Node) -> list[Bundle]:  # noqa: F811 - the union for a group's leader
            if node.hostname not in union:
                return plain(node)
            seen: dict[str, Bundle] = {}
            for member in union[node.hostname]:
                for b in plain(member):
                    seen.setdefault(b.path, b)
            return list(seen.values())

    # Ctrl-C: uploads aborted, this process's temporaries removed from the
    # nodes, the interrupt goes on (fan_out_nodes)
    reports = fan_out_nodes(leaders, policy, one)
    if ids is not None:
        ids.save()
    out: dict[str, NodeReport] = {}
    for rep, group in zip(reports, groups.values()):
        out[rep.host] = rep
        for alias in group[1:]:
            twin = replace(rep, host=alias.hostname, staged=dict(rep.staged), skipped=dict(rep.skipped),
                           warnings=[*rep.warnings, f"same machine and cache root as {rep.host}: staged once"])
            out[alias.hostname] = twin
    return {n.hostname: out[n.hostname] for n in nodes}


def _cache_identity(node: Node, policy: Policy) -> Any:
    """What makes two cluster entries one cache: where the connection really
    goes and which root it uses. Nodes not staged, or whose identity cannot
    be resolved (run_on_node reports why), stay on their own."""
    settings = node_settings(policy, node)
    if settings.mode != "cache":
        return ("own", node.hostname)
    try:
        return (connection_identity(node, policy), settings.cache_root.rstrip("/"))
    except Exception:
        return ("own", node.hostname)
