"""``prng-cache bench``: measure, on this machine, trial times with inputs on
the SSD against inputs in RAM staged by prng-cache, staging against the users'
shell preload, and hashing against plain reads.

Wire-up: ``prng_cache.cli`` calls :func:`add_parser` with its subparsers;
the subcommand's ``func`` is :func:`run`. This module's :func:`run` is the
only place in the bench that prints.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

__all__ = ["add_parser", "run", "main"]

DEFAULT_OUT = os.path.join("benchmarks", "results")
DESCRIPTION = ("Measure on this machine: trial times with inputs on the SSD against inputs in RAM "
               "staged by prng-cache (same run, interleaved waves), staging against the users' shell "
               "preload, and xxh3-128 hashing against plain reads. Writes a results JSON and PNG plots.")


def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def _nonneg_float(text: str) -> float:
    v = float(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {v:g}")
    return v


def configure_parser(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--quick", action="store_true",
                   help="small run (< 3 min on 2 cores): 18 trials per condition, 300 ms compute, "
                        "no large JSON, 64 MiB hash file, 1 staging repeat")
    g.add_argument("--json", action="store_true", help="print the results document as JSON on stdout")
    g.add_argument("--out", metavar="DIR", default=DEFAULT_OUT,
                   help=f"where the results JSON and PNG plots go (default: {DEFAULT_OUT})")
    g.add_argument("--tag", metavar="NAME",
                   help="file name prefix for results (default: bench-quick / bench-full)")
    g.add_argument("--workdir", metavar="DIR",
                   help="directory on the disk to measure, for the SSD-side inputs (default: a temp dir "
                        "in /var/tmp, or in the current directory when /var/tmp is a RAM file system)")
    g.add_argument("--quiet", action="store_true", help="no progress on stderr")
    g.add_argument("--skip", action="append", choices=("trials", "staging", "hashing"), default=[],
                   help="leave out one benchmark (repeatable)")
    g = p.add_argument_group("trials")
    g.add_argument("--trials", type=_positive_int, metavar="N",
                   help="trials per condition, rounded up to whole waves of K (default 54; quick 18)")
    g.add_argument("--concurrency", "-K", type=_positive_int, default=6, metavar="K",
                   help="trials started at once per wave (default 6, the users' per-node batch)")
    g.add_argument("--compute-ms", type=_nonneg_float, metavar="MS",
                   help="fixed compute per trial, calibrated as MS on one idle core (default 1000; quick 300)")
    g.add_argument("--cache-drop", choices=("auto", "drop_caches", "fadvise"), default="auto",
                   help="how the SSD files leave the page cache before each SSD wave (default auto: "
                        "/proc/sys/vm/drop_caches when permitted, else posix_fadvise DONTNEED)")
    g.add_argument("--trial-node", metavar="HOST",
                   help="with --config: node the trials run on (default: the first cache-mode node; "
                        "'local' for this machine)")
    g = p.add_argument_group("input sizes")
    g.add_argument("--npz-kb", type=_nonneg_float, default=230, metavar="KB", help="survivors .npz (default 230)")
    g.add_argument("--train-kb", type=_nonneg_float, default=27, metavar="KB",
                   help="train_history.json (default 27)")
    g.add_argument("--holdout-kb", type=_nonneg_float, default=7, metavar="KB",
                   help="holdout_history.json (default 7)")
    g.add_argument("--big-json-mb", type=_nonneg_float, metavar="MB",
                   help="large JSON for the 'large' trial scenario and staging; 0 = none (default 100; quick 0)")
    g.add_argument("--big-trials", type=int, metavar="N",
                   help="trials per condition in the large scenario (default 12; quick 0)")
    g.add_argument("--hash-mb", type=_nonneg_float, metavar="MB",
                   help="file size for the hashing benchmark (default 256; quick 64)")
    g = p.add_argument_group("nodes")
    g.add_argument("--config", metavar="FILE",
                   help="distributed_config.json: stage to (and run trials on) its real nodes; default is "
                        "an embedded setup on this machine needing no cluster")
    g.add_argument("--policy", metavar="FILE",
                   help="policy file with --config (default: $PRNG_CACHE_POLICY, else ./cache_policy.yaml)")
    g.add_argument("--node", dest="hosts", action="append", default=[], metavar="HOST",
                   help="with --config: only this node (repeatable)")
    g.add_argument("--nodes", type=_positive_int, default=2, metavar="N",
                   help="size of the embedded sshd cluster (default 2)")
    g.add_argument("--local-staging", action="store_true",
                   help="embedded setup without sshd: stage through LocalTransport, baseline cp")
    g.add_argument("--staging-repeats", type=_positive_int, metavar="N",
                   help="staging repetitions, median reported (default 3; quick 1)")


def add_parser(subparsers) -> None:
    """Add the ``bench`` subcommand to the CLI's subparsers."""
    p = subparsers.add_parser("bench", help="measure SSD vs RAM trial times, staging and hashing here",
                              description=DESCRIPTION)
    configure_parser(p)
    p.set_defaults(func=run)


