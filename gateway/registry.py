"""The node registry: which nodes this gateway serves, their keys, and their counter state.

One SQLite file (stdlib sqlite3, WAL journal, synchronous=FULL), readable by its owner only:

    nodes     node_id INTEGER PRIMARY KEY, secret BLOB, zone TEXT, added REAL
    replay    node_id, fingerprint, highest, bitmap      uplink replay window (SPEC.md section 10)
    downlink  node_id, fingerprint, counter_limit        downlink counter limit (SPEC.md section 9)
    evidence  node_id, counter, digest                   what each accepted uplink counter sealed
    revoked   node_id, fingerprint, at                   nodes whose frames are refused
    successor old_node_id, new_node_id                   a replacement board, until it is heard
    epochs    node_id, fingerprint, epoch                the node's current key epoch (v1.1)
    rekey     node_id, fingerprint, epoch, requested     a re-key sent until the node takes it
    commands  seq, node_id, id, settings, version, state  remote configuration (node_config.py)
    health    node_id, doc, updated                      what was heard of a node (node_health.py)

Why the choices:

- **0600 and nothing wider.** The file holds every node's secret. It is created with mode 0600
  before SQLite opens it (SQLite gives its -wal and -shm files the database's mode), and an
  existing file that the group or others may access is refused with the `chmod 600` to run.
- **synchronous=FULL.** In WAL mode anything less may roll back a commit on power loss. A lost
  replay-window commit lets a replayed frame in; a lost downlink limit reuses a nonce.
- **The bitmap as an 8-byte big-endian blob.** SQLite integers are signed 64-bit; the bitmap is
  64 bits unsigned, so as an INTEGER its top bit would not fit.
- **Downlink counters with skip-ahead**, as the node does it (firmware/edgeveil_node/counter.py,
  SPEC.md "Nonces and counters"): the stored limit L promises that no counter at or above L was
  ever used. Counters below L are handed out from memory; when the next one reaches L, L + 256
  is committed first. After a crash the gateway resumes at the stored L: at most 255 counters
  are skipped, none is reused. The reservation reads L from the file inside the write
  transaction, so two processes sharing the file (the service and a technician command) never
  hand out the same counter either.
- **Counter state outlives remove().** Replay and downlink rows carry a fingerprint of the
  secret (a domain-separated SHA-256, not a key) and are kept when a node is removed. Adding the
  same secret again resumes them, so re-adding a node can neither reopen its replay window nor
  reuse a downlink nonce; a different secret (re-provisioning) starts both from zero, as the
  spec requires for new keys.
- **Evidence of counter reuse.** For each accepted uplink counter, the last EVIDENCE_SPAN of
  them per node, an 8-byte digest of the frame (frame_digest()). A node retransmits a frame
  byte for byte, so an authentic frame under a recorded counter with another digest was
  sealed by a second holder of the key: a cloned board or a restored flash backup, the
  key-and-nonce reuse that AES-CCM must never see (SPEC.md section 10, COUNTER_REUSE). The
  rows go with the replay-window commit, so what a restart remembers is what was accepted;
  1024 rows of about 24 bytes per node, pruned in the same transaction. A new secret deletes
  them (they describe the old keys).
- **Revocation belongs to a secret.** `revoke()` records the fingerprint of the node's current
  secret: its frames are refused (REVOKED) from then on, also after the node is removed and
  added again with the same secret. Only a new secret (re-provisioning) lifts it.
- **Replacing a board.** `add(..., replaces=OLD)` registers a replacement: the new node's
  first accepted frame revokes OLD in the same transaction that records it (accept_many), so
  the broken board's identity keeps working until its successor is really on the air, and not
  a moment longer.
- **Other processes' changes.** A technician command changes the file while the service runs;
  `reload_if_changed()` (SQLite's data_version, one cheap pragma, called once per batch) drops
  the cached entries, so a revocation or a replaced secret applies from the next batch.
- **Key epochs** (SPEC.md sections 9 and 10). A node's keys are its secret's at its current
  epoch, 0 until a frame of a higher epoch authenticates and is accepted: then, in the same
  transaction, that epoch becomes current, the replay window and the evidence start afresh, the
  downlink counter starts again at 0 (fresh keys), and frames of older epochs are refused
  (RETIRED_KEY). Counter state belongs to (secret, epoch): its fingerprint covers both, so
  state of a retired epoch can never be read as the current one's. The gateway follows a
  node's epoch by itself: deploy's new key generations need no import here.
- **Re-keys.** `request_rekey()` records the next epoch for a node; the service sends it (a
  configuration update with key_epoch) whenever it hears the node under its old keys, until the
  node's first frame under the new epoch is accepted, which deletes the request. The gateway
  counts re-keys within the generation deploy started (16 epochs each): the two never pick the
  same epoch.
- **Counters journaled by the spool.** The gateway does not commit each batch's counters
  here: ingest writes them into the spool's accepted-counter journal in the transaction that
  stores the batch's messages (gateway/spool.py), and calls accept_many(journaled=True), which
  moves the windows in memory only. fold() writes them here every few minutes (a node's
  window once, however many of its frames it holds), then ingest drops them from the
  journal; at start, replay_journal() takes what the journal still holds. So the file's
  windows and evidence may be minutes behind while the service runs (`gateway nodes list`
  shows that), never behind what the journal and the file hold together.
- **Keys derived once.** get() derives a node's keys (three HKDFs and two AEAD objects) on first
  use and caches the entry; later frames of the node cost a dict lookup.

Secrets and derived keys never appear in logs, reprs or exception messages.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import sqlite3
import stat
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol import LocalProtocolError, NodeKeys, RemoteProtocolError, ReplayWindow
from protocol.keys import MAX_EPOCH, MAX_NODE_ID, MAX_SECRET, MIN_SECRET, check_key_inputs
from protocol.replay import DUPLICATE

from .errors import RegistryError
from .sqlite import Closing, StorageHealth, Store, connect, create_private, transaction

__all__ = [
    "DOWNLINK_STEP",
    "EPOCHS_PER_GENERATION",
    "EVIDENCE_SPAN",
    "FORMAT",
    "MAX_ZONE_BYTES",
    "REUSE_HINT",
    "Accepted",
    "Command",
    "NodeEntry",
    "NodeRegistry",
    "frame_digest",
]

log = logging.getLogger(__name__)

FORMAT = "edgeveil-registry"
FORMAT_VERSION = 1
# Tables added later are created IF NOT EXISTS and an older edgeveil ignores them, so the
# version moves only for a change an older edgeveil would misread (a rollback stays possible).
SCHEMA_VERSION = 1
DOWNLINK_STEP = 256  # downlink counters reserved per commit
# key epochs per generation (SPEC.md section 9): deploy starts generations, the gateway's re-keys
# count within one, so the two never pick the same epoch
EPOCHS_PER_GENERATION = 16
# an accepted frame: node id, counter, frame digest, and optionally its key epoch (None or left
# out: the node's current one)
Accepted = tuple[int, int, bytes] | tuple[int, int, bytes, int | None]
# uplink counters below the highest whose frame digests are kept: with a frame every few
# minutes a few days, enough for a backup restored soon after it was taken; older reuse shows
# as REPLAY (a counter that went back)
EVIDENCE_SPAN = 1024
DIGEST_BYTES = 8
# what a counter reuse means and what to do, in the gateway's log and in node monitor alike
REUSE_HINT = (
    "two boards or a restored backup share this identity (give each board its own: edgeveil "
    "node provision, then edgeveil node deploy)"
)
MAX_COUNTER = 2**32 - 1  # SPEC.md section 9: a 4-byte partial IV
MAX_ZONE_BYTES = 32  # as in the node's configuration (firmware/edgeveil_node/config.py)
# finished remote configurations kept per node (its history; the highest version among them
# keeps the node's next version above every one it was sent)
KEPT_COMMANDS = 50
_HEX = re.compile(r"[0-9a-fA-F]*")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    node_id INTEGER PRIMARY KEY,
    secret BLOB NOT NULL,
    zone TEXT NOT NULL DEFAULT '',
    added REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS replay (
    node_id INTEGER PRIMARY KEY,
    fingerprint BLOB NOT NULL,
    highest INTEGER NOT NULL,
    bitmap BLOB NOT NULL CHECK (length(bitmap) = 8)
);
CREATE TABLE IF NOT EXISTS downlink (
    node_id INTEGER PRIMARY KEY,
    fingerprint BLOB NOT NULL,
    counter_limit INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS revoked (
    node_id INTEGER PRIMARY KEY,
    fingerprint BLOB NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS successor (
    old_node_id INTEGER PRIMARY KEY,
    new_node_id INTEGER NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS epochs (
    node_id INTEGER PRIMARY KEY,
    fingerprint BLOB NOT NULL,
    epoch INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS rekey (
    node_id INTEGER PRIMARY KEY,
    fingerprint BLOB NOT NULL,
    epoch INTEGER NOT NULL,
    requested REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS commands (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    node_id INTEGER NOT NULL,
    id TEXT NOT NULL,
    source TEXT NOT NULL,
    by TEXT,
    settings TEXT NOT NULL,
    version INTEGER,
    state TEXT NOT NULL,
    reason TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    sends INTEGER NOT NULL DEFAULT 0,
    last_sent REAL
);
CREATE INDEX IF NOT EXISTS commands_node ON commands (node_id, state);
CREATE TABLE IF NOT EXISTS health (
    node_id INTEGER PRIMARY KEY,
    doc TEXT NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS evidence (
    node_id INTEGER NOT NULL,
    counter INTEGER NOT NULL,
    digest BLOB NOT NULL,
    PRIMARY KEY (node_id, counter)
) WITHOUT ROWID;
"""
_STATEMENTS = tuple(s for s in _SCHEMA.split(";") if s.strip())


