# The standard view of a frame: COSE_Encrypt0 (RFC 9052) and its external_aad, lossless both
# ways. SPEC.md section "Envelope" describes the mapping. Used by tools and interoperability
# tests (any COSE library opens our frames with it); a node never needs it, so it lives apart
# from the envelope the node imports (docs/firmware/ram.md).
#
#   COSE_Encrypt0 = 16([ h'a1010a' / {1: 10} /, {4: kid, 6: partial-iv}, ciphertext-with-tag ])
#                   (and 10: h'epoch', the "kid context" of RFC 8613, for a key epoch >= 1)
#   external_aad  = CBOR [1 (version), type, kid]

from ._backend import cbor_dumps, cbor_loads
from .envelope import PROTECTED, RESERVED_TYPE, external_aad, parse_header
from .errors import Reason, RemoteProtocolError
from .keys import PROTOCOL_VERSION

COSE_ALG_AES_CCM_16_64_128 = 10
COSE_ENCRYPT0_TAG = 16
KID_CONTEXT = 10  # COSE header parameter "kid context" (RFC 8613 section 6.1): the key epoch


def to_cose(frame: bytes) -> "tuple[bytes, bytes]":
    """The standard view of a frame: (tagged COSE_Encrypt0 bytes, external_aad bytes)."""
    header = parse_header(frame)
    unprotected = {4: header.kid, 6: header.piv}
    if header.epoch:
        unprotected[KID_CONTEXT] = bytes([header.epoch])
    body = cbor_dumps([PROTECTED, unprotected, bytes(frame[header.size :])])
    # CBOR tag 16 (COSE_Encrypt0) is a one-byte head 0xd0; our small CBOR codec knows no tags.
    return b"\xd0" + body, external_aad(header.msg_type, header.kid)


def from_cose(cose: bytes, aad: bytes) -> bytes:
    """The compact frame for a COSE_Encrypt0 (tagged or not) and its external_aad.

    Accepts exactly what to_cose produces: protected {1: 10}, unprotected {4: kid, 6: piv}
    and, for a key epoch 1..255, 10: its one byte.
    Raises RemoteProtocolError: MALFORMED for anything else, and the header reasons of
    parse_header for a kid or Partial IV that a frame could not carry.
    """
    data = cose[1:] if cose[:1] == b"\xd0" else cose
    item = cbor_loads(data)
    context = cbor_loads(aad)
    if (
        type(item) is not list
        or len(item) != 3
        or item[0] != PROTECTED
        or type(item[1]) is not dict
        # 4.0 or 10.0 equal 4 and 10 as dict keys, but are other CBOR values: integer labels only
        or any(type(label) is not int for label in item[1])
        or len(item[1]) != 2 + (KID_CONTEXT in item[1])
        or type(item[1].get(4)) is not bytes
        or type(item[1].get(6)) is not bytes
        or type(item[2]) is not bytes
        or type(context) is not list
        or len(context) != 3
        or type(context[0]) is not int
        or context[0] != PROTOCOL_VERSION
        or context[2] != item[1][4]
    ):
        raise RemoteProtocolError(
            Reason.MALFORMED, "not an edgeveil v1 COSE_Encrypt0 (alg 10, kid and Partial IV)"
        )
    msg_type, kid, piv = context[1], item[1][4], item[1][6]
    epoch = item[1].get(KID_CONTEXT, b"")
    if type(msg_type) is not int or not 0 <= msg_type < RESERVED_TYPE:
        raise RemoteProtocolError(Reason.MALFORMED, "unknown message type in external_aad")
    if not 1 <= len(kid) <= 4 or not 1 <= len(piv) <= 4:
        raise RemoteProtocolError(Reason.MALFORMED, "kid and Partial IV must be 1..4 bytes")
    if KID_CONTEXT in item[1] and (type(epoch) is not bytes or len(epoch) != 1 or not epoch[0]):
        raise RemoteProtocolError(Reason.MALFORMED, "kid context must be one byte, 1..255")
    first = (msg_type << 4) | ((len(kid) - 1) << 2) | (len(piv) - 1)
    head = bytes([first | 0x80]) + epoch if epoch else bytes([first])
    frame: bytes = head + kid + piv + item[2]
    parse_header(frame)  # same canonical-form rules as a frame off the wire
    return frame
