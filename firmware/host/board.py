"""The emulated board: the hardware behind the host shims (machine, bluetooth, micropython).

One Board per emulated node process, built from the node's configuration (edgeveil.json, the
format of firmware/edgeveil_node/config.py) and a scenario (firmware/host/scenario.py):

- the link: a pseudo-terminal. The board keeps the master side; whatever opens the slave
  device path (the gateway, with pyserial) talks to the node as to a USB-serial board. With
  link port "uart" the pty is that UART; with "console" it is the REPL line, and the node's
  sys.stdin/sys.stdout are the pty;
- I2C buses with the simulated chips the configuration lists (firmware/host/sim), a PMS5003
  byte stream on its UART, the PIR and battery on pins, a BLE radio that hears the scenario's
  crowd;
- the clock (MicroPython's ticks, with the scenario's drift), the scheduler that runs IRQ
  handlers and micropython.schedule() callbacks on the main thread between bytecodes (as
  MicroPython does), and the watchdog.

Reboots and power cuts end the process: machine.reset(), a watchdog timeout or deepsleep()
exit with the status EXIT_STATUS[cause]; the runner (fleet.py) starts the node again with that
reset cause. Diagnostics go to stderr, never to the pty.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import select
import signal
import struct
import sys
import termios
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .fleet import open_pty  # one pty recipe for a lone node and for the fleet runner
from .scenario import Conditions, Device, LineFaults, Scenario, rng_for

# MicroPython's machine.reset_cause() values (the ESP32 numbering; protocol/messages.py
# RESET_CAUSES uses the same indexes).
PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5
RESET_CAUSE_NAMES = {
    PWRON_RESET: "power_on",
    HARD_RESET: "hard",
    WDT_RESET: "watchdog",
    DEEPSLEEP_RESET: "deep_sleep",
    SOFT_RESET: "soft",
}
# Exit status of a node process that reset itself; the runner restarts it with that cause.
EXIT_STATUS = {HARD_RESET: 72, WDT_RESET: 73, DEEPSLEEP_RESET: 74, SOFT_RESET: 75}
CAUSE_OF_EXIT = {status: cause for cause, status in EXIT_STATUS.items()}

# time.ticks_*: MicroPython's small-int tick counters (extmod/modtime.c)
TICKS_PERIOD = 1 << 30
TICKS_MAX = TICKS_PERIOD - 1
TICKS_HALFPERIOD = TICKS_PERIOD // 2

CONFIG_FILE = "edgeveil.json"
_host_time = time.time  # before install_time() replaces time.time in the node process
UART_RXBUF = 256  # ESP32 and RP2040 default UART receive buffer


def log(*parts: object) -> None:
    """A diagnostic of the emulator itself: stderr, never the pty."""
    print("[emulator]", *parts, file=sys.__stderr__, flush=True)


# ---------------------------------------------------------------------------------------------
# Clock


def ticks_diff(ticks1: int, ticks2: int) -> int:
    """Signed distance ticks1 - ticks2 on the wrapping tick circle (MicroPython semantics)."""
    return ((ticks1 - ticks2 + TICKS_HALFPERIOD) & TICKS_MAX) - TICKS_HALFPERIOD


def ticks_add(ticks: int, delta: int) -> int:
    """ticks + delta on the tick circle; like MicroPython, delta must stay within what
    ticks_diff can represent."""
    if not -TICKS_HALFPERIOD < delta < TICKS_HALFPERIOD:
        raise OverflowError("ticks interval overflow")
    return (ticks + delta) & TICKS_MAX


class Clock:
    """The board's crystal: ticks that start at start_ms at boot, wrap like MicroPython's and
    run `drift` times as fast as real time. Real time is the host's `monotonic` and `sleep`
    (a test may give its own)."""

    def __init__(
        self,
        drift: float = 1.0,
        start_ms: int = 0,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if drift <= 0:
            raise ValueError("drift must be positive")
        self.drift = drift
        self._monotonic = monotonic
        self._sleep = sleep
        self._t0 = monotonic()
        self._start_us = start_ms * 1000

    def elapsed_us(self) -> int:
        return self._start_us + int((self._monotonic() - self._t0) * 1e6 * self.drift)

    def ticks_ms(self) -> int:
        return (self.elapsed_us() // 1000) & TICKS_MAX

    def ticks_us(self) -> int:
        return self.elapsed_us() & TICKS_MAX

    def ticks_cpu(self) -> int:
        return self.elapsed_us() & TICKS_MAX

    def real_seconds(self, board_ms: float) -> float:
        """Real seconds that pass while this board's clock counts board_ms."""
        return max(0.0, board_ms / 1000.0 / self.drift)

    def sleep_ms(self, ms: int) -> None:
        if ms > 0:
            self._sleep(self.real_seconds(ms))

    def sleep_us(self, us: int) -> None:
        if us > 0:
            self._sleep(self.real_seconds(us / 1000))

    def install(self) -> None:
        """Add MicroPython's time functions to CPython's time module."""
        t: Any = time
        t.ticks_ms = self.ticks_ms
        t.ticks_us = self.ticks_us
        t.ticks_cpu = self.ticks_cpu
        t.ticks_diff = ticks_diff
        t.ticks_add = ticks_add
        t.sleep_ms = self.sleep_ms
        t.sleep_us = self.sleep_us


