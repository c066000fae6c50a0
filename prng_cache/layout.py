"""Names of prng-cache's own items in a cache root, and the tokens that
prove an item is ours (see :mod:`prng_cache.ownership` for the layout and
what is deleted when)."""

from __future__ import annotations

import itertools
import os
import re
import secrets
import socket

from .transport.base import FileInfo

TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
ROOT_TOKEN_PREFIX = ".prng-root-"
MARKER_PREFIX = ".prng-"

# Names every temporary of this process carries (after the root token), so an
# interrupted process can remove exactly its own temporaries, at any age.
PROCESS_TOKEN = secrets.token_hex(4)
TOKEN_RE = re.compile(r"[0-9a-f]{16}")  # fullmatch: "$" would allow a final "\n"

_SERIAL = itertools.count()


def unique_suffix() -> str:
    """Unique within this process (and a forked child: its pid differs);
    the root is private, so unique is enough. A random token per name cost
    a getrandom() call per published file."""
    return f"{os.getpid():x}{next(_SERIAL):08x}"


def new_root_token() -> str:
    return secrets.token_hex(8)


def owner_label() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def root_tokens(listing: dict[str, FileInfo]) -> set[str]:
    return {n[len(ROOT_TOKEN_PREFIX):] for n, i in listing.items()
            if n.startswith(ROOT_TOKEN_PREFIX) and TOKEN_RE.fullmatch(n[len(ROOT_TOKEN_PREFIX):]) and i.is_file}
