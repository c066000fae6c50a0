"""The human-readable table of a results document."""

from __future__ import annotations

NAMES = {"ssd": "SSD, page cache dropped", "ram": "RAM, staged by prng-cache", "ssd_warm": "SSD, in page cache"}


def _f(x, fmt: str = ".3f", none: str = "-") -> str:
    return none if x is None else format(x, fmt)


def _trial_table(trials: dict, load: dict, ratios: dict) -> list[str]:
    head = (f"  {'inputs':<27}{'n':>4}{'p50 s':>9}{'p95 s':>9}{'max s':>9}{'trials/min':>12}"
            f"{'load p50 ms':>13}{'p95 ms':>9}{'max ms':>9}")
    lines = [head, "  " + "-" * (len(head) - 2)]
    for c in ("ssd", "ram", "ssd_warm"):
        t, l = trials.get(c), load.get(c)
        if not t:
            continue
        fail = f"  ({t['failed']} failed)" if t.get("failed") else ""
        lines.append(f"  {NAMES[c]:<27}{t['n']:>4}{_f(t['p50_s']):>9}{_f(t['p95_s']):>9}{_f(t['max_s']):>9}"
                     f"{_f(t['trials_per_min'], '.1f'):>12}{_f(l['p50_ms'], '.2f'):>13}{_f(l['p95_ms'], '.2f'):>9}"
                     f"{_f(l['max_ms'], '.2f'):>9}{fail}")
    for key, name in (("ram_vs_ssd", "RAM / SSD dropped"), ("ram_vs_ssd_warm", "RAM / SSD in cache")):
        r = ratios.get(key)
        if r:
            lines.append(f"  {name:<27}{'':>4}{_f(r['trial_p50']):>9}{_f(r['trial_p95']):>9}{_f(r['trial_max']):>9}"
                         f"{_f(r['trials_per_min']):>12}{_f(r['load_p50']):>13}{_f(r['load_p95']):>9}"
                         f"{_f(r['load_max']):>9}")
    split = [f"{c} {_f(load[c].get('read_p50_ms'), '.2f')}/{_f(load[c].get('read_p95_ms'), '.2f')} + "
             f"{_f(load[c].get('parse_p50_ms'), '.2f')}/{_f(load[c].get('parse_p95_ms'), '.2f')}"
             for c in ("ssd", "ram", "ssd_warm") if c in load]
    lines.append(f"  load = raw read + parse, p50/p95 ms: {'; '.join(split)}")
    cpu = [f"{c} {_f(load[c].get('cpu_p50_ms'), '.2f')}" for c in ("ssd", "ram", "ssd_warm") if c in load]
    lines.append(f"  load CPU time p50 (ms): {', '.join(cpu)}; the rest of the load time is waiting "
                 f"(for the device or for a free core)")
    for key, name in (("ram_vs_ssd", "RAM / SSD dropped"), ("ram_vs_ssd_warm", "RAM / SSD in cache")):
        r = ratios.get(key)
        if r and r.get("trial_p50_paired") is not None:
            tr, lr = r.get("trial_p50_paired_range") or [None, None], r.get("load_p50_paired_range") or [None, None]
            lines.append(f"  {name + ', same round':<31}{_f(r['trial_p50_paired']):>9}"
                         f"   (rounds {_f(tr[0], '.2f')}..{_f(tr[1], '.2f')})"
                         f"{_f(r['load_p50_paired']):>16}   (rounds {_f(lr[0], '.2f')}..{_f(lr[1], '.2f')})")
    return lines


