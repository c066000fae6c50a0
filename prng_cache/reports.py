"""What operations on nodes report, and how reports read: JSON values and
text lines. Only the CLI prints them; the plugin returns its run report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

#: node statuses after which a CLI command exits 0
OK_STATUSES = ("ok", "direct", "off")
#: node statuses under which a node serves at least part of what was staged
SERVING_STATUSES = ("ok", "fallback")


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


# ------------------------------------------------------------------ types
@dataclass
class NodeReport:
    """A node's stage, or why an operation did not reach the node."""

    host: str
    status: str  # ok | fallback | error | direct | off
    copied_files: int = 0
    copied_bytes: int = 0
    present_files: int = 0
    present_bytes: int = 0
    reason: str | None = None
    cache_root: str | None = None
    cache_id: str | None = None
    # coordinator path -> RAM path on this node, for every input it can serve
    staged: dict[str, str] = field(default_factory=dict)
    # coordinator path -> why this node will read it from its original path
    skipped: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def serving(self) -> bool:
        return self.status in SERVING_STATUSES

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "copied_files": self.copied_files,
            "copied_bytes": self.copied_bytes,
            "present_files": self.present_files,
            "present_bytes": self.present_bytes,
            "reason": self.reason,
            "cache_root": self.cache_root,
            "cache_id": self.cache_id,
            "skipped": dict(self.skipped),
            "warnings": list(self.warnings),
            "seconds": round(self.seconds, 4),
        }


@dataclass
class GcResult:
    """What gc removed (or would) on a node and what it kept."""

    removed: list[str] = field(default_factory=list)  # keys
    freed_bytes: int = 0
    kept_leased: int = 0
    kept: int = 0
    leftovers: list[str] = field(default_factory=list)  # ours, unlisted: removed (or would be)
    foreign: list[str] = field(default_factory=list)  # not ours: reported, never touched
    expired_leases: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "removed": len(self.removed),
            "removed_keys": self.removed,
            "freed_bytes": self.freed_bytes,
            "kept": self.kept,
            "kept_leased": self.kept_leased,
            "leftovers_removed": len(self.leftovers),
            "leftovers": self.leftovers,
            "foreign": self.foreign,
            "expired_leases": self.expired_leases,
        }


@dataclass
class VerifyResult:
    """What verify checked on a node and what it found."""

    checked: int = 0
    corrupt: dict[str, str] = field(default_factory=dict)  # key -> problem
    removed: list[str] = field(default_factory=list)
    untracked: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"checked": self.checked, "corrupt": self.corrupt, "removed": self.removed,
                "untracked": self.untracked}


# ------------------------------------------------------------------ stage
def missing_inputs_line(missing: Mapping[str, int], legacy: Mapping[str, str] | None = None,
                        *, show: int = 5) -> str | None:
    """One warning line naming the path-like arguments that exist nowhere
    on the coordinator (``missing``: path -> jobs); ``legacy``: aliased
    path -> the legacy path the jobs named. None when there are none."""
    if not missing:
        return None
    legacy = legacy or {}

    def one(p: str) -> str:
        named = f", named as {legacy[p]}" if p in legacy else ""
        return f"{p} ({missing[p]} job(s){named})"

    names = sorted(missing)
    text = "; ".join(one(p) for p in names[:show])
    if len(names) > show:
        text += f"; and {len(names) - show} more"
    return (f"{len(names)} input path(s) named by the jobs exist nowhere on the coordinator; "
            f"those arguments are left as given: {text}")


def no_inputs_line(jobs: int, base_dir: str) -> str:
    """The warning when a non-empty jobs file names no file that exists."""
    return (f"no input files found in the {jobs} job(s): no argument names a file that exists on the "
            f"coordinator (relative names are resolved against {base_dir}; see inputs.base_dir, "
            "inputs.path_aliases)")


def stage_doc(reports: Mapping[str, NodeReport], staged: int, skipped: Mapping[str, str],
              missing: Mapping[str, int] | None = None, found: int | None = None) -> dict[str, Any]:
    inputs: dict[str, Any] = {"staged": staged, "skipped": dict(skipped), "missing": dict(missing or {})}
    if found is not None:
        inputs["found"] = found
    return {"nodes": {h: r.to_dict() for h, r in reports.items()}, "inputs": inputs}


def copy_line(host: str, r: NodeReport) -> str:
    """One line per node with what a stage moved: bytes, time and rate (the
    figures a terminal's progress bar shows; the plugin logs it)."""
    line = f"{host}: {r.status}, copied {r.copied_files} file(s), {fmt_bytes(r.copied_bytes)}"
    if r.copied_bytes and r.seconds > 0:
        line += f" in {r.seconds:.1f} s ({fmt_bytes(r.copied_bytes / r.seconds)}/s)"
    return line + f"; {r.present_files} already present"


