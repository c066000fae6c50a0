"""cache_policy.yaml -> typed, validated settings.

Precedence: built-in defaults < policy file < environment < explicit options.
Nothing is read at import time.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from fnmatch import fnmatchcase
from typing import Any, Callable

import yaml

from .errors import PolicyError

__all__ = [
    "DEFAULT_POLICY_FILE",
    "MODES",
    "CapacityPolicy",
    "GcPolicy",
    "InputsPolicy",
    "NodeOverride",
    "NodeSettings",
    "Policy",
    "TransportPolicy",
    "env_disabled",
    "load_policy",
    "parse_duration",
    "parse_size",
]

MODES = ("cache", "direct", "off")

#: Looked up in the current directory when no file is named.
DEFAULT_POLICY_FILE = "cache_policy.yaml"


@dataclass(frozen=True)
class InputsPolicy:
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ("*.db", "*.sqlite", "*.sqlite3", "*.lock", "*.log")
    max_file_size: int = 2 << 30
    min_jobs: int = 2
    # input glob -> names of sibling files that must sit beside it
    companions: tuple[tuple[str, tuple[str, ...]], ...] = ()
    output_flags: tuple[str, ...] = ("--output-file", "--output", "-o")
    # where bare relative names are resolved on the coordinator; None means
    # the localhost node's script_path, else the current directory
    base_dir: str | None = None

    def companions_for(self, path: str) -> tuple[str, ...]:
        names: list[str] = []
        base = path.rsplit("/", 1)[-1]
        for pattern, sibs in self.companions:
            if fnmatchcase(path, pattern) or fnmatchcase(base, pattern):
                names.extend(s for s in sibs if s not in names and s != base)
        return tuple(names)


@dataclass(frozen=True)
class CapacityPolicy:
    max_bytes: int | None = None
    warn_percent: float = 50.0
    max_percent: float = 80.0


@dataclass(frozen=True)
class GcPolicy:
    max_age: float = 7 * 86400.0
    lease_ttl: float = 12 * 3600.0
    # a manifest lock older than this is considered left by a killed process
    stale_lock: float = 30.0
    # temporary upload directories untouched this long are leftovers
    stale_temp: float = 600.0


@dataclass(frozen=True)
class TransportPolicy:
    ssh_config: str = "~/.ssh/config"
    known_hosts: str = "~/.ssh/known_hosts"
    strict_host_keys: bool = True
    jump_host: str | None = None
    parallel_nodes: int = 4
    connect_timeout: float = 10.0


@dataclass(frozen=True)
class NodeOverride:
    pattern: str  # hostname glob
    mode: str | None = None
    cache_root: str | None = None
    capacity: CapacityPolicy | None = None


@dataclass(frozen=True)
class NodeSettings:
    """The policy as it applies to one node."""

    mode: str
    cache_root: str
    capacity: CapacityPolicy


@dataclass(frozen=True)
class Policy:
    cache_root: str = "/dev/shm/prng"
    enabled: bool = True
    inputs: InputsPolicy = field(default_factory=InputsPolicy)
    capacity: CapacityPolicy = field(default_factory=CapacityPolicy)
    gc: GcPolicy = field(default_factory=GcPolicy)
    transport: TransportPolicy = field(default_factory=TransportPolicy)
    nodes: tuple[NodeOverride, ...] = ()
    # where the settings came from (file path, or "defaults"), for messages
    source: str = "defaults"

    def for_node(self, hostname: str, is_localhost: bool) -> NodeSettings:
        mode = "direct" if is_localhost else "cache"
        root, cap = self.cache_root, self.capacity
        for o in self.nodes:  # later matching entries win
            if fnmatchcase(hostname, o.pattern):
                mode = o.mode or mode
                root = o.cache_root or root
                cap = o.capacity or cap
        if not self.enabled:
            mode = "off"
        return NodeSettings(mode=mode, cache_root=root, capacity=cap)


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


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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
        raise ValueError(f"{_SIZE_HINT}, got {_type_name(text)}")
    m = _SIZE_RE.fullmatch(text)
    unit = _SIZE_UNITS.get(m.group(2).lower()) if m else None
    if unit is None:
        raise ValueError(f"{_SIZE_HINT}, got {text!r}")
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
        raise ValueError(f"{_DUR_HINT}, got {_type_name(text)}")
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


# ----------------------------------------------------------------- validators
# A validator takes (value, key path) and returns the typed value or raises
# _Invalid; the loader turns that into a PolicyError naming source and key.
_KeyPath = tuple  # of str (mapping keys) and int (list positions)


class _Invalid(Exception):
    def __init__(self, path: _KeyPath, problem: str):
        super().__init__(problem)
        self.path, self.problem = path, problem


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "mapping"
    if isinstance(value, (list, tuple)):
        return "list"
    return type(value).__name__


def _fmt_path(path: _KeyPath) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _string(value: object, path: _KeyPath) -> str:
    if not isinstance(value, str):
        raise _Invalid(path, f"expected a string, got {_type_name(value)}")
    if not value.strip():
        raise _Invalid(path, "expected a non-empty string")
    return value


def _user_path(value: object, path: _KeyPath) -> str:
    return os.path.expanduser(_string(value, path))


def _abs_path(value: object, path: _KeyPath) -> str:
    text = _string(value, path)
    if not text.startswith("/"):
        raise _Invalid(path, f"expected an absolute path, got {text!r}")
    stripped = text.rstrip("/")
    if not stripped:
        raise _Invalid(path, "expected an absolute path below /, got '/'")
    return stripped


def _boolean(value: object, path: _KeyPath) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(path, f"expected true or false, got {_type_name(value)} {value!r}")
    return value


def _positive_int(value: object, path: _KeyPath) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _Invalid(path, f"expected an integer >= 1, got {_type_name(value)}")
    if value < 1:
        raise _Invalid(path, f"expected an integer >= 1, got {value}")
    return value


def _size(value: object, path: _KeyPath) -> int:
    if value is None or isinstance(value, (bool, list, tuple, Mapping)):
        raise _Invalid(path, f"{_SIZE_HINT}, got {_type_name(value)}")
    try:
        return parse_size(value)  # type: ignore[arg-type]
    except ValueError as e:
        raise _Invalid(path, str(e)) from None


def _duration(value: object, path: _KeyPath) -> float:
    if value is None or isinstance(value, (bool, list, tuple, Mapping)):
        raise _Invalid(path, f"{_DUR_HINT}, got {_type_name(value)}")
    try:
        seconds = parse_duration(value)  # type: ignore[arg-type]
    except ValueError as e:
        raise _Invalid(path, str(e)) from None
    if seconds <= 0:
        raise _Invalid(path, f"{_DUR_HINT}, got {value!r} (must be more than zero)")
    return seconds


def _percent(value: object, path: _KeyPath) -> float:
    number: object = value
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            number = float(value.strip()[:-1])
        except ValueError:
            number = value
    if not _is_number(number):
        raise _Invalid(path, f"expected a percentage (a number, 0 < x <= 100), got {_type_name(value)}")
    if not (0 < number <= 100):  # also rejects nan
        raise _Invalid(path, f"expected a percentage (a number, 0 < x <= 100), got {value!r}")
    return float(number)


def _optional(check: Callable[[object, _KeyPath], Any]) -> Callable[[object, _KeyPath], Any]:
    def run(value: object, path: _KeyPath) -> Any:
        return None if value is None else check(value, path)
    return run


def _string_list(what: str, item: Callable[[str, _KeyPath], str] | None = None):
    def run(value: object, path: _KeyPath) -> tuple[str, ...]:
        if not isinstance(value, (list, tuple)):
            raise _Invalid(path, f"expected a list of {what}, got {_type_name(value)}")
        out = []
        for i, v in enumerate(value):
            if not isinstance(v, str) or not v:
                raise _Invalid(path + (i,), f"expected a list of {what}, got {_type_name(v)} {v!r} as an item")
            out.append(item(v, path + (i,)) if item else v)
        return tuple(out)
    return run


def _flag(value: str, path: _KeyPath) -> str:
    if not value.startswith("-") or value == "-" or any(c.isspace() for c in value):
        raise _Invalid(path, f"expected an option such as --output-file, got {value!r}")
    return value


def _plain_name(value: str, path: _KeyPath) -> str:
    if "/" in value or value in (".", "..") or "\0" in value:
        raise _Invalid(path, f"expected a plain file name (no '/', not '.' or '..'), got {value!r}")
    return value


def _companions(value: object, path: _KeyPath) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise _Invalid(path, f"expected a mapping of input glob -> list of file names, got {_type_name(value)}")
    names = _string_list("file names", _plain_name)
    out = []
    for pattern, sibs in value.items():
        if not isinstance(pattern, str) or not pattern:
            raise _Invalid(path, f"expected input globs as keys, got {_type_name(pattern)} {pattern!r}")
        out.append((pattern, names(sibs, path + (pattern,))))
    return tuple(out)


_JUMP_RE = re.compile(r"(?:[^@\s:/]+@)?(?:\[[0-9A-Fa-f:.]+\]|[^@\s:/\[\]]+)(?::(\d{1,5}))?")


def _jump_host(value: object, path: _KeyPath) -> str:
    text = _string(value, path)
    m = _JUMP_RE.fullmatch(text)
    if not m or (m.group(1) and not 0 < int(m.group(1)) < 65536):
        raise _Invalid(path, f"expected [user@]host[:port], got {text!r}")
    return text


def _mode(value: object, path: _KeyPath) -> str:
    if value is False:  # YAML 1.1 reads an unquoted `off` as false
        return "off"
    if value not in MODES:
        raise _Invalid(path, f"expected one of {', '.join(MODES)}, got {value!r}")
    return value  # type: ignore[return-value]


_Spec = Mapping[str, Callable[[object, _KeyPath], Any]]

_INPUTS: _Spec = {
    "include": _string_list("strings"),
    "exclude": _string_list("strings"),
    "max_file_size": _size,
    "min_jobs": _positive_int,
    "companions": _companions,
    "output_flags": _string_list("strings", _flag),
    "base_dir": _optional(_abs_path),
}
_CAPACITY: _Spec = {
    "max_bytes": _optional(_size),
    "warn_percent": _percent,
    "max_percent": _percent,
}
_GC: _Spec = {
    "max_age": _duration,
    "lease_ttl": _duration,
    "stale_lock": _duration,
    "stale_temp": _duration,
}
_TRANSPORT: _Spec = {
    "ssh_config": _user_path,
    "known_hosts": _user_path,
    "strict_host_keys": _boolean,
    "jump_host": _optional(_jump_host),
    "parallel_nodes": _positive_int,
    "connect_timeout": _duration,
}
_SECTIONS: Mapping[str, _Spec] = {
    "inputs": _INPUTS, "capacity": _CAPACITY, "gc": _GC, "transport": _TRANSPORT,
}
_SCALARS: _Spec = {"cache_root": _abs_path, "enabled": _boolean}
_NODE_KEYS = ("mode", "cache_root", "capacity")
_TOP_KEYS = ("cache_root", "enabled", *_SECTIONS, "nodes")
_ALL_PATHS = [k for k in _SCALARS] + [f"{s}.{k}" for s, spec in _SECTIONS.items() for k in spec]


def _unknown(key: str, known: tuple[str, ...] | list[str], parent: _KeyPath) -> str:
    prefix = _fmt_path(parent) + "." if parent else ""
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    if close:
        return f"unknown key (did you mean {prefix}{close[0]}?)"
    # A key written at the wrong level, e.g. a top-level `min_jobs`.
    leaves = {p.rsplit(".", 1)[-1]: p for p in _ALL_PATHS}
    close = difflib.get_close_matches(key, list(leaves), n=1, cutoff=0.8)
    if close:
        return f"unknown key (did you mean {leaves[close[0]]}?)"
    return f"unknown key (known keys here: {', '.join(known)})"


def _check_keys(value: Mapping, known: tuple[str, ...] | list[str], path: _KeyPath) -> None:
    for key in value:
        if not isinstance(key, str):
            raise _Invalid(path, f"expected names as keys, got {_type_name(key)} {key!r}")
        if key not in known:
            raise _Invalid(path + (key,), _unknown(key, known, path))


def _section(spec: _Spec, value: object, path: _KeyPath) -> dict[str, Any]:
    if value is None:  # every key under it commented out
        return {}
    if not isinstance(value, Mapping):
        raise _Invalid(path, f"expected a mapping, got {_type_name(value)}")
    _check_keys(value, list(spec), path)
    return {k: spec[k](v, path + (k,)) for k, v in value.items()}


@dataclass
class _NodeEntry:
    pattern: str
    path: _KeyPath
    mode: str | None = None
    cache_root: str | None = None
    capacity: dict[str, Any] | None = None  # partial; completed from the global one


def _nodes(value: object, path: _KeyPath) -> list[_NodeEntry]:
    if value is None:
        return []
    if not isinstance(value, Mapping):
        raise _Invalid(path, f"expected a mapping of hostname glob -> settings, got {_type_name(value)}")
    out = []
    for pattern, body in value.items():
        if not isinstance(pattern, str) or not pattern:
            raise _Invalid(path, f"expected hostname globs as keys, got {_type_name(pattern)} {pattern!r}")
        npath = path + (pattern,)
        if body is None:
            body = {}
        if not isinstance(body, Mapping):
            raise _Invalid(npath, f"expected a mapping with {', '.join(_NODE_KEYS)}, got {_type_name(body)}")
        _check_keys(body, _NODE_KEYS, npath)
        entry = _NodeEntry(pattern, npath)
        if body.get("mode") is not None:
            entry.mode = _mode(body["mode"], npath + ("mode",))
        if body.get("cache_root") is not None:
            entry.cache_root = _abs_path(body["cache_root"], npath + ("cache_root",))
        if body.get("capacity") is not None:
            entry.capacity = _section(_CAPACITY, body["capacity"], npath + ("capacity",))
        out.append(entry)
    return out


def _validate(data: object) -> dict[str, Any]:
    """One layer (file or overrides) -> partial, typed settings."""
    if not isinstance(data, Mapping):
        raise _Invalid((), f"expected a mapping of settings at the top level, got {_type_name(data)}")
    _check_keys(data, _TOP_KEYS, ())
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in _SCALARS:
            out[key] = _SCALARS[key](value, (key,))
        elif key in _SECTIONS:
            out[key] = _section(_SECTIONS[key], value, (key,))
        else:
            out[key] = _nodes(value, (key,))
    return out


# --------------------------------------------------------------------- layers
class _Layer:
    """Where a set of values came from, to word errors about them."""

    def __init__(self, source: str, text: str | None = None):
        self.source, self.text = source, text

    def error(self, path: _KeyPath, problem: str) -> PolicyError:
        line = _line_of(self.text, path) if self.text is not None and path else None
        if line is not None:
            problem = f"{problem} (line {line})"
        return PolicyError(self.source, _fmt_path(path) or None, problem)


def _line_of(text: str, path: _KeyPath) -> int | None:
    """1-based line of the deepest part of ``path`` found in the YAML text."""
    try:
        node = yaml.compose(text, Loader=_Loader)
    except Exception:  # noqa: BLE001 - only a nicety for an error message
        return None
    line = None
    for part in path:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value == str(part):
                    line, node = k.start_mark.line + 1, v
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


class _Loader(yaml.SafeLoader):
    """Safe YAML that refuses duplicate keys instead of keeping the last one."""

    def construct_mapping(self, node, deep=False):  # type: ignore[override]
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    ident = (key_node.tag, key_node.value)
                    if ident in seen:
                        raise yaml.constructor.ConstructorError(
                            "while constructing a mapping", node.start_mark,
                            f"found duplicate key {key_node.value!r}", key_node.start_mark)
                    seen.add(ident)
        return super().construct_mapping(node, deep)


def _read_file(path: str) -> tuple[_Layer, dict[str, Any]]:
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise PolicyError(path, None, "cannot read the policy file: not UTF-8 text") from None
    except OSError as e:
        raise PolicyError(path, None, f"cannot read the policy file: {e.strerror or e}") from None
    layer = _Layer(path, text)
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        what = getattr(e, "problem", None) or str(e)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise PolicyError(path, None, f"invalid YAML{where}: {what}") from None
    except (ValueError, TypeError, RecursionError) as e:  # e.g. a date such as 2024-13-45
        raise PolicyError(path, None, f"invalid YAML: {e}") from None
    if data is None:  # empty, or only comments
        data = {}
    try:
        return layer, _validate(data)
    except _Invalid as e:
        raise layer.error(e.path, e.problem) from None


_FALSE = ("0", "false", "no", "off")
_TRUE = ("1", "true", "yes", "on")


def env_disabled(env: Mapping[str, str] | None = None) -> bool:
    """PRNG_CACHE=0 or USE_RAMDISK=false (and the other "off" words): cheap
    enough to ask on every dispatch, so switching it off mid-run takes effect."""
    env = os.environ if env is None else env
    return (env.get("PRNG_CACHE", "").strip().lower() in _FALSE
            or env.get("USE_RAMDISK", "").strip().lower() in _FALSE)


def _env_values(env: Mapping[str, str]) -> tuple[_Layer, dict[str, Any]]:
    layer = _Layer("environment")
    values: dict[str, Any] = {}
    for var in ("PRNG_CACHE", "USE_RAMDISK"):
        raw = env.get(var)
        if raw is None or not raw.strip():
            continue
        word = raw.strip().lower()
        if word in _FALSE:
            values["enabled"] = False
        elif word in _TRUE:
            # USE_RAMDISK=1 is the coordinator's normal setting: it may not
            # switch on a cache the policy file switched off. PRNG_CACHE=1 can.
            if var == "PRNG_CACHE" and values.get("enabled") is not False:
                values["enabled"] = True
        else:
            raise PolicyError("environment", var,
                              f"expected one of {'/'.join(_TRUE)} or {'/'.join(_FALSE)}, got {raw!r}")
    root = env.get("PRNG_CACHE_ROOT")
    if root:
        try:
            values["cache_root"] = _abs_path(root, ("PRNG_CACHE_ROOT",))
        except _Invalid as e:
            raise layer.error(e.path, e.problem) from None
    return layer, values


_NODE_KEY_RE = re.compile(r"(?P<glob>.+?)(?:\.(?P<attr>mode|cache_root|capacity)(?:\.(?P<sub>[^.]+))?)?")


def _override_parts(key: str) -> list[str]:
    parts = key.split(".")
    if parts[0] != "nodes" or len(parts) == 1:
        return parts
    # Hostname globs may contain dots: "nodes.rig-1.lab.mode".
    m = _NODE_KEY_RE.fullmatch(key[len("nodes."):])
    assert m is not None
    return ["nodes", *(p for p in m.group("glob", "attr", "sub") if p)]


def _override_values(overrides: Mapping[str, object]) -> tuple[_Layer, dict[str, Any]]:
    layer = _Layer("command line")
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        if not isinstance(key, str) or not key or "" in key.split("."):
            raise PolicyError("command line", str(key), "expected a dotted key such as inputs.min_jobs")
        parts = _override_parts(key)
        here = nested
        for i, part in enumerate(parts[:-1]):
            nxt = here.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise PolicyError("command line", key,
                                  f"conflicts with the value given for {'.'.join(parts[:i + 1])}")
            here = nxt
        leaf = parts[-1]
        if isinstance(value, Mapping) and isinstance(here.get(leaf), dict):
            _deep_merge(here[leaf], value)
        else:
            here[leaf] = _plain(value)
    try:
        return layer, _validate(nested)
    except _Invalid as e:
        raise layer.error(e.path, e.problem) from None


def _plain(value: object) -> object:
    return {k: _plain(v) for k, v in value.items()} if isinstance(value, Mapping) else value


def _deep_merge(into: dict, extra: Mapping) -> None:
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(into.get(k), dict):
            _deep_merge(into[k], v)
        else:
            into[k] = _plain(v)


def _checked_capacity(cap: CapacityPolicy, layer: _Layer, path: _KeyPath) -> CapacityPolicy:
    if cap.warn_percent > cap.max_percent:
        raise layer.error(path, f"warn_percent ({cap.warn_percent:g}) must not exceed "
                                f"max_percent ({cap.max_percent:g})")
    return cap


def _build(layers: list[tuple[_Layer, dict[str, Any]]], source: str) -> Policy:
    top: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    cap_layer: _Layer | None = None  # the last layer that set a capacity percentage
    cap_key = "warn_percent"
    nodes: list[tuple[_Layer, _NodeEntry]] = []
    for layer, values in layers:  # lowest precedence first
        if "cache_root" in values:
            # A root given by a later layer (PRNG_CACHE_ROOT, --cache-root)
            # beats every earlier one, per-node roots included: a file's
            # nodes.<glob>.cache_root is still a file value. Node roots given
            # by this same layer are added below, after this, so they win.
            nodes = [(l, replace(e, cache_root=None)) for l, e in nodes]
        for key, value in values.items():
            if key in _SECTIONS:
                sections[key].update(value)
                if key == "capacity":
                    for k in ("max_percent", "warn_percent"):
                        if k in value:
                            cap_layer, cap_key = layer, k
            elif key == "nodes":
                nodes.extend((layer, entry) for entry in value)  # later entries win
            else:
                top[key] = value

    capacity = CapacityPolicy(**sections["capacity"])
    if cap_layer is not None:
        _checked_capacity(capacity, cap_layer, ("capacity", cap_key))
    transport = TransportPolicy(**sections["transport"])
    transport = replace(transport, ssh_config=os.path.expanduser(transport.ssh_config),
                        known_hosts=os.path.expanduser(transport.known_hosts))
    overrides = []
    for layer, e in nodes:
        cap = None
        if e.capacity is not None:
            key = "warn_percent" if "warn_percent" in e.capacity else "max_percent"
            cap = _checked_capacity(replace(capacity, **e.capacity), layer, e.path + ("capacity", key))
        overrides.append(NodeOverride(pattern=e.pattern, mode=e.mode, cache_root=e.cache_root,
                                      capacity=cap))
    return Policy(
        inputs=InputsPolicy(**sections["inputs"]),
        capacity=capacity,
        gc=GcPolicy(**sections["gc"]),
        transport=transport,
        nodes=tuple(overrides),
        source=source,
        **top,
    )


# ---------------------------------------------------------------------- entry
def load_policy(
    path: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
    cwd: str | None = None,
) -> Policy:
    """Read, validate and merge the cache policy.

    The file is ``path`` if given, else ``$PRNG_CACHE_POLICY``, else
    ``<cwd>/cache_policy.yaml`` if present, else none (built-in defaults).
    Precedence: defaults < file < environment (``PRNG_CACHE``,
    ``USE_RAMDISK``, ``PRNG_CACHE_ROOT``) < ``overrides`` (dotted keys such as
    ``"gc.lease_ttl"``, validated like file values; ``nodes`` entries given
    here are appended after the file's, so they win). It holds per node: a
    ``cache_root`` from the environment or ``overrides`` replaces the
    ``nodes.<glob>.cache_root`` of every lower layer; within one layer the
    node's own root wins over the global one. ``~`` in
    ``transport.ssh_config`` / ``known_hosts`` is expanded.

    Every problem is raised as :class:`PolicyError` naming source and key.
    """
    env = os.environ if env is None else env
    base = os.getcwd() if cwd is None else cwd

    def resolve(p: str) -> str:
        p = os.path.expanduser(p)
        return p if cwd is None else os.path.join(cwd, p)

    file: str | None = None
    if path is not None:
        file = resolve(os.fspath(path))
        if not os.path.exists(file):
            raise PolicyError(file, None, "policy file not found")
    elif env.get("PRNG_CACHE_POLICY"):
        file = resolve(env["PRNG_CACHE_POLICY"])
        if not os.path.exists(file):
            raise PolicyError("environment", "PRNG_CACHE_POLICY", f"policy file {file} not found")
    else:
        candidate = os.path.join(base, DEFAULT_POLICY_FILE)
        if os.path.lexists(candidate):
            file = candidate

    layers: list[tuple[_Layer, dict[str, Any]]] = []
    if file is not None:
        layers.append(_read_file(file))
    layers.append(_env_values(env))
    if overrides:
        layers.append(_override_values(overrides))
    return _build(layers, source=file or "defaults")
