"""How the registry and the spool keep their SQLite files (stdlib sqlite3).

- create_private() creates the file empty with mode 0600 before SQLite opens it: SQLite gives
  its -wal and -shm files the database's mode.
- connect() opens it in autocommit mode for use from any thread (the caller holds its own
  lock), refuses a newer schema version, switches to a WAL journal with synchronous=FULL (in
  WAL mode anything less may roll back a commit on power loss), bounds the WAL (below) and its
  page cache (CACHE_KIB) and creates what the schema lacks in one BEGIN IMMEDIATE
  transaction. A file that has its whole schema is opened without writing anything, so a
  gateway starts on a full disk.
- transaction() is BEGIN IMMEDIATE ... COMMIT, with ROLLBACK on any exception.

Storage failures. A write that fails because of the disk rather than the SQL (SQLite's
SQLITE_FULL, IOERR, READONLY, BUSY, CANTOPEN, CORRUPT) raises StorageError naming the store,
the file and what to do; nothing of it took effect (SQLite rolled the transaction back). Each
store reports its writes to a StorageHealth, shared by the service's stores: it logs the first
failure of a store and then at most a line a minute until a write succeeds again, counts the
failures, and says whether the gateway is degraded (for metrics, `gateway status` and the
availability topic). The callers decide what a failed write means: ingest acknowledges
nothing it could not store, the uplink keeps what it could not delete, the privacy engine
releases nothing it could not book.

The WAL stays small. SQLite checkpoints the WAL into the database once it holds
WAL_AUTOCHECKPOINT_PAGES pages (its default, 1,000), and then starts writing it from the
beginning again, but it never shrinks the file unless told to: a WAL keeps the size of its
largest moment (with SQLite's 4 KB pages 4 MB and more were seen). New files get 1 KB pages
(PAGE_SIZE), so a checkpoint's worth is about 1 MB, and journal_size_limit truncates a WAL
that a large transaction grew to JOURNAL_SIZE_LIMIT after the next checkpoint: each
database's WAL stays within WAL_BOUND bytes. A checkpoint every 1,000 pages (rather than
more often) lets a spooled message's page be written into the database once, after it was
stored and deleted, instead of in each state (benchmarks/bench_gateway.py --frames-per-s).

Errors of opening are raised as the caller's exception type, naming the file as the caller's
`what` (StorageError when the disk is the cause).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from .errors import StorageError
from .throttle import Throttle

__all__ = [
    "JOURNAL_SIZE_LIMIT",
    "PAGE_SIZE",
    "WAL_AUTOCHECKPOINT_PAGES",
    "WAL_BOUND",
    "Closing",
    "StorageHealth",
    "Store",
    "closing_on_error",
    "connect",
    "create_private",
    "free_bytes",
    "make_reserve",
    "release_reserve",
    "storage_error",
    "state_dir_bound",
    "state_dir_bytes",
    "transaction",
]

log = logging.getLogger("edgeveil.storage")

# Chosen by measurement (benchmarks/bench_gateway.py --frames-per-s, docs/operators/storage.md):
# see the module docstring. A page (PAGE_SIZE) takes its size plus a 24-byte frame header in the
# WAL.
WAL_AUTOCHECKPOINT_PAGES = 1000
# Small pages: a commit writes every page it changed to the WAL, and one reading changes a few
# rows on different pages (the spool's table and indexes, the node's replay row and evidence).
# 1 KB pages write a quarter of what SQLite's default 4 KB pages do (new files; a file keeps
# the page size it was created with).
PAGE_SIZE = 1024
JOURNAL_SIZE_LIMIT = 1024 * 1024
# Each connection's page cache, in KiB. SQLite's default is 2,000 KiB per connection, and once
# a database outgrows it (the spool during a broker outage) the cache stays that full: about
# 3 MB more resident in a drain at line rate. The pages come from the kernel's page cache
# anyway, and a smaller cache cost no CPU measurably (benchmarks/bench_gateway.py, steady and
# outage runs; docs/development/benchmarks.md).
CACHE_KIB = 256
# what one database's WAL can reach: a checkpoint's worth of pages plus the largest single
# transaction (a spool batch of 256 messages of a few hundred bytes stays far below this)
WAL_BOUND = 2 * 1024 * 1024
STORAGE_LOG_EVERY_S = 60.0
# What the state directory holds at most (docs/operators/storage.md; `gateway check-config`
# compares it with the free space), measured with tests/test_storage.py's figures: a spooled
# message takes its payload plus about 140 bytes (a readings message of two values: 341 bytes),
# the node registry about 23 KB per node (the counter-reuse evidence, EVIDENCE_SPAN digests),
# the privacy ledger well under a megabyte (KEEP_DAYS days of streams and zones).
SPOOL_MESSAGE_BYTES = 600
REGISTRY_NODE_BYTES = 24 * 1024
LEDGER_BYTES = 1024 * 1024
STATE_FILES = ("spool.db", "registry.db", "privacy.db")
# Opening a database in WAL mode creates its shared-memory index (the -shm file, 32 KB), which
# a full disk refuses; SQLite deletes it when the last connection closes. So the gateway keeps
# this much of its filesystem set aside in a file of its own, and gives it back when it cannot
# open its files: it then starts, degraded, on a full disk (gateway/service.py).
RESERVE_FILE = "reserve"
RESERVE_BYTES = 256 * 1024

# SQLite's primary result codes of a storage failure, and the word metrics use for each
_STORAGE_REASONS = {
    sqlite3.SQLITE_FULL: "disk_full",
    sqlite3.SQLITE_IOERR: "io_error",
    sqlite3.SQLITE_READONLY: "read_only",
    sqlite3.SQLITE_BUSY: "busy",
    sqlite3.SQLITE_LOCKED: "busy",
    sqlite3.SQLITE_CANTOPEN: "cannot_open",
    sqlite3.SQLITE_CORRUPT: "corrupt",
    sqlite3.SQLITE_NOTADB: "corrupt",
}
_WHAT_TO_DO = {
    "disk_full": "free space on the filesystem that holds it",
    "io_error": "the storage is failing: check the SD card or disk (dmesg), replace it soon",
    "read_only": "the filesystem is read-only (often a failing SD card remounted read-only): "
    "check dmesg",
    "busy": "another process holds the file: stop it (an edgeveil command still running?)",
    "cannot_open": "check the directory's owner, mode and free space",
    "corrupt": "restore the file from a backup or move it away (docs/operators/backups.md)",
}
_CREATES = re.compile(r"CREATE\s+(?:TABLE|INDEX)\s+IF\s+NOT\s+EXISTS\s+(\w+)", re.IGNORECASE)


def storage_error(exc: sqlite3.Error, what: str, path: Path) -> StorageError | None:
    """The StorageError for a failure of the disk under `path`, or None when `exc` is about
    the SQL (a bug) rather than the storage."""
    code = getattr(exc, "sqlite_errorcode", None)
    reason = _STORAGE_REASONS.get(code & 0xFF) if isinstance(code, int) else None
    if reason is None:
        return None
    if reason == "io_error" and _nearly_full(path.parent):
        reason = "disk_full"  # SQLite's shared-memory index says IOERR when it finds no room
    message = f"the {what} {path} cannot be written ({exc}): {_WHAT_TO_DO[reason]}"
    return StorageError(what, reason, message)


def free_bytes(directory: Path) -> int | None:
    """Free space for unprivileged users on `directory`'s filesystem, or None when it cannot
    be read."""
    try:
        fs = os.statvfs(directory)
    except OSError:
        return None
    return fs.f_bavail * fs.f_frsize


def _nearly_full(directory: Path) -> bool:
    free = free_bytes(directory)
    return free is not None and free < 64 * 1024


def make_reserve(state_dir: Path) -> bool:
    """Set RESERVE_BYTES of the state directory's filesystem aside (the file RESERVE_FILE)
    unless that is done; False when there is no room for it now."""
    path = state_dir / RESERVE_FILE
    if path.exists():
        return True
    partial = path.with_suffix(".partial")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.posix_fallocate(fd, 0, RESERVE_BYTES)  # blocks allocated, not a sparse file
        finally:
            os.close(fd)
        partial.rename(path)
    except OSError:
        with contextlib.suppress(OSError):
            partial.unlink()
        return False
    return True


def release_reserve(state_dir: Path) -> bool:
    """Give the reserve back to the filesystem; True if there was one."""
    try:
        (state_dir / RESERVE_FILE).unlink()
    except OSError:
        return False
    log.warning(
        "the disk holding %s is full: released the gateway's reserve of %d KB so that it can "
        "open its files; it runs degraded until space returns",
        state_dir,
        RESERVE_BYTES // 1024,
    )
    return True


class StorageHealth:
    """Whether the stores write: shared by the service's spool, registry and ledger.

    Thread-safe (stores write from worker threads). `failing`: store -> its last StorageError,
    for the stores whose last write failed; `failures`: (store, reason) -> writes failed since
    start; `degraded`: a line saying what fails, or None."""

    def __init__(self) -> None:
        self.failing: dict[str, StorageError] = {}
        self.failures: Counter[tuple[str, str]] = Counter()
        self._since: dict[str, float] = {}
        self._log = Throttle(STORAGE_LOG_EVERY_S)  # per store, used under the lock
        self._lock = threading.Lock()

    @property
    def degraded(self) -> str | None:
        with self._lock:
            failing = sorted(self.failing.items())
        if not failing:
            return None
        return "; ".join(f"{store}: {error.reason}" for store, error in failing)

    def failed(self, error: StorageError) -> None:
        now = time.monotonic()
        with self._lock:
            store = error.store
            self.failures[(store, error.reason)] += 1
            self.failing[store] = error
            self._since.setdefault(store, now)
            report = self._log.due(store, now)
        if report is None:
            return
        held = report[0] - 1  # the others since the last line
        more = f" ({held} more failed writes since the last report)" if held else ""
        log.error(
            "%s; the gateway keeps running degraded: frames it cannot store are not "
            "acknowledged (the nodes keep them) and it resumes by itself%s",
            error,
            more,
        )

    def succeeded(self, store: str, directory: Path | None = None) -> None:
        """A write of `store` succeeded. After a full disk the store counts as failing until
        its `directory`'s filesystem has RESERVE_BYTES free again: one write slipping into a
        freed page is no recovery, and availability would flap with every such write."""
        if store not in self.failing:  # the common case: no lock taken
            return
        error = self.failing.get(store)
        full = error is not None and error.reason == "disk_full"
        free = free_bytes(directory) if full and directory is not None else None
        if free is not None and free < RESERVE_BYTES:
            return
        with self._lock:
            error = self.failing.pop(store, None)
            since = self._since.pop(store, None)
            self._log.forget(store)
            failed = sum(n for (s, _r), n in self.failures.items() if s == store)
        if error is not None and since is not None:
            log.warning(
                "the %s writes again after %.0f s (%d failed writes since start); resumed",
                store,
                time.monotonic() - since,
                failed,
            )


@dataclass(frozen=True)
class Store:
    """One store's file, for transaction(): what it is called in messages, where it is, and
    the health it reports to."""

    what: str
    path: Path
    health: StorageHealth = field(default_factory=StorageHealth, compare=False)


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
    migrate: Callable[[sqlite3.Connection, int], None] | None = None,
) -> sqlite3.Connection:
    """Open the database at `path` (see the module docstring); `schema`: its statements.
    `migrate(conn, found_version)` runs first in the schema's transaction when the file's
    version is older (0: a new file).

    A file that is not such a database raises error_type "... is not an edgeveil {what}
    database (...)", followed by `hint`. On any error the connection is closed.
    """
    try:
        conn = sqlite3.connect(
            str(path), isolation_level=None, check_same_thread=False, timeout=5.0
        )
    except sqlite3.Error as exc:
        raise storage_error(exc, what, path) or error_type(
            f"cannot open the {what} {path}: {exc}"
        ) from exc
    with closing_on_error(conn, path, what=what, error_type=error_type, hint=hint):
        found = conn.execute("PRAGMA user_version").fetchone()[0]
        if found > version:
            raise error_type(
                f"the {what} {path} has schema version {found}; this edgeveil knows "
                f"{version} (a newer edgeveil wrote it)"
            )
        if found == 0 and path.stat().st_size == 0:  # a new file: before its first page
            conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise error_type(f"the {what} {path}: cannot use a WAL journal (got {mode})")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
        conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")  # negative: KiB rather than pages
        statements = list(schema)
        if found < version or _lacks(conn, statements):
            with transaction(conn):
                if migrate is not None and found < version:
                    migrate(conn, found)
                for statement in statements:  # one by one: executescript() commits on its own
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={version}")
    return conn


def _lacks(conn: sqlite3.Connection, statements: list[str]) -> bool:
    """Whether a CREATE ... IF NOT EXISTS of `statements` would create something."""
    names = {m.group(1) for s in statements if (m := _CREATES.search(s))}
    have = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    return not names <= have or any(not _CREATES.search(s) for s in statements)


@contextlib.contextmanager
def closing_on_error(
    conn: sqlite3.Connection,
    path: Path,
    *,
    what: str,
    error_type: type[Exception],
    hint: str = "",
) -> Iterator[None]:
    """Close `conn` on any exception; a sqlite3.DatabaseError becomes error_type as connect()'s
    (StorageError when the disk is the cause: a full disk does not make a file foreign)."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        conn.close()
        error = storage_error(exc, what, path)
        if error is None or error.reason == "corrupt":
            raise error_type(f"{path} is not an edgeveil {what} database ({exc}){hint}") from exc
        raise error from exc
    except BaseException:
        conn.close()
        raise


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, store: Store | None = None) -> Iterator[sqlite3.Cursor]:
    """BEGIN IMMEDIATE ... COMMIT; ROLLBACK on any exception. The caller holds its lock.

    With `store`: a failure of the storage raises StorageError (reported to store.health, as
    is a commit that succeeds)."""
    try:
        cur = conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
            cur.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # SQLite may have rolled back already
                with contextlib.suppress(sqlite3.OperationalError):  # the disk may refuse it
                    cur.execute("ROLLBACK")
            raise
    except sqlite3.DatabaseError as exc:
        error = None if store is None else storage_error(exc, store.what, store.path)
        if error is None or store is None:
            raise
        store.health.failed(error)
        raise error from exc
    if store is not None:
        store.health.succeeded(store.what, store.path.parent)


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


def state_dir_bound(max_messages: int, nodes: int) -> int:
    """Bytes the state directory can reach: a full spool of `max_messages`, the registry of
    `nodes` nodes, the ledger, and each database's WAL at its bound (plus its -shm index)."""
    wal = len(STATE_FILES) * (WAL_BOUND + 32 * 1024)
    fixed = LEDGER_BYTES + wal + RESERVE_BYTES
    return max_messages * SPOOL_MESSAGE_BYTES + nodes * REGISTRY_NODE_BYTES + fixed


def state_dir_bytes(state_dir: Path) -> int:
    """The size of the state directory's files (not its subdirectories)."""
    total = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(state_dir):
            with contextlib.suppress(OSError):
                if entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
    return total
