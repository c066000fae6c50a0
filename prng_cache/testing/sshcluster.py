"""A real SSH "cluster" on one machine, for tests and `prng-cache bench`.

Each node is an OpenSSH ``sshd`` listening on its own loopback address
(``127.0.0.<10+i>``) and free port.  Where mount namespaces are permitted
(root), every node lives in its own mount namespace with a private tmpfs on
``/dev/shm``: the node's ``/dev/shm`` is separate from the other nodes' and
from the coordinator's, a small tmpfs size makes "disk full" real, and
remounting it makes "node rebooted, RAM cache wiped" real.

The namespace is held by a small holder process (``sleep``); sshd is started
inside it with ``nsenter``.  So ``stop()``/``start()`` take sshd down and up
without losing the node's RAM (a network outage or an sshd restart), while
``wipe()`` (or ``reboot()``) empties it.

Where namespaces are not permitted, the cluster falls back to plain sshd
processes sharing the machine's ``/dev/shm``: every node then gets its own
directory ``SSHNode.shm`` (always use ``node.shm`` rather than a literal
``/dev/shm`` in tests), ``isolated`` is False, tmpfs sizes are not enforced,
and a warning says so.  Set ``SSHCLUSTER_SHARED_SHM=1`` to force that mode
(to check that the suite still behaves where namespaces are not allowed).

Nothing here touches the real ``~/.ssh``: the client key, ``known_hosts`` and
ssh config live in the cluster's work directory.

It never imports pytest (the bench runs it without); the pytest glue, skip
in a dev checkout or fail in CI when sshd cannot start, is in
``tests/conftest.py``. The only processes it signals are the sshd listeners
it started and their descendants (sessions call setsid(), so only the
process tree finds them).

Typical use (see ``tests/conftest.py`` for the session fixture)::

    cluster = SSHCluster(tmp_dir, n_nodes=3, tmpfs_size="64m")
    cluster.start()                    # raises ClusterUnavailable(reason)
    node = cluster["rig-a"]
    node.run("ls -la /dev/shm")        # inside the node's namespace
    policy = cluster.policy()          # TransportPolicy for SSHTransport
    cluster.stop()
"""

from __future__ import annotations

import atexit
import getpass
import json
import os
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Iterable, Sequence


__all__ = [
    "ClusterUnavailable",
    "SSHCluster",
    "SSHNode",
    "SharedShmWarning",
    "write_distributed_config",
]

from .procs import SSHD, ClusterUnavailable, SharedShmWarning, _free_port, _keygen, namespaces_supported  # noqa: F401
from .sshnode import SSHNode


