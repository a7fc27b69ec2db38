"""A simulated Sensirion SCD4x at command level (SCD4x datasheet, version 1.5).

    chip = bus.attach(0x62, SimSCD4x())
    chip.co2_ppm = 812
    chip.temperature_c = 22.5
    chip.humidity_rh = 41.0

Commands are 16-bit, MSB first (section 3.3); answers are words with CRC-8 (section 3.11).
Modelled: idle and periodic measurement modes (a new measurement every 5 s after
start_periodic_measurement, section 3.5.1), get_data_ready_status (section 3.8.2: the low 11
bits are 0 when no measurement is waiting), read_measurement emptying the buffer and answering
with a NACK when it is empty (section 3.5.2), stop_periodic_measurement and its 500 ms during which
the chip answers nothing (section 3.5.3), get_serial_number only in idle mode (section 3.9.2),
execution times (1 ms). A command the chip does not accept in its current mode raises
OSError(5). `raw = (co2, S_T, S_RH)` reports given words; `corrupt_crc = n` spoils the next n
answers. Pure Python that also runs under MicroPython.
"""

from .i2c import EIO, ENODEV, I2CDevice
from .sensirion import clamp16, words_with_crc

CMD_START_PERIODIC = 0x21B1
CMD_READ_MEASUREMENT = 0xEC05
CMD_STOP_PERIODIC = 0x3F86
CMD_DATA_READY = 0xE4B8
CMD_SERIAL = 0x3682

PERIOD_MS = 5000  # section 3.5.1: signal update interval in periodic mode
_EXEC_US = {
    CMD_START_PERIODIC: 0,
    CMD_READ_MEASUREMENT: 1000,
    CMD_STOP_PERIODIC: 500000,
    CMD_DATA_READY: 1000,
    CMD_SERIAL: 1000,
}
_IN_PERIODIC = (CMD_READ_MEASUREMENT, CMD_DATA_READY, CMD_STOP_PERIODIC)


def raw_for(co2_ppm, temperature_c, humidity_rh):
    """Inverse of section 3.5.2 (Table 11): T = -45 + 175 * S_T / (2^16 - 1),
    RH = 100 * S_RH / (2^16 - 1)."""
    s_t = clamp16(round((temperature_c + 45.0) * 65535 / 175.0))
    s_rh = clamp16(round(humidity_rh * 65535 / 100.0))
    return clamp16(round(co2_ppm)), s_t, s_rh


class SimSCD4x(I2CDevice):
    def __init__(self, serial=0x9F2A_6B1C_3D04):
        super().__init__()
        self.serial = serial
        self.co2_ppm = 600
        self.temperature_c = 21.0
        self.humidity_rh = 45.0
        self.raw = None
        self.corrupt_crc = 0
        self.periodic = False
        self.commands = []
        self._answer = None
        self._ready_us = 0
        self._busy_until_us = 0
        self._started_ms = 0
        self._taken = 0  # measurements read out since start

    def _now_us(self):
        return self.now_ms() * 1000

    def _produced(self):
        if not self.periodic:
            return 0
        return (self.now_ms() - self._started_ms) // PERIOD_MS

    def _data_waiting(self):
        return self._produced() > self._taken

    def write(self, data):
        now = self._now_us()
        if now < self._busy_until_us:
            raise OSError(ENODEV)  # still executing stop_periodic_measurement
        if len(data) < 2:
            raise OSError(EIO)
        cmd = (data[0] << 8) | data[1]
        if cmd not in _EXEC_US or (self.periodic and cmd not in _IN_PERIODIC):
            raise OSError(EIO)  # unknown, or not allowed in this mode (section 3.4)
        self.commands.append(cmd)
        self._answer = None
        self._ready_us = now + _EXEC_US[cmd]
        if cmd == CMD_START_PERIODIC:
            self.periodic = True
            self._started_ms = self.now_ms()
            self._taken = 0
        elif cmd == CMD_STOP_PERIODIC:
            self.periodic = False
            self._busy_until_us = now + _EXEC_US[cmd]
        elif cmd == CMD_SERIAL:
            s = self.serial
            self._answer = words_with_crc(((s >> 32) & 0xFFFF, (s >> 16) & 0xFFFF, s & 0xFFFF))
        elif cmd == CMD_DATA_READY:
            # the high bits are unspecified; the sensor reports 0x8000-like values when idle
            self._answer = words_with_crc((0x8006 if self._data_waiting() else 0x8000,))
        elif cmd == CMD_READ_MEASUREMENT and self._data_waiting():
            self._taken = self._produced()  # the buffer empties on read-out
            words = self.raw
            if words is None:
                words = raw_for(self.co2_ppm, self.temperature_c, self.humidity_rh)
            self._answer = words_with_crc(words)
        if self._answer is not None and self.corrupt_crc > 0:
            self.corrupt_crc -= 1
            bad = bytearray(self._answer)
            bad[2] ^= 0x01
            self._answer = bytes(bad)

    def read(self, buf):
        if self._answer is None or self._now_us() < self._ready_us:
            raise OSError(ENODEV)
        answer = self._answer
        for i in range(len(buf)):
            buf[i] = answer[i] if i < len(answer) else 0xFF
        self._answer = None
