# The v1 messages: what a sealed frame carries once opened.
#
# Each message maps to one CBOR data item (its "body"), defined in edgeveil.cddl and SPEC.md.
# Bodies are arrays or maps with small unsigned-integer keys: the smallest CBOR that still says
# what it is. Messages are small value objects; `body()` checks them and raises
# LocalProtocolError when this program built a bad one, `from_body()` checks a peer's body and
# raises RemoteProtocolError(MALFORMED).
#
# Runs unchanged on MicroPython: no dataclasses, no typing at run time.

from .errors import LocalProtocolError, Reason, RemoteProtocolError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# Message type codes (3 bits in the frame header).
READINGS = 0
OBSERVATIONS = 1
STATUS = 2
EVENT = 3
ACK = 4
TIME_SYNC = 5
CONFIG_UPDATE = 6

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
UINT32_MAX = 2**32 - 1
MAX_TEXT_BYTES = 32
MAX_SIGHTINGS = 64
MAX_ACKED = 16
MAX_QUANTITY_ID = 63  # the readings bitmask is a CBOR uint of at most 64 bits

# Observation radio types
RADIO_BLE = 0
RADIO_WIFI = 1  # reserved: MicroPython cannot capture Wi-Fi probe requests
RADIO_OTHER = 2

# Status reset causes (MicroPython's machine.reset_cause(), mapped to stable numbers)
RESET_CAUSES = ("unknown", "power_on", "hard", "watchdog", "deep_sleep", "soft", "brownout")

# Event codes
EVENT_CODES = (
    "boot",  # value: reset cause
    "motion",  # value: PIR triggers since the last event
    "sensor_fault",  # value: quantity id of the failing sensor
    "queue_overflow",  # value: frames dropped
    "config_applied",  # value: configuration version
    "config_rejected",  # value: configuration version
    "time_request",  # no value: the node has no valid clock
    "low_battery",  # value: battery mV
    "counter_low",  # value: frame counters left before the node must stop (SPEC.md 7.4)
)

# Field tables for the map-shaped bodies: (key, name, kind). Kinds: "uint", "text", "bool",
# "dbm" (a signal strength, -200..50 dBm), "db" (a signal-to-noise ratio, -50..50 dB).
STATUS_FIELDS = (
    (0, "battery_mv", "uint"),
    (1, "uptime_s", "uint"),
    (2, "free_heap", "uint"),
    (3, "reset_cause", "uint"),
    (4, "frames_sent", "uint"),
    (5, "retransmissions", "uint"),
    (6, "dropped", "uint"),
    (7, "queue_depth", "uint"),
    (8, "firmware", "text"),
    (9, "clock_synced", "bool"),
    # v1.1, a LoRa link's health (SPEC.md 7.3): airtime sent, frames deferred by the duty
    # cycle, dropped over the daily budget, dropped as too big; the last downlink's signal
    (10, "airtime_ms", "uint"),
    (11, "deferred", "uint"),
    (12, "budget_drops", "uint"),
    (13, "too_big", "uint"),
    (14, "downlink_rssi", "dbm"),
    (15, "downlink_snr", "db"),
)
CONFIG_FIELDS = (
    (0, "reading_interval_s", "uint"),
    (1, "status_interval_s", "uint"),
    (2, "scan_window_s", "uint"),
    (3, "ble_scan", "bool"),
    (4, "zone", "text"),
    (5, "max_retries", "uint"),
    (6, "key_epoch", "epoch"),  # v1.1: switch to fresh keys (a re-key, SPEC.md section 9)
)


def quantity_name(qid: int) -> str:
    """The registered name of a quantity id, to name a value in an error or a view. Imported
    when needed: a node that only sends valid readings never loads the registry
    (docs/firmware/ram.md)."""
    from .quantities import quantity_name as name  # noqa: PLC0415

    return name(qid)


