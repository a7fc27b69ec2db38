"""The gateway's exceptions: one root, specific subclasses (the aioesphomeapi way).

Protocol rejections are not exceptions here: a bad frame is counted, logged and dropped by the
ingest stage (protocol.RemoteProtocolError carries the reason).
"""

from __future__ import annotations


class EdgeveilError(Exception):
    """Root of every error the gateway raises on purpose."""


class ConfigError(EdgeveilError):
    """The configuration file is wrong. `key` is the dotted key, or "" for the whole file."""

    def __init__(self, key: str, problem: str, source: str = "") -> None:
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{key}: {problem}" if key else f"{where}{problem}")
        self.key = key
        self.problem = problem


class RegistryError(EdgeveilError):
    """The node registry cannot be opened, read or changed as asked."""


class SpoolFullError(EdgeveilError):
    """The spool holds its maximum and its policy is to refuse new messages (a full disk is a
    StorageError)."""


class StorageError(EdgeveilError):
    """A store's file could not be written (or opened): the disk is full, failing, read-only
    or busy. Nothing of the failed write took effect. `store` names the store ("spool",
    "registry", "privacy ledger"), `reason` is one word for metrics (disk_full, io_error,
    read_only, busy, cannot_open, corrupt, error)."""

    def __init__(self, store: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.store = store
        self.reason = reason
