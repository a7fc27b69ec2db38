# The sealed frame: a compact encoding of COSE_Encrypt0 (RFC 9052) with AES-CCM-16-64-128
# (RFC 9053, algorithm 10). SPEC.md section "Envelope" is the normative description; this module
# is its reference implementation.
#
#   frame = header-byte || [epoch] || kid || partial-iv || ciphertext-with-tag
#
#   header-byte: bit 7    E   1: a key-epoch byte follows (v1.1); 0: epoch 0, as in v1
#                bits 6-4 T   message type 0..6 (7 reserved)
#                bits 3-2 K   kid length - 1        (node id, 1..4 bytes)
#                bits 1-0 P   partial IV length - 1 (frame counter, 1..4 bytes)
#   epoch:       present when E = 1: the key epoch 1..255 (keys.py); 0 there is reserved for a
#                later version (rejected: BAD_VERSION)
#   kid, partial IV: shortest big-endian unsigned integers (one byte for zero)
#
# Standard COSE view of the same frame (lossless, protocol/cose.py: to_cose/from_cose):
#   COSE_Encrypt0 = 16([ h'a1010a' / {1: 10} /, {4: kid, 6: partial-iv}, ciphertext-with-tag ])
#                   (with {..., 10: h'epoch'}, the "kid context" of RFC 8613, when epoch >= 1)
#   external_aad  = CBOR [1 (version), type, kid]
#   nonce         = base IV XOR left-padded partial IV (RFC 9052 section 3.1)
# so any COSE library opens our frames given the key, the base IV and the external AAD.
#
# Sans-IO: bytes in, messages out. Only LocalProtocolError and RemoteProtocolError escape.

from ._backend import cbor_dumps, cbor_loads
from .errors import LocalProtocolError, Reason, RemoteProtocolError
from .keys import MAX_NODE_ID, PROTOCOL_VERSION, uint_bytes
from .messages import MESSAGE_CLASSES

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .keys import NodeKeys
    from .messages import Message

TAG_LENGTH = 8
MAX_FRAME = 256  # largest sealed frame, any link
LORA_MAX_FRAME = 51  # EU868 at SF10-SF12 (DR0-DR2): every frame a normal node sends fits
MAX_COUNTER = 2**32 - 1
PROTECTED = b"\xa1\x01\x0a"  # CBOR {1: 10} (alg: AES-CCM-16-64-128): the only protected header
RESERVED_TYPE = 7
_UPLINK = tuple(cls.UPLINK for cls in MESSAGE_CLASSES)
_EXTENSION_BIT = 0x80
_from_bytes = int.from_bytes  # bound once: looking it up on int costs more than the call


class Header:
    """The clear part of a frame, readable before any key is known."""

    # __slots__ makes the per-frame object cheaper on CPython; MicroPython ignores it.
    __slots__ = ("counter", "epoch", "kid", "msg_type", "node_id", "piv", "size", "uplink")
    version = PROTOCOL_VERSION  # the only version a header parses to

    def __init__(  # noqa: PLR0917 - one per field; parse_header makes one per frame
        self, msg_type: int, node_id: int, counter: int, kid: bytes, piv: bytes, epoch: int = 0
    ) -> None:
        self.msg_type = msg_type
        self.node_id = node_id
        self.counter = counter
        self.kid = kid
        self.piv = piv
        self.epoch = epoch  # the key epoch: which of the node's keys sealed it
        self.size = (2 if epoch else 1) + len(kid) + len(piv)
        self.uplink: bool = _UPLINK[msg_type]  # True: node to gateway

    def __repr__(self) -> str:
        return (
            "Header(type="
            + str(self.msg_type)
            + ", node_id="
            + str(self.node_id)
            + ", counter="
            + str(self.counter)
            + (", epoch=" + str(self.epoch) if self.epoch else "")
            + ")"
        )


def parse_header(frame: bytes) -> Header:
    """Read the clear header. Raises RemoteProtocolError: TRUNCATED, OVERSIZED, BAD_VERSION,
    BAD_HEADER. Does not authenticate anything: use it only to pick the key."""
    n = len(frame)
    if n == 0:
        raise RemoteProtocolError(Reason.TRUNCATED, "empty frame")
    if n > MAX_FRAME:
        raise RemoteProtocolError(
            Reason.OVERSIZED, str(n) + " bytes, the limit is " + str(MAX_FRAME)
        )
    first = frame[0]
    epoch = 0
    start = 1  # where the kid begins
    if first & _EXTENSION_BIT:
        epoch = frame[1] if n > 1 else 0
        if epoch == 0:
            raise RemoteProtocolError(
                Reason.BAD_VERSION,
                "header byte " + hex(first) + " without a key epoch 1..255 after it announces "
                "a protocol version after v1.1",
            )
        start = 2
    msg_type = (first >> 4) & 0x07
    if msg_type == RESERVED_TYPE:
        raise RemoteProtocolError(Reason.BAD_HEADER, "message type 7 is reserved")
    kid_end = start + ((first >> 2) & 0x03) + 1
    header_len = kid_end + (first & 0x03) + 1
    if n < header_len + TAG_LENGTH + 1:
        raise RemoteProtocolError(
            Reason.TRUNCATED,
            str(n)
            + " bytes, a frame with this header needs at least "
            + str(header_len + TAG_LENGTH + 1),
        )
    kid = frame[start:kid_end]
    piv = frame[kid_end:header_len]
    if type(frame) is not bytes:
        kid = bytes(kid)
        piv = bytes(piv)
    if (kid[0] == 0 and kid_end - start > 1) or (piv[0] == 0 and header_len - kid_end > 1):
        raise RemoteProtocolError(Reason.BAD_HEADER, "node id or counter has a leading zero byte")
    return Header(msg_type, _from_bytes(kid, "big"), _from_bytes(piv, "big"), kid, piv, epoch)


