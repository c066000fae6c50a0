"""The benchmark's trial process and wave runner.

This file is self-contained (standard library; numpy only inside a trial) so
that it can be copied to a node and run there with the node's own python,
exactly like the users' ``distributed_worker.py``:

``worker.py trial NPZ TRAIN HOLDOUT [BIG] --iters N``
    One trial, as the users' scorer workers do it: ``numpy.load`` the
    survivors ``.npz`` (and touch every array), ``json.load`` the histories
    (and the large JSON if given), then a fixed amount of compute. Prints one
    JSON line with its own timings.
``worker.py wave --k K --iters N [--drop auto|drop_caches|fadvise] [--prewarm] [--warmup PATH]... NPZ TRAIN HOLDOUT [BIG]``
    Starts K trials at once (fresh processes) and prints one JSON document
    with per-trial wall times measured from spawn to exit.
``worker.py calibrate NPZ --ms M``
    How many kernel iterations take about M ms on one core here.
``worker.py busy DIR [--seq-mb N] [--seq-mbps R]``
    Busy-disk writers in DIR (fsynced appends, SQLite commits, a large
    sequential write) until stdin closes; removes its files on exit.
``worker.py drop FILE...``
    Drop FILE... from the page cache; prints the method used.

Nothing here is imported by prng_cache at run time except through
``subprocess``; the bench runs it with ``python worker.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

WORKER = os.path.abspath(__file__)
SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                     "NUMEXPR_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}


# ------------------------------------------------------------------ trial
def _read_all(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _read_inputs(npz: str, train: str, holdout: str, big: str | None) -> list[bytes]:
    """The raw part of the load: open + read of every input (what the cache can change)."""
    return [_read_all(p) for p in (npz, train, holdout, big) if p]


def _parse_inputs(raw: list[bytes]):
    """The parse part of the load: ``numpy.load`` + ``json.loads`` of bytes already read."""
    import io

    import numpy as np

    with np.load(io.BytesIO(raw[0])) as z:  # lazy: touch every array, as a worker would
        arrays = {k: z[k] for k in z.files}
    train_h = json.loads(raw[1].decode("utf-8"))
    holdout_h = json.loads(raw[2].decode("utf-8"))
    big_doc = json.loads(raw[3].decode("utf-8")) if len(raw) > 3 else None
    return arrays, train_h, holdout_h, big_doc


def _load_inputs(npz: str, train: str, holdout: str, big: str | None):
    return _parse_inputs(_read_inputs(npz, train, holdout, big))


def _kernel(arrays, train_h, holdout_h, iters: int) -> float:
    """A fixed amount of work: sort a scrambled copy of the survivors per iteration."""
    import numpy as np

    seeds = arrays["seeds"]
    scores = arrays["scores"]
    hist = np.asarray([r["value"] for r in train_h] + [r["value"] for r in holdout_h], dtype=np.uint32)
    acc = float(hist.sum() % 1000)
    for i in range(iters):
        x = np.sort(seeds ^ np.uint32((i * 2654435761) & 0xFFFFFFFF))
        acc += float(x[::997].sum() % 1013) + float(scores[i % scores.size])
    return acc


def cmd_trial(a: argparse.Namespace) -> int:
    t0 = time.monotonic()
    import numpy  # noqa: F401  (the import is part of every real trial)

    t1, c1 = time.monotonic(), time.process_time()
    raw = _read_inputs(a.npz, a.train, a.holdout, a.big)
    tr = time.monotonic()
    arrays, train_h, holdout_h, big_doc = _parse_inputs(raw)
    del raw
    t2, c2 = time.monotonic(), time.process_time()
    acc = _kernel(arrays, train_h, holdout_h, a.iters)
    t3 = time.monotonic()
    # load_cpu_s: CPU time of the load; load_s - load_cpu_s is time spent
    # waiting (for the device, or for a core when K trials share few cores)
    # load_s = read_s (open + read of the bytes) + parse_s (numpy/json on those bytes)
    print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "read_s": tr - t1, "parse_s": t2 - tr,
                      "load_cpu_s": c2 - c1, "compute_s": t3 - t2,
                      "inner_s": t3 - t0, "end": t3, "checksum": acc,
                      "n_big": None if big_doc is None else len(big_doc)}), flush=True)
    return 0


def cmd_calibrate(a: argparse.Namespace) -> int:
    import numpy as np

    with np.load(a.npz) as z:
        arrays = {k: z[k] for k in z.files}
    hist = [{"value": 1}]
    _kernel(arrays, hist, hist, 20)  # warm
    n = 50
    while True:  # grow until one measurement takes >= 0.2 s
        t = time.perf_counter()
        _kernel(arrays, hist, hist, n)
        dt = time.perf_counter() - t
        if dt >= 0.2:
            break
        n *= 2
    best = dt / n
    for _ in range(2):
        t = time.perf_counter()
        _kernel(arrays, hist, hist, n)
        best = min(best, (time.perf_counter() - t) / n)
    iters = max(1, round(a.ms / 1000.0 / best))
    print(json.dumps({"iters": iters, "per_iter_ms": best * 1000.0}), flush=True)
    return 0


# ------------------------------------------------------------ page cache
def resident_fraction(path: str) -> float | None:
    """Fraction of the file's pages in the page cache (mincore), or None."""
    try:
        import ctypes
        import mmap

        size = os.path.getsize(path)
        if size == 0:
            return 0.0
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_long]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        fd = os.open(path, os.O_RDONLY)
        try:
            addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            if addr is None or addr == ctypes.c_void_p(-1).value:
                return None
            try:
                pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
                vec = (ctypes.c_ubyte * pages)()
                if libc.mincore(addr, size, vec) != 0:
                    return None
                return sum(v & 1 for v in vec) / pages
            finally:
                libc.munmap(addr, size)
        finally:
            os.close(fd)
    except Exception:
        return None


