"""cache_policy.yaml -> typed, validated settings.

Precedence: built-in defaults < policy file < environment < explicit options.
Nothing is read at import time.

model.py declares every key once (dataclass fields naming their parsers);
schema.py derives validation from those fields; values.py holds the value
parsers; loader.py reads and merges the layers.
"""

from __future__ import annotations

from .loader import DEFAULT_POLICY_FILE, env_disabled, load_policy
from .model import (
    MODES,
    CapacityPolicy,
    GcPolicy,
    InputsPolicy,
    NodeOverride,
    NodeSettings,
    Policy,
    TransportPolicy,
)
from .values import parse_duration, parse_size

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
