"""PNG plots of a results document (matplotlib, Agg backend)."""

from __future__ import annotations

import os

LABELS = {"ssd": "SSD\n(page cache dropped)", "ram": "RAM\n(prng-cache staged)", "ssd_warm": "SSD\n(in page cache)"}
COLORS = {"ssd": "#c0504d", "ram": "#4f81bd", "ssd_warm": "#9bbb59"}
ORDER = ("ssd", "ram", "ssd_warm")


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.titlesize": 11, "figure.dpi": 110})
    return plt


def _subtitle(doc: dict) -> str:
    m = doc.get("machine", {})
    return (f"{m.get('hostname', '?')}: {m.get('cpus', '?')} CPUs, {m.get('mem_total_gb', '?')} GB RAM, "
            f"SSD side {m.get('ssd', {}).get('fs', '?')} on {m.get('ssd', {}).get('device', '?')}, "
            f"{doc.get('profile', '')} run")


def _box(ax, data: dict[str, list[float]], ylabel: str, title: str, log: bool = False) -> None:
    import random

    keys = [k for k in ORDER if data.get(k)]
    vals = [data[k] for k in keys]
    bp = ax.boxplot(vals, whis=(5, 95), showfliers=False, patch_artist=True, widths=0.5)
    for patch, k in zip(bp["boxes"], keys):
        patch.set_facecolor(COLORS[k])
        patch.set_alpha(0.35)
    for med in bp["medians"]:
        med.set_color("black")
    rnd = random.Random(1)
    for i, (k, v) in enumerate(zip(keys, vals), start=1):
        xs = [i + rnd.uniform(-0.15, 0.15) for _ in v]
        ax.scatter(xs, v, s=12, color=COLORS[k], alpha=0.8, zorder=3, edgecolors="none")
    ax.set_xticks(range(1, len(keys) + 1))
    ax.set_xticklabels([f"{LABELS[k]}\nn={len(data[k])}" for k in keys])
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if log:
        ax.set_yscale("log")
    else:
        ax.set_ylim(bottom=0)
    ax.grid(axis="y", alpha=0.3)


def _needs_log(data: dict[str, list[float]]) -> bool:
    allv = [x for v in data.values() for x in v if x > 0]
    return bool(allv) and max(allv) / min(allv) > 30


PANELS = (("trials", "scorer trial: npz + 2 histories"), ("trials_large", "large: + one big JSON"))


def _per_scenario(doc: dict, path: str, suptitle: str, draw) -> str | None:
    """One box panel per trial scenario present; ``draw(ax, key, title)``."""
    samples = doc.get("samples", {})
    panels = [(k, t) for k, t in PANELS if k in samples]
    if not panels:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.8), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        draw(ax, samples[key], key, title)
    fig.suptitle(suptitle, fontsize=11)
    fig.text(0.5, 0.005, _subtitle(doc), ha="center", fontsize=8, color="#555555")
    fig.tight_layout(rect=(0, 0.03, 1, 0.95))
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_trials(doc: dict, path: str) -> str | None:
    setup = doc.get("trial_setup", {})

    def draw(ax, samples: dict, key: str, title: str) -> None:
        data = {c: samples[c]["total_s"] for c in ORDER if c in samples}
        k = setup.get("large", {}).get("concurrency") if key == "trials_large" else setup.get("concurrency")
        _box(ax, data, "trial wall time, spawn to exit (s)", f"{title}\n(K={k} concurrent fresh processes)")

    return _per_scenario(doc, path, "Trial time: SSD vs RAM inputs (box 25-75 %, whiskers 5-95 %, dots = trials)",
                         draw)


def plot_input_load(doc: dict, path: str) -> str | None:
    def draw(ax, samples: dict, key: str, title: str) -> None:
        data = {c: samples[c]["load_ms"] for c in ORDER if c in samples}
        unit = "ms"
        if max((x for v in data.values() for x in v), default=0) > 5000:
            data = {c: [x / 1000.0 for x in v] for c, v in data.items()}
            unit = "s"
        log = _needs_log(data)
        _box(ax, data, f"input load time ({unit})" + (", log scale" if log else ""), title, log=log)

    return _per_scenario(doc, path, "Input load inside the trial: numpy.load + json.load "
                                    "(box 25-75 %, whiskers 5-95 %)", draw)


