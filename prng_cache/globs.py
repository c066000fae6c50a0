"""Matching a path against a set of glob patterns (``inputs.include``,
``exclude``, ``companions``, ``run_scoped``) with ``fnmatchcase`` rules.

Discovery matches every input against every set: one ``fnmatchcase`` call
per pattern, twice (path and basename), was a fifth of a 5000-input
discovery. Each set is compiled once into one regular expression; which
pattern matched is looked up only on a hit (for the message that names it).
"""

from __future__ import annotations

import functools
import re
from fnmatch import fnmatchcase, translate


@functools.lru_cache(maxsize=128)
def _compiled(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    # translate() gives a whole-string match of each: "(?s:...)\Z"
    return re.compile("|".join(translate(p) for p in patterns)) if patterns else None


def first_match(path: str, patterns: tuple[str, ...]) -> str | None:
    """The first of ``patterns`` that matches ``path`` or its basename, or None."""
    rx = _compiled(patterns if isinstance(patterns, tuple) else tuple(patterns))
    if rx is None:
        return None
    base = path.rsplit("/", 1)[-1]
    if rx.match(path) is None and rx.match(base) is None:
        return None
    for pat in patterns:
        if fnmatchcase(path, pat) or fnmatchcase(base, pat):
            return pat
    return None  # unreachable: the union matched, so one of them does
