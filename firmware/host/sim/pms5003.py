"""A simulated Plantower PMS5003 as the UART object the driver reads (machine.UART methods).

    uart = SimPMS5003(clock, pm1=3, pm2_5=7, pm10=9)
    drv = PMS5003(uart, sleep_ms=clock.sleep_ms)

In active mode it emits a 32-byte frame (data manual Appendix I) every `interval_ms` of
simulated time; frames accumulate in a receive buffer of `rxbuf` bytes (bytes that do not fit
are lost, as with a real UART driver). `garbage = b"..."` is sent before every frame;
`inject(data)` adds bytes now; `corrupt_next = n` spoils the checksum of the next n frames. It
understands the Appendix II commands: passive mode (0xE1 0), active mode (0xE1 1), read (0xE2),
sleep / wake (0xE4), and answers a mode change with the 8-byte acknowledgement frame.
Pure Python that also runs under MicroPython.
"""

from .clock import SimClock


def frame(pm1, pm2_5, pm10, cf1=None, counts=(0, 0, 0, 0, 0, 0)):
    """A valid 32-byte data frame: data 1-3 CF=1 values (default: the atmospheric ones),
    data 4-6 atmospheric PM1.0/PM2.5/PM10, data 7-12 particle counts, data 13 reserved."""
    if cf1 is None:
        cf1 = (pm1, pm2_5, pm10)
    data = list(cf1)
    data.extend((pm1, pm2_5, pm10))
    data.extend(counts)
    data.append(0)  # data 13: reserved
    out = bytearray(b"\x42\x4d\x00\x1c")
    for v in data:
        out.append((v >> 8) & 0xFF)
        out.append(v & 0xFF)
    s = sum(out) & 0xFFFF
    out.append(s >> 8)
    out.append(s & 0xFF)
    return bytes(out)


def command(cmd, data):
    """An Appendix II command: 42 4D CMD DATAH DATAL LRCH LRCL."""
    out = bytearray((0x42, 0x4D, cmd, (data >> 8) & 0xFF, data & 0xFF))
    s = sum(out)
    out.append((s >> 8) & 0xFF)
    out.append(s & 0xFF)
    return bytes(out)


class SimPMS5003:
    def __init__(self, clock=None, *, pm1=0, pm2_5=0, pm10=0, interval_ms=1000, rxbuf=256):
        self.clock = clock if clock is not None else SimClock()
        self.pm1 = pm1
        self.pm2_5 = pm2_5
        self.pm10 = pm10
        self.interval_ms = interval_ms
        self.rxbuf = rxbuf
        self.garbage = b""
        self.corrupt_next = 0
        self.passive = False
        self.asleep = False
        self.present = True
        self.written = []  # commands received
        self.frames_sent = 0
        self.lost = 0  # bytes lost to a full receive buffer
        self._rx = bytearray()
        self._next_ms = self.clock.now_ms + interval_ms

    # -- the sensor side ------------------------------------------------------------------

    def inject(self, data):
        self._receive(data)

    def _receive(self, data):
        room = self.rxbuf - len(self._rx)
        if len(data) > room:
            self.lost += len(data) - max(room, 0)
            data = data[: max(room, 0)]
        self._rx += data

    def _emit(self):
        f = bytearray(frame(self.pm1, self.pm2_5, self.pm10))
        if self.corrupt_next > 0:
            self.corrupt_next -= 1
            f[31] ^= 0x5A
        if self.garbage:
            self._receive(self.garbage)
        self._receive(bytes(f))
        self.frames_sent += 1

    def _update(self):
        now = self.clock.now_ms
        if self.passive or self.asleep or not self.present:
            self._next_ms = now + self.interval_ms
            return
        while self._next_ms <= now:
            if len(self._rx) >= self.rxbuf:
                # full: every later frame is lost whole; count them instead of building them (a
                # node reading once every few minutes would have the model build hundreds)
                missed = (now - self._next_ms) // self.interval_ms + 1
                self.lost += missed * (len(self.garbage) + 32)
                self.frames_sent += missed
                self.corrupt_next = max(0, self.corrupt_next - missed)
                self._next_ms += missed * self.interval_ms
                break
            self._emit()
            self._next_ms += self.interval_ms

    # -- machine.UART ---------------------------------------------------------------------

    def any(self):
        self._update()
        return len(self._rx)

    def read(self, nbytes=None):
        self._update()
        if not self._rx:
            return None  # what machine.UART.read returns on timeout
        n = len(self._rx) if nbytes is None else min(nbytes, len(self._rx))
        out = bytes(self._rx[:n])
        self._rx = self._rx[n:]
        return out

    def readinto(self, buf, nbytes=None):
        self._update()
        if not self._rx:
            return None
        n = len(buf) if nbytes is None else min(nbytes, len(buf))
        n = min(n, len(self._rx))
        for i in range(n):
            buf[i] = self._rx[i]
        self._rx = self._rx[n:]
        return n

    def write(self, buf):
        data = bytes(buf)
        self.written.append(data)
        if not self.present or len(data) != 7 or data[0] != 0x42 or data[1] != 0x4D:
            return len(data)
        if (sum(data[:5]) & 0xFFFF) != ((data[5] << 8) | data[6]):
            return len(data)  # a command with a bad check code is ignored
        cmd = data[2]
        value = data[4]
        if cmd == 0xE1:  # mode change; acknowledged with 42 4D 00 04 E1 <mode> <check>
            self.passive = value == 0
            ack = bytearray((0x42, 0x4D, 0x00, 0x04, 0xE1, value))
            s = sum(ack)
            ack.append((s >> 8) & 0xFF)
            ack.append(s & 0xFF)
            self._receive(bytes(ack))
            self._next_ms = self.clock.now_ms + self.interval_ms
        elif cmd == 0xE2 and self.passive and not self.asleep:
            self._emit()
        elif cmd == 0xE4:
            self.asleep = value == 0
            self._next_ms = self.clock.now_ms + self.interval_ms
        return len(data)
