"""prng-cache: a content-addressed RAM cache for the input files of GPU jobs.

Public API (everything else is internal and may change)::

    from prng_cache import load_policy, load_cluster, load_jobs, plan_run

    plan = plan_run(load_jobs("jobs.json"), load_cluster("distributed_config.json"), load_policy())
    reports = plan.stage()  # host -> NodeReport

(``discover`` and ``stage_cluster`` are the two halves of ``plan_run`` and
``RunPlan.stage``, for callers that build their own bundles.)
"""

from __future__ import annotations

__version__ = "0.1.0"  # static: importlib.metadata costs ~20 ms of every start

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
from .inputs import Discovery, discover
from .jobs import load_jobs
from .model import Bundle
from .policy import Policy, load_policy
from .reports import NodeReport
from .rewrite import rewrite_args
from .run import RunPlan, plan_run
from .staging import stage_cluster

__all__ = [
    "__version__",
    "Bundle", "ConfigError", "Discovery", "HashError", "HostKeyError", "JobsFileError", "Node",
    "NodeError", "NodeReport", "Policy", "PolicyError", "PrngCacheError", "RunPlan", "TransportError",
    "UnsafeCacheRootError", "UserError",
    "as_node", "discover", "load_cluster", "load_jobs", "load_policy", "plan_run", "rewrite_args",
    "stage_cluster",
]
