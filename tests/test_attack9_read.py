"""Red team 9: the helper's one-request shard reads (op_read /
NodeHelper.read_files / SSHTransport.read_many) attacked on real sshd
nodes: an answer cut short, a helper stalled mid-answer, shards that are
FIFOs (held open), directories, huge files, and a shard swapped for a FIFO
between the helper's lstat and its open."""
from __future__ import annotations

import time

import pytest

from rt9_common import (check_served, cluster, cold_sharded, many_files, make_policy, patch_helper_source, q,  # noqa: F401
                        root_of, sharded, stage, unrecorded_served)
from test_faults import assert_consistent
from prng_cache.transport.ssh import helper as ssh_helper
from prng_cache.transport.ssh import operations

N = 200



def _spy_reads(monkeypatch) -> list:
    calls = []
    orig = ssh_helper.NodeHelper.read_files

    def spy(self, ps, limit):
        calls.append(len(ps))
        return orig(self, ps, limit)
    monkeypatch.setattr(ssh_helper.NodeHelper, "read_files", spy)
    return calls


CUT_SRC = '''
_rt9_cut_op_read = op_read


def op_read(req):
    ans, data = _rt9_cut_op_read(req)
    if not os.path.exists(%(flag)r):
        return ans, data
    os.unlink(%(flag)r)
    blob = b"".join(data)

    def cut():
        yield blob[:len(blob) // 2]  # half of the promised bytes, then
        sys.stdout.buffer.flush()
        %(then)s
    return ans, cut()
'''


@pytest.mark.parametrize("then", ["os._exit(0)", "time.sleep(25); os._exit(0)"], ids=["dies", "stalls"])
def test_shard_read_answer_cut_short_is_never_taken_as_shards(cluster, tmp_path, monkeypatch, sharded, then):
    """The helper promises sizes, sends half the bytes, then dies (or
    stalls past the I/O timeout): the coordinator must not take the short
    payload as shards, must fall back to SFTP and stage everything."""
    node, paths, policy, sh = cold_sharded(cluster, tmp_path, N)
    flag = f"{node.shm}/rt9-cut-flag"
    patch_helper_source(monkeypatch, CUT_SRC % {"flag": flag, "then": then})
    monkeypatch.setattr(operations.SSHTransport, "io_timeout", property(lambda self: 4.0))
    calls = _spy_reads(monkeypatch)
    node.run(f"touch {flag}")
    t0 = time.monotonic()
    rep = stage(cluster, policy, paths, tmp_path / "memo")["rig-a"]
    took = time.monotonic() - t0
    assert node.run(f"test -e {flag}", check=False).returncode != 0, "the cut was never injected"
    assert calls, "shards were not read through the helper"
    assert rep.status == "ok", rep.to_dict()
    assert check_served(node, rep, paths, expect_all=True) == []
    assert took < 22, f"stage waited for the stalled helper ({took:.1f}s)"
    m = assert_consistent(node)
    assert len(m.entries) == N


FIFO_SRC = '''
_rt9_race_op_read = op_read


def op_read(req):
    real = os.lstat

    def lstat(p, *a, **k):
        st = real(p, *a, **k)
        if isinstance(p, bytes) and p.endswith(%(target)r) and os.path.exists(%(flag)r):
            os.unlink(%(flag)r)
            os.system("sh %(hook)s </dev/null >/dev/null 2>&1")
        return st
    os.lstat = lstat
    try:
        return _rt9_race_op_read(req)
    finally:
        os.lstat = real
'''


