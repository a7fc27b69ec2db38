"""The radio medium: emulated boards running the real node firmware transmit into one channel
simulator (firmware/host/radio.py) owned by the fleet's process, in real time.

Two halves, one on each side of a UDP socket on localhost:

- `MediumModem`, in each board process (python -m firmware.host.node): what the host shim of
  micropython-lib's `lora` package (firmware/host/shims/lora) returns for lora.SX1276(...) and
  lora.SX1262(...), so that the firmware's hardware.build() gets a modem with the same API. It
  is the simulator's SimModem (firmware/host/sim/lora_modem.py: configure, send, recv, IQ
  inversion, RxPacket) on a `RemoteChannel`: each transmission goes to the medium, and each
  look at the air in a receive window is a question to the medium.
- `RadioMedium`, in the fleet's process (`edgeveil emulate --link lora`, tests): the Channel
  with the nodes where the fleet placed them and the gateways, the emulated packet forwarders
  (firmware/host/forwarder.py) that send what the gateways received to a gateway over real UDP
  (Semtech protocol), and the downlinks the gateway asks for (PULL_RESP txpk at tmst), which
  go on the air of the same channel for the node whose receive window is open.

Time: every station's time is the host's CLOCK_MONOTONIC in microseconds (time.monotonic_ns()
is one system-wide clock on Linux, the same in every process), so a board stamps each
transmission and receive window with the moment it happened, and the medium places it on the
channel at that moment however late the datagram arrives. Uplinks are settled (collisions
decided, forwarded) SETTLE_LAG_US behind the present so that a datagram a little late still
takes part; the packet forwarders' tmst is the same clock modulo 2^32. The boards' own
crystals (ticks_ms, drift) stay theirs: the modem answers send() with the board's ticks.

The board finds the medium in the environment variable EDGEVEIL_RADIO_MEDIUM (HOST:PORT),
which the fleet runner sets (Fleet(radio_medium=...)); its station on the map is
"node-<node id>" from its configuration. Datagrams are small JSON objects:

    board -> medium  {"op": "tx", "station", "start_us", "radio": {...}, "power", "iq", "data"}
    board -> medium  {"op": "rx", "seq", "station", "from_us", "until_us", "radio", "iq"}
    medium -> board  {"seq", "data" (base64 or null), "start_us", "end_us", "rssi", "snr"}

A board whose medium is not there transmits into the void and hears nothing, as a node whose
gateway is off.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import os
import random
import socket
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from .fleet import ENV_MEDIUM
from .forwarder import PacketForwarder, parse_address
from .radio import (
    BELOW_SENSITIVITY,
    HATA_URBAN_868,
    Channel,
    PathLoss,
    Radio,
    Reception,
    Transmission,
    airtime_us,
)
from .sim.lora_modem import RxPacket, SimModem

__all__ = [
    "ENV_MEDIUM",
    "MediumModem",
    "MediumReport",
    "RadioMedium",
    "RemoteChannel",
    "lora_node_config",
    "station_name",
]

log = logging.getLogger("edgeveil.emulate.medium")

SETTLE_LAG_US = 100_000  # uplinks are decided this far behind the present (late datagrams)
_SETTLE_EVERY_S = 0.02
_REPLY_TIMEOUT_S = 1.0  # a medium that does not answer a receive question: nothing heard


def station_name(node_id: int) -> str:
    return f"node-{node_id}"


def now_us() -> int:
    """The medium's clock: the host's monotonic clock, the same in every process."""
    return time.monotonic_ns() // 1000


def _radio_dict(radio: Radio) -> dict[str, int]:
    return {
        "freq_hz": radio.freq_hz,
        "sf": radio.sf,
        "bw_hz": radio.bw_hz,
        "cr": radio.coding_rate,
        "preamble": radio.preamble,
    }


def _radio(data: Any) -> Radio:
    """A Radio from a datagram's "radio" object; ValueError/KeyError/TypeError if malformed."""
    return Radio(
        int(data["freq_hz"]),
        sf=int(data["sf"]),
        bw_hz=int(data["bw_hz"]),
        coding_rate=int(data["cr"]),
        preamble=int(data["preamble"]),
    )


