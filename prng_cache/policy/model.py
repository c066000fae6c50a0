"""The policy's settings: the single declaration of every key.

Each field names its parser (values.py) and default; schema.py derives the
file format from these fields. Adding a key is one field here, its
documented default in cache_policy.yaml, and a test (the shipped file is
checked against these fields).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Callable

from ..globs import first_match
from .schema import not_a_key, section, setting, table
from .values import (
    abs_path,
    boolean,
    choice,
    duration,
    flag,
    glob_to_names,
    host_spec,
    prefix_map,
    optional,
    percent,
    positive_int,
    size,
    string_list,
    user_path,
)

MODES = ("cache", "direct", "off")


@dataclass(frozen=True)
class InputsPolicy:
    """``inputs:`` which job arguments are cached, and how they are found."""

    include: tuple[str, ...] = setting((), string_list("strings"))
    exclude: tuple[str, ...] = setting(("*.db", "*.sqlite", "*.sqlite3", "*.lock", "*.log"),
                                       string_list("strings"))
    max_file_size: int = setting(2 << 30, size)
    min_jobs: int = setting(2, positive_int)
    # input glob -> names of sibling files that must sit beside it ("name?":
    # optional, staged beside it only when it exists)
    companions: tuple[tuple[str, tuple[str, ...]], ...] = setting(
        (("*survivors*.npz", ("optimal_window_config.json?",)),
         ("*survivors*.json", ("optimal_window_config.json?",))), glob_to_names)
    # path prefix jobs name -> prefix where the same files really live (on the
    # coordinator and on every node's SSD); {script_path}: the node's
    path_aliases: tuple[tuple[str, str], ...] = setting(
        (("/dev/shm/prng/step2/", "{script_path}/"), ("/dev/shm/prng/step3/", "{script_path}/")), prefix_map)
    # inputs needed for one run only: staged whatever min_jobs says, removed
    # from the nodes at run end unless another live lease holds them
    run_scoped: tuple[str, ...] = setting(("*/scoring_chunks/*",), string_list("strings"))
    # payload keys (coordinator.py jobs) whose values are input paths
    payload_keys: tuple[str, ...] = setting(("dataset_path",), string_list("strings"))
    output_flags: tuple[str, ...] = setting(("--output-file", "--output", "-o"),
                                            string_list("strings", flag))
    # where bare relative names are resolved on the coordinator; None means
    # the localhost node's script_path, else the current directory
    base_dir: str | None = setting(None, optional(abs_path))

    def companions_for(self, path: str) -> tuple[str, ...]:
        """Companion names for an input (a trailing ``?``: optional)."""
        names: list[str] = []
        if first_match(path, tuple(p for p, _ in self.companions)) is None:
            return ()
        base = path.rsplit("/", 1)[-1]
        for pattern, sibs in self.companions:
            if fnmatchcase(path, pattern) or fnmatchcase(base, pattern):
                names.extend(s for s in sibs if s not in names and s.rstrip("?") != base)
        return tuple(names)

    def is_run_scoped(self, path: str) -> bool:
        return first_match(path, self.run_scoped) is not None


@dataclass(frozen=True)
class CapacityPolicy:
    """``capacity:`` how much of a node's RAM disk the cache may fill."""

    max_bytes: int | None = setting(None, optional(size))
    # the loader also checks warn_percent <= max_percent, blaming the layer
    warn_percent: float = setting(50.0, percent)
    max_percent: float = setting(80.0, percent)


@dataclass(frozen=True)
class GcPolicy:
    """``gc:`` when entries, leases, locks and temporaries count as old."""

    max_age: float = setting(7 * 86400.0, duration)
    lease_ttl: float = setting(12 * 3600.0, duration)
    # a manifest lock older than this is considered left by a killed process
    stale_lock: float = setting(30.0, duration)
    # temporary upload directories untouched this long are leftovers
    stale_temp: float = setting(600.0, duration)


@dataclass(frozen=True)
class TransportPolicy:
    """``transport:`` how nodes are reached over SSH."""

    # `~` is expanded when loaded; TransportPolicy() itself keeps it
    ssh_config: str = setting("~/.ssh/config", user_path, resolve=os.path.expanduser)
    known_hosts: str = setting("~/.ssh/known_hosts", user_path, resolve=os.path.expanduser)
    strict_host_keys: bool = setting(True, boolean)
    jump_host: str | None = setting(None, optional(host_spec))
    parallel_nodes: int = setting(4, positive_int)
    connect_timeout: float = setting(10.0, duration)
    # batches (many small files, large listings) as one stream through the
    # node's python3; false: SFTP requests only
    node_helper: bool = setting(True, boolean)


@dataclass(frozen=True)
class NodeOverride:
    """One ``nodes:`` entry. Its keys are the fields below ``pattern``; null
    (or absent) means the global value applies. A section here (capacity)
    holds the global section completed with the keys the entry gives."""

    pattern: str = not_a_key()  # hostname glob
    mode: str | None = setting(None, choice(MODES))
    cache_root: str | None = setting(None, abs_path)
    capacity: CapacityPolicy | None = section(CapacityPolicy, default=None)


@dataclass(frozen=True)
class NodeSettings:
    """The policy as it applies to one node."""

    mode: str
    cache_root: str
    capacity: CapacityPolicy


@dataclass(frozen=True)
class Policy:
    """The whole policy, as merged from defaults, file, environment and options."""

    cache_root: str = setting("/dev/shm/prng", abs_path)
    enabled: bool = setting(True, boolean)
    inputs: InputsPolicy = section(InputsPolicy)
    capacity: CapacityPolicy = section(CapacityPolicy)
    gc: GcPolicy = section(GcPolicy)
    transport: TransportPolicy = section(TransportPolicy)
    nodes: tuple[NodeOverride, ...] = table(NodeOverride, key_field="pattern", what="hostname glob")
    # where the settings came from (file path, or "defaults"), for messages
    source: str = not_a_key("defaults")

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


# ----------------------------------------------------------- cross-key checks
def _capacity_problem(cap: CapacityPolicy) -> str | None:
    if cap.warn_percent > cap.max_percent:
        return (f"warn_percent ({cap.warn_percent:g}) must not exceed "
                f"max_percent ({cap.max_percent:g})")
    return None


#: Checks across the keys of one section, run on the merged section (and on
#: each node's). A failure is blamed on the last layer (or node entry) that
#: set one of the keys, at the key it set; when it set both, the later one
#: in this tuple.
CHECKS: dict[type, tuple[tuple[str, ...], Callable[[Any], str | None]]] = {
    CapacityPolicy: (("max_percent", "warn_percent"), _capacity_problem),
}
