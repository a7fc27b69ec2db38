"""protocol.ccm against published vectors and against cryptography's AESCCM."""

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from hypothesis import given
from hypothesis import strategies as st

from protocol.ccm import AesCcm
from protocol.errors import LocalProtocolError, Reason, RemoteProtocolError


def block_fn(key: bytes):
    # ECB on one 16-byte block at a time is exactly how CCM uses AES (the same as
    # cryptolib.aes(key, 1).encrypt on the node); nothing here encrypts multi-block data in ECB.
    return Cipher(algorithms.AES(key), modes.ECB()).encryptor().update  # noqa: S305


def ours(key: bytes, tag_length: int = 8) -> AesCcm:
    return AesCcm(block_fn(key), tag_length)


H = bytes.fromhex

# (name, key, nonce, aad, plaintext, ciphertext, tag), hard-coded from the documents.
RFC3610_KEY = "c0c1c2c3c4c5c6c7c8c9cacbcccdcecf"
NIST_KEY = "404142434445464748494a4b4c4d4e4f"
VECTORS = [
    # RFC 3610 section 8: 13-byte nonce (L=2), 8 or 12 bytes of aad, M=8 (#1-#12) or M=10.
    (
        "rfc3610-1",
        RFC3610_KEY,
        "00000003020100a0a1a2a3a4a5",
        "0001020304050607",
        "08090a0b0c0d0e0f101112131415161718191a1b1c1d1e",
        "588c979a61c663d2f066d0c2c0f989806d5f6b61dac384",
        "17e8d12cfdf926e0",
    ),
    (
        "rfc3610-2",
        RFC3610_KEY,
        "00000004030201a0a1a2a3a4a5",
        "0001020304050607",
        "08090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
        "72c91a36e135f8cf291ca894085c87e3cc15c439c9e43a3b",
        "a091d56e10400916",
    ),
    (
        "rfc3610-3",
        RFC3610_KEY,
        "00000005040302a0a1a2a3a4a5",
        "0001020304050607",
        "08090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20",
        "51b1e5f44a197d1da46b0f8e2d282ae871e838bb64da859657",
        "4adaa76fbd9fb0c5",
    ),
    (
        "rfc3610-4",
        RFC3610_KEY,
        "00000006050403a0a1a2a3a4a5",
        "000102030405060708090a0b",
        "0c0d0e0f101112131415161718191a1b1c1d1e",
        "a28c6865939a9a79faaa5c4c2a9d4a91cdac8c",
        "96c861b9c9e61ef1",
    ),
    (
        "rfc3610-7",
        RFC3610_KEY,
        "00000009080706a0a1a2a3a4a5",
        "0001020304050607",
        "08090a0b0c0d0e0f101112131415161718191a1b1c1d1e",
        "0135d1b2c95f41d5d1d4fec185d166b8094e999dfed96c",
        "048c56602c97acbb7490",
    ),
    (
        "rfc3610-13",
        "d7828d13b2b0bdc325a76236df93cc6b",
        "00412b4ea9cdbe3c9696766cfa",
        "0be1a88bace018b1",
        "08e8cf97d820ea258460e96ad9cf5289054d895ceac47c",
        "4cb97f86a2a4689a877947ab8091ef5386a6ffbdd080f8",
        "e78cf7cb0cddd7b3",
    ),
    (
        "rfc3610-24",
        "d7828d13b2b0bdc325a76236df93cc6b",
        "008d493b30ae8b3c9696766cfa",
        "6e37a6ef546d955d34ab6059",
        "abf21c0b02feb88f856df4a37381bce3cc128517d4",
        "f32905b88a641b04b9c9ffb58cc390900f3da12ab1",
        "6dce9e82efa16da62059",
    ),
    # NIST SP 800-38C appendix C: nonce 7/8/12 bytes, tag 4/6/8 bytes.
    (
        "sp800-38c-c1",
        NIST_KEY,
        "10111213141516",
        "0001020304050607",
        "20212223",
        "7162015b",
        "4dac255d",
    ),
    (
        "sp800-38c-c2",
        NIST_KEY,
        "1011121314151617",
        "000102030405060708090a0b0c0d0e0f",
        "202122232425262728292a2b2c2d2e2f",
        "d2a1f0e051ea5f62081a7792073d593d",
        "1fc64fbfaccd",
    ),
    (
        "sp800-38c-c3",
        NIST_KEY,
        "101112131415161718191a1b",
        "000102030405060708090a0b0c0d0e0f10111213",
        "202122232425262728292a2b2c2d2e2f3031323334353637",
        "e3b201a9f5b71a7a9b1ceaeccd97e70b6176aad9a4428aa5",
        "484392fbc1b09951",
    ),
    # C.4: 65536 bytes of aad (0x00..0xff repeated), which needs the 6-byte aad length form.
    (
        "sp800-38c-c4",
        NIST_KEY,
        "101112131415161718191a1b1c",
        bytes(range(256)).hex() * 256,
        "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f",
        "69915dad1e84c6376a68c2967e4dab615ae0fd1faec44cc484828529463ccf72",
        "b4ac6bec93e8598e7f0dadbcea5b",
    ),
]


