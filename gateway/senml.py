"""Records as SenML (RFC 8428) payloads: JSON by default, CBOR as an option.

One record becomes one SenML pack: the first entry carries the base name, the base time, the
message id and the privacy policy's hash; every entry a name, a unit and a value. The uplink
joins the packs of one topic that wait together into one MQTT message (join(); interface 2.0):
a message holds one record or several, each starting with its own base entry and "mid".

- Base name: `urn:dev:edgeveil:{site}:{node_id}:` for what one node sent (and for aggregates
  of a stream grouped by node); `urn:dev:edgeveil:{site}:{gateway}:{stream}:` for a stream's
  aggregates of a zone (the zone is in the topic: a zone may hold characters a SenML name
  cannot).
- Base time: the reading's time, or for an aggregate the start of its window.
- Extension fields (RFC 8428 section 4.4: a consumer that does not know a field without a
  trailing underscore ignores it): "mid", the message id, by which consumers that care drop
  duplicates; "policy", the SHA-256 of the privacy policy under which the record left the
  gateway (the same hash the transparency statement shows).
- A value that is withheld rather than released (a count below the policy's k: "suppressed";
  the daily privacy budget spent: "withheld: budget") travels as a string value ("vs") with
  the unit it would have had; an event without a value as the boolean true ("vb": it
  happened). Every record has exactly one value (RFC 8428 section 4.2), and the privacy
  stage releases no record without a measurement (its pack would be `[]`, without id or hash).

docs/mqtt/asyncapi.yaml describes every topic and payload; the end-to-end tests hold what the
gateway publishes to it.

CBOR uses the integer labels of RFC 8428 section 6 (bn -2, bt -3, n 0, u 1, v 2, vs 3, vb 4);
"mid" and "policy" stay text labels there, as extensions have no registered number.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from typing import Any

import cbor2

from .records import Measurement, OutMessage, Record, Topics

_CBOR_LABELS = {"bn": -2, "bt": -3, "n": 0, "u": 1, "v": 2, "vs": 3, "vb": 4}


def base_name(record: Record, site: str, gateway_id: str = "") -> str:
    if record.kind == "aggregate" and record.group_by != "node":
        return f"urn:dev:edgeveil:{site}:{gateway_id}:{record.stream}:"
    return f"urn:dev:edgeveil:{site}:{record.node_id}:"


def senml_pack(record: Record, site: str, gateway_id: str = "") -> list[dict[str, Any]]:
    pack: list[dict[str, Any]] = []
    for i, m in enumerate(record.measurements):
        entry: dict[str, Any] = {}
        if i == 0:
            entry["bn"] = base_name(record, site, gateway_id)
            entry["bt"] = record.time
            entry["mid"] = record.msg_id
            if record.policy:
                entry["policy"] = record.policy
        entry["n"] = m.name
        if m.unit:
            entry["u"] = m.unit
        if isinstance(m.value, bool):
            entry["vb"] = m.value
        elif isinstance(m.value, str):
            entry["vs"] = m.value
        else:
            entry["v"] = m.value
        pack.append(entry)
    return pack


def encode(
    record: Record, topics: Topics, payload_format: str, created: float | None = None
) -> OutMessage:
    """The record's pack as an MQTT message; `created`: when its data arrived (latency)."""
    if payload_format == "senml+cbor":
        pack = senml_pack(record, topics.site, topics.gateway_id)
        labelled = [{_CBOR_LABELS.get(k, k): v for k, v in e.items()} for e in pack]
        payload = cbor2.dumps(labelled, canonical=True)
    else:
        payload = _json_pack(record, topics.site, topics.gateway_id).encode()
    return OutMessage(record.msg_id, topics.record(record), payload, created=created)


