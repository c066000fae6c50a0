"""`prng-cache doctor`: every problem that would stop adoption is caught
before a real run, with a one-line fix, over real sshd nodes
(prng_cache/testing/sshcluster.py), and nothing is written to a node."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
import time
from pathlib import Path

import paramiko
import pytest
import yaml
from test_faults import cluster, node_names, root_of, run_cli, src, write_policy_yaml  # noqa: F401

from prng_cache.cluster import Node
from prng_cache.doctor import check_coordinator, check_nodes, diagnose, find_missing_inputs
from prng_cache.policy import load_policy
from prng_cache.transport.ssh import SSHTransport

REPO = Path(__file__).resolve().parent.parent
COORDINATOR = REPO / "tests" / "e2e" / "scripts_coordinator.py"
GPU_COORDINATOR = REPO / "tests" / "e2e" / "gpu_coordinator.py"


# ------------------------------------------------------------------ helpers
def checks_of(doc: dict) -> dict[str, dict]:
    return {c["name"]: c for c in doc["checks"]}


def failed(doc: dict) -> dict[str, dict]:
    return {c["name"]: c for c in doc["checks"] if not c["ok"]}


def fix_of(check: dict) -> str:
    """The check's one-line fix: the end of its detail."""
    assert "; fix: " in check["detail"], check
    fix = check["detail"].rsplit("; fix: ", 1)[1]
    assert "\n" not in fix and fix == check["fix"], check
    return fix


def jobs_file(path: Path, inputs, n: int = 3, extra_args=()) -> Path:
    jobs = [{"job_id": f"j{i}", "script": "w.py", "args": [*map(str, inputs), *extra_args],
             "expected_output": f"out_{i}.json", "timeout": 60} for i in range(n)]
    path.write_text(json.dumps(jobs))
    return path


@pytest.fixture
def setup(cluster, src, tmp_path):  # noqa: F811
    """A healthy cluster: cluster file, policy and jobs (3 jobs reading 3 inputs)."""
    config = cluster.write_distributed_config(tmp_path / "distributed_config.json")
    policy = write_policy_yaml(cluster, tmp_path / "cache_policy.yaml", src)
    jobs = jobs_file(tmp_path / "jobs.json", sorted(src.iterdir()))
    return config, policy, jobs


def doctor(tmp_path, config, policy, *extra, check=None):
    """Run the CLI; (exit code, JSON document, stderr)."""
    p = run_cli("doctor", "--config", config, "--policy", policy, "--json", *extra, tmp_path=tmp_path,
                check=check)
    return p.returncode, json.loads(p.stdout), p.stderr


def strip_prng_blocks(text: str, which: str = "") -> str:
    """The coordinator source with its marked prng-cache blocks removed
    (those whose marker line contains ``which``)."""
    out, skip = [], False
    for line in text.splitlines(keepends=True):
        if "# --- prng-cache:" in line and which in line:
            skip = True
        if not skip:
            out.append(line)
        if "# --- end prng-cache ---" in line:
            skip = False
    return "".join(out)


# ============================================================ healthy cluster
def test_healthy_cluster_is_ready_and_nothing_is_written(cluster, setup, tmp_path):  # noqa: F811
    config, policy, jobs = setup
    before = {n.name: node_names(n, n.shm) for n in cluster}
    code, doc, err = doctor(tmp_path, config, policy, "--jobs-file", jobs, "--coordinator", COORDINATOR,
                            check=0)
    assert err == ""
    checks = checks_of(doc)
    assert all(c["ok"] for c in doc["checks"]), failed(doc)
    for n in cluster:
        assert "logged in as" in checks[f"reachable:{n.name}"]["detail"]
        assert checks[f"host_key:{n.name}"]["ok"]
        assert "will be created" in checks[f"cache_root:{n.name}"]["detail"]
        assert "capacity.max_percent 80%" in checks[f"space:{n.name}"]["detail"]
    assert "3 input(s) would be cached" in checks["inputs"]["detail"]
    assert checks["missing_inputs"]["ok"] and checks["coordinator"]["ok"]
    assert set(checks) >= {"policy", "cluster", "jobs", "inputs", "missing_inputs", "companions", "coordinator"}
    # read-only: no root created, nothing left in any node's RAM disk
    assert {n.name: node_names(n, n.shm) for n in cluster} == before
    # the text form: one line per check, "ready" at the end
    p = run_cli("doctor", "--config", config, "--policy", policy, tmp_path=tmp_path, check=0)
    assert p.stdout.rstrip().endswith("ready: adoption should work")
    assert "ok    reachable:rig-a: " in p.stdout


