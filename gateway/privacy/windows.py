"""Tumbling windows: the bounded state between a message and a stream's release.

A stream's windows are aligned to wall-clock multiples of its `window_minutes` since the Unix
epoch (UTC): a 15-minute window starts at :00, :15, :30 or :45 on every gateway. They are kept
per group: the node's zone (`group_by = "zone"`) or the node (`group_by = "node"`).

What a window holds:

- readings streams, per quantity (`Stats`): count, sum, minimum and maximum of the scaled
  integers as they arrive (exact), and for percentiles a sample of the values: every value up
  to MAX_SAMPLES per window, group and quantity, beyond it a uniform reservoir sample of
  MAX_SAMPLES values (Vitter's algorithm R). Percentiles are then estimated from the sample;
  count, sum, mean, min and max stay exact. Percentiles interpolate linearly between the two
  nearest ranks (`statistics.quantiles(method="inclusive")`, numpy's default).
- observation streams: the set of pseudonyms seen (never an address: the engine pseudonymises
  first). A set counts each device once per window, however often it is seen: the one
  contribution per device and window that the noise is calibrated for. At most MAX_DEVICES
  pseudonyms per window and group; sightings beyond it are counted as overflow and not
  added (the count saturates at the bound).

Release. `take_due(now)` hands over every window whose end is at or before `now` and forgets
it: a window is released exactly once. The windows' watermark `released_until` (never moved
back) remembers how far time has been released; a value or sighting whose time falls in a
window that ends at or before it arrived too late: the engine counts it as late and drops it,
rather than releasing the window a second time. (A node that buffered readings through a
link outage therefore loses the ones whose windows were released meanwhile; a gateway clock
that steps back makes everything late until the clock passes the watermark again.)

Memory is bounded: per window by MAX_SAMPLES and MAX_DEVICES, and per stream by `limit` open
windows (MAX_WINDOWS); a value for a window beyond the limit is counted and dropped. Old
windows cannot pile up as long as `take_due` is called (the engine's timer does it every
second): at most the current window and, for readings timed by a node clock slightly ahead,
the next one are open per group.
"""

from __future__ import annotations

import random
from array import array
from collections.abc import Iterable

MAX_SAMPLES = 10_000  # values kept for percentiles, per window, group and quantity
MAX_DEVICES = 100_000  # pseudonyms per window and group
MAX_WINDOWS = 10_000  # open windows per stream

PERCENTILES = {"p50": 50, "p90": 90, "p95": 95, "p99": 99}

_rng = random.Random()  # noqa: S311 - reservoir sampling of environmental values, not secrets

Group = str | int  # a zone, or a node id


