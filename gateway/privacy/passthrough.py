"""The "pass" action: one record per message, per node, converted from the wire's scaled
integers to SenML units. The privacy engine uses it for streams with `action = "pass"` (node
health and events in the default policy); nothing personal can take this path (the policy
refuses `pass` for observations).
"""

from __future__ import annotations

from collections.abc import Container

from protocol import Event, Readings, Status
from protocol.messages import EVENT_CODES, RESET_CAUSES
from protocol.quantities import exponent, is_known, quantity_name, senml_unit

from ..records import Measurement, Record, message_id

# status field -> (SenML name, SenML unit, scale to that unit)
_STATUS = {
    "battery_mv": ("battery", "V", 0.001),
    "uptime_s": ("uptime", "s", 1),
    "free_heap": ("free_heap", "B", 1),
    "frames_sent": ("frames_sent", "count", 1),
    "retransmissions": ("retransmissions", "count", 1),
    "dropped": ("dropped", "count", 1),
    "queue_depth": ("queue_depth", "count", 1),
    # a LoRa link's health (v1.1); dBm is a SenML unit of RFC 8798
    "airtime_ms": ("airtime", "s", 0.001),
    "deferred": ("deferred", "count", 1),
    "budget_drops": ("budget_drops", "count", 1),
    "too_big": ("too_big", "count", 1),
    "downlink_rssi": ("downlink_rssi", "dBm", 1),
    "downlink_snr": ("downlink_snr", "dB", 1),
}


def scaled(n: int, exp: int) -> float | int:
    """n * 10**exp without binary noise (215, -1 -> 21.5, not 21.500000000000004)."""
    if exp >= 0:
        return n * int(10**exp)
    return round(n * 10.0**exp, -exp)


def _measurement(qid: int, value: int) -> Measurement:
    if is_known(qid):
        return Measurement(quantity_name(qid), senml_unit(qid), scaled(value, exponent(qid)))
    return Measurement(quantity_name(qid), "", value)


# A readings frame becomes a record per frame, 7,000 frames a second on a busy gateway, and a
# Measurement (a frozen dataclass) costs more to make than the rest of the record. It is a
# value: the same (quantity, scaled integer) always gives an equal one, and nodes send the same
# few hundred values of each quantity over and over. So they are made once and shared, in a
# bounded table (emptied whole when full: simple, and the next frames fill it again).
_MEASUREMENTS: dict[tuple[int, int], Measurement] = {}
_MEASUREMENTS_SIZE = 16_384


def readings_record(  # noqa: PLR0917 - the message's coordinates, as PrivacyStage.process has them
    gateway_id: str,
    node_id: int,
    zone: str,
    counter: int,
    message: Readings,
    arrival: float,
    quantities: Container[int] | None = None,
    policy: str = "",
) -> Record | None:
    """The readings of `quantities` (all if None) as one record; None if none is selected."""
    time = float(message.time) if message.time is not None else arrival
    made = _MEASUREMENTS
    values = []
    for item in sorted(message.values.items()):
        if quantities is not None and item[0] not in quantities:
            continue
        m = made.get(item)
        if m is None:
            if len(made) >= _MEASUREMENTS_SIZE:
                made.clear()
            m = made[item] = _measurement(*item)
        values.append(m)
    if not values:
        return None
    msg_id = message_id(gateway_id, node_id, counter)
    return Record("readings", node_id, zone, time, msg_id, tuple(values), policy=policy)


def status_record(  # noqa: PLR0917
    gateway_id: str,
    node_id: int,
    zone: str,
    counter: int,
    message: Status,
    arrival: float,
    policy: str = "",
) -> Record | None:
    """The status fields as one record; None for a status without a field (a SenML record
    needs a value, and a pack without records would carry neither message id nor policy)."""
    fields = _status(message)
    if not fields:
        return None
    msg_id = message_id(gateway_id, node_id, counter)
    return Record("status", node_id, zone, arrival, msg_id, fields, policy=policy)


def event_record(  # noqa: PLR0917
    gateway_id: str,
    node_id: int,
    zone: str,
    counter: int,
    message: Event,
    arrival: float,
    policy: str = "",
) -> Record:
    """The event as one record: its value, or for an event without one (time_request) the
    boolean true, "it happened", never a number a consumer would take for a value."""
    name = EVENT_CODES[message.code] if message.code < len(EVENT_CODES) else f"event{message.code}"
    value: int | bool = True if message.value is None else message.value
    m = Measurement(name, "", value)
    msg_id = message_id(gateway_id, node_id, counter)
    return Record("event", node_id, zone, arrival, msg_id, (m,), policy=policy)


def _status(status: Status) -> tuple[Measurement, ...]:
    out = []
    for key, value in status.fields.items():
        if key in _STATUS:
            name, unit, scale = _STATUS[key]
            out.append(Measurement(name, unit, round(value * scale, 3) if scale != 1 else value))
        elif key == "reset_cause":
            cause = RESET_CAUSES[value] if value < len(RESET_CAUSES) else str(value)
            out.append(Measurement("reset_cause", "", cause))
        elif key in ("firmware", "clock_synced"):
            out.append(Measurement(key, "", value))
    return tuple(out)
