"""Keyed pseudonyms for device identifiers (BLE addresses): HMAC-SHA256 under a key in RAM.

A device identifier is personal data. Before anything else in the gateway sees one, the privacy
engine replaces it by its pseudonym: HMAC-SHA256 (RFC 2104) of the identifier under a random
32-byte key, truncated to the stream's `pseudonym_bits`. The key

- comes from `secrets.token_bytes(32)` and lives only in this object, in RAM: never on disk,
  in a log, a repr, an exception or a pickle (pickling and copying are refused);
- belongs to one rotation period. Periods are aligned to the Unix epoch, so they are the same
  on every gateway and after a restart, and a period ends exactly when a window ends (below);
- is destroyed when its period ends: the key's bytearray is overwritten with zeros and
  dropped, and so are the two SHA-256 states precomputed from it (OpenSSL clears a digest
  context when it frees it). That happens on the first pseudonym asked for a later period, or
  on `expire(now)`, which the engine calls every second, so a key never outlives its period
  even when no device is seen. A new key is drawn lazily, for the first identifier of a new
  period.

So the same device has the same pseudonym within a period (the window counts it once) and
unlinkable pseudonyms in different periods: once a key is gone, nobody (the gateway included)
can compute or compare pseudonyms of that period again. An identifier in a period whose key
is gone (a clock that stepped back) gets no pseudonym: the engine drops it as late.

**The rotation period.** The policy's `rotation_minutes` (its `key_rotation_minutes`, by
default the window) rounded DOWN to a whole number of windows, and at least one window
(`rotation_seconds`). A key that changed inside a window would give one device two pseudonyms
in that window and break the one-contribution-per-device bound that the noise is calibrated
for; rounding down means a key never lives longer than the policy (and the transparency
statement) says. The policy caps `key_rotation_minutes` at 24 h.

**Speed.** HMAC's inner and outer SHA-256 states are computed once per key, so a pseudonym
costs two state copies and two short hashes (the classic HMAC precomputation; the tests check
the output against `hmac.digest`).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

from .policy import Stream

KEY_BYTES = 32
_BLOCK = 64  # SHA-256's block size: HMAC pads the key to it


def rotation_seconds(stream: Stream) -> int:
    """The key rotation period of a stream in seconds: a whole number of windows (see above)."""
    window = stream.window_minutes
    minutes = max(window, stream.rotation_minutes // window * window)
    return minutes * 60


class Pseudonymizer:
    """Pseudonyms for one stream. Not thread-safe: the engine holds its lock around it."""

    __slots__ = (
        "_inner",
        "_key",
        "_outer",
        "_period",
        "_token_bytes",
        "period_s",
        "rotations",
        "size",
    )

    def __init__(
        self,
        period_s: int,
        bits: int,
        *,
        token_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        if period_s < 1 or bits % 8 or not 32 <= bits <= 256:
            raise ValueError("period_s must be positive; bits a multiple of 8 in 32..256")
        self.period_s = period_s
        self.size = bits // 8
        self.rotations = 0  # keys drawn so far
        self._token_bytes = token_bytes
        self._key: bytearray | None = None
        self._inner: Any = None  # hashlib SHA-256 states after the key's inner/outer pad
        self._outer: Any = None
        self._period: int | None = None  # the period of the current (or last destroyed) key

    def __repr__(self) -> str:  # nothing secret: no key, no pseudonym
        state = "set" if self._key is not None else "none"
        return (
            f"Pseudonymizer(period={self.period_s} s, bits={self.size * 8}, key={state}, "
            f"rotations={self.rotations})"
        )

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        raise TypeError("a Pseudonymizer cannot be pickled or copied: its key stays in RAM")

    def period(self, t: float) -> int:
        return int(t // self.period_s)

    def pseudonyms(self, t: float, identifiers: Iterable[bytes]) -> list[bytes] | None:
        """The pseudonyms of identifiers seen at time t; None if t's period key is gone."""
        p = int(t // self.period_s)
        if p != self._period or self._inner is None:
            if self._period is not None and p <= self._period:
                return None  # an earlier period, or the current one after expire(): key gone
            self._new_key(p)
        inner, outer, size = self._inner, self._outer, self.size
        out: list[bytes] = []
        append = out.append
        for identifier in identifiers:
            h = inner.copy()
            h.update(identifier)
            o = outer.copy()
            o.update(h.digest())
            append(o.digest()[:size])
        return out

    def pseudonym(self, identifier: bytes, t: float) -> bytes | None:
        got = self.pseudonyms(t, (identifier,))
        return None if got is None else got[0]

    def expire(self, now: float) -> bool:
        """Destroy the key if its period is over; True if one was destroyed."""
        if self._key is not None and self._period is not None and self.period(now) > self._period:
            self._destroy()
            return True
        return False

    def destroy(self) -> None:
        """Destroy the current key now (the stream is going away); later periods get new ones."""
        self._destroy()

    def _new_key(self, period: int) -> None:
        self._destroy()
        key = bytearray(self._token_bytes(KEY_BYTES))  # the bytes object is dropped at once
        inner_pad = bytearray(_BLOCK)
        outer_pad = bytearray(_BLOCK)
        for i in range(_BLOCK):
            k = key[i] if i < KEY_BYTES else 0
            inner_pad[i] = k ^ 0x36
            outer_pad[i] = k ^ 0x5C
        self._inner = hashlib.sha256(inner_pad)
        self._outer = hashlib.sha256(outer_pad)
        inner_pad[:] = bytes(_BLOCK)
        outer_pad[:] = bytes(_BLOCK)
        self._key = key
        self._period = period
        self.rotations += 1

    def _destroy(self) -> None:
        if self._key is not None:
            self._key[:] = bytes(KEY_BYTES)  # overwritten in place, then dropped
        self._key = None
        self._inner = None
        self._outer = None
