"""many small inputs with hostile names through put_dirs and the find listing."""
from __future__ import annotations

import contextlib
import os

import pytest

from test_faults import (  # noqa: F401 - fixtures
    cluster, src, make_policy, stage, node_names, node_manifest, root_of, bundles_of, store_for, jobs_for,
)
from prng_cache.cluster import Node
from prng_cache.inputs import discover
from prng_cache.nodeops import run_on_node
from prng_cache.reports import NodeReport
from prng_cache.staging import held_inputs
from prng_cache.transport.ssh import helper, listing, operations

HOSTILE = ["sp ace", "tab\there", "new\nline", "-dash", "$(touch pwned-{t})", "`touch pwned-{t}b`",
           "ü数据", "*?[x]", "quote'\"", "back\\slash", "cr\rhere", "a;b|c&d>e", "--", "-n",
           ".hidden", "x" * 200]


def _names(tok: str, n: int) -> list[str]:
    out = []
    for i in range(n):
        base = HOSTILE[i % len(HOSTILE)].format(t=tok)
        out.append(f"{i:03d}{base}"[:255])
    out.append(("L" * 255))  # longest name a file system allows
    return out


@pytest.mark.parametrize("path", ["helper", "sftp+find"])
def test_250_hostile_names_batch_then_find_warm_check(cluster, src, monkeypatch, path):
    node = cluster["rig-a"]
    tok = os.urandom(3).hex()
    names = _names(tok, 250)
    d = src / "many"
    d.mkdir()
    paths = []
    for i, n in enumerate(names):
        p = d / n
        p.write_bytes(f"{i}|{n}|".encode() * (1 + i))
        paths.append(p)
    policy = make_policy(cluster, d, node_helper=path == "helper")
    disc = discover(jobs_for(paths), policy.inputs, str(d))
    bs = list(disc.bundles.values())
    assert len(bs) == len(names), disc.skipped
    rep = stage(cluster, policy, bs, hosts=["rig-a"])["rig-a"]
    assert rep.status == "ok", rep.to_dict()
    assert set(rep.staged) == {str(p) for p in paths}
    with contextlib.closing(store_for(cluster, policy, "rig-a").t) as t:
        for p in paths:
            assert t.read_bytes(rep.staged[str(p)]) == p.read_bytes(), p.name
    # warm check: 251 entries -> one request to the helper, or one find over exec
    calls = []
    if path == "helper":
        monkeypatch.setattr(operations, "HELPER_MIN_LISTING", 1)  # waited for: deterministic
        for meth in ("listdirs", "survey"):
            orig_l = getattr(helper.NodeHelper, meth)
            monkeypatch.setattr(helper.NodeHelper, meth,
                                lambda self, *a, _o=orig_l: calls.append(True) or _o(self, *a))
    else:
        orig = listing.run

        def spy(tr, parent, ns):
            r = orig(tr, parent, ns)
            calls.append(r is not None)
            return r
        monkeypatch.setattr(listing, "run", spy)
    rep2 = stage(cluster, policy, bs, hosts=["rig-a"])["rig-a"]
    assert calls and all(calls), calls
    assert rep2.status == "ok" and rep2.copied_files == 0, rep2.to_dict()
    assert set(rep2.staged) == {str(p) for p in paths}

    def held(store):
        return NodeReport(host="rig-a", status="ok", staged=held_inputs(store, bs))
    assert set(run_on_node(Node("rig-a"), policy, held).staged) == {str(p) for p in paths}
    assert not node.run(f"find {node.shm} ~ / -xdev -maxdepth 3 -name 'pwned-{tok}*' 2>/dev/null",
                        check=False).stdout
    for dd in (os.getcwd(), os.path.expanduser("~"), str(d), "/tmp"):
        assert not [x for x in os.listdir(dd) if x.startswith(f"pwned-{tok}")]
    assert not [n for n in node_names(node, root_of(node)) if n.startswith(".tmp-")]


def test_non_utf8_name_among_200_batched_does_not_sink_the_node(cluster, src):
    """A coordinator file name that is not UTF-8 (bytes 0xff) among 200 small inputs."""
    d = src / "bytesnames"
    d.mkdir()
    paths = []
    for i in range(200):
        p = d / f"ok{i:03d}.json"
        p.write_bytes(b"%d" % i * 10)
        paths.append(p)
    bad = os.fsdecode(bytes(d) + b"/bad\xff\xfename.json")
    with open(os.fsencode(bad), "wb") as f:
        f.write(b"bad bytes name")
    paths.append(bad)
    policy = make_policy(cluster, d)
    disc = discover(jobs_for(paths), policy.inputs, str(d))
    bs = list(disc.bundles.values())
    rep = stage(cluster, policy, bs, hosts=["rig-a"])["rig-a"]
    leftovers = [n for n in node_names(cluster["rig-a"], root_of(cluster["rig-a"])) if n.startswith(".tmp-")]
    # expected: the odd name falls back (or is staged); the other 200 inputs are staged, nothing left over
    # observed: node 'error' "UnicodeEncodeError: 'utf-8' codec can't encode characters ... surrogates not
    # allowed", nothing staged, and the window's .tmp-* directories are left on the node
    assert {str(p) for p in paths[:200]} <= set(rep.staged), (rep.status, rep.reason, len(leftovers))
    assert not leftovers, len(leftovers)


def test_non_utf8_name_large_file_path_for_comparison(cluster, src):
    """Same odd name, but a > 1 MiB file (the one-by-one path): is the node sunk there too?"""
    d = src / "bytesbig"
    d.mkdir()
    ok = d / "ok.json"
    ok.write_bytes(b"ok")
    bad = os.fsdecode(bytes(d) + b"/bad\xffbig.bin")
    with open(os.fsencode(bad), "wb") as f:
        f.write(os.urandom(2 << 20))
    policy = make_policy(cluster, d)
    bs = list(discover(jobs_for([ok, bad]), policy.inputs, str(d)).bundles.values())
    rep = stage(cluster, policy, bs, hosts=["rig-a"])["rig-a"]
    assert str(ok) in rep.staged, (rep.status, rep.reason)
