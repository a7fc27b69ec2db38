"""MicroPython's `machine` module for an emulated node (CPython).

This directory is put first on sys.path of the emulated node's process (firmware/host/node.py),
so the unchanged firmware's `import machine` finds this module. The hardware behind it is the
emulated board (firmware/host/board.py): pins, ADCs, I2C buses with simulated chips, UARTs (the
link on a pseudo-terminal, the PMS5003 stream), the watchdog and the reset machinery.

Import it only through that sys.path entry (as `machine`), never as firmware.host.shims.machine.
"""

from __future__ import annotations

import os as _os
import time as _time
from typing import Any

from firmware.host import board as _board

PWRON_RESET = _board.PWRON_RESET
HARD_RESET = _board.HARD_RESET
WDT_RESET = _board.WDT_RESET
DEEPSLEEP_RESET = _board.DEEPSLEEP_RESET
SOFT_RESET = _board.SOFT_RESET

# machine.wake_reason() values (ESP32)
PIN_WAKE = EXT0_WAKE = 2
EXT1_WAKE = 3
TIMER_WAKE = 4
TOUCHPAD_WAKE = 5
ULP_WAKE = 6


def _b() -> _board.Board:
    return _board.current()


# ---------------------------------------------------------------------------------------------
# Pin


class Pin:
    IN = 1
    OUT = 3
    OPEN_DRAIN = 7
    PULL_UP = 1
    PULL_DOWN = 2
    IRQ_RISING = 1
    IRQ_FALLING = 2
    WAKE_LOW = 4
    WAKE_HIGH = 5
    DRIVE_0 = 0
    DRIVE_1 = 1
    DRIVE_2 = 2
    DRIVE_3 = 3

    def __init__(self, id: Any, mode: int = -1, pull: int = -1, *, value: Any = None, **_kw: Any):
        if isinstance(id, Pin):
            id = id.id
        if not isinstance(id, int) or not 0 <= id <= 63:
            raise ValueError("invalid pin")
        self.id = id
        self._line = _b().pin(id)
        self.init(mode, pull, value=value)

    def init(self, mode: int = -1, pull: int = -1, *, value: Any = None, **_kw: Any) -> None:
        line = self._line
        if mode != -1:
            line.output = mode in (Pin.OUT, Pin.OPEN_DRAIN)
        if pull != -1:
            line.pull = pull
        if value is not None:
            line.set_output(1 if value else 0)

    def value(self, x: Any = None) -> int | None:
        if x is None:
            return self._line.value()
        self._line.set_output(1 if x else 0)
        return None

    __call__ = value

    def on(self) -> None:
        self._line.set_output(1)

    def off(self) -> None:
        self._line.set_output(0)

    def toggle(self) -> None:
        self._line.set_output(0 if self._line.level else 1)

    def irq(
        self,
        handler: Any = None,
        trigger: int = IRQ_FALLING | IRQ_RISING,
        *,
        priority: int = 1,
        wake: Any = None,
        hard: bool = False,
    ) -> Any:
        self._line.set_irq(handler, trigger, self)
        return _IRQ(self._line)

    def mode(self, mode: int | None = None) -> int | None:
        if mode is None:
            return Pin.OUT if self._line.output else Pin.IN
        self.init(mode)
        return None

    def pull(self, pull: int | None = None) -> int | None:
        if pull is None:
            return self._line.pull
        self._line.pull = pull
        return None

    def drive(self, drive: int | None = None) -> int | None:
        return Pin.DRIVE_2 if drive is None else None

    def __repr__(self) -> str:
        return f"Pin({self.id})"


class _IRQ:
    def __init__(self, line: Any) -> None:
        self._line = line

    def trigger(self) -> int:
        return int(self._line.trigger)

    def flags(self) -> int:
        return 0


class Signal:
    def __init__(self, pin: Pin, *, invert: bool = False) -> None:
        self._pin = pin
        self._invert = invert

    def value(self, x: Any = None) -> int | None:
        if x is None:
            return int(bool(self._pin.value()) != self._invert)
        self._pin.value(bool(x) != self._invert)
        return None

    def on(self) -> None:
        self.value(1)

    def off(self) -> None:
        self.value(0)