def lora_node_config(
    config: dict[str, Any],
    *,
    sf: int = 9,
    freq_khz: int = 868_100,
    acks: bool = False,
) -> dict[str, Any]:
    """A fleet node's configuration (fleet.default_config) moved to a LoRa link: an SX1276 wired
    as on a TTGO LoRa32 (SPI 1, SCK 5, MOSI 27, MISO 19, NSS 18, DIO0 26, RESET 14), and the
    sensors a battery LoRa node carries (no BLE scan: its sightings would take most of the
    airtime; no PMS5003: its fan would take most of the battery)."""
    out = dict(config)
    out["link"] = {
        "type": "lora",
        "chip": "sx1276",
        "spi": 1,
        "sck": 5,
        "mosi": 27,
        "miso": 19,
        "cs": 18,
        "dio0": 26,
        "reset": 14,
        "freq_khz": freq_khz,
        "sf": sf,
        "acks": acks,
    }
    out["sensors"] = [s for s in config["sensors"] if s["type"] not in ("ble_scan", "pms5003")]
    return out


# ---------------------------------------------------------------------------------------------
# The board's side


class _HostTime:
    """The modem's clock: the host's monotonic clock (shared with the medium), real sleeps."""

    def now_us(self) -> int:
        return now_us()

    def sleep_us(self, us: int) -> None:
        time.sleep(max(0, us) / 1e6)


class RemoteChannel(Channel):
    """The channel as a board sees it: transmit() and receive() ask the medium. Only this
    board's station is on its local map (SimModem checks its name against it)."""

    def __init__(self, station: str, medium: tuple[str, int]) -> None:
        super().__init__()
        self.add_node(station, 0.0, 0.0)
        self.station = station
        self.medium = medium
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.connect(medium)
        self._sock.settimeout(_REPLY_TIMEOUT_S)
        self._seq = 0
        self._complained = False

    def close(self) -> None:
        self._sock.close()

    def _send(self, message: dict[str, Any]) -> bool:
        try:
            self._sock.send(json.dumps(message, separators=(",", ":")).encode())
        except OSError as exc:  # e.g. refused: the medium is gone
            self._complain(f"cannot reach the radio medium at {self.medium}: {exc}")
            return False
        return True

    def _complain(self, text: str) -> None:
        if not self._complained:  # once: a node keeps trying every few seconds
            self._complained = True
            print("[emulator]", text, file=sys.__stderr__, flush=True)

    def transmit(
        self,
        source: str,
        payload: bytes,
        radio: Radio,
        start_us: int,
        *,
        tx_power_dbm: float | None = None,
        inverted_iq: bool | None = None,
    ) -> Transmission:
        power = self.tx_power_dbm if tx_power_dbm is None else tx_power_dbm
        iq = bool(inverted_iq)
        self._send(
            {
                "op": "tx",
                "station": source,
                "start_us": start_us,
                "radio": _radio_dict(radio),
                "power": power,
                "iq": iq,
                "data": base64.b64encode(payload).decode("ascii"),
            }
        )
        end_us = start_us + airtime_us(radio, len(payload))
        return Transmission(-1, source, bytes(payload), radio, start_us, end_us, power, False)

    def receive(
        self,
        receiver: str,
        radio: Radio,
        from_us: int,
        until_us: int,
        *,
        inverted_iq: bool = True,
    ) -> Transmission | None:
        self._seq += 1
        seq = self._seq
        sent = self._send(
            {
                "op": "rx",
                "seq": seq,
                "station": receiver,
                "from_us": from_us,
                "until_us": until_us,
                "radio": _radio_dict(radio),
                "iq": inverted_iq,
            }
        )
        while sent:
            try:
                reply = json.loads(self._sock.recv(4096))
            except TimeoutError:
                self._complain(f"the radio medium at {self.medium} does not answer")
                return None
            except (OSError, ValueError) as exc:
                self._complain(f"no answer from the radio medium at {self.medium}: {exc}")
                return None
            if reply.get("seq") != seq:
                continue  # the answer to an earlier question that timed out
            if reply.get("data") is None:
                return None
            payload = base64.b64decode(reply["data"])
            tx = Transmission(
                -1,
                "gateway",
                payload,
                radio,
                int(reply["start_us"]),
                int(reply["end_us"]),
                0.0,
                True,
                inverted_iq=inverted_iq,
            )
            tx.receptions[receiver] = Reception(receiver, reply["rssi"], reply["snr"])
            return tx
        return None


class MediumModem(SimModem):
    """micropython-lib's `lora` modem API for an emulated board, on the radio medium. send()
    returns, and received packets carry, the board's own ticks_ms."""

    def __init__(self, node_id: int, medium: str, lora_cfg: dict[str, Any] | None = None) -> None:
        station = station_name(node_id)
        channel = RemoteChannel(station, parse_address(medium))
        super().__init__(channel, station, _HostTime(), lora_cfg)

    def _ticks_ms(self) -> int:
        ticks_ms: Any = getattr(time, "ticks_ms", None)  # the board's clock (board.install_time)
        return int(ticks_ms()) if ticks_ms is not None else super()._ticks_ms()

    def poll_recv(self, rx_packet: RxPacket | None = None) -> RxPacket | bool:
        got = super().poll_recv(rx_packet)
        if isinstance(got, RxPacket):
            got.ticks_ms = self._ticks_ms()  # it ended just now
        return got


