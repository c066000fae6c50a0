"""What is cached: bundles of files, and the names a node's cache may hold.

Shared by discovery (which builds bundles on the coordinator), the manifest
(which records them) and the store (which publishes them), so the store
never has to import discovery.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KEY_RE = re.compile(r"[0-9a-f]{32}")  # whole names only (fullmatch: "$" would allow a final "\n")

#: name prefixes the node layout reserves: temporaries, trash, ownership markers
RESERVED_PREFIXES = (".tmp-", ".trash-", ".prng-")


def is_key(name: str) -> bool:
    """A cache key: xxh3-128 of a file (or of a bundle's names and hashes)."""
    return len(name) == 32 and KEY_RE.fullmatch(name) is not None


def is_safe_name(name: str) -> bool:
    """A file name that can only ever mean one file inside a hash directory."""
    return (
        isinstance(name, str)
        and 0 < len(name) <= 255
        and "/" not in name
        and "\0" not in name
        and name not in (".", "..")
        and not name.startswith(RESERVED_PREFIXES)
        and _utf8(name)
    )


def _utf8(name: str) -> bool:
    """SFTP sends names as UTF-8: a name that is not (undecodable bytes kept
    as surrogates) cannot be written on a node; such an input falls back."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True)
class BundleFile:
    """One file of a bundle: its name on the node and where it comes from."""

    name: str  # basename on the node
    src: str  # coordinator path
    size: int
    hash: str


@dataclass(frozen=True)
class Bundle:
    """An input and its companions, cached together under one key."""

    key: str  # directory name on the node: file hash, or bundle_key(...) with companions
    path: str  # resolved coordinator path of the input
    name: str  # its basename, kept so workers pick the format by extension
    files: tuple[BundleFile, ...]  # the input first, then companions
    # needed for one run only (inputs.run_scoped): removed from the nodes when
    # the run that leased it ends, unless another live lease holds it
    run_scoped: bool = False

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.files)

    def ram_path(self, cache_root: str) -> str:
        return f"{cache_root.rstrip('/')}/{self.key}/{self.name}"
