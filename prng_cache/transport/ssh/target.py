"""Where a node is and how to reach it: the user's ssh config applied to a
host name, as ``ssh`` would, without touching the network.

``HostName``, ``Port``, ``User``, ``IdentityFile``, ``IdentitiesOnly``,
``ProxyJump`` (or ``ProxyCommand``) and ``UserKnownHostsFile`` are read; an
explicit ``username`` (from the cluster file) wins over the config's
``User``. Names are checked first: a host or user name OpenSSH would refuse
raises :class:`~prng_cache.errors.UnsafeNameError` before it goes anywhere.
"""

from __future__ import annotations

import getpass
import os
import stat
from dataclasses import dataclass, replace

import paramiko

from ...errors import TransportError, UnsafeNameError
from ...policy import TransportPolicy
from ..hostspec import parse_hostspec, parse_jump_chain
from ..names import ProxyCommandError, hostname_problem, proxy_argv, username_problem

__all__ = ["SSHTarget", "check_names", "parse_hostspec", "parse_jump_chain", "resolve_target"]


@dataclass(frozen=True)
class SSHTarget:
    """Where and how to connect, after the ssh config was applied."""

    label: str  # the name as given (ssh config alias or host name)
    hostname: str
    port: int
    username: str
    identity_files: tuple[str, ...] = ()
    identities_only: bool = False
    known_hosts_files: tuple[str, ...] = ()
    jumps: tuple["SSHTarget", ...] = ()  # hops, outermost first
    #: ProxyCommand as written in the ssh config, %-tokens NOT substituted
    #: (used for the first hop; see :meth:`proxy_argv`)
    proxy_command: str | None = None

    @property
    def known_hosts_name(self) -> str:
        """The key under which known_hosts lists this host."""
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"

    @property
    def address(self) -> str:
        return f"{self.username}@{self.hostname}:{self.port}"

    def proxy_argv(self) -> list[str]:
        """The ProxyCommand as the argv that is run (no shell): split into
        words first, then %h %p %r %n %% substituted inside each word.
        Raises :class:`~prng_cache.transport.names.ProxyCommandError`."""
        if not self.proxy_command:
            raise ProxyCommandError("no ProxyCommand")
        return proxy_argv(
            self.proxy_command, host=self.hostname, port=self.port, user=self.username, alias=self.label
        )


class _SSHConfig(paramiko.SSHConfig):
    """paramiko's ssh config, except that ProxyCommand keeps its %-tokens:
    paramiko substitutes them into the command *text* (a host name with a
    space would become two words); :func:`proxy_argv` substitutes them per
    word after splitting."""

    def _allowed_tokens(self, key):
        if key == "proxycommand":
            return []
        return super()._allowed_tokens(key)


def check_names(host: str, username: str | None = None) -> None:
    """Refuse a host or user name OpenSSH would refuse (UnsafeNameError)
    before it goes anywhere near a ProxyCommand or a command line."""
    why = hostname_problem(host)
    if why is not None:
        raise UnsafeNameError(
            host,
            f"host name {host!r} refused: {why} (OpenSSH allows no whitespace, shell "
            "metacharacters or leading '-' in host names)",
        )
    if username is not None:
        why = username_problem(username)
        if why is not None:
            raise UnsafeNameError(
                host,
                f"user name {username!r} refused: {why} (no whitespace, shell "
                "metacharacters or leading '-' in user names)",
            )


#: parsed ssh configs by their text: a stage resolves each node about three
#: times, and parsing the whole file each time was half of the coordinator's
#: CPU per node. Keyed by what was read, not by the file's identity: a stat
#: taken apart from the read (the file replaced, a symlink switched in
#: between) or timestamps too coarse to tell two edits apart (kernels before
#: 6.13, NFS) would serve another config than the file holds now
_parsed: dict[str, paramiko.SSHConfig] = {}


