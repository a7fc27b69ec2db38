# `machine` of the emulated board: what the node firmware and the technician tools use, wired to
# simulated hardware. The I2C buses carry the board's simulated sensor breakouts (register-level
# chip models from firmware/host/sim, running here inside the board's interpreter); the ADC
# reads a battery behind a 2:1 divider; reset, watchdog and reset cause are the emulator's.
from machine import *  # noqa: F403
import time
from binascii import unhexlify

from sim.bme280 import SimBME280
from sim.i2c import SimI2C
from sim.pins import SimADC, SimPin
from sim.sht4x import SimSHT4x

from _host import call as _call

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5

_BOARD = _call("board")  # {"name", "uid", "reset_cause", "freq", "sensors", "battery_mv"}


class _WallClock:
    """The chip models' clock: the board's own ticks (the chips live in real time here)."""

    @property
    def now_ms(self):
        return time.ticks_ms()

    def sleep_ms(self, ms):
        time.sleep_ms(ms)


_BUS = SimI2C(_WallClock())
for _kind, _address in _BOARD["sensors"]:
    _BUS.attach(_address, SimBME280() if _kind == "bme280" else SimSHT4x())


def reset():
    _call("reset")  # the emulator ends this interpreter and powers the board up again


def soft_reset():
    _call("soft_reset")


def reset_cause():
    return _BOARD["reset_cause"]


def unique_id():
    return unhexlify(_BOARD["uid"])


def freq(hz=None):
    return _BOARD["freq"] if hz is None else None


def idle():
    time.sleep_ms(1)


def lightsleep(ms=None):
    time.sleep_ms(ms if ms is not None else 1000)


def deepsleep(ms=None):
    _call("deepsleep", ms or 0)


def bootloader():
    raise OSError("the emulated board has no ROM bootloader")


class Pin(SimPin):
    PULL_UP = 1
    PULL_DOWN = 2

    def __init__(self, pin_id, mode=-1, pull=-1, value=None):
        super().__init__(0 if value is None else value)
        self.id = pin_id


class ADC(SimADC):
    ATTN_0DB = 0
    ATTN_11DB = 3

    def __init__(self, pin, atten=None):
        # the battery divider halves the cell voltage; without 11 dB attenuation an ESP32 ADC
        # saturates near 1 V, which the model reproduces
        millivolts = _BOARD["battery_mv"] // 2
        if _BOARD["name"] == "esp32" and atten != self.ATTN_11DB:
            millivolts = min(millivolts, 1000)
        super().__init__(millivolts)


class I2C:
    """machine.I2C on the board's simulated bus (one bus whatever the id and pins)."""

    def __init__(self, bus_id=0, scl=None, sda=None, freq=400000, timeout=50000):
        self._bus = _BUS

    def scan(self):
        return self._bus.scan()

    def readfrom(self, addr, n, stop=True):
        return self._bus.readfrom(addr, n, stop)

    def readfrom_into(self, addr, buf, stop=True):
        return self._bus.readfrom_into(addr, buf, stop)

    def writeto(self, addr, buf, stop=True):
        return self._bus.writeto(addr, buf, stop)

    def readfrom_mem(self, addr, memaddr, n, addrsize=8):
        return self._bus.readfrom_mem(addr, memaddr, n)

    def readfrom_mem_into(self, addr, memaddr, buf, addrsize=8):
        return self._bus.readfrom_mem_into(addr, memaddr, buf)

    def writeto_mem(self, addr, memaddr, buf, addrsize=8):
        return self._bus.writeto_mem(addr, memaddr, buf)


class UART:
    """A UART with nothing attached: writes go nowhere, reads find nothing."""

    def __init__(self, uart_id, baudrate=115200, **kwargs):
        self.id = uart_id

    def write(self, data):
        return len(data)

    def any(self):
        return 0

    def read(self, n=None):
        return None

    def readinto(self, buf, n=None):
        return None


class WDT:
    def __init__(self, id=0, timeout=5000):  # noqa: A002 - machine.WDT's signature
        _call("wdt_start", timeout)

    def feed(self):
        _call("wdt_feed")
