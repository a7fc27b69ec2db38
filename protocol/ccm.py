# AES-CCM (RFC 3610, NIST SP 800-38C) on top of an injected AES block function.
#
# Why not a library: MicroPython's cryptolib.aes on ESP32/RP2040 offers ECB and CBC only, so the
# node builds CCM itself from single-block AES. The gateway can pass the ECB encryptor from
# `cryptography` and get byte-identical results to its AESCCM (the tests check that).
#
# The API mirrors cryptography.hazmat.primitives.ciphers.aead.AESCCM: encrypt() returns
# ciphertext || tag, decrypt() returns the plaintext or raises.
#
# RAM: the node firmware has ~100 KB of heap, and every small bytes object is a heap allocation
# that fragments it. So each call allocates its output once plus two 16-byte bytearrays (the
# CBC-MAC state and the counter block) and works on them in place, byte by byte. The only
# per-block allocation left is the 16-byte result of encrypt_block itself.
#
# This module runs unchanged on MicroPython: no typing at run time, no enum, no dataclasses.

from .errors import LocalProtocolError, Reason, RemoteProtocolError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeAlias

    Buffer: TypeAlias = bytes | bytearray | memoryview

_TAG_LENGTHS = (4, 6, 8, 10, 12, 14, 16)


def _check_buffer(name: str, value: object) -> None:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise LocalProtocolError(name + " must be bytes, not " + type(value).__name__)


