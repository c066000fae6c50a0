"""Step 3's run-scoped chunks across two overlapping runs on a large
(sharded, partially loaded) root: one long run whose lease outlives
gc.lease_ttl and is renewed, one short re-run of the same chunks that ends
first, and ``prng-cache gc --all`` in between. The long run's jobs still
read their chunks and histories from RAM, on their first attempt."""

from __future__ import annotations

import json
import time

import pytest

from rt6_common import REMOTES, Site, cli, prefill, ram_entries, report, sha


@pytest.fixture
def site(ssh_cluster_clean, tmp_path):
    if not ssh_cluster_clean.isolated:
        pytest.skip(f"needs each node's private /dev/shm: {ssh_cluster_clean.fallback_reason}")
    return Site(ssh_cluster_clean, tmp_path, policy_extra="gc:\n  lease_ttl: 3s\n")


def check_step3(site: Site, res: dict, run_id: str) -> None:
    bad = [(jid, [a["node"] for a in r["attempts"]], [a["stderr"][-300:] for a in r["attempts"] if not a["ok"]])
           for jid, r in res["jobs"].items() if len(r["attempts"]) != 1 or not r["ok"]]
    assert bad == [], bad
    for host, jid, args in res["sent"]:
        i = int(jid.split("_")[1])
        out = json.loads((site.work / f"full_scoring_results/{run_id}/scores_{i:04}.json").read_text())
        assert len(out["inputs"]) == 3, out
        for path, info in out["inputs"].items():
            name = path.rsplit("/", 1)[1]
            src = site.work / ("scoring_chunks/" + name if name.startswith("chunk_") else name)
            assert info["sha256"] == sha(src.read_bytes()), (host, jid, path)
            if host in REMOTES:
                assert path.startswith(site.root(host) + "/"), (host, jid, path)


def test_overlapping_step3_runs_renewed_lease_gc_between_large_root(site):
    old = prefill(site, 600)
    for h in REMOTES:
        assert len(ram_entries(site.cluster[h], site.root(h))) == 600
        assert site.cluster[h].run(f"ls -a {site.root(h)} | grep -c '^.manifest-'").stdout.strip() == "1"  # sharded
    long_id, short_id = "full_scoring_results_20260105_090000", "full_scoring_results_20260105_090007"
    long_run = site.start("scripts", site.step3_jobs(long_id, name="long.json", script="gated_worker.py"), long_id)
    try:
        site.wait_started(site.chunks)
        time.sleep(4.5)  # the lease as first written (3 s) has lapsed: only renewals keep it
        short = site.run("scripts", site.step3_jobs(short_id, name="short.json"), short_id)
        check_step3(site, short, short_id)
        assert report(short)["fallback_jobs"] == 0, report(short)
        gc = cli(site, "gc", "--all")
        assert gc["_rc"] == 0, gc
        for h in REMOTES:
            assert gc["nodes"][h]["kept_leased"] >= 4, gc["nodes"][h]  # 2 chunks + 2 histories of the long run
        time.sleep(1.5)
    finally:
        site.open_gate()
    res = site.result(long_run)
    check_step3(site, res, long_id)
    rep = report(res)
    assert rep["fallback_jobs"] == 0 and rep["leases_released"] == {h: True for h in REMOTES}, rep
    assert "not renewed" not in res["stderr"] and "is gone" not in res["stderr"], res["stderr"][-3000:]
    # after both runs: no chunk left on the rigs (run-scoped)
    for h in REMOTES:
        names = [n for ns in ram_entries(site.cluster[h], site.root(h)).values() for n in ns]
        assert not [n for n in names if n.startswith("chunk_")], (h, names)
