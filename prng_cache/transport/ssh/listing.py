"""Many directories of one parent listed by ONE command on the node.

Pipelined SFTP listings still cost four requests per directory, each a
packet to build, encrypt and send in Python: thousands of entry directories
take seconds. One ``find`` over an exec channel lists them all for the price
of starting a session. It needs a POSIX ``sh``, GNU ``find`` (``-printf``)
and ``xargs`` on the node; the command proves it ran to the end with a
sentinel, and anything else (no shell, another find, a failure) returns
None: the caller lists over SFTP instead, so an SFTP-only node keeps working.

Names travel NUL-separated on stdin and in the output (input names may hold
newlines, tabs, quotes); the node's shell never sees them. ``find -P``
never follows a symlink, also not as a starting point.
"""

from __future__ import annotations

import logging
import shlex
import stat

from ..base import FileInfo

log = logging.getLogger(__name__)

_OK, _END = b"prng-find-ok", b"prng-find-end"
#: type letter of find's %y -> st_mode type bits
_TYPES = {"f": stat.S_IFREG, "d": stat.S_IFDIR, "l": stat.S_IFLNK, "p": stat.S_IFIFO,
          "s": stat.S_IFSOCK, "c": stat.S_IFCHR, "b": stat.S_IFBLK}
# st_mode (octal permissions), links, uid, size, mtime, path relative to the parent
_FORMAT = r"%y\t%m\t%n\t%U\t%s\t%T@\t%p\0"
# xargs appends the names last: sh -c puts them before find's expression.
# Names that do not exist are dropped first (they are simply absent from the
# output), so any failure of find is a real one: then no end marker, and the
# caller falls back to SFTP rather than trust a partial listing.
_INNER = ('n=$#; while [ "$n" -gt 0 ]; do d=$1; shift; n=$((n - 1)); '
          'if [ -e "$d" ] || [ -L "$d" ]; then set -- "$@" "$d"; fi; done; '
          '[ $# -eq 0 ] || find -P "$@" -maxdepth 1 -printf ' + shlex.quote(_FORMAT))
_SCRIPT = ('cd -- "$1" && find . -maxdepth 0 -printf ' + shlex.quote(_OK.decode() + r"\0")
           + " && xargs -0 -n 256 sh -c " + shlex.quote(_INNER) + " sh 2>/dev/null"
           + " && printf " + shlex.quote(_END.decode() + r"\0"))


def command(parent: str) -> str:
    """The fixed command; only ``parent`` varies, quoted as one argument."""
    return f"sh -c {shlex.quote(_SCRIPT)} sh {shlex.quote(parent)}"


def parse(out: bytes, names: list[str]) -> dict[str, dict[str, FileInfo] | OSError] | None:
    """name -> its listing (or FileNotFoundError / NotADirectoryError);
    None when the output does not prove a complete run."""
    recs = out.split(b"\0")
    if len(recs) < 3 or recs[0] != _OK or recs[-2] != _END or recs[-1] != b"":
        return None
    wanted = set(names)
    found: dict[str, FileInfo] = {}
    children: dict[str, dict[str, FileInfo]] = {}
    for rec in recs[1:-2]:
        try:
            kind, perms, nlink, uid, size, mtime, path = rec.decode("utf-8", "surrogateescape").split("\t", 6)
            info = FileInfo(mode=_TYPES.get(kind, 0) | int(perms, 8), uid=int(uid), size=int(size),
                            mtime=float(mtime), nlink=int(nlink))
        except ValueError:
            return None
        if not path.startswith("./"):
            return None
        top, _, child = path[2:].partition("/")  # find prints the "./" we gave it
        if top in wanted and not child:
            found[top] = info
        elif top in wanted and "/" not in child:
            children.setdefault(top, {})[child] = info
    out_: dict[str, dict[str, FileInfo] | OSError] = {}
    for name in names:
        info = found.get(name)
        if info is None:
            out_[name] = FileNotFoundError(2, "No such file", name)
        elif not info.is_dir:
            out_[name] = NotADirectoryError(20, "Not a directory", name)
        else:
            out_[name] = children.get(name, {})
    return out_


def run(transport, parent: str, names: list[str]) -> dict[str, dict[str, FileInfo] | OSError] | None:
    """List ``parent/<name>`` for every name with one command; None when the
    node cannot run it (the caller falls back to SFTP). Connection loss raises."""
    if any("/" in n or n in ("", ".", "..") or "\0" in n for n in names):
        return None
    try:
        chan = transport._conn.client.get_transport().open_session(timeout=transport.settings.connect_timeout)
        chan.settimeout(transport.io_timeout)
        chan.exec_command(command(parent))
        # "./" keeps a name starting with "-" from being read as an option
        chan.sendall(b"\0".join(b"./" + n.encode("utf-8", "surrogateescape") for n in names) + b"\0")
        chan.shutdown_write()
        out = bytearray()
        while True:
            data = chan.recv(1 << 16)
            if not data:
                break
            out += data
        chan.recv_exit_status()
        chan.close()
    except Exception as e:
        err = transport._error(e, "exec", parent, refine=False)
        if transport._is_connection_error(e) and not transport._alive():
            raise err from e
        log.debug("%s: listing by find failed (%s); using SFTP", transport.host, e)
        return None
    got = parse(bytes(out), names)
    if got is None:
        log.debug("%s: no GNU find over exec; listing over SFTP", transport.host)
    return got
