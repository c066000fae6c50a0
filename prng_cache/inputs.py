"""Input discovery on the coordinator: which files the jobs read, and their keys.

This is the I/O half of rewriting: it stats and hashes what
:func:`prng_cache.rewrite.iter_path_tokens` proposes, once per run, so the
per-dispatch rewrite can stay a dictionary lookup.
"""

from __future__ import annotations

import os
import posixpath
import stat
from contextlib import nullcontext
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

from .errors import HashError
from .globs import first_match
from .hashing import bundle_key, hash_and_stat
from .memo import HashMemo
from .jobs import job_args, job_expected_output, job_id, job_payload, payload_values
from .model import Bundle, BundleFile, is_safe_name
from .policy import InputsPolicy
from .rewrite import alias_match, alias_target, iter_path_tokens, looks_like_path, resolve

V = TypeVar("V")


class Alias(NamedTuple):
    """An argument under an ``inputs.path_aliases`` prefix: the file it
    really names."""

    path: str  # the aliased file on the coordinator: the input that is hashed and staged
    target: str  # the policy's target prefix, e.g. "{script_path}/"
    rest: str  # the argument's path below the alias prefix


@dataclass
class Discovery:
    """What the jobs' arguments name: the bundles to cache and why the rest is not."""

    bundles: dict[str, Bundle] = field(default_factory=dict)  # only inputs chosen for caching
    users: dict[str, set[str]] = field(default_factory=dict)  # every candidate -> job ids
    skipped: dict[str, str] = field(default_factory=dict)  # candidate -> why not cached
    # legacy path a job names (resolved) -> the aliased file, for every
    # argument under an alias prefix whose aliased file exists here
    aliased: dict[str, Alias] = field(default_factory=dict)
    # path-like arguments that exist nowhere on the coordinator -> job ids
    # (for an aliased argument: its aliased path)
    missing: dict[str, set[str]] = field(default_factory=dict)
    # aliased path -> the legacy path a job named, for the missing ones
    missing_aliases: dict[str, str] = field(default_factory=dict)

    def staged(self, cache_root: str) -> dict[str, str]:
        """Mapping for rewrite_args when every bundle is present under cache_root."""
        return {p: b.ram_path(cache_root) for p, b in self.bundles.items()}

    def spread(self, by_path: Mapping[str, V]) -> dict[str, V]:
        """``by_path`` (a node's staged or skipped inputs) extended to every
        input with the same key and name as one of its paths.

        A node holds each (key, name) once, and staging reports it under one
        of the paths that name it; the same bytes under the same basename in
        another directory are served by the same copy (or skipped for the
        same reason)."""
        first: dict[tuple[str, str], V] = {}
        for p, v in by_path.items():
            b = self.bundles.get(p)
            if b is not None:
                first.setdefault((b.key, b.name), v)
        out = dict(by_path)
        for p, b in self.bundles.items():
            if p not in out and (b.key, b.name) in first:
                out[p] = first[(b.key, b.name)]
        return out


def _under_alias(path: str, aliases: Iterable[tuple[str, str]]) -> bool:
    norm = posixpath.normpath(path)
    return any(path.startswith(src) or (norm + "/").startswith(src) for src, _ in aliases)


def job_tokens(job: Any, policy: InputsPolicy, base_dir: str) -> Iterator[str]:
    """Every string of ``job`` that may name an input file: its args' path
    tokens (outputs, URLs, JSON, numbers and flags left out) and the values
    of ``policy.payload_keys`` in its payload (coordinator.py's jobs)."""
    out = job_expected_output(job)
    for _, _, value in iter_path_tokens(job_args(job), policy.output_flags, out, base_dir=base_dir):
        yield value
    for _, v in payload_values(job_payload(job), policy.payload_keys):
        for _, _, value in iter_path_tokens([v], policy.output_flags, out, base_dir=base_dir):
            yield value


