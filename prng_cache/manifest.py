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
"""

from __future__ import annotations

import math
import re
import secrets
import time
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field

import msgpack

from .model import is_key, is_safe_name

FORMAT_VERSION = 1
_TOKEN_RE = re.compile(r"^[0-9a-f]{16}$")
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


class Entries(MutableMapping):
    """key -> :class:`Entry`, decoded and checked on first access.

    ``raw`` holds records as msgpack decoded them; a record moves to the
    checked ones when looked up, and is dropped (as if absent) when it does
    not check. Iterating or ``len`` checks them all (gc, status); lookups,
    ``in`` and :meth:`count_hint` do not."""

    __slots__ = ("_raw", "_ok", "malformed")

    def __init__(self, raw: dict | None = None):
        self._raw: dict = raw or {}
        self._ok: dict[str, Entry] = {}
        self.malformed: list[str] = []  # keys dropped because their record did not check

    def _take(self, key) -> Entry | None:
        e = self._ok.get(key)
        if e is not None or key not in self._raw:
            return e
        rec = self._raw.pop(key)
        try:
            e = _entry(key, rec)
        except (KeyError, TypeError, ValueError, AttributeError):
            self.malformed.append(key if isinstance(key, str) else repr(key))
            return None
        self._ok[key] = e
        return e

    def _settle(self) -> None:
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
        return len(self._ok) + len(self._raw)

    def run_scoped_keys(self) -> list[str]:
        """Keys of run-scoped entries; only those records are checked."""
        for key, rec in list(self._raw.items()):
            if isinstance(rec, dict) and rec.get("run_scoped", False) is not False:
                self._take(key)
        return [k for k, e in self._ok.items() if e.run_scoped]

    def records(self) -> dict:
        """What to encode: checked entries as written by this version, the
        untouched records exactly as read."""
        out = dict(self._raw)
        for k, e in self._ok.items():
            out[k] = {
                "size": e.size,
                "names": e.names,
                "files": e.files,
                "added": e.added,
                "last_used": e.last_used,
                **({"run_scoped": True} if e.run_scoped else {}),
            }
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

    def __post_init__(self) -> None:
        if not isinstance(self.entries, Entries):
            self.entries = Entries(dict(self.entries)) if not self.entries else _checked(self.entries)

    @classmethod
    def new(cls) -> "Manifest":
        return cls(cache_id=secrets.token_hex(8), created=time.time())

    @property
    def total_bytes(self) -> int:
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
    def to_bytes(self) -> bytes:
        doc = {
            "format": FORMAT_VERSION,
            "cache_id": self.cache_id,
            "created": self.created,
            "entries": self.entries.records(),
            "leases": {
                rid: {"hashes": sorted(l.hashes), "expires": l.expires, "owner": l.owner}
                for rid, l in self.leases.items()
            },
            **({"root_token": self.root_token} if self.root_token else {}),
        }
        return msgpack.packb(doc, use_bin_type=True)


def _checked(entries: dict) -> Entries:
    out = Entries()
    for k, v in entries.items():
        out[k] = v
    return out


def _time(v: object, what: str) -> float:
    """A timestamp as to_bytes writes it: a finite real number. NaN would
    compare false forever, inf (e.g. a lease's expiry) would pin entries
    against gc forever; a string or bytes is not ours."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"bad {what}")
    return float(v)


def decode(data: bytes) -> tuple[Manifest | None, str | None]:
    """Parse manifest bytes. Returns (manifest, None) or (None, reason);
    never raises, whatever the bytes."""
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
        if version > FORMAT_VERSION:
            return None, f"manifest format {version} is newer than this prng-cache ({FORMAT_VERSION})"
        cache_id = doc["cache_id"]
        if not isinstance(cache_id, str) or not cache_id:
            raise ValueError("bad cache_id")
        entries = doc["entries"]
        if not isinstance(entries, dict):
            raise ValueError("bad entries")
        token = doc.get("root_token")
        m = Manifest(cache_id=cache_id, created=_time(doc["created"], "created"), entries=Entries(entries),
                     root_token=token if isinstance(token, str) and _TOKEN_RE.match(token) else None)
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
