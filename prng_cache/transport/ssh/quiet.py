"""Other libraries' log records (paramiko's, sshtunnel's) as debug detail.

Apart from :mod:`.tunnel` so that every connection can use it without
importing sshtunnel, which only a jump host needs.
"""

from __future__ import annotations

import logging

#: where the records are re-logged (the logger they have always gone to)
log = logging.getLogger(__package__ + ".tunnel")


class AsDebug(logging.Filter):
    """Another library's messages are debug detail here: what matters (the
    gateway cannot reach a node, a handshake failed) is raised as a
    TransportError and reported once per node; their warnings and
    tracebacks (sshtunnel's "Server is not started", paramiko's "Error
    reading SSH protocol banner" when a forwarded connection closes) would
    only be printed as noise. Each record is re-logged at DEBUG on our own
    logger (seen with -v) and dropped: rewriting a record's level in a
    filter is not enough, a handler with level NOTSET still prints it."""

    def __init__(self, target: logging.Logger) -> None:
        super().__init__()
        self.target = target

    def filter(self, record: logging.LogRecord) -> bool:
        if self.target.isEnabledFor(logging.DEBUG):
            self.target.debug("%s: %s", record.name, record.getMessage(), exc_info=record.exc_info)
        return False


def quiet_logger(name: str) -> logging.Logger:
    """A logger whose records go only to ``log`` at DEBUG level."""
    lg = logging.getLogger(name)
    if not any(isinstance(f, AsDebug) for f in lg.filters):
        lg.addFilter(AsDebug(log))
        # children (paramiko's ".sftp") stop here too; a handler must exist,
        # or logging's last resort would print their warnings anyway
        lg.addHandler(logging.NullHandler())
        lg.propagate = False
    return lg