def test_node_checks_never_write(cluster, setup, tmp_path, monkeypatch):  # noqa: F811
    """Not even the transport's uid probe file: every writing SFTP call fails the test."""
    config, policy_file, _ = setup
    writes: list[str] = []

    def refuse(name):
        def fn(self, *a, **kw):
            writes.append(f"{name}{a}")
            raise AssertionError(f"doctor wrote to a node: {name}{a}")
        return fn

    for name in ("open_write", "mkdir", "chmod", "rename", "unlink", "rmdir"):
        monkeypatch.setattr(SSHTransport, name, refuse(name))
    for name in ("mkdir", "rmdir", "remove", "rename", "posix_rename", "chmod", "chown", "symlink",
                 "truncate", "utime", "putfo", "put"):
        monkeypatch.setattr(paramiko.SFTPClient, name, refuse(f"sftp.{name}"))
    real_open = paramiko.SFTPClient.open

    def sftp_open(self, filename, mode="r", bufsize=-1):
        if set(mode) & set("wax+"):
            writes.append(f"sftp.open({filename!r}, {mode!r})")
            raise AssertionError(f"doctor opened {filename} for writing")
        return real_open(self, filename, mode, bufsize)

    monkeypatch.setattr(paramiko.SFTPClient, "open", sftp_open)
    # a root that exists, so ownership (the SSH user's uid) must be learnt
    for n in cluster:
        n.run(f"mkdir -m 700 {root_of(n)}")
    policy = load_policy(str(policy_file))
    checks = check_nodes([Node(n.name) for n in cluster], policy)
    assert writes == []
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]
    assert all(f"uid {os.getuid()}" in c.detail for c in checks if c.name.startswith("cache_root:"))


# ============================================================ unreachable node
def test_stopped_node_is_unreachable_with_fix(cluster, setup, tmp_path):  # noqa: F811
    config, policy, _ = setup
    cluster["rig-b"].stop()
    code, doc, _ = doctor(tmp_path, config, policy, check=1)
    bad = failed(doc)
    assert list(bad) == ["reachable:rig-b"], bad
    assert "refused" in bad["reachable:rig-b"]["detail"]
    assert fix_of(bad["reachable:rig-b"]) == \
        f"start sshd on rig-b (or check its address in the ssh config) or remove it from {config}"
    # the other nodes are checked in full
    checks = checks_of(doc)
    assert checks["cache_root:rig-a"]["ok"] and checks["space:rig-c"]["ok"]
    assert "cache_root:rig-b" not in checks


def test_silent_node_costs_at_most_the_connect_timeout(cluster, setup, tmp_path):  # noqa: F811
    """A node that accepts TCP but never speaks SSH (hung sshd), checked
    alongside the others: the whole check takes about one connect_timeout."""
    _, policy_file, _ = setup
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        silent.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(silent.accept()[0])
            except OSError:
                continue

    th = threading.Thread(target=accept, daemon=True)
    th.start()
    try:
        cfg = cluster.ssh_config.read_text() + (
            f"\nHost rig-hung\n    HostName 127.0.0.1\n    Port {silent.getsockname()[1]}\n"
            f"    UserKnownHostsFile {cluster.known_hosts}\n")
        ssh_config = tmp_path / "ssh_config"
        ssh_config.write_text(cfg)
        doc = yaml.safe_load(policy_file.read_text())
        doc["transport"].update(ssh_config=str(ssh_config), connect_timeout="2s")
        policy_file.write_text(yaml.safe_dump(doc))
        policy = load_policy(str(policy_file))
        t0 = time.monotonic()
        checks = check_nodes([Node("rig-hung"), *(Node(n.name) for n in cluster)], policy)
        took = time.monotonic() - t0
    finally:
        stop.set()
        th.join()
        silent.close()
        for s in held:
            s.close()
    bad = [c for c in checks if not c.ok]
    assert [c.name for c in bad] == ["reachable:rig-hung"], bad
    assert "2 s" in bad[0].detail and bad[0].fix.startswith("start sshd on rig-hung")
    assert took < 2 * 2.0 + 3, took  # one timeout (the banner wait), not one per node or per step


