"""Issue 6, reliability and security: one test per failure case, on the real
sshd test cluster (prng_cache/testing/sshcluster.py). The cache must never be the reason a
job fails, reads stale or foreign data, or a node's data is lost.

The README's "Failure behaviour" table lists each case, what prng-cache does,
and the test here (or elsewhere) that shows it. Faults are real (a killed
sshd, a remounted tmpfs, a full tmpfs, SIGKILLed processes, planted links);
wrappers around the transport are used only to hit a precise moment.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import msgpack
import pytest
import yaml
from coordinator_env import CoordinatorEnv

from prng_cache import cli
from prng_cache.cluster import Node
from prng_cache.hashing import Hasher
from prng_cache.inputs import discover
from prng_cache.localstate import CacheIdRecord
from prng_cache.maintenance import gc_node, verify_node
from prng_cache.manifest import MANIFEST_NAME, Manifest, decode, decode_files, is_key
from prng_cache.nodeops import run_on_node
from prng_cache.plugin import PrngCachePlugin
from prng_cache.policy import CapacityPolicy, GcPolicy, InputsPolicy, NodeOverride, Policy, load_policy
from prng_cache.reports import NodeReport
from prng_cache.staging import held_inputs, stage_cluster
from prng_cache.store import LeaseRequest, NodeStore
from prng_cache.testing.faults import Tap
from prng_cache.transport.ssh import SSHTransport

REPO = Path(__file__).resolve().parent.parent
NODES = ("rig-a", "rig-b", "rig-c")
q = shlex.quote
_OPEN_WRITE = SSHTransport.open_write


# ------------------------------------------------------------------ helpers
def root_of(node) -> str:
    return f"{node.shm}/prng"


def make_policy(cluster, base_dir, *, gc: GcPolicy | None = None, capacity: CapacityPolicy | None = None,
                **transport) -> Policy:
    transport.setdefault("connect_timeout", 3.0)
    return Policy(
        inputs=InputsPolicy(min_jobs=1, base_dir=str(base_dir)),
        capacity=capacity or CapacityPolicy(),
        gc=gc or GcPolicy(),
        transport=cluster.policy(**transport),
        nodes=tuple(NodeOverride(n.name, cache_root=root_of(n)) for n in cluster),
    )


def write_policy_yaml(cluster, path: Path, base_dir, **sections) -> Path:
    """The same policy as a cache_policy.yaml, for the CLI."""
    doc = {
        "inputs": {"min_jobs": 1, "base_dir": str(base_dir)},
        "transport": {"ssh_config": str(cluster.ssh_config), "known_hosts": str(cluster.known_hosts),
                      "connect_timeout": "3s"},
        "nodes": {n.name: {"cache_root": root_of(n)} for n in cluster},
    }
    for name, body in sections.items():
        doc.setdefault(name, {}).update(body)
    path.write_text(yaml.safe_dump(doc))
    return path


def jobs_for(paths, n: int = 1) -> list[dict]:
    """n jobs that all read every path (positional arguments)."""
    return [{"job_id": f"j{i}", "script": "w.py", "args": [str(p) for p in paths],
             "expected_output": f"out_{i}.json", "timeout": 60} for i in range(n)]


def bundles_of(paths, base_dir, companions=()):
    disc = discover(jobs_for(paths), InputsPolicy(min_jobs=1, companions=tuple(companions)), str(base_dir))
    return [disc.bundles[str(p)] for p in paths if str(p) in disc.bundles], disc


def stage(cluster, policy, bundles, hosts=NODES, **kw) -> dict[str, NodeReport]:
    return stage_cluster([Node(h) for h in hosts], lambda n: list(bundles), policy, **kw)


def node_bytes(node, path: str) -> bytes:
    """A file's bytes as the node sees them (read in its namespace)."""
    return base64.b64decode(node.run(f"base64 -w0 -- {q(path)}").stdout)


def node_names(node, path: str) -> list[str]:
    """Entries of a directory on the node (any name, newlines included)."""
    r = node.run(f"find {q(path)} -mindepth 1 -maxdepth 1 -printf '%P\\0'", check=False)
    return sorted(n for n in r.stdout.split("\0") if n) if r.returncode == 0 else []


def node_manifest(node) -> Manifest:
    """The node's manifest, shards included (all read in one command)."""
    root = root_of(node)
    out = node.run(f"cd {q(root)} && for f in {MANIFEST_NAME} .manifest-*/*; do "
                   f"[ -f \"$f\" ] && printf '%s ' \"$f\" && base64 -w0 -- \"$f\" && echo; done; true").stdout
    files = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    m, why = decode_files(lambda name: base64.b64decode(files[name]) if name in files else None)
    assert why is None, why
    return m


def assert_consistent(node, *, leftovers_ok: bool = False) -> Manifest:
    """The manifest matches the disk: every listed file is there with the
    recorded content, every hash directory is listed, nothing half-done."""
    root = root_of(node)
    m = node_manifest(node)
    names = node_names(node, root)
    assert sorted(n for n in names if is_key(n)) == sorted(m.entries), (names, sorted(m.entries))
    for key, e in m.entries.items():
        on_disk = node_names(node, f"{root}/{key}")
        for name, want in e.files.items():
            assert name in on_disk, (key, name, on_disk)
            assert Hasher(node_bytes(node, f"{root}/{key}/{name}")).hexdigest() == want, (key, name)
    if not leftovers_ok:
        assert not [n for n in names if n.startswith((".tmp-", ".trash-", ".lock"))], names
    return m


def store_for(cluster, policy, host):
    """A NodeStore over a fresh SSHTransport (caller closes the transport)."""
    from prng_cache.cluster import node_settings, open_transport

    node = Node(host)
    t = open_transport(node, policy)
    return NodeStore(t, node_settings(policy, node), policy.gc)


