"""Serial port discovery: what is plugged in, and which device a configured port is right now.

A port is configured either by a pyserial URL (a device path such as
/dev/serial/by-id/usb-Silicon_Labs_CP2102_...-if00-port0 is one; so are socket://host:port,
hwgrep://REGEXP, rfc2217://host:port, loop://) or by USB identity (vid, pid and, when several
identical adapters are plugged in, the serial number). A USB adapter that is knocked loose and
plugged back in often comes back under another name (ttyUSB0 -> ttyUSB1), so a USB match is
resolved again before every open.

Everything here reads `serial.tools.list_ports.comports()` at call time (through the module
attribute, so tests can replace it) and holds no state.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import serial.tools.list_ports

from .config import SerialPortConfig, UsbMatch
from .errors import ConfigError

__all__ = [
    "AmbiguousPortError",
    "PortInfo",
    "board_guess",
    "describe_absent",
    "find_usb",
    "is_absent",
    "list_ports",
    "resolve",
]

# Known USB ids of the serial bridges and native-USB chips that sensor nodes use. A guess for
# people reading `list_ports()`: the same chip sits on many different boards.
_BOARDS: dict[tuple[int, int], str] = {
    (0x303A, 0x1001): "Espressif USB-Serial/JTAG (ESP32-C3/C6/H2/S3 native USB)",
    (0x303A, 0x4001): "Espressif native USB, TinyUSB CDC (ESP32-S2/S3, e.g. MicroPython)",
    (0x10C4, 0xEA60): "Silicon Labs CP210x USB-UART (ESP32/ESP8266 dev boards)",
    (0x1A86, 0x7523): "WCH CH340 USB-UART (ESP32/ESP8266 dev boards)",
    (0x1A86, 0x55D4): "WCH CH9102 USB-UART (ESP32 dev boards)",
    (0x1A86, 0x55D3): "WCH CH343 USB-UART",
    (0x0403, 0x6001): "FTDI FT232R USB-UART",
    (0x0403, 0x6010): "FTDI FT2232 USB-UART",
    (0x0403, 0x6014): "FTDI FT232H USB-UART",
    (0x0403, 0x6015): "FTDI FT-X (FT230X/FT231X) USB-UART",
    (0x067B, 0x2303): "Prolific PL2303 USB-UART",
    (0x2E8A, 0x0005): "Raspberry Pi RP2040/RP2350 running MicroPython",
    (0xF055, 0x9800): "MicroPython pyboard (STM32)",
}
_VENDORS: dict[int, str] = {
    0x303A: "Espressif native USB (ESP32-S2/S3/C3/C6)",
    0x10C4: "Silicon Labs USB-UART",
    0x1A86: "WCH USB-UART",
    0x0403: "FTDI USB-UART",
    0x2E8A: "Raspberry Pi RP2040/RP2350",
    0xF055: "MicroPython board",
    0x239A: "Adafruit board",
}


def board_guess(vid: int | None, pid: int | None) -> str | None:
    """A human guess of the chip or board behind a USB id, or None when unknown."""
    if vid is None:
        return None
    if pid is not None and (vid, pid) in _BOARDS:
        return _BOARDS[(vid, pid)]
    return _VENDORS.get(vid)


@dataclass(frozen=True)
class PortInfo:
    """One serial port the system has now. The USB fields are None for non-USB ports."""

    device: str
    description: str
    vid: int | None = None
    pid: int | None = None
    serial_number: str | None = None
    manufacturer: str | None = None
    product: str | None = None
    location: str | None = None  # USB bus path, e.g. "1-1.3:1.0": stable per physical socket
    board: str | None = None

    @property
    def usb_id(self) -> str | None:
        """The USB id as text ("10c4:ea60"), or None for a port that is not on USB."""
        if self.vid is None or self.pid is None:
            return None
        return f"{self.vid:04x}:{self.pid:04x}"


def _natural(text: str) -> list[str | int]:
    """Sort key that puts ttyUSB2 before ttyUSB10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def list_ports() -> list[PortInfo]:
    """The serial ports present now, sorted by device name."""
    ports = []
    for info in serial.tools.list_ports.comports():
        vid: int | None = info.vid
        pid: int | None = info.pid
        ports.append(
            PortInfo(
                device=info.device,
                description=info.description,
                vid=vid,
                pid=pid,
                serial_number=info.serial_number,
                manufacturer=info.manufacturer,
                product=info.product,
                location=info.location,
                board=board_guess(vid, pid),
            )
        )
    ports.sort(key=lambda p: _natural(p.device))
    return ports


