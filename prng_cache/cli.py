"""prng-cache command line: a thin layer over the library. Only this module prints."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from typing import Any, Callable

from . import __version__
from .cluster import Node, base_dir, load_cluster, select_nodes
from .errors import PrngCacheError, UserError
from .hashing import HashMemo
from .inputs import Bundle, Discovery, discover
from .jobs import job_args, job_expected_output, load_jobs
from .policy import Policy, load_policy
from .rewrite import rewrite_args
from .staging import CacheIdRecord, NodeReport, fmt_bytes, held_inputs, run_on_node, stage_cluster
from .store import NodeStore

log = logging.getLogger("prng_cache")

OK_STATUSES = ("ok", "direct", "off")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="distributed_config.json", metavar="FILE",
                   help="cluster file (default: ./distributed_config.json)")
    p.add_argument("--policy", metavar="FILE",
                   help="policy file (default: $PRNG_CACHE_POLICY, else ./cache_policy.yaml, else built-in)")
    p.add_argument("--cache-root", metavar="DIR", help="override cache_root for every node")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="prng-cache", description="Content-addressed RAM cache for the input files of GPU jobs dispatched over SSH.")
    ap.add_argument("--version", action="version", version=f"prng-cache {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("stage", help="copy the jobs' missing inputs to every node")
    _common(p)
    p.add_argument("--jobs-file", required=True, metavar="FILE")
    p.add_argument("--min-jobs", type=int, metavar="N",
                   help="stage inputs used by at least N jobs (default: policy inputs.min_jobs)")
    p.add_argument("--node", metavar="HOST", help="only this node")
    p.set_defaults(func=cmd_stage)

    p = sub.add_parser("rewrite", help="print the jobs with args pointing at a node's RAM copies")
    _common(p)
    p.add_argument("--jobs-file", required=True, metavar="FILE")
    p.add_argument("--node", required=True, metavar="HOST")
    p.set_defaults(func=cmd_rewrite)

    p = sub.add_parser("status", help="entries, bytes, /dev/shm use, leases per node")
    _common(p)
    p.add_argument("--node", metavar="HOST")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("gc", help="evict entries by policy (never leased ones)")
    _common(p)
    p.add_argument("--node", metavar="HOST")
    p.add_argument("--dry-run", action="store_true", help="say what would go, remove nothing")
    p.add_argument("--all", action="store_true", help="remove every unleased entry")
    p.set_defaults(func=cmd_gc)

    p = sub.add_parser("verify", help="rehash every entry; exit 1 when corruption is found")
    _common(p)
    p.add_argument("--node", metavar="HOST")
    p.add_argument("--fix", action="store_true", help="remove corrupt entries")
    p.set_defaults(func=cmd_verify)

    from .bench import add_parser as add_bench_parser  # numpy/matplotlib load only when it runs

    add_bench_parser(sub)
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

    def discover(self, jobs: list, min_jobs: int | None) -> Discovery:
        return discover(jobs, self.policy.inputs, base_dir(self.policy, self.nodes),
                        memo=HashMemo(), min_jobs=min_jobs)

    def each_node(self, fn: Callable[[NodeStore], Any]) -> dict[str, Any]:
        """fn's result per selected node, or the NodeReport of a node that is
        not in cache mode or failed."""
        return {n.hostname: run_on_node(n, self.policy, fn) for n in self.selected}


def _emit(args: argparse.Namespace, doc: Any, text: str) -> None:
    if args.json:
        json.dump(doc, sys.stdout, indent=2, sort_keys=False)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(text.rstrip("\n") + "\n")


def _progress(args: argparse.Namespace) -> Callable[[str, str, dict], None]:
    def show(host: str, event: str, detail: dict) -> None:
        if event == "upload":
            print(f"  {host}: copying {detail['name']} ({fmt_bytes(detail['bytes'])})", file=sys.stderr)
    return show if (args.verbose or (not args.json and sys.stderr.isatty())) else (lambda *a: None)


# ---------------------------------------------------------------- commands
def cmd_stage(args: argparse.Namespace) -> int:
    ctx = Context(args)
    jobs = load_jobs(args.jobs_file)
    disc = ctx.discover(jobs, args.min_jobs)
    bundles = _ordered(disc)
    reports = stage_cluster(ctx.selected, lambda node: bundles, ctx.policy,
                            progress=_progress(args), ids=CacheIdRecord())
    doc = {"nodes": {h: r.to_dict() for h, r in reports.items()},
           "inputs": {"staged": len(bundles), "skipped": disc.skipped}}
    lines = []
    for h, r in reports.items():
        line = (f"{h:<16} {r.status:<8} copied {r.copied_files} file(s), {fmt_bytes(r.copied_bytes)}; "
                f"{r.present_files} already present")
        if r.reason:
            line += f"\n{'':<17}reason: {r.reason}"
        for w in r.warnings:
            line += f"\n{'':<17}note: {w}"
        lines.append(line)
    if disc.skipped:
        lines.append("inputs not cached (jobs read them from their original paths):")
        lines += [f"  {p}: {why}" for p, why in sorted(disc.skipped.items())]
    _emit(args, doc, "\n".join(lines) or "no nodes")
    return 0 if all(r.status in OK_STATUSES for r in reports.values()) else 1


def _ordered(disc: Discovery) -> list[Bundle]:
    """Most shared first: if space runs out, the inputs most jobs read win."""
    return sorted(disc.bundles.values(), key=lambda b: (-len(disc.users.get(b.path, ())), b.path))


def cmd_rewrite(args: argparse.Namespace) -> int:
    ctx = Context(args)
    node = ctx.selected[0]
    jobs = load_jobs(args.jobs_file)
    # map everything the node holds, however many jobs use it
    disc = ctx.discover(jobs, min_jobs=1)
    bundles = list(disc.bundles.values())
    held = run_on_node(node, ctx.policy, lambda store: held_inputs(store, bundles))
    staged: dict[str, str] = {}
    if isinstance(held, NodeReport):
        if held.status == "error":
            print(f"prng-cache: {node.hostname}: {held.reason}; jobs keep their original paths", file=sys.stderr)
    else:
        staged = held
    out = []
    root = base_dir(ctx.policy, ctx.nodes)
    for job in jobs:
        new = dict(job)
        new["args"] = rewrite_args(job_args(job), staged=staged, base_dir=root,
                                   output_flags=ctx.policy.inputs.output_flags,
                                   expected_output=job_expected_output(job))
        out.append(new)
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def _report_nodes(args: argparse.Namespace, results: dict[str, Any],
                  render: Callable[[Any], tuple[Any, list[str], bool]], **extra: Any) -> int:
    """Print one result per node; a node not reached (a NodeReport: error,
    direct, off) prints its status and reason. ``render(result)`` returns
    (JSON value, text lines, whether it is a failure). Exit 1 on any failure."""
    doc, lines, rc = {}, [], 0
    for host, r in results.items():
        if isinstance(r, NodeReport):
            doc[host] = {"status": r.status, "reason": r.reason, "cache_root": r.cache_root}
            lines.append(f"{host:<16} {r.status}" + (f": {r.reason}" if r.reason else ""))
            rc = rc or int(r.status == "error")
            continue
        value, text, failed = render(r)
        doc[host] = value
        lines += [f"{host:<16} {text[0]}", *text[1:]]
        rc = rc or int(failed)
    _emit(args, {"nodes": doc, **extra}, "\n".join(lines))
    return rc


def cmd_status(args: argparse.Namespace) -> int:
    from .gc import status_node

    def render(r: dict) -> tuple[dict, list[str], bool]:
        return r, [f"{r['entries']} entries, {fmt_bytes(r['bytes'])}, /dev/shm {r['shm_used_percent']}% used, "
                   f"{len(r['leases'])} lease(s), cache_id {r['cache_id']}"], False

    return _report_nodes(args, Context(args).each_node(status_node), render)


def cmd_gc(args: argparse.Namespace) -> int:
    from .gc import gc_node

    verb = "would remove" if args.dry_run else "removed"

    def render(r) -> tuple[dict, list[str], bool]:
        text = [f"{verb} {len(r.removed)} entries ({fmt_bytes(r.freed_bytes)}), kept {r.kept} "
                f"({r.kept_leased} leased), {verb} {len(r.leftovers)} leftover(s)"]
        if args.dry_run:  # name every item a real run would delete
            text += [f"  would remove {k}" for k in r.removed + r.leftovers]
        if r.foreign:
            text.append(f"  not prng-cache's, left alone: {', '.join(r.foreign)}")
        return r.to_dict(), text, False

    results = Context(args).each_node(lambda s: gc_node(s, dry_run=args.dry_run, remove_all=args.all))
    return _report_nodes(args, results, render, dry_run=args.dry_run)


def cmd_verify(args: argparse.Namespace) -> int:
    from .gc import verify_node

    def render(r) -> tuple[dict, list[str], bool]:
        text = [f"checked {r.checked}, corrupt {len(r.corrupt)}" + (f", removed {len(r.removed)}" if r.removed else "")]
        text += [f"  {k}: {why}" for k, why in r.corrupt.items()]
        return r.to_dict(), text, bool(r.corrupt)

    return _report_nodes(args, Context(args).each_node(lambda s: verify_node(s, fix=args.fix)), render)


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