def run_cli(*args, tmp_path, check=None, timeout=120):
    env = dict(os.environ)
    for k in ("PRNG_CACHE", "USE_RAMDISK", "PRNG_CACHE_POLICY", "PRNG_CACHE_ROOT"):
        env.pop(k, None)
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    p = subprocess.run([sys.executable, "-m", "prng_cache", *map(str, args)], capture_output=True, text=True,
                       env=env, timeout=timeout)
    if check is not None:
        assert p.returncode == check, (p.returncode, p.stdout, p.stderr)
    return p


def tap_uploads(monkeypatch, match, after: int, action) -> list:
    """Make the first SSH upload to a path for which ``match(path)`` is true
    run ``action`` after ``after`` bytes. Returns the tapped paths."""
    orig = SSHTransport.open_write
    tapped: list[str] = []

    @contextlib.contextmanager
    def open_write(self, path, mode=0o600):
        with orig(self, path, mode) as f:
            if match(path) and not tapped:
                tapped.append(path)
                yield Tap(f, after, action)
            else:
                yield f

    monkeypatch.setattr(SSHTransport, "open_write", open_write)
    return tapped


@pytest.fixture
def cluster(ssh_cluster_clean, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    for k in ("PRNG_CACHE", "USE_RAMDISK", "PRNG_CACHE_POLICY", "PRNG_CACHE_ROOT"):
        monkeypatch.delenv(k, raising=False)
    return ssh_cluster_clean


@pytest.fixture
def src(tmp_path):
    d = tmp_path / "src"
    d.mkdir()
    (d / "survivors.npz").write_bytes(os.urandom(300_000))
    (d / "train_history.json").write_text(json.dumps(list(range(4000))))
    (d / "holdout_history.json").write_text(json.dumps(list(range(900))))
    return d


def _plugin_run(policy, hosts, jobs):
    """The plugin as the coordinator drives it: (plugin, seconds in run_start)."""
    nodes = [{"hostname": h, "script_path": "/tmp"} for h in hosts]
    assignments = {h: [j for i, j in enumerate(jobs) if i % len(hosts) == k] for k, h in enumerate(hosts)}
    p = PrngCachePlugin(policy)
    t0 = time.monotonic()
    p.coordinator_run_start(run_id="run-1", nodes=nodes, jobs=jobs, assignments=assignments)
    return p, time.monotonic() - t0, assignments


# ====================================================== 1. node unreachable
def test_unreachable_node_errors_others_stage_its_jobs_keep_args(cluster, tmp_path, monkeypatch):
    env = CoordinatorEnv(cluster, tmp_path, monkeypatch, connect_timeout="3s")
    cluster["rig-b"].stop()
    c, out, rep = env.run()
    assert out["failed"] == []
    nb = rep["nodes"]["rig-b"]
    # refused at once: no connect timeout was waited for (the mechanism, not
    # a duration; the silent-node test covers the timeout)
    assert nb["status"] == "error" and "refused" in nb["reason"] and "timed out" not in nb["reason"], nb
    assert rep["nodes"]["rig-a"]["status"] == "ok" and rep["nodes"]["rig-a"]["copied_files"] == 4
    sent = [(h, jid, args) for h, jid, args in c.commands]
    assert any(h == "rig-b" for h, _, _ in sent)
    for h, jid, args in sent:
        if h in ("rig-b", "localhost"):
            assert args == env.original[jid], (h, jid, args)  # original arguments
        else:
            assert any(str(a).startswith(root_of(cluster["rig-a"]) + "/") for a in args), (h, jid, args)
    env.check_reads(c, ram_hosts=None)  # rig-b's jobs were retried elsewhere


def test_silent_node_errors_within_connect_timeout(cluster, tmp_path, src):
    """A host that accepts TCP and never says a word (hung sshd, firewall
    black hole after accept): the stage gives up on it when connect_timeout
    fires, and the other nodes are staged meanwhile, not after it.

    Mechanism, not durations: the silent node comes first in the node list
    (one after another, rig-a would only start once the silent node was
    given up), and the silent "server" watches rig-a while the stager's
    connection to it is still open."""
    timeout = 5.0  # only a margin for rig-a to finish meanwhile on a busy machine
    manifest_a = f"{root_of(cluster['rig-a'])}/{MANIFEST_NAME}"
    seen = {"accepted": 0, "rig-a staged while silent pending": False, "hung up": False}

    def serve(sock):
        conn, _ = sock.accept()
        seen["accepted"] += 1
        conn.settimeout(0.05)
        with conn:
            while True:
                try:
                    if not conn.recv(4096):
                        break  # the stager gave up on us
                except socket.timeout:
                    if not seen["rig-a staged while silent pending"]:
                        seen["rig-a staged while silent pending"] = cluster["rig-a"].exists(manifest_a)
                except OSError:
                    break
        seen["hung up"] = True

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        server = threading.Thread(target=serve, args=(silent,), daemon=True)
        server.start()
        cfg = tmp_path / "ssh_config"
        cfg.write_text(cluster.ssh_config_text() + f"\nHost silent\n    HostName 127.0.0.1\n    Port {port}\n"
                       f"    UserKnownHostsFile {cluster.known_hosts}\n")
        policy = make_policy(cluster, src, connect_timeout=timeout, ssh_config=str(cfg))
        paths = [src / "survivors.npz", src / "train_history.json"]
        jobs = jobs_for(paths, n=4)
        plugin, _, assign = _plugin_run(policy, ["silent", "rig-a"], jobs)
        server.join(30)
    rep = plugin.reports
    # which timeout fired: the connect timeout, on the one connection made
    assert rep["silent"].status == "error", rep["silent"]
    assert f"timed out after {timeout:g} s" in rep["silent"].reason, rep["silent"].reason
    assert seen["accepted"] == 1 and seen["hung up"], seen
    # concurrency: rig-a was fully staged before the silent node was given up
    assert seen["rig-a staged while silent pending"], seen
    assert rep["rig-a"].status == "ok" and rep["rig-a"].copied_files == 2
    for job in assign["silent"]:
        assert plugin.coordinator_job_args(node={"hostname": "silent"}, job=job) is None  # original args
    for job in assign["rig-a"]:
        new = plugin.coordinator_job_args(node={"hostname": "rig-a"}, job=job)
        assert new and all(a.startswith(root_of(cluster["rig-a"])) for a in new)


# ================================================ 2. connection lost mid-upload
@pytest.mark.parametrize("what", ["new-entry", "new-name-for-cached-content"])
def test_connection_lost_mid_upload_leaves_no_entry_and_next_stage_completes(cluster, tmp_path, src, monkeypatch,
                                                                             what):
    node = cluster["rig-a"]
    root = root_of(node)
    big = src / "big.bin"
    big.write_bytes(os.urandom(16 << 20))
    policy = make_policy(cluster, src)
    if what == "new-entry":
        target = big
        tapped = tap_uploads(monkeypatch, lambda p: p.endswith("/big.bin"), 4 << 20, node.stop)
    else:  # the same bytes are cached under another name: only the new name is sent
        stage(cluster, policy, bundles_of([big], src)[0], hosts=["rig-a"])
        target = src / "big_copy.bin"
        shutil.copy(big, target)
        tapped = tap_uploads(monkeypatch, lambda p: p.rsplit("/", 1)[1].startswith(".tmp-")
                             and "manifest" not in p, 4 << 20, node.stop)
    bs, _ = bundles_of([src / "train_history.json", target], src)
    rep = stage(cluster, policy, bs, hosts=["rig-a"])["rig-a"]  # sshd killed after 4 MiB
    assert tapped and not node.running
    assert rep.status == "error" and "connection" in rep.reason.lower(), rep.reason
    assert rep.staged == {}
    node.start()
    # nothing partial is visible: no directory, no name, no manifest record
    key = bs[1].key
    if what == "new-entry":
        assert key not in node_names(node, root)
    else:
        # the temporary is not in there (only the entry's ownership marker)
        assert [n for n in node_names(node, f"{root}/{key}") if not n.startswith(".prng-")] == ["big.bin"]
        assert node_manifest(node).entries[key].names == ["big.bin"]
    assert [n for n in node_names(node, root) if n.startswith(".tmp-")]  # removed after gc.stale_temp
    monkeypatch.setattr(SSHTransport, "open_write", _OPEN_WRITE)
    rep = stage(cluster, policy, bs, hosts=["rig-a"])["rig-a"]
    assert rep.status == "ok" and set(rep.staged) == {b.path for b in bs}
    assert node_bytes(node, rep.staged[str(target)]) == target.read_bytes()
    assert_consistent(node, leftovers_ok=True)


# ================================================ 3. /dev/shm full or too small
def test_shm_too_small_falls_back_before_uploading(cluster, tmp_path, src):
    node = cluster["rig-a"]
    node.run("head -c 58M /dev/zero > /dev/shm/filler")  # what other programs put in RAM
    big = src / "big.bin"
    big.write_bytes(os.urandom(8 << 20))
    bs, _ = bundles_of([src / "train_history.json", big], src)
    policy = make_policy(cluster, src, capacity=CapacityPolicy(max_percent=100))
    rep = stage(cluster, policy, bs, hosts=["rig-a"])["rig-a"]
    assert rep.status == "fallback" and "capacity.max_percent" in rep.skipped[str(big)]
    assert str(src / "train_history.json") in rep.staged
    assert bs[1].key not in node_names(node, root_of(node))
    assert_consistent(node)


def test_shm_filling_up_during_upload_enospc_no_partial_files_leases_kept(cluster, tmp_path, src):
    """The tmpfs really runs out mid-upload (jobs on the node fill RAM while
    we copy): ENOSPC, the partial file is removed, the input falls back, what
    fits is staged, and nothing already cached (leased or not) is evicted."""
    node = cluster["rig-a"]
    policy = make_policy(cluster, src, capacity=CapacityPolicy(max_percent=100))
    held, _ = bundles_of([src / "survivors.npz", src / "holdout_history.json"], src)
    first = stage(cluster, policy, held[:1], hosts=["rig-a"], lease=LeaseRequest("other-run", 3600))["rig-a"]
    stage(cluster, policy, held[1:], hosts=["rig-a"])  # cached, not leased
    assert first.status == "ok"
    big = src / "big.bin"
    big.write_bytes(os.urandom(12 << 20))
    bs, _ = bundles_of([src / "train_history.json", big], src)
    filled = []

    def progress(host, event, detail):
        if event == "upload" and detail["name"] == "big.bin":
            # leave 1 MiB free: the 12 MiB upload cannot fit any more
            node.run("avail=$(df -k --output=avail /dev/shm | tail -1); "
                     "head -c $(( (avail - 1024) * 1024 )) /dev/zero > /dev/shm/filler")
            filled.append(True)

    rep = stage(cluster, policy, held + bs, hosts=["rig-a"], progress=progress)["rig-a"]
    assert filled
    assert rep.status == "fallback", rep
    assert "No space left" in rep.skipped[str(big)], rep.skipped
    assert set(rep.staged) == {b.path for b in held} | {str(src / "train_history.json")}
    names = node_names(node, root_of(node))
    assert bs[1].key not in names and not [n for n in names if n.startswith((".tmp-", ".trash-"))], names
    m = assert_consistent(node)
    assert {b.key for b in held} <= set(m.entries)  # nothing evicted to make room
    assert "other-run" in m.leases and held[0].key in m.leases["other-run"].hashes


# ================================================== 4. node rebooted between runs
def test_reboot_between_runs_detected_by_cache_id_and_restaged(cluster, tmp_path, src):
    bs, _ = bundles_of([src / "survivors.npz", src / "train_history.json", src / "holdout_history.json"], src)
    policy = make_policy(cluster, src)
    ids_dir = tmp_path / "ids"
    first = stage(cluster, policy, bs, ids=CacheIdRecord(str(ids_dir)))
    assert all(r.status == "ok" and r.copied_files == 3 for r in first.values())
    cluster["rig-b"].reboot()  # tmpfs remounted: the RAM cache is gone
    second = stage(cluster, policy, bs, ids=CacheIdRecord(str(ids_dir)))
    rb = second["rig-b"]
    assert rb.status == "ok" and rb.copied_files == 3 and rb.present_files == 0
    assert rb.cache_id != first["rig-b"].cache_id
    assert any("cache_id" in w and first["rig-b"].cache_id in w for w in rb.warnings), rb.warnings
    for h in ("rig-a", "rig-c"):
        assert second[h].copied_files == 0 and second[h].present_files == 3 and not second[h].warnings
    for b in bs:
        assert node_bytes(cluster["rig-b"], rb.staged[b.path]) == Path(b.path).read_bytes()


# ================================================ 5. two coordinators at once
def test_concurrent_coordinators_same_and_different_content(cluster, tmp_path, src):
    """Four `prng-cache stage` processes on one node at once: two with the
    same jobs, one overlapping, one with the same content under another
    name. The manifest lock is held until every process has uploaded, so all
    of them planned on an empty cache and commit in a pile-up."""
    node = cluster["rig-a"]
    root = root_of(node)
    (src / "extra.json").write_text(json.dumps({"x": list(range(2000))}))
    shutil.copy(src / "survivors.npz", src / "survivors_copy.npz")  # same bytes, other name
    sets = {
        "a1": ["survivors.npz", "train_history.json", "holdout_history.json"],
        "a2": ["survivors.npz", "train_history.json", "holdout_history.json"],
        "b": ["survivors.npz", "train_history.json", "extra.json"],
        "c": ["survivors_copy.npz"],
    }
    pol = write_policy_yaml(cluster, tmp_path / "policy.yaml", src)
    cfg = cluster.write_distributed_config(tmp_path / "cluster.json", [node], script_path=str(src))
    node.run(f"mkdir -m 700 {q(root)} && mkdir {q(root)}/.lock")  # held "by someone else"
    procs = {}
    for name, files in sets.items():
        jf = tmp_path / f"jobs_{name}.json"
        jf.write_text(json.dumps(jobs_for([src / f for f in files])))
        env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / f"xdg-{name}"))
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "prng_cache", "stage", "--jobs-file", str(jf), "--json", "--config", str(cfg),
             "--policy", str(pol)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    uploads = sum(len(f) for f in sets.values())
    deadline = time.monotonic() + 60
    while True:  # every process has uploaded and is waiting for the lock
        done = node.run(f"find {q(root)} -mindepth 2 -maxdepth 2 -type f -perm 0400 | wc -l").stdout
        if int(done) >= uploads:
            break
        assert time.monotonic() < deadline, node_names(node, root)
        assert all(p.poll() is None for p in procs.values()), {n: p.stderr.read() for n, p in procs.items()}
        time.sleep(0.05)
    time.sleep(0.3)
    node.run(f"rmdir {q(root)}/.lock")
    results = {}
    for name, p in procs.items():
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, (name, out, err)
        results[name] = json.loads(out)["nodes"]["rig-a"]
        assert results[name]["status"] == "ok", (name, results[name])
    m = assert_consistent(node)
    want: dict[str, set[str]] = {}
    for files in sets.values():
        bs, _ = bundles_of([src / f for f in files], src)
        for b in bs:
            want.setdefault(b.key, set()).add(b.name)
            # what that coordinator's jobs would read is there, with its bytes
            assert node_bytes(node, f"{root}/{b.key}/{b.name}") == Path(b.path).read_bytes()
    assert {k: set(e.files) for k, e in m.entries.items()} == want