def test_login_refused_fix_names_the_key_to_install(cluster, setup, tmp_path):  # noqa: F811
    config, policy_file, _ = setup
    ssh_config = cluster.write_ssh_config(tmp_path / "ssh_config", identity=False)
    doc = yaml.safe_load(policy_file.read_text())
    doc["transport"]["ssh_config"] = str(ssh_config)
    policy_file.write_text(yaml.safe_dump(doc))
    code, out, _ = doctor(tmp_path, config, policy_file, "--node", "rig-a", check=1)
    bad = failed(out)
    assert list(bad) == ["reachable:rig-a"], bad
    node = cluster["rig-a"]
    assert "authentication failed" in bad["reachable:rig-a"]["detail"]
    assert fix_of(bad["reachable:rig-a"]) == (f"ssh-copy-id -p {node.port} {cluster.user}@{node.address} "
                                              "(or set IdentityFile for rig-a in the ssh config)")


def test_uid_without_a_shell_comes_from_passwd(cluster, setup, monkeypatch):  # noqa: F811
    """No exec channel (a nologin account): ownership is still judged, and
    still without writing a probe file."""
    _, policy_file, _ = setup
    node = cluster["rig-a"]
    node.run(f"mkdir -m 700 {root_of(node)} && chown 65534 {root_of(node)}")

    def no_exec(self, *a, **kw):
        raise paramiko.SSHException("exec refused: no shell here")

    monkeypatch.setattr(paramiko.Channel, "exec_command", no_exec)
    checks = {c.name: c for c in check_nodes([Node("rig-a")], load_policy(str(policy_file)))}
    root = checks["cache_root:rig-a"]
    assert checks["reachable:rig-a"].ok and checks["host_key:rig-a"].ok and not root.ok
    assert f"owned by uid 65534, not by {cluster.user} (uid {os.getuid()}, per /etc/passwd)" in root.detail


# ============================================================ host keys
def test_unknown_host_key_fix_is_a_keyscan_that_works(cluster, setup, tmp_path):  # noqa: F811
    config, policy, _ = setup
    cluster.write_known_hosts(nodes=[cluster["rig-a"], cluster["rig-c"]])  # rig-b's key unknown
    code, doc, _ = doctor(tmp_path, config, policy, check=1)
    bad = failed(doc)
    assert list(bad) == ["host_key:rig-b"], bad
    node = cluster["rig-b"]
    assert checks_of(doc)["reachable:rig-b"]["ok"]
    assert "not in" in bad["host_key:rig-b"]["detail"]
    fix = fix_of(bad["host_key:rig-b"])
    assert fix == f"ssh-keyscan -p {node.port} {node.address} >> {cluster.known_hosts} (after checking the key)"
    # the fix, as written, makes the node pass
    cmd = fix.split(" (after")[0]
    subprocess.run(["sh", "-c", cmd], check=True, capture_output=True, timeout=30)
    doctor(tmp_path, config, policy, check=0)


def test_changed_host_key_is_refused_with_fix(cluster, setup, tmp_path):  # noqa: F811
    config, policy, _ = setup
    node = cluster["rig-c"]
    node.regen_host_key()
    code, doc, _ = doctor(tmp_path, config, policy, check=1)
    bad = failed(doc)
    assert list(bad) == ["host_key:rig-c"], bad
    assert "CHANGED" in bad["host_key:rig-c"]["detail"]
    assert fix_of(bad["host_key:rig-c"]).startswith(
        f"if rig-c was reinstalled: ssh-keygen -R '[{node.address}]:{node.port}' -f {cluster.known_hosts}")


# ============================================================ squatted roots
@pytest.mark.parametrize("squat", ["symlink", "foreign-owner", "world-writable", "group-writable"])
def test_squatted_root_is_caught_with_fix_and_left_alone(cluster, setup, tmp_path, squat):  # noqa: F811
    config, policy, _ = setup
    node = cluster["rig-b"]
    root = root_of(node)
    elsewhere = f"{node.shm}/elsewhere"
    node.run({
        "symlink": f"mkdir -m 700 {elsewhere} && ln -s {elsewhere} {root}",
        "foreign-owner": f"mkdir -m 700 {root} && chown 65534:65534 {root}",
        "world-writable": f"mkdir {root} && chmod 0777 {root}",
        "group-writable": f"mkdir {root} && chmod 0770 {root}",
    }[squat])
    before = node.run(f"stat -c '%a %u %F' {root}").stdout
    code, doc, _ = doctor(tmp_path, config, policy, check=1)
    bad = failed(doc)
    assert list(bad) == ["cache_root:rig-b"], bad
    detail, fix = bad["cache_root:rig-b"]["detail"], fix_of(bad["cache_root:rig-b"])
    want_detail, want_fix = {
        "symlink": (f"is a symlink to {elsewhere}", f"rm {root} (it is a symlink to {elsewhere}; this removes "
                    "the link only) or set nodes.rig-b.cache_root"),
        "foreign-owner": ("owned by uid 65534", f"ask its owner (uid 65534) or root to remove {root}, "
                          "or set nodes.rig-b.cache_root"),
        # never "rm -rf": the root may hold the users' own files
        "world-writable": ("mode 0777", f"chmod 700 {root} on rig-b if everything in it is yours"),
        "group-writable": ("mode 0770", f"chmod 700 {root} on rig-b"),
    }[squat]
    assert want_detail in detail and fix.startswith(want_fix), (detail, fix)
    # looked at, not touched
    assert node.run(f"stat -c '%a %u %F' {root}").stdout == before
    if squat == "symlink":
        assert node_names(node, elsewhere) == []


