"""prng-cache command line: a thin layer over the library. Only this module prints."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from typing import Any, Callable

# The command only (never in a coordinator that imports the library): make
# paramiko's optional `invoke` import lazy before anything imports paramiko.
from ._deferred import defer_optional_imports

defer_optional_imports()

from . import __version__
from .bench_options import add_parser as add_bench_parser
from .cluster import Node, load_cluster, select_nodes
from .errors import PrngCacheError, UserError
from .jobs import load_jobs
from .maintenance import gc_node, status_node, verify_node
from .nodeops import on_nodes, run_on_node
from .policy import Policy, load_policy
from .progress import StageProgress
from .reports import (OK_STATUSES, NodeReport, Render, missing_inputs_line, no_inputs_line, node_results,
                      render_gc, render_status, render_verify, stage_doc, stage_text)
from .run import RunPlan, plan_run
from .staging import held_inputs
from .store import NodeStore

log = logging.getLogger("prng_cache")


def _common_options() -> argparse.ArgumentParser:
    """The options every node command takes (an argparse parent parser)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--config", default="distributed_config.json", metavar="FILE",
                   help="cluster file (default: ./distributed_config.json)")
    p.add_argument("--policy", metavar="FILE",
                   help="policy file (default: $PRNG_CACHE_POLICY, else ./cache_policy.yaml, else built-in)")
    p.add_argument("--cache-root", metavar="DIR", help="override cache_root for every node")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    return p


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="prng-cache", description="Content-addressed RAM cache for the input files of GPU jobs dispatched over SSH.")
    ap.add_argument("--version", action="version", version=f"prng-cache {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = [_common_options()]
    one_node = argparse.ArgumentParser(add_help=False)
    one_node.add_argument("--node", metavar="HOST", help="only this node")
    common_node = [*common, one_node]

    p = sub.add_parser("stage", parents=common_node, help="copy the jobs' missing inputs to every node")
    p.add_argument("--jobs-file", required=True, metavar="FILE")
    p.add_argument("--min-jobs", type=int, metavar="N",
                   help="stage inputs used by at least N jobs (default: policy inputs.min_jobs)")
    p.set_defaults(func=cmd_stage)

    p = sub.add_parser("rewrite", parents=common, help="print the jobs with args pointing at a node's RAM copies")
    p.add_argument("--jobs-file", required=True, metavar="FILE")
    p.add_argument("--node", required=True, metavar="HOST")
    p.set_defaults(func=cmd_rewrite)

    p = sub.add_parser("status", parents=common_node, help="entries, bytes, /dev/shm use, leases per node")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("gc", parents=common_node, help="evict entries by policy (never leased ones)")
    p.add_argument("--dry-run", action="store_true", help="say what would go, remove nothing")
    p.add_argument("--all", action="store_true", help="remove every unleased entry")
    p.set_defaults(func=cmd_gc)

    p = sub.add_parser("verify", parents=common_node, help="rehash every entry; exit 1 when corruption is found")
    p.add_argument("--fix", action="store_true", help="remove corrupt entries")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("doctor", parents=common_node,
                       help="check, before a real run, that adoption will work (nothing is written to nodes)")
    p.add_argument("--jobs-file", metavar="FILE", help="also check these jobs' inputs (no node contacted)")
    p.add_argument("--coordinator", metavar="FILE",
                   help="also check that this coordinator source calls the hooks (read, never run)")
    p.set_defaults(func=cmd_doctor)

    # the bench package (numpy, matplotlib) loads only when `bench` runs
    add_bench_parser(sub, cmd_bench)
    return ap


# ---------------------------------------------------------------- plumbing
class Context:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        overrides: dict[str, Any] = {}
        if args.cache_root:
            overrides["cache_root"] = args.cache_root
        self.policy: Policy = load_policy(args.policy, overrides=overrides)
        self.nodes: list[Node] = load_cluster(args.config)
        self.selected = select_nodes(self.nodes, getattr(args, "node", None))

    def each_node(self, fn: Callable[[NodeStore], Any]) -> dict[str, Any]:
        """fn's result per selected node (visited in parallel, as ``stage``
        does), or the NodeReport of a node that is not in cache mode or failed."""
        return on_nodes(self.selected, self.policy, fn)


def _emit(args: argparse.Namespace, doc: Any, text: str) -> None:
    if args.json:
        json.dump(doc, sys.stdout, indent=2, sort_keys=False)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(text.rstrip("\n") + "\n")


def _progress(args: argparse.Namespace) -> StageProgress | None:
    """Per-node bars on a terminal (never with --json: stdout is for the
    document and stderr's bars would only add noise to a pipeline); with -v
    elsewhere, one line per upload."""
    bars = not args.json and sys.stderr.isatty()
    if not (bars or args.verbose):
        return None
    return StageProgress(sys.stderr, bars=bars, lines=True)


# ---------------------------------------------------------------- commands
def _warn_inputs(plan: RunPlan, jobs: int) -> None:
    """Warning lines (stderr) for what the jobs name that is not there."""
    line = missing_inputs_line(plan.missing, plan.discovery.missing_aliases)
    if line:
        log.warning("%s", line)
    if jobs and not plan.found:
        log.warning("%s", no_inputs_line(jobs, plan.base_dir))


def cmd_stage(args: argparse.Namespace) -> int:
    ctx = Context(args)
    jobs = load_jobs(args.jobs_file)
    # the selected nodes are connected while the inputs are hashed
    plan = plan_run(jobs, ctx.nodes, ctx.policy, min_jobs=args.min_jobs, connect_early=ctx.selected)
    _warn_inputs(plan, len(jobs))
    progress = _progress(args)
    try:
        reports = plan.stage(ctx.selected, **({"progress": progress} if progress else {}))
    finally:
        if progress is not None:
            progress.close()
    # missing inputs are reported, never a reason to fail: the exit code says
    # whether the nodes could be served
    _emit(args, stage_doc(reports, len(plan.bundles), plan.skipped, plan.missing, plan.found),
          stage_text(reports, plan.skipped, plan.missing))
    return 0 if all(r.status in OK_STATUSES for r in reports.values()) else 1


def cmd_rewrite(args: argparse.Namespace) -> int:
    ctx = Context(args)
    node = ctx.selected[0]
    jobs = load_jobs(args.jobs_file)
    # map everything the node holds, however many jobs use it
    plan = plan_run(jobs, ctx.nodes, ctx.policy, min_jobs=1)
    _warn_inputs(plan, len(jobs))
    held = run_on_node(node, ctx.policy, lambda store: held_inputs(store, plan.bundles))
    mapping: dict[str, str] | None
    if isinstance(held, NodeReport):
        if held.status == "error":
            print(f"prng-cache: {node.hostname}: {held.reason}; jobs keep their original paths", file=sys.stderr)
        # off: exactly as given; direct or failed: aliased arguments name the node's own files
        mapping = None if held.status == "off" else plan.mapping_for(node, {})
    else:
        mapping = plan.mapping_for(node, held)
    out = [dict(job, args=(plan.args_for(job, mapping) if mapping else None) or job["args"]) for job in jobs]
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def _report_nodes(args: argparse.Namespace, results: dict[str, Any], render: Render, **extra: Any) -> int:
    """Print one result per node; exit 1 on any failure."""
    doc, lines, failed = node_results(results, render)
    _emit(args, {"nodes": doc, **extra}, "\n".join(lines))
    return int(failed)


def cmd_status(args: argparse.Namespace) -> int:
    return _report_nodes(args, Context(args).each_node(status_node), render_status)


def cmd_gc(args: argparse.Namespace) -> int:
    results = Context(args).each_node(lambda s: gc_node(s, dry_run=args.dry_run, remove_all=args.all))
    return _report_nodes(args, results, render_gc(args.dry_run), dry_run=args.dry_run)


def cmd_verify(args: argparse.Namespace) -> int:
    return _report_nodes(args, Context(args).each_node(lambda s: verify_node(s, fix=args.fix)), render_verify)


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import diagnose

    d = diagnose(config=args.config, policy_file=args.policy, cache_root=args.cache_root, node=args.node,
                 jobs_file=args.jobs_file, coordinator=args.coordinator)
    lines = []
    for c in d.checks:
        mark = "ok  " if c.ok and not c.warning else "note" if c.ok else "FAIL"
        lines.append(f"{mark}  {c.name}: {c.detail}")
        if c.fix:
            lines.append(f"      fix: {c.fix}")
    failed = sum(not c.ok for c in d.checks)
    lines.append("ready: adoption should work" if d.ready else f"not ready: {failed} check(s) failed")
    _emit(args, d.to_dict(), "\n".join(lines))
    for exc in d.errors:  # as every command words a malformed user file (exit 2)
        print(f"prng-cache: error: {exc}", file=sys.stderr)
    return d.exit_code


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run

    return run(args)


def _first_interrupt(signum, frame) -> None:
    # the first Ctrl-C interrupts; later ones are ignored, so the clean-up
    # the first one started (bounded in time) finishes without a traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _first_interrupt)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="prng-cache: %(message)s", stream=sys.stderr)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"prng-cache: error: {exc}", file=sys.stderr)
        return 2
    except PrngCacheError as exc:
        print(f"prng-cache: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("prng-cache: interrupted; uploads stopped, this run's temporaries removed "
              "from every node that could be reached", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `prng-cache rewrite ... | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
