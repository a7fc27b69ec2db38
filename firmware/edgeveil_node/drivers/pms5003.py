"""Plantower PMS5003 particulate matter sensor on a UART (9600 baud, 8N1).

References are to the "Plantower PMS5003 series data manual" (V2.3): Appendix I, transport
protocol in active mode, and Appendix II, passive mode. The sensor sends 32-byte frames:

    0x42 0x4D | frame length = 2*13+2 = 28 | data 1..13 (16-bit, MSB first) | check code

Data 4, 5 and 6 (byte offsets 10, 12, 14) are PM1.0, PM2.5 and PM10 "under atmospheric
environment" in ug/m3; data 1..3 are the "CF=1, standard particle" values meant for factory use.
The check code is the 16-bit sum of every byte before it.

In active mode (the default) the sensor streams a frame every 200..800 ms (fast mode) or 2.3 s
(stable mode). read_into() drains what the UART holds, keeps the latest complete valid frame and,
if none is there yet, waits for one. Garbage, cut frames and other frames (the 8-byte answer to a
mode change) are skipped by scanning for the next 0x42 0x4D. Give the UART a receive buffer of
at least 64 bytes (UART(..., rxbuf=256)); with fewer the newest frames are lost on overflow.

In passive mode (passive=True) the sensor only answers the "read" command (Appendix II).

The fan needs about 30 s after power-up or wake-up before values are stable (data manual,
Appendix II: "at least 30 seconds after the sensor wakeup"): the first readings are not to be
trusted.

Readings (protocol/quantities.py): pm1, pm2_5, pm10 in ug/m3.
"""

from micropython import const

from ._util import sleep_ms as _default_sleep_ms

_DEBUG = const(False)

# quantity ids, protocol/quantities.py
_Q_PM1 = const(4)
_Q_PM2_5 = const(5)
_Q_PM10 = const(6)

BAUDRATE = const(9600)  # Appendix I: 9600 bps, no parity, one stop bit

_START1 = const(0x42)  # Appendix I: start character 1
_START2 = const(0x4D)  # start character 2
_FRAME_LEN = const(32)
_DATA_LEN = const(28)  # frame length field: 2 * 13 + 2
_OFF_PM1_ATM = const(10)  # data 4
_OFF_PM2_5_ATM = const(12)  # data 5
_OFF_PM10_ATM = const(14)  # data 6
_OFF_CHECK = const(30)  # check code, sum of bytes 0..29
_WINDOW = const(64)
_CHUNK = const(32)

# Appendix II commands: 0x42 0x4D CMD DATAH DATAL LRCH LRCL (LRC = sum of the first 5 bytes)
_CMD_READ = const(0xE2)  # passive mode: request one frame
_CMD_MODE = const(0xE1)  # data 0 = passive, 1 = active
_CMD_SLEEP = const(0xE4)  # data 0 = sleep, 1 = wake up

_POLL_MS = const(50)

_ENODEV = const(19)
_ETIMEDOUT = const(110)


