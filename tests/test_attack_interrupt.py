"""Attack: Ctrl-C of `prng-cache stage` during a large helper batch."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

from test_batch_faults import _keys_complete, _many
from test_faults import cluster, jobs_for, node_names, root_of, src, write_policy_yaml, node_bytes  # noqa: F401
from prng_cache.hashing import Hasher
from prng_cache.manifest import is_key

STAGER = textwrap.dedent('''
    import os, sys, time
    from prng_cache import cli
    from prng_cache.transport.ssh import helper
    signals = sys.argv[1]
    orig = helper._coalesced
    def chunks(parts, size=1 << 20):
        for i, c in enumerate(orig(parts, size)):
            if i == 2:
                open(os.path.join(signals, "streaming"), "w").close()
                from prng_cache import cancel
                while not os.path.exists(os.path.join(signals, "stalled")) and not cancel.cancelled():
                    time.sleep(0.01)
            yield c
    helper._coalesced = chunks
    sys.exit(cli.main(sys.argv[2:]))
''')


def test_ctrl_c_during_helper_batch(cluster, tmp_path, src):
    node = cluster["rig-a"]
    d, paths = _many(src, 400, 60_000)  # 24 MB: more than the channel window
    pol = write_policy_yaml(cluster, tmp_path / "policy.yaml", d, capacity={"max_percent": 100})
    cfg = cluster.write_distributed_config(tmp_path / "cluster.json", [node], script_path=str(d))
    jf = tmp_path / "jobs.json"
    jf.write_text(json.dumps(jobs_for(paths)))
    (tmp_path / "stager.py").write_text(STAGER)
    sig = tmp_path / "signals"
    sig.mkdir()
    p = subprocess.Popen([sys.executable, str(tmp_path / "stager.py"), str(sig), "stage", "--jobs-file", str(jf),
                          "--config", str(cfg), "--policy", str(pol), "-v"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "xdg")))
    try:
        deadline = time.monotonic() + 60
        while not (sig / "streaming").exists():
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        # a busy node: the helper is slow (stopped) while the stream fills buffers
        time.sleep(0.5)
        p.send_signal(signal.SIGINT)
        t_sig = time.monotonic()
        out, err = p.communicate(timeout=120)
        print("exit after", time.monotonic() - t_sig)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    root = root_of(node)
    print("rc", p.returncode, "err", err.strip()[-300:])
    names_before = node_names(node, root)
    tmp_before = [n for n in names_before if n.startswith((".tmp-", ".trash-"))]
    node.run("pkill -CONT -f prng-cache-node-helper", check=False)
    time.sleep(3)
    names_after = node_names(node, root)
    tmp_after = [n for n in names_after if n.startswith((".tmp-", ".trash-"))]
    keys_after = [n for n in names_after if is_key(n)]
    print("tmp before CONT:", len(tmp_before), "after CONT:", len(tmp_after), "unlisted keys after:", len(keys_after))
    # every <key> complete and hash-correct
    for k in keys_after:
        files = [n for n in node_names(node, f"{root}/{k}") if not n.startswith(".prng-")]
        assert len(files) == 1, (k, files)
        assert Hasher(node_bytes(node, f"{root}/{k}/{files[0]}")).hexdigest() == k
    assert p.returncode == 130, (p.returncode, err)
    assert not tmp_before, tmp_before
    assert not tmp_after, f"{len(tmp_after)} temporaries appeared after the interrupted stage had cleaned up"
