"""cache_policy.yaml loading: defaults, validation, precedence, node overrides."""

from __future__ import annotations

import os
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from prng_cache.errors import PolicyError, UserError
from prng_cache.policy import (
    DEFAULT_POLICY_FILE,
    CapacityPolicy,
    NodeOverride,
    Policy,
    load_policy,
    parse_duration,
    parse_size,
)

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str, name: str = "policy.yaml") -> str:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return str(p)


def expanded(policy: Policy) -> Policy:
    """Policy() as load_policy returns it: `~` in the transport paths expanded."""
    t = policy.transport
    return replace(policy, transport=replace(
        t, ssh_config=os.path.expanduser(t.ssh_config), known_hosts=os.path.expanduser(t.known_hosts)))


def load_text(tmp_path: Path, text: str, **kw) -> Policy:
    kw.setdefault("env", {})
    return load_policy(write(tmp_path, text), **kw)


def error_of(tmp_path: Path, text: str, **kw) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        load_text(tmp_path, text, **kw)
    return info.value


# ------------------------------------------------------------------ defaults
def test_defaults_without_any_file(tmp_path):
    p = load_policy(env={}, cwd=str(tmp_path))
    assert p == expanded(Policy())
    assert p.source == "defaults"
    assert not p.transport.ssh_config.startswith("~")


def test_shipped_policy_file_equals_defaults():
    shipped = REPO / DEFAULT_POLICY_FILE
    p = load_policy(str(shipped), env={})
    assert p.source == str(shipped)
    assert replace(p, source="defaults") == expanded(Policy())


def test_shipped_policy_file_documents_every_key():
    text = (REPO / DEFAULT_POLICY_FILE).read_text()
    for key in ("cache_root", "enabled", "include", "exclude", "max_file_size", "min_jobs",
                "companions", "output_flags", "base_dir", "max_bytes", "warn_percent",
                "max_percent", "max_age", "lease_ttl", "stale_lock", "stale_temp",
                "ssh_config", "known_hosts", "strict_host_keys", "jump_host",
                "parallel_nodes", "connect_timeout", "nodes"):
        assert f"{key}:" in text
    assert "optimal_window_config.json" in text  # the companions example


def test_empty_file_and_empty_sections_are_defaults(tmp_path):
    p = load_text(tmp_path, "# nothing here\n")
    assert replace(p, source="defaults") == expanded(Policy())
    p = load_text(tmp_path, "inputs:\ngc:\nnodes:\n")
    assert replace(p, source="defaults") == expanded(Policy())


def test_full_file_is_typed(tmp_path):
    p = load_text(tmp_path, """
        cache_root: /mnt/ram/cache/
        enabled: false
        inputs:
          include: ["*.npz"]
          exclude: []
          max_file_size: 512MiB
          min_jobs: 1
          companions:
            "*survivors*.npz": [optimal_window_config.json]
          output_flags: [--out]
          base_dir: /data/runs
        capacity: {max_bytes: 10GB, warn_percent: 60, max_percent: "90%"}
        gc: {max_age: 1w, lease_ttl: 1h30m, stale_lock: 45, stale_temp: 2m}
        transport:
          ssh_config: ~/cfg
          known_hosts: /etc/ssh/known
          strict_host_keys: false
          jump_host: me@bastion:2222
          parallel_nodes: 8
          connect_timeout: 2.5
        nodes:
          "rig-*": {mode: cache, capacity: {max_percent: 70}}
          localhost: {mode: off}
    """)
    assert p.cache_root == "/mnt/ram/cache"
    assert p.enabled is False
    assert p.inputs.include == ("*.npz",) and p.inputs.exclude == ()
    assert p.inputs.max_file_size == 512 << 20
    assert p.inputs.min_jobs == 1
    assert p.inputs.companions == (("*survivors*.npz", ("optimal_window_config.json",)),)
    assert p.inputs.companions_for("/d/x_survivors_1.npz") == ("optimal_window_config.json",)
    assert p.inputs.output_flags == ("--out",)
    assert p.inputs.base_dir == "/data/runs"
    assert p.capacity == CapacityPolicy(max_bytes=10**10, warn_percent=60.0, max_percent=90.0)
    assert (p.gc.max_age, p.gc.lease_ttl, p.gc.stale_lock, p.gc.stale_temp) == (604800, 5400, 45, 120)
    assert p.transport.ssh_config == os.path.expanduser("~/cfg")
    assert p.transport.known_hosts == "/etc/ssh/known"
    assert p.transport.strict_host_keys is False
    assert p.transport.jump_host == "me@bastion:2222"
    assert p.transport.parallel_nodes == 8
    assert p.transport.connect_timeout == 2.5
    assert p.nodes == (
        NodeOverride("rig-*", mode="cache",
                     capacity=CapacityPolicy(max_bytes=10**10, warn_percent=60.0, max_percent=70.0)),
        NodeOverride("localhost", mode="off"),  # YAML reads unquoted `off` as false
    )


