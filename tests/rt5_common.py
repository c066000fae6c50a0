"""Shared helpers for the fifth red team's attacks (the plugin's lease
renewals, prng_cache/lease_keeper.py), over the real sshd test cluster:
tests/test_attack5_*.py."""
from __future__ import annotations

import base64
import contextlib
import os
import signal
import time

from test_faults import (bundles_of, cluster, jobs_for, make_policy, node_manifest, node_names,  # noqa: F401
                         root_of, src, stage, store_for)

from prng_cache.manifest import MANIFEST_NAME, decode
from prng_cache.maintenance import gc_node
from prng_cache.plugin import PrngCachePlugin
from prng_cache.policy import GcPolicy


def lease_expiry(node, run_id: str) -> float | None:
    """Expiry of ``run_id``'s lease in the node's manifest header (read in
    the node's namespace, not over SSH: works with sshd stopped or frozen)."""
    r = node.run(f"base64 -w0 -- {root_of(node)}/{MANIFEST_NAME}", check=False)
    if r.returncode != 0:
        return None
    m, why = decode(base64.b64decode(r.stdout))
    assert why is None, why
    # the plugin names a run's lease "<run_id>~<random>" (one direct
    # LeaseRequest uses the bare name)
    lease = m.leases.get(run_id) or next((l for n, l in m.leases.items() if n.startswith(run_id + "~")), None)
    return None if lease is None else lease.expires


def manifest_raw(node) -> bytes | None:
    r = node.run(f"base64 -w0 -- {root_of(node)}/{MANIFEST_NAME}", check=False)
    return base64.b64decode(r.stdout) if r.returncode == 0 else None


def policy_ttl(cluster, base_dir, ttl: float, **transport):
    return make_policy(cluster, base_dir, gc=GcPolicy(lease_ttl=ttl), **transport)


def plugin_start(policy, hosts, paths, run_id="run-1", n_jobs=None) -> PrngCachePlugin:
    """A plugin whose run ``run_id`` staged ``paths`` on ``hosts`` (every
    job reads every path; each host gets jobs)."""
    jobs = jobs_for(paths, n=n_jobs or max(2, len(hosts)))
    nodes = [{"hostname": h, "script_path": "/tmp"} for h in hosts]
    assignments = {h: [j for i, j in enumerate(jobs) if i % len(hosts) == k] for k, h in enumerate(hosts)}
    p = PrngCachePlugin(policy)
    p.coordinator_run_start(run_id=run_id, nodes=nodes, jobs=jobs, assignments=assignments)
    return p


def gc_all_now(cluster, policy, host):
    """`prng-cache gc --all` of one node, in this process (fast)."""
    st = store_for(cluster, policy, host)
    try:
        return gc_node(st, remove_all=True)
    finally:
        st.t.close()


def entry_keys(node) -> set[str]:
    """Key directories in the node's root. ``ls`` only reads the directory:
    a ``find`` racing a gc's removals could exit non-zero and read as "no
    entries at all"."""
    from prng_cache.manifest import is_key
    r = node.run(f"ls -1A -- {root_of(node)}", check=False)
    return {n for n in r.stdout.split("\n") if is_key(n)} if r.returncode == 0 else set()


@contextlib.contextmanager
def frozen(node):
    """The node's sshd listener stopped (SIGSTOP): TCP connections are
    accepted by the kernel and never answered (no SSH banner), as on a hung
    host. Resumed (SIGCONT) on exit."""
    pid = node.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def wait_for(cond, timeout: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()
