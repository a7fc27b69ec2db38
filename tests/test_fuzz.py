"""Fuzz targets for the receive path: whatever bytes arrive, only RemoteProtocolError escapes.

Bounded in CI (the "ci" hypothesis profile); run longer with
    HYPOTHESIS_PROFILE=long .venv/bin/pytest tests/test_fuzz.py tests/test_cbor.py \
        tests/test_framing.py
(docs/development/fuzzing.md has the figures of the last long run).
"""

from __future__ import annotations

import struct

import cbor2
from hypothesis import example, given
from hypothesis import strategies as st

from protocol import (
    NEED_DATA,
    NodeKeys,
    Readings,
    RemoteProtocolError,
    StreamDecoder,
    _fast,
    cbor,
    encode_serial,
    open_frame,
    parse_header,
    seal,
)
from protocol.messages import message_from_body

SECRET = bytes(range(16))  # TEST ONLY secret
KEYS = NodeKeys(0x1234, SECRET)
VALID = seal(Readings({0: 215, 1: 455}), 300, KEYS)
# protocol v1.1: the same node under the keys of key epoch 16
EPOCH_KEYS = {0: KEYS, 16: NodeKeys(0x1234, SECRET, epoch=16)}
VALID_EPOCH = seal(Readings({0: 215, 1: 455}), 300, EPOCH_KEYS[16])


def keys_for(epoch: int) -> NodeKeys:
    if epoch not in EPOCH_KEYS:
        EPOCH_KEYS[epoch] = NodeKeys(0x1234, SECRET, epoch=epoch)
    return EPOCH_KEYS[epoch]


def receive(frame: bytes) -> str:
    """What a gateway does with one frame, reduced to its verdict. It knows node 0x1234 at key
    epoch 0 and so opens the node's frames of any epoch with that epoch's keys (SPEC.md 5.5)."""
    try:
        header = parse_header(frame)
        if header.node_id != KEYS.node_id:
            return "unknown_node"
        open_frame(frame, keys_for(header.epoch), uplink=header.uplink, header=header)
    except RemoteProtocolError as exc:
        return exc.reason_name
    return "accepted"


@given(st.binary(max_size=300))
@example(b"")
@example(VALID[:5])
@example(bytes([0x80]) + VALID[1:])
@example(bytes([0x80]))
@example(bytes([0x80, 0x00]) + VALID[1:])
@example(VALID_EPOCH[:13])
@example(VALID_EPOCH[:1] + bytes([17]) + VALID_EPOCH[2:])
@example(bytes([VALID_EPOCH[0] & 0x7F]) + VALID_EPOCH[2:])
def test_random_frames_only_raise_remote_errors(data: bytes) -> None:
    verdict = receive(data)
    assert verdict != "accepted" or data in (VALID, VALID_EPOCH)


@given(
    st.sampled_from([VALID, VALID_EPOCH]),
    st.binary(min_size=1, max_size=len(VALID_EPOCH)),
    st.integers(0, len(VALID_EPOCH) - 1),
)
def test_spliced_frames_are_rejected(valid: bytes, patch: bytes, at: int) -> None:
    frame = valid[:at] + patch + valid[at + len(patch) :]
    assert receive(frame) != "accepted" or frame == valid


def test_the_epoch_frames_of_the_examples() -> None:
    assert receive(VALID_EPOCH) == "accepted"
    assert receive(bytes([0x80])) == "bad_version"
    assert receive(bytes([0x80, 0x00]) + VALID[1:]) == "bad_version"
    assert receive(VALID_EPOCH[:1] + bytes([17]) + VALID_EPOCH[2:]) == "auth_failed"
    assert receive(bytes([VALID_EPOCH[0] & 0x7F]) + VALID_EPOCH[2:]) == "auth_failed"


@given(
    st.lists(
        st.binary(max_size=80)
        | st.just(encode_serial(VALID))
        | st.just(encode_serial(VALID_EPOCH)),
        max_size=12,
    ),
    st.integers(1, 64),
)
def test_serial_stream_with_garbage(chunks: list[bytes], piece: int) -> None:
    stream = b"".join(chunks)
    decoder = StreamDecoder()
    for i in range(0, len(stream), piece):
        decoder.feed(stream[i : i + piece])
        while True:
            try:
                frame = decoder.next_event()
            except RemoteProtocolError:
                continue
            if frame is NEED_DATA:
                break
            assert isinstance(frame, bytes)
            receive(frame)


