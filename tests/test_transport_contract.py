"""One contract suite for every Transport (base.py's docstring is the contract).

Runs against ``LocalTransport`` on a directory under /dev/shm and against
``SSHTransport`` on node rig-a of the real SSH test cluster (its private
64 MiB tmpfs on /dev/shm).
"""

from __future__ import annotations

import errno
import os
import shlex
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import Callable

import pytest

from prng_cache.transport import LocalTransport, Transport

q = shlex.quote
MiB = 1 << 20


@dataclass
class Case:
    kind: str
    t: Transport
    base: str  # fresh, empty directory on the target
    sh: Callable[..., subprocess.CompletedProcess]  # shell on the target (setup/asserts)
    fs_total: int  # size of the file system holding base
    uid: int
    small_fs: str | None  # a directory on a small file system (disk-full test)
    private_fs: bool = False  # base is on a file system only this test writes to
    mount_point: str | None = None  # where small_fs is mounted (to remount it read-only)

    def p(self, *parts: str) -> str:
        return "/".join((self.base, *parts))

    def exists(self, path: str) -> bool:
        return self.sh(f"test -e {q(path)} || test -L {q(path)}", check=False).returncode == 0


def _local_sh(cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"{cmd!r}: {r.stderr}")
    return r


@pytest.fixture
def local_case():
    base = tempfile.mkdtemp(prefix="prng-contract-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    small = os.path.join(base, ".small")
    mounted = False
    if os.geteuid() == 0:
        os.mkdir(small)
        mounted = _local_sh(f"mount -t tmpfs -o size=8m tmpfs {q(small)}", check=False).returncode == 0
    work = os.path.join(base, "w")
    os.mkdir(work, 0o700)
    st = os.statvfs(work)
    old_umask = os.umask(0o027)  # the transport must not let the umask change modes
    try:
        yield Case(
            kind="local",
            t=LocalTransport("local"),
            base=work,
            sh=_local_sh,
            fs_total=st.f_blocks * st.f_frsize,
            uid=os.geteuid(),
            small_fs=small if mounted else None,
            mount_point=small if mounted else None,
        )
    finally:
        os.umask(old_umask)
        if mounted:
            _local_sh(f"umount -l {q(small)}", check=False)
        _local_sh(f"chmod -R u+rwx {q(base)}", check=False)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def ssh_case(ssh_cluster):
    from prng_cache.transport.ssh import SSHTransport

    node = ssh_cluster["rig-a"]
    if not node.running:
        ssh_cluster.heal()
    base = f"{node.shm}/contract-{uuid.uuid4().hex[:8]}"
    node.run(f"mkdir -m 700 {q(base)}")
    blocks, bsize = node.run(f"stat -f -c '%b %S' {q(base)}").stdout.split()
    total = int(blocks) * int(bsize)
    t = SSHTransport("rig-a", settings=ssh_cluster.policy())
    try:
        yield Case(
            kind="ssh",
            t=t,
            base=base,
            sh=lambda cmd, check=True: node.run(cmd, check=check),
            fs_total=total,
            uid=0 if ssh_cluster.user == "root" else int(node.run("id -u").stdout),
            # the node's whole /dev/shm is the small (64 MiB) file system
            small_fs=base if node.isolated else None,
            private_fs=node.isolated,
            mount_point="/dev/shm" if node.isolated else None,
        )
    finally:
        t.close()
        node.run(f"chmod -R u+rwx {q(base)}; rm -rf {q(base)}", check=False)


@pytest.fixture(params=["local", "ssh"])
def c(request) -> Case:
    return request.getfixturevalue(f"{request.param}_case")


# ------------------------------------------------------------------- stat
def test_lstat_missing_file_dir_symlink(c: Case):
    assert c.t.lstat(c.p("missing")) is None
    assert c.t.lstat(c.p("missing", "deeper")) is None
    t0 = time.time()
    c.sh(f"printf abc > {q(c.p('f'))}; mkdir {q(c.p('d'))}; ln -s f {q(c.p('l'))}; ln -s nowhere {q(c.p('dangling'))}")
    f = c.t.lstat(c.p("f"))
    t1 = time.time()
    assert f.is_file and not f.is_dir and not f.is_symlink
    assert f.size == 3 and f.uid == c.uid
    # written between t0 and t1 (whole seconds over SFTP, coarse kernel clock)
    assert int(t0) - 1 <= f.mtime <= t1 + 1
    assert c.t.lstat(c.p("d")).is_dir
    link = c.t.lstat(c.p("l"))
    assert link.is_symlink and not link.is_file  # not followed
    assert c.t.lstat(c.p("dangling")).is_symlink


def test_lstat_many_matches_lstat(c: Case):
    c.sh(f"cd {q(c.base)} && printf abc > f && mkdir d && ln -s f l && ln -s nowhere dangling && touch 'sp ace'")
    paths = [c.p(n) for n in ("f", "d", "l", "dangling", "sp ace", "missing")] + [c.p("f", "below-a-file"),
                                                                               c.p("missing", "deeper")]
    got = c.t.lstat_many(paths)
    assert set(got) == set(paths)
    for p in paths:  # the same answer, path by path, as one lstat each
        one = c.t.lstat(p)
        assert (got[p] is None) == (one is None), p
        if one is not None:
            assert (got[p].is_file, got[p].is_dir, got[p].is_symlink, got[p].size, got[p].uid) == (
                one.is_file, one.is_dir, one.is_symlink, one.size, one.uid), p
    assert got[c.p("l")].is_symlink and got[c.p("d")].is_dir and got[c.p("missing")] is None
    assert c.t.lstat_many([]) == {}


def test_listdir_attr(c: Case):
    assert c.t.listdir_attr(c.base) == {}
    c.sh(f"cd {q(c.base)} && printf 12345 > a && mkdir b && ln -s /etc c && touch 'sp ace'")
    got = c.t.listdir_attr(c.base)
    assert set(got) == {"a", "b", "c", "sp ace"}
    assert got["a"].is_file and got["a"].size == 5
    assert got["b"].is_dir
    assert got["c"].is_symlink  # lstat semantics
    with pytest.raises(FileNotFoundError):
        c.t.listdir_attr(c.p("missing"))


# ------------------------------------------------------------------ mkdir
@pytest.mark.parametrize("mode", [0o700, 0o750, 0o755, 0o777])
def test_mkdir_mode_is_exact(c: Case, mode: int):
    c.t.mkdir(c.p("d"), mode)
    info = c.t.lstat(c.p("d"))
    assert info.is_dir and info.perms == mode


def test_mkdir_default_mode_and_exists(c: Case):
    c.t.mkdir(c.p("d"))
    assert c.t.lstat(c.p("d")).perms == 0o700
    c.sh(f"touch {q(c.p('f'))}; ln -s d {q(c.p('l'))}; ln -s nowhere {q(c.p('dl'))}")
    for name in ("d", "f", "l", "dl"):
        with pytest.raises(FileExistsError):
            c.t.mkdir(c.p(name))
    assert c.t.lstat(c.p("d")).perms == 0o700  # a failed mkdir chmods nothing
    with pytest.raises(FileNotFoundError):
        c.t.mkdir(c.p("missing", "sub"))


# ----------------------------------------------------------------- files
def test_open_write_round_trip_small_and_large(c: Case):
    small = b"hello\x00world\n"
    with c.t.open_write(c.p("small")) as f:
        f.write(small)
    assert c.t.read_bytes(c.p("small")) == small
    assert c.t.lstat(c.p("small")).perms == 0o600

    # several MiB in uneven pieces: tiny writes, a chunk straddling the
    # transport's request size, one big write, memoryview and bytearray
    big = os.urandom(9 * MiB + 12345)
    pieces = [big[:1], big[1:1000], big[1000:300_000], memoryview(big)[300_000:5 * MiB],
              bytearray(big[5 * MiB:])]
    with c.t.open_write(c.p("big"), 0o644) as f:
        for piece in pieces:
            f.write(piece)
    info = c.t.lstat(c.p("big"))
    assert info.size == len(big)
    # never wider than asked (LocalTransport lets the umask narrow it;
    # SSHTransport applies it exactly, see test_ssh_transport)
    assert info.perms & ~0o644 == 0 and info.perms & 0o600 == 0o600
    assert c.t.read_bytes(c.p("big")) == big
    with c.t.open_read(c.p("big")) as f:
        assert f.read(7) == big[:7]
        assert f.read(3 * MiB) == big[7:7 + 3 * MiB]
        assert f.read() == big[7 + 3 * MiB:]
        assert f.read() == b""
    assert c.sh(f"md5sum < {q(c.p('big'))}").stdout.split()[0] == __import__("hashlib").md5(big).hexdigest()


def test_open_write_empty_file_and_modes(c: Case):
    with c.t.open_write(c.p("empty"), 0o640):
        pass
    info = c.t.lstat(c.p("empty"))
    assert info.is_file and info.size == 0 and info.perms == 0o640
    assert c.t.read_bytes(c.p("empty")) == b""
    with c.t.open_write(c.p("ro"), 0o400) as f:  # read-only mode, still writable fd
        f.write(b"x" * 1000)
    assert c.t.lstat(c.p("ro")).perms == 0o400
    assert c.t.read_bytes(c.p("ro")) == b"x" * 1000


def test_open_write_is_exclusive(c: Case):
    c.sh(f"printf keep > {q(c.p('f'))}; printf target > {q(c.p('target'))}; "
         f"ln -s target {q(c.p('l'))}; ln -s nowhere {q(c.p('dl'))}; mkdir {q(c.p('d'))}")
    for name in ("f", "l", "dl", "d"):
        with pytest.raises(FileExistsError):
            with c.t.open_write(c.p(name)) as f:
                f.write(b"overwritten")
    assert c.t.read_bytes(c.p("f")) == b"keep"
    assert c.t.read_bytes(c.p("target")) == b"target"
    assert c.t.lstat(c.p("dl")).is_symlink and not c.exists(c.p("nowhere"))
    with pytest.raises(FileNotFoundError):
        with c.t.open_write(c.p("missing", "f")):
            pass


def test_error_inside_open_write_propagates(c: Case):
    with pytest.raises(ZeroDivisionError):
        with c.t.open_write(c.p("f")) as f:
            f.write(b"a" * 300_000)
            1 / 0
    # the transport is still usable afterwards
    with c.t.open_write(c.p("g")) as f:
        f.write(b"ok")
    assert c.t.read_bytes(c.p("g")) == b"ok"


def test_read_bytes(c: Case):
    c.sh(f"printf 0123456789 > {q(c.p('f'))}; ln -s f {q(c.p('l'))}; ln -s nowhere {q(c.p('dl'))}; mkdir {q(c.p('d'))}")
    assert c.t.read_bytes(c.p("f")) == b"0123456789"
    assert c.t.read_bytes(c.p("f"), max_bytes=4) == b"0123"
    for name in ("l", "dl"):
        with pytest.raises(OSError) as ei:
            c.t.read_bytes(c.p(name))
        assert ei.value.errno == errno.ELOOP
    with pytest.raises(OSError):
        c.t.read_bytes(c.p("d"))
    with pytest.raises(FileNotFoundError):
        c.t.read_bytes(c.p("missing"))


def test_open_read_refuses_symlink_and_missing(c: Case):
    c.sh(f"printf data > {q(c.p('f'))}; ln -s f {q(c.p('l'))}")
    with pytest.raises(OSError) as ei:
        with c.t.open_read(c.p("l")):
            pass
    assert ei.value.errno == errno.ELOOP
    with pytest.raises(FileNotFoundError):
        with c.t.open_read(c.p("missing")):
            pass
    with c.t.open_read(c.p("f")) as f:
        assert f.read() == b"data"


def test_partial_open_read_then_more_operations(c: Case):
    data = os.urandom(3 * MiB)
    with c.t.open_write(c.p("f")) as f:
        f.write(data)
    with c.t.open_read(c.p("f")) as f:  # abandon a read with read-ahead in flight
        assert f.read(100) == data[:100]
    assert c.t.lstat(c.p("f")).size == len(data)
    assert c.t.read_bytes(c.p("f")) == data


def test_interleaved_streams_and_operations(c: Case):
    """Two streams open at once, with other operations in between: no
    answer may be lost or given to the wrong stream."""
    one, two = os.urandom(2 * MiB + 17), os.urandom(MiB + 3)
    with c.t.open_write(c.p("one")) as w1, c.t.open_write(c.p("two")) as w2:
        for i in range(0, len(one), 200_000):
            w1.write(one[i:i + 200_000])
            w2.write(two[i // 2:i // 2 + 100_000])
            assert c.t.lstat(c.base).is_dir
    assert c.t.read_bytes(c.p("one")) == one
    assert c.t.read_bytes(c.p("two")) == two
    got1, got2 = bytearray(), bytearray()
    with c.t.open_read(c.p("one")) as r1, c.t.open_read(c.p("two")) as r2:
        while True:
            a, b = r1.read(300_000), r2.read(70_000)
            got1 += a
            got2 += b
            assert set(c.t.listdir_attr(c.base)) == {"one", "two"}
            if not a and not b:
                break
    assert bytes(got1) == one and bytes(got2) == two


# ---------------------------------------------------------------- rename
def test_rename_replaces_file(c: Case):
    c.sh(f"printf old > {q(c.p('dst'))}; printf new > {q(c.p('src'))}")
    c.t.rename(c.p("src"), c.p("dst"))
    assert c.t.lstat(c.p("src")) is None
    assert c.t.read_bytes(c.p("dst")) == b"new"
    c.t.mkdir(c.p("d1"))
    c.t.rename(c.p("d1"), c.p("d2"))
    assert c.t.lstat(c.p("d2")).is_dir and c.t.lstat(c.p("d1")) is None


def test_rename_onto_non_empty_dir_fails(c: Case):
    c.sh(f"mkdir -p {q(c.p('full'))} {q(c.p('src'))}; touch {q(c.p('full', 'x'))} {q(c.p('f'))}")
    with pytest.raises(OSError):
        c.t.rename(c.p("src"), c.p("full"))
    with pytest.raises(OSError):
        c.t.rename(c.p("f"), c.p("full"))
    assert c.exists(c.p("full", "x")) and c.exists(c.p("src")) and c.exists(c.p("f"))
    with pytest.raises(FileNotFoundError):
        c.t.rename(c.p("missing"), c.p("other"))


# ---------------------------------------------------- unlink, rmdir, rmtree
def test_unlink_and_rmdir(c: Case):
    c.sh(f"touch {q(c.p('f'))} {q(c.p('target'))}; ln -s target {q(c.p('l'))}; "
         f"mkdir {q(c.p('e'))} {q(c.p('full'))}; touch {q(c.p('full', 'x'))}")
    c.t.unlink(c.p("f"))
    assert c.t.lstat(c.p("f")) is None
    c.t.unlink(c.p("l"))  # the link, not its target
    assert c.t.lstat(c.p("l")) is None and c.t.lstat(c.p("target")) is not None
    with pytest.raises(FileNotFoundError):
        c.t.unlink(c.p("f"))
    with pytest.raises(OSError):
        c.t.unlink(c.p("e"))
    c.t.rmdir(c.p("e"))
    assert c.t.lstat(c.p("e")) is None
    with pytest.raises(OSError):
        c.t.rmdir(c.p("full"))
    with pytest.raises(FileNotFoundError):
        c.t.rmdir(c.p("e"))


def test_rmtree_does_not_follow_symlinks(c: Case):
    outside = c.p("outside")
    tree = c.p("tree")
    c.sh(
        f"mkdir -p {q(outside)}/keep {q(tree)}/a/b {q(tree)}/ro && "
        f"echo precious > {q(outside)}/keep/file && echo x > {q(tree)}/a/b/f && "
        f"ln -s {q(outside)} {q(tree)}/a/link_to_dir && ln -s {q(outside)}/keep/file {q(tree)}/link_to_file && "
        f"touch {q(tree)}/ro/f && chmod 500 {q(tree)}/ro"
    )
    c.t.rmtree(tree)
    assert c.t.lstat(tree) is None
    assert c.t.read_bytes(f"{outside}/keep/file") == b"precious\n"
    c.t.rmtree(c.p("missing"))  # no error


def test_chmod(c: Case):
    c.sh(f"touch {q(c.p('f'))}")
    for mode in (0o400, 0o644, 0o600):
        c.t.chmod(c.p("f"), mode)
        assert c.t.lstat(c.p("f")).perms == mode
    with pytest.raises(FileNotFoundError):
        c.t.chmod(c.p("missing"), 0o600)


# ------------------------------------------------------- file system info
def test_disk_usage(c: Case):
    du = c.t.disk_usage(c.base)
    assert du.total == c.fs_total
    assert 0 <= du.free <= du.total and 0 <= du.used <= du.total
    if c.kind == "ssh" and c.private_fs:
        assert du.total == 64 * MiB  # the node's tmpfs
    before = du.used
    with c.t.open_write(c.p("f")) as f:
        f.write(b"\1" * (4 * MiB))
    after = c.t.disk_usage(c.base).used
    if c.private_fs:  # the node's own tmpfs: nobody else writes there
        assert after - before >= 4 * MiB
    with pytest.raises(FileNotFoundError):
        c.t.disk_usage(c.p("missing"))


def test_uid_and_now(c: Case):
    t0 = time.time()
    assert c.t.uid() == c.uid  # (SSH: learns the clock offset at the same time)
    now = c.t.now()
    t1 = time.time()
    assert c.t.uid() == c.uid  # cached or not, stable
    # same machine, same clock: now() agrees within what its method can
    # tell (SSH: a probe file's whole-second mtime, give or take the time
    # the probe took, bracketed here however long that was on a busy machine)
    slack = 0.55 + (t1 - t0)
    assert t0 - slack <= now <= t1 + slack


def test_write_past_full_file_system_raises_oserror(c: Case):
    if c.small_fs is None:
        pytest.skip("no small private file system here (needs root / mount namespaces)")
    free = c.t.disk_usage(c.small_fs).free
    target = f"{c.small_fs}/fill-{uuid.uuid4().hex[:6]}"
    block = os.urandom(MiB)
    with pytest.raises(OSError) as ei:
        with c.t.open_write(target) as f:
            for _ in range(free // MiB + 8):
                f.write(block)
    assert not isinstance(ei.value, (FileNotFoundError, FileExistsError))
    assert ei.value.errno == errno.ENOSPC, ei.value
    # the transport is still usable: clean up through it
    c.t.unlink(target)
    assert c.t.disk_usage(c.small_fs).free >= free - MiB
    with c.t.open_write(c.p("after")) as f:
        f.write(b"fine")
    assert c.t.read_bytes(c.p("after")) == b"fine"


def test_changes_on_a_read_only_file_system_raise_erofs(c: Case):
    if c.mount_point is None:
        pytest.skip("no small private file system here (needs root / mount namespaces)")
    d = f"{c.small_fs}/ro-{uuid.uuid4().hex[:6]}"
    c.t.mkdir(d)
    with c.t.open_write(f"{d}/f") as f:
        f.write(b"x")
    c.sh(f"mount -o remount,ro {q(c.mount_point)}")
    try:
        for op in (lambda: c.t.mkdir(f"{d}/sub"), lambda: c.t.open_write(f"{d}/g").__enter__(),
                   lambda: c.t.unlink(f"{d}/f"), lambda: c.t.rename(f"{d}/f", f"{d}/h"),
                   lambda: c.t.chmod(f"{d}/f", 0o400)):
            with pytest.raises(OSError) as ei:
                op()
            assert ei.value.errno == errno.EROFS, ei.value
        assert c.t.read_bytes(f"{d}/f") == b"x"  # reading still works
    finally:
        c.sh(f"mount -o remount,rw {q(c.mount_point)}")
    c.t.rmtree(d)


def test_path_below_a_file_raises_not_a_directory(c: Case):
    c.sh(f"touch {q(c.p('file'))}")
    for op in (lambda: c.t.mkdir(c.p("file", "d")), lambda: c.t.open_write(c.p("file", "x")).__enter__()):
        with pytest.raises(NotADirectoryError) as ei:
            op()
        assert f"{c.p('file')} is a file, not a directory" in str(ei.value)
    with pytest.raises(NotADirectoryError):
        c.t.listdir_attr(c.p("file", "d"))
    assert c.t.lstat(c.p("file", "d")) is None
    with pytest.raises(FileNotFoundError) as ei:  # a missing parent is not "not a directory"
        c.t.mkdir(c.p("missing", "d"))
    assert not isinstance(ei.value, NotADirectoryError)


def test_context_manager_closes(c: Case):
    with c.t as t:
        assert t.lstat(c.base).is_dir
    c.t.close()  # idempotent


def test_replace_files(c: Case):
    c.sh(f"cd {q(c.base)} && printf old > a && mkdir d")
    items = [(c.p(f".t{i}"), c.p(n), data, 0o600) for i, (n, data) in
             enumerate([("a", b"new a"), ("b", b"b" * 300_000), ("empty", b"")])]
    c.t.replace_files(items)
    assert c.t.read_bytes(c.p("a")) == b"new a" and c.t.read_bytes(c.p("b")) == b"b" * 300_000
    assert c.t.read_bytes(c.p("empty")) == b"" and c.t.lstat(c.p("a")).perms == 0o600
    assert not [n for n in c.t.listdir_attr(c.base) if n.startswith(".t")]
    # a failure raises, and leaves no temporary behind
    with pytest.raises(OSError):
        c.t.replace_files([(c.p(".t9"), c.p("x"), b"x", 0o600), (c.p(".t8"), c.p("d", "missing", "y"), b"y", 0o600)])
    assert not [n for n in c.t.listdir_attr(c.base) if n.startswith(".t")]