def _json_pack(record: Record, site: str, gateway_id: str) -> str:
    """senml_pack(record) as the json module writes it (compact, ensure_ascii=False), the same
    text, written directly: the gateway encodes every record it publishes, thousands a second
    under load, and building the dicts for json.dumps cost more than the encoding. The
    strings go through the json module's own string encoder; tests/test_senml.py holds both
    to the same bytes."""
    head = (
        f'{{"bn":{_string(base_name(record, site, gateway_id))},"bt":{_number(record.time)},'
        f'"mid":{_string(record.msg_id)},'
    )
    if record.policy:
        head += f'"policy":{_string(record.policy)},'
    entries = []
    for m in record.measurements:
        value = m.value
        key = (m.name, m.unit, value.__class__, value)  # the class: True == 1 == 1.0 as keys
        entry = _entries.get(key)
        if entry is None:
            entry = _entry(m)
            if len(_entries) >= _ENTRIES_KEPT:
                _entries.clear()
            _entries[key] = entry
        entries.append(entry)
    if not entries:
        return "[]"
    return f"[{head}{',{'.join(entries)}]"  # each entry ends with its "}"


def _entry(m: Measurement) -> str:
    """A measurement's entry but for its opening brace: '"n":...,"u":...,"v":...}'."""
    entry = f'"n":{_string(m.name)},' + (f'"u":{_string(m.unit)},' if m.unit else "")
    value = m.value
    if value is True or value is False:
        return entry + ('"vb":true}' if value else '"vb":false}')
    if isinstance(value, str):
        return entry + f'"vs":{_string(value)}}}'
    return entry + f'"v":{_number(value)}}}'


_string = json.encoder.encode_basestring  # the json module's (C) encoder, ensure_ascii=False
# (name, unit, value's class, value) -> its entry: a node's readings repeat their few values,
# so most entries are written once. Cleared whole when full: simple and bounded.
_entries: dict[tuple[str, str, type, object], str] = {}
_ENTRIES_KEPT = 4096


def _number(value: float) -> str:
    """A number as the json module writes it (float.__repr__; int.__repr__ for ints)."""
    kind = type(value)
    if kind is int or (kind is float and math.isfinite(value)):
        return repr(value)
    if isinstance(value, int):
        return int.__repr__(value)
    if not math.isfinite(value):
        return json.dumps(value)  # NaN, Infinity: never sent, but written as json would
    return float.__repr__(value)


def records(entries: Sequence[Any]) -> list[list[Any]]:
    """A decoded pack's entries as its records, the inverse of join(): a record starts at each
    entry that carries a "mid" (and at the first entry in any case)."""
    starts = [i for i, e in enumerate(entries) if i and isinstance(e, dict) and "mid" in e]
    bounds = [0, *starts, len(entries)]
    return [list(entries[a:b]) for a, b in itertools.pairwise(bounds) if b > a]


def join(payloads: Sequence[bytes], payload_format: str) -> bytes:
    """Several packs of one topic as one pack: their records one after the other, in order.

    A record's first entry carries its base name, base time and message id, which hold for
    the entries after it (RFC 8428 section 4.5.1: base values apply until the next ones), so
    the joined pack means what the packs meant, each record keeping its own "mid". The bytes
    are joined, not decoded and encoded again: a JSON pack is `[...]`; a CBOR pack a
    definite-length array whose head is written again for the sum of the entries (RFC 8949
    section 3: its shortest form, so the result stays deterministically encoded).
    """
    if len(payloads) == 1:
        return payloads[0]
    if payload_format != "senml+cbor":
        return b"[" + b",".join(p[1:-1] for p in payloads if len(p) > 2) + b"]"
    entries = 0
    bodies = []
    for p in payloads:
        count, head = _cbor_array_head(p)
        entries += count
        bodies.append(p[head:])
    return _cbor_array_start(entries) + b"".join(bodies)


def _cbor_array_head(payload: bytes) -> tuple[int, int]:
    """(entries, length of the head) of a definite-length CBOR array."""
    initial = payload[0]
    if initial >> 5 != 4:  # major type 4: array
        raise ValueError("not a SenML pack: a CBOR array was expected")
    info = initial & 0x1F
    if info < 24:
        return info, 1
    if info in (24, 25, 26):
        size = 1 << (info - 24)
        return int.from_bytes(payload[1 : 1 + size], "big"), 1 + size
    raise ValueError("not a definite-length CBOR array of a sensible size")


def _cbor_array_start(entries: int) -> bytes:
    if entries < 24:
        return bytes([0x80 | entries])
    if entries < 0x100:
        return bytes([0x98, entries])
    if entries < 0x10000:
        return b"\x99" + entries.to_bytes(2, "big")
    return b"\x9a" + entries.to_bytes(4, "big")
