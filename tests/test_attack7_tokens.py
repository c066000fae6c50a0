"""Seventh red team: every presend opens a NodeStore that never read the
root's listing, so it mints a new root ownership token (.prng-root-<tok>)
on every node for every big new input: they pile up in the root forever."""

from __future__ import annotations

from rt7_common import MIB, NODES, big_file, cluster, leftovers, make_policy, root_tokens, run_stage, small_presend  # noqa: F401


def test_presends_do_not_mint_a_new_root_token_each_time(cluster, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    policy = make_policy(cluster, d)
    for i in range(3):  # three runs, each with a big new input
        f = big_file(d / f"big{i}.bin", 3 * MIB)
        reps = run_stage(cluster, policy, [f], tmp_path / f"memo{i}")
        assert all(r.status == "ok" for r in reps.values()), reps
    for h in NODES:
        assert leftovers(cluster[h]) == []
        # one root, one ownership token (as stages without presend leave)
        assert len(root_tokens(cluster[h])) == 1, root_tokens(cluster[h])


def test_one_run_with_two_big_inputs_leaves_one_token(cluster, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    policy = make_policy(cluster, d)
    files = [big_file(d / "a.bin", 3 * MIB), big_file(d / "b.bin", 3 * MIB)]
    reps = run_stage(cluster, policy, files, tmp_path / "memo")
    assert all(r.status == "ok" for r in reps.values()), reps
    for h in NODES:
        assert len(root_tokens(cluster[h])) == 1, root_tokens(cluster[h])