# ---------------------------------------------------------------------------------------------
# The fleet's side


@dataclass
class MediumGateway:
    name: str
    x_m: float
    y_m: float
    eui: bytes
    forwarders: list[PacketForwarder]


@dataclass
class MediumReport:
    sent: int  # uplinks the nodes put on the air (settled)
    delivered: int  # of which at least one gateway received
    losses: dict[str, int]  # uplinks no gateway received, by the reason at the nearest one
    downlinks: int  # downlinks the gateways put on the air
    downlinks_heard: int  # received in a node's receive window

    @property
    def delivery_ratio(self) -> float:
        return self.delivered / self.sent if self.sent else 0.0


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, medium: RadioMedium) -> None:
        self.medium = medium
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # a datagram endpoint's

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        reply = self.medium.handle(data)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


class RadioMedium:
    """The channel, the gateways on it and their packet forwarders, serving the boards of a fleet
    over UDP on localhost. An async context manager:

        async with RadioMedium(servers=[("127.0.0.1", 1700)], gateways=1) as medium:
            medium.add_node(node_id, x_m, y_m)      # before the node transmits
            fleet = Fleet(..., radio_medium=medium.address)
            ...
        medium.uplinks, medium.heard, medium.report()
    """

    def __init__(
        self,
        *,
        servers: Sequence[tuple[str, int]] = (),
        gateways: int = 1,
        area_m: float = 2000.0,
        seed: int = 0,
        path_loss: PathLoss = HATA_URBAN_868,
        capture: bool = True,
        random_loss: float = 0.0,
        keepalive_s: float = 5.0,
        listen: tuple[str, int] = ("127.0.0.1", 0),
    ) -> None:
        from .lora_fleet import place_gateway  # noqa: PLC0415 - lora_fleet imports this module

        if gateways < 1:
            raise ValueError("at least 1 gateway is needed to hear the nodes")
        self.servers = list(servers)
        self.area_m = area_m
        self.keepalive_s = keepalive_s
        self.listen = listen
        self.channel = Channel(
            seed=seed, path_loss=path_loss, capture=capture, random_loss=random_loss
        )
        self.gateways = [
            MediumGateway(gw.name, gw.x_m, gw.y_m, gw.eui, [])
            for gw in (place_gateway(self.channel, i, gateways, area_m) for i in range(gateways))
        ]
        self.uplinks: list[Transmission] = []  # every uplink, in the order it started
        self.heard: list[tuple[str, Transmission]] = []  # (node station, downlink) received
        self.rejected = Counter[str]()  # datagrams the medium could not use, by reason
        self._settled_us = 0
        self._udp: asyncio.DatagramTransport | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._unknown_logged: set[str] = set()
        self._heard_ids: set[tuple[str, int]] = set()

    # -- the map -----------------------------------------------------------------------------

    def add_node(self, node_id: int, x_m: float, y_m: float) -> None:
        self.channel.add_node(station_name(node_id), x_m, y_m)

    def random_spot(self, rng: random.Random) -> tuple[float, float]:
        return rng.uniform(0, self.area_m), rng.uniform(0, self.area_m)

    @property
    def address(self) -> str:
        """HOST:PORT of the medium, for the boards (the value of EDGEVEIL_RADIO_MEDIUM)."""
        if self._udp is None:
            raise RuntimeError("the radio medium is not started (use it as an async context)")
        host, port = self._udp.get_extra_info("sockname")[:2]
        return f"{host}:{port}"

    # -- life cycle --------------------------------------------------------------------------

    async def __aenter__(self) -> RadioMedium:
        from .lora_fleet import downlink_handler  # noqa: PLC0415

        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(
            lambda: _Udp(self), local_addr=self.listen
        )
        try:
            for gw in self.gateways:
                for server in self.servers:
                    fwd = PacketForwarder(
                        server,
                        eui=gw.eui,
                        now_us=now_us,
                        on_downlink=downlink_handler(self.channel, gw.name),
                        keepalive_s=self.keepalive_s,
                    )
                    await fwd.__aenter__()
                    gw.forwarders.append(fwd)
                    self._tasks.append(asyncio.create_task(fwd.run(), name="forwarder"))
            self._tasks.append(asyncio.create_task(self._settle_loop(), name="medium"))
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self._settle(now_us())  # what was still on the air is decided and forwarded
        await asyncio.sleep(0.05)  # the last datagrams leave
        for gw in self.gateways:
            for fwd in gw.forwarders:  # kept: their statistics go into the report
                await fwd.__aexit__(None, None, None)
        if self._udp is not None:
            self._udp.close()
            self._udp = None

    async def _settle_loop(self) -> None:
        while True:
            await asyncio.sleep(_SETTLE_EVERY_S)
            self._settle(now_us() - SETTLE_LAG_US)

    def _settle(self, until_us: int) -> None:
        if until_us <= self._settled_us:
            return
        self._settled_us = until_us
        done = self.channel.settle(until_us)
        if not done:
            return
        for gw in self.gateways:
            frames = [(tx, tx.receptions[gw.name]) for tx in done if gw.name in tx.receptions]
            for fwd in gw.forwarders:
                fwd.push(frames)

    # -- the boards' datagrams ---------------------------------------------------------------

    def handle(self, data: bytes) -> bytes | None:
        """One datagram from a board; the reply to send back, if any."""
        try:
            message = json.loads(data)
            op = message["op"]
            station = str(message["station"])
            radio = _radio(message["radio"])
            if op == "tx":
                self._transmit(station, message, radio)
                return None
            if op == "rx":
                return self._receive(station, message, radio)
            raise ValueError(f"unknown op {op!r}")
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            reason = type(exc).__name__
            if not self.rejected[reason]:
                log.warning("radio medium: a datagram it cannot use (%s); ignored", exc)
            self.rejected[reason] += 1
            return None

    def _known(self, station: str) -> bool:
        if station in self.channel.stations:
            return True
        if station not in self._unknown_logged:
            self._unknown_logged.add(station)
            log.warning(
                "radio medium: %s is not on the map (not a node of this fleet); its radio "
                "is not heard and hears nothing",
                station,
            )
        return False

    def _transmit(self, station: str, message: dict[str, Any], radio: Radio) -> None:
        payload = base64.b64decode(message["data"], validate=True)
        if not self._known(station):
            return
        # a datagram later than the settling lag still goes on the air, as late as it must
        start = max(int(message["start_us"]), self._settled_us)
        tx = self.channel.transmit(
            station,
            payload,
            radio,
            start,
            tx_power_dbm=float(message["power"]),
            inverted_iq=bool(message["iq"]),
        )
        self.uplinks.append(tx)

    def _receive(self, station: str, message: dict[str, Any], radio: Radio) -> bytes:
        seq = message["seq"]
        tx = None
        if self._known(station):
            tx = self.channel.receive(
                station,
                radio,
                int(message["from_us"]),
                int(message["until_us"]),
                inverted_iq=bool(message["iq"]),
            )
        if tx is None:
            reply: dict[str, Any] = {"seq": seq, "data": None}
        else:
            reception = tx.receptions[station]
            if tx.end_us <= now_us() and (station, tx.id) not in self._heard_ids:
                self._heard_ids.add((station, tx.id))  # the modem asks until the frame ends
                self.heard.append((station, tx))
            reply = {
                "seq": seq,
                "data": base64.b64encode(tx.payload).decode("ascii"),
                "start_us": tx.start_us,
                "end_us": tx.end_us,
                "rssi": reception.rssi_dbm,
                "snr": reception.snr_db,
            }
        return json.dumps(reply, separators=(",", ":")).encode()

    # -- results -----------------------------------------------------------------------------

    def report(self) -> MediumReport:
        losses: Counter[str] = Counter()
        settled = [tx for tx in self.uplinks if tx.settled]
        for tx in settled:
            if not tx.receptions:
                nearest = min(
                    self.gateways, key=lambda g: self.channel.distance_m(tx.source, g.name)
                )
                losses[tx.losses.get(nearest.name, BELOW_SENSITIVITY)] += 1
        downlinks = sum(fwd.stats.txnb for gw in self.gateways for fwd in gw.forwarders)
        return MediumReport(
            sent=len(settled),
            delivered=sum(1 for tx in settled if tx.receptions),
            losses=dict(losses),
            downlinks=downlinks,
            downlinks_heard=len(self.heard),
        )


def medium_from_environment() -> str:
    """The medium's HOST:PORT for a board, or OSError saying how to provide it."""
    address = os.environ.get(ENV_MEDIUM)
    if not address:
        raise OSError(
            f"no LoRa radio here: {ENV_MEDIUM} is not set (edgeveil emulate --link lora and "
            "Fleet(radio_medium=...) set it for the boards they start)"
        )
    return address
