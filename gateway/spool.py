"""The spool: a durable FIFO of MQTT messages between the privacy stage and the uplink.

    privacy ──OutMessage──► Spool.put ... Spool.peek ──► publish ──PUBACK──► Spool.delete

One SQLite file (WAL journal), two tables:

    spool (seq INTEGER PRIMARY KEY, msg_id TEXT, topic TEXT, payload BLOB, retain INTEGER,
           created REAL)
    accepted (seq INTEGER PRIMARY KEY, node_id INTEGER, epoch INTEGER, counter INTEGER,
              digest BLOB)

The second table is the accepted-counter journal: ingest writes the counters of a batch's
frames in the same transaction as the batch's messages, so one fsync makes both durable and
the frames may be acknowledged; the registry writes them into its own file every few minutes
(NodeRegistry.fold) and the journal then forgets them. At start, ingest gives the registry
what the journal still holds. (Writing each batch's counters to the registry itself cost a
commit and several random pages of registry.db per frame: most of the bytes the gateway
wrote to its SD card.)

Why the choices:

- **put() commits with synchronous=FULL**: when it returns, the batch and its frames' counters
  are in the fsynced WAL and survive kill -9 and power loss, so the gateway may acknowledge
  the frames. A batch is one transaction: all of it or none of it is stored.
- **delete() and expire() commit with synchronous=NORMAL**: no fsync of their own. A power cut
  may undo them (never corrupt the file); the undone messages are then published again, which
  MQTT's at-least-once delivery allows and the msg_id lets consumers drop. The next put()'s
  fsync makes them durable as well, since the WAL is written in order.
- **No index but on created**: a new row's seq is one above the highest held, so seq order is
  put order, and each put appends to the table's last pages. An index on msg_id (schema 1
  had one, to store a frame retransmitted after a crash between storing and recording its
  counter once) wrote a random page per message; with the journal that crash cannot happen,
  and a consumer drops duplicates by msg_id anyway.
- **check_same_thread=False plus a lock**: call it from a worker thread (asyncio.to_thread) to
  keep fsyncs off the event loop; every method holds the lock for its whole transaction.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from .config import SPOOL_POLICIES
from .errors import EdgeveilError, SpoolFullError
from .records import OutMessage
from .sqlite import (
    Closing,
    StorageHealth,
    Store,
    closing_on_error,
    connect,
    create_private,
    transaction,
)
from .throttle import Throttle

__all__ = ["Spool"]

log = logging.getLogger(__name__)

# 2: the accepted-counter journal. An older edgeveil would ignore it and so forget the
# counters of the last minutes' frames: it refuses the file instead.
SCHEMA_VERSION = 2
# A full spool under drop_oldest drops at every put: at a busy gateway's group commits, tens a
# second. The first drop is logged at once, then at most one line per this long with what was
# dropped meanwhile (gateway.throttle).
DROPS_LOG_EVERY_S = 60.0

_DELETE_SEQ = "DELETE FROM spool WHERE seq = ?"

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS spool ("
    " seq INTEGER PRIMARY KEY,"
    " msg_id TEXT NOT NULL,"
    " topic TEXT NOT NULL,"
    " payload BLOB NOT NULL,"
    " retain INTEGER NOT NULL,"
    " created REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS spool_created ON spool (created)",
    "CREATE TABLE IF NOT EXISTS accepted ("
    " seq INTEGER PRIMARY KEY,"
    " node_id INTEGER NOT NULL,"
    " epoch INTEGER NOT NULL,"
    " counter INTEGER NOT NULL,"
    " digest BLOB NOT NULL)",
)

# an accepted frame in the journal: node id, key epoch, counter, frame digest
Journaled = tuple[int, int, int, bytes]


def _migrate(conn: sqlite3.Connection, found: int) -> None:
    """Schema 1 to 2: the spool table without its msg_id index and AUTOINCREMENT (see the
    module docstring), its messages kept in order."""
    if found != 1:
        return
    conn.execute("ALTER TABLE spool RENAME TO spool_1")
    conn.execute("DROP INDEX IF EXISTS spool_created")
    conn.execute(_SCHEMA[0])
    conn.execute(
        "INSERT INTO spool (seq, msg_id, topic, payload, retain, created) "
        "SELECT seq, msg_id, topic, payload, retain, created FROM spool_1 ORDER BY seq"
    )
    conn.execute("DROP TABLE spool_1")


class Spool(Closing):
    """The durable message queue. Open it with Spool.open(...); every method is thread-safe.

    Counters for metrics (since open): `dropped_full` (deleted by drop_oldest to make room),
    `refused` (new messages refused by refuse_new), `dropped_age` (expired). `depth` is the
    number of messages held.
    """

    def __init__(
        self,
        path: Path,
        conn: sqlite3.Connection,
        max_messages: int,
        max_age_s: int,
        when_full: str,
        *,
        health: StorageHealth | None = None,
    ) -> None:
        self.path = path
        self._store = Store("spool", path, health or StorageHealth())
        self.max_messages = max_messages
        self.max_age_s = max_age_s
        self.when_full = when_full
        self._conn = conn
        self._lock = threading.Lock()
        self.dropped_full = 0
        self._drops_log = Throttle(DROPS_LOG_EVERY_S)  # used under the lock
        self.refused = 0
        self.dropped_age = 0
        self._depth = int(conn.execute("SELECT count(*) FROM spool").fetchone()[0])  # rows held
        self._published: set[int] = set()  # acknowledged by the broker, not yet deleted

    @classmethod
    def open(
        cls,
        path: Path,
        max_messages: int,
        max_age_s: int,
        when_full: str,
        health: StorageHealth | None = None,
    ) -> Spool:
        """Open the spool at `path`, creating it (mode 0600) if it does not exist. Failed
        writes raise StorageError and are reported to `health`."""
        if when_full not in SPOOL_POLICIES:
            raise ValueError(f"when_full must be one of {', '.join(SPOOL_POLICIES)}")
        if max_messages < 1 or max_age_s < 1:
            raise ValueError("max_messages and max_age_s must be positive")
        path = Path(path)
        create_private(path, what="spool", error_type=EdgeveilError)
        conn = connect(
            path,
            what="spool",
            schema=_SCHEMA,
            version=SCHEMA_VERSION,
            error_type=EdgeveilError,
            migrate=_migrate,
        )
        with closing_on_error(conn, path, what="spool", error_type=EdgeveilError):
            spool = cls(
                path, conn, max_messages, max_age_s, when_full, health=health
            )  # reads the depth
        log.debug("spool %s opened: %d messages", path, spool.depth)
        return spool

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __repr__(self) -> str:
        return f"Spool({str(self.path)!r}, depth={self._depth})"

    @property
    def health(self) -> StorageHealth:
        """Whether the spool's writes succeed (shared with the other stores in the service)."""
        return self._store.health

    @property
    def depth(self) -> int:
        """How many messages wait to be published: those held, less those the broker
        acknowledged whose deletion is still to come (published())."""
        return self._depth - len(self._published)

    @property
    def held(self) -> int:
        """How many messages the file holds, published or not (the room they take)."""
        return self._depth

    def published(self, seqs: Iterable[int]) -> None:
        """The broker acknowledged these; their deletion follows later (the uplink deletes in
        groups). In memory only: a restart publishes them again, as before."""
        with self._lock:
            self._published.update(int(s) for s in seqs)

    def _forget_deleted(self) -> None:
        """Drop published seqs whose rows another deletion (expiry, drop_oldest) removed: they
        are below the oldest row held. The caller holds the lock."""
        if self._published:
            row = self._conn.execute("SELECT min(seq) FROM spool").fetchone()
            oldest = row[0] if row[0] is not None else float("inf")
            self._published = {s for s in self._published if s >= oldest}

    def put(
        self,
        messages: Sequence[OutMessage],
        now: float | None = None,
        *,
        accepted: Sequence[Journaled] = (),
    ) -> range:
        """Store a batch in one transaction; returns the sequence numbers the messages got, in
        order (len() of it: how many were new). Durable on return.

        `accepted`: the counters of the frames that produced the batch, written to the
        accepted-counter journal in the same transaction (one fsync for both; the registry
        takes them later, NodeRegistry.fold). They do not count as messages.

        Every message given is stored (ingest never gives a frame's messages twice: the
        journal records its counter in the same transaction). When they do not fit, the
        messages the broker acknowledged (published()) that wait for their delete make room
        first; if that is not enough:
        "drop_oldest" deletes the oldest to make room (counted in
        `dropped_full`; a batch larger than the spool keeps its newest part), "refuse_new"
        stores nothing of the batch and raises SpoolFullError (counted in `refused`). A full
        disk (or any failure of the storage) raises StorageError, and stores nothing.
        """
        if not messages and not accepted:
            return range(0)
        now = time.time() if now is None else now
        rows = [
            (m.msg_id, m.topic, m.payload, int(m.retain), now if m.created is None else m.created)
            for m in messages
        ]
        with self._lock:
            conn = self._conn
            with transaction(conn, self._store):
                before = conn.total_changes
                conn.executemany(
                    "INSERT INTO spool (msg_id, topic, payload, retain, created) "
                    "VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
                new = conn.total_changes - before
                # seq is one above the highest held, so a batch's rows get consecutive ones
                last = int(conn.execute("SELECT max(seq) FROM spool").fetchone()[0] or 0)
                excess = self._depth + new - self.max_messages
                freed = 0
                if excess > 0 and self._published:
                    # acknowledged, waiting for the uplink's grouped delete (which then finds
                    # nothing to do): they make room first, so that no message still to be
                    # published is dropped, or refused, or counted as dropped, for their room
                    before_freeing = conn.total_changes
                    conn.executemany(*self._delete_published())
                    freed = conn.total_changes - before_freeing
                    excess -= freed
                if excess > 0 and self.when_full == "refuse_new":
                    conn.execute("ROLLBACK")
                    self.refused += new
                    raise SpoolFullError(
                        f"spool full ({self._depth} of {self.max_messages} messages): "
                        f"refused {new} new messages"
                    )
                if excess > 0:
                    conn.execute(
                        "DELETE FROM spool WHERE seq IN "
                        "(SELECT seq FROM spool ORDER BY seq LIMIT ?)",
                        (excess,),
                    )
                conn.executemany(
                    "INSERT INTO accepted (node_id, epoch, counter, digest) VALUES (?, ?, ?, ?)",
                    accepted,
                )
            dropped = max(excess, 0)
            self._depth += new - dropped - freed
            if freed:
                self._published.clear()
            report: tuple[int, float | None] | None = None
            if dropped:
                self._forget_deleted()
                report = self._drops_log.due("full", time.monotonic(), dropped)
            self.dropped_full += dropped
        if report is not None:
            count, since = report
            log.warning(
                "spool full (%d messages, when_full = drop_oldest): %d of the oldest messages "
                "dropped%s, never to be published (edgeveil_spool_dropped_total counts them); "
                "while it lasts, this is logged at most once every %.0f s",
                self.max_messages,
                count,
                "" if since is None else f" in the last {since:.0f} s",
                DROPS_LOG_EVERY_S,
            )
        return range(last - new + 1, last + 1)

    def peek(self, limit: int, after: int = 0) -> list[tuple[int, OutMessage]]:
        """Up to `limit` of the oldest messages, oldest first, with their seq (for delete).

        `after`: only messages with a larger seq, so an uplink with messages in flight can
        fetch the next ones without getting those again."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, msg_id, topic, payload, retain, created FROM spool WHERE seq > ? "
                "ORDER BY seq LIMIT ?",
                (after, limit),
            ).fetchall()
        return [
            (seq, OutMessage(msg_id, topic, payload, bool(retain), created))
            for seq, msg_id, topic, payload, retain, created in rows
        ]

    def delete(self, seqs: Iterable[int]) -> None:
        """Remove published messages (after their PUBACK). Unknown seqs are ignored.
        StorageError when the disk refuses: nothing was removed."""
        params = [(int(s),) for s in seqs]
        if not params:
            return
        with self._lock:
            (removed,) = self._commit_unsynced((_DELETE_SEQ, params))
            self._depth -= removed
            self._published.difference_update(s for (s,) in params)

    def expire(self, now: float | None = None) -> int:
        """Drop messages older than max_age_s that were never published; returns how many
        (also in `dropped_age`). Messages the broker acknowledged (published()) that wait for
        their grouped delete are deleted with them, not counted: they were delivered."""
        cutoff = (time.time() if now is None else now) - self.max_age_s
        with self._lock:
            oldest = self._conn.execute("SELECT min(created) FROM spool").fetchone()[0]
            if oldest is None or oldest >= cutoff:
                return 0  # the usual case: no transaction at all
            delivered, removed = self._commit_unsynced(
                self._delete_published(), ("DELETE FROM spool WHERE created < ?", [(cutoff,)])
            )
            self._published.clear()
            self._depth -= delivered + removed
            self.dropped_age += removed
        if removed:
            log.warning("spool: %d messages older than %d s expired", removed, self.max_age_s)
        return removed

    def journal(self) -> list[tuple[int, Journaled]]:
        """The accepted-counter journal, oldest first, each row with its sequence number."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, node_id, epoch, counter, digest FROM accepted ORDER BY seq"
            ).fetchall()
        return [(int(q), (int(n), int(e), int(c), bytes(d))) for q, n, e, c, d in rows]

    def journal_end(self) -> int:
        """The sequence number of the journal's newest row (0 when empty)."""
        with self._lock:
            row = self._conn.execute("SELECT max(seq) FROM accepted").fetchone()
        return int(row[0] or 0)

    def forget_journal(self, upto: int) -> None:
        """Drop the journal's rows up to `upto` once the registry holds them (unsynced: a
        power cut may bring them back, and the registry takes them again harmlessly)."""
        with self._lock:
            self._commit_unsynced(("DELETE FROM accepted WHERE seq <= ?", [(upto,)]))

    def oldest_age(self, now: float | None = None) -> float | None:
        """Seconds since the oldest message waiting (not published) was put (never negative),
        or None when none waits."""
        with self._lock:
            after = max(self._published, default=0)  # published ones are the oldest
            row = self._conn.execute(
                "SELECT min(created) FROM spool WHERE seq > ?", (after,)
            ).fetchone()
        if row[0] is None:
            return None
        return max(0.0, (time.time() if now is None else now) - float(row[0]))

    def _delete_published(self) -> tuple[str, list[tuple[int]]]:
        """The delete of the messages the broker acknowledged that wait for the uplink's
        grouped delete: full or expiring, the spool removes them first (they were delivered;
        the uplink's delete then finds nothing). The caller holds the lock, and clears
        `_published` once the transaction is committed."""
        return _DELETE_SEQ, [(s,) for s in self._published]

    def _commit_unsynced(self, *deletes: tuple[str, Sequence[tuple[int | float]]]) -> list[int]:
        """Run deletes, each a statement with its parameter rows, in one transaction without
        its own fsync (see the module docstring).

        The caller holds the lock. Returns how many rows each removed."""
        conn = self._conn
        conn.execute("PRAGMA synchronous=NORMAL")
        removed: list[int] = []
        try:
            with transaction(conn, self._store):
                for sql, params in deletes:
                    before = conn.total_changes
                    conn.executemany(sql, params)
                    removed.append(conn.total_changes - before)
        finally:
            conn.execute("PRAGMA synchronous=FULL")
        return removed
