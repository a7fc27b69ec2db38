"""A simulated bluetooth.BLE for the scanner: active(), irq(), gap_scan().

    ble = SimBLE([(b"\\xc0\\x01\\x02\\x03\\x04\\x05", 1, -60, b"\\x02\\x01\\x06"), ...])
    scanner = BLEScanner(ble); scanner.start_window(10000)

When gap_scan() starts a scan, every configured (addr, addr_type, rssi, adv_data) is delivered
to the IRQ handler as _IRQ_SCAN_RESULT (5) with data (addr_type, addr, adv_type, rssi, adv_data),
then _IRQ_SCAN_DONE (6) with (). Like MicroPython, addr and adv_data are memoryviews into one
buffer that is overwritten for the next result (and scribbled over after the scan), so a handler
that keeps the memoryview instead of copying sees wrong addresses. List a device several times
to have it advertise several times. deliver="sync" runs the events inside gap_scan();
deliver="tick" runs one event per tick(). Pure Python that also runs under MicroPython.
"""

IRQ_SCAN_RESULT = 5
IRQ_SCAN_DONE = 6
ADV_IND = 0


class SimBLE:
    def __init__(self, devices=(), deliver="sync"):
        self.devices = list(devices)
        self.deliver = deliver
        self._active = False
        self._handler = None
        self._addr_buf = bytearray(6)
        self._adv_buf = bytearray(31)
        self._queue = []
        self.scans = []  # (duration_ms, interval_us, window_us, active) of each gap_scan

    def active(self, flag=None):
        if flag is None:
            return self._active
        self._active = bool(flag)
        return None

    def irq(self, handler):
        self._handler = handler

    def gap_scan(self, duration_ms, interval_us=1280000, window_us=11250, active=False):
        if not self._active:
            raise OSError(1)  # EPERM: the stack is not active
        if duration_ms is None:  # stop scanning
            self._queue = [None]
        else:
            self.scans.append((duration_ms, interval_us, window_us, active))
            self._queue = list(self.devices)
            self._queue.append(None)
        if self.deliver == "sync":
            while self._queue:
                self.tick()

    def tick(self):
        """Deliver the next event; False when none is pending."""
        if not self._queue:
            return False
        item = self._queue.pop(0)
        if item is None:
            for i in range(len(self._addr_buf)):  # the stack reuses its buffers
                self._addr_buf[i] = 0xEE
            if self._handler is not None:
                self._handler(IRQ_SCAN_DONE, ())
            return True
        addr, addr_type, rssi, adv_data = item
        self._addr_buf[:] = addr
        n = len(adv_data)
        self._adv_buf[:n] = adv_data
        if self._handler is not None:
            self._handler(
                IRQ_SCAN_RESULT,
                (
                    addr_type,
                    memoryview(self._addr_buf),
                    ADV_IND,
                    rssi,
                    memoryview(self._adv_buf)[:n],
                ),
            )
        return True
