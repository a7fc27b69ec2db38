# Errors say whose fault it is (the h11 way):
#   RemoteProtocolError - the peer (or the line) sent bytes we cannot accept; carries a reason code.
#   LocalProtocolError  - this program misused the API (wrong argument, value out of range).
# Every decoder in protocol/ raises only these two, so a gateway can count rejections by reason
# and keep running.
#
# This module runs unchanged on MicroPython: no enum, no typing at run time.


class Reason:
    """Reason codes for rejected input. Stable numbers: they appear in logs and metrics."""

    # serial framing (framing.py)
    BAD_CRC = 1  # the checksum does not match: line noise, a bit flip, a lost byte
    BAD_COBS = 2  # the byte-stuffing is broken: a chunk that is not a frame (e.g. console text)
    OVERSIZED = 3  # longer than the largest frame the protocol allows
    # envelope (envelope.py)
    TRUNCATED = 4  # shorter than its header says it must be
    BAD_VERSION = 5  # a protocol version this implementation does not speak
    BAD_HEADER = 6  # a header field is non-canonical or uses a reserved value
    WRONG_DIRECTION = 7  # a gateway-to-node message sent to a gateway, or the other way round
    UNKNOWN_NODE = 8  # no key is registered for the node id in the header
    AUTH_FAILED = 9  # the tag does not verify: forged, tampered, or sealed with another key
    REPLAY = 10  # the frame counter is older than the replay window accepts
    MALFORMED = 11  # decrypted fine, but the content is not a valid message of its type
    # receiver state (SPEC.md section 10): an authentic frame under a counter already accepted
    # with different bytes: two senders share the key (a cloned node, a restored backup)
    COUNTER_REUSE = 12
    REVOKED = 13  # the node's identity was revoked at this receiver (its registry)
    # sealed under a key epoch older than the one this receiver already heard from the node:
    # its keys were replaced (SPEC.md section 9), so the old ones open nothing any more
    RETIRED_KEY = 14

    _NAMES = {  # noqa: RUF012 - a constant table; MicroPython has no typing.ClassVar
        1: "bad_crc",
        2: "bad_cobs",
        3: "oversized",
        4: "truncated",
        5: "bad_version",
        6: "bad_header",
        7: "wrong_direction",
        8: "unknown_node",
        9: "auth_failed",
        10: "replay",
        11: "malformed",
        12: "counter_reuse",
        13: "revoked",
        14: "retired_key",
    }

    @staticmethod
    def name(code: int) -> str:
        return Reason._NAMES.get(code, "unknown")


class ProtocolError(Exception):
    """Root of every error raised by protocol/."""


class LocalProtocolError(ProtocolError):
    """The caller misused the API: fix the calling code, not the peer."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something we reject. `reason` is a Reason code, `detail` says what exactly."""

    def __init__(self, reason: int, detail: str, data: bytes = b"") -> None:
        super().__init__(Reason.name(reason) + ": " + detail)
        self.reason = reason
        self.detail = detail
        # The rejected bytes where a caller may want to show them (the serial framing puts the
        # discarded chunk here, so a monitor can print a node's console text). Never log them.
        self.data = data

    @property
    def reason_name(self) -> str:
        return Reason.name(self.reason)