def stage_text(reports: Mapping[str, NodeReport], skipped: Mapping[str, str],
               missing: Mapping[str, int] | None = None) -> str:
    lines = []
    for h, r in reports.items():
        line = (f"{h:<16} {r.status:<8} copied {r.copied_files} file(s), {fmt_bytes(r.copied_bytes)}; "
                f"{r.present_files} already present")
        if r.reason:
            line += f"\n{'':<17}reason: {r.reason}"
        for w in r.warnings:
            line += f"\n{'':<17}note: {w}"
        lines.append(line)
    if skipped:
        lines.append("inputs not cached (jobs read them from their original paths):")
        lines += [f"  {p}: {why}" for p, why in sorted(skipped.items())]
    if missing:
        lines.append("inputs that exist nowhere on the coordinator (jobs keep these arguments):")
        lines += [f"  {p}: {n} job(s)" for p, n in sorted(missing.items())]
    return "\n".join(lines) or "no nodes"


def run_report(run_id: str, *, enabled: bool, reports: Mapping[str, NodeReport], rewritten: int,
               fallback: int, stage_seconds: float, released: Mapping[str, bool | str],
               aliased: int = 0, missing: Mapping[str, int] | None = None,
               error: str | None = None, reason: str | None = None) -> dict[str, Any]:
    """The plugin's report of one coordinator run (``coordinator_run_end``)."""
    copied = sum(r.copied_files for r in reports.values())
    present = sum(r.present_files for r in reports.values())
    report = {
        "plugin": "prng_cache",
        "run_id": run_id,
        "enabled": enabled,
        "nodes": {h: {k: v for k, v in r.to_dict().items()
                      if k in ("status", "copied_files", "copied_bytes", "present_files", "reason",
                               "cache_id", "warnings", "seconds")}
                  for h, r in reports.items()},
        # jobs sent at least one RAM copy
        "rewritten_jobs": rewritten,
        # jobs on a node that was to serve from RAM but could not serve at
        # least one of their cacheable inputs (they read it from its original
        # path: for an aliased argument, the node's own aliased path)
        "fallback_jobs": fallback,
        # jobs that had at least one legacy alias path sent to the node's own
        # aliased file (a direct node, or an input not in its RAM)
        "aliased_jobs": aliased,
        # path-like arguments that exist nowhere on the coordinator -> jobs
        # naming them (left as given; not fallback jobs)
        "missing_inputs": dict(missing or {}),
        "hit_rate": round(present / (present + copied), 3) if present + copied else None,
        "copied_bytes": sum(r.copied_bytes for r in reports.values()),
        # bytes already on the nodes that this run did not have to copy
        "bytes_saved": sum(r.present_bytes for r in reports.values()),
        "stage_seconds": round(stage_seconds, 3),
        "leases_released": dict(released),
    }
    if error:
        report["error"] = error
    if reason:
        report["reason"] = reason
    return report


# ------------------------------------------------------------ status, gc, verify
#: a node's result -> (JSON value, text lines, whether it is a failure)
Render = Callable[[Any], "tuple[Any, list[str], bool]"]


def node_results(results: Mapping[str, Any], render: Render) -> tuple[dict[str, Any], list[str], bool]:
    """One result per node as (JSON by host, text lines, any failure). A
    node not reached (a NodeReport: error, direct, off) shows its status and
    reason; an ``error`` is a failure."""
    doc: dict[str, Any] = {}
    lines: list[str] = []
    failed = False
    for host, r in results.items():
        if isinstance(r, NodeReport):
            doc[host] = {"status": r.status, "reason": r.reason, "cache_root": r.cache_root}
            lines.append(f"{host:<16} {r.status}" + (f": {r.reason}" if r.reason else ""))
            failed = failed or r.status == "error"
            continue
        value, text, bad = render(r)
        doc[host] = value
        lines += [f"{host:<16} {text[0]}", *text[1:]]
        failed = failed or bad
    return doc, lines, failed


def render_status(r: dict) -> tuple[dict, list[str], bool]:
    return r, [f"{r['entries']} entries, {fmt_bytes(r['bytes'])}, /dev/shm {r['shm_used_percent']}% used, "
               f"{len(r['leases'])} lease(s), cache_id {r['cache_id']}"], False


def render_gc(dry_run: bool) -> Render:
    verb = "would remove" if dry_run else "removed"

    def render(r: GcResult) -> tuple[dict, list[str], bool]:
        text = [f"{verb} {len(r.removed)} entries ({fmt_bytes(r.freed_bytes)}), kept {r.kept} "
                f"({r.kept_leased} leased), {verb} {len(r.leftovers)} leftover(s)"]
        if dry_run:  # name every item a real run would delete
            text += [f"  would remove {k}" for k in r.removed + r.leftovers]
        if r.foreign:
            text.append(f"  not prng-cache's, left alone: {', '.join(r.foreign)}")
        return r.to_dict(), text, False

    return render


def render_verify(r: VerifyResult) -> tuple[dict, list[str], bool]:
    text = [f"checked {r.checked}, corrupt {len(r.corrupt)}" + (f", removed {len(r.removed)}" if r.removed else "")]
    text += [f"  {k}: {why}" for k, why in r.corrupt.items()]
    return r.to_dict(), text, bool(r.corrupt)
