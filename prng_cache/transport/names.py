"""Host and user names as OpenSSH accepts them, and ProxyCommand as argv.

Names from the users' cluster file end up in ``%h`` / ``%r`` / ``%n`` of a
``ProxyCommand`` and on command lines (``ssh jump nc %h %p`` hands them to
the jump host's shell). OpenSSH refuses such names when they could be read
as shell syntax or as an option (``misc.c``: ``valid_hostname``,
``valid_ruser``); prng-cache applies the same rules before anything is
contacted.

A ``ProxyCommand`` is run without a local shell: it is split into words as
``sh`` would split it (quotes honoured), the tokens ``%h %p %r %n %%`` are
substituted inside each word (so a name can never become two words), a
leading ``~`` of a word is expanded, a leading ``exec`` is dropped, and the
program is started directly. Shell syntax that would need a shell
(``|``, ``&``, ``;``, ``<``, ``>``, ``(``, ``)``, backquotes, ``$``) is
refused with :class:`ProxyCommandError`: put such a pipeline in a script and
name the script, or use ``ProxyJump``.
"""

from __future__ import annotations

import os
import re
import shlex

__all__ = [
    "ProxyCommandError",
    "hostname_problem",
    "proxy_argv",
    "username_problem",
]

#: characters OpenSSH's valid_hostname() refuses (besides whitespace and
#: control characters)
_HOST_BAD = set("'`\"$\\;&<>|(){},")
#: characters OpenSSH's valid_ruser() refuses (besides control characters),
#: plus '$': a user name has no use for it, and in a ProxyCommand that hands
#: %r to a shell it would expand
_USER_BAD = set("'`\";&<>|(){}$")


def _describe(ch: str) -> str:
    if ch.isspace():
        return f"whitespace ({ch!r})"
    if not ch.isprintable():
        return f"a control character ({ch!r})"
    return repr(ch)


def hostname_problem(name: str) -> str | None:
    """Why OpenSSH would refuse ``name`` as a host name (None: it is fine).

    Refused: empty, a leading ``-`` (it would read as an option), whitespace,
    control characters and any of ``' ` " $ \\ ; & < > | ( ) { } ,``."""
    if not name:
        return "it is empty"
    if name.startswith("-"):
        return "it starts with '-'"
    for ch in name:
        if ch in _HOST_BAD or ch.isspace() or not ch.isprintable():
            return f"it contains {_describe(ch)}"
    return None


def username_problem(name: str) -> str | None:
    """Why ``name`` is refused as a remote user name (None: fine).

    OpenSSH's rules (``valid_ruser``: no leading ``-``, control characters,
    ``' ` " ; & < > | ( ) { }``, trailing backslash), and a little stricter:
    no whitespace and no ``$`` at all (OpenSSH refuses only whitespace
    followed by ``-``)."""
    if not name:
        return "it is empty"
    if name.startswith("-"):
        return "it starts with '-'"
    for i, ch in enumerate(name):
        nxt = name[i + 1] if i + 1 < len(name) else ""
        if ch in _USER_BAD or ch.isspace() or not ch.isprintable():
            return f"it contains {_describe(ch)}"
        if ch == "\\" and not nxt:
            return "it ends with a backslash"
    return None


class ProxyCommandError(ValueError):
    """A ProxyCommand prng-cache will not run (it needs a shell, or uses an
    unknown %-token)."""


def _shell_syntax(command: str) -> str | None:
    """The first character that only a shell could interpret, outside single
    quotes (``$`` and backquotes also inside double quotes)."""
    quote = ""
    i = 0
    while i < len(command):
        ch = command[i]
        if quote == "'":
            if ch == "'":
                quote = ""
        elif ch == "\\":
            i += 1  # the next character is literal (in or out of double quotes)
        elif quote == '"':
            if ch == '"':
                quote = ""
            elif ch in "$`":
                return ch
        elif ch in "'\"":
            quote = ch
        elif ch in "|&;<>()`$":
            return ch
        i += 1
    return None


_TOKEN = re.compile(r"%(.?)", re.S)


def proxy_argv(command: str, *, host: str, port: int, user: str, alias: str) -> list[str]:
    """The argv to run for ``ProxyCommand command``, without a shell.

    ``host`` is the resolved HostName (``%h``), ``alias`` the name as given
    (``%n``), ``user`` the remote user (``%r``). Raises ProxyCommandError for
    shell syntax, unbalanced quotes or an unknown token."""
    bad = _shell_syntax(command)
    if bad is not None:
        raise ProxyCommandError(
            f"ProxyCommand {command!r} uses shell syntax ({bad!r}); prng-cache runs ProxyCommand "
            "without a shell: put the pipeline in a script and name the script, or use ProxyJump"
        )
    try:
        words = shlex.split(command, comments=False, posix=True)
    except ValueError as e:
        raise ProxyCommandError(f"ProxyCommand {command!r}: {e}") from None
    if words and words[0] == "exec":
        words = words[1:]
    if not words:
        raise ProxyCommandError(f"ProxyCommand {command!r} names no program")
    values = {"%": "%", "h": host, "p": str(port), "r": user, "n": alias}

    def sub(m: re.Match) -> str:
        key = m.group(1)
        if not key:
            raise ProxyCommandError(f"ProxyCommand {command!r}: a lone '%' at the end of a word")
        if key not in values:
            raise ProxyCommandError(
                f"ProxyCommand {command!r}: unknown token %{key} (ProxyCommand takes %h %p %r %n %%)"
            )
        return values[key]

    out = []
    for w in words:
        if w == "~" or w.startswith("~/"):
            w = os.path.expanduser("~") + w[1:]
        out.append(_TOKEN.sub(sub, w))
    return out