def test_lock_released_between_failed_mkdir_and_check_is_contention(cluster, src, monkeypatch):
    """Over SFTP, `mkdir .lock` on an existing lock fails with a bare
    "Failure"; when the other coordinator releases the lock before the
    transport looks whether the path exists, that is still contention: the
    stage takes the lock and completes (it used to fail the node)."""
    node = cluster["rig-a"]
    root = root_of(node)
    node.run(f"mkdir -m 700 {q(root)} && mkdir {q(root)}/.lock")  # another coordinator's commit
    orig = SSHTransport._exists_error
    released = []

    def exists_error(self, e, what, path):
        if path.endswith("/.lock") and not released:
            node.run(f"rmdir {q(root)}/.lock")  # ... which ends right now
            released.append(path)
        return orig(self, e, what, path)

    monkeypatch.setattr(SSHTransport, "_exists_error", exists_error)
    bs, _ = bundles_of([src / "train_history.json"], src)
    rep = stage(cluster, make_policy(cluster, src), bs, hosts=["rig-a"])["rig-a"]
    assert released
    assert rep.status == "ok", rep.reason
    assert_consistent(node)


# ================================================ 7. corrupted file on a node
def test_corrupted_cached_file_verify_reports_fix_removes_stage_restores(cluster, tmp_path, src):
    node = cluster["rig-c"]
    pol = write_policy_yaml(cluster, tmp_path / "policy.yaml", src)
    cfg = cluster.write_distributed_config(tmp_path / "cluster.json", [node], script_path=str(src))
    jf = tmp_path / "jobs.json"
    jf.write_text(json.dumps(jobs_for([src / "survivors.npz", src / "train_history.json"], n=2)))
    common = ["--config", cfg, "--policy", pol]
    run_cli("stage", "--jobs-file", jf, *common, tmp_path=tmp_path, check=0)
    bs, _ = bundles_of([src / "survivors.npz"], src)
    victim = f"{root_of(node)}/{bs[0].key}/survivors.npz"
    # same size, one byte flipped: only a rehash can tell
    flip = "X" if node_bytes(node, victim)[1000:1001] != b"X" else "Y"  # really a different byte
    node.run(f"printf {flip} | dd of={q(victim)} bs=1 seek=1000 conv=notrunc status=none")
    v = run_cli("verify", "--json", *common, tmp_path=tmp_path, check=1)
    assert list(json.loads(v.stdout)["nodes"]["rig-c"]["corrupt"]) == [bs[0].key]
    fix = run_cli("verify", "--fix", "--json", *common, tmp_path=tmp_path, check=1)
    assert json.loads(fix.stdout)["nodes"]["rig-c"]["removed"] == [bs[0].key]
    assert not node.exists(victim)
    run_cli("verify", *common, tmp_path=tmp_path, check=0)
    again = json.loads(run_cli("stage", "--jobs-file", jf, "--json", *common, tmp_path=tmp_path, check=0).stdout)
    assert again["nodes"]["rig-c"]["copied_files"] == 1 and again["nodes"]["rig-c"]["present_files"] == 1
    assert node_bytes(node, victim) == (src / "survivors.npz").read_bytes()
    assert_consistent(node)


