"""``prng-cache doctor``: will adoption work, before a real run?

core.py: the checks' types, diagnose() and the policy/cluster checks;
nodes.py: per-node checks (read-only); jobs.py: inputs, missing inputs,
companions; source.py: the static check of a coordinator's source.
Nothing here prints (cli.py does).
"""

from .core import Check, Diagnosis, diagnose
from .jobs import find_missing_inputs
from .nodes import check_nodes
from .source import check_coordinator

__all__ = ["Check", "Diagnosis", "check_coordinator", "check_nodes", "diagnose", "find_missing_inputs"]
