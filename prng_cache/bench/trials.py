"""Trial-time benchmark: waves of K fresh trial processes reading their
inputs from the SSD and, in the same run, from prng-cache's RAM copies.

Conditions, interleaved in rotating order so drift on a noisy machine hits
each equally (round r starts at condition r mod 3):

``ssd``       inputs at their disk paths, page cache dropped before the wave
``ram``       inputs at the RAM paths that prng-cache staged
``ssd_warm``  inputs at their disk paths, already in the page cache (what a
              second wave on the same node sees when memory is plentiful)

The busy-disk condition runs ``ssd`` and ``ram`` waves (alternating) while
``worker.py busy`` writes to the SSD work directory the way the users' jobs
do (fsynced appends, SQLite commits, a large sequential write): the same
load for both sides.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable

from . import worker as _worker

CONDITIONS = ("ssd", "ram", "ssd_warm")
BUSY_CONDITIONS = ("ssd", "ram")

#: progress callback: (phase, message)
Progress = Callable[[str, str], None]


def _noop(phase: str, msg: str) -> None:
    pass


@dataclass(frozen=True)
class TrialConfig:
    trials: int = 54  # per condition
    concurrency: int = 6
    compute_ms: float = 1000.0
    drop_method: str = "auto"  # auto | drop_caches | fadvise

    @property
    def waves(self) -> int:
        return max(1, math.ceil(self.trials / self.concurrency))


class BenchError(RuntimeError):
    """The benchmark itself could not run (not a measurement)."""


# ---------------------------------------------------------------- runners
@contextlib.contextmanager
def _busy_process(argv: list[str], where: str, env: dict | None = None):
    """Run ``worker.py busy`` (argv) for the duration of the block; yields a
    dict that holds the writer's own figures after the block. The writer
    stops when its stdin closes (also through ssh) and removes its files;
    on Ctrl-C it gets the SIGINT too."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    stats: dict = {}
    try:
        first = proc.stdout.readline().strip()
        if first != "ready":
            proc.kill()
            _, err = proc.communicate()
            raise BenchError(f"{where}: busy-disk writer did not start: {(first + ' ' + err).strip()[-500:]}")
        yield stats
    finally:
        if proc.returncode is None:
            try:  # communicate closes the writer's stdin: its signal to stop
                out, err = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    out, err = proc.communicate(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    out, err = proc.communicate()
            lines = (out or "").strip().splitlines()
            with contextlib.suppress(ValueError, IndexError):
                stats.update(json.loads(lines[-1]))
            if proc.returncode not in (0, None) and not stats:
                stats["error"] = (err or "").strip()[-400:] or f"exit {proc.returncode}"


class LocalRunner:
    """Runs waves on this machine."""

    where = "local"

    def __init__(self, python: str | None = None):
        self.python = python or sys.executable

    def calibrate(self, npz: str, ms: float) -> dict:
        r = subprocess.run([self.python, _worker.WORKER, "calibrate", npz, "--ms", str(ms)],
                           capture_output=True, text=True, env=dict(os.environ, **_worker.SINGLE_THREAD_ENV))
        if r.returncode != 0:
            raise BenchError(f"calibration failed: {r.stderr.strip()[-500:]}")
        return json.loads(r.stdout.strip().splitlines()[-1])

    def wave(self, k: int, iters: int, inputs: list[str], *, drop: str | None, warm: bool,
             warmup: list[str] | None = None) -> dict:
        return _worker.run_wave(k, iters, inputs, drop=drop, warm=warm, python=self.python, warmup_inputs=warmup)

    def busy(self, directory: str):
        return _busy_process([self.python, _worker.WORKER, "busy", directory], self.where)


class RemoteRunner:
    """Runs waves on a node over the system ``ssh`` with the node's python,
    using a copy of worker.py in ``remote_dir`` on the node."""

    def __init__(self, ssh_prefix: list[str], python: str, remote_dir: str):
        self.ssh_prefix = ssh_prefix
        self.python = python
        self.remote_dir = remote_dir
        self.where = ssh_prefix[-1]

    @property
    def worker(self) -> str:
        return f"{self.remote_dir}/worker.py"

    def _run(self, argv: list[str], timeout: float = 3600) -> dict:
        cmd = " ".join(shlex.quote(a) for a in argv)
        r = subprocess.run(self.ssh_prefix + [cmd], capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise BenchError(f"{self.where}: {cmd!r} exited {r.returncode}: {r.stderr.strip()[-500:]}")
        return json.loads(r.stdout.strip().splitlines()[-1])

    def calibrate(self, npz: str, ms: float) -> dict:
        return self._run(["env", "OMP_NUM_THREADS=1", self.python, self.worker, "calibrate", npz, "--ms", str(ms)])

    def wave(self, k: int, iters: int, inputs: list[str], *, drop: str | None, warm: bool,
             warmup: list[str] | None = None) -> dict:
        argv = [self.python, self.worker, "wave", "--k", str(k), "--iters", str(iters), "--python", self.python]
        if warmup:
            for w in warmup:
                argv += ["--warmup", w]
        if drop:
            argv += ["--drop", drop]
        if warm:
            argv.append("--prewarm")
        return self._run(argv + inputs)

    def busy(self, directory: str):
        cmd = " ".join(shlex.quote(a) for a in [self.python, self.worker, "busy", directory])
        return _busy_process(self.ssh_prefix + [cmd], self.where)


# ------------------------------------------------------------ statistics
def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default), None for no data."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _r(x: float | None, nd: int) -> float | None:
    return None if x is None else round(x, nd)


def summarize(waves: list[dict]) -> dict:
    """trial and input-load statistics for one condition's waves."""
    ok = [t for w in waves for t in w["trials"] if t.get("rc") == 0 and "load_s" in t]
    failed = sum(1 for w in waves for t in w["trials"]) - len(ok)
    total = [t["total_s"] for t in ok]
    load = [t["load_s"] * 1000.0 for t in ok]
    read = [t["read_s"] * 1000.0 for t in ok if "read_s" in t]
    parse = [t["parse_s"] * 1000.0 for t in ok if "parse_s" in t]
    wall = sum(w["wall_s"] for w in waves)
    trials = {
        "n": len(ok),
        "failed": failed,
        "p50_s": _r(percentile(total, 50), 4),
        "p95_s": _r(percentile(total, 95), 4),
        "max_s": _r(max(total) if total else None, 4),
        "mean_s": _r(sum(total) / len(total) if total else None, 4),
        "trials_per_min": _r(len(ok) / wall * 60.0 if wall > 0 else None, 2),
        "waves": len(waves),
        "wave_wall_s": [round(w["wall_s"], 4) for w in waves],
        "import_p50_s": _r(percentile([t["import_s"] for t in ok], 50), 4),
        "compute_p50_s": _r(percentile([t["compute_s"] for t in ok], 50), 4),
    }
    input_load = {
        "n": len(load),
        "p50_ms": _r(percentile(load, 50), 3),
        "p95_ms": _r(percentile(load, 95), 3),
        "max_ms": _r(max(load) if load else None, 3),
        "mean_ms": _r(sum(load) / len(load) if load else None, 3),
        "cpu_p50_ms": _r(percentile([t["load_cpu_s"] * 1000.0 for t in ok if "load_cpu_s" in t], 50), 3),
        # the load split: raw open + read of the bytes (what the cache changes) and the parse
        "read_p50_ms": _r(percentile(read, 50), 3),
        "read_p95_ms": _r(percentile(read, 95), 3),
        "read_max_ms": _r(max(read) if read else None, 3),
        "parse_p50_ms": _r(percentile(parse, 50), 3),
        "parse_p95_ms": _r(percentile(parse, 95), 3),
    }
    return {"trials": trials, "input_load": input_load, "total_s": total, "load_ms": load, "read_ms": read,
            "parse_ms": parse}


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def ratios(ram: dict, ssd: dict) -> dict:
    """RAM / SSD for every figure (below 1 means RAM is faster, except
    trials_per_min where above 1 means RAM is faster)."""
    t, l = ram["trials"], ram["input_load"]
    ts, ls = ssd["trials"], ssd["input_load"]
    return {
        "trial_p50": ratio(t["p50_s"], ts["p50_s"]),
        "trial_p95": ratio(t["p95_s"], ts["p95_s"]),
        "trial_max": ratio(t["max_s"], ts["max_s"]),
        "trials_per_min": ratio(t["trials_per_min"], ts["trials_per_min"]),
        "load_p50": ratio(l["p50_ms"], ls["p50_ms"]),
        "load_p95": ratio(l["p95_ms"], ls["p95_ms"]),
        "load_max": ratio(l["max_ms"], ls["max_ms"]),
        "read_p50": ratio(l.get("read_p50_ms"), ls.get("read_p50_ms")),
        "read_p95": ratio(l.get("read_p95_ms"), ls.get("read_p95_ms")),
        "parse_p50": ratio(l.get("parse_p50_ms"), ls.get("parse_p50_ms")),
    }


def paired_ratios(raw: dict[str, list[dict]], a: str, b: str) -> dict:
    """Median over rounds of (a's wave median / b's wave median) within the
    same round: waves of one round ran back to back, so slow drift of a
    shared machine cancels out of each ratio."""
    def wave_median(w: dict, key: str) -> float | None:
        return percentile([t[key] for t in w["trials"] if t.get("rc") == 0 and key in t], 50)

    out = {}
    for key, name in (("total_s", "trial_p50_paired"), ("load_s", "load_p50_paired")):
        rs = []
        for wa, wb in zip(raw[a], raw[b]):
            r = ratio(wave_median(wa, key), wave_median(wb, key))
            if r is not None:
                rs.append(r)
        out[name] = _r(percentile(rs, 50), 3)
        out[name.replace("_paired", "_paired_range")] = [min(rs), max(rs)] if rs else None
    return out


# ----------------------------------------------------------------- driver
def run_trials(runner, ssd_inputs: list[str], ram_inputs: list[str], cfg: TrialConfig, *,
               iters: int, warmup: list[str] | None = None, label: str = "trials",
               conditions: tuple[str, ...] = CONDITIONS, progress: Progress = _noop) -> dict:
    """Interleaved waves for every condition. Returns raw waves and summaries.

    ``warmup``: inputs (RAM copies) for the unmeasured warm-up trial run
    before every wave (default: ``ram_inputs``)."""
    if len(ssd_inputs) != len(ram_inputs):
        raise BenchError("SSD and RAM input lists differ")
    raw: dict[str, list[dict]] = {c: [] for c in conditions}
    drops: list[dict] = []
    total_waves = cfg.waves * len(conditions)
    done = 0
    for r in range(cfg.waves):
        n = len(conditions)
        order = conditions[r % n:] + conditions[:r % n]
        for cond in order:
            inputs = ram_inputs if cond == "ram" else ssd_inputs
            w = runner.wave(cfg.concurrency, iters, inputs,
                            drop=cfg.drop_method if cond == "ssd" else None, warm=cond == "ssd_warm",
                            warmup=warmup or ram_inputs)
            w["condition"] = cond
            w["round"] = r
            raw[cond].append(w)
            if "drop" in w:
                drops.append(w["drop"])
            done += 1
            if w.get("warmup_error"):
                raise BenchError(f"warm-up trial failed: {w['warmup_error']}")
            bad = [t for t in w["trials"] if t.get("rc") != 0]
            p50 = percentile([t["total_s"] for t in w["trials"]], 50) or 0.0
            progress(label, f"wave {done}/{total_waves} {cond:<8} K={cfg.concurrency} "
                            f"wall {w['wall_s']:.2f}s p50 {p50:.2f}s" + (f" FAILED {len(bad)}" if bad else ""))
    summary = {c: summarize(raw[c]) for c in conditions}
    paired = {"ram_vs_ssd": paired_ratios(raw, "ram", "ssd")}
    if "ssd_warm" in conditions:
        paired["ram_vs_ssd_warm"] = paired_ratios(raw, "ram", "ssd_warm")
    methods = sorted({d["method"] for d in drops})
    resident = [d["resident_after"] for d in drops if d.get("resident_after") is not None]
    return {
        "summary": summary,
        "ratios": {**ratios(summary["ram"], summary["ssd"]), **paired["ram_vs_ssd"]},
        "ratios_vs_warm_ssd": ({**ratios(summary["ram"], summary["ssd_warm"]), **paired["ram_vs_ssd_warm"]}
                               if "ssd_warm" in conditions else None),
        "cache_drop": {
            "method": methods[0] if len(methods) == 1 else ",".join(methods) or None,
            "fallback_reason": next((d.get("fallback_reason") for d in drops if d.get("fallback_reason")), None),
            "max_resident_after_drop": max(resident) if resident else None,
        },
        "waves": raw,
    }