def _is_int(v: object) -> bool:
    # bool is a subclass of int on CPython (not on MicroPython); it is never a number here.
    return type(v) is int


def _int_problem(v: object, lo: int, hi: int, what: str) -> "str | None":
    if not _is_int(v):
        return what + " must be an integer, got " + type(v).__name__
    if v < lo or v > hi:  # type: ignore[operator]
        return what + " out of range " + str(lo) + ".." + str(hi) + ": " + str(v)
    return None


# kind -> (lowest, highest)
_INT_KINDS = {"uint": (0, UINT32_MAX), "epoch": (1, 255), "dbm": (-200, 50), "db": (-50, 50)}


def _field_problem(kind: str, v: object, what: str) -> "str | None":
    bounds = _INT_KINDS.get(kind)
    if bounds is not None:
        return _int_problem(v, bounds[0], bounds[1], what)
    if kind == "bool":
        return None if type(v) is bool else what + " must be true or false"
    if type(v) is not str:
        return what + " must be text"
    try:
        size = len(v.encode())
    except UnicodeError:  # a lone surrogate (CPython)
        return what + " is not valid Unicode text"
    if size > MAX_TEXT_BYTES:
        return what + " longer than " + str(MAX_TEXT_BYTES) + " bytes"
    return None


def _fields_to_map(
    table: "tuple[tuple[int, str, str], ...]", fields: "dict[str, Any]"
) -> "dict[int, Any]":
    body = {}
    known = {name: (key, kind) for key, name, kind in table}
    for name, value in fields.items():
        if name not in known:
            raise LocalProtocolError("unknown field " + repr(name))
        key, kind = known[name]
        problem = _field_problem(kind, value, name)
        if problem:
            raise LocalProtocolError(problem)
        body[key] = value
    return body


def _fields_from_map(
    table: "tuple[tuple[int, str, str], ...]", body: object, what: str
) -> "dict[str, Any]":
    if type(body) is not dict:
        raise RemoteProtocolError(Reason.MALFORMED, what + " must be a map")
    by_key = {key: (name, kind) for key, name, kind in table}
    fields = {}
    for key, value in body.items():
        # type first: True and 1.0 are equal to 1 as dict keys
        if type(key) is not int or key not in by_key:
            raise RemoteProtocolError(Reason.MALFORMED, what + ": unknown key " + repr(key))
        name, kind = by_key[key]
        problem = _field_problem(kind, value, name)
        if problem:
            raise RemoteProtocolError(Reason.MALFORMED, problem)
        fields[name] = value
    return fields


def _malformed(problem: "str | None") -> None:
    if problem:
        raise RemoteProtocolError(Reason.MALFORMED, problem)


def _misuse(problem: "str | None") -> None:
    if problem:
        raise LocalProtocolError(problem)


class Message:
    """Base of all v1 messages. Subclasses set MSG_TYPE, NAME and UPLINK."""

    MSG_TYPE = -1
    NAME = ""
    UPLINK = True  # node to gateway; False: gateway to node

    def body(self) -> object:
        raise NotImplementedError

    def to_dict(self) -> "dict[str, Any]":
        """A JSON-friendly view (bytes as hex), for logs of test runs, vectors and the CLI."""
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        return hash(self.MSG_TYPE)

    def __repr__(self) -> str:
        return type(self).__name__ + "(" + repr(self.to_dict()) + ")"


# A node sends the same few masks over and over: remember which ids each one names.
_MASK_IDS: "dict[int, list[int]]" = {}
_MASK_CACHE_SIZE = 64


def _mask_ids(mask: int) -> "list[int]":
    ids = []
    qid = 0
    bits = mask
    while bits:
        if bits & 1:
            ids.append(qid)
        bits >>= 1
        qid += 1
    if len(_MASK_IDS) < _MASK_CACHE_SIZE:
        _MASK_IDS[mask] = ids
    return ids