# ============================================== 8. manifest damaged on a node
@pytest.mark.parametrize("damage", ["truncated", "garbage", "newer-version"])
def test_damaged_manifest_on_node_is_rebuilt(cluster, src, damage):
    node = cluster["rig-b"]
    bs, _ = bundles_of([src / "survivors.npz", src / "train_history.json"], src)
    policy = make_policy(cluster, src)
    stage(cluster, policy, bs, hosts=["rig-b"])
    path = f"{root_of(node)}/{MANIFEST_NAME}"
    data = node_bytes(node, path)
    bad = {"truncated": data[: len(data) // 2],
           "garbage": b"\xc1\xff not msgpack at all \x00" * 9,
           "newer-version": msgpack.packb({"format": 99, "cache_id": "future", "entries": {"x": 1}})}[damage]
    node.run(f"cat > {q(path)}", input=bad)
    rep = stage(cluster, policy, bs, hosts=["rig-b"])["rig-b"]
    assert rep.status == "ok", rep
    assert any("rebuilt" in w for w in rep.warnings), rep.warnings
    assert rep.copied_files == 2  # directories it no longer vouches for are replaced, not trusted
    m = assert_consistent(node)
    assert set(m.entries) == {b.key for b in bs}
    with contextlib.closing(store_for(cluster, policy, "rig-b").t) as t:
        store = NodeStore(t, policy.for_node("rig-b", False), policy.gc)
        assert verify_node(store).corrupt == {}


# =========================================== 9. source modified while staged
@pytest.mark.parametrize("when", ["after-hashing", "during-upload"])
def test_source_modified_is_never_published_under_the_old_hash(cluster, src, monkeypatch, when):
    node = cluster["rig-a"]
    big = src / "big.bin"
    big.write_bytes(os.urandom(5 << 20))
    bs, _ = bundles_of([big, src / "train_history.json"], src)
    policy = make_policy(cluster, src)

    def modify():
        with open(big, "r+b") as f:  # in place: same inode, same size
            f.seek(4 << 20)
            f.write(os.urandom(4096))

    if when == "after-hashing":
        modify()
    else:
        tapped = tap_uploads(monkeypatch, lambda p: p.endswith("/big.bin"), 1 << 20, modify)
    rep = stage(cluster, policy, bs, hosts=["rig-a"])["rig-a"]
    if when == "during-upload":
        assert tapped
    assert rep.status == "fallback", rep
    assert "changed since it was hashed" in rep.skipped[str(big)]
    assert str(src / "train_history.json") in rep.staged
    names = node_names(node, root_of(node))
    assert bs[0].key not in names and not [n for n in names if n.startswith(".tmp-")], names
    assert_consistent(node)


# =============================================== 10. coordinator killed mid-stage
KILLER = textwrap.dedent('''
    import contextlib, os, signal, sys
    from prng_cache import cli
    from prng_cache.store import NodeStore
    from prng_cache.transport.ssh import SSHTransport

    def die(*a, **k):
        os.kill(os.getpid(), signal.SIGKILL)

    if sys.argv[1] == "holding-lock":
        NodeStore.write_manifest = die  # SIGKILL while holding the manifest lock
    else:
        orig = SSHTransport.open_write

        class Tap:
            def __init__(self, f):
                self.f, self.n = f, 0
            def write(self, b):
                self.n += self.f.write(b)
                if self.n >= 3 << 20:
                    self.f.flush()
                    die()
                return len(b)

        @contextlib.contextmanager
        def open_write(self, path, mode=0o600):
            with orig(self, path, mode) as f:
                yield Tap(f) if path.endswith("/big.bin") else f

        SSHTransport.open_write = open_write
    sys.exit(cli.main(sys.argv[2:]))
''')


@pytest.mark.parametrize("when", ["mid-upload", "holding-lock"])
def test_coordinator_killed_mid_stage_next_stage_cleans_up(cluster, tmp_path, src, when):
    node = cluster["rig-a"]
    root = root_of(node)
    big = src / "big.bin"
    big.write_bytes(os.urandom(8 << 20))
    paths = [src / "train_history.json", big]
    pol = write_policy_yaml(cluster, tmp_path / "policy.yaml", src, gc={"stale_lock": "1s", "stale_temp": "1s"})
    cfg = cluster.write_distributed_config(tmp_path / "cluster.json", [node], script_path=str(src))
    jf = tmp_path / "jobs.json"
    jf.write_text(json.dumps(jobs_for(paths)))
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER)
    p = subprocess.run([sys.executable, str(killer), when, "stage", "--jobs-file", str(jf), "--config", str(cfg),
                        "--policy", str(pol)], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "xdg")))
    assert p.returncode == -signal.SIGKILL, (p.returncode, p.stderr)
    names = node_names(node, root)
    if when == "holding-lock":
        assert ".lock" in names and MANIFEST_NAME not in names, names
    else:
        assert [n for n in names if n.startswith(".tmp-")], names
    time.sleep(2.2)  # older than gc.stale_lock / gc.stale_temp (1 s; SFTP mtimes are whole seconds)
    policy = load_policy(str(pol))
    bs, _ = bundles_of(paths, src)
    rep = stage(cluster, policy, bs, hosts=["rig-a"])["rig-a"]
    assert rep.status == "ok", rep
    if when == "mid-upload":
        assert any("stale temporary" in w for w in rep.warnings), rep.warnings
    m = assert_consistent(node)  # no .lock, .tmp-*, .trash-* left
    assert set(m.entries) == {b.key for b in bs}
    assert node_bytes(node, rep.staged[str(big)]) == big.read_bytes()


