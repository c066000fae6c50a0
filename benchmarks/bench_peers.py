"""Many small inputs: prng-cache against its peers, ``rsync -a`` and ``scp -r``.

Starts an embedded cluster of 2 real sshd nodes on this machine (each with a
private tmpfs /dev/shm; see prng_cache/testing/sshcluster.py) and measures,
in one run, interleaved so that the machine's drift hits every tool:

- cold: N inputs of 10 KB to both nodes (fresh root, fresh hash memo for
  prng-cache; a fresh directory for rsync and scp);
- warm: the same again (nothing to copy; prng-cache with its memo warm);
- step 3 chunks: ``--chunks`` inputs of 600 KB (the users' step 3 seeds
  files, one per job; ~96% of a job's input bytes), cold and warm, against
  the same peers: where the bytes, not the per-file work, decide;
- nodes: 4 inputs (cold, then warm) to 1, 2, 4 and 8 nodes at once
  (``--nodes``): the time should stay flat as nodes are added (issue 12:
  "8 nodes still flat"); rsync and scp start one ssh per node;
- CLI: a warm stage of 4 inputs to 2 nodes by ``prng-cache stage`` in a
  fresh process (imports, files, connections), against rsync of the same 4;
- warm 4 in many: a warm stage of 4 inputs in a root that also holds the
  ``--sizes`` largest other entries, against the same stage in a root that
  holds only those 4; without a lease (``prng-cache stage``) and with one (as
  the coordinator plugin stages: the manifest is written).

Every prng-cache stage is measured as the CLI does it (``plan_run`` +
``RunPlan.stage``): discover + hash (memo), the nodes connected meanwhile,
then stage, both nodes in parallel. The peers also go to both nodes in
parallel (one process per node) through the cluster's ssh config. Client
memory is the peak RSS above the baseline while staging the largest size
cold (VmHWM reset first).

    python3 benchmarks/bench_peers.py [--sizes 1000 5000] [--chunks 300] [--nodes 1 2 4 8]
                                      [--repeats 3] [--quick]
                                      [--hosts rig-a rig-b ... [--ssh-config F] [--known-hosts F]]

``--hosts``: the same scenarios on nodes you already have (separate machines:
what this one-machine cluster cannot show, since here every node's sshd
shares the coordinator's cores), through your ssh config and known_hosts;
each node needs ``rsync`` and everything is written under a new directory in
its /dev/shm, removed at the end.

Results: printed, written to benchmarks/results/peers.json and peers.png
(``--quick``: peers-quick.*).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from prng_cache.bench.datagen import age_files
from prng_cache.cluster import Node
from prng_cache.hashing import HashMemo
from prng_cache.policy import CapacityPolicy, InputsPolicy, NodeOverride, Policy
from prng_cache.run import plan_run
from prng_cache.store import LeaseRequest
from prng_cache.testing.sshcluster import SSHCluster

FILE_BYTES = 10_000
#: the users' step 3 seeds file at chunk size 1000 (PIPELINE: ~600 KB)
CHUNK_BYTES = 600_000
ARGS_PER_JOB = 50


def _rss(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def _cpu() -> float:
    """CPU seconds of this process (all its threads): the coordinator's own
    cost, which on a real cluster is all that grows with the nodes (here
    every node's sshd also runs on this machine's cores)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def make_files(d: str, n: int, prefix: str, size: int = FILE_BYTES, ext: str = "npz") -> list[str]:
    os.makedirs(d, exist_ok=True)
    paths = []
    for i in range(n):
        p = os.path.join(d, f"{prefix}{i:05d}.{ext}")
        with open(p, "wb") as f:
            f.write(os.urandom(size))
        paths.append(p)
    return paths


def jobs_for(paths: list[str]) -> list[dict]:
    return [{"job_id": i, "script": "w", "args": paths[i:i + ARGS_PER_JOB], "expected_output": "o"}
            for i in range(0, len(paths), ARGS_PER_JOB)]