def install_time(board: Board) -> None:
    """MicroPython's time functions in CPython's time module: ticks_* and sleep_* on the
    board's clock, and time.time() as MicroPython has it: whole seconds from the board's RTC."""
    board.clock.install()
    t: Any = time
    t.time = lambda: int(board.rtc_time())


def install_gc() -> None:
    """gc.mem_free/mem_alloc/threshold, which CPython's gc lacks: plausible ESP32 numbers."""
    import gc  # noqa: PLC0415

    g: Any = gc
    total = 111_168  # a typical ESP32 MicroPython heap
    g.mem_alloc = lambda: 20_000 + (os.getpid() % 997) * 8
    g.mem_free = lambda: total - g.mem_alloc()
    state = {"threshold": -1}

    def threshold(amount: int | None = None) -> int | None:
        if amount is None:
            return state["threshold"]
        state["threshold"] = amount
        return None

    g.threshold = threshold


def _is_emulator_frame(filename: str) -> bool:
    return filename.startswith(str(Path(__file__).parent)) or "runpy" in filename


def install_sys_os() -> None:
    """MicroPython's sys.print_exception and os.ilistdir/os.dupterm."""
    s: Any = sys
    if not hasattr(sys, "print_exception"):

        def print_exception(exc: BaseException, file: Any = None) -> None:
            # the firmware's frames only, as MicroPython shows them (not the emulator's)
            tb = exc.__traceback__
            while tb is not None and _is_emulator_frame(tb.tb_frame.f_code.co_filename):
                tb = tb.tb_next
            traceback.print_exception(type(exc), exc, tb, file=file or sys.stdout)

        s.print_exception = print_exception
    o: Any = os
    if not hasattr(os, "ilistdir"):

        def ilistdir(path: str = ".") -> Any:
            for entry in os.scandir(path):
                kind = 0x4000 if entry.is_dir() else 0x8000
                yield (entry.name, kind, entry.inode())

        o.ilistdir = ilistdir
    if not hasattr(os, "dupterm"):
        o.dupterm = lambda stream=None, index=0: None


# ---------------------------------------------------------------------------------------------
# Scheduler: IRQ handlers and micropython.schedule() callbacks run on the main thread


class Scheduler:
    """Runs callbacks on the main thread between bytecodes, like MicroPython's scheduler.

    Other threads (the world, the radio) queue a callback and send SIGUSR1 to the main thread;
    CPython runs the signal handler there at the next bytecode boundary, even while the
    firmware sleeps (time.sleep resumes afterwards, PEP 475)."""

    USER_DEPTH = 4  # MICROPY_SCHEDULER_DEPTH: micropython.schedule() raises beyond it

    def __init__(self) -> None:
        self._queue: collections.deque[tuple[Callable[[Any], Any], Any, bool]] = collections.deque()
        self._lock = threading.Lock()
        self._user = 0
        self._disabled = 0
        self._running = False
        self._main = threading.main_thread().ident
        self._installed = False
        self._previous: Any = None
        self.errors = 0

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGUSR1, self._on_signal)
            self._installed = True

    def uninstall(self) -> None:
        if self._installed:
            signal.signal(signal.SIGUSR1, self._previous)
            self._installed = False

    def schedule(self, func: Callable[[Any], Any], arg: Any, user: bool = False) -> None:
        with self._lock:
            if user:
                if self._user >= self.USER_DEPTH:
                    raise RuntimeError("schedule queue full")
                self._user += 1
            self._queue.append((func, arg, user))
        self._wake()

    def _wake(self) -> None:
        if self._installed and self._main is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pthread_kill(self._main, signal.SIGUSR1)
        elif threading.current_thread() is threading.main_thread():
            self.run_pending()

    def _on_signal(self, _signum: int, _frame: Any) -> None:
        self.run_pending()

    def run_pending(self) -> None:
        """Run queued callbacks now (main thread), unless IRQs are disabled or one is
        already running (callbacks never nest)."""
        if self._running or self._disabled:
            return
        self._running = True
        try:
            while True:
                with self._lock:
                    if not self._queue or self._disabled:
                        return
                    func, arg, user = self._queue.popleft()
                    if user:
                        self._user -= 1
                try:
                    func(arg)
                except Exception as exc:  # MicroPython prints it and goes on
                    self.errors += 1
                    print("Unhandled exception in IRQ callback handler", file=sys.stdout)
                    sys_print = getattr(sys, "print_exception", None)
                    if sys_print is not None:
                        sys_print(exc)
        finally:
            self._running = False

    def disable(self) -> int:
        self._disabled += 1
        return self._disabled - 1

    def enable(self, state: int) -> None:
        self._disabled = max(0, state)
        if not self._disabled and self._queue:
            self._wake()


