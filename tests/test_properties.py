"""Property-based tests (hypothesis): rewriting never touches non-path
items, output-flag values, URLs or JSON, and never rewrites a spelling that
would not open the staged file; manifest decoding never raises."""

from __future__ import annotations

import copy
import math
import os
import shutil

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prng_cache.manifest import Manifest, decode
from prng_cache.plugin import PrngCachePlugin
from prng_cache.policy import InputsPolicy, NodeOverride, Policy
from prng_cache.rewrite import is_number, is_url, looks_like_json, resolve, rewrite_args

# fast and reproducible enough for every run; no example database in the worktree
FAST = settings(max_examples=300, deadline=None, database=None)

BASE = "/home/u/work"
OUT = ("--output-file", "--output", "-o")
NAMES = ("a.npz", "d/b.json", "c.json", "out.json")  # every one is staged, even the output
STAGED = {f"{BASE}/{n}": f"/dev/shm/prng/{i:032x}/{n.rsplit('/', 1)[-1]}" for i, n in enumerate(NAMES)}

name = st.sampled_from(NAMES + ("missing.json",))
spelling = st.one_of(
    name,
    name.map(lambda n: "./" + n),
    name.map(lambda n: f"{BASE}/{n}"),
    name.map(lambda n: f"{BASE}//./{n}"),
    name.map(lambda n: n + "/"),  # ENOTDIR on the original
    name.map(lambda n: n + "/."),
    name.map(lambda n: "d/../" + n),  # ".." after something that may be a symlink
    name.map(lambda n: f"{BASE}/x/../{n}"),
)
non_string = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
    st.just({"window": 7}), st.just(["a.npz"]), st.just(b"a.npz"), st.just(("c.json",)),
)
token = st.one_of(
    spelling,
    st.tuples(st.sampled_from(("--in", "--train-history", "-x") + OUT), spelling).map("=".join),
    st.sampled_from(OUT + ("--verbose", "-v", "--window")),
    st.sampled_from(("sqlite:///./x.db", f"file://{BASE}/a.npz", "http://h/a.npz", "s3://b/c.json")),
    st.sampled_from(('{"path": "a.npz"}', '["a.npz"]', ' {"a": 1}', "[]")),
    st.sampled_from(("7", "-3", "0.5", "1e-5", "+2", ".5")),
    st.text(max_size=12),
    non_string,
)
args_lists = st.lists(token, max_size=12)
expected = st.sampled_from((None, "out.json", "./out.json", f"{BASE}/out.json"))


def _values(args: list):
    """(index, "--flag=" or "", value) for every string item that is not an
    output flag's value (the spec's walk over args, written without the
    implementation)."""
    skip = False
    for i, a in enumerate(args):
        if skip:  # the value of an output flag, whatever its type
            skip = False
            continue
        if not isinstance(a, str):
            continue
        prefix, value = "", a
        if a.startswith("-") and len(a) > 1 and not is_number(a):
            flag, eq, value = a.partition("=")
            if not eq:
                skip = flag in OUT
                continue
            if flag in OUT:
                continue
            prefix = flag + "="
        yield i, prefix, value


def may_change(args: list, expected_output: str | None) -> dict[int, str]:
    """index -> the only value that item may be rewritten to (the spec)."""
    out = resolve(expected_output, BASE) if expected_output else None
    allowed: dict[int, str] = {}
    for i, prefix, value in _values(args):
        if not value or is_url(value) or looks_like_json(value) or is_number(value):
            continue
        # only spellings whose last component is a name and that have no "..":
        # anything else may open another file, or none
        parts = value.split("/")
        if parts[-1] in ("", ".", "..") or ".." in parts:
            continue
        r = resolve(value, BASE)
        if r != out and r in STAGED:
            allowed[i] = prefix + STAGED[r]
    return allowed


