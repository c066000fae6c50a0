"""Red team wt13-red2: two `prng-cache stage` at once on fresh roots, 500
small files each (250 shared), early connections; repeated a few times."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from test_faults import (  # noqa: F401
    cluster, jobs_for, root_of, assert_consistent, write_policy_yaml, node_bytes,
)


def _env(tmp_path, k):
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / f"xdg{k}"))
    for v in ("PRNG_CACHE", "USE_RAMDISK", "PRNG_CACHE_POLICY", "PRNG_CACHE_ROOT"):
        env.pop(v, None)
    return env


@pytest.mark.parametrize("round_", range(3))
def test_two_cli_stagers_overlap_fresh_root(cluster, tmp_path, round_):
    d = tmp_path / "in"
    d.mkdir()
    paths = []
    for i in range(750):
        p = d / f"s{i:04d}.dat"
        p.write_bytes(os.urandom(1500 + i))
        paths.append(p)
    sets = [paths[:500], paths[250:]]
    pol = write_policy_yaml(cluster, tmp_path / "policy.yaml", d)
    conf = cluster.write_distributed_config(tmp_path / "cluster.json", list(cluster), script_path=str(d))
    procs = []
    for k, s in enumerate(sets):
        jf = tmp_path / f"jobs{k}.json"
        jf.write_text(json.dumps(jobs_for(s)))
        procs.append(subprocess.Popen([sys.executable, "-m", "prng_cache", "stage", "--jobs-file", str(jf),
                                       "--config", str(conf), "--policy", str(pol), "--json"],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env=_env(tmp_path, k)))
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, (p.returncode, out[-2000:], err)
        doc = json.loads(out)
        print({h: (n["status"], n["copied_files"], n["present_files"], n["warnings"])
               for h, n in doc["nodes"].items()}, "stderr:", err.strip()[:500])
        for h, n in doc["nodes"].items():
            assert n["status"] == "ok", (h, n)
            assert n["skipped"] == {} and n["copied_files"] + n["present_files"] == 500, (h, n)
    for n in cluster:
        m = assert_consistent(n)
        assert len(m.entries) == 750, len(m.entries)
