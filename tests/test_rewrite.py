import copy

import pytest

from prng_cache.rewrite import (
    is_number,
    is_url,
    iter_path_tokens,
    looks_like_json,
    resolve,
    rewrite_args,
)

BASE = "/home/u/distributed_prng_analysis"
OUT = ("--output-file", "--output", "-o")


def tokens(args, expected=None, base=None):
    return list(iter_path_tokens(args, OUT, expected, base_dir=base))


def test_predicates():
    assert is_url("sqlite:///./optuna_studies/x.db") and is_url("http://h/x")
    assert not is_url("data/x.json") and not is_url("C:x")
    assert looks_like_json('{"a": 1}') and looks_like_json("  [1, 2]")
    assert not looks_like_json("a.json")
    for n in ("7", "-3", "0.1", "1e-5", ".5", "+2"):
        assert is_number(n), n
    for n in ("nan", "inf", "7.json", "", "1_000"):
        assert not is_number(n), n


def test_resolve():
    assert resolve("survivors.npz", BASE) == f"{BASE}/survivors.npz"
    assert resolve("./data/../x.json", BASE) == f"{BASE}/data/../x.json"  # ".." is the kernel's business
    assert resolve("/abs//dir/./x.json", BASE) == "/abs/dir/x.json"


def test_shapes_yielded():
    args = ["a.npz", "--train-history", "/abs/t.json", "--holdout=h.json", "--verbose"]
    assert tokens(args) == [
        (0, "", "a.npz"),
        (2, "", "/abs/t.json"),
        (3, "--holdout=", "h.json"),
    ]


def test_never_yielded():
    args = [
        "--output-file", "out.json", "--output-file=out2.json", "-o", "o3.json",
        "--output", "o4.json", "-o=o5.json",
        "result.json", "./result.json",
        "sqlite:///./x.db", "--db=sqlite:///./x.db",
        '{"a": 1}', "[1,2]", "--params={\"lr\": 0.1}",
        "7", "-3", "0.5", "--n=5", "", "--empty=", "--flag", "-v",
    ]
    assert tokens(args, expected="result.json") == []


def test_expected_output_matched_after_resolving():
    args = [f"{BASE}/res.json", "in.json"]
    assert tokens(args, expected="res.json", base=BASE) == [(1, "", "in.json")]


def test_rewrite_all_shapes_and_keep_unknown():
    staged = {
        f"{BASE}/survivors.npz": "/dev/shm/prng/aa/survivors.npz",
        "/abs/train_history.json": "/dev/shm/prng/bb/train_history.json",
        f"{BASE}/holdout_history.json": "/dev/shm/prng/cc/holdout_history.json",
        f"{BASE}/out_7.json": "/dev/shm/prng/dd/out_7.json",  # must never be used
    }
    args = [
        "survivors.npz", "--train-history", "/abs/train_history.json",
        "--holdout=./holdout_history.json", "not_staged.json", "7", '{"lr": 0.1}',
        "--optuna-study-db", "sqlite:///./optuna_studies/x.db",
        "--output-file", "out_7.json",
    ]
    orig = copy.deepcopy(args)
    got = rewrite_args(args, staged=staged, base_dir=BASE, output_flags=OUT,
                       expected_output="out_7.json")
    assert got == [
        "/dev/shm/prng/aa/survivors.npz", "--train-history",
        "/dev/shm/prng/bb/train_history.json",
        "--holdout=/dev/shm/prng/cc/holdout_history.json", "not_staged.json", "7",
        '{"lr": 0.1}', "--optuna-study-db", "sqlite:///./optuna_studies/x.db",
        "--output-file", "out_7.json",
    ]
    assert args == orig  # not mutated
    again = rewrite_args(args, staged=staged, base_dir=BASE, output_flags=OUT,
                         expected_output="out_7.json")
    assert again == got and again is not got


def test_expected_output_never_rewritten_even_if_staged():
    staged = {f"{BASE}/r.json": "/dev/shm/prng/x/r.json"}
    assert rewrite_args(["r.json"], staged=staged, base_dir=BASE,
                        expected_output="./r.json") == ["r.json"]


def test_empty_staged_returns_copy():
    args = ["a"]
    out = rewrite_args(args, staged={}, base_dir=BASE)
    assert out == args and out is not args


def test_non_string_args_pass_through():
    staged = {f"{BASE}/a.npz": "/r/a.npz"}
    assert rewrite_args(["a.npz", 7], staged=staged, base_dir=BASE) == ["/r/a.npz", 7]


def test_rewrite_does_no_io(monkeypatch):
    """rewrite_args runs per dispatch: it must not touch the file system
    (its per-call cost is measured in benchmarks/, not asserted here)."""
    import builtins
    import os

    def forbidden(*a, **k):
        raise AssertionError("rewrite_args did I/O")

    staged = {f"{BASE}/s1.npz": "/dev/shm/prng/1/s1.npz"}
    args = ["s1.npz", "/abs/t.json", "7", "--in=s1.npz", "--output-file", "out.json"]
    for name in ("stat", "lstat", "open", "listdir", "scandir"):
        monkeypatch.setattr(os, name, forbidden)
    monkeypatch.setattr(builtins, "open", forbidden)
    monkeypatch.setattr(os.path, "exists", forbidden)
    monkeypatch.setattr(os.path, "isfile", forbidden)
    out = rewrite_args(args, staged=staged, base_dir=BASE, output_flags=OUT, expected_output="out.json")
    assert out[0] == "/dev/shm/prng/1/s1.npz" and out[3] == "--in=/dev/shm/prng/1/s1.npz"


# ------------------------------------- only spellings that open the file change
@pytest.mark.parametrize("arg", [
    "dir/file.bin/", "dir/file.bin/.", "dir/file.bin//", "--in=dir/file.bin/",
    # the kernel resolves ".." after following "dir/sub" (maybe a symlink, maybe
    # not a directory): it need not be dir/file.bin
    "dir/sub/../file.bin", "--in=dir/sub/../file.bin",
])
def test_spellings_that_may_not_open_that_file_are_left_alone(arg):
    staged = {f"{BASE}/dir/file.bin": "/r/file.bin"}
    assert rewrite_args([arg], staged=staged, base_dir=BASE) == [arg]
    assert tokens([arg], base=BASE) == [] or resolve(tokens([arg], base=BASE)[0][2], BASE) not in staged


def test_resolve_keeps_what_the_kernel_would_not_ignore():
    assert resolve("a//b/./c.json", BASE) == f"{BASE}/a/b/c.json"
    assert resolve("a/../c.json", BASE) == f"{BASE}/a/../c.json"
    assert resolve("c.json/", BASE) == f"{BASE}/c.json/"
    assert resolve("c.json/.", BASE) == f"{BASE}/c.json/"
