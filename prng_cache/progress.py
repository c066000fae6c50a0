"""Stage progress on a terminal: one tqdm bar per node (bytes, rate, ETA).

The stage reports ``(host, event, detail)`` through its progress callback
(``staging.Progress``); :class:`StageProgress` turns that into bars on a
stream the CLI hands it (the library never prints; only the CLI creates
one). tqdm is imported only when the first bar is shown, so a stage that
moves little, ``--json`` and a non-terminal stderr never load it.

Events understood:

- ``start`` ``{}``: the node's stage begins;
- ``upload`` ``{"name", "bytes"}``: an upload begins (the previous one, if
  any, is then complete): today's granularity is one file;
- ``plan`` ``{"files", "bytes"}`` and ``sent`` ``{"bytes"}`` (optional): the
  node's total to copy, and bytes sent within a file. When staging emits
  them the bar's total and ETA are exact and it moves within a file;
  without them the total is what the node has started to copy so far;
- ``done`` ``NodeReport.to_dict()``: the node is finished.
"""

from __future__ import annotations

import os
import shutil
import threading
from dataclasses import dataclass
from typing import Any, Callable, TextIO

from .reports import fmt_bytes

#: a node that copies less than this gets no bar (a few MB take < 1 s)
MIN_BAR_BYTES = 4 << 20


def _size(stream: TextIO) -> tuple[int, int]:
    # a terminal that reports 0x0 (a fresh pty, some CI consoles) would make
    # tqdm draw nothing: fall back to $COLUMNS/$LINES, else 100x24
    try:
        cols, rows = os.get_terminal_size(stream.fileno())
    except (OSError, ValueError, AttributeError):
        cols = rows = 0
    fallback = shutil.get_terminal_size((100, 24))
    return cols or fallback.columns, rows or fallback.lines


@dataclass
class _Node:
    """One node's bar: bytes planned and moved."""

    position: int
    total: int = 0  # bytes known to be copied (exact once "plan" arrived)
    planned: bool = False
    finished: int = 0  # bytes of completed uploads
    current: int = 0  # size of the upload in progress
    within: int = 0  # bytes sent of the upload in progress ("sent" events)
    bar: Any = None

    @property
    def moved(self) -> int:
        return self.finished + min(self.within, self.current)


class StageProgress:
    """A ``staging.Progress`` callback drawing per-node bars on ``stream``.

    ``lines``: also write one "copying NAME (SIZE)" line per upload of a
    node that has no bar (the CLI's ``-v`` and small stages on a terminal).
    Safe to call from the stage's worker threads.
    """

    def __init__(self, stream: TextIO, *, bars: bool = True, lines: bool = False,
                 min_bytes: int = MIN_BAR_BYTES, bar_factory: Callable[..., Any] | None = None):
        self.stream = stream
        self.bars = bars
        self.lines = lines
        self.min_bytes = min_bytes
        self._factory = bar_factory
        self._nodes: dict[str, _Node] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------ callback
    def __call__(self, host: str, event: str, detail: dict) -> None:
        with self._lock:
            node = self._nodes.get(host)
            if node is None:
                node = self._nodes[host] = _Node(position=len(self._nodes))
            if event == "plan":
                node.total, node.planned = int(detail.get("bytes", 0)), True
            elif event == "upload":
                node.finished += node.current
                node.current, node.within = int(detail.get("bytes", 0)), 0
                if not node.planned:
                    node.total += node.current
                self._show(host, node, str(detail.get("name", "")))
            elif event == "sent":
                node.within += int(detail.get("bytes", 0))
                self._show(host, node, None)
            elif event == "done":
                node.finished += node.current
                node.current = node.within = 0
                self._finish(host, node, detail)

    def close(self) -> None:
        """Close every bar still open (an interrupted stage)."""
        with self._lock:
            for node in self._nodes.values():
                if node.bar is not None:
                    node.bar.close()
                    node.bar = None

    # ------------------------------------------------------------ drawing
    def _new_bar(self, host: str, node: _Node) -> Any:
        if self._factory is not None:
            return self._factory(host=host, total=node.total, position=node.position)
        from tqdm import tqdm  # only now: a stage with no bar never imports it

        cols, rows = _size(self.stream)
        return tqdm(total=node.total, desc=host, unit="B", unit_scale=True, unit_divisor=1024,
                    file=self.stream, position=node.position, leave=True, ncols=cols, nrows=rows,
                    mininterval=0.2, miniters=1, bar_format="{desc}: {percentage:3.0f}%|{bar}| "
                    "{n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]{postfix}")

    def _write(self, text: str) -> None:
        if any(n.bar is not None for n in self._nodes.values()):
            from tqdm import tqdm

            tqdm.write(text, file=self.stream)  # above the bars, not through them
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def _show(self, host: str, node: _Node, name: str | None) -> None:
        if node.bar is None and self.bars and node.total >= self.min_bytes:
            node.bar = self._new_bar(host, node)
        bar = node.bar
        if bar is None:
            if name is not None and self.lines:
                self._write(f"  {host}: copying {name} ({fmt_bytes(node.current)})")
            return
        if bar.total != node.total:
            bar.total = node.total
        if name is not None:
            bar.set_postfix_str(name, refresh=False)
        bar.update(node.moved - bar.n)

    def _finish(self, host: str, node: _Node, report: dict) -> None:
        bar = node.bar
        if bar is None:
            return
        node.bar = None
        # what was actually copied (an upload may have been skipped)
        copied = int(report.get("copied_bytes", node.finished))
        bar.total = max(copied, bar.n)
        bar.set_postfix_str(str(report.get("status", "")), refresh=False)
        bar.update(bar.total - bar.n)
        bar.close()