class Readings(Message):
    """Scaled integer readings by quantity id (protocol/quantities.py), and optionally the node's
    Unix time of the measurement, in seconds (only once the node's clock has been synchronised).

    Body: [mask, value..., ?time]: bit i of mask is set when quantity i is present; the values
    follow in increasing quantity id order. One bitmask instead of one key per value saves a byte
    per reading on LoRa.
    """

    MSG_TYPE = READINGS
    NAME = "readings"

    def __init__(self, values: "dict[int, int]", time: "int | None" = None) -> None:
        self.values = values
        self.time = time

    def _problem(self) -> "str | None":
        if not self.values:
            return "readings need at least one value"
        for qid, value in self.values.items():
            # the common case first and cheaply: this runs for every frame a gateway receives
            if type(value) is int and INT32_MIN <= value <= INT32_MAX:
                if type(qid) is int and 0 <= qid <= MAX_QUANTITY_ID:
                    continue
                return _int_problem(qid, 0, MAX_QUANTITY_ID, "quantity id")
            return _int_problem(value, INT32_MIN, INT32_MAX, quantity_name(qid))
        if self.time is not None:
            return _int_problem(self.time, 0, UINT32_MAX, "time")
        return None

    def body(self) -> object:
        _misuse(self._problem())
        mask = 0
        for qid in self.values:
            mask |= 1 << qid
        out = [mask]
        for qid in sorted(self.values):
            out.append(self.values[qid])
        if self.time is not None:
            out.append(self.time)
        return out

    @classmethod
    def from_body(cls, body: object) -> "Readings":
        if type(body) is not list or not body:
            raise RemoteProtocolError(Reason.MALFORMED, "readings must be a non-empty array")
        # One pass, cheap checks first: a gateway runs this for every frame it receives.
        mask = body[0]
        if type(mask) is not int:  # before the cache: True and 1.0 hash like 1
            raise RemoteProtocolError(Reason.MALFORMED, "readings mask must be an integer")
        ids = _MASK_IDS.get(mask)
        if ids is None:
            _malformed(_int_problem(mask, 1, 2**64 - 1, "readings mask"))
            ids = _mask_ids(mask)
        count = len(ids)
        if len(body) == count + 1:
            time = None
        elif len(body) == count + 2:
            time = body[count + 1]
            _malformed(_int_problem(time, 0, UINT32_MAX, "time"))
        else:
            raise RemoteProtocolError(
                Reason.MALFORMED,
                "readings mask names "
                + str(count)
                + " values, array has "
                + str(len(body) - 1)
                + " items",
            )
        values = {}
        i = 1
        for qid in ids:
            value = body[i]
            if type(value) is not int or not INT32_MIN <= value <= INT32_MAX:
                _malformed(_int_problem(value, INT32_MIN, INT32_MAX, quantity_name(qid)))
            values[qid] = value
            i += 1
        return cls(values, time)

    def to_dict(self) -> "dict[str, Any]":
        out: "dict[str, Any]" = {"type": self.NAME}
        out["values"] = {quantity_name(q): self.values[q] for q in sorted(self.values)}
        if self.time is not None:
            out["time"] = self.time
        return out


