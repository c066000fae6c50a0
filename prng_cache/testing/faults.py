"""Fault injection for tests and the soak benchmark."""

from __future__ import annotations

from typing import Any, BinaryIO, Callable


class Tap:
    """Wraps a transport write stream: after ``after`` bytes, run ``action``
    once. The fault the action causes is real (stop the node's sshd, fill
    its tmpfs, modify the source); only its timing is arranged."""

    def __init__(self, f: BinaryIO, after: int, action: Callable[[], Any]):
        self.f, self.after, self.action, self.n, self.fired = f, after, action, 0, False

    def write(self, data) -> int:
        n = self.f.write(data)
        self.n += len(data)
        if not self.fired and self.n >= self.after:
            self.fired = True
            self.action()
        return n

    def __getattr__(self, name: str) -> Any:
        return getattr(self.f, name)