def _fingerprint(secret: bytes) -> bytes:
    """Tells whether counter state belongs to this secret. One-way, and not a key."""
    return hashlib.sha256(b"edgeveil registry state v1\x00" + secret).digest()[:16]


def _state_fingerprint(secret: bytes, epoch: int) -> bytes:
    """Tells whether counter state belongs to this secret's keys of this epoch (epoch 0: the
    fingerprint of the first registries, so their state still applies)."""
    if not epoch:
        return _fingerprint(secret)
    data = b"edgeveil registry state v1\x00" + secret + b"\x00epoch\x00" + bytes([epoch])
    return hashlib.sha256(data).digest()[:16]


def _current_epoch(cur: sqlite3.Cursor, node_id: int, secret: bytes) -> int:
    """The node's current key epoch for this secret (0 when none was recorded for it)."""
    row = cur.execute(
        "SELECT fingerprint, epoch FROM epochs WHERE node_id = ?", (node_id,)
    ).fetchone()
    return int(row[1]) if row is not None and bytes(row[0]) == _fingerprint(secret) else 0


def frame_digest(frame: bytes) -> bytes:
    """What the registry keeps of an accepted frame: enough to tell a retransmission (the same
    bytes) from another frame under the same counter, nothing of its content."""
    return hashlib.sha256(frame).digest()[:DIGEST_BYTES]


def _take(window: ReplayWindow, counter: int) -> bool:
    """Move `window` to hold `counter` unless it does already or it is below the window;
    whether it moved."""
    try:
        if window.check(counter) == DUPLICATE:
            return False
    except RemoteProtocolError:  # below the window: older than what it can hold
        return False
    window.accept(counter)
    return True


def _bitmap_blob(bitmap: int) -> bytes:
    return bitmap.to_bytes(8, "big")


@dataclass(frozen=True, slots=True)
class Command:
    """A remote configuration of one node (gateway.node_config), as the registry keeps it."""

    seq: int  # the order commands were taken in
    node_id: int
    id: str  # the client's own id
    source: str  # "mqtt" or "cli"
    by: str | None  # who asked, as given (audit)
    settings: dict[str, Any]  # what the node is sent (the zone is the gateway's, applied at once)
    version: int | None  # the configuration version sent; None when nothing is sent
    state: str  # accepted, delivered, applied, rejected, failed
    reason: str | None
    created: float
    updated: float
    sends: int  # deliveries so far
    last_sent: float | None

    @property
    def open(self) -> bool:
        """Still to be answered by the node."""
        return self.state in ("accepted", "delivered")


_COMMAND_COLUMNS = (
    "seq, node_id, id, source, by, settings, version, state, reason, created, updated, sends, "
    "last_sent"
)


def _command(row: tuple[Any, ...]) -> Command:
    seq, node_id, id_, source, by, settings, version, state, reason = row[:9]
    created, updated, sends, last_sent = row[9:]
    return Command(
        int(seq),
        int(node_id),
        str(id_),
        str(source),
        None if by is None else str(by),
        json.loads(settings),
        None if version is None else int(version),
        str(state),
        None if reason is None else str(reason),
        float(created),
        float(updated),
        int(sends),
        None if last_sent is None else float(last_sent),
    )


class NodeEntry:
    """A registered node as the ingest stage uses it.

    `keys` is derived once per process, when first used (the node's first frame or downlink):
    the service loads every registered node's entry at start, and of 1,000 registered nodes
    a few may send, so deriving them all (three HKDFs and two AEAD objects each, about 0.6 KB)
    would only fill the Raspberry Pi's memory. `window` is the one live replay window of the
    node: get() returns the same object every time, and NodeRegistry.accept() moves it.
    """

    __slots__ = (
        "_keys",
        "_secret",
        "epoch",
        "node_id",
        "rekey",
        "replaces",
        "revoked",
        "window",
        "zone",
    )

    def __init__(
        self,
        node_id: int,
        zone: str,
        secret: bytes,
        epoch: int,
        window: ReplayWindow,
        *,
        revoked: bool = False,
        replaces: int | None = None,
        rekey: int | None = None,
    ) -> None:
        self.node_id = node_id
        self.zone = zone
        self._secret = secret
        self._keys: NodeKeys | None = None
        self.epoch = epoch  # the node's current key epoch here; older ones are refused
        self.window = window
        self.rekey = rekey  # the epoch a requested re-key moves it to, until it is heard there
        self.revoked = revoked  # its frames are refused (NodeRegistry.revoke)
        self.replaces = replaces  # the node its first accepted frame revokes

    @property
    def keys(self) -> NodeKeys:
        """The node's keys at its current epoch. get() checked the secret and epoch, so the
        derivation cannot fail; two threads deriving at once get equal keys."""
        keys = self._keys
        if keys is None:
            keys = self._keys = NodeKeys(self.node_id, self._secret, epoch=self.epoch)
        return keys

    def switch(self, keys: NodeKeys) -> None:
        """The node moved to the epoch of `keys` (NodeRegistry._switched)."""
        self._keys = keys
        self.epoch = keys.epoch

    def __repr__(self) -> str:  # never the secret or the keys
        return f"NodeEntry(node_id={self.node_id}, zone={self.zone!r})"


