"""The policy dataclasses are the single declaration of its keys.

Every field is read from YAML, documented in the shipped cache_policy.yaml
and hinted at when misspelt; a field added to a dataclass is parsed,
validated and hinted without any change to the loader.
"""

from __future__ import annotations

import dataclasses
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from prng_cache.errors import PolicyError
from prng_cache.policy import DEFAULT_POLICY_FILE, NodeOverride, Policy, load_policy
from prng_cache.policy.loader import load
from prng_cache.policy.model import InputsPolicy
from prng_cache.policy.schema import Section, Setting, Table, keys, section, setting, table
from prng_cache.policy.values import duration, positive_int

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / DEFAULT_POLICY_FILE


def schema_paths(root: type = Policy) -> dict[str, object]:
    """Every key path a policy file may hold outside table entries -> its kind."""
    out: dict[str, object] = {}
    for name, kind in keys(root).items():
        out[name] = kind
        if isinstance(kind, Section):
            out.update({f"{name}.{sub}": k for sub, k in keys(kind.cls).items()})
    return out


def yaml_keys(text: str) -> dict[str, int]:
    """Key paths (two levels deep) of a YAML text -> 1-based line of the key."""
    out: dict[str, int] = {}
    for k, v in yaml.compose(text).value:
        out[k.value] = k.start_mark.line + 1
        if isinstance(v, yaml.MappingNode):
            out.update({f"{k.value}.{sk.value}": sk.start_mark.line + 1 for sk, _ in v.value})
    return out


def write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "policy.yaml"
    p.write_text(textwrap.dedent(text))
    return str(p)


# ------------------------------------------------------------ the real schema
def test_every_field_is_a_declared_key_or_not_a_key():
    # keys() refuses a field declared without setting()/section()/table()/not_a_key()
    seen = {Policy}
    todo = [Policy]
    while todo:
        cls = todo.pop()
        declared = keys(cls)
        for f in dataclasses.fields(cls):
            assert f.name in declared or f.name in ("source", "pattern"), f"{cls.__name__}.{f.name}"
        for kind in declared.values():
            if isinstance(kind, (Section, Table)) and kind.cls not in seen:
                seen.add(kind.cls)
                todo.append(kind.cls)
    assert {c.__name__ for c in seen} == {"Policy", "InputsPolicy", "CapacityPolicy", "GcPolicy",
                                          "TransportPolicy", "NodeOverride"}


def test_shipped_file_holds_exactly_the_schema_keys():
    shipped, declared = set(yaml_keys(SHIPPED.read_text())), set(schema_paths())
    assert not declared - shipped, f"declared but not in {DEFAULT_POLICY_FILE}: {sorted(declared - shipped)}"
    assert not shipped - declared, f"in {DEFAULT_POLICY_FILE} but not declared: {sorted(shipped - declared)}"


def test_every_shipped_setting_has_its_doc_comment_above():
    lines = SHIPPED.read_text().splitlines()
    for path, line in yaml_keys(SHIPPED.read_text()).items():
        if isinstance(schema_paths()[path], Setting):
            assert lines[line - 2].strip().startswith("#"), f"{path} (line {line}) has no comment above it"


def test_shipped_file_documents_every_node_key():
    # nodes: {} ships empty; its keys are listed in the comment block above it
    lines = SHIPPED.read_text().splitlines()
    at = yaml_keys(SHIPPED.read_text())["nodes"] - 1
    start = at
    while start > 0 and lines[start - 1].startswith("#"):
        start -= 1
    comment = "\n".join(lines[start:at])
    for key in keys(NodeOverride):
        assert key in comment, key


def test_example_policy_uses_only_known_keys():
    p = load_policy(str(REPO / "examples" / DEFAULT_POLICY_FILE), env={})
    assert p.cache_root == "/dev/shm/prng-example"
    assert p.for_node("localhost", is_localhost=True).mode == "cache"


@pytest.mark.parametrize("path", sorted(p for p, k in schema_paths().items() if isinstance(k, Setting)))
def test_misspelt_shipped_key_names_file_line_and_the_key(tmp_path, path):
    """Swap two letters of each key in the shipped file: the error names the
    file, the key as written, the line, and the key meant."""
    text = SHIPPED.read_text()
    line = yaml_keys(text)[path]
    leaf = path.rsplit(".", 1)[-1]
    typo = leaf[:-2] + leaf[-1] + leaf[-2]
    lines = text.splitlines(keepends=True)
    assert f"{leaf}:" in lines[line - 1]
    lines[line - 1] = lines[line - 1].replace(f"{leaf}:", f"{typo}:", 1)
    f = tmp_path / "policy.yaml"
    f.write_text("".join(lines))
    with pytest.raises(PolicyError) as info:
        load_policy(str(f), env={})
    wrong = path[: -len(leaf)] + typo
    assert info.value.key == wrong
    assert str(info.value) == f"{f}: {wrong}: unknown key (did you mean {path}?) (line {line})"


