"""LoRa links of the gateway: the packet forwarder server over real UDP on localhost, into a
running Gateway and a real Mosquitto; the single-channel SPI transport behind LoRaRF's
interface (a fake chip: no CI machine has the HAT); the [lora] configuration.

The fake packet forwarder below is a few lines of socket code that speaks the protocol as
Semtech's packet_forwarder does (PROTOCOL.md): PULL_DATA to open the downlink route,
PUSH_DATA with rxpk, TX_ACK for each PULL_RESP.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import random
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway import config as config_mod
from gateway import ingest as ingest_mod
from gateway.config import PacketForwarderConfig, SpiRadioConfig
from gateway.errors import ConfigError
from gateway.lora import forwarder as forwarder_mod
from gateway.lora.dedupe import Deduplicator
from gateway.lora.forwarder import ConcentratorClock, ForwarderTransport
from gateway.lora.radio import DataRate, RadioMeta, time_on_air
from gateway.lora.spi import ChipUnavailable, SpiTransport, open_lorarf
from gateway.metrics import Metrics
from gateway.registry import NodeRegistry
from protocol import Ack, NodeKeys, Observations, Readings, open_frame, seal
from protocol.quantities import quantity_id

from .command import edgeveil
from .gateway_harness import delivery_config, running_gateway
from .mosquitto import Mosquitto, subscribed
from .waiting import until

ROOT = Path(__file__).resolve().parent.parent
SITE, GATEWAY_ID = "lora-site", "gw-lora"
EUI_A, EUI_B, EUI_STRANGER = "AA555A0000000001", "AA555A0000000002", "0016C001FF10D3F6"
ILLUMINANCE = quantity_id("illuminance")


class FakeForwarder:
    """One concentrator gateway's packet forwarder, as far as the server can tell."""

    def __init__(self, eui: str, server: tuple[str, int]) -> None:
        self.eui = bytes.fromhex(eui)
        self.server = server
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(10)
        self._token = int.from_bytes(os.urandom(2))

    def token(self) -> bytes:
        self._token = (self._token + 1) & 0xFFFF
        return self._token.to_bytes(2)

    def send(self, datagram: bytes) -> None:
        self.sock.sendto(datagram, self.server)

    def pull_data(self) -> bytes:
        token = self.token()
        self.send(b"\x02" + token + b"\x02" + self.eui)
        return token

    def push_data(self, frame: bytes, *, rssi: int, tmst: int, lsnr: float = 7.0) -> bytes:
        rxpk = {
            "time": "2026-11-28T10:00:00.000000Z",
            "tmst": tmst,
            "chan": 1,
            "rfch": 0,
            "freq": 868.3,
            "stat": 1,
            "modu": "LORA",
            "datr": "SF9BW125",
            "codr": "4/5",
            "rssi": rssi,
            "lsnr": lsnr,
            "size": len(frame),
            "data": base64.b64encode(frame).decode(),
        }
        token = self.token()
        self.send(b"\x02" + token + b"\x00" + self.eui + json.dumps({"rxpk": [rxpk]}).encode())
        return token

    async def receive(self) -> bytes:
        return await asyncio.to_thread(self.sock.recv, 65535)

    def pending(self) -> bytes | None:
        """A datagram already here, or None (without waiting)."""
        self.sock.setblocking(False)
        try:
            return self.sock.recv(65535)
        except BlockingIOError:
            return None
        finally:
            self.sock.settimeout(10)

    def close(self) -> None:
        self.sock.close()


