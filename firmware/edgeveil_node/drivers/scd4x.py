"""Sensirion SCD4x (SCD40/SCD41) photoacoustic CO2 sensor over I2C.

Section and table numbers refer to the Sensirion SCD4x datasheet, version 1.5 (July 2023). The
chip takes 16-bit commands, most significant byte first (sections 3.2, 3.3); answers are 16-bit
words each followed by a CRC-8 (section 3.11). It runs in periodic measurement mode (section
3.5.1): a new value every 5 s, read with read_measurement after get_data_ready_status says one
is there. While it is in that mode it only accepts read_measurement, get_data_ready_status,
stop_periodic_measurement and the ambient pressure commands (section 3.5, Table 9), so start()
stops it first (it may still be running from before a soft reboot).

Note: Table 11 prints the CRC of 0x01f4 as 0x7b; with the section 3.11 parameters (which give
every other example in the datasheet) it is 0x33, and that is what a chip sends.

Readings (protocol/quantities.py): co2 in ppm by default; temperature (0.1 degC) and humidity
(0.1 %RH) only when asked for, because the SCD4x heats itself and a BME280/SHT4x on the same
node is usually the better source.
"""

from micropython import const

from ._util import crc8
from ._util import sleep_ms as _default_sleep_ms

_DEBUG = const(False)

# quantity ids, protocol/quantities.py
_Q_TEMPERATURE = const(0)
_Q_HUMIDITY = const(1)
_Q_CO2 = const(7)

ADDRESS = const(0x62)  # section 3.3, Table 8 (fixed)

# commands and their execution times (section 3.4, Table 9)
_CMD_START_PERIODIC = const(0x21B1)  # section 3.5.1
_CMD_READ_MEASUREMENT = const(0xEC05)  # section 3.5.2: 1 ms, answer 9 bytes
_CMD_STOP_PERIODIC = const(0x3F86)  # section 3.5.3: 500 ms before the next command
_CMD_DATA_READY = const(0xE4B8)  # section 3.8.2: 1 ms, answer 3 bytes
_CMD_SERIAL = const(0x3682)  # section 3.9.2: 1 ms, answer 9 bytes
_EXEC_MS = const(1)
_STOP_MS = const(500)
_READY_POLL_MS = const(100)
_DATA_READY_MASK = const(0x07FF)  # section 3.8.2: least significant 11 bits 0 = no data

_ENODEV = const(19)
_EIO = const(5)
_ETIMEDOUT = const(110)


class SCD4x:
    QUANTITIES = (_Q_CO2,)  # type: tuple[int, ...]

    def __init__(
        self,
        i2c,
        address=ADDRESS,
        *,
        temperature=False,
        humidity=False,
        timeout_ms=5500,
        sleep_ms=None,
    ):
        """temperature, humidity: also report those (instance QUANTITIES says what is filled).
        timeout_ms: how long read_into waits for a measurement (one comes every 5 s; the first
        one 5 s after start()). Does not touch the bus."""
        self._i2c = i2c
        self._addr = address
        self._sleep_ms = sleep_ms or _default_sleep_ms
        self._timeout_ms = timeout_ms
        self._with_t = temperature
        self._with_rh = humidity
        if temperature or humidity:
            q = [_Q_CO2]
            if temperature:
                q.append(_Q_TEMPERATURE)
            if humidity:
                q.append(_Q_HUMIDITY)
            self.QUANTITIES = tuple(q)
        self._cmd = bytearray(2)
        self._buf = bytearray(9)  # three words with CRC
        self._ready = bytearray(3)  # one word with CRC
        self.serial = None
        self.started = False

    # -- bus helpers ----------------------------------------------------------------------

    def _send(self, cmd):
        c = self._cmd
        c[0] = cmd >> 8  # section 3.2: most significant byte first
        c[1] = cmd & 0xFF
        self._i2c.writeto(self._addr, c)

    def _read(self, buf):
        """Read words with their CRCs into buf and check every CRC (section 3.11)."""
        self._i2c.readfrom_into(self._addr, buf)
        for i in range(0, len(buf), 3):
            if crc8(buf, i) != buf[i + 2]:
                raise OSError(_EIO, "SCD4x: CRC mismatch (bus noise?)")

    # -- set-up ---------------------------------------------------------------------------

    def start(self):
        """Stop a running measurement, read the serial number, start periodic measurement."""
        try:
            self._send(_CMD_STOP_PERIODIC)  # accepted in idle mode too
        except OSError:
            raise OSError(
                _ENODEV,
                "SCD4x: no answer at I2C address "
                + hex(self._addr)
                + " (check wiring and power; address 0x62 is fixed)",
            ) from None
        self._sleep_ms(_STOP_MS)
        self._send(_CMD_SERIAL)
        self._sleep_ms(_EXEC_MS)
        b = self._buf
        self._read(b)
        # section 3.9.2: serial = word0 << 32 | word1 << 16 | word2
        self.serial = (
            (((b[0] << 8) | b[1]) << 32) | (((b[3] << 8) | b[4]) << 16) | ((b[6] << 8) | b[7])
        )
        self._send(_CMD_START_PERIODIC)
        self.started = True
        if _DEBUG:
            print("SCD4x serial", hex(self.serial))

    def stop(self):
        """Back to idle (saves about 15 mA average); start() resumes."""
        self._send(_CMD_STOP_PERIODIC)
        self._sleep_ms(_STOP_MS)
        self.started = False

    # -- reading --------------------------------------------------------------------------

    def data_ready(self):
        """get_data_ready_status (section 3.8.2)."""
        self._send(_CMD_DATA_READY)
        self._sleep_ms(_EXEC_MS)
        r = self._ready
        self._read(r)
        return bool(((r[0] << 8) | r[1]) & _DATA_READY_MASK)

    def read_into(self, readings):
        if not self.started:
            raise OSError(_EIO, "SCD4x: start() has not succeeded")
        waited = 0
        while not self.data_ready():
            if waited >= self._timeout_ms:
                raise OSError(
                    _ETIMEDOUT,
                    "SCD4x: no measurement within " + str(self._timeout_ms) + " ms",
                )
            self._sleep_ms(_READY_POLL_MS)
            waited += _READY_POLL_MS
        self._send(_CMD_READ_MEASUREMENT)
        self._sleep_ms(_EXEC_MS)
        b = self._buf
        self._read(b)
        # section 3.5.2, Table 11: CO2 = word[0] ppm; T = -45 + 175 * word[1] / (2^16 - 1) degC;
        # RH = 100 * word[2] / (2^16 - 1) %RH. In tenths, rounded. (Datasheet v1.1 and
        # Sensirion's C driver divide by 2^16: under 0.003 degC / 0.002 %RH apart.)
        readings[_Q_CO2] = (b[0] << 8) | b[1]
        if self._with_t:
            readings[_Q_TEMPERATURE] = (1750 * ((b[3] << 8) | b[4]) + 32767) // 65535 - 450
        if self._with_rh:
            readings[_Q_HUMIDITY] = (1000 * ((b[6] << 8) | b[7]) + 32767) // 65535
