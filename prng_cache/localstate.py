"""What prng-cache keeps on the coordinator between runs, under the user's
cache directory: the hash memo (:mod:`prng_cache.hashing`) and each node's
last seen cache_id."""

from __future__ import annotations

import contextlib
import json
import logging
import os

log = logging.getLogger(__name__)


def cache_dir() -> str:
    """The user's prng-cache directory on the coordinator (hash memo, ids)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "prng-cache")


class CacheIdRecord:
    """Coordinator-side memory of each node's cache_id, to tell the user when
    a node's cache was wiped (reboot) since the last stage. Best effort."""

    def __init__(self, directory: str | None = None):
        self.path = os.path.join(directory or cache_dir(), "nodes.json")
        try:
            with open(self.path, encoding="utf-8") as f:
                self.ids: dict[str, str] = dict(json.load(f))
        except (OSError, ValueError, TypeError):
            self.ids = {}
        self._dirty = False

    def swap(self, host: str, root: str, cache_id: str) -> str | None:
        key = f"{host}:{root}"
        old = self.ids.get(key)
        if old != cache_id:
            self.ids[key] = cache_id
            self._dirty = True
        return old

    def save(self) -> None:
        if not self._dirty:
            return
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(self.ids, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except OSError as exc:
            log.debug("cannot save %s: %s", self.path, exc)
            with contextlib.suppress(OSError):
                os.unlink(tmp)  # a full cache directory must not collect these