class AesCcm:
    """AES-CCM with a caller-supplied AES block encryption.

    encrypt_block(block) must return the 16-byte AES encryption of the 16-byte `block` under the
    key (for example cryptolib.aes(key, 1).encrypt on MicroPython, or the update() of a
    `cryptography` ECB encryptor). It is passed a bytearray that is reused between calls, so it
    must not keep a reference to it.
    """

    def __init__(self, encrypt_block: "Callable[[bytearray], bytes]", tag_length: int = 8) -> None:
        if not callable(encrypt_block):
            raise LocalProtocolError("encrypt_block must be callable")
        # isinstance rejects 8.0 (which equals 8); a bool is never in _TAG_LENGTHS.
        if not isinstance(tag_length, int) or tag_length not in _TAG_LENGTHS:
            raise LocalProtocolError(
                "tag_length must be one of 4, 6, 8, 10, 12, 14, 16, not " + repr(tag_length)
            )
        self._encrypt_block = encrypt_block
        self._tag_length = tag_length

    def encrypt(self, nonce: "Buffer", data: "Buffer", associated_data: "Buffer | None") -> bytes:
        """Return ciphertext || tag (len(data) + tag_length bytes)."""
        q = self._check(nonce, data, associated_data)
        n = len(data)
        self._check_length(n, q)
        m = self._tag_length
        out = bytearray(n + m)
        mac = self._mac(nonce, q, associated_data, data)
        s0 = self._ctr(nonce, q, data, out)
        for i in range(m):
            out[n + i] = mac[i] ^ s0[i]
        return bytes(out)

    def decrypt(self, nonce: "Buffer", data: "Buffer", associated_data: "Buffer | None") -> bytes:
        """Return the plaintext, or raise RemoteProtocolError(AUTH_FAILED)."""
        q = self._check(nonce, data, associated_data)
        m = self._tag_length
        n = len(data) - m
        if n < 0:
            raise RemoteProtocolError(
                Reason.AUTH_FAILED, "sealed data is shorter than the " + str(m) + "-byte tag"
            )
        if n >> (8 * q):
            # No correct sender can produce this with this nonce length: treat it as forged
            # rather than as our misuse, so a peer cannot turn it into a crash.
            raise RemoteProtocolError(Reason.AUTH_FAILED, "sealed data too long for the nonce")
        view = memoryview(data)
        out = bytearray(n)
        s0 = self._ctr(nonce, q, view[:n], out)
        mac = self._mac(nonce, q, associated_data, out)
        # Constant time: accumulate every difference, decide once at the end
        # (MicroPython has no hmac.compare_digest).
        diff = 0
        for i in range(m):
            diff |= mac[i] ^ s0[i] ^ data[n + i]
        if diff:
            # Wipe the unverified plaintext before anyone can see it.
            for i in range(n):
                out[i] = 0
            raise RemoteProtocolError(Reason.AUTH_FAILED, "tag does not verify")
        return bytes(out)

    # -- internals --------------------------------------------------------------------------

    def _check(self, nonce: "Buffer", data: "Buffer", associated_data: "Buffer | None") -> int:
        """Validate the arguments; return q = L, the size in bytes of the length field."""
        _check_buffer("nonce", nonce)
        _check_buffer("data", data)
        if associated_data is not None:
            _check_buffer("associated_data", associated_data)
        nlen = len(nonce)
        if nlen < 7 or nlen > 13:
            raise LocalProtocolError("nonce must be 7 to 13 bytes, not " + str(nlen))
        return 15 - nlen

    def _check_length(self, n: int, q: int) -> None:
        # The payload length must fit in q bytes: n < 2**(8*q). Shifting instead of computing
        # 2**(8*q) keeps it a small int on MicroPython (q can be 8).
        if n >> (8 * q):
            raise LocalProtocolError(
                "data too long: " + str(n) + " bytes do not fit a " + str(q) + "-byte length "
                "field (" + str(15 - q) + "-byte nonce)"
            )

    def _aes(self, block: bytearray) -> bytes:
        out = self._encrypt_block(block)
        if len(out) != 16:
            raise LocalProtocolError("encrypt_block must return 16 bytes, not " + str(len(out)))
        return out

    def _absorb(self, x: bytearray, pos: int, data: "Buffer") -> int:
        """CBC-MAC: XOR `data` into the state `x` from offset `pos`, encrypting each full block.

        Returns the new offset. Byte by byte so that no padded copy of the input is ever built.
        """
        for b in data:
            x[pos] ^= b
            pos += 1
            if pos == 16:
                x[:] = self._aes(x)
                pos = 0
        return pos

    def _mac(self, nonce: "Buffer", q: int, aad: "Buffer | None", payload: "Buffer") -> bytearray:
        """The CBC-MAC T over B0, the encoded associated data and the payload (RFC 3610 2.2)."""
        if aad is None:
            aad = b""
        a = len(aad)
        x = bytearray(16)
        # B0 = flags | nonce | l(m); flags = Adata << 6 | M' << 3 | L', M' = (M-2)/2, L' = L-1.
        x[0] = (0x40 if a else 0) | (((self._tag_length - 2) // 2) << 3) | (q - 1)
        x[1 : 16 - q] = nonce
        x[16 - q :] = len(payload).to_bytes(q, "big")
        x[:] = self._aes(x)
        if a:
            # l(a): 2 bytes below 2**16 - 2**8, else 0xfffe + 4 bytes, else 0xffff + 8 bytes.
            if a < 0xFF00:
                pos = self._absorb(x, 0, a.to_bytes(2, "big"))
            elif not a >> 32:
                pos = self._absorb(x, 0, b"\xff\xfe" + a.to_bytes(4, "big"))
            else:
                pos = self._absorb(x, 0, b"\xff\xff" + a.to_bytes(8, "big"))
            pos = self._absorb(x, pos, aad)
            if pos:  # zero padding to a block boundary: XOR with zeros changes nothing
                x[:] = self._aes(x)
        if self._absorb(x, 0, payload):
            x[:] = self._aes(x)
        return x

    def _ctr(self, nonce: "Buffer", q: int, src: "Buffer", dst: bytearray) -> bytes:
        """CTR mode: dst = src XOR S1 S2 ...; returns S0, the block that masks the tag."""
        ctr = bytearray(16)
        # A_i = flags | nonce | i, flags = L - 1
        ctr[0] = q - 1
        ctr[1 : 16 - q] = nonce
        s0 = self._aes(ctr)
        n = len(src)
        for start in range(0, n, 16):
            # Increment the counter field in place (it cannot overflow: n < 2**(8*q)).
            j = 15
            while True:
                ctr[j] = (ctr[j] + 1) & 0xFF
                if ctr[j]:
                    break
                j -= 1
            s = self._aes(ctr)
            for i in range(min(16, n - start)):
                dst[start + i] = src[start + i] ^ s[i]
        return s0