# ---------------------------------------------------------------------------------------------
# The link: a pseudo-terminal


def _pending(fd: int) -> int:
    buf = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    return int(struct.unpack("i", buf)[0])


class Link:
    """The board's end of the line: writes go to the pty master (through the line faults),
    a reader thread moves what arrives into a receive buffer of `rxbuf` bytes (a pipe, so
    select/poll work on it); bytes beyond it are lost, as in a UART that nobody reads."""

    def __init__(
        self,
        master: int,
        slave: int,
        faults: LineFaults | None = None,
        rxbuf: int = UART_RXBUF,
        console: bool = False,
    ) -> None:
        self.master = master
        self.slave = slave  # kept open: reading the master never fails while nobody listens
        self.device = os.ttyname(slave)
        self.faults = faults
        self.rxbuf = rxbuf
        self.console = console
        self.interrupt_char = 3 if console else -1  # micropython.kbd_intr
        self.on_interrupt: Callable[[], None] | None = None
        self.written = 0
        self.lost_tx = 0  # written while the gateway side was full (nobody reading)
        self.lost_rx = 0  # received beyond the receive buffer
        self.asleep = False
        self._tx_lock = threading.Lock()
        self._rx_read, self._rx_write = os.pipe()
        os.set_blocking(self._rx_read, False)
        os.set_blocking(self.master, False)
        self._stop_r, self._stop_w = os.pipe()
        self._drain()
        self._thread = threading.Thread(target=self._reader, name="link-rx", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        """A board's UART is empty at boot: drop what waited on the line while it was off."""
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self.master, 4096):
                pass

    @property
    def rx_fd(self) -> int:
        return self._rx_read

    # -- transmit ----------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> int:
        data = bytes(data)
        if self.asleep:
            return len(data)
        pieces = self.faults.on_write(data) if self.faults is not None else [data]
        with self._tx_lock:
            for piece in pieces:
                self._put(piece)
        self.written += len(data)
        return len(data)

    def noise(self) -> None:
        """Garbage on an idle line (the world thread calls this now and then)."""
        if self.faults is not None and self.faults.faults.garbage:
            with self._tx_lock:
                self._put(self.faults.garbage_bytes())

    def _put(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.master, view)
            except BlockingIOError:
                # nobody reads the other end and its buffer is full: the bytes leave the
                # UART anyway and are lost, as on a real line
                self.lost_tx += len(view)
                return
            except OSError as exc:
                if exc.errno == errno.EIO:
                    self.lost_tx += len(view)
                    return
                raise
            view = view[n:]

    # -- receive -----------------------------------------------------------------------

    def _reader(self) -> None:
        while True:
            try:
                ready, _, _ = select.select([self.master, self._stop_r], [], [])
            except (OSError, ValueError):
                return
            if self._stop_r in ready:
                return
            try:
                data = os.read(self.master, 4096)
            except BlockingIOError:
                continue
            except OSError:
                time.sleep(0.05)
                continue
            if not data or self.asleep:
                continue
            if self.faults is not None:
                data = self.faults.on_receive(data)
            if self.interrupt_char >= 0 and self.interrupt_char in data:
                data = data.replace(bytes([self.interrupt_char]), b"")
                if self.on_interrupt is not None:
                    self.on_interrupt()
            room = self.rxbuf - _pending(self._rx_read)
            if len(data) > room:
                self.lost_rx += len(data) - max(room, 0)
                data = data[: max(room, 0)]
            if data:
                os.write(self._rx_write, data)

    def any(self) -> int:
        return _pending(self._rx_read)

    def read(self, n: int = -1) -> bytes | None:
        """Up to n bytes (all waiting when n < 0), or None when nothing waits."""
        available = self.any()
        if not available:
            return None
        if n < 0 or n > available:
            n = available
        try:
            return os.read(self._rx_read, n) or None
        except BlockingIOError:
            return None

    def wait_readable(self, timeout_ms: int) -> bool:
        ready, _, _ = select.select([self._rx_read], [], [], max(0, timeout_ms) / 1000)
        return bool(ready)

    def close(self, close_pty: bool = False) -> None:
        """Stop the reader thread and free the receive buffer (and the pty if asked)."""
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b"x")
        self._thread.join(timeout=1)
        fds = [self._rx_read, self._rx_write, self._stop_r, self._stop_w]
        if close_pty:
            fds += [self.master, self.slave]
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)


