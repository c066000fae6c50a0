"""Red team wt13-red2: early connections (prewarm.EarlyConnections) under
Ctrl-C, silent/hung nodes, wrong host keys, aliases, selection, disabled."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from test_faults import (  # noqa: F401 - fixtures
    cluster, src, make_policy, jobs_for, root_of, assert_consistent, write_policy_yaml, node_names,
)
from rt_util import SilentListener, combined_client_files, odd_cluster, log_mark, sessions_in_log

from prng_cache.cluster import Node
from prng_cache.run import plan_run
from prng_cache.transport.ssh import SSHTransport

# a stager whose hashing is slow (a large input set on a slow disk): it
# signals when hashing began
SLOW_HASH = textwrap.dedent('''
    import os, sys, time
    from prng_cache import cli, inputs
    sig = sys.argv[1]
    orig = inputs.hash_and_stat
    def slow(path, memo=None, *a, **k):
        if not os.path.exists(os.path.join(sig, "hashing")):
            open(os.path.join(sig, "hashing"), "w").close()
        time.sleep(0.05)
        return orig(path, memo, *a, **k)
    inputs.hash_and_stat = slow
    sys.exit(cli.main(sys.argv[2:]))
''')


def _many(d, n, size):
    d.mkdir(exist_ok=True)
    paths = []
    for i in range(n):
        p = d / f"in_{i:04d}.bin"
        p.write_bytes(os.urandom(size))
        paths.append(p)
    return paths


def _cli_env(tmp_path):
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "xdg"))
    for k in ("PRNG_CACHE", "USE_RAMDISK", "PRNG_CACHE_POLICY", "PRNG_CACHE_ROOT"):
        env.pop(k, None)
    return env


def _record_transports(monkeypatch) -> list:
    """Every SSHTransport that connects, once each (to check they are closed)."""
    opened: list = []
    orig = SSHTransport.connect

    def connect(self):
        if self not in opened:
            opened.append(self)
        return orig(self)
    monkeypatch.setattr(SSHTransport, "connect", connect)
    return opened


@pytest.mark.parametrize("with_silent", [False, True])
def test_ctrl_c_during_hashing_while_connecting(cluster, tmp_path, with_silent):
    """SIGINT while hashing, early connections open (one to a node that
    never answers): exit 130 at once, one line, no traceback, no thread noise."""
    d = tmp_path / "in"
    paths = _many(d, 400, 2000)
    silent = SilentListener() if with_silent else None
    try:
        cfg, kh = combined_client_files(tmp_path, [cluster], silent.stanza("rig-silent") if silent else "")
        pol = write_policy_yaml(cluster, tmp_path / "policy.yaml", d,
                                transport={"ssh_config": str(cfg), "known_hosts": str(kh), "connect_timeout": "20s"})
        nodes = [cluster["rig-a"], cluster["rig-b"]] + (["rig-silent"] if silent else [])
        conf = cluster.write_distributed_config(tmp_path / "cluster.json", nodes, script_path=str(d))
        jf = tmp_path / "jobs.json"
        jf.write_text(json.dumps(jobs_for(paths)))
        (tmp_path / "stager.py").write_text(SLOW_HASH)
        sig = tmp_path / "sig"
        sig.mkdir()
        marks = {h: log_mark(cluster[h]) for h in ("rig-a", "rig-b")}
        p = subprocess.Popen([sys.executable, str(tmp_path / "stager.py"), str(sig), "stage", "--jobs-file", str(jf),
                              "--config", str(conf), "--policy", str(pol)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_cli_env(tmp_path))
        deadline = time.monotonic() + 30
        while not (sig / "hashing").exists():
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(1.0)  # real nodes connected, the silent one still "connecting"
        p.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        out, err = p.communicate(timeout=120)
        took = time.monotonic() - t0
        print("rc", p.returncode, "took", round(took, 2), "stderr:", err)
        assert p.returncode == 130, (p.returncode, out, err)
        assert "Traceback" not in err and "Exception" not in err, err
        assert took < 5, f"exit took {took:.1f}s after SIGINT"
        # the real nodes were contacted early (that is the feature); their
        # sessions must be gone now
        time.sleep(0.5)
        for h in ("rig-a", "rig-b"):
            assert sessions_in_log(cluster[h], marks[h]) >= 1
            assert cluster[h].session_pids() == [], (h, cluster[h].session_pids())
            # nothing written to the nodes
            assert node_names(cluster[h], root_of(cluster[h])) == []
    finally:
        if silent:
            silent.close()


def _timed_stage(policy, nodes, jobs, early):
    t0 = time.monotonic()
    plan = plan_run(jobs, nodes, policy, min_jobs=1, connect_early=nodes if early else False)
    reps = plan.stage(nodes)
    return time.monotonic() - t0, reps


def test_silent_node_costs_no_more_than_before(cluster, src, tmp_path):
    silent = SilentListener()
    try:
        cfg, kh = combined_client_files(tmp_path, [cluster], silent.stanza("rig-silent"))
        policy = make_policy(cluster, src, ssh_config=str(cfg), known_hosts=str(kh), connect_timeout=3.0)
        nodes = [Node("rig-a"), Node("rig-silent")]
        jobs = jobs_for(sorted(src.iterdir()))
        late, reps_late = _timed_stage(policy, nodes, jobs, early=False)
        for n in cluster:
            n.wipe()
        early, reps_early = _timed_stage(policy, nodes, jobs, early=True)
        print("late", late, reps_late["rig-silent"].reason, "early", early, reps_early["rig-silent"].reason)
        assert reps_early["rig-a"].status == "ok"
        assert reps_early["rig-silent"].status == "error"
        assert reps_early["rig-silent"].reason == reps_late["rig-silent"].reason
        assert early <= late + 1.0
    finally:
        silent.close()


@pytest.mark.parametrize("early", [True, False])
@pytest.mark.parametrize("force", ["/bin/sleep 3600"])
def test_node_whose_sftp_never_answers(cluster, src, tmp_path, force, early):
    """A node that authenticates and then hangs (ForceCommand stuck; a home
    on a hung NFS mount does the same to sftp-server): must become that
    node's error within a bounded time, never hang the stage of the others."""
    with odd_cluster(tmp_path, f"ForceCommand {force}", prefix="hang-") as (c, node):
        cfg, kh = combined_client_files(tmp_path, [cluster, c])
        policy = make_policy(cluster, src, ssh_config=str(cfg), known_hosts=str(kh), connect_timeout=3.0)
        nodes = [Node("rig-a"), Node(node.name)]
        jobs = jobs_for(sorted(src.iterdir()))
        box: list = []

        def go():
            box.append(_timed_stage(policy, nodes, jobs, early=early))
        th = threading.Thread(target=go, daemon=True)
        th.start()
        th.join(45)
        if th.is_alive():
            import faulthandler
            faulthandler.dump_traceback(all_threads=True)
            pytest.fail("stage still running after 45 s (connect_timeout 3 s): one hung node blocks every node")
        took, reps = box[0]
        print(took, {h: (r.status, r.reason) for h, r in reps.items()})
        assert reps["rig-a"].status == "ok"
        assert reps[node.name].status == "error"