def window_start(t: float, seconds: int) -> int:
    """The start (Unix time) of the window of length `seconds` that holds t."""
    return int(t // seconds) * seconds


def percentile(ordered: list[int] | list[float], p: float) -> float:
    """The p-th percentile of sorted values, interpolating linearly between closest ranks."""
    n = len(ordered)
    if n == 1:
        return float(ordered[0])
    position = (n - 1) * p / 100
    i = int(position)
    if i >= n - 1:
        return float(ordered[-1])
    low = ordered[i]
    return low + (ordered[i + 1] - low) * (position - i)


class Stats:
    """Running statistics of one quantity in one window (scaled integers, as on the wire)."""

    __slots__ = ("count", "high", "low", "samples", "total")

    def __init__(self, keep_samples: bool) -> None:
        self.count = 0
        self.total = 0
        self.low = 0
        self.high = 0
        self.samples: array[int] | None = array("i") if keep_samples else None

    def add(self, value: int) -> None:
        n = self.count
        if n == 0:
            self.low = self.high = value
        elif value < self.low:
            self.low = value
        elif value > self.high:
            self.high = value
        self.count = n + 1
        self.total += value
        if self.samples is not None:
            self.sample(n, value)

    def sample(self, n: int, value: int) -> None:
        """Keep the (n+1)-th value for percentiles: all up to MAX_SAMPLES, then a reservoir."""
        samples = self.samples
        if samples is None:
            return
        if n < MAX_SAMPLES:
            samples.append(value)
        else:  # algorithm R: the new value replaces a random one with probability cap/(n+1)
            j = _rng.randrange(n + 1)
            if j < MAX_SAMPLES:
                samples[j] = value

    def compute(self, names: Iterable[str]) -> list[tuple[str, int | float]]:
        """The named statistics (policy.STATISTICS), in the same scaled units as the input."""
        out: list[tuple[str, int | float]] = []
        ordered: list[int] | None = None
        for name in names:
            if name == "count":
                out.append((name, self.count))
            elif name == "sum":
                out.append((name, self.total))
            elif name == "mean":
                out.append((name, self.total / self.count))
            elif name == "min":
                out.append((name, self.low))
            elif name == "max":
                out.append((name, self.high))
            elif name in PERCENTILES and self.samples is not None:
                if ordered is None:
                    ordered = sorted(self.samples)
                out.append((name, percentile(ordered, PERCENTILES[name])))
        return out


class Window:
    """One window of one stream and group: statistics per quantity, or a set of pseudonyms."""

    __slots__ = ("devices", "end", "group", "node_id", "overflow", "start", "values", "zone")

    def __init__(self, start: int, end: int, group: Group, node_id: int, zone: str) -> None:
        self.start = start
        self.end = end
        self.group = group
        self.node_id = node_id  # grouped by node: the node; by zone: 0
        self.zone = zone
        self.values: dict[int, Stats] = {}  # readings: quantity id -> statistics
        self.devices: set[bytes] = set()  # observations: pseudonyms
        self.overflow = 0  # sightings not added: the set was full

    def __repr__(self) -> str:  # sizes only: never pseudonyms
        return (
            f"Window(start={self.start}, group={self.group!r}, quantities={len(self.values)}, "
            f"devices={len(self.devices)}, overflow={self.overflow})"
        )

    def add_devices(self, pseudonyms: list[bytes]) -> int:
        """Add pseudonyms (a set: once per device); returns how many overflowed the bound."""
        devices = self.devices
        if len(devices) + len(pseudonyms) <= MAX_DEVICES:
            devices.update(pseudonyms)
            return 0
        lost = 0
        for p in pseudonyms:
            if p in devices:
                continue
            if len(devices) >= MAX_DEVICES:
                lost += 1
            else:
                devices.add(p)
        self.overflow += lost
        return lost


class StreamWindows:
    """The open windows of one stream, by group and start."""

    def __init__(self, seconds: int, released_until: float, limit: int = MAX_WINDOWS) -> None:
        self.seconds = seconds
        self.released_until = released_until  # windows ending at or before it are closed
        self.limit = limit
        self._open: dict[tuple[Group, int], Window] = {}
        # the last window used per group: the fast path (the engine reads it directly)
        self.current: dict[Group, Window] = {}

    def __len__(self) -> int:
        return len(self._open)

    def __repr__(self) -> str:
        return f"StreamWindows(seconds={self.seconds}, open={len(self._open)})"

    def get(self, group: Group, t: float, node_id: int = 0, zone: str = "") -> Window | None:
        """The window of `group` that holds time t, opened if need be; None if that window was
        released already (`late(t)`) or the stream is at its limit of open windows."""
        w = self.current.get(group)
        if w is not None and w.start <= t < w.end:
            return w
        start = int(t // self.seconds) * self.seconds
        end = start + self.seconds
        if end <= self.released_until:
            return None
        key = (group, start)
        w = self._open.get(key)
        if w is None:
            if len(self._open) >= self.limit:
                return None
            w = self._open[key] = Window(start, end, group, node_id, zone)
        self.current[group] = w
        return w

    def late(self, t: float) -> bool:
        return int(t // self.seconds) * self.seconds + self.seconds <= self.released_until

    def take_due(self, now: float) -> list[Window]:
        """Every window that ends at or before `now`, oldest first; they are forgotten here."""
        self.released_until = max(self.released_until, now)
        if not self._open:
            return []
        edge = self.released_until
        due = [w for w in self._open.values() if w.end <= edge]
        return self._forget(due)

    def take_all(self) -> list[Window]:
        """Every open window, whatever its end (the stream goes away)."""
        return self._forget(list(self._open.values()))

    def _forget(self, windows: list[Window]) -> list[Window]:
        for w in windows:
            del self._open[(w.group, w.start)]
            if self.current.get(w.group) is w:
                del self.current[w.group]
        windows.sort(key=lambda w: (w.start, str(w.group)))
        return windows
