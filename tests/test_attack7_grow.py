"""Seventh red team: a big input still being written (its producer appends)
while it is sent early. _fits approved the size stat'ed before the send;
send_file reads to EOF, so the presend keeps writing into the node's RAM
past capacity.max_percent (and would fill the tmpfs) before the change is
noticed at the end."""

from __future__ import annotations

import threading

from rt7_common import MIB, PresendWatch, cluster, make_policy, run_stage, shm_total, shm_used, small_presend  # noqa: F401
from rt7_common import leftovers

from prng_cache.policy import CapacityPolicy


def test_a_growing_input_is_never_sent_early_past_max_percent(cluster, tmp_path, monkeypatch):
    a = cluster["rig-a"]
    d = tmp_path / "in"
    d.mkdir()
    f = d / "big.bin"
    f.write_bytes(b"\1" * (4 * MIB))
    policy = make_policy(cluster, d, capacity=CapacityPolicy(max_percent=40))
    limit = shm_total(a) * 0.40  # 25.6 MiB
    base = shm_used(a)
    watch = PresendWatch(monkeypatch, slow=0.02)
    grown = threading.Event()

    def producer():
        # the job that makes big.bin is still appending to it
        if watch.started.wait(10):
            with open(f, "ab") as out:
                for _ in range(36):
                    out.write(b"\2" * MIB)
                    out.flush()
            grown.set()

    th = threading.Thread(target=producer, daemon=True)
    th.start()
    run_stage(cluster, policy, [f], tmp_path / "memo", hosts=["rig-a"])
    th.join(10)
    assert grown.is_set()
    # what the presend put into rig-a's RAM at its peak
    assert base + watch.written <= limit, (watch.written / MIB, (limit - base) / MIB)
    assert leftovers(a) == []
