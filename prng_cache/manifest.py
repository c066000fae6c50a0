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

import math
import re
import secrets
import time
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass, field

import msgpack

from .model import is_key, is_safe_name

FORMAT_VERSION = 1
SHARDED_FORMAT = 2
SHARD_DIR_PREFIX = ".manifest-"
#: sharded from this many entries on, one file again below half of it
SHARD_MIN = 512
#: records per shard aimed at (a stage reads one shard per key it needs)
SHARD_FILL = 128
MAX_SHARDS = 4096
#: a shard larger than this is not ours
MAX_SHARD_BYTES = 16 << 20
#: an entry larger than this is not one of ours (header totals are checked against it)
MAX_FILE_BYTES = 1 << 40
_TOKEN_RE = re.compile(r"^[0-9a-f]{16}$")
# a shard generation: the root's token (ownership, as temporaries carry it) and a random part
GEN_RE = re.compile(r"^[0-9a-f]{16}-[0-9a-f]{8}$")
MANIFEST_NAME = "manifest.msgpack"
# a manifest larger than this is not ours (entries are ~150 bytes each)
MAX_MANIFEST_BYTES = 64 << 20


@dataclass
class Entry:
    size: int
    files: dict[str, str]  # name -> xxh3-128 of that file's bytes
    added: float
    last_used: float
    # needed for one run only: removed when its last lease ends (released,
    # or expired and found by the next stage or gc)
    run_scoped: bool = False

    @property
    def names(self) -> list[str]:
        return sorted(self.files)


class Shards:
    """Where a sharded manifest's records are: ``n`` files in the directory
    ``.manifest-<gen>``; ``load`` reads some of them (I/O, supplied by the
    cache root: shard -> bytes, None when absent, or the OSError of reading
    it)."""

    def __init__(self, gen: str, n: int, stats: list[tuple[int, int]], scoped: list[str],
                 load: Callable[[list[int]], dict[int, "bytes | None | OSError"]] | None):
        self.gen, self.n = gen, n
        # per shard (records, bytes): as the header recorded them, replaced
        # by what a shard really holds once it is read (a header that a
        # killed writer or a lost shard left behind heals when written next)
        self.stats = list(stats)
        self.scoped = set(scoped)
        self.load = load
        self.read: dict[int, bytes | None] = {}  # shard -> bytes as read (None: absent)
        self.bad: list[int] = []  # unreadable or garbled: its records are not trusted

    def _set(self, i: int, records: int, nbytes: int, scoped: set[str]) -> None:
        self.stats[i] = (records, nbytes)
        self.scoped = {k for k in self.scoped if self.index(k) != i} | scoped

    @property
    def dirname(self) -> str:
        return SHARD_DIR_PREFIX + self.gen

    def index(self, key: str) -> int:
        return int(key[:4], 16) % self.n

    @staticmethod
    def filename(i: int) -> str:
        return f"{i:04x}.msgpack"


