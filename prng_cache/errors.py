"""One rooted exception hierarchy.

Everything prng-cache raises on purpose derives from :class:`PrngCacheError`.
:class:`UserError` subclasses are mistakes in a file or option the user gave:
the CLI prints their message (no traceback) and exits 2. :class:`NodeError`
subclasses concern one node; batch operations catch them per node and report
them instead of failing the whole batch.
"""

from __future__ import annotations


class PrngCacheError(Exception):
    """Root of every error prng-cache raises on purpose."""


# --------------------------------------------------------------- user errors
class UserError(PrngCacheError):
    """A bad file, option or name supplied by the user (CLI exit code 2)."""


class PolicyError(UserError):
    """cache_policy.yaml (or an environment override) is invalid."""

    def __init__(self, source: str, key: str | None, problem: str):
        self.source, self.key, self.problem = source, key, problem
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {problem}")


class InputFileError(UserError):
    """A jobs file or cluster file is missing or malformed."""

    def __init__(self, source: str, where: str | None, problem: str):
        self.source, self.where, self.problem = source, where, problem
        loc = f"{source}: {where}" if where else source
        super().__init__(f"{loc}: {problem}")


class ConfigError(InputFileError):
    """distributed_config.json is missing or malformed."""


class JobsFileError(InputFileError):
    """The jobs file is missing or malformed."""


class UnknownNodeError(UserError):
    def __init__(self, host: str, known: list[str]):
        self.host = host
        super().__init__(
            f"unknown node {host!r}; the cluster file has: {', '.join(known) or '(none)'}"
        )


# ------------------------------------------------------------ runtime errors
class HashError(PrngCacheError):
    """A file could not be hashed reliably (unreadable, or changed meanwhile)."""

    def __init__(self, path: str, problem: str):
        self.path = path
        super().__init__(f"{path}: {problem}")


class NodeError(PrngCacheError):
    """Something went wrong on one node; other nodes are unaffected."""

    def __init__(self, node: str, problem: str):
        self.node, self.problem = node, problem
        super().__init__(f"{node}: {problem}")


class TransportError(NodeError):
    """The node could not be reached or the connection failed."""


class HostKeyError(TransportError):
    """The node's SSH host key is unknown or does not match known_hosts."""


class UnsafeCacheRootError(NodeError):
    """The cache root is a symlink, foreign-owned, or not private."""


class LockTimeout(NodeError):
    """The node's manifest lock could not be taken in time."""


class IntegrityError(NodeError):
    """Bytes read while publishing do not match the expected hash."""


class UnsafeNameError(TransportError):
    """A host or user name OpenSSH would refuse (whitespace, shell
    metacharacters, a leading '-'): it could be read as shell syntax or as
    an option, so nothing is contacted. The name is shown escaped
    (``repr``), so a newline in it cannot split the message."""

    def __init__(self, node: str, problem: str):
        self.node, self.problem = node, problem
        PrngCacheError.__init__(self, f"{node!r}: {problem}")


class NodeSetupError(NodeError):
    """The node is reachable but lacks something prng-cache needs from the
    account it logs in as (e.g. a POSIX login shell for a fallback command)."""
