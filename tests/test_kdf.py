"""protocol.kdf against RFC 5869, cryptography's HKDF and the stdlib hmac module."""

import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import LocalProtocolError
from protocol.kdf import hkdf_sha256, hmac_sha256


def reference_hkdf(ikm: bytes, salt: bytes | None, info: bytes | None, length: int) -> bytes:
    return HKDF(hashes.SHA256(), length, salt, info).derive(ikm)


# RFC 5869 appendix A, test cases 1-3 (SHA-256): (name, ikm, salt, info, length, prk, okm).
RFC5869 = [
    (
        "A.1",
        "0b" * 22,
        "000102030405060708090a0b0c",
        "f0f1f2f3f4f5f6f7f8f9",
        42,
        "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5",
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
    ),
    (
        "A.2",
        bytes(range(0x00, 0x50)).hex(),
        bytes(range(0x60, 0xB0)).hex(),
        bytes(range(0xB0, 0x100)).hex(),
        82,
        "06a6b88c5853361a06104c9ceb35b45cef760014904671014a193f40c15fc244",
        "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c"
        "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71"
        "cc30c58179ec3e87c14c01d5c1f3434f1d87",
    ),
    (
        "A.3",
        "0b" * 22,
        "",
        "",
        42,
        "19ef24a32c717b167f33a91d6f648bdf96596776afdb6377ac434c1c293ccb04",
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8",
    ),
]


@pytest.mark.parametrize("vector", [pytest.param(v[1:], id=v[0]) for v in RFC5869])
def test_rfc5869(vector: tuple[object, ...]) -> None:
    ikm_hex, salt_hex, info_hex, length, prk_hex, okm_hex = vector
    assert isinstance(length, int)
    ikm, salt, info, prk, okm = (
        bytes.fromhex(str(x)) for x in (ikm_hex, salt_hex, info_hex, prk_hex, okm_hex)
    )
    assert len(okm) == length
    # The hard-coded expectations agree with cryptography and the stdlib (catches typos) ...
    assert reference_hkdf(ikm, salt, info, length) == okm
    assert hmac.new(salt or bytes(32), ikm, hashlib.sha256).digest() == prk
    # ... and with us. PRK = HMAC-Hash(salt, IKM) is the extract step.
    assert hmac_sha256(salt or bytes(32), ikm) == prk
    assert hkdf_sha256(ikm, salt, info, length) == okm


def test_empty_salt_means_zeros() -> None:
    ikm = b"\x0b" * 22
    expected = hkdf_sha256(ikm, bytes(32), b"", 42)
    assert hkdf_sha256(ikm, None, b"", 42) == expected
    assert hkdf_sha256(ikm, b"", None, 42) == expected
    assert hkdf_sha256(ikm, bytearray(), memoryview(b""), 42) == expected


@given(key=st.binary(max_size=200), msg=st.binary(max_size=300))
def test_hmac_matches_stdlib(key: bytes, msg: bytes) -> None:
    # Keys up to 200 bytes cover both sides of the 64-byte block (longer keys are hashed first).
    expected = hmac.new(key, msg, hashlib.sha256).digest()
    assert hmac_sha256(key, msg) == expected
    assert hmac_sha256(bytearray(key), memoryview(msg)) == expected


@pytest.mark.parametrize("key_length", [0, 1, 63, 64, 65, 128])
def test_hmac_key_length_edges(key_length: int) -> None:
    key = bytes(range(key_length))
    assert hmac_sha256(key, b"msg") == hmac.new(key, b"msg", hashlib.sha256).digest()


@given(
    ikm=st.binary(max_size=100),
    salt=st.none() | st.binary(max_size=100),
    info=st.none() | st.binary(max_size=100),
    length=st.integers(0, 255 * 32),
)
def test_hkdf_matches_cryptography(
    ikm: bytes, salt: bytes | None, info: bytes | None, length: int
) -> None:
    assert hkdf_sha256(ikm, salt, info, length) == reference_hkdf(ikm, salt, info, length)


def test_longest_output() -> None:
    okm = hkdf_sha256(b"ikm", b"salt", b"info", 255 * 32)
    assert okm == reference_hkdf(b"ikm", b"salt", b"info", 255 * 32)
    # Every expand block is different (the counter byte runs 1..255 without wrapping).
    blocks = {okm[i : i + 32] for i in range(0, len(okm), 32)}
    assert len(blocks) == 255


@pytest.mark.parametrize("length", [255 * 32 + 1, 10**6, -1])
def test_bad_length(length: int) -> None:
    with pytest.raises(LocalProtocolError, match="length must be 0 to 8160 bytes"):
        hkdf_sha256(b"ikm", None, None, length)


@pytest.mark.parametrize("length", [32.0, True, "32", None])
def test_length_must_be_int(length: object) -> None:
    with pytest.raises(LocalProtocolError, match="length must be an int"):
        hkdf_sha256(b"ikm", None, None, length)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "what"),
    [
        (("ikm", None, None, 32), "ikm"),
        ((b"ikm", "salt", None, 32), "salt"),
        ((b"ikm", None, "info", 32), "info"),
    ],
)
def test_hkdf_non_bytes(args: tuple[object, ...], what: str) -> None:
    with pytest.raises(LocalProtocolError, match=what + " must be bytes"):
        hkdf_sha256(*args)  # type: ignore[arg-type]


def test_hmac_non_bytes() -> None:
    with pytest.raises(LocalProtocolError, match="key must be bytes"):
        hmac_sha256("key", b"msg")  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError, match="msg must be bytes"):
        hmac_sha256(b"key", "msg")  # type: ignore[arg-type]
