"""Semtech UDP packet forwarder protocol, server side, sans-IO: datagrams in, events out.

The protocol of Semtech's packet_forwarder and sx1302_hal (PROTOCOL.TXT / PROTOCOL.md,
protocol version 2; version 1, the same without TX_ACK, is accepted too and answered in
version 1). Every datagram starts with a 4-byte header:

    byte 0     protocol version (1 or 2)
    bytes 1-2  random token (echoed in the acknowledgement)
    byte 3     identifier: PUSH_DATA 0x00, PUSH_ACK 0x01, PULL_DATA 0x02, PULL_RESP 0x03,
               PULL_ACK 0x04, TX_ACK 0x05
    bytes 4-11 gateway EUI (PUSH_DATA, PULL_DATA, TX_ACK)
    rest       JSON: {"rxpk": [...], "stat": {...}} (PUSH_DATA), {"txpk_ack": {...}} (TX_ACK)

`parse_datagram()` turns what a gateway sends into a frozen event (PushData, PullData,
TxAck) or raises MalformedDatagram with a reason from REASONS (a bounded metric label) and a
one-line detail. Inside a PUSH_DATA each rxpk is checked on its own: a bad one is listed in
`PushData.rejected` with its reason, the good ones are kept (one corrupt packet must not cost
the others in the same datagram). `push_ack()`, `pull_ack()` and `pull_resp()` build what
the server sends. Nothing here does I/O; the UDP transport (gateway.lora.forwarder) does.

The protocol has no authentication (the documents say so): whoever reaches the UDP port can
send datagrams. Frames inside are sealed end to end, so a forged datagram cannot forge a
reading; the gateway EUI allow-list only keeps strangers' traffic out of the counters.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import secrets
from dataclasses import dataclass
from typing import Any

from .radio import CODING_RATES, DataRate

VERSIONS = (1, 2)
PUSH_DATA = 0x00
PUSH_ACK = 0x01
PULL_DATA = 0x02
PULL_RESP = 0x03
PULL_ACK = 0x04
TX_ACK = 0x05

MAX_DATAGRAM = 65_507  # the largest UDP payload over IPv4
_SERVER_IDENTIFIERS = (PUSH_ACK, PULL_RESP, PULL_ACK)

# Why a datagram (or one rxpk in it) was not taken: bounded, used as metric labels.
REASONS = (
    "too_short",  # shorter than its header
    "bad_version",  # protocol version not 1 or 2
    "unknown_identifier",  # byte 3 is no identifier of the protocol
    "wrong_direction",  # PUSH_ACK, PULL_ACK or PULL_RESP: what a server sends, not a gateway
    "bad_json",  # not UTF-8 JSON, or not an object
    "bad_field",  # a field of the wrong type or out of range
    "missing_field",  # an rxpk without data, freq, datr, modu, stat, rssi or tmst
    "base64",  # rxpk data is not base64
    "size_mismatch",  # rxpk size differs from the decoded data's length
    "crc_error",  # stat -1: the radio's CRC failed (0, no CRC, is taken)
    "not_lora",  # an FSK packet: edgeveil nodes send LoRa only
)

# TX_ACK errors of sx1302_hal (PROTOCOL.md 6) and of the older packet_forwarder v4; anything
# else counts as "other" (bounded labels).
TX_ERRORS = (
    "TOO_LATE",
    "TOO_EARLY",
    "COLLISION_PACKET",
    "COLLISION_BEACON",
    "TX_FREQ",
    "TX_POWER",
    "GPS_UNLOCKED",
)


class MalformedDatagram(Exception):
    """A gateway sent something this protocol does not allow. `reason` is one of REASONS.

    `push`: for a PUSH_DATA whose header (version, token, gateway EUI) is good but whose JSON
    is not, that header: the server acknowledges every PUSH_DATA at once (PROTOCOL.TXT 3.2),
    whatever its content, and the forwarder's `ackr` statistic counts on it."""

    def __init__(
        self, reason: str, detail: str, push: tuple[int, bytes, str] | None = None
    ) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.push = push


