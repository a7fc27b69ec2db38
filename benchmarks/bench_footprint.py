"""How much heap the node firmware takes on a board, against the targets for a stock ESP32
(about 112 KB of Python heap once grown): the footprint after boot at most 48 KB for a typical
node (BME280, battery, serial link) and 64 KB for the largest (every driver, BLE scanning, a
LoRa link), and at most 80 KB at the peak of a day's work. Measured on MicroPython's
WebAssembly port with a real garbage collector (firmware/host/heap), firmware deployed as .mpy
files as `edgeveil node deploy` does.

    .venv/bin/python benchmarks/bench_footprint.py

Prints the live heap of each module group, then per configuration: after boot, the most it
keeps in use, the peak (live heap plus one scheduler pass's garbage, an upper bound), each
against its target, met or not. For a LoRa node, micropython-lib's modem drivers come on top
(firmware/footprint.json, measured by scripts/footprint.py --micropython-lib).
Tests assert only the 80 KB peak (tests/test_firmware_footprint.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from firmware.host import heap
from gateway.node import footprint

KB = 1024
TARGETS = {"typical": 48 * KB, "largest": 64 * KB}
PEAK_TARGET = 80 * KB


def kib(n: int) -> str:
    return f"{n / KB:5.1f} KB"


def verdict(value: int, target: int) -> str:
    return f"{kib(value)}  (target {kib(target)}: {'met' if value <= target else 'NOT met'})"


def main() -> int:
    print("live heap per module group, in the order a node imports them:")
    for name, cost in heap.import_costs():
        print(f"  {kib(cost)}  {name}")
    drivers = footprint.load_table()["lora_packages"].get(heap.LARGEST["link"]["chip"], 0)
    for name, config in (("typical", heap.TYPICAL), ("largest", heap.LARGEST)):
        report = heap.measure(config, heap.cycle_steps())
        print(
            f"\n{name}: {', '.join(s['type'] for s in config['sensors'])}; {config['link']['type']}"
        )
        print(f"  after boot       {verdict(report.live('boot'), TARGETS[name])}")
        print(f"  most kept in use {kib(report.max_live)}")
        print(f"  peak             {verdict(report.peak, PEAK_TARGET)}")
        if config["link"]["type"] == "lora":
            print(
                f"  with micropython-lib's LoRa drivers as .mpy (+{kib(drivers).strip()}): "
                f"after boot {kib(report.live('boot') + drivers)}, "
                f"peak {kib(report.peak + drivers)}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
