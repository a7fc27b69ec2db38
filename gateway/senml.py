"""Records as SenML (RFC 8428) payloads: JSON by default, CBOR as an option.

One record becomes one SenML pack: the first entry carries the base name
`urn:dev:edgeveil:{site}:{node_id}:`, the base time and the message id, every entry a name, a
unit and a value. The message id travels in the extension field "mid" (RFC 8428 section 4.4:
a consumer that does not know a field without a trailing underscore ignores it), so consumers
that care can drop duplicates by it.

CBOR uses the integer labels of RFC 8428 section 6 (bn -2, bt -3, n 0, u 1, v 2, vs 3, vb 4);
"mid" stays a text label there, as extensions have no registered number.
"""

from __future__ import annotations

import json
from typing import Any

import cbor2

from .records import OutMessage, Record, Topics

_CBOR_LABELS = {"bn": -2, "bt": -3, "n": 0, "u": 1, "v": 2, "vs": 3, "vb": 4}


def senml_pack(record: Record, site: str) -> list[dict[str, Any]]:
    pack: list[dict[str, Any]] = []
    for i, m in enumerate(record.measurements):
        entry: dict[str, Any] = {}
        if i == 0:
            entry["bn"] = f"urn:dev:edgeveil:{site}:{record.node_id}:"
            entry["bt"] = record.time
            entry["mid"] = record.msg_id
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
    pack = senml_pack(record, topics.site)
    if payload_format == "senml+cbor":
        labelled = [{_CBOR_LABELS.get(k, k): v for k, v in e.items()} for e in pack]
        payload = cbor2.dumps(labelled, canonical=True)
    else:
        payload = json.dumps(pack, separators=(",", ":"), ensure_ascii=False).encode()
    return OutMessage(record.msg_id, topics.node(record.node_id, record.kind), payload)