def plot_busy_disk(doc: dict, path: str) -> str | None:
    """Busy disk: input load (read + parse), its raw read part and trial time,
    SSD vs RAM, next to the quiet-disk read and parse for comparison."""
    busy = doc.get("samples", {}).get("busy_disk_trials")
    if not busy:
        return None
    quiet = doc.get("samples", {}).get("trials", {})
    plt = _plt()
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.8), squeeze=False)
    axes = list(axes[0])
    keys = [c for c in ORDER if c in busy]
    panels = [
        ({c: busy[c]["load_ms"] for c in keys}, "input load, read + parse (ms)", "busy disk: input load"),
        ({c: busy[c].get("read_ms", []) for c in keys}, "raw open + read (ms)", "busy disk: raw read part"),
        ({c: busy[c]["total_s"] for c in keys}, "trial wall time, spawn to exit (s)", "busy disk: trial time"),
    ]
    for ax, (data, ylabel, title) in zip(axes, panels):
        data = {c: v for c, v in data.items() if v}
        if not data:
            ax.set_axis_off()
            continue
        log = _needs_log(data)
        _box(ax, data, ylabel + (", log scale" if log else ""), title, log=log)
    # quiet vs busy, read and parse p50/p95 as bars: what the cache can and cannot change
    ax = axes[3]
    bars = []
    for cond_name, src in (("quiet", doc.get("input_load", {})), ("busy", doc.get("busy_disk", {}))):
        for c in ("ssd", "ram"):
            lo = src.get(c) or {}
            bars.append((f"{cond_name}\n{c.upper()}", lo.get("read_p95_ms"), lo.get("parse_p95_ms"), COLORS[c]))
    xs = range(len(bars))
    ax.bar(xs, [b[1] or 0 for b in bars], color=[b[3] for b in bars], label="raw read p95")
    ax.bar(xs, [b[2] or 0 for b in bars], bottom=[b[1] or 0 for b in bars], color="#bbbbbb", label="parse p95")
    ax.set_xticks(list(xs))
    ax.set_xticklabels([b[0] for b in bars])
    ax.set_ylabel("ms (p95 of each part, stacked)")
    ax.set_title("read (cache changes it) vs parse (it does not)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    r = (doc.get("busy_disk_ratios") or {}).get("ram_vs_ssd") or {}
    fig.suptitle("Busy disk: SSD vs RAM inputs while writers load the SSD (fsynced appends, SQLite commits, "
                 f"sequential write); RAM/SSD load p95 {r.get('load_p95')}, read p95 {r.get('read_p95')}",
                 fontsize=11)
    fig.text(0.5, 0.005, _subtitle(doc), ha="center", fontsize=8, color="#555555")
    fig.tight_layout(rect=(0, 0.03, 1, 0.95))
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_staging(doc: dict, path: str) -> str | None:
    st = doc.get("staging")
    hs = doc.get("hashing")
    if not st and not hs:
        return None
    plt = _plt()
    n = (1 if st else 0) + (1 if hs else 0)
    fig, axes = plt.subplots(1, n, figsize=(6.4 * n, 4.4), squeeze=False)
    axes = list(axes[0])
    if st:
        ax = axes.pop(0)
        rows = [("prng-cache cold", st["cold_s"], st["bytes_cold"], "#4f81bd"),
                ("prng-cache warm", st["warm_s"], st["bytes_warm"], "#9dc3e6"),
                ("shell preload cold", st["baseline_preload_s"], st.get("baseline_bytes_cold"), "#c0504d"),
                ("shell preload warm\n(.ready checks)", st["baseline_preload_warm_s"],
                 st.get("baseline_bytes_warm"), "#e6a5a3")]
        ys = list(range(len(rows)))[::-1]
        ax.barh(ys, [r[1] for r in rows], color=[r[3] for r in rows])
        ax.set_yticks(ys)
        ax.set_yticklabels([r[0] for r in rows])
        top = max(r[1] for r in rows) or 1.0
        for y, r in zip(ys, rows):
            moved = "" if r[2] is None else f"  ({r[2] / 1e6:.2f} MB moved)"
            ax.text(r[1] + top * 0.01, y, f"{r[1]:.3f} s{moved}", va="center", fontsize=9)
        ax.set_xlim(0, top * 1.6)
        ax.set_xlabel("wall time (s), median of repeats")
        ax.set_title(f"Staging {st['files']} files ({st['bytes_per_node'] / 1e6:.2f} MB) "
                     f"to {len(st['nodes'])} node(s)\nmode: {st['mode']}")
        ax.grid(axis="x", alpha=0.3)
    if hs:
        ax = axes.pop(0)
        labels = ["plain read\n(page cache)", "xxh3-128\n(page cache)", "plain read\n(cold)", "xxh3-128\n(cold)"]
        vals = [hs["read_gbps"], hs["xxh3_gbps"], hs["read_cold_gbps"], hs["xxh3_cold_gbps"]]
        cols = ["#7f7f7f", "#4f81bd", "#bfbfbf", "#9dc3e6"]
        ax.bar(range(4), vals, color=cols)
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=9)
        ax.set_xticks(range(4))
        ax.set_xticklabels(labels)
        ax.set_ylabel("throughput (GB/s = 1e9 bytes/s)")
        ax.set_title(f"Hashing a {hs['file_bytes'] / 2**20:.0f} MiB file; memo hit {hs['memo_hit_us']:.0f} µs/file")
        ax.set_ylim(0, max(vals) * 1.15)
        ax.grid(axis="y", alpha=0.3)
    fig.text(0.5, 0.005, _subtitle(doc), ha="center", fontsize=8, color="#555555")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return path


def write_plots(doc: dict, out_dir: str, prefix: str) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    made = []
    for name, fn in (("trials", plot_trials), ("input-load", plot_input_load), ("busy-disk", plot_busy_disk),
                     ("staging", plot_staging)):
        p = fn(doc, os.path.join(out_dir, f"{prefix}-{name}.png"))
        if p:
            made.append(p)
    return made
