"""Big new inputs are sent to the nodes while they are hashed (prewarm's
presend), over real sshd nodes: published only when what was sent hashes to
the key, removed otherwise, never left behind."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import replace

import pytest

from test_faults import NODES, cluster, make_policy, node_bytes, node_manifest, node_names, root_of  # noqa: F401

from prng_cache import prewarm
from prng_cache.cluster import Node
from prng_cache.hashing import HashMemo
from prng_cache.memo import RACY_WINDOW
from prng_cache.run import plan_run

MIB = 1 << 20


@pytest.fixture(autouse=True)
def small_presend(monkeypatch):
    monkeypatch.setattr(prewarm, "PRESEND_MIN", 2 * MIB)  # test-sized "big" inputs


@pytest.fixture
def big(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "big.json").write_bytes(os.urandom(6 * MIB))
    (d / "small.json").write_bytes(os.urandom(20_000))
    (d / "big.npz").write_bytes(os.urandom(3 * MIB))
    (d / "optimal_window_config.json").write_text('{"window": 7}')  # big.npz's companion
    return d


def run_stage(cluster, policy, paths, memo):
    jobs = [{"job_id": f"j{i}", "args": [str(p) for p in paths]} for i in range(2)]
    nodes = [Node(h, cluster.user) for h in NODES]
    return plan_run(jobs, nodes, policy, min_jobs=1, memo=memo, connect_early=True).stage()


def leftovers(node) -> list[str]:
    return [n for n in node_names(node, root_of(node)) if n.startswith((".tmp-", ".trash-"))]


def test_a_big_new_input_is_sent_while_hashed_and_published_under_its_key(cluster, big, tmp_path, caplog):
    policy = make_policy(cluster, big)
    policy = replace(policy, inputs=replace(policy.inputs, companions=(("*.npz", ("optimal_window_config.json",)),)))
    paths = [big / "big.json", big / "small.json", big / "big.npz"]
    caplog.set_level(logging.INFO, logger="prng_cache")
    reps = run_stage(cluster, policy, paths, HashMemo(str(tmp_path / "memo")))
    for h in NODES:
        rep = reps[h]
        assert rep.status == "ok" and set(rep.staged) == {str(p) for p in paths}, rep
        node = cluster[h]
        for p in paths:
            assert hashlib.sha256(node_bytes(node, rep.staged[str(p)])).digest() == \
                hashlib.sha256(p.read_bytes()).digest()
        # the companion was added to the temporary the big file was sent into
        npz_dir = os.path.dirname(rep.staged[str(big / "big.npz")])
        assert sorted(n for n in node_names(node, npz_dir) if not n.startswith(".")) == \
            ["big.npz", "optimal_window_config.json"]
        assert leftovers(node) == []
        assert f"{h}: {big / 'big.json'} was sent while it was hashed" in caplog.text
        assert f"{h}: {big / 'big.npz'} was sent while it was hashed" in caplog.text
        assert f"{h}: {big / 'small.json'} was sent" not in caplog.text  # small: uploaded as before
        assert rep.copied_bytes == sum(p.stat().st_size for p in paths) + (big / "optimal_window_config.json").stat().st_size


def test_an_input_the_node_holds_already_is_sent_early_then_removed(cluster, big, tmp_path, caplog):
    policy = make_policy(cluster, big)
    paths = [big / "big.json"]
    run_stage(cluster, policy, paths, HashMemo(str(tmp_path / "memo1")))
    caplog.set_level(logging.DEBUG, logger="prng_cache")
    # a new memo: the coordinator must hash again, so the input is sent early again
    reps = run_stage(cluster, policy, paths, HashMemo(str(tmp_path / "memo2")))
    for h in NODES:
        assert reps[h].status == "ok" and reps[h].copied_bytes == 0, reps[h]
        assert leftovers(cluster[h]) == []
        assert f"{h}: {big / 'big.json'} sent while it was hashed" in caplog.text
        assert len(node_manifest(cluster[h]).entries) == 1


def test_a_memo_hit_sends_nothing_early(cluster, big, tmp_path, caplog):
    policy = make_policy(cluster, big)
    memo = HashMemo(str(tmp_path / "memo"))
    time.sleep(RACY_WINDOW + 0.1)  # old enough for the memo to vouch for it
    run_stage(cluster, policy, [big / "big.json"], memo)
    caplog.set_level(logging.DEBUG, logger="prng_cache")
    reps = run_stage(cluster, policy, [big / "big.json"], memo)
    assert all(r.status == "ok" and r.copied_bytes == 0 for r in reps.values())
    assert "sent while it was hashed" not in caplog.text


def test_an_input_changed_after_it_was_sent_is_never_published_from_the_early_copy(cluster, big, tmp_path,
                                                                                   monkeypatch):
    """The early copy is of the old bytes; discovery then hashes the new
    ones: the early copy does not hash to the key and is removed; the new
    bytes are uploaded and checked as always."""
    policy = make_policy(cluster, big)
    f = big / "big.json"
    real_send = prewarm.EarlyConnections.presend

    def presend_then_change(self, path, users=None):
        real_send(self, path, users)
        for slot in list(self._slots.values()):  # wait until every node has sent the old bytes
            with self._wake:
                slot.taken = True
                self._wake.notify_all()
            slot.thread.join()
            slot.taken = False
        f.write_bytes(os.urandom(6 * MIB))  # regenerated before discovery reads it

    monkeypatch.setattr(prewarm.EarlyConnections, "presend", presend_then_change)
    reps = run_stage(cluster, policy, [f], HashMemo(str(tmp_path / "memo")))
    for h in NODES:
        rep = reps[h]
        assert rep.status == "ok", rep
        assert node_bytes(cluster[h], rep.staged[str(f)]) == f.read_bytes()
        assert leftovers(cluster[h]) == []


def test_a_plan_dropped_before_its_stage_leaves_nothing_behind(cluster, big, tmp_path):
    policy = make_policy(cluster, big)
    jobs = [{"job_id": f"j{i}", "args": [str(big / "big.json")]} for i in range(2)]
    plan = plan_run(jobs, [Node(h, cluster.user) for h in NODES], policy, min_jobs=1,
                    memo=HashMemo(str(tmp_path / "memo")), connect_early=True)
    threads = [s.thread for s in plan.early._slots.values()]
    plan.early.close()  # what dropping the plan (its finaliser) or an interrupt does
    for th in threads:
        th.join(30)
    for h in NODES:
        assert leftovers(cluster[h]) == []


def test_a_node_without_room_gets_nothing_early_and_the_stage_decides(cluster, big, tmp_path, caplog):
    from prng_cache.policy import CapacityPolicy
    policy = make_policy(cluster, big, capacity=CapacityPolicy(max_bytes=1 * MIB))
    caplog.set_level(logging.DEBUG, logger="prng_cache")
    reps = run_stage(cluster, policy, [big / "big.json"], HashMemo(str(tmp_path / "memo")))
    for h in NODES:
        assert reps[h].status == "fallback" and "capacity.max_bytes" in reps[h].skipped[str(big / "big.json")]
        assert leftovers(cluster[h]) == []
    assert "not sent early: the stage decides whether it fits" in caplog.text


def _after_presends(monkeypatch, then):
    """Run ``then()`` once every node has finished sending the input early
    (before discovery hashes it)."""
    real_send = prewarm.EarlyConnections.presend

    def presend_then(self, path, users=None):
        real_send(self, path, users)
        for slot in list(self._slots.values()):
            with self._wake:
                slot.taken = True
                self._wake.notify_all()
            slot.thread.join()
            slot.taken = False
        then()

    monkeypatch.setattr(prewarm.EarlyConnections, "presend", presend_then)


def test_a_root_swapped_for_a_symlink_after_the_early_send_is_never_written_through(cluster, big, tmp_path,
                                                                                    monkeypatch):
    policy = make_policy(cluster, big)
    node = cluster["rig-a"]
    root = root_of(node)
    elsewhere = f"{node.shm}/elsewhere"

    before: list[str] = []

    def swap():
        node.run(f"mv {root} {elsewhere} && ln -s {elsewhere} {root}")
        before.extend(sorted(node_names(node, elsewhere)))

    _after_presends(monkeypatch, swap)
    reps = run_stage(cluster, policy, [big / "big.json"], HashMemo(str(tmp_path / "memo")))
    assert any(n.startswith(".tmp-") for n in before)  # the early copy, in the moved root
    assert reps["rig-a"].status == "error" and "symlink" in reps["rig-a"].reason, reps["rig-a"]
    assert sorted(node_names(node, elsewhere)) == before  # nothing removed or written through the link
    for h in ("rig-b", "rig-c"):
        assert reps[h].status == "ok" and leftovers(cluster[h]) == []


def test_an_input_named_through_dotdot_and_a_symlinked_dir_is_sent_once_per_node(cluster, big, tmp_path, caplog):
    (big / "sub").mkdir()
    (big / "link").symlink_to(big)
    paths = [big / "sub" / ".." / "big.json", big / "link" / "big.json"]
    policy = make_policy(cluster, big)
    caplog.set_level(logging.DEBUG, logger="prng_cache")
    reps = run_stage(cluster, policy, paths, HashMemo(str(tmp_path / "memo")))
    for h in NODES:
        rep = reps[h]
        assert rep.status == "ok" and len(rep.staged) == 2, rep
        assert node_bytes(cluster[h], rep.staged[str(paths[0])]) == (big / "big.json").read_bytes()
        assert leftovers(cluster[h]) == []
        assert len(node_manifest(cluster[h]).entries) == 1
