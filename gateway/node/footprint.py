"""How much heap a node configuration needs, and whether a board has it.

The figures come from firmware/footprint.json: the firmware measured on MicroPython's WebAssembly
port with a real garbage collector (scripts/footprint.py writes it; the test suite checks it
against a fresh measurement). A configuration's need is the base node's plus what its link and
each of its sensor types add, plus micropython-lib's LoRa drivers on a LoRa node. Adding up
mostly errs high: the sum of the parts' peaks is more than any one pass of the scheduler
allocates. Not always by itself (each part's peak is measured in its own pass, and the heap's
block layout shifts with what is loaded), so the estimate carries PEAK_MARGIN on top.

A board's room is its Python heap now (gc.mem_alloc() + gc.mem_free()) plus what the heap may
still grow into: MicroPython's esp32 port grows it into the largest free block of the
ESP-IDF heap when it fills (to about 112 KB on an ESP32 without PSRAM); the rp2 port has
its whole heap from the start.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import firmware

__all__ = ["HEADROOM", "READ_HEAP", "Need", "Room", "load_table", "need", "room", "verdict"]

TABLE = Path(firmware.__file__).parent / "footprint.json"
# Free heap to keep beyond the peak: a fragmented heap cannot use all of its free bytes, and
# the Bluetooth stack takes its share of the ESP-IDF heap once a scan starts.
HEADROOM = 16 * 1024
# added to an estimated peak: the sums came out up to 1.5 % (1,120 bytes: the typical node
# peaking at "boot: hardware") under the measured peak
PEAK_MARGIN = 2048


# Runs on the board inside a script that has a dict `r` and has imported gc: the heap after a
# collection, what the esp32 port could still grow it into, and the size of the build's ROM
# filesystem partition, 0 without one (where .mpy files run from flash, using no heap for their
# code: `edgeveil node deploy --romfs`).
READ_HEAP = """\
gc.collect()
r['heap_free'] = gc.mem_free()
r['heap_total'] = gc.mem_free() + gc.mem_alloc()
try:
    import esp32
    r['heap_grow'] = max(b[2] for b in esp32.idf_heap_info(esp32.HEAP_DATA))
except Exception:
    r['heap_grow'] = 0
r['romfs'] = 0
try:
    import vfs
    if vfs.rom_ioctl(1) > 0:
        r['romfs'] = len(memoryview(vfs.rom_ioctl(2, 0)))
except (ImportError, AttributeError, TypeError):
    pass
"""


@dataclass(frozen=True)
class Need:
    live: int  # bytes the node keeps in use while it runs
    peak: int  # the most it needs at any moment: its live heap and one pass's garbage
    parts: tuple[str, ...]  # what was added up, e.g. ("base", "link:lora", "sensor:bme280")


@dataclass(frozen=True)
class Room:
    now: int  # the Python heap's size now
    grow: int  # what it may still grow into (esp32 port); 0 elsewhere

    @property
    def total(self) -> int:
        return self.now + self.grow


def load_table(path: Path = TABLE) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def need(config: dict[str, Any], table: dict[str, Any] | None = None) -> Need:
    """The heap a node with this (valid) configuration needs."""
    table = load_table() if table is None else table
    base = table["base"]
    live, peak, parts = int(base["live"]), int(base["peak"]) + PEAK_MARGIN, ["base"]
    link = config.get("link") or {}
    names = ["link:lora"] if link.get("type") == "lora" else []
    names += sorted({f"sensor:{spec.get('type')}" for spec in config.get("sensors", [])})
    for name in names:
        add = table["adds"].get(name)
        if add is None:
            continue
        live += int(add["live"])
        peak += int(add["peak"])
        parts.append(name)
    drivers = table.get("lora_packages", {}).get(str(link.get("chip")))
    if link.get("type") == "lora" and isinstance(drivers, int):
        live += drivers
        peak += drivers
        parts.append(f"micropython-lib lora ({link.get('chip')})")
    return Need(live, peak, tuple(parts))


def room(found: dict[str, Any]) -> Room | None:
    """The board's heap from what the board reported (deploy.read_board), if it did."""
    if not isinstance(found.get("heap_total"), int):
        return None
    grow = found.get("heap_grow")
    return Room(int(found["heap_total"]), grow if isinstance(grow, int) else 0)


def _kib(n: int) -> str:
    return f"{n / 1024:.0f} KiB"


def verdict(board: Room, wanted: Need) -> tuple[bool, bool, str, str]:
    """(ok, warning only, detail, fix) for a board's heap and a configuration's need."""
    grows = f" (grows to {_kib(board.total)})" if board.grow else ""
    detail = (
        f"{_kib(board.now)} for Python{grows}; this configuration needs about "
        f"{_kib(wanted.live)}, {_kib(wanted.peak)} at its peak"
    )
    spare = board.total - wanted.peak
    fix = (
        "fewer sensor types or the serial link instead of LoRa, a board with PSRAM (e.g. "
        "ESP32-WROVER), or a firmware image with the node frozen in (docs/firmware/ram.md)"
    )
    if spare >= HEADROOM:
        return True, False, f"{detail}: {_kib(spare)} to spare", ""
    if spare >= 0:
        return False, True, f"{detail}: only {_kib(spare)} to spare", "it may run out; " + fix
    return False, False, f"{detail}: {_kib(-spare)} short", "the node will run out of heap; " + fix