def find_usb(match: UsbMatch, ports: list[PortInfo] | None = None) -> list[PortInfo]:
    """The ports with match's vid and pid (and serial number, compared ignoring case, when
    given). `ports` defaults to list_ports()."""
    if ports is None:
        ports = list_ports()
    wanted = None if match.serial_number is None else match.serial_number.casefold()
    return [
        p
        for p in ports
        if p.vid == match.vid
        and p.pid == match.pid
        and (wanted is None or (p.serial_number or "").casefold() == wanted)
    ]


def _usb_text(match: UsbMatch) -> str:
    text = f"{match.vid:04x}:{match.pid:04x}"
    if match.serial_number is not None:
        text += f" serial_number {match.serial_number!r}"
    return text


class AmbiguousPortError(ConfigError):
    """A USB match fits more than one plugged-in port, so the gateway cannot tell which node
    is which. A configuration problem: the message says what to add."""

    def __init__(self, name: str, match: UsbMatch, ports: list[PortInfo]) -> None:
        found = ", ".join(
            p.device + (f" (serial_number {p.serial_number!r})" if p.serial_number else "")
            for p in ports
        )
        numbers = {p.serial_number for p in ports}
        if match.serial_number is None and None not in numbers and len(numbers) == len(ports):
            advice = 'add serial_number = "..." (one of those above) to pick one'
        else:
            advice = (
                "they cannot be told apart by USB serial number (no or equal numbers, or one "
                "device with several interfaces): name the port by url instead, e.g. its "
                "/dev/serial/by-path/... or /dev/serial/by-id/...-ifNN-... path"
            )
        super().__init__(
            f"serial {name!r} usb",
            f"{len(ports)} ports match USB {_usb_text(match)}: {found}; {advice}",
        )
        self.ports = ports


def resolve(port: SerialPortConfig) -> str | None:
    """What to open for `port` now: a url port's URL as it is (a device path or any pyserial
    URL), or the device of the one USB port that matches; None when no USB port matches.

    Raises AmbiguousPortError when several USB ports match, ConfigError when the port has
    neither url nor usb."""
    if port.url is not None:
        return port.url
    if port.usb is None:
        raise ConfigError(f"serial {port.name!r}", "has neither url nor usb")
    found = find_usb(port.usb)
    if not found:
        return None
    if len(found) > 1:
        raise AmbiguousPortError(port.name, port.usb, found)
    return found[0].device


def describe_absent(port: SerialPortConfig) -> str:
    """One line saying what `port` waits for, for logs and status output."""
    if port.usb is not None:
        return f"no USB port matches {_usb_text(port.usb)}"
    return f"{port.url} is not present"


def is_absent(port: SerialPortConfig) -> bool:
    """Whether `port`'s device is known not to be there now: its device path does not exist,
    no USB port matches, or (hwgrep://) no port matches the regexp. Cheap enough to ask every
    fraction of a second, and never opens anything. False for URLs with nothing local to look
    for (socket://, rfc2217://, loop://): only opening them tells."""
    if port.usb is not None:
        return not find_usb(port.usb)
    url = port.url or ""
    if url.startswith("/"):
        return not os.path.exists(url)  # follows symlinks: a by-id link to a gone tty is absent
    if url.lower().startswith("hwgrep://"):
        regexp = url[len("hwgrep://") :].split("&")[0]  # the options after & (as pyserial does)
        return next(serial.tools.list_ports.grep(regexp), None) is None
    return False
