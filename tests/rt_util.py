"""Red-team helpers: extra odd nodes next to the session cluster."""
from __future__ import annotations

import os
import socket
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

from prng_cache.testing.sshcluster import ClusterUnavailable, SSHCluster


class SilentListener:
    """A TCP port that accepts and never says a word (a hung host, a
    half-dead firewall): the SSH banner never comes."""

    def __init__(self, address: str = "127.0.0.60"):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((address, 0))
        self.sock.listen(64)
        self.address, self.port = self.sock.getsockname()
        self.conns: list[socket.socket] = []
        self._stop = False
        self.th = threading.Thread(target=self._run, daemon=True)
        self.th.start()

    def _run(self):
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            self.conns.append(c)

    def close(self):
        self._stop = True
        self.th.join(2)
        for c in self.conns:
            c.close()
        self.sock.close()

    def stanza(self, alias: str) -> str:
        return (f"Host {alias}\n    HostName {self.address}\n    Port {self.port}\n"
                f"    StrictHostKeyChecking yes\n")


@contextmanager
def odd_cluster(tmp_path: Path, extra_sshd: str, prefix: str = "odd-", tmpfs: str = "64m"):
    """A one-node cluster whose sshd_config gets ``extra_sshd`` appended
    (Match blocks, ForceCommand...)."""
    c = SSHCluster(tmp_path / f"{prefix}cluster", 1, tmpfs_size=tmpfs, prefix=prefix)
    try:
        c.start()
    except ClusterUnavailable as exc:
        pytest.fail(str(exc))
    try:
        node = c[0]
        node.stop()
        orig = node.write_sshd_config

        def write():
            orig()
            node.config_path.write_text(node.config_path.read_text() + extra_sshd + "\n")
        node.write_sshd_config = write  # type: ignore[method-assign]
        node.start()
        yield c, node
    finally:
        c.stop()


def combined_client_files(tmp_path: Path, clusters, extra: str = "") -> tuple[Path, Path]:
    """One ssh config + known_hosts for several test clusters (each node
    keeps its own identity file)."""
    cfg = tmp_path / "combined_ssh_config"
    kh = tmp_path / "combined_known_hosts"
    cfg.write_text("\n".join(c.ssh_config.read_text() for c in clusters) + "\n" + extra)
    kh.write_text("".join(c.known_hosts.read_text() for c in clusters))
    return cfg, kh


def sessions_in_log(node, mark: int = 0) -> int:
    return node.log_text()[mark:].count("Accepted publickey")


def log_mark(node) -> int:
    return len(node.log_text())