def test_wrong_host_key_early_reported(cluster, src):
    policy = make_policy(cluster, src)
    cluster["rig-b"].regen_host_key()
    nodes = [Node("rig-a"), Node("rig-b")]
    plan = plan_run(jobs_for(sorted(src.iterdir())), nodes, policy, min_jobs=1, connect_early=nodes)
    reps = plan.stage(nodes)
    print(reps["rig-b"].reason)
    assert reps["rig-a"].status == "ok"
    assert reps["rig-b"].status == "error" and "CHANGED" in reps["rig-b"].reason
    assert "rig-b" in reps["rig-b"].reason or "127.0.0.11" in reps["rig-b"].reason


def test_alias_early_connection_closed(cluster, src, tmp_path, monkeypatch):
    """rig-a under two names: staged once; the alias' early connection (and
    its helper session on the node) is closed, nothing stays open."""
    cfg = cluster.write_ssh_config(tmp_path / "alias_cfg", aliases={"rig-a-too": ("rig-a", None)})
    policy = make_policy(cluster, src, ssh_config=str(cfg))
    opened = _record_transports(monkeypatch)
    nodes = [Node("rig-a"), Node("rig-a-too")]
    plan = plan_run(jobs_for(sorted(src.iterdir())), nodes, policy, min_jobs=1, connect_early=True)
    reps = plan.stage(nodes)
    assert reps["rig-a"].status == "ok" and reps["rig-a-too"].status == "ok", reps
    assert any("staged once" in w for w in reps["rig-a-too"].warnings)
    assert len(opened) == 2, opened
    time.sleep(0.5)
    assert [t.host for t in opened if t.connected] == []
    assert cluster["rig-a"].session_pids() == [], cluster["rig-a"].session_pids()
    assert_consistent(cluster["rig-a"])


def _cli(tmp_path, *args, env_extra=None):
    env = _cli_env(tmp_path)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "prng_cache", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=120)