# ----------------------------------------------------------------- cluster
class SSHCluster:
    """N real sshd nodes plus client-side files (key, known_hosts, ssh config).

    ``workdir`` must be private to this cluster.  Node names are ``rig-a``,
    ``rig-b``, ...; node ``i`` listens on ``127.0.0.<10+i>`` at a free port.
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        n_nodes: int = 3,
        *,
        tmpfs_size: str = "64m",
        user: str | None = None,
        prefix: str = "rig-",
    ):
        if not 1 <= n_nodes <= 26:
            raise ValueError("n_nodes must be 1..26")
        self.workdir = Path(workdir).resolve()
        self.n_nodes = n_nodes
        self.tmpfs_size = tmpfs_size
        self.user = user or getpass.getuser()
        self.prefix = prefix
        self.nodes: list[SSHNode] = []
        self.isolated: bool | None = None
        self.fallback_reason: str = ""
        self._started = False

    # -------------------------------------------------------- client files
    @property
    def client_key(self) -> Path:
        return self.workdir / "client" / "id_ed25519"

    @property
    def authorized_keys(self) -> Path:
        return self.workdir / "client" / "authorized_keys"

    @property
    def known_hosts(self) -> Path:
        return self.workdir / "client" / "known_hosts"

    @property
    def ssh_config(self) -> Path:
        return self.workdir / "client" / "ssh_config"

    def __getitem__(self, key: int | str) -> SSHNode:
        if isinstance(key, int):
            return self.nodes[key]
        for n in self.nodes:
            if n.name == key:
                return n
        raise KeyError(key)

    def __iter__(self):
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def write_known_hosts(self, path: str | os.PathLike | None = None,
                          nodes: Iterable[SSHNode] | None = None) -> Path:
        """known_hosts trusting the nodes' current host keys (default: the
        cluster's own file, which the ssh config names)."""
        path = Path(path) if path else self.known_hosts
        path.write_text("".join(n.known_hosts_line() + "\n" for n in (nodes or self.nodes)))
        return path

    def ssh_config_text(
        self,
        *,
        user: str | None = None,
        identity: bool = True,
        known_hosts: str | os.PathLike | None | bool = True,
        proxy_jump: dict[str, str] | None = None,
        aliases: dict[str, tuple[str, str | None]] | None = None,
    ) -> str:
        """An ssh config for the nodes.

        user: ``User`` line (default the cluster user); identity: include
        ``IdentityFile``/``IdentitiesOnly``; known_hosts: True for the
        cluster's file, a path for another one, None/False for no
        ``UserKnownHostsFile`` line; proxy_jump: ``{alias: jump}`` adds a
        ``ProxyJump`` to those hosts; aliases: extra ``{alias: (node_name,
        proxy_jump or None)}`` stanzas."""
        def stanza(alias: str, node: SSHNode, jump: str | None) -> str:
            lines = [
                f"Host {alias}",
                f"    HostName {node.address}",
                f"    Port {node.port}",
                f"    User {user or self.user}",
            ]
            if identity:
                lines += [f"    IdentityFile {self.client_key}", "    IdentitiesOnly yes"]
            if known_hosts is True:
                lines.append(f"    UserKnownHostsFile {self.known_hosts}")
            elif known_hosts:
                lines.append(f"    UserKnownHostsFile {known_hosts}")
            lines.append("    StrictHostKeyChecking yes")
            if jump:
                lines.append(f"    ProxyJump {jump}")
            return "\n".join(lines) + "\n"

        out = [stanza(n.name, n, (proxy_jump or {}).get(n.name)) for n in self.nodes]
        for alias, (node_name, jump) in (aliases or {}).items():
            out.append(stanza(alias, self[node_name], jump))
        return "\n".join(out)

    def write_ssh_config(self, path: str | os.PathLike | None = None, **kw) -> Path:
        """Write ``ssh_config_text(**kw)`` (default: the cluster's own file)."""
        path = Path(path) if path else self.ssh_config
        path.write_text(self.ssh_config_text(**kw))
        return path

    def write_client_files(self) -> None:
        self.write_known_hosts()
        self.write_ssh_config()

    def policy(self, **overrides):
        """A ``TransportPolicy`` pointing at the cluster's ssh config and
        known_hosts (strict host keys, 5 s connect timeout)."""
        from prng_cache.policy import TransportPolicy

        kw = dict(
            ssh_config=str(self.ssh_config),
            known_hosts=str(self.known_hosts),
            strict_host_keys=True,
            connect_timeout=5.0,
        )
        kw.update(overrides)
        return TransportPolicy(**kw)

    def ssh_argv(self, node: SSHNode | str, *cmd: str) -> list[str]:
        """argv for the real OpenSSH client to run ``cmd`` on ``node``."""
        name = node.name if isinstance(node, SSHNode) else node
        return ["ssh", "-F", str(self.ssh_config), "-o", "BatchMode=yes", name, *cmd]

    def ssh(self, node: SSHNode | str, cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``cmd`` on the node through the real ``ssh`` client."""
        r = subprocess.run(self.ssh_argv(node, cmd), capture_output=True, text=True, timeout=60)
        if check and r.returncode != 0:
            raise AssertionError(f"ssh {node}: {cmd!r} exited {r.returncode}: {r.stderr.strip()}")
        return r

    # ------------------------------------------------------------ lifecycle
    def start(self) -> "SSHCluster":
        """Start every node; raises ClusterUnavailable(reason) when sshd
        cannot run here.  Safe to call once; registers an atexit cleanup."""
        if self._started:
            return self
        if not os.path.exists(SSHD):
            raise ClusterUnavailable(f"{SSHD} not found (apt-get install -y openssh-server)")
        for tool in ("ssh-keygen",):
            if not shutil.which(tool):
                raise ClusterUnavailable(f"{tool} not found (openssh-client)")
        ok, why = namespaces_supported()
        self.isolated = ok
        if not ok:
            self.fallback_reason = why
            warnings.warn(
                SharedShmWarning(
                    f"{why}; SSH test nodes share this machine's /dev/shm "
                    "(per-node directories instead of private tmpfs; disk-full "
                    "and isolation tests are skipped)"
                ),
                stacklevel=2,
            )
        (self.workdir / "client").mkdir(parents=True, exist_ok=True)
        _keygen(self.client_key, "sshcluster-client")
        shutil.copyfile(self.client_key.with_name("id_ed25519.pub"), self.authorized_keys)
        for i in range(self.n_nodes):
            name = f"{self.prefix}{chr(ord('a') + i)}"
            address = f"127.0.0.{10 + i}"
            d = self.workdir / name
            d.mkdir(parents=True, exist_ok=True)
            node = SSHNode(
                cluster=self,
                index=i,
                name=name,
                address=address,
                port=_free_port(address),
                dir=d,
                tmpfs_size=self.tmpfs_size,
                isolated=bool(ok),
            )
            _keygen(node.host_key, f"{name}-hostkey")
            self.nodes.append(node)
        self._started = True
        atexit.register(self.stop)
        try:
            self.write_client_files()
            for node in self.nodes:
                node.start()
            self.write_client_files()  # ports may have moved on a bind race
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Kill every sshd, session and namespace holder. Idempotent."""
        for node in self.nodes:
            try:
                node.teardown()
            except Exception:  # pragma: no cover - best effort at teardown
                pass

    def __enter__(self) -> "SSHCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def logs(self) -> str:
        """All nodes' sshd logs (for failure reports)."""
        return "\n".join(f"===== {n.name} ({n.address}:{n.port})\n{n.log_text()}" for n in self.nodes)

    def heal(self) -> None:
        """Undo what tests may have done to shared nodes: start stopped
        nodes, trust current host keys, rewrite the client files."""
        for node in self.nodes:
            if not node.running:
                node.start()
        self.write_client_files()

    def write_distributed_config(self, path, nodes=None, script_path="/tmp", python_env="python3", **kw) -> Path:
        return write_distributed_config(path, nodes if nodes is not None else self.nodes,
                                        script_path, python_env, **kw)


# ------------------------------------------------ users' cluster file shape
def write_distributed_config(
    path: str | os.PathLike,
    nodes: Sequence[SSHNode | str | dict],
    script_path: str,
    python_env: str,
    *,
    username: str | None = None,
    gpu_count: int = 1,
    gpu_type: str = "rocm",
    max_concurrent_script_jobs: int = 2,
    include_localhost: bool = False,
) -> Path:
    """Write the users' ``distributed_config.json``.

    ``nodes``: SSHNode objects or ssh config aliases (``hostname`` is the
    alias, e.g. ``rig-a``), or dicts merged over the defaults.  With
    ``include_localhost`` a ``"localhost"`` node comes first, as in the
    users' file."""
    user = username or getpass.getuser()
    entries = []

    def entry(hostname: str) -> dict:
        return {
            "hostname": hostname,
            "username": user,
            "gpu_count": gpu_count,
            "gpu_type": gpu_type,
            "script_path": script_path,
            "python_env": python_env,
            "max_concurrent_script_jobs": max_concurrent_script_jobs,
        }

    if include_localhost:
        e = entry("localhost")
        e["gpu_type"] = "nvidia"
        entries.append(e)
    for n in nodes:
        if isinstance(n, SSHNode):
            entries.append(entry(n.name))
        elif isinstance(n, str):
            entries.append(entry(n))
        else:
            e = entry(n["hostname"])
            e.update(n)
            entries.append(e)
    path = Path(path)
    path.write_text(json.dumps({"nodes": entries}, indent=2) + "\n")
    return path
