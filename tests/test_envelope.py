"""Sealing and opening: round trips, header rules, misuse, sizes, the replay window."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import (
    LORA_MAX_FRAME,
    MAX_FRAME,
    Ack,
    ConfigUpdate,
    Event,
    LocalProtocolError,
    Message,
    NodeKeys,
    Observations,
    Readings,
    Reason,
    RemoteProtocolError,
    ReplayWindow,
    Status,
    TimeSync,
    enc_structure,
    external_aad,
    open_frame,
    parse_header,
    seal,
)
from protocol._backend import cbor_dumps
from protocol.messages import (
    CONFIG_FIELDS,
    EVENT,
    MAX_SIGHTINGS,
    READINGS,
    STATUS,
    STATUS_FIELDS,
    message_from_body,
)
from protocol.quantities import QUANTITIES
from protocol.replay import DUPLICATE, NEW, WINDOW

KEYS = NodeKeys(0x1234, bytes(range(16)))  # TEST ONLY key

int32 = st.integers(-(2**31), 2**31 - 1)
uint32 = st.integers(0, 2**32 - 1)
text = st.text(max_size=10)


def field_value(kind: str) -> st.SearchStrategy[object]:
    return {"uint": uint32, "bool": st.booleans(), "text": text}[kind]


def fields(table: tuple[tuple[int, str, str], ...]) -> st.SearchStrategy[dict[str, object]]:
    return st.fixed_dictionaries({}, optional={name: field_value(kind) for _, name, kind in table})


messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(
        Readings,
        st.dictionaries(st.integers(0, 63), int32, min_size=1, max_size=12),
        st.none() | uint32,
    ),
    st.builds(
        Observations,
        st.integers(0, 15),
        st.lists(
            st.tuples(st.binary(min_size=1, max_size=16), st.integers(-150, 30)),
            min_size=1,
            max_size=8,
        ),
    ),
    st.builds(Status, fields(STATUS_FIELDS)),
    st.builds(Event, st.integers(0, 255), st.none() | int32),
    st.builds(Ack, st.lists(uint32, min_size=1, max_size=16)),
    st.builds(TimeSync, uint32),
    st.builds(ConfigUpdate, st.integers(0, 2**31 - 1), fields(CONFIG_FIELDS)),
)


@given(message=messages, counter=uint32, node_id=uint32)
def test_round_trip(message: Message, counter: int, node_id: int) -> None:
    keys = NodeKeys(node_id, b"0123456789abcdef")
    frame = seal(message, counter, keys)
    header = parse_header(frame)
    assert (header.msg_type, header.node_id, header.counter) == (message.MSG_TYPE, node_id, counter)
    assert open_frame(frame, keys, uplink=message.UPLINK) == message
    with pytest.raises(RemoteProtocolError) as info:
        open_frame(frame, keys, uplink=not message.UPLINK)
    assert info.value.reason == Reason.WRONG_DIRECTION


@given(msg_type=st.integers(0, 6), kid=st.binary(min_size=1, max_size=4))
def test_handwritten_aad_equals_the_cbor_encoder(msg_type: int, kid: bytes) -> None:
    assert external_aad(msg_type, kid) == cbor_dumps([1, msg_type, kid])
    assert enc_structure(msg_type, kid) == cbor_dumps(
        ["Encrypt0", b"\xa1\x01\x0a", cbor_dumps([1, msg_type, kid])]
    )


@given(message=messages, counter=uint32, position=st.integers(0, 300), bit=st.integers(0, 7))
def test_any_single_bit_flip_is_rejected(
    message: Message, counter: int, position: int, bit: int
) -> None:
    frame = bytearray(seal(message, counter, KEYS))
    frame[position % len(frame)] ^= 1 << bit
    with pytest.raises(RemoteProtocolError):
        header = parse_header(bytes(frame))
        if header.node_id != KEYS.node_id:
            raise RemoteProtocolError(Reason.UNKNOWN_NODE, "no such node")
        open_frame(bytes(frame), KEYS, uplink=message.UPLINK, header=header)


def test_every_frame_a_normal_node_sends_fits_lora() -> None:
    """A node with all sensors at extreme values, a 4-byte node id and counter."""
    keys = NodeKeys(2**32 - 1, os.urandom(16))
    counter = 2**32 - 1
    all_readings = Readings({q[0]: -(2**31) for q in QUANTITIES[:6]}, time=2**32 - 1)
    big_values = Readings({q[0]: 2**31 - 1 for q in QUANTITIES})
    worst = [
        Readings({q[0]: -(2**31) for q in QUANTITIES[:5]}, time=2**32 - 1),
        Observations(0, [(bytes(6), -150)] * 3),
        Status(
            {
                "battery_mv": 2**32 - 1,
                "uptime_s": 2**32 - 1,
                "free_heap": 2**32 - 1,
                "reset_cause": 6,
                "frames_sent": 2**32 - 1,
                "retransmissions": 2**32 - 1,
            }
        ),
        Event(255, -(2**31)),
        Ack([2**32 - 1] * 4),
        TimeSync(2**32 - 1),
        ConfigUpdate(2**31 - 1, {"reading_interval_s": 2**32 - 1, "zone": "x" * 16}),
    ]
    for message in worst:
        size = len(seal(message, counter, keys))
        assert size <= LORA_MAX_FRAME, (message, size)
    # what does not fit on LoRa is refused by the LoRa link (its issue), not by the envelope
    assert len(seal(all_readings, counter, keys)) > LORA_MAX_FRAME
    assert len(seal(big_values, counter, keys)) <= MAX_FRAME


def test_misuse_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        seal(Readings({}), 1, KEYS)
    with pytest.raises(LocalProtocolError):
        seal(Readings({0: 1.5}), 1, KEYS)  # type: ignore[dict-item]
    with pytest.raises(LocalProtocolError):
        seal(Readings({64: 1}), 1, KEYS)
    with pytest.raises(LocalProtocolError):
        seal(Readings({0: 1}), 2**32, KEYS)
    with pytest.raises(LocalProtocolError):
        seal(Status({"colour": "red"}), 1, KEYS)
    with pytest.raises(LocalProtocolError):
        seal(Observations(0, [(b"\x01" * 6, -50)] * (MAX_SIGHTINGS + 1)), 1, KEYS)
    with pytest.raises(LocalProtocolError):
        NodeKeys(1, b"short")
    with pytest.raises(LocalProtocolError):
        NodeKeys(-1, bytes(16))
    frame = seal(Readings({0: 1}), 1, KEYS)
    with pytest.raises(LocalProtocolError):  # keys of another node
        open_frame(frame, NodeKeys(7, bytes(16)))


@given(counters=st.lists(st.integers(0, 300), max_size=60))
def test_replay_window_never_accepts_a_counter_twice(counters: list[int]) -> None:
    window = ReplayWindow()
    accepted: set[int] = set()
    for counter in counters:
        try:
            verdict = window.check(counter)
        except RemoteProtocolError as exc:
            assert exc.reason == Reason.REPLAY
            assert counter <= window.highest - WINDOW
            continue
        assert (verdict == DUPLICATE) == (counter in accepted)
        if verdict == NEW:
            window.accept(counter)
            accepted.add(counter)
    assert window.bitmap < 2**WINDOW


def test_replay_window_restored_from_its_persisted_state() -> None:
    window = ReplayWindow()
    for counter in (5, 6, 9):
        window.accept(counter)
    restored = ReplayWindow(window.highest, window.bitmap)
    assert [restored.check(c) for c in (5, 7, 9, 10)] == [DUPLICATE, NEW, DUPLICATE, NEW]


@pytest.mark.parametrize(
    "body",
    [
        [True, 215],
        [1.0, 215],
        [1, True],
        [1, 2.5],
        [1, 215, -1],
        [1, 215, 2**32],
        [0, 215],
        [3, 215],
    ],
)
def test_readings_bodies_of_the_wrong_kind_are_malformed(body: list[object]) -> None:
    # True and 1.0 compare and hash equal to 1: they must not pass as the mask 1
    with pytest.raises(RemoteProtocolError) as info:
        message_from_body(READINGS, body)
    assert info.value.reason == Reason.MALFORMED


@pytest.mark.parametrize(
    ("msg_type", "body"),
    [
        (STATUS, {True: 5}),  # True == 1 as a dict key: must not pass as uptime_s
        (STATUS, {1.0: 5}),
        (STATUS, {0: True}),
        (EVENT, [1, None]),
        (EVENT, [1, True]),
        (EVENT, [False]),
    ],
)
def test_bodies_with_look_alike_types_are_malformed(msg_type: int, body: object) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        message_from_body(msg_type, body)
    assert info.value.reason == Reason.MALFORMED


def test_unencodable_text_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        seal(Status({"firmware": "\ud800"}), 1, KEYS)


def test_observations_repr_never_shows_an_address() -> None:
    address = bytes([0x02, 0x11, 0x22, 0x33, 0x44, 0x55])
    text = repr(Observations(0, [(address, -60)]))
    assert text == "Observations(radio=0, sightings=1)"
    assert address.hex() not in text
