"""Start-up cost of what a stage imports, measured with ``python -X importtime``.

    python3 benchmarks/import_time.py [--runs 15] [--root DIR] [--json]

For each run, a fresh interpreter imports ``prng_cache.cli`` and
``prng_cache.transport.ssh`` (what an SSH stage loads; the shipped example
is localhost-only) and the cumulative microseconds of those top-level
imports are summed; also the wall time of ``python -m prng_cache stage`` on
``examples/`` (cache root in a temp dir). Bytecode is cached (in a temp
prefix) as for an installed package, unless ``--no-bytecode``. Medians are printed. ``--root``
(repeatable) measures other checkouts, e.g. a ``git worktree`` of an older
commit; runs of several roots are interleaved so machine load hits all alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

TOP = ("prng_cache.cli", "prng_cache.transport.ssh")


def _env(root: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=root)
    if PYCACHE:  # bytecode cached as in an installed package; not in the checkout
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = os.path.join(PYCACHE, str(abs(hash(root))))
    return env


PYCACHE: str | None = None


def import_us(root: str) -> dict[str, int]:
    env = _env(root)
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", "import " + ", ".join(TOP)],
                       env=env, cwd=os.path.join(root, "examples"),  # sys.path[0] of -c is the cwd
                       capture_output=True, text=True, check=True)
    out: dict[str, int] = {}
    for line in r.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[2].strip() in (*TOP, "invoke", "paramiko", "yaml"):
            out[parts[2].strip()] = int(parts[1])  # cumulative, wherever it was first imported
    return out


def stage_s(root: str, cache_root: str) -> float:
    env = _env(root)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "prng_cache", "stage", "--jobs-file", "jobs.json", "--json",
                    "--cache-root", cache_root], cwd=os.path.join(root, "examples"), env=env,
                   capture_output=True, check=True)
    return time.perf_counter() - t


def summary(samples: list[dict[str, int]], stages: list[float]) -> dict:
    med = statistics.median
    return {
        "stage_imports_ms": round(med(sum(s.get(k, 0) for k in TOP) for s in samples) / 1e3, 1),
        **{f"{k}_ms": round(med(s.get(k, 0) for s in samples) / 1e3, 1) for k in TOP},
        "paramiko_ms": round(med(s.get("paramiko", 0) for s in samples) / 1e3, 1),
        "invoke_imported": any("invoke" in s for s in samples),
        "stage_wall_ms": round(med(stages) * 1e3, 1),
    }


def main() -> int:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--root", action="append", help=f"checkout to measure (default: {here})")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-bytecode", action="store_true",
                    help="compile every module at every start (as with PYTHONDONTWRITEBYTECODE=1)")
    a = ap.parse_args()
    global PYCACHE
    roots = a.root or [here]
    samples: dict[str, list] = {r: [] for r in roots}
    stages: dict[str, list] = {r: [] for r in roots}
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as d:
        PYCACHE = None if a.no_bytecode else os.path.join(d, "pycache")
        for r in roots:
            import_us(r)  # writes the bytecode
            stage_s(r, os.path.join(d, "c"))  # the first stage copies; the rest find all present
        for _ in range(a.runs):
            for r in roots:
                samples[r].append(import_us(r))
                stages[r].append(stage_s(r, os.path.join(d, "c")))
    doc = {"runs": a.runs, "bytecode_cached": not a.no_bytecode, "roots": {r: summary(samples[r], stages[r]) for r in roots}}
    if a.json:
        print(json.dumps(doc, indent=2))
    else:
        for r, d in doc["roots"].items():
            print(r)
            for k, v in d.items():
                print(f"  {k:28} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
