"""Deterministic CBOR (RFC 8949) for the small subset edgeveil messages use.

Runs unchanged on MicroPython 1.27 and CPython 3.11. The node encodes with this module; the
gateway may use cbor2 instead, so `dumps(v)` is byte-for-byte `cbor2.dumps(v, canonical=True)`.
(micropython-lib's cbor writes every float as 8 bytes and cannot read tags, hence this module.)

The subset, both ways:
    int -2**64 .. 2**64-1        major types 0 and 1
    bytes, bytearray             major type 2 (decoded as bytes)
    str                          major type 3, well-formed UTF-8
    list, tuple                  major type 4 (decoded as list)
    dict                         major type 5; keys are int, str, bytes, bool or None
    False, True, None            simple values 20, 21, 22

Deterministic encoding (RFC 8949 section 4.2):
  - every head in its shortest form, every length definite;
  - map keys sorted "length-first" (RFC 8949 section 4.2.3, the RFC 7049 canonical order):
    compare the keys' *encoded* bytes, shorter encoding first, equal lengths bytewise
    (lexicographically by unsigned byte). So 10 < -1 < 100 < b"z" < "a" < "b" < "aa"
    (0a < 20 < 1864 < 417a < 6161 < 6162 < 626161). This is the order cbor2 6.x writes with
    canonical=True (checked against cbor2 6.3). It is NOT the plain bytewise order of
    RFC 8949 section 4.2.1, which would put 100 (1864) before -1 (20).
  - nesting depth at most MAX_DEPTH containers (a top-level list is depth 1).

`loads` accepts exactly what `dumps` can produce and nothing else: for any input it either
returns a value `v` with `dumps(v) == input`, or raises RemoteProtocolError(Reason.MALFORMED).
`dumps` raises LocalProtocolError for anything outside the subset.
"""

from .errors import LocalProtocolError, Reason, RemoteProtocolError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAX_DEPTH = 16  # containers nested inside each other, top level included

_UINT_MAX = 0xFFFFFFFFFFFFFFFF  # 2**64 - 1: the largest CBOR head argument

# Smallest argument that may use additional info 24, 25, 26, 27 (1, 2, 4, 8 argument bytes).
# A smaller value has a shorter head, so using this size would not be the shortest form.
_MIN_ARG = (24, 0x100, 0x10000, 0x100000000)


# ---------------------------------------------------------------------------------------------
# encoder


def dumps(obj: object) -> bytes:
    """Encode `obj` deterministically. Raises LocalProtocolError outside the subset."""
    # One growing bytearray for the whole message: no list of fragments to join at the end.
    out = bytearray()
    _encode(out, obj, 0)
    return bytes(out)


def _head(out: bytearray, major: int, n: int) -> None:
    """Append the shortest head for major type `major` with argument 0 <= n < 2**64."""
    mt = major << 5
    if n < 24:
        out.append(mt | n)
    elif n < 0x100:
        out.append(mt | 24)
        out.append(n)
    elif n < 0x10000:
        out.append(mt | 25)
        out.extend(n.to_bytes(2, "big"))
    elif n < 0x100000000:
        out.append(mt | 26)
        out.extend(n.to_bytes(4, "big"))
    else:
        out.append(mt | 27)
        out.extend(n.to_bytes(8, "big"))


def _type_name(obj: object) -> str:
    return type(obj).__name__


def _encode_scalar(out: bytearray, obj: object) -> bool:
    """Append `obj` if it is a non-container of the subset; return False if it is not one."""
    # bool first: on CPython True is an int, on MicroPython it is not; `is` works on both.
    if obj is False:
        out.append(0xF4)
    elif obj is True:
        out.append(0xF5)
    elif obj is None:
        out.append(0xF6)
    elif isinstance(obj, int):
        if 0 <= obj <= _UINT_MAX:
            _head(out, 0, obj)
        elif -_UINT_MAX - 1 <= obj < 0:
            _head(out, 1, -1 - obj)
        else:
            raise LocalProtocolError("cbor: integer out of range -2**64 .. 2**64-1: " + str(obj))
    elif isinstance(obj, (bytes, bytearray)):
        _head(out, 2, len(obj))
        out.extend(obj)
    elif isinstance(obj, str):
        # A lone surrogate has no UTF-8 form: CPython's encode() raises, MicroPython's writes
        # ill-formed bytes (ED A0 80 ...). Refuse both, so dumps never writes what loads rejects.
        try:
            raw = obj.encode()
            valid = _utf8_error(raw) < 0
        except UnicodeError:
            valid = False
        if not valid:
            raise LocalProtocolError("cbor: str is not valid Unicode (lone surrogate?)")
        _head(out, 3, len(raw))
        out.extend(raw)
    else:
        return False
    return True


