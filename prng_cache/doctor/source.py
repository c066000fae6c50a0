"""doctor's static check of a coordinator's source (parsed with ast, never run)."""

from __future__ import annotations

import ast
import inspect
import os
from dataclasses import dataclass

from .. import hookspecs
from ..errors import InputFileError
from ..userdata import read_text
from .core import README_SECTION, Check

#: hook -> alternatives that satisfy it (coordinator.py calls the payload form)
HOOKS: dict[str, tuple[str, ...]] = {
    "coordinator_run_start": ("coordinator_run_start",),
    "coordinator_job_args": ("coordinator_job_args", "coordinator_job_payload"),
    "coordinator_run_end": ("coordinator_run_end",),
}


@dataclass
class _HookCall:
    name: str
    line: int
    positional: bool
    keywords: frozenset[str] | None  # None: **kwargs passed
    function: ast.AST | None  # the function it is called in


def _hook_calls(tree: ast.AST) -> list[_HookCall]:
    """Every ``<x>.hook.<name>(...)`` call, with the function holding it."""
    calls: list[_HookCall] = []

    def visit(node: ast.AST, func: ast.AST | None) -> None:
        for child in ast.iter_child_nodes(node):
            here = child if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
            if (isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute)
                    and isinstance(child.func.value, ast.Attribute) and child.func.value.attr == "hook"):
                kws = None if any(k.arg is None for k in child.keywords) else frozenset(
                    k.arg for k in child.keywords if k.arg)
                calls.append(_HookCall(child.func.attr, child.lineno, bool(child.args), kws, func))
            visit(child, here)

    visit(tree, None)
    return calls


def _plugin_manager_use(tree: ast.AST) -> tuple[int | None, int | None]:
    """(line of the import of plugin_manager, line of its first call)."""
    imported: int | None = None
    names: set[str] = set()
    modules: set[str] = set()  # names bound to prng_cache.coordinator
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for a in node.names:
                if a.name == "plugin_manager":
                    imported = imported or node.lineno
                    names.add(a.asname or a.name)
                elif node.module == "prng_cache" and a.name == "coordinator":
                    imported = imported or node.lineno
                    modules.add(a.asname or a.name)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name in ("prng_cache.coordinator", "plugin_manager") or a.name.endswith(".plugin_manager"):
                    imported = imported or node.lineno
                    modules.add(a.asname or a.name)
    called: int | None = None
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if (isinstance(f, ast.Name) and f.id in names) or (
                    isinstance(f, ast.Attribute) and f.attr == "plugin_manager"):
                called = node.lineno if called is None else min(called, node.lineno)
    return imported, called


def _mentions_dry_run(expr: ast.AST) -> bool:
    for n in ast.walk(expr):
        if isinstance(n, ast.Name) and "dry_run" in n.id.lower():
            return True
        if isinstance(n, ast.Attribute) and "dry_run" in n.attr.lower():
            return True
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value.lower().lstrip("-") in (
                "dry_run", "dry-run"):
            return True
    return False


def _leaves(body: list[ast.stmt]) -> bool:
    """The block returns or exits."""
    for n in (x for stmt in body for x in ast.walk(stmt)):
        if isinstance(n, ast.Return):
            return True
        if isinstance(n, ast.Raise) and n.exc is not None and "SystemExit" in ast.dump(n.exc):
            return True
        if isinstance(n, ast.Call):
            f = n.func
            if (isinstance(f, ast.Name) and f.id in ("exit", "quit")) or (
                    isinstance(f, ast.Attribute) and f.attr in ("exit", "_exit")):
                return True
    return False


def _dry_run_returns_after(call: _HookCall) -> int | None:
    """Line of a dry-run early return placed after ``call`` in its function."""
    if call.function is None:
        return None
    for n in ast.walk(call.function):
        if isinstance(n, ast.If) and n.lineno > call.line and _mentions_dry_run(n.test) and _leaves(n.body):
            return n.lineno
    return None


def _spec_args(hook: str) -> tuple[str, ...] | None:
    spec = getattr(hookspecs, hook, None)
    if spec is None:
        return None
    return tuple(inspect.signature(spec).parameters)


def check_coordinator(path: str) -> list[Check]:
    """Static check of the users' coordinator source: the plugin manager is
    imported and made, the three hooks are called (keyword arguments only,
    as pluggy requires, with every argument the specification names), and
    ``coordinator_run_start`` does not run before a dry-run early return.
    The file is parsed, never imported or run. Raises :class:`InputFileError`
    when it cannot be read or is not Python."""
    text = read_text(path, InputFileError, unreadable="cannot read the coordinator source")
    try:
        tree = ast.parse(text, filename=path)
    except SyntaxError as exc:
        raise InputFileError(path, f"line {exc.lineno}", f"not valid Python: {exc.msg}") from None
    base = os.path.basename(path)
    calls = _hook_calls(tree)
    imported, made = _plugin_manager_use(tree)
    problems: list[str] = []
    found: list[str] = []
    if imported is None:
        problems.append("no import of prng_cache.coordinator.plugin_manager")
    else:
        found.append(f"imports plugin_manager (line {imported})")
        if made is None:
            problems.append("plugin_manager() is never called")
    for hook, names in HOOKS.items():
        mine = [c for c in calls if c.name in names]
        if not mine:
            alt = f" (or {' / '.join(names[1:])})" if len(names) > 1 else ""
            problems.append(f"hook.{hook}{alt} is never called")
            continue
        found.append(", ".join(f"hook.{c.name} (line {c.line})" for c in mine))
        for c in mine:
            if c.positional:
                problems.append(f"hook.{c.name} at line {c.line} is given positional arguments "
                                "(pluggy hooks take keyword arguments only)")
                continue
            want = _spec_args(c.name)
            if want is not None and c.keywords is not None:
                lacking = [a for a in want if a not in c.keywords]
                if lacking:
                    problems.append(f"hook.{c.name} at line {c.line} lacks {', '.join(lacking)}= "
                                    "(the call would raise)")
    checks: list[Check] = []
    if problems:
        checks.append(Check("coordinator", False, f"{base}: " + "; ".join(problems),
                            fix=f"add the lines of the {README_SECTION} to {base}"))
    else:
        checks.append(Check("coordinator", True, f"{base}: " + "; ".join(found)))
    late = [(c, line) for c in calls if c.name == "coordinator_run_start"
            for line in [_dry_run_returns_after(c)] if line is not None]
    if late:
        c, line = late[0]
        checks.append(Check("coordinator_dry_run", True,
                            f"{base}: hook.coordinator_run_start (line {c.line}) runs before the dry-run "
                            f"return at line {line}: a dry run would stage and lease inputs for a run that "
                            f"never happens; move the hook call after that return ({README_SECTION})",
                            warning=True))
    return checks