def parallel(argvs: list[list[str]]) -> float:
    """Run one process per node at once; seconds until the last one ends."""
    t = time.perf_counter()
    procs = [subprocess.Popen(a, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for a in argvs]
    for p, a in zip(procs, argvs):
        _, err = p.communicate()
        if p.returncode:
            raise RuntimeError(f"{a[0]} failed ({p.returncode}): {err.decode(errors='replace')[-500:]}")
    return time.perf_counter() - t


class RealNodes:
    """Nodes you already have (``--hosts``), reached through your ssh config,
    in the shape of the embedded cluster that the scenarios use. Everything
    this run writes on them is under one new directory in their /dev/shm,
    removed at the end."""

    isolated = None

    user = None  # the ssh config's, for every tool alike

    def __init__(self, hosts: list[str], ssh_config: str, known_hosts: str | None):
        self.hosts, self.ssh_config = hosts, os.path.expanduser(ssh_config)
        self.known_hosts = os.path.expanduser(known_hosts or "~/.ssh/known_hosts")
        # made of safe characters only: it is part of remote command lines below
        self.shm = f"/dev/shm/prng-peersbench-{os.getpid()}-{int(time.time())}"

    class _Node:
        def __init__(self, nodes: "RealNodes", name: str):
            self.nodes, self.name = nodes, name

        def run(self, cmd: str) -> None:
            subprocess.run(["ssh", "-F", self.nodes.ssh_config, "-o", "BatchMode=yes", "--", self.name, cmd],
                           check=True, stdin=subprocess.DEVNULL, capture_output=True)

    def __iter__(self):
        return iter([self._Node(self, h) for h in self.hosts])

    def policy(self):
        from prng_cache.policy import TransportPolicy
        return TransportPolicy(ssh_config=self.ssh_config, known_hosts=self.known_hosts, strict_host_keys=True,
                               connect_timeout=10.0)

    def start(self) -> None:
        for n in self:
            n.run(f"mkdir -m 700 {self.shm}")

    def stop(self) -> None:
        for n in self:
            with contextlib.suppress(Exception):
                n.run(f"rm -rf {self.shm}")


class Runner:
    def __init__(self, cluster: SSHCluster, work: str, nodes: int | None = None):
        """Stages to the first ``nodes`` nodes of ``cluster`` (all: None)."""
        self.cluster = cluster
        self.work = work
        self.cfg = str(cluster.ssh_config)
        self.hosts = [n.name for n in cluster][:nodes]
        self.nodes = [Node(h, cluster.user) for h in self.hosts]
        self.transport = cluster.policy()
        self.shm = cluster.shm

    def stage(self, root: str, paths: list[str], memo: str, lease: str | None = None) -> float:
        policy = Policy(transport=self.transport, capacity=CapacityPolicy(max_percent=100.0),
                        inputs=InputsPolicy(min_jobs=1, base_dir=self.work),
                        nodes=tuple(NodeOverride(h, mode="cache", cache_root=root) for h in self.hosts))
        t = time.perf_counter()
        # as `prng-cache stage` does it: nodes connected while the inputs are hashed
        plan = plan_run(jobs_for(paths), self.nodes, policy, min_jobs=1, memo=HashMemo(memo),
                        connect_early=self.nodes)
        reps = plan.stage(lease=LeaseRequest(lease, 600.0) if lease else None)
        dt = time.perf_counter() - t
        bad = {h: r.reason for h, r in reps.items() if r.status != "ok"}
        assert not bad, bad
        assert all(len(r.staged) == len(paths) for r in reps.values())
        return dt

    def cli_stage(self, root: str, paths: list[str], tag: str) -> float:
        """``prng-cache stage`` in a fresh process, as a user runs it
        (imports, policy and cluster files, connections, stage)."""
        d = os.path.join(self.work, f"cli-{tag}")
        os.makedirs(d, exist_ok=True)
        pol = {"inputs": {"min_jobs": 1, "base_dir": self.work},
               "capacity": {"max_percent": 100},
               "transport": {"ssh_config": self.cfg, "known_hosts": str(self.cluster.known_hosts)},
               "nodes": {h: {"mode": "cache", "cache_root": root} for h in self.hosts}}
        with open(os.path.join(d, "policy.json"), "w") as f:
            json.dump(pol, f)  # YAML is a superset of JSON
        with open(os.path.join(d, "cluster.json"), "w") as f:
            json.dump({"nodes": [{"hostname": h, "username": self.cluster.user, "script_path": self.work}
                                 for h in self.hosts]}, f)
        with open(os.path.join(d, "jobs.json"), "w") as f:
            json.dump([dict(j, job_id=f"j{j['job_id']}", timeout=60) for j in jobs_for(paths)], f)
        env = dict(os.environ, XDG_CACHE_HOME=os.path.join(d, "xdg"))
        for k in ("PRNG_CACHE", "USE_RAMDISK", "PRNG_CACHE_POLICY", "PRNG_CACHE_ROOT"):
            env.pop(k, None)
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "prng_cache", "stage", "--jobs-file", os.path.join(d, "jobs.json"),
                            "--config", os.path.join(d, "cluster.json"), "--policy", os.path.join(d, "policy.json"),
                            "--json"], env=env, capture_output=True, text=True)
        dt = time.perf_counter() - t
        if p.returncode != 0:
            raise RuntimeError(f"prng-cache stage failed ({p.returncode}): {p.stderr[-500:]}")
        nodes = json.loads(p.stdout)["nodes"]
        bad = {h: n for h, n in nodes.items()
               if n["status"] != "ok" or n["copied_files"] + n["present_files"] != len(paths)}
        assert not bad and sorted(nodes) == sorted(self.hosts), (bad, sorted(nodes))
        return dt

    def rsync(self, src_dir: str, dest: str) -> float:
        return parallel([["rsync", "-a", "-e", f"ssh -F {self.cfg}", src_dir + "/", f"{h}:{dest}/"]
                         for h in self.hosts])

    def scp(self, src_dir: str, dest: str) -> float:
        return parallel([["scp", "-r", "-q", "-F", self.cfg, src_dir, f"{h}:{dest}"] for h in self.hosts])

    def clean(self) -> None:
        for n in self.cluster:
            n.run(f"rm -rf {self.shm}/pc-* {self.shm}/rs-* {self.shm}/scp-*")


