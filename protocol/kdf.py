# HMAC-SHA256 (RFC 2104) and HKDF-SHA256 (RFC 5869) on hashlib alone.
#
# MicroPython has no hmac module, and its hashlib.sha256 objects have update()/digest() but no
# copy(), so the usual trick of hashing the padded key once and copying the state is not
# available: every HMAC hashes the 64-byte padded key again. HKDF's expand step computes many
# HMACs under one key, so the two padded keys are built once and reused.
#
# This module runs unchanged on MicroPython: no typing at run time.

import hashlib

from .errors import LocalProtocolError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TypeAlias

    Buffer: TypeAlias = bytes | bytearray | memoryview

_BLOCK = 64  # SHA-256 block size
_HASH_LEN = 32  # SHA-256 output size
_MAX_OKM = 255 * _HASH_LEN


def _check_buffer(name: str, value: object) -> None:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise LocalProtocolError(name + " must be bytes, not " + type(value).__name__)


def _pads(key: "Buffer") -> "tuple[bytearray, bytearray]":
    """The key XOR ipad and key XOR opad blocks of RFC 2104."""
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    ipad = bytearray(_BLOCK)
    ipad[: len(key)] = key
    opad = bytearray(ipad)
    for i in range(_BLOCK):
        ipad[i] ^= 0x36
        opad[i] ^= 0x5C
    return ipad, opad


def _hmac(ipad: bytearray, opad: bytearray, *parts: "Buffer") -> bytes:
    """HMAC of the concatenation of `parts`, fed to the hash one by one instead of joined."""
    inner = hashlib.sha256(ipad)
    for part in parts:
        inner.update(part)
    outer = hashlib.sha256(opad)
    outer.update(inner.digest())
    return outer.digest()


def hmac_sha256(key: "Buffer", msg: "Buffer") -> bytes:
    """HMAC-SHA256 of `msg` under `key` (RFC 2104); 32 bytes."""
    _check_buffer("key", key)
    _check_buffer("msg", msg)
    ipad, opad = _pads(key)
    return _hmac(ipad, opad, msg)


def hkdf_sha256(ikm: "Buffer", salt: "Buffer | None", info: "Buffer | None", length: int) -> bytes:
    """HKDF-SHA256 (RFC 5869): extract with `salt`, expand with `info` to `length` bytes.

    salt None or empty means 32 zero bytes (the RFC's default); info None means empty.
    """
    _check_buffer("ikm", ikm)
    if salt is not None:
        _check_buffer("salt", salt)
    if info is None:
        info = b""
    _check_buffer("info", info)
    if not isinstance(length, int) or isinstance(length, bool):
        raise LocalProtocolError("length must be an int, not " + type(length).__name__)
    if length < 0 or length > _MAX_OKM:
        raise LocalProtocolError(
            "length must be 0 to " + str(_MAX_OKM) + " bytes, not " + str(length)
        )
    if salt is None or len(salt) == 0:
        salt = bytes(_HASH_LEN)
    prk = hmac_sha256(salt, ikm)
    # Expand: T(i) = HMAC(PRK, T(i-1) | info | i), OKM = first `length` bytes of T(1) T(2) ...
    ipad, opad = _pads(prk)
    okm = bytearray(length)
    t = b""
    counter = bytearray(1)
    pos = 0
    while pos < length:
        counter[0] += 1
        t = _hmac(ipad, opad, t, info, counter)
        take = min(_HASH_LEN, length - pos)
        okm[pos : pos + take] = t[:take]
        pos += take
    return bytes(okm)
