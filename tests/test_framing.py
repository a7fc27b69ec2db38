"""protocol/framing.py: COBS + CRC-32 serial framing, and the stream decoder's robustness."""

import binascii
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import LocalProtocolError, Reason, RemoteProtocolError
from protocol.framing import (
    MAX_CHUNK,
    MAX_FRAME,
    NEED_DATA,
    StreamDecoder,
    cobs_decode,
    cobs_encode,
    crc32,
    crc32_pure,
    encode,
    max_chunk_len,
)

FAST = settings()  # the profile in conftest.py decides (ci: 200 examples)
REJECT_REASONS = {Reason.OVERSIZED, Reason.BAD_COBS, Reason.BAD_CRC, Reason.TRUNCATED}

frames = st.binary(min_size=1, max_size=MAX_FRAME)
# Sealed frames are ciphertext, so zero bytes are rare; also try frames dense with zeros.
zero_heavy = st.lists(st.sampled_from([0, 0, 0, 1, 0xFF]), min_size=1, max_size=MAX_FRAME).map(
    bytes
)
any_frame = st.one_of(frames, zero_heavy)

Event = bytes | RemoteProtocolError  # what next_event() gives: a frame, or raises a rejection


def drain(dec: StreamDecoder) -> "list[Event]":
    """Call next_event() until NEED_DATA; collect frames and rejections in order."""
    out: list[Event] = []
    while True:
        try:
            ev = dec.next_event()
        except RemoteProtocolError as e:
            assert e.reason in REJECT_REASONS, e
            assert isinstance(e.data, bytes)
            assert len(e.data) <= dec.limit
            out.append(e)
            continue
        if ev is NEED_DATA:
            assert dec.buffered <= dec.limit
            return out
        assert isinstance(ev, bytes)
        out.append(ev)


def feed_in_pieces(dec: StreamDecoder, data: bytes, cuts: "list[int]") -> "list[Event]":
    out: list[Event] = []
    prev = 0
    for cut in [*sorted(c % (len(data) + 1) for c in cuts), len(data)]:
        dec.feed(data[prev:cut])
        prev = cut
        out.extend(drain(dec))
    return out


def only_frames(events: "list[Event]") -> "list[bytes]":
    return [e for e in events if isinstance(e, bytes)]


def only_errors(events: "list[Event]") -> "list[RemoteProtocolError]":
    return [e for e in events if isinstance(e, RemoteProtocolError)]


# --- COBS -----------------------------------------------------------------------------------

