"""Make the node firmware importable on CPython for tests: firmware/ (the edgeveil_node
package, top-level as on a board) and firmware/host/shims (machine, micropython, ...)."""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware"
SHIMS = FIRMWARE / "host" / "shims"

for path in (FIRMWARE, SHIMS):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


class FakeClock:
    """MicroPython's time functions on a clock that moves only when told to."""

    def __init__(self, start_ms: int = 1_000, unix: int = 1_790_000_000) -> None:
        self.ms = start_ms
        self.unix_at_start = unix - start_ms // 1000

    def ticks_ms(self) -> int:
        return self.ms

    @staticmethod
    def ticks_diff(a: int, b: int) -> int:
        return a - b

    @staticmethod
    def ticks_add(a: int, b: int) -> int:
        return a + b

    def sleep_ms(self, ms: int) -> None:
        self.ms += ms

    def time(self) -> int:
        return self.unix_at_start + self.ms // 1000

    def install(self, monkeypatch: object) -> None:
        for name in ("ticks_ms", "ticks_diff", "ticks_add", "sleep_ms", "time"):
            monkeypatch.setattr(time, name, getattr(self, name), raising=False)  # type: ignore[attr-defined]
        # MicroPython's gc reports the free heap; CPython's has no such thing
        monkeypatch.setattr(gc, "mem_free", lambda: 64_000, raising=False)  # type: ignore[attr-defined]
        # and the firmware collects before it reads it: on CPython, where mem_free is the
        # line above, a full collection of the test process only costs time (~15 ms a status)
        monkeypatch.setattr(gc, "collect", lambda generation=2: 0)  # type: ignore[attr-defined]


def settle(node: object, passes: int = 50) -> int:
    """Run the node's scheduler until nothing is due now (each pass does one unit of work);
    returns the passes it took. Fails when the node keeps finding work."""
    for done in range(1, passes + 1):
        if node.step() > 0:  # type: ignore[attr-defined]
            return done
    raise AssertionError(f"the node still had work due after {passes} passes")
