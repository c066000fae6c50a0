"""Red team 9: the helper's one-request shard writes (op_replace /
NodeHelper.replace_files / SSHTransport.replace_files) attacked on real
sshd nodes: /dev/shm full after the first shard was replaced, the shard
directory swapped for a symlink or removed right before the write, the
helper dying mid-request (after a tmp was created), two coordinators."""
from __future__ import annotations

import threading

import pytest

from rt9_common import (check_served, cluster, cold_sharded, many_files, make_policy, patch_helper_source, q,  # noqa: F401
                        root_of, sharded, stage, unrecorded_served)
from test_faults import assert_consistent
from prng_cache.transport.ssh import helper as ssh_helper

N = 200



def _spy_writes(monkeypatch) -> list:
    calls = []
    orig = ssh_helper.NodeHelper.replace_files

    def spy(self, items):
        calls.append(len(items))
        return orig(self, items)
    monkeypatch.setattr(ssh_helper.NodeHelper, "replace_files", spy)
    return calls


BEFORE_SRC = '''
_rt9_before_op_replace = op_replace


def op_replace(req, inp):
    if os.path.exists(%(flag)r):
        os.unlink(%(flag)r)
        os.system("sh %(hook)s </dev/null >/dev/null 2>&1")
    return _rt9_before_op_replace(req, inp)
'''

AFTER_RENAME_SRC = '''
_rt9_ar_op_replace = op_replace


def op_replace(req, inp):
    real = os.rename
    seen = [0]

    def rename(a, b, *x, **k):
        r = real(a, b, *x, **k)
        seen[0] += 1
        if seen[0] == %(after)d and os.path.exists(%(flag)r):
            os.unlink(%(flag)r)
            os.system("sh %(hook)s </dev/null >/dev/null 2>&1")
        return r
    os.rename = rename
    try:
        return _rt9_ar_op_replace(req, inp)
    finally:
        os.rename = real
'''

DIE_SRC = '''
_rt9_die_op_replace = op_replace


def op_replace(req, inp):
    real = os.open
    seen = [0]

    def open_(p, flags, *a, **k):
        fd = real(p, flags, *a, **k)
        seen[0] += 1
        if seen[0] == %(nth)d and os.path.exists(%(flag)r):
            os.unlink(%(flag)r)
            os._exit(3)  # killed with the nth tmp created, not yet renamed
        return fd
    os.open = open_
    try:
        return _rt9_die_op_replace(req, inp)
    finally:
        os.open = real
'''


def _setup_hook(node, cmd: str) -> tuple[str, str]:
    flag, hook = f"{node.shm}/rt9-rep-flag", f"{node.shm}/rt9-rep.sh"
    node.run(f"cat > {hook} <<'EOF'\n{cmd}\nEOF\ntouch {flag}")
    return flag, hook


def _more(tmp_path, n=100):
    return many_files(tmp_path / "in", n, prefix="g")


def test_shm_full_after_the_first_shard_was_replaced(cluster, tmp_path, monkeypatch, sharded):
    """/dev/shm fills up right after the helper renamed its first shard
    over the old one: the rest fail (ENOSPC). Nothing served that the
    manifest does not record; every served file right; the manifest
    readable and consistent; the next stage (space back) stages all."""
    node, paths, policy, sh = cold_sharded(cluster, tmp_path, N)
    new = _more(tmp_path)
    filler = f"{node.shm}/rt9-filler"
    flag, hook = _setup_hook(node, f"head -c 100000000 /dev/zero > {filler}")
    patch_helper_source(monkeypatch, AFTER_RENAME_SRC % {"flag": flag, "hook": hook, "after": 1})
    calls = _spy_writes(monkeypatch)
    try:
        rep = stage(cluster, policy, paths + new, tmp_path / "memo")["rig-a"]
        assert node.run(f"test -e {flag}", check=False).returncode != 0, "the fill was never injected"
        assert calls, "shards were not written through the helper"
        node.run(f"rm -f {filler}")
        print(rep.status, rep.reason, rep.warnings, len(rep.staged))
        assert check_served(node, rep, paths + new) == []
        assert unrecorded_served(node, rep) == [], "served from key directories the manifest does not record"
        assert_consistent(node, leftovers_ok=True)
    finally:
        node.run(f"rm -f {filler} {flag} {hook}", check=False)
    rep = stage(cluster, policy, paths + new, tmp_path / "memo")["rig-a"]
    assert rep.status == "ok", rep.to_dict()
    assert check_served(node, rep, paths + new, expect_all=True) == []
    assert unrecorded_served(node, rep) == []
    assert_consistent(node, leftovers_ok=True)


