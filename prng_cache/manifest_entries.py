"""A manifest's entries: the :class:`Entry` records, checked when first used
(:class:`Entries`), and where a sharded manifest keeps them (:class:`Shards`).
The file formats and decoding are :mod:`prng_cache.manifest`'s."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass

import msgpack

from .model import is_key, is_safe_name

#: where a sharded manifest keeps its records: ``<root>/.manifest-<gen>/``
SHARD_DIR_PREFIX = ".manifest-"
#: a shard larger than this is not ours
MAX_SHARD_BYTES = 16 << 20


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