# --------------------------------------------------------- sizes, durations
@pytest.mark.parametrize("text, expected", [
    (0, 0),
    (4096, 4096),
    ("4096", 4096),
    ("100 B", 100),
    ("4k", 4096),
    ("4K", 4096),
    ("2M", 2 << 20),
    ("1G", 1 << 30),
    ("512MiB", 512 << 20),
    ("1.5GiB", 3 << 29),
    ("1TiB", 1 << 40),
    ("10KB", 10_000),
    ("10MB", 10_000_000),
    ("3GB", 3 * 10**9),
    (" 7 KiB ", 7168),
    ("1e9", 10**9),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "-1", -1, "12XB", "MiB", "1.2.3MB", "5 MiB extra", True, None, 1.5])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError, match="expected a size such as 512MiB"):
        parse_size(text)


@pytest.mark.parametrize("text, expected", [
    (90, 90.0),
    (2.5, 2.5),
    ("90", 90.0),
    ("30s", 30.0),
    ("15m", 900.0),
    ("4h", 14400.0),
    ("7d", 604800.0),
    ("1w", 604800.0),
    ("1h30m", 5400.0),
    ("1h 30m 10s", 5410.0),
    ("1.5h", 5400.0),
    ("0", 0.0),
])
def test_parse_duration(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "-5", -5, "4 hours", "7x", "h", "30m1h", "1m30m", True, None])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError, match="expected a duration such as 4h or 7d"):
        parse_duration(text)


