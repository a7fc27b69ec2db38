"""The spool: order, duplicates, full-spool policies, expiry, and durability across restarts and
kill -9."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import spool as spool_module
from gateway.errors import SpoolFullError
from gateway.records import OutMessage
from gateway.spool import Spool

from .command import child_process

ROOT = Path(__file__).resolve().parent.parent
DAY = 24 * 3600


def msg(i: int, retain: bool = False) -> OutMessage:
    return OutMessage(
        f"gw:1:{i}:0", f"edgeveil/site/gw/node/1/readings/{i}", b"\x00p%d" % i, retain
    )


def ids(pairs: list[tuple[int, OutMessage]]) -> list[str]:
    return [m.msg_id for _, m in pairs]


def names(*numbers: int) -> list[str]:
    return [msg(i).msg_id for i in numbers]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "spool.sqlite"


@pytest.fixture
def spool(path: Path) -> Iterator[Spool]:
    with Spool.open(path, 1000, DAY, "drop_oldest") as s:
        yield s


def test_file_mode_and_wal(spool: Spool, path: Path) -> None:
    spool.put([msg(1)])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Path(f"{path}-wal").exists()


def test_order_and_delete(spool: Spool) -> None:
    assert len(spool.put([msg(3), msg(1)])) == 2
    assert len(spool.put([msg(2)])) == 1
    assert spool.depth == 3
    pairs = spool.peek(10)
    assert ids(pairs) == names(3, 1, 2)
    seqs = [seq for seq, _ in pairs]
    assert seqs == sorted(seqs)
    assert ids(spool.peek(2)) == names(3, 1)
    assert ids(spool.peek(10, after=seqs[0])) == names(1, 2)
    assert spool.peek(10, after=seqs[2]) == []
    spool.delete([seqs[1]])
    assert ids(spool.peek(10)) == names(3, 2)
    assert spool.depth == 2
    spool.delete([seqs[1], 999_999])  # gone already, unknown: ignored
    assert spool.depth == 2
    spool.delete([])
    spool.delete(seq for seq, _ in spool.peek(10))
    assert spool.depth == 0
    assert spool.peek(10) == []


def test_messages_come_back_as_they_went_in(spool: Spool) -> None:
    batch = [msg(1, retain=True), OutMessage("x", "t", bytes(range(256)) * 40), msg(2)]
    arrived = dataclasses.replace(msg(3), created=1_700_000_000.25)  # its frame's arrival
    seqs = spool.put([*batch, arrived], now=1_800_000_000.5)
    # as they went in, with when they were stored, or arrived where that was given
    stored = [dataclasses.replace(m, created=1_800_000_000.5) for m in batch] + [arrived]
    assert [m for _, m in spool.peek(10)] == stored
    assert [seq for seq, _ in spool.peek(10)] == list(seqs)


def test_drop_oldest(path: Path) -> None:
    with Spool.open(path, 5, DAY, "drop_oldest") as spool:
        assert len(spool.put([msg(i) for i in range(3)])) == 3
        assert len(spool.put([msg(i) for i in range(3, 7)])) == 4
        assert ids(spool.peek(10)) == names(2, 3, 4, 5, 6)
        assert (spool.depth, spool.dropped_full) == (5, 2)
        # a batch larger than the spool keeps its newest part
        assert len(spool.put([msg(i) for i in range(10, 17)])) == 7
        assert ids(spool.peek(10)) == names(12, 13, 14, 15, 16)
        assert (spool.depth, spool.dropped_full) == (5, 9)
        assert spool.refused == 0


@pytest.mark.parametrize("when_full", ["drop_oldest", "refuse_new"])
def test_a_full_spool_makes_room_from_published_messages_first(path: Path, when_full: str) -> None:
    """Messages the broker acknowledged wait for the uplink's grouped delete: when the spool
    is full, they make room before any message still to be published is dropped or refused
    (and a drop counts only messages that were never published)."""
    with Spool.open(path, 5, DAY, when_full) as spool:
        seqs = list(spool.put([msg(i) for i in range(5)]))
        spool.published(seqs[3:])  # 3 and 4 acknowledged (the live path can do that first)
        assert len(spool.put([msg(5), msg(6)])) == 2  # room enough: nothing dropped or refused
        assert ids(spool.peek(10)) == names(0, 1, 2, 5, 6)
        assert (spool.dropped_full, spool.refused) == (0, 0)
        assert (spool.held, spool.depth) == (5, 5)
        spool.delete(seqs[3:])  # the uplink's grouped delete comes later: nothing left to do
        assert (spool.held, spool.depth) == (5, 5)
        if when_full == "drop_oldest":
            spool.put([msg(7)])
            assert ids(spool.peek(10)) == names(1, 2, 5, 6, 7)
            assert spool.dropped_full == 1


def test_a_full_spool_logs_its_drops_once_a_minute_not_at_every_put(
    path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At a busy gateway a full spool drops at every group commit, tens a second: the log
    gets the first drop at once, then one line a minute with what was dropped meanwhile."""
    clock = [1000.0]
    fake_time = types.SimpleNamespace(monotonic=lambda: clock[0], time=time.time)
    monkeypatch.setattr(spool_module, "time", fake_time)  # the spool's clock only

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if "spool full" in r.getMessage()]

    with Spool.open(path, 5, DAY, "drop_oldest") as spool, caplog.at_level(logging.WARNING):
        spool.put([msg(i) for i in range(5)])  # full, nothing dropped
        assert lines() == []
        for i in range(30):  # a put of 2 every second: each drops 2
            spool.put([msg(100 + 2 * i), msg(101 + 2 * i)])
            clock[0] += 1.0
        assert len(lines()) == 1
        assert "2 of the oldest messages dropped, never to be published" in lines()[0]
        clock[0] = 1060.0  # a minute after that line
        spool.put([msg(200)])
        assert len(lines()) == 2
        assert "59 of the oldest messages dropped in the last 60 s" in lines()[1]
        clock[0] += 1.0
        spool.put([msg(201)])
        assert len(lines()) == 2  # the next within a minute: counted, not logged
        assert spool.dropped_full == 62


