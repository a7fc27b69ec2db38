"""Write protocol/vectors/v1.json: the golden test vectors of protocol v1.

    .venv/bin/python scripts/make_vectors.py           # rewrite the file
    .venv/bin/python scripts/make_vectors.py --check   # exit 1 if the file is out of date

The vectors are data any implementation can load: secrets, derived keys, message content,
plaintext CBOR, sealed frame, serial encoding and the standard COSE view. Secrets are derived
from a fixed label: TEST ONLY, never provision a real node with them.
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


def keys_for(node_id: int) -> tuple[bytes, NodeKeys]:
    secret = test_secret(str(node_id))
    keys = NodeKeys(node_id, secret)
    # pycose builds the nonce as an integer and drops leading zero bytes; keep the interop test
    # meaningful by never giving it a base IV that starts with zero.
    assert keys.base_iv[0] != 0, "choose another test label"
    return secret, keys


def valid_vector(name: str, desc: str, node_id: int, counter: int, msg: Message) -> dict[str, Any]:
    secret, keys = keys_for(node_id)
    frame = seal(msg, counter, keys)
    cose, aad = to_cose(frame)
    return {
        "name": name,
        "description": desc,
        "secret": secret.hex(),
        "node_id": node_id,
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
    return bytes([first]) + keys.kid + uint_bytes(counter) + sealed


def invalid_vectors(good: dict[str, Any]) -> list[dict[str, Any]]:
    """Frames a gateway must reject, each with the reason it must give. All claim node 0x1234."""
    _, keys = keys_for(0x1234)
    frame = bytes.fromhex(good["frame"])
    flipped = bytearray(frame)
    flipped[-3] ^= 0x10
    _, other = keys_for(0x4321)
    impostor = NodeKeys(0x1234, test_secret("a different secret"))
    readings_first = frame[0]
    cases = [
        ("truncated", "the climate frame cut after 12 bytes", frame[:12], "truncated"),
        ("oversized", "257 bytes", frame + bytes(257 - len(frame)), "oversized"),
        ("bit-flipped", "one bit of the tag flipped", bytes(flipped), "auth_failed"),
        (
            "forged",
            "a random tag in place of the real one",
            frame[:-8] + bytes(range(8)),
            "auth_failed",
        ),
        (
            "wrong-key",
            "sealed with another secret for the same node id",
            seal_raw(readings_first, impostor, 300, bytes.fromhex(good["plaintext"])),
            "auth_failed",
        ),
        (
            "wrong-version",
            "extension bit set: a later protocol version",
            bytes([frame[0] | 0x80]) + frame[1:],
            "bad_version",
        ),
        ("reserved-type", "message type 7", bytes([frame[0] | 0x70]) + frame[1:], "bad_header"),
        (
            "non-canonical-kid",
            "node id 0x1234 written in 3 bytes (a leading zero byte), as the header announces",
            bytes([(frame[0] & ~0x0C) | 0x08, 0x00]) + frame[1:],
            "bad_header",
        ),
        (
            "wrong-direction",
            "an ack (gateway to node) offered to a gateway",
            bytes.fromhex(valid_vector("x", "", 0x1234, 17, Ack([1]))["frame"]),
            "wrong_direction",
        ),
        (
            "malformed-body",
            "authentic, but the mask names two values and one follows",
            seal_raw(readings_first, keys, 310, cbor_dumps([3, 215])),
            "malformed",
        ),
        (
            "non-deterministic-cbor",
            "authentic, but 215 written with a 2-byte argument (19 00 d7)",
            seal_raw(readings_first, keys, 311, bytes.fromhex("82011900d7")),
            "malformed",
        ),
        (
            "float-value",
            "authentic, but the value is a float (CBOR f9 4d60 = 21.5)",
            seal_raw(readings_first, keys, 312, bytes.fromhex("8201f94d60")),
            "malformed",
        ),
    ]
    del other
    return [
        {"name": n, "description": d, "node_id": 0x1234, "frame": f.hex(), "reason": r}
        for n, d, f, r in cases
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


def build() -> dict[str, Any]:
    valid = [valid_vector(*v) for v in VALID]
    return {
        "protocol": "edgeveil",
        "version": 1,
        "warning": "TEST VECTORS ONLY. These secrets are public: "
        "never provision a real node with them.",
        "note": "Byte strings are lowercase hex. 'message' is the decoded content (bytes as hex); "
        "'plaintext' is its deterministic CBOR; 'frame' is what a LoRa radio sends; "
        "'serial' is the frame as written to a serial line; 'cose_encrypt0' with "
        "'external_aad' is the same frame in standard COSE form.",
        "valid": valid,
        "invalid": invalid_vectors(valid[0]),
        "replay_window": {
            "size": 64,
            "steps": [{"counter": c, "outcome": o} for c, o in REPLAY_STEPS],
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
