"""The benchmark runs on tiny sizes and produces well-formed output.

No figure is asserted here: figures are measured, and a timed assertion on a
shared 2-core machine would only measure the neighbours.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("numpy")
pytest.importorskip("matplotlib")

from prng_cache import bench  # noqa: E402
from prng_cache.bench import report  # noqa: E402
from prng_cache.bench.trials import percentile, ratio  # noqa: E402

CONDITIONS = ("ssd", "ram", "ssd_warm")
NUM = (int, float)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-out")
    work = tmp_path_factory.mktemp("bench-work")
    argv = [sys.executable, "-m", "prng_cache.bench", "--quick", "--json", "--quiet",
            "--trials", "1", "--concurrency", "2", "--compute-ms", "10", "--hash-mb", "2",
            "--npz-kb", "8", "--train-kb", "2", "--holdout-kb", "1",
            # fadvise: do not empty the whole machine's page cache from a test
            "--cache-drop", "fadvise", "--out", str(out), "--workdir", str(work), "--tag", "tiny"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout), out, work


def test_document_shape(tiny_run):
    doc, _, _ = tiny_run
    for c in ("ssd", "ram"):
        t = doc["trials"][c]
        assert t["n"] == 2 and t["failed"] == 0
        for k in ("p50_s", "p95_s", "max_s", "trials_per_min"):
            assert isinstance(t[k], NUM) and t[k] > 0, (c, k)
        assert t["p50_s"] <= t["p95_s"] <= t["max_s"]
        lo = doc["input_load"][c]
        for k in ("p50_ms", "p95_ms", "max_ms"):
            assert isinstance(lo[k], NUM) and lo[k] > 0, (c, k)
    st = doc["staging"]
    for k in ("cold_s", "warm_s", "baseline_preload_s"):
        assert isinstance(st[k], NUM) and st[k] > 0, k
    assert isinstance(st["bytes_cold"], int) and st["bytes_cold"] > 0
    assert st["bytes_warm"] == 0
    assert st["bytes_cold"] == st["bytes_per_node"] * len(st["nodes"])
    assert st["mode"] in ("ssh-embedded", "local")
    h = doc["hashing"]
    for k in ("xxh3_gbps", "read_gbps", "memo_hit_us"):
        assert isinstance(h[k], NUM) and h[k] > 0, k
    assert h["memo_reads_on_hit"] == 0
    m = doc["machine"]
    assert m["cpus"] and m["ssd"]["fs"] and m["cache_drop"]["method"] == "fadvise"
    for key in ("ram_vs_ssd", "ram_vs_ssd_warm"):
        assert set(doc["ratios"][key]) >= {"trial_p50", "trials_per_min", "load_p50"}
    assert "trials_large" not in doc  # --quick: no large JSON
    for c in CONDITIONS:  # the quiet load split into raw read and parse
        lo = doc["input_load"][c]
        for k in ("read_p50_ms", "read_p95_ms", "parse_p50_ms", "parse_p95_ms"):
            assert isinstance(lo[k], NUM) and lo[k] >= 0, (c, k)


def test_busy_disk_shape(tiny_run):
    doc, _, _ = tiny_run
    assert set(doc["busy_disk"]) == {"ssd", "ram"}
    assert set(doc["busy_disk_trials"]) == {"ssd", "ram"}
    for c in ("ssd", "ram"):
        b = doc["busy_disk"][c]
        for k in ("p50_ms", "p95_ms", "max_ms", "read_p95_ms"):
            assert isinstance(b[k], NUM) and b[k] >= 0, (c, k)
        assert b["p50_ms"] <= b["p95_ms"] <= b["max_ms"]
        assert b["read_p95_ms"] <= b["max_ms"]
        t = doc["busy_disk_trials"][c]
        assert set(t) == set(doc["trials"][c])  # the same shape as "trials"
        assert t["n"] == 2 and t["failed"] == 0
        assert isinstance(t["p50_s"], NUM) and t["p50_s"] > 0
        s = doc["samples"]["busy_disk_trials"][c]
        assert len(s["load_ms"]) == len(s["read_ms"]) == 2
    r = doc["busy_disk_ratios"]["ram_vs_ssd"]
    assert set(r) >= {"load_p50", "load_p95", "read_p95"}
    w = doc["busy_disk_writer"]
    assert not w["errors"] and w["appends"] > 0 and w["commits"] > 0
    assert not os.path.exists(w["dir"])  # the writer's files went with the work directory


def test_busy_writer_stops_and_cleans_up(tmp_path):
    import threading
    import time

    from prng_cache.bench.worker import busy_disk

    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    t = time.monotonic()
    stats = busy_disk(str(tmp_path), stop, seq_mb=4)
    assert time.monotonic() - t < 30
    assert stats["appends"] > 0 and stats["commits"] > 0 and stats["seq_mb"] > 0 and not stats["errors"]
    assert list(tmp_path.iterdir()) == []


def test_results_file_and_plots_written(tiny_run):
    doc, out, work = tiny_run
    results = out / "tiny.json"
    assert json.loads(results.read_text())["trials"] == doc["trials"]
    assert doc["files"]["results"] == str(results)
    names = sorted(os.path.basename(p) for p in doc["files"]["plots"])
    assert names == ["tiny-busy-disk.png", "tiny-input-load.png", "tiny-staging.png", "tiny-trials.png"]
    for p in doc["files"]["plots"]:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # generated inputs and RAM copies are cleaned up
    assert list(work.iterdir()) == []
    assert not [n for n in os.listdir("/dev/shm") if n.startswith("prng-bench-")]


def test_table_renders(tiny_run):
    doc, _, _ = tiny_run
    text = report.render(doc)
    for needle in ("SSD, page cache dropped", "RAM, staged by prng-cache", "RAM / SSD dropped",
                   "prng-cache warm stage", "shell preload", "xxh3-128", "Busy disk", "raw read + parse"):
        assert needle in text


def test_add_parser_wires_run():
    ap = argparse.ArgumentParser(prog="prng-cache")
    sub = ap.add_subparsers(dest="command")
    bench.add_parser(sub)
    args = ap.parse_args(["bench", "--quick", "--json", "--out", "x", "--concurrency", "3",
                          "--config", "distributed_config.json", "--node", "rig-a"])
    assert args.func is bench.run
    assert (args.quick, args.json, args.out, args.concurrency, args.hosts) == (True, True, "x", 3, ["rig-a"])
    with pytest.raises(SystemExit):
        ap.parse_args(["bench", "--concurrency", "0"])


def test_bad_config_is_a_usage_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "prng_cache.bench", "--quick", "--config",
                        str(tmp_path / "missing.json"), "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "not found" in r.stderr and r.stdout == ""


def test_percentile_and_ratio():
    assert percentile([], 50) is None
    assert percentile([3.0], 95) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([0.0, 10.0], 95) == pytest.approx(9.5)
    assert ratio(1.0, 2.0) == 0.5 and ratio(1.0, 0) is None and ratio(None, 1.0) is None
