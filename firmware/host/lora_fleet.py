"""Emulated LoRa nodes on a simulated radio channel, heard by emulated packet forwarders that
send what they receive to a gateway over real UDP (Semtech protocol).

    fleet = LoraFleet(200, gateways=2, servers=[("127.0.0.1", 1700)], seed=1)
    fleet.write_registry(path)              # the gateway imports it (mode 0600: secrets)
    report = await fleet.run(duration_s=300, speed=None)   # as fast as the gateway keeps up
    report.sent, report.delivered, report.delivery_ratio, report.losses

The shape, and why: a node here is the node's radio side, not a whole board. Each has a fresh
identity (node id and secret from os.urandom), a place on the map, a SimModem
(firmware/host/sim/lora_modem.py, micropython-lib's `lora` API) and seals its readings with the
same protocol/ code the firmware runs, with a frame counter of its own. Running the whole
firmware application per node (the serial `Fleet` starts one process per board) costs a process
and ~30 MB each; 200 of them in simulated time would need one shared clock across processes.
In one process, one event queue drives every node in simulated time, which can run faster than
real time (tests, benchmarks) or at the pace of the wall clock (`edgeveil emulate`). For the
whole firmware on LoRa (a few boards, real time), see firmware/host/medium.py: board processes
whose `lora` modem transmits into a RadioMedium, which shares place_gateway() and
downlink_handler() with this fleet.

Traffic: each node sends a readings frame every `reading_interval` seconds (first at a random
phase, then with +-10 % jitter, as independent boards drift apart) and never more often than
the EU868 1 % duty cycle allows for its airtime (ETSI EN 300 220, sub-band 868.0-868.6 MHz).
After each frame it listens in an RX1-style window (1 s after the end of the frame, on the same
channel, inverted IQ) and verifies what it hears with its keys (acknowledgements, time).

The channel decides what each gateway receives (firmware/host/radio.py); every gateway that
received a frame forwards it (the network server deduplicates). The report counts a frame as
delivered if at least one gateway received it.
"""

from __future__ import annotations

import asyncio
import base64
import heapq
import json
import math
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol import NodeKeys, Readings, RemoteProtocolError, open_frame, parse_header, seal
from protocol.quantities import quantity_id

from .fleet import REGISTRY_FORMAT, REGISTRY_VERSION, write_private
from .forwarder import PacketForwarder, new_eui
from .radio import (
    BELOW_SENSITIVITY,
    HATA_URBAN_868,
    Channel,
    PathLoss,
    Radio,
    Transmission,
    airtime_us,
)
from .sim.lora_modem import RxPacket, SimModem, SimulatedTime

__all__ = ["LoraFleet", "LoraGateway", "LoraNode", "LoraReport"]

DUTY_CYCLE = 0.01  # EU868 sub-band g1 (868.0-868.6 MHz)
RX_DELAY_US = 1_000_000  # RX1 opens 1 s after the end of the uplink (as LoRaWAN class A)
RX_WINDOW_MS = 1000
_TEMPERATURE, _HUMIDITY, _PRESSURE = (
    quantity_id(n) for n in ("temperature", "humidity", "pressure")
)


@dataclass
class LoraNode:
    index: int
    node_id: int
    secret: bytes
    zone: str
    x_m: float
    y_m: float
    modem: SimModem
    keys: NodeKeys
    counter: int = 0
    sent: list[int] = field(default_factory=list)  # frame counters, in order
    heard: list[Any] = field(default_factory=list)  # verified downlink messages
    rejected: int = 0  # downlinks that did not verify
    busy_until_us: int = 0

    @property
    def name(self) -> str:
        return f"node-{self.node_id}"

    def registry_entry(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "secret": self.secret.hex(), "zone": self.zone}

    def next_frame(self, rng: random.Random) -> bytes:
        """A sealed readings frame with plausible values, under the next frame counter."""
        values = {
            _TEMPERATURE: 180 + rng.randrange(80),  # 0.1 degC
            _HUMIDITY: 350 + rng.randrange(300),  # 0.1 %RH
            _PRESSURE: 10_050 + rng.randrange(200),  # 10 Pa
        }
        frame = seal(Readings(values), self.counter, self.keys)
        self.sent.append(self.counter)
        self.counter += 1
        return frame