class _Downlink:
    __slots__ = ("limit", "next")

    def __init__(self, next_: int, limit: int) -> None:
        self.next = next_
        self.limit = limit


class NodeRegistry(Closing):
    """The node registry in one SQLite file. Open it with NodeRegistry.open(path).

    Synchronous and short: every call is a dict lookup or one small transaction. Calls that
    commit (add, remove, accept, accept_many unless journaled, fold, a downlink reservation
    every 256 counters, import_file) wait for one fsync. The object is safe to share between
    threads (one lock), but see accept_many() about the replay windows.
    """

    def __init__(
        self, path: Path, conn: sqlite3.Connection, health: StorageHealth | None = None
    ) -> None:
        self.path = path
        self._conn = conn
        self._file = Store("registry", path, health or StorageHealth())
        self._lock = threading.RLock()
        self._entries: dict[int, NodeEntry] = {}
        self._fingerprints: dict[int, bytes] = {}  # of each entry's counter state
        self._secrets: dict[int, bytes] = {}  # for the keys of a node's next epoch
        self._downlink: dict[int, _Downlink] = {}
        # accepted frames a journal made durable (the spool's: accept_many(journaled=True)),
        # not yet written here: node -> counter -> (key epoch, state fingerprint, digest)
        self._pending: dict[int, dict[int, tuple[int, bytes, bytes]]] = {}
        self._open_commands: dict[int, list[Command]] | None = None  # node -> oldest first
        self._data_version = self._read_data_version()

    # -- opening and closing ------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path, health: StorageHealth | None = None) -> NodeRegistry:
        """Open the registry at `path`, creating it (mode 0600) if it does not exist. Failed
        writes raise StorageError (gateway.errors) and are reported to `health`."""
        path = Path(path)
        create_private(path, what="registry", error_type=RegistryError)
        _check_private(path)
        conn = connect(
            path,
            what="registry",
            schema=_STATEMENTS,
            version=SCHEMA_VERSION,
            error_type=RegistryError,
            hint="; a JSON registry file is loaded with import",
        )
        log.debug("registry %s opened", path)
        return cls(path, conn, health)

    @property
    def health(self) -> StorageHealth:
        """Whether the registry's writes succeed (shared with the other stores in the service)."""
        return self._file.health

    def _read_data_version(self) -> int:
        with self._lock:
            return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    def reload_if_changed(self) -> bool:
        """Forget the cached entries if another connection (a technician command) committed
        since the last call; True if it did. Counter state is safe either way: windows are
        read again from the file, which holds every accepted counter."""
        version = self._read_data_version()
        if version == self._data_version:
            return False
        with self._lock:
            self._data_version = version
            self._entries.clear()
            self._fingerprints.clear()
            self._secrets.clear()
            self._open_commands = None
        return True

    def close(self) -> None:
        with self._lock:
            self._conn.close()
            self._entries.clear()
            self._downlink.clear()

    def __repr__(self) -> str:
        return f"NodeRegistry({str(self.path)!r})"

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Cursor]:
        """BEGIN IMMEDIATE ... COMMIT under the lock; ROLLBACK on any exception."""
        with self._lock, transaction(self._conn, self._file) as cur:
            yield cur

    # -- the set of nodes ---------------------------------------------------------------------

    def add(
        self,
        node_id: int,
        secret: bytes,
        zone: str = "",
        *,
        replace: bool = False,
        replaces: int | None = None,
    ) -> None:
        """Register a node. RegistryError if it is registered already, unless replace=True.

        Replacing with the same secret keeps the node's counter state; a new secret starts it
        from zero (the node was re-provisioned). `replaces`: the node id of a board this one
        replaces, revoked when this node's first frame is accepted (it need not be in this
        registry: a provisioning export carries it to the gateway's, where import_file checks).
        """
        _check_node_id(node_id, "node_id")
        secret = _check_secret(secret, "secret")
        _check_zone(zone, "zone")
        if replaces is not None:
            _check_node_id(replaces, "replaces")
            if replaces == node_id:
                raise RegistryError(f"node {node_id} cannot replace itself")
        with self._transaction() as cur:
            if not replace and _exists(cur, node_id):
                raise RegistryError(
                    f"node {node_id} is registered already (replace it to change its secret "
                    "or zone)"
                )
            self._store(cur, node_id, secret, zone, time.time())
            if replaces is not None:
                _store_successor(cur, replaces, node_id)
        self._forget(node_id)
        log.info("registry: node %d added (zone %r)", node_id, zone)

    def _store(
        self, cur: sqlite3.Cursor, node_id: int, secret: bytes, zone: str, added: float
    ) -> None:
        fp = _fingerprint(secret)
        cur.execute(
            "INSERT INTO nodes (node_id, secret, zone, added) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (node_id) DO UPDATE SET secret = excluded.secret, zone = excluded.zone",
            (node_id, secret, zone, added),
        )
        # counter state of another secret no longer applies: the new keys start from zero
        cur.execute("DELETE FROM epochs WHERE node_id = ? AND fingerprint != ?", (node_id, fp))
        cur.execute("DELETE FROM rekey WHERE node_id = ? AND fingerprint != ?", (node_id, fp))
        state = _state_fingerprint(secret, _current_epoch(cur, node_id, secret))
        cur.execute("DELETE FROM replay WHERE node_id = ? AND fingerprint != ?", (node_id, state))
        cur.execute("DELETE FROM downlink WHERE node_id = ? AND fingerprint != ?", (node_id, state))
        if cur.execute("SELECT 1 FROM replay WHERE node_id = ?", (node_id,)).fetchone() is None:
            cur.execute("DELETE FROM evidence WHERE node_id = ?", (node_id,))
        # a revocation is of the old secret; the same secret stays revoked
        cur.execute("DELETE FROM revoked WHERE node_id = ? AND fingerprint != ?", (node_id, fp))

    def remove(self, node_id: int) -> None:
        """Unregister a node (RegistryError if unknown). Its counter state stays, see above."""
        with self._transaction() as cur:
            cur.execute("DELETE FROM nodes WHERE node_id = ?", (node_id,))
            if cur.rowcount == 0:
                raise RegistryError(f"node {node_id} is not registered")
        self._forget(node_id)
        log.info("registry: node %d removed", node_id)

    def revoke(self, node_id: int) -> bool:
        """Refuse the node's frames from now on (REVOKED), until it is given a new secret.
        RegistryError for an unknown node; False if it was revoked already. A running
        gateway applies it from its next batch of frames (reload_if_changed)."""
        with self._transaction() as cur:
            if not _exists(cur, node_id):
                raise RegistryError(f"node {node_id} is not registered")
            changed = _revoke(cur, node_id)
        self._forget(node_id)
        if changed:
            log.warning("registry: node %d revoked", node_id)
        return changed

    def successors(self) -> dict[int, int]:
        """Replacements not heard yet: {old node id: new node id}."""
        with self._lock:
            rows = self._conn.execute("SELECT old_node_id, new_node_id FROM successor").fetchall()
        return {int(old): int(new) for old, new in rows}

    def revoked(self) -> dict[int, float]:
        """Registered nodes whose current secret is revoked, with when (Unix time)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT n.node_id, n.secret, r.fingerprint, r.at FROM nodes n "
                "JOIN revoked r ON r.node_id = n.node_id"
            ).fetchall()
        return {
            int(node_id): float(at)
            for node_id, secret, fp, at in rows
            if bytes(fp) == _fingerprint(bytes(secret))
        }

    def _forget(self, node_id: int) -> None:
        with self._lock:
            self._entries.pop(node_id, None)
            self._fingerprints.pop(node_id, None)
            self._secrets.pop(node_id, None)
            self._downlink.pop(node_id, None)

    def __len__(self) -> int:
        with self._lock:
            row = self._conn.execute("SELECT count(*) FROM nodes").fetchone()
        return int(row[0])

    def __contains__(self, node_id: object) -> bool:
        if type(node_id) is not int:
            return False
        if node_id in self._entries:
            return True
        with self._lock:
            row = self._conn.execute("SELECT 1 FROM nodes WHERE node_id = ?", (node_id,)).fetchone()
        return row is not None

    def node_ids(self) -> list[int]:
        """Every registered node id, ascending."""
        with self._lock:
            rows = self._conn.execute("SELECT node_id FROM nodes ORDER BY node_id").fetchall()
        return [int(r[0]) for r in rows]

    def served(self) -> dict[int, str]:
        """The nodes this gateway serves (registered, not revoked): node id -> zone."""
        out = {}
        for node_id in self.node_ids():
            try:
                entry = self.get(node_id)
            except RegistryError:  # an unusable entry: the gateway serves it no frames either
                continue
            if entry is not None and not entry.revoked:
                out[node_id] = entry.zone
        return out

    # -- what the ingest stage uses -----------------------------------------------------------

    def get(self, node_id: int) -> NodeEntry | None:
        """The node's entry, or None for a node this gateway does not serve.

        The first call per node reads the file and derives the keys; later calls return the
        same cached object (with the same live `window`).
        """
        entry = self._entries.get(node_id)
        if entry is not None:
            return entry
        if type(node_id) is not int or not 0 <= node_id <= MAX_NODE_ID:
            return None
        with self._lock:
            entry = self._entries.get(node_id)  # another thread may have loaded it meanwhile
            if entry is not None:
                return entry
            row = self._conn.execute(
                "SELECT n.secret, n.zone, r.fingerprint, r.highest, r.bitmap, v.fingerprint, "
                "s.old_node_id, e.fingerprint, e.epoch, k.fingerprint, k.epoch "
                "FROM nodes n LEFT JOIN replay r ON r.node_id = n.node_id "
                "LEFT JOIN revoked v ON v.node_id = n.node_id "
                "LEFT JOIN successor s ON s.new_node_id = n.node_id "
                "LEFT JOIN epochs e ON e.node_id = n.node_id "
                "LEFT JOIN rekey k ON k.node_id = n.node_id WHERE n.node_id = ?",
                (node_id,),
            ).fetchone()
            if row is None:
                return None
            secret, zone, fp_stored, highest, bitmap, fp_revoked, replaces = row[:7]
            fp_epoch, epoch, fp_rekey, rekey = row[7:]
            secret = bytes(secret)
            fp = _fingerprint(secret)
            epoch = int(epoch) if fp_epoch is not None and bytes(fp_epoch) == fp else 0
            state = _state_fingerprint(secret, epoch)
            window = ReplayWindow()
            if fp_stored is not None and bytes(fp_stored) == state:
                window = ReplayWindow(int(highest), int.from_bytes(bytes(bitmap), "big"))
            for counter, (p_epoch, p_state, _d) in sorted(self._pending.get(node_id, {}).items()):
                if (p_epoch, p_state) == (epoch, state):  # accepted, not yet folded in
                    _take(window, counter)
            try:  # refused now, not at the node's first frame: the entry derives its keys then
                check_key_inputs(node_id, secret, epoch)
            except LocalProtocolError as exc:  # its message never shows the value
                raise RegistryError(f"node {node_id}: stored secret is unusable: {exc}") from None
            revoked = fp_revoked is not None and bytes(fp_revoked) == fp
            pending = fp_rekey is not None and bytes(fp_rekey) == fp and int(rekey) > epoch
            entry = NodeEntry(
                node_id,
                str(zone),
                secret,
                epoch,
                window,
                revoked=revoked,
                replaces=None if replaces is None else int(replaces),
                rekey=int(rekey) if pending else None,
            )
            self._entries[node_id] = entry
            self._fingerprints[node_id] = state
            self._secrets[node_id] = secret
            return entry

    # -- remote configuration (gateway.node_config) ----------------------------------------------

    def add_command(
        self,
        node_id: int,
        id_: str,
        settings: dict[str, Any],
        *,
        source: str,
        by: str | None,
        zone: str | None = None,
        first_version: int = 1,
        max_open: int = 4,
    ) -> Command:
        """Store a checked command, durable on return: `settings` for the node (none: nothing
        to send), `zone` set for the node here in the same transaction. Its version is the
        node's next (at least `first_version`). RegistryError when the node is unknown or
        has `max_open` commands open already."""
        now = time.time()
        with self._transaction() as cur:
            if not _exists(cur, node_id):
                raise RegistryError(f"node {node_id} is not registered")
            (open_,) = cur.execute(
                "SELECT count(*) FROM commands WHERE node_id = ? AND state IN "
                "('accepted', 'delivered')",
                (node_id,),
            ).fetchone()
            if open_ >= max_open:
                raise RegistryError(
                    f"node {node_id} has {open_} commands waiting for it already: wait for "
                    "their results"
                )
            version = None
            if settings:
                (highest,) = cur.execute(
                    "SELECT max(version) FROM commands WHERE node_id = ?", (node_id,)
                ).fetchone()
                version = max(first_version, (highest or 0) + 1)
            if zone is not None:
                cur.execute("UPDATE nodes SET zone = ? WHERE node_id = ?", (zone, node_id))
            state = "accepted" if settings else "applied"
            cur.execute(
                "INSERT INTO commands (node_id, id, source, by, settings, version, state, "
                "created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (node_id, id_, source, by, json.dumps(settings), version, state, now, now),
            )
            seq = cur.lastrowid
        self._entries.pop(node_id, None)  # the zone may have changed
        self._open_commands = None
        return Command(
            int(seq or 0),
            node_id,
            id_,
            source,
            by,
            settings,
            version,
            state,
            None,
            now,
            now,
            0,
            None,
        )

    def open_commands(self, node_id: int) -> list[Command]:
        """The node's commands still to be answered, oldest first (cached: one query per
        change of the file, not per frame)."""
        cache = self._open_commands
        if cache is None:
            with self._lock:
                rows = self._conn.execute(
                    f"SELECT {_COMMAND_COLUMNS} FROM commands "  # noqa: S608 - constant columns
                    "WHERE state IN ('accepted', 'delivered') ORDER BY seq"
                ).fetchall()
            cache = {}
            for row in rows:
                command = _command(row)
                cache.setdefault(command.node_id, []).append(command)
            self._open_commands = cache
        return list(cache.get(node_id, ()))

    def commands(self, node_id: int, limit: int = 20) -> list[Command]:
        """The node's latest commands, newest first: its history of configuration changes."""
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_COMMAND_COLUMNS} FROM commands WHERE node_id = ? "  # noqa: S608
                "ORDER BY seq DESC LIMIT ?",
                (node_id, limit),
            ).fetchall()
        return [_command(r) for r in rows]

    def update_command(
        self,
        seq: int,
        state: str,
        reason: str | None = None,
        *,
        sent: bool = False,
        now: float | None = None,
    ) -> None:
        """A command's new state (and one more delivery at `now`, with `sent`)."""
        now = time.time() if now is None else now
        with self._transaction() as cur:
            cur.execute(
                "UPDATE commands SET state = ?, reason = ?, updated = ?, "
                "sends = sends + ?, last_sent = CASE WHEN ? THEN ? ELSE last_sent END "
                "WHERE seq = ?",
                (state, reason, now, int(sent), int(sent), now, seq),
            )
            # the history is bounded: the node's last KEPT_COMMANDS finished ones stay
            cur.execute(
                "DELETE FROM commands WHERE state NOT IN ('accepted', 'delivered') AND seq IN "
                "(SELECT seq FROM commands WHERE node_id = (SELECT node_id FROM commands "
                "WHERE seq = ?) ORDER BY seq DESC LIMIT -1 OFFSET ?)",
                (seq, KEPT_COMMANDS),
            )
        self._open_commands = None

    # -- node health (gateway.node_health) -----------------------------------------------------

    def health_docs(self) -> dict[int, dict[str, Any]]:
        """Every node's saved health document (JSON objects, as node_health writes them)."""
        with self._lock:
            rows = self._conn.execute("SELECT node_id, doc FROM health").fetchall()
        return {int(n): json.loads(doc) for n, doc in rows}

    def save_health(self, docs: dict[int, dict[str, Any]]) -> None:
        """Replace these nodes' health documents, in one transaction."""
        if not docs:
            return
        now = time.time()
        with self._transaction() as cur:
            cur.executemany(
                "INSERT OR REPLACE INTO health (node_id, doc, updated) VALUES (?, ?, ?)",
                [(n, json.dumps(doc, separators=(",", ":")), now) for n, doc in docs.items()],
            )

    def keys_for(self, node_id: int, epoch: int) -> NodeKeys:
        """The keys of a registered node at `epoch` (a frame of a higher epoch than its current
        one is opened with these; only an accepted one makes the epoch current)."""
        entry = self.get(node_id)
        if entry is None:
            raise RegistryError(f"node {node_id} is not registered")
        if epoch == entry.epoch:
            return entry.keys
        try:
            return NodeKeys(node_id, self._secrets[node_id], epoch=epoch)
        except LocalProtocolError as exc:
            raise RegistryError(f"node {node_id}: {exc}") from None

    def accept(
        self, node_id: int, counter: int, digest: bytes = b"", epoch: int | None = None
    ) -> None:
        """Record an accepted uplink counter: move the node's window and persist it, with the
        frame's digest (frame_digest(); b"" records none) as evidence against counter reuse.
        `epoch`: the frame's key epoch (None: the node's current one); a higher one becomes
        the node's current epoch (see the module docstring).

        Call it only after the frame authenticated, check() said NEW, and what the frame
        produced is durably stored (in the spool), and before acknowledging the frame
        (SPEC.md section 10). Durable on return.
        """
        self.accept_many(((node_id, counter, digest, epoch),))

    def digest(self, node_id: int, counter: int) -> bytes | None:
        """The digest recorded for an accepted uplink counter of the node at its current key
        epoch, or None when none is kept (never accepted, older than EVIDENCE_SPAN, or
        accepted without one)."""
        with self._lock:
            pending = self._pending.get(node_id, {}).get(counter)
            if pending is not None and pending[1] == self._fingerprints.get(node_id):
                return pending[2] or None
            row = self._conn.execute(
                "SELECT digest FROM evidence WHERE node_id = ? AND counter = ?", (node_id, counter)
            ).fetchone()
        return None if row is None else bytes(row[0])

    def accept_many(self, items: Iterable[Accepted], *, journaled: bool = False) -> None:
        """accept() for several (node_id, counter, digest[, epoch]) in one transaction (one
        fsync).

        `journaled`: the caller made these durable in a journal of its own already (the
        spool's, in the transaction that stored the frames' messages). They then change the
        windows in memory only and are written here by fold(), which the caller runs every
        few minutes before it drops them from its journal; a node's move to a new key epoch
        or a replacement's first frame is still committed here at once.

        The pairs are applied per node in ascending counter order, so a batch that holds an
        older and a much newer frame of one node is accepted whatever its order. A node's
        frames of a higher key epoch than its current one move it to the highest of them;
        its frames of the old epoch in the same batch were stored, but that epoch's window is
        retired with it. The windows in memory change only after the commit: if it fails,
        nothing changed.

        Threads: this may run in a worker thread (asyncio.to_thread, to keep the fsync off the
        event loop), but the windows it moves are the objects the ingest stage reads, so do
        not check() frames of the same nodes while it runs (for example: await it before
        classifying the next batch).
        """
        with self._lock:
            pairs = self._validated(items)
            if not pairs:
                return
            newest = {n: e for n, e, _c, _d in pairs}  # sorted: each node's highest epoch
            pairs = [p for p in pairs if p[1] == newest[p[0]]]
            switched = {n: e for n, e in newest.items() if e > self._entries[n].epoch}
            staged: dict[int, ReplayWindow] = {}
            for node_id, _epoch, counter, _digest in pairs:
                window = staged.get(node_id)
                if window is None:
                    live = self._entries[node_id].window
                    fresh = node_id in switched
                    window = ReplayWindow() if fresh else ReplayWindow(live.highest, live.bitmap)
                    staged[node_id] = window
                window.accept(counter)  # LocalProtocolError for a counter check() rejects
            states = {  # the fingerprint of each node's counter state after the commit
                n: _state_fingerprint(self._secrets[n], switched[n])
                if n in switched
                else self._fingerprints[n]
                for n in staged
            }
            replacing = any(self._entries[n].replaces is not None for n in staged)
            if journaled and not switched and not replacing:
                for node_id, window in staged.items():
                    live = self._entries[node_id].window
                    live.highest, live.bitmap = window.highest, window.bitmap
                for node_id, epoch, counter, digest in pairs:
                    self._pending.setdefault(node_id, {})[counter] = (
                        epoch,
                        states[node_id],
                        digest,
                    )
                return
            with self._transaction() as cur:
                for node_id, epoch in switched.items():
                    secret = self._secrets[node_id]
                    cur.execute(
                        "INSERT INTO epochs (node_id, fingerprint, epoch) VALUES (?, ?, ?) "
                        "ON CONFLICT (node_id) DO UPDATE SET fingerprint = excluded.fingerprint, "
                        "epoch = excluded.epoch",
                        (node_id, _fingerprint(secret), epoch),
                    )
                    cur.execute("DELETE FROM evidence WHERE node_id = ?", (node_id,))
                    cur.execute(
                        "DELETE FROM rekey WHERE node_id = ? AND epoch <= ?", (node_id, epoch)
                    )
                cur.executemany(
                    "INSERT INTO replay (node_id, fingerprint, highest, bitmap) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (node_id) DO UPDATE SET "
                    "fingerprint = excluded.fingerprint, highest = excluded.highest, "
                    "bitmap = excluded.bitmap",
                    [(n, states[n], w.highest, _bitmap_blob(w.bitmap)) for n, w in staged.items()],
                )
                cur.executemany(
                    "INSERT OR REPLACE INTO evidence (node_id, counter, digest) VALUES (?, ?, ?)",
                    [(n, c, d) for n, _e, c, d in pairs if d],
                )
                cur.executemany(
                    "DELETE FROM evidence WHERE node_id = ? AND counter <= ?",
                    [(n, w.highest - EVIDENCE_SPAN) for n, w in staged.items()],
                )
                # a replacement heard for the first time: the board it replaces is retired
                replaced = {
                    n: old for n in staged if (old := self._entries[n].replaces) is not None
                }
                for old in replaced.values():
                    cur.execute("DELETE FROM successor WHERE old_node_id = ?", (old,))
                    if _exists(cur, old):
                        _revoke(cur, old)
            for node_id, epoch in switched.items():
                self._switched(node_id, epoch, states[node_id])
            for node_id, window in staged.items():
                live = self._entries[node_id].window
                live.highest, live.bitmap = window.highest, window.bitmap
            for new, old in replaced.items():
                self._entries[new].replaces = None
                self._forget(old)
                log.warning("registry: node %d revoked: its replacement %d was heard", old, new)

    @property
    def pending(self) -> int:
        """Accepted frames held in memory for fold()."""
        return sum(len(p) for p in self._pending.values())

    def fold(self) -> int:
        """Write the journaled frames (accept_many(journaled=True)) into the file: each node's
        window, the frames' digests as evidence, in one transaction. Returns how many frames;
        StorageError leaves them pending. Frames of a key epoch the node has left, or of an
        identity replaced since, are dropped: their state is no longer the node's."""
        with self._lock:
            if not self._pending:
                return 0
            windows: list[tuple[int, bytes, int, bytes]] = []
            evidence: list[tuple[int, int, bytes]] = []
            cleanup: list[tuple[int, int]] = []
            folded = 0
            for node_id, counters in self._pending.items():
                entry = self.get(node_id)
                state = self._fingerprints.get(node_id)
                if entry is None or state is None:
                    continue
                live = [
                    (c, d) for c, (e, st, d) in counters.items() if (e, st) == (entry.epoch, state)
                ]
                if not live:
                    continue
                folded += len(live)
                window = entry.window
                windows.append((node_id, state, window.highest, _bitmap_blob(window.bitmap)))
                evidence.extend((node_id, c, d) for c, d in live if d)
                cleanup.append((node_id, window.highest - EVIDENCE_SPAN))
            with self._transaction() as cur:
                cur.executemany(
                    "INSERT INTO replay (node_id, fingerprint, highest, bitmap) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (node_id) DO UPDATE SET "
                    "fingerprint = excluded.fingerprint, highest = excluded.highest, "
                    "bitmap = excluded.bitmap",
                    windows,
                )
                cur.executemany(
                    "INSERT OR REPLACE INTO evidence (node_id, counter, digest) VALUES (?, ?, ?)",
                    evidence,
                )
                cur.executemany("DELETE FROM evidence WHERE node_id = ? AND counter <= ?", cleanup)
            self._pending.clear()
            return folded

    def replay_journal(self, rows: Iterable[tuple[int, int, int, bytes]]) -> int:
        """At start: take what a journal still holds (node, epoch, counter, digest), as
        accept_many(journaled=True) did before the restart. Rows of unknown nodes, of a key
        epoch other than the node's current one, or that the window holds already are
        skipped. Returns how many were taken."""
        taken = 0
        with self._lock:
            for node_id, epoch, counter, digest in rows:
                entry = self.get(node_id)
                if entry is None or epoch != entry.epoch:
                    continue
                state = self._fingerprints[node_id]
                if _take(entry.window, counter):
                    taken += 1
                self._pending.setdefault(node_id, {})[counter] = (epoch, state, digest)
        return taken

    def _validated(self, items: Iterable[Accepted]) -> list[tuple[int, int, int, bytes]]:
        """accept_many's items as sorted, distinct (node, epoch, counter, digest)."""
        pairs: set[tuple[int, int, int, bytes]] = set()
        for item in items:
            node_id, counter, digest = item[0], item[1], item[2]
            entry = self.get(node_id)
            if entry is None:
                raise RegistryError(f"accept: node {node_id} is not registered")
            epoch = item[3] if len(item) > 3 and item[3] is not None else entry.epoch
            if type(counter) is not int or not 0 <= counter <= MAX_COUNTER:
                raise RegistryError(f"accept: node {node_id}: counter {counter!r} invalid")
            if type(epoch) is not int or not entry.epoch <= epoch <= MAX_EPOCH:
                raise RegistryError(f"accept: node {node_id}: key epoch {epoch!r} invalid")
            pairs.add((node_id, epoch, counter, digest))
        return sorted(pairs)

    def _switched(self, node_id: int, epoch: int, state: bytes) -> None:
        """The node's entry after its move to `epoch` was committed."""
        entry = self._entries[node_id]
        entry.switch(self.keys_for(node_id, epoch))
        entry.window = ReplayWindow()
        if entry.rekey is not None and entry.rekey <= epoch:
            entry.rekey = None
        self._fingerprints[node_id] = state
        self._downlink.pop(node_id, None)  # fresh keys: downlink counters from 0
        log.warning(
            "registry: node %d now uses key epoch %d: frames under its older keys are refused "
            "from now on",
            node_id,
            epoch,
        )

    def request_rekey(self, node_id: int) -> int:
        """Ask for the node's next key epoch (sent to it by the service until it is heard
        under it); returns that epoch. A request pending already is returned as it is.
        RegistryError for an unknown or revoked node, or when its generation of epochs is
        used up (15 re-keys since the last deploy started one: deploy it again)."""
        with self._transaction() as cur:
            row = cur.execute("SELECT secret FROM nodes WHERE node_id = ?", (node_id,)).fetchone()
            if row is None:
                raise RegistryError(f"node {node_id} is not registered")
            secret = bytes(row[0])
            fp = _fingerprint(secret)
            revoked = cur.execute(
                "SELECT 1 FROM revoked WHERE node_id = ? AND fingerprint = ?", (node_id, fp)
            ).fetchone()
            if revoked is not None:
                raise RegistryError(f"node {node_id} is revoked: it gets no new keys")
            epoch = _current_epoch(cur, node_id, secret)
            pending = cur.execute(
                "SELECT epoch FROM rekey WHERE node_id = ? AND fingerprint = ?", (node_id, fp)
            ).fetchone()
            if pending is not None and int(pending[0]) > epoch:
                return int(pending[0])
            target = epoch + 1
            if target % EPOCHS_PER_GENERATION == 0:
                raise RegistryError(
                    f"node {node_id} is at key epoch {epoch}, the last of the generation its "
                    "last deploy started: deploy it again (edgeveil node deploy on its board "
                    "starts a new one) or give it a new identity (edgeveil node provision "
                    f"--replace {node_id})"
                )
            cur.execute(
                "INSERT INTO rekey (node_id, fingerprint, epoch, requested) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (node_id) DO UPDATE SET fingerprint = excluded.fingerprint, "
                "epoch = excluded.epoch, requested = excluded.requested",
                (node_id, fp, target, time.time()),
            )
        self._forget(node_id)
        log.warning("registry: node %d: re-key to key epoch %d requested", node_id, target)
        return target

    def next_downlink_counter(self, node_id: int) -> int:
        """A downlink counter for `node_id` that was never used and never will be again.

        Most calls cost nothing; every DOWNLINK_STEP-th commits a new limit first (one fsync).
        RegistryError for an unknown node, or when the counters are exhausted (2^32 frames:
        the node needs a new secret).
        """
        with self._lock:
            state = self._downlink.get(node_id)
            if state is None or state.next >= state.limit:
                state = self._reserve(node_id, None if state is None else state.next)
            value = state.next
            state.next += 1
            return value

    def _reserve(self, node_id: int, next_: int | None) -> _Downlink:
        if self.get(node_id) is None:
            raise RegistryError(f"node {node_id} is not registered")
        fp = self._fingerprints[node_id]
        with self._transaction() as cur:
            row = cur.execute(
                "SELECT fingerprint, counter_limit FROM downlink WHERE node_id = ?", (node_id,)
            ).fetchone()
            stored = int(row[1]) if row is not None and bytes(row[0]) == fp else 0
            start = stored if next_ is None else max(next_, stored)
            if start > MAX_COUNTER:
                raise RegistryError(
                    f"node {node_id}: downlink counters exhausted; provision it with a new secret"
                )
            limit = min(start + DOWNLINK_STEP, MAX_COUNTER + 1)
            cur.execute(
                "INSERT INTO downlink (node_id, fingerprint, counter_limit) VALUES (?, ?, ?) "
                "ON CONFLICT (node_id) DO UPDATE SET fingerprint = excluded.fingerprint, "
                "counter_limit = excluded.counter_limit",
                (node_id, fp, limit),
            )
        state = _Downlink(start, limit)
        self._downlink[node_id] = state
        return state

    def advance_after_restore(self, downlinks: int, uplinks: int = 0) -> tuple[int, list[int]]:
        """After the registry file was restored from a backup: move every node's counter
        state past anything the restored copy could be behind by, in one transaction.

        The downlink limit goes up by `downlinks` (the gateway may have sealed that many
        downlinks per node since the backup: without this it would reuse their nonces); the
        uplink replay window's highest counter by `uplinks` (frames the nodes sent since the
        backup could otherwise be replayed once each; but a node's own frames are refused as
        replays until its counter passes the new mark). Rows kept for removed nodes move too.
        Returns (nodes moved, nodes whose downlink counters are used up: they need a new
        secret)."""
        exhausted: list[int] = []
        with self._lock, self._transaction() as cur:
            state: dict[int, bytes] = {
                int(node_id): bytes(fp)
                for node_id, fp in cur.execute("SELECT node_id, fingerprint FROM downlink")
            }
            for node_id, stored in cur.execute("SELECT node_id, secret FROM nodes").fetchall():
                secret = bytes(stored)  # the current keys win
                epoch = _current_epoch(cur, int(node_id), secret)
                state[int(node_id)] = _state_fingerprint(secret, epoch)
            for node_id, fp in state.items():
                row = cur.execute(
                    "SELECT fingerprint, counter_limit FROM downlink WHERE node_id = ?",
                    (node_id,),
                ).fetchone()
                limit = int(row[1]) if row is not None and bytes(row[0]) == fp else 0
                moved = limit + downlinks
                if moved > MAX_COUNTER + 1:
                    exhausted.append(node_id)
                    moved = MAX_COUNTER + 1  # nothing more to hand out: re-key the node
                cur.execute(
                    "INSERT INTO downlink (node_id, fingerprint, counter_limit) VALUES (?, ?, ?) "
                    "ON CONFLICT (node_id) DO UPDATE SET fingerprint = excluded.fingerprint, "
                    "counter_limit = excluded.counter_limit",
                    (node_id, fp, moved),
                )
                if not uplinks:
                    continue
                row = cur.execute(
                    "SELECT fingerprint, highest FROM replay WHERE node_id = ?", (node_id,)
                ).fetchone()
                highest = int(row[1]) if row is not None and bytes(row[0]) == fp else -1
                cur.execute(
                    "INSERT INTO replay (node_id, fingerprint, highest, bitmap) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (node_id) DO UPDATE SET "
                    "fingerprint = excluded.fingerprint, highest = excluded.highest, "
                    "bitmap = excluded.bitmap",
                    (node_id, fp, min(highest + uplinks, MAX_COUNTER), _bitmap_blob(0)),
                )
            self._downlink.clear()  # reserved from the moved limits on next use
            self._entries.clear()  # replay windows read again
        return len(state), sorted(exhausted)

    # -- the JSON exchange format -------------------------------------------------------------

    def import_file(self, path: Path, *, replace: bool = False, check_replaced: bool = True) -> int:
        """Add the nodes of a JSON registry file; returns how many were added or changed.

        Format: {"format": "edgeveil-registry", "version": 1, "nodes": [{"node_id": int,
        "secret": "<hex>", "zone": "...", "replaces": int (optional)}, ...]}; other keys are
        ignored. The whole file is validated first (RegistryError naming the key, e.g.
        "nodes[3].secret: ...") and stored in one transaction. A node registered with the same
        secret and zone is left as it is; a different secret or zone needs replace=True. A
        node that "replaces" another needs that one registered here (unless check_replaced is
        False: a provisioning export appended to through a scratch registry).
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise RegistryError(f"cannot read {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise RegistryError(f"{path}: not UTF-8 text") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:  # names the position, not the content
            raise RegistryError(
                f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
            ) from None
        try:
            nodes = _parse_document(data)
        except RegistryError as exc:
            raise RegistryError(f"{path}: {exc}") from None
        changed = 0
        with self._transaction() as cur:
            for index, (node_id, secret, zone, replaces) in enumerate(nodes):
                if replaces is not None:
                    if check_replaced and not _exists(cur, replaces):
                        raise RegistryError(
                            f"{path}: nodes[{index}].replaces: node {replaces} is not registered "
                            "here (import the file at the gateway that serves that node)"
                        )
                    if not _revoked(cur, replaces):
                        _store_successor(cur, replaces, node_id)
                row = cur.execute(
                    "SELECT secret, zone FROM nodes WHERE node_id = ?", (node_id,)
                ).fetchone()
                if row is not None and bytes(row[0]) == secret and row[1] == zone:
                    continue
                if row is not None and not replace:
                    what = "secret" if bytes(row[0]) != secret else "zone"
                    raise RegistryError(
                        f"{path}: nodes[{index}]: node {node_id} is registered already with "
                        f"another {what} (import with replace to change it)"
                    )
                self._store(cur, node_id, secret, zone, time.time())
                changed += 1
        for node_id, _, _, _ in nodes:
            self._forget(node_id)
        log.info("registry: imported %s: %d nodes added or changed", path, changed)
        return changed

    def export_file(self, path: Path, node_ids: Iterable[int] | None = None) -> int:
        """Write nodes (all, or those given) in the JSON format, mode 0600; returns how many.

        The file holds secrets: it is written to a temporary file of mode 0600 next to `path`
        and renamed over it, so no moment exists where a wider mode or half a file is visible.
        """
        path = Path(path)
        with self._lock:
            rows = self._conn.execute(
                "SELECT n.node_id, n.secret, n.zone, s.old_node_id FROM nodes n "
                "LEFT JOIN successor s ON s.new_node_id = n.node_id ORDER BY n.node_id"
            ).fetchall()
        if node_ids is not None:
            wanted = set(node_ids)
            unknown = sorted(wanted - {int(r[0]) for r in rows})
            if unknown:
                raise RegistryError(f"export: node {unknown[0]} is not registered")
            rows = [r for r in rows if r[0] in wanted]
        document: dict[str, Any] = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "nodes": [
                {"node_id": int(n), "secret": bytes(s).hex(), "zone": str(z)}
                | ({} if old is None else {"replaces": int(old)})
                for n, s, z, old in rows
            ],
        }
        data = (json.dumps(document, indent=2) + "\n").encode("utf-8")
        _write_private(path, data)
        log.info("registry: exported %d nodes to %s", len(rows), path)
        return len(rows)


# -- validation -------------------------------------------------------------------------------


def _check_node_id(value: object, key: str) -> int:
    if type(value) is not int or not 0 <= value <= MAX_NODE_ID:
        shown = repr(value) if isinstance(value, int | float) else type(value).__name__
        raise RegistryError(f"{key}: must be a whole number 0..{MAX_NODE_ID}, got {shown}")
    return value


def _check_secret(value: object, key: str) -> bytes:
    if not isinstance(value, bytes | bytearray) or not MIN_SECRET <= len(value) <= MAX_SECRET:
        raise RegistryError(f"{key}: must be {MIN_SECRET}..{MAX_SECRET} bytes")
    return bytes(value)


def _check_zone(value: object, key: str) -> str:
    if not isinstance(value, str) or len(value.encode("utf-8")) > MAX_ZONE_BYTES:
        raise RegistryError(f"{key}: must be text of at most {MAX_ZONE_BYTES} bytes")
    return value


def _parse_secret_hex(value: object, key: str) -> bytes:
    # The messages never quote the value: it may be (most of) a secret.
    lo, hi = 2 * MIN_SECRET, 2 * MAX_SECRET
    if not isinstance(value, str):
        raise RegistryError(f"{key}: must be text of {lo}..{hi} hex digits")
    if not _HEX.fullmatch(value):
        raise RegistryError(f"{key}: must contain only hex digits 0-9 a-f")
    if not lo <= len(value) <= hi or len(value) % 2:
        raise RegistryError(f"{key}: must be {lo}..{hi} hex digits, an even number")
    return bytes.fromhex(value)


def _parse_document(data: Any) -> list[tuple[int, bytes, str, int | None]]:
    if not isinstance(data, dict):
        raise RegistryError("must be a JSON object with format, version and nodes")
    if data.get("format") != FORMAT:
        raise RegistryError(f'format: must be "{FORMAT}"')
    version = data.get("version")
    if version != FORMAT_VERSION or type(version) is not int:
        raise RegistryError(
            f"version: must be {FORMAT_VERSION}, got {version!r} (a newer edgeveil wrote it?)"
        )
    items = data.get("nodes")
    if not isinstance(items, list):
        raise RegistryError("nodes: must be a list")
    nodes: list[tuple[int, bytes, str, int | None]] = []
    seen: dict[int, int] = {}
    for i, item in enumerate(items):
        where = f"nodes[{i}]"
        if not isinstance(item, dict):
            raise RegistryError(f"{where}: must be an object with node_id and secret")
        if "node_id" not in item:
            raise RegistryError(f"{where}.node_id: missing")
        node_id = _check_node_id(item["node_id"], f"{where}.node_id")
        if node_id in seen:
            raise RegistryError(
                f"{where}.node_id: {node_id} appears twice (also nodes[{seen[node_id]}])"
            )
        seen[node_id] = i
        if "secret" not in item:
            raise RegistryError(f"{where}.secret: missing")
        secret = _parse_secret_hex(item["secret"], f"{where}.secret")
        zone = _check_zone(item.get("zone", ""), f"{where}.zone")
        replaces = item.get("replaces")
        if replaces is not None:
            replaces = _check_node_id(replaces, f"{where}.replaces")
            if replaces == node_id:
                raise RegistryError(f"{where}.replaces: a node cannot replace itself")
        nodes.append((node_id, secret, zone, replaces))
    return nodes


def _revoked(cur: sqlite3.Cursor, node_id: int) -> bool:
    """Whether the node's current secret is revoked."""
    row = cur.execute(
        "SELECT n.secret, r.fingerprint FROM nodes n JOIN revoked r ON r.node_id = n.node_id "
        "WHERE n.node_id = ?",
        (node_id,),
    ).fetchone()
    return row is not None and bytes(row[1]) == _fingerprint(bytes(row[0]))