@pytest.mark.parametrize("vector", [pytest.param(v[1:], id=v[0]) for v in VECTORS])
def test_published_vectors(vector: tuple[str, ...]) -> None:
    key, nonce, aad, plaintext, ciphertext, tag = (H(x) for x in vector)
    assert len(ciphertext) == len(plaintext)
    sealed = ciphertext + tag
    tag_length = len(tag)
    # The hard-coded expectation agrees with cryptography (so a typo in it shows up here) ...
    reference = AESCCM(key, tag_length)
    assert reference.encrypt(nonce, plaintext, aad) == sealed
    # ... and with us.
    ccm = ours(key, tag_length)
    assert ccm.encrypt(nonce, plaintext, aad) == sealed
    assert ccm.decrypt(nonce, sealed, aad) == plaintext


@given(
    key=st.binary(min_size=16, max_size=16),
    nonce=st.integers(7, 13).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
    tag_length=st.sampled_from([4, 6, 8, 10, 12, 14, 16]),
    aad=st.binary(max_size=300),
    plaintext=st.binary(max_size=200),
)
def test_matches_cryptography(
    key: bytes, nonce: bytes, tag_length: int, aad: bytes, plaintext: bytes
) -> None:
    reference = AESCCM(key, tag_length)
    ccm = ours(key, tag_length)
    sealed = ccm.encrypt(nonce, plaintext, aad)
    assert sealed == reference.encrypt(nonce, plaintext, aad)
    assert ccm.decrypt(nonce, sealed, aad) == plaintext
    # The input types the gateway may hand over.
    assert ccm.decrypt(bytearray(nonce), memoryview(sealed), bytearray(aad)) == plaintext


@pytest.mark.parametrize("aad_length", [0xFEFF, 0xFF00])
def test_aad_length_encoding_boundary(aad_length: int) -> None:
    # Below 2**16 - 2**8 the aad length takes 2 bytes; from there on, 0xfffe + 4 bytes.
    key = bytes(range(16))
    nonce = bytes(range(12))
    aad = bytes(i & 0xFF for i in range(aad_length))
    sealed = ours(key).encrypt(nonce, b"payload", aad)
    assert sealed == AESCCM(key, 8).encrypt(nonce, b"payload", aad)


@pytest.mark.parametrize("aad", [None, b""])
def test_no_associated_data(aad: bytes | None) -> None:
    key = bytes(16)
    nonce = bytes(13)
    sealed = ours(key).encrypt(nonce, b"hello", aad)
    assert sealed == AESCCM(key, 8).encrypt(nonce, b"hello", None)
    assert ours(key).decrypt(nonce, sealed, aad) == b"hello"
    # Adata = 0 is not the same as one byte of aad.
    assert sealed != ours(key).encrypt(nonce, b"hello", b"\x00")


def test_longest_payload_for_nonce() -> None:
    # A 13-byte nonce leaves a 2-byte length field: 65535 bytes fit, 65536 do not.
    key = bytes(range(16))
    nonce = bytes(13)
    data = bytes(i & 0xFF for i in range(0xFFFF))
    sealed = ours(key, 4).encrypt(nonce, data, b"a")
    assert sealed == AESCCM(key, 4).encrypt(nonce, data, b"a")
    assert ours(key, 4).decrypt(nonce, sealed, b"a") == data
    with pytest.raises(LocalProtocolError, match="too long"):
        ours(key, 4).encrypt(nonce, data + b"x", b"a")
    with pytest.raises(RemoteProtocolError) as info:
        ours(key, 4).decrypt(nonce, data + b"xxxxx", b"a")
    assert info.value.reason == Reason.AUTH_FAILED


# -- tampering ---------------------------------------------------------------------------------

KEY = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
NONCE = bytes.fromhex("a0a1a2a3a4a5a6a7a8a9aaabac")
AAD = b"header"
PLAIN = b"temperature=21.5;humidity=40"


def _sealed() -> bytes:
    return ours(KEY).encrypt(NONCE, PLAIN, AAD)


def _assert_auth_failed(nonce: bytes, sealed: bytes, aad: bytes | None) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        ours(KEY).decrypt(nonce, sealed, aad)
    assert info.value.reason == Reason.AUTH_FAILED
    assert info.value.reason_name == "auth_failed"
    # cryptography agrees that it is forged.
    with pytest.raises(InvalidTag):
        AESCCM(KEY, 8).decrypt(nonce, sealed, aad)


