"""Ctrl-C during a large upload, over real sshd nodes whose sessions stall
(SIGSTOP: the upload blocks in real socket I/O, as on a congested link).

The first Ctrl-C must stop every upload (not after the 60 s SSH I/O
timeout), remove this process's temporaries on every node, print one line
and exit 130; a second Ctrl-C must not produce a traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

from test_faults import cluster, jobs_for, node_names, root_of, src, write_policy_yaml  # noqa: F401

# The stager, with one hook: when it opens the upload of big.bin on a node it
# says so (a file per node) and waits until the test has stalled that node.
STAGER = textwrap.dedent('''
    import contextlib, os, sys, time
    from prng_cache import cli
    from prng_cache.transport.ssh import SSHTransport

    orig = SSHTransport.open_write
    signals = sys.argv[1]

    @contextlib.contextmanager
    def open_write(self, path, mode=0o600):
        with orig(self, path, mode) as f:
            if path.endswith("/big.bin"):
                open(os.path.join(signals, self.host + ".uploading"), "w").close()
                while not os.path.exists(os.path.join(signals, "stalled")):
                    time.sleep(0.01)
            yield f

    SSHTransport.open_write = open_write
    sys.exit(cli.main(sys.argv[2:]))
''')


def test_ctrl_c_stops_stalled_uploads_cleans_every_node_and_exits_130(cluster, tmp_path, src):
    nodes = [cluster["rig-a"], cluster["rig-b"]]
    big = src / "big.bin"
    big.write_bytes(os.urandom(40 << 20))  # far more than SSH's window: the writer must block
    paths = [src / "train_history.json", big]
    pol = write_policy_yaml(cluster, tmp_path / "policy.yaml", src)
    cfg = cluster.write_distributed_config(tmp_path / "cluster.json", nodes, script_path=str(src))
    jf = tmp_path / "jobs.json"
    jf.write_text(json.dumps(jobs_for(paths)))
    (tmp_path / "stager.py").write_text(STAGER)
    signals = tmp_path / "signals"
    signals.mkdir()
    p = subprocess.Popen([sys.executable, str(tmp_path / "stager.py"), str(signals), "stage", "--jobs-file",
                          str(jf), "--config", str(cfg), "--policy", str(pol)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "xdg")))
    stopped: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while not all((signals / f"{n.name}.uploading").exists() for n in nodes):
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline, "the stager never started both uploads"
            time.sleep(0.02)
        for n in nodes:  # stall the node side of both uploads
            for pid in n.session_pids():
                try:
                    os.kill(pid, signal.SIGSTOP)
                except ProcessLookupError:  # a short-lived session process (a helper's shell) ended
                    continue
                stopped.append(pid)
        (signals / "stalled").touch()
        # wait until both uploads are really blocked: bytes reached each node's
        # temporary and then stop growing (the window is full)
        time.sleep(1.0)
        assert p.poll() is None
        p.send_signal(signal.SIGINT)
        time.sleep(0.2)
        if p.poll() is None:
            p.send_signal(signal.SIGINT)  # impatient user: must not cause a traceback
        # a hang detector, far below the 60 s SSH I/O timeout the bug waited for
        out, err = p.communicate(timeout=30)
    finally:
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 130, (p.returncode, err)
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "interrupted" in lines[0], err
    for n in nodes:
        names = node_names(n, root_of(n))
        assert not [x for x in names if x.startswith((".tmp-", ".trash-"))], (n.name, names)
        assert not [x for x in names if len(x) == 32 and big.name in node_names(n, f"{root_of(n)}/{x}")]