def _load_ssh_config(path: str | None, host: str) -> paramiko.SSHConfig:
    if path:
        p = os.path.expanduser(path)
        try:
            st = os.stat(p)
        except OSError:
            st = None
        if st is not None and stat.S_ISREG(st.st_mode):
            try:
                # non-blocking: a FIFO put there after the stat never blocks a stage
                fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
                with open(fd) as f:  # decoded as paramiko's from_path does
                    if not stat.S_ISREG(os.fstat(fd).st_mode):
                        return _SSHConfig()  # replaced by something else meanwhile: as if absent
                    text = f.read()
            except Exception as e:  # unreadable: be explicit about it, as before
                raise TransportError(host, f"cannot parse ssh config {p}: {e}") from e
            cfg = _parsed.get(text)
            if cfg is not None:
                return cfg  # lookups only read it (paramiko copies what it returns)
            try:
                cfg = _SSHConfig.from_text(text)
            except Exception as e:  # malformed config: be explicit about it
                raise TransportError(host, f"cannot parse ssh config {p}: {e}") from e
            if len(_parsed) >= 8:
                _parsed.clear()
            _parsed[text] = cfg
            return cfg
    return _SSHConfig()


def _lookup(
    cfg: paramiko.SSHConfig,
    name: str,
    username: str | None,
    port: int | None,
    settings: TransportPolicy,
) -> tuple[SSHTarget, str | None]:
    try:
        o = cfg.lookup(name)
    except Exception as e:  # e.g. a failing "Match exec"
        raise TransportError(name, f"ssh config lookup failed: {e}") from e
    known = []
    if settings.known_hosts:
        known.append(os.path.expanduser(settings.known_hosts))
    for f in o.get("userknownhostsfile", "").split():
        f = os.path.expanduser(f)
        if f not in known:
            known.append(f)
    ident = tuple(os.path.expanduser(f) for f in o.get("identityfile", []))
    try:
        cfg_port = int(o.get("port", 22))
    except ValueError as e:
        raise TransportError(name, f"bad Port in ssh config: {o.get('port')!r}") from e
    target = SSHTarget(
        label=name,
        hostname=o.get("hostname", name),
        port=port or cfg_port,
        username=username or o.get("user") or getpass.getuser(),
        identity_files=ident,
        identities_only=o.get("identitiesonly", "no").lower() == "yes",
        known_hosts_files=tuple(known),
    )
    jump = o.get("proxyjump")
    if jump and jump.strip().lower() == "none":
        jump = None
    proxy = o.get("proxycommand")
    if proxy and proxy.strip().lower() != "none" and not jump:
        target = replace(target, proxy_command=proxy)
    return target, jump


def resolve_target(
    host: str, username: str | None = None, settings: TransportPolicy | None = None
) -> SSHTarget:
    """Apply the ssh config (and the policy's jump host) to ``host``.

    Jump hosts come from the host's ``ProxyJump`` (comma-separated chain),
    else from ``settings.jump_host`` (unless the config gives the host a
    ``ProxyCommand``, which is then used instead); each hop is itself looked up in the
    ssh config (HostName, Port, User, IdentityFile, known hosts), with the
    user and port written in the jump spec taking precedence.

    ``host`` and ``username`` must pass OpenSSH's name rules
    (:class:`~prng_cache.errors.UnsafeNameError` otherwise). No network is
    used (unless the ssh config itself asks for it: ``Match exec``,
    ``CanonicalizeHostname``)."""
    settings = settings or TransportPolicy()
    check_names(host, username)
    cfg = _load_ssh_config(settings.ssh_config, host)
    target, jump = _lookup(cfg, host, username, None, settings)
    if not jump and not target.proxy_command and settings.jump_host:
        jump = settings.jump_host
    hops: list[SSHTarget] = []
    if jump:
        try:
            specs = parse_jump_chain(jump)
        except ValueError as e:
            raise TransportError(host, f"bad jump host list {jump!r}: {e}") from e
        for juser, jhost, jport in specs:
            hop, _ = _lookup(cfg, jhost, juser, jport, settings)
            if (hop.hostname, hop.port) == (target.hostname, target.port):
                continue  # the jump host itself needs no jump
            hops.append(hop)
    if hops:
        target = replace(target, jumps=tuple(hops), proxy_command=None)
    return target
