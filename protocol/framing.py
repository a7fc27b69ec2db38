"""Serial-line framing for sealed frames: COBS + CRC-32, delimited by 0x00.

A sealed frame is an opaque byte string of 1..MAX_FRAME bytes. It travels over a USB-UART that
picks up garbage and that is also the node's text console, so frames and console text (log
lines, tracebacks) interleave on the same line.

Wire format of one frame::

    0x00 || COBS(frame || CRC32(frame)) || 0x00

- frame: 1..MAX_FRAME bytes, MAX_FRAME = 256.
- CRC32(frame): CRC-32/ISO-HDLC, the zlib/binascii CRC (reflected polynomial 0xEDB88320,
  initial value 0xFFFFFFFF, final XOR 0xFFFFFFFF; CRC32(b"123456789") = 0xCBF43926), appended
  as 4 bytes little-endian.
- COBS: Consistent Overhead Byte Stuffing (Cheshire & Baker 1999), the standard variant. The
  input is cut at each 0x00 into groups (a trailing 0x00 is implied after the last group and
  never transmitted); a group of k non-zero bytes, k <= 253, is sent as the code byte k+1
  followed by the k bytes, and the code byte 0xFF means "254 non-zero bytes follow, no
  implied 0x00" (longer groups are sent as 0xFF blocks then one shorter block). When the
  input ends exactly after a 0xFF block, no further code byte is sent. Examples:
  00 -> 01 01; 00 00 -> 01 01 01; 11 22 00 33 -> 03 11 22 02 33;
  11 22 33 44 -> 05 11 22 33 44; 254 non-zero bytes b -> FF b; 255 non-zero bytes b c ->
  FF b 02 c.
- The COBS output contains no 0x00, so 0x00 is the delimiter. The leading 0x00 lets a receiver
  start a frame cleanly even right after console text that had no trailing delimiter; between
  back-to-back frames this gives 00 00, an empty chunk, which receivers ignore.
- A frame of n bytes is at most n + 4 + ceil((n + 4) / 254) + 2 bytes on the wire. The largest
  chunk (the bytes between two delimiters) for MAX_FRAME is MAX_CHUNK = 262 bytes.

Receiving: the receiver splits the byte stream at every 0x00 into chunks and handles each
chunk on its own, in this order:

1. empty chunk (two consecutive 0x00): ignored silently;
2. longer than MAX_CHUNK: rejected as OVERSIZED (the receiver does not buffer it: it keeps
   the first MAX_CHUNK bytes to show, counts and drops the rest until the next 0x00);
3. COBS-decoded: from the start of the chunk, read a code byte c, copy the c-1 bytes after
   it, then output a 0x00 unless c = 0xFF or the chunk ends there; repeat until the chunk
   ends. A code byte followed by fewer than c-1 bytes (it points past the end of the chunk):
   BAD_COBS (this is what console text usually produces);
4. decoded length < 5 (4-byte CRC + at least 1 frame byte): TRUNCATED;
   decoded length > MAX_FRAME + 4 (possible when the chunk has many 0x01 codes): OVERSIZED;
5. CRC32 of the decoded bytes but the last 4 does not equal those 4 bytes read as a
   little-endian integer: BAD_CRC (line noise);
6. otherwise the decoded bytes but the last 4 are the frame.

A rejected chunk never affects the next one: after garbage, the first frame whose leading 0x00
arrives is decoded correctly.

This module is sans-IO and runs unchanged on MicroPython and CPython: no typing, enum or
dataclasses at run time.
"""

from .envelope import MAX_FRAME  # the envelope owns the frame size limit
from .errors import LocalProtocolError, Reason, RemoteProtocolError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    Buffer = bytes | bytearray | memoryview


_ZERO = b"\x00"


def max_chunk_len(max_frame: int) -> int:
    """Longest chunk (bytes between two delimiters) that encode() produces for a frame of
    max_frame bytes: COBS of max_frame + 4 non-zero bytes, the worst case."""
    n = max_frame + 4
    return n + (n + 253) // 254


MAX_CHUNK = max_chunk_len(MAX_FRAME)  # 262


# ---------------------------------------------------------------------------------------------
# CRC-32/ISO-HDLC

# CRC of each 4-bit value, for the nibble-at-a-time fallback (16 entries: little RAM).
_CRC_NIBBLE = (
    0x00000000, 0x1DB71064, 0x3B6E20C8, 0x26D930AC, 0x76DC4190, 0x6B6B51F4, 0x4DB26158, 0x5005713C,
    0xEDB88320, 0xF00F9344, 0xD6D6A3E8, 0xCB61B38C, 0x9B64C2B0, 0x86D3D2D4, 0xA00AE278, 0xBDBDF21C,
)  # fmt: skip


