"""The real node firmware over LoRa: emulated boards (firmware/host/node.py, one process each,
the unchanged firmware on the host shims) whose `lora` modem transmits into the radio medium
(firmware/host/medium.py) -> the channel simulator -> an emulated packet forwarder -> real UDP
on localhost -> the gateway's packet forwarder server (Gateway with [[lora.packet_forwarder]])
-> a real Mosquitto -> a subscriber. Downlinks go back the same way: PULL_RESP txpk at tmst ->
the channel -> the node's RX1 window.

The channel decides what the gateway receives; the tests hold the rest to it: what arrives on
MQTT is exactly what the channel delivered, nothing more (a frame the channel lost in a
collision never arrives), nothing less.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from firmware.host import medium as medium_mod
from firmware.host.fleet import ENV_MEDIUM, Fleet
from firmware.host.medium import (
    MediumModem,
    RadioMedium,
    lora_node_config,
    medium_from_environment,
    now_us,
)
from firmware.host.radio import COLLISION, Radio, Transmission
from firmware.host.sim.lora_modem import RxPacket
from gateway.config import PacketForwarderConfig
from gateway.lora.forwarder import RX1_DELAY_US, RX2_DELAY_US, ForwarderTransport
from gateway.lora.radio import DutyCycle
from gateway.node_config import NodeConfigs
from gateway.registry import NodeRegistry
from gateway.service import Gateway
from protocol import (
    Ack,
    ConfigUpdate,
    Event,
    NodeKeys,
    Readings,
    TimeSync,
    open_frame,
    parse_header,
)

from .command import ROOT, async_child_process
from .gateway_harness import deadline, delivery_config, mid_of, parse_mid, running_gateway
from .mosquitto import Mosquitto, Subscriber, subscribed
from .test_lora_sim import (  # noqa: F401 - server: the fixture, here too
    MiniServer,
    everything_pushed,
    server,
)
from .waiting import until

pytestmark = pytest.mark.slow  # end to end: scripts/test -m "not slow" skips it

SITE = "lora-fw"
GATEWAY_ID = "gw-lora-fw"
BASE = f"edgeveil/{SITE}/{GATEWAY_ID}"


@dataclass
class Site:
    fleet: Fleet
    medium: RadioMedium
    gateway: Gateway
    sub: Subscriber
    keys: dict[str, NodeKeys]  # by station name on the channel
    secrets: dict[str, bytes]  # by station name: the keys of any key epoch come from these

    def uplinks(self, station: str | None = None) -> list[Transmission]:
        return [tx for tx in self.medium.uplinks if station in (None, tx.source)]

    def on_mqtt(self, kind: str = "") -> list[tuple[int, int]]:
        """(node id, frame counter) of each message on MQTT (topics ending in `kind`)."""
        out = []
        for r in self.sub.received:
            if "/node/" in r.topic and r.topic.endswith(kind):
                _, node, counter = parse_mid(mid_of(r))
                out.append((node, counter))
        return out

    def open(self, station: str, frame: bytes) -> Any:
        """A frame of or for the node, opened with its keys of the frame's key epoch."""
        header = parse_header(frame)
        keys = NodeKeys(header.node_id, self.secrets[station], epoch=header.epoch)
        return open_frame(frame, keys, header.uplink, header)

    def readings_sent(self, station: str) -> list[tuple[Transmission, Readings]]:
        """The node's readings frames on the air, opened with its keys."""
        out = []
        for tx in self.uplinks(station):
            message = self.open(station, tx.payload)
            if isinstance(message, Readings):
                out.append((tx, message))
        return out

    def heard(self, station: str) -> list[tuple[Transmission, Any]]:
        """Downlinks for the node that it received in its windows, opened with its keys."""
        node_id = self.keys[station].node_id
        return [
            (tx, self.open(station, tx.payload))
            for s, tx in self.medium.heard
            if s == station and parse_header(tx.payload).node_id == node_id
        ]

    async def check_mqtt_matches_channel(self) -> None:
        """Every uplink that ended a while ago is on MQTT if and only if the channel let the
        gateway receive it; anything later on MQTT was delivered too. (A frame the channel
        lost is never forwarded: that none arrives needs no waiting, only the settling.)"""
        cutoff = now_us() - 500_000
        older = [tx for tx in self.uplinks() if tx.end_us < cutoff]
        await until(  # decided (100 ms behind the present) and forwarded
            lambda: all(tx.settled for tx in older),
            "the channel settled every uplink that ended before the cut-off",
            detail=lambda: [frame_id(tx) for tx in older if not tx.settled],
        )
        delivered = {frame_id(tx) for tx in older if tx.receptions}
        # a frame sent again (acks on) may be lost once and delivered once
        everything = {frame_id(tx) for tx in self.uplinks() if tx.receptions}
        lost = {frame_id(tx) for tx in older} - everything
        await until(
            lambda: delivered <= set(self.on_mqtt()),
            "every frame the channel delivered is on MQTT",
            timeout=10,
            detail=lambda: delivered - set(self.on_mqtt()),
        )
        got = set(self.on_mqtt())
        assert not lost & got, f"frames the channel lost arrived: {lost & got}"
        assert got <= everything, f"on MQTT, never delivered: {got - everything}"


