#!/usr/bin/env python3
"""Soak test: many coordinator runs back to back with random faults.

Not part of CI; run on demand (as root, like the SSH tests)::

    python3 benchmarks/soak.py --runs 20 [--seed 7] [--out benchmarks/results/soak.json]

It starts an embedded cluster (``prng_cache.testing.sshcluster.SSHCluster``:
real sshd nodes, each with a private 64 MiB tmpfs), and runs the test
coordinator (``tests/e2e/scripts_coordinator.py``, the users' contract, with
prng-cache registered as its plugin) N times. Before or during each run it
injects random faults:

- ``stop``             a node's sshd is down for the whole run
- ``kill_mid_upload``  a node's sshd is killed while a file is being uploaded
- ``wipe_before``      a node's tmpfs is remounted before the run (reboot)
- ``wipe_after_stage`` ... or between the stage and the first job
- ``full``             a node's tmpfs is filled by another program
- ``full_mid_upload``  ... while a file is being uploaded (a real ENOSPC)
- ``corrupt_manifest`` a node's manifest is overwritten with garbage
- ``stale_lock``       a manifest lock left by a killed coordinator
- ``host_key``         a node's host key changes (refused until trusted again)
- ``gc_during_run``    ``gc --all`` runs while the run holds its leases

and, between runs, regenerates some inputs (so stale copies would show).
After every run it checks that every job succeeded and read exactly the bytes
of its source files (the worker reports a sha256 of what it read), that no job
attempt failed on a node unless an injected fault explains it (node down, host
key changed, RAM wiped after the stage), that released leases are gone, and
that each node's manifest matches its disk: every entry present with the
recorded content. Directories the manifest does not list (a killed stager's,
or those of a manifest that was reset) are never served and are removed by
``prng-cache gc``; the soak runs that gc every 5th run and after the last, and
then there must be none. It prints one line per run and a summary, and writes
``benchmarks/results/soak.json``. Exit status 1 when any problem was found.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import importlib
import json
import logging
import os
import random
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
E2E = REPO / "tests" / "e2e"
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from prng_cache.hashing import Hasher  # noqa: E402
from prng_cache.hookspecs import hookimpl  # noqa: E402
from prng_cache.manifest import MANIFEST_NAME, decode, is_key  # noqa: E402
from prng_cache.testing.faults import Tap  # noqa: E402
from prng_cache.testing.sshcluster import SSHCluster  # noqa: E402
from prng_cache.transport.ssh import SSHTransport  # noqa: E402

FAULTS = ("stop", "kill_mid_upload", "wipe_before", "wipe_after_stage", "full", "full_mid_upload",
          "corrupt_manifest", "stale_lock", "host_key", "gc_during_run")
EXPECTED_JOB_FAILURES = ("stop", "kill_mid_upload", "host_key", "wipe_after_stage")
REMOTES = ("rig-a", "rig-b", "rig-c")
q = shlex.quote


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Soak:
    def __init__(self, workdir: Path, seed: int, tmpfs: str):
        self.rng = random.Random(seed)
        self.workdir = workdir
        self.cluster = SSHCluster(workdir / "cluster", len(REMOTES), tmpfs_size=tmpfs)
        self.work = workdir / "work"
        self.problems: list[dict] = []
        self.runs: list[dict] = []
        self.fault_counts = {f: 0 for f in FAULTS}
        self.log_records = _Collect()
        self.gc_every = 5
        self.total_runs = 0

    # ---------------------------------------------------------------- setup
    def root(self, host: str) -> str:
        return f"{self.cluster[host].shm}/prng"

    def start(self) -> None:
        # prng-cache's warnings (the faults' reasons) go to the run record,
        # paramiko's socket noise nowhere
        logging.getLogger("paramiko").setLevel(logging.CRITICAL)
        log = logging.getLogger("prng_cache")
        log.addHandler(self.log_records)
        log.propagate = False
        self.cluster.start()
        (self.work / "data").mkdir(parents=True)
        for f in ("distributed_worker.py", "trial_worker.py"):
            shutil.copy(E2E / f, self.work / f)
        self.regenerate(force=True)
        self.config = self.cluster.write_distributed_config(
            self.workdir / "distributed_config.json", list(self.cluster), script_path=str(self.work),
            python_env=sys.executable, include_localhost=True)
        self.policy = self.workdir / "cache_policy.yaml"
        self.policy.write_text(yaml.safe_dump({
            "inputs": {"companions": {"*survivors*.npz": ["optimal_window_config.json"]}},
            "transport": {"ssh_config": str(self.cluster.ssh_config),
                          "known_hosts": str(self.cluster.known_hosts), "connect_timeout": "3s"},
            "gc": {"stale_lock": "2s", "stale_temp": "1s", "lease_ttl": "10m"},
            "nodes": {h: {"cache_root": self.root(h)} for h in REMOTES},
        }))
        os.environ["PRNG_CACHE_POLICY"] = str(self.policy)
        os.environ["XDG_CACHE_HOME"] = str(self.workdir / "xdg")
        for k in ("PRNG_CACHE", "USE_RAMDISK", "PRNG_CACHE_ROOT"):
            os.environ.pop(k, None)
        sys.path.insert(0, str(E2E))
        import scripts_coordinator

        self.mod = importlib.reload(scripts_coordinator)
        if self.mod.plugins is None:
            raise SystemExit("prng-cache is not installed (pip install -e .): no plugin to soak")

    def regenerate(self, force: bool = False) -> list[str]:
        """Rewrite some inputs with new content (as the pipeline's steps do)."""
        d = self.work / "data"
        changed = []
        if force or self.rng.random() < 0.3:
            size = self.rng.choice([40_000, 300_000, 1_500_000])
            (d / "bidirectional_survivors.npz").write_bytes(os.urandom(size))
            changed.append("bidirectional_survivors.npz")
        if force or self.rng.random() < 0.15:
            (d / "optimal_window_config.json").write_text(json.dumps({"window": self.rng.randint(1, 99)}))
            changed.append("optimal_window_config.json")
        if force or self.rng.random() < 0.3:
            n = self.rng.randint(1000, 6000)
            (self.work / "train_history.json").write_text(json.dumps(list(range(n))))
            changed.append("train_history.json")
        if force or self.rng.random() < 0.2:
            (d / "holdout_history.json").write_text(json.dumps([self.rng.random() for _ in range(500)]))
            changed.append("holdout_history.json")
        if force or self.rng.random() < 0.2:
            self._new_big_block()
            changed.append("big_block.json")
        return changed

    def _new_big_block(self) -> None:
        """Big enough for the disk-full and mid-upload faults to bite."""
        (self.work / "data" / "big_block.json").write_bytes(os.urandom(self.rng.choice([6, 12, 20]) << 20))

    def write_jobs(self, n: int) -> None:
        jobs = []
        for i in range(n):
            args = ["data/bidirectional_survivors.npz", "train_history.json",
                    f"--holdout={self.work}/data/holdout_history.json"]
            if (i // 4) % 2 == 0:  # one job per node (round-robin over 4) of each 8
                args.append("data/big_block.json")
            args += [str(i), '{"lr": 0.1}', "--output-file", f"results/out_{i}.json"]
            jobs.append({"job_id": f"t{i}", "script": "trial_worker.py", "args": args,
                         "expected_output": f"results/out_{i}.json", "timeout": 120})
        (self.workdir / "jobs.json").write_text(json.dumps(jobs))

    # --------------------------------------------------------------- faults
    def inject(self, run_no: int) -> tuple[list[dict], list, list]:
        """Faults for this run: (descriptions, plugins to register, undo steps)."""
        k = self.rng.choice([0, 1, 1, 2, 2, 3])
        chosen = self.rng.sample(FAULTS, k)
        hosts = self.rng.sample(REMOTES, len(REMOTES))
        faults, plugins, undo = [], [], []
        for fault, host in zip(chosen, hosts):  # one fault per node per run
            node = self.cluster[host]
            self.fault_counts[fault] += 1
            faults.append({"fault": fault, "node": host})
            if fault == "stop":
                node.stop()
                undo.append(node.start)
            elif fault in ("kill_mid_upload", "full_mid_upload"):
                self._new_big_block()  # so that there is something big to upload
                action = node.stop if fault == "kill_mid_upload" else (lambda node=node: self._fill(node, 0))
                undo.append(self._during_upload(node, action, faults[-1]))
                undo.append(node.start if fault == "kill_mid_upload"
                            else (lambda node=node: node.run(f"rm -f {node.shm}/filler")))
            elif fault == "wipe_before":
                node.wipe()
            elif fault == "wipe_after_stage":
                plugins.append(AfterStage(node.wipe))
            elif fault == "full":
                self._fill(node, self.rng.choice([1, 4, 10]))
                undo.append(lambda node=node: node.run(f"rm -f {node.shm}/filler"))
            elif fault == "corrupt_manifest":
                node.run(f"test -f {q(self.root(host))}/{MANIFEST_NAME} && "
                         f"head -c 300 /dev/urandom > {q(self.root(host))}/{MANIFEST_NAME}", check=False)
            elif fault == "stale_lock":
                node.run(f"test -d {q(self.root(host))} && mkdir {q(self.root(host))}/.lock && "
                         f"touch -d '-1 min' {q(self.root(host))}/.lock", check=False)
            elif fault == "host_key":
                node.regen_host_key()
                undo.append(self.cluster.write_known_hosts)
            elif fault == "gc_during_run":
                plugins.append(AfterStage(lambda host=host: self._gc(host)))
        return faults, plugins, undo

    def _fill(self, node, free_mib: float) -> None:
        """Another program fills the node's tmpfs, leaving free_mib MiB."""
        node.run(f"avail=$(df -k --output=avail /dev/shm | tail -1); "
                 f"head -c $(( (avail - {int(free_mib * 1024) + 256}) * 1024 )) /dev/zero >> {node.shm}/filler",
                 check=False)

    def _during_upload(self, node, action, record: dict):
        """Run ``action`` once, after a random number of bytes of the first
        upload of at least 4 MiB to ``node`` in this run (``record["fired"]``
        says whether it happened). Returns the undo step."""
        orig = SSHTransport.open_write
        after = self.rng.randint(64 << 10, 3 << 20)
        record["fired"] = False

        def fire():
            record["fired"] = True
            action()

        @contextlib.contextmanager
        def open_write(transport, path, mode=0o600):
            with orig(transport, path, mode) as f:
                if (transport.host == node.name and not record["fired"] and "/.tmp-" in path
                        and path.endswith("/big_block.json")):
                    yield Tap(f, after, fire)
                else:
                    yield f

        SSHTransport.open_write = open_write

        def undo():
            SSHTransport.open_write = orig
        return undo

    def _gc(self, host: str, everything: bool = True) -> None:
        from prng_cache import cli

        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            rc = cli.main(["gc", "--config", str(self.config), "--policy", str(self.policy), "--node", host]
                          + (["--all"] if everything else []))
        if rc != 0:
            self.problems.append({"what": "gc failed", "detail": host})

    # ----------------------------------------------------------------- runs
    def run_once(self, run_no: int) -> None:
        self.log_records.messages.clear()
        changed = self.regenerate()
        n_jobs = self.rng.choice([6, 8, 12])
        self.write_jobs(n_jobs)
        faults, plugins, undo = self.inject(run_no)
        digests = self._source_digests()
        shutil.rmtree(self.work / "results", ignore_errors=True)
        t0 = time.monotonic()
        for p in plugins:
            self.mod.plugins.register(p)
        out, c, error = None, None, None
        try:
            c = self.mod.ScriptsCoordinator(str(self.config), str(self.workdir / "jobs.json"),
                                            ssh_config=str(self.cluster.ssh_config), run_id=f"soak-{run_no}")
            out = c.run()
        except Exception as exc:  # the coordinator itself must never fail because of the cache
            error = f"{type(exc).__name__}: {exc}"
        finally:
            for p in plugins:
                self.mod.plugins.unregister(p)
            for step in reversed(undo):  # patches of open_write nest
                with contextlib.suppress(Exception):
                    step()
            self.cluster.heal()
        seconds = time.monotonic() - t0
        problems = []
        if error:
            problems.append({"what": "coordinator raised", "detail": error})
        report, reads = {}, {"ram": 0, "original": 0}
        if out is not None:
            report = next((r for r in out.get("plugins", []) if r.get("plugin") == "prng_cache"), {})
            if out["failed"]:
                problems.append({"what": "jobs failed", "detail": out["failed"]})
            problems += self._check_reads(c, digests, reads)
        faulty = {f["node"] for f in faults}
        gc_now = run_no % self.gc_every == 0 or run_no == self.total_runs
        if gc_now:
            # the operator's periodic `prng-cache gc`: afterwards no node may
            # hold leftovers or directories its manifest does not list
            time.sleep(1.1)  # older than gc.stale_temp (1 s)
            for host in REMOTES:
                self._gc(host, everything=False)
        # a node whose sshd is down, whose key changed or whose RAM was wiped
        # after the stage makes its jobs fail there (and run again on
        # localhost); any other failed attempt is the cache's fault
        excused = {f["node"] for f in faults if f["fault"] in EXPECTED_JOB_FAILURES}
        for jid, j in (out or {}).get("jobs", {}).items():
            for a in j["attempts"]:
                if not a["ok"] and a["node"] not in excused:
                    problems.append({"what": "job attempt failed on a node without a fault",
                                     "detail": f"{jid} on {a['node']}: {a.get('stderr', '')[-300:]}"})
        garbage = {}
        for host in REMOTES:
            problems += self._check_node(host, strict=gc_now, run_id=f"soak-{run_no}", garbage=garbage,
                                         released=report.get("leases_released", {}).get(host) is True)
        for p in problems:
            p["run"] = run_no
        self.problems += problems
        entry = {
            "run": run_no, "jobs": n_jobs, "changed_inputs": changed, "faults": faults,
            "seconds": round(seconds, 2),
            "nodes": {h: {"status": r.get("status"), "copied_files": r.get("copied_files"),
                          "reason": r.get("reason")} for h, r in report.get("nodes", {}).items()},
            "rewritten_jobs": report.get("rewritten_jobs"), "fallback_jobs": report.get("fallback_jobs"),
            "retried_on_localhost": sum(1 for j in (out or {}).get("jobs", {}).values() if len(j["attempts"]) > 1),
            "failed_attempts": [{"job": jid, "node": a["node"], "stderr": a.get("stderr", "")[-300:]}
                                for jid, j in (out or {}).get("jobs", {}).items()
                                for a in j["attempts"] if not a["ok"]],
            "reads_from_ram": reads["ram"], "reads_from_original": reads["original"],
            "gc_after_run": gc_now,
            # unrecorded directories and temporaries waiting for gc (never served)
            "awaiting_gc": garbage,
            "problems": len(problems),
            "warnings": list(self.log_records.messages),
        }
        self.runs.append(entry)
        flt = ", ".join(f"{f['fault']}@{f['node']}" for f in faults) or "no fault"
        print(f"run {run_no:3d}: {seconds:5.1f}s  {n_jobs:2d} jobs  {flt:<48} "
              f"ram reads {reads['ram']:3d}, original {reads['original']:3d}, retried "
              f"{entry['retried_on_localhost']}  problems {len(problems)}", file=sys.stderr)
        for p in problems:
            print(f"    PROBLEM: {p['what']}: {p['detail']}", file=sys.stderr)

    def _source_digests(self) -> dict[str, str]:
        out = {}
        for p in list((self.work / "data").iterdir()) + [self.work / "train_history.json"]:
            if p.is_file():
                out[p.name] = sha256(p.read_bytes())
        return out

    def _check_reads(self, c, digests: dict[str, str], reads: dict) -> list[dict]:
        """What each job's final (successful) attempt read."""
        problems = []
        final = {jid: host for host, jid, _ in c.commands}  # retries come last
        for jid, host in final.items():
            path = self.work / f"results/out_{jid[1:]}.json"
            try:
                got = json.loads(path.read_text())["inputs"]
            except (OSError, ValueError, KeyError):
                problems.append({"what": "no readable output", "detail": f"{jid} on {host}"})
                continue
            for p, info in got.items():
                name = os.path.basename(p)
                if info["sha256"] != digests.get(name):
                    problems.append({"what": "job read wrong bytes", "detail": f"{jid} on {host}: {p}"})
                if "companion" in info and info["companion"]["sha256"] != digests.get("optimal_window_config.json"):
                    problems.append({"what": "job read wrong companion", "detail": f"{jid} on {host}: {p}"})
                reads["ram" if p.startswith("/dev/shm/") else "original"] += 1
        return problems

    def _node_bytes(self, node, path: str) -> bytes:
        return base64.b64decode(node.run(f"base64 -w0 -- {q(path)}").stdout)

    def _names(self, node, path: str) -> list[str]:
        r = node.run(f"find {q(path)} -mindepth 1 -maxdepth 1 -printf '%P\\0'", check=False)
        return [n for n in r.stdout.split("\0") if n] if r.returncode == 0 else []

    def _check_node(self, host: str, *, strict: bool, run_id: str, released: bool, garbage: dict) -> list[dict]:
        """The manifest matches the disk: every entry is there with the
        recorded bytes. Directories it does not list (a killed stager's, or
        those of a manifest that was reset) are never served and are
        gc's to remove: only after a gc must there be none."""
        node = self.cluster[host]
        root = self.root(host)
        names = self._names(node, root)
        if not names:
            return []
        problems = []
        if MANIFEST_NAME not in names:
            if any(is_key(n) for n in names) and strict:
                problems.append({"what": "hash directories without a manifest after gc", "detail": host})
            return problems
        m, why = decode(self._node_bytes(node, f"{root}/{MANIFEST_NAME}"))
        if m is None:
            if strict:
                problems.append({"what": "unreadable manifest after gc", "detail": f"{host}: {why}"})
            return problems
        on_disk = {n for n in names if is_key(n)}
        for key, e in m.entries.items():
            if key not in on_disk:
                problems.append({"what": "manifest entry missing on disk", "detail": f"{host}: {key}"})
                continue
            files = set(self._names(node, f"{root}/{key}"))
            for name, want in e.files.items():
                if name not in files:
                    problems.append({"what": "manifest file missing on disk", "detail": f"{host}: {key}/{name}"})
                elif Hasher(self._node_bytes(node, f"{root}/{key}/{name}")).hexdigest() != want:
                    problems.append({"what": "cached file content differs", "detail": f"{host}: {key}/{name}"})
        untracked = sorted(on_disk - set(m.entries))
        junk = [n for n in names if n.startswith((".tmp-", ".trash-", ".lock"))]
        if untracked or junk:
            garbage[host] = len(untracked) + len(junk)
            if strict:
                problems.append({"what": "unrecorded directories or leftovers after gc",
                                 "detail": f"{host}: {untracked + junk}"})
        if released and run_id in m.leases:
            problems.append({"what": "lease not released", "detail": f"{host}: {run_id}"})
        return problems

    def summary(self, started: float) -> dict:
        return {
            "runs": len(self.runs),
            "seed": self.seed,
            "seconds": round(time.monotonic() - started, 1),
            "faults_injected": sum(self.fault_counts.values()),
            "faults_by_type": self.fault_counts,
            # mid-upload faults whose moment never came (nothing big was uploaded to that node)
            "faults_that_never_fired": sum(1 for r in self.runs for f in r["faults"] if f.get("fired") is False),
            "jobs": sum(r["jobs"] for r in self.runs),
            "reads_from_ram": sum(r["reads_from_ram"] for r in self.runs),
            "reads_from_original": sum(r["reads_from_original"] for r in self.runs),
            "retried_on_localhost": sum(r["retried_on_localhost"] for r in self.runs),
            "problems_found": len(self.problems),
            "problems": self.problems,
            "isolated_nodes": bool(self.cluster.isolated),
            "per_run": self.runs,
        }


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage()[:300])


class AfterStage:
    """A coordinator plugin that acts between the stage and the first job."""

    def __init__(self, action):
        self.action = action

    @hookimpl(trylast=True)
    def coordinator_run_start(self, run_id, nodes, jobs, assignments):
        self.action()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20, help="coordinator runs (default 20)")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: time based; printed)")
    ap.add_argument("--tmpfs", default="64m", help="each node's /dev/shm size (default 64m)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "soak.json"))
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else int(time.time()) % 100000
    workdir = Path(tempfile.mkdtemp(prefix="prng-soak-"))
    soak = Soak(workdir, seed, args.tmpfs)
    soak.seed = seed
    started = time.monotonic()
    print(f"soak: {args.runs} runs, seed {seed}, work dir {workdir}", file=sys.stderr)
    try:
        soak.start()
        if not soak.cluster.isolated:
            print(f"soak: WARNING: {soak.cluster.fallback_reason}; nodes share /dev/shm", file=sys.stderr)
        soak.total_runs = args.runs
        for i in range(1, args.runs + 1):
            soak.run_once(i)
    except KeyboardInterrupt:
        print("soak: interrupted", file=sys.stderr)
    finally:
        soak.cluster.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    doc = soak.summary(started)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    print(f"soak: {doc['runs']} runs, {doc['faults_injected']} faults injected "
          f"({', '.join(f'{k} {v}' for k, v in doc['faults_by_type'].items() if v)}), "
          f"{doc['jobs']} jobs, {doc['reads_from_ram']} reads from RAM, {doc['reads_from_original']} from the "
          f"original paths, {doc['retried_on_localhost']} retried on localhost; "
          f"problems found: {doc['problems_found']}  -> {args.out}", file=sys.stderr)
    return 1 if doc["problems_found"] else 0


if __name__ == "__main__":
    sys.exit(main())
