"""Write protocol/vectors/v1.json: the golden test vectors of protocol v1.1 (protocol version 1).

    .venv/bin/python scripts/make_vectors.py           # rewrite the file
    .venv/bin/python scripts/make_vectors.py --check   # exit 1 if the file is out of date

The vectors are data any implementation can load: secrets, derived keys, message content,
plaintext CBOR, sealed frame, serial encoding and the standard COSE view. Secrets are derived
from a fixed label: TEST ONLY, never provision a real node with them. Every vector records the
key epoch whose keys seal or open it (SPEC.md sections 3 and 14); the vectors of epoch 0 are the
frames of v1, byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from protocol import (  # noqa: E402
    Ack,
    ConfigUpdate,
    Event,
    Message,
    NodeKeys,
    Observations,
    Readings,
    Status,
    TimeSync,
    encode_serial,
    seal,
    to_cose,
)
from protocol._backend import cbor_dumps  # noqa: E402
from protocol.envelope import enc_structure  # noqa: E402
from protocol.keys import uint_bytes  # noqa: E402
from protocol.quantities import quantity_id as q  # noqa: E402

OUT = ROOT / "protocol" / "vectors" / "v1.json"


def test_secret(label: str) -> bytes:
    """A 16-byte secret derived from a label. TEST ONLY."""
    return hashlib.sha256(
        b"edgeveil v1 TEST VECTOR secret, never deploy: " + label.encode()
    ).digest()[:16]


# Addresses in the IEEE "locally administered" range, made up for the vectors.
FAKE_BLE = [bytes([0x02, 0, 0, 0, 0xAB, i]) for i in range(1, 5)]

VALID: list[tuple[str, str, int, int, Message]] = [
    # (name, description, node id, counter, message)
    (
        "readings-climate",
        "temperature 21.5 °C, humidity 45.5 %RH, pressure 1013.2 hPa, battery 3.300 V "
        "(the size benchmark's frame)",
        0x1234,
        300,
        Readings(
            {q("temperature"): 215, q("humidity"): 455, q("pressure"): 10132, q("battery"): 3300}
        ),
    ),
    (
        "readings-first-frame",
        "node 1, counter 0, one temperature below zero",
        1,
        0,
        Readings({q("temperature"): -42}),
    ),
    (
        "readings-with-time",
        "readings with the node's Unix time (a node with a synchronised clock)",
        0x1234,
        301,
        Readings({q("temperature"): 187, q("humidity"): 612}, time=1_790_000_000),
    ),
    (
        "readings-air-quality",
        "PM1, PM2.5, PM10 (µg/m³), CO2 (ppm), noise 0.1 dB",
        0x1234,
        302,
        Readings({q("pm1"): 4, q("pm2_5"): 7, q("pm10"): 12, q("co2"): 612, q("noise"): 547}),
    ),
    (
        "readings-counting",
        "PIR triggers and a people count",
        0x1234,
        303,
        Readings({q("motion"): 3, q("people"): 17}),
    ),
    (
        "observations-ble",
        "three BLE sightings: the most a 51-byte LoRa frame holds",
        0x1234,
        304,
        Observations(0, [(FAKE_BLE[0], -67), (FAKE_BLE[1], -80), (FAKE_BLE[2], -91)]),
    ),
    (
        "status-full",
        "every status field",
        0x1234,
        305,
        Status(
            {
                "battery_mv": 3912,
                "uptime_s": 86400,
                "free_heap": 61234,
                "reset_cause": 3,
                "frames_sent": 1200,
                "retransmissions": 14,
                "dropped": 0,
                "queue_depth": 1,
                "firmware": "0.1.0",
                "clock_synced": True,
            }
        ),
    ),
    (
        "status-lora-link",
        "v1.1: a LoRa node's link health (no presence sensors), with the last downlink's signal",
        0x1234,
        310,
        Status(
            {
                "uptime_s": 7200,
                "airtime_ms": 93410,
                "deferred": 2,
                "budget_drops": 0,
                "too_big": 1,
                "downlink_rssi": -117,
                "downlink_snr": -9,
            }
        ),
    ),
    ("event-motion", "PIR motion, 2 triggers", 0x1234, 306, Event(1, 2)),
    ("event-boot", "boot after a watchdog reset", 0x1234, 0, Event(0, 3)),
    ("event-time-request", "the node has no valid clock", 0x1234, 1, Event(6)),
    ("ack", "gateway acknowledges counters 300 and 301", 0x1234, 17, Ack([300, 301])),
    ("time-sync", "gateway sets the node's clock", 0x1234, 18, TimeSync(1_790_000_123)),
    (
        "config-update",
        "gateway changes intervals and zone",
        0x1234,
        19,
        ConfigUpdate(
            7,
            {
                "reading_interval_s": 300,
                "status_interval_s": 3600,
                "zone": "plein-noord",
                "ble_scan": True,
            },
        ),
    ),
    (
        "readings-long-ids",
        "4-byte node id and 4-byte counter: the largest header",
        0xDEADBEEF,
        0x89ABCDEF,
        Readings({q("temperature"): 215}),
    ),
]

# Key epochs (protocol v1.1). One node's story: it moved to epoch 1 (its first frame there is
# counter 0 again), the gateway re-keyed it to epoch 2 and the node confirmed under the new keys;
# later the board was redeployed without its counter state (generation 1: epoch 16).
EPOCH_VALID: list[tuple[str, str, int, int, int, Message]] = [
    # (name, description, node id, key epoch, counter, message)
    (
        "readings-epoch-1",
        "the climate readings under the keys of epoch 1: counters start again at 0",
        0x1234,
        1,
        0,
        Readings(
            {q("temperature"): 215, q("humidity"): 455, q("pressure"): 10132, q("battery"): 3300}
        ),
    ),
    (
        "config-update-key-epoch",
        "gateway re-keys the node: switch to key epoch 2 (configuration version 8)",
        0x1234,
        1,
        1,
        ConfigUpdate(8, {"key_epoch": 2}),
    ),
    (
        "event-config-applied-epoch-2",
        "the node confirms the re-key under the new keys: config_applied, version 8",
        0x1234,
        2,
        0,
        Event(4, 8),
    ),
    (
        "event-boot-epoch-16",
        "a board redeployed without its counter state: generation 1, epoch 16, boot at power-on",
        0x1234,
        16,
        0,
        Event(0, 1),
    ),
    (
        "ack-epoch-255",
        "gateway acknowledges counters 5 and 6 at the last key epoch",
        0x1234,
        255,
        3,
        Ack([5, 6]),
    ),
    (
        "readings-long-ids-epoch-255",
        "4-byte node id, key epoch and 4-byte counter: the largest header, 10 bytes",
        0xDEADBEEF,
        255,
        0x89ABCDEF,
        Readings({q("temperature"): 215}),
    ),
]


def keys_for(node_id: int, epoch: int = 0) -> tuple[bytes, NodeKeys]:
    secret = test_secret(str(node_id))
    keys = NodeKeys(node_id, secret, epoch=epoch)
    # pycose builds the nonce as an integer and drops leading zero bytes; keep the interop test
    # meaningful by never giving it a base IV that starts with zero.
    assert keys.base_iv[0] != 0, "choose another test label"
    return secret, keys


def valid_vector(
    name: str, desc: str, node_id: int, counter: int, msg: Message, *, epoch: int = 0
) -> dict[str, Any]:
    secret, keys = keys_for(node_id, epoch)
    frame = seal(msg, counter, keys)
    cose, aad = to_cose(frame)
    return {
        "name": name,
        "description": desc,
        "secret": secret.hex(),
        "node_id": node_id,
        "epoch": epoch,
        "uplink_key": keys.uplink_key.hex(),
        "downlink_key": keys.downlink_key.hex(),
        "base_iv": keys.base_iv.hex(),
        "counter": counter,
        "nonce": keys.nonce(counter).hex(),
        "type": msg.MSG_TYPE,
        "direction": "uplink" if msg.UPLINK else "downlink",
        "message": msg.to_dict(),
        "plaintext": cbor_dumps(msg.body()).hex(),
        "external_aad": aad.hex(),
        "enc_structure": enc_structure(msg.MSG_TYPE, keys.kid).hex(),
        "frame": frame.hex(),
        "size": len(frame),
        "serial": encode_serial(frame).hex(),
        "cose_encrypt0": cose.hex(),
    }


def seal_raw(
    first: int, keys: NodeKeys, counter: int, plaintext: bytes, uplink: bool = True
) -> bytes:
    """Seal arbitrary plaintext under a valid header (for vectors the API refuses to build)."""
    aead = keys.uplink if uplink else keys.downlink
    msg_type = (first >> 4) & 7
    sealed = aead.encrypt(keys.nonce(counter), plaintext, enc_structure(msg_type, keys.kid))
    head = bytes([first | 0x80, keys.epoch]) if keys.epoch else bytes([first])
    return head + keys.kid + uint_bytes(counter) + sealed


def invalid_vectors(good: dict[str, Any], good_epoch: dict[str, Any]) -> list[dict[str, Any]]:
    """Frames a receiver must reject, each with the reason it must give. All claim node 0x1234;
    all but the config updates are offered to a gateway (uplink expected)."""
    _, keys = keys_for(0x1234)
    frame = bytes.fromhex(good["frame"])
    flipped = bytearray(frame)
    flipped[-3] ^= 0x10
    impostor = NodeKeys(0x1234, test_secret("a different secret"))
    readings_first = frame[0]
    config_first = (6 << 4) | (1 << 2)  # config_update, 2-byte kid, 1-byte counter
    epoch_frame = bytes.fromhex(good_epoch["frame"])
    assert good_epoch["epoch"] == 1 and good_epoch["node_id"] == 0x1234
    altered = bytearray(epoch_frame)
    altered[1] = 2
    # (name, description, frame, reason, key epoch, direction)
    cases: list[tuple[str, str, bytes, str, int, str]] = [
        ("truncated", "the climate frame cut after 12 bytes", frame[:12], "truncated", 0, "uplink"),
        ("oversized", "257 bytes", frame + bytes(257 - len(frame)), "oversized", 0, "uplink"),
        ("bit-flipped", "one bit of the tag flipped", bytes(flipped), "auth_failed", 0, "uplink"),
        (
            "forged",
            "a random tag in place of the real one",
            frame[:-8] + bytes(range(8)),
            "auth_failed",
            0,
            "uplink",
        ),
        (
            "wrong-key",
            "sealed with another secret for the same node id",
            seal_raw(readings_first, impostor, 300, bytes.fromhex(good["plaintext"])),
            "auth_failed",
            0,
            "uplink",
        ),
        (
            "wrong-version",
            "extension bit set and an epoch byte 0: reserved for a protocol version after v1.1",
            bytes([frame[0] | 0x80, 0x00]) + frame[1:],
            "bad_version",
            0,
            "uplink",
        ),
        (
            "epoch-missing",
            "a one-byte frame whose header byte has the extension bit set: no epoch byte",
            bytes([frame[0] | 0x80]),
            "bad_version",
            0,
            "uplink",
        ),
        (
            "reserved-type",
            "message type 7",
            bytes([frame[0] | 0x70]) + frame[1:],
            "bad_header",
            0,
            "uplink",
        ),
        (
            "non-canonical-kid",
            "node id 0x1234 written in 3 bytes (a leading zero byte), as the header announces",
            bytes([(frame[0] & ~0x0C) | 0x08, 0x00]) + frame[1:],
            "bad_header",
            0,
            "uplink",
        ),
        (
            "wrong-direction",
            "an ack (gateway to node) offered to a gateway",
            bytes.fromhex(valid_vector("x", "", 0x1234, 17, Ack([1]))["frame"]),
            "wrong_direction",
            0,
            "uplink",
        ),
        (
            "malformed-body",
            "authentic, but the mask names two values and one follows",
            seal_raw(readings_first, keys, 310, cbor_dumps([3, 215])),
            "malformed",
            0,
            "uplink",
        ),
        (
            "non-deterministic-cbor",
            "authentic, but 215 written with a 2-byte argument (19 00 d7)",
            seal_raw(readings_first, keys, 311, bytes.fromhex("82011900d7")),
            "malformed",
            0,
            "uplink",
        ),
        (
            "float-value",
            "authentic, but the value is a float (CBOR f9 4d60 = 21.5)",
            seal_raw(readings_first, keys, 312, bytes.fromhex("8201f94d60")),
            "malformed",
            0,
            "uplink",
        ),
        (
            "epoch-altered",
            "the frame of readings-epoch-1 with its epoch byte changed to 2, opened with the keys "
            "of epoch 2",
            bytes(altered),
            "auth_failed",
            2,
            "uplink",
        ),
        (
            "truncated-with-epoch",
            "the frame of readings-epoch-1 cut after 13 bytes: with its 5-byte header (the epoch "
            "byte included) it needs at least 14; without an epoch byte 13 would do",
            epoch_frame[:13],
            "truncated",
            1,
            "uplink",
        ),
        (
            "key-epoch-zero",
            "authentic config_update, but key_epoch is 0 (the range is 1..255), offered to the "
            "node",
            seal_raw(config_first, keys, 20, cbor_dumps([8, {6: 0}]), uplink=False),
            "malformed",
            0,
            "downlink",
        ),
        (
            "key-epoch-256",
            "authentic config_update, but key_epoch is 256 (the range is 1..255), offered to the "
            "node",
            seal_raw(config_first, keys, 21, cbor_dumps([8, {6: 256}]), uplink=False),
            "malformed",
            0,
            "downlink",
        ),
    ]
    return [
        {
            "name": n,
            "description": d,
            "node_id": 0x1234,
            "epoch": e,
            "direction": direction,
            "frame": f.hex(),
            "reason": r,
        }
        for n, d, f, r, e, direction in cases
    ]


REPLAY_STEPS = [
    # (counter, outcome) through one node's window of 64, in order
    (10, "new"),
    (11, "new"),
    (11, "duplicate"),
    (9, "new"),
    (10, "duplicate"),
    (80, "new"),
    (17, "new"),
    (16, "replay"),
    (17, "duplicate"),
    (81, "new"),
    (17, "replay"),
]

EPOCH_STEPS = [
    # (key epoch, counter, outcome) of authentic uplink frames of one node at a gateway whose
    # current epoch for the node is 0 and whose window is empty, in order (SPEC.md section 10)
    (0, 10, "new"),
    (0, 11, "new"),
    (1, 0, "new"),  # a higher epoch: now current, with a fresh window
    (0, 12, "retired_key"),  # an older epoch: refused before any key is used
    (1, 0, "duplicate"),
    (1, 70, "new"),
    (1, 5, "replay"),
    (16, 0, "new"),
    (1, 71, "retired_key"),
    (16, 0, "duplicate"),
    (16, 1, "new"),
    (255, 3, "new"),
    (16, 2, "retired_key"),
    (255, 2, "new"),
]


def build() -> dict[str, Any]:
    valid = [valid_vector(*v) for v in VALID] + [
        valid_vector(name, desc, node_id, counter, msg, epoch=epoch)
        for name, desc, node_id, epoch, counter, msg in EPOCH_VALID
    ]
    by_name = {v["name"]: v for v in valid}
    return {
        "protocol": "edgeveil",
        "version": 1,
        "warning": "TEST VECTORS ONLY. These secrets are public: "
        "never provision a real node with them.",
        "note": "Byte strings are lowercase hex. 'message' is the decoded content (bytes as hex); "
        "'plaintext' is its deterministic CBOR; 'frame' is what a LoRa radio sends; "
        "'serial' is the frame as written to a serial line; 'cose_encrypt0' with "
        "'external_aad' is the same frame in standard COSE form. 'epoch' is the key epoch whose "
        "keys seal or open the frame (protocol v1.1; epoch 0 frames are those of v1).",
        "valid": valid,
        "invalid": invalid_vectors(valid[0], by_name["readings-epoch-1"]),
        "replay_window": {
            "size": 64,
            "steps": [{"counter": c, "outcome": o} for c, o in REPLAY_STEPS],
        },
        "key_epochs": {
            "start": 0,
            "steps": [{"epoch": e, "counter": c, "outcome": o} for e, c, o in EPOCH_STEPS],
        },
    }


def main() -> int:
    text = json.dumps(build(), indent=1, ensure_ascii=False) + "\n"
    if "--check" in sys.argv:
        if OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT} is out of date: run scripts/make_vectors.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    for v in build()["valid"]:
        print(f"{v['size']:3d} bytes  {v['name']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
