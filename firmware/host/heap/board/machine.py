# `machine` for the heap meter's board (firmware/host/heap): what hardware.build() asks of the
# C module, on the virtual clock (vtime). Nothing here allocates where the C module does not:
# the firmware's own allocations are what the meter measures.
#
# I2C: a BME280 (0x76), an SHT4x (0x44) and an SCD4x (0x62), answering as firmware/host/sim's
# chip models answer: their answers are recorded from those models once, before the baseline
# (the models themselves allocate, keep a log of commands and model timing, which a chip does
# in silicon). A UART at 9600 baud is a PMS5003; any other UART is the gateway link: what the
# node writes is counted, what the scenario puts in LINK_RX is what the gateway sent.
import vtime
from sim.bme280 import SimBME280, raw_for
from sim.i2c import SimI2C
from sim.pms5003 import frame
from sim.scd4x import SimSCD4x
from sim.sht4x import SimSHT4x

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5

_ENODEV = 19


def _record():
    """(BME280 register image after a measurement, {address: {command: answer}})."""
    bus = SimI2C(vtime.CLOCK)
    bme = bus.attach(0x76, SimBME280())
    bme.raw = raw_for(bme.calibration, 21.5, 101325.0, 45.0)
    bus.writeto_mem(0x76, 0xF2, b"\x01")  # humidity x1, then forced mode, T and P x1
    bus.writeto_mem(0x76, 0xF4, b"\x25")
    vtime.advance(100)
    bus.readfrom_mem(0x76, 0xF3, 1)  # the model fills the data registers when read after
    regs = bytearray(bme.regs)
    regs[0xF3] = 0  # status: not measuring, NVM copied
    answers = {0x44: {}, 0x62: {}}
    bus.attach(0x44, SimSHT4x())
    for cmd in (0xFD, 0xF6, 0xE0, 0x89):  # measure high/medium/low precision, serial
        bus.writeto(0x44, bytes([cmd]))
        vtime.advance(20)
        answers[0x44][cmd] = bus.readfrom(0x44, 6)
    bus.attach(0x62, SimSCD4x())
    for cmd, n, wait in ((0x3682, 9, 1), (0x21B1, 0, 5000), (0xE4B8, 3, 1), (0xEC05, 9, 1)):
        bus.writeto(0x62, bytes([cmd >> 8, cmd & 0xFF]))
        vtime.advance(wait)
        if n:
            answers[0x62][cmd] = bus.readfrom(0x62, n)
    return regs, answers


_BME280_REGS, _ANSWERS = _record()


class _I2C:
    """machine.I2C with the recorded chips: the *_into methods the drivers use."""

    def __init__(self):
        self._regs = bytearray(_BME280_REGS)
        self._command = {0x44: 0, 0x62: 0}

    def scan(self):
        return [0x44, 0x62, 0x76]

    def writeto_mem(self, addr, memaddr, buf, addrsize=8):
        if addr != 0x76:
            raise OSError(_ENODEV)
        if memaddr in (0xF2, 0xF4, 0xF5):  # control registers; the rest is read-only
            self._regs[memaddr] = buf[0]

    def readfrom_mem_into(self, addr, memaddr, buf, addrsize=8):
        if addr != 0x76:
            raise OSError(_ENODEV)
        regs = self._regs
        for i in range(len(buf)):
            buf[i] = regs[memaddr + i]

    def writeto(self, addr, buf, stop=True):
        if addr not in self._command:
            raise OSError(_ENODEV)
        self._command[addr] = buf[0] if len(buf) == 1 else (buf[0] << 8) | buf[1]
        return len(buf)

    def readfrom_into(self, addr, buf, stop=True):
        answer = _ANSWERS.get(addr, {}).get(self._command.get(addr))
        if answer is None:
            raise OSError(_ENODEV)
        for i in range(len(buf)):
            buf[i] = answer[i]


LINK_RX = bytearray()  # bytes from the gateway, not yet read by the node
LINK_TX = [0]  # bytes the node wrote to the gateway


def reset_cause():
    return PWRON_RESET


def unique_id():
    return b"\x24\x0a\xc4\x00\x00\x01"


def lightsleep(ms=0):
    vtime.advance(ms)


class Pin:
    IN = 1
    OUT = 3
    IRQ_RISING = 1
    IRQ_FALLING = 2

    def __init__(self, pin_id, mode=-1, value=None, **kwargs):
        self.id = pin_id
        self._value = value or 0

    def value(self, v=None):
        if v is None:
            return self._value
        self._value = v
        return None

    def irq(self, handler=None, trigger=0, hard=False):
        return None


class ADC:
    ATTN_11DB = 3

    def __init__(self, pin, atten=None):
        self.pin = pin

    def read_u16(self):
        return 39321  # 1.95 V at the pin: a 3.9 V battery behind a 2:1 divider

    def read_uv(self):
        return 1950000


def I2C(bus_id, scl=None, sda=None, freq=400000):  # the machine module's class
    return _I2C()


class _LinkUART:
    def write(self, data):
        LINK_TX[0] += len(data)
        return len(data)

    def any(self):
        return len(LINK_RX)

    def read(self, n=-1):
        if not LINK_RX:
            return None
        n = len(LINK_RX) if n < 0 or n > len(LINK_RX) else n
        data = bytes(LINK_RX[:n])
        LINK_RX[:n] = b""
        return data


_PMS_FRAME = frame(4, 7, 11)


class _PmsUART:
    """A PMS5003 in active mode: a new 32-byte frame each second, the latest kept."""

    def __init__(self):
        self._pos = len(_PMS_FRAME)  # read position in the current frame
        self._next_ms = 0  # when the next frame is in

    def write(self, data):
        return len(data)

    def any(self):
        if self._pos == len(_PMS_FRAME) and vtime.CLOCK.now_ms >= self._next_ms:
            self._pos = 0
            self._next_ms = vtime.CLOCK.now_ms + 1000
        return len(_PMS_FRAME) - self._pos

    def readinto(self, buf, nbytes=-1):
        n = self.any()
        if 0 <= nbytes < n:
            n = nbytes
        n = min(n, len(buf))
        for i in range(n):
            buf[i] = _PMS_FRAME[self._pos + i]
        self._pos += n
        return n or None


def UART(uart_id, baudrate=115200, **kwargs):  # the machine module's class
    if baudrate == 9600:
        return _PmsUART()
    return _LinkUART()


class SPI:
    def __init__(self, spi_id, **kwargs):
        self.id = spi_id


class WDT:
    def __init__(self, timeout=5000):
        self.timeout = timeout

    def feed(self):
        pass