@pytest.mark.parametrize("host, ok", [
    ("bastion", True), ("me@bastion", True), ("bastion:2222", True), ("me@10.0.0.1:22", True),
    ("[::1]:22", True), ("me@[fe80::1]", True),
    ("a b", False), ("bastion:0", False), ("bastion:65536", False), ("bastion:", False),
    ("@bastion", False), ("me@", False), ("host/x", False), ("", False),
])
def test_jump_host_syntax(tmp_path, host, ok):
    # a guard for moving [user@]host[:port] to the transport package's parser
    f = write(tmp_path, f"transport:\n  jump_host: {host!r}\n")
    if ok:
        assert load_policy(f, env={}).transport.jump_host == host
    else:
        with pytest.raises(PolicyError, match=r"transport\.jump_host: expected "):
            load_policy(f, env={})


# ------------------------------------------------------- a field added later
@dataclass(frozen=True)
class InputsPlus(InputsPolicy):
    retries: int = setting(3, positive_int)


@dataclass(frozen=True)
class ExtraPolicy:
    grace: float = setting(60.0, duration)


@dataclass(frozen=True)
class NodePlus(NodeOverride):
    priority: int | None = setting(None, positive_int)


@dataclass(frozen=True)
class PolicyPlus(Policy):
    inputs: InputsPlus = section(InputsPlus)
    extra: ExtraPolicy = section(ExtraPolicy)
    nodes: tuple[NodePlus, ...] = table(NodePlus, key_field="pattern", what="hostname glob")


def plus_error(tmp_path, text: str, **kw) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        load(PolicyPlus, write(tmp_path, text), env={}, **kw)
    return info.value


def test_new_fields_are_read_with_defaults(tmp_path):
    p = load(PolicyPlus, write(tmp_path, """
        inputs:
          min_jobs: 1
          retries: 5
        extra: {grace: 2m}
        nodes:
          rig-1: {priority: 2, mode: direct}
    """), env={})
    assert (p.inputs.retries, p.inputs.min_jobs, p.extra.grace) == (5, 1, 120.0)
    assert p.nodes == (NodePlus("rig-1", mode="direct", priority=2),)
    d = load(PolicyPlus, env={}, cwd=str(tmp_path / "nowhere"))
    assert (d.inputs.retries, d.extra.grace, d.nodes) == (3, 60.0, ())
    assert d.transport.ssh_config == load_policy(env={}, cwd=str(tmp_path)).transport.ssh_config


def test_new_fields_are_validated_with_key_and_line(tmp_path):
    err = plus_error(tmp_path, "cache_root: /x\ninputs:\n  retries: 0\n")
    assert err.key == "inputs.retries"
    assert err.problem == "expected an integer >= 1, got 0 (line 3)"
    err = plus_error(tmp_path, "extra:\n  grace: soon\n")
    assert err.key == "extra.grace" and "expected a duration" in err.problem and "(line 2)" in err.problem
    err = plus_error(tmp_path, "nodes:\n  rig-1:\n    priority: high\n")
    assert err.key == "nodes.rig-1.priority" and "(line 3)" in err.problem


def test_new_fields_get_did_you_mean_hints(tmp_path):
    err = plus_error(tmp_path, "inputs:\n  retires: 2\n")
    assert (err.key, err.problem) == ("inputs.retires", "unknown key (did you mean inputs.retries?) (line 2)")
    err = plus_error(tmp_path, "retries: 2\n")  # written at the wrong level
    assert err.problem == "unknown key (did you mean inputs.retries?) (line 1)"
    err = plus_error(tmp_path, "extra:\n  grcae: 1s\n")
    assert err.problem == "unknown key (did you mean extra.grace?) (line 2)"
    err = plus_error(tmp_path, "nodes:\n  rig-1: {priorty: 1}\n")
    assert err.problem == "unknown key (did you mean nodes.rig-1.priority?) (line 2)"
    err = plus_error(tmp_path, "nodes:\n  rig-1: 3\n")
    assert "expected a mapping with mode, cache_root, capacity, priority, got int" in err.problem


def test_new_fields_take_command_line_overrides(tmp_path):
    p = load(PolicyPlus, env={}, cwd=str(tmp_path),
             overrides={"inputs.retries": 7, "extra.grace": "1h", "nodes.rig-1.lab.priority": 4})
    assert (p.inputs.retries, p.extra.grace) == (7, 3600.0)
    assert p.nodes == (NodePlus("rig-1.lab", priority=4),)
    with pytest.raises(PolicyError) as info:
        load(PolicyPlus, env={}, cwd=str(tmp_path), overrides={"inputs.retries": "many"})
    assert str(info.value) == "command line: inputs.retries: expected an integer >= 1, got str"


def test_a_field_without_a_declaration_is_refused():
    @dataclass(frozen=True)
    class Sloppy:
        forgotten: int = 3

    with pytest.raises(TypeError, match=r"Sloppy\.forgotten: declare it with setting\(\)"):
        keys(Sloppy)