@FAST
@given(args=args_lists, expected_output=expected)
def test_rewrite_changes_only_staged_path_strings(args, expected_output):
    before = copy.deepcopy(args)
    new = rewrite_args(args, staged=STAGED, base_dir=BASE, output_flags=OUT, expected_output=expected_output)
    assert len(new) == len(args) and new is not args
    allowed = may_change(args, expected_output)
    for i, (a, b) in enumerate(zip(args, new)):
        if i in allowed:
            assert b == allowed[i], (i, a, b)
        elif isinstance(a, str):
            assert b == a, (i, a, b)
        else:
            assert b is a, (i, a, b)  # the same object: type and value kept
    assert repr(args) == repr(before)  # never mutated (repr: nan != nan)


# ------------------------------------------------------- the plugin, end to end
@pytest.fixture(scope="module")
def plugin_run(tmp_path_factory):
    """One real plugin run on this machine (localhost in cache mode) with
    every name in NAMES staged; hypothesis then dispatches arbitrary jobs."""
    base = tmp_path_factory.mktemp("props") / "work"
    for n in NAMES:
        os.makedirs(os.path.dirname(f"{base}/{n}"), exist_ok=True)
        with open(f"{base}/{n}", "w") as f:
            f.write(n)
    for n in ("None", "True", "False", "nan", "inf", "7"):  # str() of non-strings
        with open(f"{base}/{n}", "w") as f:
            f.write(n)
    root = f"/dev/shm/prng-proptest-{os.getpid()}-{os.urandom(3).hex()}"
    policy = Policy(cache_root=root, nodes=(NodeOverride("localhost", mode="cache"),),
                    inputs=InputsPolicy(min_jobs=1, base_dir=str(base)))
    node = {"hostname": "localhost", "script_path": str(base)}
    jobs = [{"job_id": f"s{i}", "args": [n, None, True, float("nan"), 7], "expected_output": "o.json"}
            for i, n in enumerate(NAMES + ("None", "True", "nan", "7"))]
    p = PrngCachePlugin(policy)
    p.coordinator_run_start(run_id="props", nodes=[node], jobs=jobs, assignments={"localhost": jobs})
    yield p, node, str(base), root
    p.coordinator_run_end(run_id="props", results={})
    for d, _, _ in os.walk(root):
        os.chmod(d, 0o700)
    shutil.rmtree(root, ignore_errors=True)


@settings(FAST, max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(args=args_lists)
def test_plugin_changes_only_path_strings(plugin_run, args):
    p, node, base, root = plugin_run
    job = {"job_id": "j", "args": args, "expected_output": "out.json"}
    before = copy.deepcopy(args)
    new = p.coordinator_job_args(node=node, job=job)
    assert repr(job["args"]) == repr(before)
    if new is None:
        return
    assert len(new) == len(args)
    for a, b in zip(args, new):
        if not isinstance(a, str):
            assert b is a, (a, b)
        elif b != a:  # only a path string, into a RAM copy of that file
            assert root in b, (a, b)
            value = a.partition("=")[2] if a.startswith("-") else a
            with open(os.path.join(base, value), "rb") as f1, open(b.partition("=")[2] or b, "rb") as f2:
                assert f1.read() == f2.read()


# ------------------------------------------------------------------ manifests
def _finite(t) -> bool:
    return type(t) is float and math.isfinite(t)


def _check_decode(data: bytes) -> None:
    m, why = decode(data)
    if m is None:
        assert isinstance(why, str) and why
        return
    assert isinstance(m, Manifest) and why is None
    # what it accepts is what to_bytes writes: no NaN/inf time (an infinite
    # lease would pin entries forever), no bool size, no str()'ed owner
    assert isinstance(m.cache_id, str) and m.cache_id and _finite(m.created)
    for e in m.entries.values():
        assert type(e.size) is int and e.size >= 0 and _finite(e.added) and _finite(e.last_used)
    for lease in m.leases.values():
        assert _finite(lease.expires) and type(lease.owner) is str
    assert decode(m.to_bytes())[0] == m  # and it writes it back unchanged


@settings(FAST, max_examples=500)
@given(data=st.binary(max_size=512))
def test_manifest_decode_never_raises_on_arbitrary_bytes(data):
    _check_decode(data)


scalar = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**63, max_value=2**64 - 1),
                   st.floats(), st.text(max_size=40), st.binary(max_size=40),
                   st.sampled_from(["0" * 32, "f" * 32, "a.npz", "..", ".tmp-x", ""]))