# ---------------------------------------------------------------------------------------------
# ADC


class ADC:
    ATTN_0DB = 0
    ATTN_2_5DB = 1
    ATTN_6DB = 2
    ATTN_11DB = 3
    WIDTH_9BIT = 9
    WIDTH_10BIT = 10
    WIDTH_11BIT = 11
    WIDTH_12BIT = 12

    def __init__(self, pin: Any, *, atten: int = ATTN_0DB, **_kw: Any) -> None:
        number = pin.id if isinstance(pin, Pin) else pin
        self._input = _b().adc(int(number))
        self._atten = atten

    def atten(self, atten: int) -> None:
        self._atten = atten

    def width(self, bits: int) -> None:
        pass

    def init(self, *, atten: int | None = None, **_kw: Any) -> None:
        if atten is not None:
            self._atten = atten

    def read_uv(self) -> int:
        return int(self._input.read_uv(self._atten))

    def read_u16(self) -> int:
        return int(self._input.read_u16(self._atten))

    def read(self) -> int:
        return self.read_u16() >> 4


# ---------------------------------------------------------------------------------------------
# SPI


class SPI:
    """An SPI bus. Its only device on an emulated board is a LoRa chip, which the `lora` shim
    (firmware/host/shims/lora) emulates whole, registers and all: the bus carries nothing."""

    MSB = 0
    LSB = 1

    def __init__(self, id: int, baudrate: int = 1_000_000, **_kw: Any) -> None:
        if not isinstance(id, int) or not 0 <= id <= 3:
            raise ValueError("SPI(" + repr(id) + ") doesn't exist")
        self.id = id
        self.baudrate = baudrate

    def init(self, baudrate: int = 1_000_000, **_kw: Any) -> None:
        self.baudrate = baudrate

    def deinit(self) -> None:
        pass

    def read(self, nbytes: int, write: int = 0) -> bytes:
        return bytes(nbytes)  # no device drives MISO

    def readinto(self, buf: Any, write: int = 0) -> None:
        buf[:] = bytes(len(buf))

    def write(self, buf: Any) -> None:
        pass

    def write_readinto(self, write_buf: Any, read_buf: Any) -> None:
        read_buf[:] = bytes(len(read_buf))


# ---------------------------------------------------------------------------------------------
# I2C


class I2C:
    """An I2C controller; the bus behind it is the board's simulated bus with that id, if
    the pins match how the board is wired (otherwise nothing answers, as on a miswired board)."""

    def __init__(
        self,
        id: int = 0,
        *,
        scl: Any = None,
        sda: Any = None,
        freq: int = 400_000,
        timeout: int = 50_000,
    ) -> None:
        self.id = id
        self._scl = scl.id if isinstance(scl, Pin) else scl
        self._sda = sda.id if isinstance(sda, Pin) else sda
        self.freq = freq
        self._bus = _Errno(_b().i2c_controller(id, self._scl, self._sda))

    def init(self, *, scl: Any = None, sda: Any = None, freq: int = 400_000, **_kw: Any) -> None:
        self.__init__(self.id, scl=scl, sda=sda, freq=freq)  # type: ignore[misc]

    def deinit(self) -> None:
        pass

    def scan(self) -> list[int]:
        return list(self._bus.scan())

    def writeto(self, addr: int, buf: Any, stop: bool = True) -> int:
        return int(self._bus.writeto(addr, buf, stop))

    def writevto(self, addr: int, vector: Any, stop: bool = True) -> int:
        return self.writeto(addr, b"".join(bytes(b) for b in vector), stop)

    def readfrom(self, addr: int, nbytes: int, stop: bool = True) -> bytes:
        return bytes(self._bus.readfrom(addr, nbytes, stop))

    def readfrom_into(self, addr: int, buf: Any, stop: bool = True) -> None:
        self._bus.readfrom_into(addr, buf, stop)

    def readfrom_mem(self, addr: int, memaddr: int, nbytes: int, *, addrsize: int = 8) -> bytes:
        return bytes(self._bus.readfrom_mem(addr, memaddr, nbytes, addrsize=addrsize))

    def readfrom_mem_into(self, addr: int, memaddr: int, buf: Any, *, addrsize: int = 8) -> None:
        self._bus.readfrom_mem_into(addr, memaddr, buf, addrsize=addrsize)

    def writeto_mem(self, addr: int, memaddr: int, buf: Any, *, addrsize: int = 8) -> None:
        self._bus.writeto_mem(addr, memaddr, buf, addrsize=addrsize)

    def __repr__(self) -> str:
        return f"I2C({self.id}, scl={self._scl}, sda={self._sda}, freq={self.freq})"