class Observations(Message):
    """Devices seen in one scan: (address bytes, RSSI dBm) pairs. Personal data: it exists only
    between a node and its gateway, whose privacy stage never forwards it as is.

    Body: [radio, [addr, rssi], ...]. (A flat [radio, addr, rssi, ...] would fit four sightings
    in a 51-byte LoRa frame instead of three, but no CDDL validator we could test handles repeated
    groups in arrays, and a schema that cannot be checked is worth less than the byte.)"""

    MSG_TYPE = OBSERVATIONS
    NAME = "observations"

    def __init__(self, radio: int, sightings: "list[tuple[bytes, int]]") -> None:
        self.radio = radio
        self.sightings = sightings

    def _problem(self) -> "str | None":
        problem = _int_problem(self.radio, 0, 15, "radio")
        if problem:
            return problem
        if not 1 <= len(self.sightings) <= MAX_SIGHTINGS:
            return "observations need 1.." + str(MAX_SIGHTINGS) + " sightings"
        for addr, rssi in self.sightings:
            if type(addr) is not bytes or not 1 <= len(addr) <= 16:
                return "device address must be 1..16 bytes"
            problem = _int_problem(rssi, -150, 30, "rssi")
            if problem:
                return problem
        return None

    def body(self) -> object:
        _misuse(self._problem())
        out: "list[object]" = [self.radio]
        for addr, rssi in self.sightings:
            out.append([addr, rssi])
        return out

    @classmethod
    def from_body(cls, body: object) -> "Observations":
        if type(body) is not list or len(body) < 2:
            raise RemoteProtocolError(
                Reason.MALFORMED, "observations must be [radio, [addr, rssi], ...]"
            )
        pairs = []
        for pair in body[1:]:
            if type(pair) is not list or len(pair) != 2:
                raise RemoteProtocolError(Reason.MALFORMED, "a sighting must be [addr, rssi]")
            pairs.append((pair[0], pair[1]))
        msg = cls(body[0], pairs)
        _malformed(msg._problem())
        return msg

    def to_dict(self) -> "dict[str, Any]":
        """With the addresses in hex: for vectors and a technician's decode, never for logs."""
        return {
            "type": self.NAME,
            "radio": self.radio,
            "sightings": [[addr.hex(), rssi] for addr, rssi in self.sightings],
        }

    def __repr__(self) -> str:
        # Device addresses are personal data: a repr can end up in a log line or a traceback,
        # so it shows how many devices were seen, never which.
        return (
            "Observations(radio="
            + str(self.radio)
            + ", sightings="
            + str(len(self.sightings))
            + ")"
        )


class _FieldMessage(Message):
    """A message whose body is a map of named fields from a table (status)."""

    FIELDS: "tuple[tuple[int, str, str], ...]" = ()

    def __init__(self, fields: "dict[str, Any]") -> None:
        self.fields = fields

    def body(self) -> object:
        return _fields_to_map(self.FIELDS, self.fields)

    def to_dict(self) -> "dict[str, Any]":
        out: "dict[str, Any]" = {"type": self.NAME}
        out.update(self.fields)
        return out


class Status(_FieldMessage):
    """Node health: battery, uptime, heap, reset cause and link statistics (STATUS_FIELDS)."""

    MSG_TYPE = STATUS
    NAME = "status"
    FIELDS = STATUS_FIELDS

    @classmethod
    def from_body(cls, body: object) -> "Status":
        return cls(_fields_from_map(cls.FIELDS, body, "status"))


class Event(Message):
    """Something happened on the node (EVENT_CODES), with an optional integer value.
    Body: [code] or [code, value]."""

    MSG_TYPE = EVENT
    NAME = "event"

    def __init__(self, code: int, value: "int | None" = None) -> None:
        self.code = code
        self.value = value

    def _problem(self) -> "str | None":
        problem = _int_problem(self.code, 0, 255, "event code")
        if problem is None and self.value is not None:
            problem = _int_problem(self.value, INT32_MIN, INT32_MAX, "event value")
        return problem

    def body(self) -> object:
        _misuse(self._problem())
        return [self.code] if self.value is None else [self.code, self.value]

    @classmethod
    def from_body(cls, body: object) -> "Event":
        if type(body) is not list or len(body) not in (1, 2):
            raise RemoteProtocolError(Reason.MALFORMED, "event must be [code] or [code, value]")
        msg = cls(body[0], body[1] if len(body) == 2 else None)
        if len(body) == 2 and body[1] is None:
            raise RemoteProtocolError(Reason.MALFORMED, "event value null: leave it out instead")
        _malformed(msg._problem())
        return msg

    def to_dict(self) -> "dict[str, Any]":
        name = EVENT_CODES[self.code] if self.code < len(EVENT_CODES) else "event" + str(self.code)
        out: "dict[str, Any]" = {"type": self.NAME, "code": self.code, "event": name}
        if self.value is not None:
            out["value"] = self.value
        return out