ACK_TIMEOUT_US = 2_000_000  # the firmware's retransmit.ack_timeout_ms (edgeveil_node/config)


async def past_the_ack_timeout(site: Site, acked: dict[str, list[Transmission]]) -> None:
    """Wait until each node has sent two frames after the ack timeout of the last of its
    `acked` frames ran out: a frame due to be sent again would have been one of them (a pass
    of the node's scheduler sends one frame, the oldest one due again when no readings or
    status are due, and its readings come every few seconds)."""

    def past(station: str) -> bool:
        if not acked[station]:
            return True
        timeout_over = max(tx.end_us for tx in acked[station]) + ACK_TIMEOUT_US
        return sum(tx.start_us > timeout_over for tx in site.uplinks(station)) >= 2

    await until(
        lambda: all(past(station) for station in acked),
        "two frames of each node after its ack timeout ran out",
        timeout=20,
        detail=site.medium.report,
    )


def frame_id(tx: Transmission) -> tuple[int, int]:
    """(node id, the frame's sequence as in its message id: key epoch x 2^32 + counter)."""
    header = parse_header(tx.payload)
    return header.node_id, (header.epoch << 32) | header.counter


@contextlib.asynccontextmanager
async def lora_site(
    tmp_path: Path,
    *,
    nodes: int,
    acks: bool,
    sf: int,
    place: Callable[[int], tuple[float, float]],
    reading_s: int = 3,
    firmware_main: Path | None = None,
) -> AsyncIterator[Site]:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    keys: dict[str, NodeKeys] = {}
    secrets: dict[str, bytes] = {}
    medium = RadioMedium(seed=5, keepalive_s=1.0)  # its gateways, started once the server is
    with Mosquitto(tmp_path / "mosquitto") as broker:
        config = delivery_config(
            tmp_path,
            state,
            broker,
            SITE,
            GATEWAY_ID,
            packet_forwarders=(
                PacketForwarderConfig(
                    name="lora",
                    host="127.0.0.1",
                    port=0,  # the system's choice, read back: no port to lose to another
                    gateways=tuple(gw.eui.hex().upper() for gw in medium.gateways),
                    acks=acks,
                ),
            ),
        )
        async with subscribed(broker, f"{BASE}/node/#") as sub, running_gateway(config) as gw:
            server = await until(lambda: gw.lora["lora"].address, "the server listens", 10)
            medium.servers = [server]

            def configure(index: int, cfg: dict[str, Any]) -> dict[str, Any]:
                # on the map and in the gateway's registry before the board's first frame
                node_id, secret = cfg["node_id"], bytes.fromhex(cfg["secret"])
                medium.add_node(node_id, *place(index))
                keys[f"node-{node_id}"] = NodeKeys(node_id, secret)
                secrets[f"node-{node_id}"] = secret
                with NodeRegistry.open(state / "registry.db") as registry:
                    registry.add(node_id, secret, cfg["zone"])
                cfg = lora_node_config(cfg, sf=sf, acks=acks)
                cfg["intervals"].update(reading_s=reading_s, status_s=60)
                return cfg

            async with medium:
                await sub.wait_subscribed()
                # the gateway knows the forwarders' downlink route before the first frame
                await until(
                    lambda: all(f.stats.pull_acked for g in medium.gateways for f in g.forwarders),
                    "the packet forwarders reached the gateway",
                    timeout=10,
                )
                fleet = Fleet(
                    nodes,
                    start_gap_s=0.0 if firmware_main is not None else 0.5,
                    directory=tmp_path / "fleet",
                    configure=configure,
                    radio_medium=medium.address,
                    firmware_main=firmware_main,
                )
                await asyncio.to_thread(fleet.start)
                try:
                    yield Site(fleet, medium, gw, sub, keys, secrets)
                finally:
                    await asyncio.to_thread(fleet.stop)


