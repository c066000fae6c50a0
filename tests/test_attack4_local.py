"""Fourth red team (sharded manifest): a sharded root through LocalTransport (the coordinator's own host,
``localhost`` nodes) on /dev/shm: a shard replaced by a FIFO must not hang
the stage (the SSH transport lstat()s first and refuses it; the local one
opens it with O_RDONLY|O_NOFOLLOW, which blocks on a FIFO until a writer
comes)."""
from __future__ import annotations

import os
import threading

import pytest

from rt4_common import *  # noqa: F401,F403
from test_large_root import _bundles, _sharded_root, _store  # noqa: F401
from test_store import read_manifest, shm_root  # noqa: F401

from prng_cache import manifest
from prng_cache.maintenance import gc_node, status_node
from prng_cache.staging import stage_node

HANG = 10.0


def _run_or_unblock(fn, fifo):
    out = {}

    def go():
        try:
            out["result"] = fn()
        except BaseException as e:  # noqa: BLE001
            out["error"] = e
    th = threading.Thread(target=go, daemon=True)
    th.start()
    th.join(HANG)
    if th.is_alive():
        try:  # release the blocked reader
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
        except OSError:
            pass
        th.join(5)
        pytest.fail(f"blocked for {HANG:.0f}s on the FIFO {fifo} in place of a shard")
    return out


@pytest.fixture
def lowered(monkeypatch):
    monkeypatch.setattr(manifest, "SHARD_MIN", 64)
    monkeypatch.setattr(manifest, "SHARD_FILL", 8)


@pytest.mark.parametrize("op", ["stage", "gc", "status"])
def test_local_fifo_in_place_of_a_shard_does_not_hang(lowered, tmp_path, shm_root, op):
    """Found by the fourth red team (fixed): a stage / gc / status on a localhost node hangs forever (the
    coordinator's run never starts) when a shard is a FIFO."""
    d = tmp_path / "s"
    d.mkdir()
    many, m = _sharded_root(d, shm_root)
    bs = _bundles(d, many[:4])
    sh = m.entries.shards
    fifo = os.path.join(shm_root, sh.dirname, sh.filename(sh.index(bs[0].key)))
    os.unlink(fifo)
    os.mkfifo(fifo, 0o600)
    fn = {"stage": lambda: stage_node(_store(shm_root), bs),
          "gc": lambda: gc_node(_store(shm_root)),
          "status": lambda: status_node(_store(shm_root))}[op]
    out = _run_or_unblock(fn, fifo)
    assert "error" not in out, out
    if op == "stage":
        rep = out["result"]
        assert rep.status == "ok" and len(rep.staged) == 4, rep


def test_local_fifo_in_place_of_the_header_does_not_hang(lowered, tmp_path, shm_root):
    """Reference (format 1 code path, pre-existing): manifest.msgpack as a FIFO."""
    d = tmp_path / "s"
    d.mkdir()
    many, m = _sharded_root(d, shm_root)
    bs = _bundles(d, many[:4])
    fifo = os.path.join(shm_root, manifest.MANIFEST_NAME)
    os.unlink(fifo)
    os.mkfifo(fifo, 0o600)
    out = _run_or_unblock(lambda: stage_node(_store(shm_root), bs), fifo)
    assert "error" not in out, out
