"""Sensirion SHT4x (SHT40/41/45) temperature and humidity sensor over I2C.

References are to the Sensirion SHT4x datasheet. The chip has no registers: each transfer is a
one-byte command, then, after the command's duration, a read of 16-bit words each followed by a
CRC-8 (section 4.4). While it measures the chip does not acknowledge its address, so a read that
comes too early fails with OSError (ENODEV) like an absent chip.

Readings (protocol/quantities.py): temperature 0.1 degC, humidity 0.1 %RH.
"""

from micropython import const

from ._util import crc8
from ._util import sleep_ms as _default_sleep_ms

_DEBUG = const(False)

# quantity ids, protocol/quantities.py
_Q_TEMPERATURE = const(0)
_Q_HUMIDITY = const(1)

# I2C address: 0x44 for SHT4x-AD1B (the common part); -BD1B is 0x45, -CD1B 0x46 (datasheet
# "I2C Address" / ordering information)
ADDRESS = const(0x44)

# commands (datasheet "I2C Commands" table)
_CMD_MEASURE_HIGH = const(0xFD)  # T & RH, high repeatability; answer: 6 bytes
_CMD_SERIAL = const(0x89)  # serial number; answer: 6 bytes (two words + CRC)
_CMD_SOFT_RESET = const(0x94)

# durations (datasheet "Timing Specifications"): high repeatability measurement max 8.3 ms, soft
# reset max 1 ms. 10 ms is what Sensirion's own driver waits for both measurement and serial.
_MEASURE_MS = const(10)
_SERIAL_MS = const(10)
_RESET_MS = const(1)

_ENODEV = const(19)
_EIO = const(5)


def _word(buf, i):
    return (buf[i] << 8) | buf[i + 1]


class SHT4x:
    QUANTITIES = (_Q_TEMPERATURE, _Q_HUMIDITY)

    def __init__(self, i2c, address=ADDRESS, *, sleep_ms=None):
        """Does not touch the bus."""
        self._i2c = i2c
        self._addr = address
        self._sleep_ms = sleep_ms or _default_sleep_ms
        self._cmd = bytearray(1)
        self._buf = bytearray(6)  # word, CRC, word, CRC
        self.serial = None

    def _command(self, cmd, wait_ms):
        self._cmd[0] = cmd
        self._i2c.writeto(self._addr, self._cmd)
        self._sleep_ms(wait_ms)
        buf = self._buf
        self._i2c.readfrom_into(self._addr, buf)
        # section 4.4: each 16-bit word is followed by its CRC-8
        if crc8(buf, 0) != buf[2] or crc8(buf, 3) != buf[5]:
            raise OSError(_EIO, "SHT4x: CRC mismatch (bus noise or not an SHT4x)")
        return buf

    def start(self):
        """Read the serial number: proves a working SHT4x answers at the address."""
        try:
            buf = self._command(_CMD_SERIAL, _SERIAL_MS)
        except OSError as exc:
            if exc.args and exc.args[0] == _EIO:
                raise
            raise OSError(
                _ENODEV,
                "SHT4x: no answer at I2C address "
                + hex(self._addr)
                + " (check wiring and power; SHT4x-AD1B is 0x44, -BD1B 0x45)",
            ) from None
        self.serial = (_word(buf, 0) << 16) | _word(buf, 3)
        if _DEBUG:
            print("SHT4x serial", hex(self.serial))

    def soft_reset(self):
        self._cmd[0] = _CMD_SOFT_RESET
        self._i2c.writeto(self._addr, self._cmd)
        self._sleep_ms(_RESET_MS)

    def read_into(self, readings):
        buf = self._command(_CMD_MEASURE_HIGH, _MEASURE_MS)
        s_t = _word(buf, 0)
        s_rh = _word(buf, 3)
        # datasheet "Conversion of Signal Output":
        #   T = -45 + 175 * S_T / (2^16 - 1) degC,  RH = -6 + 125 * S_RH / (2^16 - 1) %RH,
        # in tenths with rounding: 10 * 175 = 1750, 10 * 125 = 1250.
        readings[_Q_TEMPERATURE] = (1750 * s_t + 32767) // 65535 - 450
        rh = (1250 * s_rh + 32767) // 65535 - 60
        # the datasheet recommends cropping RH to 0..100 %RH (the formula reaches -6..119)
        if rh < 0:
            rh = 0
        elif rh > 1000:
            rh = 1000
        readings[_Q_HUMIDITY] = rh