# ============================================ 11. squatted cache root
@pytest.mark.parametrize("squat", ["symlink", "foreign-owner", "group-writable", "world-writable"])
def test_squatted_cache_root_refused_nothing_written_args_kept(cluster, src, squat):
    node = cluster["rig-b"]
    root = root_of(node)
    elsewhere = f"{node.shm}/elsewhere"
    setup = {
        "symlink": f"mkdir -m 700 {elsewhere} && ln -s {elsewhere} {root}",
        "foreign-owner": f"mkdir -m 700 {root} && chown 65534:65534 {root}",
        "group-writable": f"mkdir {root} && chmod 0770 {root}",
        "world-writable": f"mkdir {root} && chmod 1777 {root}",
    }[squat]
    node.run(setup)
    want = {"symlink": "symlink", "foreign-owner": "owned by uid 65534", "group-writable": "0770",
            "world-writable": "1777"}[squat]
    policy = make_policy(cluster, src)
    jobs = jobs_for([src / "survivors.npz", src / "train_history.json"], n=4)
    plugin, _, assign = _plugin_run(policy, ["rig-a", "rig-b"], jobs)
    rb = plugin.reports["rig-b"]
    assert rb.status == "error" and want in rb.reason and root in rb.reason, rb.reason
    assert plugin.reports["rig-a"].status == "ok"
    for job in assign["rig-b"]:
        assert plugin.coordinator_job_args(node={"hostname": "rig-b"}, job=job) is None
    assert node_names(node, elsewhere if squat == "symlink" else root) == []  # not one byte written through it
    if squat == "symlink":
        assert node.run(f"readlink {root}").stdout.strip() == elsewhere


