"""Sealing and opening: round trips, header rules, misuse, sizes, the replay window."""

from __future__ import annotations

import random

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
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
    epoch = st.integers(1, 255)  # key_epoch (v1.1)
    dbm, db = st.integers(-200, 50), st.integers(-50, 50)  # a LoRa link's signal (v1.1)
    kinds = {"uint": uint32, "bool": st.booleans(), "text": text, "epoch": epoch}
    return {**kinds, "dbm": dbm, "db": db}[kind]


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


epochs = st.sampled_from([0, 1, 15, 16, 255]) | st.integers(0, 255)


@given(message=messages, counter=uint32, node_id=uint32, epoch=epochs)
def test_round_trip(message: Message, counter: int, node_id: int, epoch: int) -> None:
    keys = NodeKeys(node_id, b"0123456789abcdef", epoch=epoch)
    frame = seal(message, counter, keys)
    header = parse_header(frame)
    assert (header.msg_type, header.node_id, header.counter, header.epoch) == (
        message.MSG_TYPE,
        node_id,
        counter,
        epoch,
    )
    assert header.size == 1 + (epoch != 0) + len(header.kid) + len(header.piv)
    assert bool(frame[0] & 0x80) == (epoch != 0)
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


@given(
    message=messages,
    counter=uint32,
    position=st.integers(0, 300),
    bit=st.integers(0, 7),
    epoch=epochs,
)
def test_any_single_bit_flip_is_rejected(
    message: Message, counter: int, position: int, bit: int, epoch: int
) -> None:
    keys = NodeKeys(KEYS.node_id, bytes(range(16)), epoch=epoch)
    frame = bytearray(seal(message, counter, keys))
    frame[position % len(frame)] ^= 1 << bit
    with pytest.raises(RemoteProtocolError):
        header = parse_header(bytes(frame))
        if header.node_id != KEYS.node_id:
            raise RemoteProtocolError(Reason.UNKNOWN_NODE, "no such node")
        # a gateway opens a frame of another epoch with that epoch's keys (SPEC.md 5.5 step 7)
        opener = (
            keys
            if header.epoch == epoch
            else NodeKeys(KEYS.node_id, bytes(range(16)), epoch=header.epoch)
        )
        open_frame(bytes(frame), opener, uplink=message.UPLINK, header=header)


# -- key epochs (protocol v1.1, SPEC.md sections 3 and 4) --------------------------------------


def spec_derive(secret: bytes, kid: bytes, label: str, length: int, epoch: int = 0) -> bytes:
    """SPEC.md section 3 written out with other libraries (cbor2, cryptography): the five-item
    info of v1, and a sixth item, the epoch, for an epoch 1..255."""
    info = ["edgeveil", 1, kid, label, length] + ([epoch] if epoch else [])
    hkdf = HKDF(hashes.SHA256(), length, None, cbor2.dumps(info, canonical=True))
    return hkdf.derive(secret)


@given(node_id=uint32, secret=st.binary(min_size=16, max_size=64), epoch=st.integers(1, 255))
def test_keys_of_every_epoch_are_fresh_and_epoch_0_is_v1(
    node_id: int, secret: bytes, epoch: int
) -> None:
    v1 = NodeKeys(node_id, secret)
    zero = NodeKeys(node_id, secret, epoch=0)
    other = NodeKeys(node_id, secret, epoch=epoch)
    kid = v1.kid
    assert (zero.uplink_key, zero.downlink_key, zero.base_iv) == (
        spec_derive(secret, kid, "uplink key", 16),
        spec_derive(secret, kid, "downlink key", 16),
        spec_derive(secret, kid, "base iv", 13),
    )
    assert (v1.uplink_key, v1.downlink_key, v1.base_iv, v1.epoch) == (
        zero.uplink_key,
        zero.downlink_key,
        zero.base_iv,
        0,
    )
    assert (other.uplink_key, other.downlink_key, other.base_iv) == (
        spec_derive(secret, kid, "uplink key", 16, epoch),
        spec_derive(secret, kid, "downlink key", 16, epoch),
        spec_derive(secret, kid, "base iv", 13, epoch),
    )
    assert other.uplink_key != zero.uplink_key
    assert other.downlink_key != zero.downlink_key
    assert other.base_iv != zero.base_iv


