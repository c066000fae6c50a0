"""Reading the policy: YAML file, environment and command line, merged.

Precedence: built-in defaults < policy file < environment < explicit options.
Nothing is read at import time. Which keys exist and how each is checked
comes from model.py (through schema.py); this module only knows where values
come from and how layers combine.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ..errors import PolicyError
from ..userdata import read_text
from .model import CHECKS, Policy
from .schema import Entry, Section, Setting, Table, keys, resolved, validate
from .values import Invalid, KeyPath, fmt_path

#: Looked up in the current directory when no file is named.
DEFAULT_POLICY_FILE = "cache_policy.yaml"


# --------------------------------------------------------------------- layers
class _Layer:
    """Where a set of values came from, to word errors about them."""

    def __init__(self, source: str, text: str | None = None):
        self.source, self.text = source, text

    def error(self, path: KeyPath, problem: str) -> PolicyError:
        line = _line_of(self.text, path) if self.text is not None and path else None
        if line is not None:
            problem = f"{problem} (line {line})"
        return PolicyError(self.source, fmt_path(path) or None, problem)


def _line_of(text: str, path: KeyPath) -> int | None:
    """1-based line of the deepest part of ``path`` found in the YAML text."""
    import yaml

    try:
        node = yaml.compose(text, Loader=_loader())
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


@functools.lru_cache(maxsize=None)
def _loader() -> type:
    """The YAML loader class. PyYAML (~12 ms to import) is imported only when
    a policy file is read: a stage without one, and every import, skip it."""
    import yaml

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

    return _Loader


def _read_file(root: type, path: str) -> tuple[_Layer, dict[str, Any]]:
    text = read_text(path, PolicyError, missing=None, unreadable="cannot read the policy file",
                     encoding="utf-8-sig")
    layer = _Layer(path, text)
    loader = _loader()
    import yaml

    try:
        data = yaml.load(text, Loader=loader)  # noqa: S506 - a SafeLoader subclass
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
        return layer, validate(root, data)
    except Invalid as e:
        raise layer.error(e.path, e.problem) from None


_FALSE = ("0", "false", "no", "off")
_TRUE = ("1", "true", "yes", "on")


def env_disabled(env: Mapping[str, str] | None = None) -> bool:
    """PRNG_CACHE=0 or USE_RAMDISK=false (and the other "off" words): cheap
    enough to ask on every dispatch, so switching it off mid-run takes effect."""
    env = os.environ if env is None else env
    return (env.get("PRNG_CACHE", "").strip().lower() in _FALSE
            or env.get("USE_RAMDISK", "").strip().lower() in _FALSE)


def _env_values(root: type, env: Mapping[str, str]) -> tuple[_Layer, dict[str, Any]]:
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
    root_dir = env.get("PRNG_CACHE_ROOT")
    if root_dir:
        try:  # checked as the file's cache_root is
            values["cache_root"] = keys(root)["cache_root"].parse(root_dir, ("PRNG_CACHE_ROOT",))
        except Invalid as e:
            raise layer.error(e.path, e.problem) from None
    return layer, values


def _override_parts(root: type, key: str) -> list[str]:
    parts = key.split(".")
    kind = keys(root).get(parts[0])
    if not isinstance(kind, Table) or len(parts) == 1:
        return parts
    # Table globs may contain dots: "nodes.rig-1.lab.mode" (glob rig-1.lab).
    attrs = "|".join(re.escape(k) for k in keys(kind.cls))
    m = re.fullmatch(rf"(?P<glob>.+?)(?:\.(?P<attr>{attrs})(?:\.(?P<sub>[^.]+))?)?",
                     key[len(parts[0]) + 1:])
    assert m is not None
    return [parts[0], *(p for p in m.group("glob", "attr", "sub") if p)]


def _override_values(root: type, overrides: Mapping[str, object]) -> tuple[_Layer, dict[str, Any]]:
    layer = _Layer("command line")
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        if not isinstance(key, str) or not key or "" in key.split("."):
            raise PolicyError("command line", str(key), "expected a dotted key such as inputs.min_jobs")
        parts = _override_parts(root, key)
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
        return layer, validate(root, nested)
    except Invalid as e:
        raise layer.error(e.path, e.problem) from None


def _plain(value: object) -> object:
    return {k: _plain(v) for k, v in value.items()} if isinstance(value, Mapping) else value


def _deep_merge(into: dict, extra: Mapping) -> None:
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(into.get(k), dict):
            _deep_merge(into[k], v)
        else:
            into[k] = _plain(v)


# ---------------------------------------------------------------------- merge
_Blame = tuple  # (_Layer, KeyPath): where a failed cross-key check is reported


def _blame(cls: type, layer: _Layer, given: Mapping[str, Any], path: KeyPath) -> _Blame | None:
    """(layer, key path) to blame if ``cls``'s cross-key check fails, when
    ``given`` sets one of its keys; else None."""
    hit = [k for k in CHECKS[cls][0] if k in given] if cls in CHECKS else []
    return (layer, path + (hit[-1],)) if hit else None


def _checked(obj: Any, blame: _Blame | None) -> Any:
    problem = CHECKS[type(obj)][1](obj) if blame is not None else None
    if problem:
        raise blame[0].error(blame[1], problem)
    return obj


def _build(root: type, layers: list[tuple[_Layer, dict[str, Any]]], source: str) -> Any:
    spec = keys(root)
    given: dict[str, Any] = {}  # top-level settings: the last layer's value
    parts: dict[str, dict[str, Any]] = {n: {} for n, k in spec.items() if isinstance(k, Section)}
    blame: dict[str, _Blame | None] = {}  # per section, from the last layer setting a checked key
    tables: dict[str, list[tuple[_Layer, Entry]]] = {n: [] for n, k in spec.items() if isinstance(k, Table)}
    for layer, values in layers:  # lowest precedence first
        # A top-level setting given by a later layer (PRNG_CACHE_ROOT,
        # --cache-root) beats the same key in every earlier layer's entries:
        # a file's nodes.<glob>.cache_root is still a file value. Entries of
        # this same layer are added below, after this, so they win.
        later = {k for k in values if isinstance(spec[k], Setting)}
        for name, entries in tables.items():
            tables[name] = [(l, replace(e, values={k: v for k, v in e.values.items() if k not in later}))
                            for l, e in entries]
        for key, value in values.items():
            kind = spec[key]
            if isinstance(kind, Section):
                parts[key].update(value)
                blame[key] = _blame(kind.cls, layer, value, (key,)) or blame.get(key)
            elif isinstance(kind, Table):
                tables[key].extend((layer, entry) for entry in value)  # later entries win
            else:
                given[key] = value

    out: dict[str, Any] = dict(given)
    for name, values in parts.items():
        out[name] = resolved(_checked(spec[name].cls(**values), blame.get(name)))
    for name, entries in tables.items():
        out[name] = tuple(_row(spec[name], layer, e, out) for layer, e in entries)
    return resolved(root(source=source, **out))


def _row(kind: Table, layer: _Layer, e: Entry, top: Mapping[str, Any]) -> Any:
    """A table entry; its sections complete the top-level section of the same name."""
    values = dict(e.values)
    for name, sub in keys(kind.cls).items():
        if isinstance(sub, Section) and name in values:
            base = top[name] if isinstance(top.get(name), sub.cls) else sub.cls()
            values[name] = _checked(replace(base, **values[name]),
                                    _blame(sub.cls, layer, values[name], e.path + (name,)))
    return kind.cls(**{kind.key_field: e.key}, **values)


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
    return load(Policy, path, env=env, overrides=overrides, cwd=cwd)


def load(
    root: type,
    path: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
    cwd: str | None = None,
) -> Any:
    """:func:`load_policy` for any root dataclass declared like :class:`Policy`
    (tests use it to show a new field needs no loader change)."""
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
        layers.append(_read_file(root, file))
    layers.append(_env_values(root, env))
    if overrides:
        layers.append(_override_values(root, overrides))
    return _build(root, layers, source=file or "defaults")
