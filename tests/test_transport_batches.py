"""The Transport contract's batch operations (listdirs_attr, put_dirs) on
every transport, and on SSH both ways of listing (one find over exec, and
pipelined SFTP) giving the same answer, hostile names included."""

from __future__ import annotations

import dataclasses
import stat
from shlex import quote as q

import pytest

from prng_cache.transport.base import DirUpload
from prng_cache.transport.ssh import operations

from test_transport_contract import Case, local_case, ssh_case  # noqa: F401 - fixtures

HOSTILE = ["plain.npz", "sp ace", "tab\there", "new\nline", "-dash", "$(touch pwned)", "ü.json", "*?[x]"]


@pytest.fixture(params=["local", "ssh-helper", "ssh-sftp"])
def c(request, monkeypatch) -> Case:
    """On SSH both ways: through the node's python helper (from the first
    item on), and SFTP requests only (find for large listings)."""
    if request.param == "local":
        return request.getfixturevalue("local_case")
    case = request.getfixturevalue("ssh_case")
    if request.param == "ssh-helper":
        monkeypatch.setattr(operations, "HELPER_MIN", 1)
        monkeypatch.setattr(operations, "HELPER_MIN_LISTING", 1)
    else:
        case.t.settings = dataclasses.replace(case.t.settings, node_helper=False)
    return case


def _used_helper(c: Case) -> None:
    if c.kind == "ssh":
        want = c.t.settings.node_helper
        assert (c.t._helper is not None and c.t._helper[1] is not None) == want


def _tree(c: Case, n: int) -> list[str]:
    """n directories holding every hostile name, plus a symlink, a file and a missing name."""
    dirs = [f"d{i:04d}" for i in range(n)]
    c.sh(f"cd {q(c.base)} && for d in {' '.join(dirs)}; do mkdir $d; "
         + "; ".join(f"printf abc > $d/{q(h)}" for h in HOSTILE) + "; done; "
         "ln -s d0000 link; printf x > file; ln d0000/plain.npz hard")
    return [*dirs, "link", "file", "missing"]


def _facts(listing: dict) -> dict:
    return {k: (v.mode, v.uid, v.size, v.nlink) for k, v in listing.items()}


def _check(c: Case, got: dict, names: list[str]) -> None:
    for d in names[:-3]:
        listing = got[c.p(d)]
        assert set(listing) == set(HOSTILE), d
        f = listing["sp ace"]
        assert f.is_file and f.size == 3 and f.uid == c.uid
        assert listing["plain.npz"].nlink == (2 if d == "d0000" else 1)
    # a symlinked directory: refused by find, followed by SFTP's opendir like
    # listdir_attr (the store trusts a <key> only as a real directory in the
    # root's listing)
    assert isinstance(got[c.p("link")], (OSError, dict))
    assert isinstance(got[c.p("file")], OSError)
    assert isinstance(got[c.p("missing")], FileNotFoundError)


@pytest.mark.parametrize("n", [3, operations.FIND_MIN + 2])
def test_listdirs_attr_matches_listdir_attr(c: Case, n: int):
    names = _tree(c, n)
    got = c.t.listdirs_attr([c.p(d) for d in names])
    _used_helper(c)
    _check(c, got, names)
    for d in names[:3]:
        assert _facts(got[c.p(d)]) == _facts(c.t.listdir_attr(c.p(d)))  # mtime: finer by find
    assert c.t.lstat(c.p("pwned")) is None


def test_ssh_listing_falls_back_to_sftp_without_find(ssh_case: Case):  # noqa: F811
    c = ssh_case
    c.t.settings = dataclasses.replace(c.t.settings, node_helper=False)
    names = _tree(c, operations.FIND_MIN + 2)
    by_find = c.t.listdirs_attr([c.p(d) for d in names])
    assert c.t._find_ok is True
    c.t._find_ok = False  # as on a node without a shell or GNU find
    by_sftp = c.t.listdirs_attr([c.p(d) for d in names])
    _check(c, by_sftp, names)
    for d in names[:-3]:
        a, b = by_find[c.p(d)], by_sftp[c.p(d)]
        assert _facts(a) == _facts(b)


def test_put_dirs_creates_renames_and_reports_each_item(c: Case):
    c.sh(f"mkdir {q(c.p('taken'))} && printf x > {q(c.p('taken', 'f'))}")
    big = bytes(range(256)) * 2000  # more than one SFTP write request
    items = [
        DirUpload(c.p(".tmp-a"), (("x", b"abc", 0o400), ("big", big, 0o400), ("empty", b"", 0o400)), c.p("a")),
        DirUpload(c.p(".tmp-b"), (("y", b"1", 0o400),), None),
        DirUpload(c.p(".tmp-c"), (("z", b"2", 0o400),), c.p("taken")),  # a non-empty directory is in the way
        DirUpload(c.p("missing", "t"), (("w", b"3", 0o400),), c.p("w")),  # cannot create
    ]
    res = c.t.put_dirs(items)
    _used_helper(c)
    assert res[0] is None and res[1] is None
    assert res[2][0] == "rename" and isinstance(res[2][1], OSError)
    assert res[3][0] != "rename" and isinstance(res[3][1], OSError)
    listing = c.t.listdir_attr(c.p("a"))
    assert set(listing) == {"x", "big", "empty"}
    assert all(stat.S_IMODE(i.mode) == 0o400 and i.is_file for i in listing.values())
    assert c.t.read_bytes(c.p("a", "big")) == big
    assert stat.S_IMODE(c.t.lstat(c.p("a")).mode) == 0o700
    assert set(c.t.listdir_attr(c.p(".tmp-b"))) == {"y"}
    assert set(c.t.listdir_attr(c.p(".tmp-c"))) == {"z"}  # complete, left for the caller
    assert c.t.lstat(c.p(".tmp-a")) is None and c.t.lstat(c.p("w")) is None


def test_listdir_attr_large_matches_listdir_attr(c: Case):
    names = _tree(c, 3)
    if c.kind == "ssh" and c.t.settings.node_helper:
        assert c.t._node_helper(start=True) is not None  # up: the large listing uses it
    big = c.t.listdir_attr_large(c.base)
    assert set(big) == set(names[:-1]) | {"hard"}
    small = c.t.listdir_attr(c.base)
    assert _facts(big) == _facts(small)
    assert big["link"].is_symlink and big["file"].is_file and big["d0000"].is_dir


def test_survey_is_the_root_listing_and_the_entry_listings(c: Case):
    names = _tree(c, operations.FIND_MIN + 2)
    root, got = c.t.survey(c.base, [c.p(d) for d in names])
    _used_helper(c)
    assert _facts(root) == _facts(c.t.listdir_attr(c.base))
    _check(c, got, names)
    assert set(got) == {c.p(d) for d in names}
    if c.kind == "ssh":  # a missing root is an error, not an empty listing
        with pytest.raises(FileNotFoundError):
            c.t.survey(c.p("missing"), [c.p("missing", "x")] * (operations.FIND_MIN + 1))