value = st.recursive(scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.text(max_size=40), st.sampled_from(["0" * 32, "files", "size", "hashes"])),
                    inner, max_size=4)), max_leaves=12)


def manifest_like(entries, leases, top):
    doc = {"format": 1, "cache_id": "c0ffee", "created": 1.0, "entries": entries, "leases": leases}
    doc.update(top)
    return doc


entry = st.fixed_dictionaries({}, optional={
    "size": value, "files": st.one_of(value, st.dictionaries(st.text(max_size=12), value, max_size=3)),
    "names": value, "added": value, "last_used": value})
lease = st.fixed_dictionaries({}, optional={"hashes": value, "expires": value, "owner": value})
docs = st.builds(
    manifest_like,
    st.one_of(value, st.dictionaries(st.sampled_from(["0" * 32, "a" * 32, "bad"]), st.one_of(entry, value),
                                     max_size=3)),
    st.one_of(value, st.dictionaries(st.text(max_size=8), st.one_of(lease, value), max_size=3)),
    st.dictionaries(st.sampled_from(["format", "cache_id", "created", "entries", "leases"]), value, max_size=2),
)


@settings(FAST, max_examples=500)
@given(doc=st.one_of(docs, value))
def test_manifest_decode_never_raises_on_manifest_like_documents(doc):
    _check_decode(msgpack.packb(doc, use_bin_type=True))


K = "0" * 32
VALID = {"format": 1, "cache_id": "c0ffee", "created": 1.7e9,
         "entries": {K: {"size": 5, "names": ["a.npz"], "files": {"a.npz": "1" * 32},
                         "added": 1.7e9, "last_used": 1.7e9}},
         "leases": {"run-1": {"hashes": [K], "expires": 1.8e9, "owner": "host:1"}}}
LEAVES = [("format",), ("cache_id",), ("created",), ("entries",), ("entries", K), ("entries", K, "size"),
          ("entries", K, "files"), ("entries", K, "files", "a.npz"), ("entries", K, "added"),
          ("entries", K, "last_used"), ("leases",), ("leases", "run-1"), ("leases", "run-1", "hashes"),
          ("leases", "run-1", "expires"), ("leases", "run-1", "owner")]
DELETE = object()


def mutated(changes) -> dict:
    doc = copy.deepcopy(VALID)
    for path, new in changes:
        here = doc
        for k in path[:-1]:
            here = here.get(k) if isinstance(here, dict) else None
        if isinstance(here, dict) and path[-1] in here:
            if new is DELETE:
                del here[path[-1]]
            else:
                here[path[-1]] = new
    return doc


odd = st.sampled_from([float("nan"), float("inf"), -float("inf"), "inf", "1.5", b"1", True, False, -1,
                        2**64 - 1, -2**63, "", msgpack.ExtType(1, b"x")])


@settings(FAST, max_examples=500)
@given(changes=st.lists(st.tuples(st.sampled_from(LEAVES), st.one_of(odd, value, st.just(DELETE))),
                        min_size=1, max_size=3))
def test_manifest_decode_of_a_damaged_valid_manifest(changes):
    """One to three fields of a valid manifest replaced or removed: rejected
    with a reason, or accepted as something it can write back unchanged
    (a NaN or infinite time, say a lease that never expires, is damage)."""
    assert decode(msgpack.packb(VALID, use_bin_type=True))[0] is not None
    _check_decode(msgpack.packb(mutated(changes), use_bin_type=True))


# ------------------------------------------------------ path aliases (issue 11)
LEGACY = "/dev/shm/prng-legacy-prop/step2"  # never created: an alias is never read
ALIASED = ("a.npz", "d/b.json", "c.json")
legacy_name = st.sampled_from(ALIASED + ("missing.json",))
legacy_spelling = st.one_of(
    legacy_name.map(lambda n: f"{LEGACY}/{n}"),
    legacy_name.map(lambda n: f"{LEGACY}//./{n}"),
    legacy_name.map(lambda n: f"{LEGACY}/{n}/"),
    legacy_name.map(lambda n: f"{LEGACY}/x/../{n}"),
    legacy_name.map(lambda n: f"{LEGACY}/../step2/{n}"),
)
alias_token = st.one_of(
    legacy_spelling,
    st.tuples(st.sampled_from(("--in", "-x") + OUT), legacy_spelling).map("=".join),
    st.sampled_from(OUT), non_string, st.text(max_size=8), name,
)


