"""Storage under pressure: a full disk never stops the gateway, its files stay bounded.

Real parts: the stores on a real full filesystem (a small tmpfs, mounted here: CI runs as
root; elsewhere these tests skip, saying so), a real Mosquitto, a real pseudo-terminal and the
gateway service in this process. The end-to-end test fills the disk while a node sends and the
broker is away, restarts the gateway on the full disk, brings the broker back, then frees the
space: the gateway keeps running throughout, acknowledges nothing it did not store, says why
(log, metrics, availability "degraded"), and afterwards every reading the node sent arrives
exactly once (and what it had acknowledged reached the broker exactly once).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import random
import sqlite3
import subprocess
import types
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

import gateway.sqlite
from gateway import commands
from gateway.config import SerialPortConfig
from gateway.errors import StorageError
from gateway.privacy import PrivacyLedger
from gateway.records import OutMessage
from gateway.registry import NodeRegistry
from gateway.service import Gateway
from gateway.spool import Spool
from gateway.sqlite import (
    CACHE_KIB,
    PAGE_SIZE,
    WAL_AUTOCHECKPOINT_PAGES,
    StorageHealth,
    connect,
    make_reserve,
    release_reserve,
    state_dir_bound,
)
from gateway.uplink import DEGRADED, ONLINE
from protocol import Readings, seal

from .gateway_harness import deadline, delivery_config, parse_mid, running_gateway
from .mosquitto import Mosquitto, subscribed
from .ptys import Pty
from .test_counter_reuse import KEYS as COUNTER_KEYS
from .test_counter_reuse import Gateway as CounterGateway
from .test_gateway_e2e import (
    BASE,
    GATEWAY_ID,
    NODE_DATA,
    SITE,
    ScriptedNode,
    check_one_id_per_reading,
    metric,
    reading_of,
    scripted_nodes,
)
from .waiting import until

pytestmark = pytest.mark.slow  # end to end: scripts/test -m "not slow" skips it

DAY = 24 * 3600
DISK_BYTES = 4 * 1024 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs, unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    why = "mounting a tmpfs needs root (CI runs as root)" if os.geteuid() != 0 else ""
    if not why:
        mount_command = ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES},mode=0700"]
        result = subprocess.run(  # the system's mount, as an operator would
            [*mount_command, "tmpfs", str(mount)],
            capture_output=True,
            text=True,
            check=False,
        )
        why = result.returncode and f"cannot mount a tmpfs: {result.stderr.strip()}"
    if why:
        if os.environ.get("CI"):
            pytest.fail(why)  # CI must run them
        pytest.skip(why)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)  # noqa: S607


def fill(disk: Path) -> Path:
    """Fill the filesystem to its last block with a file; returns it (unlink it to free)."""
    ballast = disk / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 16, 1 << 12, 1 << 9):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, bytes(size))
    finally:
        os.close(fd)
    with pytest.raises(OSError) as full:
        (disk / "probe").write_bytes(bytes(4096))
    assert full.value.errno == errno.ENOSPC
    return ballast


async def keep_full(disk: Path) -> None:
    """Fill the disk again whenever it has room (SQLite gives pages back when it truncates a
    WAL): a disk that stays full, like one a runaway log fills, until cancelled."""
    while True:
        with contextlib.suppress(OSError), open(disk / "ballast", "ab") as ballast:
            for size in (1 << 16, 1 << 12, 1 << 9):
                with contextlib.suppress(OSError):
                    while True:
                        ballast.write(bytes(size))
                        ballast.flush()
        await asyncio.sleep(0.05)


def msg(i: int, size: int = 200) -> OutMessage:
    return OutMessage(f"gw:{i}", "edgeveil/s/gw/node/1/readings", bytes(size), False)


# -- the stores ------------------------------------------------------------------------------


def test_a_full_disk_refuses_writes_as_storage_errors_and_takes_them_again(
    small_disk: Path,
) -> None:
    """Every store raises StorageError("disk_full") with nothing of the write done, the shared
    health says so, and the same stores write again once there is room."""
    health = StorageHealth()
    with (
        Spool.open(small_disk / "spool.db", 10_000, DAY, "drop_oldest", health=health) as spool,
        NodeRegistry.open(small_disk / "registry.db", health) as registry,
        PrivacyLedger.open(small_disk / "privacy.db", health=health) as ledger,
    ):
        registry.add(7, bytes(range(16)))
        ballast = fill(small_disk)
        stored = []
        with pytest.raises(StorageError) as refused:
            for i in range(10_000):  # the WAL's free pages take a few first
                spool.put([msg(i, 2000) for i in range(i * 8, i * 8 + 8)])
                stored.extend(range(i * 8, i * 8 + 8))
        assert refused.value.reason == "disk_full"
        assert refused.value.store == "spool"
        assert "free space" in str(refused.value)
        assert [m.msg_id for _, m in spool.peek(20_000)] == [f"gw:{i}" for i in stored]
        assert health.degraded == "spool: disk_full"
        booked = 0
        with pytest.raises(StorageError):
            for _ in range(10_000):
                assert ledger.try_spend("people", "zone", "2026-12-07", 0.001, 1e9)
                booked += 1
        assert ledger.spent("people", "zone", "2026-12-07") == pytest.approx(booked * 0.001)
        assert "privacy ledger: disk_full" in (health.degraded or "")

        ballast.unlink()
        spool.put([msg(-1)])
        ledger.try_spend("people", "zone", "2026-12-07", 0.001, 1e9)
        assert health.degraded is None
        assert health.failures[("spool", "disk_full")] == 1
        registry.accept(7, 0, b"")  # the registry too


def test_the_stores_open_on_a_full_disk_with_the_reserve_given_back(small_disk: Path) -> None:
    """Opening writes nothing but the shared-memory index (-shm) when the files have their
    schema; the reserve makes room for it. A gateway restarted on a full disk so starts,
    degraded, instead of failing in a restart loop."""
    with (
        Spool.open(small_disk / "spool.db", 100, DAY, "drop_oldest") as spool,
        NodeRegistry.open(small_disk / "registry.db") as registry,
        PrivacyLedger.open(small_disk / "privacy.db"),
    ):
        spool.put([msg(1)])
        registry.add(7, bytes(range(16)))
    assert make_reserve(small_disk)
    fill(small_disk)
    with pytest.raises(StorageError) as full:  # its -shm finds no room
        Spool.open(small_disk / "spool.db", 100, DAY, "drop_oldest")
    assert full.value.reason == "disk_full"  # not "not an edgeveil database"
    assert release_reserve(small_disk)
    with (
        Spool.open(small_disk / "spool.db", 100, DAY, "drop_oldest") as spool,
        NodeRegistry.open(small_disk / "registry.db") as registry,
        PrivacyLedger.open(small_disk / "privacy.db"),
    ):
        assert spool.depth == 1
        assert 7 in registry
    fill(small_disk)
    assert not make_reserve(small_disk)  # full: no reserve, and no partial file left
    assert sorted(p.name for p in small_disk.iterdir() if "reserve" in p.name) == []


def test_a_schema_that_grew_is_still_created(tmp_path: Path) -> None:
    """connect() skips its write only when nothing of the schema is missing: a table added
    by a newer edgeveil under the same version is created."""
    one = ("CREATE TABLE IF NOT EXISTS a (x)",)
    connect(tmp_path / "db", what="test", schema=one, version=1, error_type=ValueError).close()
    two = (*one, "CREATE TABLE IF NOT EXISTS b (y)")
    conn = connect(tmp_path / "db", what="test", schema=two, version=1, error_type=ValueError)
    with contextlib.closing(conn):
        assert {r[0] for r in conn.execute("SELECT name FROM sqlite_master")} == {"a", "b"}


def test_failing_writes_are_logged_first_then_once_a_minute_per_store(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failing disk fails every write, tens a second: each store's first failure is logged
    at once, then one line a minute with how many failed meanwhile; once the store writes
    again, its next failure is logged at once."""
    clock = [1000.0]
    monkeypatch.setattr(gateway.sqlite, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    health = StorageHealth()

    def lines() -> list[str]:
        return [
            r.getMessage() for r in caplog.records if "keeps running degraded" in r.getMessage()
        ]

    with caplog.at_level(logging.ERROR, logger="edgeveil.storage"):
        for _ in range(30):  # a failed write a second
            health.failed(StorageError("spool", "io_error", "the spool cannot be written"))
            clock[0] += 1.0
        health.failed(StorageError("registry", "io_error", "the registry cannot be written"))
        assert len(lines()) == 2  # the spool's first, the registry's first
        clock[0] = 1060.0
        health.failed(StorageError("spool", "io_error", "the spool cannot be written"))
        assert len(lines()) == 3
        assert "(29 more failed writes since the last report)" in lines()[2]
        health.succeeded("spool")
        assert health.degraded == "registry: io_error"
        clock[0] += 1.0
        health.failed(StorageError("spool", "io_error", "the spool cannot be written"))
        assert len(lines()) == 4  # failing anew: at once, with nothing held from before
        assert "more failed writes" not in lines()[3]


def test_each_connection_keeps_a_small_page_cache(tmp_path: Path) -> None:
    """SQLite's default cache (2,000 KiB a connection) stays full once a database outgrew it:
    the spool after an outage kept about 3 MB more resident (docs/development/benchmarks.md)."""
    conn = connect(tmp_path / "db", what="test", schema=(), version=1, error_type=ValueError)
    with contextlib.closing(conn):
        assert conn.execute("PRAGMA cache_size").fetchone()[0] == -CACHE_KIB
    assert CACHE_KIB * 1024 <= 512 * 1024


def test_the_wal_files_stay_bounded(tmp_path: Path, rng: random.Random) -> None:
    """A steady stream of puts and deletes (the spool's life) and of accepted frames (the
    registry's) keeps each WAL within a checkpoint's worth of small pages."""
    with (
        Spool.open(tmp_path / "spool.db", 10_000, DAY, "drop_oldest") as spool,
        NodeRegistry.open(tmp_path / "registry.db") as registry,
    ):
        for node in range(1, 51):
            registry.add(node, rng.randbytes(16))
        largest = Counter[str]()
        for i in range(1500):
            spool.put([msg(i * 4 + k, 300) for k in range(4)])
            spool.delete([seq for seq, _ in spool.peek(4)])
            registry.accept_many([(1 + i % 50, i, rng.randbytes(8))])
            for name in ("spool.db-wal", "registry.db-wal"):
                size = (tmp_path / name).stat().st_size
                largest[name] = max(largest[name], size)
    # a checkpoint's worth of pages and one transaction: about 1 MB, where 4 KB pages (SQLite's
    # default) make the same 1,000-page checkpoint 4 MB
    assert max(largest.values()) <= (WAL_AUTOCHECKPOINT_PAGES + 64) * (PAGE_SIZE + 24), largest
    assert largest["spool.db-wal"] > 0


def test_the_bound_counts_the_spool_the_nodes_and_the_wal_files() -> None:
    small, large = state_dir_bound(1000, 10), state_dir_bound(1_000_000, 1000)
    assert small < 10 * 1024 * 1024 < large
    assert state_dir_bound(1000, 11) - state_dir_bound(1000, 10) > 16 * 1024  # per node


def test_check_config_warns_when_the_state_directory_cannot_reach_its_bound(
    small_disk: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[gateway]\nsite = "s"\nid = "g"\nstate_dir = "{small_disk / "state"}"\n'
        "[spool]\nmax_messages = 100000\n",
        encoding="utf-8",
    )
    assert commands.check_config(config) == 0
    out = capsys.readouterr().out
    bound = round(state_dir_bound(100_000, 1) / 2**20)  # 100,000 messages of 600 B, and more
    assert bound == 65
    assert f"storage: the state directory can reach {bound} MB" in out
    assert f"WARNING: storage: {small_disk} has room for 4 MB, less than the {bound} MB" in out
    config.write_text(config.read_text().replace(str(small_disk), str(tmp_path)), "utf-8")
    assert commands.check_config(config) == 0
    assert "WARNING" not in capsys.readouterr().out  # a disk with room


# -- the gateway, end to end -----------------------------------------------------------------


def degraded(gateway: Gateway) -> float:
    """Stores failing, by the gateway's metric (the first to fail may be either)."""
    return sum(
        metric(gateway, "edgeveil_storage_degraded", store=store) for store in ("spool", "registry")
    )


def spooled_counters(spool: Spool) -> set[int]:
    return {parse_mid(m.msg_id)[2] for _, m in spool.peek(100_000) if "/node/" in m.topic}


@pytest.mark.asyncio
@deadline(170)
async def test_a_full_disk_never_stops_the_gateway_and_loses_nothing(  # noqa: PLR0915 - one story
    tmp_path: Path, small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    node = ScriptedNode(0x4000)
    state = small_disk
    with NodeRegistry.open(state / "registry.db") as registry:
        registry.add(node.node_id, node.secret)
    pty = Pty()
    with Mosquitto(tmp_path / "mosquitto", persistence=True) as broker:
        serial = (SerialPortConfig(name="bench", url=pty.path),)
        config = delivery_config(tmp_path, state, broker, SITE, GATEWAY_ID, serial=serial)
        try:
            async with (
                subscribed(broker, NODE_DATA, session="e2e-disk-consumer") as sub,
                scripted_nodes(node),
            ):
                await broker.astop()
                # -- the disk fills while the node sends and the broker is away ----------------
                async with running_gateway(config) as gateway:
                    node.plug(pty)
                    node.start()
                    await until(lambda: len(node.acked) >= 30, "frames stored", 20, node)
                    ballast = await asyncio.to_thread(fill, state)
                    filler = asyncio.create_task(keep_full(state))
                    await until(
                        lambda: degraded(gateway) >= 1,
                        "the gateway degraded (housekeeping's metric)",
                        timeout=40,
                        detail=lambda: (gateway.health.degraded, node),
                    )
                    await until(
                        lambda: (
                            metric(
                                gateway,
                                "edgeveil_frames_total",
                                port="bench",
                                node="unregistered",
                                outcome="storage_unavailable",
                            )
                            > 3 * node.window
                        ),
                        "frames refused while the disk is full, again and again",
                        timeout=20,
                    )
                    acked_while_full = set(node.acked)
                    assert acked_while_full <= spooled_counters(gateway.spool)  # only stored
                    assert node.pending  # the node holds the rest
                    assert "disk_full" in (gateway.health.degraded or "")
                # -- it starts again on the full disk ------------------------------------------
                async with running_gateway(config) as gateway:
                    await until(
                        lambda: degraded(gateway) >= 1,
                        "degraded after the restart (housekeeping's metric and availability)",
                        timeout=20,
                    )
                    assert set(node.acked) == acked_while_full  # nothing new acknowledged
                    # -- the broker returns: what the spool holds goes out, once ---------------
                    await broker.astart()
                    await until(
                        lambda: acked_while_full <= {reading_of(r)[1] for r in sub.received},
                        "the spooled readings delivered while the disk is full",
                        timeout=30,
                        detail=lambda: (
                            gateway.uplink.last_error,
                            gateway.spool.depth,
                            len(sub.received),
                            sorted(acked_while_full - {reading_of(r)[1] for r in sub.received}),
                        ),
                    )
                    async with subscribed(broker, f"{BASE}/availability") as availability:
                        await availability.wait_for(bool)
                        assert availability.received[-1].payload == DEGRADED, (
                            gateway.health.degraded,
                            gateway.uplink._degraded,
                            [r.payload for r in availability.received],
                        )
                    # -- space returns: it resumes by itself ----------------------------------
                    filler.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await filler
                    ballast.unlink()
                    await until(lambda: gateway.health.degraded is None, "resumed", 20)
                    await until(
                        lambda: len(node.acked) > len(acked_while_full) + 2 * node.window,
                        "new frames acknowledged",
                        timeout=20,
                    )
                    node.producing = False
                    await until(lambda: not node.pending, "every frame acknowledged", 30, node)
                    sent = {(node.node_id, c) for c in range(node.next_counter)}
                    await until(
                        lambda: sent <= {reading_of(r) for r in sub.received},
                        "every reading at the subscriber",
                        timeout=30,
                    )
                    async with subscribed(broker, f"{BASE}/availability") as availability:
                        await availability.wait_for(bool)
                        await until(
                            lambda: availability.received[-1].payload == ONLINE, "online", 10
                        )
                    received = list(sub.received)
        finally:
            pty.close()
    assert {(node.node_id, c) for c in node.acked} == sent  # nothing the node sent was lost
    check_one_id_per_reading(received, sent)
    # what it had acknowledged reached the broker exactly once, though the disk refused to
    # delete it after the PUBACK (a frame stored but not acknowledged may come twice, once
    # by the restart: its counter was not recorded, so it came again)
    copies = Counter(reading_of(r)[1] for r in received)
    assert all(copies[c] == 1 for c in acked_while_full), copies
    errors = [r for r in caplog.records if r.name == "edgeveil.storage" and r.levelno >= 40]
    assert errors and all(r.exc_info is None for r in errors)  # said why, no traceback
    assert any("free space" in r.getMessage() for r in errors)
    assert len(errors) <= 12  # once per burst and store, not once per frame
    with sqlite3.connect(state / "spool.db") as db:  # the disk is free again: nothing left
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# -- ingest, with stores that refuse ---------------------------------------------------------


@pytest.mark.asyncio
async def test_ingest_acknowledges_only_what_the_spool_and_its_journal_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spool that refuses: no ack, the replay window unmoved. A registry that refuses to
    fold the journal: the frames were acknowledged (their counters are in the spool's journal),
    the journal keeps them, a restart takes them back (a replay of them is a duplicate), and
    the next fold writes them into the registry's file."""
    gateway = CounterGateway(tmp_path)
    try:
        frames = [seal(Readings({0: c}), c, COUNTER_KEYS) for c in range(3)]
        real_put = gateway.spool.put

        def full(*_args: object, **_kwargs: object) -> int:
            error = StorageError("spool", "disk_full", "the spool cannot be written")
            gateway.spool.health.failed(error)
            raise error

        monkeypatch.setattr(gateway.spool, "put", full)
        assert await gateway.feed(*frames) == []
        assert gateway.registry.get(gateway.node).window.highest == -1  # type: ignore[union-attr]
        monkeypatch.setattr(gateway.spool, "put", real_put)
        gateway.spool.health.succeeded("spool")
        assert sorted(await gateway.feed(*frames)) == [0, 1, 2]
        assert [row[2] for _seq, row in gateway.spool.journal()] == [0, 1, 2]

        def refuse() -> int:
            raise StorageError("registry", "disk_full", "the registry cannot be written")

        monkeypatch.setattr(gateway.registry, "fold", refuse)
        gateway.ingest.fold(force=True)
        assert len(gateway.spool.journal()) == 3  # kept
    finally:
        gateway.close()
    with sqlite3.connect(tmp_path / "registry.db") as db:
        assert db.execute("SELECT count(*) FROM replay").fetchone()[0] == 0  # not yet written

    gateway = CounterGateway(tmp_path)  # a restart
    try:
        assert gateway.registry.get(gateway.node).window.highest == 2  # type: ignore[union-attr]
        spooled = len(gateway.spool.peek(100))
        assert await gateway.feed(frames[1]) == [1]  # a retransmission, acknowledged again
        assert gateway.outcome("duplicate") == 1
        assert len(gateway.spool.peek(100)) == spooled  # nothing spooled twice
        gateway.ingest.fold(force=True)
        assert gateway.spool.journal() == []
        assert gateway.registry.digest(gateway.node, 2) is not None
    finally:
        gateway.close()
    with NodeRegistry.open(tmp_path / "registry.db") as registry:  # the file holds them now
        assert registry.get(7).window.highest == 2  # type: ignore[union-attr]