def test_readable_root_of_the_user_will_be_tightened(cluster, setup, tmp_path):  # noqa: F811
    config, policy, _ = setup
    node = cluster["rig-a"]
    node.run(f"mkdir -m 755 {root_of(node)}")
    code, doc, _ = doctor(tmp_path, config, policy, check=0)
    c = checks_of(doc)["cache_root:rig-a"]
    assert c["ok"] and c.get("warning") and "mode 0755: will be tightened to 0700" in c["detail"]
    assert node.run(f"stat -c '%a' {root_of(node)}").stdout.strip() == "755"  # doctor did not do it


def test_root_whose_parent_is_missing(cluster, setup, tmp_path):  # noqa: F811
    config, policy, _ = setup
    code, doc, _ = doctor(tmp_path, config, policy, "--node", "rig-a", "--cache-root", "/nonexistent/prng",
                          check=1)
    bad = failed(doc)
    assert list(bad) == ["cache_root:rig-a"], bad
    assert "/nonexistent does not exist" in bad["cache_root:rig-a"]["detail"]
    assert fix_of(bad["cache_root:rig-a"]).startswith("set cache_root (or nodes.rig-a.cache_root)")


def test_space_past_max_percent(cluster, setup, tmp_path):  # noqa: F811
    if not cluster.isolated:
        pytest.skip("needs the nodes' private tmpfs (mount namespaces)")
    config, policy_file, jobs = setup
    node = cluster["rig-c"]
    node.run(f"dd if=/dev/zero of={node.shm}/ballast bs=1M count=40 status=none")  # 40 of 64 MiB
    doc = yaml.safe_load(policy_file.read_text())
    doc["nodes"]["rig-c"]["capacity"] = {"max_percent": 50, "warn_percent": 40}
    policy_file.write_text(yaml.safe_dump(doc))
    code, out, _ = doctor(tmp_path, config, policy_file, "--jobs-file", jobs, check=1)
    bad = failed(out)
    assert list(bad) == ["space:rig-c"], bad
    assert "past capacity.max_percent" in bad["space:rig-c"]["detail"]
    assert fix_of(bad["space:rig-c"]).startswith("free RAM on rig-c (prng-cache gc --node rig-c;")
    assert "up to" in checks_of(out)["space:rig-a"]["detail"]


# ============================================================ user files
def test_unknown_policy_key_exits_2_with_did_you_mean(cluster, setup, tmp_path):  # noqa: F811
    config, policy, _ = setup
    doc = yaml.safe_load(policy.read_text())
    doc["inputs"]["min_job"] = doc["inputs"].pop("min_jobs")
    policy.write_text(yaml.safe_dump(doc))
    code, out, err = doctor(tmp_path, config, policy, check=2)
    bad = failed(out)
    assert list(bad) == ["policy"], bad
    assert "unknown key (did you mean inputs.min_jobs?)" in bad["policy"]["detail"]
    assert fix_of(bad["policy"]) == f"rename inputs.min_job to inputs.min_jobs in {policy}"
    # one line on stderr, as every command words a malformed user file
    assert err.count("\n") == 1 and err.startswith("prng-cache: error: ") and "inputs.min_job" in err
    # the cluster file was still checked; nodes are not checked without a policy
    assert checks_of(out)["cluster"]["ok"] and not any(":" in c["name"] for c in out["checks"])


