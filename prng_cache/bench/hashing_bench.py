"""Hashing benchmark: xxh3-128 streaming throughput of prng-cache's own
``hash_file`` against a plain read of the same file with the same chunk size
(the physical limit: hashing can never be faster than reading), warm (page
cache) and cold (from the device), and the cost of a memo hit per file.

The plain read is the fastest one found: ``readinto`` one reused page-aligned
buffer. A read into a new bytes object per chunk (``read_alloc_gbps``, the
baseline used before) lands wherever malloc puts it, and the page-cache copy
runs at half speed or less when that is just past a page boundary
(``benchmarks/bench_hashing.py`` measures each case)."""

from __future__ import annotations

import mmap
import os
import shutil
import statistics
import tempfile
import time
from typing import Callable

from .. import hashing
from ..hashing import CHUNK, hash_file
from ..memo import HashMemo
from . import worker as _worker
from .datagen import age_files

Progress = Callable[[str, str], None]


def _noop(phase: str, msg: str) -> None:
    pass


def make_file(path: str, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(left, 4 << 20)
            f.write(os.urandom(n))
            left -= n
        f.flush()
        os.fsync(f.fileno())


def plain_read(path: str, buf: mmap.mmap | bytearray | None = None) -> int:
    """Read like hash_file does (unbuffered, CHUNK at a time into one reused
    page-aligned buffer), discard."""
    if buf is None:
        buf = mmap.mmap(-1, CHUNK, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    total = 0
    with open(path, "rb", buffering=0) as f:
        readinto = f.readinto
        while n := readinto(buf):
            total += n
    return total


def alloc_read(path: str) -> int:
    """A new bytes object per CHUNK (the plain read used as the baseline before)."""
    n = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(CHUNK):
            n += len(chunk)
    return n


def _timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench_hashing(workdir: str, *, size: int = 256 << 20, repeats: int = 3, cold_repeats: int = 2,
                  memo_files: int = 200, drop_method: str = "auto", progress: Progress = _noop) -> dict:
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "hash-bench.bin")
    progress("hashing", f"writing {size / 2**20:.0f} MiB test file")
    make_file(path, size)
    try:
        gb = size / 1e9
        # warm: file in the page cache; alternate read/hash so drift hits both
        _worker.prewarm([path])
        buf = mmap.mmap(-1, CHUNK, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        read_w, hash_w, alloc_w = [], [], []
        for i in range(repeats):
            read_w.append(_timed(lambda: plain_read(path, buf)))
            hash_w.append(_timed(lambda: hash_file(path)))
            alloc_w.append(_timed(lambda: alloc_read(path)))
        buf.close()
        progress("hashing", f"warm: read {gb / statistics.median(read_w):.2f} GB/s, "
                            f"xxh3 {gb / statistics.median(hash_w):.2f} GB/s")
        # cold: dropped before every pass
        read_c, hash_c, method = [], [], None
        for i in range(cold_repeats):
            method = _worker.drop_cache([path], drop_method)["method"]
            read_c.append(_timed(lambda: plain_read(path)))
            _worker.drop_cache([path], drop_method)
            hash_c.append(_timed(lambda: hash_file(path)))
        progress("hashing", f"cold: read {gb / statistics.median(read_c):.2f} GB/s, "
                            f"xxh3 {gb / statistics.median(hash_c):.2f} GB/s")
    finally:
        os.unlink(path)
    memo = bench_memo(workdir, memo_files)
    progress("hashing", f"memo hit {memo['memo_hit_us']:.0f} us/file")

    def gbps(samples: list[float]) -> float:
        return round(gb / statistics.median(samples), 3)

    return {
        "xxh3_gbps": gbps(hash_w),
        "read_gbps": gbps(read_w),
        "xxh3_cold_gbps": gbps(hash_c),
        "read_cold_gbps": gbps(read_c),
        "read_alloc_gbps": gbps(alloc_w),
        "xxh3_vs_read": round(statistics.median(read_w) / statistics.median(hash_w), 3),
        "xxh3_vs_read_paired": round(statistics.median(r / h for r, h in zip(read_w, hash_w)), 3),
        "memo_hit_us": memo["memo_hit_us"],
        "memo_reads_on_hit": memo["reads_on_hit"],
        "file_bytes": size,
        "chunk_bytes": CHUNK,
        "repeats": repeats,
        "cold_repeats": cold_repeats,
        "cold_method": method,
        "unit": "GB/s = 1e9 bytes/s, median of repeats",
    }


def bench_memo(workdir: str, n_files: int = 200) -> dict:
    """Per-file cost of ``hash_file`` when the memo already knows the file:
    the lookup in a fresh memo object, as a new ``prng-cache stage`` process
    does it: stat + SQLite query, no read of the file."""
    d = tempfile.mkdtemp(prefix="memo-", dir=workdir)
    try:
        files = []
        for i in range(n_files):
            p = os.path.join(d, f"f{i:04d}.json")
            with open(p, "wb") as f:
                f.write(os.urandom(4096))
            files.append(p)
        age_files(files)
        memo_dir = os.path.join(d, "memo")
        m = HashMemo(memo_dir)
        for p in files:
            hash_file(p, m)
        m.close()
        m = HashMemo(memo_dir)  # a fresh coordinator process
        before = hashing.stats.opens
        t = time.perf_counter()
        for p in files:
            hash_file(p, m)
        first = (time.perf_counter() - t) / n_files
        reads = hashing.stats.opens - before
        m.close()
        return {"memo_hit_us": round(first * 1e6, 2), "reads_on_hit": reads, "files": n_files}
    finally:
        shutil.rmtree(d, ignore_errors=True)
