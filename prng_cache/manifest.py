"""Versioned msgpack manifest of one node's cache root.

The manifest is the only source of trust: a hash directory on disk that the
manifest does not list is never served (it may be half-published by a killed
process, or planted). Decoding is strict and never raises to the caller: a
truncated, garbled or newer-version manifest decodes to ``None`` with a reason,
and the store starts a fresh one.

Entries are checked when first used, not all at decode (:class:`Entries`): a
stage that needs 4 entries of a root holding 5000 pays for 4. An entry whose
record is malformed is treated as absent (never served; its directory is then
unrecorded, and reclaimed as such); the others stay trusted. Untouched entries
are written back as they were read.

A large manifest is sharded (format 2): ``manifest.msgpack`` keeps the header
(cache id, leases, the root's token, counts, the run-scoped keys) and the
records live in ``n`` files of the directory ``.manifest-<gen>`` (records of
key ``k`` in file ``Shards.index(k)``; ``<gen>`` carries the root's token, so
a directory of another generation is provably ours to remove). A stage reads the header and the shards of
the keys it needs, and writes only the shards it changed, then the header
(every write bumps its ``serial``, so an unchanged header means nothing
changed). A new ``gen`` (conversion, resharding, reset) is a new directory:
shards of another generation are never read. A small manifest stays one file
in format 1, which older versions read.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import msgpack

# Entry, SHARD_DIR_PREFIX, MAX_SHARD_BYTES and is_key are also imported from here
from .manifest_entries import (MAX_SHARD_BYTES, SHARD_DIR_PREFIX, Entries, Entry, Shards,  # noqa: F401
                               _optional_time, _time)
from .model import is_key  # noqa: F401

FORMAT_VERSION = 1
SHARDED_FORMAT = 2
#: sharded from this many entries on, one file again below half of it
SHARD_MIN = 512
#: records per shard aimed at (a stage reads one shard per key it needs)
SHARD_FILL = 128
MAX_SHARDS = 4096
#: an entry larger than this is not one of ours (header totals are checked against it)
MAX_FILE_BYTES = 1 << 40
_TOKEN_RE = re.compile(r"[0-9a-f]{16}")  # fullmatch: "$" would allow a final "\n"
# a shard generation: the root's token (ownership, as temporaries carry it) and a random part
GEN_RE = re.compile(r"[0-9a-f]{16}-[0-9a-f]{8}")
MANIFEST_NAME = "manifest.msgpack"
# a manifest larger than this is not ours (entries are ~150 bytes each)
MAX_MANIFEST_BYTES = 64 << 20


@dataclass
class Lease:
    hashes: set[str]
    expires: float
    owner: str = ""


@dataclass
class Manifest:
    cache_id: str
    created: float
    entries: Entries = field(default_factory=Entries)
    leases: dict[str, Lease] = field(default_factory=dict)
    # the name of the root's ownership token file, recorded so that a stage
    # of a few entries need not list a large root to learn it (optional:
    # older versions neither write nor keep it)
    root_token: str | None = None
    # bumped by every write of a sharded manifest (an unchanged header then
    # means nothing changed)
    serial: int = 0
    # when a stage last listed the (large) root in full: stages that look at
    # a few entries alone rely on one within gc.stale_temp (leftovers of a
    # killed stager, entries removed by hand are found by those)
    listed_at: float | None = None
    # the header's bytes as read (None: a new manifest); not part of equality
    origin: bytes | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.entries, Entries):
            self.entries = Entries(dict(self.entries)) if not self.entries else _checked(self.entries)

    @classmethod
    def new(cls) -> "Manifest":
        return cls(cache_id=secrets.token_hex(8), created=time.time())

    @property
    def total_bytes(self) -> int:
        sh = self.entries.shards
        if sh is not None:  # the header's totals for shards not read, the records read
            return (sum(b for i, (_, b) in enumerate(sh.stats) if i not in sh.read)
                    + sum(e.size for e in self.entries._ok.values())
                       + sum(r["size"] for r in self.entries._raw.values()
                             if isinstance(r, dict) and isinstance(r.get("size"), int)))
        return sum(e.size for e in self.entries.values())

    def leased_keys(self, now: float) -> set[str]:
        keys: set[str] = set()
        for lease in self.leases.values():
            if lease.expires > now:
                keys |= lease.hashes
        return keys

    def orphaned_run_scoped(self, now: float, keep: set[str] = frozenset()) -> list[str]:
        """Run-scoped entries no live lease holds (their run ended or crashed)."""
        scoped = self.entries.run_scoped_keys()
        if not scoped:
            return []
        leased = self.leased_keys(now)
        return [k for k in scoped if k not in leased and k not in keep]

    def drop_expired_leases(self, now: float) -> list[str]:
        gone = [rid for rid, l in self.leases.items() if l.expires <= now]
        for rid in gone:
            del self.leases[rid]
        return gone

    # ------------------------------------------------------------ encoding
    def _top(self) -> dict:
        return {
            "cache_id": self.cache_id,
            "created": self.created,
            "leases": {
                rid: {"hashes": sorted(l.hashes), "expires": l.expires, "owner": l.owner}
                for rid, l in self.leases.items()
            },
            **({"root_token": self.root_token} if self.root_token else {}),
            **({"listed_at": self.listed_at} if self.listed_at is not None else {}),
        }

    def to_bytes(self) -> bytes:
        """The whole manifest as one file (format 1; every shard read first)."""
        doc = {"format": FORMAT_VERSION, **self._top(), "entries": self.entries.records()}
        return msgpack.packb(doc, use_bin_type=True)

    def header_bytes(self) -> bytes:
        """The header of a sharded manifest (format 2), as it stands."""
        sh = self.entries.shards
        doc = {"format": SHARDED_FORMAT, **self._top(), "serial": self.serial,
               "shards": {"gen": sh.gen, "n": sh.n, "stats": [list(st) for st in sh.stats],
                          "scoped": sorted(sh.scoped)}}
        return msgpack.packb(doc, use_bin_type=True)


def _checked(entries: dict) -> Entries:
    out = Entries()
    for k, v in entries.items():
        out[k] = v
    return out


def _shards(doc, load_shards) -> Shards:
    gen, n, stats, scoped = doc["gen"], doc["n"], doc["stats"], doc["scoped"]
    if not isinstance(gen, str) or not GEN_RE.fullmatch(gen):
        raise ValueError("bad shard generation")
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_SHARDS or not isinstance(scoped, list):
        raise ValueError("bad shards")
    if not isinstance(stats, list) or len(stats) != n:
        raise ValueError("bad shard counts")
    for st in stats:  # no more than a shard file can hold
        if (not isinstance(st, list) or len(st) != 2 or not all(type(v) is int for v in st)
                or not 0 <= st[0] <= MAX_SHARD_BYTES // 64 or not 0 <= st[1] <= MAX_SHARD_BYTES // 64 * MAX_FILE_BYTES):
            raise ValueError("bad shard counts")
    return Shards(gen, n, [tuple(st) for st in stats], [k for k in scoped if isinstance(k, str) and is_key(k)],
                  load_shards(gen) if load_shards is not None else None)


def shard_target(count: int, current: int) -> int:
    """How many shards a manifest of ``count`` entries should have (0: one
    file), given it has ``current`` (hysteresis: resharded only when 4x off)."""
    if current == 0:
        if count < SHARD_MIN:
            return 0
    elif count < SHARD_MIN // 2:
        return 0
    elif current * SHARD_FILL // 4 <= count <= current * SHARD_FILL * 4:
        return current
    n = 1
    while n * SHARD_FILL < count and n < MAX_SHARDS:
        n *= 2
    return n


def decode(data: bytes, load_shards: Callable[[str], Callable] | None = None) -> tuple[Manifest | None, str | None]:
    """Parse manifest bytes. Returns (manifest, None) or (None, reason);
    never raises, whatever the bytes. ``load_shards(gen)``: the reader of a
    sharded manifest's shards (see :class:`Shards`); without it a sharded
    manifest records no entries."""
    try:
        doc = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        return None, f"manifest unreadable ({type(exc).__name__})"
    try:
        if not isinstance(doc, dict):
            raise ValueError("not a map")
        version = doc.get("format")
        if not isinstance(version, int) or isinstance(version, bool):
            raise ValueError("no format version")
        if version > SHARDED_FORMAT:
            return None, f"manifest format {version} is newer than this prng-cache ({SHARDED_FORMAT})"
        cache_id = doc["cache_id"]
        if not isinstance(cache_id, str) or not cache_id:
            raise ValueError("bad cache_id")
        serial = 0
        if version == SHARDED_FORMAT:
            shards = _shards(doc["shards"], load_shards)
            serial = doc["serial"]
            if not isinstance(serial, int) or isinstance(serial, bool) or serial < 0:
                raise ValueError("bad serial")
            entries = Entries(shards=shards)
        else:
            if not isinstance(doc["entries"], dict):
                raise ValueError("bad entries")
            entries = Entries(doc["entries"])
        token = doc.get("root_token")
        m = Manifest(cache_id=cache_id, created=_time(doc["created"], "created"), entries=entries,
                     root_token=token if isinstance(token, str) and _TOKEN_RE.fullmatch(token) else None,
                     serial=serial, origin=data, listed_at=_optional_time(doc.get("listed_at")))
        for rid, l in doc["leases"].items():
            hashes = l["hashes"]
            if not isinstance(rid, str) or not isinstance(hashes, list):
                raise ValueError("bad lease")
            owner = l.get("owner", "")
            m.leases[rid] = Lease(
                hashes={h for h in hashes if isinstance(h, str) and is_key(h)},
                expires=_time(l["expires"], f"expiry of lease {rid!r}"),
                owner=owner if isinstance(owner, str) else "",
            )
        return m, None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return None, f"manifest malformed ({exc})"


def decode_files(read: Callable[[str], "bytes | None"]) -> tuple[Manifest | None, str | None]:
    """:func:`decode` of a root's manifest, its shards included, from
    ``read(name relative to the root)`` (None: no such file); for tools and
    tests that look at a root directly."""
    data = read(MANIFEST_NAME)
    if data is None:
        return None, "manifest missing"

    def shards_of(gen: str):
        return lambda idxs: {i: read(f"{SHARD_DIR_PREFIX}{gen}/{Shards.filename(i)}") for i in idxs}
    return decode(data, shards_of)
