"""A real SSH "cluster" on one machine, for tests and `prng-cache bench`.

Each node is an OpenSSH ``sshd`` listening on its own loopback address
(``127.0.0.<10+i>``) and free port.  Where mount namespaces are permitted
(root), every node lives in its own mount namespace with a private tmpfs on
``/dev/shm``: the node's ``/dev/shm`` is separate from the other nodes' and
from the coordinator's, a small tmpfs size makes "disk full" real, and
remounting it makes "node rebooted, RAM cache wiped" real.

The namespace is held by a small holder process (``sleep``); sshd is started
inside it with ``nsenter``.  So ``stop()``/``start()`` take sshd down and up
without losing the node's RAM (a network outage or an sshd restart), while
``wipe()`` (or ``reboot()``) empties it.

Where namespaces are not permitted, the cluster falls back to plain sshd
processes sharing the machine's ``/dev/shm``: every node then gets its own
directory ``SSHNode.shm`` (always use ``node.shm`` rather than a literal
``/dev/shm`` in tests), ``isolated`` is False, tmpfs sizes are not enforced,
and a warning says so.  Set ``SSHCLUSTER_SHARED_SHM=1`` to force that mode
(to check that the suite still behaves where namespaces are not allowed).

Nothing here touches the real ``~/.ssh``: the client key, ``known_hosts`` and
ssh config live in the cluster's work directory.

It never imports pytest (the bench runs it without); the pytest glue, skip
in a dev checkout or fail in CI when sshd cannot start, is in
``tests/conftest.py``. The only processes it signals are the sshd listeners
it started and their descendants (sessions call setsid(), so only the
process tree finds them).

Typical use (see ``tests/conftest.py`` for the session fixture)::

    cluster = SSHCluster(tmp_dir, n_nodes=3, tmpfs_size="64m")
    cluster.start()                    # raises ClusterUnavailable(reason)
    node = cluster["rig-a"]
    node.run("ls -la /dev/shm")        # inside the node's namespace
    policy = cluster.policy()          # TransportPolicy for SSHTransport
    cluster.stop()
"""

from __future__ import annotations

import atexit
import getpass
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

SSHD = "/usr/sbin/sshd"

__all__ = [
    "ClusterUnavailable",
    "SSHCluster",
    "SSHNode",
    "SharedShmWarning",
    "write_distributed_config",
]


class ClusterUnavailable(RuntimeError):
    """sshd (or its prerequisites) cannot be started on this machine."""


class SharedShmWarning(UserWarning):
    """Mount namespaces are not permitted: nodes share the machine's /dev/shm."""


# --------------------------------------------------------------- utilities
def _free_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def _keygen(path: Path, comment: str) -> None:
    for p in (path, path.with_name(path.name + ".pub")):
        if p.exists():
            p.unlink()
    r = subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        raise ClusterUnavailable(f"ssh-keygen failed: {r.stderr.strip()}")


