"""Red team wt13-red2: odd accounts on a node (SFTP only, no shell, a
login shell that talks on stdout) staging 300 small files, cold then warm."""
from __future__ import annotations

import logging
import os
import shlex
import time

import pytest

from test_faults import cluster, src, make_policy, jobs_for, root_of, assert_consistent  # noqa: F401
from rt_util import combined_client_files, odd_cluster

from prng_cache.cluster import Node
from prng_cache.run import plan_run

q = shlex.quote

BANNER_SHELL = """#!/bin/bash
echo "Welcome to node; 42 users logged in"
exec /bin/bash "$@"
"""


def _setup_account(node, shell: str | None):
    """An extra uid-0 account "prngsvc" with the given login shell, only in
    the node's mount namespace; writable home."""
    home = node.dir / "home"
    home.mkdir(exist_ok=True)
    sh = shell
    if shell == "banner":
        sh = str(node.dir / "bannershell")
        (node.dir / "bannershell").write_text(BANNER_SHELL)
        os.chmod(node.dir / "bannershell", 0o755)
    passwd = node.dir / "passwd"
    passwd.write_text(open("/etc/passwd").read() + f"prngsvc:*:0:0:service:{home}:{sh}\n")
    node.run(f"mount --bind {q(str(passwd))} /etc/passwd")


def _files(d, n=300, size=3000):
    d.mkdir(exist_ok=True)
    out = []
    for i in range(n):
        p = d / f"f{i:04d}.dat"
        p.write_bytes(os.urandom(size))
        out.append(p)
    return out


CASES = {
    "forcecommand-internal-sftp": ("ForceCommand internal-sftp", None),
    "shell-bin-false": ("", "/bin/false"),
    "banner-on-stdout": ("", "banner"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_300_small_files_odd_account(cluster, tmp_path, case, caplog):
    extra, shell = CASES[case]
    with odd_cluster(tmp_path, extra, prefix="acct-") as (c, node):
        if not node.isolated:
            pytest.skip("needs namespaces")
        user = None
        if shell is not None:
            _setup_account(node, shell)
            user = "prngsvc"
        d = tmp_path / "in"
        paths = _files(d)
        cfg, kh = combined_client_files(tmp_path, [c])
        policy = make_policy(c, d, ssh_config=str(cfg), known_hosts=str(kh), connect_timeout=3.0)
        nodes = [Node(node.name, username=user)]
        jobs = jobs_for(paths)
        results = []
        for rnd in ("cold", "warm", "warm2"):
            caplog.clear()
            with caplog.at_level(logging.DEBUG, logger="prng_cache"):
                t0 = time.monotonic()
                plan = plan_run(jobs, nodes, policy, min_jobs=1, connect_early=True)
                rep = plan.stage()[node.name]
                took = time.monotonic() - t0
            warns = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
            dbg = [r.getMessage() for r in caplog.records if "helper" in r.getMessage() or "find" in r.getMessage()]
            results.append((rnd, rep.status, rep.reason, len(rep.staged), round(took, 2), warns, rep.warnings, dbg[:4]))
            print(case, results[-1])
        for rnd, status, reason, staged, took, warns, repw, _ in results:
            assert status == "ok", (rnd, reason)
            assert staged == len(paths)
            assert warns == [], (rnd, warns)
            assert repw == [], (rnd, repw)
        assert_consistent(node)
