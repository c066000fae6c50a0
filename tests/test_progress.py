"""Stage progress: a per-node bar on a terminal's stderr, nothing with --json
or when stderr is not a terminal. The CLI runs as a real process; the
terminal is a pseudo-terminal."""

from __future__ import annotations

import io
import json
import os
import pty
import select
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from prng_cache.progress import StageProgress

REPO = Path(__file__).resolve().parent.parent
MiB = 1 << 20


@pytest.fixture
def big_stage(tmp_path):
    """A localhost cluster whose jobs share 3 inputs of 3 MiB (9 MiB to copy)."""
    (tmp_path / "data").mkdir()
    names = []
    for i in range(3):
        p = tmp_path / "data" / f"part_{i}.npz"
        p.write_bytes(os.urandom(3 * MiB))
        names.append(f"data/{p.name}")
    jobs = [{"job_id": f"t{j}", "script": "w.py", "args": list(names), "expected_output": f"out/{j}.json",
             "timeout": 600}
            for j in range(2)]
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    (tmp_path / "distributed_config.json").write_text(json.dumps(
        {"nodes": [{"hostname": "localhost", "username": None, "script_path": "."}]}))
    root = f"/dev/shm/prng-progress-{os.getpid()}-{os.urandom(3).hex()}"
    (tmp_path / "cache_policy.yaml").write_text(f"cache_root: {root}\nnodes:\n  localhost:\n    mode: cache\n")
    yield tmp_path
    if os.path.isdir(root):
        for dirpath, _, _ in os.walk(root):
            os.chmod(dirpath, 0o700)
        shutil.rmtree(root)


def _env() -> dict:
    e = {k: v for k, v in os.environ.items() if k not in ("PRNG_CACHE", "USE_RAMDISK", "PRNG_CACHE_POLICY")}
    e["PYTHONPATH"] = str(REPO)
    e["COLUMNS"] = "120"
    return e


def _stage_on_pty(cwd: Path, *extra: str) -> tuple[int, str, str]:
    """Run `prng-cache stage` with stderr on a pseudo-terminal; stdout piped."""
    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "prng_cache", "stage", "--jobs-file", "jobs.json", *extra],
                         cwd=cwd, env=_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    err = b""
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        err += chunk
    out = p.stdout.read().decode()
    p.stdout.close()
    os.close(master)
    return p.wait(timeout=60), out, err.decode(errors="replace")


def test_terminal_shows_a_bar_per_node(big_stage):
    rc, out, err = _stage_on_pty(big_stage)
    assert rc == 0, (out, err)
    assert "localhost: 100%|" in err, err  # tqdm's bar, finished
    assert "9.00M/9.00M" in err and "B/s" in err, err  # bytes and rate
    assert "copied 3 file(s)" in out


def test_json_on_a_terminal_shows_no_bar(big_stage):
    rc, out, err = _stage_on_pty(big_stage, "--json")
    assert rc == 0, (out, err)
    assert "%|" not in err and "B/s" not in err, err
    assert json.loads(out)["nodes"]["localhost"]["copied_files"] == 3


def test_stderr_not_a_terminal_shows_no_bar(big_stage):
    p = subprocess.run([sys.executable, "-m", "prng_cache", "stage", "--jobs-file", "jobs.json"],
                       cwd=big_stage, env=_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "%|" not in p.stderr and "B/s" not in p.stderr, p.stderr
    assert "copied 3 file(s)" in p.stdout


class FakeBar:
    def __init__(self, host, total, position):
        self.host, self.total, self.position, self.n = host, total, position, 0
        self.postfix, self.closed = "", False

    def update(self, k):
        self.n += k

    def set_postfix_str(self, s, refresh=True):
        self.postfix = s

    def close(self):
        self.closed = True


def _with_fake_bars(**kw):
    bars: list[FakeBar] = []

    def factory(**a):
        bars.append(FakeBar(**a))
        return bars[-1]
    return StageProgress(io.StringIO(), bar_factory=factory, **kw), bars


def test_bar_per_node_from_file_events():
    prog, bars = _with_fake_bars(min_bytes=4 * MiB)
    prog("a", "start", {})
    prog("b", "start", {})
    prog("a", "upload", {"name": "x.npz", "bytes": 3 * MiB})
    assert bars == []  # under the threshold so far
    prog("a", "upload", {"name": "y.json", "bytes": 2 * MiB})
    (bar,) = bars
    assert (bar.host, bar.total, bar.n, bar.postfix, bar.position) == ("a", 5 * MiB, 3 * MiB, "y.json", 0)
    prog("b", "upload", {"name": "x.npz", "bytes": 100})  # a small node gets no bar
    prog("a", "done", {"status": "ok", "copied_bytes": 5 * MiB})
    assert bar.n == 5 * MiB and bar.closed and len(bars) == 1


def test_finer_events_give_exact_total_and_movement_within_a_file():
    prog, bars = _with_fake_bars(min_bytes=1)
    prog("a", "start", {})
    prog("a", "plan", {"files": 2, "bytes": 10 * MiB})
    prog("a", "upload", {"name": "x", "bytes": 6 * MiB})
    prog("a", "sent", {"bytes": 2 * MiB})
    assert (bars[0].total, bars[0].n) == (10 * MiB, 2 * MiB)
    prog("a", "upload", {"name": "y", "bytes": 4 * MiB})
    assert bars[0].n == 6 * MiB
    # a skipped upload: the finished bar says what was actually copied
    prog("a", "done", {"status": "ok", "copied_bytes": 6 * MiB})
    assert (bars[0].total, bars[0].n, bars[0].closed) == (6 * MiB, 6 * MiB, True)


def test_lines_for_nodes_without_a_bar():
    stream = io.StringIO()
    prog = StageProgress(stream, bars=False, lines=True)
    prog("a", "upload", {"name": "x.npz", "bytes": 2048})
    assert stream.getvalue() == "  a: copying x.npz (2.0 KiB)\n"
