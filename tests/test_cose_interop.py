"""An independent COSE library (pycose) opens our frames, and we open frames it sealed."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pycose.algorithms import AESCCM1664128
from pycose.headers import KID, Algorithm, KIDContext, PartialIV
from pycose.keys import SymmetricKey
from pycose.messages import Enc0Message

from protocol import (
    NodeKeys,
    Readings,
    Reason,
    RemoteProtocolError,
    external_aad,
    from_cose,
    open_frame,
    parse_header,
    seal,
    to_cose,
)
from protocol._backend import cbor_dumps
from protocol.keys import uint_bytes

from .conftest import VECTORS


def cose_key(key: bytes, base_iv: bytes) -> SymmetricKey:
    k = SymmetricKey(k=key)
    k.base_iv = base_iv
    return k


def decode_enc0(data: bytes) -> Enc0Message:
    # pycose 1.1 predates cbor2 6, which decodes the inside of a tag as a tuple and frozendict;
    # hand pycose the list it expects. The bytes are parsed by cbor2 either way.
    tagged = cbor2.loads(data)
    assert tagged.tag == 16  # COSE_Encrypt0
    protected, unprotected, ciphertext = tagged.value
    return Enc0Message.from_cose_obj([protected, dict(unprotected), ciphertext], True)


@pytest.mark.parametrize("v", VECTORS["valid"], ids=[v["name"] for v in VECTORS["valid"]])
def test_pycose_opens_our_frame(v: dict[str, Any]) -> None:
    cose, aad = to_cose(bytes.fromhex(v["frame"]))
    message = decode_enc0(cose)
    key = v["uplink_key"] if v["direction"] == "uplink" else v["downlink_key"]
    message.key = cose_key(bytes.fromhex(key), bytes.fromhex(v["base_iv"]))
    message.external_aad = aad
    assert message.phdr == {Algorithm: AESCCM1664128}
    # the key epoch travels as the kid context (RFC 8613), only when it is not 0
    expected_context = {KIDContext: bytes([v["epoch"]])} if v["epoch"] else {}
    assert message.uhdr == {KID: message.uhdr[KID], PartialIV: message.uhdr[PartialIV]} | (
        expected_context
    )
    assert message.decrypt() == bytes.fromhex(v["plaintext"])


@pytest.mark.parametrize("v", VECTORS["valid"], ids=[v["name"] for v in VECTORS["valid"]])
def test_cose_view_is_lossless(v: dict[str, Any]) -> None:
    frame = bytes.fromhex(v["frame"])
    cose, aad = to_cose(frame)
    assert from_cose(cose, aad) == frame
    assert from_cose(cose[1:], aad) == frame  # untagged


def pycose_seal(
    keys: NodeKeys, msg_type: int, counter: int, plaintext: bytes
) -> tuple[bytes, bytes]:
    aad = external_aad(msg_type, keys.kid)
    uhdr: dict[Any, bytes] = {KID: keys.kid, PartialIV: uint_bytes(counter)}
    if keys.epoch:
        uhdr[KIDContext] = bytes([keys.epoch])
    message = Enc0Message(
        phdr={Algorithm: AESCCM1664128},
        uhdr=uhdr,
        payload=plaintext,
        external_aad=aad,
    )
    message.key = cose_key(keys.uplink_key, keys.base_iv)
    return message.encode(), aad


def test_we_open_a_frame_pycose_sealed(vectors: dict[str, Any]) -> None:
    v = vectors["valid"][0]
    keys = NodeKeys(v["node_id"], bytes.fromhex(v["secret"]))
    cose, aad = pycose_seal(keys, v["type"], v["counter"], bytes.fromhex(v["plaintext"]))
    frame = from_cose(cose, aad)
    assert frame.hex() == v["frame"]  # same bytes as ours: the mapping is lossless both ways
    assert open_frame(frame, keys).to_dict() == v["message"]


def test_we_open_an_epoch_frame_pycose_sealed(vectors: dict[str, Any]) -> None:
    v = next(v for v in vectors["valid"] if v["name"] == "readings-epoch-1")
    keys = NodeKeys(v["node_id"], bytes.fromhex(v["secret"]), epoch=v["epoch"])
    cose, aad = pycose_seal(keys, v["type"], v["counter"], bytes.fromhex(v["plaintext"]))
    frame = from_cose(cose, aad)
    assert frame.hex() == v["frame"]
    assert parse_header(frame).epoch == 1
    assert open_frame(frame, keys).to_dict() == v["message"]


def test_pycose_opens_an_epoch_frame_only_with_the_keys_of_its_epoch(
    vectors: dict[str, Any],
) -> None:
    v = next(v for v in vectors["valid"] if v["name"] == "event-boot-epoch-16")
    cose, aad = to_cose(bytes.fromhex(v["frame"]))
    secret = bytes.fromhex(v["secret"])
    for epoch in (15, 16, 17, 0):
        keys = NodeKeys(v["node_id"], secret, epoch=epoch)
        message = decode_enc0(cose)
        message.key = cose_key(keys.uplink_key, keys.base_iv)
        message.external_aad = aad
        if epoch == 16:
            assert message.decrypt() == bytes.fromhex(v["plaintext"])
        else:
            with pytest.raises(Exception):  # noqa: B017 - pycose raises its own types
                message.decrypt()


@pytest.mark.parametrize(
    "context",
    [b"", b"\x00", b"\x01\x02", 1, "\x01"],
    ids=["empty", "zero", "two-bytes", "integer", "text"],
)
def test_from_cose_rejects_a_kid_context_that_is_not_one_epoch_byte(context: object) -> None:
    frame = seal(Readings({0: 215}), 300, NodeKeys(0x1234, bytes(16), epoch=1))
    cose, aad = to_cose(frame)
    item = cbor2.loads(cose).value
    forged = cbor2.dumps([item[0], {4: item[1][4], 6: item[1][6], 10: context}, item[2]])
    with pytest.raises(RemoteProtocolError) as info:
        from_cose(forged, aad)
    assert info.value.reason == Reason.MALFORMED


@pytest.mark.parametrize("label", [4, 6, 10])
def test_from_cose_rejects_a_label_that_is_not_an_integer(label: int) -> None:
    """A float label 10.0 equals 10 as a Python dict key, but it is another CBOR value."""
    frame = seal(Readings({0: 215}), 300, NodeKeys(0x1234, bytes(16), epoch=1))
    cose, aad = to_cose(frame)
    item = cbor2.loads(cose).value
    unprotected: dict[Any, object] = dict(item[1])
    unprotected[float(label)] = unprotected.pop(label)
    forged = cbor2.dumps([item[0], unprotected, item[2]], canonical=True)
    with pytest.raises(RemoteProtocolError) as info:
        from_cose(forged, aad)
    assert info.value.reason == Reason.MALFORMED


@given(
    node_id=st.integers(0, 2**32 - 1),
    counter=st.integers(0, 2**32 - 1),
    temperature=st.integers(-(2**31), 2**31 - 1),
    secret=st.binary(min_size=16, max_size=64),
    epoch=st.sampled_from([0, 1, 16, 255]) | st.integers(0, 255),
)
def test_pycose_and_we_agree_on_random_frames(
    node_id: int, counter: int, temperature: int, secret: bytes, epoch: int
) -> None:
    keys = NodeKeys(node_id, secret, epoch=epoch)
    if keys.base_iv[0] == 0:
        # pycose turns the nonce into an int and back, dropping a leading zero byte: its bug,
        # not a property of the format (our vectors avoid such IVs).
        return
    message = Readings({0: temperature})
    ours = seal(message, counter, keys)
    cose, aad = pycose_seal(keys, message.MSG_TYPE, counter, cbor_dumps(message.body()))
    assert from_cose(cose, aad) == ours
    assert to_cose(ours) == (cose, aad)