def _encode(out: bytearray, obj: object, depth: int) -> None:
    """Append `obj`; `depth` is the number of containers around it."""
    if _encode_scalar(out, obj):
        return
    if not isinstance(obj, (list, tuple, dict)):
        raise LocalProtocolError("cbor: cannot encode type " + _type_name(obj))
    # Also stops a list that contains itself, before Python's recursion limit would.
    if depth >= MAX_DEPTH:
        raise LocalProtocolError("cbor: nesting deeper than " + str(MAX_DEPTH))
    if isinstance(obj, dict):
        _encode_map(out, obj, depth)
        return
    _head(out, 4, len(obj))
    for item in obj:
        _encode(out, item, depth + 1)


def _sort_key(entry: "tuple[bytes, object]") -> "tuple[int, bytes]":
    return (len(entry[0]), entry[0])  # length-first, then bytewise


def _encode_map(out: bytearray, obj: "dict[Any, Any]", depth: int) -> None:
    # The order depends on the encoded keys, so encode each key on its own first. Keys are
    # scalars (a few bytes each); the values are written straight into `out` afterwards.
    entries = []
    for key, value in obj.items():
        buf = bytearray()
        if not _encode_scalar(buf, key):
            # Arrays and maps as keys would decode to unhashable list/dict: not in the subset.
            raise LocalProtocolError("cbor: cannot use type " + _type_name(key) + " as map key")
        entries.append((bytes(buf), value))
    entries.sort(key=_sort_key)
    _head(out, 5, len(entries))
    prev = b""  # no key encodes to nothing
    for kb, value in entries:
        # Two distinct Python keys never encode alike today; keep the output valid regardless.
        if kb == prev:
            raise LocalProtocolError("cbor: duplicate map key after encoding: " + kb.hex())
        prev = kb
        out.extend(kb)
        _encode(out, value, depth + 1)


# ---------------------------------------------------------------------------------------------
# decoder


def loads(data: "bytes | bytearray | memoryview") -> object:
    """Decode exactly one data item of the subset, strictly.

    Raises RemoteProtocolError(Reason.MALFORMED, ...) for any input that `dumps` would not have
    produced, and LocalProtocolError if `data` is not bytes-like. Nothing else escapes.
    """
    if isinstance(data, memoryview):
        # A memoryview may have items wider than a byte (and MicroPython's cannot be cast);
        # a frame is small, so one copy is the simple way to index it byte by byte.
        data = bytes(data)
    elif not isinstance(data, (bytes, bytearray)):
        raise LocalProtocolError("cbor: loads needs bytes, not " + _type_name(data))
    dec = _Decoder(data)
    value = dec.item(0)
    if dec.pos != len(data):
        raise _malformed(str(len(data) - dec.pos) + " trailing bytes", dec.pos)
    return value


def _malformed(what: str, offset: int) -> RemoteProtocolError:
    return RemoteProtocolError(Reason.MALFORMED, "cbor: " + what + " at offset " + str(offset))


