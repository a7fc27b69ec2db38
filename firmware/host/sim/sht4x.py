"""A simulated Sensirion SHT4x at command level (SHT4x datasheet).

    chip = bus.attach(0x44, SimSHT4x())
    chip.temperature_c = 23.4
    chip.humidity_rh = 56.7

A command is one byte; its answer can be read once its duration (datasheet "Timing
Specifications", maximum values) has passed. Before that, or when there is nothing to read, the
chip does not acknowledge its address: OSError(19), as on the real bus. Answers are 16-bit words
each followed by a CRC-8. `corrupt_crc = n` spoils the CRC of the next n answers;
`raw = (S_T, S_RH)` overrides the physical values. Pure Python that also runs under MicroPython.
"""

from .i2c import EIO, ENODEV, I2CDevice
from .sensirion import clamp16, words_with_crc

CMD_MEASURE_HIGH = 0xFD
CMD_MEASURE_MEDIUM = 0xF6
CMD_MEASURE_LOW = 0xE0
CMD_SERIAL = 0x89
CMD_SOFT_RESET = 0x94

# command -> duration in us (maximum values; serial number: modelled as 1 ms)
DURATIONS_US = {
    CMD_MEASURE_HIGH: 8300,
    CMD_MEASURE_MEDIUM: 4500,
    CMD_MEASURE_LOW: 1700,
    CMD_SERIAL: 1000,
    CMD_SOFT_RESET: 1000,
}


def raw_for(temperature_c, humidity_rh):
    """Inverse of the datasheet conversion: T = -45 + 175 S_T/(2^16 - 1),
    RH = -6 + 125 S_RH/(2^16 - 1)."""
    s_t = clamp16(round((temperature_c + 45.0) * 65535 / 175.0))
    s_rh = clamp16(round((humidity_rh + 6.0) * 65535 / 125.0))
    return s_t, s_rh


class SimSHT4x(I2CDevice):
    def __init__(self, serial=0x0F1E2D3C):
        super().__init__()
        self.serial = serial
        self.temperature_c = 21.0
        self.humidity_rh = 45.0
        self.raw = None  # (S_T, S_RH)
        self.corrupt_crc = 0
        self.measurements = 0
        self.commands = []  # every command byte received, in order
        self._answer = None
        self._ready_us = 0

    def _now_us(self):
        return self.now_ms() * 1000

    def write(self, data):
        if self._now_us() < self._ready_us:
            raise OSError(ENODEV)  # busy with the previous command
        if len(data) != 1 or data[0] not in DURATIONS_US:
            raise OSError(EIO)
        cmd = data[0]
        self.commands.append(cmd)
        self._ready_us = self._now_us() + DURATIONS_US[cmd]
        if cmd == CMD_SERIAL:
            self._answer = words_with_crc((self.serial >> 16, self.serial & 0xFFFF))
        elif cmd == CMD_SOFT_RESET:
            self._answer = None
        else:
            self.measurements += 1
            s_t, s_rh = (
                self.raw if self.raw is not None else raw_for(self.temperature_c, self.humidity_rh)
            )
            self._answer = words_with_crc((s_t, s_rh))
        if self._answer is not None and self.corrupt_crc > 0:
            self.corrupt_crc -= 1
            bad = bytearray(self._answer)
            bad[-1] ^= 0x01
            self._answer = bytes(bad)

    def read(self, buf):
        if self._answer is None or self._now_us() < self._ready_us:
            raise OSError(ENODEV)  # no answer yet: the address is not acknowledged
        n = len(buf)
        answer = self._answer
        for i in range(n):
            buf[i] = answer[i] if i < len(answer) else 0xFF
        self._answer = None
