"""Transport to a remote node over SSH/SFTP (paramiko).

One ``SSHTransport`` holds one SSH connection (optionally through jump
hosts) and ONE SFTP session, opened on first use and reused for every file
operation. One concern per module:

- :mod:`.target` -- the ssh config applied to a host name (no network);
  the ``[user@]host[:port]`` parser is :mod:`prng_cache.transport.hostspec`;
- :mod:`.hostkeys` -- known_hosts policy for every hop;
- :mod:`.sockets` -- tuned TCP sockets, ProxyCommand without a shell;
- :mod:`.connect` -- routes, handshakes, error messages, the SFTP session;
- :mod:`.tunnel` -- single-gateway jumps through a shared
  ``sshtunnel.SSHTunnelForwarder`` (imported only when a jump host needs it);
- :mod:`.quiet` -- paramiko's and sshtunnel's log records as debug detail;
- :mod:`.streams` -- pipelined SFTP streams (paramiko's private SFTP API);
- :mod:`.batch` -- many small SFTP operations in flight across files (same API);
- :mod:`.listing` -- many directories listed by one ``find`` over exec (SFTP fallback);
- :mod:`.failures` -- SFTP failures as the Transport contract's exceptions;
- :mod:`.probe` -- uid, clock and free space of the node;
- :mod:`.operations` -- ``SSHTransport`` itself.

Names are checked first: a host or user name OpenSSH would refuse
(whitespace, shell metacharacters, a leading ``-``) raises
:class:`~prng_cache.errors.UnsafeNameError` before anything runs. A
``ProxyCommand`` is run without a shell (see :mod:`prng_cache.transport.names`):
split into words, ``%h %p %r %n %%`` substituted inside each word; shell
syntax is refused.

How the node is reached follows the user's ssh config, as ``ssh`` would:
``HostName``, ``Port``, ``User``, ``IdentityFile``, ``IdentitiesOnly``,
``ProxyJump`` (or ``ProxyCommand``) and ``UserKnownHostsFile``; an explicit
``username`` (from the cluster file) wins over the config's ``User``. Host
keys are checked against the policy's ``known_hosts`` plus the config's
``UserKnownHostsFile``; unknown or changed keys raise
:class:`~prng_cache.errors.HostKeyError` unless ``strict_host_keys`` is off
(then unknown keys are accepted for this connection only, with a warning;
changed keys are still refused).

Jump hosts (config ``ProxyJump``, else the policy's ``jump_host``) are
reached first, their host keys verified the same way. A node behind ONE jump
host is reached through the local listener of that gateway's
``sshtunnel.SSHTunnelForwarder`` (one per gateway, shared by the nodes
behind it, stopped with its last user, on Ctrl-C and at exit); a chain of
two or more goes through ``direct-tcpip`` channels of the previous hop.

Throughput: TCP_NODELAY and TCP_QUICKACK (no Nagle / delayed-ACK stalls),
the AES-GCM cipher preferred, SFTP writes of 255 KiB pipelined with every
status checked (at the latest on close), reads with a bounded read-ahead of
255 KiB requests, a 16 MiB channel window.

Errors follow the Transport contract (see :mod:`.failures`); connection
problems raise ``TransportError`` (the connection is then dropped, and the
next operation reconnects).
"""

from __future__ import annotations

from ..hostspec import parse_hostspec, parse_jump_chain
from .connect import MAX_PACKET_SIZE, PREFERRED_CIPHERS, WINDOW_SIZE
from .operations import SSHTransport
from .streams import CHUNK_SIZE, READ_DEPTH, WRITE_DEPTH
from .target import SSHTarget, check_names, resolve_target

__all__ = [
    "CHUNK_SIZE",
    "MAX_PACKET_SIZE",
    "PREFERRED_CIPHERS",
    "READ_DEPTH",
    "SSHTarget",
    "SSHTransport",
    "WINDOW_SIZE",
    "WRITE_DEPTH",
    "check_names",
    "parse_hostspec",
    "parse_jump_chain",
    "resolve_target",
]