def test_shard_dir_swapped_for_a_symlink_right_before_the_write(cluster, tmp_path, monkeypatch, sharded):
    """Right before the helper writes the changed shards, the shard
    directory is replaced by a symlink to someone else's directory holding
    files named like the shards: those files are not prng-cache's and must
    never be replaced (the helper's entry listing refuses such swaps with
    O_NOFOLLOW; its shard writes go through the path)."""
    node, paths, policy, sh = cold_sharded(cluster, tmp_path, N)
    new = _more(tmp_path)
    root = root_of(node)
    shard_dir = f"{root}/{sh.dirname}"
    foreign = f"{node.shm}/rt9-foreign"
    node.run(f"rm -rf {foreign}; mkdir -p {foreign} && for i in $(seq 0 {sh.n - 1}); do "
             f"printf 'precious' > {foreign}/$(printf %04x $i).msgpack; done")
    flag, hook = _setup_hook(node, f"mv {q(shard_dir)} {q(shard_dir)}.moved && ln -s {foreign} {q(shard_dir)}")
    patch_helper_source(monkeypatch, BEFORE_SRC % {"flag": flag, "hook": hook})
    calls = _spy_writes(monkeypatch)
    try:
        rep = stage(cluster, policy, paths + new, tmp_path / "memo")["rig-a"]
        assert node.run(f"test -e {flag}", check=False).returncode != 0, "the swap was never injected"
        assert calls, "shards were not written through the helper"
        print(rep.status, rep.reason, rep.warnings, len(rep.staged))
        changed = node.run(f"cd {foreign} && for f in *; do [ \"$(cat $f)\" = precious ] || echo $f; done").stdout.split()
        assert changed == [], f"someone else's files replaced through the swapped shard directory: {changed}"
        assert check_served(node, rep, paths + new) == []
    finally:
        node.run(f"rm -rf {foreign} {flag} {hook}", check=False)


def test_shard_dir_removed_right_before_the_write(cluster, tmp_path, monkeypatch, sharded):
    """The shard directory vanishes right before the helper writes into it:
    no tmp left behind, nothing unrecorded served, the next stage whole."""
    node, paths, policy, sh = cold_sharded(cluster, tmp_path, N)
    new = _more(tmp_path)
    root = root_of(node)
    shard_dir = f"{root}/{sh.dirname}"
    flag, hook = _setup_hook(node, f"mv {q(shard_dir)} {node.shm}/rt9-gone-shards")
    patch_helper_source(monkeypatch, BEFORE_SRC % {"flag": flag, "hook": hook})
    calls = _spy_writes(monkeypatch)
    try:
        rep = stage(cluster, policy, paths + new, tmp_path / "memo")["rig-a"]
        assert node.run(f"test -e {flag}", check=False).returncode != 0, "the removal was never injected"
        assert calls, "shards were not written through the helper"
        print(rep.status, rep.reason, rep.warnings, len(rep.staged))
        assert check_served(node, rep, paths + new) == []
        assert unrecorded_served(node, rep) == [], "served from key directories the manifest does not record"
        assert not node.run(f"ls -A {q(root)} | grep manifest | grep '^.tmp-'", check=False).stdout.strip()
    finally:
        node.run(f"rm -rf {node.shm}/rt9-gone-shards {flag} {hook}", check=False)
    rep = stage(cluster, policy, paths + new, tmp_path / "memo")["rig-a"]
    assert rep.status == "ok", rep.to_dict()
    assert check_served(node, rep, paths + new, expect_all=True) == []
    assert_consistent(node, leftovers_ok=True)


@pytest.mark.parametrize("nth", [1, 2])
def test_helper_dies_mid_replace_with_a_tmp_created(cluster, tmp_path, monkeypatch, sharded, nth):
    """The helper dies right after creating the nth shard's tmp (before
    writing/renaming it): the coordinator falls back to SFTP for the same
    items. The stage must still commit (a helper's death is not the
    node's), every served file recorded and right, no tmp left over."""
    node, paths, policy, sh = cold_sharded(cluster, tmp_path, N)
    new = _more(tmp_path)
    root = root_of(node)
    flag = f"{node.shm}/rt9-die-flag"
    node.run(f"touch {flag}")
    patch_helper_source(monkeypatch, DIE_SRC % {"flag": flag, "nth": nth})
    calls = _spy_writes(monkeypatch)
    try:
        rep = stage(cluster, policy, paths + new, tmp_path / "memo")["rig-a"]
        assert node.run(f"test -e {flag}", check=False).returncode != 0, "the death was never injected"
        assert calls, "shards were not written through the helper"
        assert check_served(node, rep, paths + new) == []
        assert unrecorded_served(node, rep) == [], "served from key directories the manifest does not record"
        assert rep.status == "ok" and len(rep.staged) == len(paths + new), (
            rep.status, rep.reason, rep.warnings, len(rep.staged))
        left = node.run(f"ls -A {q(root)} | grep '^.tmp-' || true").stdout.split()
        assert left == [], f"tmp files left by the dead helper: {left}"
        assert_consistent(node)
    finally:
        node.run(f"rm -f {flag}", check=False)


def test_two_coordinators_commit_to_one_sharded_root_at_once(cluster, tmp_path, monkeypatch, sharded):
    """Two stages (separate connections, helpers, memos) add different new
    inputs to one sharded root at the same moment: both commit under the
    lock; the manifest records both; everything served is right."""
    node, paths, policy, sh = cold_sharded(cluster, tmp_path, N)
    a = many_files(tmp_path / "in", 80, prefix="a")
    b = many_files(tmp_path / "in", 80, prefix="b")
    reps = {}

    def run(tag, ps):
        reps[tag] = stage(cluster, policy, ps, tmp_path / f"memo-{tag}")["rig-a"]
    ts = [threading.Thread(target=run, args=("a", paths[:50] + a)), threading.Thread(target=run, args=("b", paths[50:100] + b))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert reps["a"].status == "ok" and reps["b"].status == "ok", (reps["a"].to_dict(), reps["b"].to_dict())
    assert check_served(node, reps["a"], paths[:50] + a, expect_all=True) == []
    assert check_served(node, reps["b"], paths[50:100] + b, expect_all=True) == []
    m = assert_consistent(node)
    assert len(m.entries) == N + 160
    assert unrecorded_served(node, reps["a"]) == [] and unrecorded_served(node, reps["b"]) == []