class PtyBinaryStream:
    """sys.stdin.buffer / sys.stdout.buffer of a board whose console is the pty: unbuffered
    (read(1) reads one byte, so poll() on it tells the truth), every write fully sent."""

    def __init__(self, link: Link, readable: bool) -> None:
        self._link = link
        self._readable = readable

    def fileno(self) -> int:
        return self._link.rx_fd if self._readable else self._link.master

    def readable(self) -> bool:
        return self._readable

    def writable(self) -> bool:
        return not self._readable

    def isatty(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        # blocking, like MicroPython's stdin
        while True:
            data = self._link.read(n)
            if data:
                return data
            self._link.wait_readable(1000)

    def readinto(self, buf: Any) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def write(self, data: Any) -> int:
        return self._link.write(bytes(data))

    def flush(self) -> None:
        pass


class PtyTextStream:
    """sys.stdin / sys.stdout on the pty console: text, "\\n" sent as "\\r\\n" as
    MicroPython's REPL does."""

    def __init__(self, link: Link, readable: bool) -> None:
        self.buffer = PtyBinaryStream(link, readable)
        self.encoding = "utf-8"
        self.errors = "replace"

    def fileno(self) -> int:
        return self.buffer.fileno()

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.buffer.write(text.replace("\n", "\r\n").encode("utf-8", "replace"))
        return len(text)

    def flush(self) -> None:
        pass

    def read(self, n: int = -1) -> str:
        return self.buffer.read(n).decode("utf-8", "replace")

    def readline(self) -> str:
        out = bytearray()
        while not out.endswith(b"\n") and not out.endswith(b"\r"):
            out += self.buffer.read(1)
        return out.decode("utf-8", "replace").replace("\r", "\n")


# ---------------------------------------------------------------------------------------------
# The simulated parts (firmware/host/sim) wired to the board's clock and the scenario


class SimClockAdapter:
    """The sims' clock (firmware/host/sim/clock.py has the same shape) on the board's time:
    `now_ms` moves with the board's clock, so a chip answers only after its conversion time
    has really passed."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    @property
    def now_ms(self) -> int:
        return self._clock.elapsed_us() // 1000

    def ticks_ms(self) -> int:
        return self.now_ms

    def sleep_ms(self, ms: int) -> None:
        self._clock.sleep_ms(ms)

    def advance(self, ms: int) -> None:
        pass  # board time passes by itself


# Where each quantity of the scenario's Conditions goes on a chip model (attributes the sims
# share), and small per-part offsets: two sensors on one board never agree exactly (the BME280
# warms itself a little).
_CHIP_OFFSETS = {
    "bme280": {"temperature_c": 0.3, "humidity_rh": -1.5},
    "scd4x": {"temperature_c": 0.6},
}


def _chip_values(kind: str, c: Conditions) -> dict[str, float]:
    values = {
        "temperature_c": c.temperature_c,
        "humidity_rh": c.humidity_pct,
        "pressure_pa": c.pressure_pa,
        "co2_ppm": c.co2_ppm,
    }
    for name, delta in _CHIP_OFFSETS.get(kind, {}).items():
        values[name] += delta
    return values


class I2CBus:
    """One I2C bus of the board: a SimI2C with the configured chips. Before each transfer the
    chips take the scenario's current conditions (at most every 100 ms)."""

    def __init__(self, board: Board, bus_id: int, scl: int | None, sda: int | None) -> None:
        from .sim.i2c import SimI2C  # noqa: PLC0415

        self.board = board
        self.id = bus_id
        self.scl = scl
        self.sda = sda
        self.sim = SimI2C(SimClockAdapter(board.clock))
        self.kinds: dict[int, str] = {}  # address -> sensor type
        self._refreshed = -1.0

    def attach(self, address: int, kind: str, chip: Any) -> None:
        self.sim.attach(address, chip)
        self.kinds[address] = kind

    def wired_to(self, scl: int | None, sda: int | None) -> bool:
        return (scl is None or scl == self.scl) and (sda is None or sda == self.sda)

    def refresh(self) -> None:
        now = time.monotonic()
        if now - self._refreshed < 0.1:
            return
        self._refreshed = now
        conditions = self.board.conditions()
        for address, chip in self.sim.devices.items():
            for name, value in _chip_values(self.kinds.get(address, ""), conditions).items():
                if hasattr(chip, name):
                    setattr(chip, name, value)

    def __getattr__(self, name: str) -> Any:
        # scan, readfrom_mem_into, writeto, ...: the machine.I2C methods of SimI2C
        method = getattr(self.sim, name)
        if not callable(method):
            return method

        def transfer(*args: Any, **kwargs: Any) -> Any:
            self.refresh()
            return method(*args, **kwargs)

        return transfer


class PinLine:
    """One GPIO: a SimPin (firmware/host/sim/pins.py) driven by the firmware when it is an
    output and by the world (the PIR's output) when it is an input. IRQ handlers run on the
    main thread through the scheduler, as MicroPython runs soft interrupt handlers."""

    RISING = 1  # machine.Pin.IRQ_RISING (ESP32)
    FALLING = 2  # machine.Pin.IRQ_FALLING

    def __init__(self, board: Board, number: int) -> None:
        from .sim.pins import SimPin  # noqa: PLC0415

        self.board = board
        self.number = number
        self.sim = SimPin()
        self.output = False
        self.pull: int | None = None
        self.trigger = 0
        self.handler: Callable[[Any], Any] | None = None
        self.irq_arg: Any = None

    @property
    def edges(self) -> int:
        return int(self.sim.edges)

    def value(self) -> int:
        return int(self.sim.value())

    def set_output(self, level: int) -> None:
        self.sim.value(level)

    def drive(self, level: int) -> None:
        """The world sets the level of this input (edges raise the IRQ)."""
        if not self.output and self.sim.value() != level:
            self.sim.value(level)

    def set_irq(self, handler: Callable[[Any], Any] | None, trigger: int, arg: Any) -> None:
        self.handler = handler
        self.trigger = trigger
        self.irq_arg = arg
        if handler is None:
            self.sim.irq(None)
            return
        sim_trigger = (self.sim.IRQ_RISING if trigger & self.RISING else 0) | (
            self.sim.IRQ_FALLING if trigger & self.FALLING else 0
        )
        scheduler = self.board.scheduler
        self.sim.irq(lambda _p: scheduler.schedule(handler, arg), sim_trigger)


# machine.ADC input ranges of the ESP32 per attenuation (MicroPython quickref, "ADC"): a
# voltage above the range reads as its top. A battery divider needs ATTN_11DB.
ADC_RANGE_UV = {0: 950_000, 1: 1_250_000, 2: 1_750_000, 3: 2_450_000}


class AdcInput:
    """An ADC pin: a SimADC whose voltage the board sets from the scenario before each read."""

    def __init__(self, source: Callable[[], float] | None) -> None:
        from .sim.pins import SimADC  # noqa: PLC0415

        self.sim = SimADC(0)
        self.source = source  # millivolts at the pin; None: a floating pin

    def read_uv(self, atten: int) -> int:
        self.sim.millivolts = self.source() if self.source is not None else 142.0
        uv = int(self.sim.read_uv())
        return max(0, min(uv, ADC_RANGE_UV.get(atten, ADC_RANGE_UV[3])))

    def read_u16(self, atten: int) -> int:
        top = ADC_RANGE_UV.get(atten, ADC_RANGE_UV[3])
        return min(65535, self.read_uv(atten) * 65535 // top)


class UartPort:
    """A UART with nothing wired to it: reads nothing, writes go nowhere."""

    def __init__(self) -> None:
        self.rxbuf = UART_RXBUF
        self.baudrate = 115200

    def any(self) -> int:
        return 0

    def read(self, n: int | None = None) -> bytes | None:
        return None

    def write(self, data: bytes) -> int:
        return len(data)

    def fileno(self) -> int:
        raise OSError(errno.EBADF, "nothing is wired to this UART")


class LinkUart(UartPort):
    """The link UART: the pseudo-terminal."""

    def __init__(self, link: Link) -> None:
        super().__init__()
        self.link = link

    @property  # type: ignore[override]
    def rxbuf(self) -> int:
        return self.link.rxbuf

    @rxbuf.setter
    def rxbuf(self, value: int) -> None:
        if hasattr(self, "link"):
            self.link.rxbuf = value

    def any(self) -> int:
        return self.link.any()

    def read(self, n: int | None = None) -> bytes | None:
        return self.link.read(-1 if n is None else n)

    def write(self, data: bytes) -> int:
        return self.link.write(data)

    def fileno(self) -> int:
        return self.link.rx_fd


class PmsUart(UartPort):
    """The UART of a PMS5003: the SimPMS5003 stream, with the scenario's particulates. At a
    baud rate other than 9600 the bytes arrive mangled, as on a real line."""

    BAUDRATE = 9600

    def __init__(self, board: Board) -> None:
        from .sim.pms5003 import SimPMS5003  # noqa: PLC0415

        super().__init__()
        self.board = board
        self.sim = SimPMS5003(SimClockAdapter(board.clock))
        self._refreshed = -1.0

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._refreshed < 0.2:
            return
        self._refreshed = now
        c = self.board.conditions()
        self.sim.pm1 = round(c.pm1_ugm3)
        self.sim.pm2_5 = round(c.pm25_ugm3)
        self.sim.pm10 = round(c.pm10_ugm3)
        self.sim.rxbuf = self.rxbuf

    def any(self) -> int:
        self._refresh()
        return int(self.sim.any())

    def read(self, n: int | None = None) -> bytes | None:
        self._refresh()
        data: bytes | None = self.sim.read(n)
        if data and self.baudrate != self.BAUDRATE:
            data = bytes((b * 7 + 0x55) & 0xFF for b in data)  # framing errors
        return data

    def write(self, data: bytes) -> int:
        return int(self.sim.write(data))


def _crowd_ble_class() -> type:
    from .sim.ble import SimBLE  # noqa: PLC0415

    class CrowdBLE(SimBLE):  # type: ignore[misc, valid-type]
        """bluetooth.BLE's radio: a SimBLE (firmware/host/sim/ble.py: its event delivery,
        its reused memoryview buffers) fed over time by the scenario's crowd. A scan lasts
        its real duration; the world thread queues what the radio hears in each slice and
        the events reach the handler on the main thread, one at a time."""

        def __init__(self, board: Board) -> None:
            super().__init__((), deliver="tick")
            self.board = board
            self.scan_until: float | None = None
            self.duty = 1.0
            self._next_slice = 0.0
            self.heard = 0

        def gap_scan(
            self,
            duration_ms: int | None,
            interval_us: int = 1280000,
            window_us: int = 11250,
            active: bool = False,
        ) -> None:
            if not self._active:
                raise OSError(1)  # EPERM, as MicroPython when the stack is not active
            if duration_ms is None:
                if self.scan_until is not None:
                    self.scan_until = None
                    self._queue_event(None)
                return
            self.scans.append((duration_ms, interval_us, window_us, active))
            now = time.monotonic()
            forever = 1e9
            self.scan_until = now + (
                self.board.clock.real_seconds(duration_ms) if duration_ms else forever
            )
            self.duty = max(0.0, min(1.0, window_us / max(1, interval_us)))
            self._next_slice = now

        def config(self, *names: str, **settings: Any) -> Any:
            if names == ("mac",):
                return (0, bytes(self.board.unique_id))
            if names:
                raise ValueError("unknown config param")
            return None

        def gap_advertise(self, *args: Any, **kwargs: Any) -> None:
            pass  # the node only scans

        def _queue_event(self, item: Any) -> None:
            self._queue.append(item)
            self.board.scheduler.schedule(lambda _arg: self.tick(), None)

        def world_tick(self, now: float) -> None:
            if self.scan_until is None:
                return
            if now >= self.scan_until:
                self.scan_until = None
                self._queue_event(None)  # _IRQ_SCAN_DONE
                return
            if now < self._next_slice:
                return
            self._next_slice = now + 0.25  # phones advertise every 100..1000 ms
            rng = self.board.world_rng
            for device in self.board.devices():
                # a scan window shorter than the interval misses some advertisements
                if self.duty >= 1.0 or rng.random() < min(1.0, self.duty * 3):
                    self.heard += 1
                    self._queue_event(
                        (device.address, device.addr_type, device.rssi, device.adv_data)
                    )

    return CrowdBLE


# ---------------------------------------------------------------------------------------------
# The board


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _config_spec(data: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The link and sensors of a configuration, with the firmware's defaults filled in; an
    invalid configuration gives a board with just its USB console (the firmware will say
    what is wrong on it)."""
    from firmware.edgeveil_node.config import Config, ConfigError  # noqa: PLC0415

    try:
        cfg = Config(data)
    except ConfigError:
        return {"type": "serial", "port": "console"}, []
    return dict(cfg.link), [dict(s) for s in cfg.sensors]


_I2C_CHIPS = {
    "bme280": ("bme280", "SimBME280"),
    "sht4x": ("sht4x", "SimSHT4x"),
    "scd4x": ("scd4x", "SimSCD4x"),
}


class Board:
    """The hardware of one emulated node."""

    def __init__(
        self,
        config: dict[str, Any] | str | Path = CONFIG_FILE,
        scenario: Scenario | None = None,
        *,
        clock: Clock | None = None,
        pty: tuple[int, int] | None = None,
        world_start: float | None = None,
        boot: int = 0,
        reset_cause: int = PWRON_RESET,
        unique_id: bytes | None = None,
    ) -> None:
        if not isinstance(config, dict):
            config = _read_config(Path(config))
        self.config = config
        self.link_spec, self.sensor_specs = _config_spec(config)
        self.scenario = scenario if scenario is not None else Scenario()
        self.clock = clock if clock is not None else Clock(self.scenario.drift_factor())
        self.world_start = _host_time() if world_start is None else world_start
        self.boot = boot
        self.reset_cause = reset_cause
        self.unique_id = (
            unique_id
            or hashlib.sha256((os.path.realpath(".") + str(self.scenario.seed)).encode()).digest()[
                :6
            ]
        )
        self.freq = 240_000_000
        self.rtc_offset = 0.0  # machine.RTC().datetime(...) moves the RTC
        self.rtc_memory = b""
        self.scheduler = Scheduler()
        self.world_rng = rng_for(self.scenario.seed, self.scenario.node, "world", boot)
        self.pins: dict[int, PinLine] = {}
        self.adcs: dict[int, AdcInput] = {}
        self.uarts: dict[int, UartPort] = {}
        self.i2c_buses: dict[int, I2CBus] = {}
        self.pir_pins: list[int] = []
        self.ble: Any = None  # made on first use (bluetooth.BLE())
        self.watchdog_ms: int | None = None
        self._fed = time.monotonic()
        self._paused_since: float | None = None
        self.timers: list[Any] = []
        self._stop = threading.Event()
        self._world: threading.Thread | None = None
        self._conditions: tuple[float, Conditions] | None = None

        self._own_pty = pty is None  # a runner's pty outlives this board
        master, slave = pty if pty is not None else open_pty()
        console = self.link_spec.get("port") != "uart"
        self.link = Link(master, slave, self.scenario.line_faults(boot), console=console)
        if console:
            self.link.on_interrupt = self._keyboard_interrupt
        else:
            self.uarts[int(self.link_spec["uart"])] = LinkUart(self.link)
        for spec in self.sensor_specs:
            self._wire(spec)

    @property
    def device(self) -> str:
        """The device path to open, like /dev/ttyUSB0 of a real board."""
        return self.link.device

    # -- wiring ----------------------------------------------------------------------------

    def _wire(self, spec: dict[str, Any]) -> None:
        kind = spec["type"]
        if kind in _I2C_CHIPS:
            module, name = _I2C_CHIPS[kind]
            import importlib  # noqa: PLC0415

            chip = getattr(importlib.import_module(f"{__package__}.sim.{module}"), name)()
            bus = self.i2c_buses.get(spec["i2c"])
            if bus is None:
                bus = I2CBus(self, spec["i2c"], spec["scl"], spec["sda"])
                self.i2c_buses[spec["i2c"]] = bus
            elif not bus.wired_to(spec["scl"], spec["sda"]):
                log(f"i2c {spec['i2c']}: {kind} on other pins than the bus: not wired")
                return
            bus.attach(spec["address"], kind, chip)
        elif kind == "pms5003":
            if spec["uart"] in self.uarts:
                log(f"uart {spec['uart']} is the link: the PMS5003 is not wired")
                return
            self.uarts[spec["uart"]] = PmsUart(self)
        elif kind == "pir":
            self.pir_pins.append(spec["pin"])
        elif kind == "battery":
            num, den = spec["ratio_num"], spec["ratio_den"]
            self.adcs[spec["pin"]] = AdcInput(lambda: self.battery_mv() * den / num)
        # ble_scan: the radio is always there (bluetooth.BLE())

    def pin(self, number: int) -> PinLine:
        line = self.pins.get(number)
        if line is None:
            line = self.pins[number] = PinLine(self, number)
        return line

    def adc(self, number: int) -> AdcInput:
        adc = self.adcs.get(number)
        if adc is None:
            adc = self.adcs[number] = AdcInput(None)
        return adc

    def uart(self, number: int) -> UartPort:
        port = self.uarts.get(number)
        if port is None:
            port = self.uarts[number] = UartPort()
        return port

    def i2c_controller(self, bus_id: int, scl: int | None, sda: int | None) -> Any:
        """What machine.I2C(bus_id, scl=, sda=) talks to: the board's bus when the pins match
        its wiring, else a bus where nothing answers."""
        bus = self.i2c_buses.get(bus_id)
        if bus is not None and bus.wired_to(scl, sda):
            return bus
        return I2CBus(self, bus_id, scl, sda)

    def radio(self) -> Any:
        if self.ble is None:
            self.ble = _crowd_ble_class()(self)
        return self.ble

    # -- world -------------------------------------------------------------------------------

    def world_time(self) -> float:
        return _host_time() - self.world_start

    def conditions(self) -> Conditions:
        now = time.monotonic()
        if self._conditions is None or now - self._conditions[0] > 0.1:
            self._conditions = (now, self.scenario.conditions(self.world_time()))
        return self._conditions[1]

    def devices(self) -> list[Device]:
        return self.scenario.devices(self.world_time())

    def battery_mv(self) -> int:
        return self.scenario.battery_mv(self.world_time())

    def rtc_time(self) -> float:
        return _host_time() + self.rtc_offset

    def set_rtc_time(self, seconds: float) -> None:
        self.rtc_offset = seconds - _host_time()

    # -- the world thread ------------------------------------------------------------------

    def start(self) -> None:
        self.scheduler.install()
        self._world = threading.Thread(target=self._run_world, name="world", daemon=True)
        self._world.start()

    def _run_world(self) -> None:
        next_noise = time.monotonic() + 1.0
        while not self._stop.wait(0.02):
            now = time.monotonic()
            try:
                t = self.world_time()
                for number in self.pir_pins:
                    self.pin(number).drive(1 if self.scenario.motion(t) else 0)
                if self.ble is not None:
                    self.ble.world_tick(now)
                for timer in list(self.timers):
                    timer.tick(now)
                if now >= next_noise:
                    next_noise = now + 1.0
                    if self.world_rng.random() < self.scenario.faults.garbage * 0.2:
                        self.link.noise()
                self._check_watchdog(now)
            except Exception:  # the world must go on; say what broke
                log("world thread:", traceback.format_exc().strip())

    # -- watchdog, sleep, reset ------------------------------------------------------------

    def start_watchdog(self, timeout_ms: int) -> None:
        self.watchdog_ms = max(1, int(timeout_ms))
        self._fed = time.monotonic()

    def feed_watchdog(self) -> None:
        self._fed = time.monotonic()

    def _check_watchdog(self, now: float) -> None:
        if self.watchdog_ms is None or self._paused_since is not None:
            return
        if (now - self._fed) * 1000 > self.watchdog_ms:
            log(f"watchdog: not fed for {self.watchdog_ms} ms: reset")
            self.reset(WDT_RESET)

    def lightsleep(self, ms: int | None) -> None:
        """Sleep; the watchdog does not count while the CPU sleeps (ESP32 light sleep)."""
        start = time.monotonic()
        self._paused_since = start
        try:
            if ms is None:
                time.sleep(3600)
            else:
                self.clock.sleep_ms(ms)
        finally:
            self._fed += time.monotonic() - start
            self._paused_since = None

    def deepsleep(self, ms: int | None) -> None:
        """Everything off but the RTC, then a reset with DEEPSLEEP_RESET."""
        self._paused_since = time.monotonic()
        self.link.asleep = True
        self.flush_console()
        time.sleep(self.clock.real_seconds(ms) if ms else 3600 * 24 * 365)
        self.reset(DEEPSLEEP_RESET)

    def reset(self, cause: int) -> None:
        """End this life of the board; the runner starts the next one with `cause`."""
        self.flush_console()
        os._exit(EXIT_STATUS[cause])

    def flush_console(self) -> None:
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            with contextlib.suppress(Exception):
                if stream is not None:
                    stream.flush()

    def _keyboard_interrupt(self) -> None:
        def raise_interrupt(_arg: Any) -> None:
            raise KeyboardInterrupt

        self.scheduler.schedule(raise_interrupt, None)

    # -- console -----------------------------------------------------------------------------

    def attach_console(self) -> None:
        """Make the pty the node's sys.stdin/sys.stdout (link port "console")."""
        s: Any = sys
        s.stdin = PtyTextStream(self.link, readable=True)
        s.stdout = PtyTextStream(self.link, readable=False)

    def close(self) -> None:
        self._stop.set()
        if self._world is not None and self._world is not threading.current_thread():
            self._world.join(timeout=1)
        self.link.close(close_pty=self._own_pty)
        self.scheduler.uninstall()


# ---------------------------------------------------------------------------------------------

_current: Board | None = None


def install(board: Board | None) -> None:
    """Make `board` the one the shims use (None: none)."""
    global _current  # noqa: PLW0603 - one board per process, like one chip per device
    _current = board


def current() -> Board:
    if _current is None:
        raise RuntimeError(
            "no emulated board: run the firmware with `python -m firmware.host.node --flash DIR`"
        )
    return _current
