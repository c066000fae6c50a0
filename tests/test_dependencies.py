"""Dependencies say what the code uses, and the private APIs we lean on are
still there.

- every third-party module imported by ``prng_cache`` is declared in
  pyproject.toml, and every declared runtime dependency is imported;
- the installed paramiko and sshtunnel are within the declared bounds;
- paramiko's private SFTP API (pipelined streams) and sshtunnel's hooks
  (single-gateway jumps) are present: a new release that drops them fails
  here, loudly, and not in a user's stage.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")
packaging_requirements = pytest.importorskip("packaging.requirements")

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirements(section: list[str]) -> dict[str, "packaging_requirements.Requirement"]:
    reqs = [packaging_requirements.Requirement(r) for r in section]
    return {md.distribution(r.name).metadata["Name"].lower() if _installed(r.name) else r.name.lower(): r
            for r in reqs}


def _installed(name: str) -> bool:
    try:
        md.distribution(name)
        return True
    except md.PackageNotFoundError:
        return False


def _imported_top_modules() -> set[str]:
    mods: set[str] = set()
    for path in (ROOT / "prng_cache").rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods.add(node.module.split(".")[0])
    return {m for m in mods if m not in sys.stdlib_module_names and m != "prng_cache"}


def _distributions_of(modules: set[str]) -> set[str]:
    owners = md.packages_distributions()
    out = set()
    for m in modules:
        dists = owners.get(m)
        assert dists, f"prng_cache imports {m!r}, which no installed distribution provides"
        out.update(d.lower() for d in dists)
    return out


def test_imports_and_declared_dependencies_agree():
    project = _pyproject()["project"]
    runtime = _requirements(project["dependencies"])
    optional = {}
    for extra in project.get("optional-dependencies", {}).values():
        optional.update(_requirements(extra))
    used = _distributions_of(_imported_top_modules())
    assert "paramiko" in used and "sshtunnel" in used
    undeclared = used - set(runtime) - set(optional)
    assert not undeclared, f"imported but not declared in pyproject.toml: {sorted(undeclared)}"
    unused = set(runtime) - used
    assert not unused, f"declared but never imported by prng_cache: {sorted(unused)}"


@pytest.mark.parametrize("name", ["paramiko", "sshtunnel"])
def test_installed_version_within_declared_bounds(name):
    req = _requirements(_pyproject()["project"]["dependencies"])[name]
    assert req.specifier, f"{name} must be declared with bounds"
    assert any(s.operator == "<" for s in req.specifier), f"{name} needs an upper bound (private API)"
    assert req.specifier.contains(md.version(name)), f"installed {name} {md.version(name)} not in {req.specifier}"


def test_paramiko_private_sftp_api_is_there():
    from prng_cache.transport.ssh import streams

    assert streams.private_api_problems() == []

    # ...and the check would notice a paramiko without it
    import paramiko

    class Changed(paramiko.SFTPClient):
        _convert_status = None

        def _async_request(self, t, *args):  # lost its fileobj parameter
            return 0

    problems = streams.private_api_problems(Changed)
    assert any("_convert_status is missing" in p for p in problems)
    assert any(re.search(r"_async_request\(self, t, \*\) is not _async_request\(self, fileobj, t, \*\)", p)
               for p in problems), problems

    class NoCallback(paramiko.SFTPClient):
        def _read_response(self, waitfor=None):  # answers no other owner's requests
            return self._convert_status(None)

    assert streams.private_api_problems(NoCallback) == [
        "SFTPClient._read_response no longer calls fileobj._async_response"]


def test_sshtunnel_hooks_are_there():
    from prng_cache.transport.ssh import tunnel

    assert tunnel.hook_problems() == ()