def _revoke(cur: sqlite3.Cursor, node_id: int) -> bool:
    """Revoke a registered node's current secret; False if it was revoked already."""
    if _revoked(cur, node_id):
        return False
    row = cur.execute("SELECT secret FROM nodes WHERE node_id = ?", (node_id,)).fetchone()
    cur.execute(
        "INSERT INTO revoked (node_id, fingerprint, at) VALUES (?, ?, ?) "
        "ON CONFLICT (node_id) DO UPDATE SET fingerprint = excluded.fingerprint, "
        "at = excluded.at",
        (node_id, _fingerprint(bytes(row[0])), time.time()),
    )
    return True


def _store_successor(cur: sqlite3.Cursor, old: int, new: int) -> None:
    """Record that `new` replaces `old` (one replacement per board, the latest wins)."""
    cur.execute("DELETE FROM successor WHERE old_node_id = ? OR new_node_id = ?", (old, new))
    cur.execute("INSERT INTO successor (old_node_id, new_node_id) VALUES (?, ?)", (old, new))


# -- files --------------------------------------------------------------------------------------


def _check_private(path: Path) -> None:
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            st = os.stat(p)
        except FileNotFoundError:
            if p == path:
                raise RegistryError(f"the registry {path} vanished while opening it") from None
            continue
        except OSError as exc:
            raise RegistryError(f"cannot use the registry {p}: {exc.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise RegistryError(f"the registry {p} is not a regular file")
        if st.st_mode & 0o077:
            raise RegistryError(
                f"the registry {p} holds node secrets but other users may access it "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {p}"
            )


def _exists(cur: sqlite3.Cursor, node_id: int) -> bool:
    return cur.execute("SELECT 1 FROM nodes WHERE node_id = ?", (node_id,)).fetchone() is not None


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise RegistryError(f"cannot write {path}: {exc.strerror}") from None
    try:
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise RegistryError(f"cannot write {path}: {exc.strerror}") from None
    with contextlib.suppress(OSError):  # make the rename durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
