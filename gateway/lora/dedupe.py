"""Merge the copies of one frame that several gateways heard.

A node's frame is received by every concentrator in range, and each forwards it. The first
copy opens a short window (`window_s`, 200 ms by default: far longer than the spread of
backhaul delays on a site network, far shorter than RX1's 1 s); copies arriving within it are
merged, and when it closes the frame goes on once, with the metadata of the copy with the
best RSSI (so its acknowledgement is sent by the gateway that hears the node best). A copy
arriving after that (a slow backhaul) is dropped and counted, for another window's length.

Memory is bounded: at most `max_pending` frames are held at once; beyond that the oldest is
released early (its merge is then only partial, never lost).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace

from .radio import RadioMeta

DEFAULT_WINDOW_S = 0.2
DEFAULT_MAX_PENDING = 4096


@dataclass
class _Pending:
    best: RadioMeta
    copies: int
    timer: asyncio.TimerHandle


class Deduplicator:
    """`offer(frame, meta)` for every copy; `release(frame, meta)` is called once per frame,
    from the event loop, after the window, with the best copy's metadata (`copies` set)."""

    def __init__(
        self,
        release: Callable[[bytes, RadioMeta], None],
        window_s: float = DEFAULT_WINDOW_S,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        self._release = release
        self.window_s = window_s
        self.max_pending = max_pending
        self._pending: OrderedDict[bytes, _Pending] = OrderedDict()
        self._recent: OrderedDict[bytes, float] = OrderedDict()  # frame -> loop time released
        self.merged = 0  # copies merged into a frame still pending
        self.late = 0  # copies that came after their frame was released

    def offer(self, frame: bytes, meta: RadioMeta) -> None:
        loop = asyncio.get_running_loop()
        pending = self._pending.get(frame)
        if pending is not None:
            self.merged += 1
            pending.copies += 1
            if meta.rssi > pending.best.rssi:
                pending.best = meta
            return
        released = self._recent.get(frame)
        if released is not None and loop.time() - released < self.window_s:
            self.late += 1
            return
        if self.window_s <= 0:
            self._release(frame, meta)
            return
        while len(self._pending) >= self.max_pending:
            oldest = next(iter(self._pending))
            self._pending[oldest].timer.cancel()
            self._flush(oldest)
        timer = loop.call_later(self.window_s, self._flush, frame)
        self._pending[frame] = _Pending(meta, 1, timer)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def close(self) -> None:
        """Release everything held now (the transport is stopping: nothing is lost)."""
        for frame in list(self._pending):
            self._pending[frame].timer.cancel()
            self._flush(frame)

    def _flush(self, frame: bytes) -> None:
        pending = self._pending.pop(frame, None)
        if pending is None:
            return
        now = asyncio.get_running_loop().time()
        self._recent[frame] = now
        self._recent.move_to_end(frame)
        while self._recent and (
            len(self._recent) > self.max_pending
            or now - next(iter(self._recent.values())) >= self.window_s
        ):
            self._recent.popitem(last=False)
        self._release(frame, replace(pending.best, copies=pending.copies))
