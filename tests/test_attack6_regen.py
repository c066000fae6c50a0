"""Step 2.5 inputs regenerated between runs with the same size and their
mtime restored (``touch -d``), A -> B -> A, on rigs whose /dev/shm/prng the
users' preload made (0755, stale step2/ copies, .ready) and that already
hold a large sharded cache: every job reads the coordinator's current bytes,
never a stale copy, and the preload's files stay untouched."""

from __future__ import annotations

import json
import os
import time

import pytest

from coordinator_env import E2E
from rt6_common import REMOTES, Site, prefill, report, sha

SNAP = ("cd /dev/shm/prng && find step2 step3 .ready -printf '%p %y %m %s %T@\\n' | sort "
        "&& find step2 step3 -type f -exec sha256sum {} + | sort")
NAMES = ("bidirectional_survivors_binary.npz", "optimal_window_config.json", "train_history.json",
         "holdout_history.json")


@pytest.fixture
def site(ssh_cluster_clean, tmp_path):
    if not ssh_cluster_clean.isolated:
        pytest.skip(f"needs each node's private /dev/shm: {ssh_cluster_clean.fallback_reason}")
    return Site(ssh_cluster_clean, tmp_path)


def same_size_edit(site: Site, content: dict[str, bytes]) -> None:
    """Rewrite the inputs in place with ``content`` (same sizes) and put
    their old mtimes back, as a regeneration followed by ``touch -d`` does."""
    for name, data in content.items():
        p = site.work / name
        st = os.stat(p)
        assert st.st_size == len(data), name
        with open(p, "r+b") as f:
            f.write(data)
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))


def flipped(data: bytes) -> bytes:
    """Same length, other bytes (a JSON document stays JSON)."""
    if data[:1] == b"{":
        return data.replace(b'"gen1"', b'"gen2"')
    return data[:4] + bytes(b ^ 0x5A for b in data[4:])


def check(site: Site, res: dict, want: dict[str, bytes]) -> None:
    assert res["failed"] == [], res
    for host, jid, args in res["sent"]:
        out = json.loads((site.work / f"results/{jid}.json").read_text())
        for path, info in out["inputs"].items():
            name = os.path.basename(path)
            assert info["sha256"] == sha(want[name]), (host, jid, path, "stale or wrong bytes")
            if host in REMOTES:
                assert path.startswith(site.root(host) + "/") and "/step2/" not in path, (host, path)
        wc = out["window_config"]
        assert wc["sha256"] == sha(want["optimal_window_config.json"]), (host, jid, wc)
    rep = report(res)
    assert rep["fallback_jobs"] == 0 and rep["missing_inputs"] == {}, rep


def test_same_size_same_mtime_regeneration_is_never_served_stale(site):
    stale = {n: (site.work / n).read_bytes() for n in NAMES}
    for h in REMOTES:  # the users' preload ran on the rigs first, with these (soon stale) files
        r = site.cluster.ssh(h, f"sh {E2E / 'preload_ramdisk.sh'} {site.work}")
        assert r.stdout.strip() == "loaded", r
    site.write_inputs("gen1")  # a regeneration: the preload's copies are stale now
    gen1 = {n: (site.work / n).read_bytes() for n in NAMES}
    before = {h: site.cluster[h].run(SNAP).stdout for h in REMOTES}
    prefill(site, 560)  # a large cache from earlier runs: sharded, stages of a few keys are partial
    jobs = site.step2_jobs()
    res1 = site.run("scripts", jobs, "scorer_results_1")
    check(site, res1, gen1)

    gen2 = {n: flipped(b) for n, b in gen1.items()}
    assert all(len(gen2[n]) == len(gen1[n]) and gen2[n] != gen1[n] for n in NAMES)
    same_size_edit(site, gen2)
    res2 = site.run("scripts", jobs, "scorer_results_2")  # at once: within the "racy" window
    check(site, res2, gen2)

    time.sleep(2.5)  # out of the racy window: the memo is used now
    same_size_edit(site, gen1)  # back to the first generation, mtimes restored again
    res3 = site.run("scripts", jobs, "scorer_results_3")
    check(site, res3, gen1)
    same_size_edit(site, gen2)
    time.sleep(2.5)
    res4 = site.run("scripts", jobs, "scorer_results_4")
    check(site, res4, gen2)
    assert report(res4)["copied_bytes"] == 0  # both generations cached: nothing copied

    after = {h: site.cluster[h].run(SNAP).stdout for h in REMOTES}
    assert after == before  # the preload's step2/, step3/, .ready untouched
    for h in REMOTES:
        got = site.cluster[h].run("sha256sum /dev/shm/prng/step2/train_history.json").stdout.split()[0]
        assert got == sha(stale["train_history.json"])