SoftI2C = I2C


class _Errno:
    """Calls into a sim with CPython's OSError: the sims raise OSError(19) as MicroPython
    code does, where .errno is 19; on CPython it is None unless given with a message."""

    def __init__(self, target: Any) -> None:
        self._target = target

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._target, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return method(*args, **kwargs)
            except OSError as exc:
                if exc.errno is None and exc.args and isinstance(exc.args[0], int):
                    code = exc.args[0]
                    raise OSError(code, _os.strerror(code)) from None
                raise

        return call


# ---------------------------------------------------------------------------------------------
# UART


class UART:
    """A UART: the link (the board's pseudo-terminal) when it is the configured link UART, the
    PMS5003's stream when a PMS5003 is wired to it, else a UART with nothing attached."""

    INV_TX = 1
    INV_RX = 2
    RTS = 1
    CTS = 2

    def __init__(self, id: int, baudrate: int = 115200, *args: Any, **kw: Any) -> None:
        self.id = id
        self._port = _b().uart(id)
        self._timeout = 0
        self.init(baudrate, *args, **kw)

    def init(
        self,
        baudrate: int = 115200,
        bits: int = 8,
        parity: Any = None,
        stop: int = 1,
        *,
        tx: Any = None,
        rx: Any = None,
        rxbuf: int | None = None,
        timeout: int = 0,
        **_kw: Any,
    ) -> None:
        self.baudrate = baudrate
        self._timeout = timeout
        if rxbuf is not None:
            self._port.rxbuf = max(rxbuf, 32)
        self._port.baudrate = baudrate

    def deinit(self) -> None:
        pass

    def any(self) -> int:
        return int(self._port.any())

    def _wait(self) -> None:
        if self._timeout and not self._port.any():
            deadline = _time.monotonic() + self._timeout / 1000
            while not self._port.any() and _time.monotonic() < deadline:
                _time.sleep(0.002)

    def read(self, nbytes: int | None = None) -> bytes | None:
        self._wait()
        data: bytes | None = self._port.read(nbytes)
        return data

    def readinto(self, buf: Any, nbytes: int | None = None) -> int | None:
        n = len(buf) if nbytes is None else min(nbytes, len(buf))
        data = self.read(n)
        if not data:
            return None
        buf[: len(data)] = data
        return len(data)

    def readline(self) -> bytes | None:
        self._wait()
        out = bytearray()
        while True:
            byte = self._port.read(1)
            if not byte:
                break
            out += byte
            if byte == b"\n":
                break
        return bytes(out) or None

    def write(self, buf: Any) -> int:
        return int(self._port.write(bytes(buf)))

    def flush(self) -> None:
        pass

    def txdone(self) -> bool:
        return True

    def sendbreak(self) -> None:
        pass

    def fileno(self) -> int:
        return int(self._port.fileno())

    def __repr__(self) -> str:
        return f"UART({self.id}, baudrate={self.baudrate})"


# ---------------------------------------------------------------------------------------------
# Watchdog, RTC, timers


class WDT:
    """The watchdog: once started it cannot be stopped; if feed() is not called within
    `timeout` ms the node resets (the process exits and is started again with WDT_RESET)."""

    def __init__(self, id: int = 0, timeout: int = 5000) -> None:
        if timeout < 1:
            raise ValueError("WDT timeout too short")
        _b().start_watchdog(timeout)

    def feed(self) -> None:
        _b().feed_watchdog()


