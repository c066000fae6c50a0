"""Red team 8, change 1: the warm-stage survey (the node's helper lstats only
the files the manifest records for each entry, and reuses the root
listing's lstat of each entry directory). Real sshd nodes, real files; the
only injection is the MOMENT a node command runs (rt8_common.survey_hook)."""
from __future__ import annotations

import os
import threading

import pytest

from rt8_common import (N, entry_of, many_files, node_bytes, q, served_problem, stage, survey_hook)
from test_faults import NODES, cluster, make_policy, root_of  # noqa: F401

from prng_cache import manifest as manifest_mod
from prng_cache.cluster import Node
from prng_cache.maintenance import gc_node
from prng_cache.nodeops import run_on_node
from prng_cache.transport.ssh import SSHTransport

H = NODES[0]


def _all_served_good(cluster, reps, paths, hosts=(H,)):
    for h in hosts:
        node = cluster[h]
        for p in paths:
            ram = reps[h].staged.get(str(p))
            if ram is not None:
                assert served_problem(node, ram, p.read_bytes()) is None, (h, p, ram)


# ----------------------------------------------------------------- during a stage
DURING = {
    # the entry directory swapped for a symlink to a copy (same files: ours,
    # one link each, right size) after the root listing, before the files'
    # lstats: the per-file lstat goes THROUGH the symlink
    "entry-dir-symlink": lambda e, f: f"cp -a {q(e)} {q(e)}.real && rm -rf {q(e)} && ln -s {q(e)}.real {q(e)}",
    # the served file swapped for a symlink
    "file-symlink": lambda e, f: f"cp {q(f)} {q(e)}/.x && rm -f {q(f)} && ln -s {q(e)}/.x {q(f)}",
    # a second link made to the served file
    "file-hardlink": lambda e, f: f"ln {q(f)} {q(e)}/../rt8-hl",
    # the served file truncated
    "file-truncated": lambda e, f: f"chmod u+w {q(f)} && truncate -s 3 {q(f)}",
    # the entry directory removed (as a gc burying it would)
    "entry-removed": lambda e, f: f"rm -rf {q(e)}",
    # the entry directory replaced by a file
    "entry-is-file": lambda e, f: f"rm -rf {q(e)} && echo x > {q(e)}",
}


@pytest.mark.parametrize("kind", sorted(DURING))
def test_tamper_between_root_listing_and_file_lstats(cluster, tmp_path, monkeypatch, kind):
    """A node command run inside the helper's survey, right after it listed
    the root (and lstat'ed every entry directory there), before it lstats
    the entries' files. Whatever the stage serves must be a good file
    reached without a symlink."""
    policy = make_policy(cluster, tmp_path)
    paths = many_files(tmp_path / "in")
    reps = stage(cluster, policy, paths, tmp_path / "memo")
    assert reps[H].status == "ok" and len(reps[H].staged) == N, reps[H]
    node = cluster[H]
    victim = paths[5]
    ram = reps[H].staged[str(victim)]
    entry = entry_of(ram)
    hook = f"{node.shm}/rt8-hook.sh"
    node.run(f"printf '%s\\n' {q(DURING[kind](entry, ram))} > {q(hook)}")
    with survey_hook(monkeypatch, hook):
        reps = stage(cluster, policy, paths, tmp_path / "memo")
    assert node.run(f"test -e {q(hook)}", check=False).returncode != 0, "the hook did not run"
    rep = reps[H]
    # ok, or only the victim left out (what is there now is not provably ours)
    assert rep.status == "ok" or set(rep.skipped) == {str(victim)}, (rep.status, rep.reason, rep.skipped)
    _all_served_good(cluster, reps, paths)
    if str(victim) in rep.staged:
        assert served_problem(node, rep.staged[str(victim)], victim.read_bytes()) is None
        # served: never through the planted link
        assert node.run(f"test -L {q(entry)}", check=False).returncode != 0 or \
            rep.staged[str(victim)] != ram, f"{kind}: served through the symlinked entry {entry}"


# ----------------------------------------------------------------- hostile names
HOSTILE = [
    "new\nline.npz", "-rf.npz", "--", " lead and trail ", "sp ace.npz", "ünïcødé-€.npz",
    "x" * 251 + ".npz",           # 255 bytes
    "日本" * 42 + "語",            # 85 characters, 255 bytes
    "*?[a].npz", "'quote\".npz", "tab\there.npz", "back\\slash.npz", "%s%n.npz", "..npz",
]


