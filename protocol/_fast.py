# CPython backend: the well-kept libraries the gateway relies on (cbor2, cryptography).
# protocol/_small.py is the MicroPython twin; golden vectors prove both give the same bytes.

import cbor2
from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import Reason, RemoteProtocolError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def cbor_dumps(obj: object) -> bytes:
    return cbor2.dumps(obj, canonical=True)


def cbor_loads(data: bytes) -> "Any":
    """Decode exactly one deterministically encoded CBOR item, like protocol.cbor.loads.

    cbor2 is lenient (it ignores trailing bytes, accepts long-form heads and unsorted maps), so
    the item is encoded again and must give back the very same bytes: one message has exactly one
    encoding, which keeps duplicate detection and the golden vectors honest.
    """
    try:
        obj = cbor2.loads(data)
        same = cbor2.dumps(obj, canonical=True) == data
    except Exception as exc:  # cbor2 raises several types; all mean "not CBOR we accept"
        raise RemoteProtocolError(Reason.MALFORMED, "invalid CBOR: " + str(exc)) from None
    if not same:
        raise RemoteProtocolError(Reason.MALFORMED, "CBOR is not deterministically encoded")
    return obj


def new_aead(key: bytes) -> "Any":
    """AES-CCM-16-64-128 (COSE algorithm 10): 13-byte nonce, 8-byte tag."""
    return AESCCM(key, tag_length=8)


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=SHA256(), length=length, salt=salt or None, info=info).derive(ikm)
