"""Transports: how the store reaches a node's files.

``LocalTransport`` for the coordinator itself; ``SSHTransport`` (imported
lazily, paramiko costs ~0.2 s) for remote nodes.
"""

from .base import DiskUsage, FileInfo, Transport
from .local import LocalTransport

__all__ = ["DiskUsage", "FileInfo", "LocalTransport", "Transport", "SSHTransport"]


def __getattr__(name: str):
    if name == "SSHTransport":
        from .ssh import SSHTransport

        return SSHTransport
    raise AttributeError(name)