def near_the_gateway(index: int) -> tuple[float, float]:
    """Nodes 300..500 m from the gateway (the area's centre, 1000/1000): all in range."""
    return 1000.0 + 300 + 100 * index, 1000.0


@pytest.mark.asyncio
@deadline(60)
async def test_firmware_lora_nodes_readings_arrive_on_mqtt_as_the_channel_delivered(
    tmp_path: Path,
) -> None:
    async with lora_site(tmp_path, nodes=3, acks=False, sf=7, place=near_the_gateway) as site:

        def readings_per_node() -> Counter[int]:
            return Counter(node for node, _ in site.on_mqtt("/readings"))

        await until(
            lambda: len(readings_per_node()) == 3 and min(readings_per_node().values()) >= 2,
            "two readings of each of the 3 firmware nodes on MQTT",
            timeout=30,
            detail=lambda: (readings_per_node(), site.medium.report()),
        )
        await site.check_mqtt_matches_channel()
        for station in site.keys:  # sealed by the firmware: they open with the node's keys
            sent = site.readings_sent(station)
            assert len(sent) >= 2, station
            assert all(r.values and r.time is None for _, r in sent)  # no acks: no time sync
        # the LoRa link's health in each node's status (v1.1), as SenML on MQTT: airtime and
        # frames too big; no duty-cycle or budget figures, as the nodes have a motion sensor
        statuses = [r for r in site.sub.received if r.topic.endswith("/status")]
        names = {record["n"] for r in statuses for record in json.loads(r.payload)}
        assert {"airtime", "too_big"} <= names and not {"deferred", "budget_drops"} & names
        # a configuration for a node on a link without downlinks fails at its next uplink,
        # saying why, rather than waiting forever
        node_id = site.keys[next(iter(site.keys))].node_id
        configs = site.gateway.configs
        await configs.submit(node_id, "never", {"reading_interval_s": 60}, source="cli")
        await until(
            lambda: site.gateway.registry.commands(node_id)[0].state == "failed",
            "the command fails",
            timeout=15,
        )
        (command,) = site.gateway.registry.commands(node_id)
        assert command.reason == "lora sends no downlinks (acks = false)" and command.sends == 0


def in_rx1(down: Transmission, uplink_end_us: int) -> bool:
    """Whether a downlink came in the RX1 window of an uplink that ended then: at its start,
    or as the window's second frame, within the first's airtime and a few ms after it."""
    return 0 <= down.start_us - (uplink_end_us + RX1_DELAY_US) < 400_000