class PMS5003:
    QUANTITIES = (_Q_PM1, _Q_PM2_5, _Q_PM10)

    def __init__(self, uart, *, passive=False, timeout_ms=3000, sleep_ms=None):
        """uart: a machine.UART at 9600 baud. timeout_ms: longest wait for a frame (the sensor
        sends at least one every 2.3 s in active mode). Does not touch the UART."""
        self._uart = uart
        self._passive = passive
        self._timeout_ms = timeout_ms
        self._sleep_ms = sleep_ms or _default_sleep_ms
        # preallocated: a scan window, a read chunk and a command buffer
        self._win = bytearray(_WINDOW)
        self._n = 0
        self._chunk = bytearray(_CHUNK)
        self._cmdbuf = bytearray(7)
        self.pm1 = self.pm2_5 = self.pm10 = 0  # latest valid frame
        self.frames = 0  # valid frames parsed
        self.checksum_errors = 0
        self.skipped = 0  # bytes thrown away while resynchronising
        self.started = False

    # -- commands (Appendix II) -----------------------------------------------------------

    def _command(self, cmd, data):
        c = self._cmdbuf
        c[0] = _START1
        c[1] = _START2
        c[2] = cmd
        c[3] = 0
        c[4] = data
        s = _START1 + _START2 + cmd + data
        c[5] = s >> 8
        c[6] = s & 0xFF
        self._uart.write(c)

    def sleep(self):
        self._command(_CMD_SLEEP, 0)

    def wake(self):
        """The fan needs about 30 s before the values are stable again."""
        self._command(_CMD_SLEEP, 1)

    # -- frame parsing --------------------------------------------------------------------

    def _shift(self, k):
        """Drop the first k bytes of the window (byte loop: no slice objects)."""
        w = self._win
        n = self._n - k
        for i in range(n):
            w[i] = w[i + k]
        self._n = n

    def _scan(self):
        """Consume complete frames in the window; True if one was valid."""
        w = self._win
        got = False
        while True:
            n = self._n
            j = 0
            while j < n - 1 and not (w[j] == _START1 and w[j + 1] == _START2):
                j += 1
            if j == n - 1 and w[j] != _START1:
                j = n  # a lone last byte that cannot start a frame
            if j:
                self.skipped += j
                self._shift(j)
                n = self._n
            if n < 4:
                return got
            if ((w[2] << 8) | w[3]) != _DATA_LEN:
                self._shift(2)  # another frame type, or a false start: look further on
                self.skipped += 2
                continue
            if n < _FRAME_LEN:
                return got
            s = 0
            for i in range(_OFF_CHECK):
                s += w[i]
            if (s & 0xFFFF) != ((w[_OFF_CHECK] << 8) | w[_OFF_CHECK + 1]):
                self.checksum_errors += 1
                self._shift(2)  # resynchronise on the next start characters
                self.skipped += 2
                continue
            self.pm1 = (w[_OFF_PM1_ATM] << 8) | w[_OFF_PM1_ATM + 1]
            self.pm2_5 = (w[_OFF_PM2_5_ATM] << 8) | w[_OFF_PM2_5_ATM + 1]
            self.pm10 = (w[_OFF_PM10_ATM] << 8) | w[_OFF_PM10_ATM + 1]
            self.frames += 1
            got = True
            self._shift(_FRAME_LEN)

    def _drain(self):
        """Parse everything the UART holds now; True if a valid frame was among it."""
        uart = self._uart
        chunk = self._chunk
        w = self._win
        got = False
        while True:
            avail = uart.any()
            if not avail:
                return got
            k = uart.readinto(chunk, avail if avail < _CHUNK else _CHUNK)
            if not k:
                return got
            for i in range(k):
                if self._n == _WINDOW and self._scan():
                    got = True
                if self._n == _WINDOW:  # cannot happen after a scan; belt and braces
                    self._shift(1)
                    self.skipped += 1
                w[self._n] = chunk[i]
                self._n += 1
            if self._scan():
                got = True

    def _wait_frame(self):
        waited = 0
        while not self._drain():
            if waited >= self._timeout_ms:
                return False
            self._sleep_ms(_POLL_MS)
            waited += _POLL_MS
        return True

    # -- driver interface -----------------------------------------------------------------

    def start(self):
        """Select the mode and wait for a first valid frame (proves the sensor is there)."""
        if self._passive:
            self._command(_CMD_MODE, 0)
            self._sleep_ms(_POLL_MS)
            self._drain()  # the mode-change answer and any frame already under way
            self._command(_CMD_READ, 0)
        if not self._wait_frame():
            raise OSError(
                _ENODEV,
                "PMS5003: no valid frame within "
                + str(self._timeout_ms)
                + " ms (check 5 V power, TX->RX wiring, 9600 baud, SET pin high)",
            )
        self.started = True
        if _DEBUG:
            print("PMS5003: first frame", self.pm1, self.pm2_5, self.pm10)

    def read_into(self, readings):
        if self._passive:
            self._drain()  # throw away anything stale
            self._command(_CMD_READ, 0)
        if not self._wait_frame():
            raise OSError(
                _ETIMEDOUT, "PMS5003: no valid frame within " + str(self._timeout_ms) + " ms"
            )
        readings[_Q_PM1] = self.pm1
        readings[_Q_PM2_5] = self.pm2_5
        readings[_Q_PM10] = self.pm10