@pytest.mark.parametrize("bad_file", ["cluster", "jobs", "node"])
def test_malformed_user_files_exit_2(tmp_path, bad_file):
    config = tmp_path / "distributed_config.json"
    config.write_text(json.dumps({"nodes": [{"hostname": "localhost", "script_path": str(tmp_path)}]}))
    policy = tmp_path / "cache_policy.yaml"
    policy.write_text("")
    jobs = jobs_file(tmp_path / "jobs.json", [])
    extra: list = ["--jobs-file", jobs]
    if bad_file == "cluster":
        config.write_text('{"nodes": [{"hostname": "a"}]}')
    elif bad_file == "jobs":
        jobs.write_text('[{"job_id": 1}]')
    else:
        extra += ["--node", "rig-z"]
    code, out, err = doctor(tmp_path, config, policy, *extra, check=2)
    name = "jobs" if bad_file == "jobs" else "cluster"
    bad = failed(out)
    assert list(bad) == [name], bad
    assert err.startswith("prng-cache: error: ") and err.count("\n") == 1
    assert bad[name]["fix"]


# ============================================================ jobs and inputs
def test_missing_inputs_and_companions(cluster, setup, src, tmp_path):  # noqa: F811
    config, policy_file, _ = setup
    doc = yaml.safe_load(policy_file.read_text())
    doc["inputs"]["companions"] = {"survivors.npz": ["scaler.json", "window.json?"]}
    policy_file.write_text(yaml.safe_dump(doc))
    jobs = jobs_file(tmp_path / "jobs.json", [src / "survivors.npz", src / "train_history.json"], extra_args=[
        "/data/gone/holdout.npz", "missing_chunk.json",       # missing: absolute; relative with a data extension
        "sqlite:///nowhere/x.json", '{"a": "b.json"}', "0.5",  # URL, JSON blob, number: never paths
        "--output-file", "/results/new.json", "adam",          # output flag value; a plain word
        "/scratch/study.db",                                   # excluded pattern (written by the job)
    ])
    code, out, _ = doctor(tmp_path, config, policy_file, "--jobs-file", jobs, check=1)
    bad = failed(out)
    assert set(bad) == {"missing_inputs", "companions"}, bad
    miss = bad["missing_inputs"]["detail"]
    assert "/data/gone/holdout.npz (3 jobs)" in miss and f"{src}/missing_chunk.json (3 jobs)" in miss
    assert "2 path(s)" in miss and "nowhere" not in miss and "results" not in miss and "study" not in miss
    assert fix_of(bad["missing_inputs"]).startswith(f"create or copy them before the run, or correct the paths "
                                                    f"in {jobs}")
    comp = bad["companions"]["detail"]
    assert f"scaler.json beside {src}/survivors.npz" in comp.split("; optional")[0]
    assert f"optional, absent (the input is cached alone): window.json beside {src}/survivors.npz" in comp
    assert fix_of(bad["companions"]).startswith("put the companion files beside their inputs")
    inputs = checks_of(out)["inputs"]["detail"]
    assert "1 input(s) would be cached" in inputs and "companion scaler.json missing" in inputs
    # the required companion present: only the optional one is noted
    (src / "scaler.json").write_text("{}")
    jobs_file(jobs, [src / "survivors.npz", src / "train_history.json"])
    code, out, _ = doctor(tmp_path, config, policy_file, "--jobs-file", jobs, check=0)
    comp = checks_of(out)["companions"]
    assert comp["ok"] and comp.get("warning") and "window.json" in comp["detail"]


def test_missing_inputs_follow_path_aliases(tmp_path):
    """A job naming /dev/shm/prng/step2/x (the users' preload path) is not
    missing when x exists under the coordinator's script_path; one whose
    aliased file is absent is reported at the aliased path (where it must
    be), as the stage reports it."""
    (tmp_path / "x.npz").write_bytes(b"1")
    policy = load_policy(None, cwd=str(tmp_path), env={})
    jobs = [{"job_id": "a", "args": ["/dev/shm/prng/step2/x.npz", "/dev/shm/prng/step3/y.npz"],
             "expected_output": "o.json"}]
    assert find_missing_inputs(jobs, policy, str(tmp_path), str(tmp_path)) == {
        str(tmp_path / "y.npz"): {"a"}}


def test_direct_and_off_nodes_are_not_contacted(tmp_path):
    config = tmp_path / "distributed_config.json"
    config.write_text(json.dumps({"nodes": [
        {"hostname": "localhost", "script_path": str(tmp_path)},
        {"hostname": "rig-unknown.invalid", "script_path": "/tmp", "use_ramdisk": False}]}))
    d = diagnose(config=str(config), policy_file=os.devnull)
    names = {c.name: c for c in d.checks}
    assert names["mode:localhost"].ok and "direct" in names["mode:localhost"].detail
    assert names["mode:rig-unknown.invalid"].ok and "mode off" in names["mode:rig-unknown.invalid"].detail
    assert d.exit_code == 0


