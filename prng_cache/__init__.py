"""prng-cache: a content-addressed RAM cache for the input files of GPU jobs.

Public API (everything else is internal and may change)::

    from prng_cache import load_policy, load_cluster, load_jobs, discover, stage_cluster
"""

from __future__ import annotations

__version__ = "0.1.0"

from .cluster import Node, as_node, load_cluster
from .errors import (
    ConfigError,
    HashError,
    HostKeyError,
    JobsFileError,
    NodeError,
    PolicyError,
    PrngCacheError,
    TransportError,
    UnsafeCacheRootError,
    UserError,
)
from .inputs import Bundle, Discovery, discover
from .jobs import load_jobs
from .policy import Policy, load_policy
from .rewrite import rewrite_args
from .staging import NodeReport, stage_cluster

__all__ = [
    "__version__",
    "Bundle", "ConfigError", "Discovery", "HashError", "HostKeyError", "JobsFileError", "Node",
    "NodeError", "NodeReport", "Policy", "PolicyError", "PrngCacheError", "TransportError",
    "UnsafeCacheRootError", "UserError",
    "as_node", "discover", "load_cluster", "load_jobs", "load_policy", "rewrite_args", "stage_cluster",
]
