"""Versioned msgpack manifest of one node's cache root.

The manifest is the only source of trust: a hash directory on disk that the
manifest does not list is never served (it may be half-published by a killed
process, or planted). Decoding is strict and never raises to the caller: a
truncated, garbled or newer-version manifest decodes to ``None`` with a reason,
and the store starts a fresh one.
"""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import dataclass, field

import msgpack

from .model import is_key, is_safe_name

FORMAT_VERSION = 1
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


@dataclass
class Lease:
    hashes: set[str]
    expires: float
    owner: str = ""


@dataclass
class Manifest:
    cache_id: str
    created: float
    entries: dict[str, Entry] = field(default_factory=dict)
    leases: dict[str, Lease] = field(default_factory=dict)

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
        leased = self.leased_keys(now)
        return [k for k, e in self.entries.items() if e.run_scoped and k not in leased and k not in keep]

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
            "entries": {
                k: {
                    "size": e.size,
                    "names": e.names,
                    "files": e.files,
                    "added": e.added,
                    "last_used": e.last_used,
                    **({"run_scoped": True} if e.run_scoped else {}),
                }
                for k, e in self.entries.items()
            },
            "leases": {
                rid: {"hashes": sorted(l.hashes), "expires": l.expires, "owner": l.owner}
                for rid, l in self.leases.items()
            },
        }
        return msgpack.packb(doc, use_bin_type=True)


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
        m = Manifest(cache_id=cache_id, created=_time(doc["created"], "created"))
        for key, e in doc["entries"].items():
            files = e["files"]
            if not is_key(key) or not isinstance(files, dict) or not files:
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
            m.entries[key] = Entry(size=size, files=dict(files), added=_time(e["added"], f"time in entry {key}"),
                                   last_used=_time(e["last_used"], f"time in entry {key}"), run_scoped=scoped)
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