def _verdict(loads: object, msg_type: int, plaintext: bytes) -> object:
    try:
        return message_from_body(msg_type, loads(plaintext))  # type: ignore[operator]
    except RemoteProtocolError as exc:
        return exc.reason_name


small_cbor = st.recursive(
    st.integers(-300, 70000)
    | st.booleans()
    | st.none()
    | st.binary(max_size=8)
    | st.text(max_size=4)
    | st.floats(allow_nan=False),
    lambda inner: (
        st.lists(inner, max_size=6)
        | st.dictionaries(st.integers(0, 12) | st.booleans() | st.floats(0, 3), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(st.integers(0, 6), small_cbor | st.binary(max_size=40))
def test_gateway_and_node_backends_accept_the_same_plaintexts(msg_type: int, item: object) -> None:
    """cbor2 (gateway) and protocol.cbor (node) must agree on every message body."""
    plaintext = item if isinstance(item, bytes) else cbor2.dumps(item, canonical=True)
    gateway = _verdict(_fast.cbor_loads, msg_type, plaintext)
    node = _verdict(cbor.loads, msg_type, plaintext)
    assert gateway == node, (plaintext.hex(), gateway, node)


# --- non-canonical encodings: both decoders refuse them ---------------------------------------
#
# The differential target above feeds canonical encodings only. cbor2 is lenient (long-form
# heads, indefinite lengths, unsorted or repeated map keys, tags, trailing bytes): the gateway's
# strict check (protocol/_fast.py) is what refuses the other encodings of a valid item. Here
# every input is a valid item encoded the wrong way in at least one place.

_SIZES = (0, 1, 2, 4, 8)  # argument bytes of a head: 0 = in the initial byte


def _shortest(n: int) -> int:
    return 0 if n < 24 else 1 if n < 0x100 else 2 if n < 0x10000 else 4 if n < 2**32 else 8


def _head(major: int, n: int, size: int) -> bytes:
    if size == 0:
        return bytes([major << 5 | n])
    return bytes([major << 5 | {1: 24, 2: 25, 4: 26, 8: 27}[size]]) + n.to_bytes(size, "big")


def _canonical(v: object) -> bytes:
    return cbor2.dumps(v, canonical=True)


def _key_order(item: tuple[object, object]) -> tuple[int, bytes]:
    k = _canonical(item[0])
    return (len(k), k)


class _Perturber:
    """Encodes an item like cbor2's canonical mode, except at the nodes it is told to spoil."""

    def __init__(self, draw: st.DrawFn, target: int, *, others: bool = True) -> None:
        self.draw = draw
        self.target = target  # the node (pre-order) that is certainly spoiled
        self.others = others  # whether other nodes may be spoiled too (one in eight)
        self.index = 0
        self.spoiled: list[str] = []

    def _variant(self, choices: list[str]) -> str:
        i = self.index
        self.index += 1
        if not choices or (
            i != self.target and (not self.others or self.draw(st.integers(0, 7)) != 0)
        ):
            return "canonical"
        variant = self.draw(st.sampled_from(choices))
        self.spoiled.append(variant)
        return variant

    def _long(self, major: int, n: int) -> bytes:
        size = self.draw(st.sampled_from([s for s in _SIZES if s > _shortest(n)]))
        return _head(major, n, size)

    def encode(self, v: object) -> bytes:  # noqa: PLR0911, PLR0912 - one branch per variant
        if isinstance(v, bool) or v is None:
            if self._variant(["two-byte simple"]) == "canonical":
                return _canonical(v)
            return bytes([0xF8, {False: 20, True: 21, None: 22}[v]])  # not well-formed
        if isinstance(v, int):
            major, n = (0, v) if v >= 0 else (1, -1 - v)
            choices = ["bignum", "self-described"] + (["long"] if n < 2**32 else [])
            variant = self._variant(choices)
            if variant == "long":
                return self._long(major, n)
            if variant == "bignum":  # tag 2/3 and the magnitude, maybe with leading zeros
                zeros = self.draw(st.integers(0, 2))
                raw = bytes(zeros) + n.to_bytes((n.bit_length() + 7) // 8, "big")
                return bytes([0xC2 + major]) + _head(2, len(raw), _shortest(len(raw))) + raw
            if variant == "self-described":
                return b"\xd9\xd9\xf7" + _canonical(v)
            return _canonical(v)
        if isinstance(v, float):
            wide = {0xF9: [">f", ">d"], 0xFA: [">d"], 0xFB: []}[_canonical(v)[0]]
            if self._variant(["wider float"] if wide else []) == "canonical":
                return _canonical(v)
            fmt = self.draw(st.sampled_from(wide))
            return (b"\xfa" if fmt == ">f" else b"\xfb") + struct.pack(fmt, v)
        if isinstance(v, (bytes, str)):
            major = 2 if isinstance(v, bytes) else 3
            raw = v if isinstance(v, bytes) else v.encode()
            variant = self._variant(["long", "indefinite"])
            if variant == "long":
                return self._long(major, len(raw)) + raw
            if variant == "indefinite":  # chunks split at character boundaries
                cuts = sorted(self.draw(st.lists(st.integers(0, len(v)), max_size=3)))
                parts = [v[a:b] for a, b in zip([0, *cuts], [*cuts, len(v)], strict=True)]
                chunks = b"".join(_canonical(p) for p in parts)
                return bytes([major << 5 | 31]) + chunks + b"\xff"
            return _canonical(v)
        if isinstance(v, list):
            variant = self._variant(["long", "indefinite"])
            items = b"".join(self.encode(x) for x in v)
            if variant == "long":
                return self._long(4, len(v)) + items
            if variant == "indefinite":
                return b"\x9f" + items + b"\xff"
            return _head(4, len(v), _shortest(len(v))) + items
        assert isinstance(v, dict)
        entries = sorted(v.items(), key=_key_order)
        choices = ["long", "indefinite", "duplicate key"] + (["unsorted"] if len(v) > 1 else [])
        variant = self._variant(choices)
        if variant == "unsorted":
            shuffled = self.draw(st.permutations(entries))
            if shuffled == entries:
                shuffled = [entries[1], entries[0], *entries[2:]]
            entries = shuffled
        elif variant == "duplicate key" and entries:  # the same key and value twice
            at = self.draw(st.integers(0, len(entries) - 1))
            entries = [*entries[: at + 1], entries[at], *entries[at + 1 :]]
        elif variant == "duplicate key":  # an empty map: nothing to repeat, lengthen instead
            variant = "long"
        body = b"".join(self.encode(k) + self.encode(x) for k, x in entries)
        if variant == "long":
            return self._long(5, len(entries)) + body
        if variant == "indefinite":
            return b"\xbf" + body + b"\xff"
        return _head(5, len(entries), _shortest(len(entries))) + body


_map_keys = st.integers(-(2**64), 2**64 - 1) | st.text(max_size=4) | st.binary(max_size=4)
valid_items = st.recursive(
    st.integers(-(2**64), 2**64 - 1)
    | st.sampled_from([0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, -1, -25, -(2**64)])
    | st.booleans()
    | st.none()
    | st.binary(max_size=30)
    | st.text(max_size=30)
    | st.floats(allow_nan=False, allow_infinity=False, width=32),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(_map_keys, inner, max_size=4),
    max_leaves=10,
)


def _count_nodes(v: object) -> int:
    if isinstance(v, list):
        return 1 + sum(_count_nodes(x) for x in v)
    if isinstance(v, dict):
        return 1 + sum(_count_nodes(k) + _count_nodes(x) for k, x in v.items())
    return 1


@st.composite
def non_canonical_encodings(draw: st.DrawFn) -> tuple[object, bytes, list[str]]:
    """(a valid item, a non-canonical encoding of it, what was spoiled)."""
    item = draw(valid_items)
    trailing = draw(st.booleans())
    target = draw(st.integers(0, _count_nodes(item) - (0 if trailing else 1)))
    perturber = _Perturber(draw, target)
    data = perturber.encode(item)
    if target == perturber.index or not perturber.spoiled:  # trailing bytes, at least
        data += draw(st.binary(min_size=1, max_size=3) | valid_items.map(_canonical))
        perturber.spoiled.append("trailing bytes")
    return item, data, perturber.spoiled


def _reason(loads: object, data: bytes) -> object:
    try:
        value = loads(data)  # type: ignore[operator]
    except RemoteProtocolError as exc:
        return exc.reason_name
    return ("accepted", value)


@given(non_canonical_encodings())
@example((0, b"\x18\x00", ["long"]))
@example(([1, 2], b"\x9f\x01\x02\xff", ["indefinite"]))
@example(({1: 0, 2: 0}, b"\xa2\x02\x00\x01\x00", ["unsorted"]))
@example(({1: 0}, b"\xa2\x01\x00\x01\x00", ["duplicate key"]))
@example((65536, b"\xc2\x43\x01\x00\x00", ["bignum"]))  # as long as the canonical form
@example(([0] * 24, b"\x9f" + bytes(24) + b"\xff", ["indefinite"]))  # likewise
@example((1.5, b"\xfa\x3f\xc0\x00\x00", ["wider float"]))
@example((b"ab", b"\x42ab\x00", ["trailing bytes"]))
def test_gateway_and_node_refuse_non_canonical_cbor(case: tuple[object, bytes, list[str]]) -> None:
    item, data, spoiled = case
    gateway = _reason(_fast.cbor_loads, data)
    node = _reason(cbor.loads, data)
    assert gateway == node == "malformed", (data.hex(), spoiled, gateway, node)
    if not _has_float(item):  # the canonical encoding of the same item is accepted by both
        canonical = _canonical(item)
        assert _fast.cbor_loads(canonical) == cbor.loads(canonical) == item


def _has_float(v: object) -> bool:
    if isinstance(v, float):
        return True
    if isinstance(v, list):
        return any(_has_float(x) for x in v)
    if isinstance(v, dict):
        return any(_has_float(x) for x in v.values())
    return False


# --- the gateway's fast path (protocol/_fast.py) accepts only what the full check accepts ------


def _full_check(data: bytes) -> object:
    """protocol/_fast.py's strict check without its fast path: decode, encode again, compare."""
    try:
        value = cbor2.loads(data)
        same = cbor2.dumps(value, canonical=True) == data
    except Exception:  # cbor2 raises several types
        return "malformed"
    return ("accepted", data) if same else "malformed"


array_items = st.lists(
    st.integers(-(2**64), 2**64 - 1)
    | st.binary(max_size=26)
    | st.text(max_size=26)
    | st.booleans()
    | st.none()
    | st.lists(st.integers(-(2**33), 2**33) | st.binary(max_size=8), max_size=6),
    max_size=30,
)


@st.composite
def array_encodings(draw: st.DrawFn) -> bytes:
    """Encodings of the shapes the fast path handles: canonical, spoiled, or mutated bytes."""
    item = draw(array_items)
    how = draw(st.sampled_from(["canonical", "spoiled", "mutated"]))
    if how == "spoiled":  # in one place only: a second spoil would often hide the first
        target = draw(st.integers(0, _count_nodes(item) - 1))
        return _Perturber(draw, target, others=False).encode(item)
    data = bytearray(_canonical(item))
    if how == "mutated":
        for _ in range(draw(st.integers(1, 3))):
            pos = draw(st.integers(0, len(data) - 1))
            data[pos] = draw(st.integers(0, 255))
    return bytes(data)


@given(array_encodings() | st.binary(max_size=40).map(lambda b: b"\x85" + b))
@example(b"\x81\xc2\x43\x01\x00\x00")  # 65536 as a bignum: as long as its canonical form
@example(b"\x98\x18" + bytes(24))
@example(b"\x9f" + bytes(24) + b"\xff")  # as long as the canonical form above
@example(b"\x82\x00\x00\x00")  # a trailing item
@example(b"\x81\x18\x17")  # 23 in one byte, and each head size's largest value one size up:
@example(b"\x81\x39\x00\xff")
@example(b"\x82\x1a\x00\x00\xff\xff\x00")
@example(b"\x81\x1b\x00\x00\x00\x00\xff\xff\xff\xff")
@example(b"\x81\x1b\x00\x00\x00\x01\x00\x00\x00\x00")  # 2**32 in eight bytes: canonical
@example(b"\x81\x58\x01\x61")  # string lengths and inner arrays likewise
@example(b"\x82\x00\x98\x01\x00")
@example(b"\x82\x82\x41\x00\x01\x00")
@example(b"\x81\x62\xc3\xa9" + b"\x81\x62\xc3")  # text split across items
def test_fast_path_accepts_exactly_what_the_full_check_accepts(data: bytes) -> None:
    expected = _full_check(data)
    got = _reason(_fast.cbor_loads, data)
    if got != "malformed":  # compared by their encoding (a NaN is not equal to itself)
        got = ("accepted", cbor2.dumps(got[1], canonical=True))  # type: ignore[index]
    assert got == expected, data.hex()
    if expected == "malformed":
        return
    value = cbor2.loads(data)
    if type(value) is list and _fast._ARRAYS[len(value)].fullmatch(data):
        assert cbor2.dumps(value, canonical=True) == data  # what the expression lets through