def metric(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def forwarders() -> Iterator[Callable[[str, tuple[str, int]], FakeForwarder]]:
    made: list[FakeForwarder] = []

    def make(eui: str, server: tuple[str, int]) -> FakeForwarder:
        made.append(FakeForwarder(eui, server))
        return made[-1]

    yield make
    for f in made:
        f.close()


# -- the whole path: UDP in, MQTT out, ack back as a txpk ------------------------------------


@pytest.mark.asyncio
async def test_packet_forwarder_uplink_to_mqtt_with_merged_copies_and_ack_in_rx1(  # noqa: PLR0915 - one scenario, step by step
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    forwarders: Callable[[str, tuple[str, int]], FakeForwarder],
    rng: random.Random,
) -> None:
    # RX1 is 1 s after the uplink; a loaded CI machine may take longer than that to store
    # the frame, and the gateway would then rightly not send a late ack. This test is about
    # the protocol, so the lateness check is off here (tested on its own below).
    monkeypatch.setattr(forwarder_mod, "RX1_LEAD_S", -3600.0)
    secret = rng.randbytes(16)  # fresh every run: never a fixed test key
    keys = NodeKeys(0x0A11, secret)
    state = tmp_path / "state"
    with NodeRegistry.open(state / "registry.db") as registry:
        registry.add(keys.node_id, secret)
    lora = PacketForwarderConfig(
        name="lora", host="127.0.0.1", port=0, gateways=(EUI_A, EUI_B), acks=True
    )
    with Mosquitto(tmp_path / "mosquitto") as broker:
        config = delivery_config(
            tmp_path, state, broker, SITE, GATEWAY_ID, packet_forwarders=(lora,)
        )
        topic = f"edgeveil/{SITE}/{GATEWAY_ID}/node/#"
        async with subscribed(broker, topic) as sub, running_gateway(config) as gateway:
            transport = gateway.lora["lora"]
            assert isinstance(transport, ForwarderTransport)
            await until(lambda: transport.address is not None, "listening", 10)
            server = transport.address
            assert server is not None
            near, far = forwarders(EUI_B, server), forwarders(EUI_A, server)
            stranger = forwarders(EUI_STRANGER, server)
            m = gateway.metrics

            # PULL_DATA opens each gateway's downlink route: PULL_ACK with its token
            for fwd in (near, far):
                token = fwd.pull_data()
                assert await fwd.receive() == b"\x02" + token + b"\x04"

            far.send(b"\x02\x00")  # garbage: counted and dropped; the server goes on
            # a PUSH_DATA with a good header and bad JSON: counted, and acknowledged all the
            # same (PROTOCOL.TXT: the server acknowledges every PUSH_DATA at once)
            far.send(b"\x02\x5e\x04\x00" + far.eui + b"{not json")
            assert await far.receive() == b"\x02\x5e\x04\x01"

            # an unknown gateway gets no answer and its frame goes nowhere
            stray = seal(Readings({ILLUMINANCE: 999}), 7, keys)
            stranger.push_data(stray, rssi=-50, tmst=5)

            # one frame, heard by both gateways: the far one first, with the worse RSSI
            frame = seal(Readings({ILLUMINANCE: 421}), 0, keys)
            token_far = far.push_data(frame, rssi=-112, tmst=4_000_000_000, lsnr=-9.5)
            token_near = near.push_data(frame, rssi=-71, tmst=4_294_000_000)
            assert await far.receive() == b"\x02" + token_far + b"\x01"  # PUSH_ACK
            assert await near.receive() == b"\x02" + token_near + b"\x01"

            received = await sub.wait_for(lambda got: len(got) >= 1, timeout=15)
            pack = json.loads(received[0].payload)
            assert {e["n"]: e["v"] for e in pack}["illuminance"] == 421
            assert b"rssi" not in received[0].payload.lower()  # radio data stays inside

            # the ack goes back through the gateway that heard the node best, in RX1
            resp = await near.receive()
            assert resp[0] == 2 and resp[3] == 0x03  # PULL_RESP
            txpk = json.loads(resp[4:])["txpk"]
            assert txpk["tmst"] == (4_294_000_000 + 1_000_000) & 0xFFFFFFFF  # wraps
            assert (txpk["freq"], txpk["datr"], txpk["codr"]) == (868.3, "SF9BW125", "4/5")
            assert (txpk["ipol"], txpk["powe"], txpk["modu"]) == (True, 14, "LORA")
            downlink = base64.b64decode(txpk["data"])
            assert txpk["size"] == len(downlink)
            ack = open_frame(downlink, keys, False)
            assert isinstance(ack, Ack) and ack.counters == [0]
            assert far.pending() is None  # one downlink, from one gateway

            # TX_ACK for it: accepted; then one reporting an error
            near.send(b"\x02" + resp[1:3] + b"\x05" + near.eui + b'{"txpk_ack":{"error":"NONE"}}')
            near.send(b"\x02\x00\x01\x05" + near.eui + b'{"txpk_ack":{"error":"TOO_LATE"}}')
            await until(
                lambda: (
                    metric(m, "edgeveil_lora_downlinks_total", port="lora", outcome="TOO_LATE") == 1
                ),
                "TX_ACK errors counted",
                10,
            )
            assert metric(m, "edgeveil_lora_downlinks_total", port="lora", outcome="tx_ok") == 1
            assert metric(m, "edgeveil_lora_downlinks_total", port="lora", outcome="sent") == 1

            assert stranger.pending() is None  # never answered
            assert_counted(m, keys.node_id)


@pytest.mark.asyncio
async def test_a_replayed_uplink_is_acknowledged_again_only_a_few_times(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    forwarders: Callable[[str, tuple[str, int]], FakeForwarder],
    rng: random.Random,
) -> None:
    """Security review: each ack costs a downlink counter and airtime, so copies of
    one frame beyond a node's retries (replays) are counted, not answered."""
    monkeypatch.setattr(forwarder_mod, "RX1_LEAD_S", -3600.0)  # as above: not about lateness
    for gather in ("GATHER_S", "GATHER_LORA_S"):  # each copy is a batch of its own anyway
        monkeypatch.setattr(ingest_mod, gather, 0.02)
    secret = rng.randbytes(16)
    keys = NodeKeys(0x0A12, secret)
    state = tmp_path / "state"
    with NodeRegistry.open(state / "registry.db") as registry:
        registry.add(keys.node_id, secret)
    lora = PacketForwarderConfig(
        name="lora", host="127.0.0.1", port=0, gateways=(EUI_A,), acks=True, dedupe_ms=0
    )
    with Mosquitto(tmp_path / "mosquitto") as broker:
        config = delivery_config(
            tmp_path, state, broker, SITE, GATEWAY_ID, packet_forwarders=(lora,)
        )
        async with running_gateway(config) as gateway:
            transport = gateway.lora["lora"]
            await until(lambda: transport.address is not None, "listening", 10)
            assert transport.address is not None
            gw = forwarders(EUI_A, transport.address)
            gw.pull_data()
            await gw.receive()  # PULL_ACK
            frame = seal(Readings({ILLUMINANCE: 7}), 3, keys)
            copies = 2 + ingest_mod.MAX_REACKS + 5
            kinds: list[int] = []

            def answered() -> int:
                while (datagram := gw.pending()) is not None:
                    kinds.append(datagram[3])
                return kinds.count(0x03)

            for i in range(copies):
                gw.push_data(frame, rssi=-80, tmst=1_000_000 * (i + 1))
                await until(
                    lambda i=i: metric(
                        gateway.metrics, "edgeveil_frames_total", port="lora",
                        node=str(keys.node_id), outcome="duplicate" if i else "accepted",
                    ) == max(i, 1),
                    "the copy counted", 10,
                )  # fmt: skip
                if i <= ingest_mod.MAX_REACKS:  # answered before the next copy comes
                    await until(lambda i=i: answered() == i + 1, "the copy answered", 10)
            # a new frame after them: answered after whatever the copies were (groups commit
            # in order), so an answer to a copy would be here by then
            gw.push_data(seal(Readings({ILLUMINANCE: 8}), 4, keys), rssi=-80, tmst=99_000_000)
            await until(lambda: answered() == 2 + ingest_mod.MAX_REACKS, "the new frame", 10)
            assert kinds.count(0x01) == copies + 1  # PUSH_ACK: every datagram
            # PULL_RESP: the first copy's ack, then MAX_REACKS more, then none; then the new one
            assert kinds.count(0x03) == 1 + ingest_mod.MAX_REACKS + 1


def assert_counted(m: Metrics, node_id: int) -> None:
    """What the scenario above leaves in the metrics."""

    def packets(gateway_eui: str, outcome: str) -> float:
        return metric(
            m, "edgeveil_lora_packets_total", port="lora", gateway=gateway_eui, outcome=outcome
        )

    assert packets(EUI_A, "merged") + packets(EUI_B, "merged") == 1
    assert packets(EUI_B, "forwarded") == 1  # with the best copy's metadata
    assert packets(EUI_A, "forwarded") == 0
    outcomes = {
        o: metric(m, "edgeveil_lora_datagrams_total", port="lora", outcome=o)
        for o in ("too_short", "bad_json", "unknown_gateway", "push_data", "pull_data")
    }
    assert outcomes == {
        "too_short": 1,
        "bad_json": 1,
        "unknown_gateway": 1,
        "push_data": 2,
        "pull_data": 2,
    }
    accepted = metric(
        m, "edgeveil_frames_total", port="lora", node=str(node_id), outcome="accepted"
    )
    assert accepted == 1  # the stranger's frame never reached ingest
    # link quality per gateway, never per node
    assert metric(m, "edgeveil_lora_rssi_dbm_count", port="lora", gateway=EUI_A) == 1
    snr = "edgeveil_lora_snr_db_bucket"
    assert metric(m, snr, port="lora", gateway=EUI_A, le="-7.5") == 1  # -9.5 dB
    assert metric(m, snr, port="lora", gateway=EUI_A, le="-10.0") == 0


# -- the transport on its own: downlink decisions ---------------------------------------------


@pytest.mark.asyncio
async def test_downlinks_off_late_taken_or_over_duty_cycle_are_not_sent(
    forwarders: Callable[[str, tuple[str, int]], FakeForwarder],
) -> None:
    got: list[tuple[str, bytes, RadioMeta]] = []
    config = PacketForwarderConfig(  # RX1's rules alone: RX2 has its own test
        name="lora", host="127.0.0.1", port=0, gateways=(EUI_A,), acks=True, dedupe_ms=0, rx2=False
    )
    transport = ForwarderTransport(config, lambda *a: got.append(a))
    task = asyncio.create_task(transport.run())
    try:
        await until(lambda: transport.address is not None, "listening", 10)
        assert transport.address is not None
        gw = forwarders(EUI_A, transport.address)
        gw.push_data(b"\x01\x02\x03", rssi=-90, tmst=10)
        await until(lambda: len(got) == 1, "frame delivered", 10)
        port, data, meta = got[0]
        assert (port, data, meta.link, meta.tmst, meta.rssi) == (
            "lora",
            b"\x01\x02\x03",
            EUI_A,
            10,
            -90,
        )

        assert not await transport.send(b"ack", meta)  # no PULL_DATA yet: no route
        gw.pull_data()
        await gw.receive()
        assert await transport.send(b"ack", meta)
        assert await transport.send(b"sync", meta)  # RX1 takes a second, right after the first
        assert not await transport.send(b"more", meta)  # and no third (SPEC.md section 13)
        late = RadioMeta(
            EUI_A, -90, 5.0, 868_300_000, DataRate(9, 125), "4/5", 20, time.monotonic() - 0.95
        )
        assert not await transport.send(b"ack", late)
        # SF12 in g2 (868.7-869.2 MHz, 0.1 %: 3.6 s an hour): the third 51-byte packet is over
        slow = [
            RadioMeta(
                EUI_A,
                -90,
                5.0,
                869_000_000,
                DataRate(12, 125),
                "4/5",
                10**7 * (i + 1),
                time.monotonic(),
            )
            for i in range(3)  # seconds apart: none overlaps another on the concentrator
        ]
        assert [await transport.send(bytes(51), s) for s in slow] == [True, False, False]
        stats = transport.stats()
        assert stats["downlink:no_route"] == 1
        assert stats["downlink:slot_taken"] == 1
        assert stats["downlink:too_late"] == 1
        assert stats["downlink:duty_cycle"] == 2
        assert stats["downlink:sent"] == 3
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    off = ForwarderTransport(
        PacketForwarderConfig(name="quiet", host="127.0.0.1", port=0, gateways=(EUI_A,)),
        lambda *a: None,
    )
    assert not await off.send(b"ack", meta)  # acks = false (the default): never a downlink
    assert off.stats() == {}


@contextlib.asynccontextmanager
async def downlink_server(
    forwarders: Callable[[str, tuple[str, int]], FakeForwarder],
    metrics: Metrics | None = None,
    on_frame: Callable[[str, bytes, RadioMeta], None] = lambda *_a: None,
    monotonic: Callable[[], float] = time.monotonic,
    **settings: Any,
) -> AsyncIterator[tuple[ForwarderTransport, FakeForwarder]]:
    """A forwarder server with acks on, and gateway EUI_A on its downlink route; `monotonic`
    is its clock (when datagrams come, how old an uplink is)."""
    config = PacketForwarderConfig(
        name="lora",
        host="127.0.0.1",
        port=0,
        gateways=(EUI_A,),
        acks=True,
        dedupe_ms=0,
        **settings,
    )
    transport = ForwarderTransport(config, on_frame, metrics=metrics, monotonic=monotonic)
    task = asyncio.create_task(transport.run())
    try:
        await until(lambda: transport.address is not None, "listening", 10)
        assert transport.address is not None
        gw = forwarders(EUI_A, transport.address)
        gw.pull_data()
        await gw.receive()
        yield transport, gw
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.asyncio
async def test_a_downlink_outside_the_plan_is_never_sent(
    forwarders: Callable[[str, tuple[str, int]], FakeForwarder],
) -> None:
    """Uplinks heard at 915.0, 862.5 and 868.55 MHz get no downlink (the issue's run sent one
    on each); 868.1 MHz does. Nothing refused is charged to the duty cycle."""
    async with downlink_server(forwarders) as (transport, gw):

        def heard(freq_hz: int, tmst: int) -> RadioMeta:
            rate = DataRate(12, 125)
            return RadioMeta(EUI_A, -90, 5.0, freq_hz, rate, "4/5", tmst, time.monotonic())

        assert not await transport.send(bytes(20), heard(915_000_000, 1))
        assert not await transport.send(bytes(20), heard(862_500_000, 2))
        assert not await transport.send(bytes(20), heard(868_550_000, 3))
        assert await transport.send(bytes(20), heard(868_100_000, 4))
        assert gw.pending() is not None and gw.pending() is None  # one PULL_RESP only
        stats = transport.stats()
        assert (stats["downlink:outside_plan"], stats["downlink:crosses_edge"]) == (2, 1)
        assert stats["downlink:sent"] == 1


@pytest.mark.asyncio
async def test_a_downlink_over_the_power_limit_is_never_sent(
    forwarders: Callable[[str, tuple[str, int]], FakeForwarder],
) -> None:
    """A configuration made in code (check-config would refuse it): 20 dBm at 868.1 MHz."""
    async with downlink_server(forwarders, tx_power_dbm=20) as (transport, gw):
        meta = RadioMeta(EUI_A, -90, 5.0, 868_100_000, DataRate(7, 125), "4/5", 1, time.monotonic())
        assert not await transport.send(bytes(20), meta)
        assert transport.stats()["downlink:over_power"] == 1
        assert gw.pending() is None


@pytest.mark.asyncio
async def test_downlinks_on_one_concentrator_never_overlap(
    forwarders: Callable[[str, tuple[str, int]], FakeForwarder],
) -> None:
    """Two uplinks ending 1 ms apart: the second's RX1 would overlap the first's downlink on
    the same concentrator (which would refuse it, COLLISION_PACKET), so it is not sent."""
    async with downlink_server(forwarders, rx2=False) as (transport, _gw):

        def heard(tmst: int) -> RadioMeta:
            rate = DataRate(9, 125)
            return RadioMeta(EUI_A, -90, 5.0, 868_300_000, rate, "4/5", tmst, time.monotonic())

        assert await transport.send(bytes(20), heard(5_000_000))
        assert not await transport.send(bytes(20), heard(5_001_000))  # 1 ms later
        assert await transport.send(bytes(20), heard(5_500_000))  # after the first one's end
        # across the wrap of the 32-bit microsecond counter as well
        assert await transport.send(bytes(20), heard(2**32 - 1_000_050))
        assert not await transport.send(bytes(20), heard(2**32 - 1_000_000 + 40))
        stats = transport.stats()
        assert (stats["downlink:sent"], stats["downlink:overlap"]) == (3, 2)


@pytest.mark.asyncio
async def test_the_duty_cycle_counts_what_the_concentrator_sent(
    forwarders: Callable[[str, tuple[str, int]], FakeForwarder],
) -> None:
    """A downlink the concentrator refuses (TX_ACK COLLISION_PACKET, TOO_LATE ...) gives back
    its duty-cycle charge and its slot; the airtime metric counts what TX_ACK confirmed."""
    metrics = Metrics()
    async with downlink_server(forwarders, metrics=metrics, rx2=False) as (transport, gw):
        rate = DataRate(12, 125)  # SF12 in 868.7-869.2 MHz (0.1 %: 3.6 s an hour)

        def heard(tmst: int) -> RadioMeta:
            return RadioMeta(EUI_A, -90, 5.0, 869_000_000, rate, "4/5", tmst, time.monotonic())

        def tx_ack(token: bytes, error: str) -> None:
            body = json.dumps({"txpk_ack": {"error": error}}).encode()
            gw.send(b"\x02" + token + b"\x05" + gw.eui + body)

        def airtime() -> float:
            name = "edgeveil_lora_downlink_airtime_seconds_total"
            return metric(metrics, name, port="lora", gateway=EUI_A)

        assert await transport.send(bytes(51), heard(10_000_000))
        first = await gw.receive()
        assert not await transport.send(bytes(51), heard(20_000_000))  # the budget is used
        tx_ack(first[1:3], "COLLISION_PACKET")  # ... by a downlink that never went out
        await until(lambda: transport.stats().get("downlink:COLLISION_PACKET") == 1, "ack", 5)
        assert airtime() == 0
        assert await transport.send(bytes(51), heard(30_000_000))  # the budget came back
        second = await gw.receive()
        tx_ack(second[1:3], "NONE")
        await until(lambda: transport.stats().get("downlink:tx_ok") == 1, "tx_ok", 5)
        assert airtime() == pytest.approx(time_on_air(51, rate), rel=1e-6)


def test_the_concentrator_clock_tells_a_late_uplink_from_a_fresh_one() -> None:
    clock = ConcentratorClock()
    assert clock.received(1_000_000, 100.0) == 100.0
    assert clock.received(2_000_000, 101.002) == pytest.approx(101.0)  # 2 ms slower on the way
    # ended 50 ms after the first, but here 1 s after it: 0.95 s old on arrival
    assert clock.received(1_050_000, 101.0) == pytest.approx(100.05)
    # across the wrap of the 32-bit counter (every 71.6 minutes)
    wrap = ConcentratorClock()
    wrap.received(2**32 - 500_000, 10.0)
    assert wrap.received(500_000, 11.0) == pytest.approx(11.0)  # 1 s later, not 71 minutes
    assert wrap.received(2**32 - 400_000, 11.5) == pytest.approx(10.1)  # a late one from before
    # the concentrator restarted: its counter began again, the estimate starts afresh
    assert wrap.received(3_000, 20.0) == 20.0
    assert wrap.received(1_003_000, 21.0) == pytest.approx(21.0)


class FakeMonotonic:
    """A forwarder server's clock that moves only when the test moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.asyncio
async def test_an_uplink_too_old_for_rx1_is_answered_in_rx2_or_not_at_all(
    forwarders: Callable[[str, tuple[str, int]], FakeForwarder],
) -> None:
    """A PUSH_DATA held up on the way: its rxpk ended 50 ms after the previous one but arrives
    0.95 s after it, too late for RX1 (the issue's concentrator said TOO_LATE): answered in
    RX2 a second later. One held up 1.95 s misses RX2 as well: not answered."""
    got: list[RadioMeta] = []
    clock = FakeMonotonic()

    def heard(_port: str, _frame: bytes, meta: RadioMeta) -> None:
        got.append(meta)

    async with downlink_server(forwarders, on_frame=heard, monotonic=clock) as (transport, gw):
        gw.push_data(b"\x01", rssi=-90, tmst=7_000_000)
        await gw.receive()  # PUSH_ACK
        await until(lambda: len(got) == 1, "the first uplink", 5)
        clock.now += 1.0  # it ended 50 ms after the first: 0.95 s old on arrival
        gw.push_data(b"\x02", rssi=-90, tmst=7_050_000)
        await gw.receive()
        await until(lambda: len(got) == 2, "the late uplink", 5)
        assert await transport.send(bytes(10), got[1])
        txpk = json.loads((await gw.receive())[4:])["txpk"]
        assert (txpk["tmst"], txpk["freq"], txpk["datr"]) == (9_050_000, 869.525, "SF12BW125")
        clock.now += 1.05  # ended 50 ms after the second: 1.95 s old, RX2 has passed too
        gw.push_data(b"\x03", rssi=-90, tmst=7_100_000)
        await gw.receive()
        await until(lambda: len(got) == 3, "the later uplink", 5)
        assert not await transport.send(bytes(10), got[2])
        stats = transport.stats()
        assert (stats["downlink:too_late"], stats["downlink:rx2_too_late"]) == (2, 1)
        assert stats["downlink:rx2_sent"] == 1 and "downlink:sent" not in stats


@pytest.mark.asyncio
async def test_rx2_carries_what_rx1_cannot(
    forwarders: Callable[[str, tuple[str, int]], FakeForwarder],
) -> None:
    """RX1 refused for its sub-band's duty cycle or an overlap: the downlink goes in RX2
    (869.525 MHz, SF12, tmst + 2 s), and a second one follows it there; a window whose first
    frame went in RX1 never moves to RX2 (the node does not listen there then); a frame too
    long for SF12 is not sent in RX2; RX2 has a duty cycle of its own (10 %)."""
    async with downlink_server(forwarders) as (transport, gw):

        def heard(freq_hz: int, sf: int, tmst: int) -> RadioMeta:
            rate = DataRate(sf, 125)
            return RadioMeta(EUI_A, -90, 5.0, freq_hz, rate, "4/5", tmst, time.monotonic())

        async def txpk() -> dict[str, Any]:
            got: dict[str, Any] = json.loads((await gw.receive())[4:])["txpk"]
            return got

        # SF12 at 869.0 MHz (0.1 %: 3.6 s an hour): the first 51-byte downlink uses it up
        first = heard(869_000_000, 12, 10_000_000)
        assert await transport.send(bytes(51), first)
        assert (await txpk())["tmst"] == 11_000_000
        # the second uplink's RX1 is over the duty cycle: RX2 takes its ack and time sync
        second = heard(869_000_000, 12, 20_000_000)
        assert await transport.send(bytes(30), second)
        ack = await txpk()
        assert (ack["tmst"], ack["freq"], ack["datr"], ack["size"]) == (
            22_000_000,
            869.525,
            "SF12BW125",
            30,
        )
        assert await transport.send(bytes(20), second)
        sync = await txpk()
        after = 22_000_000 + round(time_on_air(30, DataRate(12, 125)) * 1e6) + 25_000
        assert (sync["tmst"], sync["freq"], sync["datr"]) == (after, 869.525, "SF12BW125")
        assert not await transport.send(bytes(20), second)  # no third, in RX2 either
        # the first uplink's window is RX1: a frame it cannot take there is not moved to RX2
        assert not await transport.send(bytes(20), first)
        # too long for SF12 (51 bytes at most): RX1 at SF7 would take it but overlaps the
        # first uplink's downlink; RX2 cannot
        big = heard(868_100_000, 7, 10_000_500)
        assert not await transport.send(bytes(60), big)
        # RX1 overlapping the first uplink's downlink (11.0-13.5 s): RX2 instead
        close = heard(868_100_000, 12, 12_000_000)
        assert await transport.send(bytes(20), close)
        assert (await txpk())["tmst"] == 14_000_000
        stats = transport.stats()
        assert stats["downlink:sent"] == 1
        assert stats["downlink:duty_cycle"] == 2  # the second's ack, the first again
        assert stats["downlink:overlap"] == 2  # big, close
        assert stats["downlink:rx2_sent"] == 3
        assert stats["downlink:rx2_slot_taken"] == 1 and stats["downlink:rx2_too_big"] == 1
        assert "downlink:slot_taken" not in stats

    # the 10 % sub-band holds 360 s an hour: 145 SF12 downlinks of 51 bytes, then no more
    async with downlink_server(forwarders) as (transport, gw):
        per_frame = time_on_air(51, DataRate(12, 125))
        sent = 0
        for i in range(200):  # RX1 at 869.0 MHz takes the first, then its 0.1 % is used up
            sent += await transport.send(bytes(51), heard(869_000_000, 12, 10_000_000 * (i + 1)))
        assert sent == 1 + int(360 // per_frame)
        assert transport.stats()["downlink:rx2_duty_cycle"] == 200 - sent
        assert transport.stats()["downlink:rx2_sent"] == sent - 1


@pytest.mark.asyncio
async def test_held_copies_are_released_when_the_transport_stops() -> None:
    got: list[bytes] = []
    config = PacketForwarderConfig(
        name="lora", host="127.0.0.1", port=0, gateways=(EUI_A,), dedupe_ms=5000
    )
    transport = ForwarderTransport(config, lambda _p, frame, _m: got.append(frame))
    task = asyncio.create_task(transport.run())
    await until(lambda: transport.address is not None, "listening", 10)
    assert transport.address is not None
    gw = FakeForwarder(EUI_A, transport.address)
    try:
        gw.push_data(b"held", rssi=-80, tmst=1)
        await gw.receive()  # PUSH_ACK: the packet is in the merger now
        assert got == []
    finally:
        gw.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert got == [b"held"]  # never lost


@settings(max_examples=100)
@given(
    st.sampled_from([b"", b"\x02\x01\x02\x00" + bytes.fromhex(EUI_A)]),
    st.binary(max_size=150) | st.text(max_size=150).map(str.encode),
)
@example(
    b"\x02\x01\x02\x00" + bytes.fromhex(EUI_A),
    b'{"rxpk":[{"tmst":1,"freq":868.1,"stat":1,"modu":"LORA","datr":"SF7BW125","rssi":-9,'
    b'"data":"AQID"},{"stat":-1}]}',
)
def test_whatever_arrives_is_counted_once_and_never_raises(head: bytes, tail: bytes) -> None:
    # the datagram handler itself, without a socket: it runs in the event loop as UDP calls it
    got: list[bytes] = []

    async def feed() -> dict[str, int]:
        config = PacketForwarderConfig(
            name="fuzz", host="127.0.0.1", port=0, gateways=(EUI_A,), dedupe_ms=0
        )
        transport = ForwarderTransport(config, lambda _p, frame, _m: got.append(frame))
        transport._datagram(head + tail, ("127.0.0.1", 9))  # not merged: released at once
        return transport.stats()

    stats = asyncio.run(feed())
    assert sum(v for k, v in stats.items() if k.startswith("datagram:")) == 1
    assert len(got) == stats.get("packet:forwarded", 0)
    if tail.startswith(b'{"rxpk":[{"tmst":1'):
        assert got == [b"\x01\x02\x03"] and stats["packet:missing_field"] == 1


def _pull_data(eui: str) -> bytes:
    return b"\x02\x00\x01\x02" + bytes.fromhex(eui)


@pytest.mark.asyncio
async def test_a_gateway_eui_is_tied_to_its_address(monkeypatch: pytest.MonkeyPatch) -> None:
    """Security review: quoting an allowed EUI from elsewhere moves nothing."""
    config = PacketForwarderConfig(
        name="lora",
        host="127.0.0.1",
        port=0,
        gateways=(EUI_A, EUI_B),
        fixed_hosts=((EUI_B, "192.168.1.20"),),
    )
    transport = ForwarderTransport(config, lambda *_: None)
    transport._datagram(_pull_data(EUI_A), ("192.168.1.10", 1700))  # first heard: tied there
    for _ in range(20):  # a spoofer on the network
        transport._datagram(_pull_data(EUI_A), ("192.168.1.66", 1700))
    assert transport._routes[EUI_A][0] == ("192.168.1.10", 1700)
    assert transport.stats()["datagram:address_mismatch"] == 20
    monkeypatch.setattr(forwarder_mod, "REBIND_S", 0.0)  # the gateway fell silent: it moved
    transport._datagram(_pull_data(EUI_A), ("192.168.1.11", 1700))
    assert transport._routes[EUI_A][0] == ("192.168.1.11", 1700)
    # a configured address never moves, silent or not
    transport._datagram(_pull_data(EUI_B), ("192.168.1.66", 1700))
    transport._datagram(_pull_data(EUI_B), ("192.168.1.20", 1700))
    assert transport._routes[EUI_B][0] == ("192.168.1.20", 1700)
    assert transport.stats()["datagram:address_mismatch"] == 21


@pytest.mark.asyncio
async def test_tx_ack_text_is_escaped_cut_short_and_logged_once_per_burst(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = PacketForwarderConfig(name="lora", host="127.0.0.1", port=0, gateways=(EUI_A,))
    transport = ForwarderTransport(config, lambda *_: None)
    warn = "TX_POWER\n2026-12-07 ERROR forged line " + "x" * 2000
    ack = json.dumps({"txpk_ack": {"warn": warn, "value": 14}}).encode()
    with caplog.at_level(logging.INFO, logger="edgeveil"):
        for _ in range(50):
            transport._datagram(b"\x02\x00\x01\x05" + bytes.fromhex(EUI_A) + ack, ("h", 1))
    lines = [r.getMessage() for r in caplog.records if "limitation" in r.getMessage()]
    assert len(lines) == 1  # once per burst, not 50 times
    assert "\n" not in lines[0] and "\\n2026" in lines[0]  # escaped: no forged log line
    assert len(lines[0]) < 300
    assert transport.stats()["downlink:tx_ok"] == 50


@pytest.mark.asyncio
async def test_observation_packets_are_forwarded_but_counted_nowhere(rng: random.Random) -> None:
    """Security review: at a site with one node, a concentrator's packet count or
    RSSI sample count would be the node's, and observations go out only when people are near."""
    keys = NodeKeys(0x0A13, rng.randbytes(16))
    got: list[bytes] = []
    metrics = Metrics()
    config = PacketForwarderConfig(
        name="lora", host="127.0.0.1", port=0, gateways=(EUI_A,), dedupe_ms=0
    )
    transport = ForwarderTransport(config, lambda _p, frame, _m: got.append(frame), metrics=metrics)
    seen = seal(Observations(0, [(b"\x02" * 6, -70)]), 1, keys)
    reading = seal(Readings({ILLUMINANCE: 5}), 2, keys)
    for frame in (seen, reading):
        rxpk = {"tmst": 1, "freq": 868.1, "stat": 1, "modu": "LORA", "datr": "SF7BW125",
                "rssi": -70, "lsnr": 5.0, "data": base64.b64encode(frame).decode()}  # fmt: skip
        body = json.dumps({"rxpk": [rxpk]}).encode()
        transport._datagram(b"\x02\x00\x01\x00" + bytes.fromhex(EUI_A) + body, ("h", 1))
    assert got == [seen, reading]  # both go on to ingest
    forwarded = metric(
        metrics, "edgeveil_lora_packets_total", port="lora", gateway=EUI_A, outcome="forwarded"
    )
    assert forwarded == 1  # the reading only
    assert metric(metrics, "edgeveil_lora_rssi_dbm_count", port="lora", gateway=EUI_A) == 1


@pytest.mark.asyncio
async def test_merger_keeps_the_best_copy_drops_late_ones_and_stays_bounded() -> None:
    released: list[tuple[bytes, str, int]] = []
    merger = Deduplicator(lambda f, m: released.append((f, m.link, m.copies)), 30.0, 2)

    def copy(link: str, rssi: float) -> RadioMeta:
        return RadioMeta(link, rssi, None, 868_100_000, DataRate(7, 125), "4/5", 1, 0.0)

    merger.offer(b"a", copy("far", -120))
    merger.offer(b"a", copy("near", -60))
    merger.offer(b"a", copy("mid", -90))
    assert released == [] and merger.pending == 1
    merger.close()  # what the window's end does (and a stopping transport)
    assert released == [(b"a", "near", 3)]
    merger.offer(b"a", copy("slow backhaul", -50))  # after its frame went on: dropped
    assert merger.late == 1
    for frame in (b"x", b"y", b"z"):  # a third pending frame pushes the oldest out early
        merger.offer(frame, copy("near", -70))
    assert released[1] == (b"x", "near", 1) and merger.pending == 2
    merger.close()
    assert [r[0] for r in released] == [b"a", b"x", b"y", b"z"]


# -- single-channel SPI HAT --------------------------------------------------------------------


class FakeChip:
    """LoRaRF's chip interface (SX127x/SX126x) without a chip; 'receives' from a thread, as
    RPi.GPIO calls LoRaRF's interrupt handler from its own thread."""

    RX_CONTINUOUS = 0xFFFFFF
    STATUS_RX_DONE = 7
    STATUS_CRC_ERR = 9

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self._callback: Callable[[], None] | None = None
        self._status = 0
        self._fifo = b""
        self.transmitted = threading.Event()

    def onReceive(self, callback: Callable[[], None]) -> None:
        self._callback = callback

    def request(self, timeout: int) -> bool:
        self.calls.append(("request", timeout))
        return True

    def status(self) -> int:
        return self._status

    def available(self) -> int:
        return len(self._fifo)

    def get(self, length: int) -> bytes:
        data, self._fifo = self._fifo[:length], self._fifo[length:]
        return data

    def purge(self, length: int = 0) -> None:
        self._fifo = b""

    def packetRssi(self) -> float:
        return -97.0

    def snr(self) -> float:
        return 3.25

    def setInvertIq(self, invertIq: bool) -> None:
        self.calls.append(("invert_iq", invertIq))

    def beginPacket(self) -> None:
        self.calls.append(("begin", None))

    def put(self, data: bytes) -> None:
        self.calls.append(("put", data))

    def endPacket(self, timeout: int = 0) -> bool:
        self.calls.append(("end_packet", None))
        return True

    def wait(self, timeout: int = 0) -> bool:
        self.transmitted.set()
        return True

    def end(self) -> None:
        self.calls.append(("end", None))

    def receive(self, status: int, data: bytes) -> None:
        self._status, self._fifo = status, data
        thread = threading.Thread(target=self._callback)
        thread.start()
        thread.join()


SPI = SpiRadioConfig(name="hat", chip="sx1276", freq_hz=868_100_000, sf=9, acks=True)


@pytest.mark.asyncio
async def test_spi_radio_delivers_frames_counts_crc_errors_and_acks_in_rx1() -> None:
    chip = FakeChip()
    got: list[tuple[str, bytes, RadioMeta]] = []
    metrics = Metrics()
    transport = SpiTransport(
        SPI, lambda *a: got.append(a), metrics=metrics, chip_factory=lambda _c: chip
    )
    task = asyncio.create_task(transport.run())
    try:
        await until(lambda: transport.state == "open", "radio open", 10)
        assert chip.calls == [("request", FakeChip.RX_CONTINUOUS)]
        chip.receive(FakeChip.STATUS_CRC_ERR, b"\x00\x01")
        chip.receive(FakeChip.STATUS_RX_DONE, b"sealed frame")
        await until(lambda: len(got) == 1, "frame delivered", 10)
        port, data, meta = got[0]
        assert (port, data, meta.link, meta.rssi, meta.snr) == (
            "hat",
            b"sealed frame",
            "hat",
            -97.0,
            3.25,
        )
        assert (meta.freq_hz, meta.rate, meta.tmst) == (868_100_000, DataRate(9, 125), None)
        assert transport.stats()["packet:crc_error"] == 1
        assert metric(metrics, "edgeveil_lora_rssi_dbm_count", port="hat", gateway="hat") == 1

        assert await transport.send(b"the ack", meta)  # scheduled for RX1
        assert await transport.send(b"a sync", meta)  # right after it, in the same window
        assert not await transport.send(b"a third", meta)  # two frames a window (SPEC.md 13)
        await until(lambda: transport.stats().get("downlink:sent") == 2, "sent counted", 10)
        assert metric(metrics, "edgeveil_lora_downlinks_total", port="hat", outcome="sent") == 2
        one = [
            ("invert_iq", True),
            ("begin", None),
            ("put", b"the ack"),
            ("end_packet", None),
            ("invert_iq", False),
            ("request", FakeChip.RX_CONTINUOUS),  # back to receiving
        ]
        sent = chip.calls[1:]
        assert sent == [*one, *[(c, b"a sync" if c == "put" else a) for c, a in one]]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert chip.calls[-1] == ("end", None)


@pytest.mark.asyncio
async def test_spi_radio_without_the_hat_waits_with_one_line_saying_what_to_do() -> None:
    config = SpiRadioConfig(name="hat", chip="sx1262", freq_hz=868_100_000, bus=5, cs=1)
    with pytest.raises(ChipUnavailable, match=r"^SPI device /dev/spidev5\.1 not found: enable SPI"):
        open_lorarf(config)
    states: list[str] = []
    transport = SpiTransport(config, lambda *a: None, lambda _n, s: states.append(s))
    task = asyncio.create_task(transport.run())
    try:
        await until(lambda: states == ["waiting"], "waiting reported", 10)
        reason = transport.waiting_reason
        assert reason is not None and "raspi-config" in reason and "\n" not in reason
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# -- configuration -----------------------------------------------------------------------------


def test_lora_configuration_parses_with_defaults() -> None:
    config = config_mod.parse(
        {
            "lora": {
                "packet_forwarder": [
                    {"name": "site", "listen": "0.0.0.0:1700", "gateways": ["aa555a0000000000"]}
                ],
                "spi": [
                    {
                        "name": "hat",
                        "chip": "sx1262",
                        "freq_khz": 869525,
                        "sf": 10,
                        "pins": {"reset": 18, "irq": 16, "busy": 20},
                        "dio2_rf_switch": True,
                    }
                ],
            }
        }
    )
    (fwd,) = config.packet_forwarders
    assert (fwd.host, fwd.port, fwd.gateways, fwd.acks, fwd.dedupe_ms) == (
        "0.0.0.0",  # noqa: S104 - concentrators on the site network
        1700,
        ("AA555A0000000000",),
        False,
        200,
    )
    (hat,) = config.spi_radios
    assert (hat.freq_hz, hat.sf, hat.busy_pin, hat.irq_pin, hat.acks) == (
        869_525_000,
        10,
        20,
        16,
        False,
    )


BAD_LORA = [
    (
        {"packet_forwarder": [{"name": "a", "listen": "0.0.0.0:1700"}]},
        "lora.packet_forwarder[0].gateways",
        "list the EUIs",
    ),
    (
        {"packet_forwarder": [{"listen": "0.0.0.0:1700", "gateways": ["AA55"]}]},
        "gateways",
        "16 hex digits",
    ),
    (  # security review: no silent listening on every network
        {"packet_forwarder": [{"gateways": ["AA555A0000000000"]}]},
        "lora.packet_forwarder[0].listen",
        "required",
    ),
    ({"packet_forwarder": [{"gateways": [EUI_A], "listen": "1700"}]}, "listen", "host:port"),
    (
        {"packet_forwarder": [{"gateways": [EUI_A], "listen": ":1700", "acks": "yes"}]},
        "listen",
        "host:port",
    ),
    (
        {"packet_forwarder": [{"gateways": [EUI_A], "listen": "0.0.0.0:1700", "acks": "yes"}]},
        "acks",
        "true or false",
    ),
    (
        {"packet_forwarder": [{"gateways": [EUI_A], "listen": "0.0.0.0:1700", "tx_power": 14}]},
        "tx_power",
        "unknown key",
    ),
    (
        {"packet_forwarder": [{"gateways": [EUI_A + "@"], "listen": "0.0.0.0:1700"}]},
        "gateways",
        '"EUI@192.168.1.20"',
    ),
    ({"spi": [{"chip": "sx1262", "freq_khz": 868100}]}, "lora.spi[0].pins.busy", "BUSY"),
    ({"spi": [{"chip": "sx1276"}]}, "lora.spi[0].freq_khz", "missing"),
    ({"spi": [{"chip": "rfm69", "freq_khz": 868100}]}, "chip", "sx1276, sx1262"),
    ({"spi": [{"freq_khz": 868100, "bw_khz": 62}]}, "bw_khz", "125, 250, 500"),
    (
        {
            "packet_forwarder": [{"name": "x", "listen": "0.0.0.0:1700", "gateways": [EUI_A]}],
            "spi": [{"name": "x", "freq_khz": 868100}],
        },
        "lora",
        "two links are named 'x'",
    ),
]


@pytest.mark.parametrize(("lora", "key", "problem"), BAD_LORA)
def test_bad_lora_configuration_is_one_line_naming_the_key(
    lora: dict[str, Any], key: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        config_mod.parse({"lora": lora}, "gateway.toml")
    message = str(caught.value)
    assert key in message and problem in message and "\n" not in message


def test_check_config_accepts_the_example_with_lora_links() -> None:
    result = edgeveil(
        "gateway", "check-config", "--config", str(ROOT / "examples" / "gateway.toml")
    )
    assert result.returncode == 0, result.stderr
    assert "lora site-lora: packet forwarder server on UDP 0.0.0.0:1700, 1 gateways allowed" in (
        result.stdout
    )
