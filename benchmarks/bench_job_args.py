"""Per-call cost of the coordinator_job_args hook (issue: < 50 µs per call).

Runs a real coordinator_run_start on this machine (localhost in cache mode,
a fresh cache root on /dev/shm), then times, in the same run:

- ``direct``: the plugin's method called directly;
- ``hook``: the call as the coordinator makes it, through pluggy;
- ``baseline``: the same pluggy hook with no plugin registered (what the
  coordinator pays for the hook call alone).

Usage:  python3 benchmarks/bench_job_args.py [--calls N] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import timeit
from types import SimpleNamespace

from prng_cache.coordinator import plugin_manager
from prng_cache.plugin import PrngCachePlugin
from prng_cache.policy import NodeOverride, Policy


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    a = ap.parse_args()

    work = tempfile.mkdtemp(prefix="jobargs-")
    root = f"/dev/shm/prng-bench-jobargs-{os.getpid()}"
    try:
        for name, size in (("bidirectional_survivors.npz", 230_000), ("train_history.json", 27_000),
                           ("holdout_history.json", 7_000)):
            with open(os.path.join(work, name), "wb") as f:
                f.write(os.urandom(size))
        # attribute objects like the coordinator's NodeConfig / Job dataclasses
        node = SimpleNamespace(hostname="localhost", username="", gpu_count=1, gpu_type="cpu",
                               script_path=work, python_env="python3", is_localhost=True)
        jobs = [SimpleNamespace(
            job_id=f"trial_{i}", script="scorer_trial_worker.py", timeout=600,
            args=["bidirectional_survivors.npz", "train_history.json", f"{work}/holdout_history.json",
                  str(i), '{"lr": 0.01, "window": 512}', "--optuna-study-db",
                  "sqlite:///./optuna_studies/s.db", "--output-file", f"results/trial_{i}.json"],
            expected_output=f"results/trial_{i}.json") for i in range(a.jobs)]
        plugin = PrngCachePlugin(Policy(cache_root=root, nodes=(NodeOverride("localhost", mode="cache"),)))
        pm = plugin_manager(load_entrypoints=False)
        pm.register(plugin)
        pm.hook.coordinator_run_start(run_id="bench", nodes=[node], jobs=jobs, assignments={"localhost": jobs})
        assert pm.hook.coordinator_job_args(node=node, job=jobs[0])[0].startswith(root)
        bare = plugin_manager(load_entrypoints=False)

        def per_call(fn) -> float:
            it = iter(range(1 << 62))

            def call():
                fn(node=node, job=jobs[next(it) % len(jobs)])
            return min(timeit.repeat(call, number=a.calls, repeat=5)) / a.calls * 1e6

        direct = per_call(plugin.coordinator_job_args)
        hook = per_call(pm.hook.coordinator_job_args)
        baseline = per_call(bare.hook.coordinator_job_args)
        pm.hook.coordinator_run_end(run_id="bench", results={})
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if os.path.isdir(root):
            for d, _, _ in os.walk(root):
                os.chmod(d, 0o700)
            shutil.rmtree(root, ignore_errors=True)

    doc = {"direct_us": round(direct, 2), "hook_us": round(hook, 2), "baseline_hook_us": round(baseline, 2),
           "plugin_cost_us": round(hook - baseline, 2), "target_us": 50.0, "calls": a.calls,
           "machine": {"python": platform.python_version(), "cpus": os.cpu_count()}}
    print(f"coordinator_job_args per call: {hook:.1f} µs through pluggy "
          f"({direct:.1f} µs direct; empty hook {baseline:.1f} µs) -> plugin adds "
          f"{hook - baseline:.1f} µs = {(hook - baseline) / 50.0:.2f}x of the 50 µs budget")
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "job_args.json"), "w") as f:
        json.dump(doc, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