def test_hostile_names_are_served_and_tampering_found_through_the_survey(cluster, tmp_path):
    policy = make_policy(cluster, tmp_path)
    d = tmp_path / "in"
    paths = many_files(d)
    hostile = []
    for i, name in enumerate(HOSTILE):
        sub = tmp_path / f"h{i}"
        sub.mkdir()
        p = sub / name
        p.write_bytes(os.urandom(100) + name.encode())
        hostile.append(p)
    # a name that is not UTF-8: cannot be cached (the job keeps its path)
    raw = os.fsdecode(os.path.join(os.fsencode(str(tmp_path)), b"bad\xff\xfe.npz"))
    with open(raw, "wb") as f:
        f.write(b"not utf-8 named")
    from pathlib import Path
    everything = paths + hostile + [Path(raw)]
    reps = stage(cluster, policy, everything, tmp_path / "memo")
    rep = reps[H]
    assert rep.status == "ok", (rep.status, rep.reason, rep.skipped, rep.warnings)
    assert raw not in rep.staged
    for p in hostile:
        assert str(p) in rep.staged, (p, rep.skipped.get(str(p)))
    _all_served_good(cluster, reps, everything)
    node = cluster[H]
    # tamper every hostile-named file a different way; warm stage through the survey
    ways = ["rm -f {f}", "chmod u+w {f} && truncate -s 1 {f}", "cp {f} {e}/.c{i} && rm -f {f} && ln -s {e}/.c{i} {f}",
            "ln {f} {e}/../rt8-hl-{i}"]
    for i, p in enumerate(hostile):
        ram = rep.staged[str(p)]
        node.run(ways[i % len(ways)].format(f=q(ram), e=q(entry_of(ram)), i=i))
    reps = stage(cluster, policy, everything, tmp_path / "memo")
    rep = reps[H]
    assert rep.status == "ok", (rep.status, rep.reason, rep.skipped, rep.warnings)
    _all_served_good(cluster, reps, everything)
    for p in hostile:
        assert str(p) in rep.staged or str(p) in rep.skipped, p
    # untouched ones still served
    assert all(str(p) in rep.staged for p in paths)


def _same_content(tmp_path, names):
    data = os.urandom(300)
    out = []
    for n in names:
        sub = tmp_path / f"s-{n}"
        sub.mkdir()
        (sub / n).write_bytes(data)
        out.append(sub / n)
    return out


def test_one_entry_many_names_some_gone_extras_planted(cluster, tmp_path):
    """One content under several names: the manifest records them all in
    one entry. On the node: one recorded name deleted, an unrecorded file
    and symlinks planted. Each input gets good bytes or is restaged/skipped;
    nothing through a planted link; the other inputs are unaffected."""
    policy = make_policy(cluster, tmp_path)
    paths = many_files(tmp_path / "in")
    same = _same_content(tmp_path, ["a.npz", "b.npz", "c.npz", "d.npz"])
    everything = paths + same
    reps = stage(cluster, policy, everything, tmp_path / "memo")
    rep = reps[H]
    assert rep.status == "ok" and all(str(p) in rep.staged for p in same), rep
    entries = {entry_of(rep.staged[str(p)]) for p in same}
    assert len(entries) == 1, entries
    e = entries.pop()
    node = cluster[H]
    node.run(f"cd {q(e)} && rm -f b.npz && printf planted > e.npz && ln -s a.npz f.npz && ln -s /etc/passwd g.npz")
    reps = stage(cluster, policy, everything, tmp_path / "memo")
    rep = reps[H]
    assert rep.status == "ok", (rep.status, rep.reason, rep.skipped, rep.warnings)
    _all_served_good(cluster, reps, everything)
    assert all(str(p) in rep.staged for p in everything)


@pytest.mark.parametrize("n", [20, N])
def test_a_recorded_name_replaced_by_a_directory_fails_only_that_input(cluster, tmp_path, n):
    """One entry holds one content under two names; on the node one of them
    (b.npz) is deleted and the other (c.npz) replaced by a directory. The
    stage restages the entry and renames the fresh files into the existing
    directory one by one (store._merge): b.npz moves, c.npz cannot (a
    directory is in the way) and _merge re-raises. Expected: that one input
    is restaged or left out; every other input of the node still served."""
    policy = make_policy(cluster, tmp_path)
    paths = many_files(tmp_path / "in", n=n)
    same = _same_content(tmp_path, ["a.npz", "b.npz", "c.npz"])
    everything = paths + same
    reps = stage(cluster, policy, everything, tmp_path / "memo")
    rep = reps[H]
    assert rep.status == "ok" and all(str(p) in rep.staged for p in same), rep
    e = entry_of(rep.staged[str(same[0])])
    node = cluster[H]
    node.run(f"cd {q(e)} && rm -f b.npz c.npz && mkdir c.npz")
    reps = stage(cluster, policy, everything, tmp_path / "memo")
    rep = reps[H]
    assert rep.status in ("ok", "fallback"), (rep.status, rep.reason)
    assert all(str(p) in rep.staged for p in paths), (rep.status, rep.reason)
    _all_served_good(cluster, reps, everything)


