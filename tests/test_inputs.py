import json
import os
from dataclasses import dataclass, field

import pytest
import xxhash

from prng_cache import hashing
from prng_cache.errors import JobsFileError
from prng_cache.hashing import HashMemo, bundle_key
from prng_cache.inputs import discover
from prng_cache.jobs import job_args, job_expected_output, job_id, load_jobs
from prng_cache.policy import InputsPolicy
from prng_cache.rewrite import rewrite_args

OLD = 1_600_000_000


def put(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    os.utime(path, (OLD, OLD))
    return str(path)


def h(data):
    return xxhash.xxh3_128(data if isinstance(data, bytes) else data.encode()).hexdigest()


@pytest.fixture
def tree(tmp_path):
    """A script_path with the users' inputs, plus an absolute-path input elsewhere."""
    base = tmp_path / "scripts"
    abs_dir = tmp_path / "abs"
    put(base / "survivors.npz", b"NPZ" * 100)
    put(base / "holdout_history.json", "[1, 2]")
    put(abs_dir / "train_history.json", "[3, 4]")
    put(base / "out_3.json", "{}")  # left over from a previous run
    put(base / "optuna_studies" / "x.db", b"sqlite")
    return base, abs_dir


def users_jobs(base, abs_dir, n=4):
    return [
        {
            "job_id": i,
            "script": "scorer_trial_worker.py",
            "args": ["survivors.npz", f"{abs_dir}/train_history.json",
                     "holdout_history.json", str(i), '{"lr": 0.1}',
                     "--optuna-study-db", "sqlite:///./optuna_studies/x.db",
                     "--output-file", f"out_{i}.json"],
            "expected_output": f"out_{i}.json",
            "timeout": 600,
        }
        for i in range(n)
    ]


# ------------------------------------------------------------------ discover
def test_realistic_jobs_discover_and_rewrite(tree, tmp_path):
    base, abs_dir = tree
    jobs = users_jobs(base, abs_dir)
    d = discover(jobs, InputsPolicy(), str(base), memo=HashMemo(str(tmp_path / "m")))
    s, t, ho = (f"{base}/survivors.npz", f"{abs_dir}/train_history.json",
                f"{base}/holdout_history.json")
    assert set(d.bundles) == {s, t, ho}
    assert d.users[s] == {"0", "1", "2", "3"}
    b = d.bundles[s]
    assert b.key == h(b"NPZ" * 100) and b.name == "survivors.npz" and b.size == 300
    assert b.ram_path("/dev/shm/prng/") == f"/dev/shm/prng/{b.key}/survivors.npz"
    assert d.skipped == {}  # outputs and the sqlite URL are never candidates

    before = json.dumps(jobs)
    staged = d.staged("/dev/shm/prng")
    for job in jobs:
        new = rewrite_args(job_args(job), staged=staged, base_dir=str(base),
                           output_flags=InputsPolicy().output_flags,
                           expected_output=job_expected_output(job))
        assert new[:3] == [staged[s], staged[t], staged[ho]]
        assert new[3:] == job["args"][3:]
    assert json.dumps(jobs) == before


def test_flag_shapes_and_bare_names(tmp_path):
    base = tmp_path / "b"
    put(base / "a.json", "a")
    put(base / "sub" / "c.json", "c")
    put(tmp_path / "abs.json", "abs")
    jobs = [{"job_id": "j", "args": ["--a", "a.json", f"--abs={tmp_path}/abs.json",
                                     "./sub/../sub/c.json", "missing.json"]}]
    d = discover(jobs, InputsPolicy(min_jobs=1), str(base))
    assert set(d.bundles) == {f"{base}/a.json", f"{tmp_path}/abs.json", f"{base}/sub/../sub/c.json"}
    assert f"{base}/missing.json" not in d.users and f"{base}/missing.json" not in d.skipped


def test_exclude_and_expected_output_existing(tmp_path):
    base = tmp_path / "b"
    put(base / "study.db", "db")
    put(base / "run.log", "log")
    put(base / "res.json", "old result")
    jobs = [{"job_id": i, "args": ["study.db", f"{base}/run.log", f"{base}/res.json"],
             "expected_output": "res.json"} for i in range(3)]
    d = discover(jobs, InputsPolicy(), str(base))
    assert d.bundles == {}
    assert "*.db" in d.skipped[f"{base}/study.db"]
    assert "*.log" in d.skipped[f"{base}/run.log"]
    assert f"{base}/res.json" not in d.users  # outputs are never inputs


def test_min_jobs_and_include(tmp_path):
    base = tmp_path / "b"
    put(base / "shared.json", "s")
    put(base / "only1.json", "1")
    put(base / "cfg.yaml", "c")
    jobs = [{"job_id": 1, "args": ["shared.json", "only1.json", "cfg.yaml"]},
            {"job_id": 2, "args": ["shared.json", "shared.json"]}]
    d = discover(jobs, InputsPolicy(min_jobs=2, include=("*.yaml",)), str(base))
    assert set(d.bundles) == {f"{base}/shared.json", f"{base}/cfg.yaml"}
    assert "min_jobs=2" in d.skipped[f"{base}/only1.json"]
    # same job twice is still one user
    assert d.users[f"{base}/shared.json"] == {"1", "2"}
    d1 = discover(jobs, InputsPolicy(min_jobs=2), str(base), min_jobs=1)
    assert f"{base}/only1.json" in d1.bundles


def test_max_file_size_skips_without_reading(tmp_path):
    base = tmp_path / "b"
    put(base / "big.json", b"x" * 1000)
    hashing.stats.reset()
    d = discover([{"job_id": 1, "args": ["big.json"]}],
                 InputsPolicy(min_jobs=1, max_file_size=999), str(base))
    assert "max_file_size" in d.skipped[f"{base}/big.json"]
    assert hashing.stats.opens == 0


def test_companions(tmp_path):
    base = tmp_path / "b"
    s = put(base / "data" / "survivors.npz", b"S")
    cfg = base / "data" / "optimal_window_config.json"
    put(cfg, "{}")
    pol = InputsPolicy(min_jobs=1,
                       companions=(("*.npz", ("optimal_window_config.json",)),))
    jobs = [{"job_id": 1, "args": ["data/survivors.npz"]}]
    b = discover(jobs, pol, str(base)).bundles[s]
    assert [f.name for f in b.files] == ["survivors.npz", "optimal_window_config.json"]
    assert b.files[1].src == str(cfg) and b.size == 3
    assert b.key == bundle_key([("survivors.npz", h(b"S")),
                                ("optimal_window_config.json", h("{}"))])
    assert b.key != h(b"S")
    assert b.ram_path("/r") == f"/r/{b.key}/survivors.npz"  # companion lands beside it

    put(cfg, '{"w": 2}')  # changed companion -> new key
    b2 = discover(jobs, pol, str(base)).bundles[s]
    assert b2.key != b.key and b2.files[0].hash == b.files[0].hash

    os.remove(cfg)
    d = discover(jobs, pol, str(base))
    assert d.bundles == {}
    assert d.skipped[s] == "companion optimal_window_config.json missing"


def test_changed_input_gives_new_key_and_each_file_hashed_once(tmp_path):
    base = tmp_path / "b"
    put(base / "a.json", "v1")
    jobs = [{"job_id": i, "args": ["a.json", f"{base}/a.json"]} for i in range(5)]
    hashing.stats.reset()
    k1 = discover(jobs, InputsPolicy(), str(base)).bundles[f"{base}/a.json"].key
    assert hashing.stats.opens == 1
    put(base / "a.json", "v2")
    k2 = discover(jobs, InputsPolicy(), str(base)).bundles[f"{base}/a.json"].key
    assert k1 == h("v1") and k2 == h("v2")


def test_memo_hit_through_discover_reads_nothing(tree, tmp_path):
    base, abs_dir = tree
    memo = HashMemo(str(tmp_path / "m"), racy_window=0)  # the files were just written
    d1 = discover(users_jobs(base, abs_dir), InputsPolicy(), str(base), memo=memo)
    hashing.stats.reset()
    d2 = discover(users_jobs(base, abs_dir), InputsPolicy(), str(base), memo=memo)
    assert hashing.stats.opens == 0 and d1.bundles == d2.bundles


def test_unreadable_input_is_skipped_with_reason(tmp_path, monkeypatch):
    base = tmp_path / "b"
    put(base / "a.json", "x")

    def boom(path, memo=None, **kw):
        raise hashing.HashError(path, "changed while being hashed")

    monkeypatch.setattr("prng_cache.inputs.hash_and_stat", boom)  # fault injection
    d = discover([{"job_id": 1, "args": ["a.json"]}], InputsPolicy(min_jobs=1), str(base))
    assert d.skipped[f"{base}/a.json"].endswith("changed while being hashed")


def test_accessors_accept_objects(tmp_path):
    @dataclass
    class Job:
        job_id: int
        script: str
        args: list = field(default_factory=list)
        expected_output: str = "o.json"

    j = Job(5, "w.py", ["a", 7, 0.5])
    assert (job_id(j), job_args(j), job_expected_output(j)) == ("5", ["a", 7, 0.5], "o.json")
    assert job_args({"args": None}) == [] and job_expected_output({}) is None
    base = tmp_path / "b"
    put(base / "a", "x")
    assert f"{base}/a" in discover([j], InputsPolicy(min_jobs=1), str(base)).bundles


# ---------------------------------------------------------------- load_jobs
def write(tmp_path, text):
    p = tmp_path / "jobs.json"
    p.write_text(text)
    return str(p)


GOOD = {"job_id": 1, "script": "w.py", "args": ["a", 2, 0.5],
        "expected_output": "o.json", "timeout": 60}


def test_load_jobs_ok_and_extra_keys_kept(tmp_path):
    jobs = [dict(GOOD, extra={"k": 1}, chunk_file=None, seed_count=10, job_type="scorer"),
            dict(GOOD, job_id="b")]
    assert load_jobs(write(tmp_path, json.dumps(jobs))) == jobs


@pytest.mark.parametrize(
    "content, where, problem",
    [
        (None, None, "file not found"),
        ('[{"job_id": 1,\n  oops}]', "line 2 column 3", "not valid JSON"),
        ('{"jobs": []}', None, "expected a JSON list of jobs, got object"),
        ("[1]", "jobs[0]", "expected an object, got integer"),
        (json.dumps([GOOD, {k: v for k, v in GOOD.items() if k != "script"}]),
         "jobs[1].script", "missing; expected a non-empty string"),
        (json.dumps([dict(GOOD, args="a b")]), "jobs[0].args", "expected a list, got string"),
        (json.dumps([dict(GOOD, job_id=i) for i in range(3)] + [dict(GOOD, job_id=4, args=["a", None])]),
         "jobs[3].args[1]", "expected a string or number, got null"),
        (json.dumps([dict(GOOD, timeout="60")]), "jobs[0].timeout", "expected a number, got string"),
        (json.dumps([dict(GOOD, job_id=True)]), "jobs[0].job_id", "expected a string or integer"),
        (json.dumps([dict(GOOD, expected_output=None)]), "jobs[0].expected_output", "expected a string"),
        (json.dumps([GOOD, dict(GOOD, job_id="1")]), "jobs[1].job_id", "duplicate job_id '1'"),
    ],
    ids=["missing", "bad-json", "not-list", "not-object", "missing-field", "args-type",
         "arg-item", "timeout-type", "bool-id", "null-output", "duplicate-id"],
)
def test_load_jobs_errors(tmp_path, content, where, problem):
    path = str(tmp_path / "jobs.json") if content is None else write(tmp_path, content)
    with pytest.raises(JobsFileError) as e:
        load_jobs(path)
    assert e.value.source == path and e.value.where == where
    assert problem in e.value.problem
    assert path in str(e.value)


# ------------------------------------- what discovery may take for an input
def test_non_strings_are_never_paths(tmp_path):
    """str() of a non-string can name a file ("None", "True", "nan"): it is
    still not a path the job passes."""
    base = tmp_path / "b"
    for name in ("None", "True", "False", "nan", "inf", "7", "0.5", "{'window': 7}", "['x']"):
        put(base / name, name)
    put(base / "a.json", "a")
    args = [None, True, False, float("nan"), float("inf"), 7, 0.5, {"window": 7}, ["x"],
            "--window", None, "-o", None, "a.json"]
    d = discover([{"job_id": i, "args": args} for i in range(2)], InputsPolicy(), str(base))
    assert set(d.users) == {f"{base}/a.json"} and set(d.bundles) == {f"{base}/a.json"}


def test_job_args_keeps_types():
    items = ["a", 7, 0.5, None, True, {"w": 7}, ["x"]]
    got = job_args({"args": items})
    assert got == items and all(g is i for g, i in zip(got, items)) and got is not items


def test_only_spellings_that_open_the_file_are_inputs(tmp_path):
    """A candidate is the file the original argument opens: a trailing slash
    (ENOTDIR) names none, and ".." after a symlink goes where the kernel goes,
    not where the text suggests."""
    base = tmp_path / "b"
    put(base / "dir" / "file.bin", "the file")
    put(base / "x.json", "lexical parent's x")
    put(base / "real" / "x.json", "symlink target's x")
    (base / "real" / "sub").mkdir()
    os.symlink(base / "real" / "sub", base / "link")
    jobs = [{"job_id": i, "args": ["dir/file.bin/", "dir/file.bin/.", "link/../x.json"]} for i in range(2)]
    d = discover(jobs, InputsPolicy(), str(base))
    for p in d.users:
        assert not p.endswith(("/", "/.")), p
    (b,) = d.bundles.values()
    with open(os.path.join(base, "link/../x.json"), "rb") as f:
        assert b.key == h(f.read()) and b.name == "x.json"
    want = h("symlink target's x")
    for job in jobs:  # rewritten to a copy of what the original opens, or not at all
        new = rewrite_args(job["args"], staged=d.staged("/r"), base_dir=str(base))
        assert new[:2] == job["args"][:2] and new[2] == f"/r/{want}/x.json"

