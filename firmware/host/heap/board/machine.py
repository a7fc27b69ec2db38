# `machine` for the heap meter's board (firmware/host/heap): what hardware.build() asks of the
# C module, backed by the simulated chips of firmware/host/sim on the virtual clock (vtime).
# I2C buses carry a BME280 (0x76), an SHT4x (0x44) and an SCD4x (0x62); a UART at 9600 baud is
# a PMS5003, any other UART is the gateway link: what the node writes is counted, what the
# scenario puts in LINK_RX is what the gateway sent.
import vtime
from sim.bme280 import SimBME280, raw_for
from sim.i2c import SimI2C
from sim.pms5003 import SimPMS5003
from sim.scd4x import SimSCD4x
from sim.sht4x import SimSHT4x

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5

# The BME280 model's raw readings, worked out once before the baseline: finding them (the
# compensation formulas run backwards) is the simulated chip's work, not the node's.
_BME280 = SimBME280()
BME280_RAW = raw_for(_BME280.calibration, 21.5, 101325.0, 45.0)
del _BME280

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


def I2C(bus_id, scl=None, sda=None, freq=400000):
    bus = SimI2C(vtime.CLOCK)
    bus.attach(0x76, SimBME280()).raw = BME280_RAW
    bus.attach(0x44, SimSHT4x())
    bus.attach(0x62, SimSCD4x())
    return bus


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


def UART(uart_id, baudrate=115200, **kwargs):
    if baudrate == 9600:
        return SimPMS5003(vtime.CLOCK, pm1=4, pm2_5=7, pm10=11, rxbuf=kwargs.get("rxbuf", 256))
    return _LinkUART()


class SPI:
    def __init__(self, spi_id, **kwargs):
        self.id = spi_id


class WDT:
    def __init__(self, timeout=5000):
        self.timeout = timeout

    def feed(self):
        pass
