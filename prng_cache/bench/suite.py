"""The whole benchmark, from generated inputs to one results document.

Library code: reports progress through a callback and never prints.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from ..policy import CapacityPolicy, GcPolicy, NodeSettings
from ..staging import stage_cluster, stage_node
from ..store import NodeStore
from ..transport.local import LocalTransport
from . import machine as _machine
from . import worker as _worker
from .datagen import InputSet, age_files, make_inputs
from .hashing_bench import bench_hashing
from .nodes import NodeAccess, Setup, open_setup, remove_cache_root
from .staging_bench import bench_staging, find_bundles
from .trials import BUSY_CONDITIONS, CONDITIONS, BenchError, LocalRunner, RemoteRunner, TrialConfig, run_trials

Progress = Callable[[str, str], None]

SCHEMA = 1


@dataclass
class BenchOptions:
    quick: bool = False
    trials: int | None = None  # per condition
    concurrency: int = 6
    compute_ms: float | None = None
    npz_kb: float = 230
    train_kb: float = 27
    holdout_kb: float = 7
    big_json_mb: float | None = None
    big_trials: int | None = None
    hash_mb: float | None = None
    staging_repeats: int | None = None
    nodes: int = 2
    config: str | None = None
    policy: str | None = None
    hosts: list[str] = field(default_factory=list)
    trial_node: str | None = None
    cache_drop: str = "auto"
    workdir: str | None = None
    local_staging: bool = False
    skip: list[str] = field(default_factory=list)  # trials | busy | staging | hashing

    def resolved(self) -> "BenchOptions":
        """Fill the profile defaults (--quick or full)."""
        q = self.quick
        o = BenchOptions(**asdict(self))
        # whole rounds of 3 waves: each condition takes each slot in the order equally
        o.trials = o.trials if o.trials is not None else (18 if q else 54)
        o.compute_ms = o.compute_ms if o.compute_ms is not None else (300.0 if q else 1000.0)
        o.big_json_mb = o.big_json_mb if o.big_json_mb is not None else (0.0 if q else 100.0)
        o.big_trials = o.big_trials if o.big_trials is not None else (0 if q else 12)
        o.hash_mb = o.hash_mb if o.hash_mb is not None else (64.0 if q else 256.0)
        o.staging_repeats = o.staging_repeats if o.staging_repeats is not None else (1 if q else 3)
        return o


def _noop(phase: str, msg: str) -> None:
    pass


# ------------------------------------------------------------------ trials
def _stage_local(inputs: InputSet, shm_dir: str) -> dict[str, str]:
    """RAM copies staged by prng-cache itself: LocalTransport, a fresh cache
    root under /dev/shm, mode "cache". Returns SSD path -> RAM path."""
    bundles, _ = find_bundles(inputs.paths, None)
    settings = NodeSettings(mode="cache", cache_root=os.path.join(shm_dir, "prng"), capacity=CapacityPolicy())
    with LocalTransport("localhost") as t:
        rep = stage_node(NodeStore(t, settings, GcPolicy()), bundles)
    if rep.skipped or len(rep.staged) != len(inputs.paths):
        raise BenchError(f"prng-cache did not stage every input: {rep.skipped or rep.reason}")
    return rep.staged


@dataclass
class TrialTarget:
    """Where trials run: this machine, or a node of --config."""

    runner: object
    ssd: dict[str, list[str]]  # scenario -> SSD paths as the runner sees them
    ram: dict[str, list[str]]  # scenario -> RAM paths as the runner sees them
    where: str
    cleanup: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for fn in reversed(self.cleanup):
            with contextlib.suppress(Exception):
                fn()
        self.cleanup.clear()


def _local_target(sets: dict[str, InputSet]) -> TrialTarget:
    shm = tempfile.mkdtemp(prefix="prng-bench-", dir="/dev/shm")
    tgt = TrialTarget(LocalRunner(), {}, {}, "local", [lambda: shutil.rmtree(shm, ignore_errors=True)])
    try:
        for name, s in sets.items():
            staged = _stage_local(s, shm)
            tgt.ssd[name] = s.paths
            tgt.ram[name] = [staged[p] for p in s.paths]
    except BaseException:
        tgt.close()
        raise
    return tgt


def _remote_target(setup: Setup, na: NodeAccess, sets: dict[str, InputSet], token: str) -> TrialTarget:
    """Copy worker.py and the inputs to the node's disk (next to its
    script_path, as the users keep them) and stage RAM copies with prng-cache."""
    remote_dir = f"{na.node.script_path.rstrip('/')}/.prng-bench-{token}"
    runner = RemoteRunner(na.ssh, na.node.python_env, remote_dir)
    policy = setup.bench_policy("trials")
    tgt = TrialTarget(runner, {}, {}, na.host)
    tgt.cleanup.append(lambda: na.run(f"rm -rf {shlex.quote(remote_dir)}", check=False))
    tgt.cleanup.append(lambda: remove_cache_root(setup, policy, na))
    try:
        na.run(f"mkdir -p {shlex.quote(remote_dir)}")
        na.copy(_worker.WORKER, remote_dir)
        for name, s in sets.items():
            sub = f"{remote_dir}/{name}"
            na.run(f"mkdir -p {shlex.quote(sub)}")
            for p in s.paths:
                na.copy(p, sub)
            tgt.ssd[name] = [f"{sub}/{os.path.basename(p)}" for p in s.paths]
            bundles, _ = find_bundles(s.paths, None)
            reports = stage_cluster([na.node], lambda n: bundles, policy)
            rep = reports[na.host]
            if rep.status != "ok" or len(rep.staged) != len(s.paths):
                raise BenchError(f"{na.host}: prng-cache did not stage the inputs: {rep.reason}")
            tgt.ram[name] = [rep.staged[p] for p in s.paths]
    except BaseException:
        tgt.close()
        raise
    return tgt


# ------------------------------------------------------------------- suite
def run_benchmark(opts: BenchOptions, progress: Progress = _noop) -> dict:
    o = opts.resolved()
    if o.concurrency < 1 or o.trials < 1:
        raise ValueError("--concurrency and --trials must be at least 1")
    t_start = time.monotonic()
    workdir, wd_warning = _machine.choose_workdir(o.workdir)
    doc: dict = {"schema": SCHEMA, "profile": "quick" if o.quick else "full"}
    warnings: list[str] = [wd_warning] if wd_warning else []
    mach = _machine.describe(workdir)
    setup: Setup | None = None
    target: TrialTarget | None = None
    try:
        progress("setup", f"generating inputs in {workdir} ({mach['ssd']['fs']} on {mach['ssd']['device']})")
        sets = {"scorer": make_inputs(os.path.join(workdir, "scorer"), npz_kb=o.npz_kb, train_kb=o.train_kb,
                                      holdout_kb=o.holdout_kb)}
        if o.big_json_mb > 0 and o.big_trials > 0:
            progress("setup", f"generating a {o.big_json_mb:g} MB JSON")
            sets["large"] = make_inputs(os.path.join(workdir, "large"), npz_kb=o.npz_kb, train_kb=o.train_kb,
                                        holdout_kb=o.holdout_kb, big_mb=o.big_json_mb, name_prefix="")
        for s in sets.values():
            age_files(s.paths)
        os.sync()
        need_setup = "staging" not in o.skip or (o.config and o.trial_node != "local")
        if need_setup:
            stage_bytes = max(s.total_bytes for s in sets.values())
            setup = open_setup(config=o.config, policy_file=o.policy, workdir=workdir, n_nodes=o.nodes,
                               tmpfs_bytes=4 * stage_bytes + (32 << 20), hosts=o.hosts or None,
                               force_local=o.local_staging, progress=progress)
            warnings += setup.warnings

        # ----------------------------------------------------------- trials
        if "trials" not in o.skip:
            if o.config and o.trial_node != "local":
                na = next((n for n in setup.nodes if n.host == o.trial_node), None) if o.trial_node else setup.nodes[0]
                if na is None:
                    raise ValueError(f"--trial-node {o.trial_node!r} is not a cache-mode node of {o.config}")
                progress("trials", f"copying inputs to {na.host} and staging them with prng-cache")
                target = _remote_target(setup, na, sets, setup.token)
            else:
                target = _local_target(sets)
            doc.update(_run_trial_scenarios(target, sets, o, progress))
            mach["cache_drop"] = doc.pop("_cache_drop")
            mach["trials_ran_on"] = target.where
        # ---------------------------------------------------------- hashing
        if "hashing" not in o.skip:
            progress("hashing", "xxh3-128 vs plain read")
            doc["hashing"] = bench_hashing(workdir, size=int(o.hash_mb * (1 << 20)), drop_method=o.cache_drop,
                                           progress=progress)
        # ---------------------------------------------------------- staging
        if "staging" not in o.skip:
            paths = sets["large"].paths if "large" in sets else sets["scorer"].paths
            progress("staging", f"{setup.mode}: {setup.note}")
            doc["staging"] = bench_staging(setup, paths, workdir, repeats=o.staging_repeats, progress=progress)
    finally:
        if target is not None:
            target.close()
        if setup is not None:
            setup.close()
        shutil.rmtree(workdir, ignore_errors=True)
    mach["loadavg_end"] = _machine.loadavg()
    doc["machine"] = mach
    doc["warnings"] = warnings
    doc["options"] = {k: v for k, v in asdict(o).items()}
    doc["elapsed_s"] = round(time.monotonic() - t_start, 2)
    return doc


def _run_trial_scenarios(target: TrialTarget, sets: dict[str, InputSet], o: BenchOptions,
                         progress: Progress) -> dict:
    out: dict = {}
    scorer_ssd = target.ssd["scorer"]
    cal = target.runner.calibrate(scorer_ssd[0], o.compute_ms)
    iters = int(cal["iters"])
    progress("trials", f"compute: {iters} kernel iterations (~{o.compute_ms:g} ms on one idle core)")
    # one unrecorded wave so the interpreter and numpy are in the page cache
    target.runner.wave(o.concurrency, iters, target.ram["scorer"], drop=None, warm=False)
    cfg = TrialConfig(trials=o.trials, concurrency=o.concurrency, compute_ms=o.compute_ms,
                      drop_method=o.cache_drop)
    res = run_trials(target.runner, scorer_ssd, target.ram["scorer"], cfg, iters=iters, label="trials",
                     progress=progress)
    out["trials"] = {c: res["summary"][c]["trials"] for c in CONDITIONS}
    out["input_load"] = {c: res["summary"][c]["input_load"] for c in CONDITIONS}
    out["ratios"] = {"ram_vs_ssd": res["ratios"], "ram_vs_ssd_warm": res["ratios_vs_warm_ssd"]}
    samples = {"trials": _samples(res, CONDITIONS)}
    trial_setup = {"compute_iters": iters, "compute_per_iter_ms": round(cal["per_iter_ms"], 5),
                   "concurrency": o.concurrency, "waves_per_condition": cfg.waves,
                   "input_bytes": sets["scorer"].sizes(),
                   "order": "rounds rotate ssd, ram, ssd_warm so each condition takes each slot equally"}
    drop = res["cache_drop"]
    if "large" in sets:
        size = os.path.getsize(sets["large"].big)
        avail = _machine.mem_available() or 0
        # json.load of a list of records takes about 9x the file in RSS
        k = max(1, min(o.concurrency, int(avail * 0.5 // max(1, 10 * size)))) if avail else o.concurrency
        cfg_l = TrialConfig(trials=max(o.big_trials, k), concurrency=k, compute_ms=o.compute_ms,
                            drop_method=o.cache_drop)
        progress("trials", f"large scenario: +{size / 1e6:.0f} MB JSON, K={k}")
        res_l = run_trials(target.runner, target.ssd["large"], target.ram["large"], cfg_l, iters=iters,
                           warmup=target.ram["scorer"], label="trials-large", progress=progress)
        out["trials_large"] = {c: res_l["summary"][c]["trials"] for c in CONDITIONS}
        out["input_load_large"] = {c: res_l["summary"][c]["input_load"] for c in CONDITIONS}
        out["ratios_large"] = {"ram_vs_ssd": res_l["ratios"], "ram_vs_ssd_warm": res_l["ratios_vs_warm_ssd"]}
        samples["trials_large"] = _samples(res_l, CONDITIONS)
        trial_setup["large"] = {"concurrency": k, "waves_per_condition": cfg_l.waves,
                                "input_bytes": sets["large"].sizes()}
        if res_l["cache_drop"]["max_resident_after_drop"] is not None:
            drop["max_resident_after_drop"] = max(drop["max_resident_after_drop"] or 0.0,
                                                  res_l["cache_drop"]["max_resident_after_drop"])
    if "busy" not in o.skip:
        out.update(_run_busy_disk(target, o, cfg, iters, progress))
        if out["_busy_max_resident"] is not None:
            drop["max_resident_after_drop"] = max(drop["max_resident_after_drop"] or 0.0, out["_busy_max_resident"])
        out.pop("_busy_max_resident")
        samples["busy_disk_trials"] = out.pop("_busy_samples")
    drop["interpreter_rewarmed"] = True
    drop["note"] = ("before each ssd wave; then, before every wave alike, one unmeasured trial on the RAM "
                    "copies pulls python, numpy and the worker back into the page cache, so only the "
                    "inputs come from the device")
    out["trial_setup"] = trial_setup
    out["samples"] = samples
    out["_cache_drop"] = drop
    return out


def _samples(res: dict, conditions) -> dict:
    return {c: {"total_s": [round(x, 4) for x in res["summary"][c]["total_s"]],
                "load_ms": [round(x, 3) for x in res["summary"][c]["load_ms"]],
                "read_ms": [round(x, 3) for x in res["summary"][c]["read_ms"]],
                "parse_ms": [round(x, 3) for x in res["summary"][c]["parse_ms"]]}
            for c in conditions}


def _run_busy_disk(target: TrialTarget, o: BenchOptions, cfg: TrialConfig, iters: int, progress: Progress) -> dict:
    """SSD and RAM waves, interleaved, while the busy-disk writers run in the
    SSD work directory (the directory that holds the SSD inputs)."""
    busy_dir = os.path.dirname(os.path.dirname(target.ssd["scorer"][0]))
    progress("trials", f"busy disk: writers (fsynced appends, SQLite commits, sequential write) in {busy_dir}")
    with target.runner.busy(busy_dir) as writer:
        res = run_trials(target.runner, target.ssd["scorer"], target.ram["scorer"], cfg, iters=iters,
                         label="trials-busy", conditions=BUSY_CONDITIONS, progress=progress)
    s = res["summary"]
    busy = {}
    for c in BUSY_CONDITIONS:
        lo = s[c]["input_load"]
        busy[c] = {"n": lo["n"], "p50_ms": lo["p50_ms"], "p95_ms": lo["p95_ms"], "max_ms": lo["max_ms"],
                   "read_p50_ms": lo["read_p50_ms"], "read_p95_ms": lo["read_p95_ms"],
                   "parse_p50_ms": lo["parse_p50_ms"], "parse_p95_ms": lo["parse_p95_ms"],
                   "cpu_p50_ms": lo["cpu_p50_ms"]}
    return {
        "busy_disk": busy,
        "busy_disk_trials": {c: s[c]["trials"] for c in BUSY_CONDITIONS},
        "busy_disk_ratios": {"ram_vs_ssd": res["ratios"]},
        "busy_disk_writer": {"dir": busy_dir, **writer,
                             "what": "fsynced ~150-byte appends, SQLite commit loop (synchronous=FULL), "
                                     "256 MB checkpoint rewritten at device speed in 4 MB writes "
                                     "(O_DIRECT if seq_direct, else buffered with fsync every 16 MB)"},
        "_busy_samples": _samples(res, BUSY_CONDITIONS),
        "_busy_max_resident": res["cache_drop"]["max_resident_after_drop"],
    }
