"""What the users' scripts_coordinator.py imports: a ready plugin manager."""

from __future__ import annotations

import pluggy

from . import hookspecs


def plugin_manager(*, load_entrypoints: bool = True) -> pluggy.PluginManager:
    """A ``pluggy.PluginManager("scripts_coordinator")`` with the hook
    specifications added and every plugin of the entry-point group
    ``scripts_coordinator`` (prng-cache among them) registered."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    if load_entrypoints:
        pm.load_setuptools_entrypoints(hookspecs.PROJECT)
    return pm
