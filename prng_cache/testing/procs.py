"""Processes and prerequisites of the sshd test cluster: free ports, keys,
banners, the process tree below the sshd listeners it started (sessions call
setsid(), so only the tree finds them) and mount-namespace support."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

SSHD = "/usr/sbin/sshd"


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
