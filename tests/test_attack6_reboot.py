"""A rig rebooted while a step 3 run is going (after its stage, before its
jobs read their inputs), on a large sharded cache; the users' reboot
routine then runs their preload again (0755 root, step2/, step3/, .ready).
The rebooted rig's jobs are retried on localhost and read the coordinator's
current bytes; the run's end and the next run (step 2.5, aliased) never
touch the preload's files; the next run restages the rig and its jobs read
the current bytes from RAM."""

from __future__ import annotations

import json
import os

import pytest

from coordinator_env import E2E
from rt6_common import REMOTES, Site, prefill, report, sha

SNAP = ("cd /dev/shm/prng && find step2 step3 .ready -printf '%p %y %m %s %T@\\n' | sort "
        "&& find step2 step3 -type f -exec sha256sum {} + | sort")


@pytest.fixture
def site(ssh_cluster_clean, tmp_path):
    if not ssh_cluster_clean.isolated:
        pytest.skip(f"needs each node's private /dev/shm: {ssh_cluster_clean.fallback_reason}")
    return Site(ssh_cluster_clean, tmp_path)


def preload(site: Site, host: str) -> None:
    r = site.cluster.ssh(host, f"sh {E2E / 'preload_ramdisk.sh'} {site.work}")
    assert r.stdout.strip() == "loaded", r


def test_rig_rebooted_mid_run_then_preloaded_again(site):
    for h in REMOTES:
        preload(site, h)
    site.write_inputs("gen1")  # regenerated: the preload copies are stale
    prefill(site, 540)
    run_id = "full_scoring_results_20260105_110000"
    p = site.start("scripts", site.step3_jobs(run_id, script="gated_worker.py"), run_id)
    try:
        site.wait_started(site.chunks)
        site.cluster["rig-a"].wipe()  # rebooted (sshd back at once)
        preload(site, "rig-a")  # the users' reboot routine: preload again (current SSD files)
        snap = site.cluster["rig-a"].run(SNAP).stdout
    finally:
        site.open_gate()
    res = site.result(p)
    assert res["failed"] == [], res
    for jid, r in res["jobs"].items():
        nodes = [a["node"] for a in r["attempts"]]
        assert nodes in (["rig-a", "localhost"], ["rig-b"], ["localhost"]), (jid, nodes)
    for host, jid, args in res["sent"]:
        i = int(jid.split("_")[1])
        out = json.loads((site.work / f"full_scoring_results/{run_id}/scores_{i:04}.json").read_text())
        for path, info in out["inputs"].items():
            name = os.path.basename(path)
            src = site.work / ("scoring_chunks/" + name if name.startswith("chunk_") else name)
            assert info["sha256"] == sha(src.read_bytes()), (host, jid, path)
    assert site.cluster["rig-a"].run(SNAP).stdout == snap  # run end touched no preload file

    # the next run (step 2.5, the users' aliased shape) restages rig-a
    res2 = site.run("scripts", site.step2_jobs(), "scorer_results_1")
    assert res2["failed"] == [] and all(len(r["attempts"]) == 1 for r in res2["jobs"].values()), res2
    rep = report(res2)
    assert {h: n["status"] for h, n in rep["nodes"].items()} == {"localhost": "direct", "rig-a": "ok", "rig-b": "ok"}
    assert rep["fallback_jobs"] == 0
    for host, jid, args in res2["sent"]:
        out = json.loads((site.work / f"results/{jid}.json").read_text())
        for path, info in out["inputs"].items():
            assert info["sha256"] == sha((site.work / os.path.basename(path)).read_bytes()), (host, jid, path)
            if host in REMOTES:
                assert path.startswith(site.root(host) + "/"), (host, path)
        assert out["window_config"]["sha256"] == sha((site.work / "optimal_window_config.json").read_bytes())
    assert site.cluster["rig-a"].run(SNAP).stdout == snap