class RTC:
    """The real-time clock: (year, month, day, weekday, hours, minutes, seconds, subseconds),
    running from the host's clock at the board's drift until set."""

    def __init__(self, id: int = 0, *, datetime: Any = None) -> None:
        if datetime is not None:
            self.datetime(datetime)

    def init(self, datetime: Any = None) -> None:
        if datetime is not None:
            self.datetime(datetime)

    def datetime(self, datetimetuple: Any = None) -> tuple[int, ...] | None:
        board = _b()
        if datetimetuple is None:
            now = board.rtc_time()
            t = _time.gmtime(int(now))
            us = int((now % 1) * 1e6)
            return (t.tm_year, t.tm_mon, t.tm_mday, t.tm_wday, t.tm_hour, t.tm_min, t.tm_sec, us)
        parts = list(datetimetuple) + [0] * (8 - len(datetimetuple))
        year, month, day, _wd, hour, minute, second, sub = parts[:8]
        import calendar  # noqa: PLC0415

        seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
        board.set_rtc_time(seconds + sub / 1e6)
        return None

    def memory(self, data: Any = None) -> bytes | None:
        board = _b()
        if data is None:
            return bytes(board.rtc_memory)
        board.rtc_memory = bytes(data)
        return None


class Timer:
    ONE_SHOT = 0
    PERIODIC = 1

    def __init__(self, id: int = -1, **kw: Any) -> None:
        self.id = id
        self._callback: Any = None
        self._period_s = 0.0
        self._mode = Timer.PERIODIC
        self._due: float | None = None
        if kw:
            self.init(**kw)

    def init(
        self,
        *,
        mode: int = PERIODIC,
        period: int = -1,
        freq: float = -1,
        callback: Any = None,
        **_kw: Any,
    ) -> None:
        board = _b()
        if freq > 0:
            period = round(1000 / freq)
        self._mode = mode
        self._callback = callback
        self._period_s = board.clock.real_seconds(max(1, period))
        self._due = _time.monotonic() + self._period_s
        if self not in board.timers:
            board.timers.append(self)

    def deinit(self) -> None:
        board = _b()
        self._due = None
        if self in board.timers:
            board.timers.remove(self)

    def tick(self, now: float) -> None:
        """World thread: schedule the callback when the timer is due."""
        if self._due is None or now < self._due:
            return
        if self._mode == Timer.PERIODIC:
            self._due += self._period_s
            if self._due < now:
                self._due = now + self._period_s
        else:
            self._due = None
        if self._callback is not None:
            _b().scheduler.schedule(self._callback, self)


# ---------------------------------------------------------------------------------------------
# Module functions


def reset() -> None:
    """Like pressing the board's reset button: the node restarts with HARD_RESET."""
    _b().reset(HARD_RESET)


def soft_reset() -> None:
    _b().reset(SOFT_RESET)


def reset_cause() -> int:
    return _b().reset_cause


def wake_reason() -> int:
    return TIMER_WAKE if _b().reset_cause == DEEPSLEEP_RESET else 0


def unique_id() -> bytes:
    return bytes(_b().unique_id)


def freq(hz: int | None = None) -> int | None:
    board = _b()
    if hz is None:
        return board.freq
    if hz not in (20_000_000, 40_000_000, 80_000_000, 160_000_000, 240_000_000):
        raise ValueError("frequency must be 20MHz, 40MHz, 80Mhz, 160MHz or 240MHz")
    board.freq = hz
    return None


def idle() -> None:
    _time.sleep(0.001)  # until the next interrupt: the 1 ms system tick at the latest


def lightsleep(time_ms: int | None = None) -> None:
    _b().lightsleep(time_ms)


sleep = lightsleep


def deepsleep(time_ms: int | None = None) -> None:
    _b().deepsleep(time_ms)


def disable_irq() -> int:
    return _b().scheduler.disable()


def enable_irq(state: int = 0) -> None:
    _b().scheduler.enable(state)


def time_pulse_us(pin: Pin, pulse_level: int, timeout_us: int = 1_000_000) -> int:
    deadline = _time.monotonic() + timeout_us / 1e6
    while pin.value() != pulse_level:
        if _time.monotonic() > deadline:
            return -2
    start = _time.monotonic()
    while pin.value() == pulse_level:
        if _time.monotonic() > deadline:
            return -1
    return int((_time.monotonic() - start) * 1e6)
