"""Shared helpers for the eighth red team's attacks on the warm-stage survey,
shared reads and discovery speed-ups (commits 44f44f8, 027bc45, 5b0a07a),
over the real sshd test cluster (tests/conftest.py)."""

from __future__ import annotations

import base64
import contextlib
import os

from test_faults import NODES, cluster, make_policy, q, root_of  # noqa: F401

from prng_cache.cluster import Node
from prng_cache.hashing import HashMemo
from prng_cache.run import plan_run
from prng_cache.transport.ssh import helper as ssh_helper
from prng_cache.transport.ssh import operations

#: more entries than the helper's threshold: the survey (children) is used
N = operations.HELPER_MIN_LISTING + 12


def jobs_of(paths, n: int = 3) -> list[dict]:
    return [{"job_id": f"j{i}", "args": [str(p) for p in paths[i::n]]} for i in range(n)]


def stage(cluster, policy, paths, memo_dir, hosts=NODES[:1], jobs=None):
    nodes = [Node(h, cluster.user) for h in hosts]
    plan = plan_run(jobs if jobs is not None else jobs_of(paths), nodes, policy, min_jobs=1,
                    memo=HashMemo(str(memo_dir)), connect_early=True)
    return plan.stage()


def many_files(d, n: int = N, prefix: str = "f", size: int = 200) -> list:
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = d / f"{prefix}{i:04d}.npz"
        p.write_bytes(os.urandom(size) + b"%d" % i)
        out.append(p)
    return out


def node_bytes(node, path: str) -> bytes | None:
    r = node.run(f"base64 -w0 -- {q(path)}", check=False)
    if r.returncode != 0:
        return None
    return base64.b64decode(r.stdout.strip())


def served_problem(node, ram: str, want: bytes) -> str | None:
    """Why a RAM path given to a job is not good (None when it is): a
    regular file, not reached through any symlink, one link, ours, right
    bytes."""
    r = node.run(
        f"p={q(ram)}; test -f \"$p\" -a ! -L \"$p\" || {{ echo notreg; exit 0; }}; "
        f"test \"$(readlink -f -- \"$p\")\" = \"$p\" || {{ echo via-symlink; exit 0; }}; "
        f"test \"$(stat -c %h -- \"$p\")\" = 1 || {{ echo links; exit 0; }}; "
        f"test \"$(stat -c %u -- \"$p\")\" = \"$(id -u)\" || {{ echo owner; exit 0; }}; echo ok",
        check=False)
    verdict = r.stdout.strip()
    if verdict != "ok":
        return verdict or r.stderr
    got = node_bytes(node, ram)
    if got != want:
        return "wrong bytes"
    return None


def entry_of(ram: str) -> str:
    return ram.rsplit("/", 1)[0]


HOOK_SRC = '''
_rt8_orig_op_list = op_list


def op_list(req, *args):
    # injected by the red team's test: a node command run at one precise
    # moment, right after op_survey listed (and lstat'ed) the root and
    # before the entries' files are lstat'ed (req is the survey's request)
    if req.get("op") == "survey" and os.path.exists(%(hook)r):
        os.system("sh %(hook)s </dev/null >/dev/null 2>&1")
        os.unlink(%(hook)r)
    return _rt8_orig_op_list(req, *args)


'''


@contextlib.contextmanager
def survey_hook(monkeypatch, hook_path: str):
    """The helper sent to the nodes runs ``sh hook_path`` (once, if that file
    exists on the node) between its root listing and its per-entry lstats.
    Only the moment is injected; the helper's own code runs unchanged."""
    real = ssh_helper._source()
    marker = b'\nif __name__ == "__main__":'
    assert marker in real
    patched = real.replace(marker, (HOOK_SRC % {"hook": hook_path}).encode() + marker)
    monkeypatch.setattr(ssh_helper, "_source", lambda: patched)
    yield
