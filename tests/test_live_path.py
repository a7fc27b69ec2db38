"""The uplink's live path (Uplink.offer and settle, used by ingest): messages published before
they are stored, against a real Mosquitto and the real spool. What ingest does with them is
played here by `store()`: every offered message the broker has not acknowledged by then is
spooled, and the uplink learns each one's sequence number.

The invariants: nothing offered is lost, whatever the broker does; a message the broker
acknowledged before it was stored never enters the spool; one stored while in flight leaves
the spool after its PUBACK and is not published again; and a topic's messages arrive in order
across the switch between the live path and the spool.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway import uplink as uplink_module
from gateway.records import OutMessage
from gateway.uplink import FAILED, HELD, QUEUED, Offered, Uplink

from .mosquitto import Mosquitto
from .test_uplink import (
    DATA,
    TOPICS,
    RecordingSpool,
    by_topic,
    by_topic_data,
    first_copies,
    messages,
    open_spool,
    subscribed,
    uplink_for,
)
from .waiting import until


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "mosquitto") as b:
        yield b


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[RecordingSpool]:
    with open_spool(tmp_path) as s:
        yield s


def store(up: Uplink, into: RecordingSpool, offered: list[Offered]) -> list[int]:
    """What ingest does at its group commit: spool what the broker has not acknowledged,
    then settle. Returns the sequence numbers given."""
    keep = [o for o in offered if not o.acked]
    seqs = list(into.put([o.message for o in keep]))
    up.settle(zip(keep, seqs, strict=True))
    return seqs


@pytest.mark.asyncio
async def test_acknowledged_before_the_commit_never_enters_the_spool(
    broker: Mosquitto, spool: RecordingSpool
) -> None:
    latencies: list[float | None] = []
    async with (
        subscribed(broker, DATA) as sub,
        uplink_for(broker, spool, on_published=latencies.extend) as up,
    ):
        await until(lambda: up.connected, "connected")
        await until(lambda: up.offer([]) == [] and up._live_ready, "live path ready")
        sent = messages(0, 40)
        offered = up.offer(sent)
        assert all(o.state != HELD for o in offered)  # published now, not held
        await sub.wait_for(lambda got: len(by_topic_data(got)) >= 40)
        await until(lambda: all(o.acked for o in offered), "all acknowledged")
        assert store(up, spool, offered) == []  # nothing to spool: the broker holds them
        assert spool.held == 0
        assert by_topic(sub.received) == by_topic(sent)
        assert len(latencies) == 40 and all(s is not None for s in latencies)


@pytest.mark.asyncio
async def test_stored_while_in_flight_leaves_the_spool_after_its_puback_and_only_once(
    broker: Mosquitto, spool: RecordingSpool
) -> None:
    async with subscribed(broker, DATA) as sub, uplink_for(broker, spool) as up:
        await until(lambda: up._live_ready, "live path ready")
        broker.pause()  # takes the bytes, sends no PUBACK
        sent = messages(0, 30)
        offered = up.offer(sent)
        seqs = store(up, spool, offered)
        assert len(seqs) == 30 and spool.held == 30  # in flight: spooled
        up.notify()  # the spool drain runs, and must leave these to their PUBACKs
        broker.resume()
        await until(lambda: spool.held == 0, "deleted after their PUBACKs")
        await sub.wait_for(lambda got: len(first_copies(by_topic_data(got))) >= 30)
        # all, in order; the broker may deliver a message twice after SIGSTOP (QoS 1), but
        # the gateway published each once: 30 PUBACKs, not one more
        assert by_topic(first_copies(by_topic_data(sub.received))) == by_topic(sent)
        assert sorted(s for batch in spool.deletes for s in batch) == seqs
        assert up.published == 30


@pytest.mark.asyncio
async def test_nothing_is_lost_and_order_holds_across_a_broker_outage(
    broker: Mosquitto, spool: RecordingSpool
) -> None:
    """Offers while the broker is away are held for the spool; offers after it is back wait
    (held for the spool, or queued for the live path) until everything held before them is
    published, so no message overtakes an older one of its topic."""
    async with (
        subscribed(broker, DATA, session="live-path-consumer") as sub,
        uplink_for(broker, spool) as up,
    ):
        await until(lambda: up._live_ready, "live path ready")
        before = messages(0, 9)
        store(up, spool, up.offer(before))
        broker.stop()
        await until(lambda: not up.connected, "connection lost")
        during = messages(9, 30)
        held = up.offer(during)
        assert all(o.state == HELD for o in held)
        broker.start()
        await until(lambda: up.connected, "reconnected")
        after = up.offer(messages(39, 30))  # before `held` is stored: must wait behind it
        await asyncio.sleep(0.2)  # time to publish them, were the live path to let them go
        assert all(o.state in (HELD, QUEUED) for o in after)  # neither published nor sent
        store(up, spool, held)
        store(up, spool, after)
        everything = messages(0, 69)
        await sub.wait_for(lambda got: len({r.payload for r in by_topic_data(got)}) >= 69)
        await until(lambda: spool.held == 0, "all deleted")
        received = by_topic(by_topic_data(sub.received))
        for topic, payloads in by_topic(everything).items():
            firsts = list(dict.fromkeys(received[topic]))  # a consumer drops duplicates
            assert firsts == payloads, topic  # all, in order
        await until(lambda: up._live_ready, "live path ready again once drained")


class PausingSpool(RecordingSpool):
    """Once armed, pauses the first peek that finds nothing after one that found something,
    after its read: the moment the uplink decides that it has drained the spool."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.armed = False
        self.found = False
        self.paused = threading.Event()
        self.resume = threading.Event()

    def peek(self, limit: int, after: int = 0) -> list[tuple[int, OutMessage]]:
        rows = super().peek(limit, after)
        if self.armed and rows:
            self.found = True
        elif self.armed and self.found:
            self.armed = False
            self.paused.set()
            self.resume.wait(10)
        return rows