class Entries(MutableMapping):
    """key -> :class:`Entry`, decoded and checked on first access.

    ``raw`` holds records as msgpack decoded them; a record moves to the
    checked ones when looked up, and is dropped (as if absent) when it does
    not check. Iterating or ``len`` checks them all (gc, status); lookups,
    ``in`` and :meth:`count_hint` do not. Sharded: a key's shard is read
    when the key is first looked at (:meth:`prefetch` reads many at once);
    only read shards are ever written."""

    __slots__ = ("_raw", "_ok", "malformed", "shards")

    def __init__(self, raw: dict | None = None, shards: Shards | None = None):
        self._raw: dict = raw or {}
        self._ok: dict[str, Entry] = {}
        self.malformed: list[str] = []  # keys dropped because their record did not check
        self.shards = shards

    # ------------------------------------------------------------ shards
    def prefetch(self, keys) -> None:
        """Read the shards of ``keys`` not read yet, in one batch."""
        sh = self.shards
        if sh is None:
            return
        want = sorted({i for k in keys if isinstance(k, str) and is_key(k) and (i := sh.index(k)) not in sh.read})
        if not want:
            return
        got = sh.load(want) if sh.load is not None else {}
        for i in want:
            self._add_shard(i, got.get(i))

    def _add_shard(self, i: int, data) -> None:
        sh = self.shards
        sh.read[i] = data if isinstance(data, bytes) else None
        records: dict = {}
        if isinstance(data, bytes):
            try:
                doc = msgpack.unpackb(data, raw=False, strict_map_key=True) if len(data) <= MAX_SHARD_BYTES else None
                records = doc.get("entries") if isinstance(doc, dict) else None
                if not isinstance(records, dict) or doc.get("gen") != sh.gen or doc.get("shard") != i:
                    raise ValueError("not this shard")
            except Exception:  # msgpack raises several unrelated types
                sh.bad.append(i)
                records = {}
        elif isinstance(data, OSError):
            sh.bad.append(i)
        n = size = 0
        scoped: set[str] = set()
        for k, rec in records.items():
            if not isinstance(k, str) or not is_key(k) or sh.index(k) != i:
                self.malformed.append(k if isinstance(k, str) else repr(k))
                continue
            n += 1
            if isinstance(rec, dict):
                size += rec.get("size") if isinstance(rec.get("size"), int) else 0
                if rec.get("run_scoped") is True:
                    scoped.add(k)
            if k not in self._ok:
                self._raw.setdefault(k, rec)
        sh._set(i, n, size, scoped)

    def _load_all(self) -> None:
        if self.shards is not None:
            self.prefetch(f"{i:04x}" + "0" * 28 for i in range(self.shards.n))

    # ------------------------------------------------------------ mapping
    def _take(self, key) -> Entry | None:
        e = self._ok.get(key)
        if e is not None:
            return e
        sh = self.shards
        if sh is not None and isinstance(key, str) and is_key(key) and sh.index(key) not in sh.read:
            self.prefetch([key])
        if key not in self._raw:
            return None
        rec = self._raw.pop(key)
        try:
            e = _entry(key, rec)
        except (KeyError, TypeError, ValueError, AttributeError):
            self.malformed.append(key if isinstance(key, str) else repr(key))
            return None
        self._ok[key] = e
        return e

    def _settle(self) -> None:
        self._load_all()
        for key in list(self._raw):
            self._take(key)

    def __getitem__(self, key: str) -> Entry:
        e = self._take(key)
        if e is None:
            raise KeyError(key)
        return e

    def __contains__(self, key: object) -> bool:
        return self._take(key) is not None

    def __setitem__(self, key: str, value: Entry) -> None:
        self.prefetch([key])  # its shard is rewritten whole: read it first
        self._raw.pop(key, None)
        self._ok[key] = value

    def __delitem__(self, key: str) -> None:
        if self._take(key) is None:
            raise KeyError(key)
        del self._ok[key]

    def __iter__(self) -> Iterator[str]:
        self._settle()
        return iter(list(self._ok))

    def __len__(self) -> int:
        self._settle()
        return len(self._ok)

    def count_hint(self) -> int:
        """Entries recorded, without checking them (capacity estimates)."""
        if self.shards is None:
            return len(self._ok) + len(self._raw)
        sh = self.shards  # the records in memory are those of the shards read
        return sum(c for i, (c, _) in enumerate(sh.stats) if i not in sh.read) + len(self._ok) + len(self._raw)

    def in_memory(self) -> int:
        """Records read (sharded: those a write would rewrite, at most)."""
        return len(self._ok) + len(self._raw)

    def run_scoped_keys(self) -> list[str]:
        """Keys of run-scoped entries; only those records are checked."""
        if self.shards is not None:
            self.prefetch(self.shards.scoped)
        for key, rec in list(self._raw.items()):
            if isinstance(rec, dict) and rec.get("run_scoped", False) is not False:
                self._take(key)
        return [k for k, e in self._ok.items() if e.run_scoped]

    # ------------------------------------------------------------ encoding
    @staticmethod
    def _record(e: Entry) -> dict:
        return {"size": e.size, "names": e.names, "files": e.files, "added": e.added,
                "last_used": e.last_used, **({"run_scoped": True} if e.run_scoped else {})}

    def records(self) -> dict:
        """What to encode: checked entries as written by this version, the
        untouched records exactly as read (sharded: every shard read first)."""
        self._load_all()
        out = dict(self._raw)
        for k, e in self._ok.items():
            out[k] = self._record(e)
        return out

    def _by_shard(self) -> dict[int, dict]:
        """The records in memory (those of the shards read), by shard."""
        sh = self.shards
        out: dict[int, dict] = {}
        for k, r in self._raw.items():
            if isinstance(k, str) and is_key(k):
                out.setdefault(sh.index(k), {})[k] = r
        for k, e in self._ok.items():
            out.setdefault(sh.index(k), {})[k] = self._record(e)
        return out

    def reshard(self, gen: str, n: int) -> None:
        """Records to a new generation of ``n`` shards (all read first: every
        shard of the new generation is then written)."""
        self._load_all()
        old = self.shards
        self.shards = Shards(gen, n, [(0, 0)] * n, [], None)
        self.shards.read = {i: None for i in range(n)}
        if old is not None:
            self.malformed.extend(k for k in list(self._raw) if not is_key(k))

    def unshard(self) -> None:
        self._load_all()
        self.shards = None

    def changed_shards(self) -> dict[int, bytes]:
        """Encoded shards that differ from what was read (to write), and the
        header's counts brought up to date with them."""
        sh = self.shards
        out: dict[int, bytes] = {}
        now = self._by_shard()
        for i in sorted(sh.read):
            recs = now.get(i, {})
            data = msgpack.packb({"gen": sh.gen, "shard": i, "entries": recs}, use_bin_type=True)
            if recs or sh.read[i] is not None:
                if data != sh.read[i]:
                    out[i] = data
            scoped = {k for k, r in recs.items() if isinstance(r, dict) and r.get("run_scoped") is True}
            size = sum(r["size"] for r in recs.values() if isinstance(r, dict) and isinstance(r.get("size"), int))
            sh._set(i, len(recs), size, scoped)
            sh.read[i] = data if (recs or sh.read[i] is not None) else None
        return out


