"""Keyed pseudonyms for device identifiers (BLE addresses): keyed BLAKE2s under a key in RAM.

A device identifier is personal data. Before anything else in the gateway sees one, the privacy
engine replaces it by its pseudonym: BLAKE2s in its keyed mode (RFC 7693) of the identifier
under a random 32-byte key, with the stream's `pseudonym_bits` as its digest length. The key

- comes from `secrets.token_bytes(32)` and lives only in this object, in RAM: never on disk,
  in a log, a repr, an exception or a pickle (pickling and copying are refused);
- belongs to one rotation period. Periods are aligned to the Unix epoch, so they are the same
  on every gateway and after a restart, and a period ends exactly when a window ends (below);
- is destroyed when its period ends: the key's bytearray is overwritten with zeros and
  dropped, and so is the BLAKE2s state keyed with it (CPython zeroes a BLAKE2 object's state
  and parameters when it frees it, as it does each per-pseudonym copy). That happens on the
  first pseudonym asked for a later period, or on `expire(now)`, which the engine calls every
  second, so a key never outlives its period even when no device is seen. A new key is drawn
  lazily, for the first identifier of a new period.

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

**Why keyed BLAKE2s, and why it is as strong as the HMAC-SHA256 it replaced.** What a
pseudonym needs is a pseudorandom function (PRF) of the identifier under a secret key: without
the key, pseudonyms can be neither computed from addresses nor linked to them, and two devices
collide only by chance. Keyed BLAKE2 is designed and specified as such a keyed function (RFC
7693 calls its keyed mode a MAC: the key, padded to a block, is compressed as the first
block). Unlike SHA-256, BLAKE2 has no length-extension weakness, which is what HMAC's two
nested hashes are there for, so one keyed hash does what HMAC does with two. With our 32-byte
key both are bounded by the same 256-bit key strength, far beyond the 32..256-bit pseudonym
lengths a policy may ask for. The digest length is a parameter of the keyed function, so a
64-bit pseudonym is BLAKE2s-64 of the identifier rather than a truncation: lengths give
unrelated outputs, each a PRF of that length, as a truncated HMAC was. What changes is the
cost: a state copy, an update and a digest per pseudonym instead of two of each.

Nothing of this is stored: keys, pseudonyms and windows live in RAM only, a restart draws a
new key whatever the function (`privacy.db`, the budget ledger, holds no pseudonym, and a
window is not kept across a restart), so the change of function can never put pseudonyms of
both functions into one window.

**Speed.** The BLAKE2s state keyed with the period's key is made once per key; a pseudonym
costs a copy of it, an update with the identifier and a digest (the tests check the output
against `hashlib.blake2s(identifier, key=key, digest_size=...)`). `add_sightings` puts the
pseudonyms of a frame's sightings straight into a window's set, the engine's hot path.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

from .policy import Stream

KEY_BYTES = 32  # BLAKE2s's largest key


def rotation_seconds(stream: Stream) -> int:
    """The key rotation period of a stream in seconds: a whole number of windows (see above)."""
    window = stream.window_minutes
    minutes = max(window, stream.rotation_minutes // window * window)
    return minutes * 60


class Pseudonymizer:
    """Pseudonyms for one stream. Not thread-safe: the engine holds its lock around it."""

    __slots__ = (
        "_begins",
        "_ends",
        "_key",
        "_keyed",
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
        self._keyed: Any = None  # the hashlib BLAKE2s state keyed with _key
        self._period: int | None = None  # the period of the current (or last destroyed) key
        # the current key's period as times, begins <= t < ends (empty while there is no key):
        # the per-frame check compares two floats instead of dividing
        self._begins = 0.0
        self._ends = 0.0

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

    def _keyed_for(self, t: float) -> Any:
        """The keyed state of t's period, drawing its key if need be; None if it is gone."""
        if self._begins <= t < self._ends:
            return self._keyed
        p = int(t // self.period_s)
        if self._period is not None and p <= self._period:
            return None  # an earlier period, or the current one after expire(): key gone
        self._new_key(p)
        return self._keyed

    def pseudonyms(self, t: float, identifiers: Iterable[bytes]) -> list[bytes] | None:
        """The pseudonyms of identifiers seen at time t; None if t's period key is gone."""
        keyed = self._keyed_for(t)
        if keyed is None:
            return None
        out: list[bytes] = []
        for identifier in identifiers:
            h = keyed.copy()
            h.update(identifier)
            out.append(h.digest())
        return out

    def add_sightings(
        self, t: float, sightings: Iterable[tuple[bytes, int]], devices: set[bytes]
    ) -> bool:
        """Add the pseudonyms of the identifiers of (identifier, rssi) sightings seen at time t
        to `devices` (the caller bounds its size); False, adding nothing, if t's key is gone."""
        if self._begins <= t < self._ends:  # _keyed_for's first line: the usual case, inline
            keyed = self._keyed
        else:
            keyed = self._keyed_for(t)
            if keyed is None:
                return False
        copy, add = keyed.copy, devices.add
        for identifier, _ in sightings:
            h = copy()
            h.update(identifier)
            add(h.digest())
        return True

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
        self._keyed = hashlib.blake2s(key=key, digest_size=self.size)
        self._key = key
        self._period = period
        self._begins = float(period * self.period_s)
        self._ends = float((period + 1) * self.period_s)
        self.rotations += 1

    def _destroy(self) -> None:
        if self._key is not None:
            self._key[:] = bytes(KEY_BYTES)  # overwritten in place, then dropped
        self._key = None
        self._keyed = None
        self._begins = self._ends = 0.0
