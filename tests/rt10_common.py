"""Shared helpers for the tenth red team's attacks on the node helper's
command line (/usr/bin/python3 first), its unjoined big parts and
memoryview sends, and the per-process ssh config cache (commits
da2bf81..ca8cf69), over the real sshd test cluster (tests/conftest.py)."""

from __future__ import annotations

import hashlib
import os
import shlex
import stat

from test_faults import (  # noqa: F401 - fixtures and helpers
    NODES, assert_consistent, cluster, jobs_for, make_policy, node_bytes, node_names, q, root_of, src, stage,
)

from prng_cache.inputs import discover
from prng_cache.transport.ssh import helper

BIG = 256 * 1024  # a part this big goes unjoined (helper._coalesced, size >> 2)
SMALL_FILE = 1 << 20


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def write_files(d, sizes, prefix="f"):
    """One file per size (random bytes, distinct), in ``d``."""
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for i, n in enumerate(sizes):
        p = d / f"{prefix}{i:04d}_{n}.bin"
        p.write_bytes(os.urandom(n))
        out.append(p)
    return out


#: the framing's edges: empty, tiny, both sides of the 256 KB pass-through,
#: the users' 600 KB seeds chunks, SMALL_FILE exactly (still batched)
BOUNDARY_SIZES = [0, 1, 7, 1000, BIG - 1, BIG, BIG + 1, 0, 600_000, 3, 600_001, 599_999, 600_000,
                  SMALL_FILE, BIG, 12, SMALL_FILE - 1, 0, 600_000]


def mixed_files(d, n_tiny: int = 40):
    """BOUNDARY_SIZES interleaved with tiny files (enough items for the
    helper to be started: HELPER_MIN)."""
    sizes = []
    for i, s in enumerate(BOUNDARY_SIZES):
        sizes += [s, 10 + (i * 37) % 5000, 1 + i]
    sizes += [200 + i for i in range(max(0, n_tiny - 2 * len(BOUNDARY_SIZES)))]
    return write_files(d, sizes)


def bundles(policy, d, paths):
    bs = list(discover(jobs_for(paths), policy.inputs, str(d)).bundles.values())
    assert len(bs) == len(paths), (len(bs), len(paths))
    return bs


def served_problems(node, rep, paths) -> list[str]:
    """Every input handed out must be a regular 0400 file on the node with
    exactly the source's bytes; every input must be staged."""
    out = []
    want = {str(p): p.read_bytes() for p in paths}
    for p in want:
        if p not in rep.staged:
            out.append(f"not staged: {p} ({rep.skipped.get(p)})")
    if not rep.staged:
        return out
    # one command for all: sha256 of every served path
    cmd = "for f in " + " ".join(q(r) for r in rep.staged.values()) + \
        "; do if [ -f \"$f\" ] && [ ! -L \"$f\" ]; then printf '%s %s\\n' \"$(stat -c %a -- \"$f\")\" " \
        "\"$(sha256sum -- \"$f\" | cut -d' ' -f1)\"; else echo missing x; fi; done"
    lines = node.run(cmd).stdout.splitlines()
    assert len(lines) == len(rep.staged), lines
    for (src_path, ram), line in zip(rep.staged.items(), lines):
        mode, digest = line.split()
        if digest != sha(want[src_path]):
            out.append(f"{src_path} -> {ram}: wrong bytes ({mode} {digest[:12]})")
        elif mode != "400":
            out.append(f"{src_path} -> {ram}: mode {mode}")
    return out


def spy_helper(monkeypatch) -> dict:
    """Record what went through a running helper: put_dirs calls and the
    length of every chunk _coalesced produced."""
    seen = {"put": 0, "chunks": []}
    orig_put = helper.NodeHelper.put_dirs
    orig_co = helper._coalesced

    def put_dirs(self, items):
        seen["put"] += 1
        return orig_put(self, items)

    def coalesced(parts, size=1 << 20):
        for c in orig_co(parts, size):
            seen["chunks"].append(len(c))
            yield c
    monkeypatch.setattr(helper.NodeHelper, "put_dirs", put_dirs)
    monkeypatch.setattr(helper, "_coalesced", coalesced)
    return seen


def command_with_first_choice(path: str) -> str:
    """helper.COMMAND with its first-choice interpreter (/usr/bin/python3)
    replaced by ``path``: the same shape, a different node."""
    assert helper.COMMAND.count("/usr/bin/python3") == 2, helper.COMMAND
    return helper.COMMAND.replace("/usr/bin/python3", path)


def fake_python(d, kind: str) -> str:
    """A stand-in for a node's /usr/bin/python3 (in ``d``, visible to the
    nodes: they share this machine's file system but /dev/shm)."""
    d.mkdir(parents=True, exist_ok=True)
    p = d / "python3"
    if kind == "absent":
        return str(p)
    if kind == "junk":
        p.write_text("#!/bin/sh\necho 'Python 3.99 (junk)'; echo 'not a helper'; cat >/dev/null\n")
    elif kind == "exit1":
        p.write_text("#!/bin/sh\nexit 1\n")
    elif kind == "hang":
        p.write_text("#!/bin/sh\nexec sleep 600\n")
    elif kind == "not-executable":
        p.write_text("#!/bin/sh\necho junk\n")
        p.chmod(0o644)
        return str(p)
    elif kind == "missing-interpreter":
        p.write_text("#!/nonexistent/prng-rt10/python3\n")
    elif kind == "directory":
        p.mkdir(mode=0o755)
        return str(p)
    elif kind in _OTHER_PYTHONS:  # a real other interpreter of this machine, when it has one
        target = _OTHER_PYTHONS[kind]
        if not os.path.exists(target):
            import pytest
            pytest.skip(f"no {kind} here")
        os.symlink(target, p)
        return str(p)
    else:
        raise ValueError(kind)
    p.chmod(p.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(p)


_OTHER_PYTHONS = {"python2": "/root/.pyenv/versions/2.7.18/bin/python2.7",
                  "python3.6": "/root/.pyenv/versions/3.6.15/bin/python3.6"}


def sh_quote(s: str) -> str:
    return shlex.quote(s)


# ------------------------------------------------ helper processes, by pid
_MARKER = b'\nif __name__ == "__main__":'


def record_helper_pids(monkeypatch, pid_file) -> None:
    """The helper sent to the nodes first appends ``<pid> <SSH_CONNECTION>``
    to ``pid_file`` (a path the nodes share with this process): faults are
    then sent to exactly that process, by its id. The helper's own code
    runs unchanged."""
    real = helper._source()
    assert _MARKER in real
    extra = (
        "\ntry:\n"
        f"    with open({str(pid_file)!r}, 'a') as _rt10_f:\n"
        "        _rt10_f.write('%d %s\\n' % (os.getpid(), os.environ.get('SSH_CONNECTION', '')))\n"
        "except OSError:\n"
        "    pass\n"
    )
    patched = real.replace(_MARKER, extra.encode() + _MARKER)
    monkeypatch.setattr(helper, "_source", lambda: patched)


def helper_pids(pid_file, node) -> list[int]:
    """Pids of the helpers that ran on ``node`` (by its sshd's port)."""
    try:
        lines = open(pid_file).read().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        pid, *conn = line.split()
        if len(conn) == 4 and conn[2] == node.address and int(conn[3]) == node.port:
            out.append(int(pid))
    return out


def signal_pids(pids, sig) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
