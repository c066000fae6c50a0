"""Shared helpers for the seventh red team's attacks on presend (big new
inputs sent to the nodes while the coordinator hashes them), over the real
sshd test cluster (tests/conftest.py)."""

from __future__ import annotations

import contextlib
import os
import threading
import time

import pytest

from test_faults import NODES, cluster, make_policy, node_names, root_of  # noqa: F401

from prng_cache import prewarm
from prng_cache.cluster import Node
from prng_cache.hashing import HashMemo
from prng_cache.run import plan_run
from prng_cache.transport.ssh import SSHTransport

MIB = 1 << 20


def presend_min(n: int) -> int:
    """Test-sized "big" inputs; RT7_PRESEND_MIN (e.g. 1T) overrides it to
    run an attack without presend, as a control."""
    v = os.environ.get("RT7_PRESEND_MIN")
    return int(v) if v else n


@pytest.fixture(autouse=True)
def small_presend(monkeypatch):
    monkeypatch.setattr(prewarm, "PRESEND_MIN", presend_min(2 * MIB))
    yield monkeypatch


def leftovers(node) -> list[str]:
    return [n for n in node_names(node, root_of(node)) if n.startswith((".tmp-", ".trash-"))]


def root_tokens(node) -> list[str]:
    return [n for n in node_names(node, root_of(node)) if n.startswith(".prng-root-")]


def jobs(paths, n: int = 2) -> list[dict]:
    return [{"job_id": f"j{i}", "args": [str(p) for p in paths]} for i in range(n)]


def run_stage(cluster, policy, paths, memo_dir, hosts=NODES, **kw):
    nodes = [Node(h, cluster.user) for h in hosts]
    plan = plan_run(jobs(paths), nodes, policy, min_jobs=1, memo=HashMemo(str(memo_dir)), connect_early=True, **kw)
    return plan.stage()


def shm_used(node) -> int:
    """Bytes used on the node's /dev/shm (its private tmpfs)."""
    out = node.run("df -B1 --output=used /dev/shm | tail -1").stdout
    return int(out.strip())


def shm_total(node) -> int:
    return int(node.run("df -B1 --output=size /dev/shm | tail -1").stdout.strip())


class PresendWatch:
    """Records, on the SSH transport, each write into a presend temporary
    (``.tmp-*/<name>`` opened by an EarlyConnections thread); ``slow``
    seconds per write emulate a slow link so a presend is still running when
    the test strikes (the fault itself is real)."""

    def __init__(self, monkeypatch, slow: float = 0.0):
        self.slow = slow
        self.written = 0
        self.started = threading.Event()
        self.paths: list[str] = []
        orig = SSHTransport.open_write
        watch = self

        class W:
            def __init__(self, f):
                self.f = f

            def write(self, data):
                if watch.slow:
                    time.sleep(watch.slow)
                n = self.f.write(data)
                watch.written += len(data)
                if watch.written >= 1 << 20:
                    watch.started.set()
                return n

            def __getattr__(self, name):
                return getattr(self.f, name)

        @contextlib.contextmanager
        def open_write(t, path, mode=0o600):
            early = threading.current_thread().name.startswith("prng-cache-connect-")
            with orig(t, path, mode) as f:
                if early and "/.tmp-" in path and "/.prng-" not in path:
                    watch.paths.append(path)
                    yield W(f)
                else:
                    yield f

        monkeypatch.setattr(SSHTransport, "open_write", open_write)


def wait_until(pred, timeout: float = 10.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


def big_file(path, size: int) -> "os.PathLike":
    path.write_bytes(os.urandom(size))
    return path