class _Decoder:
    # Recursive descent, one call per item. Recursion is bounded by MAX_DEPTH (checked before
    # descending), so neither interpreter can run out of stack. No list or dict is allocated
    # from a declared length: every declared length is first checked against the bytes left
    # (each item takes at least one byte), so the total number of items is bounded by len(data).

    def __init__(self, buf: "bytes | bytearray") -> None:
        self.buf = buf
        self.pos = 0

    def _arg(self, ai: int, start: int) -> int:
        """Read the head argument for additional info `ai`; the head began at `start`."""
        if ai < 24:
            return ai
        if ai == 31:
            raise _malformed("indefinite length", start)
        if ai > 27:
            raise _malformed("reserved additional info " + str(ai), start)
        size = 1 << (ai - 24)
        buf = self.buf
        pos = self.pos
        if size > len(buf) - pos:
            raise _malformed("truncated head", start)
        n = 0
        for i in range(pos, pos + size):
            n = (n << 8) | buf[i]
        self.pos = pos + size
        if n < _MIN_ARG[ai - 24]:
            raise _malformed("non-shortest head (" + str(n) + " in " + str(size) + " bytes)", start)
        return n

    def item(self, depth: int) -> object:
        """Decode one item; `depth` is the number of containers around it."""
        start = self.pos
        if start >= len(self.buf):
            raise _malformed("unexpected end of input", start)
        ib = self.buf[start]
        self.pos = start + 1
        major = ib >> 5
        if major == 7:
            return _simple(ib, start)
        if major == 6:
            raise _malformed("tag", start)
        n = self._arg(ib & 0x1F, start)
        if major == 0:
            return n
        if major == 1:
            return -1 - n
        if major <= 3:
            return self._string(major, n, start)
        return self._container(major, n, depth, start)

    def _string(self, major: int, n: int, start: int) -> "bytes | str":
        """Byte string (major 2) or text (major 3) of declared length n."""
        pos = self.pos
        if n > len(self.buf) - pos:
            raise _malformed("string length " + str(n) + " exceeds the input", start)
        raw = bytes(self.buf[pos : pos + n])
        self.pos = pos + n
        if major == 2:
            return raw
        # Validate ourselves: MicroPython's decode() accepts overlong forms, surrogates and
        # code points above U+10FFFF, CPython's does not. Both must reject the same bytes.
        bad = _utf8_error(raw)
        if bad >= 0:
            raise _malformed("invalid UTF-8 in text", pos + bad)
        return raw.decode()

    def _container(self, major: int, n: int, depth: int, start: int) -> object:
        """Array (major 4) or map (major 5) of declared length n."""
        if depth >= MAX_DEPTH:
            raise _malformed("nesting deeper than " + str(MAX_DEPTH), start)
        # Each item takes at least one byte: refuse a length the rest of the input cannot hold
        # before looping over it.
        left = len(self.buf) - self.pos
        if major == 4:
            if n > left:
                raise _malformed("array length " + str(n) + " exceeds the input", start)
            items = []
            for _ in range(n):
                items.append(self.item(depth + 1))
            return items
        if n > left // 2:
            raise _malformed("map length " + str(n) + " exceeds the input", start)
        return self._map(n, depth)

    def _map(self, n: int, depth: int) -> "dict[Any, object]":
        buf = self.buf
        result: "dict[Any, object]" = {}
        prev_start = prev_end = 0
        for i in range(n):
            kstart = self.pos
            # Reject array/map keys by their first byte, before decoding them: they would be
            # unhashable as list/dict, and dumps never writes them. (At the end of the input,
            # item() below reports the truncation.)
            if kstart < len(buf) and (buf[kstart] >> 5) in (4, 5):
                raise _malformed("array or map used as map key", kstart)
            key = self.item(depth + 1)
            kend = self.pos
            if i > 0:
                # Keys must ascend in dumps' order: shorter encoding first, then bytewise.
                klen = kend - kstart
                plen = prev_end - prev_start
                if klen == plen:
                    prev = buf[prev_start:prev_end]
                    cur = buf[kstart:kend]
                    if cur == prev:
                        raise _malformed("duplicate map key", kstart)
                    in_order = cur > prev
                else:
                    in_order = klen > plen
                if not in_order:
                    raise _malformed("map keys not in deterministic order", kstart)
            prev_start = kstart
            prev_end = kend
            result[key] = self.item(depth + 1)
            # Distinct encodings can still be equal in Python: 1 == True, 0 == False.
            if len(result) != i + 1:
                raise _malformed("map key equal to an earlier one in Python", kstart)
        return result


def _simple(ib: int, start: int) -> object:
    """Major type 7: only false, true and null are in the subset."""
    if ib == 0xF4:
        return False
    if ib == 0xF5:
        return True
    if ib == 0xF6:
        return None
    if 0xF9 <= ib <= 0xFB:
        raise _malformed("float", start)
    raise _malformed("unsupported simple value or break (" + hex(ib) + ")", start)


def _utf8_error(b: "bytes | bytearray") -> int:
    """Offset of the first ill-formed sequence in `b`, or -1 if it is well-formed UTF-8.

    Well-formed means Unicode table 3-7 (RFC 3629): no overlong forms, no surrogates
    (U+D800..U+DFFF), nothing above U+10FFFF, no truncated or stray continuation bytes.
    """
    i = 0
    n = len(b)
    while i < n:
        c = b[i]
        if c < 0x80:
            i += 1
            continue
        # lo..hi is the allowed range of the 2nd byte; it is narrower after E0, ED, F0, F4.
        if 0xC2 <= c <= 0xDF:
            more, lo, hi = 1, 0x80, 0xBF
        elif 0xE0 <= c <= 0xEF:
            more = 2
            lo = 0xA0 if c == 0xE0 else 0x80  # E0 80..9F would be overlong
            hi = 0x9F if c == 0xED else 0xBF  # ED A0..BF would be a surrogate
        elif 0xF0 <= c <= 0xF4:
            more = 3
            lo = 0x90 if c == 0xF0 else 0x80  # F0 80..8F would be overlong
            hi = 0x8F if c == 0xF4 else 0xBF  # F4 90.. would be above U+10FFFF
        else:
            return i  # 80..C1 (continuation or overlong lead) or F5..FF
        if i + more >= n or not lo <= b[i + 1] <= hi:
            return i
        for j in range(i + 2, i + more + 1):
            if not 0x80 <= b[j] <= 0xBF:
                return i
        i += more + 1
    return -1
