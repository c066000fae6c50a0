"""Node connections opened while the inputs are hashed (prewarm.py), on
real sshd nodes: handed over once, a failure reported once (never a second
connect), what is not taken is closed, and nothing stays open."""
from __future__ import annotations

import threading
import time

import pytest

from test_faults import (  # noqa: F401 - fixtures
    cluster, src, make_policy, jobs_for, root_of, assert_consistent,
)
from prng_cache import prewarm
from prng_cache.cluster import Node
from prng_cache.prewarm import EarlyConnections
from prng_cache.run import plan_run
from prng_cache.transport.ssh import SSHTransport


def _counting_connects(monkeypatch) -> list:
    calls: list = []
    orig = SSHTransport.connect

    def connect(self):
        calls.append(self.host)
        return orig(self)
    monkeypatch.setattr(SSHTransport, "connect", connect)
    return calls


def test_stage_uses_the_early_connection_and_reports_like_before(cluster, src, monkeypatch):
    policy = make_policy(cluster, src)
    paths = sorted(src.iterdir())
    calls = _counting_connects(monkeypatch)
    nodes = [Node("rig-a"), Node("rig-b")]
    plan = plan_run(jobs_for(paths), nodes, policy, min_jobs=1, connect_early=nodes)
    assert plan.early is not None
    reps = plan.stage(nodes)
    assert plan.early is None
    assert all(r.status == "ok" and len(r.staged) == len(paths) for r in reps.values()), reps
    assert sorted(calls) == ["rig-a", "rig-b"]  # one connection per node, opened early
    for n in ("rig-a", "rig-b"):
        assert_consistent(cluster[n])


def test_unreachable_node_is_reported_once_not_connected_twice(cluster, src, monkeypatch):
    policy = make_policy(cluster, src)
    paths = sorted(src.iterdir())
    cluster["rig-b"].stop()
    calls = _counting_connects(monkeypatch)
    nodes = [Node("rig-a"), Node("rig-b")]
    plan = plan_run(jobs_for(paths), nodes, policy, min_jobs=1, connect_early=True)
    reps = plan.stage(nodes)
    assert reps["rig-a"].status == "ok"
    assert reps["rig-b"].status == "error" and "refused" in reps["rig-b"].reason, reps["rig-b"].to_dict()
    assert calls.count("rig-b") == 1


def test_connections_not_taken_are_closed(cluster, src, monkeypatch):
    policy = make_policy(cluster, src)
    opened: list = []
    orig = SSHTransport.connect

    def connect(self):
        opened.append(self)
        return orig(self)
    monkeypatch.setattr(SSHTransport, "connect", connect)
    early = EarlyConnections([Node("rig-a"), Node("rig-b"), Node("localhost")], policy)
    t = early.take(Node("rig-a"))
    assert t is not None and t.connected
    assert early.take(Node("rig-a")) is None  # handed over once
    assert early.take(Node("localhost")) is None  # never connected early
    early.close()
    others = [x for x in opened if x is not t]
    deadline = time.monotonic() + 10  # rig-b's thread may still be connecting: it closes it then
    while (len(others) != 1 or others[0].connected) and time.monotonic() < deadline:
        time.sleep(0.02)
        others = [x for x in opened if x is not t]
    assert len(others) == 1 and not others[0].connected  # rig-b's, closed
    assert t.connected  # the taken one is the stage's to close
    t.close()


def test_close_while_still_connecting_closes_it_when_done(cluster, src, monkeypatch):
    policy = make_policy(cluster, src)
    release = threading.Event()
    opened: list = []
    orig = SSHTransport.connect

    def slow_connect(self):
        r = orig(self)
        opened.append(self)
        release.wait(10)
        return r
    monkeypatch.setattr(SSHTransport, "connect", slow_connect)
    early = EarlyConnections([Node("rig-a")], policy)
    deadline = time.monotonic() + 10
    while not opened and time.monotonic() < deadline:
        time.sleep(0.01)
    early.close()  # the stage ended (or failed) before the connection was up
    release.set()
    deadline = time.monotonic() + 10
    while opened[0].connected and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not opened[0].connected


def test_discovery_failure_closes_the_early_connections(cluster, src, monkeypatch):
    policy = make_policy(cluster, src)
    made: list = []
    orig_init = EarlyConnections.__init__

    def init(self, *a, **k):
        orig_init(self, *a, **k)
        made.append(self)
    monkeypatch.setattr(EarlyConnections, "__init__", init)

    def boom(*a, **k):
        raise KeyboardInterrupt  # Ctrl-C while hashing
    monkeypatch.setattr("prng_cache.run.discover", boom)
    with pytest.raises(KeyboardInterrupt):
        plan_run(jobs_for(sorted(src.iterdir())), [Node("rig-a")], policy, connect_early=True)
    assert made and made[0]._closed


def test_dry_planning_connects_nobody(cluster, src, monkeypatch):
    calls = _counting_connects(monkeypatch)
    plan = plan_run(jobs_for(sorted(src.iterdir())), [Node("rig-a")], make_policy(cluster, src))
    assert plan.early is None and calls == []
    assert prewarm.EarlyConnections  # the module is importable on its own
