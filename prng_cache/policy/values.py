"""Value parsers: one YAML value -> one typed setting, or :class:`Invalid`.

A parser is ``parse(value, path) -> typed value``; ``path`` is the key path
(mapping keys and list positions) used to blame the value. model.py names a
parser for every field; the loader turns :class:`Invalid` into a
PolicyError naming the source, key and line. Sizes and durations are also
public (``parse_size``, ``parse_duration``).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from typing import Any, Callable

from ..userdata import type_name as _type_name

KeyPath = tuple  # of str (mapping keys) and int (list positions)
Parser = Callable[[object, KeyPath], Any]


class Invalid(Exception):
    def __init__(self, path: KeyPath, problem: str):
        super().__init__(problem)
        self.path, self.problem = path, problem


def type_name(value: object) -> str:
    return _type_name(value, yaml=True)


def fmt_path(path: KeyPath) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ------------------------------------------------------------ sizes, durations
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_SIZE_RE = re.compile(rf"\s*({_NUMBER}(?:[eE][+-]?\d+)?)\s*([A-Za-z]*)\s*")
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40,
    "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
}
_SIZE_HINT = "expected a size such as 512MiB"

_DUR_UNITS = {"w": 604800.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_DUR_RE = re.compile(rf"\s*(?:{_NUMBER}\s*[wdhms]\s*)+")
_DUR_PART = re.compile(rf"({_NUMBER})\s*([wdhms])")
_DUR_HINT = "expected a duration such as 4h or 7d"


def parse_size(text: str | int) -> int:
    """Bytes from ``4096``, ``"512MiB"``, ``"1.5GiB"``, ``"10MB"``, ``"4k"``, ``"100 B"``.

    KiB/MiB/GiB/TiB and the bare letters k/M/G/T are powers of 1024;
    KB/MB/GB/TB are powers of 1000. Fractions are rounded down to whole
    bytes. Raises :class:`ValueError` for anything else, or a negative size.
    """
    if _is_number(text):
        if isinstance(text, float) and not (math.isfinite(text) and text.is_integer()):
            raise ValueError(f"{_SIZE_HINT}, got {text!r}")
        if text < 0:
            raise ValueError(f"{_SIZE_HINT}, got {text!r} (negative)")
        return int(text)
    if not isinstance(text, str):
        raise ValueError(f"{_SIZE_HINT}, got {type_name(text)}")
    m = _SIZE_RE.fullmatch(text)
    unit = _SIZE_UNITS.get(m.group(2).lower()) if m else None
    if unit is None:
        raise ValueError(f"{_SIZE_HINT}, got {text!r}")
    from decimal import Decimal, InvalidOperation  # exact fractions; only when a size is text (~1 ms)

    try:
        return int(Decimal(m.group(1)) * unit)
    except (InvalidOperation, OverflowError):
        raise ValueError(f"{_SIZE_HINT}, got {text!r}") from None


def parse_duration(text: str | float) -> float:
    """Seconds from ``90``, ``"30s"``, ``"15m"``, ``"4h"``, ``"7d"``, ``"1w"``, ``"1h30m"``.

    A bare number (or numeric string) is seconds. Units must appear largest
    first, each at most once. Raises :class:`ValueError` for anything else,
    or a negative duration.
    """
    if _is_number(text):
        if not math.isfinite(text) or text < 0:
            raise ValueError(f"{_DUR_HINT}, got {text!r}")
        return float(text)
    if not isinstance(text, str):
        raise ValueError(f"{_DUR_HINT}, got {type_name(text)}")
    if re.fullmatch(rf"\s*{_NUMBER}\s*", text):
        return float(text)
    if not _DUR_RE.fullmatch(text.lower()):
        raise ValueError(f"{_DUR_HINT}, got {text!r}")
    total, last = 0.0, math.inf
    for number, unit in _DUR_PART.findall(text.lower()):
        if _DUR_UNITS[unit] >= last:  # "30m1h", "1m30m": almost surely a typo
            raise ValueError(f"{_DUR_HINT}, got {text!r} (units must go from largest to smallest)")
        last = _DUR_UNITS[unit]
        total += float(number) * last
    return total


# -------------------------------------------------------------------- parsers
def string(value: object, path: KeyPath) -> str:
    if not isinstance(value, str):
        raise Invalid(path, f"expected a string, got {type_name(value)}")
    if not value.strip():
        raise Invalid(path, "expected a non-empty string")
    return value


def user_path(value: object, path: KeyPath) -> str:
    return os.path.expanduser(string(value, path))


def abs_path(value: object, path: KeyPath) -> str:
    text = string(value, path)
    if not text.startswith("/"):
        raise Invalid(path, f"expected an absolute path, got {text!r}")
    stripped = text.rstrip("/")
    if not stripped:
        raise Invalid(path, "expected an absolute path below /, got '/'")
    return stripped


def boolean(value: object, path: KeyPath) -> bool:
    if not isinstance(value, bool):
        raise Invalid(path, f"expected true or false, got {type_name(value)} {value!r}")
    return value


def positive_int(value: object, path: KeyPath) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise Invalid(path, f"expected an integer >= 1, got {type_name(value)}")
    if value < 1:
        raise Invalid(path, f"expected an integer >= 1, got {value}")
    return value


def size(value: object, path: KeyPath) -> int:
    if value is None or isinstance(value, (bool, list, tuple, Mapping)):
        raise Invalid(path, f"{_SIZE_HINT}, got {type_name(value)}")
    try:
        return parse_size(value)  # type: ignore[arg-type]
    except ValueError as e:
        raise Invalid(path, str(e)) from None


def duration(value: object, path: KeyPath) -> float:
    """A duration of more than zero (a zero timeout or TTL is never meant)."""
    if value is None or isinstance(value, (bool, list, tuple, Mapping)):
        raise Invalid(path, f"{_DUR_HINT}, got {type_name(value)}")
    try:
        seconds = parse_duration(value)  # type: ignore[arg-type]
    except ValueError as e:
        raise Invalid(path, str(e)) from None
    if seconds <= 0:
        raise Invalid(path, f"{_DUR_HINT}, got {value!r} (must be more than zero)")
    return seconds


def percent(value: object, path: KeyPath) -> float:
    number: object = value
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            number = float(value.strip()[:-1])
        except ValueError:
            number = value
    if not _is_number(number):
        raise Invalid(path, f"expected a percentage (a number, 0 < x <= 100), got {type_name(value)}")
    if not (0 < number <= 100):  # also rejects nan
        raise Invalid(path, f"expected a percentage (a number, 0 < x <= 100), got {value!r}")
    return float(number)


def optional(check: Parser) -> Parser:
    """``check``, or null (None)."""
    def run(value: object, path: KeyPath) -> Any:
        return None if value is None else check(value, path)
    return run


def choice(options: tuple[str, ...]) -> Parser:
    def run(value: object, path: KeyPath) -> str:
        if value is False and "off" in options:  # YAML 1.1 reads an unquoted `off` as false
            return "off"
        if value not in options:
            raise Invalid(path, f"expected one of {', '.join(options)}, got {value!r}")
        return value  # type: ignore[return-value]
    return run


def string_list(what: str, item: Callable[[str, KeyPath], str] | None = None) -> Parser:
    """A list of non-empty strings (a tuple), each further checked by ``item``."""
    def run(value: object, path: KeyPath) -> tuple[str, ...]:
        if not isinstance(value, (list, tuple)):
            raise Invalid(path, f"expected a list of {what}, got {type_name(value)}")
        out = []
        for i, v in enumerate(value):
            if not isinstance(v, str) or not v:
                raise Invalid(path + (i,), f"expected a list of {what}, got {type_name(v)} {v!r} as an item")
            out.append(item(v, path + (i,)) if item else v)
        return tuple(out)
    return run


def flag(value: str, path: KeyPath) -> str:
    if not value.startswith("-") or value == "-" or any(c.isspace() for c in value):
        raise Invalid(path, f"expected an option such as --output-file, got {value!r}")
    return value


def plain_name(value: str, path: KeyPath) -> str:
    if "/" in value or value in (".", "..") or "\0" in value:
        raise Invalid(path, f"expected a plain file name (no '/', not '.' or '..'), got {value!r}")
    return value


def companion_name(value: str, path: KeyPath) -> str:
    """A plain file name; a trailing ``?`` marks it optional."""
    plain_name(value[:-1] if value.endswith("?") else value, path)
    if value in ("?", ""):
        raise Invalid(path, f"expected a plain file name, got {value!r}")
    return value


def prefix_map(value: object, path: KeyPath) -> tuple[tuple[str, str], ...]:
    """``{path prefix jobs name: prefix where the files really are}``; both
    absolute, ending in ``/``; the target may start with ``{script_path}``."""
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise Invalid(path, f"expected a mapping of path prefix -> path prefix, got {type_name(value)}")
    out = []
    for src, dst in value.items():
        if not isinstance(src, str) or not src.startswith("/") or not src.endswith("/"):
            raise Invalid(path, f"expected absolute prefixes ending in '/' as keys, got {src!r}")
        if not isinstance(dst, str) or not dst.endswith("/") or not (
                dst.startswith("/") or dst.startswith("{script_path}")):
            raise Invalid(path + (src,), f"expected an absolute prefix ending in '/' "
                                          f"(or starting with {{script_path}}), got {dst!r}")
        out.append((src, dst))
    # longest prefix first: a more specific alias wins
    return tuple(sorted(out, key=lambda p: -len(p[0])))


def glob_to_names(value: object, path: KeyPath) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``{input glob: [plain file name, ...]}`` as a tuple of pairs (hashable)."""
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise Invalid(path, f"expected a mapping of input glob -> list of file names, got {type_name(value)}")
    names = string_list("file names", companion_name)
    out = []
    for pattern, sibs in value.items():
        if not isinstance(pattern, str) or not pattern:
            raise Invalid(path, f"expected input globs as keys, got {type_name(pattern)} {pattern!r}")
        out.append((pattern, names(sibs, path + (pattern,))))
    return tuple(out)


# transport/ssh.py parses the same [user@]host[:port] syntax. This function
# is the only place the policy does: switch its body to the transport
# package's parser once there is one (keep the message).
def is_host_spec(text: str) -> bool:
    """Whether ``text`` reads as ``[user@]host[:port]`` (or a comma-separated
    chain of them): the transport's own parser, so both agree."""
    from ..transport.hostspec import parse_jump_chain

    try:
        parse_jump_chain(text)
    except ValueError:
        return False
    return True


def host_spec(value: object, path: KeyPath) -> str:
    text = string(value, path)
    if not is_host_spec(text):
        raise Invalid(path, f"expected [user@]host[:port], got {text!r}")
    return text