def test_every_bit_flip_of_ciphertext_and_tag_is_rejected() -> None:
    sealed = _sealed()
    assert ours(KEY).decrypt(NONCE, sealed, AAD) == PLAIN
    for bit in range(len(sealed) * 8):
        forged = bytearray(sealed)
        forged[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(RemoteProtocolError) as info:
            ours(KEY).decrypt(NONCE, bytes(forged), AAD)
        assert info.value.reason == Reason.AUTH_FAILED


def test_changed_aad_is_rejected() -> None:
    sealed = _sealed()
    _assert_auth_failed(NONCE, sealed, b"headeR")
    _assert_auth_failed(NONCE, sealed, AAD + b"\x00")
    _assert_auth_failed(NONCE, sealed, None)


def test_changed_nonce_is_rejected() -> None:
    sealed = _sealed()
    _assert_auth_failed(NONCE[:-1] + b"\x00", sealed, AAD)
    with pytest.raises(RemoteProtocolError) as info:
        ours(KEY).decrypt(NONCE[:-1], sealed, AAD)  # another length: another L, another tag
    assert info.value.reason == Reason.AUTH_FAILED


def test_wrong_key_and_wrong_tag_length_are_rejected() -> None:
    sealed = _sealed()
    with pytest.raises(RemoteProtocolError):
        ours(bytes(16)).decrypt(NONCE, sealed, AAD)
    with pytest.raises(RemoteProtocolError):
        ours(KEY, 16).decrypt(NONCE, sealed, AAD)


def test_truncated_and_extended_are_rejected() -> None:
    sealed = _sealed()
    for cut in range(len(sealed)):
        with pytest.raises(RemoteProtocolError) as info:
            ours(KEY).decrypt(NONCE, sealed[:cut], AAD)
        assert info.value.reason == Reason.AUTH_FAILED
    _assert_auth_failed(NONCE, sealed + b"\x00", AAD)


def test_shorter_than_tag() -> None:
    with pytest.raises(RemoteProtocolError, match="shorter than the 8-byte tag") as info:
        ours(KEY).decrypt(NONCE, b"1234567", AAD)
    assert info.value.reason == Reason.AUTH_FAILED


def test_failure_does_not_carry_plaintext() -> None:
    sealed = bytearray(_sealed())
    sealed[-1] ^= 1
    with pytest.raises(RemoteProtocolError) as info:
        ours(KEY).decrypt(NONCE, bytes(sealed), AAD)
    assert info.value.data == b""
    assert PLAIN not in str(info.value).encode()


def test_tag_only_message() -> None:
    sealed = ours(KEY, 16).encrypt(NONCE, b"", AAD)
    assert len(sealed) == 16
    assert sealed == AESCCM(KEY, 16).encrypt(NONCE, b"", AAD)
    assert ours(KEY, 16).decrypt(NONCE, sealed, AAD) == b""


# -- misuse ------------------------------------------------------------------------------------


@pytest.mark.parametrize("tag_length", [0, 2, 3, 5, 7, 18, 8.0, True, "8", None])
def test_bad_tag_length(tag_length: object) -> None:
    with pytest.raises(LocalProtocolError, match="tag_length"):
        AesCcm(block_fn(KEY), tag_length)  # type: ignore[arg-type]


def test_encrypt_block_must_be_callable() -> None:
    with pytest.raises(LocalProtocolError, match="callable"):
        AesCcm(KEY)  # type: ignore[arg-type]


def test_encrypt_block_must_return_a_block() -> None:
    with pytest.raises(LocalProtocolError, match="16 bytes"):
        AesCcm(lambda block: bytes(block[:8])).encrypt(NONCE, b"x", None)


@pytest.mark.parametrize("length", [0, 6, 14, 16])
def test_bad_nonce_length(length: int) -> None:
    for call in (ours(KEY).encrypt, ours(KEY).decrypt):
        with pytest.raises(LocalProtocolError, match="nonce must be 7 to 13 bytes"):
            call(bytes(length), bytes(16), AAD)


@pytest.mark.parametrize(
    ("nonce", "data", "aad", "what"),
    [
        ("a" * 13, b"x", b"", "nonce"),
        (NONCE, "plain", b"", "data"),
        (NONCE, b"x", "aad", "associated_data"),
        (NONCE, [1, 2], None, "data"),
        (12345, b"x", None, "nonce"),
    ],
)
def test_non_bytes(nonce: object, data: object, aad: object, what: str) -> None:
    for call in (ours(KEY).encrypt, ours(KEY).decrypt):
        with pytest.raises(LocalProtocolError, match=what + " must be bytes"):
            call(nonce, data, aad)  # type: ignore[arg-type]


def test_seven_byte_nonce_has_an_eight_byte_length_field() -> None:
    # L=8: the length check is a shift by 64, which must simply pass (no big int needed).
    sealed = ours(KEY).encrypt(bytes(7), bytes(100), None)
    assert sealed == AESCCM(KEY, 8).encrypt(bytes(7), bytes(100), None)
