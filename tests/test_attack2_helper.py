"""Red team wt13-red2: the node helper dying or answering badly after it
did its work; a huge request on a small /dev/shm; the root swapped for a
symlink between ensure_root and survey."""
from __future__ import annotations

import logging
import os
import shlex
import time

import pytest

from test_faults import (  # noqa: F401
    cluster, src, make_policy, jobs_for, root_of, assert_consistent, node_names, node_bytes, stage,
)
from rt_util import combined_client_files, odd_cluster

from prng_cache.cluster import Node
from prng_cache.inputs import discover
from prng_cache.manifest import is_key
from prng_cache.run import plan_run
from prng_cache.transport.ssh import helper, node_helper

q = shlex.quote

_PUT = "            ans = op_put(req, inp, out)\n"
MUTATIONS = {
    # every item created and renamed into place, then the helper dies
    "die-after-rename": _PUT + "            out.flush(); os._exit(0)\n",
    # half an answer, no newline, then dies
    "truncated": _PUT + ("            _a = json.dumps(ans).encode(); out.write(_a[:len(_a) // 2]); out.flush();"
                         " os._exit(0)\n"),
    # half an answer WITH a newline, and the helper lives on
    "cut-with-newline": _PUT + ("            _a = json.dumps(ans).encode(); out.write(_a[:len(_a) // 2] + b'\\n');"
                                " out.flush(); continue\n"),
    # an answer that drops one item's result (out of protocol)
    "short-results": _PUT + "            ans['results'] = ans['results'][:-1]\n",
    # killed (SIGKILL) in the middle of the items: half renamed, one tmp half-written
    "sigkill-mid": _PUT.replace("ans = op_put(req, inp, out)",
                                "ans = op_put(req, inp, out) if len(req['items']) < 8 else "
                                "(_put_item(req['items'][0], inp, out), _put_item(req['items'][1], inp, out), "
                                "os.kill(os.getpid(), 9))"),
}


def _mutated(kind: str) -> bytes:
    src_ = open(node_helper.__file__).read()
    assert _PUT in src_
    return src_.replace(_PUT, MUTATIONS[kind]).encode()


def _many(d, n, size):
    d.mkdir(exist_ok=True)
    out = []
    for i in range(n):
        p = d / f"m{i:05d}.bin"
        p.write_bytes(os.urandom(size))
        out.append(p)
    return out


@pytest.mark.parametrize("kind", list(MUTATIONS))
def test_helper_bad_ending_after_its_work(cluster, tmp_path, monkeypatch, kind, caplog):
    node = cluster["rig-a"]
    d = tmp_path / "in"
    paths = _many(d, 80, 5000)
    policy = make_policy(cluster, d)
    monkeypatch.setattr(helper, "_source", lambda: _mutated(kind))
    nodes = [Node("rig-a")]
    with caplog.at_level(logging.WARNING, logger="prng_cache"):
        plan = plan_run(jobs_for(paths), nodes, policy, min_jobs=1, connect_early=True)
        rep = plan.stage()["rig-a"]
    print(kind, rep.status, rep.reason, len(rep.staged), rep.warnings,
          [r.getMessage() for r in caplog.records][:3])
    # whatever the helper did, served paths are complete and right
    for p, ram in rep.staged.items():
        assert node_bytes(node, ram) == open(p, "rb").read(), p
    assert rep.status == "ok", (rep.status, rep.reason)
    assert len(rep.staged) == len(paths)
    assert_consistent(node)
    # a second stage finds everything, nothing left over
    monkeypatch.undo()
    rep2 = stage(cluster, policy, list(plan.bundles), hosts=["rig-a"])["rig-a"]
    assert rep2.status == "ok" and rep2.copied_files == 0, rep2.to_dict()
    assert_consistent(node)