# ============================================================ coordinator source
def test_coordinator_with_the_hooks_passes():
    checks = check_coordinator(str(COORDINATOR))
    assert [c.name for c in checks] == ["coordinator"] and checks[0].ok, checks
    for hook in ("coordinator_run_start", "coordinator_job_args", "coordinator_run_end"):
        assert f"hook.{hook} (line " in checks[0].detail


def test_coordinator_without_hooks_is_caught(cluster, setup, tmp_path):  # noqa: F811
    config, policy, _ = setup
    bare = tmp_path / "scripts_coordinator.py"
    bare.write_text(strip_prng_blocks(COORDINATOR.read_text()))
    code, out, _ = doctor(tmp_path, config, policy, "--coordinator", bare, check=1)
    bad = failed(out)
    assert list(bad) == ["coordinator"], bad
    detail = bad["coordinator"]["detail"]
    for what in ("no import of prng_cache.coordinator.plugin_manager", "hook.coordinator_run_start is never called",
                 "hook.coordinator_job_args (or coordinator_job_payload) is never called",
                 "hook.coordinator_run_end is never called"):
        assert what in detail, detail
    assert fix_of(bad["coordinator"]) == \
        'add the lines of the README section "Register in scripts_coordinator.py" to scripts_coordinator.py'


def test_coordinator_missing_one_hook_or_misusing_one(tmp_path):
    text = COORDINATOR.read_text()
    one = tmp_path / "one.py"
    one.write_text(strip_prng_blocks(text, "arguments for this job"))
    [c] = check_coordinator(str(one))
    assert not c.ok and "hook.coordinator_job_args (or coordinator_job_payload) is never called" in c.detail
    assert "run_start is never" not in c.detail and "no import" not in c.detail
    positional = tmp_path / "positional.py"
    assert "coordinator_run_end(\n                run_id=self.run_id, results=results)" in text
    positional.write_text(text.replace("coordinator_run_end(\n                run_id=self.run_id, results=results)",
                                       "coordinator_run_end(self.run_id, results)"))
    [c] = check_coordinator(str(positional))
    assert not c.ok and re.search(r"hook.coordinator_run_end at line \d+ is given positional arguments", c.detail)
    lacking = tmp_path / "lacking.py"
    lacking.write_text(text.replace("assignments=assignments)", ")"))
    [c] = check_coordinator(str(lacking))
    assert not c.ok and "lacks assignments=" in c.detail


def test_run_start_before_a_dry_run_return_is_warned(tmp_path):
    # the coordinator.py stand-in stages after its dry-run return: fine
    assert [c.name for c in check_coordinator(str(GPU_COORDINATOR))] == ["coordinator"]
    text = GPU_COORDINATOR.read_text()
    early = text.replace(
        "        if self.dry_run:\n            return {\"run_id\": self.run_id, \"dry_run\": True, \"jobs\": len(pairs)}\n",
        "")
    block = early.index("        # --- prng-cache: stage once per run")
    end = early.index("# --- end prng-cache ---", block) + len("# --- end prng-cache ---\n")
    early = (early[:end] + "        if self.dry_run:\n            return {\"dry_run\": True}\n" + early[end:])
    assert early != text
    path = tmp_path / "coordinator.py"
    path.write_text(early)
    checks = {c.name: c for c in check_coordinator(str(path))}
    warn = checks["coordinator_dry_run"]
    assert warn.ok and warn.warning and "runs before the dry-run return" in warn.detail


def test_coordinator_that_is_not_python_exits_2(tmp_path):
    config = tmp_path / "distributed_config.json"
    config.write_text(json.dumps({"nodes": [{"hostname": "localhost", "script_path": str(tmp_path)}]}))
    bad = tmp_path / "coord.py"
    bad.write_text("def run(:\n")
    p = run_cli("doctor", "--config", config, "--policy", os.devnull, "--coordinator", bad, tmp_path=tmp_path,
                check=2)
    assert p.stderr == f"prng-cache: error: {bad}: line 1: not valid Python: invalid syntax\n" or \
        p.stderr.startswith(f"prng-cache: error: {bad}: line 1: not valid Python")
    assert "FAIL  coordinator:" in p.stdout