# -------------------------------------------------------------------- errors
@pytest.mark.parametrize("text, key, expectation", [
    # unknown keys, with the closest known one suggested
    ("inputs:\n  incldue: ['*.npz']\n", "inputs.incldue", "did you mean inputs.include?"),
    ("cache_rot: /x\n", "cache_rot", "did you mean cache_root?"),
    ("min_jobs: 3\n", "min_jobs", "did you mean inputs.min_jobs?"),
    ("gc:\n  colour: red\n", "gc.colour", "unknown key"),
    ("nodes:\n  rig-1: {mdoe: cache}\n", "nodes.rig-1.mdoe", "did you mean nodes.rig-1.mode?"),
    ("nodes:\n  rig-1: {capacity: {max_pct: 5}}\n", "nodes.rig-1.capacity.max_pct", "unknown key"),
    # wrong types
    ("inputs:\n  include: 3\n", "inputs.include", "expected a list of strings, got int"),
    ("inputs:\n  exclude: '*.db'\n", "inputs.exclude", "expected a list of strings, got str"),
    ("inputs:\n  include: ['*.npz', 7]\n", "inputs.include[1]", "expected a list of strings"),
    ("inputs: [a, b]\n", "inputs", "expected a mapping, got list"),
    ("enabled: 'yes'\n", "enabled", "expected true or false, got str"),
    ("enabled: 1\n", "enabled", "expected true or false, got int"),
    ("transport:\n  strict_host_keys: 'no'\n", "transport.strict_host_keys", "expected true or false"),
    ("transport:\n  ssh_config: 5\n", "transport.ssh_config", "expected a string, got int"),
    ("inputs:\n  min_jobs: 0\n", "inputs.min_jobs", "expected an integer >= 1"),
    ("inputs:\n  min_jobs: two\n", "inputs.min_jobs", "expected an integer >= 1, got str"),
    ("inputs:\n  min_jobs: true\n", "inputs.min_jobs", "expected an integer >= 1, got bool"),
    ("transport:\n  parallel_nodes: 0\n", "transport.parallel_nodes", "expected an integer >= 1"),
    # paths
    ("cache_root: relative/dir\n", "cache_root", "expected an absolute path"),
    ("cache_root: /\n", "cache_root", "expected an absolute path below /"),
    ("cache_root: null\n", "cache_root", "expected a string, got null"),
    ("inputs:\n  base_dir: data\n", "inputs.base_dir", "expected an absolute path"),
    # sizes and durations
    ("inputs:\n  max_file_size: 12XB\n", "inputs.max_file_size", "expected a size such as 512MiB"),
    ("inputs:\n  max_file_size: -5\n", "inputs.max_file_size", "expected a size such as 512MiB"),
    ("capacity:\n  max_bytes: lots\n", "capacity.max_bytes", "expected a size such as 512MiB"),
    ("gc:\n  max_age: forever\n", "gc.max_age", "expected a duration such as 4h or 7d"),
    ("gc:\n  lease_ttl: 0\n", "gc.lease_ttl", "must be more than zero"),
    ("gc:\n  stale_lock: -3\n", "gc.stale_lock", "expected a duration such as 4h or 7d"),
    ("transport:\n  connect_timeout: 0s\n", "transport.connect_timeout", "must be more than zero"),
    # percentages
    ("capacity:\n  max_percent: 120\n", "capacity.max_percent", "0 < x <= 100"),
    ("capacity:\n  warn_percent: 0\n", "capacity.warn_percent", "0 < x <= 100"),
    ("capacity:\n  warn_percent: half\n", "capacity.warn_percent", "expected a percentage"),
    ("capacity:\n  warn_percent: 90\n  max_percent: 70\n", "capacity.warn_percent",
     "warn_percent (90) must not exceed max_percent (70)"),
    ("nodes:\n  rig-1: {capacity: {warn_percent: 95}}\n", "nodes.rig-1.capacity.warn_percent",
     "must not exceed max_percent (80)"),
    # companions and output flags
    ("inputs:\n  companions: ['*.npz']\n", "inputs.companions", "expected a mapping"),
    ("inputs:\n  companions:\n    '*.npz': cfg.json\n", "inputs.companions.*.npz",
     "expected a list of file names, got str"),
    ("inputs:\n  companions:\n    '*.npz': [../cfg.json]\n", "inputs.companions.*.npz[0]",
     "expected a plain file name"),
    ("inputs:\n  companions:\n    '*.npz': ['..']\n", "inputs.companions.*.npz[0]",
     "expected a plain file name"),
    ("inputs:\n  output_flags: [output]\n", "inputs.output_flags[0]", "expected an option such as"),
    # transport
    ("transport:\n  jump_host: 'a b'\n", "transport.jump_host", "expected [user@]host[:port]"),
    ("transport:\n  jump_host: 'bastion:99999'\n", "transport.jump_host", "expected [user@]host[:port]"),
    # nodes
    ("nodes: [rig-1]\n", "nodes", "expected a mapping of hostname glob"),
    ("nodes:\n  rig-1: cache\n", "nodes.rig-1", "expected a mapping with mode"),
    ("nodes:\n  rig-1: {mode: ram}\n", "nodes.rig-1.mode", "expected one of cache, direct, off"),
    ("nodes:\n  rig-1: {cache_root: tmp}\n", "nodes.rig-1.cache_root", "expected an absolute path"),
])
def test_invalid_values_name_file_key_and_expectation(tmp_path, text, key, expectation):
    err = error_of(tmp_path, text)
    assert isinstance(err, UserError)
    msg = str(err)
    assert msg.startswith(f"{tmp_path / 'policy.yaml'}: {key}: "), msg
    assert err.key == key
    assert expectation in msg, msg


def test_value_errors_carry_the_line(tmp_path):
    err = error_of(tmp_path, """
        cache_root: /dev/shm/prng
        inputs:
          min_jobs: 2
          incldue: ["*.npz"]
    """)
    assert "(line 5)" in str(err)


