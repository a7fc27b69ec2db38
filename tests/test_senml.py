"""SenML encoding (gateway/senml.py): the hand-written JSON writer gives the json module's
bytes, and joined packs mean what their parts meant, in both payload forms."""

from __future__ import annotations

import json

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import senml
from gateway.records import Measurement, Record, Topics

TOPICS = Topics("edgeveil", "site-1", "gw-1")

values = (
    st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
measurements = st.builds(Measurement, st.text(min_size=1, max_size=12), st.text(max_size=6), values)
records = st.builds(
    Record,
    st.sampled_from(["readings", "status", "event", "aggregate"]),
    st.integers(0, 2**32 - 1),
    st.text(max_size=8),
    st.floats(0, 2e9) | st.integers(0, 2**31),
    st.text(min_size=1, max_size=30),
    st.lists(measurements, min_size=1, max_size=5).map(tuple),
    st.text(max_size=8),
    st.sampled_from(["", "0" * 64, 'ünïcode "quoted" \\ \n']),
    st.sampled_from(["", "zone", "node"]),
)


@given(records)
def test_the_json_writer_gives_the_json_modules_bytes(record: Record) -> None:
    pack = senml.senml_pack(record, TOPICS.site, TOPICS.gateway_id)
    expected = json.dumps(pack, separators=(",", ":"), ensure_ascii=False).encode()
    assert senml.encode(record, TOPICS, "senml+json").payload == expected


@pytest.mark.parametrize("payload_format", ["senml+json", "senml+cbor"])
@given(st.lists(records, min_size=1, max_size=30))
def test_a_joined_pack_holds_its_parts_records_in_order(
    payload_format: str, parts: list[Record]
) -> None:
    messages = [senml.encode(r, TOPICS, payload_format) for r in parts]
    joined = senml.join([m.payload for m in messages], payload_format)
    decode = json.loads if payload_format == "senml+json" else cbor2.loads
    assert decode(joined) == [e for m in messages for e in decode(m.payload)]
    assert senml.records(decode(joined)) == [decode(m.payload) for m in messages]  # split back
    if payload_format == "senml+cbor":  # still the one deterministic encoding
        assert cbor2.dumps(cbor2.loads(joined), canonical=True) == joined


def test_join_refuses_what_is_not_a_cbor_pack() -> None:
    with pytest.raises(ValueError, match="CBOR array"):
        senml.join([b"\xa0", b"\x80"], "senml+cbor")


def test_equal_values_of_other_types_keep_their_own_entries() -> None:
    """The writer remembers each measurement's entry by its value; True, 1 and 1.0 are equal
    as keys, yet each is written as itself, whichever came first."""
    for value, entry in [(1, '"v":1}'), (True, '"vb":true}'), (1.0, '"v":1.0}'), (1, '"v":1}')]:
        record = Record("readings", 1, "", 0.0, "m", (Measurement("x", "", value),))
        assert senml.encode(record, TOPICS, "senml+json").payload.endswith(f"{entry}]".encode())
