"""Staging benchmark: prng-cache cold stage (hash + copy what is missing),
warm stage (everything present: 0 bytes moved) and the users' shell preload
of the same files, cold and warm ("already loaded" checks), per repetition
with fresh cache roots and fresh preload directories."""

from __future__ import annotations

import os
import shlex
import statistics
import tempfile
import time
from typing import Callable

from ..memo import HashMemo
from ..inputs import Bundle, discover
from ..policy import InputsPolicy, Policy
from ..staging import stage_cluster
from . import worker as _worker
from .nodes import NodeAccess, Setup, remove_cache_root

Progress = Callable[[str, str], None]


class StagingError(RuntimeError):
    pass


def scorer_jobs(paths: list[str], n: int = 6) -> list[dict]:
    """Jobs shaped like the users' step-3 scorer trials, naming ``paths``."""
    return [{"job_id": f"bench_{i}", "script": "scorer_trial_worker.py",
             "args": [*paths, str(i), '{"window": 512, "offset": 3}',
                      "--optuna-study-db", "sqlite:///./optuna_studies/bench.db"],
             "expected_output": f"scorer_trial_results/trial_{i}.json"} for i in range(n)]


def find_bundles(paths: list[str], memo: HashMemo | None) -> tuple[list[Bundle], float]:
    """What ``prng-cache stage`` does first: discover and hash the inputs."""
    base = os.path.dirname(paths[0])
    t = time.perf_counter()
    d = discover(scorer_jobs(paths), InputsPolicy(min_jobs=1), base, memo=memo)
    dt = time.perf_counter() - t
    missing = [p for p in paths if p not in d.bundles]
    if missing:
        raise StagingError(f"inputs not cacheable: {d.skipped}")
    return [d.bundles[p] for p in paths], dt


def stage(setup: Setup, policy: Policy, bundles: list[Bundle]) -> tuple[float, dict]:
    t = time.perf_counter()
    reports = stage_cluster([na.node for na in setup.nodes], lambda n: bundles, policy)
    dt = time.perf_counter() - t
    bad = {h: r.reason for h, r in reports.items() if r.status not in ("ok",)}
    if bad:
        raise StagingError(f"staging failed: {bad}")
    return dt, reports


def shell_preload(setup: Setup, paths: list[str], step_dir: Callable[[NodeAccess], str]) -> tuple[float, int, list]:
    """The users' preload, node after node: ``mkdir -p``; skip the node if
    ``.ready`` exists; per file ``test -f`` then ``scp``; ``touch .ready``."""
    copied = 0
    per_node = []
    t0 = time.perf_counter()
    for na in setup.nodes:
        tn = time.perf_counter()
        d = step_dir(na)
        q = shlex.quote(d)
        na.run(f"mkdir -p {q}")
        if na.run(f"test -f {q}/.ready", check=False).returncode == 0:
            per_node.append({"host": na.host, "seconds": round(time.perf_counter() - tn, 4), "skipped": True})
            continue  # "already loaded"
        for p in paths:
            if na.run(f"test -f {q}/{shlex.quote(os.path.basename(p))}", check=False).returncode != 0:
                na.copy(p, d)
                copied += os.path.getsize(p)
        na.run(f"touch {q}/.ready")
        per_node.append({"host": na.host, "seconds": round(time.perf_counter() - tn, 4), "skipped": False})
    return time.perf_counter() - t0, copied, per_node


