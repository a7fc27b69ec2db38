"""How the registry and the spool keep their SQLite files (stdlib sqlite3).

- create_private() creates the file empty with mode 0600 before SQLite opens it: SQLite gives
  its -wal and -shm files the database's mode.
- connect() opens it in autocommit mode for use from any thread (the caller holds its own
  lock), refuses a newer schema version, switches to a WAL journal with synchronous=FULL (in
  WAL mode anything less may roll back a commit on power loss) and creates the schema in one
  BEGIN IMMEDIATE transaction.
- transaction() is BEGIN IMMEDIATE ... COMMIT, with ROLLBACK on any exception.

Errors are raised as the caller's exception type, naming the file as the caller's `what`.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["Closing", "closing_on_error", "connect", "create_private", "transaction"]


def create_private(path: Path, *, what: str, error_type: type[Exception]) -> None:
    """Create an empty file of mode 0600 unless one exists (SQLite fills it in)."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise error_type(f"cannot create the {what} {path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o600)  # the mode exactly, whatever the umask
    finally:
        os.close(fd)


def connect(
    path: Path,
    *,
    what: str,
    schema: Iterable[str],
    version: int,
    error_type: type[Exception],
    hint: str = "",
) -> sqlite3.Connection:
    """Open the database at `path` (see the module docstring); `schema`: its statements.

    A file that is not such a database raises error_type "... is not an edgeveil {what}
    database (...)", followed by `hint`. On any error the connection is closed.
    """
    try:
        conn = sqlite3.connect(
            str(path), isolation_level=None, check_same_thread=False, timeout=5.0
        )
    except sqlite3.Error as exc:
        raise error_type(f"cannot open the {what} {path}: {exc}") from exc
    with closing_on_error(conn, path, what=what, error_type=error_type, hint=hint):
        found = conn.execute("PRAGMA user_version").fetchone()[0]
        if found > version:
            raise error_type(
                f"the {what} {path} has schema version {found}; this edgeveil knows "
                f"{version} (a newer edgeveil wrote it)"
            )
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise error_type(f"the {what} {path}: cannot use a WAL journal (got {mode})")
        conn.execute("PRAGMA synchronous=FULL")
        with transaction(conn):
            for statement in schema:  # one by one: executescript() would commit on its own
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={version}")
    return conn


@contextlib.contextmanager
def closing_on_error(
    conn: sqlite3.Connection,
    path: Path,
    *,
    what: str,
    error_type: type[Exception],
    hint: str = "",
) -> Iterator[None]:
    """Close `conn` on any exception; a sqlite3.DatabaseError becomes error_type as connect()'s."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise error_type(f"{path} is not an edgeveil {what} database ({exc}){hint}") from exc
    except BaseException:
        conn.close()
        raise


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Cursor]:
    """BEGIN IMMEDIATE ... COMMIT; ROLLBACK on any exception. The caller holds its lock."""
    cur = conn.cursor()
    cur.execute("BEGIN IMMEDIATE")
    try:
        yield cur
        cur.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # SQLite may have rolled back already
            cur.execute("ROLLBACK")
        raise


class Closing:
    """`with obj:` calls obj.close() on the way out."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
