"""globs.first_match: the same answer as one fnmatchcase per pattern (path
or basename), first pattern in order, for the policy's pattern sets."""

from fnmatch import fnmatchcase

import pytest

from prng_cache.globs import first_match

PATTERNS = ("*.db", "*/scoring_chunks/*", "data/[ab]?.json", "*.sqlite3", "chunk_*.json", "[!x]*.lock",
            "exact.npz", "*[*]*", "a\\b*", "*.npz")
PATHS = ["/w/x.db", "/w/scoring_chunks/chunk_0001.json", "data/a1.json", "data/c1.json", "/abs/data/b2.json",
         "study.sqlite3", "y.lock", "x.lock", "/d/exact.npz", "/d/not-exact.npz", "odd*name", "a\\bc", "",
         "/", "/dev/shm/prng/step2/survivors.npz", "line\nbreak.db", "ünïcode.npz", "no-match.txt"]


def naive(path, patterns):
    base = path.rsplit("/", 1)[-1]
    for pat in patterns:
        if fnmatchcase(path, pat) or fnmatchcase(base, pat):
            return pat
    return None


@pytest.mark.parametrize("path", PATHS)
def test_first_match_agrees_with_fnmatchcase_in_pattern_order(path):
    for k in range(len(PATTERNS) + 1):
        for pats in (PATTERNS[:k], PATTERNS[k:], tuple(reversed(PATTERNS[:k]))):
            assert first_match(path, pats) == naive(path, pats), (path, pats)


def test_empty_and_list_pattern_sets():
    assert first_match("/a/b.db", ()) is None
    assert first_match("/a/b.db", ["*.txt", "*.db"]) == "*.db"  # a list works too
