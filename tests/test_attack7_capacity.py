"""Seventh red team: capacity planning with presends. stage_node subtracts
every presend's bytes from the node's "used" (as if each were published in
place), but a presend that is not published (the content is held under
another name, the node's jobs do not need it, a second name of the same
file) stays on the tmpfs until the stage ends, while the stage uploads on
top of it: the node really runs out of room and inputs that fit without
presend fall back (ENOSPC), or /dev/shm goes past capacity.max_percent."""

from __future__ import annotations

import os

from rt7_common import (MIB, NODES, cluster, leftovers, make_policy, presend_min, root_of, run_stage,  # noqa: F401
                        shm_total, shm_used, small_presend)
from test_faults import assert_consistent, node_bytes

from prng_cache.cluster import Node
from prng_cache.hashing import HashMemo
from prng_cache.plugin import PrngCachePlugin
from prng_cache import prewarm, staging
from prng_cache.policy import CapacityPolicy
from prng_cache.run import plan_run


def fill_to(node, target: int) -> None:
    """Other programs' data in the node's RAM: /dev/shm used up to ``target`` bytes."""
    extra = target - shm_used(node)
    assert extra > 0
    node.run(f"head -c {extra} /dev/zero > /dev/shm/filler")


def test_content_held_under_another_name_presend_does_not_make_the_stage_run_out(cluster, tmp_path):
    """rig-a holds a.bin; the same bytes come back as b.bin (a new path: no
    memo hit, so it is sent early). publish() adds b.bin to the existing
    entry with a fresh upload, never using the presend, which still holds
    14 MiB: 40 + 14 (presend) + 14 (upload) > 64 MiB. Without presend:
    40 + 14 fits."""
    node = cluster["rig-a"]
    d = tmp_path / "in"
    d.mkdir()
    data = os.urandom(14 * MIB)
    (d / "a.bin").write_bytes(data)
    policy = make_policy(cluster, d, capacity=CapacityPolicy(max_percent=100))
    first = run_stage(cluster, policy, [d / "a.bin"], tmp_path / "memo1", hosts=["rig-a"])["rig-a"]
    assert first.status == "ok", first
    fill_to(node, 40 * MIB)
    (d / "b.bin").write_bytes(data)
    rep = run_stage(cluster, policy, [d / "b.bin"], tmp_path / "memo2", hosts=["rig-a"])["rig-a"]
    assert rep.status == "ok", rep  # observed: fallback, "upload failed: No space left on device"
    assert node_bytes(node, rep.staged[str(d / "b.bin")]) == data
    assert leftovers(node) == []
    assert_consistent(node)


def test_two_names_of_one_file_presend_does_not_make_the_stage_run_out(cluster, tmp_path):
    """x.bin and y.bin are hard links of one 12 MiB file: both sent early
    (24 MiB), the stage publishes one key with both names from the x.bin
    presend and uploads y.bin afresh next to the unused y.bin presend."""
    node = cluster["rig-a"]
    d = tmp_path / "in"
    d.mkdir()
    data = os.urandom(12 * MIB)
    (d / "x.bin").write_bytes(data)
    os.link(d / "x.bin", d / "y.bin")
    policy = make_policy(cluster, d, capacity=CapacityPolicy(max_percent=100))
    fill_to(node, 30 * MIB)  # 30 + 24 fits the presends; 30 + 24 + 12 does not fit 64 MiB
    rep = run_stage(cluster, policy, [d / "x.bin", d / "y.bin"], tmp_path / "memo", hosts=["rig-a"])["rig-a"]
    assert rep.status == "ok", rep  # without presend: 30 + 12 fits
    for p in ("x.bin", "y.bin"):
        assert node_bytes(node, rep.staged[str(d / p)]) == data
    assert leftovers(node) == []


def test_presend_to_a_node_whose_jobs_do_not_need_it_does_not_fill_its_ram(cluster, tmp_path, small_presend):
    """The coordinator plugin (assignments): rig-b's job reads the 20 MiB
    big.bin, rig-a's job reads two 9 MiB files (under the presend size).
    big.bin is sent early to every node, rig-a included; rig-a's stage then
    counts big.bin's presend as free room and uploads its 18 MiB on top of
    it: 30 + 20 + 18 > 64 MiB. Without presend rig-a holds 30 + 18."""
    small_presend.setattr(prewarm, "PRESEND_MIN", presend_min(10 * MIB))
    a = cluster["rig-a"]
    d = tmp_path / "in"
    d.mkdir()
    (d / "big.bin").write_bytes(os.urandom(20 * MIB))
    (d / "x1.bin").write_bytes(os.urandom(9 * MIB))
    (d / "x2.bin").write_bytes(os.urandom(9 * MIB))
    policy = make_policy(cluster, d, capacity=CapacityPolicy(max_percent=100))
    fill_to(a, 30 * MIB)
    jobs = [{"job_id": "ja", "args": [str(d / "x1.bin"), str(d / "x2.bin")]},
            {"job_id": "jb", "args": [str(d / "big.bin")]}]
    nodes = [{"hostname": h, "script_path": str(d)} for h in ("rig-a", "rig-b")]
    p = PrngCachePlugin(policy)
    p.coordinator_run_start(run_id="rt7-cap", nodes=nodes, jobs=jobs,
                            assignments={"rig-a": [jobs[0]], "rig-b": [jobs[1]]})
    try:
        ra = p.reports["rig-a"]
        assert ra.status == "ok", ra  # observed: x2.bin "upload failed: No space left on device"
        assert "big.bin" not in str(ra.staged)
        assert leftovers(a) == []
    finally:
        p.coordinator_run_end("rt7-cap", {})


def test_presend_never_takes_the_node_past_max_percent(cluster, tmp_path, small_presend):
    """The same as the plugin case, measured against capacity.max_percent
    (80%) instead of the tmpfs' end: rig-a's peak use while staging."""
    small_presend.setattr(prewarm, "PRESEND_MIN", presend_min(10 * MIB))
    a = cluster["rig-a"]
    d = tmp_path / "in"
    d.mkdir()
    (d / "big.bin").write_bytes(os.urandom(16 * MIB))
    (d / "x1.bin").write_bytes(os.urandom(8 * MIB))
    policy = make_policy(cluster, d, capacity=CapacityPolicy(max_percent=80))
    fill_to(a, 24 * MIB)  # 24 + 16 (presend) fits 51.2 MiB; 24 + 16 + 8 + 8 does not; 24 + 8 + 8 does
    (d / "x2.bin").write_bytes(os.urandom(8 * MIB))
    limit = shm_total(a) * 0.80
    peak = [0]

    real_publish = staging.NodeStore.publish

    def publish(self, bundle, existing, **kw):
        out = real_publish(self, bundle, existing, **kw)
        if self.host == "rig-a":
            peak[0] = max(peak[0], shm_used(a))
        return out

    small_presend.setattr(staging.NodeStore, "publish", publish)
    jobs = [{"job_id": "ja", "args": [str(d / "x1.bin"), str(d / "x2.bin")]},
            {"job_id": "jb", "args": [str(d / "big.bin")]}]
    plan = plan_run(jobs, [Node("rig-a"), Node("rig-b")], policy, min_jobs=1,
                    assignments={"rig-a": [jobs[0]], "rig-b": [jobs[1]]},
                    memo=HashMemo(str(tmp_path / "memo")), connect_early=True)
    reps = plan.stage()
    assert reps["rig-a"].status == "ok", reps["rig-a"]
    assert peak[0] <= limit, (peak[0] / MIB, limit / MIB)
