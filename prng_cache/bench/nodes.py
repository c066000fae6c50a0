"""Where the staging (and, with ``--config``, trial) benchmarks run.

Three setups, chosen by :func:`open_setup`:

``config``    the real nodes of ``--config distributed_config.json``, with the
              policy found the usual way; the baseline uses the system ``ssh``
              and ``scp`` (with the policy's ``transport.ssh_config`` when that
              file exists).
``ssh-embedded``  no ``--config``: a 2-node cluster of real ``sshd`` on this
              machine (each node with a private tmpfs ``/dev/shm`` where mount
              namespaces are permitted), reached like remote nodes.
``local``     no sshd here: prng-cache stages through ``LocalTransport`` and
              the baseline is ``cp``; said so in ``staging.mode``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import secrets
import shlex
import subprocess
import sys
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from ..cluster import Node, load_cluster, node_settings, open_transport
from ..policy import NodeOverride, Policy, load_policy

Progress = Callable[[str, str], None]


@dataclass
class NodeAccess:
    """One node: how prng-cache reaches it and how a shell script would."""

    node: Node
    shm: str  # the node's /dev/shm as seen on the node
    ssh: list[str] | None  # argv prefix running a command on the node; None = local shell
    scp: list[str] | None
    scp_target: str = ""  # "host" or "user@host" for scp's "host:path"

    @property
    def host(self) -> str:
        return self.node.hostname

    def run(self, cmd: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        argv = self.ssh + [cmd] if self.ssh else ["sh", "-c", cmd]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and r.returncode != 0:
            raise RuntimeError(f"{self.host}: {cmd!r} exited {r.returncode}: {r.stderr.strip()[-400:]}")
        return r

    def copy(self, src: str, dst_dir: str) -> None:
        """The users' way to put one file on the node: scp (or cp locally)."""
        if self.scp:
            argv = self.scp + [src, f"{self.scp_target}:{dst_dir.rstrip('/')}/"]
        else:
            argv = ["cp", src, dst_dir.rstrip("/") + "/"]
        r = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise RuntimeError(f"{self.host}: {' '.join(argv[:1])} {src} failed: {r.stderr.strip()[-400:]}")


@dataclass
class Setup:
    mode: str  # config | ssh-embedded | local
    policy: Policy
    nodes: list[NodeAccess]
    note: str = ""
    cluster: Any = None
    warnings: list[str] = field(default_factory=list)
    token: str = field(default_factory=lambda: secrets.token_hex(4))

    def bench_policy(self, tag: str) -> Policy:
        """The policy with a private cache root per node (``...-bench-<tag>``),
        so the benchmark neither sees nor disturbs the users' real cache."""
        extra = []
        for na in self.nodes:
            base = node_settings(self.policy, na.node).cache_root.rstrip("/")
            if self.mode == "ssh-embedded" or self.mode == "local":
                base = f"{na.shm}/prng"
            extra.append(NodeOverride(pattern=na.host, mode="cache", cache_root=f"{base}-bench-{self.token}-{tag}"))
        return replace(self.policy, nodes=self.policy.nodes + tuple(extra))

    def close(self) -> None:
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.stop()
            self.cluster = None


def ssh_argv(host: str, user: str | None, ssh_config: str | None) -> tuple[list[str], list[str], str]:
    opts = ["-o", "BatchMode=yes"]
    if ssh_config:
        opts = ["-F", ssh_config] + opts
    target = f"{user}@{host}" if user else host
    return ["ssh"] + opts + [target], ["scp", "-q"] + opts, target


def _ssh_transport_available() -> str | None:
    try:
        importlib.import_module("prng_cache.transport.ssh")
    except Exception as exc:  # noqa: BLE001
        return f"SSH transport unavailable: {exc}"
    return None


def open_setup(*, config: str | None, policy_file: str | None, workdir: str, n_nodes: int = 2,
               tmpfs_bytes: int = 64 << 20, hosts: list[str] | None = None, force_local: bool = False,
               progress: Progress = lambda a, b: None) -> Setup:
    if config:
        return _config_setup(config, policy_file, hosts)
    if force_local:
        return _local_setup("local staging requested (--local-staging)")
    why = _ssh_transport_available()
    if why is None and os.geteuid() != 0:
        why = "not root: cannot start an embedded sshd cluster"
    if why is None:
        from ..testing import sshcluster as mod

        progress("staging", f"starting a {n_nodes}-node sshd cluster")
        cdir = os.path.join(workdir, "cluster")
        size_m = max(64, tmpfs_bytes // (1 << 20) + 1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cluster = mod.SSHCluster(cdir, n_nodes, tmpfs_size=f"{size_m}m", prefix="bench-")
            try:
                cluster.start()
            except Exception as exc:  # ClusterUnavailable or anything on the way
                with contextlib.suppress(Exception):
                    cluster.stop()
                why = f"embedded sshd cluster unavailable: {exc}"
                cluster = None
        if cluster is not None:
            tpol = cluster.policy()
            policy = Policy(transport=tpol)
            nodes = []
            for n in cluster.nodes:
                node = Node(hostname=n.name, username=cluster.user, script_path=workdir, python_env=sys.executable)
                ssh, scp, target = ssh_argv(n.name, None, str(cluster.ssh_config))
                nodes.append(NodeAccess(node, n.shm, ssh, scp, target))
            s = Setup("ssh-embedded", policy, nodes, cluster=cluster,
                      note=("2 sshd nodes on this machine, private tmpfs /dev/shm each" if cluster.isolated
                            else f"sshd nodes on this machine sharing /dev/shm ({cluster.fallback_reason})"))
            s.warnings += [str(w.message) for w in caught]
            return s
    return _local_setup(why)


def _local_setup(why: str) -> Setup:
    node = Node(hostname="localhost")
    return Setup("local", Policy(), [NodeAccess(node, "/dev/shm", None, None)],
                 note=f"localhost via LocalTransport, baseline cp ({why})")


def _config_setup(config: str, policy_file: str | None, hosts: list[str] | None) -> Setup:
    nodes = load_cluster(config)
    policy = load_policy(policy_file)
    if hosts:
        unknown = [h for h in hosts if h not in {n.hostname for n in nodes}]
        if unknown:
            raise ValueError(f"--node {unknown[0]!r} is not in {config}")
        nodes = [n for n in nodes if n.hostname in hosts]
    ssh_cfg = os.path.expanduser(policy.transport.ssh_config)
    ssh_cfg = ssh_cfg if os.path.isfile(ssh_cfg) else None
    out = []
    for n in nodes:
        if n.is_localhost or node_settings(policy, n).mode != "cache":
            continue  # localhost reads its own disk; off/direct nodes are not staged
        ssh, scp, target = ssh_argv(n.hostname, n.username, ssh_cfg)
        out.append(NodeAccess(n, "/dev/shm", ssh, scp, target))
    if not out:
        raise ValueError(f"{config}: no remote node in cache mode to benchmark")
    return Setup("config", policy, out, note=f"{len(out)} node(s) from {config}")


def remove_cache_root(setup: Setup, policy: Policy, na: NodeAccess) -> None:
    root = node_settings(policy, na.node).cache_root
    if na.ssh is None:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
        return
    with contextlib.suppress(Exception):
        with open_transport(na.node, policy) as t:
            if t.lstat(root) is not None:
                t.rmtree(root)
    na.run(f"rm -rf {shlex.quote(root)}", check=False)
