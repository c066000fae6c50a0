"""SSHTransport against the real sshd nodes of the test cluster: ssh config,
host keys, jump hosts, failures, isolation, session reuse."""

from __future__ import annotations

import errno
import logging
import os
import shlex
import socket
import threading
import time
import uuid

import pytest

from prng_cache.errors import HostKeyError, NodeSetupError, TransportError
from prng_cache.transport.ssh import SSHTransport, resolve_target
from prng_cache.testing.sshcluster import write_distributed_config

q = shlex.quote
MiB = 1 << 20


@pytest.fixture
def cluster(ssh_cluster_clean):
    return ssh_cluster_clean


def _transport(cluster, name, username=None, **policy):
    return SSHTransport(name, username, settings=cluster.policy(**policy))


def _scratch(node) -> str:
    path = f"{node.shm}/t-{uuid.uuid4().hex[:8]}"
    node.run(f"mkdir -p {q(path)}")
    return path


# ------------------------------------------------------------- ssh config
def test_config_alias_resolves_hostname_port_identity(cluster, tmp_path, monkeypatch):
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    node = cluster["rig-a"]
    target = resolve_target("rig-a", settings=cluster.policy())
    assert (target.hostname, target.port) == (node.address, node.port)
    assert target.identity_files == (str(cluster.client_key),)
    assert target.username == cluster.user and target.jumps == ()
    with _transport(cluster, "rig-a") as t:
        assert t.host == "rig-a"
        assert t.lstat("/") is not None
        peer = t.paramiko_transport.sock.getpeername()
        assert peer == (node.address, node.port)

    # the same alias without IdentityFile: our key is the only authorized
    # one, so authentication must fail (proves IdentityFile is what logged in)
    cfg = cluster.write_ssh_config(tmp_path / "noid", identity=False)
    with pytest.raises(TransportError, match="authentication failed"):
        SSHTransport("rig-a", settings=cluster.policy(ssh_config=str(cfg))).connect()


def test_missing_config_file_means_plain_host(cluster, tmp_path):
    node = cluster["rig-a"]
    t = SSHTransport(node.address, settings=cluster.policy(ssh_config=str(tmp_path / "none")))
    assert (t.target.hostname, t.target.port) == (node.address, 22)


def test_cluster_file_username_wins_over_config_user(cluster, tmp_path):
    cfg = cluster.write_ssh_config(tmp_path / "cfg", user="nosuchuser")
    policy = cluster.policy(ssh_config=str(cfg))
    with SSHTransport("rig-b", cluster.user, settings=policy) as t:
        assert t.target.username == cluster.user
        assert t.uid() == (0 if cluster.user == "root" else os.getuid())
    with pytest.raises(TransportError, match="authentication failed for nosuchuser@"):
        SSHTransport("rig-b", settings=policy).connect()


def test_not_connected_until_used_and_close_is_idempotent(cluster):
    t = _transport(cluster, "rig-a")
    assert not t.connected
    assert t.lstat("/dev/shm").is_dir
    assert t.connected
    t.close()
    t.close()
    assert not t.connected
    assert t.lstat("/dev/shm").is_dir  # reconnects lazily
    t.close()