def test_refuse_new(path: Path) -> None:
    with Spool.open(path, 5, DAY, "refuse_new") as spool:
        assert len(spool.put([msg(i) for i in range(3)])) == 3
        with pytest.raises(SpoolFullError, match="spool full"):
            spool.put([msg(3), msg(4), msg(5)])  # 3 new, room for 2: none is stored
        assert ids(spool.peek(10)) == names(0, 1, 2)
        assert (spool.depth, spool.refused) == (3, 3)
        assert len(spool.put([msg(3), msg(4)])) == 2
        with pytest.raises(SpoolFullError):
            spool.put([msg(9)])
        assert (spool.depth, spool.refused, spool.dropped_full) == (5, 4, 0)
        spool.delete([seq for seq, _ in spool.peek(1)])
        assert len(spool.put([msg(9)])) == 1
    with Spool.open(path, 5, DAY, "refuse_new") as spool:
        assert ids(spool.peek(10)) == names(1, 2, 3, 4, 9)


def test_expire_and_oldest_age(spool: Spool) -> None:
    assert spool.oldest_age(1000.0) is None
    spool.put([msg(1), msg(2)], now=1000.0)
    spool.put([msg(3)], now=2000.0)
    assert spool.oldest_age(1500.0) == 500.0
    assert spool.oldest_age(900.0) == 0.0  # the clock went back: never negative
    assert spool.expire(now=1000.0 + DAY) == 0
    assert spool.expire(now=1000.5 + DAY) == 2
    assert ids(spool.peek(10)) == names(3)
    assert (spool.depth, spool.dropped_age) == (1, 2)
    assert spool.oldest_age(2000.0 + DAY) == DAY