@pytest.mark.asyncio
@deadline(60)
async def test_acks_and_time_sync_reach_the_firmware_in_rx1(tmp_path: Path) -> None:
    async with lora_site(tmp_path, nodes=2, acks=True, sf=7, place=near_the_gateway) as site:

        def acked_in_rx1(station: str) -> list[Transmission]:
            """The node's uplinks whose RX1 brought an ack of that very frame."""
            heard = site.heard(station)
            return [
                tx
                for tx in site.uplinks(station)
                if any(
                    in_rx1(down, tx.end_us) and isinstance(m, Ack) and frame_id(tx)[1] in m.counters
                    for down, m in heard
                )
            ]

        def synced_and_acked(station: str) -> bool:
            synced = [tx for tx, m in site.heard(station) if isinstance(m, TimeSync)]
            acked = acked_in_rx1(station)
            # a readings frame sent after the sync carries the node's clock, and was acked
            return bool(synced) and any(
                tx.start_us > synced[0].end_us and message.time is not None and tx in acked
                for tx, message in site.readings_sent(station)
            )

        await until(
            lambda: all(synced_and_acked(s) for s in site.keys),
            "each node heard a time sync and an ack in RX1, and stamps its readings",
            timeout=40,
            detail=site.medium.report,
        )
        acked = {station: acked_in_rx1(station) for station in site.keys}
        await past_the_ack_timeout(site, acked)
        for station in site.keys:
            # a frame acknowledged in its RX1 is never sent again: the ack emptied the queue
            uplinks = site.uplinks(station)
            for tx in acked[station]:
                again = [t for t in uplinks if frame_id(t) == frame_id(tx) and t is not tx]
                assert not [t for t in again if t.start_us > tx.start_us], (
                    f"{station}: frame {frame_id(tx)[1]} acknowledged in RX1, sent again"
                )
            # each downlink the node heard came in RX1: 1 s after one of its uplinks, or
            # right after the first frame of that window (SPEC.md 13: two frames a window)
            ends = [tx.end_us for tx in uplinks]
            windows: dict[int, set[type]] = {}
            for tx, message in site.heard(station):
                end = next((end for end in ends if in_rx1(tx, end)), None)
                assert end is not None, tx
                windows.setdefault(end, set()).add(type(message))
            # the time sync did not displace its frame's ack: both came in one window
            assert any({TimeSync, Ack} <= kinds for kinds in windows.values()), windows
        await site.check_mqtt_matches_channel()


def in_rx2(down: Transmission, uplink_end_us: int) -> bool:
    """Whether a downlink came in the RX2 window of an uplink that ended then (2 s after it,
    or as the window's second frame: within an SF12 frame's airtime and a few ms after it)."""
    return 0 <= down.start_us - (uplink_end_us + RX2_DELAY_US) < 2_600_000


@pytest.mark.asyncio
@deadline(60)
async def test_rx2_carries_acks_and_time_when_rx1_is_refused(tmp_path: Path) -> None:
    """The gateway's RX1 sub-band (868.0-868.6 MHz, 1 %) is used up, as by a busy hour of
    other downlinks: every ack and time sync goes in RX2, 869.525 MHz SF12, 2 s after the
    uplink, where the firmware listens when RX1 brought nothing; its frames are acknowledged
    there and not sent again."""
    async with lora_site(tmp_path, nodes=1, acks=True, sf=7, place=near_the_gateway) as site:
        transport = site.gateway.lora["lora"]
        assert isinstance(transport, ForwarderTransport)
        for gw in site.medium.gateways:  # the hour's 36 s of 868.1 MHz are spent
            duty = transport._duty.setdefault(gw.eui.hex().upper(), DutyCycle())
            assert duty.allow(868_100_000, 36.0)
        station = next(iter(site.keys))

        def acked_in_rx2() -> list[Transmission]:
            heard = site.heard(station)
            return [
                tx
                for tx in site.uplinks(station)
                if any(
                    in_rx2(down, tx.end_us) and isinstance(m, Ack) and frame_id(tx)[1] in m.counters
                    for down, m in heard
                )
            ]

        def synced_and_acked() -> bool:
            synced = [tx for tx, m in site.heard(station) if isinstance(m, TimeSync)]
            return bool(synced) and len(acked_in_rx2()) >= 2

        await until(
            synced_and_acked,
            "a time sync and acks in RX2",
            timeout=40,
            detail=lambda: (
                transport.stats(),
                site.medium.report(),
                [(type(m).__name__, d.start_us) for d, m in site.heard(station)],
                [(frame_id(t), site.open(station, t.payload)) for t in site.uplinks(station)],
            ),
        )
        acked = acked_in_rx2()
        await past_the_ack_timeout(site, {station: acked})
        ends = [tx.end_us for tx in site.uplinks(station)]
        for down, _ in site.heard(station):
            assert down.radio.freq_hz == 869_525_000 and down.radio.sf == 12, down
            assert any(in_rx2(down, end) for end in ends), down
        uplinks = site.uplinks(station)
        for tx in acked:
            again = [t for t in uplinks if frame_id(t) == frame_id(tx) and t.start_us > tx.start_us]
            assert not again, f"frame {frame_id(tx)[1]} acknowledged in RX2, sent again"
        stats = transport.stats()
        assert stats["downlink:rx2_sent"] >= 3 and "downlink:sent" not in stats
        # each window's first frame was refused in RX1; a second one followed it in RX2
        assert 0 < stats["downlink:duty_cycle"] <= stats["downlink:rx2_sent"]
        await site.check_mqtt_matches_channel()