def discover(
    jobs: Iterable[Any],
    policy: InputsPolicy,
    base_dir: str,
    memo: HashMemo | None = None,
    min_jobs: int | None = None,
    presend: Any = None,
) -> Discovery:
    """Which files the jobs read (coordinator paths, relative names resolved
    against ``base_dir``), which of them to cache, and their keys.
    ``presend``: told each input of at least ``presend.presend_min`` bytes
    that is about to be read to learn its hash (``presend.presend(path)``:
    :class:`~prng_cache.prewarm.EarlyConnections` sends it meanwhile).

    An argument under an ``inputs.path_aliases`` prefix stands for the
    aliased file (``{script_path}`` is ``base_dir`` here): that file is
    stat'ed, hashed and matched against every glob; the legacy path itself
    is never read, even when it exists (it may be a stale copy)."""
    need = policy.min_jobs if min_jobs is None else min_jobs
    d = Discovery()
    aliases = policy.path_aliases
    not_files: set[str] = set()  # stat each distinct path once
    absent: set[str] = set()  # ...of which these do not exist at all
    # path -> (st_dev, st_ino): spellings of one file ("data/x", "../w/data/x")
    # count their jobs together for min_jobs
    ident: dict[str, tuple[int, int]] = {}
    legacy_of: dict[str, str] = {}  # aliased path -> a legacy path naming it
    for job in jobs:
        jid = job_id(job)
        for value in job_tokens(job, policy, base_dir):
            p = resolve(value, base_dir)
            if aliases:
                hit = alias_match(p, aliases)
                under = hit is not None or _under_alias(p, aliases)
                if hit is None and under and not p.endswith(("/", "/.", "/..")):
                    # "<prefix>/../step2/x", "<prefix>/sub/../x": the preload
                    # area holds plain directories, so the lexical form is the
                    # file meant; it is the aliased file, never the copy
                    hit = alias_match(posixpath.normpath(p), aliases)
                real = alias_target(hit[0], hit[1], base_dir) if hit is not None else None
                if real is not None:
                    if p not in d.aliased:
                        d.aliased[p] = Alias(real, hit[0], hit[1])
                        legacy_of.setdefault(real, p)
                    p = real
                elif under:
                    # a legacy path spelled so it cannot be aliased (".."
                    # inside, a trailing "/"): never hash or stage it, its
                    # copy may be stale; the job keeps it as given
                    continue
            if p in d.users:
                d.users[p].add(jid)
            elif p not in not_files:
                # Paths that do not exist here are not inputs (e.g. outputs-to-be).
                # The kernel resolves p as it would the original argument
                # (resolve keeps ".." and trailing "/"), so this is the file
                # the job would open.
                try:
                    st = os.stat(p)
                except (OSError, ValueError):  # ValueError: a NUL in the name
                    st = None
                if st is not None and stat.S_ISREG(st.st_mode):
                    d.users[p] = {jid}
                    ident[p] = (st.st_dev, st.st_ino)
                else:
                    not_files.add(p)
                    if st is None:
                        absent.add(p)
                        if looks_like_path(value) and first_match(p, policy.exclude) is None:
                            d.missing[p] = {jid}
            elif p in d.missing:
                d.missing[p].add(jid)
            elif p in absent and looks_like_path(value) and first_match(p, policy.exclude) is None:
                d.missing[p] = {jid}
    # an aliased argument whose aliased file is not here is left as it is
    for legacy in [q for q, a in d.aliased.items() if a.path not in d.users]:
        del d.aliased[legacy]
    d.missing_aliases = {p: legacy_of[p] for p in d.missing if p in legacy_of}
    jobs_of_file: dict[tuple[int, int], set[str]] = {}
    for p, who in d.users.items():
        jobs_of_file.setdefault(ident[p], set()).update(who)

    # Each distinct file is stat'ed and hashed once: (hash, size) or skip reason.
    hashed: dict[str, tuple[str, int] | str] = {}

    def file_entry(src: str, name: str) -> BundleFile:
        if src not in hashed:
            try:
                st = os.stat(src)
                size = st.st_size  # before hashing: never read what we skip
                if size > policy.max_file_size:
                    hashed[src] = f"{src}: {size} bytes, over max_file_size {policy.max_file_size}"
                else:
                    fresh = True
                    if (presend is not None and size >= presend.presend_min
                            and (memo is None or memo.lookup(st) is None)):
                        presend.presend(src, users)  # a big new input: sent to its nodes while hashed
                        fresh = False  # stat it again: it may have changed meanwhile
                    digest, st = hash_and_stat(src, memo, st=st if fresh else None)
                    hashed[src] = (digest, st.st_size)
            except HashError as e:
                hashed[src] = str(e)
            except OSError as e:
                hashed[src] = f"{src}: {e.strerror or e}"
        r = hashed[src]
        if isinstance(r, str):
            raise _Skip(r)
        return BundleFile(name=name, src=src, size=r[1], hash=r[0])

    # the memo's rows of every candidate in a few queries, not one each
    with memo.prefetched(ident.values()) if memo is not None else nullcontext():
        for p in d.users:
            pat = first_match(p, policy.exclude)  # exclude wins over include
            if pat is not None:
                d.skipped[p] = f"excluded by pattern {pat!r}"
                continue
            n = len(jobs_of_file[ident[p]])
            scoped = policy.is_run_scoped(p)
            if n < need and not scoped and first_match(p, policy.include) is None:
                d.skipped[p] = f"used by {n} job(s), fewer than min_jobs={need}"
                continue
            parent, name = posixpath.split(p)
            if not is_safe_name(name):
                # the node-side layout cannot hold it unambiguously
                d.skipped[p] = f"file name {name!r} cannot be cached"
                continue
            sibs, missing = [], []
            for c in policy.companions_for(p):
                optional = c.endswith("?")
                c = c.rstrip("?")
                src = posixpath.join(parent, c)
                if os.path.isfile(src):
                    sibs.append((c, src))
                elif not optional:
                    missing.append(c)
                # an optional companion that is absent: the input is staged alone
                # (its key is then the file's own hash, so it changes when the
                # companion appears)
            if missing:
                # Caching without it would make the job fail where it would not have.
                d.skipped[p] = f"companion {missing[0]} missing"
                continue
            users = jobs_of_file[ident[p]]  # (the nodes running them get big new inputs early)
            try:
                files = (file_entry(p, name), *(file_entry(src, c) for c, src in sibs))
            except _Skip as e:
                d.skipped[p] = str(e)
                continue
            key = files[0].hash if len(files) == 1 else bundle_key([(f.name, f.hash) for f in files])
            d.bundles[p] = Bundle(key=key, path=p, name=name, files=files, run_scoped=scoped)
    if memo is not None:
        memo.flush()  # the rows of this discovery in one transaction
    return d


class _Skip(Exception):
    """Internal: a candidate is not cached, for the given reason."""
