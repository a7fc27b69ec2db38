"""An emulated LoRa packet forwarder: the gateway-hardware side of Semtech's UDP protocol.

What a concentrator gateway (SX1301/SX1302 with Semtech's packet_forwarder or sx1302_hal's
lora_pkt_fwd) sends to a network server, over real UDP with asyncio, protocol version 2
(Lora-net/packet_forwarder PROTOCOL.TXT):

    PUSH_DATA  ver | token | 0x00 | EUI | {"rxpk": [...]}   the frames it received; PUSH_ACK back
               ver | token | 0x00 | EUI | {"stat": {...}}   its statistics, every stat_interval_s
    PULL_DATA  ver | token | 0x02 | EUI                      every keepalive_s, so the server can
                                                             reach it through NAT; PULL_ACK back
    PULL_RESP  ver | token | 0x03 | {"txpk": {...}}         a downlink to send; it answers
    TX_ACK     ver | token | 0x05 | EUI | {"txpk_ack": {"error": "NONE" | "TOO_LATE" | ...}}

Time: "tmst" is the concentrator's free-running 32-bit microsecond counter. Here it is the
simulated time of the channel (firmware/host/radio.py) modulo 2^32, so a txpk's tmst names a
moment on the same clock the channel runs on; `on_downlink(txpk, start_us)` is asked to put
the frame on the air and returns the TX_ACK error ("NONE" when it was scheduled). "time" is UTC
from the `utc_now` function given (wall clock by default).

The gateway EUI is a fresh random EUI-64 with the locally administered bit set (`new_eui()`),
never a real gateway's.

Written from the protocol document, not on top of the gateway's codec (gateway/lora/semtech.py),
on purpose: the end-to-end tests then check two independent implementations of the protocol
against each other, as the COSE tests do with pycose.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .radio import Reception, Transmission

__all__ = [
    "ForwarderStats",
    "PacketForwarder",
    "parse_address",
    "rxpk",
    "new_eui",
]

log = logging.getLogger("edgeveil.emulate.forwarder")

PROTOCOL_VERSION = 2
PUSH_DATA, PUSH_ACK, PULL_DATA, PULL_RESP, PULL_ACK, TX_ACK = range(6)
TMST_WRAP = 1 << 32
# TX_ACK errors (PROTOCOL.TXT section 6)
TX_ERRORS = (
    "NONE",
    "TOO_LATE",
    "TOO_EARLY",
    "COLLISION_PACKET",
    "COLLISION_BEACON",
    "TX_FREQ",
    "TX_POWER",
    "GPS_UNLOCKED",
)
TOO_EARLY_US = 30_000_000  # further ahead than this is refused, as lora_pkt_fwd's JIT queue does


def new_eui() -> bytes:
    """A random EUI-64, locally administered (bit 1 of the first byte): a test value."""
    raw = bytearray(os.urandom(8))
    raw[0] = (raw[0] & 0xFC) | 0x02
    return bytes(raw)


def parse_address(text: str) -> tuple[str, int]:
    """ "host:port" (IPv6 in brackets) -> (host, port); ValueError with a one-line reason."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:1700)")
    return host.strip("[]"), int(port)


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def rxpk(tx: Transmission, reception: Reception, utc: dt.datetime) -> dict[str, Any]:
    """The rxpk object for a frame this gateway received. tmst is the "RX finished" moment
    (PROTOCOL.TXT), so a downlink at tmst + 1 s lands in a LoRaWAN-style RX1 window."""
    radio = tx.radio
    return {
        "time": utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "tmst": tx.end_us % TMST_WRAP,
        "chan": 0,
        "rfch": 0,
        "freq": round(radio.freq_hz / 1e6, 6),
        "stat": 1,
        "modu": "LORA",
        "datr": radio.datr,
        "codr": radio.codr,
        "rssi": round(reception.rssi_dbm),
        # a concentrator's SNR estimate tops out near +13 dB (SX1302); the channel's own SNR
        # of a node next to the gateway is far higher, which no radio reports
        "lsnr": round(min(reception.snr_db, 13.0), 1),
        "size": len(tx.payload),
        "data": base64.b64encode(tx.payload).decode("ascii"),
    }


@dataclass
class ForwarderStats:
    """Counters as the stat object reports them, plus what the server acknowledged."""

    rxnb: int = 0  # frames received by the radio (here: delivered by the channel)
    rxok: int = 0  # of which with a good CRC (all: the channel does not deliver bad ones)
    rxfw: int = 0  # forwarded in PUSH_DATA
    push_sent: int = 0
    push_acked: int = 0
    pull_acked: int = 0
    dwnb: int = 0  # PULL_RESP received
    txnb: int = 0  # downlinks put on the air
    tx_errors: dict[str, int] = field(default_factory=dict)


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, owner: PacketForwarder) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.owner._received(data)

    def error_received(self, exc: Exception) -> None:
        # e.g. ICMP port unreachable while the server is not up yet: keep trying, as a
        # real forwarder does
        log.debug("UDP error: %s", exc)


