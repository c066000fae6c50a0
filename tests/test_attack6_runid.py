"""Two coordinators on the same rigs at once whose run ids are equal.

The users' scripts_coordinator.py names a run ``<output dir stem>_<%Y%m%d_%H%M%S>``
(second resolution; the stand-ins here use ``run-%Y%m%d-%H%M%S``), and nothing
in prng-cache's README asks a coordinator for a unique run id. Two
coordinators started in the same second by a run script (a step 3 scoring
run and a step 5 run through coordinator.py, or two step 3 runs into the
same output dir) hand the plugin the same ``run_id``. A lease is the
coordinator's promise that what its jobs were sent stays: the short run's
end must not take away the long run's inputs (step 3's chunks are
run-scoped and are deleted from the rigs when "their" lease goes).
"""

from __future__ import annotations

import json
import os

import pytest

from rt6_common import REMOTES, Site, report, sha


@pytest.fixture
def site(ssh_cluster_clean, tmp_path):
    if not ssh_cluster_clean.isolated:
        pytest.skip(f"needs each node's private /dev/shm: {ssh_cluster_clean.fallback_reason}")
    return Site(ssh_cluster_clean, tmp_path)


@pytest.mark.parametrize("short_id", [
    "full_scoring_results_20260105_101500",  # the same second: the same run id
    "anti_overfit_results_20260105_101500",  # a different id (control: holds)
])
def test_a_short_run_with_the_same_run_id_never_takes_a_long_runs_inputs(site, short_id):
    run_id = "full_scoring_results_20260105_101500"
    # the long run: step 3 through scripts_coordinator; its jobs wait at a gate
    step3 = site.step3_jobs(run_id, script="gated_worker.py")
    long_run = site.start("scripts", step3, run_id)
    try:
        site.wait_started(site.chunks)  # staged, leased, every job dispatched and waiting
        # meanwhile: step 5 (bare names) and step 1 (dataset_path) through coordinator.py
        short = site.run("gpu", site.step5_jobs(), short_id, sieves=site.sieve_payloads())
        assert short["failed"] == [], short
        assert {h: n["status"] for h, n in report(short)["nodes"].items()} == \
            {"localhost": "direct", **{h: "ok" for h in REMOTES}}
    finally:
        site.open_gate()
    res = site.result(long_run)
    sent = {jid: (host, args) for host, jid, args in res["sent"]}
    problems = []
    for jid, r in res["jobs"].items():
        if len(r["attempts"]) != 1 or not r["ok"]:
            problems.append((jid, r["node"], [a["node"] for a in r["attempts"]],
                             [a["stderr"][-200:] for a in r["attempts"] if not a["ok"]]))
    assert problems == [], f"jobs of the long run failed on their rig (retried on localhost): {problems}"
    for jid, (host, args) in sent.items():
        i = int(jid.split("_")[1])
        out = json.loads((site.work / f"full_scoring_results/{run_id}/scores_{i:04}.json").read_text())
        seeds = [p for p in out["inputs"] if p.endswith(f"chunk_{i:04}.json")]
        assert len(seeds) == 1, out
        assert out["inputs"][seeds[0]]["sha256"] == sha(
            (site.work / "scoring_chunks" / f"chunk_{i:04}.json").read_bytes())
        if host in REMOTES:
            assert seeds[0].startswith(site.root(host) + "/"), (host, jid, seeds)
    assert report(res)["fallback_jobs"] == 0