@dataclass(frozen=True, slots=True)
class Rxpk:
    """One LoRa packet a concentrator received, with the metadata the forwarder gave."""

    data: bytes
    freq_hz: int
    rate: DataRate
    codr: str
    rssi: int  # dBm: the signal RSSI ("rssis", sx1302) when given, else the channel RSSI
    lsnr: float | None  # dB
    tmst: int  # concentrator microseconds at the end of reception (32-bit, wraps)
    time: str | None = None  # UTC ISO 8601, when the gateway has GPS or NTP time
    chan: int | None = None
    rfch: int | None = None

    def __repr__(self) -> str:
        # the payload is sealed, but a log has no use for it; RSSI can locate a node
        return f"Rxpk({len(self.data)} bytes, {self.rate.datr}, {self.freq_hz} Hz)"


@dataclass(frozen=True, slots=True)
class RejectedRxpk:
    index: int
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class PushData:
    version: int
    token: bytes
    gateway: str  # EUI, 16 upper-case hex digits
    rxpk: tuple[Rxpk, ...]
    rejected: tuple[RejectedRxpk, ...]
    stat: dict[str, Any] | None  # the gateway's status report, as sent


@dataclass(frozen=True, slots=True)
class PullData:
    version: int
    token: bytes
    gateway: str


@dataclass(frozen=True, slots=True)
class TxAck:
    version: int
    token: bytes
    gateway: str
    error: str | None  # None: accepted (no JSON, or error "NONE")
    warning: str | None = None  # e.g. TX_POWER: sent, with the power in `value`
    value: Any = None


Event = PushData | PullData | TxAck


@dataclass(frozen=True, slots=True)
class Txpk:
    """A LoRa packet for a gateway to send: at concentrator time `tmst`, or at once."""

    data: bytes
    freq_hz: int
    rate: DataRate
    power_dbm: int
    tmst: int | None = None  # None: "imme" (send immediately)
    codr: str = "4/5"
    ipol: bool = True  # inverted IQ, as downlinks are: nodes do not hear each other's uplinks
    rfch: int = 0

    def to_json(self) -> dict[str, Any]:
        txpk: dict[str, Any] = {"imme": True} if self.tmst is None else {"tmst": self.tmst}
        txpk.update(
            freq=round(self.freq_hz / 1e6, 6),
            rfch=self.rfch,
            powe=self.power_dbm,
            modu="LORA",
            datr=self.rate.datr,
            codr=self.codr,
            ipol=self.ipol,
            size=len(self.data),
            data=base64.b64encode(self.data).decode("ascii"),
        )
        return {"txpk": txpk}


# -- parsing ---------------------------------------------------------------------------------


def parse_datagram(datagram: bytes) -> Event:
    """A gateway's datagram as an event; MalformedDatagram (with a reason) if it is not one."""
    if len(datagram) < 4:
        raise MalformedDatagram("too_short", f"{len(datagram)} bytes, a header has 4")
    version, identifier = datagram[0], datagram[3]
    token = bytes(datagram[1:3])
    if version not in VERSIONS:
        raise MalformedDatagram("bad_version", f"protocol version {version}, expected 1 or 2")
    if identifier in _SERVER_IDENTIFIERS:
        raise MalformedDatagram(
            "wrong_direction", f"identifier 0x{identifier:02x} is sent by servers, not gateways"
        )
    if identifier not in (PUSH_DATA, PULL_DATA, TX_ACK) or (identifier == TX_ACK and version < 2):
        raise MalformedDatagram(
            "unknown_identifier", f"identifier 0x{identifier:02x} in protocol version {version}"
        )
    if len(datagram) < 12:
        raise MalformedDatagram(
            "too_short", f"{len(datagram)} bytes, this datagram needs 12 (header and gateway EUI)"
        )
    gateway = datagram[4:12].hex().upper()
    body = datagram[12:]
    if identifier == PULL_DATA:
        return PullData(version, token, gateway)
    if identifier == TX_ACK:
        return _tx_ack(version, token, gateway, body)
    try:
        return _push_data(version, token, gateway, _json_object(body))
    except MalformedDatagram as exc:
        exc.push = (version, token, gateway)
        raise