@pytest.mark.parametrize("text, line", [
    ("inputs:\n  include: [a, b\nenabled: true\n", 3),
    ("cache_root: /x\ninputs:\n  min_jobs: 2\n   bad: indent: here\n", 4),
    ("enabled: true\nenabled: false\n", 2),  # duplicate key
    ("a: 1\n---\nb: 2\n", 2),  # two documents
])
def test_yaml_syntax_error_names_file_and_line(tmp_path, text, line):
    err = error_of(tmp_path, text)
    msg = str(err)
    assert msg.startswith(str(tmp_path / "policy.yaml") + ": invalid YAML"), msg
    assert f"line {line}" in msg, msg


@pytest.mark.parametrize("text, got", [("- a\n- b\n", "list"), ("just words\n", "str"), ("42\n", "int")])
def test_top_level_must_be_a_mapping(tmp_path, text, got):
    err = error_of(tmp_path, text)
    assert err.key is None
    assert f"expected a mapping of settings at the top level, got {got}" in str(err)


def test_bad_yaml_scalar_is_a_policy_error(tmp_path):
    err = error_of(tmp_path, "stamp: 2024-13-45\n")
    assert "invalid YAML" in str(err)


def test_missing_named_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(PolicyError) as info:
        load_policy(str(missing), env={})
    assert str(missing) in str(info.value) and "not found" in str(info.value)


def test_unreadable_file(tmp_path):
    d = tmp_path / "dir.yaml"
    d.mkdir()
    with pytest.raises(PolicyError, match="cannot read the policy file"):
        load_policy(str(d), env={})
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage\x81")
    with pytest.raises(PolicyError, match="cannot read the policy file: not UTF-8"):
        load_policy(str(binary), env={})


# ----------------------------------------------------------------- discovery
def test_env_policy_file_is_used(tmp_path):
    f = write(tmp_path, "inputs:\n  min_jobs: 5\n", name="elsewhere.yaml")
    (tmp_path / DEFAULT_POLICY_FILE).write_text("inputs:\n  min_jobs: 9\n")
    p = load_policy(env={"PRNG_CACHE_POLICY": f}, cwd=str(tmp_path))
    assert p.inputs.min_jobs == 5 and p.source == f


def test_env_policy_file_must_exist(tmp_path):
    with pytest.raises(PolicyError) as info:
        load_policy(env={"PRNG_CACHE_POLICY": str(tmp_path / "gone.yaml")}, cwd=str(tmp_path))
    assert info.value.source == "environment" and info.value.key == "PRNG_CACHE_POLICY"
    assert "gone.yaml" in str(info.value)


def test_policy_file_in_cwd_is_discovered(tmp_path):
    (tmp_path / DEFAULT_POLICY_FILE).write_text("inputs:\n  min_jobs: 9\n")
    p = load_policy(env={}, cwd=str(tmp_path))
    assert p.inputs.min_jobs == 9
    assert p.source == str(tmp_path / DEFAULT_POLICY_FILE)


def test_policy_file_in_process_cwd_is_discovered(tmp_path, monkeypatch):
    (tmp_path / DEFAULT_POLICY_FILE).write_text("gc:\n  max_age: 1d\n")
    monkeypatch.chdir(tmp_path)
    assert load_policy(env={}).gc.max_age == 86400


def test_explicit_path_beats_env_and_cwd(tmp_path):
    f = write(tmp_path, "inputs:\n  min_jobs: 3\n")
    other = write(tmp_path, "inputs:\n  min_jobs: 4\n", name="other.yaml")
    (tmp_path / DEFAULT_POLICY_FILE).write_text("inputs:\n  min_jobs: 9\n")
    p = load_policy(f, env={"PRNG_CACHE_POLICY": other}, cwd=str(tmp_path))
    assert p.inputs.min_jobs == 3


def test_relative_path_is_resolved_against_cwd(tmp_path):
    write(tmp_path, "inputs:\n  min_jobs: 3\n")
    assert load_policy("policy.yaml", env={}, cwd=str(tmp_path)).inputs.min_jobs == 3


def test_environment_is_read_at_call_time(tmp_path, monkeypatch):
    monkeypatch.setenv("PRNG_CACHE_ROOT", str(tmp_path / "root"))
    monkeypatch.delenv("PRNG_CACHE_POLICY", raising=False)
    monkeypatch.delenv("PRNG_CACHE", raising=False)
    monkeypatch.delenv("USE_RAMDISK", raising=False)
    assert load_policy(cwd=str(tmp_path)).cache_root == str(tmp_path / "root")


