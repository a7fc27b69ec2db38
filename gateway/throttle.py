"""When to log what can happen many times a second (rejected frames, a full spool, failing
writes): the first occurrence at once, then at most one line per `every` seconds, saying how
many came since.

A line per occurrence would flood the log (and the SD card under it) exactly when something
is wrong; a line per interval keeps the first cause visible and the count honest.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable


class Throttle:
    """Counts occurrences per key and says when a line is due. Not thread-safe: callers that
    share one across threads hold their own lock around due()."""

    def __init__(self, every: float) -> None:
        self.every = every
        self._last: dict[Hashable, float] = {}  # key -> when its last line was due
        self._held: defaultdict[Hashable, int] = defaultdict(int)  # counted since, not logged

    def due(self, key: Hashable, now: float, count: int = 1) -> tuple[int, float | None] | None:
        """`count` more occurrences of `key` at `now` (a monotonic clock). None while the last
        line for `key` is younger than `every` (they are held); else what the line reports:
        these and those held since the last line, and the seconds since it (None: the first)."""
        last = self._last.get(key)
        if last is not None and now - last < self.every:
            self._held[key] += count
            return None
        self._last[key] = now
        return count + self._held.pop(key, 0), None if last is None else now - last

    def forget(self, key: Hashable) -> None:
        """Start `key` afresh (what it counted is over: a store writes again): its next
        occurrence is logged at once, and what was held is not reported."""
        self._last.pop(key, None)
        self._held.pop(key, None)
