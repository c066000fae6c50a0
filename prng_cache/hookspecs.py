"""Hook specifications of the users' coordinator (pluggy project
``scripts_coordinator``). The coordinator calls these; plugins such as
prng-cache implement them. Arguments are passed by keyword, as pluggy does.
"""

from __future__ import annotations

import pluggy

PROJECT = "scripts_coordinator"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def coordinator_run_start(run_id: str, nodes: list, jobs: list, assignments: dict) -> None:
    """Called once per run after jobs are assigned to nodes (``assignments``:
    hostname -> list of jobs), before the first dispatch. ``nodes`` may be
    the coordinator's node objects or coordinator.py's ``GPUWorker``s.
    Must not raise."""


@hookspec(firstresult=True)
def coordinator_job_args(node, job) -> list | None:
    """Called for every dispatch, retries on another node included. Return the
    args to send for ``job`` on ``node``, or None to leave ``job.args`` as is.
    Must be fast and do no I/O; must never mutate ``job``."""


@hookspec(firstresult=True)
def coordinator_job_payload(node, job, payload: dict) -> dict | None:
    """For coordinators that send each job a payload dict (coordinator.py:
    ``job`` a ``JobSpec`` whose args are ``payload["args"]``, ``node`` a
    ``GPUWorker`` whose host is ``node.node.hostname``). Return a new dict:
    a copy of ``payload`` with its ``args`` and the input paths it names
    (``inputs.payload_keys``) rewritten for ``node``; or None to send
    ``payload`` as is. Called for every dispatch, retries included; must be
    fast and do no I/O; must never mutate ``job`` or ``payload``."""


@hookspec
def coordinator_run_end(run_id: str, results: dict) -> dict | None:
    """Called once when results are known; returns this plugin's run report
    (the coordinator stores the reports under ``results["plugins"]``)."""