def bench_staging(setup: Setup, paths: list[str], workdir: str, *, repeats: int = 1,
                  progress: Progress = lambda a, b: None) -> dict:
    samples: dict[str, list[float]] = {k: [] for k in
                                       ("cold_s", "warm_s", "cold_hash_s", "warm_hash_s",
                                        "baseline_preload_s", "baseline_preload_warm_s")}
    bytes_cold = bytes_warm = base_cold_bytes = base_warm_bytes = 0
    warm_present = 0
    last_nodes: dict = {}
    for rep in range(repeats):
        tag = f"r{rep}"
        policy = setup.bench_policy(tag)
        memo_dir = tempfile.mkdtemp(prefix="memo-", dir=workdir)
        preload = lambda na: f"{na.shm}/prng-bench-preload-{setup.token}-{tag}/step3"  # noqa: E731
        try:
            # prng-cache, cold: nothing hashed yet, nothing on the nodes, inputs not
            # in the page cache (fadvise on the inputs only: a global drop would
            # also evict ssh, python and paramiko and charge that to whoever runs first)
            _worker.drop_cache(paths, "fadvise")
            memo = HashMemo(memo_dir)
            bundles, h = find_bundles(paths, memo)
            s, reports = stage(setup, policy, bundles)
            samples["cold_hash_s"].append(h)
            samples["cold_s"].append(h + s)
            bytes_cold = sum(r.copied_bytes for r in reports.values())
            progress("staging", f"[{rep + 1}/{repeats}] prng-cache cold {h + s:.3f}s "
                                f"({bytes_cold / 1e6:.2f} MB to {len(reports)} node(s))")
            memo.close()
            # prng-cache, warm: a new coordinator process (fresh memo object), all present
            memo = HashMemo(memo_dir)
            bundles, h = find_bundles(paths, memo)
            s, reports = stage(setup, policy, bundles)
            memo.close()
            samples["warm_hash_s"].append(h)
            samples["warm_s"].append(h + s)
            bytes_warm = sum(r.copied_bytes for r in reports.values())
            warm_present = sum(r.present_files for r in reports.values())
            last_nodes = {host: r.to_dict() for host, r in reports.items()}
            progress("staging", f"[{rep + 1}/{repeats}] prng-cache warm {h + s:.3f}s ({bytes_warm} bytes moved)")
            # the users' shell preload of the same files, cold then warm
            _worker.drop_cache(paths, "fadvise")
            t, base_cold_bytes, per_node_cold = shell_preload(setup, paths, preload)
            samples["baseline_preload_s"].append(t)
            progress("staging", f"[{rep + 1}/{repeats}] shell preload cold {t:.3f}s")
            t, base_warm_bytes, per_node_warm = shell_preload(setup, paths, preload)
            samples["baseline_preload_warm_s"].append(t)
            progress("staging", f"[{rep + 1}/{repeats}] shell preload warm {t:.3f}s")
        finally:
            for na in setup.nodes:
                remove_cache_root(setup, policy, na)
                na.run(f"rm -rf {shlex.quote(os.path.dirname(preload(na)))}", check=False)
            import shutil

            shutil.rmtree(memo_dir, ignore_errors=True)

    def med(k: str) -> float:
        return round(statistics.median(samples[k]), 4)

    return {
        "mode": setup.mode,
        "note": setup.note,
        "nodes": [na.host for na in setup.nodes],
        "files": len(paths),
        "bytes_per_node": sum(os.path.getsize(p) for p in paths),
        "cold_s": med("cold_s"),
        "warm_s": med("warm_s"),
        "baseline_preload_s": med("baseline_preload_s"),
        "baseline_preload_warm_s": med("baseline_preload_warm_s"),
        "cold_hash_s": med("cold_hash_s"),
        "warm_hash_s": med("warm_hash_s"),
        "bytes_cold": bytes_cold,
        "bytes_warm": bytes_warm,
        "warm_present_files": warm_present,
        "baseline_bytes_cold": base_cold_bytes,
        "baseline_bytes_warm": base_warm_bytes,
        "baseline_per_node_cold": per_node_cold,
        "baseline_per_node_warm": per_node_warm,
        "repeats": repeats,
        "samples": {k: [round(x, 4) for x in v] for k, v in samples.items()},
        "last_reports": last_nodes,
        "cache_drop": "fadvise(DONTNEED) on the input files before each cold run",
        "baseline_method": ("per node, one after another: ssh mkdir -p; ssh test -f .ready; "
                            "per file ssh test -f + scp; ssh touch .ready")
        if setup.nodes[0].ssh else "per file test -f + cp into /dev/shm, .ready sentinel",
    }