class _Progress:
    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.t0 = time.monotonic()

    def __call__(self, phase: str, msg: str) -> None:
        if not self.enabled:
            return
        dt = time.monotonic() - self.t0
        print(f"[bench {int(dt) // 60:02d}:{dt % 60:04.1f}] {phase}: {msg}", file=sys.stderr, flush=True)


def _options(args: argparse.Namespace):
    from .suite import BenchOptions

    return BenchOptions(
        quick=args.quick, trials=args.trials, concurrency=args.concurrency, compute_ms=args.compute_ms,
        npz_kb=args.npz_kb, train_kb=args.train_kb, holdout_kb=args.holdout_kb,
        big_json_mb=args.big_json_mb, big_trials=args.big_trials, hash_mb=args.hash_mb,
        staging_repeats=args.staging_repeats, nodes=args.nodes, config=args.config, policy=args.policy,
        hosts=list(args.hosts), trial_node=args.trial_node, cache_drop=args.cache_drop,
        workdir=args.workdir, local_staging=args.local_staging, skip=list(args.skip))


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; print the table (or --json document). Exit status:
    0 done, 1 the benchmark could not run or a trial failed, 2 bad options."""
    try:
        import numpy  # noqa: F401
        import matplotlib  # noqa: F401
    except ImportError as exc:
        print(f"prng-cache bench: {exc.name} is missing; install the bench extra: "
              f"pip install 'prng-cache[bench]'", file=sys.stderr)
        return 2
    from ..errors import PrngCacheError
    from . import plots, report
    from .staging_bench import StagingError
    from .suite import run_benchmark
    from .trials import BenchError

    if args.config and not os.path.isfile(args.config):
        print(f"prng-cache bench: error: --config {args.config}: file not found", file=sys.stderr)
        return 2
    progress = _Progress(not args.quiet)
    try:
        doc = run_benchmark(_options(args), progress)
    except ValueError as exc:
        print(f"prng-cache bench: error: {exc}", file=sys.stderr)
        return 2
    except (BenchError, StagingError, PrngCacheError, OSError, RuntimeError) as exc:
        print(f"prng-cache bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    prefix = args.tag or f"bench-{doc['profile']}"
    out = os.path.abspath(args.out)
    results = os.path.join(out, f"{prefix}.json")
    progress("plots", f"writing {out}")
    try:
        os.makedirs(out, exist_ok=True)
        pngs = plots.write_plots(doc, out, prefix)
        doc["files"] = {"results": results, "plots": pngs}
        tmp = results + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
        os.replace(tmp, results)
    except OSError as exc:
        print(f"prng-cache bench: cannot write results to {out}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(report.render(doc, [results, *pngs]))
    failed = sum(t.get("failed", 0) for key in ("trials", "trials_large") for t in (doc.get(key) or {}).values())
    if failed:
        print(f"prng-cache bench: {failed} trial(s) failed; their figures are missing", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="prng-cache bench", description=DESCRIPTION)
    configure_parser(ap)
    return run(ap.parse_args(argv))
