"""The privacy stage: decides what of a verified message may leave the gateway, and in what form.

Nothing personal crosses this stage (ARCHITECTURE.md): what comes out are Records, and only
Records reach the spool, the logs' payload-free lines and MQTT. Until a policy file says
otherwise (the privacy engine, its own issue), the gateway applies the default below:

- readings, status and events pass through, converted from scaled integers to SenML units;
- observations (device identifiers seen by a node's BLE scanner) are personal data and are
  DENIED: they are verified, counted and acknowledged, and then dropped. Nothing of them leaves.
"""

from __future__ import annotations

from typing import Protocol as TypingProtocol

from protocol import Event, Message, Observations, Readings, Status
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
}


class PrivacyStage(TypingProtocol):
    """What the ingest stage calls for every new, verified message."""

    def process(
        self, node_id: int, zone: str, counter: int, message: Message, arrival: float
    ) -> list[Record]: ...


def scaled(n: int, exp: int) -> float | int:
    """n * 10**exp without binary noise (215, -1 -> 21.5, not 21.500000000000004)."""
    if exp >= 0:
        return n * int(10**exp)
    return round(n * 10.0**exp, -exp)


class DefaultPolicy:
    """Pass-through for environmental data and node health; default-deny for personal data."""

    def __init__(self, gateway_id: str) -> None:
        self.gateway_id = gateway_id
        self.denied = 0  # observation messages dropped, for metrics

    def process(
        self, node_id: int, zone: str, counter: int, message: Message, arrival: float
    ) -> list[Record]:
        msg_id = message_id(self.gateway_id, node_id, counter)
        if isinstance(message, Observations):
            self.denied += 1
            return []
        if isinstance(message, Readings):
            time = float(message.time) if message.time is not None else arrival
            values = tuple(
                Measurement(quantity_name(q), senml_unit(q), scaled(v, exponent(q)))
                if is_known(q)
                else Measurement(quantity_name(q), "", v)
                for q, v in sorted(message.values.items())
            )
            return [Record("readings", node_id, zone, time, msg_id, values)]
        if isinstance(message, Status):
            return [Record("status", node_id, zone, arrival, msg_id, _status(message))]
        if isinstance(message, Event):
            name = (
                EVENT_CODES[message.code]
                if message.code < len(EVENT_CODES)
                else (f"event{message.code}")
            )
            value = 1 if message.value is None else message.value
            m = Measurement(name, "", value)
            return [Record("event", node_id, zone, arrival, msg_id, (m,))]
        return []  # gateway-to-node messages never arrive here (the envelope rejects them)


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
