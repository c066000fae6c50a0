"""Shared helpers for the fourth red team's attacks (sharded manifest), over
the real sshd test cluster: tests/test_attack4_*.py."""
from __future__ import annotations

import os
import sys

import msgpack  # noqa: E402
import pytest  # noqa: E402

from rt3_common import new_bundles, stage_a  # noqa: E402,F401
from test_batch_faults import _many  # noqa: E402
from test_faults import (assert_consistent, bundles_of, cluster, make_policy, node_bytes,  # noqa: E402,F401
                         node_manifest, node_names, root_of, src, stage, store_for)

from prng_cache import manifest as manifest_mod  # noqa: E402
from prng_cache.manifest import MANIFEST_NAME, SHARD_DIR_PREFIX, Shards  # noqa: E402
from prng_cache.policy import CapacityPolicy  # noqa: E402


def make_files(src, n, size=500):
    return _many(src, n, size)


def read_doc(node) -> dict:
    """The manifest file (one file, or a sharded manifest's header) as a document."""
    return msgpack.unpackb(node_bytes(node, f"{root_of(node)}/{MANIFEST_NAME}"), raw=False)


def write_doc(node, doc: dict) -> None:
    data = msgpack.packb(doc, use_bin_type=True)
    path = f"{root_of(node)}/{MANIFEST_NAME}"
    node.run(f"cat > {path}.rt4 && chmod 600 {path}.rt4 && mv -f {path}.rt4 {path}", input=data)


def header_count(doc: dict) -> int:
    return sum(c for c, _ in doc["shards"]["stats"])


@pytest.fixture
def sharded(monkeypatch):
    """Sharded from 64 entries on, 8 records a shard (one file again below 32)."""
    monkeypatch.setattr(manifest_mod, "SHARD_MIN", 64)
    monkeypatch.setattr(manifest_mod, "SHARD_FILL", 8)


def sharded_root(cluster, src, n=100, size=1000, capacity=None, **kw):
    node = cluster["rig-a"]
    d, paths = make_files(src, n, size=size)
    policy = make_policy(cluster, d, capacity=capacity or CapacityPolicy(max_percent=100), **kw)
    bs, _ = bundles_of(paths, d)
    rep = stage_a(cluster, policy, bs)
    assert rep.status == "ok" and len(rep.staged) == n, rep
    doc = read_doc(node)
    assert doc["format"] == 2, doc
    return node, policy, bs, d


def shard_path(node, key: str) -> str:
    doc = read_doc(node)
    sh = doc["shards"]
    return f"{root_of(node)}/{SHARD_DIR_PREFIX}{sh['gen']}/{Shards.filename(int(key[:4], 16) % sh['n'])}"


def disk_entry_bytes(node) -> int:
    """Sum of the sizes of the files in the root's hash directories."""
    root = root_of(node)
    out = node.run(f"cd {root} && find . -mindepth 2 -maxdepth 2 -type f ! -name '.prng-*' -printf '%s\\n' "
                   f"| awk '{{s+=$1}} END {{print s+0}}'").stdout
    return int(out.strip())


# ------------------------------------------------------------ killed writers
KILLER = r'''
import os, pickle, sys
sys.path.insert(0, os.path.join(os.environ["WT"], "tests"))  # for unpickling the policy and bundles
spec = pickle.load(open(sys.argv[1], "rb"))
from prng_cache import manifest
manifest.SHARD_MIN, manifest.SHARD_FILL = spec["shard_min"], spec["shard_fill"]
from prng_cache.ownership import CacheRoot
orig = CacheRoot._replace
seen = {"n": 0}
def _replace(self, name, data):
    if name == "manifest.msgpack" and spec["kill_on"] == "header":
        seen["n"] += 1
        if seen["n"] >= spec["kill_nth"]:
            os._exit(9)
    return orig(self, name, data)
CacheRoot._replace = _replace
# shards are written together (Transport.replace_files): die after the
# first kill_nth - 1 of them were written
from prng_cache.transport.ssh import SSHTransport
orig_files = SSHTransport.replace_files
def replace_files(self, items):
    if spec["kill_on"] == "shard" and items and ".manifest-" in items[0][1]:
        k = spec["kill_nth"] - 1
        if k < len(items):
            if k:
                orig_files(self, items[:k])
            os._exit(9)
    return orig_files(self, items)
SSHTransport.replace_files = replace_files
from prng_cache.cluster import Node
if spec["what"] == "stage":
    from prng_cache.staging import stage_cluster
    from prng_cache.store import LeaseRequest
    lease = LeaseRequest(spec["lease"], 600) if spec.get("lease") else None
    stage_cluster([Node("rig-a")], lambda n: spec["bundles"], spec["policy"], lease=lease)
else:
    from prng_cache.maintenance import gc_node
    from prng_cache.cluster import node_settings, open_transport
    from prng_cache.store import NodeStore
    pol = spec["policy"]
    t = open_transport(Node("rig-a"), pol)
    gc_node(NodeStore(t, node_settings(pol, Node("rig-a")), pol.gc), remove_all=spec.get("all", False))
os._exit(0)
'''


is_header, is_shard = "header", "shard"  # where run_killed dies


def run_killed(tmp_path, policy, *, what="stage", bundles=(), lease=None, kill_on=is_header, kill_nth=1,
               shard_min=64, shard_fill=8, all=False) -> int:
    """Run a stage (or gc) of rig-a in a child process that dies (os._exit)
    at the kill_nth CacheRoot._replace of a name kill_on accepts. Returns
    the child's exit code (9: killed there)."""
    import pickle
    import subprocess
    spec = dict(policy=policy, bundles=list(bundles), lease=lease, kill_on=kill_on, kill_nth=kill_nth,
                shard_min=shard_min, shard_fill=shard_fill, what=what, all=all)
    sp = tmp_path / f"killer-{os.urandom(4).hex()}.pickle"
    with open(sp, "wb") as f:
        pickle.dump(spec, f)
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    env = dict(os.environ, WT=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    p = subprocess.run([sys.executable, str(script), str(sp)], env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode in (0, 9), p.stderr[-3000:]
    return p.returncode