_RUN254 = bytes(range(1, 255))  # 01..FE
_COBS_EXAMPLES = [
    # (decoded, encoded) - the Wikipedia / Cheshire-Baker examples, without the trailing 00
    (b"\x00", b"\x01\x01"),
    (b"\x00\x00", b"\x01\x01\x01"),
    (b"\x00\x11\x00", b"\x01\x02\x11\x01"),
    (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
    (b"\x11\x22\x33\x44", b"\x05\x11\x22\x33\x44"),
    (b"\x11\x00\x00\x00", b"\x02\x11\x01\x01\x01"),
    (_RUN254, b"\xff" + _RUN254),  # 254 non-zero bytes
    (b"\x00" + _RUN254, b"\x01\xff" + _RUN254),
    (bytes(range(1, 256)), b"\xff" + _RUN254 + b"\x02\xff"),  # 255 non-zero bytes
    (bytes(range(2, 256)) + b"\x00", b"\xff" + bytes(range(2, 256)) + b"\x01\x01"),
    (bytes(range(3, 256)) + b"\x00\x01", b"\xfe" + bytes(range(3, 256)) + b"\x02\x01"),
    (b"", b"\x01"),
]


@pytest.mark.parametrize(("decoded", "encoded"), _COBS_EXAMPLES)
def test_cobs_known_examples(decoded: bytes, encoded: bytes) -> None:
    assert cobs_encode(decoded) == encoded
    assert cobs_decode(encoded) == decoded


@given(st.binary(max_size=1200))
@FAST
def test_cobs_round_trip_and_bound(data: bytes) -> None:
    enc = cobs_encode(data)
    assert b"\x00" not in enc
    assert cobs_decode(enc) == data
    if data:
        assert len(enc) <= len(data) + (len(data) + 253) // 254


@pytest.mark.parametrize("bad", [b"", b"\x05\x11\x22", b"\x02\x11\x03\x22", b"\x02\x00"])
def test_cobs_decode_rejects(bad: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as exc:
        cobs_decode(bad)
    assert exc.value.reason == Reason.BAD_COBS


def test_max_chunk_len_is_the_worst_case() -> None:
    assert MAX_CHUNK == max_chunk_len(MAX_FRAME) == 262
    for max_frame in range(1, 1100):
        # all non-zero is the worst case for COBS
        assert max_chunk_len(max_frame) == len(cobs_encode(b"\x01" * (max_frame + 4)))


# --- CRC ------------------------------------------------------------------------------------


@given(st.binary(max_size=600), st.integers(min_value=0, max_value=2**32 - 1))
@FAST
def test_crc_fallback_equals_binascii(data: bytes, start: int) -> None:
    assert crc32_pure(data) == binascii.crc32(data)
    assert crc32_pure(data, start) == binascii.crc32(data, start)
    assert crc32_pure(bytearray(data)) == crc32(memoryview(data))


def test_crc_check_value() -> None:
    assert crc32_pure(b"123456789") == crc32(b"123456789") == 0xCBF43926


# --- encode ---------------------------------------------------------------------------------


def test_encode_layout() -> None:
    frame = b"\x11\x22\x00\x33"
    wire = encode(frame)
    assert wire[0] == 0 and wire[-1] == 0
    assert cobs_decode(wire[1:-1]) == frame + binascii.crc32(frame).to_bytes(4, "little")
    assert encode(bytearray(frame)) == encode(memoryview(frame)) == wire


@given(any_frame)
@FAST
def test_encode_bounds(frame: bytes) -> None:
    wire = encode(frame)
    assert b"\x00" not in wire[1:-1]
    assert 2 + 6 <= len(wire) <= MAX_CHUNK + 2


@pytest.mark.parametrize("bad", [b"", bytes(MAX_FRAME + 1), "text", 5, None])
def test_encode_rejects(bad: object) -> None:
    with pytest.raises(LocalProtocolError):
        encode(bad)  # type: ignore[arg-type]


def _largest_chunk_frame() -> bytes:
    """A MAX_FRAME-byte frame with no zero byte in it nor in its CRC: encodes to MAX_CHUNK."""
    rng = random.Random(1)
    while True:
        frame = bytes(rng.randrange(1, 256) for _ in range(MAX_FRAME))
        if 0 not in binascii.crc32(frame).to_bytes(4, "little"):
            return frame


def test_largest_frame_fits_the_limit() -> None:
    frame = _largest_chunk_frame()
    wire = encode(frame)
    assert len(wire) == MAX_CHUNK + 2
    dec = StreamDecoder()
    dec.feed(wire)
    assert drain(dec) == [frame]


# --- decoder: round trips -------------------------------------------------------------------


@given(st.lists(any_frame, min_size=1, max_size=8), st.lists(st.integers(min_value=0), max_size=12))
@FAST
def test_round_trip_random_splits(fs: "list[bytes]", cuts: "list[int]") -> None:
    stream = b"".join(encode(f) for f in fs)
    dec = StreamDecoder()
    assert feed_in_pieces(dec, stream, cuts) == fs


def test_round_trip_byte_by_byte_and_input_types() -> None:
    fs = [b"\x00", b"a" * MAX_FRAME, bytes(MAX_FRAME), b"\x01\x00\x02"]
    stream = b"".join(encode(f) for f in fs)
    for wrap in (bytes, bytearray, memoryview):
        dec = StreamDecoder()
        got: list[Event] = []
        for i in range(len(stream)):
            dec.feed(wrap(stream[i : i + 1]))
            got.extend(drain(dec))
        assert got == fs


def test_feed_copies_mutable_input() -> None:
    # A caller may feed a memoryview of its readinto() buffer and reuse the buffer.
    wire = encode(b"hello")
    buf = bytearray(wire)
    dec = StreamDecoder()
    dec.feed(memoryview(buf)[:-3])
    buf[:] = bytes(len(buf))
    dec.feed(wire[-3:])
    assert drain(dec) == [b"hello"]


def test_empty_chunks_and_empty_feeds_are_silent() -> None:
    dec = StreamDecoder()
    assert dec.next_event() is NEED_DATA
    dec.feed(b"")
    dec.feed(bytes(100))
    assert drain(dec) == []
    assert dec.buffered == 0
    assert repr(NEED_DATA) == "NEED_DATA"


@pytest.mark.parametrize("bad", ["text", 5, None, [0, 1]])
def test_feed_rejects_non_bytes(bad: object) -> None:
    with pytest.raises(LocalProtocolError):
        StreamDecoder().feed(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, -1, "256", 1.5])
def test_decoder_rejects_bad_max_frame(bad: object) -> None:
    with pytest.raises(LocalProtocolError):
        StreamDecoder(bad)  # type: ignore[arg-type]


# --- decoder: garbage -----------------------------------------------------------------------


def _expected(stream: bytes, limit: int) -> "tuple[list[bytes], list[bytes]]":
    """Split stream at 0x00 like the decoder must; return (frames, shown data of rejects)."""
    frames_out: list[bytes] = []
    rejected: list[bytes] = []
    for chunk in stream.split(b"\x00")[:-1]:  # the last piece has no delimiter yet
        if not chunk:
            continue
        try:
            body = bytes(cobs_decode(chunk)) if len(chunk) <= limit else b""
        except RemoteProtocolError:
            body = b""
        if 5 <= len(body) <= MAX_FRAME + 4 and binascii.crc32(body[:-4]) == int.from_bytes(
            body[-4:], "little"
        ):
            frames_out.append(body[:-4])
        else:
            rejected.append(chunk[:limit])
    return frames_out, rejected


garbage = st.one_of(
    st.binary(max_size=300),
    st.binary(min_size=250, max_size=700).map(lambda b: b.replace(b"\x00", b"\x01")),
    st.text(max_size=200).map(lambda s: s.encode()),
)


@given(
    st.lists(st.one_of(any_frame.map(lambda f: (True, f)), garbage.map(lambda g: (False, g)))),
    garbage,
    st.lists(st.integers(min_value=0), max_size=12),
)
@FAST
def test_garbage_before_between_and_after_frames(
    items: "list[tuple[bool, bytes]]", head: bytes, cuts: "list[int]"
) -> None:
    stream = head + b"".join(encode(x) if is_frame else x for is_frame, x in items)
    sent = [x for is_frame, x in items if is_frame]
    dec = StreamDecoder()
    events = feed_in_pieces(dec, stream, cuts)
    # Every frame comes out intact and in order (garbage that happens to be a valid frame
    # would need a 32-bit CRC match: the model below would list it too).
    want_frames, want_rejected = _expected(stream, dec.limit)
    got_frames = only_frames(events)
    assert got_frames == want_frames
    it = iter(got_frames)
    assert all(f in it for f in sent)  # sent frames are a subsequence of what came out
    # Every non-empty garbage chunk raises exactly once, with the raw chunk as data.
    errors = only_errors(events)
    assert [e.data for e in errors] == want_rejected
    for e in errors:
        if e.reason == Reason.OVERSIZED and len(e.data) == dec.limit:
            assert "bytes" in e.detail
    assert dec.buffered <= dec.limit


@given(st.binary(max_size=3000), st.lists(st.integers(min_value=0), max_size=30))
@FAST
def test_arbitrary_bytes_never_raise_anything_else(data: bytes, cuts: "list[int]") -> None:
    dec = StreamDecoder()
    feed_in_pieces(dec, data, cuts)  # drain() asserts the exception type and reason
    dec.feed(encode(b"still alive"))
    assert only_frames(drain(dec))[-1:] == [b"still alive"]


def test_resync_after_unterminated_garbage() -> None:
    dec = StreamDecoder()
    dec.feed(b"\x07\x01\x02")  # starts a chunk that never gets its delimiter ...
    assert drain(dec) == []
    dec.feed(encode(b"frame"))  # ... until this frame's leading 0x00
    events = drain(dec)
    assert len(events) == 2
    assert isinstance(events[0], RemoteProtocolError)
    assert events[0].reason == Reason.BAD_COBS
    assert events[0].data == b"\x07\x01\x02"
    assert events[1] == b"frame"


@pytest.mark.parametrize(
    ("chunk", "reason"),
    [
        (b"\x01", Reason.TRUNCATED),  # decodes to nothing
        (b"\x05abcd", Reason.TRUNCATED),  # 4 bytes: a CRC without a frame
        (b"\x06abcde", Reason.BAD_CRC),
        (b"\x09abc", Reason.BAD_COBS),
        (b"\x01" * MAX_CHUNK, Reason.OVERSIZED),  # fits the limit, decodes to 261 zeros
        (b"\x02" * (MAX_CHUNK + 1), Reason.OVERSIZED),
    ],
)
def test_reject_reasons(chunk: bytes, reason: int) -> None:
    dec = StreamDecoder()
    dec.feed(b"\x00" + chunk + encode(b"next"))
    with pytest.raises(RemoteProtocolError) as exc:
        dec.next_event()
    assert exc.value.reason == reason
    assert exc.value.data == chunk[:MAX_CHUNK]
    assert drain(dec) == [b"next"]


def test_smaller_max_frame() -> None:
    dec = StreamDecoder(max_frame=10)
    assert dec.limit == 15
    dec.feed(encode(b"x" * 10) + encode(b"x" * 11) + encode(b"x" * 30) + encode(b"ok"))
    events = drain(dec)
    assert events[0] == b"x" * 10
    assert [e.reason for e in only_errors(events)] == [Reason.OVERSIZED, Reason.OVERSIZED]
    assert events[-1] == b"ok"


# --- decoder: console text ------------------------------------------------------------------

_BOOT = b"I (123) boot: ESP-IDF v5.2 2nd stage bootloader\r\n"
_LOG = b"W (4567) wifi: sta disconnected, reason 201\r\n"
_TRACEBACK = (
    b"Traceback (most recent call last):\r\n"
    b'  File "main.py", line 42, in <module>\r\n'
    b'  File "sensor.py", line 17, in read\r\n'
    b"OSError: [Errno 19] ENODEV\r\n"
    b"MicroPython v1.27.0 on 2025-12-01; Generic ESP32 module with ESP32\r\n"
    b'Type "help()" for more information.\r\n'
    b">>> "
)


def test_console_text_between_frames() -> None:
    f1, f2, f3, f4, f5 = b"first", bytes(range(256)), b"\x00\x00\x00", b"\xffx" * 40, b"last"
    burst = _LOG * 10  # a burst of log lines longer than any chunk
    stream = (
        _BOOT
        + encode(f1)
        + _LOG
        + encode(f2)
        + b"partial line without newline"
        + encode(f3)
        + _TRACEBACK
        + encode(f4)
        + burst
        + encode(f5)
    )
    assert len(_TRACEBACK) <= MAX_CHUNK < len(burst)
    for cuts in ([], [7, 100, 101, 300, 555], list(range(0, len(stream), 13))):
        dec = StreamDecoder()
        events = feed_in_pieces(dec, stream, cuts)
        assert only_frames(events) == [f1, f2, f3, f4, f5]
        errors = only_errors(events)
        assert [e.data for e in errors] == [
            _BOOT,
            _LOG,
            b"partial line without newline",
            _TRACEBACK,
            burst[:MAX_CHUNK],
        ]
        assert [e.reason for e in errors] == [Reason.BAD_COBS] * 4 + [Reason.OVERSIZED]
        assert str(len(burst)) in errors[4].detail


# --- decoder: bit flips ---------------------------------------------------------------------


def _check_flips(frame: bytes, positions: "list[int]") -> None:
    before, after = b"before", b"after"
    wire = encode(frame)
    for bitpos in positions:
        bad = bytearray(wire)
        bad[bitpos // 8] ^= 1 << (bitpos % 8)
        dec = StreamDecoder()
        dec.feed(encode(before) + bytes(bad) + encode(after))
        events = drain(dec)
        # the damaged frame is rejected (whole, or in pieces if the flip made a 0x00) and
        # never comes out changed; its neighbours are unharmed
        assert only_frames(events) == [before, after], (frame, bitpos)
        assert only_errors(events), (frame, bitpos)


@pytest.mark.parametrize(
    "frame",
    [b"\x42", b"\x11\x22\x00\x33" * 20, _largest_chunk_frame(), bytes(MAX_FRAME)],
)
def test_every_single_bit_flip_is_rejected(frame: bytes) -> None:
    _check_flips(frame, list(range(8 * len(encode(frame)))))


@given(any_frame, st.integers(min_value=0))
@FAST
def test_random_bit_flip_is_rejected(frame: bytes, pos: int) -> None:
    _check_flips(frame, [pos % (8 * len(encode(frame)))])


# --- decoder: oversized runs ----------------------------------------------------------------


@pytest.mark.parametrize("piece", [10_000, 1000, 7, 1])
def test_oversized_run_is_dropped_on_the_fly(piece: int) -> None:
    run = bytes(random.Random(piece).randrange(1, 256) for _ in range(10_000))
    stream = encode(b"one") + run + encode(b"two") + run[:300] + b"\x00"
    dec = StreamDecoder()
    events: list[Event] = []
    dec.feed(stream[:5])  # a part of the first frame
    for i in range(5, len(stream), piece):
        dec.feed(stream[i : i + piece])
        if piece == 10_000 and i == 5:
            # the run is in the buffer without its delimiter: kept only up to the limit
            assert dec.buffered <= dec.limit + len(encode(b"one"))
        events.extend(drain(dec))
        assert dec.buffered <= dec.limit
    assert only_frames(events) == [b"one", b"two"]
    errors = only_errors(events)
    assert [e.reason for e in errors] == [Reason.OVERSIZED, Reason.OVERSIZED]
    assert errors[0].data == run[: dec.limit]
    assert "10000" in errors[0].detail
    assert "300" in errors[1].detail


def test_oversized_run_in_one_feed_is_not_buffered() -> None:
    dec = StreamDecoder()
    dec.feed(b"\x41" * 10_000)
    assert dec.buffered == dec.limit
    assert dec.next_event() is NEED_DATA  # no delimiter yet: the length is not known
    dec.feed(b"\x41" * 10_000 + encode(b"next"))
    with pytest.raises(RemoteProtocolError) as exc:
        dec.next_event()
    assert exc.value.reason == Reason.OVERSIZED
    assert "20000" in exc.value.detail
    assert exc.value.data == b"\x41" * dec.limit
    assert dec.next_event() == b"next"
    assert dec.next_event() is NEED_DATA
    assert dec.buffered == 0
