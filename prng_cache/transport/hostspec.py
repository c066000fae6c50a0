"""The one parser of ``[user@]host[:port]`` (jump hosts: the policy's
``transport.jump_host`` and the ssh config's ``ProxyJump``).

Dependency-free on purpose: the policy loader imports it, and must not pay
for paramiko nor import the SSH transport (which imports the policy).

Grammar, as OpenSSH reads a ``ProxyJump`` hop:

- an optional ``ssh://`` prefix (OpenSSH's URI form);
- ``user@``: everything before the *last* ``@`` (Active Directory names
  such as ``alice@corp.example@bastion`` keep their ``@``); non-empty;
- ``host``: a name without ``@ / [ ] ,`` or ``:``, or ``[address]`` (IPv6,
  optionally followed by ``:port``), or a bare IPv6 address (two or more
  colons: then there is no port);
- ``:port``: 1 to 65535;
- no whitespace anywhere.
"""

from __future__ import annotations

import re

__all__ = ["parse_hostspec", "parse_jump_chain"]

_BRACKETED = re.compile(r"\[([^\[\]@/,]+)\](?::(\d+))?")
_NAME = re.compile(r"([^@/,:\[\]]+)(?::(\d+))?")
_BARE_V6 = re.compile(r"[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*(?:%[^@/,\[\]]+)?")


def parse_hostspec(text: str) -> tuple[str | None, str, int | None]:
    """``[user@]host[:port]`` -> ``(user or None, host, port or None)``.

    Raises ValueError (its message says what is wrong) for anything else."""
    if not isinstance(text, str) or not text:
        raise ValueError("empty host")
    if any(c.isspace() for c in text):
        raise ValueError("whitespace is not allowed")
    spec = text[len("ssh://"):] if text.startswith("ssh://") else text
    user = None
    if "@" in spec:
        user, spec = spec.rsplit("@", 1)
        if not user:
            raise ValueError("empty user name before '@'")
    if not spec:
        raise ValueError("empty host")
    m = _BRACKETED.fullmatch(spec) or _NAME.fullmatch(spec)
    if m:
        host, port = m.group(1), m.group(2)
    elif _BARE_V6.fullmatch(spec):
        host, port = spec, None  # "fe80::1": colons belong to the address
    else:
        raise ValueError(f"{spec!r} is not host, host:port or [address]:port")
    if port is None:
        return user, host, None
    n = int(port)
    if not 0 < n < 65536:
        raise ValueError(f"port {port} is out of range (1-65535)")
    return user, host, n


def parse_jump_chain(text: str) -> tuple[tuple[str | None, str, int | None], ...]:
    """A comma-separated chain of hops (outermost first), each parsed by
    :func:`parse_hostspec` (blanks around a comma are ignored, as ssh does).
    Raises ValueError naming the bad hop."""
    hops = []
    for spec in text.split(","):
        spec = spec.strip()
        try:
            hops.append(parse_hostspec(spec))
        except ValueError as e:
            raise ValueError(f"jump host {spec!r}: {e}") from None
    return tuple(hops)