# -------------------------------------------------------------- host keys
def test_unknown_host_key_is_refused(cluster, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    cfg = cluster.write_ssh_config(tmp_path / "cfg", known_hosts=None)
    node = cluster["rig-a"]
    t = SSHTransport("rig-a", settings=cluster.policy(ssh_config=str(cfg), known_hosts=str(empty)))
    with pytest.raises(HostKeyError) as ei:
        t.connect()
    msg = str(ei.value)
    assert f"host key for [{node.address}]:{node.port} not in {empty}" in msg
    assert ei.value.node == "rig-a"
    assert empty.read_text() == ""  # nothing learned


def test_config_user_known_hosts_file_is_used(cluster, tmp_path):
    # the policy's known_hosts is empty; the config's UserKnownHostsFile knows the node
    empty = tmp_path / "empty"
    empty.write_text("")
    with _transport(cluster, "rig-a", known_hosts=str(empty)) as t:
        assert t.lstat("/") is not None
        assert str(cluster.known_hosts) in t.target.known_hosts_files


def test_changed_host_key_is_refused(cluster):
    node = cluster["rig-c"]
    old = node.host_public_key()
    try:
        assert node.regen_host_key() != old
        with pytest.raises(HostKeyError, match="host key CHANGED for") as ei:
            _transport(cluster, "rig-c").connect()
        assert node.known_hosts_name in str(ei.value)
        # strict_host_keys off only accepts *unknown* keys, never changed ones
        with pytest.raises(HostKeyError, match="CHANGED"):
            _transport(cluster, "rig-c", strict_host_keys=False).connect()
    finally:
        cluster.write_known_hosts()
    with _transport(cluster, "rig-c") as t:
        assert t.lstat("/") is not None


def test_strict_host_keys_off_accepts_unknown_key_in_memory(cluster, tmp_path, caplog):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    cfg = cluster.write_ssh_config(tmp_path / "cfg", known_hosts=None)
    policy = cluster.policy(ssh_config=str(cfg), known_hosts=str(empty), strict_host_keys=False)
    with caplog.at_level(logging.WARNING, logger="prng_cache.transport.ssh"):
        with SSHTransport("rig-a", settings=policy) as t:
            assert t.lstat("/") is not None
    assert any("accepting unknown host key" in r.getMessage() for r in caplog.records)
    assert empty.read_text() == ""  # accepted for this connection only


# --------------------------------------------------------------- failures
def test_node_down_is_refused_not_waited_for(cluster):
    # a stopped sshd refuses the TCP connection: the error is "refused",
    # which no timeout produces (connect_timeout is long on purpose)
    node = cluster["rig-b"]
    node.stop()
    try:
        t = _transport(cluster, "rig-b", connect_timeout=30.0)
        with pytest.raises(TransportError, match="refused") as ei:
            t.lstat("/")
        assert "timed out" not in str(ei.value)
        assert ei.value.node == "rig-b"
    finally:
        node.start()


class _SilentServer:
    """A port that accepts TCP connections and never says a word; records
    each connection and whether the client hung up (b"" read)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.hung_up = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        self.accepted += 1
        with conn:
            while True:
                try:
                    if not conn.recv(4096):
                        break
                except OSError:
                    break
        self.hung_up.set()

    def close(self):
        self.sock.close()


def test_unresponsive_node_times_out_after_connect_timeout(cluster, tmp_path):
    srv = _SilentServer()
    try:
        cfg = tmp_path / "cfg"
        cfg.write_text(f"Host silent\n    HostName 127.0.0.1\n    Port {srv.port}\n")
        # 1.5 s appears nowhere else (io_timeout is >= 60 s, paramiko's own
        # banner default 15 s): the message shows which timeout fired
        t = SSHTransport("silent", settings=cluster.policy(ssh_config=str(cfg), connect_timeout=1.5))
        with pytest.raises(TransportError) as ei:
            t.connect()
        assert "timed out after 1.5 s" in str(ei.value) or "no SSH banner within 1.5 s" in str(ei.value)
        # one attempt, and the transport hung up (no socket left behind)
        assert srv.hung_up.wait(30)
        assert srv.accepted == 1
        assert not t.connected
    finally:
        srv.close()


def test_unresolvable_host(cluster, tmp_path):
    t = SSHTransport("no-such-host.invalid", settings=cluster.policy(ssh_config=str(tmp_path / "none")))
    with pytest.raises(TransportError, match="cannot resolve"):
        t.connect()


def test_connection_lost_mid_session_then_reconnects(cluster):
    node = cluster["rig-b"]
    t = _transport(cluster, "rig-b")
    base = _scratch(node)
    with t.open_write(f"{base}/f") as f:
        f.write(b"before")
    node.stop()  # kills the sessions too
    try:
        # "connection lost", or "refused" when paramiko noticed the drop first
        # and the transport tried to reconnect
        with pytest.raises(TransportError, match="connection lost|refused"):
            t.lstat(base)
        with pytest.raises(TransportError):
            t.read_bytes(f"{base}/f")  # reconnect attempt: refused
    finally:
        node.start()
    assert t.read_bytes(f"{base}/f") == b"before"  # the RAM disk survived an sshd restart
    t.close()


def test_connection_lost_during_upload(cluster):
    node = cluster["rig-b"]
    base = _scratch(node)
    t = _transport(cluster, "rig-b")
    try:
        with pytest.raises(TransportError):
            with t.open_write(f"{base}/f") as f:
                f.write(os.urandom(MiB))
                node.stop()
                for _ in range(20):
                    f.write(os.urandom(MiB))
    finally:
        node.start()
    assert t.lstat(base).is_dir
    t.close()


# -------------------------------------------------------------- jump hosts
def _connection_goes_through(cluster, via, to) -> bool:
    """Is the TCP connection to node ``to`` held by node ``via``'s sshd
    (and not by this process)?"""
    holders = to.client_pids()
    return bool(holders & set(via.session_pids())) and os.getpid() not in holders


def test_jump_host_via_config_proxyjump(cluster, tmp_path):
    a, b = cluster["rig-a"], cluster["rig-b"]
    cfg = cluster.write_ssh_config(tmp_path / "cfg", aliases={"b-via-a": ("rig-b", "rig-a")})
    t = SSHTransport("b-via-a", settings=cluster.policy(ssh_config=str(cfg)))
    assert [h.label for h in t.target.jumps] == ["rig-a"]
    base = _scratch(b)
    with t:
        with t.open_write(f"{base}/via-jump") as f:
            f.write(b"x" * (3 * MiB))
        assert _connection_goes_through(cluster, a, b)
        assert t.read_bytes(f"{base}/via-jump") == b"x" * (3 * MiB)
    assert b.exists(f"{base}/via-jump")
    if a.isolated:
        assert not a.exists(f"{base}/via-jump")


@pytest.mark.parametrize("form", ["alias", "user@alias:port"])
def test_jump_host_via_policy(cluster, form):
    a, b = cluster["rig-a"], cluster["rig-b"]
    # (the second form still finds rig-a's IdentityFile through the config)
    jump = "rig-a" if form == "alias" else f"{cluster.user}@rig-a:{a.port}"
    with _transport(cluster, "rig-b", jump_host=jump) as t:
        assert [(h.hostname, h.port) for h in t.target.jumps] == [(a.address, a.port)]
        assert t.uid() == (0 if cluster.user == "root" else os.getuid())
        assert t.lstat("/dev/shm").is_dir
        assert _connection_goes_through(cluster, a, b)
    # the jump host itself is reached directly even with jump_host set
    with _transport(cluster, "rig-a", jump_host="rig-a") as t:
        assert t.target.jumps == ()
        assert t.lstat("/") is not None


def test_jump_chain_of_two_hosts(cluster, tmp_path):
    a, b, c = cluster["rig-a"], cluster["rig-b"], cluster["rig-c"]
    cfg = cluster.write_ssh_config(tmp_path / "cfg", aliases={"c-via-a-b": ("rig-c", "rig-a,rig-b")})
    with SSHTransport("c-via-a-b", settings=cluster.policy(ssh_config=str(cfg))) as t:
        assert [h.label for h in t.target.jumps] == ["rig-a", "rig-b"]
        assert t.lstat("/dev/shm").is_dir
        assert _connection_goes_through(cluster, a, b)
        assert _connection_goes_through(cluster, b, c)


def test_proxy_command_from_config(cluster, tmp_path):
    a, b = cluster["rig-a"], cluster["rig-b"]
    cfg = tmp_path / "cfg"
    text = cluster.ssh_config_text()
    text += (
        f"\nHost b-by-command\n    HostName {b.address}\n    Port {b.port}\n"
        f"    IdentityFile {cluster.client_key}\n    UserKnownHostsFile {cluster.known_hosts}\n"
        f"    ProxyCommand ssh -F {cfg} -o BatchMode=yes -W %h:%p rig-a\n"
    )
    cfg.write_text(text)
    with SSHTransport("b-by-command", cluster.user, settings=cluster.policy(ssh_config=str(cfg))) as t:
        assert t.target.proxy_command and t.target.jumps == ()
        assert t.lstat("/dev/shm").is_dir
        assert _connection_goes_through(cluster, a, b)


def test_jump_host_key_is_verified(cluster, tmp_path):
    b = cluster["rig-b"]
    only_b = cluster.write_known_hosts(tmp_path / "kh", nodes=[b])
    cfg = cluster.write_ssh_config(tmp_path / "cfg", known_hosts=None)
    t = SSHTransport("rig-b", settings=cluster.policy(ssh_config=str(cfg), known_hosts=str(only_b),
                                                      jump_host="rig-a"))
    with pytest.raises(HostKeyError, match=r"jump host rig-a.*not in"):
        t.connect()


def test_jump_host_cannot_reach_target(cluster):
    c = cluster["rig-c"]
    c.stop()
    try:
        with pytest.raises(TransportError, match="jump host rig-a cannot reach"):
            _transport(cluster, "rig-c", jump_host="rig-a").connect()
    finally:
        c.start()


# ------------------------------------------------------------- isolation
def test_nodes_have_private_ram_disks(cluster):
    a, b = cluster["rig-a"], cluster["rig-b"]
    if not a.isolated:
        pytest.skip(f"nodes share /dev/shm here: {cluster.fallback_reason}")
    name = f"/dev/shm/isolation-{uuid.uuid4().hex[:8]}"
    with _transport(cluster, "rig-a") as t:
        with t.open_write(name) as f:
            f.write(b"only on a")
        assert t.lstat(name).size == 9
    assert a.exists(name)
    assert not b.exists(name)
    assert not os.path.exists(name)
    with _transport(cluster, "rig-b") as t:
        assert t.lstat(name) is None
        assert t.disk_usage("/dev/shm").total == 64 * MiB


def test_wipe_empties_the_ram_disk_like_a_reboot(cluster):
    a = cluster["rig-a"]
    base = _scratch(a)
    with _transport(cluster, "rig-a") as t:
        with t.open_write(f"{base}/f") as f:
            f.write(b"1")
        a.wipe()
        assert t.lstat(base) is None
        assert t.disk_usage(a.shm).used == 0 or not a.isolated


# ---------------------------------------------------------- one session
def test_one_sftp_session_serves_many_operations(cluster):
    a = cluster["rig-a"]
    marker = "subsystem 'sftp'"
    before = a.log_text().count(marker)
    base = _scratch(a)
    with _transport(cluster, "rig-a") as t:
        sftp = t.sftp
        for i in range(20):
            d = f"{base}/d{i}"
            t.mkdir(d)
            with t.open_write(f"{d}/f") as f:
                f.write(b"%d" % i)
            t.rename(f"{d}/f", f"{d}/g")
            assert t.read_bytes(f"{d}/g") == b"%d" % i
            with t.open_read(f"{d}/g") as f:
                f.read()
            t.chmod(f"{d}/g", 0o400)
            assert set(t.listdir_attr(d)) == {"g"}
            t.lstat(d)
            t.disk_usage(d)
        t.rmtree(base)
        assert t.sftp is sftp
    assert a.log_text().count(marker) == before + 1


def test_socket_and_cipher_tuning(cluster):
    with _transport(cluster, "rig-a") as t:
        t.connect()
        pt = t.paramiko_transport
        assert pt.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert pt.remote_cipher == "aes128-gcm@openssh.com"


# -------------------------------------------------- SSH-specific details
def test_open_write_mode_is_exact_despite_remote_umask(cluster):
    a = cluster["rig-a"]
    base = _scratch(a)
    with _transport(cluster, "rig-a") as t:
        for mode in (0o644, 0o666, 0o640, 0o400):
            p = f"{base}/f{mode:o}"
            with t.open_write(p, mode) as f:
                f.write(b"x")
            assert t.lstat(p).perms == mode
            assert a.run(f"stat -c %a {q(p)}").stdout.strip() == f"{mode:o}"


def test_fifo_is_never_opened(cluster):
    # opening a FIFO would block the node's SFTP server (and our session)
    a = cluster["rig-a"]
    base = _scratch(a)
    a.run(f"mkfifo {q(base)}/fifo")
    with _transport(cluster, "rig-a") as t:
        with pytest.raises(OSError):
            t.read_bytes(f"{base}/fifo")
        with pytest.raises(OSError):
            with t.open_read(f"{base}/fifo"):
                pass
        assert t.lstat(f"{base}/fifo") is not None  # session still fine


def test_failure_of_the_last_buffered_write_is_reported_at_close(cluster):
    a = cluster["rig-a"]
    if not a.isolated:
        pytest.skip("needs the node's private 64 MiB tmpfs")
    base = _scratch(a)
    with _transport(cluster, "rig-a") as t:
        free = t.disk_usage(base).free
        # leave ~100 KiB: the file below fits in one buffered request, which is
        # only sent (and refused) when the stream is closed
        a.run(f"head -c {free - 100 * 1024} /dev/zero > {q(base)}/ballast")
        with pytest.raises(OSError) as ei:
            with t.open_write(f"{base}/late") as f:
                f.write(b"y" * (200 * 1024))
        assert ei.value.errno == errno.ENOSPC
        t.unlink(f"{base}/ballast")
        t.unlink(f"{base}/late")
        assert t.disk_usage(base).free >= free - 4096


def test_exec_arguments_are_quoted(cluster):
    a = cluster["rig-a"]
    base = _scratch(a)
    # commands run in the login directory: a relative canary name keeps the
    # path free of "/" (it must be a single path component)
    pwned = f"pwned-{uuid.uuid4().hex[:8]}"
    nasty = f"{base}/sp ace 'q\" $(touch {pwned}) `touch {pwned}`; touch {pwned} #"
    with _transport(cluster, "rig-a") as t:
        t.mkdir(nasty)
        via_sftp = t.disk_usage(nasty)
        t._statvfs_ext = False  # force the df fallback (fault injection)
        via_df = t.disk_usage(nasty)
        assert via_df.total == via_sftp.total
        with pytest.raises(FileNotFoundError):
            t.disk_usage(f"{nasty}/missing")
    home = cluster.ssh("rig-a", "pwd").stdout.strip()
    try:
        assert not a.exists(f"{home}/{pwned}")
    finally:
        a.run(f"rm -f {q(home + '/' + pwned)}")


def test_node_clock(cluster):
    # the node shares our clock, so now() must agree with it within the
    # uncertainty of the method: the probe file's whole-second mtime (0.5 s)
    # plus half the time the probe took (bracketed here, however long), plus
    # 50 ms for the kernel's coarse file timestamps
    with _transport(cluster, "rig-a") as t:
        t.connect()
        t0 = time.time()
        first = t.now()  # learns the offset (probe file), then reads it
        t1 = time.time()
        slack = 0.55 + (t1 - t0)
        assert t0 - slack <= first <= t1 + slack
        assert t.uid() == (0 if cluster.user == "root" else os.getuid())


# ---------------------------------------------------------- fixture helpers
def test_real_ssh_client_and_distributed_config(cluster, tmp_path):
    out = cluster.ssh("rig-a", "echo $((6*7))").stdout.strip()
    assert out == "42"
    import json

    path = write_distributed_config(tmp_path / "distributed_config.json", list(cluster)[:2],
                                    "/opt/prng", "/opt/venv/bin/python", include_localhost=True)
    nodes = json.loads(path.read_text())["nodes"]
    assert [n["hostname"] for n in nodes] == ["localhost", "rig-a", "rig-b"]
    assert set(nodes[1]) == {"hostname", "username", "gpu_count", "gpu_type", "script_path",
                             "python_env", "max_concurrent_script_jobs"}
    assert nodes[1]["username"] == cluster.user and nodes[1]["script_path"] == "/opt/prng"


def test_direct_connection_acks_at_once(cluster):
    """The socket under paramiko re-arms TCP_QUICKACK on every read, so sshd's
    Nagle never waits for a delayed ACK (~40 ms per small exchange).

    Observed in the kernel, not by timing: after request/response exchanges
    Linux puts a socket in "pingpong" (delayed-ACK) mode, and
    getsockopt(TCP_QUICKACK) reads 0; re-arming after each read takes it out
    again, so after the last answer was read it reads 1. (The speed-up
    itself is a benchmark figure: prng-cache bench, README.)"""
    with SSHTransport("rig-a", settings=cluster.policy()) as t:
        for _ in range(8):  # enough exchanges to enter pingpong mode
            t.lstat("/")
        sock = t.paramiko_transport.sock
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK) == 1


# ------------------------------------------------- what really went wrong
# SFTP v3 reports EROFS as a bare "Failure" and ENOTDIR as "No such file";
# the transport asks the node what happened (statvfs@openssh.com's ST_RDONLY
# flag, lstat of the path's ancestors) and says so.
def test_read_only_ram_disk_is_reported_as_read_only(cluster):
    a = cluster["rig-a"]
    if not a.isolated:
        pytest.skip(f"needs the node's private tmpfs: {cluster.fallback_reason}")
    base = _scratch(a)
    a.run(f"touch {q(base)}/old")
    a.run("mount -o remount,ro /dev/shm")
    try:
        with _transport(cluster, "rig-a") as t:
            for what, op in [
                ("mkdir", lambda: t.mkdir(f"{base}/prng")),
                ("create", lambda: t.open_write(f"{base}/new").__enter__()),
                ("unlink", lambda: t.unlink(f"{base}/old")),
                ("rename", lambda: t.rename(f"{base}/old", f"{base}/renamed")),
            ]:
                with pytest.raises(OSError) as ei:
                    op()
                assert ei.value.errno == errno.EROFS, (what, ei.value)
                assert f"{what} failed on rig-a: Read-only file system" in str(ei.value), str(ei.value)
            # an existing name is still "exists" (EEXIST wins on a read-only fs too)
            with pytest.raises(FileExistsError):
                t.mkdir(base)
    finally:
        a.run("mount -o remount,rw /dev/shm")


def test_file_where_a_directory_should_be_is_named(cluster):
    a = cluster["rig-a"]
    base = _scratch(a)
    a.run(f"touch {q(base)}/file && ln -s file {q(base)}/link && mkdir {q(base)}/dir")
    with _transport(cluster, "rig-a") as t:
        with pytest.raises(NotADirectoryError) as ei:
            t.mkdir(f"{base}/file/prng")
        assert f"{base}/file is a file, not a directory" in str(ei.value)
        with pytest.raises(NotADirectoryError, match=f"{base}/file is a file, not a directory"):
            t.open_write(f"{base}/file/deeper/x").__enter__()
        with pytest.raises(NotADirectoryError, match=f"{base}/link is a symbolic link to a file, not a directory"):
            t.mkdir(f"{base}/link/prng")
        # really missing stays "No such file"
        with pytest.raises(FileNotFoundError) as ei:
            t.mkdir(f"{base}/dir/missing/prng")
        assert not isinstance(ei.value, NotADirectoryError)
        assert t.lstat(f"{base}/file/prng") is None  # lstat: simply not there


def test_proxy_command_needing_a_shell_is_refused_and_not_run(cluster, tmp_path, monkeypatch):
    work = tmp_path / "work"  # the proxy's working directory: whatever it would create lands here
    work.mkdir()
    monkeypatch.chdir(work)
    cfg = tmp_path / "cfg"
    cfg.write_text("Host shelly\n    HostName 127.0.0.1\n    ProxyCommand touch proxy-ran; nc %h %p\n")
    t = SSHTransport("shelly", settings=cluster.policy(ssh_config=str(cfg)))
    with pytest.raises(TransportError, match=r"shell syntax \(';'\).*without a shell"):
        t.connect()
    assert os.listdir(work) == []  # nothing was run


@pytest.fixture
def svc_node(tmp_path):
    """A one-node cluster whose sshd knows an extra account "prngsvc" (uid 0,
    so it may read the cluster's root-only key files) with login shell
    /bin/false and a read-only home: a service account without a usable
    shell. The account exists only in the node's mount namespace."""
    from conftest import skip_or_fail
    from prng_cache.testing.sshcluster import ClusterUnavailable, SSHCluster

    c = SSHCluster(tmp_path / "svc-cluster", 1, tmpfs_size="8m", prefix="svc-")
    try:
        c.start()
    except ClusterUnavailable as exc:
        skip_or_fail(str(exc))
    try:
        node = c[0]
        if not node.isolated:
            pytest.skip(f"needs mount namespaces: {c.fallback_reason}")
        home = node.dir / "home"
        home.mkdir()
        passwd = node.dir / "passwd"
        passwd.write_text(open("/etc/passwd").read() + f"prngsvc:*:0:0:service:{home}:/bin/false\n")
        node.run(f"mount --bind {q(str(passwd))} /etc/passwd && "
                 f"mount -t tmpfs -o ro,size=64k tmpfs {q(str(home))}")
        yield c, node
    finally:
        c.stop()


def test_account_without_shell_needs_no_exec_when_sftp_can_probe(svc_node):
    c, node = svc_node
    with SSHTransport(node.name, "prngsvc", settings=c.policy()) as t:
        assert t.uid() == 0  # from a probe file in /dev/shm (the home is read-only)
        t.now()  # the clock offset came with it
    log = node.log_text()
    assert "Accepted publickey for prngsvc" in log
    assert "Starting session: command" not in log  # no exec channel was needed


def test_account_without_shell_says_what_the_node_needs(svc_node):
    c, node = svc_node
    # nowhere to create the probe file: read-only home, /dev/shm and /tmp
    node.run("mount -o remount,ro /dev/shm && mount --bind /tmp /tmp && mount -o remount,bind,ro /tmp")
    with SSHTransport(node.name, "prngsvc", settings=c.policy()) as t:
        with pytest.raises(NodeSetupError) as ei:
            t.uid()
    msg = str(ei.value)
    assert "needs a POSIX login shell for user prngsvc (its login shell is /bin/false)" in msg, msg
    assert "exit status 1" in msg
    assert "Starting session: command" in node.log_text()  # the fallback was tried