def _entry(key, e) -> Entry:
    """One record, checked strictly (raises ValueError & co. when malformed)."""
    if not isinstance(key, str) or not is_key(key):
        raise ValueError(f"bad entry {key!r}")
    files = e["files"]
    if not isinstance(files, dict) or not files:
        raise ValueError(f"bad entry {key!r}")
    for name, h in files.items():
        if not is_safe_name(name) or not isinstance(h, str) or not is_key(h):
            raise ValueError(f"bad file in entry {key}")
    size = e["size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ValueError(f"bad size in entry {key}")
    scoped = e.get("run_scoped", False)
    if not isinstance(scoped, bool):
        raise ValueError(f"bad run_scoped in entry {key}")
    return Entry(size=size, files=dict(files), added=_time(e["added"], f"time in entry {key}"),
                 last_used=_time(e["last_used"], f"time in entry {key}"), run_scoped=scoped)


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
    if not isinstance(gen, str) or not GEN_RE.match(gen):
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


def _optional_time(v: object) -> float | None:
    try:
        return None if v is None else _time(v, "")
    except ValueError:
        return None


def _time(v: object, what: str) -> float:
    """A timestamp as to_bytes writes it: a finite real number. NaN would
    compare false forever, inf (e.g. a lease's expiry) would pin entries
    against gc forever; a string or bytes is not ours."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"bad {what}")
    return float(v)


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
                     root_token=token if isinstance(token, str) and _TOKEN_RE.match(token) else None,
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
