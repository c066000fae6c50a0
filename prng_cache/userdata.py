"""Reading what users hand prng-cache: their files, whose every problem
becomes one clear :class:`~prng_cache.errors.UserError` naming the file,
and their objects (plain dicts, or the coordinator's dataclasses)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Callable

from .errors import UserError

#: builds the error for a file: (file, where in it or None, problem) -> UserError;
#: the signature of PolicyError, ConfigError and JobsFileError
FileError = Callable[[str, "str | None", str], UserError]

_JSON_WORDS = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "object"}


def type_name(value: Any, *, yaml: bool = False) -> str:
    """How an error names a value's type, in the file format's words:
    JSON's (``integer``, ``object``), or for YAML ``mapping``/``list`` and
    Python's names (``int``, ``str``) for scalars."""
    if value is None:
        return "null"
    if yaml:
        if isinstance(value, Mapping):
            return "mapping"
        if isinstance(value, (list, tuple)):
            return "list"
        return type(value).__name__
    return _JSON_WORDS.get(type(value), type(value).__name__)


def read_text(path: str, error: FileError, *, missing: str | None = "file not found",
              unreadable: str = "cannot read", encoding: str = "utf-8") -> str:
    """The text of a user's file. A missing file is ``missing`` (None: like
    any other unreadable one); otherwise ``"<unreadable>: <why>"``."""
    try:
        with open(path, encoding=encoding) as f:
            return f.read()
    except FileNotFoundError as exc:
        if missing is not None:
            raise error(path, None, missing) from None
        raise error(path, None, f"{unreadable}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise error(path, None, f"{unreadable}: not UTF-8 text") from None
    except OSError as exc:
        raise error(path, None, f"{unreadable}: {exc.strerror or exc}") from None


def load_json(path: str, error: FileError, *, missing: str = "file not found") -> Any:
    """A user's JSON file, parsed; a syntax error names its line and column."""
    text = read_text(path, error, missing=missing)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(path, f"line {exc.lineno} column {exc.colno}", f"not valid JSON: {exc.msg}") from None


def attr(obj: Any, name: str, default: Any = None) -> Any:
    """``obj[name]`` for a mapping, else ``obj.name``; ``default`` when absent.
    The coordinator passes its own dataclasses, tests and tools pass dicts."""
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)
