"""Names from the cluster file never reach a shell; ProxyCommand runs without
one; connection identities for "the same node under two aliases".

Host names are checked as OpenSSH checks them (no whitespace, shell
metacharacters or leading '-'): at cluster-file load (a user error, exit 2,
nothing contacted) and again in the transport (the plugin gets its nodes
from the coordinator, not from load_cluster). The canary ProxyCommand below,
``sh -c 'echo %h:%p'``, is what turns ``rig-a;touch X`` into ``touch X`` when
a name is not checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from prng_cache.cluster import Node, connection_identity, load_cluster
from prng_cache.errors import ConfigError, UnsafeNameError
from prng_cache.policy import InputsPolicy, NodeOverride, Policy, TransportPolicy
from prng_cache.transport.names import ProxyCommandError, hostname_problem, proxy_argv, username_problem
from prng_cache.transport.ssh import SSHTransport, resolve_target

BAD_HOSTS = ["rig-a;touch x", "rig-a touch", "-oProxyCommand=touch x", "rig-a\ntouch x", "$(touch x)",
             "`touch x`", "a|b", "a&b", "a>b", "a'b", 'a"b', "a\\b", "a(b)", "a{b}", "a,b", "a\tb", "a\x07b", ""]
GOOD_HOSTS = ["rig-a", "rig-a.example.org", "10.0.0.5", "fe80::1%eth0", "node_07", "[::1]", "a/b", "a@b", "*"]


# --------------------------------------------------------- name rules
@pytest.mark.parametrize("name", BAD_HOSTS, ids=repr)
def test_openssh_refuses_these_host_names(name):
    assert hostname_problem(name) is not None


@pytest.mark.parametrize("name", GOOD_HOSTS)
def test_openssh_accepts_these_host_names(name):
    assert hostname_problem(name) is None


@pytest.mark.parametrize("name,ok", [
    ("svc", True), ("first.last", True), ("DOMAIN\\user", True), ("svc_07-x", True),
    ("-oX", False), ("a;b", False), ("a -b", False), ("a\\", False), ("a\nb", False), ("$(x)", False),
    ("`x`", False), ("", False),
    # allowed by OpenSSH, refused here: nothing to gain, and a shell would act on them
    ("svc acct", False), ("host$", False),
])
def test_user_name_rules(name, ok):
    assert (username_problem(name) is None) == ok


# ------------------------------------------------- cluster file (no network)
def _cluster_file(tmp_path, hosts, **extra):
    p = tmp_path / "distributed_config.json"
    p.write_text(json.dumps({"nodes": [{"hostname": h, "script_path": "/tmp", **extra} for h in hosts]}))
    return p


@pytest.mark.parametrize("name", [h for h in BAD_HOSTS if h.strip()], ids=repr)
def test_load_refuses_unsafe_host_name_naming_file_and_node(tmp_path, name):
    p = _cluster_file(tmp_path, ["rig-a", name, "also;bad"])
    with pytest.raises(ConfigError) as ei:
        load_cluster(str(p))
    msg = str(ei.value)
    assert msg.startswith(f"{p}: nodes[1].hostname: {name!r} is not a valid host name"), msg
    assert "\n" not in msg and "\t" not in msg  # escaped: one line whatever the name holds


def test_load_refuses_unsafe_user_name(tmp_path):
    p = _cluster_file(tmp_path, ["rig-a"], username="svc;touch x")
    with pytest.raises(ConfigError, match=r"nodes\[0\]\.username: 'svc;touch x' is not a valid user name"):
        load_cluster(str(p))


def test_cli_unsafe_host_name_exit_2_one_line_nothing_run_or_contacted(ssh_cluster_clean, tmp_path):
    cluster = ssh_cluster_clean
    canary_dir = tmp_path / "canary"
    canary_dir.mkdir()
    cfg = tmp_path / "ssh_config"
    cfg.write_text(cluster.ssh_config_text() + "\nHost *\n    ProxyCommand sh -c 'echo %h:%p'\n")
    policy = tmp_path / "cache_policy.yaml"
    policy.write_text(f"transport:\n  ssh_config: {cfg}\n  known_hosts: {cluster.known_hosts}\n"
                      f"nodes:\n  '*':\n    cache_root: {cluster['rig-a'].shm}/prng\n")
    bad = f"rig-a;touch {canary_dir}/pwned\nforged line"
    conf = _cluster_file(tmp_path, ["rig-a", bad])
    (tmp_path / "jobs.json").write_text(json.dumps(
        [{"job_id": "j", "script": "w.py", "args": [str(conf)], "expected_output": "o", "timeout": 5}]))
    before = cluster["rig-a"].log_text().count("Connection from")
    env = {k: v for k, v in os.environ.items() if k not in ("PRNG_CACHE", "USE_RAMDISK", "PRNG_CACHE_POLICY")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    for cmd in (["stage", "--jobs-file", "jobs.json", "--min-jobs", "1"], ["status"]):
        p = subprocess.run([sys.executable, "-m", "prng_cache", *cmd, "--config", str(conf), "--policy",
                            str(policy)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
        assert lines[0] == (f"prng-cache: error: {conf}: nodes[1].hostname: {bad!r} is not a valid host "
                            "name: it contains ';' (no whitespace, shell metacharacters or leading '-')"), lines[0]
    assert os.listdir(canary_dir) == []
    assert not cluster["rig-a"].exists(f"{cluster['rig-a'].shm}/prng")
    assert cluster["rig-a"].log_text().count("Connection from") == before  # no node was contacted


# ------------------------------------------- transport (plugin path too)
def _canary_config(cluster, tmp_path):
    """rig-a reached directly; every other name through a ProxyCommand that
    hands %h to a shell (the injection a name check must prevent)."""
    canary_dir = tmp_path / "canary"
    canary_dir.mkdir()
    cfg = tmp_path / "ssh_config"
    cfg.write_text("Host rig-a\n    ProxyCommand none\n\n" + cluster.ssh_config_text()
                   + "\nHost *\n    ProxyCommand sh -c 'echo %h:%p'\n")
    return cfg, canary_dir


def test_transport_refuses_unsafe_host_before_any_proxy_command(ssh_cluster_clean, tmp_path):
    cluster = ssh_cluster_clean
    cfg, canary_dir = _canary_config(cluster, tmp_path)
    bad = f"rig-a;touch {canary_dir}/pwned"
    t = SSHTransport(bad, settings=cluster.policy(ssh_config=str(cfg)))
    with pytest.raises(UnsafeNameError) as ei:
        t.lstat("/")
    assert ei.value.node == bad
    assert f"host name {bad!r} refused: it contains ';'" in str(ei.value)
    with pytest.raises(UnsafeNameError, match="user name 'x;y' refused"):
        SSHTransport("rig-a", "x;y", settings=cluster.policy(ssh_config=str(cfg))).connect()
    assert os.listdir(canary_dir) == []
    # the same ProxyCommand with a proper name runs (as argv, no local shell)
    good = SSHTransport("proxied", settings=cluster.policy(ssh_config=str(cfg)))
    assert good.target.proxy_argv() == ["sh", "-c", "echo proxied:22"]


def test_plugin_stages_good_nodes_and_refuses_the_unsafe_one(ssh_cluster_clean, tmp_path):
    from prng_cache.plugin import PrngCachePlugin

    cluster = ssh_cluster_clean
    cfg, canary_dir = _canary_config(cluster, tmp_path)
    data = tmp_path / "input.bin"
    data.write_bytes(os.urandom(10_000))
    bad = f"rig-a;touch {canary_dir}/pwned"
    policy = Policy(inputs=InputsPolicy(min_jobs=1, base_dir=str(tmp_path)),
                    transport=cluster.policy(ssh_config=str(cfg)),
                    nodes=(NodeOverride("*", cache_root=f"{cluster['rig-a'].shm}/prng"),))
    jobs = [{"job_id": f"j{i}", "script": "w.py", "args": [str(data)], "expected_output": f"o{i}",
             "timeout": 5} for i in range(2)]
    plugin = PrngCachePlugin(policy)
    plugin.coordinator_run_start(run_id="r", nodes=[{"hostname": bad, "script_path": "/tmp"},
                                                    {"hostname": "rig-a", "script_path": "/tmp"}],
                                 jobs=jobs, assignments={bad: [jobs[0]], "rig-a": [jobs[1]]})
    rep = plugin.reports
    assert rep[bad].status == "error" and f"{bad!r} refused" in rep[bad].reason, rep[bad].reason
    assert "\n" not in rep[bad].reason
    assert rep["rig-a"].status == "ok" and rep["rig-a"].copied_files == 1
    assert plugin.coordinator_job_args(node={"hostname": bad}, job=jobs[0]) is None  # original args
    assert os.listdir(canary_dir) == []


# ----------------------------------------------- ProxyCommand as argv
def test_proxy_command_tokens_are_substituted_per_word():
    argv = proxy_argv("exec ssh -o 'ProxyUseFdpass no' -W %h:%p -l %r jump --tag=%n 100%% ~/bin/x",
                      host="10.0.0.5", port=2222, user="svc", alias="rig a")
    assert argv == ["ssh", "-o", "ProxyUseFdpass no", "-W", "10.0.0.5:2222", "-l", "svc", "jump",
                    "--tag=rig a", "100%", os.path.expanduser("~") + "/bin/x"]
    # a value is never re-split nor re-expanded, whatever it holds
    assert proxy_argv("prog %h", host="a b;c %p", port=1, user="u", alias="n") == ["prog", "a b;c %p"]


@pytest.mark.parametrize("command,problem", [
    ("nc %h %p 2>/dev/null", "shell syntax ('>')"),
    ("ssh jump nc %h %p | cat", "shell syntax ('|')"),
    ("touch x; nc %h %p", "shell syntax (';')"),
    ("nc %h %p &", "shell syntax ('&')"),
    ("ssh $BASTION -W %h:%p", "shell syntax ('$')"),
    ('ssh "$BASTION" -W %h:%p', "shell syntax ('$')"),
    ("nc `echo %h` %p", "shell syntax ('`')"),
    ("nc %h %x", "unknown token %x"),
    ("nc %h %", "lone '%'"),
    ("nc 'unbalanced", "No closing quotation"),
    ("exec", "names no program"),
])
def test_proxy_command_that_needs_a_shell_is_refused(command, problem):
    with pytest.raises(ProxyCommandError) as ei:
        proxy_argv(command, host="h", port=22, user="u", alias="h")
    assert problem in str(ei.value)


def test_proxy_command_quoted_shell_characters_are_plain_text():
    assert proxy_argv("prog 'a|b;c>$d' \\; \"e;f\"", host="h", port=22, user="u", alias="h") == \
        ["prog", "a|b;c>$d", ";", "e;f"]


# ------------------------------------------------- connection identity
def _identity_config(tmp_path):
    cfg = tmp_path / "ssh_config"
    cfg.write_text(
        "Host gpu1 gpu1-alias\n    HostName GPU1.lab.example\n    Port 2201\n    User cfguser\n\n"
        "Host gpu1-by-ip\n    HostName 10.1.2.3\n    Port 2201\n\n"
        "Host gpu1-fqdn\n    HostName gpu1.lab.example\n    Port 2201\n    User cfguser\n\n"
        "Host behind-a\n    HostName 10.0.0.5\n    ProxyJump jumper@bastion-a\n\n"
        "Host behind-b\n    HostName 10.0.0.5\n    ProxyJump jumper@bastion-b\n\n"
        "Host proxied\n    HostName 10.0.0.5\n    ProxyCommand ssh -W %h:%p bastion-a\n\n"
        "Host bastion-a\n    HostName bastion-a.example\n\n"
    )
    return Policy(transport=TransportPolicy(ssh_config=str(cfg)))


def test_connection_identity_applies_ssh_config(tmp_path):
    policy = _identity_config(tmp_path)
    assert connection_identity(Node("gpu1"), policy) == ("gpu1.lab.example", 2201, "cfguser")
    # two aliases of one machine: one identity (HostName compared case-blind)
    assert connection_identity(Node("gpu1-alias"), policy) == connection_identity(Node("gpu1-fqdn"), policy)
    # the cluster file's username wins over the config's User
    assert connection_identity(Node("gpu1", username="alice"), policy) == ("gpu1.lab.example", 2201, "alice")
    # another user on the same machine is another identity (another cache root owner)
    assert connection_identity(Node("gpu1", username="alice"), policy) != connection_identity(Node("gpu1"), policy)
    # no config entry: the name itself, port 22, the local user
    import getpass

    assert connection_identity(Node("plain.example"), policy) == ("plain.example", 22, getpass.getuser())
    assert connection_identity(Node("localhost"), policy) == ("localhost", 0, getpass.getuser())


def test_connection_identity_is_qualified_by_the_route(tmp_path):
    policy = _identity_config(tmp_path)
    a = connection_identity(Node("behind-a"), policy)
    b = connection_identity(Node("behind-b"), policy)
    # the same private address behind two bastions may be two machines
    assert a != b
    assert a[0].endswith(" -> 10.0.0.5") and "bastion-a.example:22" in a[0] and a[1:] == (22, a[2])
    p = connection_identity(Node("proxied"), policy)
    assert p[0] == "proxy(ssh -W %h:%p bastion-a) -> 10.0.0.5"


def test_connection_identity_refuses_unsafe_names(tmp_path):
    with pytest.raises(UnsafeNameError):
        connection_identity(Node("rig-a;touch x"), _identity_config(tmp_path))


def test_connection_identity_matches_what_the_transport_connects_to(ssh_cluster_clean, tmp_path):
    cluster = ssh_cluster_clean
    a = cluster["rig-a"]
    cfg = cluster.write_ssh_config(tmp_path / "cfg", aliases={"rig-a-too": ("rig-a", None)})
    policy = Policy(transport=cluster.policy(ssh_config=str(cfg)))
    ident = connection_identity(Node("rig-a-too", username=cluster.user), policy)
    assert ident == connection_identity(Node("rig-a"), policy)
    with SSHTransport("rig-a-too", cluster.user, settings=policy.transport) as t:
        t.lstat("/")
        peer = t.paramiko_transport.sock.getpeername()
        assert (ident[0], ident[1]) == peer == (a.address, a.port)
        assert ident[2] == resolve_target("rig-a-too", cluster.user, policy.transport).username
