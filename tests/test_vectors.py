"""The golden vectors: our implementation produces and accepts exactly their bytes."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pycddl
import pytest

from protocol import NodeKeys, ReplayWindow, encode_serial, open_frame, parse_header, seal, to_cose
from protocol._backend import cbor_dumps, cbor_loads
from protocol.envelope import enc_structure
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
    return NodeKeys(v["node_id"], bytes.fromhex(v["secret"]), epoch=v["epoch"])


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
    assert (header.msg_type, header.node_id, header.counter, header.epoch) == (
        v["type"],
        v["node_id"],
        v["counter"],
        v["epoch"],
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
    # pycddl checks a nested map loosely: the unprotected map (kid context for an epoch) alone
    unprotected = cbor_loads(cose[1:])[1]
    assert (10 in unprotected) == (v["epoch"] != 0)
    schema("edgeveil-unprotected").validate_cbor(cbor_dumps(unprotected))
    kid = parse_header(bytes.fromhex(v["frame"])).kid
    info = ["edgeveil", 1, kid, "uplink key", 16] + ([v["epoch"]] if v["epoch"] else [])
    schema("edgeveil-hkdf-info").validate_cbor(cbor_dumps(info))


def test_cddl_rejects_what_the_spec_forbids() -> None:
    with pytest.raises(pycddl.ValidationError):
        schema("readings").validate_cbor(bytes.fromhex("8201f94d60"))  # float value
    with pytest.raises(pycddl.ValidationError):
        schema("observations").validate_cbor(bytes.fromhex("8200814602000000ab01"))  # rssi missing
    with pytest.raises(pycddl.ValidationError):
        schema("status").validate_cbor(bytes.fromhex("a1006178"))  # battery_mv as text
    bodies = [v for v in VECTORS["invalid"] if v["name"].startswith("key-epoch-")]
    assert len(bodies) == 2  # key_epoch 0 and 256: the range is 1..255
    for v in bodies:
        keys = NodeKeys(v["node_id"], bytes.fromhex(VALID[0]["secret"]), epoch=v["epoch"])
        frame = bytes.fromhex(v["frame"])
        header = parse_header(frame)
        body = keys.downlink.decrypt(
            keys.nonce(header.counter), frame[header.size :], enc_structure(6, header.kid)
        )
        with pytest.raises(pycddl.ValidationError):
            schema("config-update").validate_cbor(body)
    with pytest.raises(pycddl.ValidationError):  # epoch 0 is written as the five-item info
        schema("edgeveil-hkdf-info").validate_cbor(
            cbor_dumps(["edgeveil", 1, b"\x12\x34", "base iv", 13, 0])
        )
    with pytest.raises(pycddl.ValidationError):  # a kid context of two bytes
        schema("edgeveil-unprotected").validate_cbor(bytes.fromhex("a3044212340641000a420101"))


INVALID = VECTORS["invalid"]


@pytest.mark.parametrize("v", INVALID, ids=[v["name"] for v in INVALID])
def test_invalid_vector_rejected_with_its_reason(v: dict[str, Any]) -> None:
    # node 4660's secret is that of the first valid vector; the vector names the key epoch
    keys = NodeKeys(v["node_id"], bytes.fromhex(VALID[0]["secret"]), epoch=v["epoch"])
    assert VALID[0]["node_id"] == v["node_id"]
    frame = bytes.fromhex(v["frame"])
    with pytest.raises(RemoteProtocolError) as info:
        header = parse_header(frame)
        assert header.epoch == v["epoch"]  # the keys are those of the frame's epoch
        open_frame(frame, keys, uplink=v["direction"] == "uplink", header=header)
    assert info.value.reason_name == v["reason"], info.value


def test_epoch_vectors_cover_v1_1() -> None:
    """The vectors of key epochs: 0 frames are v1's; every epoch byte and both directions."""
    epochs = {v["epoch"] for v in VALID}
    assert {0, 1, 16, 255} <= epochs
    assert {v["direction"] for v in VALID if v["epoch"]} == {"uplink", "downlink"}
    assert any(v["message"].get("settings", {}).get("key_epoch") for v in VALID)
    for v in VALID:
        frame = bytes.fromhex(v["frame"])
        if v["epoch"]:
            assert frame[0] & 0x80 and frame[1] == v["epoch"], v["name"]
            assert bytes.fromhex(v["cose_encrypt0"]).find(bytes([0x0A, 0x41, v["epoch"]])) > 0
        else:
            assert not frame[0] & 0x80, v["name"]
    names = {v["name"]: v for v in INVALID}
    assert names["wrong-version"]["frame"][2:4] == "00"  # E = 1, then the reserved epoch 0
    assert names["epoch-missing"]["frame"] == "85"
    epoch_1 = next(v for v in VALID if v["name"] == "readings-epoch-1")
    altered = bytes.fromhex(names["epoch-altered"]["frame"])
    original = bytes.fromhex(epoch_1["frame"])
    assert altered[1] != original[1] and altered[:1] + altered[2:] == original[:1] + original[2:]


def test_the_secret_of_an_epoch_is_the_secret_of_its_node() -> None:
    """Epochs change the keys, never the secret: a second implementation derives them all."""
    secrets: dict[int, set[str]] = {}
    for v in VALID:
        secrets.setdefault(v["node_id"], set()).add(v["secret"])
    assert all(len(s) == 1 for s in secrets.values())
    by_epoch: dict[tuple[int, int], str] = {}
    for v in VALID:
        by_epoch.setdefault((v["node_id"], v["epoch"]), v["uplink_key"])
        assert by_epoch[v["node_id"], v["epoch"]] == v["uplink_key"]
    assert len(set(by_epoch.values())) == len(by_epoch)  # fresh keys in every epoch


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
    # v1.1: an epoch byte of 0 or none at all, an altered epoch, a short frame with an epoch
    by_name = {v["name"]: v["reason"] for v in VECTORS["invalid"]}
    assert by_name["epoch-missing"] == by_name["wrong-version"] == "bad_version"
    assert by_name["epoch-altered"] == "auth_failed"
    assert by_name["truncated-with-epoch"] == "truncated"


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


def test_key_epoch_steps() -> None:
    """SPEC.md section 10, key epochs: a gateway's current epoch and window for one node, fed
    authentic frames. A higher epoch becomes current with a fresh window; an older one is
    RETIRED_KEY, refused before its keys are used, and changes nothing."""
    steps = VECTORS["key_epochs"]["steps"]
    current, window = VECTORS["key_epochs"]["start"], ReplayWindow()
    assert current == 0
    for step in steps:
        epoch, counter = step["epoch"], step["counter"]
        if epoch < current:
            outcome = Reason.name(Reason.RETIRED_KEY)
        else:
            candidate = window if epoch == current else ReplayWindow()
            try:
                outcome = {NEW: "new", DUPLICATE: "duplicate"}[candidate.check(counter)]
            except RemoteProtocolError as exc:
                assert exc.reason == Reason.REPLAY
                outcome = "replay"
            if outcome == "new":  # accepted: recorded, and its epoch is now the current one
                candidate.accept(counter)
                current, window = epoch, candidate
        assert outcome == step["outcome"], step
    assert {s["outcome"] for s in steps} == {"new", "duplicate", "replay", "retired_key"}
