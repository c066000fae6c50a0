"""cache_policy.yaml -> typed, validated settings.

Precedence: built-in defaults < policy file < environment < explicit options.
Nothing is read at import time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase

MODES = ("cache", "direct", "off")


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