def test_expiry_counts_only_messages_never_published(spool: Spool) -> None:
    """Acknowledged messages that wait for the uplink's grouped delete were delivered: an
    expiry deletes them too, but `dropped_age` (the metric of lost messages) counts only the
    ones never published."""
    spool.put([msg(1), msg(2), msg(3)], now=1000.0)
    spool.put([msg(4)], now=2000.0)
    seqs = [seq for seq, _ in spool.peek(4)]
    spool.published(seqs[:2])
    assert spool.expire(now=1000.5 + DAY) == 1
    assert (spool.dropped_age, spool.depth, spool.held) == (1, 1, 1)
    assert ids(spool.peek(10)) == names(4)
    spool.delete(seqs[:2])  # the uplink's grouped delete comes later: nothing left to do
    assert (spool.depth, spool.held) == (1, 1)


def test_persists_across_reopen(path: Path) -> None:
    with Spool.open(path, 1000, DAY, "drop_oldest") as spool:
        spool.put([msg(i) for i in range(5)])
        spool.delete([seq for seq, _ in spool.peek(2)])
        before = spool.peek(10)
    with Spool.open(path, 1000, DAY, "drop_oldest") as spool:
        assert spool.peek(10) == before
        assert spool.depth == 3
        spool.delete([seq for seq, _ in spool.peek(10)])
    with Spool.open(path, 1000, DAY, "drop_oldest") as spool:
        spool.put([msg(100)])
        spool.put([msg(1)])  # delivered and deleted earlier: a new message now
        assert ids(spool.peek(10)) == names(100, 1)  # seq order is put order
        assert spool.depth == 2