def test_the_six_item_info_of_the_spec_example() -> None:
    """SPEC.md section 3: the info for the uplink key of node 4660 at epoch 16 (and 255)."""
    info = cbor_dumps(["edgeveil", 1, b"\x12\x34", "uplink key", 16, 16])
    assert info.hex() == "8668656467657665696c014212346a75706c696e6b206b65791010"
    info = cbor_dumps(["edgeveil", 1, b"\x12\x34", "uplink key", 16, 255])
    assert info.hex().endswith("1018ff")


def test_keys_of_every_epoch_differ() -> None:
    secret = bytes(range(16))
    keys = [NodeKeys(0x1234, secret, epoch=e) for e in range(256)]
    for attribute in ("uplink_key", "downlink_key", "base_iv"):
        assert len({getattr(k, attribute) for k in keys}) == 256


@pytest.mark.parametrize("epoch", [-1, 256, True, 1.0, "1"])
def test_an_epoch_outside_0_to_255_is_a_local_error(epoch: object) -> None:
    with pytest.raises(LocalProtocolError):
        NodeKeys(0x1234, bytes(16), epoch=epoch)  # type: ignore[arg-type]


@given(message=messages, counter=uint32, epoch=st.integers(1, 255))
def test_an_epoch_frame_carries_its_epoch_after_the_header_byte(
    message: Message, counter: int, epoch: int
) -> None:
    v1 = seal(message, counter, KEYS)
    frame = seal(message, counter, NodeKeys(KEYS.node_id, bytes(range(16)), epoch=epoch))
    assert frame[0] == v1[0] | 0x80
    assert frame[1] == epoch
    assert frame[2 : parse_header(v1).size + 1] == v1[1 : parse_header(v1).size]  # kid, counter
    assert len(frame) == len(v1) + 1  # the epoch byte; ciphertext and tag are as long as in v1
    assert frame[len(frame) - len(v1) + parse_header(v1).size :] != v1[parse_header(v1).size :]


def test_keys_of_another_epoch_are_a_local_error() -> None:
    """The caller picks keys by node id and epoch; the wrong ones are its mistake, not the
    peer's: a gateway decides RETIRED_KEY or opens with that epoch's keys (SPEC.md 5.5)."""
    secret = bytes(range(16))
    epoch_1 = NodeKeys(0x1234, secret, epoch=1)
    frame = seal(Readings({0: 1}), 1, epoch_1)
    for wrong in (KEYS, NodeKeys(0x1234, secret, epoch=2)):
        with pytest.raises(LocalProtocolError):
            open_frame(frame, wrong)
    with pytest.raises(LocalProtocolError):  # and the other way round: a v1 frame, epoch keys
        open_frame(seal(Readings({0: 1}), 1, KEYS), epoch_1)
    assert open_frame(frame, epoch_1) == Readings({0: 1})