class Ack(Message):
    """Gateway to node: these frame counters were received and durably stored.
    Body: [counter, ...] (1..16 counters)."""

    MSG_TYPE = ACK
    NAME = "ack"
    UPLINK = False

    def __init__(self, counters: "list[int]") -> None:
        self.counters = counters

    def _problem(self) -> "str | None":
        if not 1 <= len(self.counters) <= MAX_ACKED:
            return "ack needs 1.." + str(MAX_ACKED) + " counters"
        for c in self.counters:
            if type(c) is int and 0 <= c <= UINT32_MAX:  # the common case, cheaply
                continue
            problem = _int_problem(c, 0, UINT32_MAX, "acked counter")
            if problem:
                return problem
        return None

    def body(self) -> object:
        _misuse(self._problem())
        return list(self.counters)

    @classmethod
    def from_body(cls, body: object) -> "Ack":
        if type(body) is not list:
            raise RemoteProtocolError(Reason.MALFORMED, "ack must be an array of counters")
        msg = cls(body)
        _malformed(msg._problem())
        return msg

    def to_dict(self) -> "dict[str, Any]":
        return {"type": self.NAME, "counters": list(self.counters)}


class TimeSync(Message):
    """Gateway to node: the current Unix time in seconds. Body: [time]."""

    MSG_TYPE = TIME_SYNC
    NAME = "time_sync"
    UPLINK = False

    def __init__(self, time: int) -> None:
        self.time = time

    def body(self) -> object:
        _misuse(_int_problem(self.time, 0, UINT32_MAX, "time"))
        return [self.time]

    @classmethod
    def from_body(cls, body: object) -> "TimeSync":
        if type(body) is not list or len(body) != 1:
            raise RemoteProtocolError(Reason.MALFORMED, "time sync must be [time]")
        _malformed(_int_problem(body[0], 0, UINT32_MAX, "time"))
        return cls(body[0])

    def to_dict(self) -> "dict[str, Any]":
        return {"type": self.NAME, "time": self.time}


class ConfigUpdate(Message):
    """Gateway to node: new settings (CONFIG_FIELDS) under a configuration version the node
    reports back in a config_applied or config_rejected event. Body: [version, {key: value}]."""

    MSG_TYPE = CONFIG_UPDATE
    NAME = "config_update"
    UPLINK = False

    def __init__(self, version: int, settings: "dict[str, Any]") -> None:
        self.version = version
        self.settings = settings

    def body(self) -> object:
        # int32, not uint32: the node reports it back as an event value
        _misuse(_int_problem(self.version, 0, INT32_MAX, "config version"))
        return [self.version, _fields_to_map(CONFIG_FIELDS, self.settings)]

    @classmethod
    def from_body(cls, body: object) -> "ConfigUpdate":
        if type(body) is not list or len(body) != 2:
            raise RemoteProtocolError(Reason.MALFORMED, "config update must be [version, map]")
        _malformed(_int_problem(body[0], 0, INT32_MAX, "config version"))
        return cls(body[0], _fields_from_map(CONFIG_FIELDS, body[1], "config update"))

    def to_dict(self) -> "dict[str, Any]":
        return {"type": self.NAME, "version": self.version, "settings": dict(self.settings)}


# Message type code -> class. Code 7 is reserved.
MESSAGE_CLASSES = (Readings, Observations, Status, Event, Ack, TimeSync, ConfigUpdate)


def message_from_body(msg_type: int, body: object) -> Message:
    """Build the message of `msg_type` from a decoded CBOR body (RemoteProtocolError if invalid)."""
    cls: "Any" = MESSAGE_CLASSES[msg_type]
    msg: Message = cls.from_body(body)
    return msg