def test_created_cache_root_is_private(cluster, src):
    node = cluster["rig-c"]
    bs, _ = bundles_of([src / "train_history.json"], src)
    rep = stage(cluster, make_policy(cluster, src), bs, hosts=["rig-c"])["rig-c"]
    assert rep.status == "ok"
    mode, uid = node.run(f"stat -c '%a %u' {root_of(node)}").stdout.split()
    assert mode == "700" and int(uid) == os.getuid()
    key = bs[0].key
    assert node.run(f"stat -c '%a' {root_of(node)}/{key}/train_history.json").stdout.strip() == "400"


# ====================================== 12. links and odd names inside the root
@pytest.mark.parametrize("plant", ["symlink-file", "hardlink-file", "symlink-dir"])
def test_planted_links_are_never_followed_nor_served(cluster, src, plant):
    node = cluster["rig-a"]
    root = root_of(node)
    bs, _ = bundles_of([src / "train_history.json"], src)
    b = bs[0]
    policy = make_policy(cluster, src)
    stage(cluster, policy, bs, hosts=["rig-a"])
    entry = f"{root}/{b.key}"
    ram = f"{entry}/{b.name}"
    evil = f"{node.shm}/evil"
    node.run(f"mkdir -m 700 {evil} && printf evil > {evil}/{b.name}")
    node.run({
        "symlink-file": f"rm -f {ram} && ln -s {evil}/{b.name} {ram}",
        "hardlink-file": f"ln {ram} {evil}/alias",  # another path shares the cached bytes
        "symlink-dir": f"rm -rf {entry} && ln -s {evil} {entry}",
    }[plant])

    def held(store):
        return NodeReport(host="rig-a", status="ok", staged=held_inputs(store, bs))

    assert run_on_node(Node("rig-a"), policy, held).staged == {}  # `prng-cache rewrite` keeps the original path
    rep = stage(cluster, policy, bs, hosts=["rig-a"])["rig-a"]
    if plant == "symlink-dir":
        # the entry itself replaced: <key> is no longer provably ours, so it
        # is neither written through nor removed; that input falls back
        assert rep.status == "fallback" and b.path not in rep.staged, rep.to_dict()
        assert "not prng-cache's" in rep.skipped[b.path]
        assert node.run(f"readlink {q(entry)}").stdout.strip() == evil
        assert node_bytes(node, f"{evil}/{b.name}") == b"evil"
        assert sorted(node_names(node, evil)) == [b.name]
        assert b.key not in node_manifest(node).entries
        assert not [n for n in node_names(node, root) if n.startswith((".tmp-", ".trash-", ".lock"))]
        return
    assert rep.status == "ok" and rep.copied_files == 1 and rep.staged[b.path] == ram
    assert node.run(f"stat -c '%F %h' {q(entry)} {q(ram)}").stdout.split("\n")[:2] == ["directory 2", "regular file 1"]
    assert node_bytes(node, ram) == Path(b.path).read_bytes()
    assert node_bytes(node, f"{evil}/{b.name}") == b"evil"  # never written through
    assert sorted(node_names(node, evil)) == sorted([b.name] + (["alias"] if plant == "hardlink-file" else []))
    assert_consistent(node)


