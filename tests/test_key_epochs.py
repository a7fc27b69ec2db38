"""Key epochs at the gateway and a re-key over the downlink.

The real ingest stage, registry and spool (the counter-reuse tests' Gateway), and for the
re-key the real firmware: the node application with its serial link on an in-memory line, so
the gateway's downlinks reach the node's own accept_downlink and its answers the ingest.
Each guard has a test that fails without it: RETIRED_KEY (Ingest._verify), the epoch kept by
the registry (accept_many / get), the per-epoch counter state, the node's switch after its
queue drained and its persisted epoch (rekey.py, counter.py).
"""

from __future__ import annotations

import binascii
import sqlite3
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from edgeveil_node import config as config_mod
from edgeveil_node.app import Node
from edgeveil_node.counter import LAST, FrameCounter, slot_bytes
from edgeveil_node.serial_link import SerialLink

from gateway.errors import RegistryError
from gateway.ingest import Arrival
from gateway.registry import NodeRegistry
from protocol import (
    Ack,
    ConfigUpdate,
    Event,
    NodeKeys,
    Readings,
    StreamDecoder,
    encode_serial,
    open_frame,
    parse_header,
    seal,
)

from .firmware_env import FakeClock, settle
from .test_counter_reuse import KEYS, NODE, SECRET, Gateway

pytestmark = pytest.mark.slow  # end to end: scripts/test -m "not slow" skips it

KEYS_16 = NodeKeys(NODE, SECRET, epoch=16)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    gw = Gateway(tmp_path)
    yield gw
    gw.close()


def downlinks(gateway: Gateway, start: int, keys: NodeKeys) -> list[object]:
    return [open_frame(f, keys, uplink=False) for f in gateway.sent[start:]]


@pytest.mark.asyncio
async def test_a_higher_epoch_moves_the_node_and_retires_its_old_keys(gateway: Gateway) -> None:
    assert await gateway.feed(*(seal(Readings({0: c}), c, KEYS) for c in range(3))) == [0, 1, 2]
    # deploy gave the board fresh keys (an erased flash): counters start again at 0
    start = len(gateway.sent)
    assert await gateway.feed(seal(Readings({0: 100}), 0, KEYS_16)) == [0]
    acks = downlinks(gateway, start, KEYS_16)  # the ack is sealed under the new downlink key
    assert acks == [Ack([0])]
    assert parse_header(gateway.sent[start]).counter == 0  # fresh keys: downlink counter 0 again
    assert gateway.registry.get(NODE).epoch == 16  # type: ignore[union-attr]

    # a frame under the old keys, even one never seen: refused, counted, not acknowledged
    start = len(gateway.sent)
    assert await gateway.feed(seal(Readings({0: 3}), 3, KEYS)) == []
    assert gateway.sent[start:] == []
    assert gateway.outcome("retired_key") == 1
    assert gateway.readings() == [0.0, 0.1, 0.2, 10.0]  # values x 0.1: a temperature

    # the epoch and its counter state survive a restart; evidence belongs to the new keys
    gateway = gateway.reopen()
    assert gateway.registry.get(NODE).epoch == 16  # type: ignore[union-attr]
    start = len(gateway.sent)
    await gateway.feed(seal(Readings({0: 100}), 0, KEYS_16))  # a retransmission
    assert downlinks(gateway, start, KEYS_16) == [Ack([0])]
    assert gateway.outcome("duplicate") == 1
    await gateway.feed(seal(Readings({0: -1}), 0, KEYS_16))  # other bytes, same nonce
    assert gateway.outcome("counter_reuse") == 1
    await gateway.feed(seal(Readings({0: 3}), 3, KEYS))
    assert gateway.outcome("retired_key") == 1  # a new metrics object after the restart
    gateway.close()


@pytest.mark.asyncio
async def test_old_and_new_epoch_in_one_batch(gateway: Gateway) -> None:
    old, new = seal(Readings({0: 1}), 7, KEYS), seal(Readings({0: 2}), 0, KEYS_16)
    await gateway.feed(new, old)
    assert gateway.readings() == [0.2, 0.1]  # both stored: the old one was sent before the switch
    assert gateway.registry.get(NODE).epoch == 16  # type: ignore[union-attr]
    await gateway.feed(seal(Readings({0: 3}), 8, KEYS))
    assert gateway.outcome("retired_key") == 1


