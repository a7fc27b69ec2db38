"""Counter reuse at the gateway: an authentic frame under a counter already
accepted, whose bytes differ from the accepted frame's, is COUNTER_REUSE, not a duplicate.

Two "boards" here are two sealers holding one node's keys, as a cloned board or a restored
flash backup would: board A sends counters in order, board B seals other content under counters
A already used. The real ingest stage runs against a real registry, spool and privacy engine
(a policy that passes everything); downlinks are captured. Each test fails when the digest
comparison in Ingest._classify or the evidence kept by NodeRegistry.accept_many is removed.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from edgeveil_node import config as config_mod
from edgeveil_node.app import Node
from edgeveil_node.counter import FrameCounter

from gateway.ingest import REUSE_ALARM_GAP_S, Arrival, Ingest
from gateway.lora.radio import RadioMeta
from gateway.metrics import Metrics
from gateway.privacy import PolicyEngine, PrivacyLedger
from gateway.privacy import policy as policy_mod
from gateway.records import Topics
from gateway.registry import EVIDENCE_SPAN, NodeRegistry
from gateway.spool import Spool
from protocol import (
    Ack,
    ConfigUpdate,
    Event,
    NodeKeys,
    Observations,
    Readings,
    open_frame,
    parse_header,
    seal,
)

from .firmware_env import FakeClock, settle
from .gateway_harness import write_policy
from .mqtt_contract import contract
from .test_firmware_app import FakeLink

NODE = 7
SECRET = bytes(range(32))  # test key, not a real one
OTHER_SECRET = bytes(range(1, 33))  # test key
pytestmark = pytest.mark.asyncio

GW = "gw-reuse"
PORT = "ttyTEST"
KEYS = NodeKeys(NODE, SECRET)


def board_a(counter: int) -> bytes:
    return seal(Readings({0: 200 + counter}), counter, KEYS)


def board_b(counter: int) -> bytes:
    """Another board with the same identity: other content under the same counter."""
    return seal(Readings({0: -50 - counter}), counter, KEYS)


@dataclass
class Gateway:
    """The ingest stage with its collaborators; reopen() is a gateway restart."""

    directory: Path
    node: int = NODE
    secret: bytes = SECRET
    sent: list[bytes] = field(default_factory=list)
    now: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self.policy = policy_mod.load(write_policy(self.directory))
        self.registry = NodeRegistry.open(self.directory / "registry.db")
        if self.node not in self.registry:
            self.registry.add(self.node, self.secret, "square")
        self.ledger = PrivacyLedger.open(self.directory / "privacy.db")
        self.spool = Spool.open(self.directory / "spool.db", 10_000, 86_400, "refuse_new")
        self.metrics = Metrics()
        engine = PolicyEngine(self.policy, GW, self.ledger)
        engine.add_node(self.node, "square")
        self.ingest = Ingest(
            self.registry,
            engine,
            self.spool,
            Topics("edgeveil", "site", GW),
            "senml-json",
            self._send,
            None,
            self.metrics,
        )

    async def _send(self, _port: str, frame: bytes, _radio: RadioMeta | None) -> bool:
        self.sent.append(frame)
        return True

    async def feed(self, *frames: bytes) -> list[int]:
        """One batch; returns the counters acknowledged in answer."""
        start = len(self.sent)
        await self.ingest.process([Arrival(PORT, f, self.now) for f in frames])
        acked: list[int] = []
        for frame in self.sent[start:]:
            keys = NodeKeys(self.node, self.secret, epoch=parse_header(frame).epoch)
            message = open_frame(frame, keys, uplink=False)
            if isinstance(message, Ack):
                acked.extend(message.counters)
        return acked

    def outcome(self, outcome: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "edgeveil_frames_total", {"port": PORT, "node": str(self.node), "outcome": outcome}
        )
        return value or 0.0

    def alarms(self) -> list[dict[str, object]]:
        return [
            record
            for _seq, m in self.spool.peek(10_000)
            if m.topic.endswith(f"/node/{self.node}/event")
            for record in json.loads(m.payload)
            if record.get("n") == "counter_reuse"
        ]

    def readings(self) -> list[int]:
        return [
            record["v"]
            for _seq, m in self.spool.peek(10_000)
            if m.topic.endswith("/readings")
            for record in json.loads(m.payload)
            if "v" in record
        ]

    def close(self) -> None:
        self.spool.close()
        self.ledger.close()
        self.registry.close()

    def reopen(self) -> Gateway:
        self.close()
        return Gateway(self.directory, self.node, self.secret)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    gw = Gateway(tmp_path)
    yield gw
    gw.close()


async def test_other_bytes_under_an_accepted_counter_are_reuse_not_a_duplicate(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    assert await gateway.feed(*(board_a(c) for c in range(5))) == [0, 1, 2, 3, 4]
    # board A's retransmission: the same bytes, acknowledged again, stored once
    assert await gateway.feed(board_a(2)) == [2]
    assert gateway.outcome("duplicate") == 1
    # board B: the same key and nonce over other content
    assert await gateway.feed(board_b(2)) == []
    assert gateway.outcome("counter_reuse") == 1
    assert gateway.outcome("duplicate") == 1
    assert "counter 2 reused" in caplog.text
    assert "two boards or a restored backup share this identity" in caplog.text
    # temperatures in 0.1 °C: A's counter 2 carried 20.2 °C, B's -5.2 °C
    assert 20.2 in gateway.readings()
    assert -5.2 not in gateway.readings()  # nothing of B's frame was stored or forwarded
    alarms = gateway.alarms()
    assert len(alarms) == 1
    # no content: that it happened (true, not a number), nothing of the frames; under the
    # hash of the policy in force, as every message
    assert alarms[0]["vb"] is True and "v" not in alarms[0]
    assert alarms[0]["policy"] == gateway.policy.hash
    problems = [contract().check(m.topic, m.payload, 1) for _seq, m in gateway.spool.peek(100)]
    assert problems == [None] * len(problems)


async def test_the_evidence_survives_a_gateway_restart(gateway: Gateway) -> None:
    await gateway.feed(*(board_a(c) for c in range(5)))
    restarted = gateway.reopen()
    try:
        assert await restarted.feed(board_a(3)) == [3]  # still a retransmission
        assert await restarted.feed(board_b(3)) == []
        assert restarted.outcome("counter_reuse") == 1
    finally:
        restarted.close()


async def test_reuse_below_the_replay_window_is_told_from_a_replay(gateway: Gateway) -> None:
    """A restored backup sets the counter back further than the 64-counter window."""
    await gateway.feed(*(board_a(c) for c in range(200)))
    assert await gateway.feed(board_a(10)) == []  # an old frame sent again: a replay
    assert gateway.outcome("replay") == 1
    assert await gateway.feed(board_b(10)) == []
    assert gateway.outcome("counter_reuse") == 1
    forged = bytearray(board_b(11))
    forged[-1] ^= 1  # not sealed with the key: no alarm for what anyone could send
    assert await gateway.feed(bytes(forged)) == []
    assert gateway.outcome("auth_failed") == 1
    assert gateway.outcome("counter_reuse") == 1
    assert len(gateway.alarms()) == 1


async def test_both_boards_in_one_batch(gateway: Gateway) -> None:
    # A's frame and its retransmission: one ack for both (copies in one batch share it)
    assert await gateway.feed(board_a(0), board_b(0), board_a(0)) == [0]
    assert gateway.outcome("counter_reuse") == 1
    assert gateway.readings() == [20.0]  # A's (0.1 °C units); B's -5.0 °C never stored


async def test_alarms_are_rate_limited_and_never_come_from_sightings(gateway: Gateway) -> None:
    await gateway.feed(*(board_a(c) for c in range(10)))
    await gateway.feed(board_b(1), board_b(2))
    assert gateway.outcome("counter_reuse") == 2
    assert len(gateway.alarms()) == 1  # one per node and hour
    gateway.now += REUSE_ALARM_GAP_S
    # a reused counter on a BLE sightings frame: rejected, but neither counted nor published
    # (how many such frames there are, and when, says people were near)
    sighting = seal(Observations(0, [(b"\x02\x11\x22\x33\x44\x55", -70)]), 3, KEYS)
    assert await gateway.feed(sighting) == []
    assert gateway.outcome("counter_reuse") == 2
    assert len(gateway.alarms()) == 1
    await gateway.feed(board_b(4))
    assert len(gateway.alarms()) == 2  # the next non-personal reuse after the hour


async def test_the_evidence_is_bounded_and_belongs_to_the_secret(gateway: Gateway) -> None:
    for start in range(0, EVIDENCE_SPAN + 600, 200):
        await gateway.feed(*(board_a(c) for c in range(start, start + 200)))

    def rows() -> int:
        with sqlite3.connect(gateway.directory / "registry.db") as conn:
            return int(conn.execute("SELECT count(*) FROM evidence").fetchone()[0])

    gateway.ingest.fold(force=True)  # the registry takes the spool's journal
    assert rows() == EVIDENCE_SPAN
    gateway.registry.add(NODE, OTHER_SECRET, "square", replace=True)  # re-provisioned
    assert rows() == 0


# -- the real firmware: a flash backup restored ----------------------------------------------


class Thermometer:
    """A sensor whose readings move, so that two runs seal different plaintexts."""

    QUANTITIES = (0,)

    def __init__(self, start: int) -> None:
        self.value = start

    def read_into(self, values: dict[int, int]) -> None:
        self.value += 1
        values[0] = self.value


def run_firmware(flash: Path, clock: FakeClock, cycles: int, start: int = 200) -> list[bytes]:
    """Boot the node application (real firmware, fake sensors) on `flash` and let it send
    for `cycles` reading intervals; what it put on the line, in order (retransmissions too)."""
    config = config_mod.Config(
        {
            "node_id": NODE,
            "secret": SECRET.hex(),
            "intervals": {"reading_s": 10, "status_s": 3600, "scan_s": 300, "scan_window_s": 1},
            "retransmit": {"ack_timeout_ms": 60_000, "max_retries": 1, "queue": 16},
        }
    )
    link = FakeLink()
    node = Node(
        config,
        KEYS,
        FrameCounter(str(flash) + "/"),
        link,
        sensors=[Thermometer(start)],
        settings_file=str(flash / "settings.json"),
    )
    for _ in range(cycles):
        settle(node)
        clock.sleep_ms(10_000)
    return link.frames


async def test_a_restored_flash_backup_is_reported_at_the_first_reused_counter(
    gateway: Gateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    clock.install(monkeypatch)
    flash, backup = tmp_path / "flash", tmp_path / "backup"
    flash.mkdir()
    first = run_firmware(flash, clock, 3)  # the counter file now promises 0..31 only
    shutil.copytree(flash, backup)  # a technician's flash backup
    first += run_firmware(flash, clock, 40)  # a reboot, then 40 more readings: past 32
    assert await gateway.feed(*first)
    assert gateway.outcome("counter_reuse") == 0
    shutil.rmtree(flash)
    shutil.copytree(backup, flash)  # the backup restored: the counter state goes back
    second = run_firmware(flash, clock, 2, start=-100)
    sealed_before = {parse_header(f).counter: f for f in first}
    assert parse_header(second[0]).counter in sealed_before  # the gap this test is about
    # the same plaintext under the same nonce gives the same bytes (deterministic AEAD): a
    # duplicate, and harmless; the first frame that differs is the reuse that leaks
    reused = next(f for f in second if sealed_before.get(parse_header(f).counter) != f)
    assert parse_header(reused).counter in sealed_before
    for frame in second[: second.index(reused)]:
        await gateway.feed(frame)
        assert gateway.outcome("counter_reuse") == 0
    assert await gateway.feed(reused) == []
    assert gateway.outcome("counter_reuse") == 1  # at the first reused counter
    assert len(gateway.alarms()) == 1


# -- a revoked node ----------------------------------------------------------


async def test_a_revoked_nodes_frames_are_refused_from_the_next_batch(gateway: Gateway) -> None:
    assert await gateway.feed(board_a(0)) == [0]
    with NodeRegistry.open(gateway.directory / "registry.db") as technician:
        technician.revoke(NODE)  # edgeveil gateway nodes revoke, while the gateway runs
    assert await gateway.feed(board_a(1), board_a(0)) == []  # neither new nor a retransmission
    assert gateway.outcome("revoked") == 2
    assert gateway.readings() == [20.0]  # only what came before the revocation


async def test_a_replacement_board_retires_the_old_one_once_heard(gateway: Gateway) -> None:
    """edgeveil node provision --replace: the old identity keeps working until the new one is
    on the air, and is refused from then on."""
    new_keys = NodeKeys(8, OTHER_SECRET)
    gateway.registry.add(8, OTHER_SECRET, "square", replaces=NODE)
    assert await gateway.feed(board_a(0)) == [0]  # the old board, before the new one is heard
    await gateway.ingest.process([Arrival(PORT, seal(Readings({0: 1}), 0, new_keys), gateway.now)])
    assert await gateway.feed(board_a(1)) == []
    assert gateway.outcome("revoked") == 1


async def test_a_node_running_out_of_counters_is_re_keyed_or_named_for_replacement(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    """A node close to the counter limit (event counter_low with its status)
    gets fresh keys, whose counter starts at 0; when its generation of key epochs is used up,
    the log names it for replacement."""
    await gateway.feed(seal(Event(8, 1000), 0, KEYS))  # counter_low, from the node's status
    assert f"node {NODE} has 1000 frame counters left: re-keying it to key epoch 1" in caplog.text
    entry = gateway.registry.get(NODE)
    assert entry is not None and entry.rekey == 1
    gateway.now += 61  # the next status: the re-key goes out with the ack
    start = len(gateway.sent)
    await gateway.feed(seal(Event(8, 999), 1, KEYS))
    updates = [open_frame(f, KEYS, uplink=False) for f in gateway.sent[start:]]
    assert ConfigUpdate(1, {"key_epoch": 1}) in updates

    last = NodeKeys(NODE, SECRET, epoch=15)  # re-keyed 15 times since its last deploy
    await gateway.feed(seal(Event(8, 1000), 0, last))  # this frame ends the pending re-key
    await gateway.feed(seal(Event(8, 999), 1, last))
    assert f"node {NODE} has 999 frame counters left and then falls silent" in caplog.text
    assert f"edgeveil node provision --replace {NODE}" in caplog.text