def _json_object(body: bytes) -> dict[str, Any]:
    # some forwarders end the JSON with a NUL (a C string's terminator): tolerated
    text = body.rstrip(b"\x00")
    try:
        value = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedDatagram("bad_json", f"not JSON ({_one_line(exc)})") from None
    except RecursionError:
        raise MalformedDatagram("bad_json", "JSON nested too deeply") from None
    if not isinstance(value, dict):
        raise MalformedDatagram("bad_json", f"JSON root is {type(value).__name__}, not an object")
    return value


def _push_data(version: int, token: bytes, gateway: str, root: dict[str, Any]) -> PushData:
    items = root.get("rxpk", [])
    if not isinstance(items, list):
        raise MalformedDatagram("bad_field", "rxpk is not an array")
    stat = root.get("stat")
    if stat is not None and not isinstance(stat, dict):
        raise MalformedDatagram("bad_field", "stat is not an object")
    good: list[Rxpk] = []
    rejected: list[RejectedRxpk] = []
    for index, item in enumerate(items):
        try:
            good.append(parse_rxpk(item))
        except MalformedDatagram as exc:
            rejected.append(RejectedRxpk(index, exc.reason, exc.detail))
    return PushData(version, token, gateway, tuple(good), tuple(rejected), stat)


def parse_rxpk(item: object) -> Rxpk:
    """One rxpk object; MalformedDatagram naming the first problem."""
    if not isinstance(item, dict):
        raise MalformedDatagram("bad_field", "an rxpk is not an object")
    for name in ("data", "freq", "datr", "modu", "stat", "rssi", "tmst"):
        if name not in item:
            raise MalformedDatagram("missing_field", f"rxpk without {name!r}")
    stat = _number(item, "stat")
    # 1: CRC OK; 0: no CRC (the node sent none). A frame's own authentication makes the radio
    # CRC unnecessary for safety, so only a failed one (-1) is dropped.
    if stat not in (0, 1):
        raise MalformedDatagram("crc_error", f"CRC status {stat} (1 is OK, 0 is none)")
    if item["modu"] != "LORA":
        raise MalformedDatagram("not_lora", f"modulation {item['modu']!r}")
    datr = item["datr"]
    if not isinstance(datr, str):
        raise MalformedDatagram("bad_field", f"LoRa datr {datr!r} is not text")
    try:
        rate = DataRate.parse(datr)
    except ValueError as exc:
        raise MalformedDatagram("bad_field", str(exc)) from None
    data = _base64(item["data"])
    if "size" in item and _number(item, "size") != len(data):
        raise MalformedDatagram(
            "size_mismatch", f"size {item['size']} but data holds {len(data)} bytes"
        )
    freq = _number(item, "freq")
    if not 100.0 <= freq <= 3000.0:
        raise MalformedDatagram("bad_field", f"freq {freq} MHz out of range")
    tmst = _number(item, "tmst")
    if not isinstance(tmst, int) or not 0 <= tmst <= 0xFFFFFFFF:
        raise MalformedDatagram("bad_field", f"tmst {tmst} is not a 32-bit unsigned integer")
    codr = item.get("codr", "4/5")
    if codr not in CODING_RATES:
        raise MalformedDatagram("bad_field", f"codr {codr!r} is not one of {CODING_RATES}")
    rssi, lsnr = _signal(item)
    when = item.get("time")
    if when is not None and not isinstance(when, str):
        raise MalformedDatagram("bad_field", "time is not text")
    return Rxpk(
        data=data,
        freq_hz=round(freq * 1e6),
        rate=rate,
        codr=codr,
        rssi=int(rssi),
        lsnr=None if lsnr is None else float(lsnr),
        tmst=tmst,
        time=when,
        chan=_optional_int(item, "chan"),
        rfch=_optional_int(item, "rfch"),
    )


