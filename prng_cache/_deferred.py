"""Keep paramiko's optional ``invoke`` import off the start-up path.

``paramiko.config`` does ``import invoke`` at import time, only to run
``Match exec`` lines of an ssh config; invoke in turn imports
``unittest.mock`` and ``asyncio`` (~30 ms, a third of paramiko's import).
Before paramiko is imported we put a stand-in module under ``invoke`` that
imports the real package on first attribute access, so ``Match exec`` still
works and a config without it never pays for invoke. The stand-in replaces
itself in ``sys.modules`` with the real module the first time it is used.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types

_lock = threading.Lock()


class _DeferredModule(types.ModuleType):
    """A module that imports the real one on first attribute access
    (thread-safe, unlike ``importlib.util.LazyLoader`` before Python 3.12)."""

    def __getattr__(self, attr: str):  # only called for attributes it lacks
        with _lock:
            real = self.__dict__.get("_real")
            if real is None:
                if sys.modules.get(self.__name__) is self:
                    del sys.modules[self.__name__]
                try:
                    real = importlib.import_module(self.__name__)
                except BaseException:
                    sys.modules.setdefault(self.__name__, self)
                    raise
                self.__dict__["_real"] = real
        return getattr(real, attr)


def defer_import(name: str) -> None:
    """Make ``import name`` cheap until the module is used; no-op when it is
    already imported or not installed (then importing it fails as usual)."""
    if name in sys.modules:
        return
    try:
        if importlib.util.find_spec(name) is None:
            return
    except (ImportError, ValueError):
        return
    sys.modules[name] = _DeferredModule(name)


def defer_optional_imports() -> None:
    # Only before paramiko.config itself is imported: afterwards it holds the
    # real invoke (or None) already.
    if "paramiko.config" not in sys.modules:
        defer_import("invoke")
