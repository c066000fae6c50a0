"""Fifth red team: run end (and the coordinator's exit) while a lease
renewal is blocked on a hung node (sshd SIGSTOPped: TCP accepted, never a
banner). Real sshd nodes."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time

from rt5_common import (cluster, frozen, lease_expiry, plugin_start, policy_ttl, src,  # noqa: F401
                        wait_for)


def test_run_end_while_a_renewal_hangs_on_a_silent_node_is_bounded(cluster, src):
    timeout = 3.0
    policy = policy_ttl(cluster, src, 3.0, connect_timeout=timeout)  # a renewal every second
    paths = [src / "survivors.npz", src / "train_history.json"]
    p = plugin_start(policy, ["rig-a", "rig-b"], paths, run_id="r")
    k = p.keeper
    assert k is not None and sorted(n.hostname for n in k.nodes) == ["rig-a", "rig-b"]
    with frozen(cluster["rig-b"]):
        n = k.renewals
        time.sleep(k.interval + 0.5)  # a round is under way, stuck on rig-b
        assert k.renewals == n
        t0 = time.monotonic()
        rep = p.coordinator_run_end(run_id="r", results={})
        took = time.monotonic() - t0
    rel = rep["leases_released"]
    assert rel["rig-a"] is True and "timed out" in str(rel["rig-b"]), rel
    # the release itself waits connect_timeout for rig-b; the stuck renewal
    # may add what is left of its own connect_timeout, never more
    assert took < 2 * timeout + 1.5, took
    assert lease_expiry(cluster["rig-a"], "r") is None
    assert wait_for(lambda: not k._thread.is_alive(), timeout + 2)


CHILD = r'''
import os, pickle, sys, time
sys.path.insert(0, os.path.join(os.environ["WT"], "tests"))
spec = pickle.load(open(sys.argv[1], "rb"))
from rt5_common import plugin_start
p = plugin_start(spec["policy"], ["rig-a"], spec["paths"], run_id="crash")
assert p.keeper is not None and p.keeper._thread.is_alive()
print("started", flush=True)
sys.stdin.readline()  # the node is frozen now
time.sleep(p.keeper.interval + 0.5)  # a renewal is stuck on it
print("exiting", flush=True)
if spec["end"]:
    p.coordinator_run_end(run_id="crash", results={})
    print("ended", flush=True)
'''


def _child(tmp_path, policy, paths, end: bool):
    spec = tmp_path / "child.pickle"
    spec.write_bytes(pickle.dumps(dict(policy=policy, paths=[str(x) for x in paths], end=end)))
    (tmp_path / "child.py").write_text(CHILD)
    env = dict(os.environ, WT=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return subprocess.Popen([sys.executable, str(tmp_path / "child.py"), str(spec)], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_a_coordinator_exiting_while_a_renewal_hangs_is_not_held_up(cluster, src, tmp_path):
    """The renewals are a daemon thread: a coordinator that returns without
    run end (a crash path) exits at once even though a renewal is stuck in
    a 20 s connect."""
    policy = policy_ttl(cluster, src, 3.0, connect_timeout=20.0)
    paths = [src / "survivors.npz"]
    c = _child(tmp_path, policy, paths, end=False)
    try:
        assert c.stdout.readline().strip() == "started", c.stderr.read()[-3000:]
        with frozen(cluster["rig-a"]):
            c.stdin.write("go\n")
            c.stdin.flush()
            assert c.stdout.readline().strip() == "exiting"
            t0 = time.monotonic()
            rc = c.wait(timeout=30)
            took = time.monotonic() - t0
    finally:
        if c.poll() is None:
            c.kill()
            c.wait()
    assert rc == 0, c.stderr.read()[-3000:]
    assert took < 3.0, took
