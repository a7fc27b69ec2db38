# CPython backend: the well-kept libraries the gateway relies on (cbor2, cryptography).
# protocol/_small.py is the MicroPython twin; golden vectors prove both give the same bytes.

import re

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


# -- the strict check's fast path ---------------------------------------------------------------
#
# Encoding the item again costs more than decoding it (cbor2.dumps is most of a frame's CBOR
# time), so the shapes nearly every frame has (an array of scalars and of arrays of scalars:
# readings, observations, events, acks) are checked by a regular expression instead. It
# matches an input only if every head in it is the one deterministic encoding allows:
#   - integers, and lengths of strings and arrays, in the shortest form: an argument in the
#     1, 2, 4 or 8 bytes after the initial byte is at least 24, 2**8, 2**16 or 2**32;
#   - definite lengths only; no tag, no float, no simple value but false, true and null;
#   - strings of 0..23 bytes (their length in the initial byte, so the expression skips
#     exactly their content; cbor2 has refused ill-formed UTF-8 already); arrays of
#     0.._MAX_INNER such scalars inside the top-level array;
#   - the top-level array of n items followed by exactly n such items, nothing after them.
# Each alternative begins with its own initial bytes, so an input has at most one way to match,
# and it is the way a decoder reads it. What matches is therefore one data item encoded
# deterministically (with no map, key order is not a question), and cbor2's canonical
# encoding of what cbor2 decodes from it gives back the same bytes: the fast path accepts
# only what the full check accepts. Anything else (maps, longer strings, deeper nesting, and
# every malformed input) takes the full check. tests/test_fuzz.py holds the fast path to the
# full check, and this decoder to the node's.


def _byte(b: int) -> bytes:
    return re.escape(bytes([b]))


_INTS = [  # and the simple values; most frequent first: the expression tries them in order
    rb"[\x00-\x17\x20-\x37]",  # integers -24..23
    rb"[\x18\x38][\x18-\xff]",  # 1-byte argument >= 24
    rb"[\x19\x39][\x01-\xff].",  # 2-byte argument >= 2**8
    rb"[\x1a\x3a](?:[\x01-\xff].|\x00[\x01-\xff])..",  # 4-byte argument >= 2**16
    rb"[\x1b\x3b](?!\x00\x00\x00\x00).{8}",  # 8-byte argument >= 2**32
    rb"[\xf4-\xf6]",  # false, true, null
]
_STRINGS = [b"[" + _byte(0x40 + k) + _byte(0x60 + k) + b"].{%d}" % k for k in range(24)]
_SCALAR = b"|".join(_INTS + _STRINGS)
_MAX_INNER = 4  # items of an array inside the top-level one (a sighting has 2)
_INNER = [_byte(0x80 + k) + b"(?:" + _SCALAR + b"){%d}" % k for k in range(_MAX_INNER + 1)]
_ITEM = b"|".join(_INTS + _INNER + _STRINGS)


_NEVER = re.compile(b"(?!)")


class _ArrayExpressions(dict[int, "Any"]):
    """Item count -> the compiled expression for a top-level array of that many items, made
    on first use (a few milliseconds each); at most 256 of them."""

    def __missing__(self, n: int) -> "Any":
        if n >= 256:  # more items than a frame can hold: the full check
            return _NEVER
        head = bytes([0x80 + n]) if n < 24 else bytes([0x98, n])
        pattern = self[n] = re.compile(re.escape(head) + b"(?:" + _ITEM + b"){%d}" % n, re.DOTALL)
        return pattern


_ARRAYS = _ArrayExpressions()


def cbor_loads(data: bytes) -> "Any":
    """Decode exactly one deterministically encoded CBOR item, like protocol.cbor.loads.

    cbor2 is lenient (it ignores trailing bytes, accepts long-form heads and unsorted maps), so
    an input must prove it is the item's one deterministic encoding: by the expression above,
    or by the item encoded again giving back the very same bytes. One message has exactly one
    encoding, which keeps duplicate detection and the golden vectors honest.
    """
    try:
        obj = cbor2.loads(data)
        if type(obj) is list and _ARRAYS[len(obj)].fullmatch(data):
            return obj
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
