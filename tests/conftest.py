"""Shared pytest fixtures."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_user_cache_dir(tmp_path_factory):
    """The hash memo and node-id record live in $XDG_CACHE_HOME/prng-cache:
    keep the tests (and the CLI processes they start) out of the real one."""
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old

# ============================================================================
# SSH test cluster (real sshd nodes; see prng_cache/testing/sshcluster.py)
#
#   ssh_cluster        session: 3 nodes rig-a/b/c, 64 MiB private tmpfs each,
#                      started once; skipped when sshd/namespaces are
#                      unavailable, a failure when CI=true.
#   ssh_cluster_clean  function: the same cluster, healed (stopped nodes
#                      restarted, known_hosts rewritten) and with every
#                      node's /dev/shm wiped before the test, healed after.
#
# A failing test that used the cluster (or is parametrized with "ssh") gets
# the nodes' sshd logs attached to its report ("sshd logs" section).
# ============================================================================
from prng_cache.testing.sshcluster import ClusterUnavailable, SSHCluster


def ci_enforced() -> bool:
    """True when running in CI (env ``CI=true``): SSH tests must run, not skip."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def skip_or_fail(reason: str) -> None:
    """``pytest.fail`` in CI, ``pytest.skip`` elsewhere."""
    if ci_enforced():
        pytest.fail(f"SSH test cluster unavailable (CI=true, must not skip): {reason}")
    pytest.skip(f"SSH test cluster unavailable: {reason}")

SSH_CLUSTER_NODES = 3
SSH_CLUSTER_TMPFS = "64m"


@pytest.fixture(scope="session")
def ssh_cluster(tmp_path_factory) -> SSHCluster:
    """Session-wide SSH cluster: ``cluster["rig-a"]``, ``cluster.policy()``..."""
    cluster = SSHCluster(
        tmp_path_factory.mktemp("sshcluster"), SSH_CLUSTER_NODES, tmpfs_size=SSH_CLUSTER_TMPFS
    )
    try:
        cluster.start()
    except ClusterUnavailable as exc:
        skip_or_fail(str(exc))
    _SSH_CLUSTERS.append(cluster)
    try:
        yield cluster
    finally:
        _SSH_CLUSTERS.remove(cluster)
        cluster.stop()


@pytest.fixture
def ssh_cluster_clean(ssh_cluster: SSHCluster) -> SSHCluster:
    """The session cluster, healed and with every node's RAM disk empty."""
    ssh_cluster.heal()
    for node in ssh_cluster:
        node.wipe()
    yield ssh_cluster
    ssh_cluster.heal()


_SSH_CLUSTERS: list[SSHCluster] = []  # the running session cluster, for reports


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if not (rep.failed and _SSH_CLUSTERS):
        return
    params = getattr(getattr(item, "callspec", None), "params", {})
    if "ssh_cluster" in getattr(item, "fixturenames", ()) or "ssh" in params.values():
        rep.sections.append(("sshd logs", _SSH_CLUSTERS[0].logs()[-20000:]))


# ========================================================= end SSH test cluster


@pytest.fixture(autouse=True)
def _helper_failures_forgotten():
    """Each test starts with no node's python helper remembered as failed
    (a process remembers that for 10 minutes)."""
    try:
        from prng_cache.transport.ssh import helper
    except Exception:  # paramiko missing: nothing to forget
        yield
        return
    helper.failed_at.clear()
    yield
    helper.failed_at.clear()


@pytest.fixture(autouse=True)
def _lease_renewals_stopped():
    """A test's plugin runs that never ended stop renewing their leases when
    it ends (in a coordinator they stop with the process): a renewal thread
    left behind would contact the nodes during later tests."""
    yield
    from prng_cache import lease_keeper

    lease_keeper.stop_all()


def pytest_addoption(parser):
    parser.addoption("--shard-min", type=int, default=None,
                     help="shard every manifest of this many entries or more (default: the product's 512); "
                          "a low value runs the suite's roots through the sharded manifest")


@pytest.fixture(autouse=True)
def _shard_threshold(request, monkeypatch):
    """``--shard-min N``: roots of N entries or more get sharded manifests,
    with about N/4 records per shard (in this process; CLI subprocesses keep
    the defaults, and read and rewrite what this process wrote)."""
    n = request.config.getoption("--shard-min")
    if n:
        from prng_cache import manifest

        monkeypatch.setattr(manifest, "SHARD_MIN", n)
        monkeypatch.setattr(manifest, "SHARD_FILL", max(1, n // 4))
    yield