def drop_cache(files: list[str], method: str = "auto") -> dict:
    """Evict ``files`` from the page cache so the next read comes from the device.

    ``drop_caches`` (root) drops every clean page on the machine;
    ``fadvise`` (anyone) asks the kernel to drop just these files.
    """
    os.sync()  # drop_caches only drops clean pages
    used, why = None, None
    if method in ("auto", "drop_caches"):
        try:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
            used = "drop_caches"
        except OSError as exc:
            why = f"drop_caches not permitted: {exc.strerror or exc}"
            if method == "drop_caches":
                raise
    if used is None:
        for p in files:
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        used = "fadvise"
    res = [resident_fraction(p) for p in files]
    known = [r for r in res if r is not None]
    return {"method": used, "fallback_reason": why,
            "resident_after": max(known) if known else None}


def prewarm(files: list[str]) -> None:
    for p in files:
        with open(p, "rb", buffering=0) as f:
            while f.read(1 << 20):
                pass


# -------------------------------------------------------------- busy disk
BUSY_PREFIX = "prng-bench-busy-"


def busy_disk(directory: str, stop: threading.Event, *, seq_mb: int = 256, seq_mbps: float = 0.0,
              use_direct: bool = True, chunk_kb: int = 4096, pause_s: float = 0.01) -> dict:
    """Load the disk under ``directory`` the way the users' jobs do while
    trials start, until ``stop`` is set; then remove everything it wrote.

    Three writers at once: small appends to a results log, each fsynced; an
    SQLite study committing one row per transaction in a loop (default
    rollback journal, synchronous=FULL, as optuna's RDB storage on SQLite);
    and a large sequential write (a checkpoint of ``seq_mb`` MB rewritten
    over and over at device speed, or paced to ``seq_mbps`` MB/s; O_DIRECT
    where the file system allows it so that it loads the device rather than
    a core, else buffered with an fsync every 16 MB).
    """
    import shutil
    import sqlite3
    import tempfile

    work = tempfile.mkdtemp(prefix=BUSY_PREFIX, dir=directory)
    counts = {"appends": 0, "commits": 0, "seq_mb": 0.0}
    errors: list[str] = []

    def appender() -> None:
        line = (json.dumps({"trial": 0, "value": 0.123456789, "params": {"x": 1, "y": "abc" * 20}}) + "\n").encode()
        fd = os.open(os.path.join(work, "results.jsonl"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            while not stop.is_set():
                os.write(fd, line)
                os.fsync(fd)
                counts["appends"] += 1
                stop.wait(pause_s)
        finally:
            os.close(fd)

    def study() -> None:
        db = sqlite3.connect(os.path.join(work, "study.db"), isolation_level=None)
        try:
            db.execute("PRAGMA synchronous=FULL")
            db.execute("CREATE TABLE IF NOT EXISTS trials (id INTEGER PRIMARY KEY, state TEXT, value REAL, "
                       "params TEXT)")
            i = 0
            while not stop.is_set():
                db.execute("BEGIN IMMEDIATE")
                db.execute("INSERT INTO trials (state, value, params) VALUES (?, ?, ?)",
                           ("COMPLETE", i * 0.001, json.dumps({"i": i, "pad": "p" * 200})))
                db.execute("UPDATE trials SET state = 'COMPLETE' WHERE id = ?", (max(1, i // 2),))
                db.execute("COMMIT")
                counts["commits"] += 1
                i += 1
                stop.wait(pause_s)
        finally:
            db.close()

    def sequential() -> None:
        import mmap

        # O_DIRECT (page-aligned buffer from mmap): the bytes go to the device
        # without a copy into the page cache, so the writer loads the disk,
        # not a core; buffered where the file system refuses O_DIRECT
        buf = mmap.mmap(-1, chunk_kb * 1024)
        buf.write(os.urandom(len(buf)))
        per_sync = max(1, (16 << 20) // len(buf))
        n_chunks = max(1, (seq_mb << 20) // len(buf))
        path = os.path.join(work, "checkpoint.bin")
        direct = getattr(os, "O_DIRECT", 0) if use_direct else 0
        t_start, written = time.monotonic(), 0
        while not stop.is_set():
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | direct, 0o644)
            except OSError:
                if not direct:
                    raise
                direct = 0
                continue
            try:
                for i in range(n_chunks):
                    if stop.is_set():
                        break
                    try:
                        os.write(fd, buf)
                    except OSError:
                        if not direct:
                            raise
                        direct = 0
                        break
                    written += len(buf)
                    counts["seq_mb"] += len(buf) / 1e6
                    if seq_mbps > 0:
                        ahead = written / (seq_mbps * 1e6) - (time.monotonic() - t_start)
                        if ahead > 0:
                            stop.wait(ahead)
                    if (i + 1) % per_sync == 0 and not direct:
                        os.fsync(fd)
                os.fsync(fd)
            finally:
                os.close(fd)
        counts["seq_direct"] = bool(direct)

    def guard(fn):
        def run() -> None:
            try:
                fn()
            except Exception as exc:  # a writer that dies is reported, not fatal
                errors.append(f"{fn.__name__}: {exc}")
        return run

    t0 = time.monotonic()
    threads = [threading.Thread(target=guard(fn), daemon=True) for fn in (appender, study, sequential)]
    try:
        for th in threads:
            th.start()
        stop.wait()
    finally:
        stop.set()
        for th in threads:
            th.join(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    dt = time.monotonic() - t0
    return {"seconds": round(dt, 2), "appends": counts["appends"], "commits": counts["commits"],
            "seq_mb": round(counts["seq_mb"], 1), "seq_direct": counts.get("seq_direct"),
            "appends_per_s": round(counts["appends"] / dt, 1) if dt > 0 else None,
            "commits_per_s": round(counts["commits"] / dt, 1) if dt > 0 else None,
            "seq_mb_per_s": round(counts["seq_mb"] / dt, 1) if dt > 0 else None,
            "errors": errors}


def cmd_busy(a: argparse.Namespace) -> int:
    """Run the busy-disk writers until stdin closes (or SIGTERM / SIGINT);
    prints "ready" once started, then one JSON line of what was written."""
    import signal

    stop = threading.Event()

    def on_signal(signum, frame) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def watch_stdin() -> None:
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except Exception:
            pass
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    print("ready", flush=True)
    stats = busy_disk(a.dir, stop, seq_mb=a.seq_mb, seq_mbps=a.seq_mbps, use_direct=not a.buffered)
    print(json.dumps(stats), flush=True)
    return 0


# ------------------------------------------------------------------ waves
def run_wave(k: int, iters: int, inputs: list[str], *, drop: str | None = None, warm: bool = False,
             python: str | None = None, warmup_inputs: list[str] | None = None) -> dict:
    """Start k trials at once on ``inputs``; wall times from spawn to exit.

    ``warmup_inputs``: other copies of the inputs (the RAM ones) for one
    unmeasured trial with no compute before the wave. It pulls the
    interpreter, numpy, the modules ``numpy.load`` needs and this script back
    into the page cache after a global ``drop_caches``, without touching the
    measured files, so only the inputs come from the device. It runs before
    every wave alike.
    """
    python = python or sys.executable
    info: dict = {"k": k}
    if drop:
        info["drop"] = drop_cache(inputs, drop)
    if warm:
        prewarm(inputs)
        info["resident_before"] = min((r for r in map(resident_fraction, inputs) if r is not None),
                                      default=None)
    env = dict(os.environ, **SINGLE_THREAD_ENV)
    if warmup_inputs:
        r = subprocess.run([python, WORKER, "trial", *warmup_inputs, "--iters", "0"], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            info["warmup_error"] = r.stderr.decode(errors="replace").strip()[-400:]
    argv = [python, WORKER, "trial", *inputs, "--iters", str(iters)]
    results: list[dict] = [{} for _ in range(k)]

    def one(i: int, proc: subprocess.Popen, started: float) -> None:
        out, err = proc.communicate()
        ended = time.monotonic()
        r = results[i]
        r["total_s"] = ended - started
        r["rc"] = proc.returncode
        try:
            r.update(json.loads(out.decode().strip().splitlines()[-1]))
        except (ValueError, IndexError):
            r["error"] = (err.decode(errors="replace").strip()[-400:] or f"exit {proc.returncode}")
        r.pop("end", None)

    threads = []
    t0 = time.monotonic()
    for i in range(k):
        started = time.monotonic()
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, env=env)
        th = threading.Thread(target=one, args=(i, p, started), daemon=True)
        th.start()
        threads.append(th)
    for th in threads:
        th.join()
    info["wall_s"] = time.monotonic() - t0
    info["trials"] = results
    return info


def cmd_wave(a: argparse.Namespace) -> int:
    doc = run_wave(a.k, a.iters, a.inputs, drop=a.drop, warm=a.prewarm, python=a.python,
                   warmup_inputs=a.warmup or None)
    print(json.dumps(doc), flush=True)
    return 0


def cmd_drop(a: argparse.Namespace) -> int:
    print(json.dumps(drop_cache(a.files, a.method)), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="worker.py")
    sub = ap.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("trial")
    p.add_argument("npz")
    p.add_argument("train")
    p.add_argument("holdout")
    p.add_argument("big", nargs="?")
    p.add_argument("--iters", type=int, required=True)
    p.set_defaults(func=cmd_trial)
    p = sub.add_parser("calibrate")
    p.add_argument("npz")
    p.add_argument("--ms", type=float, required=True)
    p.set_defaults(func=cmd_calibrate)
    p = sub.add_parser("wave")
    p.add_argument("--k", type=int, required=True)
    p.add_argument("--iters", type=int, required=True)
    p.add_argument("--drop", choices=("auto", "drop_caches", "fadvise"))
    p.add_argument("--prewarm", action="store_true")
    p.add_argument("--python")
    p.add_argument("--warmup", action="append", metavar="PATH", help="input of the warm-up trial (repeat)")
    p.add_argument("inputs", nargs="+")
    p.set_defaults(func=cmd_wave)
    p = sub.add_parser("busy")
    p.add_argument("dir")
    p.add_argument("--seq-mb", type=int, default=256)
    p.add_argument("--seq-mbps", type=float, default=0.0, help="pace the sequential write (0 = device speed)")
    p.add_argument("--buffered", action="store_true", help="sequential write through the page cache")
    p.set_defaults(func=cmd_busy)
    p = sub.add_parser("drop")
    p.add_argument("--method", default="auto", choices=("auto", "drop_caches", "fadvise"))
    p.add_argument("files", nargs="+")
    p.set_defaults(func=cmd_drop)
    a = ap.parse_args(argv)
    return a.func(a)


if __name__ == "__main__":
    sys.exit(main())