def alias_may_change(args: list, target) -> dict[int, str]:
    """index -> the value an aliased item must become (the spec, written
    without the implementation): a legacy spelling that opens a name under
    the prefix (no "..", a name last) -> ``target(name)``."""
    out: dict[int, str] = {}
    for i, prefix, value in _values(args):
        parts = value.split("/")
        if not value.startswith("/") or parts[-1] in ("", ".", "..") or ".." in parts:
            continue
        clean = "/" + "/".join(p for p in parts if p not in ("", "."))
        if clean.startswith(LEGACY + "/") and clean[len(LEGACY) + 1:] in ALIASED:
            out[i] = prefix + target(clean[len(LEGACY) + 1:])
    return out


@pytest.fixture(scope="module")
def alias_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("alias-props") / "work"
    for n in ALIASED:
        os.makedirs(os.path.dirname(f"{base}/{n}"), exist_ok=True)
        with open(f"{base}/{n}", "w") as f:
            f.write("current " + n)
    root = f"/dev/shm/prng-aliasprop-{os.getpid()}-{os.urandom(3).hex()}"
    policy = Policy(cache_root=root, nodes=(NodeOverride("localhost", mode="cache"), NodeOverride("rig-d", mode="direct")),
                    inputs=InputsPolicy(min_jobs=1, path_aliases=((LEGACY + "/", "{script_path}/"),)))
    nodes = [{"hostname": "localhost", "script_path": str(base)}, {"hostname": "rig-d", "script_path": "/srv/d"}]
    jobs = [{"job_id": f"a{i}", "args": [f"{LEGACY}/{n}"], "expected_output": "o.json"} for i, n in enumerate(ALIASED)]
    p = PrngCachePlugin(policy)
    p.coordinator_run_start(run_id="aprops", nodes=nodes, jobs=jobs, assignments={"localhost": jobs})
    yield p, nodes, str(base), root
    p.coordinator_run_end(run_id="aprops", results={})
    for d, _, _ in os.walk(root):
        os.chmod(d, 0o700)
    shutil.rmtree(root, ignore_errors=True)


@settings(FAST, max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(args=st.lists(alias_token, max_size=10))
def test_aliased_spellings_map_to_the_aliased_file_and_nothing_else_changes(alias_run, args):
    """On the cache node an aliased argument becomes the RAM copy of the
    aliased file (its bytes), on a direct node that node's own aliased path;
    a spelling that may open another file, or none, is left alone, and so is
    every other item (non-path items: the same object)."""
    p, (local, direct), base, root = alias_run
    before = copy.deepcopy(args)
    job = {"job_id": "j", "args": args, "expected_output": "out.json"}
    on_direct = p.coordinator_job_args(node=direct, job=job) or list(args)
    allowed = alias_may_change(args, lambda n: f"/srv/d/{n}")
    on_cache = p.coordinator_job_args(node=local, job=job) or list(args)
    for i, a in enumerate(args):
        b, c = on_direct[i], on_cache[i]
        if i in allowed:
            assert b == allowed[i], (a, b)
            flag, _, name = allowed[i].rpartition("/srv/d/")
            assert c.startswith(flag + root + "/") and c.endswith("/" + name.rpartition("/")[2]), (a, c)
            with open(c[len(flag):], "rb") as f:
                assert f.read() == ("current " + name).encode()
        elif isinstance(a, str) and a.startswith(("/dev/shm/prng-legacy", "--in=/dev", "-x=/dev")):
            assert b == a and c == a, (a, b, c)
        elif not isinstance(a, str):
            assert b is a and c is a
    assert repr(args) == repr(before)
