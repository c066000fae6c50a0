"""Red team wt13-red2: early connections through a jump host (the shared
sshtunnel forwarder opened in the early threads, used by the stage's)."""
from __future__ import annotations

import threading
import time

import pytest

from test_faults import cluster as _cluster, src, make_policy, jobs_for, assert_consistent  # noqa: F401
from test_ssh_tunnel import _connections_to

from prng_cache.cluster import Node
from prng_cache.run import plan_run
from prng_cache.transport.ssh import tunnel as tunnel_mod


@pytest.fixture
def cluster(_cluster):
    yield _cluster
    tunnel_mod.stop_all()


def _srv_threads():
    return [t for t in threading.enumerate() if t.name.startswith("Srv-") or "process_request_thread" in t.name]


def _wait_gone(pred, grace=3.0):
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and pred():
        time.sleep(0.05)
    return pred()


@pytest.mark.parametrize("round_", range(3))
def test_stage_through_gateway_with_early_connections(cluster, src, tmp_path, round_):
    cfg = cluster.write_ssh_config(tmp_path / "cfg", aliases={"rig-b-too": ("rig-b", None)})
    policy = make_policy(cluster, src, ssh_config=str(cfg), jump_host="rig-a")
    nodes = [Node("rig-b"), Node("rig-c"), Node("rig-b-too")]
    base = _connections_to(cluster["rig-a"])  # other tests' leaks (see FINDING 4) are not ours
    plan = plan_run(jobs_for(sorted(src.iterdir())), nodes, policy, min_jobs=1, connect_early=True)
    reps = plan.stage(nodes)
    print({h: (r.status, r.reason, r.warnings) for h, r in reps.items()})
    assert all(r.status == "ok" for r in reps.values()), reps
    assert not _wait_gone(_srv_threads), _srv_threads()
    assert not _wait_gone(lambda: _connections_to(cluster["rig-a"]) > base), "gateway connection left open"
    for h in ("rig-b", "rig-c"):
        assert_consistent(cluster[h])


def test_interrupt_while_early_tunnels_open(cluster, src, tmp_path, monkeypatch):
    """Ctrl-C while hashing, the early threads still starting the forwarder:
    once they finish, no forwarder thread or gateway connection is left."""
    policy = make_policy(cluster, src, jump_host="rig-a")
    started = threading.Event()

    def boom(*a, **k):
        started.wait(0)
        time.sleep(0.05)  # the early threads are mid-handshake
        raise KeyboardInterrupt
    monkeypatch.setattr("prng_cache.run.discover", boom)
    base = _connections_to(cluster["rig-a"])
    with pytest.raises(KeyboardInterrupt):
        plan_run(jobs_for(sorted(src.iterdir())), [Node("rig-b"), Node("rig-c")], policy, connect_early=True)
    assert not _wait_gone(_srv_threads, 10), _srv_threads()
    assert not _wait_gone(lambda: _connections_to(cluster["rig-a"]) > base, 10), "gateway connection left open"
