"""The CLI through a jump host (sshtunnel forwarder): nothing but prng-cache's
own lines on stderr, whatever paramiko and sshtunnel log underneath."""

from __future__ import annotations

import json

import yaml
from test_faults import cluster, jobs_for, root_of, run_cli, src  # noqa: F401


def _files(cluster, tmp_path, src, jump="rig-a"):
    pol = {"inputs": {"min_jobs": 1, "base_dir": str(src)},
           "transport": {"ssh_config": str(cluster.ssh_config), "known_hosts": str(cluster.known_hosts),
                         "connect_timeout": "3s", "jump_host": jump},
           "nodes": {n.name: {"cache_root": root_of(n)} for n in cluster}}
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(pol))
    (tmp_path / "cluster.json").write_text(json.dumps(
        {"nodes": [{"hostname": n.name, "script_path": str(src)} for n in cluster if n.name != jump]}))
    jf = tmp_path / "jobs.json"
    jf.write_text(json.dumps(jobs_for([src / "survivors.npz", src / "train_history.json"], n=2)))
    return ["--config", tmp_path / "cluster.json", "--policy", tmp_path / "policy.yaml"], jf


def test_all_nodes_up_behind_a_gateway_stderr_stays_empty(cluster, tmp_path, src):
    common, jf = _files(cluster, tmp_path, src)
    for args in (["stage", "--jobs-file", jf], ["status"], ["gc"], ["verify"], ["stage", "--jobs-file", jf]):
        p = run_cli(*args, *common, tmp_path=tmp_path, check=0)
        assert p.stderr == "", (args[0], p.stderr)


def test_node_down_behind_a_gateway_is_one_line_no_traceback(cluster, tmp_path, src):
    common, jf = _files(cluster, tmp_path, src)
    cluster["rig-c"].stop()
    p = run_cli("status", "--json", *common, tmp_path=tmp_path, check=1)
    assert json.loads(p.stdout)["nodes"]["rig-c"]["status"] == "error"
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in p.stderr and len(lines) == 1 and "rig-c" in lines[0], p.stderr