@dataclass
class LoraGateway:
    name: str
    x_m: float
    y_m: float
    eui: bytes
    forwarders: list[PacketForwarder] = field(default_factory=list)


@dataclass
class LoraReport:
    sent: int
    delivered: int  # frames at least one gateway received
    losses: dict[str, int]  # frames no gateway received, by the reason at the nearest one
    delivered_frames: set[tuple[int, int]]  # (node id, frame counter)
    duration_s: float  # simulated
    offered_load: float  # Erlang on the channel: airtime sent / time
    downlinks_heard: int

    @property
    def delivery_ratio(self) -> float:
        return self.delivered / self.sent if self.sent else 0.0


class LoraFleet:
    """N emulated LoRa nodes, G gateways with packet forwarders, one channel (see the module)."""

    def __init__(
        self,
        n: int,
        *,
        gateways: int = 1,
        servers: Sequence[tuple[str, int]] = (),
        sf: int = 9,
        freq_hz: int = 868_100_000,
        area_m: float = 2000.0,
        reading_interval: float = 60.0,
        seed: int = 0,
        path_loss: PathLoss = HATA_URBAN_868,
        capture: bool = True,
        random_loss: float = 0.0,
        keepalive_s: float = 5.0,
    ) -> None:
        if n < 1:
            raise ValueError("a fleet needs at least 1 node")
        if gateways < 1:
            raise ValueError("at least 1 gateway is needed to hear the nodes")
        if not area_m > 0:
            raise ValueError(f"the area must be more than 0 m wide, got {area_m}")
        if not reading_interval > 0:
            raise ValueError(f"the reading interval must be more than 0 s, got {reading_interval}")
        self.radio = Radio(freq_hz, sf=sf)
        self.area_m = area_m
        self.reading_interval = reading_interval
        self.servers = list(servers)
        self.keepalive_s = keepalive_s
        self.rng = random.Random(seed)  # noqa: S311 - a simulated world, not keys
        self.clock = SimulatedTime()
        self.channel = Channel(
            seed=seed, path_loss=path_loss, capture=capture, random_loss=random_loss
        )
        self.gateways = [place_gateway(self.channel, i, gateways, area_m) for i in range(gateways)]
        self.nodes: list[LoraNode] = []
        taken: set[int] = set()
        for i in range(n):
            node_id = _fresh_node_id(taken)
            taken.add(node_id)
            self.nodes.append(self._place_node(i, node_id))
        self._by_name = {node.name: node for node in self.nodes}
        self._transmissions: list[Transmission] = []

    # -- the map -----------------------------------------------------------------------------

    def _place_node(self, index: int, node_id: int) -> LoraNode:
        x, y = self.rng.uniform(0, self.area_m), self.rng.uniform(0, self.area_m)
        name = f"node-{node_id}"
        self.channel.add_node(name, x, y)
        lora_cfg = {
            "freq_khz": self.radio.freq_hz // 1000,
            "sf": self.radio.sf,
            "bw": str(self.radio.bw_hz // 1000),
            "coding_rate": self.radio.coding_rate,
            "invert_iq_rx": True,
        }
        modem = SimModem(self.channel, name, self.clock, lora_cfg)
        secret = os.urandom(16)
        return LoraNode(
            index, node_id, secret, f"lora-{index + 1}", x, y, modem, NodeKeys(node_id, secret)
        )

    def write_registry(self, path: Path) -> None:
        """The nodes as a registry file the gateway imports (mode 0600: it holds secrets)."""
        registry = {
            "format": REGISTRY_FORMAT,
            "version": REGISTRY_VERSION,
            "nodes": [node.registry_entry() for node in self.nodes],
        }
        write_private(path, json.dumps(registry, indent=2) + "\n")

    # -- running -----------------------------------------------------------------------------

    async def run(self, duration_s: float, speed: float | None = 1.0) -> LoraReport:
        """Run `duration_s` simulated seconds. speed 1.0: at the pace of the wall clock;
        None: as fast as possible (yielding to the event loop between frames, so the
        forwarders' UDP traffic flows); any other value: that many times real time."""
        forwarders = [
            PacketForwarder(
                server,
                eui=gw.eui,
                now_us=self.clock.now_us,
                on_downlink=downlink_handler(self.channel, gw.name),
                keepalive_s=self.keepalive_s,
            )
            for gw in self.gateways
            for server in self.servers
        ]
        for fwd in forwarders:
            gw = next(g for g in self.gateways if g.eui == fwd.eui)
            gw.forwarders.append(fwd)
        async with asyncio.TaskGroup() as tg:
            for fwd in forwarders:
                await fwd.__aenter__()
            keepalives = [tg.create_task(fwd.run(), name="forwarder") for fwd in forwarders]
            try:
                await self._simulate(int(duration_s * 1e6), speed)
            finally:
                for task in keepalives:
                    task.cancel()
                for fwd in forwarders:
                    await fwd.__aexit__(None, None, None)
        return self.report(duration_s)

    async def _simulate(self, duration_us: int, speed: float | None) -> None:
        events: list[tuple[int, int, str, int]] = []  # (time, seq, kind, node index)
        seq = 0
        interval_us = int(self.reading_interval * 1e6)
        for node in self.nodes:
            heapq.heappush(events, (self.rng.randrange(interval_us), seq, "send", node.index))
            seq += 1
        wall_start = time.monotonic()
        while events and events[0][0] <= duration_us:
            at, _, kind, index = heapq.heappop(events)
            await self._pace(at, speed, wall_start)
            self.clock.advance_to(at)
            self._forward(self.channel.settle(at))
            node = self.nodes[index]
            if kind == "send":
                airtime = self._send(node)
                gap = max(int(interval_us * self.rng.uniform(0.9, 1.1)), int(airtime / DUTY_CYCLE))
                heapq.heappush(events, (at + gap, seq, "send", index))
                rx_open = at + airtime + RX_DELAY_US
                heapq.heappush(events, (rx_open, seq + 1, "rx-open", index))
                seq += 2
            elif kind == "rx-open":
                node.modem.start_recv(RX_WINDOW_MS)
                close = at + RX_WINDOW_MS * 1000 + airtime_us(self.radio, 255)
                heapq.heappush(events, (close, seq, "rx-close", index))
                seq += 1
            else:
                self._receive(node)
        # let the last frames end, then forward them
        end = max(duration_us, max((t.end_us for t in self._transmissions), default=0))
        await self._pace(end, speed, wall_start)
        self.clock.advance_to(end)
        self._forward(self.channel.settle(end))
        await asyncio.sleep(0.05)  # the last datagrams leave

    async def _pace(self, at_us: int, speed: float | None, wall_start: float) -> None:
        if speed is None:
            await asyncio.sleep(0)
            return
        delay = wall_start + at_us / 1e6 / speed - time.monotonic()
        await asyncio.sleep(max(0.0, delay))

    def _send(self, node: LoraNode) -> int:
        frame = node.next_frame(self.rng)
        node.modem.prepare_send(frame)
        node.modem.start_send()
        tx = node.modem.last_tx
        if tx is None:  # start_send() always puts one on the air
            raise RuntimeError("the modem sent nothing")
        self._transmissions.append(tx)
        return tx.end_us - tx.start_us

    def _receive(self, node: LoraNode) -> None:
        got = node.modem.poll_recv()
        if not isinstance(got, RxPacket):
            node.modem.standby()
            return
        frame = bytes(got)
        try:
            header = parse_header(frame)
            if header.node_id != node.node_id:
                return  # for another node
            node.heard.append(open_frame(frame, node.keys, False, header))
        except RemoteProtocolError:
            node.rejected += 1

    def _forward(self, done: list[Transmission]) -> None:
        if not done:
            return
        for gw in self.gateways:
            frames = [(tx, tx.receptions[gw.name]) for tx in done if gw.name in tx.receptions]
            for fwd in gw.forwarders:
                fwd.push(frames)

    @property
    def transmissions(self) -> list[Transmission]:
        """Every frame the nodes sent, in order, with what the channel made of it."""
        return list(self._transmissions)

    # -- results -----------------------------------------------------------------------------

    def report(self, duration_s: float) -> LoraReport:
        delivered: set[tuple[int, int]] = set()
        losses: Counter[str] = Counter()
        airtime = 0
        for tx in self._transmissions:
            airtime += tx.end_us - tx.start_us
            node = self._by_name[tx.source]
            if tx.receptions:
                counter = parse_header(tx.payload).counter
                delivered.add((node.node_id, counter))
            elif tx.settled:
                nearest = min(
                    self.gateways, key=lambda g: self.channel.distance_m(tx.source, g.name)
                )
                losses[tx.losses.get(nearest.name, BELOW_SENSITIVITY)] += 1
        return LoraReport(
            sent=len(self._transmissions),
            delivered=len(delivered),
            losses=dict(losses),
            delivered_frames=delivered,
            duration_s=duration_s,
            offered_load=airtime / (duration_s * 1e6) if duration_s else 0.0,
            downlinks_heard=sum(len(n.heard) for n in self.nodes),
        )


def place_gateway(channel: Channel, index: int, count: int, area_m: float) -> LoraGateway:
    """Gateway `index` of `count` on the channel's map: one in the centre of the area, more on
    a circle around it (a quarter of the area's side away), evenly; each with a fresh EUI."""
    centre = area_m / 2
    if count == 1:
        x, y = centre, centre
    else:
        angle = 2 * math.pi * index / count
        x = centre + area_m / 4 * math.cos(angle)
        y = centre + area_m / 4 * math.sin(angle)
    eui = new_eui()
    name = f"gw-{eui.hex()}"
    channel.add_gateway(name, x, y)
    return LoraGateway(name, x, y, eui)


def downlink_handler(channel: Channel, gateway: str) -> Callable[[dict[str, Any], int], str]:
    """What a packet forwarder of `gateway` does with a txpk: put it on the channel's air at
    start_us (inverted IQ unless the txpk says otherwise); the TX_ACK error, "NONE" if sent."""

    def on_downlink(txpk: dict[str, Any], start_us: int) -> str:
        datr = str(txpk["datr"])
        sf_text, _, bw_text = datr.removeprefix("SF").partition("BW")
        radio = Radio(
            round(float(txpk["freq"]) * 1e6),
            sf=int(sf_text),
            bw_hz=int(bw_text) * 1000,
            coding_rate=int(str(txpk.get("codr", "4/5")).split("/")[1]),
        )
        payload = base64.b64decode(txpk["data"], validate=True)
        mine = channel.transmissions_from(gateway)
        end = start_us + airtime_us(radio, len(payload))
        if any(t.start_us < end and start_us < t.end_us for t in mine):
            return "COLLISION_PACKET"
        power = txpk.get("powe", 14)
        channel.transmit(
            gateway,
            payload,
            radio,
            start_us,
            tx_power_dbm=float(power),
            inverted_iq=bool(txpk.get("ipol", True)),
        )
        return "NONE"

    return on_downlink


def _fresh_node_id(taken: set[int]) -> int:
    while True:
        node_id = int.from_bytes(os.urandom(4), "big")
        if node_id and node_id not in taken:
            return node_id
