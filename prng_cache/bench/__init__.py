"""``prng-cache bench``: measure, on this machine, trial times with inputs on
the SSD against inputs in RAM staged by prng-cache, staging against the users'
shell preload, and hashing against plain reads.

Wire-up: the options live in ``prng_cache.bench_options`` (the CLI builds
its parser from them without importing this package); the subcommand's
``func`` imports this package and calls :func:`run`. This module's :func:`run` is the
only place in the bench that prints.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from ..bench_options import DEFAULT_OUT, DESCRIPTION, configure_parser  # noqa: F401 (re-exported)

__all__ = ["add_parser", "configure_parser", "run", "main"]


def add_parser(subparsers) -> None:
    """Add the ``bench`` subcommand to the CLI's subparsers."""
    from ..bench_options import add_parser as add

    add(subparsers, run)


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