def test_re_adding_the_same_secret_keeps_the_epoch_and_a_new_secret_resets_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "registry.db"
    with NodeRegistry.open(path) as registry:
        registry.add(NODE, SECRET, "square")
        registry.accept(NODE, 5, b"", epoch=32)
        registry.remove(NODE)
        registry.add(NODE, SECRET, "square")
        entry = registry.get(NODE)
        assert entry is not None
        assert (entry.epoch, entry.window.highest) == (32, 5)
        registry.add(NODE, bytes(32), "square", replace=True)  # re-provisioned
        entry = registry.get(NODE)
        assert entry is not None
        assert (entry.epoch, entry.window.highest) == (0, -1)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM epochs").fetchone() == (0,)


def test_a_rekey_request_counts_within_the_generation(tmp_path: Path) -> None:
    with NodeRegistry.open(tmp_path / "registry.db") as registry:
        registry.add(NODE, SECRET, "square")
        assert registry.request_rekey(NODE) == 1
        assert registry.request_rekey(NODE) == 1  # pending: the same request
        registry.accept(NODE, 0, b"", epoch=15)  # the node moved on its own meanwhile
        assert registry.get(NODE).rekey is None  # type: ignore[union-attr]
        with pytest.raises(RegistryError, match="last of the generation"):
            registry.request_rekey(NODE)  # 16 is deploy's next generation: never the gateway's
        registry.revoke(NODE)
        with pytest.raises(RegistryError, match="revoked"):
            registry.request_rekey(NODE)
        with pytest.raises(RegistryError, match="not registered"):
            registry.request_rekey(NODE + 1)


# -- a re-key over the downlink, with the real firmware -------------------------------------------


class Line:
    """The node's serial line: what it writes goes to the gateway, the gateway's frames to it."""

    def __init__(self) -> None:
        self.rx = bytearray()
        self.tx = bytearray()

    def write(self, data: bytes) -> None:
        self.tx += data

    def read(self) -> bytes | None:
        data, self.rx = bytes(self.rx), bytearray()
        return data or None


class Thermometer:
    QUANTITIES = (0,)

    def __init__(self) -> None:
        self.value = 200

    def read_into(self, values: dict[int, int]) -> None:
        self.value += 1
        values[0] = self.value


def boot_node(flash: Path, line: Line) -> Node:
    config = config_mod.Config(
        {
            "node_id": NODE,
            "secret": SECRET.hex(),
            "intervals": {"reading_s": 10, "status_s": 3600, "scan_s": 300, "scan_window_s": 1},
            "retransmit": {"ack_timeout_ms": 2_000, "max_retries": 5, "queue": 16},
        }
    )
    counter = FrameCounter(str(flash) + "/")
    keys = NodeKeys(NODE, SECRET, epoch=counter.epoch)
    link = SerialLink(line, keys, str(flash / "downlink.window"))
    return Node(config, keys, counter, link, sensors=[Thermometer()])


@pytest.mark.asyncio
async def exchange(
    node: Node, line: Line, gateway: Gateway, clock: FakeClock, *, drop: bool = False
) -> list[bytes]:
    """One reading interval: the node works, the gateway takes its frames and answers (unless
    `drop`: the downlinks are lost on the way). The node's frames, in order."""
    settle(node)
    frames = _frames(line)
    line.tx.clear()
    start = len(gateway.sent)
    await gateway.ingest.process([Arrival("ttyTEST", f, gateway.now) for f in frames])
    if not drop:
        for frame in gateway.sent[start:]:
            line.rx += encode_serial(frame)
    settle(node)  # takes the acks and the update
    clock.sleep_ms(10_000)
    return frames


