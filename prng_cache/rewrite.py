"""Pure argument rewriting: no I/O, runs on every dispatch and every retry.

Which tokens *may* name inputs is decided here by shape alone; whether a
token really is an input is decided by membership in ``staged`` (built on the
coordinator by :func:`prng_cache.inputs.discover`). Flags are not modelled:
the token after a flag is just another token, so a value that is not a
staged path is simply left alone. Only strings are ever tokens: every other
item (a number, None, a dict...) is passed through as the same object.

A token's key is its path spelled the way the kernel would read it: ``//``
and ``.`` components are dropped, but ``..`` and a trailing ``/`` are kept.
``link/../x`` is the parent of the link's *target*, and ``file/`` fails with
ENOTDIR; collapsing either would rewrite an argument to a file it does not
open (or to one when it opens none).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Collection, Container, Iterator, Mapping, Sequence
from typing import Any

from .policy import InputsPolicy

#: the policy's default ``inputs.output_flags``: one definition, in policy.py
DEFAULT_OUTPUT_FLAGS: tuple[str, ...] = InputsPolicy().output_flags

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# Decimal numbers only: "nan"/"inf" are legal file names, not numbers here.
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_normpath = posixpath.normpath


def is_url(s: str) -> bool:
    return _URL.match(s) is not None


def looks_like_json(s: str) -> bool:
    return s.lstrip()[:1] in ("{", "[")


def is_number(s: str) -> bool:
    return _NUMBER.fullmatch(s.strip()) is not None


def resolve(value: str, base_dir: str) -> str:
    """Coordinator path a token names: relative values resolve against base_dir.

    Only what the kernel also ignores is removed (see the module docstring),
    so the result opens the same file as the original, or none."""
    p = value if value[:1] == "/" else base_dir + "/" + value
    # the common case (plain names, clean paths) needs no cleaning: this runs per dispatch
    if "/." in p or "//" in p or p[-1:] == "/" or p[:1] == ".":
        return _clean(p)
    return p


def _clean(p: str) -> str:
    parts = p.split("/")
    out = "/".join(c for c in parts if c and c != ".")
    if p[:1] == "/":
        out = "/" + out
    elif not out:
        out = "."
    if parts[-1] in ("", ".") and out[-1:] != "/":
        out += "/"  # "file/" and "file/." require a directory: keep that
    return out


# ------------------------------------------------------------ path aliases
#: how an alias target names the node's script_path (``inputs.path_aliases``)
SCRIPT_PATH = "{script_path}"


def alias_match(path: str, aliases: Sequence[tuple[str, str]]) -> tuple[str, str] | None:
    """``(target, rest)`` when the resolved ``path`` lies under one of
    ``aliases`` (``(prefix jobs name, target prefix)``, longest prefix
    first, as the policy keeps them); else None.

    A rest with a ``..`` component is not aliased: the kernel resolves it
    against the legacy directory, which the alias target is not."""
    for prefix, target in aliases:
        if path.startswith(prefix):
            rest = path[len(prefix):]
            if rest and rest[-1:] != "/" and ".." not in rest.split("/"):
                return target, rest
            return None
    return None


def alias_target(target: str, rest: str, script_path: str, *, local: bool = True) -> str | None:
    """The path an aliased argument means on a machine whose script_path is
    ``script_path`` (``{script_path}`` in ``target`` expanded).

    A ``~`` script_path is expanded on the coordinator (``local``); on
    another node the file is named relative to the job's working directory
    (its script_path, where the coordinator starts every job), because no
    shell expands ``~`` in an argument. None when that is not possible."""
    if not target.startswith(SCRIPT_PATH):
        return target + rest
    tail = target[len(SCRIPT_PATH):]
    if script_path[:1] == "~":
        if local:
            script_path = posixpath.expanduser(script_path)
        elif tail[:1] == "/":
            return tail[1:] + rest
        else:
            return None
    return script_path.rstrip("/") + tail + rest


# ------------------------------------------------- what looks like a file path
#: extensions that make a bare name (no "/") look like a data file
DATA_EXTENSIONS = frozenset((
    "json", "jsonl", "npz", "npy", "csv", "tsv", "txt", "pkl", "pickle", "parquet", "feather",
    "h5", "hdf5", "bin", "dat", "yaml", "yml", "gz", "bz2", "xz", "zst", "zip",
))


_NOT_A_PATH = re.compile(r"[0-9][0-9/.:-]*")


def looks_like_path(value: str) -> bool:
    """An argument (already known not to be a URL, JSON, number, flag or
    output) that names a file: absolute, containing a ``/``, or a bare name
    with a common data extension. Used to report inputs that exist nowhere."""
    if "/" in value:
        # a date (2024/01/02) or a ratio (3/4) is not a path
        return not _NOT_A_PATH.fullmatch(value)
    _, dot, ext = value.rpartition(".")
    return bool(dot) and ext.lower() in DATA_EXTENSIONS


_NUM_START = frozenset("0123456789+-.")


def _is_flag(s: str) -> bool:
    # "-5" and "-.5" are numbers; only those need the regex
    return len(s) > 1 and s[0] == "-" and (s[1] not in "0123456789." or not is_number(s))


def _skip_value(a: str) -> bool:
    """Empty, URL, JSON blob, number, or a path that cannot name a regular
    file (its last component is empty, "." or ".."): never an input path.

    Dispatches on the first character so plain names cost no regex.
    """
    c = a[:1]
    if not c or c == "{" or c == "[":
        return True
    if a[-1] in "/." and a.rpartition("/")[2] in ("", ".", ".."):
        return True  # "file.bin/" fails with ENOTDIR: it must not start working
    if c.isspace():  # rare: fall back to the full checks
        return looks_like_json(a) or is_number(a)
    if c in _NUM_START and _NUMBER.fullmatch(a) is not None:
        return True
    return "://" in a and _URL.match(a) is not None


def _scan(
    args: Sequence[Any],
    output_flags: Collection[str],
    expected_output: str | None,
    base_dir: str | None,
) -> Iterator[tuple[int, str, str, str]]:
    """Yield (index, prefix, value, resolved value) for string tokens; shared
    so each token is resolved once (this runs per dispatch)."""
    outs: frozenset[str] = frozenset()
    if expected_output:
        out = _clean(expected_output) if base_dir is None else resolve(expected_output, base_dir)
        # the output is excluded however it is spelled, ".." collapsed or not:
        # leaving one more token alone is always safe
        outs = frozenset((out, _normpath(out)))
    skip_next = False
    for i, a in enumerate(args):
        if skip_next:  # the value of an output flag
            skip_next = False
            continue
        if not isinstance(a, str):
            continue
        prefix = ""
        if a[:1] == "-" and _is_flag(a):
            name, eq, a = a.partition("=")
            if not eq:
                skip_next = name in output_flags
                continue
            if name in output_flags:
                continue
            prefix = name + "="
        if _skip_value(a):
            continue
        r = _clean(a) if base_dir is None else resolve(a, base_dir)
        if outs and (r in outs or (".." in r and _normpath(r) in outs)):
            continue
        yield i, prefix, a, r


def iter_path_tokens(
    args: Sequence[Any],
    output_flags: Collection[str] = DEFAULT_OUTPUT_FLAGS,
    expected_output: str | None = None,
    *,
    base_dir: str | None = None,
) -> Iterator[tuple[int, str, str]]:
    """Yield (index, prefix, value) for each token that may name an input file.

    ``prefix`` is ``"--flag="`` for ``--flag=value`` tokens, else ``""``.
    Items that are not strings are never yielded; an output flag's value is
    skipped whatever its type. ``expected_output`` is compared after
    cleaning, and with ``base_dir`` after resolving both sides (so
    ``/base/out.json`` matches ``out.json``).
    """
    for i, prefix, value, _ in _scan(args, output_flags, expected_output, base_dir):
        yield i, prefix, value


#: where in an argument list a rewrite applies: (index, "--flag=" or "", resolved path)
Plan = tuple[tuple[int, str, str], ...]


def plan_rewrite(
    args: Sequence[Any],
    *,
    candidates: Container[str],
    base_dir: str,
    output_flags: Collection[str] = DEFAULT_OUTPUT_FLAGS,
    expected_output: str | None = None,
) -> Plan:
    """The tokens of ``args`` that name one of ``candidates`` (resolved
    coordinator paths). Computing this once per job lets per-dispatch
    rewriting be a few dictionary lookups."""
    return tuple((i, prefix, resolved)
                 for i, prefix, _, resolved in _scan(args, output_flags, expected_output, base_dir)
                 if resolved in candidates)


def apply_plan(args: Sequence[Any], plan: Plan, staged: Mapping[str, str]) -> list[Any]:
    """A new list: each planned token whose path ``staged`` holds is replaced;
    every other item is the same object as in ``args``."""
    out = list(args)
    for i, prefix, resolved in plan:
        ram = staged.get(resolved)
        if ram is not None:
            out[i] = prefix + ram
    return out


def rewrite_args(
    args: Sequence[Any],
    *,
    staged: Mapping[str, str],
    base_dir: str,
    output_flags: Collection[str] = DEFAULT_OUTPUT_FLAGS,
    expected_output: str | None = None,
) -> list[Any]:
    """A new argument list with staged inputs replaced by their RAM paths.

    ``staged`` maps resolved coordinator paths to paths on the target node.
    The input is never mutated, so retries can rewrite the same original.
    """
    if not staged:
        return list(args)
    plan = plan_rewrite(args, candidates=staged, base_dir=base_dir, output_flags=output_flags,
                        expected_output=expected_output)
    return apply_plan(args, plan, staged)