# ---------------------------------------------------------------- precedence
def test_precedence_file_env_overrides(tmp_path):
    f = write(tmp_path, """
        cache_root: /from/file
        inputs: {min_jobs: 3, max_file_size: 1MiB}
        gc: {lease_ttl: 2h}
    """)
    p = load_policy(f, env={})
    assert (p.cache_root, p.inputs.min_jobs, p.gc.lease_ttl) == ("/from/file", 3, 7200)

    p = load_policy(f, env={"PRNG_CACHE_ROOT": "/from/env"})
    assert p.cache_root == "/from/env"
    assert p.inputs.max_file_size == 1 << 20  # untouched keys keep the file's value

    p = load_policy(f, env={"PRNG_CACHE_ROOT": "/from/env"},
                    overrides={"cache_root": "/x", "inputs.min_jobs": 1, "gc.lease_ttl": "1h"})
    assert (p.cache_root, p.inputs.min_jobs, p.gc.lease_ttl) == ("/x", 1, 3600)
    assert p.inputs.max_file_size == 1 << 20
    assert p.source == f


def test_overrides_accept_whole_sections_and_nodes(tmp_path):
    f = write(tmp_path, "nodes:\n  'rig-*': {mode: direct}\n")
    p = load_policy(f, env={}, overrides={
        "capacity": {"max_percent": 90},
        "capacity.warn_percent": 70,
        "nodes.rig-1.lab.mode": "off",
        "nodes.rig-1.lab.capacity.max_percent": 75,
    })
    assert (p.capacity.warn_percent, p.capacity.max_percent) == (70, 90)
    assert [n.pattern for n in p.nodes] == ["rig-*", "rig-1.lab"]  # command line entries win
    assert p.nodes[1].mode == "off" and p.nodes[1].capacity.max_percent == 75
    assert p.for_node("rig-1.lab", is_localhost=False).mode == "off"


@pytest.mark.parametrize("overrides, key, expectation", [
    ({"inputs.incldue": ["x"]}, "inputs.incldue", "did you mean inputs.include?"),
    ({"inputs.min_jobs": "1"}, "inputs.min_jobs", "expected an integer >= 1, got str"),
    ({"gc.lease_ttl": "soon"}, "gc.lease_ttl", "expected a duration such as 4h or 7d"),
    ({"bogus": 1}, "bogus", "unknown key"),
    ({"inputs..min_jobs": 1}, "inputs..min_jobs", "expected a dotted key"),
])
def test_override_errors_name_command_line(tmp_path, overrides, key, expectation):
    with pytest.raises(PolicyError) as info:
        load_policy(env={}, cwd=str(tmp_path), overrides=overrides)
    assert info.value.source == "command line" and info.value.key == key
    assert str(info.value).startswith(f"command line: {key}: ")
    assert expectation in str(info.value)


def test_capacity_conflict_across_layers_blames_the_later_one(tmp_path):
    f = write(tmp_path, "capacity:\n  warn_percent: 75\n")
    with pytest.raises(PolicyError) as info:
        load_policy(f, env={}, overrides={"capacity.max_percent": 60})
    assert info.value.source == "command line" and info.value.key == "capacity.max_percent"


@pytest.mark.parametrize("env", [
    {"PRNG_CACHE": "0"}, {"PRNG_CACHE": "false"}, {"PRNG_CACHE": "OFF"}, {"PRNG_CACHE": "No"},
    {"USE_RAMDISK": "0"}, {"USE_RAMDISK": "false"}, {"USE_RAMDISK": "off"},
    {"PRNG_CACHE": "1", "USE_RAMDISK": "0"},
])
def test_environment_disables(tmp_path, env):
    p = load_policy(env=env, cwd=str(tmp_path))
    assert p.enabled is False
    assert p.for_node("rig-1", is_localhost=False).mode == "off"


