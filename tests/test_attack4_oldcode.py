"""Fourth red team (sharded manifest): the previous prng-cache (8a9ac19, format 1 only, taken from this
repository's history) and
this one taking turns on a sharded root (600 entries: the real thresholds,
CLI processes), over real sshd nodes. Expected: the old one resets and
starts afresh; nothing stale served by either; nothing foreign deleted;
the new one then reclaims what the old one left and stays consistent."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from rt4_common import *  # noqa: F401,F403
from rt4_common import assert_consistent, make_files, node_bytes, node_manifest, read_doc, root_of
from test_faults import jobs_for, write_policy_yaml

NEW = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OLD_COMMIT = "8a9ac19"  # the last version without sharded manifests


@pytest.fixture(scope="module")
def old_code(tmp_path_factory) -> str:
    """That version's package, extracted from git (a clone has the history)."""
    out = tmp_path_factory.mktemp("old-prng-cache")
    r = subprocess.run(f"git -C '{NEW}' archive {OLD_COMMIT} prng_cache | tar -x -C '{out}'", shell=True,
                       capture_output=True, text=True)
    if r.returncode or not (out / "prng_cache" / "__init__.py").exists():
        if os.environ.get("CI"):
            pytest.fail(f"cannot extract prng-cache {OLD_COMMIT} from git: {r.stderr.strip()}")
        pytest.skip(f"no git history for {OLD_COMMIT}")
    return str(out)


def cli(tmp_path, code, *args):
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / f"xdg-{os.path.basename(code)}"), PYTHONPATH=code)
    for v in ("PRNG_CACHE", "USE_RAMDISK", "PRNG_CACHE_POLICY", "PRNG_CACHE_ROOT"):
        env.pop(v, None)
    p = subprocess.run([sys.executable, "-m", "prng_cache", *map(str, args)], capture_output=True, text=True,
                       env=env, timeout=300, cwd=str(tmp_path))
    return p


def stage_cli(tmp_path, code, cluster, paths, d, name, *extra):
    jf = tmp_path / f"jobs-{name}.json"
    jf.write_text(json.dumps(jobs_for(paths)))
    pol = write_policy_yaml(cluster, tmp_path / "policy.yaml", d, gc={"stale_temp": "2s"})
    conf = cluster.write_distributed_config(tmp_path / "cluster.json", [cluster["rig-a"]], script_path=str(d))
    p = cli(tmp_path, code, "stage", "--jobs-file", jf, "--config", conf, "--policy", pol, "--json", *extra)
    assert p.returncode == 0, (code, p.returncode, p.stdout[-2000:], p.stderr[-3000:])
    assert "Traceback" not in p.stderr, p.stderr
    return json.loads(p.stdout)["nodes"]["rig-a"]


def check_served(node, rep_staged: dict, paths):
    for p in paths:
        served = rep_staged.get(str(p))
        if served is None:
            continue
        kind = node.run(f"stat -c '%F %h' -- {served}").stdout.strip()
        assert kind == "regular file 1", (served, kind)
        assert node_bytes(node, served) == open(p, "rb").read(), served


def test_old_and_new_take_turns_on_a_sharded_root(cluster, src, tmp_path, old_code):
    OLD = old_code
    import time
    node = cluster["rig-a"]
    root = root_of(node)
    d, paths = make_files(src, 600, size=300)
    n1 = stage_cli(tmp_path, NEW, cluster, paths, d, "new1")
    assert n1["status"] == "ok", n1
    doc = read_doc(node)
    assert doc["format"] == 2, "expected a sharded manifest at 600 entries"
    gen = doc["shards"]["gen"]
    # the users' own things in the root, and a shard-looking dir of another token
    node.run(f"mkdir -p {root}/step2 {root}/.manifest-0000000000000000-deadbeef && echo mine > {root}/step2/x"
             f" && echo alien > {root}/.manifest-0000000000000000-deadbeef/0000.msgpack")
    # the old version: a newer manifest it cannot read
    (d / "f0000.bin").write_bytes(os.urandom(300))  # a changed input: the old copy is stale now
    o1 = stage_cli(tmp_path, OLD, cluster, paths[:20], d, "old1")
    print("old:", o1["status"], o1.get("reason"), o1.get("warnings"))
    assert o1["status"] == "ok" and o1["copied_files"] + o1["present_files"] == 20, o1
    after_old = read_doc(node)
    print("after old: format", after_old.get("format"), "entries", len(after_old.get("entries", {})))
    assert node.run(f"cat {root}/step2/x").stdout.strip() == "mine"
    time.sleep(2.5)
    # the new version again
    n2 = stage_cli(tmp_path, NEW, cluster, paths[:40], d, "new2")
    assert n2["status"] == "ok", n2
    assert n2["copied_files"] + n2["present_files"] == 40, n2
    # then the old one again, on what the new one wrote, and the new one once more
    o2 = stage_cli(tmp_path, OLD, cluster, paths[10:30], d, "old2")
    print("old2:", o2["status"], o2.get("reason"), o2.get("warnings"))
    assert o2["status"] == "ok" and o2["copied_files"] + o2["present_files"] == 20, o2
    time.sleep(2.5)
    n3 = stage_cli(tmp_path, NEW, cluster, paths, d, "new3")
    print("new3:", n3["status"], n3.get("reason"), n3.get("warnings"), n3["copied_files"], n3["present_files"])
    assert n3["status"] == "ok" and n3["copied_files"] + n3["present_files"] == 600, n3
    pol = tmp_path / "policy.yaml"
    conf = tmp_path / "cluster.json"
    g = cli(tmp_path, NEW, "gc", "--config", conf, "--policy", pol, "--json")
    assert g.returncode == 0 and "Traceback" not in g.stderr, g.stderr
    assert node.run(f"cat {root}/step2/x").stdout.strip() == "mine"
    assert node.run(f"cat {root}/.manifest-0000000000000000-deadbeef/0000.msgpack").stdout.strip() == "alien"
    assert not node.exists(f"{root}/.manifest-{gen}") or read_doc(node)["shards"]["gen"] == gen
    # the old one's status / verify on a sharded root: no traceback, nothing changed
    before = node.run(f"cd {root} && find . | sort").stdout
    for cmd in ("status", "verify"):
        p = cli(tmp_path, OLD, cmd, "--config", conf, "--policy", pol, "--json")
        assert "Traceback" not in p.stderr, (cmd, p.stderr[-2000:])
    assert node.run(f"cd {root} && find . | sort").stdout == before, "old status/verify changed the root"
    m = assert_consistent(node)
    assert len(m.entries) == 600
    # served by this version (in process): the right bytes, regular files
    from rt3_common import assert_served_ok
    from test_faults import bundles_of, make_policy, stage
    from prng_cache.policy import CapacityPolicy
    policy = make_policy(cluster, d, capacity=CapacityPolicy(max_percent=100))
    bs, _ = bundles_of(paths, d)
    rep = stage(cluster, policy, bs, hosts=["rig-a"])["rig-a"]
    assert rep.status == "ok" and len(rep.staged) == 600, rep.reason
    assert_served_ok(node, rep, bs[:50])
