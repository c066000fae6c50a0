"""Shared helpers for the third red team's attacks (large root, partial loads),
over the real sshd test cluster: tests/test_attack3_*.py."""
from __future__ import annotations

import os

import msgpack  # noqa: E402
import pytest  # noqa: E402

from test_batch_faults import _many  # noqa: E402
from test_faults import (assert_consistent, bundles_of, cluster, make_policy, node_bytes,  # noqa: E402,F401
                         node_manifest, node_names, root_of, src, stage, store_for)

from prng_cache.manifest import MANIFEST_NAME  # noqa: E402
from prng_cache.ownership import PARTIAL_MIN_ENTRIES, ROOT_TOKEN_PREFIX  # noqa: E402
from prng_cache.policy import CapacityPolicy  # noqa: E402
from prng_cache.transport.ssh import SSHTransport  # noqa: E402

N = PARTIAL_MIN_ENTRIES + 44  # 300 entries


def big_root(cluster, src, n=N, capacity=None, **kw):
    """rig-a holds n entries (one stage). Returns (node, policy, bundles, d)."""
    node = cluster["rig-a"]
    d, paths = _many(src, n, 500)
    policy = make_policy(cluster, d, capacity=capacity or CapacityPolicy(max_percent=100), **kw)
    bs, _ = bundles_of(paths, d)
    rep = stage(cluster, policy, bs, hosts=["rig-a"])["rig-a"]
    assert rep.status == "ok" and len(rep.staged) == n, rep
    return node, policy, bs, d


def new_bundles(d, names, size=500):
    paths = []
    for n in names:
        p = d / n
        p.write_bytes(os.urandom(size))
        paths.append(p)
    bs, _ = bundles_of(paths, d)
    return bs


def record_listings(monkeypatch) -> list[str]:
    """Paths the SSH transport lists as a directory (root listing detection)."""
    listed: list[str] = []
    for name in ("listdir_attr", "listdir_attr_large"):
        orig = getattr(SSHTransport, name)
        monkeypatch.setattr(SSHTransport, name,
                            lambda self, path, _o=orig: (listed.append(path), _o(self, path))[1])
    orig_survey = SSHTransport.survey
    monkeypatch.setattr(SSHTransport, "survey",
                        lambda self, parent, paths, children=None, _o=orig_survey: (
                            listed.append(parent), _o(self, parent, paths, children))[1])
    return listed


def stage_a(cluster, policy, bs, **kw):
    return stage(cluster, policy, bs, hosts=["rig-a"], **kw)["rig-a"]


def read_doc(node) -> dict:
    """The one-file manifest as a document (these attacks edit its records)."""
    doc = msgpack.unpackb(node_bytes(node, f"{root_of(node)}/{MANIFEST_NAME}"), raw=False)
    if "entries" not in doc:
        pytest.skip("edits one-file manifest records; this root's manifest is sharded (--shard-min)")
    return doc


def write_doc(node, doc: dict) -> None:
    data = msgpack.packb(doc, use_bin_type=True)
    path = f"{root_of(node)}/{MANIFEST_NAME}"
    node.run(f"cat > {path}.rt3 && chmod 600 {path}.rt3 && mv -f {path}.rt3 {path}", input=data)


def token_of(node) -> str:
    return read_doc(node)["root_token"]


def assert_served_ok(node, rep, bundles):
    """Every served path: a regular file, one link, not through a symlink,
    the source's bytes."""
    for b in bundles:
        p = rep.staged.get(b.path)
        if p is None:
            continue
        r = node.run(f"stat -c '%F %h' -- {p}; readlink -f -- {p}", check=False)
        assert r.returncode == 0, f"served path {p} does not exist: {r.stderr}"
        kind, _, real = r.stdout.partition("\n")
        assert kind.strip() == "regular file 1", (p, kind)
        assert real.strip() == p, f"{p} resolves to {real.strip()} (through a link)"
        assert node_bytes(node, p) == open(b.path, "rb").read(), p


def record_partial(monkeypatch) -> list[bool]:
    """One bool per stage load that was asked to probe: True when the partial
    path (no root listing) was taken."""
    from prng_cache.ownership import CacheRoot
    seen: list[bool] = []
    orig = CacheRoot._load_partial

    def _load_partial(self, *a, **kw):
        snap = orig(self, *a, **kw)
        seen.append(snap is not None)
        return snap

    monkeypatch.setattr(CacheRoot, "_load_partial", _load_partial)
    return seen
