"""Hardware-in-the-loop bench: a real board when one is configured, the emulated board otherwise.

    EDGEVEIL_HIL_PORT=/dev/ttyUSB0 EDGEVEIL_HIL_BOARD=esp32 .venv/bin/pytest hil_tests
        a real board with MicroPython and a BME280 breakout (see
        docs/integrators/hil.md); EDGEVEIL_HIL_SENSOR overrides the sensor wiring
    .venv/bin/pytest hil_tests
        the emulated board (firmware/host/mpboard.py: real MicroPython on a pseudo-terminal)

The suite deploys the node once per run and then checks it step by step, as a technician on a
bench would: boot, frames verified by a gateway, the counter across a reset, retransmission
after a lost acknowledgement, the monitor.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from firmware.host.mpboard import EmulatedBoard

ROOT = Path(__file__).resolve().parent.parent
BOARDS = ("esp32", "rp2040")
# the BME280 breakout on the bench: I2C0 on each board's usual pins
DEFAULT_SENSOR = {"esp32": "bme280:i2c=0,scl=22,sda=21", "rp2040": "bme280:i2c=0,scl=5,sda=4"}


@dataclass
class Bench:
    port: str
    board: str
    sensor: str
    emulated: EmulatedBoard | None

    def power_cycle(self) -> None:
        """Power off and on. Emulated: the emulator process is killed (a power cut at whatever
        the board was doing) and started again on the same flash. Real: a hard reset."""
        if self.emulated is not None:
            self.emulated.kill()
            self.emulated.start()
            self.port = self.emulated.device
            return
        run_venv_tool(["mpremote", "connect", self.port, "reset"])


def run_venv_tool(args: list[str]) -> subprocess.CompletedProcess[str]:
    """A command of this environment's bin directory (mpremote)."""
    tool = Path(sys.executable).parent / args[0]
    return subprocess.run(  # noqa: S603 - our own tools
        [str(tool), *args[1:]], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture(scope="session")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    port = os.environ.get("EDGEVEIL_HIL_PORT")
    if port:
        board = os.environ.get("EDGEVEIL_HIL_BOARD", "")
        if board not in BOARDS:
            pytest.fail(f"EDGEVEIL_HIL_BOARD must be one of {', '.join(BOARDS)} with a real board")
        sensor = os.environ.get("EDGEVEIL_HIL_SENSOR", DEFAULT_SENSOR[board])
        yield Bench(port, board, sensor, None)
        return
    emulated = EmulatedBoard(tmp_path_factory.mktemp("board") / "flash").start()
    try:
        yield Bench(emulated.device, "esp32", DEFAULT_SENSOR["esp32"], emulated)
    finally:
        emulated.stop()
