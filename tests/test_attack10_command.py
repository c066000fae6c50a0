"""Red team 10: the helper's command line, ``test -x /usr/bin/python3 &&
exec /usr/bin/python3 ... || exec python3 ...``, on nodes whose first-choice
python is broken, hangs, is python 2, is an old python 3, is not there or
not executable (helper.COMMAND with that path replaced by a stand-in: the
same shape, another node), and under the login shells there are here.

The stage must serve every input (through the helper when one can start,
over SFTP with a logged reason when not), never fail, never hand a job a
broken path."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from rt10_common import (  # noqa: F401 - fixtures
    assert_consistent, bundles, cluster, command_with_first_choice, fake_python, make_policy, mixed_files,
    served_problems, signal_pids, spy_helper, src, stage,
)

from prng_cache.policy import CapacityPolicy
from prng_cache.transport.ssh import helper, node_helper

NO_HELPER = ["junk", "exit1", "python2", "missing-interpreter", "directory"]
PATH_PYTHON = ["absent", "not-executable"]


def _stage_mixed(cluster, src, monkeypatch, hosts=("rig-a",)):
    d = src / "mixed"
    paths = mixed_files(d)
    policy = make_policy(cluster, d, capacity=CapacityPolicy(max_percent=100))
    bs = bundles(policy, d, paths)
    seen = spy_helper(monkeypatch)
    t0 = time.monotonic()
    reps = stage(cluster, policy, bs, hosts=list(hosts))
    return reps, paths, seen, time.monotonic() - t0, (policy, bs)


@pytest.mark.parametrize("kind", NO_HELPER)
def test_a_broken_first_choice_python_costs_the_helper_not_the_stage(cluster, src, monkeypatch, tmp_path, caplog,
                                                                    kind):
    fake = fake_python(tmp_path / "node-bin", kind)
    monkeypatch.setattr(helper, "COMMAND", command_with_first_choice(fake))
    caplog.set_level(logging.DEBUG, logger=helper.__name__)
    reps, paths, seen, took, (policy, bs) = _stage_mixed(cluster, src, monkeypatch, hosts=("rig-a", "rig-b"))
    for host, rep in reps.items():
        assert rep.status == "ok", (host, rep.to_dict())
        assert served_problems(cluster[host], rep, paths) == [], host
        assert_consistent(cluster[host])
    assert seen["put"] == 0, seen  # over SFTP
    assert took < 20, took
    said = [r.getMessage() for r in caplog.records if "python helper" in r.getMessage()]
    assert {h for h in ("rig-a", "rig-b") if any(m.startswith(h) for m in said)} == {"rig-a", "rig-b"}, said
    # a second stage in this process does not try again, and is warm
    reps2 = stage(cluster, policy, bs, hosts=["rig-a", "rig-b"])
    assert all(r.status == "ok" and r.copied_files == 0 for r in reps2.values())


@pytest.mark.parametrize("kind", PATH_PYTHON)
def test_no_usable_first_choice_falls_back_to_paths_python3(cluster, src, monkeypatch, tmp_path, kind):
    fake = fake_python(tmp_path / "node-bin", kind)
    monkeypatch.setattr(helper, "COMMAND", command_with_first_choice(fake))
    reps, paths, seen, _, _ = _stage_mixed(cluster, src, monkeypatch)
    rep = reps["rig-a"]
    assert rep.status == "ok" and served_problems(cluster["rig-a"], rep, paths) == [], rep.to_dict()
    assert seen["put"] >= 1, "PATH's python3 was not used as the helper"
    assert_consistent(cluster["rig-a"])


def test_an_old_system_python3_serves_byte_exact(cluster, src, monkeypatch, tmp_path):
    """RHEL 8's /usr/bin/python3 is 3.6 (a newer one on PATH is never
    reached once /usr/bin/python3 exists): the helper must work on it."""
    fake = fake_python(tmp_path / "node-bin", "python3.6")
    monkeypatch.setattr(helper, "COMMAND", command_with_first_choice(fake))
    reps, paths, seen, _, _ = _stage_mixed(cluster, src, monkeypatch, hosts=("rig-a", "rig-b", "rig-c"))
    for host, rep in reps.items():
        assert rep.status == "ok" and served_problems(cluster[host], rep, paths) == [], (host, rep.to_dict())
        assert_consistent(cluster[host])
    assert seen["put"] >= 3, "python 3.6 could not run the helper"


def test_a_first_choice_python_that_hangs_costs_connect_timeout_once(cluster, src, monkeypatch, tmp_path):
    pid_file = tmp_path / "hang-pids"
    d = tmp_path / "node-bin"
    d.mkdir()
    fake = d / "python3"
    fake.write_text(f"#!/bin/sh\necho $$ >> {pid_file}\nexec sleep 600\n")
    fake.chmod(0o755)
    monkeypatch.setattr(helper, "COMMAND", command_with_first_choice(str(fake)))
    try:
        reps, paths, seen, took, (policy, bs) = _stage_mixed(cluster, src, monkeypatch)
        rep = reps["rig-a"]
        assert rep.status == "ok" and served_problems(cluster["rig-a"], rep, paths) == [], rep.to_dict()
        assert seen["put"] == 0
        assert took < 3.0 + 12, took  # connect_timeout (3 s), not the 60 s I/O timeout
    finally:
        pids = [int(x) for x in pid_file.read_text().split()] if pid_file.exists() else []
        signal_pids(pids, signal.SIGKILL)


# ------------------------------------------------------------ login shells
SHELLS = [s for s in ("sh", "dash", "bash") if shutil.which(s)]


def _run_command(argv, command, env=None, timeout=20):
    src = helper._source()
    req = b'{"op":"ls","dir":"%s"}\n' % os.fsencode("/").hex().encode()
    return subprocess.run([*argv, command], input=b"%d\n" % len(src) + src + req, capture_output=True,
                          timeout=timeout, env=env)


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("first", ["system", "absent", "not-executable"])
def test_the_command_line_starts_the_helper_in_each_login_shell(shell, first, tmp_path):
    command = helper.COMMAND
    if first != "system":
        command = command_with_first_choice(fake_python(tmp_path / "bin", first))
    # (not ``bash -l``: that runs this machine's profile, pyenv's rehash lock
    # included, which is the environment under test, not the command)
    p = _run_command([shell, "-c"], command)
    assert p.stdout.startswith(node_helper.HELLO), (shell, p.returncode, p.stdout[:100], p.stderr[-300:])
    assert b'"items"' in p.stdout, p.stdout[:200]


@pytest.mark.parametrize("shell", SHELLS)
def test_no_python_at_all_ends_at_once_in_each_shell(shell, tmp_path):
    """Neither the first choice nor a python3 on PATH: the command ends
    (127) at once, nothing read from stdin is run by the shell."""
    command = command_with_first_choice(fake_python(tmp_path / "bin", "absent"))
    bare = tmp_path / "bare"
    bare.mkdir()
    for tool in ("test",):
        if shutil.which(tool):
            os.symlink(shutil.which(tool), bare / tool)
    t0 = time.monotonic()
    p = _run_command([shutil.which(shell), "-c"], command, env={"PATH": str(bare)})
    assert time.monotonic() - t0 < 10
    assert p.returncode == 127 and p.stdout == b"", (p.returncode, p.stdout[:100], p.stderr)


def test_the_coordinator_plugin_with_a_broken_first_choice_hands_out_exact_ram_paths(cluster, src, monkeypatch,
                                                                                    tmp_path):
    """scripts_coordinator-style: the plugin's job args name RAM copies with
    the source's bytes, though the node's first-choice python is junk."""
    from prng_cache.plugin import PrngCachePlugin
    from prng_cache.policy import InputsPolicy, NodeOverride, Policy
    from rt10_common import node_bytes, root_of, write_files
    fake = fake_python(tmp_path / "node-bin", "junk")
    monkeypatch.setattr(helper, "COMMAND", command_with_first_choice(fake))
    chunks = write_files(src / "scoring_chunks", [600_000 + i for i in range(40)], prefix="chunk_")
    policy = Policy(inputs=InputsPolicy(min_jobs=1, base_dir=str(src)), transport=cluster.policy(connect_timeout=3.0),
                    nodes=tuple(NodeOverride(n.name, cache_root=root_of(n)) for n in cluster))
    jobs = [{"job_id": f"s{i}", "script": "score.py",
             "args": ["--seeds-file", str(c), "--train-history", str(src / "train_history.json"),
                      "--holdout-history", str(src / "holdout_history.json"), "-o", f"scores_{i:04}.json"],
             "expected_output": f"scores_{i:04}.json", "timeout": 60} for i, c in enumerate(chunks)]
    hosts = ["rig-a", "rig-b"]
    nodes = [{"hostname": h, "script_path": str(src)} for h in hosts]
    assignments = {h: [j for i, j in enumerate(jobs) if i % 2 == k] for k, h in enumerate(hosts)}
    p = PrngCachePlugin(policy)
    p.coordinator_run_start(run_id="run-1", nodes=nodes, jobs=jobs, assignments=assignments)
    try:
        for node in nodes:
            n = cluster[node["hostname"]]
            for job in assignments[node["hostname"]]:
                args = p.coordinator_job_args(node=node, job=job)
                assert args is not None, job["job_id"]
                for orig, new in zip(job["args"], args):
                    if orig == new:
                        continue
                    assert new.startswith(root_of(n) + "/"), (orig, new)
                    assert node_bytes(n, new) == open(orig, "rb").read(), (orig, new)
    finally:
        rep = p.coordinator_run_end(run_id="run-1", results={})
    assert {h: rep["nodes"][h]["status"] for h in hosts} == {"rig-a": "ok", "rig-b": "ok"}, rep