@pytest.mark.asyncio
@deadline(90)
async def test_a_rekey_reaches_a_firmware_lora_node_in_rx1(tmp_path: Path) -> None:
    """`edgeveil gateway nodes rekey` (here: the same registry call from
    another process's connection) reaches the node as a LoRa downlink in RX1; the node moves
    to the new keys, the gateway follows, and the node's readings keep arriving."""
    async with lora_site(tmp_path, nodes=1, acks=True, sf=7, place=near_the_gateway) as site:
        station = next(iter(site.keys))
        node_id = site.keys[station].node_id
        await until(lambda: site.readings_sent(station), "the node reports", timeout=20)
        with NodeRegistry.open(tmp_path / "state" / "registry.db") as registry:
            assert registry.request_rekey(node_id) == 1

        def under_new_keys() -> list[Transmission]:
            return [tx for tx in site.uplinks(station) if parse_header(tx.payload).epoch == 1]

        await until(
            lambda: any(
                isinstance(site.open(station, tx.payload), Readings) for tx in under_new_keys()
            ),
            "the node reports under key epoch 1",
            timeout=40,
            detail=site.medium.report,
        )
        updates = [m for _, m in site.heard(station) if isinstance(m, ConfigUpdate)]
        assert ConfigUpdate(1, {"key_epoch": 1}) in updates  # heard in an RX1 window
        first = min(under_new_keys(), key=lambda tx: parse_header(tx.payload).counter)
        assert parse_header(first.payload).counter == 0
        assert site.open(station, first.payload) == Event(4, 1)  # config_applied, new keys

        # the gateway answers under the new keys from then on, starting with that frame's ack
        def answered_since() -> list[Transmission]:
            return [tx for tx, _ in site.heard(station) if tx.start_us > first.end_us]

        await until(answered_since, "a downlink after the switch", timeout=20)
        assert {parse_header(tx.payload).epoch for tx in answered_since()} == {1}
        # and no key and nonce pair was used twice, in either direction
        pairs: dict[tuple[bytes, bytes], bytes] = {}
        for tx in [*site.uplinks(station), *(tx for s, tx in site.medium.heard if s == station)]:
            header = parse_header(tx.payload)
            keys = NodeKeys(node_id, site.secrets[station], epoch=header.epoch)
            key = keys.uplink_key if header.uplink else keys.downlink_key
            assert pairs.setdefault((key, keys.nonce(header.counter)), tx.payload) == tx.payload
        await site.check_mqtt_matches_channel()


@pytest.mark.asyncio
@deadline(90)
async def test_a_configuration_reaches_a_firmware_lora_node_after_its_uplink(
    tmp_path: Path,
) -> None:
    """A remote configuration (here from another process's registry connection, as
    `edgeveil gateway nodes configure` does) goes to a LoRa node in the receive window of its
    next uplink; the node applies it and its config_applied event comes back."""
    async with lora_site(tmp_path, nodes=1, acks=True, sf=7, place=near_the_gateway) as site:
        station = next(iter(site.keys))
        node_id = site.keys[station].node_id
        await until(lambda: site.readings_sent(station), "the node reports", timeout=20)
        with NodeRegistry.open(tmp_path / "state" / "registry.db") as registry:
            configs = NodeConfigs(registry, site.gateway.topics, publish=None)
            command = await configs.submit(
                node_id, "slower", {"reading_interval_s": 5}, source="cli"
            )
        update = ConfigUpdate(command.version or 0, {"reading_interval_s": 5})

        def answered() -> bool:
            return any(
                site.open(station, tx.payload) == Event(4, command.version)
                for tx in site.uplinks(station)
            )

        await until(answered, "the node's config_applied", timeout=40, detail=site.medium.report)
        assert update in [m for _, m in site.heard(station)]  # heard in a receive window
        await until(
            lambda: site.gateway.registry.commands(node_id)[0].state == "applied",
            "the gateway takes the answer",
            timeout=10,
        )