def _read_banner(address: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout) as s:
            return s.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # the command name may contain spaces/parens: ppid follows the last ')'
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def _descendants(pid: int) -> list[int]:
    kids = _children_map()
    out, todo = [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _kill(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _tcp_client_pids(address: str, port: int) -> set[int]:
    """pids owning an established IPv4 TCP socket whose peer is address:port."""
    want = "%08X:%04X" % (
        int.from_bytes(socket.inet_aton(address), "little"),
        port,
    )
    inodes = set()
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            if parts[2] == want and parts[3] == "01":  # rem_address, ESTABLISHED
                inodes.add(parts[9])
    pids: set[int] = set()
    if not inodes:
        return pids
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{entry}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:[") and link[8:-1] in inodes:
                pids.add(int(entry))
                break
    return pids


_namespace_support: tuple[bool, str] | None = None


def namespaces_supported() -> tuple[bool, str]:
    """(ok, reason): can we create a mount namespace with a private tmpfs?"""
    global _namespace_support
    if _namespace_support is None:
        if os.environ.get("SSHCLUSTER_SHARED_SHM", "").strip().lower() in ("1", "true", "yes"):
            _namespace_support = (False, "SSHCLUSTER_SHARED_SHM is set")
        elif not (shutil.which("unshare") and shutil.which("nsenter")):
            _namespace_support = (False, "unshare/nsenter (util-linux) not installed")
        else:
            try:
                r = subprocess.run(
                    [
                        "unshare", "--mount", "--propagation", "private", "sh", "-c",
                        "mount -t tmpfs -o size=1m tmpfs /dev/shm",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=20,
                )
                ok = r.returncode == 0
                why = "" if ok else (r.stderr.strip() or f"exit {r.returncode}")
            except (OSError, subprocess.SubprocessError) as e:
                ok, why = False, str(e)
            _namespace_support = (ok, why and f"mount namespaces not permitted: {why}")
    return _namespace_support


# ------------------------------------------------------------------- nodes
@dataclass
class SSHNode:
    """One sshd "machine" of the test cluster."""

    cluster: "SSHCluster" = field(repr=False)
    index: int
    name: str  # ssh config alias, e.g. "rig-a"
    address: str  # 127.0.0.<10+index>
    port: int
    dir: Path  # this node's config, keys, logs
    tmpfs_size: str
    isolated: bool  # own mount namespace + tmpfs on /dev/shm
    holder: subprocess.Popen | None = field(default=None, repr=False)
    sshd: subprocess.Popen | None = field(default=None, repr=False)

    # ---------------------------------------------------------- paths
    @property
    def shm(self) -> str:
        """The node's RAM disk as seen by the node (and by SSH sessions to it).

        ``/dev/shm`` in isolated mode; a per-node directory otherwise."""
        if self.isolated:
            return "/dev/shm"
        return f"/dev/shm/sshcluster-{os.getpid()}-{id(self.cluster):x}/{self.name}"

    @property
    def host_key(self) -> Path:
        return self.dir / "ssh_host_ed25519_key"

    @property
    def config_path(self) -> Path:
        return self.dir / "sshd_config"

    @property
    def log_path(self) -> Path:
        return self.dir / "sshd.log"

    @property
    def known_hosts_name(self) -> str:
        """How known_hosts names this node."""
        return self.address if self.port == 22 else f"[{self.address}]:{self.port}"

    @property
    def pid(self) -> int | None:
        """pid of the listening sshd, or None when stopped."""
        if self.sshd is not None and self.sshd.poll() is None:
            return self.sshd.pid
        return None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def host_public_key(self) -> str:
        """``<type> <base64>`` of the node's current host key."""
        text = self.host_key.with_name(self.host_key.name + ".pub").read_text().split()
        return f"{text[0]} {text[1]}"

    def known_hosts_line(self) -> str:
        return f"{self.known_hosts_name} {self.host_public_key()}"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # ------------------------------------------------------ namespace
    def _ns_prefix(self) -> list[str]:
        if not self.isolated:
            return []
        if self.holder is None or self.holder.poll() is not None:
            raise RuntimeError(f"{self.name}: node namespace is not running")
        return ["nsenter", "-t", str(self.holder.pid), "-m", "--"]

    def _mount_cmd(self) -> str:
        return f"mount -t tmpfs -o size={shlex.quote(self.tmpfs_size)},mode=1777 tmpfs /dev/shm"

    def _start_namespace(self) -> None:
        if not self.isolated:
            Path(self.shm).mkdir(parents=True, exist_ok=True)
            return
        if self.holder is not None and self.holder.poll() is None:
            return
        self.holder = subprocess.Popen(
            [
                "unshare", "--mount", "--propagation", "private", "sh", "-c",
                f"{self._mount_cmd()} && echo ready && exec sleep 2147483647",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        line = self.holder.stdout.readline()
        if line.strip() != b"ready":
            err = self.holder.stderr.read().decode(errors="replace").strip()
            self.holder.kill()
            self.holder.wait()
            self.holder = None
            raise ClusterUnavailable(f"{self.name}: cannot create node namespace: {err}")

    def _stop_namespace(self) -> None:
        if self.holder is not None:
            if self.holder.poll() is None:
                self.holder.kill()
            self.holder.wait()
            for s in (self.holder.stdout, self.holder.stderr):
                if s:
                    s.close()
            self.holder = None

    # ---------------------------------------------------------- sshd
    def write_sshd_config(self) -> None:
        self.config_path.write_text(
            "\n".join(
                [
                    f"ListenAddress {self.address}",
                    f"Port {self.port}",
                    f"HostKey {self.host_key}",
                    f"AuthorizedKeysFile {self.cluster.authorized_keys}",
                    f"PidFile {self.dir / 'sshd.pid'}",
                    "StrictModes no",
                    "UsePAM no",
                    "PermitRootLogin prohibit-password",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "AllowTcpForwarding yes",
                    "UseDNS no",
                    "PrintMotd no",
                    "MaxStartups 64:30:128",
                    "MaxSessions 64",
                    # DEBUG1 so tests can see e.g. direct-tcpip forwards of a jump
                    "LogLevel VERBOSE",
                    "Subsystem sftp internal-sftp",
                    "",
                ]
            )
        )

    def start(self, timeout: float = 15.0) -> None:
        """Start sshd (and the node's namespace, if not already there)."""
        if self.running:
            return
        self._start_namespace()
        try:  # sshd's privilege separation directory
            Path("/run/sshd").mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ClusterUnavailable(f"cannot create /run/sshd: {e}") from e
        for attempt in range(4):
            self.write_sshd_config()
            chk = subprocess.run(
                [SSHD, "-t", "-f", str(self.config_path)], capture_output=True, text=True
            )
            if chk.returncode != 0:
                raise ClusterUnavailable(f"{self.name}: sshd -t: {chk.stderr.strip()}")
            mark = self.log_path.stat().st_size if self.log_path.exists() else 0
            log = open(self.log_path, "ab")
            try:
                self.sshd = subprocess.Popen(
                    self._ns_prefix() + [SSHD, "-D", "-e", "-f", str(self.config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )
            finally:
                log.close()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.sshd.poll() is not None:
                    break
                if _read_banner(self.address, self.port):
                    return
                time.sleep(0.02)
            self._kill_sshd()
            tail = self.log_text()[mark:]
            if "Address already in use" in tail and attempt < 3:
                self.port = _free_port(self.address)  # lost a race for the port
                self.cluster.write_client_files()
                continue
            raise ClusterUnavailable(f"{self.name}: sshd did not come up: {tail.strip()[-800:]}")

    def _kill_sshd(self) -> None:
        if self.sshd is None:
            return
        pid = self.sshd.pid
        if self.sshd.poll() is None:
            # freeze the listener so it cannot fork while we collect its
            # children (connection handlers call setsid(); only the process
            # tree finds them), then kill them all: a "down" node drops its
            # sessions too
            _kill(pid, signal.SIGSTOP)
            victims = _descendants(pid)
            _kill(pid, signal.SIGKILL)
            for v in victims:
                _kill(v, signal.SIGKILL)
        self.sshd.wait()
        self.sshd = None

    def stop(self) -> None:
        """Take sshd down (kills its sessions). The node's RAM disk survives."""
        self._kill_sshd()

    def restart(self) -> None:
        self.stop()
        self.start()

    def wipe(self) -> None:
        """Empty the node's RAM disk, as a reboot would (sshd keeps running)."""
        if self.isolated:
            self.run(f"umount -l /dev/shm; {self._mount_cmd()}")
        else:
            shutil.rmtree(self.shm, ignore_errors=True)
            Path(self.shm).mkdir(parents=True, exist_ok=True)

    def reboot(self) -> None:
        """stop + wipe + start: sessions die, the RAM disk comes back empty."""
        self.stop()
        self.wipe()
        self.start()

    def regen_host_key(self) -> str:
        """Give the node a new host key (reinstalled node / MITM); returns
        the new public key.  The cluster's known_hosts is NOT updated: call
        ``cluster.write_known_hosts()`` to trust the new key."""
        _keygen(self.host_key, f"{self.name}-hostkey")
        if self.running:
            # SIGHUP: sshd re-executes itself (same pid, same namespace) and
            # reloads its host keys
            _kill(self.sshd.pid, signal.SIGHUP)
            time.sleep(0.2)
            deadline = time.monotonic() + 10
            while not _read_banner(self.address, self.port):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name}: sshd did not come back after SIGHUP")
                time.sleep(0.02)
        return self.host_public_key()

    def run(
        self, cmd: str, check: bool = True, timeout: float = 60, input: bytes | None = None
    ) -> subprocess.CompletedProcess:
        """Run a shell command "on the node" (in its mount namespace), as root,
        bypassing SSH.  For test setup and assertions.  Output is text."""
        r = subprocess.run(
            self._ns_prefix() + ["sh", "-c", cmd],
            capture_output=True,
            timeout=timeout,
            input=input,
        )
        r.stdout = r.stdout.decode(errors="replace")
        r.stderr = r.stderr.decode(errors="replace")
        if check and r.returncode != 0:
            raise AssertionError(
                f"{self.name}: {cmd!r} exited {r.returncode}: {r.stderr.strip() or r.stdout.strip()}"
            )
        return r

    def exists(self, path: str) -> bool:
        """Does ``path`` exist on the node (lstat, symlinks not followed)?"""
        return self.run(f"test -e {shlex.quote(path)} || test -L {shlex.quote(path)}", check=False).returncode == 0

    def session_pids(self) -> list[int]:
        """pids of this node's sshd session processes (children of the listener)."""
        return _descendants(self.pid) if self.pid else []

    def client_pids(self) -> set[int]:
        """pids of the processes holding a TCP connection *to* this node's
        sshd: lets a test tell who really connects (e.g. another node's sshd
        for a jump host, or this test process for a direct connection)."""
        return _tcp_client_pids(self.address, self.port)

    def teardown(self) -> None:
        self._kill_sshd()
        self._stop_namespace()
        if not self.isolated:
            shutil.rmtree(Path(self.shm).parent, ignore_errors=True)


# ----------------------------------------------------------------- cluster
class SSHCluster:
    """N real sshd nodes plus client-side files (key, known_hosts, ssh config).

    ``workdir`` must be private to this cluster.  Node names are ``rig-a``,
    ``rig-b``, ...; node ``i`` listens on ``127.0.0.<10+i>`` at a free port.
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        n_nodes: int = 3,
        *,
        tmpfs_size: str = "64m",
        user: str | None = None,
        prefix: str = "rig-",
    ):
        if not 1 <= n_nodes <= 26:
            raise ValueError("n_nodes must be 1..26")
        self.workdir = Path(workdir).resolve()
        self.n_nodes = n_nodes
        self.tmpfs_size = tmpfs_size
        self.user = user or getpass.getuser()
        self.prefix = prefix
        self.nodes: list[SSHNode] = []
        self.isolated: bool | None = None
        self.fallback_reason: str = ""
        self._started = False

    # -------------------------------------------------------- client files
    @property
    def client_key(self) -> Path:
        return self.workdir / "client" / "id_ed25519"

    @property
    def authorized_keys(self) -> Path:
        return self.workdir / "client" / "authorized_keys"

    @property
    def known_hosts(self) -> Path:
        return self.workdir / "client" / "known_hosts"

    @property
    def ssh_config(self) -> Path:
        return self.workdir / "client" / "ssh_config"

    def __getitem__(self, key: int | str) -> SSHNode:
        if isinstance(key, int):
            return self.nodes[key]
        for n in self.nodes:
            if n.name == key:
                return n
        raise KeyError(key)

    def __iter__(self):
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def write_known_hosts(self, path: str | os.PathLike | None = None,
                          nodes: Iterable[SSHNode] | None = None) -> Path:
        """known_hosts trusting the nodes' current host keys (default: the
        cluster's own file, which the ssh config names)."""
        path = Path(path) if path else self.known_hosts
        path.write_text("".join(n.known_hosts_line() + "\n" for n in (nodes or self.nodes)))
        return path

    def ssh_config_text(
        self,
        *,
        user: str | None = None,
        identity: bool = True,
        known_hosts: str | os.PathLike | None | bool = True,
        proxy_jump: dict[str, str] | None = None,
        aliases: dict[str, tuple[str, str | None]] | None = None,
    ) -> str:
        """An ssh config for the nodes.

        user: ``User`` line (default the cluster user); identity: include
        ``IdentityFile``/``IdentitiesOnly``; known_hosts: True for the
        cluster's file, a path for another one, None/False for no
        ``UserKnownHostsFile`` line; proxy_jump: ``{alias: jump}`` adds a
        ``ProxyJump`` to those hosts; aliases: extra ``{alias: (node_name,
        proxy_jump or None)}`` stanzas."""
        def stanza(alias: str, node: SSHNode, jump: str | None) -> str:
            lines = [
                f"Host {alias}",
                f"    HostName {node.address}",
                f"    Port {node.port}",
                f"    User {user or self.user}",
            ]
            if identity:
                lines += [f"    IdentityFile {self.client_key}", "    IdentitiesOnly yes"]
            if known_hosts is True:
                lines.append(f"    UserKnownHostsFile {self.known_hosts}")
            elif known_hosts:
                lines.append(f"    UserKnownHostsFile {known_hosts}")
            lines.append("    StrictHostKeyChecking yes")
            if jump:
                lines.append(f"    ProxyJump {jump}")
            return "\n".join(lines) + "\n"

        out = [stanza(n.name, n, (proxy_jump or {}).get(n.name)) for n in self.nodes]
        for alias, (node_name, jump) in (aliases or {}).items():
            out.append(stanza(alias, self[node_name], jump))
        return "\n".join(out)

    def write_ssh_config(self, path: str | os.PathLike | None = None, **kw) -> Path:
        """Write ``ssh_config_text(**kw)`` (default: the cluster's own file)."""
        path = Path(path) if path else self.ssh_config
        path.write_text(self.ssh_config_text(**kw))
        return path

    def write_client_files(self) -> None:
        self.write_known_hosts()
        self.write_ssh_config()

    def policy(self, **overrides):
        """A ``TransportPolicy`` pointing at the cluster's ssh config and
        known_hosts (strict host keys, 5 s connect timeout)."""
        from prng_cache.policy import TransportPolicy

        kw = dict(
            ssh_config=str(self.ssh_config),
            known_hosts=str(self.known_hosts),
            strict_host_keys=True,
            connect_timeout=5.0,
        )
        kw.update(overrides)
        return TransportPolicy(**kw)

    def ssh_argv(self, node: SSHNode | str, *cmd: str) -> list[str]:
        """argv for the real OpenSSH client to run ``cmd`` on ``node``."""
        name = node.name if isinstance(node, SSHNode) else node
        return ["ssh", "-F", str(self.ssh_config), "-o", "BatchMode=yes", name, *cmd]

    def ssh(self, node: SSHNode | str, cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``cmd`` on the node through the real ``ssh`` client."""
        r = subprocess.run(self.ssh_argv(node, cmd), capture_output=True, text=True, timeout=60)
        if check and r.returncode != 0:
            raise AssertionError(f"ssh {node}: {cmd!r} exited {r.returncode}: {r.stderr.strip()}")
        return r

    # ------------------------------------------------------------ lifecycle
    def start(self) -> "SSHCluster":
        """Start every node; raises ClusterUnavailable(reason) when sshd
        cannot run here.  Safe to call once; registers an atexit cleanup."""
        if self._started:
            return self
        if not os.path.exists(SSHD):
            raise ClusterUnavailable(f"{SSHD} not found (apt-get install -y openssh-server)")
        for tool in ("ssh-keygen",):
            if not shutil.which(tool):
                raise ClusterUnavailable(f"{tool} not found (openssh-client)")
        ok, why = namespaces_supported()
        self.isolated = ok
        if not ok:
            self.fallback_reason = why
            warnings.warn(
                SharedShmWarning(
                    f"{why}; SSH test nodes share this machine's /dev/shm "
                    "(per-node directories instead of private tmpfs; disk-full "
                    "and isolation tests are skipped)"
                ),
                stacklevel=2,
            )
        (self.workdir / "client").mkdir(parents=True, exist_ok=True)
        _keygen(self.client_key, "sshcluster-client")
        shutil.copyfile(self.client_key.with_name("id_ed25519.pub"), self.authorized_keys)
        for i in range(self.n_nodes):
            name = f"{self.prefix}{chr(ord('a') + i)}"
            address = f"127.0.0.{10 + i}"
            d = self.workdir / name
            d.mkdir(parents=True, exist_ok=True)
            node = SSHNode(
                cluster=self,
                index=i,
                name=name,
                address=address,
                port=_free_port(address),
                dir=d,
                tmpfs_size=self.tmpfs_size,
                isolated=bool(ok),
            )
            _keygen(node.host_key, f"{name}-hostkey")
            self.nodes.append(node)
        self._started = True
        atexit.register(self.stop)
        try:
            self.write_client_files()
            for node in self.nodes:
                node.start()
            self.write_client_files()  # ports may have moved on a bind race
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Kill every sshd, session and namespace holder. Idempotent."""
        for node in self.nodes:
            try:
                node.teardown()
            except Exception:  # pragma: no cover - best effort at teardown
                pass

    def __enter__(self) -> "SSHCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def logs(self) -> str:
        """All nodes' sshd logs (for failure reports)."""
        return "\n".join(f"===== {n.name} ({n.address}:{n.port})\n{n.log_text()}" for n in self.nodes)

    def heal(self) -> None:
        """Undo what tests may have done to shared nodes: start stopped
        nodes, trust current host keys, rewrite the client files."""
        for node in self.nodes:
            if not node.running:
                node.start()
        self.write_client_files()

    def write_distributed_config(self, path, nodes=None, script_path="/tmp", python_env="python3", **kw) -> Path:
        return write_distributed_config(path, nodes if nodes is not None else self.nodes,
                                        script_path, python_env, **kw)


# ------------------------------------------------ users' cluster file shape
def write_distributed_config(
    path: str | os.PathLike,
    nodes: Sequence[SSHNode | str | dict],
    script_path: str,
    python_env: str,
    *,
    username: str | None = None,
    gpu_count: int = 1,
    gpu_type: str = "rocm",
    max_concurrent_script_jobs: int = 2,
    include_localhost: bool = False,
) -> Path:
    """Write the users' ``distributed_config.json``.

    ``nodes``: SSHNode objects or ssh config aliases (``hostname`` is the
    alias, e.g. ``rig-a``), or dicts merged over the defaults.  With
    ``include_localhost`` a ``"localhost"`` node comes first, as in the
    users' file."""
    user = username or getpass.getuser()
    entries = []

    def entry(hostname: str) -> dict:
        return {
            "hostname": hostname,
            "username": user,
            "gpu_count": gpu_count,
            "gpu_type": gpu_type,
            "script_path": script_path,
            "python_env": python_env,
            "max_concurrent_script_jobs": max_concurrent_script_jobs,
        }

    if include_localhost:
        e = entry("localhost")
        e["gpu_type"] = "nvidia"
        entries.append(e)
    for n in nodes:
        if isinstance(n, SSHNode):
            entries.append(entry(n.name))
        elif isinstance(n, str):
            entries.append(entry(n))
        else:
            e = entry(n["hostname"])
            e.update(n)
            entries.append(e)
    path = Path(path)
    path.write_text(json.dumps({"nodes": entries}, indent=2) + "\n")
    return path
