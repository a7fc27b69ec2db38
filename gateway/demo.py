"""`edgeveil demo`: the whole path on one machine.

Until the gateway service and emulated nodes exist, this shows the wire protocol at work: one
frame of every v1 message type sealed with a throw-away key, its size against the 51-byte LoRa
limit, its standard COSE form, and the gateway-side checks rejecting tampered input.
"""

from __future__ import annotations

import os

from protocol import (
    LORA_MAX_FRAME,
    NEED_DATA,
    Ack,
    ConfigUpdate,
    Event,
    Message,
    NodeKeys,
    Observations,
    Readings,
    RemoteProtocolError,
    ReplayWindow,
    Status,
    StreamDecoder,
    TimeSync,
    encode_serial,
    open_frame,
    parse_header,
    seal,
    to_cose,
)
from protocol.quantities import quantity_id as q
from protocol.replay import DUPLICATE

DEMO_NODE_ID = 0x1234


def _examples() -> list[Message]:
    return [
        Readings(
            {q("temperature"): 215, q("humidity"): 455, q("pressure"): 10132, q("battery"): 3300}
        ),
        Readings({q("pm2_5"): 7, q("pm10"): 12, q("co2"): 612, q("noise"): 547}),
        # made-up, locally administered addresses: the demo holds no real identifier
        Observations(0, [(bytes([0x02, 0, 0, 0, 0xAB, i]), -60 - i) for i in range(3)]),
        Status({"battery_mv": 3912, "uptime_s": 86400, "free_heap": 61234, "reset_cause": 1}),
        Event(1, 2),
        Ack([300, 301]),
        TimeSync(1_790_000_123),
        ConfigUpdate(7, {"reading_interval_s": 300, "zone": "plein-noord"}),
    ]


def _reason(frame: bytes, keys: NodeKeys) -> str:
    try:
        open_frame(frame, keys, uplink=True)
    except RemoteProtocolError as exc:
        return f"rejected: {exc.reason_name}"
    return "accepted"


def run_protocol_demo() -> int:
    keys = NodeKeys(DEMO_NODE_ID, os.urandom(16))  # throw-away key: generated now, never stored
    print("edgeveil wire protocol v1: COSE_Encrypt0, AES-CCM-16-64-128, deterministic CBOR")
    print(f"node {DEMO_NODE_ID} with a throw-away key generated for this run\n")
    print(f"{'message':<14}{'dir':<6}{'bytes':>6}  {'LoRa 51':<8} content (verified after opening)")
    frames: list[bytes] = []
    for counter, message in enumerate(_examples(), start=300):
        frame = seal(message, counter, keys)
        opened = open_frame(frame, keys, uplink=message.UPLINK)
        if opened != message:
            raise RuntimeError(f"{message.NAME} did not survive sealing and opening")
        fits = "fits" if len(frame) <= LORA_MAX_FRAME else "TOO BIG"
        direction = "up" if message.UPLINK else "down"
        shown = {k: v for k, v in opened.to_dict().items() if k != "type"}
        if isinstance(opened, Observations):
            shown = {
                "radio": "BLE",
                "sightings": len(opened.sightings),
                "addresses": "(personal data)",
            }
        print(f"{message.NAME:<14}{direction:<6}{len(frame):>6}  {fits:<8} {shown}")
        frames.append(frame)

    climate = frames[0]
    header = parse_header(climate)
    cose, aad = to_cose(climate)
    print(f"\nthe readings frame on the air ({len(climate)} bytes):\n  {climate.hex()}")
    print(f"  header: type {header.msg_type}, node {header.node_id}, counter {header.counter}")
    print(
        f"the same frame as a standard COSE_Encrypt0 ({len(cose)} bytes), external_aad {aad.hex()}"
    )
    print(f"  {cose.hex()}")

    print("\nwhat the gateway does with bad input:")
    flipped = bytearray(climate)
    flipped[-1] ^= 0x01
    other = NodeKeys(DEMO_NODE_ID, os.urandom(16))
    print(f"  one bit flipped             -> {_reason(bytes(flipped), keys)}")
    print(f"  sealed with another key     -> {_reason(seal(_examples()[0], 300, other), keys)}")
    print(f"  cut short                   -> {_reason(climate[:10], keys)}")
    later_version = bytes([climate[0] | 0x80, 0]) + climate[1:]  # E = 1, epoch byte 0
    print(f"  from a later version        -> {_reason(later_version, keys)}")
    window = ReplayWindow()
    window.accept(header.counter)
    outcome = (
        "duplicate: acknowledged again, forwarded once"
        if window.check(header.counter) == DUPLICATE
        else "new"
    )
    print(f"  the same frame again        -> {outcome}")

    decoder = StreamDecoder()
    decoder.feed(b"I (312) boot: console text on the same line\r\n" + encode_serial(climate))
    events = []
    while True:
        try:
            event = decoder.next_event()
        except RemoteProtocolError as exc:
            events.append(f"skipped {len(exc.data)} bytes ({exc.reason_name})")
            continue
        if event is NEED_DATA or not isinstance(event, bytes):
            break
        events.append(f"frame of {len(event)} bytes")
    print(f"  serial line with noise      -> {', '.join(events)}")
    return 0