@pytest.mark.parametrize("case", ["node-select", "PRNG_CACHE=0", "USE_RAMDISK=false"])
def test_cli_contacts_only_whom_it_should(cluster, src, tmp_path, case):
    pol = write_policy_yaml(cluster, tmp_path / "policy.yaml", src)
    conf = cluster.write_distributed_config(tmp_path / "cluster.json", list(cluster), script_path=str(src))
    jf = tmp_path / "jobs.json"
    jf.write_text(json.dumps(jobs_for(sorted(src.iterdir()))))
    marks = {n.name: log_mark(n) for n in cluster}
    extra: dict = {}
    args = ["stage", "--jobs-file", jf, "--config", conf, "--policy", pol]
    if case == "node-select":
        args += ["--node", "rig-b"]
    else:
        k, v = case.split("=")
        extra[k] = v
    p = _cli(tmp_path, *args, env_extra=extra)
    print(p.returncode, p.stdout, p.stderr)
    contacted = {n.name for n in cluster if "Connection from" in n.log_text()[marks[n.name]:]}
    if case == "node-select":
        assert p.returncode == 0
        assert contacted == {"rig-b"}, contacted
    else:
        assert contacted == set(), contacted


def test_coordinator_dry_run_contacts_no_node(cluster, tmp_path, monkeypatch):
    from coordinator_env import CoordinatorEnv

    env = CoordinatorEnv(cluster, tmp_path, monkeypatch)
    marks = {n.name: log_mark(n) for n in cluster}
    coord = env.mod.ScriptsCoordinator(str(env.config), str(env.jobs), dry_run=True)
    res = coord.run()
    assert res["dry_run"]
    time.sleep(0.5)
    contacted = {n.name for n in cluster if "Connection from" in n.log_text()[marks[n.name]:]}
    assert contacted == set(), contacted


def test_plugin_run_start_twice(cluster, src, monkeypatch):
    """The coordinator calls run start twice (a retry of the run) without
    run end: each start stages with its own early connections; nothing of
    the first stays open."""
    from prng_cache.plugin import PrngCachePlugin

    policy = make_policy(cluster, src)
    opened = _record_transports(monkeypatch)
    jobs = jobs_for(sorted(src.iterdir()), n=4)
    nodes = [{"hostname": h, "script_path": "/tmp"} for h in ("rig-a", "rig-b")]
    assignments = {"rig-a": jobs[:2], "rig-b": jobs[2:]}
    p = PrngCachePlugin(policy)
    p.coordinator_run_start(run_id="r1", nodes=nodes, jobs=jobs, assignments=assignments)
    p.coordinator_run_start(run_id="r2", nodes=nodes, jobs=jobs, assignments=assignments)
    assert all(r.status == "ok" for r in p.reports.values()), p.reports
    rep = p.coordinator_run_end(run_id="r2", results={})
    time.sleep(0.5)
    assert [t.host for t in opened if t.connected] == []
    for h in ("rig-a", "rig-b"):
        assert cluster[h].session_pids() == []
    print(rep)


def test_plan_run_early_without_stage_leaks(cluster, src, monkeypatch):
    """Library use: plan_run(connect_early=...) whose caller never stages
    (an exception between planning and staging, or a caller that only
    wanted the plan): are the connections ever closed?"""
    import gc

    policy = make_policy(cluster, src)
    nodes = [Node("rig-a"), Node("rig-b")]
    plan = plan_run(jobs_for(sorted(src.iterdir())), nodes, policy, min_jobs=1, connect_early=nodes)
    early = plan.early
    for h in ("rig-a", "rig-b"):
        early._slots[h].connected.wait(10)
    del plan
    gc.collect()
    time.sleep(0.5)
    alive = [h for h in ("rig-a", "rig-b") if cluster[h].session_pids()]
    print("sessions still open after the plan was dropped:", alive)
    assert alive == [], f"early connections leak when stage() is never called: {alive}"


def test_cli_with_hung_sftp_node_ends_by_itself(cluster, src, tmp_path):
    """The hung node of test_node_whose_sftp_never_answers under the CLI:
    the stage ends within about connect_timeout (3 s), that node an error,
    the other staged."""
    with odd_cluster(tmp_path, "ForceCommand /bin/sleep 3600", prefix="hang-") as (c, node):
        cfg, kh = combined_client_files(tmp_path, [cluster, c])
        pol = write_policy_yaml(cluster, tmp_path / "policy.yaml", src,
                                transport={"ssh_config": str(cfg), "known_hosts": str(kh)})
        conf = cluster.write_distributed_config(tmp_path / "cluster.json", [cluster["rig-a"], node.name],
                                                script_path=str(src))
        jf = tmp_path / "jobs.json"
        jf.write_text(json.dumps(jobs_for(sorted(src.iterdir()))))
        t0 = time.monotonic()
        p = subprocess.run([sys.executable, "-m", "prng_cache", "stage", "--jobs-file", str(jf), "--config",
                            str(conf), "--policy", str(pol), "--json"], capture_output=True, text=True,
                           env=_cli_env(tmp_path), timeout=60)
        took = time.monotonic() - t0
        doc = json.loads(p.stdout)
        assert p.returncode == 1 and took < 20, (p.returncode, took, p.stderr)
        assert doc["nodes"]["rig-a"]["status"] == "ok"
        hung = doc["nodes"][node.name]
        assert hung["status"] == "error" and "did not answer" in hung["reason"], hung
