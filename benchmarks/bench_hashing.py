"""Hashing against a plain read of the same file from the page cache
(issue 12: hashing >= 0.9x a plain read).

One file (default 512 MiB of random bytes) is written and pulled into the
page cache, then these passes run interleaved (every round runs each once, in
a rotating order, so drift on a shared machine hits all alike); reported is
the median of the rounds, in GB/s (1e9 bytes/s):

reads (nothing hashed):

- ``read_alloc``: ``f.read(CHUNK)``, a new bytes object per chunk (the plain
  read ``prng-cache bench`` used as its baseline before);
- ``read_bytearray``: ``readinto`` one reused ``bytearray(CHUNK)`` (the
  buffer ``hash_and_stat`` used before);
- ``read_page_off16``: ``readinto`` a buffer 16 bytes past a page boundary,
  where glibc puts a freshly mmapped 1 MiB block (the worst case of the above);
- ``read_aligned``: ``readinto`` one reused page-aligned buffer: the fastest
  plain read found, the baseline of the ratios;

hashing (xxh3-128, same digest for all):

- ``hash_before``: the loop ``hash_and_stat`` ran before (a fresh
  ``bytearray(CHUNK)`` per file, ``readinto`` + memoryview, fadvise);
- ``hash_file``: ``prng_cache.hashing.hash_file`` as it is now;
- ``hash_threaded`` (alternative, not used): a reader thread fills two
  page-aligned 2 MiB buffers while the caller hashes the other one;
- ``hash_mmap`` (alternative, not used): xxh3 over an mmap of the whole file,
  no copy at all; unsafe in the coordinator (a file truncated while mapped, or
  an I/O error under the mapping, raises SIGBUS and kills the process);
- ``xxh3_memory``: xxh3 alone over a page-aligned CHUNK buffer, hashed
  repeatedly (no read), the upper bound of hashing;

the first hash of a process (what ``prng-cache stage`` does with one big
input), each in a fresh ``python3`` that has imported ``prng_cache.cli``,
timing only the call:

- ``first_hash_before``: the loop above; its ``bytearray`` is the process's
  first 1 MiB block, which glibc mmaps: 16 bytes past a page boundary;
- ``first_hash_file``: ``hash_file`` as it is now.

Usage:  python3 benchmarks/bench_hashing.py [--mb 512] [--rounds 9] [--dir DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import platform
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import xxhash

from prng_cache import hashing
from prng_cache.hashing import CHUNK, hash_file, open_regular


def _aligned(size: int) -> mmap.mmap:
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)


def _page_offset(buf) -> int:
    c = (ctypes.c_char * len(buf)).from_buffer(buf)
    try:
        return ctypes.addressof(c) % mmap.PAGESIZE
    finally:
        del c


def read_alloc(path: str) -> None:
    with open(path, "rb", buffering=0) as f:
        while f.read(CHUNK):
            pass


def _read_into(path: str, buf) -> None:
    with open(path, "rb", buffering=0) as f:
        readinto = f.readinto
        while readinto(buf):
            pass


def hash_before(path: str) -> str:
    """hash_and_stat's read loop before this change (checks kept, memo off)."""
    st = os.stat(path)
    h = xxhash.xxh3_128()
    f, opened = open_regular(path)
    buf = bytearray(CHUNK)
    view, size = memoryview(buf), len(buf)
    total = 0
    try:
        with f:
            hashing._sequential(f)
            readinto, update = f.readinto, h.update
            while n := readinto(buf):
                total += n
                update(view if n == size else view[:n])
            after = os.fstat(f.fileno())
    finally:
        view.release()
    ident = hashing.file_identity(st)
    assert hashing.file_identity(opened) == ident == hashing.file_identity(after) and total == st.st_size
    return h.hexdigest()


def hash_threaded(path: str, chunk: int = 2 * CHUNK, nbuf: int = 2) -> str:
    free: queue.SimpleQueue = queue.SimpleQueue()
    full: queue.SimpleQueue = queue.SimpleQueue()
    bufs = [_aligned(chunk) for _ in range(nbuf)]
    for b in bufs:
        free.put(memoryview(b))
    h = xxhash.xxh3_128()
    with open(path, "rb", buffering=0) as f:
        def reader() -> None:
            readinto = f.readinto
            while True:
                b = free.get()
                n = readinto(b)
                full.put((b, n))
                if not n:
                    return

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        update = h.update
        while True:
            b, n = full.get()
            if not n:
                break
            update(b if n == chunk else b[:n])
            free.put(b)
        t.join()
    return h.hexdigest()


def hash_mmap(path: str) -> str:
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        return xxhash.xxh3_128(m).hexdigest()


_FIRST = """
import sys, time
sys.path.insert(0, {bench!r})
import prng_cache.cli
from prng_cache.hashing import hash_file
from bench_hashing import hash_before
fn = {{"first_hash_before": hash_before, "first_hash_file": hash_file}}[sys.argv[1]]
t = time.perf_counter()
fn(sys.argv[2])
print(time.perf_counter() - t)
"""