def test_wrongly_named_hash_directories_are_never_served(cluster, src):
    node = cluster["rig-a"]
    root = root_of(node)
    bs, _ = bundles_of([src / "train_history.json"], src)
    b = bs[0]
    policy = make_policy(cluster, src)
    node.run(f"mkdir -m 700 {root}")
    for bad in (b.key.upper(), b.key + "0", b.key[:-1], "not-a-hash"):
        node.run(f"mkdir {root}/{bad} && printf poison > {root}/{bad}/{b.name}")
    node.run(f"ln -s {root}/not-a-hash {root}/{b.key[:-1]}x")
    rep = stage(cluster, policy, bs, hosts=["rig-a"])["rig-a"]
    assert rep.staged[b.path] == f"{root}/{b.key}/{b.name}"
    assert node_bytes(node, rep.staged[b.path]) == Path(b.path).read_bytes()
    m = assert_consistent(node)
    assert set(m.entries) == {b.key}
    # gc never deletes (or follows) what is not in its name format
    with contextlib.closing(store_for(cluster, policy, "rig-a").t) as t:
        gc_node(NodeStore(t, policy.for_node("rig-a", False), policy.gc), remove_all=True)
    assert node_bytes(node, f"{root}/not-a-hash/{b.name}") == b"poison"
    assert node_names(node, root).count(b.key.upper()) == 1


# ====================================== 13. hostile input names
NAMES = [
    "with space.json",
    "it's \"quoted\".json",
    "$(touch pwned-{tok}).json",
    "`touch pwned-{tok}-bt`;x.json",
    "dollar $HOME ${{IFS}}.json",
    "new\nline.json",
    "ünïcödé-数据.json",
    "-leading-dash.json",
    "glob*?[x] & | ; > <.json",
]


def test_hostile_input_names_are_staged_byte_exact_and_never_run(cluster, tmp_path, src):
    node = cluster["rig-a"]
    tok = os.urandom(4).hex()
    names = [n.format(tok=tok) for n in NAMES]
    (src / "sub").mkdir()
    paths = []
    for i, name in enumerate(names):
        (src / name).write_bytes(f"{i}:{name}".encode() * 50)
        paths.append(src / name)
    # a `..` path resolves on the coordinator; the node only sees <key>/<basename>
    dotted = f"{src}/sub/../with space.json"
    (src / ".tmp-sneaky.json").write_text("x")  # a name the layout reserves
    jobs = jobs_for([*paths, dotted, src / ".tmp-sneaky.json"], n=2)
    policy = make_policy(cluster, src)
    disc = discover(jobs, policy.inputs, str(src))
    assert ".tmp-sneaky" in "".join(disc.skipped)  # refused cleanly, the job keeps its path
    bundles = list(disc.bundles.values())
    assert {b.name for b in bundles} == set(names)
    rep = stage(cluster, policy, bundles, hosts=["rig-a"])["rig-a"]
    # every spelling of a path is served (the `..` one by the same copy)
    assert rep.status == "ok" and set(rep.staged) == {b.path for b in bundles}
    assert rep.copied_files == len(names)
    with contextlib.closing(store_for(cluster, policy, "rig-a").t) as t:
        for p in paths:
            ram = rep.staged[str(p)]
            assert ram.rsplit("/", 1)[1] == p.name
            assert t.read_bytes(ram) == p.read_bytes(), p.name  # through the node, over SFTP
        store = NodeStore(t, policy.for_node("rig-a", False), policy.gc)
        assert verify_node(store).corrupt == {}
        gc_node(store, remove_all=True)
    # the jobs get the RAM path as one argument each, whatever its characters
    plugin, _, assign = _plugin_run(policy, ["rig-a"], jobs)
    new = plugin.coordinator_job_args(node={"hostname": "rig-a"}, job=jobs[0])
    assert [os.path.basename(a) for a in new[:len(names)]] == names
    assert new[-1] == str(src / ".tmp-sneaky.json")
    # nothing was ever interpreted by a shell, here or on the node
    pwned = {f"pwned-{tok}", f"pwned-{tok}-bt"}  # what `touch` would have created
    for d in (os.getcwd(), os.path.expanduser("~"), str(src), "/tmp", "/"):
        assert not pwned & set(os.listdir(d)), d
    assert not node.run(f"find {node.shm} ~ -maxdepth 3 -name 'pwned-{tok}*'").stdout