def main() -> int:
    ap = argparse.ArgumentParser(description="many small inputs: prng-cache vs rsync -a and scp -r")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000], help="numbers of 10 KB inputs")
    ap.add_argument("--chunks", type=int, default=300, help="number of 600 KB inputs (step 3 shape; 0: none)")
    ap.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 4, 8],
                    help="node counts for the 4-input scaling scenario")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="200 inputs, 20 chunks, 1 repeat")
    ap.add_argument("--workdir", default="/var/tmp", help="where inputs are written (a real disk)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--hosts", nargs="+", help="measure on these nodes of yours instead of the embedded cluster "
                    "(through --ssh-config; everything under a new directory in their /dev/shm, removed after)")
    ap.add_argument("--ssh-config", default="~/.ssh/config")
    ap.add_argument("--known-hosts", default=None, help="default: ~/.ssh/known_hosts")
    a = ap.parse_args()
    if a.hosts and len(a.hosts) < 2:
        ap.error("--hosts: at least 2 nodes (the scenarios stage to 2 at once)")
    if a.quick:
        a.sizes, a.chunks, a.nodes, a.repeats = [200], 20, [1, 2], 1
    if a.hosts:
        a.nodes = [k for k in a.nodes if k <= len(a.hosts)] or [1]
    sizes = sorted(a.sizes)
    big = sizes[-1]

    work = tempfile.mkdtemp(prefix="prng-peersbench-", dir=a.workdir)
    if a.hosts:
        cluster = RealNodes(a.hosts, a.ssh_config, a.known_hosts)
    else:
        cluster = SSHCluster(os.path.join(work, "cluster"), max(2, *a.nodes),
                             tmpfs_size=f"{max(256, big * 60 // 1000 + 128) + a.chunks * 3 * CHUNK_BYTES // (1 << 20)}m")
        cluster.shm = "/dev/shm"  # each embedded node has its own
    shm = cluster.shm
    rows: dict[str, list[float]] = {}
    mem: list[float] = []

    def add(key: str, v: float) -> None:
        rows.setdefault(key, []).append(v)

    try:
        cluster.start()
        r = Runner(cluster, work, 2)
        sets = {n: make_files(os.path.join(work, f"in-{n}"), n, f"f{n}-") for n in sizes}
        four = make_files(os.path.join(work, "four"), 4, "four-")
        chunks = make_files(os.path.join(work, "chunks"), a.chunks, "chunk_", CHUNK_BYTES, "json")
        age_files([p for ps in sets.values() for p in ps] + four + chunks)
        for rep in range(a.repeats):
            for n in sizes:
                src = os.path.join(work, f"in-{n}")
                # cold, each tool into a fresh directory
                add(f"rsync_cold_{n}", r.rsync(src, f"{shm}/rs-{rep}-{n}"))
                add(f"scp_cold_{n}", r.scp(src, f"{shm}/scp-{rep}-{n}"))
                root = f"{shm}/pc-{rep}-{n}"
                peak = n == big and _reset_peak()
                base = _rss("VmRSS:")
                add(f"prng_cold_{n}", r.stage(root, sets[n], os.path.join(work, f"memo-{rep}-{n}")))
                if peak:
                    mem.append((_rss("VmHWM:") - base) / (1 << 20))
                # warm: nothing changed
                add(f"rsync_warm_{n}", r.rsync(src, f"{shm}/rs-{rep}-{n}"))
                add(f"prng_warm_{n}", r.stage(root, sets[n], os.path.join(work, f"memo-{rep}-{n}")))
            if chunks:  # step 3 shape; each tool into a fresh directory, then again
                src = os.path.join(work, "chunks")
                add("rsync_cold_chunks", r.rsync(src, f"{shm}/rs-{rep}-chunks"))
                add("scp_cold_chunks", r.scp(src, f"{shm}/scp-{rep}-chunks"))
                root, memo = f"{shm}/pc-{rep}-chunks", os.path.join(work, f"memo-{rep}-chunks")
                add("prng_cold_chunks", r.stage(root, chunks, memo))
                add("rsync_warm_chunks", r.rsync(src, f"{shm}/rs-{rep}-chunks"))
                add("prng_warm_chunks", r.stage(root, chunks, memo))
            for k in sorted(set(a.nodes)):  # 4 inputs to k nodes at once, cold then warm
                rk = Runner(cluster, work, k)
                src, dest = os.path.join(work, "four"), f"{shm}/rs-{rep}-n{k}"
                add(f"rsync_cold_n{k}", rk.rsync(src, dest))
                add(f"scp_cold_n{k}", rk.scp(src, f"{shm}/scp-{rep}-n{k}"))
                root, memo = f"{shm}/pc-{rep}-n{k}", os.path.join(work, f"memo-{rep}-n{k}")
                add(f"prng_cold_n{k}", rk.stage(root, four, memo))
                add(f"rsync_warm_n{k}", rk.rsync(src, dest))
                cpu = _cpu()
                add(f"prng_warm_n{k}", rk.stage(root, four, memo))
                add(f"prng_warm_cpu_n{k}", _cpu() - cpu)
            # 4 inputs through the CLI in a fresh process, warm, against rsync
            cli_root = f"{shm}/pc-{rep}-cli"
            r.cli_stage(cli_root, four, "cli")
            for _ in range(3):
                add("prng_cli_warm4", r.cli_stage(cli_root, four, "cli"))
                add("rsync_cli_warm4", r.rsync(os.path.join(work, "four"), f"{shm}/rs-{rep}-n2"))
            # 4 inputs warm: in the root holding the largest set, and alone
            crowded, alone = f"{shm}/pc-{rep}-{big}", f"{shm}/pc-{rep}-four"
            memo4 = os.path.join(work, f"memo-{rep}-four")
            for root in (crowded, alone):
                r.stage(root, four, memo4)
            for i in range(3):  # interleaved, best of 3 each: the handshake dominates and is noisy
                add("prng_warm4_crowded_one", r.stage(crowded, four, memo4))
                add("prng_warm4_alone_one", r.stage(alone, four, memo4))
                # as the plugin stages: with a lease (the manifest is written)
                add("prng_warm4_lease_crowded_one", r.stage(crowded, four, memo4, lease=f"run-{rep}-{i}"))
                add("prng_warm4_lease_alone_one", r.stage(alone, four, memo4, lease=f"run-{rep}-{i}"))
            r.clean()
            print(f"repeat {rep + 1}/{a.repeats} done", file=sys.stderr)
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in rows.items()}
    doc: dict = {"file_bytes": FILE_BYTES, "nodes": 2, "repeats": a.repeats, "sizes": sizes, "scenarios": {},
                 "chunks": {"files": a.chunks, "file_bytes": CHUNK_BYTES}}
    lines = [f"\nMany small inputs ({FILE_BYTES // 1000} KB each) to 2 nodes, median of {a.repeats} (same run)",
             f"  {'scenario':<26}{'prng-cache':>12}{'rsync -a':>12}{'scp -r':>12}{'prng/rsync':>12}"]
    for n in sizes:
        for kind in ("cold", "warm"):
            p, rs = med[f"prng_{kind}_{n}"], med[f"rsync_{kind}_{n}"]
            sc = med.get(f"scp_{kind}_{n}")
            doc["scenarios"][f"{kind}_{n}"] = {"prng_cache_s": p, "rsync_s": rs, "scp_s": sc,
                                               "ratio_vs_rsync": p / rs, "goal_ratio": 1.0}
            lines.append(f"  {kind + f' {n} files':<26}{p:>11.3f}s{rs:>11.3f}s"
                         f"{(f'{sc:.3f}s' if sc else '-'):>12}{p / rs:>11.2f}x")
    if a.chunks:
        for kind in ("cold", "warm"):
            p, rs = med[f"prng_{kind}_chunks"], med[f"rsync_{kind}_chunks"]
            sc = med.get(f"scp_{kind}_chunks")
            doc["scenarios"][f"{kind}_chunks"] = {"prng_cache_s": p, "rsync_s": rs, "scp_s": sc,
                                                  "ratio_vs_rsync": p / rs}
            lines.append(f"  {kind + f' {a.chunks} x 600 KB':<26}{p:>11.3f}s{rs:>11.3f}s"
                         f"{(f'{sc:.3f}s' if sc else '-'):>12}{p / rs:>11.2f}x   (step 3 seeds files)")
    ks = sorted(set(a.nodes))
    doc["nodes_scaling"] = {}
    for kind in ("cold", "warm"):
        one = med[f"prng_{kind}_n{ks[0]}"]
        for k in ks:
            p, rs = med[f"prng_{kind}_n{k}"], med[f"rsync_{kind}_n{k}"]
            sc = med.get(f"scp_{kind}_n{k}")
            row = doc["nodes_scaling"][f"{kind}_n{k}"] = {
                "nodes": k, "prng_cache_s": p, "rsync_s": rs, "scp_s": sc, "ratio_vs_rsync": p / rs,
                f"vs_{ks[0]}_node": p / one}
            cpu = med.get(f"prng_{kind}_cpu_n{k}")
            if cpu is not None:
                row["prng_cache_cpu_s"] = cpu
            lines.append(f"  {kind + f' 4 inputs, {k} node' + ('s' if k > 1 else ''):<26}{p:>11.3f}s{rs:>11.3f}s"
                         f"{(f'{sc:.3f}s' if sc else '-'):>12}{p / rs:>11.2f}x   ({p / one:.2f}x {ks[0]} node"
                         + (f"; coordinator CPU {cpu * 1000:.0f} ms)" if cpu is not None else ")"))
    cli, cli_rs = med["prng_cli_warm4"], med["rsync_cli_warm4"]
    doc["scenarios"]["cli_warm4"] = {"prng_cache_s": cli, "rsync_s": cli_rs, "ratio_vs_rsync": cli / cli_rs,
                                     "goal_ratio": 0.8}
    lines.append(f"  {'CLI warm 4 inputs, 2 nodes':<26}{cli:>11.3f}s{cli_rs:>11.3f}s{'-':>12}{cli / cli_rs:>11.2f}x"
                 f"   (fresh process: imports included; goal <= 0.8x)")
    crowd, alone = min(rows["prng_warm4_crowded_one"]), min(rows["prng_warm4_alone_one"])
    doc["scenarios"]["warm4_in_many"] = {"crowded_s": crowd, "alone_s": alone, "others": big,
                                         "ratio": crowd / alone, "goal_ratio": 1.2}
    lines.append(f"  warm 4 inputs, root of {big:<5} {crowd:>8.3f}s   root of 4 {alone:.3f}s  -> "
                 f"{crowd / alone:.2f}x (goal <= 1.2x; best of {len(rows['prng_warm4_alone_one'])})")
    lcrowd, lalone = min(rows["prng_warm4_lease_crowded_one"]), min(rows["prng_warm4_lease_alone_one"])
    doc["scenarios"]["warm4_in_many_leased"] = {"crowded_s": lcrowd, "alone_s": lalone, "others": big,
                                                "ratio": lcrowd / lalone, "goal_ratio": 1.2}
    lines.append(f"  the same with a lease (plugin) {lcrowd:>6.3f}s   root of 4 {lalone:.3f}s  -> "
                 f"{lcrowd / lalone:.2f}x")
    if mem:
        doc["client_mem_mib"] = statistics.median(mem)
        lines.append(f"  client memory, cold {big} files: {doc['client_mem_mib']:.1f} MiB above baseline "
                     f"(goal <= 64 MiB)")
    doc["samples"] = {k: [round(x, 4) for x in v] for k, v in rows.items()}
    doc["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "load": os.getloadavg(),
                      "isolated_nodes": cluster.isolated, "hosts": a.hosts or "embedded",
                      "rsync": subprocess.run(["rsync", "--version"], capture_output=True, text=True)
                      .stdout.splitlines()[0]}
    print("\n".join(lines))
    name = "peers-quick" if a.quick else "peers"
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, name + ".json"), "w") as f:
        json.dump(doc, f, indent=2)
    if not a.no_plot:
        plot(doc, os.path.join(a.out, name + ".png"))
    return 0


def plot(doc: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = doc["sizes"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, kind in zip(axes, ("cold", "warm")):
        for tool, key in (("prng-cache", "prng_cache_s"), ("rsync -a", "rsync_s"), ("scp -r", "scp_s")):
            ys = [doc["scenarios"][f"{kind}_{n}"][key] for n in sizes]
            if all(y is not None for y in ys):
                ax.plot(sizes, ys, marker="o", label=tool)
        ax.set_title(f"{kind} stage, 10 KB inputs, 2 nodes")
        ax.set_xlabel("number of files")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("seconds (median)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
