"""Shared helpers for the ninth red team's attacks on the node helper's
shard reads/writes (op_read, op_replace), its throttled put marks, the
O_NOFOLLOW entry listing and store._merge's refusals (commits 1c2af57..4a63438),
over the real sshd test cluster (tests/conftest.py)."""

from __future__ import annotations

import pytest

from test_faults import NODES, cluster, make_policy, q, root_of  # noqa: F401
from rt8_common import many_files, node_bytes, served_problem, stage  # noqa: F401

from prng_cache import manifest
from prng_cache.transport.ssh import helper as ssh_helper
from prng_cache.transport.ssh import operations

MARKER = b'\nif __name__ == "__main__":'


def patch_helper_source(monkeypatch, extra: str) -> None:
    """The helper sent to the nodes gets ``extra`` (python source, may wrap
    any of its functions) appended before its main guard: only a moment or
    a fault is injected, the helper's own code runs unchanged."""
    real = ssh_helper._source()
    assert MARKER in real
    patched = real.replace(MARKER, b"\n" + extra.encode() + b"\n" + MARKER)
    monkeypatch.setattr(ssh_helper, "_source", lambda: patched)


@pytest.fixture
def sharded(monkeypatch):
    """Small roots sharded (as tests/test_large_root.py does) and no memory
    of a helper failure from an earlier test of this process."""
    monkeypatch.setattr(manifest, "SHARD_MIN", 64)
    monkeypatch.setattr(manifest, "SHARD_FILL", 8)
    monkeypatch.setattr(ssh_helper, "failed_at", {})
    yield


def check_served(node, reps_host, paths, expect_all: bool = False) -> list[str]:
    """Problems of every RAM path a report hands out (served_problem), and,
    with ``expect_all``, inputs that were not staged."""
    problems = []
    by_src = {str(p): p for p in paths}
    for src_path, ram in reps_host.staged.items():
        why = served_problem(node, ram, by_src[src_path].read_bytes())
        if why:
            problems.append(f"{src_path} -> {ram}: {why}")
    if expect_all:
        problems += [f"not staged: {p}" for p in by_src if p not in reps_host.staged]
    return problems


def recorded_keys(node) -> set[str]:
    from test_faults import node_manifest
    return set(node_manifest(node).entries)


def unrecorded_served(node, rep) -> list[str]:
    """RAM paths handed out whose <key> is not recorded in the node's
    manifest (as it stands after the stage)."""
    keys = recorded_keys(node)
    root = root_of(node)
    out = []
    for src_path, ram in rep.staged.items():
        rel = ram[len(root) + 1:]
        if rel.split("/", 1)[0] not in keys:
            out.append(f"{src_path} -> {ram}")
    return out


def cold_sharded(cluster, tmp_path, n):
    """A cold stage of ``n`` files to rig-a, its root sharded into at least
    HELPER_MIN_READ shards (so they are read and written through the helper)."""
    from test_faults import assert_consistent
    node = cluster["rig-a"]
    paths = many_files(tmp_path / "in", n)
    policy = make_policy(cluster, tmp_path / "in")
    rep = stage(cluster, policy, paths, tmp_path / "memo")["rig-a"]
    assert rep.status == "ok" and len(rep.staged) == n, rep.to_dict()
    sh = assert_consistent(node).entries.shards
    assert sh is not None and sh.n >= operations.HELPER_MIN_READ, sh
    return node, paths, policy, sh