@pytest.mark.parametrize("max_percent", [None, 100])
def test_5000_files_in_one_request_small_shm(tmp_path, caplog, max_percent):
    """5000+ one-page files through one helper put on an 8 MiB /dev/shm:
    the planner counts bytes (~1 MB) but tmpfs needs a page per file."""
    with odd_cluster(tmp_path, "", prefix="small-", tmpfs="8m") as (c, node):
        if not node.isolated:
            pytest.skip("needs namespaces")
        d = tmp_path / "in"
        paths = _many(d, 5200, 200)
        cfg, kh = combined_client_files(tmp_path, [c])
        policy = make_policy(c, d, ssh_config=str(cfg), known_hosts=str(kh), connect_timeout=3.0)
        from prng_cache.policy import CapacityPolicy
        from dataclasses import replace
        if max_percent is not None:
            policy = replace(policy, capacity=CapacityPolicy(max_percent=max_percent, warn_percent=100))
        t0 = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="prng_cache"):
            plan = plan_run(jobs_for(paths), [Node(node.name)], policy, min_jobs=1, connect_early=True)
            rep = plan.stage()[node.name]
        took = time.monotonic() - t0
        reasons = sorted(set(rep.skipped.values()))
        print("took", round(took, 1), rep.status, (rep.reason or "")[:300], len(rep.staged), len(rep.skipped),
              reasons[:3], rep.warnings[:3], [r.getMessage()[:200] for r in caplog.records][:5])
        print(node.run("df -k /dev/shm; ls -a /dev/shm/prng | head -5; ls /dev/shm/prng | wc -l").stdout)
        # the planner said it fits: the node must serve what it planned, or
        # at least some of it; an all-or-nothing error is the finding
        assert rep.status in ("ok", "fallback"), (rep.status, rep.reason)
        for p, ram in list(rep.staged.items())[:200]:
            assert node_bytes(node, ram) == open(p, "rb").read()
        m = assert_consistent(node, leftovers_ok=False) if node.exists(root_of(node) + "/manifest.msgpack") else None
        print("manifest entries", None if m is None else len(m.entries))
        names = node_names(node, root_of(node))
        assert not [n for n in names if n.startswith(".tmp-")], [n for n in names if n.startswith(".tmp-")][:5]
        if m is None:
            assert not [n for n in names if is_key(n)], "unrecorded entries left in the root"


def test_root_swapped_for_symlink_before_survey(cluster, src, monkeypatch):
    """Between ensure_root and the survey, the root is replaced by a symlink
    to another directory holding someone's data: nothing may be written
    through it, nothing of theirs deleted, nothing served from there."""
    node = cluster["rig-a"]
    root = root_of(node)
    d = src
    policy = make_policy(cluster, d)
    nodes = [Node("rig-a")]
    jobs = jobs_for(sorted(d.iterdir()))
    # a first stage: the root exists and is ours
    plan_run(jobs, nodes, policy, min_jobs=1).stage()
    other = f"{node.shm}/elsewhere"
    node.run(f"rm -rf {q(other)}; mkdir -p {q(other)}/keep; echo theirs > {q(other)}/keep/data; "
             f"echo theirs > {q(other)}/.tmp-notours; chmod 700 {q(other)}")
    from prng_cache.transport.ssh import operations
    orig = operations.SSHTransport.survey
    done = []

    def survey(self, parent, paths, children=None):
        if not done:
            done.append(1)
            node.run(f"mv {q(root)} {q(root)}.moved && ln -s {q(other)} {q(root)}")
        return orig(self, parent, paths, children)
    monkeypatch.setattr(operations.SSHTransport, "survey", survey)
    for n in ("x1", "x2"):
        (d / f"{n}.bin").write_bytes(os.urandom(1000))
    jobs = jobs_for(sorted(d.iterdir()))
    rep = plan_run(jobs, nodes, policy, min_jobs=1).stage()["rig-a"]
    print(bool(done), rep.status, rep.reason, rep.staged, rep.warnings)
    print(node.run(f"ls -la {q(other)} {q(root)}").stdout)
    assert node.run(f"cat {q(other)}/keep/data").stdout.strip() == "theirs"
    assert node.run(f"cat {q(other)}/.tmp-notours").stdout.strip() == "theirs"
    written = [n for n in node_names(node, other) if n not in ("keep", ".tmp-notours")]
    assert written == [], f"wrote through the symlinked root: {written}"
    for p, ram in rep.staged.items():
        assert node_bytes(node, ram) == open(p, "rb").read()
