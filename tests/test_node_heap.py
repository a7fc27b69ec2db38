"""What `edgeveil node doctor` and `deploy` say about a board's heap: the configuration's need
estimated from the measured footprint table (gateway/node/footprint.py), against the heap the
board reports. The table itself is checked against a fresh measurement in
tests/test_firmware_footprint.py."""

from __future__ import annotations

import json
from typing import Any

from firmware.host.heap import LARGEST, TYPICAL
from gateway.node import footprint
from gateway.node.deploy import heap_line
from gateway.node.doctor import run_checks

KB = 1024
STOCK_ESP32 = {"heap_total": 56 * KB, "heap_grow": 56 * KB}  # the esp32 port's heap, grown once


def _found(config: dict[str, Any] | None, **heap: int) -> dict[str, Any]:
    return {
        "release": "1.27.0",
        "machine": "Generic ESP32 module with ESP32",
        "flash_free": 1024 * KB,
        "flash_total": 2048 * KB,
        "aes": True,
        "app": True,
        "config_text": None if config is None else json.dumps(config),
        "config_error": None,
        "time": 0,
        "reset_cause": 1,
        **heap,
    }


def _heap(found: dict[str, Any]) -> str:
    return next(c.line() for c in run_checks(found, host_time=0) if c.name == "heap")


def test_need_adds_the_parts_of_a_configuration() -> None:
    table = footprint.load_table()
    typical = footprint.need(TYPICAL)
    assert typical.parts == ("base", "sensor:battery", "sensor:bme280")
    assert typical.live == table["base"]["live"] + sum(
        table["adds"][part]["live"] for part in typical.parts[1:]
    )
    largest = footprint.need(LARGEST)
    assert "link:lora" in largest.parts and "micropython-lib lora (sx1276)" in largest.parts
    assert largest.peak > typical.peak > typical.live


def test_a_stock_esp32_runs_the_typical_node_with_room_to_spare() -> None:
    line = _heap(_found(TYPICAL, **STOCK_ESP32))
    assert line.startswith("ok   heap: 56 KiB for Python (grows to 112 KiB); this configuration")
    assert "to spare" in line


def test_too_little_heap_fails_with_the_fix() -> None:
    line = _heap(_found(LARGEST, heap_total=64 * KB))  # an RP2040-like fixed heap, too small
    assert line.startswith("FAIL heap: 64 KiB for Python; this configuration needs about")
    assert "short -> the node will run out of heap; fewer sensor types" in line
    assert "PSRAM" in line and "frozen" in line


def test_little_headroom_is_a_warning_and_romfs_is_suggested_where_the_build_has_it() -> None:
    peak = footprint.need(TYPICAL).peak
    line = _heap(_found(TYPICAL, heap_total=peak + 4 * KB, romfs=True))
    assert line.startswith("warn heap:") and "only 4 KiB to spare" in line
    assert "mpremote romfs" in line


def test_without_a_valid_configuration_the_free_heap_is_judged_on_its_own() -> None:
    assert _heap(_found(None, heap_total=90 * KB, heap_free=80 * KB)) == "ok   heap: 80 KiB free"


def test_deploy_says_the_same_in_one_line() -> None:
    info = {"heap_total": 56 * KB, "heap_grow": 56 * KB}
    line = heap_line(info, json.dumps(TYPICAL).encode())
    assert line is not None and line.startswith("heap: 56 KiB for Python (grows to 112 KiB)")
    short = heap_line({"heap_total": 48 * KB}, json.dumps(LARGEST).encode())
    assert short is not None and short.startswith("WARNING: heap: 48 KiB for Python")
    assert heap_line({}, json.dumps(TYPICAL).encode()) is None  # an older answer: no line
