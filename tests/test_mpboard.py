"""The emulated MicroPython board (firmware/host/mpboard.py): real MicroPython behind the REPL
protocol of shared/runtime/pyexec.c, so mpremote and the technician commands run unmodified."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial

from firmware.host.mpboard import RAW_BANNER, EmulatedBoard

from .waiting import until_sync

MPREMOTE = str(Path(sys.executable).parent / "mpremote")


class Repl:
    """The technician's end of the line, byte by byte."""

    def __init__(self, port: str) -> None:
        self.serial = serial.Serial(port, 115200, timeout=0.05)

    def read_until(self, ending: bytes, timeout: float = 15) -> bytes:
        data = bytearray()

        def ended() -> bool:
            data.extend(self.serial.read(1))  # waits up to the port's timeout for it
            return data.endswith(ending)

        until_sync(
            ended, f"{ending!r} from the board", timeout, lambda: bytes(data[-300:]), interval=0
        )
        return bytes(data)

    def raw(self) -> None:
        self.serial.write(b"\r\x03\x03\r\x01")
        self.read_until(RAW_BANNER + b">")

    def exec(self, code: str) -> tuple[bytes, bytes]:
        self.serial.write(code.encode() + b"\x04")
        assert self.serial.read(2) == b"OK"
        out = self.read_until(b"\x04")[:-1]
        err = self.read_until(b"\x04")[:-1]
        self.read_until(b">")
        return out, err

    def close(self) -> None:
        self.serial.close()


@pytest.fixture
def board(tmp_path: Path) -> Iterator[EmulatedBoard]:
    with EmulatedBoard(tmp_path / "flash") as board:
        yield board


@pytest.fixture
def repl(board: EmulatedBoard) -> Iterator[Repl]:
    repl = Repl(board.device)  # opening the port flushes what the board said before
    repl.serial.write(b"\r")
    repl.read_until(b">>> ")  # the friendly prompt
    # a banner that came after the open may bring a second prompt: read past an answer that
    # can only come after everything said before it (the echo reads 6*7, the answer 42)
    repl.serial.write(b"6*7\r")
    repl.read_until(b"42")
    repl.read_until(b">>> ")
    yield repl
    repl.close()


def mpremote(board: EmulatedBoard, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MPREMOTE, "connect", board.device, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_mpremote_copies_lists_and_hashes_files_unmodified(
    board: EmulatedBoard, tmp_path: Path
) -> None:
    payload = tmp_path / "data.bin"
    payload.write_bytes(bytes(range(256)) * 11)  # > one raw-paste window, every byte value
    result = mpremote(
        board,
        "mkdir",
        "lib",
        "+",
        "cp",
        str(payload),
        ":lib/data.bin",
        "+",
        "ls",
        "lib",
        "+",
        "sha256sum",
        ":lib/data.bin",
    )
    assert result.returncode == 0, result.stderr
    assert "2816 data.bin" in result.stdout  # sizes as a board's VFS reports them
    assert hashlib.sha256(payload.read_bytes()).hexdigest() in result.stdout
    assert (board.flash_dir / "lib" / "data.bin").read_bytes() == payload.read_bytes()


def test_raw_repl_returns_output_and_errors_apart(repl: Repl) -> None:
    repl.raw()
    out, err = repl.exec("print(6 * 7)")
    assert (out.strip(), err) == (b"42", b"")
    out, err = repl.exec("x = 1\nprint('before')\nraise ValueError('bad ' + str(x))")
    assert out.strip() == b"before"
    assert b"ValueError: bad 1" in err
    assert b"/rom/" not in err  # the emulator's own frames are not the program's
    out, _ = repl.exec("print(x)")  # globals persist between commands, as mpremote relies on
    assert out.strip() == b"1"


def test_friendly_repl_evaluates_lines(repl: Repl) -> None:
    repl.serial.write(b"1 + 2\r")
    assert b"3" in repl.read_until(b">>> ")


def test_soft_reboot_runs_boot_then_main_and_raw_mode_skips_main(
    board: EmulatedBoard, repl: Repl
) -> None:
    (board.flash_dir / "boot.py").write_text("open('log.txt', 'a').write('b')\n")
    (board.flash_dir / "main.py").write_text("open('log.txt', 'a').write('m')\n")
    repl.serial.write(b"\x04")  # Ctrl-D at the friendly prompt
    repl.read_until(b"MPY: soft reboot\r\n")
    repl.read_until(b">>> ")
    assert (board.flash_dir / "log.txt").read_text() == "bm"
    repl.raw()
    repl.serial.write(b"\x04")  # Ctrl-D in the raw REPL: what mpremote does first
    repl.read_until(b"soft reboot\r\n")
    repl.read_until(RAW_BANNER + b">")
    assert (board.flash_dir / "log.txt").read_text() == "bmb"


def test_ctrl_c_stops_a_sleeping_main_and_a_busy_loop(board: EmulatedBoard) -> None:
    (board.flash_dir / "main.py").write_text("import time\nwhile True:\n    time.sleep(1)\n")
    result = mpremote(board, "exec", "print('interrupted')")
    assert result.returncode == 0 and "interrupted" in result.stdout, result.stderr
    repl = Repl(board.device)
    try:
        repl.raw()
        repl.serial.write(b"print('busy')\nwhile True:\n    pass\n\x04")
        assert repl.serial.read(2) == b"OK"
        repl.read_until(b"busy")  # running: the loop comes next
        repl.serial.write(b"\x03")  # no sleep to reach: the interpreter is restarted
        repl.read_until(b"KeyboardInterrupt", timeout=10)
        repl.read_until(b">")
        out, _ = repl.exec("print('alive')")
        assert out.strip() == b"alive"
    finally:
        repl.close()


def test_reset_cause_watchdog_and_flash_across_power_cuts(board: EmulatedBoard) -> None:
    repl = Repl(board.device)
    try:
        repl.raw()
        out, _ = repl.exec("import machine\nprint(machine.reset_cause())")
        assert out.strip() == b"1"  # PWRON_RESET
        repl.exec("open('kept.txt', 'w').write('flash')\nmachine.WDT(timeout=300)")
        repl.read_until(b"watchdog reset", timeout=10)  # nobody feeds it
        repl.read_until(b">>> ")
        repl.raw()
        out, _ = repl.exec("import machine\nprint(machine.reset_cause())")
        assert out.strip() == b"3"  # WDT_RESET
    finally:
        repl.close()
    board.kill()  # a power cut, then the same flash
    board.start()
    result = mpremote(board, "exec", "print(open('kept.txt').read())")
    assert result.stdout.strip() == "flash", result.stderr


def test_a_build_without_cryptolib(tmp_path: Path) -> None:
    with EmulatedBoard(tmp_path / "flash", aes=False) as board:
        result = mpremote(board, "exec", "import cryptolib")
    assert result.returncode != 0
    assert "cryptolib" in result.stdout + result.stderr