@pytest.mark.asyncio
async def test_a_rekey_reaches_the_node_over_the_serial_downlink(
    gateway: Gateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    clock.install(monkeypatch)
    flash = tmp_path / "flash"
    flash.mkdir()
    line = Line()
    node = boot_node(flash, line)
    wire = await exchange(node, line, gateway, clock)
    assert {parse_header(f).epoch for f in wire} == {0}

    assert gateway.registry.request_rekey(NODE) == 1
    gateway.registry.reload_if_changed()
    # the first update is lost on the way: the node keeps its keys and keeps being heard
    wire += await exchange(node, line, gateway, clock, drop=True)
    assert node.keys.epoch == 0
    assert gateway.outcome("retired_key") == 0
    gateway.now += 61  # the gateway sends it again, at most once a minute
    for _ in range(3):
        wire += await exchange(node, line, gateway, clock)
        gateway.now += 61
    assert node.keys.epoch == 1
    assert FrameCounter(str(flash) + "/").epoch == 1  # persisted with the counter
    entry = gateway.registry.get(NODE)
    assert entry is not None
    assert (entry.epoch, entry.rekey) == (1, None)
    new = [f for f in wire if parse_header(f).epoch == 1]
    assert parse_header(new[0]).counter == 0
    assert open_frame(new[0], NodeKeys(NODE, SECRET, epoch=1)) == Event(4, 1)  # config_applied
    # nothing the node sealed under its old keys is lost: every reading reached the spool
    sent = [m.values[0] for f in wire if isinstance(m := _open(f), Readings)]
    assert {round(v * 10) for v in gateway.readings()} == set(sent)
    assert not len(node.queue)

    # the old keys are refused from now on; a reboot resumes under the new ones
    old = next(f for f in wire if parse_header(f).epoch == 0)
    await gateway.feed(old)
    assert gateway.outcome("retired_key") == 1
    node = boot_node(flash, line)
    wire += await exchange(node, line, gateway, clock)
    assert parse_header(wire[-1]).epoch == 1
    assert_unique_key_nonce_pairs(wire)


def _open(frame: bytes) -> object:
    header = parse_header(frame)
    return open_frame(frame, NodeKeys(NODE, SECRET, epoch=header.epoch), header=header)


def assert_unique_key_nonce_pairs(frames: list[bytes]) -> None:
    """No two different frames under one (key, nonce): retransmissions are the same bytes."""
    sealed: dict[tuple[bytes, bytes], bytes] = {}
    for frame in frames:
        header = parse_header(frame)
        keys = NodeKeys(header.node_id, SECRET, epoch=header.epoch)
        pair = (keys.uplink_key if header.uplink else keys.downlink_key, keys.nonce(header.counter))
        assert sealed.setdefault(pair, frame) == frame, f"key and nonce reused: {header}"


def test_the_node_refuses_a_rekey_that_goes_back_or_carries_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    FakeClock().install(monkeypatch)
    line = Line()
    node = boot_node(tmp_path, line)
    node.handle(ConfigUpdate(1, {"key_epoch": 1, "reading_interval_s": 5}))
    node.handle(ConfigUpdate(2, {"key_epoch": 1}))  # accepted for later
    assert node._rekey is not None
    settle(node)
    assert node.keys.epoch == 0  # its boot event and readings wait for their acks
    node.queue.ack(list(range(64)))
    settle(node)
    assert node.keys.epoch == 1
    node.handle(ConfigUpdate(3, {"key_epoch": 1}))  # not after the current epoch
    rejected = [_open(f) for f in _frames(line)]
    assert Event(5, 1) in rejected and Event(5, 3) in rejected and Event(4, 2) in rejected


def _frames(line: Line) -> list[bytes]:
    decoder = StreamDecoder()
    decoder.feed(bytes(line.tx))
    out = []
    while isinstance(frame := decoder.next_event(), bytes):
        out.append(frame)
    return out


def test_counter_slots_carry_the_epoch_and_old_slots_read_as_epoch_zero(tmp_path: Path) -> None:
    head = struct.pack(">II", 3, 96)  # the first firmware's slot: sequence, limit
    (tmp_path / "counter.a").write_bytes(head + struct.pack(">I", binascii.crc32(head)))
    counter = FrameCounter(str(tmp_path) + "/")
    assert (counter.found, counter.epoch, counter.next_value) == (True, 0, 96)
    (tmp_path / "counter.b").write_bytes(slot_bytes(4, 0, 17))
    counter = FrameCounter(str(tmp_path) + "/")
    assert (counter.epoch, counter.take()) == (17, 0)
    assert not FrameCounter(str(tmp_path / "none") + "/").found


@pytest.mark.asyncio
async def test_a_node_near_its_counter_limit_gets_fresh_keys_and_counts_from_zero(
    gateway: Gateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counter exhaustion: a node close to the limit says counter_low, the
    gateway re-keys it by itself, and the node counts again from 0 under new keys: it never
    wraps and never falls silent."""
    clock = FakeClock()
    clock.install(monkeypatch)
    flash = tmp_path / "flash"
    flash.mkdir()
    start = LAST - 40
    (flash / "counter.a").write_bytes(slot_bytes(1, start, 0))
    line = Line()
    node = boot_node(flash, line)
    wire = await exchange(node, line, gateway, clock)
    assert parse_header(wire[0]).counter >= start
    low = [m for f in wire if isinstance(m := _open(f), Event) and m.code == 8]  # counter_low
    assert low and low[0].value is not None and low[0].value <= 41
    entry = gateway.registry.get(NODE)
    assert entry is not None and entry.rekey == 1  # asked for, without an operator
    for _ in range(3):
        gateway.now += 61
        wire += await exchange(node, line, gateway, clock)
    assert node.keys.epoch == 1
    assert max(parse_header(f).counter for f in wire) <= LAST
    new = [parse_header(f).counter for f in wire if parse_header(f).epoch == 1]
    assert new and new[0] == 0
    assert node.counter.remaining() > LAST - 100
    assert_unique_key_nonce_pairs(wire)