def test_threads(spool: Spool) -> None:
    def worker(base: int) -> None:
        for i in range(20):
            spool.put([msg(base + 2 * i), msg(base + 2 * i + 1)])

    threads = [threading.Thread(target=worker, args=(k * 1000,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pairs = spool.peek(1000)
    assert spool.depth == len(pairs) == 160
    # each thread's messages in its own order, each batch adjacent
    for k in range(4):
        mine = [int(m.msg_id.split(":")[2]) for _, m in pairs]
        mine = [i for i in mine if k * 1000 <= i < (k + 1) * 1000]
        assert mine == sorted(mine)
    positions = {m.msg_id: n for n, (_, m) in enumerate(pairs)}
    for k in range(4):
        for i in range(20):
            a, b = msg(k * 1000 + 2 * i).msg_id, msg(k * 1000 + 2 * i + 1).msg_id
            assert positions[b] == positions[a] + 1


def test_bad_policy(path: Path) -> None:
    with pytest.raises(ValueError, match="when_full"):
        Spool.open(path, 10, DAY, "drop_newest")


# -- kill -9 ------------------------------------------------------------------------------------

_WRITER = """
import sys
from pathlib import Path
from gateway.records import OutMessage
from gateway.spool import Spool
spool = Spool.open(Path(sys.argv[1]), 10**6, 10**6, "drop_oldest")
B = int(sys.argv[2])
print("ready", flush=True)
i = 0
while True:
    spool.put([OutMessage(f"m{i * B + k}", "t", b"x" * 60) for k in range(B)])
    print(i, flush=True)
    i += 1
"""


def test_every_returned_put_survives_kill_9(tmp_path: Path, rng: random.Random) -> None:
    """A writer killed with SIGKILL at random moments loses nothing whose put() returned, and
    keeps each batch whole: what is stored is exactly batches 0..n-1."""
    batch = 7
    runs = 10
    paths = [tmp_path / f"spool{run}.sqlite" for run in range(runs)]
    with contextlib.ExitStack() as children:
        procs = [  # started together: the interpreters start up in parallel
            children.enter_context(
                child_process(
                    [sys.executable, "-c", _WRITER, str(path), str(batch)],
                    cwd=ROOT,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
            for path in paths
        ]
        for path, proc in zip(paths, procs, strict=True):
            assert proc.stdout is not None
            assert proc.stdout.readline() == "ready\n"
            # its first put returned: each writer has work to lose, however busy the machine
            assert proc.stdout.readline() == "0\n"
            time.sleep(rng.uniform(0.0, 0.15))  # the power goes at a random moment
            os.kill(proc.pid, signal.SIGKILL)
            out = proc.communicate(timeout=10)[0]
            assert proc.returncode == -signal.SIGKILL
            lines = out.split("\n")[:-1]  # only whole lines: the last may have been cut
            returned = int(lines[-1]) if lines else 0  # the highest batch whose put() returned
            with Spool.open(path, 10**6, 10**6, "drop_oldest") as spool:
                stored = ids(spool.peek(10**6))
                assert spool.depth == len(stored)
            assert len(stored) % batch == 0, "a batch was stored in part"
            n = len(stored) // batch
            assert n in (returned + 1, returned + 2)  # the batch in flight may have committed
            assert stored == [f"m{i}" for i in range(n * batch)]


def test_the_journal_is_written_with_the_messages_and_forgotten_on_request(path: Path) -> None:
    """The accepted-counter journal: in the put's transaction (also without messages), not
    counted as messages, kept across a reopen until forget_journal()."""
    with Spool.open(path, 5, DAY, "refuse_new") as spool:
        spool.put([msg(0)], accepted=[(7, 0, 10, b"d" * 8), (7, 0, 11, b"e" * 8)])
        spool.put([], accepted=[(8, 1, 3, b"")])
        assert spool.depth == 1
        upto = spool.journal_end()
    with Spool.open(path, 5, DAY, "refuse_new") as spool:
        assert [row for _seq, row in spool.journal()] == [
            (7, 0, 10, b"d" * 8),
            (7, 0, 11, b"e" * 8),
            (8, 1, 3, b""),
        ]
        spool.put([], accepted=[(7, 0, 12, b"f" * 8)])
        spool.forget_journal(upto)
        assert [row for _seq, row in spool.journal()] == [(7, 0, 12, b"f" * 8)]
        with pytest.raises(SpoolFullError):  # refused as a whole: its counters too
            spool.put([msg(i) for i in range(1, 6)], accepted=[(7, 0, 13, b"g" * 8)])
        assert len(spool.journal()) == 1


def test_a_spool_of_schema_1_gets_the_journal_and_version_2(path: Path) -> None:
    """Version 2, so that an edgeveil without the journal refuses the file rather than forget
    the counters it holds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as conn:  # what edgeveil wrote before the journal
        conn.execute(
            "CREATE TABLE spool (seq INTEGER PRIMARY KEY AUTOINCREMENT, msg_id TEXT NOT NULL "
            "UNIQUE, topic TEXT NOT NULL, payload BLOB NOT NULL, retain INTEGER NOT NULL, "
            "created REAL NOT NULL)"
        )
        conn.execute("INSERT INTO spool VALUES (1, 'gw:1', 't', x'00', 0, 0)")
        conn.execute("PRAGMA user_version=1")
    with Spool.open(path, 5, DAY, "drop_oldest") as spool:
        assert spool.depth == 1
        spool.put([], accepted=[(7, 0, 1, b"")])
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
        assert conn.execute("SELECT seq, msg_id FROM spool").fetchall() == [(1, "gw:1")]
        indexes = conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall()
        assert indexes == [("spool_created",)]  # no msg_id index: a random page per message


def test_published_messages_no_longer_count_as_waiting(path: Path) -> None:
    """The uplink deletes in groups: what the broker acknowledged is not waiting any more,
    though it is still in the file until its deletion (or an expiry) removes it."""
    with Spool.open(path, 100, DAY, "drop_oldest") as spool:
        spool.put([msg(i) for i in range(4)])
        seqs = [seq for seq, _ in spool.peek(4)]
        spool.published(seqs[:3])
        assert (spool.depth, spool.held) == (1, 4)
        spool.delete(seqs[:2])
        assert (spool.depth, spool.held) == (1, 2)
        spool.expire(now=time.time() + 2 * DAY)  # removes the published one left, too
        assert spool.depth == 0
        spool.put([msg(9)])
        assert spool.depth == 1
