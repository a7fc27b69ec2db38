"""protocol/cbor.py against cbor2 (canonical mode) and against its own strictness rules."""

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.cbor import MAX_DEPTH, dumps, loads
from protocol.errors import LocalProtocolError, Reason, RemoteProtocolError

# Head-size boundaries: the last value of each head size and the first of the next.
_EDGES = [0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1]
_INT_EDGES = _EDGES + [-1 - n for n in _EDGES]

ints = st.one_of(st.sampled_from(_INT_EDGES), st.integers(min_value=-(2**64), max_value=2**64 - 1))
texts = st.text(max_size=20)  # hypothesis text includes non-ASCII (and never lone surrogates)
keys = st.one_of(ints, texts, st.binary(max_size=10), st.booleans(), st.none())
scalars = st.one_of(
    ints,
    texts,
    st.binary(max_size=20),
    st.binary(max_size=5).map(bytearray),
    st.booleans(),
    st.none(),
)


def _depth(v: object) -> int:
    if isinstance(v, (list, tuple)):
        return 1 + max((_depth(x) for x in v), default=0)
    if isinstance(v, dict):
        return 1 + max((_depth(x) for x in v.values()), default=0)
    return 0


values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(keys, children, max_size=5),
    ),
    max_leaves=25,
).filter(lambda v: _depth(v) <= MAX_DEPTH)


def _strict(v: object) -> object:
    """A form of v where == also compares types (True != 1) and tuples equal lists."""
    if v is None or isinstance(v, bool):
        return ("simple", v)
    if isinstance(v, int):
        return ("int", v)
    if isinstance(v, (bytes, bytearray)):
        return ("bytes", bytes(v))
    if isinstance(v, str):
        return ("text", v)
    if isinstance(v, (list, tuple)):
        return ("array", [_strict(x) for x in v])
    assert isinstance(v, dict)
    return ("map", {_strict(k): _strict(x) for k, x in v.items()})


def _check_decoded_types(v: object) -> None:
    """loads returns only list, dict, bytes, str, int, bool and None."""
    assert v is None or type(v) in (bool, int, bytes, str, list, dict), type(v)
    if isinstance(v, list):
        for x in v:
            _check_decoded_types(x)
    if isinstance(v, dict):
        for k, x in v.items():
            _check_decoded_types(k)
            _check_decoded_types(x)


def _malformed(data: bytes) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        loads(data)
    assert info.value.reason == Reason.MALFORMED
    return info.value


# --- agreement with cbor2 and round trip ---------------------------------------------------


@given(values)
def test_dumps_matches_cbor2_and_round_trips(v: object) -> None:
    encoded = dumps(v)
    assert type(encoded) is bytes
    assert encoded == cbor2.dumps(v, canonical=True)
    decoded = loads(encoded)
    _check_decoded_types(decoded)
    assert _strict(decoded) == _strict(v)


@given(st.dictionaries(keys, st.integers(0, 3), max_size=12))
def test_map_key_order_matches_cbor2(d: dict[object, int]) -> None:
    assert dumps(d) == cbor2.dumps(d, canonical=True)
    assert _strict(loads(dumps(d))) == _strict(d)


@pytest.mark.parametrize("n", [*_INT_EDGES, -(2**64)])
def test_int_edges(n: int) -> None:
    assert dumps(n) == cbor2.dumps(n, canonical=True)
    assert loads(dumps(n)) == n


