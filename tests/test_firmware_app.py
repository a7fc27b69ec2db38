"""The node application on CPython with fake hardware: counter, queue, scheduler, downlinks."""

from __future__ import annotations

import binascii
import json
import os
import re
import struct
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from edgeveil_node import config as config_mod
from edgeveil_node.app import Node
from edgeveil_node.counter import LAST, LOW_WATER, STEP, CounterError, FrameCounter
from edgeveil_node.link import RetransmitQueue
from edgeveil_node.serial_link import SerialLink

from protocol import (
    Ack,
    ConfigUpdate,
    Event,
    NodeKeys,
    Observations,
    Readings,
    Status,
    TimeSync,
    encode_serial,
    open_frame,
    parse_header,
    seal,
)

from .firmware_env import FakeClock, settle

SECRET = bytes(range(16))  # TEST ONLY
NODE_ID = 77


# -- the frame counter ------------------------------------------------------------------------


def _counter_at(directory: Path, limit: int) -> None:
    """Counter files as a node leaves them after reserving up to `limit` (counter.py)."""
    head = struct.pack(">II", 1, limit)
    (directory / "counter.a").write_bytes(head + struct.pack(">I", binascii.crc32(head)))


def test_a_counter_near_its_limit_warns_then_stops_and_never_wraps(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A node started near the 2^32 limit says so with each status, uses
    every value up to its last (2^32 - 2) once, then refuses to seal: at run time and at the
    next boot."""
    _counter_at(tmp_path, LAST + 1 - 40)
    os.chdir(tmp_path)
    node, link = make_node(tmp_path, sensors=[FakeSensor()])  # boot: 40 counters left
    clock.sleep_ms(60_000)  # the status interval
    settle(node)
    low = [m.value for _, m in opened(link.frames) if isinstance(m, Event) and m.code == 8]
    assert low and all(v is not None and 0 < v < LOW_WATER for v in low)
    with pytest.raises(CounterError, match="frame counter exhausted"):
        for _ in range(50):
            clock.sleep_ms(10_000)
            settle(node)
    counters = [parse_header(f).counter for f in link.frames]
    assert max(counters) == LAST == 2**32 - 2  # the last value used, none beyond
    assert len(set(counters)) == len({f for f in link.frames})  # each counter sealed once
    with pytest.raises(CounterError, match="provision --replace"):
        FrameCounter(str(tmp_path) + "/")  # the next boot refuses (app.boot_phases waits)
    # the stored limit fits its 4 bytes: truncated, it would restart the counter at 0
    slots = [
        struct.unpack(">II", (tmp_path / n).read_bytes()[:8]) for n in ("counter.a", "counter.b")
    ]
    assert max(slots)[1] == LAST + 1  # (sequence, limit) of the newest slot


def test_counter_hands_out_each_value_once_and_writes_rarely(tmp_path: Path) -> None:
    counter = FrameCounter(str(tmp_path) + "/")
    values = [counter.take() for _ in range(1000)]
    assert values == list(range(1000))
    assert counter.writes == -(-1000 // STEP)  # one write per STEP counters


def test_counter_resumes_past_every_value_used_after_a_restart(tmp_path: Path) -> None:
    prefix = str(tmp_path) + "/"
    used = [FrameCounter(prefix).take() for _ in range(5)]  # five boots, one frame each
    assert used == sorted(set(used))
    again = FrameCounter(prefix)
    assert again.take() > used[-1]


def test_counter_survives_a_write_torn_at_any_byte(tmp_path: Path) -> None:
    prefix = str(tmp_path) + "/"
    counter = FrameCounter(prefix, step=4)
    used = [counter.take() for _ in range(10)]  # the slots hold the last two limits
    newest = max(("a", "b"), key=lambda s: (tmp_path / f"counter.{s}").stat().st_mtime_ns)
    good = (tmp_path / f"counter.{newest}").read_bytes()
    for cut in range(len(good)):
        (tmp_path / f"counter.{newest}").write_bytes(good[:cut])
        assert FrameCounter(prefix, step=4).take() > max(used) - 4  # the older slot's limit
        # and never a value the node could have used after the older limit was written
        assert FrameCounter(prefix, step=4).next_value >= 8
    (tmp_path / f"counter.{newest}").write_bytes(good)


def test_counter_refuses_when_both_slots_are_corrupt(tmp_path: Path) -> None:
    counter = FrameCounter(str(tmp_path) + "/", step=4)
    for _ in range(6):
        counter.take()
    for name in ("counter.a", "counter.b"):
        (tmp_path / name).write_bytes(b"\xff" * 12)
    with pytest.raises(CounterError, match="fresh keys"):
        FrameCounter(str(tmp_path) + "/")


# -- the retransmission queue ------------------------------------------------------------------


def test_queue_backs_off_and_gives_up(clock: FakeClock) -> None:
    queue = RetransmitQueue(size=4, ack_timeout_ms=100, max_retries=2)
    queue.add(1, b"frame", True, 0)
    sends = [t for t in range(0, 5000, 10) if queue.next_due(t)]
    assert sends == [0, 100, 300]  # first send, then 100 ms, then 200 ms later
    assert queue.retransmissions == 2
    assert queue.next_due(1000) is None and queue.given_up == 1 and len(queue) == 0


def test_queue_hands_out_one_frame_at_a_time_oldest_first(clock: FakeClock) -> None:
    queue = RetransmitQueue(size=4, ack_timeout_ms=100, max_retries=2)
    queue.add(1, b"first", True, 0)
    queue.add(2, b"second", True, 0)
    first = queue.next_due(0)
    second = queue.next_due(0)
    assert (first and first.counter, second and second.counter) == (1, 2)
    assert queue.next_due(0) is None  # both wait for their acks now


def test_queue_ack_and_overflow_drop_oldest_readings_first(clock: FakeClock) -> None:
    queue = RetransmitQueue(size=3, ack_timeout_ms=100, max_retries=5)
    queue.add(1, b"status", False, 0)
    queue.add(2, b"readings", True, 0)
    queue.add(3, b"readings", True, 0)
    queue.add(4, b"readings", True, 0)
    assert [p.counter for p in queue.items] == [1, 3, 4] and queue.dropped == 1
    assert queue.ack([3, 99]) == 1
    assert [p.counter for p in queue.items] == [1, 4]


# -- the application ---------------------------------------------------------------------------


class FakeLink:
    MAX_SIGHTINGS = 2

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.inbox: list[object] = []

    def send(self, frame: bytes, personal: bool = False) -> None:
        self.frames.append(frame)

    def poll(self) -> list[object]:
        out, self.inbox = self.inbox, []
        return out


class FakeSensor:
    QUANTITIES = (0, 1)

    def __init__(self) -> None:
        self.fail = False

    def read_into(self, values: dict[int, int]) -> None:
        if self.fail:
            raise OSError(5, "I2C bus error")
        values.update({0: 215, 1: 455})


class FakeScanner:
    def __init__(self, devices: list[tuple[bytes, int]]) -> None:
        self.devices = devices
        self.done = False

    def start_window(self, ms: int) -> None:
        self.done = True

    def window_done(self) -> bool:
        return self.done

    def waiting(self) -> int:
        return len(self.devices) if self.done else 0

    def take(self, limit: int | None = None) -> list[tuple[bytes, int]]:
        part = self.devices[:limit]
        self.devices = self.devices[len(part) :]
        return part


def make_config(**overrides: Any) -> config_mod.Config:
    data: dict[str, Any] = {
        "node_id": NODE_ID,
        "secret": SECRET.hex(),
        "intervals": {"reading_s": 10, "status_s": 60, "scan_s": 30, "scan_window_s": 1},
        "retransmit": {"ack_timeout_ms": 1000, "max_retries": 3, "queue": 8},
    }
    data.update(overrides)
    return config_mod.Config(data)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    c = FakeClock()
    c.install(monkeypatch)
    return c


def opened(frames: list[bytes]) -> list[tuple[int, object]]:
    keys = NodeKeys(NODE_ID, SECRET)
    return [(parse_header(f).counter, open_frame(f, keys)) for f in frames]


def make_node(tmp_path: Path, **kw: Any) -> tuple[Node, FakeLink]:
    os.chdir(tmp_path)
    link = FakeLink()
    node = Node(
        kw.pop("config", make_config()),
        NodeKeys(NODE_ID, SECRET),
        FrameCounter(),
        link,
        settings_file=str(tmp_path / "settings.json"),
        **kw,
    )
    return node, link


def test_boot_then_readings_status_and_time_request(tmp_path: Path, clock: FakeClock) -> None:
    node, link = make_node(tmp_path, sensors=[FakeSensor()], reset_cause=3)
    settle(node)
    messages = [m for _, m in opened(link.frames)]
    assert messages[0] == Event(0, 3)  # boot, after a watchdog reset
    assert Readings({0: 215, 1: 455}) in messages
    assert any(isinstance(m, Status) and m.fields["clock_synced"] is False for m in messages)
    assert Event(6) in messages  # time request: the node has no clock yet
    counters = [c for c, _ in opened(link.frames)]
    assert counters == sorted(set(counters))


def test_unacknowledged_frames_are_resent_unchanged_until_acked(
    tmp_path: Path, clock: FakeClock
) -> None:
    node, link = make_node(tmp_path, sensors=[FakeSensor()])
    settle(node)
    first = list(link.frames)
    clock.sleep_ms(1000)
    settle(node)
    assert link.frames[len(first) : len(first) * 2] == first  # the same bytes, same counters
    link.inbox.append(Ack([c for c, _ in opened(first)]))
    clock.sleep_ms(5000)
    sent_before = len(link.frames)
    settle(node)
    assert len(node.queue) == 0 and len(link.frames) == sent_before


def test_time_sync_puts_time_on_readings(tmp_path: Path, clock: FakeClock) -> None:
    node, link = make_node(tmp_path, sensors=[FakeSensor()])
    settle(node)
    link.inbox.append(TimeSync(1_800_000_000))
    clock.sleep_ms(10_000)
    settle(node)
    readings = [m for _, m in opened(link.frames) if isinstance(m, Readings)]
    assert readings[0].time is None
    assert readings[-1].time == 1_800_000_000  # the sync arrived just before these readings
    clock.sleep_ms(10_000)
    settle(node)
    readings = [m for _, m in opened(link.frames) if isinstance(m, Readings)]
    assert readings[-1].time == 1_800_000_000 + 10


def test_config_update_is_applied_once_and_survives_a_reboot(
    tmp_path: Path, clock: FakeClock
) -> None:
    node, link = make_node(tmp_path, sensors=[FakeSensor()])
    settle(node)
    link.inbox.append(ConfigUpdate(5, {"reading_interval_s": 2}))
    link.inbox.append(ConfigUpdate(4, {"reading_interval_s": 99}))  # older: ignored
    settle(node)
    assert node.intervals["reading_s"] == 2
    assert [m for _, m in opened(link.frames)].count(Event(4, 5)) == 1
    # the same version again (the gateway did not hear the answer): answered again, and
    # nothing changes
    link.inbox.append(ConfigUpdate(5, {"reading_interval_s": 77}))
    settle(node)
    assert node.intervals["reading_s"] == 2
    assert [m for _, m in opened(link.frames)].count(Event(4, 5)) == 2
    again, _ = make_node(tmp_path, sensors=[FakeSensor()])
    assert again.intervals["reading_s"] == 2 and again.config_version == 5
    assert json.loads((tmp_path / "settings.json").read_text())["version"] == 5


def test_failing_sensor_is_reported_once(tmp_path: Path, clock: FakeClock) -> None:
    bad, good = FakeSensor(), FakeSensor()
    bad.fail = True
    node, link = make_node(tmp_path, sensors=[bad, good])
    for _ in range(3):
        settle(node)
        clock.sleep_ms(10_000)
    sent = dict(opened(link.frames))  # by counter: retransmissions are the same frame
    assert sum(m == Event(2, 0) for m in sent.values()) == 1
    assert sum(isinstance(m, Readings) for m in sent.values()) == 3


def test_full_queue_drops_oldest_readings_and_status_counts_them(
    tmp_path: Path, clock: FakeClock
) -> None:
    config = make_config(retransmit={"ack_timeout_ms": 100000, "max_retries": 3, "queue": 3})
    node, link = make_node(tmp_path, sensors=[FakeSensor()], config=config)
    for _ in range(8):
        settle(node)
        clock.sleep_ms(10_000)
    node.status_cycle()
    status = [m for _, m in opened(link.frames) if isinstance(m, Status)][-1]
    assert status.fields["dropped"] >= 5
    assert status.fields["queue_depth"] == 3


def test_observations_are_chunked_per_frame(tmp_path: Path, clock: FakeClock) -> None:
    devices = [(bytes([2, 0, 0, 0, 0, i]), -60) for i in range(5)]
    node, link = make_node(tmp_path, scanner=FakeScanner(devices))
    settle(node)  # readings, status, the scan window opens, time request
    clock.sleep_ms(1000)  # the window closes
    settle(node)  # the window's sightings, one frame per pass (and retransmissions: no acks)
    sealed = dict(opened(link.frames))  # counter -> message: each frame once
    observations = [m for m in sealed.values() if isinstance(m, Observations)]
    assert [len(o.sightings) for o in observations] == [2, 2, 1]


def test_load_returns_every_field_of_the_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chip = types.SimpleNamespace(unique_id=lambda: bytes.fromhex("a1b2c3d4e5f6"))
    monkeypatch.setitem(sys.modules, "machine", chip)
    path = tmp_path / "edgeveil.json"
    data = {"node_id": NODE_ID, "secret": SECRET.hex(), "zone": "plein"}
    path.write_text(json.dumps(data))
    with pytest.raises(config_mod.ConfigError, match="never deployed: it belongs to no board"):
        config_mod.load(str(path))  # a fresh configuration copied by hand
    data["board"] = "a1b2c3d4e5f6"  # deploy bound it to this chip
    path.write_text(json.dumps(data))
    config = config_mod.Config(data)
    settings = config_mod.load(str(path))
    assert set(vars(config)) == set(config_mod.FIELDS)  # Settings copies all of them
    assert vars(settings) == vars(config)


def test_time_is_asked_for_again_daily_once_synchronised(tmp_path: Path, clock: FakeClock) -> None:
    node, link = make_node(tmp_path, sensors=[FakeSensor()])

    def requests() -> int:  # time requests sealed (each counter once: no acks here)
        return sum(m == Event(6) for m in dict(opened(link.frames)).values())

    settle(node)
    link.inbox.append(TimeSync(1_800_000_000))
    settle(node)
    asked = requests()
    clock.sleep_ms(23 * 3600 * 1000)
    settle(node)
    assert requests() == asked  # not before a day
    clock.sleep_ms(3600 * 1000)
    settle(node)
    assert requests() == asked + 1


class Crowd:
    """A scanner that hears the same devices in every window."""

    def __init__(self, devices: list[tuple[bytes, int]]) -> None:
        self.devices = devices
        self.left: list[tuple[bytes, int]] = []

    def start_window(self, ms: int) -> None:
        self.left = list(self.devices)

    def window_done(self) -> bool:
        return True

    def waiting(self) -> int:
        return len(self.left)

    def take(self, limit: int | None = None) -> list[tuple[bytes, int]]:
        part, self.left = self.left[:limit], self.left[limit:]
        return part


class Pir:
    def __init__(self, triggers: int) -> None:
        self.triggers = triggers

    def triggered(self) -> int:
        return self.triggers


def test_the_status_says_nothing_of_who_was_near(tmp_path: Path, clock: FakeClock) -> None:
    """Security review: frames_sent, retransmissions, dropped and
    queue_depth were counting sightings frames, so their hourly increase told whether and how
    many people were near, past the gateway's protected counts. An hour with nobody and an
    hour with a crowd and movement now give the same status."""

    def an_hour(devices: int, triggers: int) -> dict[str, Any]:
        crowd = [(bytes([2, 0, 0, 0, 0, i]), -60) for i in range(devices)]
        node, link = make_node(
            tmp_path / f"{devices}-{triggers}",
            sensors=[FakeSensor()],
            scanner=Crowd(crowd),
            pir=Pir(triggers),
            config=make_config(retransmit={"ack_timeout_ms": 1000, "max_retries": 3, "queue": 4}),
        )
        for _ in range(60):
            settle(node)
            clock.sleep_ms(60_000)  # nobody acknowledges: retransmissions, drops, a full queue
        node.status_cycle()
        status = [m for _, m in opened(link.frames) if isinstance(m, Status)][-1]
        sent = dict(opened(link.frames)).values()
        assert (devices > 0) == any(isinstance(m, Observations) for m in sent)
        return {k: v for k, v in status.fields.items() if k != "uptime_s"}

    (tmp_path / "0-0").mkdir()
    (tmp_path / "30-1").mkdir()
    nobody = an_hour(0, 0)
    crowd = an_hour(30, 1)
    assert crowd == nobody, (nobody, crowd)
    assert nobody["frames_sent"] > 0 and nobody["dropped"] > 0  # not vacuous


class LinePort:
    """The serial line as SerialLink sees it: bytes written, bytes to read."""

    def __init__(self) -> None:
        self.rx = bytearray()

    def write(self, data: bytes) -> None:
        pass

    def read(self) -> bytes | None:
        data, self.rx = bytes(self.rx), bytearray()
        return data or None


def test_a_time_sync_replayed_after_a_reboot_is_refused(tmp_path: Path) -> None:
    """Security review: the node keeps the gateway's highest counter of a
    time sync or configuration update across reboots (SPEC.md section 10)."""
    keys = NodeKeys(NODE_ID, SECRET)
    window = str(tmp_path / "downlink.window")
    sync = encode_serial(seal(TimeSync(1_800_000_000), 40, keys))
    ack = encode_serial(seal(Ack([1]), 41, keys))
    port = LinePort()
    port.rx += sync + ack
    assert SerialLink(port, keys, window).poll() == [TimeSync(1_800_000_000), Ack([1])]
    assert Path(window).read_text() == "40"  # written before it took effect; the ack is not
    for _reboot in range(2):
        port.rx += sync  # captured on the line, played back to the rebooted node
        assert SerialLink(port, keys, window).poll() == []
    port.rx += sync
    assert SerialLink(port, keys).poll() == [TimeSync(1_800_000_000)]  # what a node forgets


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"node_id": 0}, "node_id: must be a whole number 1..4294967295"),
        ({"secret": "abc"}, "secret: must be 32..128 hex digits"),
        ({"secret": "zz" * 16}, "secret: must contain only hex digits"),
        ({"sensors": [{"type": "bme280", "i2c": 0}]}, 'sensors[0] (bme280): missing "scl"'),
        ({"sensors": [{"type": "dht22"}]}, "sensors[0].type: must be one of"),
        ({"link": {"type": "wifi"}}, 'link.type: must be one of "serial", "lora"'),
        ({"retransmit": {"queue": 100}}, "retransmit.queue: must be 1..48"),
        ({"board": "A1B2"}, "board: must be the bound chip's id in lower-case hex"),
        ({"board": 12}, "board: must be the bound chip's id"),
    ],
)
def test_config_errors_name_the_key(change: dict[str, Any], message: str) -> None:
    with pytest.raises(config_mod.ConfigError, match=re.escape(message)):
        make_config(**change)


def test_a_configuration_bound_to_another_chip_is_refused() -> None:
    """The node seals nothing under an identity bound to another board."""
    bound = make_config(board="a1b2c3d4e5f6")
    config_mod.check_board(bound, bytes.fromhex("a1b2c3d4e5f6"))  # its own chip: fine
    config_mod.check_board(make_config(), b"\x01\x02")  # not bound (by hand, older tools)
    with pytest.raises(config_mod.ConfigError) as refused:
        config_mod.check_board(bound, bytes.fromhex("0000000000ff"))
    assert str(refused.value).startswith(
        f"this configuration (node {NODE_ID}) is bound to board a1b2c3d4e5f6; this is board "
        "0000000000ff: one identity per board, so this board seals nothing under it"
    )


def test_missing_config_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(config_mod.ConfigError, match="provision this node"):
        config_mod.load(str(tmp_path / "edgeveil.json"))


def test_watchdog_is_fed_between_frames_of_a_slow_link(tmp_path: Path, clock: FakeClock) -> None:
    # a LoRa link blocks ~1.3 s per frame (airtime + receive window): a burst of frames in one
    # pass of the scheduler must not run past the watchdog
    class Watchdog:
        def __init__(self) -> None:
            self.starved_ms = 0
            self.last_feed = clock.ms

        def feed(self) -> None:
            self.starved_ms = max(self.starved_ms, clock.ms - self.last_feed)
            self.last_feed = clock.ms

    wdt = Watchdog()
    node, link = make_node(tmp_path, sensors=[FakeSensor()], wdt=wdt)
    slow_send = link.send

    def send(frame: bytes, personal: bool = False) -> None:
        clock.sleep_ms(1300)
        slow_send(frame, personal)

    link.send = send  # type: ignore[method-assign]
    settle(node)  # boot event, readings, status, time request: four frames, one per pass
    assert len(link.frames) >= 4
    wdt.feed()
    assert wdt.starved_ms <= 1300 + 100
