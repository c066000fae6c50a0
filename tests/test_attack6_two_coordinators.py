"""The users' two coordinators on the same rigs at once, three rounds:
scripts_coordinator.py (step 2.5, aliased /dev/shm/prng/step2/ paths, and
step 3 chunks) and coordinator.py (step 5 bare names and step 1
dataset_path), starting together on rigs whose /dev/shm/prng the users'
preload made (0755, stale copies, .ready), with every root of 2+ entries
sharded (``--shard-min``, default 2 here) in both processes. Every job
reads the right bytes on its first attempt, RAM copies on the rigs; the
manifests verify; the preload's files are untouched."""

from __future__ import annotations

import json
import os

import pytest

from coordinator_env import E2E
from rt6_common import REMOTES, Site, cli, report, sha

SNAP = ("cd /dev/shm/prng && find step2 step3 .ready -printf '%p %y %m %s %T@\\n' | sort "
        "&& find step2 step3 -type f -exec sha256sum {} + | sort")


@pytest.fixture
def site(ssh_cluster_clean, tmp_path):
    if not ssh_cluster_clean.isolated:
        pytest.skip(f"needs each node's private /dev/shm: {ssh_cluster_clean.fallback_reason}")
    return Site(ssh_cluster_clean, tmp_path)


def test_both_coordinators_at_once_sharded_preloaded_roots(site, request):
    shard_min = request.config.getoption("--shard-min") or 2
    for h in REMOTES:
        r = site.cluster.ssh(h, f"sh {E2E / 'preload_ramdisk.sh'} {site.work}")
        assert r.stdout.strip() == "loaded", r
    snap = {h: site.cluster[h].run(SNAP).stdout for h in REMOTES}
    for rnd in range(3):
        site.write_inputs(f"gen{rnd + 2}")  # regenerated before every round
        for f in (site.work / "scoring_chunks").iterdir():
            f.write_text(json.dumps({"round": rnd, "name": f.name}))
        sid = f"full_scoring_results_2026010{rnd}_120000"
        a = site.start("scripts", site.step2_jobs(f"s2_{rnd}.json"), f"scorer_results_{rnd}", shard_min=shard_min)
        b = site.start("gpu", site.step5_jobs(f"s5_{rnd}.json"), f"anti_overfit_results_{rnd}",
                       sieves=site.sieve_payloads(f"sv_{rnd}.json"), shard_min=shard_min)
        c = site.start("scripts", site.step3_jobs(sid, name=f"s3_{rnd}.json"), sid, shard_min=shard_min)
        res = {"s2": site.result(a), "s5": site.result(b), "s3": site.result(c)}
        for k, r in res.items():
            bad = {j: [x["stderr"][-300:] for x in v["attempts"]] for j, v in r["jobs"].items()
                   if not v["ok"] or len(v["attempts"]) != 1}
            assert bad == {}, (rnd, k, bad)
            rep = report(r)
            assert rep["fallback_jobs"] == 0 and "error" not in rep, (rnd, k, rep)
            assert {h: n["status"] for h, n in rep["nodes"].items() if h in REMOTES} == \
                {h: "ok" for h in REMOTES}, (rnd, k, rep["nodes"])
        for host, jid, args in res["s2"]["sent"]:
            out = json.loads((site.work / f"results/{jid}.json").read_text())
            for path, info in {**out["inputs"], "cfg": out["window_config"]}.items():
                p = info.get("path", path)
                assert info["sha256"] == sha((site.work / os.path.basename(p)).read_bytes()), (rnd, host, p)
                if host in REMOTES:
                    assert p.startswith(site.root(host) + "/"), (rnd, host, p)
        for host, jid, sent in res["s5"]["sent"]:
            if jid.startswith("sieve"):
                out = json.loads((site.work / sent["output_file"]).read_text())
                ((p, digest),) = out["read"].items()
                assert digest == sha((site.work / "daily3.json").read_bytes()), (rnd, host, p)
            else:
                out = json.loads((site.work / sent["expected_output"]).read_text())
                for p, info in out["inputs"].items():
                    assert info["sha256"] == sha((site.work / os.path.basename(p)).read_bytes()), (rnd, host, p)
                    if host in REMOTES:
                        assert p.startswith(site.root(host) + "/"), (rnd, host, p)
        for host, jid, args in res["s3"]["sent"]:
            i = int(jid.split("_")[1])
            out = json.loads((site.work / f"full_scoring_results/{sid}/scores_{i:04}.json").read_text())
            for p, info in out["inputs"].items():
                name = os.path.basename(p)
                src = site.work / ("scoring_chunks/" + name if name.startswith("chunk_") else name)
                assert info["sha256"] == sha(src.read_bytes()), (rnd, host, p)
    for h in REMOTES:  # the runs went through the sharded manifest
        assert site.cluster[h].run(f"ls -a {site.root(h)} | grep -c '^.manifest-'", check=False).stdout.strip() == "1"
    v = cli(site, "verify")
    assert v["_rc"] == 0, v
    for h in REMOTES:
        assert site.cluster[h].run(SNAP).stdout == snap[h], h
