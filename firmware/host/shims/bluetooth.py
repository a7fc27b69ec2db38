"""MicroPython's `bluetooth` module for an emulated node: BLE() is the board's radio, a SimBLE
(firmware/host/sim/ble.py) that hears the scenario's crowd while a scan runs.

Scan results reach the handler given to BLE.irq() on the main thread, one event at a time, as
_IRQ_SCAN_RESULT (5) with (addr_type, addr, adv_type, rssi, adv_data), where addr and adv_data
are memoryviews into buffers reused for the next event (copy them), then _IRQ_SCAN_DONE (6).
Only scanning is modelled; advertising and connections are accepted and do nothing.
"""

from __future__ import annotations

from typing import Any

from firmware.host import board as _board

FLAG_READ = 0x0002
FLAG_WRITE_NO_RESPONSE = 0x0004
FLAG_WRITE = 0x0008
FLAG_NOTIFY = 0x0010
FLAG_INDICATE = 0x0020

ADDR_PUBLIC = 0
ADDR_RANDOM = 1


class UUID:
    def __init__(self, value: Any) -> None:
        self._value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UUID) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return f"UUID({self._value!r})"


class BLE:
    """The board's one BLE radio (BLE() always returns the same one, as on MicroPython)."""

    def __new__(cls) -> Any:
        return _board.current().radio()


__all__ = ["BLE", "FLAG_INDICATE", "FLAG_NOTIFY", "FLAG_READ", "FLAG_WRITE", "UUID"]
