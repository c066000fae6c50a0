"""Seventh red team: Ctrl-C while the coordinator hashes a big new input
that the nodes' early connections are sending (presend)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from rt7_common import (MIB, NODES, PresendWatch, cluster, jobs, leftovers, make_policy, small_presend,  # noqa: F401
                        wait_until)
from test_faults import jobs_for, write_policy_yaml

from prng_cache import inputs
from prng_cache.cluster import Node
from prng_cache.hashing import HashMemo
from prng_cache.run import plan_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# `prng-cache stage` as the users run it; only the link is slowed (so the
# presend is mid-send when the interrupt comes) and SIGINT is sent to the
# process itself at that moment, as a Ctrl-C from the terminal would be
DRIVER = textwrap.dedent('''
    import contextlib, os, signal, sys, threading, time
    from prng_cache import cli, inputs, prewarm
    from prng_cache.transport.ssh import SSHTransport
    prewarm.PRESEND_MIN = 2 << 20
    started = threading.Event()
    orig = SSHTransport.open_write

    class Slow:
        def __init__(self, f):
            self.f, self.n = f, 0
        def write(self, data):
            time.sleep(0.05)
            self.n += len(data)
            if self.n >= 1 << 20:
                started.set()
            return self.f.write(data)
        def __getattr__(self, k):
            return getattr(self.f, k)

    @contextlib.contextmanager
    def open_write(t, path, mode=0o600):
        with orig(t, path, mode) as f:
            if threading.current_thread().name.startswith("prng-cache-connect-") and "/.tmp-" in path \\
                    and "/.prng-" not in path:
                yield Slow(f)
            else:
                yield f

    SSHTransport.open_write = open_write
    real = inputs.hash_and_stat

    def hash_and_stat(src, memo=None, **kw):
        if os.path.getsize(src) >= 2 << 20:
            assert started.wait(20), "presend never started"
            os.kill(os.getpid(), signal.SIGINT)  # the user's Ctrl-C
            time.sleep(10)
        return real(src, memo, **kw)

    inputs.hash_and_stat = hash_and_stat
    sys.exit(cli.main(sys.argv[1:]))
''')


def test_ctrl_c_while_a_big_input_is_hashed_leaves_no_temporary_cli(cluster, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "big.bin").write_bytes(os.urandom(8 * MIB))
    pol = write_policy_yaml(cluster, tmp_path / "policy.yaml", d)
    conf = cluster.write_distributed_config(tmp_path / "cluster.json", list(cluster), script_path=str(d))
    jf = tmp_path / "jobs.json"
    jf.write_text(json.dumps(jobs_for([d / "big.bin"], 2)))
    drv = tmp_path / "drv.py"
    drv.write_text(DRIVER)
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "xdg"), PYTHONPATH=REPO)
    for k in ("PRNG_CACHE", "USE_RAMDISK", "PRNG_CACHE_POLICY", "PRNG_CACHE_ROOT"):
        env.pop(k, None)
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, str(drv), "stage", "--jobs-file", str(jf), "--config", str(conf),
                        "--policy", str(pol)], capture_output=True, text=True, env=env, timeout=60)
    took = time.monotonic() - t0
    assert p.returncode == 130, (p.returncode, p.stdout, p.stderr)
    assert "interrupted" in p.stderr and "temporaries removed" in p.stderr
    assert took < 15, took
    time.sleep(1.0)  # the process is gone: whatever is there now stays until gc.stale_temp
    # the CLI says "this run's temporaries removed from every node that could be reached"
    assert {h: leftovers(cluster[h]) for h in NODES} == {h: [] for h in NODES}


def test_ctrl_c_while_a_big_input_is_hashed_stops_presends_promptly_in_process(cluster, tmp_path, monkeypatch):
    """The library path (plugin / plan_run): the interrupt propagates out of
    plan_run at once and the early threads remove what they sent."""
    d = tmp_path / "in"
    d.mkdir()
    (d / "big.bin").write_bytes(os.urandom(8 * MIB))
    policy = make_policy(cluster, d)
    watch = PresendWatch(monkeypatch, slow=0.05)
    real = inputs.hash_and_stat

    def hash_and_stat(src, memo=None, **kw):
        if os.path.getsize(src) >= 2 * MIB:
            assert watch.started.wait(20)
            raise KeyboardInterrupt
        return real(src, memo, **kw)

    monkeypatch.setattr(inputs, "hash_and_stat", hash_and_stat)
    before = {th.ident for th in threading.enumerate()}
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        plan_run(jobs([d / "big.bin"]), [Node(h) for h in NODES], policy, min_jobs=1,
                 memo=HashMemo(str(tmp_path / "memo")), connect_early=True)
    assert time.monotonic() - t0 < 10
    assert wait_until(lambda: not [th for th in threading.enumerate()
                                   if th.ident not in before and th.name.startswith("prng-cache-connect-")], 5)
    assert {h: leftovers(cluster[h]) for h in NODES} == {h: [] for h in NODES}
