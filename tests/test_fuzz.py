"""Fuzz targets for the receive path: whatever bytes arrive, only RemoteProtocolError escapes.

Bounded in CI (the "ci" hypothesis profile); run longer with
    HYPOTHESIS_PROFILE=long .venv/bin/pytest tests/test_fuzz.py tests/test_cbor.py \
        tests/test_framing.py
(docs/development/fuzzing.md has the figures of the last long run).
"""

from __future__ import annotations

import cbor2
from hypothesis import example, given
from hypothesis import strategies as st

from protocol import (
    NEED_DATA,
    NodeKeys,
    Readings,
    RemoteProtocolError,
    StreamDecoder,
    _fast,
    cbor,
    encode_serial,
    open_frame,
    parse_header,
    seal,
)
from protocol.messages import message_from_body

SECRET = bytes(range(16))  # TEST ONLY secret
KEYS = NodeKeys(0x1234, SECRET)
VALID = seal(Readings({0: 215, 1: 455}), 300, KEYS)
# protocol v1.1: the same node under the keys of key epoch 16
EPOCH_KEYS = {0: KEYS, 16: NodeKeys(0x1234, SECRET, epoch=16)}
VALID_EPOCH = seal(Readings({0: 215, 1: 455}), 300, EPOCH_KEYS[16])


def keys_for(epoch: int) -> NodeKeys:
    if epoch not in EPOCH_KEYS:
        EPOCH_KEYS[epoch] = NodeKeys(0x1234, SECRET, epoch=epoch)
    return EPOCH_KEYS[epoch]


def receive(frame: bytes) -> str:
    """What a gateway does with one frame, reduced to its verdict. It knows node 0x1234 at key
    epoch 0 and so opens the node's frames of any epoch with that epoch's keys (SPEC.md 5.5)."""
    try:
        header = parse_header(frame)
        if header.node_id != KEYS.node_id:
            return "unknown_node"
        open_frame(frame, keys_for(header.epoch), uplink=header.uplink, header=header)
    except RemoteProtocolError as exc:
        return exc.reason_name
    return "accepted"


@given(st.binary(max_size=300))
@example(b"")
@example(VALID[:5])
@example(bytes([0x80]) + VALID[1:])
@example(bytes([0x80]))
@example(bytes([0x80, 0x00]) + VALID[1:])
@example(VALID_EPOCH[:13])
@example(VALID_EPOCH[:1] + bytes([17]) + VALID_EPOCH[2:])
@example(bytes([VALID_EPOCH[0] & 0x7F]) + VALID_EPOCH[2:])
def test_random_frames_only_raise_remote_errors(data: bytes) -> None:
    verdict = receive(data)
    assert verdict != "accepted" or data in (VALID, VALID_EPOCH)


@given(
    st.sampled_from([VALID, VALID_EPOCH]),
    st.binary(min_size=1, max_size=len(VALID_EPOCH)),
    st.integers(0, len(VALID_EPOCH) - 1),
)
def test_spliced_frames_are_rejected(valid: bytes, patch: bytes, at: int) -> None:
    frame = valid[:at] + patch + valid[at + len(patch) :]
    assert receive(frame) != "accepted" or frame == valid


def test_the_epoch_frames_of_the_examples() -> None:
    assert receive(VALID_EPOCH) == "accepted"
    assert receive(bytes([0x80])) == "bad_version"
    assert receive(bytes([0x80, 0x00]) + VALID[1:]) == "bad_version"
    assert receive(VALID_EPOCH[:1] + bytes([17]) + VALID_EPOCH[2:]) == "auth_failed"
    assert receive(bytes([VALID_EPOCH[0] & 0x7F]) + VALID_EPOCH[2:]) == "auth_failed"


@given(
    st.lists(
        st.binary(max_size=80)
        | st.just(encode_serial(VALID))
        | st.just(encode_serial(VALID_EPOCH)),
        max_size=12,
    ),
    st.integers(1, 64),
)
def test_serial_stream_with_garbage(chunks: list[bytes], piece: int) -> None:
    stream = b"".join(chunks)
    decoder = StreamDecoder()
    for i in range(0, len(stream), piece):
        decoder.feed(stream[i : i + piece])
        while True:
            try:
                frame = decoder.next_event()
            except RemoteProtocolError:
                continue
            if frame is NEED_DATA:
                break
            assert isinstance(frame, bytes)
            receive(frame)


def _verdict(loads: object, msg_type: int, plaintext: bytes) -> object:
    try:
        return message_from_body(msg_type, loads(plaintext))  # type: ignore[operator]
    except RemoteProtocolError as exc:
        return exc.reason_name


small_cbor = st.recursive(
    st.integers(-300, 70000)
    | st.booleans()
    | st.none()
    | st.binary(max_size=8)
    | st.text(max_size=4)
    | st.floats(allow_nan=False),
    lambda inner: (
        st.lists(inner, max_size=6)
        | st.dictionaries(st.integers(0, 12) | st.booleans() | st.floats(0, 3), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(st.integers(0, 6), small_cbor | st.binary(max_size=40))
def test_gateway_and_node_backends_accept_the_same_plaintexts(msg_type: int, item: object) -> None:
    """cbor2 (gateway) and protocol.cbor (node) must agree on every message body."""
    plaintext = item if isinstance(item, bytes) else cbor2.dumps(item, canonical=True)
    gateway = _verdict(_fast.cbor_loads, msg_type, plaintext)
    node = _verdict(cbor.loads, msg_type, plaintext)
    assert gateway == node, (plaintext.hex(), gateway, node)