def test_environment_enables_but_use_ramdisk_does_not(tmp_path):
    f = write(tmp_path, "enabled: false\n")
    assert load_policy(f, env={"PRNG_CACHE": "yes"}).enabled is True
    assert load_policy(f, env={"USE_RAMDISK": "1"}).enabled is False
    assert load_policy(f, env={"PRNG_CACHE": ""}).enabled is False  # empty: unset
    assert load_policy(f, env={"PRNG_CACHE": "1"}, overrides={"enabled": False}).enabled is False


@pytest.mark.parametrize("env, key, expectation", [
    ({"PRNG_CACHE": "maybe"}, "PRNG_CACHE", "got 'maybe'"),
    ({"USE_RAMDISK": "sometimes"}, "USE_RAMDISK", "got 'sometimes'"),
    ({"PRNG_CACHE_ROOT": "relative"}, "PRNG_CACHE_ROOT", "expected an absolute path"),
])
def test_bad_environment_values(tmp_path, env, key, expectation):
    with pytest.raises(PolicyError) as info:
        load_policy(env=env, cwd=str(tmp_path))
    assert info.value.source == "environment" and info.value.key == key
    assert str(info.value).startswith(f"environment: {key}: ")
    assert expectation in str(info.value)


# ------------------------------------------------------------ node overrides
def test_for_node_defaults(tmp_path):
    p = load_policy(env={}, cwd=str(tmp_path))
    local = p.for_node("localhost", is_localhost=True)
    remote = p.for_node("rig-1", is_localhost=False)
    assert local.mode == "direct" and remote.mode == "cache"
    assert local.cache_root == remote.cache_root == "/dev/shm/prng"
    assert remote.capacity == p.capacity


def test_for_node_glob_and_later_wins(tmp_path):
    p = load_text(tmp_path, """
        capacity: {max_bytes: 1GiB}
        nodes:
          "rig-*": {mode: direct, cache_root: /mnt/ram}
          "rig-7": {mode: cache, capacity: {max_percent: 60}}
          localhost: {mode: cache}
    """)
    rig1 = p.for_node("rig-1", is_localhost=False)
    assert (rig1.mode, rig1.cache_root, rig1.capacity) == ("direct", "/mnt/ram", p.capacity)
    rig7 = p.for_node("rig-7", is_localhost=False)
    assert (rig7.mode, rig7.cache_root) == ("cache", "/mnt/ram")  # root from the earlier match
    assert rig7.capacity == CapacityPolicy(max_bytes=1 << 30, warn_percent=50.0, max_percent=60.0)
    assert p.for_node("localhost", is_localhost=True).mode == "cache"
    assert p.for_node("gpu-2", is_localhost=False).mode == "cache"


def test_for_node_disabled_is_off(tmp_path):
    p = load_text(tmp_path, "enabled: false\nnodes:\n  '*': {mode: cache}\n")
    assert p.for_node("rig-1", is_localhost=False).mode == "off"
    assert p.for_node("localhost", is_localhost=True).mode == "off"


def test_environment_and_command_line_roots_beat_the_files_node_roots(tmp_path):
    """defaults < file < environment < command line holds per node: the
    file's nodes.<glob>.cache_root is a file value, so PRNG_CACHE_ROOT and
    --cache-root win over it; a node root given on the command line wins over
    the command line's global one."""
    f = write(tmp_path, """
        cache_root: /file/all
        nodes:
          "rig-*": {cache_root: /file/rigs, mode: cache}
    """)

    def root(host="rig-1", **kw):
        return load_policy(f, **kw).for_node(host, is_localhost=False).cache_root

    assert root(env={}) == "/file/rigs" and root("gpu-1", env={}) == "/file/all"
    env = {"PRNG_CACHE_ROOT": "/env"}
    assert root(env=env) == root("gpu-1", env=env) == "/env"
    assert load_policy(f, env=env).for_node("rig-1", is_localhost=False).mode == "cache"  # the rest stays
    assert root(env=env, overrides={"cache_root": "/cli"}) == "/cli"
    assert root(env={}, overrides={"cache_root": "/cli"}) == "/cli"
    both = {"cache_root": "/cli", "nodes.rig-1.cache_root": "/cli/rig-1"}
    assert root(env=env, overrides=both) == "/cli/rig-1" and root("rig-2", env=env, overrides=both) == "/cli"