@pytest.mark.parametrize("swap", ["fifo-held", "fifo-fed", "grown", "replaced"])
def test_shard_swapped_between_lstat_and_open(cluster, tmp_path, monkeypatch, sharded, swap):
    """Right after the helper lstat'ed a shard (a small regular file), it
    becomes a FIFO held open by a writer (no data / exactly the shard's
    size of data), grows, or is renamed over by another file of the same
    size: the helper must not block, must not hand those bytes as the
    shard, and the stage must stay correct."""
    node, paths, policy, sh = cold_sharded(cluster, tmp_path, N)
    root = root_of(node)
    shard = f"{root}/{sh.dirname}/{sh.filename(3)}"
    other = f"{root}/{sh.dirname}/{sh.filename(4)}"
    flag, hook, pidf = (f"{node.shm}/rt9-race-flag", f"{node.shm}/rt9-race.sh", f"{node.shm}/rt9-race.pid")
    size = int(node.run(f"stat -c %s {q(shard)}").stdout)
    cmds = {
        "fifo-held": f"mv {q(shard)} {q(shard)}.was && mkfifo -m 600 {q(shard)} && "
                     f"{{ (exec 3<>{q(shard)}; exec sleep 30) </dev/null >/dev/null 2>&1 & echo $! > {pidf}; }} && sleep 0.3",
        "fifo-fed": f"mv {q(shard)} {q(shard)}.was && mkfifo -m 600 {q(shard)} && "
                    f"{{ (exec 3<>{q(shard)}; head -c {size} {q(shard)}.was >&3; exec sleep 30) </dev/null >/dev/null 2>&1 & "
                    f"echo $! > {pidf}; }} && sleep 0.3",
        "grown": f"head -c 100 /dev/urandom >> {q(shard)}",
        "replaced": f"head -c {size} {q(other)} > {q(shard)}.new; chmod 600 {q(shard)}.new; "
                    f"mv {q(shard)}.new {q(shard)}",
    }
    node.run(f"cat > {hook} <<'EOF'\n{cmds[swap]}\nEOF\ntouch {flag}")
    patch_helper_source(monkeypatch, FIFO_SRC % {"flag": flag, "hook": hook,
                                                 "target": ("/" + sh.filename(3)).encode()})
    calls = _spy_reads(monkeypatch)
    import os as _os
    if _os.environ.get("RT9_DEBUG"):
        orig_rm = operations.SSHTransport.read_many
        def rm(self, ps, mb=64 << 20):
            got = orig_rm(self, ps, mb)
            print("READ_MANY", len(ps), {p[-14:]: (type(v).__name__, (len(v) if isinstance(v, bytes) else v)) for p, v in got.items() if "0003" in p})
            return got
        monkeypatch.setattr(operations.SSHTransport, "read_many", rm)
    try:
        t0 = time.monotonic()
        rep = stage(cluster, policy, paths, tmp_path / "memo")["rig-a"]
        took = time.monotonic() - t0
        assert node.run(f"test -e {flag}", check=False).returncode != 0, "the swap was never injected"
        assert calls, "shards were not read through the helper"
        assert took < 25, f"blocked on the FIFO ({took:.1f}s)"
        assert rep.status == "ok", rep.to_dict()
        assert check_served(node, rep, paths, expect_all=True) == []
        import os as _os
        if _os.environ.get("RT9_DEBUG"):
            print("WARN", rep.warnings, rep.reason)
            print(node.run(f"ls -la {q(root)} | grep -v ' [0-9a-f]\\{{32\\}}$'; ls -la {q(root)}/.manifest-*", check=False).stdout)
            print(len(rep.staged), len(unrecorded_served(node, rep)))
        assert unrecorded_served(node, rep) == [], "served from key directories the manifest does not record"
        m = assert_consistent(node, leftovers_ok=True)
        assert len(m.entries) >= N - 2 * sh.n
    finally:
        node.run(f"test -s {pidf} && kill $(cat {pidf}); rm -f {pidf} {hook} {flag}", check=False)


def test_shards_that_are_fifo_dir_and_huge_do_not_block_or_fail_the_node(cluster, tmp_path, monkeypatch, sharded):
    """Three shards replaced by hand: a FIFO held open by a writer (a read
    would block forever), a directory, a sparse file larger than any
    shard. The stage must not block, must not fail, and every input it
    serves is right."""
    node, paths, policy, sh = cold_sharded(cluster, tmp_path, N)
    root = root_of(node)
    d = f"{root}/{sh.dirname}"
    f1, f2, f3 = (f"{d}/{sh.filename(i)}" for i in (1, 2, 5))
    pidf = f"{node.shm}/rt9-fifo.pid"
    node.run(f"rm {q(f1)} {q(f2)} {q(f3)} && mkfifo -m 600 {q(f1)} && mkdir -m 700 {q(f2)} && "
             f"truncate -s $((16*1024*1024+5)) {q(f3)} && chmod 600 {q(f3)} && "
             f"( (exec 3<>{q(f1)}; exec sleep 40) </dev/null >/dev/null 2>&1 & echo $! > {pidf} )")
    calls = _spy_reads(monkeypatch)
    try:
        t0 = time.monotonic()
        rep = stage(cluster, policy, paths, tmp_path / "memo")["rig-a"]
        took = time.monotonic() - t0
        assert calls, "shards were not read through the helper"
        assert took < 30, f"blocked ({took:.1f}s)"
        assert rep.status == "ok", rep.to_dict()
        assert check_served(node, rep, paths, expect_all=True) == []
        assert unrecorded_served(node, rep) == [], "served from key directories the manifest does not record"
        assert_consistent(node, leftovers_ok=True)
    finally:
        node.run(f"test -s {pidf} && kill $(cat {pidf}); rm -f {pidf}", check=False)
