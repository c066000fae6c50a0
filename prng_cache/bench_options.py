"""Options of ``prng-cache bench``, apart from the bench package so that
building the CLI's parser never imports the bench (or numpy/matplotlib):
``prng_cache.bench`` loads only when the subcommand runs."""

from __future__ import annotations

import argparse
import os

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
    g.add_argument("--skip", action="append", choices=("trials", "busy", "staging", "hashing"), default=[],
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


def add_parser(subparsers, func) -> None:
    """Add the ``bench`` subcommand to the CLI's subparsers; ``func(args)`` runs it."""
    p = subparsers.add_parser("bench", help="measure SSD vs RAM trial times, staging and hashing here",
                              description=DESCRIPTION)
    configure_parser(p)
    p.set_defaults(func=func)