def render(doc: dict, files: list[str] | None = None) -> str:
    m = doc.get("machine", {})
    cd = m.get("cache_drop") or {}
    out = [f"prng-cache bench ({doc.get('profile')}) on {m.get('hostname')}: {m.get('cpus')} CPUs "
           f"({m.get('cpu_model')}), {m.get('mem_total_gb')} GB RAM, virtualization {m.get('virtualization')}",
           f"  SSD side: {m.get('ssd', {}).get('fs')} on {m.get('ssd', {}).get('device')} "
           f"(rotational={m.get('ssd', {}).get('rotational')}); RAM side: {m.get('shm', {}).get('fs')} /dev/shm"]
    if cd:
        res = cd.get("max_resident_after_drop")
        out.append(f"  page cache drop before SSD waves: {cd.get('method')}"
                   + (f" (max resident after drop {res:.0%})" if res is not None else ""))
    ts = doc.get("trial_setup")
    if "trials" in doc and ts:
        out += ["", f"Trials: fresh python processes, K={ts['concurrency']} at once, "
                    f"{ts['waves_per_condition']} waves per condition, "
                    f"{ts['compute_iters']} compute iterations (~{doc['options']['compute_ms']:g} ms on one idle core); "
                    f"ran on {m.get('trials_ran_on')}"]
        out += _trial_table(doc["trials"], doc["input_load"], doc.get("ratios", {}))
        out.append("  (ratios are RAM/SSD: below 1 = RAM faster; for trials/min above 1 = RAM faster; "
                   "'same round' = median over rounds of the ratio of wave medians run back to back)")
    if "busy_disk" in doc and ts:
        bw = doc.get("busy_disk_writer") or {}
        out += ["", f"Busy disk: ssd and ram waves alternating while writers load the SSD work directory "
                    f"({bw.get('appends_per_s')} fsynced appends/s, {bw.get('commits_per_s')} SQLite commits/s, "
                    f"{bw.get('seq_mb_per_s')} MB/s sequential" + (", O_DIRECT" if bw.get("seq_direct") else "") + ")"]
        out += _trial_table(doc["busy_disk_trials"], doc["busy_disk"], doc.get("busy_disk_ratios", {}))
        r = (doc.get("busy_disk_ratios") or {}).get("ram_vs_ssd") or {}
        out.append(f"  RAM / SSD under the busy disk: input load p95 {_f(r.get('load_p95'))}, "
                   f"raw read p95 {_f(r.get('read_p95'))}")
    if "trials_large" in doc and ts and "large" in ts:
        big = max(ts["large"]["input_bytes"].values())
        out += ["", f"Large scenario: the same trial plus json.load of a {big / 1e6:.0f} MB JSON, "
                    f"K={ts['large']['concurrency']}"]
        out += _trial_table(doc["trials_large"], doc["input_load_large"], doc.get("ratios_large", {}))
    st = doc.get("staging")
    if st:
        out += ["", f"Staging {st['files']} files, {st['bytes_per_node'] / 1e6:.2f} MB per node, to "
                    f"{len(st['nodes'])} node(s) [{st['mode']}: {st['note']}], median of {st['repeats']}",
                f"  prng-cache cold stage     {st['cold_s']:8.3f} s   (hashing {st['cold_hash_s']:.3f} s)"
                f"   bytes moved {st['bytes_cold']}",
                f"  prng-cache warm stage     {st['warm_s']:8.3f} s   (hashing {st['warm_hash_s']:.3f} s)"
                f"   bytes moved {st['bytes_warm']}",
                f"  shell preload (users')    {st['baseline_preload_s']:8.3f} s"
                f"   bytes moved {st.get('baseline_bytes_cold')}",
                f"  shell preload, warm       {st['baseline_preload_warm_s']:8.3f} s"
                f"   bytes moved {st.get('baseline_bytes_warm')}   (.ready sentinel found)"]
    hs = doc.get("hashing")
    if hs:
        out += ["", f"Hashing a {hs['file_bytes'] / 2**20:.0f} MiB file ({hs['unit']})",
                f"  page cache: plain read {hs['read_gbps']:.2f} GB/s, xxh3-128 {hs['xxh3_gbps']:.2f} GB/s "
                f"({hs['xxh3_vs_read']:.0%} of read)"
                + (f"; read into a new bytes object per chunk {hs['read_alloc_gbps']:.2f} GB/s"
                   if hs.get("read_alloc_gbps") is not None else ""),
                f"  cold:       plain read {hs['read_cold_gbps']:.2f} GB/s, xxh3-128 {hs['xxh3_cold_gbps']:.2f} GB/s",
                f"  memo hit: {hs['memo_hit_us']:.1f} us per file (stat + SQLite, file not read)"]
    for w in doc.get("warnings") or []:
        out.append(f"warning: {w}")
    out.append(f"\nelapsed {doc.get('elapsed_s')} s")
    if files:
        out += ["written:"] + [f"  {p}" for p in files]
    return "\n".join(out)