START_TOGETHER = """\
# Boards switched on by one power supply: the firmware loaded, wait for the file named in the
# environment, then boot at the moment it gives (time.monotonic(), one clock for every
# process) and run the firmware.
import os
import time

from edgeveil_node.app import main

go = os.environ["EDGEVEIL_TEST_BOOT_FILE"]
while not os.path.exists(go):
    time.sleep(0.005)
with open(go) as f:
    start = float(f.read())
time.sleep(max(0.0, start - time.monotonic()))
main()
"""


@pytest.mark.asyncio
@deadline(60)
async def test_two_nodes_that_overlap_lose_their_frames_as_the_channel_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = tmp_path / "boot_together.py"
    script.write_text(START_TOGETHER, encoding="utf-8")
    go = tmp_path / "power-on"
    monkeypatch.setenv("EDGEVEIL_TEST_BOOT_FILE", str(go))

    def same_distance(index: int) -> tuple[float, float]:
        return (1000.0 + 400, 1000.0) if index == 0 else (1000.0 - 400, 1000.0)

    # SF11: a boot event is ~0.7 s on air, far longer than the boards' start-ups differ
    async with lora_site(
        tmp_path,
        nodes=2,
        acks=False,
        sf=11,
        place=same_distance,
        reading_s=30,
        firmware_main=script,
    ) as site:
        # both boards are up (the fleet waited for them), polling for the file: the moment
        # is a little ahead, so that both read it before it comes
        (tmp_path / "power-on.tmp").write_text(repr(time.monotonic() + 0.5), encoding="utf-8")
        (tmp_path / "power-on.tmp").rename(go)
        await until(
            lambda: len(site.uplinks()) >= 2 and all(tx.settled for tx in site.uplinks()[:2]),
            "the boot events of both nodes were on the air",
            timeout=30,
            detail=site.medium.report,
        )
        a, b = site.uplinks()[:2]
        assert a.source != b.source and a.overlaps(b), "the boards did not start together"
        # same distance, same power: neither is 6 dB above the other, both are lost
        for tx in (a, b):
            assert not tx.receptions and set(tx.losses.values()) == {COLLISION}, tx.losses
        await site.check_mqtt_matches_channel()
        assert frame_id(a) not in site.on_mqtt() and frame_id(b) not in site.on_mqtt()
        assert site.medium.report().losses[COLLISION] >= 2


# -- edgeveil emulate --link lora ----------------------------------------------------------------


@pytest.mark.asyncio
@deadline(60)
async def test_emulate_link_lora_runs_firmware_nodes_whose_frames_reach_the_forwarder_server(
    server: MiniServer,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    out = tmp_path / "emulate"
    async with async_child_process(
        sys.executable, "-m", "gateway.cli", "emulate", "--link", "lora", "--nodes", "2",
        "--sf", "7", "--area-m", "500", "--reading-interval", "2", "--duration", "6",
        "--forwarder", f"127.0.0.1:{server.port}", "--out", str(out),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
    ) as proc:  # fmt: skip
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 40)
    assert proc.returncode == 0, stderr
    await everything_pushed(server)  # the datagrams the emulator sent before it exited
    lines = stdout.decode().splitlines()
    # the registry first, before the boards start: a gateway importing it misses no frame
    assert lines[0] == f"registry {out / 'registry.json'}"
    node_lines = [line.split() for line in lines if line.startswith("node ")]
    assert len(node_lines) == 2
    assert all(fields[2].startswith("/dev/pts/") for fields in node_lines)  # the console
    assert "running the node firmware" in stderr.decode()
    registry = json.loads((out / "registry.json").read_text())
    keys = {
        n["node_id"]: NodeKeys(n["node_id"], bytes.fromhex(n["secret"])) for n in registry["nodes"]
    }
    assert set(keys) == {int(fields[1]) for fields in node_lines}
    # what the forwarder sent: frames the firmware sealed (a boot event first), each opening
    # with its node's secret from the registry
    messages: dict[int, list[str]] = {}
    for rx in server.rxpk:
        frame = base64.b64decode(rx["data"])
        header = parse_header(frame)
        message = open_frame(frame, keys[header.node_id], True, header)
        messages.setdefault(header.node_id, []).append(type(message).__name__)
        assert rx["datr"] == "SF7BW125"
    assert set(messages) == set(keys)
    assert all("Readings" in kinds for kinds in messages.values()), messages
    summary = re.search(r"(\d+) frames sent, (\d+) received by a gateway", stderr.decode())
    assert summary is not None, stderr
    assert int(summary[2]) == len(server.rxpk)  # what the channel delivered, and only that
    for node_dir in out.glob("node-*"):
        assert "link lora" in (node_dir / "console.log").read_text()


