"""Records as SenML (RFC 8428) payloads: JSON by default, CBOR as an option.

One record becomes one SenML pack: the first entry carries the base name, the base time, the
message id and the privacy policy's hash; every entry a name, a unit and a value.

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

import json
from typing import Any

import cbor2

from .records import OutMessage, Record, Topics

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


def encode(record: Record, topics: Topics, payload_format: str) -> OutMessage:
    pack = senml_pack(record, topics.site, topics.gateway_id)
    if payload_format == "senml+cbor":
        labelled = [{_CBOR_LABELS.get(k, k): v for k, v in e.items()} for e in pack]
        payload = cbor2.dumps(labelled, canonical=True)
    else:
        payload = json.dumps(pack, separators=(",", ":"), ensure_ascii=False).encode()
    return OutMessage(record.msg_id, topics.record(record), payload)