# Both structures below are CBOR of a fixed shape whose every item is shorter than 24 bytes, so
# they are written directly instead of through the encoder: this runs for every frame, on the
# node and on the gateway. tests/test_envelope.py proves them equal to the encoder's output.
_AAD_HEAD = bytes([0x83, PROTOCOL_VERSION])  # array(3), version
_ENC_HEAD = b"\x83\x68Encrypt0\x43" + PROTECTED  # array(3), text(8), bstr(3) h'a1010a'


def external_aad(msg_type: int, kid: bytes) -> bytes:
    """COSE external_aad = CBOR [1, type, kid]: binds version, message type and node id to the
    tag. kid is 1..4 bytes, so its byte-string head is one byte."""
    return _AAD_HEAD + bytes([msg_type, 0x40 | len(kid)]) + kid


def enc_structure(msg_type: int, kid: bytes) -> bytes:
    """The AAD that AES-CCM authenticates (RFC 9052 section 5.3):
    CBOR ["Encrypt0", h'a1010a', external_aad]."""
    aad = external_aad(msg_type, kid)
    return _ENC_HEAD + bytes([0x40 | len(aad)]) + aad


# The gateway opens frames of the same few (type, node) pairs all day; a bounded cache of their
# Enc_structures saves building them per frame. Cleared whole when full: simple and bounded.
_ENC_CACHE: "dict[tuple[int, bytes], bytes]" = {}
_ENC_CACHE_SIZE = 4096


def _cached_enc_structure(msg_type: int, kid: bytes) -> bytes:
    key = (msg_type, kid)
    aad = _ENC_CACHE.get(key)
    if aad is None:
        if len(_ENC_CACHE) >= _ENC_CACHE_SIZE:
            _ENC_CACHE.clear()
        aad = _ENC_CACHE[key] = enc_structure(msg_type, kid)
    return aad


def seal(message: "Message", counter: int, keys: "NodeKeys") -> bytes:
    """Encrypt and authenticate `message` as frame number `counter` of the node `keys` belongs to.

    The caller must never use a counter twice with the same keys and direction (the node
    persists its counter; see SPEC.md "Nonces"). Raises LocalProtocolError on misuse.
    """
    msg_type = message.MSG_TYPE
    if not 0 <= msg_type < RESERVED_TYPE:
        raise LocalProtocolError("not a v1 message: " + repr(message))
    if type(counter) is not int or not 0 <= counter <= MAX_COUNTER:
        raise LocalProtocolError(
            "frame counter must be 0.."
            + str(MAX_COUNTER)
            + "; an exhausted node needs a new secret"
        )
    if not 0 <= keys.node_id <= MAX_NODE_ID:
        raise LocalProtocolError("node id out of range")
    kid = keys.kid
    piv = uint_bytes(counter)
    plaintext = cbor_dumps(message.body())
    head = bytes([(msg_type << 4) | ((len(kid) - 1) << 2) | (len(piv) - 1)])
    if keys.epoch:
        head = bytes([head[0] | _EXTENSION_BIT, keys.epoch])
    size = len(head) + len(kid) + len(piv) + len(plaintext) + TAG_LENGTH
    if size > MAX_FRAME:
        raise LocalProtocolError(
            "sealed frame would be " + str(size) + " bytes, the limit is " + str(MAX_FRAME)
        )
    aead = keys.uplink if message.UPLINK else keys.downlink
    sealed: bytes = aead.encrypt(keys.nonce(counter), plaintext, enc_structure(msg_type, kid))
    return head + kid + piv + sealed


def open_frame(
    frame: bytes, keys: "NodeKeys", uplink: bool = True, header: "Header | None" = None
) -> "Message":
    """Verify and decrypt a frame, and decode its message.

    `uplink` says what this side expects: True on the gateway (node -> gateway frames), False on
    the node. Pass the `header` when you already parsed it to choose `keys`.
    Raises RemoteProtocolError (every reason of parse_header, WRONG_DIRECTION, AUTH_FAILED,
    MALFORMED) and LocalProtocolError when `keys` belong to another node id than the header's.
    """
    if header is None:
        header = parse_header(frame)
    if header.node_id != keys.node_id or header.epoch != keys.epoch:
        raise LocalProtocolError("keys of another node or key epoch than the frame's")
    if header.uplink != uplink:
        raise RemoteProtocolError(
            Reason.WRONG_DIRECTION,
            MESSAGE_CLASSES[header.msg_type].NAME + " frames travel the other way",
        )
    msg_type = header.msg_type
    aad = _ENC_CACHE.get((msg_type, header.kid)) or _cached_enc_structure(msg_type, header.kid)
    try:
        plaintext = (keys.uplink if uplink else keys.downlink).decrypt(
            keys.nonce(header.counter), frame[header.size :], aad
        )
    except RemoteProtocolError:
        raise
    except Exception:  # cryptography's InvalidTag and anything else a backend may raise
        raise RemoteProtocolError(
            Reason.AUTH_FAILED, "tag does not verify (forged, altered or sealed with another key)"
        ) from None
    return MESSAGE_CLASSES[msg_type].from_body(cbor_loads(plaintext))  # message_from_body, inlined
