"""The policy schema, read from the dataclass fields of model.py.

The dataclasses are the only declaration of the keys: each field says in its
metadata what it is, and validation, unknown-key hints and command-line keys
are all derived from that:

* ``setting(default, parse)``: a key users write; ``parse`` (values.py)
  checks the YAML value and returns it typed.
* ``section(cls)``: a mapping whose keys are the fields of ``cls``.
* ``table(cls, ...)``: a mapping of glob -> entry, each entry's keys being
  the fields of ``cls`` (``nodes``).
* ``not_a_key(...)``: a field filled in by the loader, never read from YAML.

A field declared any other way is a programming error (TypeError), so a new
field cannot be silently left out of the file format.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any, Callable, Union

from .values import Invalid, KeyPath, Parser, fmt_path, type_name

_META = "prng_cache.policy"


@dataclass(frozen=True)
class Setting:
    """A key with a value (see :func:`setting`)."""

    parse: Parser
    # applied to the final value, the default included (e.g. expanding `~`)
    resolve: Callable[[Any], Any] | None = None


@dataclass(frozen=True)
class Section:
    """A key holding a nested dataclass (see :func:`section`)."""

    cls: type


@dataclass(frozen=True)
class Table:
    """A key holding entries keyed by a glob (see :func:`table`)."""

    cls: type
    key_field: str  # the field of cls that receives the glob
    what: str  # how the glob keys are named in messages


Kind = Union[Setting, Section, Table]


def setting(default: Any, parse: Parser, *, resolve: Callable[[Any], Any] | None = None) -> Any:
    return field(default=default, metadata={_META: Setting(parse, resolve)})


def section(cls: type, *, default: Any = MISSING) -> Any:
    """A section; ``default`` (e.g. None) instead of ``cls()`` when unset."""
    if default is MISSING:
        return field(default_factory=cls, metadata={_META: Section(cls)})
    return field(default=default, metadata={_META: Section(cls)})


def table(cls: type, *, key_field: str, what: str) -> Any:
    return field(default=(), metadata={_META: Table(cls, key_field, what)})


def not_a_key(default: Any = MISSING) -> Any:
    return field(default=default, metadata={_META: None})


@functools.cache
def keys(cls: type) -> dict[str, Kind]:
    """The keys users may write in a mapping read as ``cls``, in field order."""
    out: dict[str, Kind] = {}
    for f in fields(cls):
        if _META not in f.metadata:
            raise TypeError(f"{cls.__name__}.{f.name}: declare it with setting(), section(), "
                            f"table() or not_a_key() (prng_cache/policy/schema.py)")
        if f.metadata[_META] is not None:
            out[f.name] = f.metadata[_META]
    return out


@functools.cache
def leaf_paths(root: type) -> tuple[str, ...]:
    """Dotted paths of every setting outside tables (``inputs.min_jobs``)."""
    out: list[str] = []
    for name, kind in keys(root).items():
        if isinstance(kind, Setting):
            out.append(name)
        elif isinstance(kind, Section):
            out.extend(f"{name}.{sub}" for sub in leaf_paths(kind.cls))
    return tuple(out)


# ----------------------------------------------------------------- validation
def validate(root: type, data: object) -> dict[str, Any]:
    """One layer (file or overrides) -> partial, typed settings.

    Sections become dicts of the keys given (later layers update them);
    tables become lists of :class:`Entry`.
    """
    if not isinstance(data, Mapping):
        raise Invalid((), f"expected a mapping of settings at the top level, got {type_name(data)}")
    return _mapping(root, root, data, ())


@dataclass
class Entry:
    """One table entry as written in one layer: its glob and the keys given."""

    key: str
    path: KeyPath
    values: dict[str, Any]


def _mapping(root: type, cls: type, value: Mapping, path: KeyPath) -> dict[str, Any]:
    known = keys(cls)
    _check_keys(root, value, list(known), path)
    return {k: _parse(root, known[k], v, path + (k,)) for k, v in value.items()}


def _parse(root: type, kind: Kind, value: object, path: KeyPath) -> Any:
    if isinstance(kind, Setting):
        return kind.parse(value, path)
    if isinstance(kind, Section):
        if value is None:  # every key under it commented out
            return {}
        if not isinstance(value, Mapping):
            raise Invalid(path, f"expected a mapping, got {type_name(value)}")
        return _mapping(root, kind.cls, value, path)
    return _table(root, kind, value, path)


def _table(root: type, kind: Table, value: object, path: KeyPath) -> list[Entry]:
    if value is None:
        return []
    if not isinstance(value, Mapping):
        raise Invalid(path, f"expected a mapping of {kind.what} -> settings, got {type_name(value)}")
    known = keys(kind.cls)
    out = []
    for glob, body in value.items():
        if not isinstance(glob, str) or not glob:
            raise Invalid(path, f"expected {kind.what}s as keys, got {type_name(glob)} {glob!r}")
        epath = path + (glob,)
        if body is None:
            body = {}
        if not isinstance(body, Mapping):
            raise Invalid(epath, f"expected a mapping with {', '.join(known)}, got {type_name(body)}")
        _check_keys(root, body, list(known), epath)
        # In an entry, null means "not set here": the global value applies.
        # Checked in field order, so the first problem reported is stable.
        out.append(Entry(glob, epath, {k: _parse(root, sub, body[k], epath + (k,))
                                       for k, sub in known.items() if body.get(k) is not None}))
    return out


def _check_keys(root: type, value: Mapping, known: list[str], path: KeyPath) -> None:
    for key in value:
        if not isinstance(key, str):
            raise Invalid(path, f"expected names as keys, got {type_name(key)} {key!r}")
        if key not in known:
            raise Invalid(path + (key,), _unknown(root, key, known, path))


def _unknown(root: type, key: str, known: list[str], parent: KeyPath) -> str:
    import difflib  # only for a mistyped key's message

    prefix = fmt_path(parent) + "." if parent else ""
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f"unknown key (did you mean {prefix}{close[0]}?)"
    # A key written at the wrong level, e.g. a top-level `min_jobs`.
    leaves = {p.rsplit(".", 1)[-1]: p for p in leaf_paths(root)}
    close = difflib.get_close_matches(key, list(leaves), n=1, cutoff=0.8)
    if close:
        return f"unknown key (did you mean {leaves[close[0]]}?)"
    return f"unknown key (known keys here: {', '.join(known)})"


def resolved(obj: Any) -> Any:
    """``obj`` (a section) with each setting's ``resolve`` applied."""
    changes = {name: kind.resolve(getattr(obj, name)) for name, kind in keys(type(obj)).items()
               if isinstance(kind, Setting) and kind.resolve is not None}
    return replace(obj, **changes) if changes else obj