def _signal(item: dict[str, Any]) -> tuple[int | float, int | float | None]:
    """(RSSI, SNR) in the ranges a radio can report (SX130x: about -140..+10 dBm, SNR
    -30..+20 dB), with margin: a forged huge value must neither crash the metrics nor win the
    duplicate merge (gateway.lora.dedupe keeps the copy with the best RSSI)."""
    rssi = _number(item, "rssis" if "rssis" in item else "rssi")
    if not -200 <= rssi <= 50:
        raise MalformedDatagram("bad_field", f"rssi {rssi} dBm out of range")
    lsnr = _number(item, "lsnr") if "lsnr" in item else None
    if lsnr is not None and not -50 <= lsnr <= 50:
        raise MalformedDatagram("bad_field", f"lsnr {lsnr} dB out of range")
    return rssi, lsnr


def _number(item: dict[str, Any], name: str) -> int | float:
    value = item[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedDatagram("bad_field", f"{name} {value!r} is not a number")
    if isinstance(value, float) and not math.isfinite(value):  # Python's JSON reads NaN
        raise MalformedDatagram("bad_field", f"{name} is {value}")
    return value


def _optional_int(item: dict[str, Any], name: str) -> int | None:
    if name not in item:
        return None
    value = _number(item, name)
    if not isinstance(value, int):
        raise MalformedDatagram("bad_field", f"{name} {value!r} is not a whole number")
    return value


def _base64(value: object) -> bytes:
    if not isinstance(value, str):
        raise MalformedDatagram("base64", "data is not text")
    # The documents' own examples leave the padding out; restore it, then decode strictly.
    padded = value + "=" * (-len(value) % 4)
    try:
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedDatagram("base64", f"data is not base64 ({_one_line(exc)})") from None


def _tx_ack(version: int, token: bytes, gateway: str, body: bytes) -> TxAck:
    if not body.rstrip(b"\x00"):
        return TxAck(version, token, gateway, None)  # no JSON: no error (PROTOCOL.md 5.5)
    root = _json_object(body)
    ack = root.get("txpk_ack", {})
    if not isinstance(ack, dict):
        raise MalformedDatagram("bad_field", "txpk_ack is not an object")
    error, warning = ack.get("error"), ack.get("warn")
    if error is not None and not isinstance(error, str):
        raise MalformedDatagram("bad_field", "txpk_ack.error is not text")
    if warning is not None and not isinstance(warning, str):
        raise MalformedDatagram("bad_field", "txpk_ack.warn is not text")
    if error == "NONE":  # packet_forwarder v4 says so explicitly
        error = None
    return TxAck(version, token, gateway, error, warning, ack.get("value"))


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:120]


# -- building --------------------------------------------------------------------------------


def push_ack(event: PushData | tuple[int, bytes, str]) -> bytes:
    """The PUSH_ACK for a PUSH_DATA (or the header of one, MalformedDatagram.push): its
    version and token."""
    version, token = (event.version, event.token) if isinstance(event, PushData) else event[:2]
    return bytes((version,)) + token + bytes((PUSH_ACK,))


def pull_ack(event: PullData) -> bytes:
    """The PULL_ACK for a PULL_DATA: its version and token."""
    return bytes((event.version,)) + event.token + bytes((PULL_ACK,))


def pull_resp(txpk: Txpk, version: int = 2, token: bytes | None = None) -> bytes:
    """A PULL_RESP carrying one txpk. Version 2 has a random token (echoed by TX_ACK);
    version 1 leaves those bytes unused (zero)."""
    if token is None:
        token = secrets.token_bytes(2) if version >= 2 else bytes(2)
    body = json.dumps(txpk.to_json(), separators=(",", ":")).encode("ascii")
    return bytes((version,)) + token + bytes((PULL_RESP,)) + body
