"""`prng-cache` CLI against real sshd nodes: the core commands unchanged over SSH.

Fault cases (node down, disk full, concurrent coordinators, host key
changes, ...) are in test_faults.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from prng_cache.manifest import MANIFEST_NAME, decode
from prng_cache.transport.ssh import SSHTransport

NODES = ("rig-a", "rig-b", "rig-c")


class CLI:
    def __init__(self, cluster, tmp_path):
        self.cluster = cluster
        self.dir = tmp_path
        self.data = tmp_path / "data"
        self.data.mkdir()
        self.names = ["survivors.npz", "train_history.json", "holdout_history.json", "config.json"]
        sizes = [230_000, 27_000, 7_000, 1_500]
        for name, size in zip(self.names, sizes):
            (self.data / name).write_bytes(os.urandom(size))
        self.config = cluster.write_distributed_config(tmp_path / "distributed_config.json",
                                                       [cluster[h] for h in NODES], script_path=str(tmp_path))
        self.policy = tmp_path / "cache_policy.yaml"
        self.write_policy()
        jobs = [{"job_id": i, "script": "w.py", "args": [str(self.data / n) for n in self.names] + [str(i)],
                 "expected_output": f"out{i}.json", "timeout": 60} for i in range(3)]
        (tmp_path / "jobs.json").write_text(json.dumps(jobs))

    def root(self, host):
        return f"{self.cluster[host].shm}/prng"

    def write_policy(self, transport_extra: str = "", nodes=NODES):
        node_lines = "".join(f"  {h}:\n    cache_root: {self.root(h)}\n" for h in nodes)
        self.policy.write_text(
            f"transport:\n  ssh_config: {self.cluster.ssh_config}\n  known_hosts: {self.cluster.known_hosts}\n"
            f"  connect_timeout: 5s\n{transport_extra}nodes:\n{node_lines}")

    def __call__(self, *args, rc=None):
        env = {k: v for k, v in os.environ.items() if k not in ("PRNG_CACHE", "USE_RAMDISK", "PRNG_CACHE_POLICY")}
        env["XDG_CACHE_HOME"] = str(self.dir / "xdg")
        p = subprocess.run([sys.executable, "-m", "prng_cache", *args, "--config", str(self.config),
                            "--policy", str(self.policy)], cwd=self.dir, env=env,
                           capture_output=True, text=True, timeout=120)
        if rc is not None:
            assert p.returncode == rc, (p.returncode, p.stdout, p.stderr)
        return p

    def stage(self, *extra, rc=0):
        p = self("stage", "--jobs-file", "jobs.json", "--json", *extra, rc=rc)
        return json.loads(p.stdout)["nodes"]

    def manifest(self, host):
        with SSHTransport(host, settings=self.cluster.policy()) as t:
            m, why = decode(t.read_bytes(f"{self.root(host)}/{MANIFEST_NAME}"))
        assert why is None
        return m


@pytest.fixture
def cli(ssh_cluster_clean, tmp_path):
    return CLI(ssh_cluster_clean, tmp_path)


def test_stage_to_three_nodes_then_nothing_to_copy(cli):
    total = sum((cli.data / n).stat().st_size for n in cli.names)
    first = cli.stage()
    for h in NODES:
        assert first[h]["status"] == "ok", first[h]
        assert (first[h]["copied_files"], first[h]["copied_bytes"]) == (4, total)
        node = cli.cluster[h]
        assert node.run(f"stat -c %a {cli.root(h)}").stdout.strip() == "700"
        m = cli.manifest(h)
        assert sorted(n for e in m.entries.values() for n in e.names) == sorted(cli.names)
        for key, e in m.entries.items():
            name = e.names[0]
            remote = node.run(f"sha256sum {cli.root(h)}/{key}/{name}").stdout.split()[0]
            local = subprocess.run(["sha256sum", str(cli.data / name)], capture_output=True,
                                   text=True).stdout.split()[0]
            assert remote == local
    second = cli.stage()
    for h in NODES:
        assert (second[h]["copied_files"], second[h]["copied_bytes"], second[h]["present_files"]) == (0, 0, 4)


def test_changed_input_is_recopied_alone_and_rewrite_follows(cli):
    cli.stage()
    (cli.data / "train_history.json").write_bytes(os.urandom(27_000))
    again = cli.stage()
    for h in NODES:
        assert (again[h]["copied_files"], again[h]["copied_bytes"]) == (1, 27_000)
    jobs = json.loads(cli("rewrite", "--jobs-file", "jobs.json", "--node", "rig-b", rc=0).stdout)
    ram = jobs[0]["args"][1]
    assert ram.startswith(cli.root("rig-b") + "/") and ram.endswith("/train_history.json")
    remote = cli.cluster["rig-b"].run(f"sha256sum {ram}").stdout.split()[0]
    local = subprocess.run(["sha256sum", str(cli.data / "train_history.json")], capture_output=True,
                           text=True).stdout.split()[0]
    assert remote == local


def test_wiped_node_is_detected_and_restaged_in_full(cli):
    first = cli.stage()
    cli.cluster["rig-c"].wipe()  # reboot: /dev/shm comes back empty
    second = cli.stage()
    assert second["rig-c"]["copied_files"] == 4 and second["rig-c"]["cache_id"] != first["rig-c"]["cache_id"]
    assert any("cache_id" in w for w in second["rig-c"]["warnings"])
    assert second["rig-a"]["copied_files"] == 0 and second["rig-a"]["cache_id"] == first["rig-a"]["cache_id"]


def test_status_and_verify_over_ssh(cli):
    cli.stage()
    st = json.loads(cli("status", "--json", rc=0).stdout)["nodes"]
    for h in NODES:
        assert st[h]["entries"] == 4 and st[h]["shm_total_bytes"] == 64 << 20
    assert "corrupt 0" in cli("verify", "--node", "rig-a", rc=0).stdout


def test_unknown_host_key_refused_for_that_node_only(cli):
    # a known_hosts that lacks rig-b's key
    kh = cli.dir / "partial_known_hosts"
    cli.cluster.write_known_hosts(kh, nodes=[cli.cluster["rig-a"], cli.cluster["rig-c"]])
    cfg = cli.dir / "ssh_config_partial"
    cli.cluster.write_ssh_config(cfg, known_hosts=kh)
    cli.policy.write_text(cli.policy.read_text()
                          .replace(str(cli.cluster.known_hosts), str(kh))
                          .replace(str(cli.cluster.ssh_config), str(cfg)))
    out = cli.stage(rc=1)
    assert out["rig-b"]["status"] == "error" and "host key" in out["rig-b"]["reason"]
    assert out["rig-a"]["status"] == "ok" and out["rig-c"]["status"] == "ok"
    assert not cli.cluster["rig-b"].exists(cli.root("rig-b"))


def test_stage_through_a_jump_host(cli):
    # rig-b is reached through rig-a (policy transport.jump_host)
    cli.write_policy("  jump_host: rig-a\n", nodes=("rig-b",))
    cli.config.write_text(json.dumps({"nodes": [json.loads(cli.config.read_text())["nodes"][1]]}))
    before = cli.cluster["rig-a"].log_text()
    out = cli.stage()
    assert out["rig-b"]["status"] == "ok" and out["rig-b"]["copied_files"] == 4
    # rig-a really carried the connection: it accepted a session from us
    assert cli.cluster["rig-a"].log_text().count("Accepted publickey") > before.count("Accepted publickey")


def test_read_only_ram_disk_is_reported_as_read_only(cli):
    a = cli.cluster["rig-a"]
    if not a.isolated:
        pytest.skip(f"needs the node's private tmpfs: {cli.cluster.fallback_reason}")
    a.run("mount -o remount,ro /dev/shm")
    try:
        out = cli.stage(rc=1)
    finally:
        a.run("mount -o remount,rw /dev/shm")
    assert out["rig-a"]["status"] == "error"
    assert "Read-only file system" in out["rig-a"]["reason"] and "Failure" not in out["rig-a"]["reason"], out["rig-a"]
    assert out["rig-b"]["status"] == "ok" and out["rig-c"]["status"] == "ok"


def test_file_where_the_roots_parent_should_be_is_named(cli):
    b = cli.cluster["rig-b"]
    parent = f"{b.shm}/jobs"
    b.run(f"touch {parent}")  # a file, where the root's parent directory should be
    root = f"{parent}/prng"
    text = cli.policy.read_text()
    old = f"  rig-b:\n    cache_root: {cli.root('rig-b')}\n"
    assert old in text
    cli.policy.write_text(text.replace(old, f"  rig-b:\n    cache_root: {root}\n"))
    out = cli.stage(rc=1)
    assert out["rig-b"]["status"] == "error"
    assert f"{parent} is a file, not a directory" in out["rig-b"]["reason"], out["rig-b"]
    assert "No such file" not in out["rig-b"]["reason"]
    assert out["rig-a"]["status"] == "ok"
