"""The privacy budget ledger: how much epsilon each stream has spent, per zone and UTC day.

Differential privacy composes: every noisy release of a count spends the stream's epsilon, and
what a day's releases reveal together is bounded by their sum. The policy caps that sum per
stream, zone and UTC day (`Noise.daily_cap`); this ledger makes the cap hold across restarts.

One SQLite file, `privacy.db` in the gateway's state directory (stdlib sqlite3 through
gateway/sqlite.py, as the registry and the spool: mode 0600, WAL journal, synchronous=FULL):

    budget (stream TEXT, zone TEXT, day TEXT, spent REAL, releases INTEGER, refused INTEGER,
            PRIMARY KEY (stream, zone, day))

It holds no personal data: stream names, zones (or "node:{id}" for streams grouped by node),
dates and numbers.

`try_spend(stream, zone, day, epsilon, cap)` is one BEGIN IMMEDIATE transaction: it reads what
was spent, and either adds epsilon (the spend fits under the cap) or counts a refusal, and
commits with an fsync before it returns. The engine calls it BEFORE it draws the noise and
builds the record, so what is published was always booked first: a crash after the booking
wastes that budget, but nothing can ever be released unbooked or overspend the cap. The read
and the write share the transaction, so two processes sharing the file cannot overspend either.

The day is the UTC date of the window's start (a window from 23:45 to 00:00 belongs to the day
it covers). Rows older than KEEP_DAYS days are pruned when the ledger is opened.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from ..errors import EdgeveilError, StorageError
from ..sqlite import (
    Closing,
    StorageHealth,
    Store,
    closing_on_error,
    connect,
    create_private,
    transaction,
)

__all__ = ["KEEP_DAYS", "BudgetRow", "PrivacyLedger", "utc_day"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
KEEP_DAYS = 35
TOLERANCE = 1e-9  # floating point: 4 x 0.5 fits a cap of 2.0 whatever the rounding

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS budget ("
    " stream TEXT NOT NULL,"
    " zone TEXT NOT NULL,"
    " day TEXT NOT NULL,"
    " spent REAL NOT NULL DEFAULT 0,"
    " releases INTEGER NOT NULL DEFAULT 0,"
    " refused INTEGER NOT NULL DEFAULT 0,"
    " PRIMARY KEY (stream, zone, day))",
)


def utc_day(t: float) -> str:
    """The UTC date of Unix time t, as YYYY-MM-DD."""
    return dt.datetime.fromtimestamp(t, dt.UTC).date().isoformat()


@dataclass(frozen=True, slots=True)
class BudgetRow:
    stream: str
    zone: str
    day: str
    spent: float
    releases: int
    refused: int


class PrivacyLedger(Closing):
    """The persistent budget. Open it with PrivacyLedger.open(path); thread-safe."""

    def __init__(
        self, path: Path, conn: sqlite3.Connection, health: StorageHealth | None = None
    ) -> None:
        self.path = path
        self._conn = conn
        self._store = Store("privacy ledger", path, health or StorageHealth())
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls, path: Path, *, today: str | None = None, health: StorageHealth | None = None
    ) -> PrivacyLedger:
        """Open the ledger at `path`, creating it (mode 0600) if it does not exist. Failed
        writes raise StorageError and are reported to `health`; the pruning of old days waits
        for the next start when the disk refuses it."""
        path = Path(path)
        create_private(path, what="privacy ledger", error_type=EdgeveilError)
        conn = connect(
            path,
            what="privacy ledger",
            schema=_SCHEMA,
            version=SCHEMA_VERSION,
            error_type=EdgeveilError,
        )
        with closing_on_error(conn, path, what="privacy ledger", error_type=EdgeveilError):
            ledger = cls(path, conn, health)
            with contextlib.suppress(StorageError):  # reported to health; not needed to run
                ledger.prune(today or utc_day(dt.datetime.now(dt.UTC).timestamp()))
        return ledger

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __repr__(self) -> str:
        return f"PrivacyLedger({str(self.path)!r})"

    def try_spend(self, stream: str, zone: str, day: str, epsilon: float, cap: float) -> bool:
        """Book `epsilon` if the day's total stays within `cap`: True, durable on return.
        Otherwise book nothing, count the refusal (durably) and return False. StorageError
        when the disk refuses: nothing booked, so the caller must release nothing."""
        if epsilon <= 0:
            raise ValueError("epsilon must be positive")
        with self._lock, transaction(self._conn, self._store) as cur:
            row = cur.execute(
                "SELECT spent FROM budget WHERE stream = ? AND zone = ? AND day = ?",
                (stream, zone, day),
            ).fetchone()
            spent = 0.0 if row is None else float(row[0])
            ok = spent + epsilon <= cap + TOLERANCE
            cur.execute(
                "INSERT INTO budget (stream, zone, day, spent, releases, refused) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (stream, zone, day) DO UPDATE SET "
                "spent = spent + excluded.spent, releases = releases + excluded.releases, "
                "refused = refused + excluded.refused",
                (stream, zone, day, epsilon if ok else 0.0, int(ok), int(not ok)),
            )
        return ok

    def spent(self, stream: str, zone: str, day: str) -> float:
        with self._lock:
            row = self._conn.execute(
                "SELECT spent FROM budget WHERE stream = ? AND zone = ? AND day = ?",
                (stream, zone, day),
            ).fetchone()
        return 0.0 if row is None else float(row[0])

    def day(self, day: str) -> list[BudgetRow]:
        """Every stream and zone that spent or was refused budget on `day`."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT stream, zone, day, spent, releases, refused FROM budget WHERE day = ? "
                "ORDER BY stream, zone",
                (day,),
            ).fetchall()
        return [
            BudgetRow(str(s), str(z), str(d), float(e), int(n), int(r)) for s, z, d, e, n, r in rows
        ]

    def prune(self, today: str, keep_days: int = KEEP_DAYS) -> int:
        """Forget days more than `keep_days` before `today`; returns how many rows."""
        cutoff = (dt.date.fromisoformat(today) - dt.timedelta(days=keep_days)).isoformat()
        with self._lock, transaction(self._conn, self._store) as cur:
            cur.execute("DELETE FROM budget WHERE day < ?", (cutoff,))
            removed = cur.rowcount
        if removed:
            log.debug("privacy ledger: %d rows older than %s pruned", removed, cutoff)
        return max(removed, 0)
