"""The coordinator's jobs file, and accessors that also fit its Job objects."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .errors import JobsFileError
from .userdata import attr, load_json, type_name

_MISSING = object()


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_str_or_int(v: Any) -> bool:
    return isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool))


# field -> (required, check, what was expected); None is allowed for optionals
# because the coordinator's Job dataclass defaults them to None.
_FIELDS: dict[str, tuple[bool, Any, str]] = {
    "job_id": (True, _is_str_or_int, "a string or integer"),
    "script": (True, lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "args": (True, lambda v: isinstance(v, list), "a list"),
    "expected_output": (True, lambda v: isinstance(v, str), "a string"),
    "timeout": (True, _is_num, "a number"),
    "chunk_file": (False, lambda v: v is None or isinstance(v, str), "a string"),
    "seed_count": (False, lambda v: v is None or _is_num(v), "a number"),
    "job_type": (False, lambda v: v is None or isinstance(v, str), "a string"),
}


def load_jobs(path: str) -> list[dict]:
    """Read and validate a jobs file; errors name the file, location and expectation."""
    data = load_json(path, JobsFileError)
    if not isinstance(data, list):
        raise JobsFileError(path, None, f"expected a JSON list of jobs, got {type_name(data)}")
    seen: dict[str, int] = {}
    for i, job in enumerate(data):
        where = f"jobs[{i}]"
        if not isinstance(job, dict):
            raise JobsFileError(path, where, f"expected an object, got {type_name(job)}")
        for name, (required, ok, expected) in _FIELDS.items():
            v = job.get(name, _MISSING)
            if v is _MISSING:
                if required:
                    raise JobsFileError(path, f"{where}.{name}", f"missing; expected {expected}")
            elif not ok(v):
                raise JobsFileError(path, f"{where}.{name}",
                                    f"expected {expected}, got {type_name(v)}")
        for k, a in enumerate(job["args"]):
            if not (isinstance(a, str) or _is_num(a)):
                raise JobsFileError(path, f"{where}.args[{k}]",
                                    f"expected a string or number, got {type_name(a)}")
        # Ids name job_<id>.json and key per-job bookkeeping: 7 and "7" collide.
        jid = str(job["job_id"])
        if jid in seen:
            raise JobsFileError(path, f"{where}.job_id",
                                f"duplicate job_id {jid!r} (also jobs[{seen[jid]}])")
        seen[jid] = i
    return data


def job_id(job: Any) -> str:
    """The job's id as a string (ids may be int or str in the file)."""
    return str(attr(job, "job_id"))


def job_payload(job: Any) -> Mapping[str, Any] | None:
    """What coordinator.py sends a worker: ``job.payload`` of a ``JobSpec``;
    a plain dict job (a jobs-file entry, a step-1 sieve payload) is its own
    payload; None for other objects."""
    p = attr(job, "payload")
    if isinstance(p, Mapping):
        return p
    return job if isinstance(job, Mapping) else None


def job_args(job: Any) -> list[Any]:
    """The job's original arguments as they are (a new list each call):
    ``job.args``, or for coordinator.py's ``JobSpec`` ``job.payload["args"]``.

    Items are never converted: only string items can be paths, and a number,
    None or dict must reach the job as itself, not as its str()."""
    args = attr(job, "args")
    if args is None:
        p = attr(job, "payload")
        if isinstance(p, Mapping):
            args = p.get("args")
    return list(args or ())


def payload_values(payload: Mapping[str, Any] | None, keys: Iterable[str]) -> list[tuple[str, str]]:
    """``(key, value)`` for each of ``keys`` (``inputs.payload_keys``) whose
    value in ``payload`` is a non-empty string: the paths a payload names
    outside its args (step 1's ``dataset_path``)."""
    if not payload:
        return []
    out = []
    for k in keys:
        v = payload.get(k)
        if isinstance(v, str) and v:
            out.append((k, v))
    return out


def job_expected_output(job: Any) -> str | None:
    v = attr(job, "expected_output")
    return None if v is None else str(v)
