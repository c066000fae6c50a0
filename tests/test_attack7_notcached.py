"""Seventh red team: a big input that turns out not to be cached (min_jobs,
exclude, a companion over max_file_size) is not sent early, or what was
sent is removed by the stage."""

from __future__ import annotations

import os
from dataclasses import replace

from rt7_common import MIB, NODES, PresendWatch, cluster, leftovers, make_policy, small_presend  # noqa: F401

from prng_cache.cluster import Node
from prng_cache.hashing import HashMemo
from prng_cache.run import plan_run


def _stage(cluster, policy, jobs, memo, min_jobs=None):
    plan = plan_run(jobs, [Node(h) for h in NODES], policy, min_jobs=min_jobs, memo=HashMemo(str(memo)),
                    connect_early=True)
    return plan, plan.stage()


def test_min_jobs_and_exclude_big_inputs_are_never_sent_early(cluster, tmp_path, monkeypatch):
    d = tmp_path / "in"
    d.mkdir()
    (d / "once.bin").write_bytes(os.urandom(3 * MIB))
    (d / "skip.bin").write_bytes(os.urandom(3 * MIB))
    policy = make_policy(cluster, d)
    policy = replace(policy, inputs=replace(policy.inputs, exclude=("*/skip.bin",)))
    watch = PresendWatch(monkeypatch)
    jobs = [{"job_id": "j0", "args": [str(d / "once.bin"), str(d / "skip.bin")]},
            {"job_id": "j1", "args": [str(d / "skip.bin")]}]
    plan, reps = _stage(cluster, policy, jobs, tmp_path / "memo", min_jobs=2)
    assert set(plan.skipped) == {str(d / "once.bin"), str(d / "skip.bin")}, plan.skipped
    assert watch.paths == []
    for h in NODES:
        assert leftovers(cluster[h]) == []


def test_big_input_whose_companion_is_too_big_leaves_nothing(cluster, tmp_path, monkeypatch):
    d = tmp_path / "in"
    d.mkdir()
    (d / "big.npz").write_bytes(os.urandom(3 * MIB))
    (d / "cfg.json").write_bytes(os.urandom(2 * MIB))
    policy = make_policy(cluster, d)
    policy = replace(policy, inputs=replace(policy.inputs, companions=(("*.npz", ("cfg.json",)),),
                                            max_file_size=2 * MIB - 1))
    PresendWatch(monkeypatch)
    jobs = [{"job_id": f"j{i}", "args": [str(d / "big.npz")]} for i in range(2)]
    plan, reps = _stage(cluster, policy, jobs, tmp_path / "memo", min_jobs=1)
    assert str(d / "big.npz") in plan.skipped
    for h in NODES:
        assert reps[h].status in ("ok", "fallback"), reps[h]
        assert leftovers(cluster[h]) == []