def crc32_pure(data: "Buffer", crc: int = 0) -> int:
    """CRC-32/ISO-HDLC in pure Python, same result as binascii.crc32(data, crc).

    Used only where binascii.crc32 is missing (some MicroPython builds)."""
    crc ^= 0xFFFFFFFF
    table = _CRC_NIBBLE
    for b in data:
        crc = (crc >> 4) ^ table[(crc ^ b) & 0x0F]
        crc = (crc >> 4) ^ table[(crc ^ (b >> 4)) & 0x0F]
    return crc ^ 0xFFFFFFFF


try:
    import binascii

    crc32: "Callable[[Buffer], int]" = binascii.crc32
except (ImportError, AttributeError):  # pragma: no cover - CPython always has it
    crc32 = crc32_pure


# ---------------------------------------------------------------------------------------------
# COBS


def cobs_encode(data: "bytes | bytearray") -> bytes:
    """COBS-encode data (standard variant, see the module docstring). No delimiters added."""
    out = bytearray()
    _cobs_encode_into(out, data)
    return bytes(out)


def _cobs_encode_into(out: bytearray, data: "bytes | bytearray") -> None:
    n = len(data)
    mv = memoryview(data)
    pos = 0
    while True:
        z = data.find(_ZERO, pos)
        end = n if z < 0 else z
        full = False
        while end - pos >= 254:
            out.append(0xFF)
            out += mv[pos : pos + 254]
            pos += 254
            full = True
        if z < 0:
            # Last group: nothing more to send if it ended exactly on a 0xFF block.
            if pos < n or not full:
                out.append(n - pos + 1)
                out += mv[pos:n]
            return
        out.append(end - pos + 1)
        out += mv[pos:end]
        pos = z + 1


def cobs_decode(chunk: "bytes | bytearray") -> bytearray:
    """Decode one COBS chunk (without delimiters).

    Raises RemoteProtocolError(Reason.BAD_COBS) if the chunk is empty, contains 0x00, or has a
    code byte that points past its end."""
    n = len(chunk)
    if n == 0:
        raise RemoteProtocolError(Reason.BAD_COBS, "empty chunk")
    if chunk.find(_ZERO) >= 0:
        raise RemoteProtocolError(Reason.BAD_COBS, "0x00 inside a chunk", bytes(chunk))
    return _cobs_decode(chunk)


def _cobs_decode(chunk: "bytes | bytearray") -> bytearray:
    # chunk: at least 1 byte, no 0x00.
    n = len(chunk)
    mv = memoryview(chunk)
    out = bytearray()
    i = 0
    while i < n:
        code = chunk[i]
        end = i + code
        if end > n:
            raise RemoteProtocolError(
                Reason.BAD_COBS,
                "code byte " + str(code) + " at offset " + str(i) + " points past the end",
                bytes(chunk),
            )
        out += mv[i + 1 : end]
        if code != 0xFF and end < n:
            out.append(0)
        i = end
    return out


# ---------------------------------------------------------------------------------------------
# Encoder


def encode(frame: "Buffer") -> bytes:
    """Return 0x00 || COBS(frame || CRC32(frame) as 4 bytes little-endian) || 0x00."""
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise LocalProtocolError("frame must be bytes, bytearray or memoryview")
    n = len(frame)
    if n == 0 or n > MAX_FRAME:
        raise LocalProtocolError("frame length " + str(n) + " outside 1.." + str(MAX_FRAME))
    body = bytearray(frame)
    body += (crc32(frame) & 0xFFFFFFFF).to_bytes(4, "little")
    out = bytearray(_ZERO)
    _cobs_encode_into(out, body)
    out.append(0)
    return bytes(out)


# ---------------------------------------------------------------------------------------------
# Decoder


class NeedData:
    """Type of the NEED_DATA sentinel."""

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = NeedData()  # next_event() result: feed more bytes first