class PacketForwarder:
    """One emulated concentrator gateway, connected to one server. Use as an async context
    manager; `push(frames)` forwards received frames, `run()` sends keepalives and stats."""

    def __init__(
        self,
        server: tuple[str, int],
        *,
        eui: bytes | None = None,
        now_us: Callable[[], int],
        on_downlink: Callable[[dict[str, Any], int], str] | None = None,
        keepalive_s: float = 5.0,
        stat_interval_s: float = 30.0,
        utc_now: Callable[[], dt.datetime] = _utc_now,
    ) -> None:
        self.server = server
        self.eui = eui if eui is not None else new_eui()
        if len(self.eui) != 8:
            raise ValueError(f"a gateway EUI is 8 bytes, got {len(self.eui)}")
        self.now_us = now_us
        self.on_downlink = on_downlink
        self.keepalive_s = keepalive_s
        self.stat_interval_s = stat_interval_s
        self.utc_now = utc_now
        self.stats = ForwarderStats()
        self._transport: asyncio.DatagramTransport | None = None
        self._push_tokens: set[bytes] = set()
        self._pull_tokens: set[bytes] = set()

    @property
    def eui_hex(self) -> str:
        return self.eui.hex().upper()

    async def __aenter__(self) -> PacketForwarder:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), remote_addr=self.server
        )
        self._transport = transport
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    # -- upstream ----------------------------------------------------------------------------

    def push(self, frames: list[tuple[Transmission, Reception]]) -> None:
        """Forward frames this gateway received in one PUSH_DATA."""
        if not frames:
            return
        utc = self.utc_now()
        self.stats.rxnb += len(frames)
        self.stats.rxok += len(frames)
        self.stats.rxfw += len(frames)
        self._push({"rxpk": [rxpk(tx, rx, utc) for tx, rx in frames]})

    def push_stat(self) -> None:
        s, acked = self.stats, self.stats.push_acked
        self._push(
            {
                "stat": {
                    "time": self.utc_now().strftime("%Y-%m-%d %H:%M:%S GMT"),
                    "rxnb": s.rxnb,
                    "rxok": s.rxok,
                    "rxfw": s.rxfw,
                    "ackr": round(100.0 * acked / s.push_sent, 1) if s.push_sent else 0.0,
                    "dwnb": s.dwnb,
                    "txnb": s.txnb,
                }
            }
        )

    def pull(self) -> None:
        token = os.urandom(2)
        self._pull_tokens.add(token)
        self._send(bytes([PROTOCOL_VERSION]) + token + bytes([PULL_DATA]) + self.eui)

    def _push(self, body: dict[str, Any]) -> None:
        token = os.urandom(2)
        self._push_tokens.add(token)
        self.stats.push_sent += 1
        payload = json.dumps(body, separators=(",", ":")).encode()
        self._send(bytes([PROTOCOL_VERSION]) + token + bytes([PUSH_DATA]) + self.eui + payload)

    def _send(self, datagram: bytes) -> None:
        if self._transport is None:
            raise RuntimeError("the forwarder is not started (use it as an async context)")
        self._transport.sendto(datagram)

    async def run(self) -> None:
        """Keepalives (PULL_DATA) and statistics until cancelled."""
        next_stat = self.stat_interval_s
        waited = 0.0
        while True:
            self.pull()
            await asyncio.sleep(self.keepalive_s)
            waited += self.keepalive_s
            if waited >= next_stat:
                next_stat += self.stat_interval_s
                self.push_stat()

    # -- downstream --------------------------------------------------------------------------

    def _received(self, data: bytes) -> None:
        if len(data) < 4 or data[0] not in (1, 2):
            log.warning("server sent a datagram that is not Semtech UDP; ignored")
            return
        token, kind = data[1:3], data[3]
        if kind == PUSH_ACK and token in self._push_tokens:
            self._push_tokens.discard(token)
            self.stats.push_acked += 1
        elif kind == PULL_ACK and token in self._pull_tokens:
            self._pull_tokens.discard(token)
            self.stats.pull_acked += 1
        elif kind == PULL_RESP:
            self.stats.dwnb += 1
            error = self._downlink(data[4:])
            self.stats.tx_errors[error] = self.stats.tx_errors.get(error, 0) + 1
            if error == "NONE":
                self.stats.txnb += 1
            if data[0] >= 2:  # version 1 has no TX_ACK
                ack = json.dumps({"txpk_ack": {"error": error}}, separators=(",", ":"))
                self._send(bytes([data[0]]) + token + bytes([TX_ACK]) + self.eui + ack.encode())

    def _downlink(self, body: bytes) -> str:
        try:
            txpk = json.loads(body)["txpk"]
            if not isinstance(txpk, dict):
                raise TypeError("txpk is not an object")
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("PULL_RESP without a usable txpk (%s); answered TX_FREQ", exc)
            return "TX_FREQ"  # the protocol has no error for a malformed txpk
        start = self._start_us(txpk)
        if isinstance(start, str):
            return start
        if self.on_downlink is None:
            return "TX_FREQ"
        try:
            return self.on_downlink(txpk, start)
        except (ValueError, KeyError, TypeError) as exc:  # a txpk the radio cannot send
            log.warning("downlink not transmitted: %s", exc)
            return "TX_FREQ"

    def _start_us(self, txpk: dict[str, Any]) -> int | str:
        """When to send a txpk on the simulated clock, or the TX_ACK error why not."""
        now = self.now_us()
        if txpk.get("imme"):
            return now
        tmst = txpk.get("tmst")
        if not isinstance(tmst, int):
            return "GPS_UNLOCKED"  # "tmms" (GPS time) or no time at all: no GPS here
        # the moment nearest to now whose 32-bit counter reads tmst
        ahead = (tmst - now) % TMST_WRAP
        start = now + ahead if ahead < TMST_WRAP // 2 else now + ahead - TMST_WRAP
        if start < now:
            return "TOO_LATE"
        if start - now > TOO_EARLY_US:
            return "TOO_EARLY"
        return start
