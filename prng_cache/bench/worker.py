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
def _load_inputs(npz: str, train: str, holdout: str, big: str | None):
    import numpy as np

    with np.load(npz) as z:  # lazy: touch every array, as a worker would
        arrays = {k: z[k] for k in z.files}
    with open(train, encoding="utf-8") as f:
        train_h = json.load(f)
    with open(holdout, encoding="utf-8") as f:
        holdout_h = json.load(f)
    big_doc = None
    if big:
        with open(big, encoding="utf-8") as f:
            big_doc = json.load(f)
    return arrays, train_h, holdout_h, big_doc


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
    arrays, train_h, holdout_h, big_doc = _load_inputs(a.npz, a.train, a.holdout, a.big)
    t2, c2 = time.monotonic(), time.process_time()
    acc = _kernel(arrays, train_h, holdout_h, a.iters)
    t3 = time.monotonic()
    # load_cpu_s: CPU time of the load; load_s - load_cpu_s is time spent
    # waiting (for the device, or for a core when K trials share few cores)
    print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "load_cpu_s": c2 - c1, "compute_s": t3 - t2,
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
    p = sub.add_parser("drop")
    p.add_argument("--method", default="auto", choices=("auto", "drop_caches", "fadvise"))
    p.add_argument("files", nargs="+")
    p.set_defaults(func=cmd_drop)
    a = ap.parse_args(argv)
    return a.func(a)


if __name__ == "__main__":
    sys.exit(main())
