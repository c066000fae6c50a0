"""Fourth red team (sharded manifest): a reader (stage) in flight while another writer reshards, goes back
to one file, or gc's, hit at a precise moment: after the reader read the
header, before it reads the shards it names. Over real sshd nodes."""
from __future__ import annotations

import pytest

from rt4_common import *  # noqa: F401,F403
from rt4_common import assert_consistent, new_bundles, node_manifest, read_doc, sharded_root, stage_a, store_for
from rt3_common import assert_served_ok

from prng_cache.maintenance import gc_node
from prng_cache.ownership import CacheRoot
from prng_cache.store import LeaseRequest


def hook_first_shard_read(monkeypatch, action):
    """Run ``action`` once, the first time a stage reads shards (after it read
    the header naming them)."""
    orig = CacheRoot._shard_reader
    state = {"done": False}

    def _shard_reader(self, gen):
        read = orig(self, gen)

        def hooked(indices):
            if not state["done"]:
                state["done"] = True
                action()
            return read(indices)
        return hooked

    monkeypatch.setattr(CacheRoot, "_shard_reader", _shard_reader)
    return state


@pytest.mark.parametrize("lease", [False, True], ids=["nolease", "lease"])
@pytest.mark.parametrize("what", ["reshard-grow", "gc-all-to-one-file", "gc-some"])
def test_writer_between_header_and_shard_reads(cluster, src, sharded, monkeypatch, what, lease):
    node, policy, bs, d = sharded_root(cluster, src, n=100, size=200)
    extra = new_bundles(d, [f"x{i}.bin" for i in range(500)], size=200) if what == "reshard-grow" else []
    few = bs[:4]

    def action():
        if what == "reshard-grow":
            r = stage_a(cluster, policy, extra)
            assert r.status == "ok", r.reason
        else:
            st = store_for(cluster, policy, "rig-a")
            try:
                if what == "gc-all-to-one-file":
                    gc_node(st, remove_all=True)
                else:  # evict half of the entries, the wanted ones among them
                    with st.lock():
                        m = st.load(warn=False).manifest
                        victims = [b.key for b in bs[::2]]
                        for k in victims:
                            del m.entries[k]
                        st.write_manifest(m)
                        graves = st.bury(victims)
                    st.empty_trash(graves)
            finally:
                st.t.close()

    state = hook_first_shard_read(monkeypatch, action)
    gen0 = read_doc(node).get("shards", {}).get("gen")
    rep = stage_a(cluster, policy, few, lease=LeaseRequest("run-r", 600) if lease else None)
    assert state["done"]
    assert gen0 is not None
    assert_served_ok(node, rep, few)
    assert rep.status == "ok" and len(rep.staged) == 4 or (rep.reason and "Traceback" not in rep.reason), rep
    m = assert_consistent(node, leftovers_ok=True)
    if lease:
        for b in few:
            if b.path in rep.staged:
                assert b.key in m.entries and b.key in m.leases["run-r"].hashes
    if what == "reshard-grow":
        assert len(m.entries) == 600, len(m.entries)