@pytest.mark.parametrize(
    ("value", "hexed"),
    [  # RFC 8949 appendix A, plus the length-first key order
        (0, "00"),
        (23, "17"),
        (24, "1818"),
        (100, "1864"),
        (1000, "1903e8"),
        (1000000, "1a000f4240"),
        (1000000000000, "1b000000e8d4a51000"),
        (2**64 - 1, "1bffffffffffffffff"),
        (-(2**64), "3bffffffffffffffff"),
        (-1, "20"),
        (-1000, "3903e7"),
        (False, "f4"),
        (True, "f5"),
        (None, "f6"),
        (b"", "40"),
        (b"\x01\x02\x03\x04", "4401020304"),
        ("", "60"),
        ("IETF", "6449455446"),
        ("\u00fc", "62c3bc"),
        ("\u6c34", "63e6b0b4"),
        ("\U00010151", "64f0908591"),
        ([], "80"),
        ([1, [2, 3], [4, 5]], "8301820203820405"),
        ({}, "a0"),
        ({1: 2, 3: 4}, "a201020304"),
        ({"a": 1, "b": [2, 3]}, "a26161016162820203"),
        ({"aa": 0, "b": 0, b"z": 0, 100: 0, -1: 0, 10: 0}, "a60a002000186400417a0061620062616100"),
    ],
)
def test_known_vectors(value: object, hexed: str) -> None:
    assert dumps(value).hex() == hexed
    assert _strict(loads(bytes.fromhex(hexed))) == _strict(value)


def test_input_types() -> None:
    encoded = dumps([1, b"x", "y"])
    assert loads(encoded) == loads(bytearray(encoded)) == loads(memoryview(encoded))
    assert loads(memoryview(b"\x00" + encoded)[1:]) == [1, b"x", "y"]
    assert dumps(bytearray(b"ab")) == dumps(b"ab")
    assert dumps((1, 2)) == dumps([1, 2])
    with pytest.raises(LocalProtocolError):
        loads("00")  # type: ignore[arg-type]


def test_depth_limit_is_sixteen() -> None:
    v: object = 0
    for _ in range(MAX_DEPTH):
        v = [v]
    assert MAX_DEPTH == 16
    assert loads(dumps(v)) == v
    assert loads(b"\xa1\x00" * MAX_DEPTH + b"\x00") is not None
    with pytest.raises(LocalProtocolError):
        dumps([v])
    with pytest.raises(LocalProtocolError):
        dumps({0: v})


# --- strict decoding -------------------------------------------------------------------------