def test_manifest_names_escaping_the_root_are_refused(cluster, src):
    node = cluster["rig-a"]
    root = root_of(node)
    key = "0" * 32
    node.run(f"mkdir -m 700 {root} && mkdir {root}/{key} && printf keep > {node.shm}/outside.json")
    evil = Manifest.new()
    doc = msgpack.unpackb(evil.to_bytes())
    doc["entries"] = {key: {"size": 4, "names": ["../../outside.json"], "files": {"../../outside.json": key},
                            "added": 0.0, "last_used": 0.0}}
    node.run(f"cat > {root}/{MANIFEST_NAME}", input=msgpack.packb(doc))
    policy = make_policy(cluster, src)
    bs, _ = bundles_of([src / "train_history.json"], src)
    rep = stage(cluster, policy, bs, hosts=["rig-a"])["rig-a"]
    # the bad record alone is distrusted (reported), not the whole manifest
    assert rep.status == "ok" and any("malformed" in w for w in rep.warnings), rep
    with contextlib.closing(store_for(cluster, policy, "rig-a").t) as t:
        store = NodeStore(t, policy.for_node("rig-a", False), policy.gc)
        verify_node(store, fix=True)
        gc_node(store, remove_all=True)
    assert node_bytes(node, f"{node.shm}/outside.json") == b"keep"


# ====================================== 14. malformed user files
MORE_USER_ERRORS = [
    # (files, args, words the one line must contain); see also test_cli.py USER_ERRORS
    ({"cache_policy.yaml": "transport:\n  connect_timeout: soon\n"}, ["status"],
     ["cache_policy.yaml", "transport.connect_timeout", "duration"]),
    ({"cache_policy.yaml": "nodes:\n  rig-*:\n    mode: fast\n"}, ["status"],
     ["cache_policy.yaml", "nodes.rig-*.mode", "cache"]),
    ({"cache_policy.yaml": "- just\n- a list\n"}, ["status"], ["cache_policy.yaml"]),
    ({"cache_policy.yaml": "capacity:\n  max_percent: 150\n"}, ["status"],
     ["cache_policy.yaml", "capacity.max_percent"]),
    ({"jobs.json": '{"jobs": []}'}, ["stage", "--jobs-file", "jobs.json"], ["jobs.json", "list"]),
    ({"jobs.json": '[{"job_id": "a", "script": "w.py", "expected_output": "o", "timeout": 5}]'},
     ["stage", "--jobs-file", "jobs.json"], ["jobs.json", "jobs[0].args", "missing"]),
    ({"jobs.json": '[\n{"job_id": "a",\n "script": }\n]'}, ["stage", "--jobs-file", "jobs.json"],
     ["jobs.json", "line 3"]),
    ({"distributed_config.json": '{"nodes": [{"hostname": "rig-a"}]}'}, ["status"],
     ["distributed_config.json", "nodes[0].script_path", "missing"]),
    ({"distributed_config.json": '{"hosts": []}'}, ["status"], ["distributed_config.json", "nodes"]),
    ({"distributed_config.json": '{"nodes": [\n{"hostname": "a", "script_path": "/x"},\n'
                                 '{"hostname": "a", "script_path": "/x"}]}'}, ["status"],
     ["distributed_config.json", "nodes[1].hostname", "duplicate"]),
    ({}, ["stage", "--jobs-file", "jobs.json", "--node", "rig-z"], ["rig-z", "rig-a"]),
    ({}, ["gc", "--node", "rig-z"], ["rig-z", "rig-a"]),
    ({}, ["verify", "--node", "rig-z"], ["rig-z", "rig-a"]),
    ({}, ["status", "--node", "rig-z"], ["rig-z", "rig-a"]),
    ({}, ["status", "--policy", "nope.yaml"], ["nope.yaml", "not found"]),
]


@pytest.mark.parametrize("files,args,words", MORE_USER_ERRORS,
                         ids=[f"{'/'.join(f) or a[-1]}-{i}" for i, (f, a, _) in enumerate(MORE_USER_ERRORS)])
def test_malformed_user_files_one_line_exit_2(tmp_path, monkeypatch, capsys, files, args, words):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    for k in ("PRNG_CACHE", "USE_RAMDISK", "PRNG_CACHE_POLICY", "PRNG_CACHE_ROOT"):
        monkeypatch.delenv(k, raising=False)
    (tmp_path / "distributed_config.json").write_text(json.dumps(
        {"nodes": [{"hostname": "rig-a", "script_path": str(tmp_path)}]}))
    (tmp_path / "jobs.json").write_text(json.dumps(jobs_for([tmp_path / "jobs.json"])))
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    rc = cli.main(args)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], (w, lines[0])


# ====================================== 15. host key changed
def test_changed_host_key_refused_for_that_node_others_staged(cluster, tmp_path, src):
    cluster["rig-b"].regen_host_key()  # reinstalled node, or a man in the middle
    pol = write_policy_yaml(cluster, tmp_path / "policy.yaml", src)
    cfg = cluster.write_distributed_config(tmp_path / "cluster.json", list(cluster), script_path=str(src))
    jf = tmp_path / "jobs.json"
    jf.write_text(json.dumps(jobs_for([src / "survivors.npz", src / "train_history.json"], n=2)))
    p = run_cli("stage", "--jobs-file", jf, "--json", "--config", cfg, "--policy", pol, tmp_path=tmp_path, check=1)
    nodes = json.loads(p.stdout)["nodes"]
    assert nodes["rig-b"]["status"] == "error" and "host key" in nodes["rig-b"]["reason"].lower(), nodes["rig-b"]
    assert "CHANGED" in nodes["rig-b"]["reason"]
    for h in ("rig-a", "rig-c"):
        assert nodes[h]["status"] == "ok" and nodes[h]["copied_files"] == 2
    assert not cluster["rig-b"].exists(root_of(cluster["rig-b"]))
    text = run_cli("stage", "--jobs-file", jf, "--config", cfg, "--policy", pol, tmp_path=tmp_path, check=1).stdout
    assert "rig-b" in text and "host key CHANGED" in text