def test_sharded_manifest_warm_survey_finds_tampering(cluster, tmp_path, monkeypatch):
    monkeypatch.setattr(manifest_mod, "SHARD_MIN", 64)
    monkeypatch.setattr(manifest_mod, "SHARD_FILL", 8)
    policy = make_policy(cluster, tmp_path)
    paths = many_files(tmp_path / "in", n=N + 60)
    reps = stage(cluster, policy, paths, tmp_path / "memo")
    rep = reps[H]
    assert rep.status == "ok" and len(rep.staged) == len(paths), rep
    node = cluster[H]
    assert node.run(f"ls -d {q(root_of(node))}/.manifest-*", check=False).returncode == 0, "not sharded"
    victims = paths[3:9]
    cmds = []
    for i, p in enumerate(victims):
        ram = rep.staged[str(p)]
        e = entry_of(ram)
        cmds.append([f"rm -f {q(ram)}", f"cp {q(ram)} {q(e)}/.x && rm -f {q(ram)} && ln -s {q(e)}/.x {q(ram)}",
                     f"ln {q(ram)} {q(e)}.hl", f"chmod u+w {q(ram)} && truncate -s 2 {q(ram)}",
                     f"rm -rf {q(e)} && echo x > {q(e)}",
                     f"cp -a {q(e)} {q(e)}.real && rm -rf {q(e)} && ln -s {q(e)}.real {q(e)}"][i])
    node.run(" && ".join(cmds))
    reps = stage(cluster, policy, paths, tmp_path / "memo")
    rep = reps[H]
    _all_served_good(cluster, reps, paths)
    assert all(str(p) in rep.staged for p in paths if p not in victims)


def test_gc_all_right_after_the_survey(cluster, tmp_path, monkeypatch):
    """`gc --all` (no lease protects a finished stage's entries) runs on the
    node right after the warm stage's survey: every RAM path the stage then
    gives must exist and hold the right bytes."""
    policy = make_policy(cluster, tmp_path)
    paths = many_files(tmp_path / "in")
    reps = stage(cluster, policy, paths, tmp_path / "memo")
    assert len(reps[H].staged) == N
    orig = SSHTransport.survey
    ran = []

    def survey(self, parent, paths_, children=None):
        out = orig(self, parent, paths_, children)
        if not ran:
            ran.append(run_on_node(Node(H, cluster.user), policy, lambda s: gc_node(s, remove_all=True)))
        return out
    monkeypatch.setattr(SSHTransport, "survey", survey)
    reps = stage(cluster, policy, paths, tmp_path / "memo")
    assert ran and ran[0].removed, ran
    rep = reps[H]
    node = cluster[H]
    bad = [(p, served_problem(node, rep.staged[str(p)], p.read_bytes()))
           for p in paths if str(p) in rep.staged]
    bad = [b for b in bad if b[1] is not None]
    assert not bad, f"{len(bad)} RAM path(s) given after gc removed them: {bad[:3]}"


def test_concurrent_gc_loop_during_warm_stages(cluster, tmp_path):
    """gc --all in a loop from another thread (its own connection) while
    warm stages run: each stage's RAM paths are good when it returns (its
    lease protects them), or the input is not given."""
    policy = make_policy(cluster, tmp_path)
    paths = many_files(tmp_path / "in")
    stage(cluster, policy, paths, tmp_path / "memo")
    stop = threading.Event()
    errors = []

    def gc_loop():
        while not stop.is_set():
            r = run_on_node(Node(H, cluster.user), policy, lambda s: gc_node(s, remove_all=True))
            if not hasattr(r, "removed"):
                errors.append(r)
    th = threading.Thread(target=gc_loop, daemon=True)
    th.start()
    try:
        for _ in range(3):
            reps = stage(cluster, policy, paths, tmp_path / "memo")
            rep = reps[H]
            node = cluster[H]
            for p in paths[::7]:
                if str(p) in rep.staged and rep.status == "ok":
                    got = node_bytes(node, rep.staged[str(p)])
                    # a finished stage's lease may end: gc may take it right after;
                    # it must never hold OTHER bytes
                    assert got is None or got == p.read_bytes(), p
    finally:
        stop.set()
        th.join(10)
