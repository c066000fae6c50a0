"""Red team 10: the parsed ssh config cached per process by file identity
(target._load_ssh_config, key (path, dev, ino, size, mtime_ns, ctime_ns)).

The next resolve after an edit must see the edit (or fail with the same
clear error as before): a stale config sends a stage to the wrong node,
with the wrong user, key or jump host, for the rest of a long-lived
coordinator's life. Each test ends on a real connection to the node the
config names now."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from rt10_common import cluster, src  # noqa: F401 - fixtures

from prng_cache.errors import TransportError
from prng_cache.policy import TransportPolicy
from prng_cache.transport.ssh import SSHTransport
from prng_cache.transport.ssh import target as tg
from prng_cache.transport.ssh.target import resolve_target

REPO = Path(__file__).resolve().parent.parent


def stanza(cluster, alias: str, node_name: str, pad_to: int | None = None, extra: str = "") -> str:
    """One Host block for ``alias`` pointing at ``node_name`` (padded with a
    comment to ``pad_to`` bytes: edits of the same size)."""
    n = cluster[node_name]
    text = (f"Host {alias}\n    HostName {n.address}\n    Port {n.port}\n    User {cluster.user}\n"
            f"    IdentityFile {cluster.client_key}\n    IdentitiesOnly yes\n"
            f"    UserKnownHostsFile {cluster.known_hosts}\n    StrictHostKeyChecking yes\n{extra}")
    if pad_to is not None:
        assert len(text) + 3 <= pad_to, (len(text), pad_to)
        text += "#" + "x" * (pad_to - len(text) - 2) + "\n"
        assert len(text) == pad_to
    return text


def peer_port(cluster, policy, alias: str) -> int:
    """Connect for real and say which sshd answered (its port)."""
    with SSHTransport(alias, cluster.user, settings=policy) as t:
        t.connect()
        return t._conn.client.get_transport().getpeername()[1]


@pytest.fixture(autouse=True)
def _fresh_cache(monkeypatch):
    monkeypatch.setattr(tg, "_parsed", {})
    yield


# ----------------------------------------------------------------- FOUND 1
SAME_TICK_SCRIPT = r'''
import json, os, sys
from prng_cache.policy import TransportPolicy
from prng_cache.transport.ssh import SSHTransport
from prng_cache.transport.ssh import target as tg
from prng_cache.transport.ssh.target import resolve_target

cfg, a_text, b_text, user = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
pol = TransportPolicy(ssh_config=cfg, connect_timeout=5.0)

def write(text):  # in place, as an editor saving over the file or `cat > config` does
    with open(cfg, "w") as f:
        f.write(text)

def ident(st):
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

out = {"collided": False}
for attempt in range(500):
    tg._parsed.clear()
    write(a_text)
    first = resolve_target("rig-x", settings=pol).port  # parsed and cached
    s1 = os.stat(cfg)
    write(b_text)  # the edit: same size, within the file system's timestamp tick
    s2 = os.stat(cfg)
    if ident(s1) != ident(s2):
        continue
    out.update(collided=True, attempt=attempt, first=first,
               second=resolve_target("rig-x", settings=pol).port)
    with SSHTransport("rig-x", user, settings=pol) as t:
        t.connect()
        out["peer"] = t._conn.client.get_transport().getpeername()[1]
    break
print(json.dumps(out))
'''


def test_an_edit_within_the_same_timestamp_tick_is_seen(cluster, tmp_path):
    """A file system whose timestamps are coarse (every kernel before 6.13
    on ext4/xfs/tmpfs, NFS homes; ramfs still: here, in a private mount
    namespace) gives an in-place edit of the same size made in the same
    clock tick (~4 ms) the same (dev, ino, size, mtime_ns, ctime_ns): the
    config parsed before the edit is used for the rest of the process. The
    hash memo knows this ("racy" timestamps, README); the config cache
    does not."""
    if not shutil.which("unshare"):
        pytest.skip("no unshare")
    mnt = tmp_path / "coarse"
    mnt.mkdir()
    size = 400
    a = stanza(cluster, "rig-x", "rig-a", size)
    b = stanza(cluster, "rig-x", "rig-b", size)
    script = tmp_path / "same_tick.py"
    script.write_text(SAME_TICK_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = (f"mount -t ramfs rt10 {mnt} || exit 99; "
           f"exec {sys.executable} \"$@\"")
    p = subprocess.run(["unshare", "-m", "sh", "-c", cmd, "sh", str(script), str(mnt / "ssh_config"), a, b,
                        cluster.user], capture_output=True, text=True, env=env, timeout=60)
    if p.returncode == 99:
        pytest.skip(f"cannot mount ramfs in a private namespace: {p.stderr}")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    if not out["collided"]:
        pytest.skip("no two edits in one timestamp tick here")
    assert out["first"] == cluster["rig-a"].port
    assert (out["second"], out["peer"]) == (cluster["rig-b"].port,) * 2, (
        f"config edited in the same tick (attempt {out['attempt']}): the stale one was used, "
        f"rig-x still goes to rig-a's sshd ({out})")


# ----------------------------------------------------------------- FOUND 2
def test_a_symlinked_config_switched_while_it_is_read_is_not_cached_under_the_other_file(cluster, tmp_path,
                                                                                        monkeypatch):
    """~/.ssh/config as a symlink to one of two profiles (``ln -sfn``).
    _load_ssh_config stats the path, then parses it by name: a switch in
    between caches profile B's settings under profile A's identity (only
    the moment of the switch is injected: right after that stat). When
    the link points at A again (the file unchanged since), A's identity is
    found and B's settings are used: rig-x goes to the wrong node for the
    rest of the process."""
    a, b = tmp_path / "profile_a", tmp_path / "profile_b"
    a.write_text(stanza(cluster, "rig-x", "rig-a"))
    b.write_text(stanza(cluster, "rig-x", "rig-b"))
    link = tmp_path / "config"
    link.symlink_to(a)
    policy = cluster.policy(ssh_config=str(link))

    def switch(to):
        tmp = tmp_path / "config.new"
        tmp.symlink_to(to)
        os.replace(tmp, link)

    real_stat = os.stat
    fired = []

    def stat_then_switch(path, *a, **kw):
        st = real_stat(path, *a, **kw)
        if os.fspath(path) == str(link) and not fired:  # the user switches profiles right after the stat
            fired.append(1)
            switch(b)
        return st
    monkeypatch.setattr(os, "stat", stat_then_switch)
    resolve_target("rig-x", settings=policy)  # whichever it says: the switch was concurrent
    assert fired
    monkeypatch.setattr(os, "stat", real_stat)
    switch(a)  # back to profile A, which never changed
    t = resolve_target("rig-x", settings=policy)
    assert t.port == cluster["rig-a"].port, "profile B's settings were cached under profile A's file identity"
    assert peer_port(cluster, policy, "rig-x") == cluster["rig-a"].port


# ------------------------------------------------------------------- held
def _mutations():
    return ["same-size-mtime-restored", "rename-replace", "symlink-swap", "rename-replace-mtime-restored",
            "deleted", "directory", "truncated-to-empty", "copy-p-over"]


@pytest.mark.parametrize("how", _mutations())
def test_the_next_stage_uses_the_edited_config(cluster, tmp_path, how):
    size = 420
    a_text = stanza(cluster, "rig-x", "rig-a", size)
    b_text = stanza(cluster, "rig-x", "rig-b", size)
    cfg = tmp_path / "ssh_config"
    real_a = tmp_path / "real_a"
    if how == "symlink-swap":
        real_a.write_text(a_text)
        cfg.symlink_to(real_a)
    else:
        cfg.write_text(a_text)
    policy = cluster.policy(ssh_config=str(cfg))
    assert peer_port(cluster, policy, "rig-x") == cluster["rig-a"].port
    for _ in range(3):
        resolve_target("rig-x", settings=policy)
    st = os.stat(cfg)
    if how == "same-size-mtime-restored":
        cfg.write_text(b_text)
        os.utime(cfg, ns=(st.st_atime_ns, st.st_mtime_ns))
    elif how in ("rename-replace", "rename-replace-mtime-restored"):
        new = tmp_path / "ssh_config.tmp"
        new.write_text(b_text)
        if how.endswith("restored"):
            os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(new, cfg)
    elif how == "symlink-swap":
        real_b = tmp_path / "real_b"
        real_b.write_text(b_text)
        tmp = tmp_path / "lnk"
        tmp.symlink_to(real_b)
        os.replace(tmp, cfg)
    elif how == "copy-p-over":
        src = tmp_path / "other"
        src.write_text(b_text)
        os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
        shutil.copy2(src, cfg)
    elif how == "deleted":
        cfg.unlink()
    elif how == "directory":
        cfg.unlink()
        cfg.mkdir()
    elif how == "truncated-to-empty":
        cfg.write_text("")
    if how in ("deleted", "directory", "truncated-to-empty"):
        # no config: rig-x is used as the host name itself, as before the cache
        t = resolve_target("rig-x", settings=policy)
        assert (t.hostname, t.port) == ("rig-x", 22), t
        with pytest.raises(TransportError):
            peer_port(cluster, policy, "rig-x")
        return
    assert resolve_target("rig-x", settings=policy).port == cluster["rig-b"].port
    assert peer_port(cluster, policy, "rig-x") == cluster["rig-b"].port


def test_a_config_made_unparsable_says_so_every_time_then_recovers(cluster, tmp_path):
    cfg = tmp_path / "ssh_config"
    cfg.write_text(stanza(cluster, "rig-x", "rig-a"))
    policy = cluster.policy(ssh_config=str(cfg))
    assert peer_port(cluster, policy, "rig-x") == cluster["rig-a"].port
    cfg.write_text("Host rig-x\n  Port\n")
    for _ in range(2):  # the error is not cached as a success, nor the old config used
        with pytest.raises(TransportError, match="cannot parse ssh config"):
            resolve_target("rig-x", settings=policy)
    cfg.write_text(stanza(cluster, "rig-x", "rig-c"))
    assert peer_port(cluster, policy, "rig-x") == cluster["rig-c"].port


def test_many_node_threads_resolving_while_the_config_is_replaced(cluster, tmp_path):
    """16 node threads resolving concurrently while the config is replaced
    (rename) back and forth; once the last replacement is done every
    thread's next resolve sees it. The shared parsed object is never
    corrupted by concurrent lookups (identity files, jump chains)."""
    cfg = tmp_path / "ssh_config"
    texts = {
        "a": stanza(cluster, "rig-x", "rig-a", extra="    IdentityFile ~/.ssh/id_extra_a\n")
        + stanza(cluster, "rig-y", "rig-b", extra="    ProxyJump rig-x\n"),
        "b": stanza(cluster, "rig-x", "rig-b", extra="    IdentityFile ~/.ssh/id_extra_b\n")
        + stanza(cluster, "rig-y", "rig-c", extra="    ProxyJump rig-x\n"),
    }
    cfg.write_text(texts["a"])
    policy = cluster.policy(ssh_config=str(cfg))
    stop = threading.Event()
    problems: list = []

    def worker():
        while not stop.is_set():
            try:
                x = resolve_target("rig-x", settings=policy)
                y = resolve_target("rig-y", settings=policy)
            except Exception as e:  # noqa: BLE001
                problems.append(repr(e))
                return
            # each lookup is internally consistent: never two identity files
            # from one stanza, never a list grown by another thread
            if len(x.identity_files) != 2 or len(y.jumps) != 1 or len(y.jumps[0].identity_files) != 2:
                problems.append((x, y))
                return
    threads = [threading.Thread(target=worker) for _ in range(16)]
    for th in threads:
        th.start()
    try:
        for i in range(60):
            new = tmp_path / f"cfg.{i}"
            new.write_text(texts["ab"[i % 2]])
            os.replace(new, cfg)
    finally:
        stop.set()
        for th in threads:
            th.join(10)
    assert problems == []
    # last written: texts["b"] (i = 59)
    results = []

    def final():
        results.append((resolve_target("rig-x", settings=policy).port,
                        resolve_target("rig-y", settings=policy).port))
    threads = [threading.Thread(target=final) for _ in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(10)
    assert set(results) == {(cluster["rig-b"].port, cluster["rig-c"].port)}, set(results)
    assert peer_port(cluster, policy, "rig-x") == cluster["rig-b"].port


def test_proxyjump_and_match_edits_are_seen(cluster, tmp_path):
    """A ProxyJump turned on and off again, and a Match block's settings,
    follow the file; a lookup's options are the caller's own copy."""
    cfg = tmp_path / "ssh_config"
    base = stanza(cluster, "rig-a", "rig-a") + stanza(cluster, "rig-x", "rig-b")
    cfg.write_text(base.replace("Host rig-x\n", "Host rig-x\n    ProxyJump rig-a\n"))
    policy = cluster.policy(ssh_config=str(cfg))
    t = resolve_target("rig-x", settings=policy)
    assert [h.port for h in t.jumps] == [cluster["rig-a"].port]
    # the caller mutating what a lookup returned does not reach the cache
    o = tg._load_ssh_config(str(cfg), "rig-x").lookup("rig-x")
    o["identityfile"].append("/evil")
    o["port"] = "1"
    assert "/evil" not in resolve_target("rig-x", settings=policy).identity_files
    cfg.write_text(base)  # no more jump
    t = resolve_target("rig-x", settings=policy)
    assert t.jumps == () and t.port == cluster["rig-b"].port
    cfg.write_text(f"Match host rig-x\n    Port {cluster['rig-c'].port}\n    HostName {cluster['rig-c'].address}\n"
                   + base)
    t = resolve_target("rig-x", settings=policy)
    assert (t.hostname, t.port) == (cluster["rig-c"].address, cluster["rig-c"].port)
    assert peer_port(cluster, policy, "rig-x") == cluster["rig-c"].port


def test_coordinator_plugin_runs_follow_an_edited_config(cluster, tmp_path, src):
    """The coordinator's plugin (one long-lived process, run after run):
    the second run's jobs go to the node the edited config names."""
    from prng_cache.plugin import PrngCachePlugin
    from prng_cache.policy import InputsPolicy, NodeOverride, Policy
    cfg = tmp_path / "ssh_config"
    size = 420
    cfg.write_text(stanza(cluster, "rig-x", "rig-a", size))
    policy = Policy(inputs=InputsPolicy(min_jobs=1, base_dir=str(src)),
                    transport=cluster.policy(ssh_config=str(cfg), connect_timeout=5.0),
                    nodes=(NodeOverride("rig-x", cache_root="/dev/shm/prng"),))
    jobs = [{"job_id": f"t{i}", "script": "w.py", "args": ["survivors.npz", "--train-history",
                                                          str(src / "train_history.json")],
             "expected_output": f"out_{i}.json", "timeout": 60} for i in range(2)]
    nodes = [{"hostname": "rig-x", "script_path": str(src)}]
    served_on = []
    for run, target in (("run-1", "rig-a"), ("run-2", "rig-b")):
        if run == "run-2":
            st = os.stat(cfg)
            cfg.write_text(stanza(cluster, "rig-x", "rig-b", size))
            os.utime(cfg, ns=(st.st_atime_ns, st.st_mtime_ns))
        p = PrngCachePlugin(policy)
        p.coordinator_run_start(run_id=run, nodes=nodes, jobs=jobs, assignments={"rig-x": jobs})
        args = p.coordinator_job_args(node=nodes[0], job=jobs[0])
        rep = p.coordinator_run_end(run_id=run, results={})
        assert rep["nodes"]["rig-x"]["status"] == "ok", rep
        assert args and args[0].startswith("/dev/shm/prng/"), args
        holders = [n.name for n in cluster if n.exists(args[0])]
        served_on.append(holders)
        assert target in holders, (run, args[0], holders)
    assert served_on[1] == ["rig-b"] or "rig-b" in served_on[1]
