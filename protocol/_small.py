# MicroPython backend: our own small CBOR, AES-CCM and HKDF, because MicroPython has none of
# cbor2/cryptography and its cryptolib.aes offers only ECB/CBC (no CCM) on ESP32 and RP2040.
# protocol/_fast.py is the CPython twin; golden vectors prove both give the same bytes.

from .cbor import dumps as cbor_dumps
from .cbor import loads as cbor_loads
from .ccm import AesCcm
from .kdf import hkdf_sha256

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["cbor_dumps", "cbor_loads", "hkdf_sha256", "new_aead"]


def new_aead(key: bytes) -> "Any":
    """AES-CCM-16-64-128 on the board's AES block cipher (cryptolib.aes in ECB mode, mode 1)."""
    import cryptolib  # noqa: PLC0415 - only on the device; missing on CPython

    return AesCcm(cryptolib.aes(key, 1).encrypt, 8)