@pytest.mark.asyncio
@pytest.mark.parametrize("overflow", [False, True], ids=["queued", "queue-overflows"])
async def test_an_offer_held_during_the_drains_last_peek_is_not_overtaken(
    broker: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overflow: bool
) -> None:
    """Messages held while the drain's last peek runs are not in what it read: the live path
    must not publish newer offers before they are stored and drained. (At 20 serial links'
    line rate after an outage, `benchmarks/bench_gateway.py --outage` saw a node's older
    readings arrive after newer ones this way.) And when the newer offers waiting behind them
    overflow LIVE_LIMIT, those already waiting go the spool's way with the ones held then,
    before them in order."""
    monkeypatch.setattr(uplink_module, "LIVE_LIMIT", 12)
    path = tmp_path / "pausing"
    path.mkdir()
    spool = PausingSpool.open(path / "spool.db", 1_000_000, 3600, "drop_oldest")
    assert isinstance(spool, PausingSpool)
    with spool:
        async with (
            subscribed(broker, DATA, session="live-path-consumer") as sub,
            uplink_for(broker, spool) as up,
        ):
            await until(lambda: up._live_ready, "live path ready")
            broker.stop()
            await until(lambda: not up.connected, "connection lost")
            store(up, spool, up.offer(messages(0, 9)))  # held, and stored
            spool.armed = True
            broker.start()  # the drain publishes those, then peeks and finds nothing
            assert await asyncio.to_thread(spool.paused.wait, 10)
            late = up.offer(messages(9, 9))  # offered during that peek, after its read
            assert all(o.state == HELD for o in late)
            spool.resume.set()
            await until(lambda: up._live_open, "live path open")
            newest = up.offer(messages(18, 9))
            await asyncio.sleep(0.2)  # time to publish them, were the live path to let them go
            assert all(o.state == QUEUED for o in newest)  # waiting behind `late`
            offers = [late, newest]
            if overflow:  # 9 waiting and 9 more: over the limit of 12
                offers.append(up.offer(messages(27, 9)))
                assert all(o.state == HELD for o in offers[-1])
                assert all(o.state == FAILED for o in newest)  # left to the spool, before them
            for offered in offers:  # each stored at its group's commit, in order
                store(up, spool, offered)
            everything = messages(0, 18 + 9 * len(offers[1:]))
            await sub.wait_for(
                lambda got: len({r.payload for r in by_topic_data(got)}) >= len(everything)
            )
            received = by_topic(by_topic_data(sub.received))
            for topic, payloads in by_topic(everything).items():
                firsts = list(dict.fromkeys(received[topic]))  # a consumer drops duplicates
                assert firsts == payloads, topic  # all, in order
            await until(lambda: spool.held == 0, "all deleted")
            await until(lambda: up._live_ready, "live path ready again")


@pytest.mark.asyncio
async def test_the_spool_is_not_starved_by_steady_live_traffic(
    broker: Mosquitto, spool: RecordingSpool
) -> None:
    """A window's release waits in the spool while nodes' messages keep coming live: it is
    published after the live batch in flight, not once the nodes fall silent."""
    release = OutMessage("gw-1:people:z:0", TOPICS.zone("z", "people"), b'[{"n":"count","v":7}]')
    async with subscribed(broker, f"{TOPICS.base}/#") as sub, uplink_for(broker, spool) as up:
        await until(lambda: up._live_ready, "live path ready")
        stop = asyncio.Event()

        async def nodes_keep_sending() -> None:
            i = 0
            while not stop.is_set():
                if up._live_inflight < 64:  # a steady flow, never held
                    up.offer(messages(i, 1))
                    i += 1
                await asyncio.sleep(0)

        sending = asyncio.create_task(nodes_keep_sending())
        try:
            await sub.wait_for(lambda got: len(by_topic_data(got)) >= 50)  # flowing
            spool.put([release])
            up.notify()
            await sub.wait_for(lambda got: any(r.topic == release.topic for r in got))
        finally:
            stop.set()
            await sending


@pytest.mark.asyncio
async def test_a_busy_gateway_joins_a_nodes_records_and_a_quiet_one_sends_each_at_once(
    broker: Mosquitto, spool: RecordingSpool
) -> None:
    async with subscribed(broker, DATA) as sub, uplink_for(broker, spool) as up:
        await until(lambda: up._live_ready, "live path ready")
        busy = messages(0, 36)  # a burst: more than LIVE_BUSY at once
        up.offer(busy)
        for i in range(50):  # then three nodes' readings, round after round
            more = messages(36 + 3 * i, 3)
            busy += more
            up.offer(more)
            await asyncio.sleep(0)  # the uplink may run between rounds
        await sub.wait_for(lambda got: len(by_topic_data(got)) >= len(busy))
        # joined while busy: far fewer MQTT messages than records
        assert len(by_topic_data(sub.messages)) <= len(busy) // 4
        assert by_topic(by_topic_data(sub.received)) == by_topic(busy)

        quiet = messages(len(busy), 5)
        for n, message in enumerate(quiet, 1):  # one reading after the other has arrived
            up.offer([message])
            await sub.wait_for(lambda got, n=n: len(by_topic_data(got)) >= len(busy) + n)
        ids = [m.msg_id.encode() for m in quiet]
        alone = [r for r in by_topic_data(sub.messages) if any(i in r.payload for i in ids)]
        assert [r.payload for r in alone] == [m.payload for m in quiet]