REJECTED = {  # name: (hex, what the error detail must say)
    # non-shortest heads
    "int 0 in 1 byte": ("1800", "non-shortest head"),
    "int 23 in 1 byte": ("1817", "non-shortest head"),
    "int 255 in 2 bytes": ("1900ff", "non-shortest head"),
    "int 65535 in 4 bytes": ("1a0000ffff", "non-shortest head"),
    "int 2**32-1 in 8 bytes": ("1b00000000ffffffff", "non-shortest head"),
    "negative int in 1 byte": ("3817", "non-shortest head"),
    "negative int in 2 bytes": ("3900ff", "non-shortest head"),
    "byte string length in 1 byte": ("580161", "non-shortest head"),
    "text length in 2 bytes": ("79000161", "non-shortest head"),
    "array length in 1 byte": ("980100", "non-shortest head"),
    "map length in 4 bytes": ("ba000000010000", "non-shortest head"),
    # indefinite lengths and the break code
    "indefinite array": ("9f01ff", "indefinite length"),
    "indefinite map": ("bf0000ff", "indefinite length"),
    "indefinite byte string": ("5f4161ff", "indefinite length"),
    "indefinite text": ("7f6161ff", "indefinite length"),
    "lone break": ("ff", "simple value or break"),
    # reserved additional info
    "reserved 28": ("1c", "reserved additional info"),
    "reserved 29": ("3d", "reserved additional info"),
    "reserved 30": ("5e", "reserved additional info"),
    # floats, other simple values
    "half float": ("f93c00", "float"),
    "single float": ("fa3f800000", "float"),
    "double float": ("fb3ff0000000000000", "float"),
    "undefined": ("f7", "simple value"),
    "simple 16": ("f0", "simple value"),
    "simple in 1 byte": ("f820", "simple value"),
    "simple 0 in 1 byte": ("f814", "simple value"),
    # tags
    "tag 0": ("c06161", "tag"),
    "tag 1": ("c101", "tag"),
    "bignum": ("c249010000000000000000", "tag"),
    "tag in 1 byte": ("d82000", "tag"),
    # trailing bytes
    "trailing byte": ("0100", "trailing bytes"),
    "two items": ("f6f6", "trailing bytes"),
    "trailing after map": ("a0a0", "trailing bytes"),
    # map key order and uniqueness
    "ints not sorted": ("a202000100", "not in deterministic order"),
    "longer key first": ("a2616100 0200", "not in deterministic order"),
    "-1 after 100 (bytewise, not length-first)": ("a21864002000", "not in deterministic order"),
    "same length not bytewise": ("a26162006161 00", "not in deterministic order"),
    "bytes after text": ("a26161 00 4161 00", "not in deterministic order"),
    "duplicate int key": ("a2010001 00", "duplicate map key"),
    "duplicate text key": ("a2616100616101", "duplicate map key"),
    "1 and true collide in Python": ("a20100f500", "equal to an earlier one"),
    "0 and false collide in Python": ("a20000f400", "equal to an earlier one"),
    "array as key": ("a18000", "as map key"),
    "map as key": ("a1a000", "as map key"),
    "nested array as key": ("a1810000", "as map key"),
    # bad UTF-8
    "invalid byte ff": ("61ff", "invalid UTF-8"),
    "stray continuation": ("6180", "invalid UTF-8"),
    "overlong nul": ("62c080", "invalid UTF-8"),
    "overlong 3 bytes": ("63e08080", "invalid UTF-8"),
    "overlong 4 bytes": ("64f08080 80", "invalid UTF-8"),
    "surrogate": ("63eda080", "invalid UTF-8"),
    "above U+10FFFF": ("64f4908080", "invalid UTF-8"),
    "lead f5": ("64f5808080", "invalid UTF-8"),
    "truncated sequence": ("62e282", "invalid UTF-8"),
    "sequence cut by end of text": ("6261e2", "invalid UTF-8"),
    "missing continuation": ("63e24141", "invalid UTF-8"),
    # huge declared lengths
    "byte string 2**64-1": ("5bffffffffffffffff", "exceeds the input"),
    "text 2**32-1": ("7affffffff", "exceeds the input"),
    "array 2**64-1": ("9bffffffffffffffff", "exceeds the input"),
    "map 2**64-1": ("bbffffffffffffffff", "exceeds the input"),
    "array 65535": ("99ffff00", "exceeds the input"),
    "map longer than half the input": ("a30000010002", "exceeds the input"),
    # truncation
    "empty": ("", "unexpected end of input"),
    "head cut": ("19 01", "truncated head"),
    "8-byte head cut": ("1b00000000000000", "truncated head"),
    "array cut": ("8301 02", "exceeds the input"),
    "map value missing": ("a100", "exceeds the input"),
    "item cut inside array": ("821901", "truncated head"),
    "text cut inside array": ("82636100", "string length 3 exceeds the input"),
    "last map value missing": ("a200006261 61", "unexpected end of input"),
    # depth 17
    "17 arrays": ("81" * 17 + "00", "nesting deeper than 16"),
    "17 maps": ("a100" * 17 + "00", "nesting deeper than 16"),
    "17 mixed": ("81a100" * 8 + "81" + "00", "nesting deeper than 16"),
}


@pytest.mark.parametrize(("hexed", "says"), REJECTED.values(), ids=REJECTED.keys())
def test_rejects(hexed: str, says: str) -> None:
    err = _malformed(bytes.fromhex(hexed))
    assert says in err.detail
    assert "at offset" in err.detail


def test_error_names_offset() -> None:
    assert _malformed(bytes.fromhex("8301f93c00")).detail == "cbor: float at offset 2"
    assert "offset 3" in _malformed(bytes.fromhex("8201 63e08080")).detail


