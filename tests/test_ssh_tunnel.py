"""Single-gateway jumps through sshtunnel.SSHTunnelForwarder, against the
real sshd nodes: which route is taken, the gateway's host key, one shared
forwarder per gateway, threads stopped on close, on Ctrl-C and at exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid

import paramiko
import pytest
import sshtunnel

from prng_cache import cancel
from prng_cache.errors import HostKeyError, TransportError
from prng_cache.transport.ssh import SSHTransport
from prng_cache.transport.ssh import tunnel as tunnel_mod

MiB = 1 << 20
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def cluster(ssh_cluster_clean):
    yield ssh_cluster_clean
    tunnel_mod.stop_all()  # a failed test must not leave a forwarder to the next


def _via(cluster, name, jump="rig-a", **policy):
    return SSHTransport(name, settings=cluster.policy(jump_host=jump, **policy))


def _sshtunnel_threads() -> list[threading.Thread]:
    """Threads of sshtunnel (listeners "Srv-<port>", one per forwarded
    connection) and paramiko transports (the gateway's among them)."""
    return [t for t in threading.enumerate()
            if t.name.startswith("Srv-") or "process_request_thread" in t.name
            or isinstance(t, paramiko.Transport)]


def _survivors(threads, grace: float = 2.0) -> list[threading.Thread]:
    """``threads`` still alive; a node's paramiko transport thread (not
    sshtunnel's) may take a moment to notice its closed socket."""
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(isinstance(t, paramiko.Transport) and t.is_alive() for t in threads):
        time.sleep(0.01)
    return [t for t in threads if t.is_alive()]


def _connections_to(node) -> int:
    """Established TCP connections from this process to the node's sshd."""
    want = "%08X:%04X" % (int.from_bytes(bytes(int(x) for x in node.address.split(".")), "little"), node.port)
    inodes = set()
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            if parts[2] == want and parts[3] == "01":
                inodes.add(parts[9])
    mine = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:[") and link[8:-1] in inodes:
            mine.add(link)
    return len(mine)


def _scratch(node) -> str:
    path = f"{node.shm}/tun-{uuid.uuid4().hex[:8]}"
    node.run(f"mkdir -p {path}")
    return path


# ------------------------------------------------------------ routes
def test_single_gateway_goes_through_the_forwarder(cluster):
    a, b = cluster["rig-a"], cluster["rig-b"]
    before = set(_sshtunnel_threads())
    base = _scratch(b)
    with _via(cluster, "rig-b") as t:
        with t.open_write(f"{base}/f") as f:
            f.write(b"y" * (3 * MiB))
        fwd = t.forwarder
        assert isinstance(fwd, sshtunnel.SSHTunnelForwarder)
        # the node connection is to the forwarder's loopback listener...
        local = fwd.tunnel_bindings[(b.address, b.port)]
        assert local[0] == "127.0.0.1"
        assert t.paramiko_transport.sock.getpeername() == local
        # ... and the TCP connection to the node is the gateway's sshd's
        holders = b.client_pids()
        assert holders & set(a.session_pids()) and os.getpid() not in holders
        assert t.read_bytes(f"{base}/f") == b"y" * (3 * MiB)
        # sshtunnel read no ssh config, built no ProxyCommand
        assert fwd.ssh_proxy is None
        assert set(_sshtunnel_threads()) - before
    assert b.exists(f"{base}/f")


def test_one_hop_proxyjump_uses_the_forwarder_too(cluster, tmp_path):
    cfg = cluster.write_ssh_config(tmp_path / "cfg", aliases={"b-via-a": ("rig-b", "rig-a")})
    with SSHTransport("b-via-a", settings=cluster.policy(ssh_config=str(cfg))) as t:
        assert t.lstat("/dev/shm").is_dir
        assert t.forwarder is not None


def test_two_hop_chain_uses_channels_not_the_forwarder(cluster, tmp_path):
    a, b, c = cluster["rig-a"], cluster["rig-b"], cluster["rig-c"]
    cfg = cluster.write_ssh_config(tmp_path / "cfg", aliases={"c-via-a-b": ("rig-c", "rig-a,rig-b")})
    with SSHTransport("c-via-a-b", settings=cluster.policy(ssh_config=str(cfg))) as t:
        assert t.lstat("/dev/shm").is_dir
        assert t.forwarder is None
        assert isinstance(t.paramiko_transport.sock, paramiko.Channel)  # direct-tcpip of rig-b
        assert not [x for x in threading.enumerate() if x.name.startswith("Srv-")]
        assert os.getpid() in a.client_pids() and os.getpid() not in c.client_pids()
        assert c.client_pids() & set(b.session_pids())  # rig-b's sshd holds the last leg


# ------------------------------------------------------ gateway host key
def _accepted(node) -> int:
    return node.log_text().count("Accepted publickey")


def test_unknown_gateway_key_is_refused_before_authenticating(cluster, tmp_path):
    a, b = cluster["rig-a"], cluster["rig-b"]
    only_b = cluster.write_known_hosts(tmp_path / "kh", nodes=[b])
    cfg = cluster.write_ssh_config(tmp_path / "cfg", known_hosts=None)
    logins = _accepted(a)
    t = SSHTransport("rig-b", settings=cluster.policy(ssh_config=str(cfg), known_hosts=str(only_b),
                                                      jump_host="rig-a"))
    with pytest.raises(HostKeyError, match=rf"rig-b \(jump host rig-a\).*\[{a.address}\]:{a.port} not in") as ei:
        t.connect()
    assert ei.value.node == "rig-b (jump host rig-a)"
    assert _accepted(a) == logins  # refused before any key was offered to it
    assert not [x for x in threading.enumerate() if x.name.startswith("Srv-")]  # no forwarder started
    assert not t.connected


def test_changed_gateway_key_is_refused_even_with_strict_off(cluster):
    a = cluster["rig-a"]
    old = a.host_public_key()
    try:
        assert a.regen_host_key() != old
        for strict in (True, False):
            logins = _accepted(a)
            with pytest.raises(HostKeyError, match=r"jump host rig-a.*host key CHANGED"):
                _via(cluster, "rig-b", strict_host_keys=strict).connect()
            assert _accepted(a) == logins
    finally:
        cluster.write_known_hosts()
    with _via(cluster, "rig-b") as t:  # trusted again: through the forwarder
        assert t.lstat("/") is not None and t.forwarder is not None


def test_node_key_behind_the_forwarder_is_checked_under_its_own_name(cluster, tmp_path):
    # the node is reached on 127.0.0.1:<port>, but known_hosts must match rig-b itself
    a, b = cluster["rig-a"], cluster["rig-b"]
    only_a = cluster.write_known_hosts(tmp_path / "kh", nodes=[a])
    cfg = cluster.write_ssh_config(tmp_path / "cfg", known_hosts=None)
    t = SSHTransport("rig-b", settings=cluster.policy(ssh_config=str(cfg), known_hosts=str(only_a),
                                                      jump_host="rig-a"))
    with pytest.raises(HostKeyError, match=rf"host key for \[{b.address}\]:{b.port} not in") as ei:
        t.connect()
    assert ei.value.node == "rig-b"
    assert not [x for x in threading.enumerate() if x.name.startswith("Srv-")]  # lease released


def test_sshtunnel_never_reads_an_ssh_config(cluster, tmp_path, monkeypatch):
    # sshtunnel's default is ~/.ssh/config, whose ProxyCommand it would run
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    marker = tmp_path / "proxycommand-ran"
    (home / ".ssh" / "config").write_text(f"Host *\n    ProxyCommand touch {marker}\n")
    monkeypatch.setenv("HOME", str(home))
    with _via(cluster, "rig-b") as t:
        assert t.lstat("/") is not None and t.forwarder is not None
    assert not marker.exists()


# ------------------------------------------------------ one per gateway
def test_nodes_behind_one_gateway_share_one_forwarder(cluster):
    a, b, c = cluster["rig-a"], cluster["rig-b"], cluster["rig-c"]
    before = set(_sshtunnel_threads())
    tb, tc = _via(cluster, "rig-b").connect(), _via(cluster, "rig-c").connect()
    try:
        assert tb.forwarder is tc.forwarder
        assert set(tb.forwarder.tunnel_bindings) == {(b.address, b.port), (c.address, c.port)}
        assert _connections_to(a) == 1  # one gateway connection for both nodes
        tb.close()
        assert tc.lstat("/dev/shm").is_dir  # the other node's route is still up
        assert tc.forwarder.is_active
    finally:
        tb.close()
        tc.close()
    assert set(_sshtunnel_threads()) <= before
    assert _connections_to(a) == 0


def test_nodes_connecting_at_once_share_one_gateway_connection(cluster):
    # stage_cluster connects the nodes in parallel: one gateway connect, the others wait for it
    a = cluster["rig-a"]
    ts = [_via(cluster, name) for name in ("rig-b", "rig-c", "rig-b")]
    errors = []

    def go(t):
        try:
            t.lstat("/dev/shm")
        except Exception as e:  # noqa: BLE001 - the test looks at it
            errors.append(e)

    workers = [threading.Thread(target=go, args=(t,)) for t in ts]
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.join(30)
        assert not errors
        assert len({id(t.forwarder) for t in ts}) == 1
        assert _connections_to(a) == 1
        assert len(ts[0].forwarder.tunnel_bindings) == 2  # one listener per node address
    finally:
        for t in ts:
            t.close()
    assert not [x for x in threading.enumerate() if x.name.startswith("Srv-")]


def test_no_sshtunnel_thread_survives_close(cluster):
    before = set(threading.enumerate())
    t = _via(cluster, "rig-b")
    t.lstat("/")
    gateway = t.forwarder._transport
    started = set(threading.enumerate()) - before
    ours = [x for x in started if x.name.startswith("Srv-") or "process_request_thread" in x.name]
    assert ours and gateway in started
    t.close()
    # joined by close(): the forwarder's listener, connection and gateway threads
    assert not [x for x in [*ours, gateway] if x.is_alive()]
    assert not _survivors(started)


def test_gateway_that_cannot_reach_the_node(cluster):
    c = cluster["rig-c"]
    c.stop()
    try:
        t0 = time.monotonic()
        with pytest.raises(TransportError, match=rf"jump host rig-a cannot reach {c.address}:{c.port}"):
            _via(cluster, "rig-c").connect()
        assert time.monotonic() - t0 < 5  # refused: reported at once, not after a timeout
    finally:
        c.start()
    assert not [x for x in threading.enumerate() if x.name.startswith("Srv-")]


def test_dead_gateway_is_replaced_on_reconnect(cluster):
    a = cluster["rig-a"]
    t = _via(cluster, "rig-b")
    try:
        t.lstat("/")
        old = t.forwarder
        a.restart()  # the gateway's sessions die
        try:
            t.lstat("/")  # fails, or finds the connection gone and reconnects
        except TransportError:
            pass
        assert t.lstat("/") is not None  # reconnected through a new forwarder
        assert t.forwarder is not old and not old.is_active
    finally:
        t.close()


# --------------------------------------------------------- Ctrl-C, exit
def test_ctrl_c_stops_the_forwarder_threads(cluster):
    b = cluster["rig-b"]
    base = _scratch(b)
    before = set(threading.enumerate())
    t = _via(cluster, "rig-b")
    started, failed = threading.Event(), []

    def upload():
        try:
            with t.open_write(f"{base}/endless") as f:
                started.set()
                while True:
                    f.write(b"z" * MiB)
        except Exception as e:  # noqa: BLE001 - the test looks at it
            failed.append(e)

    worker = threading.Thread(target=upload, daemon=True)
    try:
        with cancel.tracked(t):
            worker.start()
            assert started.wait(30)
            time.sleep(0.2)
            cancel.cancel_all()  # what the CLI does on the first Ctrl-C
        worker.join(10)
        assert not worker.is_alive()
        assert failed and isinstance(failed[0], TransportError), failed
        assert not [x for x in threading.enumerate() if x.name.startswith("Srv-") or
                    "process_request_thread" in x.name]
    finally:
        cancel.reset()
        t.close()
    assert not _survivors(set(threading.enumerate()) - before)


EXIT_SCRIPT = r"""
import json, sys
from prng_cache.policy import TransportPolicy
from prng_cache.transport.ssh import SSHTransport
t = SSHTransport("rig-b", settings=TransportPolicy(**json.loads(sys.argv[1])))
assert t.lstat("/") is not None and t.forwarder is not None
# no close(): interpreter exit must stop the forwarder, quietly
"""


def test_exit_without_close_stops_quietly(cluster):
    policy = cluster.policy(jump_host="rig-a")
    r = subprocess.run([sys.executable, "-c", EXIT_SCRIPT, json.dumps(policy.__dict__)],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": ROOT})
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and r.stderr == ""  # the library never prints
