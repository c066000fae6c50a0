"""What a stage imports at start: no test or bench machinery, paramiko's
optional invoke (only for ssh-config ``Match exec``) deferred until used, and
what only some stages need (PyYAML for a policy file, sshtunnel for a jump
host, difflib for a mistyped key, decimal for a size given as text) imported
when needed. Mechanism only; start-up time is measured by
benchmarks/import_time.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FORBIDDEN = ("pytest", "hypothesis", "matplotlib", "numpy", "prng_cache.bench", "prng_cache.testing",
             "tqdm", "unittest", "asyncio")
#: imported only when a stage needs them (see the module docstring)
DEFERRED = ("yaml", "sshtunnel", "prng_cache.transport.ssh.tunnel", "difflib", "decimal")


def _loaded_after(code: str) -> dict:
    probe = (f"{code}\nimport sys, json\n"
             "inv = sys.modules.get('invoke')\n"
             "print(json.dumps({'modules': sorted(sys.modules), "
             "'invoke': None if inv is None else type(inv).__name__}))")
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", probe], env=env, cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out)


def _forbidden(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]


def test_cli_and_its_parser_import_no_test_or_bench_machinery():
    doc = _loaded_after("import prng_cache.cli\nprng_cache.cli.build_parser()")
    assert _forbidden(doc["modules"]) == []


def test_ssh_transport_defers_invoke_until_used():
    doc = _loaded_after("import prng_cache.cli, prng_cache.transport.ssh")
    assert _forbidden(doc["modules"]) == []
    assert doc["invoke"] in (None, "_DeferredModule")  # None: invoke not installed


def test_stage_imports_defer_what_only_some_stages_need():
    doc = _loaded_after("import prng_cache.cli, prng_cache.transport.ssh")
    assert [m for m in DEFERRED if m in doc["modules"]] == []


def test_policy_without_a_file_never_imports_yaml(tmp_path):
    code = (f"import prng_cache\np = prng_cache.load_policy(env={{}}, cwd={str(tmp_path)!r})\n"
            "assert p.source == 'defaults'")
    assert "yaml" not in _loaded_after(code)["modules"]


def test_policy_file_imports_yaml_when_read(tmp_path):
    (tmp_path / "cache_policy.yaml").write_text("inputs:\n  max_file_size: 1.5GiB\n")
    code = (f"import prng_cache\np = prng_cache.load_policy(env={{}}, cwd={str(tmp_path)!r})\n"
            "assert p.inputs.max_file_size == 3 << 29")
    modules = _loaded_after(code)["modules"]
    assert "yaml" in modules and "decimal" in modules


def test_deferred_invoke_still_serves_match_exec():
    # paramiko.config calls invoke.run for `Match exec`: the stand-in loads the real package
    code = ("import prng_cache.transport.ssh, paramiko.config as c, sys\n"
            "if c.invoke is not None:\n"
            "    cfg = c.SSHConfig.from_text('Match exec \"exit 0\"\\n  Port 2222\\n')\n"
            "    assert cfg.lookup('rig-a')['port'] == '2222'\n"
            "    assert type(sys.modules['invoke']).__name__ == 'module'")
    doc = _loaded_after(code)
    assert doc["invoke"] in (None, "module")


def test_bench_subcommand_still_parses():
    from prng_cache.cli import build_parser

    args = build_parser().parse_args(["bench", "--quick", "--json"])
    assert args.quick and args.json and args.func.__name__ == "cmd_bench"