def first_hash(name: str, path: str) -> float:
    """Seconds the first hash of a fresh process takes (the call only)."""
    code = _FIRST.format(bench=os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code, name, path], check=True,
                         capture_output=True, text=True).stdout
    return float(out.split()[-1])


_FIRST_OFFSET = """
import ctypes, mmap
import prng_cache.cli
b = bytearray(1 << 20)
c = (ctypes.c_char * len(b)).from_buffer(b)
print(ctypes.addressof(c) % mmap.PAGESIZE)
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=512, help="file size, MiB")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--dir", default=None, help="where to write the test file (default: a temp dir)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    a = ap.parse_args()

    size = a.mb << 20
    d = tempfile.mkdtemp(prefix="hashbench-", dir=a.dir)
    path = os.path.join(d, "hash-bench.bin")
    try:
        with open(path, "wb") as f:
            for _ in range(size // (4 << 20)):
                f.write(os.urandom(4 << 20))
            f.write(os.urandom(size % (4 << 20)))
        expect = hash_mmap(path)  # also pulls the file into the page cache
        aligned = _aligned(CHUNK)
        off16 = _aligned(CHUNK + mmap.PAGESIZE)
        ba = bytearray(CHUNK)
        ba_offset = _page_offset(ba)
        mem = _aligned(CHUNK)
        mem.write(os.urandom(CHUNK))

        def xxh3_memory(_path: str) -> None:
            h = xxhash.xxh3_128()
            for _ in range(size // CHUNK):
                h.update(mem)

        passes = {
            "read_alloc": read_alloc,
            "read_bytearray": lambda p: _read_into(p, ba),
            "read_page_off16": lambda p: _read_into(p, memoryview(off16)[16:16 + CHUNK]),
            "read_aligned": lambda p: _read_into(p, aligned),
            "hash_before": hash_before,
            "hash_file": hash_file,
            "hash_threaded": hash_threaded,
            "hash_mmap": hash_mmap,
            "xxh3_memory": xxh3_memory,
        }
        for name in ("hash_before", "hash_file", "hash_threaded", "hash_mmap"):
            assert passes[name](path) == expect, name
        names = list(passes) + ["first_hash_before", "first_hash_file"]
        samples: dict[str, list[float]] = {n: [] for n in names}
        for r in range(a.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for n in order:
                if n.startswith("first_"):
                    samples[n].append(first_hash(n, path))
                    continue
                t = time.perf_counter()
                passes[n](path)
                samples[n].append(time.perf_counter() - t)
        first_offset = int(subprocess.run([sys.executable, "-c", _FIRST_OFFSET], check=True,
                                          capture_output=True, text=True).stdout)
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass
        os.rmdir(d)

    gb = size / 1e9
    med = {n: statistics.median(s) for n, s in samples.items()}
    base = med["read_aligned"]
    results = {n: {"gbps": round(gb / med[n], 2),
                   "min_gbps": round(gb / max(samples[n]), 2),
                   "max_gbps": round(gb / min(samples[n]), 2),
                   "vs_read_aligned": round(base / med[n], 3),
                   "vs_read_alloc": round(med["read_alloc"] / med[n], 3),
                   "samples_s": [round(x, 5) for x in samples[n]]} for n in names}
    # the same ratios per round (each pass next to its own round's read)
    for n in names:
        results[n]["vs_read_aligned_paired"] = round(statistics.median(
            ra / x for ra, x in zip(samples["read_aligned"], samples[n])), 3)
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                if ln.startswith("model name")), platform.processor())
    doc = {
        "benchmark": "hashing vs plain read, page cache",
        "file_bytes": size, "chunk_bytes": CHUNK, "rounds": a.rounds,
        "unit": "GB/s = 1e9 bytes/s, median of rounds; ratios = read_aligned (or read_alloc) time / pass time",
        "bytearray_page_offset": ba_offset,
        "first_bytearray_page_offset": first_offset,
        "results": results,
        "machine": {"cpu": cpu, "cpus": os.cpu_count(), "kernel": platform.release(),
                    "python": platform.python_version(), "xxhash": xxhash.VERSION,
                    "libxxhash": xxhash.XXHASH_VERSION, "loadavg": os.getloadavg()},
    }
    os.makedirs(a.out, exist_ok=True)
    out = os.path.join(a.out, "hashing.json")
    with open(out, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    print(f"{a.mb} MiB from the page cache, {CHUNK >> 10} KiB chunks, median of {a.rounds} rounds"
          f" (bytearray at page offset {ba_offset}; a process's first at {first_offset})")
    print(f"{'pass':18s} {'GB/s':>6s} {'min':>6s} {'max':>6s}  {'vs read_aligned':>15s} {'(paired)':>8s}"
          f" {'vs read_alloc':>13s}")
    for n in names:
        r = results[n]
        print(f"{n:18s} {r['gbps']:6.2f} {r['min_gbps']:6.2f} {r['max_gbps']:6.2f}  {r['vs_read_aligned']:15.3f}"
              f" {r['vs_read_aligned_paired']:8.3f} {r['vs_read_alloc']:13.3f}")
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