def test_every_prefix_of_a_valid_encoding_is_rejected() -> None:
    value = {
        "n": [0, -1, 24, -25, 256, 65536, 2**32, 2**64 - 1, -(2**64)],
        "t": "h\u00e9llo \U0001f600",
        "b": bytes(range(30)),
        1: {b"k": [True, False, None, []], 2: {}},
        -3: [[[[b""]]]],
    }
    encoded = dumps(value)
    assert loads(encoded) == value
    for cut in range(len(encoded)):
        _malformed(encoded[:cut])


# --- fuzzing: loads returns something dumps reproduces exactly, or RemoteProtocolError -------


def _loads_round_trips_or_rejects(data: bytes) -> None:
    try:
        value = loads(data)
    except RemoteProtocolError as e:
        assert e.reason == Reason.MALFORMED
        return
    _check_decoded_types(value)
    assert dumps(value) == data


@given(st.binary(max_size=64))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    _loads_round_trips_or_rejects(data)


@st.composite
def mutated_encodings(draw: st.DrawFn) -> bytes:
    """A valid encoding with a few bytes replaced, inserted or deleted: mostly almost-valid."""
    data = bytearray(dumps(draw(values)))
    for _ in range(draw(st.integers(1, 3))):
        pos = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["replace", "insert", "delete"]))
        byte = draw(st.integers(0, 255))
        if action == "insert":
            data.insert(pos, byte)
        elif pos < len(data):
            if action == "replace":
                data[pos] = byte
            else:
                del data[pos]
    return bytes(data)


@given(mutated_encodings())
def test_fuzz_mutated_encodings(data: bytes) -> None:
    _loads_round_trips_or_rejects(data)


_UTF8_EDGE_BYTES = [0x00, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF]
_UTF8_EDGE_BYTES += [0xE0, 0xE1, 0xEC, 0xED, 0xEE, 0xEF, 0xF0, 0xF1, 0xF3, 0xF4, 0xF5, 0xFF]


@given(st.lists(st.sampled_from(_UTF8_EDGE_BYTES), max_size=12).map(bytes))
def test_text_validation_agrees_with_cpython(raw: bytes) -> None:
    # cbor.py validates UTF-8 itself (MicroPython's decoder is lax); CPython's strict decoder
    # is the reference for what well-formed means.
    item = bytes([0x60 + len(raw)]) + raw
    try:
        expected = raw.decode("utf-8")
    except UnicodeDecodeError:
        _malformed(item)
    else:
        assert loads(item) == expected


# --- encoder misuse --------------------------------------------------------------------------


class _Thing:
    pass


_recursive_list: list[object] = []
_recursive_list.append(_recursive_list)


@pytest.mark.parametrize(
    "bad",
    [
        1.5,
        float("nan"),
        {1, 2},
        frozenset(),
        2**64,
        -(2**64) - 1,
        object(),
        _Thing(),
        complex(1, 2),
        memoryview(b"x"),
        [1, 2.0],
        {"k": {3}},
        {1.5: 0},
        {(1,): 0},
        {frozenset(): 0},
        "\ud800",
        ["ok", "\udfff"],
        _recursive_list,
    ],
    ids=repr,
)
def test_dumps_rejects(bad: object) -> None:
    with pytest.raises(LocalProtocolError):
        dumps(bad)


def test_dumps_error_names_the_type() -> None:
    with pytest.raises(LocalProtocolError, match="float"):
        dumps([1.5])
    with pytest.raises(LocalProtocolError, match=str(2**64)):
        dumps(2**64)
    with pytest.raises(LocalProtocolError, match="set"):
        dumps({1})


class _DuplicatingDict(dict[object, object]):
    """A mapping whose items() repeats a key: the only way to get two equal encoded keys."""

    def items(self) -> list[tuple[object, object]]:  # type: ignore[override]
        return [(1, "a"), (1, "b")]


def test_dumps_rejects_duplicate_encoded_keys() -> None:
    with pytest.raises(LocalProtocolError, match="duplicate map key"):
        dumps(_DuplicatingDict())
