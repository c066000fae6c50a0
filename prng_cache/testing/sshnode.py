"""One node of the sshd test cluster: an sshd in its own mount namespace
with a private tmpfs on /dev/shm (see sshcluster.py for the whole picture)."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING


from .procs import SSHD, ClusterUnavailable, _descendants, _free_port, _keygen, _kill, _read_banner, _tcp_client_pids

if TYPE_CHECKING:
    from .sshcluster import SSHCluster


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
                    # a login script that runs `pyenv rehash` (as this
                    # machine's .bashrc does) waits up to 60 s on a lock a
                    # killed session left; every later session would stall
                    "SetEnv PYENV_REHASH_TIMEOUT=0",
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
