"""Target resolution without sshd: the one ``[user@]host[:port]`` parser,
ProxyJump chains, and which route a resolved target takes."""

from __future__ import annotations

import os

import pytest

from prng_cache.errors import TransportError
from prng_cache.policy import TransportPolicy
from prng_cache.transport.hostspec import parse_hostspec, parse_jump_chain
from prng_cache.transport.ssh import resolve_target


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


def _config(tmp_path, text):
    cfg = tmp_path / "ssh_config"
    cfg.write_text(text)
    return TransportPolicy(ssh_config=str(cfg), known_hosts=str(tmp_path / "kh"))


def test_one_hop_and_chains_resolve_from_config_and_policy(tmp_path):
    settings = _config(tmp_path, (
        "Host gw\n    HostName gw.example\n    Port 2201\n    User gwuser\n\n"
        "Host one\n    HostName 10.0.0.5\n    ProxyJump gw\n\n"
        "Host two\n    HostName 10.0.0.6\n    ProxyJump gw,me@hop2:2222\n\n"
        "Host bad\n    HostName 10.0.0.7\n    ProxyJump gw:99999\n"
    ))
    one = resolve_target("one", settings=settings)
    assert [(h.label, h.hostname, h.port, h.username) for h in one.jumps] == [("gw", "gw.example", 2201, "gwuser")]
    two = resolve_target("two", settings=settings)
    assert [(h.hostname, h.port, h.username) for h in two.jumps] == [
        ("gw.example", 2201, "gwuser"), ("hop2", 2222, "me")]
    # the policy's jump_host is parsed the same way (user and port win over the config)
    pol = resolve_target("10.0.0.9", settings=TransportPolicy(
        ssh_config=settings.ssh_config, jump_host="other@gw:2299"))
    assert [(h.hostname, h.port, h.username) for h in pol.jumps] == [("gw.example", 2299, "other")]
    with pytest.raises(TransportError, match=r"bad jump host list 'gw:99999'.*out of range"):
        resolve_target("bad", settings=settings)


def test_an_ssh_config_is_parsed_once_and_again_when_it_changes(tmp_path, monkeypatch):
    from prng_cache.transport.ssh import target as tg
    cfg = tmp_path / "ssh_config"
    cfg.write_text("Host rig-a\n  HostName 10.0.0.1\n  Port 2201\n")
    policy = TransportPolicy(ssh_config=str(cfg))
    parses = []
    orig = tg._SSHConfig.from_text.__func__
    monkeypatch.setattr(tg._SSHConfig, "from_text", classmethod(lambda cls, t: parses.append(t) or orig(cls, t)))
    monkeypatch.setattr(tg, "_parsed", {})
    for _ in range(3):  # a stage resolves each node about three times
        t = resolve_target("rig-a", settings=policy)
        assert (t.hostname, t.port) == ("10.0.0.1", 2201)
    assert len(parses) == 1
    # edited with the same size and its times put back: read again
    st = cfg.stat()
    cfg.write_text("Host rig-a\n  HostName 10.0.0.2\n  Port 2202\n")
    os.utime(cfg, ns=(st.st_atime_ns, st.st_mtime_ns))
    t = resolve_target("rig-a", settings=policy)
    assert (t.hostname, t.port) == ("10.0.0.2", 2202) and len(parses) == 2
    # replaced by a broken one: the error names the file, as before
    cfg.write_text("Host rig-a\n  Port\n")
    with pytest.raises(TransportError, match="cannot parse ssh config"):
        resolve_target("rig-a", settings=policy)
    # removed: no config, the name is used as it is
    cfg.unlink()
    assert resolve_target("rig-a", settings=policy).hostname == "rig-a"
