"""Host key policy: every hop (node, jump host, sshtunnel gateway) is
checked against the policy's ``known_hosts`` plus the config's
``UserKnownHostsFile``.

Unknown keys raise :class:`~prng_cache.errors.HostKeyError` unless
``strict_host_keys`` is off (then they are accepted for this connection
only, with a warning, and never saved); changed keys are always refused.
"""

from __future__ import annotations

import logging
import os

import paramiko

from ...errors import HostKeyError
from .target import SSHTarget

log = logging.getLogger(__name__)


def fingerprint(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.fingerprint}"


class _RejectUnknown(paramiko.MissingHostKeyPolicy):
    def __init__(self, label: str, files: list[str]):
        self.label, self.files = label, files

    def missing_host_key(self, client, hostname, key):
        where = ", ".join(self.files) or "(no known_hosts file)"
        raise HostKeyError(
            self.label,
            f"host key for {hostname} not in {where} (server offered {fingerprint(key)}); "
            "verify it and add it, e.g. by connecting once with ssh",
        )


class _AcceptUnknown(paramiko.MissingHostKeyPolicy):
    """strict_host_keys: false -- accept for this connection, never save."""

    def __init__(self, label: str):
        self.label = label

    def missing_host_key(self, client, hostname, key):
        log.warning(
            "%s: accepting unknown host key for %s (%s) because strict_host_keys is off",
            self.label, hostname, fingerprint(key),
        )
        client.get_host_keys().add(hostname, key.get_name(), key)


def apply_policy(client: paramiko.SSHClient, hop: SSHTarget, label: str, strict: bool, host: str) -> list[str]:
    """Load the hop's known_hosts files into ``client`` (read only: paramiko
    never writes "system" host keys back) and set the policy for keys not
    in them. Returns the files that were loaded."""
    loaded: list[str] = []
    for f in hop.known_hosts_files:
        if not os.path.isfile(f):
            continue
        try:
            client.load_system_host_keys(f)
            loaded.append(f)
        except Exception as e:
            log.warning("%s: ignoring unreadable known_hosts %s: %s", host, f, e)
    if strict:
        client.set_missing_host_key_policy(_RejectUnknown(label, loaded or list(hop.known_hosts_files)))
    else:
        client.set_missing_host_key_policy(_AcceptUnknown(label))
    return loaded


def changed_key_error(e: paramiko.BadHostKeyException, hop: SSHTarget, label: str, loaded: list[str]) -> HostKeyError:
    files = ", ".join(loaded) or "known_hosts"
    return HostKeyError(
        label,
        f"host key CHANGED for {hop.known_hosts_name}: server offered "
        f"{fingerprint(e.key)}, {files} has {fingerprint(e.expected_key)}; "
        "possible man-in-the-middle, or the node was reinstalled "
        "(then replace its entry)",
    )