@pytest.mark.parametrize(
    "frame",
    [
        b"\x80",  # E = 1, nothing after it
        b"\x85",
        b"\x85\x00",  # E = 1, epoch byte 0: reserved for a later version
        b"\x85\x00" + bytes(30),
        b"\xf5\x00" + bytes(30),  # before the reserved type 7
        b"\x85\x00\x00\x12\x34",  # before the canonical-form check
    ],
)
def test_epoch_byte_0_or_none_is_bad_version(frame: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_header(frame)
    assert info.value.reason == Reason.BAD_VERSION


def test_epoch_frames_keep_the_other_header_checks() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_header(b"\xf5\x01" + bytes(30))
    assert info.value.reason == Reason.BAD_HEADER  # type 7
    with pytest.raises(RemoteProtocolError) as info:
        parse_header(b"\x85\x01\x00\x12\x01\x2c" + bytes(10))
    assert info.value.reason == Reason.BAD_HEADER  # a kid with a leading zero byte
    with pytest.raises(RemoteProtocolError) as info:
        parse_header(b"\x85\x01" + bytes(255))
    assert info.value.reason == Reason.OVERSIZED


@pytest.mark.parametrize("epoch", [1, 2, 16, 255])
def test_changing_the_epoch_byte_fails_authentication(epoch: int) -> None:
    secret = bytes(range(16))
    frame = seal(Readings({0: 215}), 300, NodeKeys(0x1234, secret, epoch=epoch))
    for changed in {epoch ^ 1, epoch ^ 0x80, 1 if epoch != 1 else 2} - {0}:
        altered = frame[:1] + bytes([changed]) + frame[2:]
        header = parse_header(altered)
        assert header.epoch == changed
        with pytest.raises(RemoteProtocolError) as info:
            open_frame(altered, NodeKeys(0x1234, secret, epoch=changed), header=header)
        assert info.value.reason == Reason.AUTH_FAILED


def test_dropping_or_adding_the_epoch_never_opens() -> None:
    secret = bytes(range(16))
    epoch_1 = NodeKeys(0x1234, secret, epoch=1)
    frame = seal(Readings({0: 215}), 300, epoch_1)
    v1_frame = seal(Readings({0: 215}), 300, KEYS)
    stripped = bytes([frame[0] & 0x7F]) + frame[2:]  # E cleared, epoch byte removed
    with pytest.raises(RemoteProtocolError) as info:
        open_frame(stripped, NodeKeys(0x1234, secret))
    assert info.value.reason == Reason.AUTH_FAILED
    added = bytes([v1_frame[0] | 0x80, 1]) + v1_frame[1:]  # a v1 frame claiming epoch 1
    with pytest.raises(RemoteProtocolError) as info:
        open_frame(added, epoch_1)
    assert info.value.reason == Reason.AUTH_FAILED


@pytest.mark.parametrize(("kid_len", "piv_len"), [(1, 1), (2, 2), (4, 4), (1, 4)])
def test_shortest_frame_with_an_epoch(kid_len: int, piv_len: int) -> None:
    """SPEC.md section 4: at least 1 + E + (K + 1) + (P + 1) + 8 + 1 bytes."""
    first = 0x80 | ((kid_len - 1) << 2) | (piv_len - 1)
    header = bytes([first, 7]) + b"\x01" * (kid_len + piv_len)
    shortest = 1 + 1 + kid_len + piv_len + 8 + 1
    assert parse_header(header + bytes(shortest - len(header))).size == len(header)
    with pytest.raises(RemoteProtocolError) as info:
        parse_header(header + bytes(shortest - len(header) - 1))
    assert info.value.reason == Reason.TRUNCATED
    if kid_len == piv_len == 1:
        assert shortest == 13  # the smallest frame with an epoch byte


def observations_with_plaintext(size: int) -> Observations:
    """Sightings whose CBOR body is exactly `size` bytes (231 + k for the last address)."""
    message = Observations(
        0, [(bytes(16), -150)] * 11 + [(bytes(1), -150), (bytes(size - 231), -150)]
    )
    assert len(cbor_dumps(message.body())) == size
    return message


def test_an_epoch_byte_costs_one_byte_of_plaintext() -> None:
    """SPEC.md section 4: 245 plaintext bytes with a 1-byte kid and counter, 244 with an epoch."""
    v1_keys = NodeKeys(1, bytes(range(16)))
    epoch_keys = NodeKeys(1, bytes(range(16)), epoch=1)
    assert len(seal(observations_with_plaintext(245), 1, v1_keys)) == MAX_FRAME
    assert len(seal(observations_with_plaintext(244), 1, epoch_keys)) == MAX_FRAME
    with pytest.raises(LocalProtocolError):
        seal(observations_with_plaintext(245), 1, epoch_keys)


def test_header_repr_names_the_epoch() -> None:
    frame = seal(Readings({0: 1}), 5, NodeKeys(0x1234, bytes(16), epoch=16))
    assert repr(parse_header(frame)) == "Header(type=0, node_id=4660, counter=5, epoch=16)"
    assert "epoch" not in repr(parse_header(seal(Readings({0: 1}), 5, KEYS)))


@pytest.mark.parametrize("epoch", [0, 255])
def test_every_frame_a_normal_node_sends_fits_lora(epoch: int, rng: random.Random) -> None:
    """A node with all sensors at extreme values, a 4-byte node id and counter (and, from v1.1,
    an epoch byte: the worst readings and status frames are then exactly 51 bytes)."""
    keys = NodeKeys(2**32 - 1, rng.randbytes(16), epoch=epoch)
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
