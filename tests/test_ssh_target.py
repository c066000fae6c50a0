"""Target resolution without sshd: the one ``[user@]host[:port]`` parser
and ProxyJump chains."""

from __future__ import annotations

import pytest

from prng_cache.transport.hostspec import parse_hostspec, parse_jump_chain


@pytest.mark.parametrize("text,want", [
    ("bastion", (None, "bastion", None)),
    ("me@bastion:2222", ("me", "bastion", 2222)),
    ("bastion:22", (None, "bastion", 22)),
    ("10.0.0.5:2200", (None, "10.0.0.5", 2200)),
    ("[::1]:2222", (None, "::1", 2222)),
    ("me@[fe80::1%eth0]", ("me", "fe80::1%eth0", None)),
    ("fe80::1", (None, "fe80::1", None)),  # bare IPv6: the colons are the address's
    ("ssh://me@bastion:2222", ("me", "bastion", 2222)),  # OpenSSH's URI form
    ("alice@corp.example@bastion", ("alice@corp.example", "bastion", None)),  # last '@' splits
    ("bastion:00022", (None, "bastion", 22)),
    ("bastion:65535", (None, "bastion", 65535)),
])
def test_hostspec_forms(text, want):
    assert parse_hostspec(text) == want


@pytest.mark.parametrize("text,why", [
    ("", "empty host"),
    ("a b", "whitespace"),
    ("bastion ", "whitespace"),
    ("bastion:99999", "out of range"),
    ("bastion:0", "out of range"),
    ("bastion:", "is not host"),
    ("bastion:ssh", "is not host"),
    ("@bastion", "empty user"),
    ("me@", "empty host"),
    ("[::1", "is not host"),
    ("a/b", "is not host"),
    ("a,b", "is not host"),  # a chain is parse_jump_chain's
])
def test_hostspec_refusals_say_why(text, why):
    with pytest.raises(ValueError, match=why):
        parse_hostspec(text)


def test_jump_chain():
    assert parse_jump_chain("a,me@b:2222, [::1]:22") == (
        (None, "a", None), ("me", "b", 2222), (None, "::1", 22))
    with pytest.raises(ValueError, match=r"jump host 'b:0': port 0 is out of range"):
        parse_jump_chain("a,b:0")
    with pytest.raises(ValueError, match=r"jump host '': empty host"):
        parse_jump_chain("a,,b")