# -- the medium and the board's modem, in one process --------------------------------------------


class Stamps:
    """A modem's clock (the host's) that keeps every time it told the modem."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.told: list[int] = []

    def now_us(self) -> int:
        self.told.append(self.clock.now_us())
        return self.told[-1]

    def sleep_us(self, us: int) -> None:
        self.clock.sleep_us(us)


@pytest.mark.asyncio
async def test_board_modem_transmits_at_its_start_time_and_hears_a_downlink_in_its_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the medium settles nothing until it stops: a datagram however late keeps its stamp
    # (settling moves a datagram later than SETTLE_LAG_US to the settled present)
    monkeypatch.setattr(medium_mod, "_SETTLE_EVERY_S", 3600.0)
    async with RadioMedium(seed=1) as medium:
        medium.add_node(7, 1300, 1000)
        gw = medium.gateways[0].name
        cfg = {"freq_khz": 868100, "sf": 7, "bw": "125", "invert_iq_rx": True}

        def board() -> tuple[int, Any, Any]:
            modem = MediumModem(7, medium.address, cfg)
            modem.clock = stamps = Stamps(modem.clock)
            modem.send(b"uplink")
            start = stamps.told[0]  # the moment the board put it on the air
            # the window opens; a downlink 0.2 s into it, and one on another SF it does not hear
            modem.start_recv(timeout_ms=1000)
            opened = stamps.told[-1]
            sf7 = modem.radio
            medium.channel.transmit(gw, b"other sf", Radio(sf7.freq_hz, sf=8), opened + 100_000)
            medium.channel.transmit(gw, b"downlink", sf7, opened + 200_000)
            while (got := modem.poll_recv()) is True:  # what recv() does, the window opened
                modem.clock.sleep_us(5_000)
            nothing = modem.recv(timeout_ms=100)
            return start, got, nothing

        start, heard, nothing = await asyncio.to_thread(board)
    (tx,) = medium.uplinks
    assert tx.source == "node-7" and tx.payload == b"uplink"
    assert tx.start_us == start  # stamped by the board, not by the datagram
    assert tx.receptions and not tx.inverted_iq
    assert isinstance(heard, RxPacket) and bytes(heard) == b"downlink"
    expected = medium.channel.receive("node-7", tx.radio, 0, now_us())
    assert expected is not None
    assert heard.rssi == round(expected.receptions["node-7"].rssi_dbm)
    assert nothing is None
    assert [bytes(t.payload) for s, t in medium.heard] == [b"downlink"]


@pytest.mark.asyncio
async def test_medium_ignores_strangers_and_garbage_and_a_board_without_medium_says_why(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async with RadioMedium(seed=1) as medium:
        stranger = MediumModem(99, medium.address, {"sf": 7})
        await asyncio.to_thread(stranger.send, b"not on the map")
        assert await asyncio.to_thread(stranger.recv, 50) is None  # answered, nothing heard
        assert medium.handle(b"{not json") is None
        assert medium.handle(json.dumps({"op": "tx", "station": "x"}).encode()) is None
    assert medium.uplinks == []
    assert sum(medium.rejected.values()) == 2
    assert "node-99 is not on the map" in caplog.text
    with pytest.raises(ValueError, match="Invalid lora_cfg bw"):
        MediumModem(1, "127.0.0.1:9", {"bw": "62.5"})
    monkeypatch.delenv(ENV_MEDIUM, raising=False)
    with pytest.raises(OSError, match=f"no LoRa radio here: {ENV_MEDIUM} is not set"):
        medium_from_environment()