class StreamDecoder:
    """Sans-IO decoder: feed() received bytes, then call next_event() until it returns
    NEED_DATA. Each call returns one frame (bytes) or raises RemoteProtocolError for one
    rejected chunk (reason BAD_COBS, BAD_CRC, TRUNCATED or OVERSIZED; `data` holds the raw
    chunk, at most `limit` bytes, e.g. console text); after an error just call next_event()
    again.

    Memory: the chunk still being received is held up to `limit` bytes, anything beyond is
    counted and dropped as it arrives. Complete chunks wait (each at most `limit` bytes) until
    next_event() takes them, so once next_event() has returned NEED_DATA, `buffered` <= `limit`.
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        if not isinstance(max_frame, int) or max_frame < 1:
            raise LocalProtocolError("max_frame must be a positive int")
        self.max_frame = max_frame
        self.limit = max_chunk_len(max_frame)  # longest chunk accepted
        self._buf = bytearray()  # the chunk being received (no delimiter seen yet), <= limit
        self._over = 0  # bytes of that chunk dropped beyond limit
        # Complete chunks for next_event(); an oversized one is queued as its error.
        self._ready: "list[bytes | bytearray | RemoteProtocolError]" = []
        self._next = 0  # index of the next item of _ready

    @property
    def buffered(self) -> int:
        """Raw bytes held: the incomplete chunk plus complete chunks not yet returned."""
        total = len(self._buf)
        ready = self._ready
        for i in range(self._next, len(ready)):
            item = ready[i]
            total += len(item.data) if isinstance(item, RemoteProtocolError) else len(item)
        return total

    def feed(self, data: "Buffer") -> None:
        """Buffer received bytes. Never raises for any content, never decodes."""
        if not isinstance(data, bytes):
            if not isinstance(data, (bytearray, memoryview)):
                raise LocalProtocolError("feed() takes bytes, bytearray or memoryview")
            data = bytes(data)
        n = len(data)
        pos = 0
        if self._buf or self._over:
            # Continue the chunk begun by an earlier feed().
            z = data.find(_ZERO)
            self._extend(data, 0, n if z < 0 else z)
            if z < 0:
                return
            self._close()
            pos = z + 1
        limit = self.limit
        ready = self._ready
        while pos < n:
            z = data.find(_ZERO, pos)
            if z < 0:
                self._extend(data, pos, n)
                return
            k = z - pos
            if k > limit:
                ready.append(self._oversized(data[pos : pos + limit], k))
            elif k:
                ready.append(data[pos:z])
            pos = z + 1

    def _extend(self, data: bytes, start: int, end: int) -> None:
        k = end - start
        if k <= 0:
            return
        room = self.limit - len(self._buf)
        if k <= room:
            self._buf += memoryview(data)[start:end]
        else:
            if room > 0:
                self._buf += memoryview(data)[start : start + room]
            self._over += k - room

    def _close(self) -> None:
        buf = self._buf
        if self._over:
            self._ready.append(self._oversized(bytes(buf), len(buf) + self._over))
        elif buf:
            self._ready.append(buf)
        self._buf = bytearray()
        self._over = 0

    def _oversized(self, head: bytes, total: int) -> RemoteProtocolError:
        return RemoteProtocolError(
            Reason.OVERSIZED,
            "dropped a chunk of " + str(total) + " bytes (limit " + str(self.limit) + ")",
            head,
        )

    def next_event(self) -> "bytes | NeedData":
        """Return the next frame, or NEED_DATA. Raises RemoteProtocolError for a rejected
        chunk; the decoder stays usable."""
        ready = self._ready
        i = self._next
        if i >= len(ready):
            return NEED_DATA
        item = ready[i]
        i += 1
        if i == len(ready):
            ready.clear()
            i = 0
        else:
            ready[i - 1] = b""  # release it now
        self._next = i
        if isinstance(item, RemoteProtocolError):
            raise item
        return self._decode(item)

    def _decode(self, chunk: "bytes | bytearray") -> bytes:
        # chunk: 1..limit bytes, no 0x00 (see feed()).
        out = _cobs_decode(chunk)
        m = len(out) - 4
        if m < 1:
            raise RemoteProtocolError(
                Reason.TRUNCATED, "decoded " + str(m + 4) + " bytes, need at least 5", bytes(chunk)
            )
        if m > self.max_frame:
            raise RemoteProtocolError(
                Reason.OVERSIZED,
                "decoded frame of " + str(m) + " bytes (max " + str(self.max_frame) + ")",
                bytes(chunk),
            )
        frame = bytes(memoryview(out)[:m])
        if crc32(frame) & 0xFFFFFFFF != int.from_bytes(out[m:], "little"):
            raise RemoteProtocolError(Reason.BAD_CRC, "checksum mismatch", bytes(chunk))
        return frame
