"""The golden vectors: our implementation produces and accepts exactly their bytes."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pycddl
import pytest

from protocol import NodeKeys, ReplayWindow, encode_serial, open_frame, parse_header, seal, to_cose
from protocol._backend import cbor_loads
from protocol.errors import Reason, RemoteProtocolError
from protocol.messages import message_from_body
from protocol.replay import DUPLICATE, NEW

from .conftest import ROOT, VECTORS

CDDL = (ROOT / "protocol" / "edgeveil.cddl").read_text(encoding="utf-8")
BODY_RULES = ["readings", "observations", "status", "event", "ack", "time-sync", "config-update"]


def schema(rule: str) -> pycddl.Schema:
    return pycddl.Schema(f"root = {rule}\n{CDDL}")


VALID = VECTORS["valid"]
IDS = [v["name"] for v in VALID]


def keys_of(v: dict[str, Any]) -> NodeKeys:
    return NodeKeys(v["node_id"], bytes.fromhex(v["secret"]))


def test_vector_file_is_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_vectors.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("v", VALID, ids=IDS)
def test_key_derivation(v: dict[str, Any]) -> None:
    keys = keys_of(v)
    assert keys.uplink_key.hex() == v["uplink_key"]
    assert keys.downlink_key.hex() == v["downlink_key"]
    assert keys.base_iv.hex() == v["base_iv"]
    assert keys.nonce(v["counter"]).hex() == v["nonce"]


@pytest.mark.parametrize("v", VALID, ids=IDS)
def test_seal_gives_the_vector_bytes(v: dict[str, Any]) -> None:
    message = message_from_body(v["type"], cbor_loads(bytes.fromhex(v["plaintext"])))
    assert message.to_dict() == v["message"]
    frame = seal(message, v["counter"], keys_of(v))
    assert frame.hex() == v["frame"]
    assert len(frame) == v["size"]
    assert encode_serial(frame).hex() == v["serial"]
    cose, aad = to_cose(frame)
    assert (cose.hex(), aad.hex()) == (v["cose_encrypt0"], v["external_aad"])


@pytest.mark.parametrize("v", VALID, ids=IDS)
def test_open_gives_the_vector_message(v: dict[str, Any]) -> None:
    frame = bytes.fromhex(v["frame"])
    header = parse_header(frame)
    assert (header.msg_type, header.node_id, header.counter) == (
        v["type"],
        v["node_id"],
        v["counter"],
    )
    message = open_frame(frame, keys_of(v), uplink=v["direction"] == "uplink", header=header)
    assert message.to_dict() == v["message"]


@pytest.mark.parametrize("v", VALID, ids=IDS)
def test_vector_validates_against_cddl(v: dict[str, Any]) -> None:
    schema(BODY_RULES[v["type"]]).validate_cbor(bytes.fromhex(v["plaintext"]))
    cose = bytes.fromhex(v["cose_encrypt0"])
    schema("edgeveil-cose-encrypt0").validate_cbor(cose)
    schema("edgeveil-protected").validate_cbor(cbor_loads(cose[1:])[0])
    schema("edgeveil-external-aad").validate_cbor(bytes.fromhex(v["external_aad"]))
    schema("edgeveil-enc-structure").validate_cbor(bytes.fromhex(v["enc_structure"]))


def test_cddl_rejects_what_the_spec_forbids() -> None:
    with pytest.raises(pycddl.ValidationError):
        schema("readings").validate_cbor(bytes.fromhex("8201f94d60"))  # float value
    with pytest.raises(pycddl.ValidationError):
        schema("observations").validate_cbor(bytes.fromhex("8200814602000000ab01"))  # rssi missing
    with pytest.raises(pycddl.ValidationError):
        schema("status").validate_cbor(bytes.fromhex("a1006178"))  # battery_mv as text


@pytest.mark.parametrize("v", VECTORS["invalid"], ids=[v["name"] for v in VECTORS["invalid"]])
def test_invalid_vector_rejected_with_its_reason(v: dict[str, Any]) -> None:
    keys = keys_of(VALID[0])
    frame = bytes.fromhex(v["frame"])
    with pytest.raises(RemoteProtocolError) as info:
        header = parse_header(frame)
        open_frame(frame, keys, uplink=True, header=header)
    assert info.value.reason_name == v["reason"], info.value


def test_every_rejection_reason_of_the_envelope_is_covered() -> None:
    covered = {v["reason"] for v in VECTORS["invalid"]}
    envelope_reasons = {
        Reason.name(r)
        for r in (
            Reason.TRUNCATED,
            Reason.OVERSIZED,
            Reason.BAD_VERSION,
            Reason.BAD_HEADER,
            Reason.WRONG_DIRECTION,
            Reason.AUTH_FAILED,
            Reason.MALFORMED,
        )
    }
    assert envelope_reasons <= covered


def test_replay_window_steps() -> None:
    window = ReplayWindow()
    for step in VECTORS["replay_window"]["steps"]:
        try:
            outcome = {NEW: "new", DUPLICATE: "duplicate"}[window.check(step["counter"])]
        except RemoteProtocolError as exc:
            assert exc.reason == Reason.REPLAY
            outcome = "replay"
        assert outcome == step["outcome"], step
        if outcome == "new":
            window.accept(step["counter"])
