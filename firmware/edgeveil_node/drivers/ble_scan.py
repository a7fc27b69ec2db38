"""BLE scanner for people counting: which devices advertise nearby during a scan window.

Only BLE is supported. MicroPython cannot capture Wi-Fi probe requests: the ESP-IDF promiscuous
(monitor) mode is not exposed by its network module, and the RP2040 has no radio of its own.

Privacy: device addresses are personal data (a public or static address identifies a phone or a
wearable). This module keeps them in RAM for one window only; the node application sends them
only inside sealed (encrypted, authenticated) frames to its gateway and never stores them.

This is not a readings driver: it has no read_into(), because sightings are observations, not
readings (protocol/messages.py: Observations, not Readings). QUANTITIES is empty.

Uses the bluetooth module (MicroPython docs "bluetooth - low-level Bluetooth"): gap_scan()
reports every advertisement through the IRQ handler as _IRQ_SCAN_RESULT (5) with
(addr_type, addr, adv_type, rssi, adv_data), and _IRQ_SCAN_DONE (6) at the end. addr and
adv_data are memoryviews into a buffer the stack reuses for the next event, so the handler
copies the address out before returning. It copies byte by byte into preallocated storage
rather than calling bytes(addr): the handler runs for every advertisement (hundreds a second in
a busy street) and must not allocate.

Within a window each address is kept once, with its strongest RSSI. At most max_devices are
kept; further new devices are dropped and counted in `dropped` (a 512-bit filter of dropped
addresses keeps repeated advertisements of the same dropped device from being counted again;
collisions make it an undercount in very crowded places).

The scanner owns the BLE object's IRQ handler (ble.irq).
"""

from micropython import const

_DEBUG = const(False)

_IRQ_SCAN_RESULT = const(5)
_IRQ_SCAN_DONE = const(6)

# passive scan, listening all the time: interval = window = 30 ms (gap_scan arguments in us)
_INTERVAL_US = const(30000)
_WINDOW_US = const(30000)

_ADDR_LEN = const(6)
_FILTER_BITS = const(512)


class BLEScanner:
    QUANTITIES = ()  # observations, not readings: see the module docstring

    def __init__(self, ble, max_devices=64):
        """ble: a bluetooth.BLE(). Does not touch the radio."""
        if max_devices <= 0:
            raise ValueError("BLEScanner: max_devices must be positive")
        self._ble = ble
        self._max = max_devices
        self._addrs = bytearray(_ADDR_LEN * max_devices)
        self._rssi = bytearray(max_devices)  # two's complement dBm
        self._filter = bytearray(_FILTER_BITS // 8)
        self._n = 0
        self._taken = 0  # devices of the finished window already handed out by take()
        self._done = True
        self.dropped = 0  # new devices not kept in the current (or last) window
        self._handler = self._irq  # bound once
        self.started = False

    def start(self):
        """Switch the radio on and take over its IRQ handler."""
        self._ble.active(True)
        self._ble.irq(self._handler)
        self.started = True

    def _irq(self, event, data):
        if event == _IRQ_SCAN_RESULT:
            _addr_type, addr, _adv_type, rssi, _adv_data = data
            self._add(addr, rssi)
        elif event == _IRQ_SCAN_DONE:
            self._done = True

    def _add(self, addr, rssi):
        # called for every advertisement: no allocation (byte loops, no slices)
        store = self._addrs
        last = addr[_ADDR_LEN - 1]
        n = self._n
        if rssi < -128:
            rssi = -128
        elif rssi > 127:
            rssi = 127
        for i in range(n):
            base = i * _ADDR_LEN
            if store[base + _ADDR_LEN - 1] != last:  # cheap reject first
                continue
            j = 0
            while j < _ADDR_LEN - 1 and store[base + j] == addr[j]:
                j += 1
            if j == _ADDR_LEN - 1:
                old = self._rssi[i]
                if old > 127:
                    old -= 256
                if rssi > old:
                    self._rssi[i] = rssi & 0xFF
                return
        if n < self._max:
            base = n * _ADDR_LEN
            for j in range(_ADDR_LEN):
                store[base + j] = addr[j]  # the copy out of the reused memoryview
            self._rssi[n] = rssi & 0xFF
            self._n = n + 1
            return
        # full: count each dropped address once (approximately: a small bit filter)
        h = 0
        for j in range(_ADDR_LEN):
            h = ((h << 3) ^ (h >> 6) ^ addr[j]) & (_FILTER_BITS - 1)
        byte = h >> 3
        bit = 1 << (h & 7)
        if not self._filter[byte] & bit:
            self._filter[byte] |= bit
            self.dropped += 1

    def start_window(self, duration_ms):
        """Forget the previous window and scan for duration_ms (passive scan)."""
        if not self.started:
            self.start()
        self._n = self._taken = 0
        self.dropped = 0
        f = self._filter
        for i in range(len(f)):
            f[i] = 0
        self._done = False  # before gap_scan: results may arrive before it returns
        self._ble.gap_scan(duration_ms, _INTERVAL_US, _WINDOW_US, False)

    def stop(self):
        """End the window early (the stack then reports _IRQ_SCAN_DONE)."""
        self._ble.gap_scan(None)

    def window_done(self):
        return self._done

    def waiting(self):
        """Devices of the finished window not taken yet."""
        return self._n - self._taken

    def take(self, limit=None):
        """Up to `limit` (default: all) devices of the window not taken yet, as a list of
        (address bytes, rssi); once all are taken they are cleared. Call after window_done():
        this allocates, the IRQ handler does not. Taking a few at a time keeps a crowd's
        addresses in the preallocated buffer instead of the heap until each frame is sealed."""
        out = []
        store = self._addrs
        end = self._n if limit is None else min(self._n, self._taken + limit)
        for i in range(self._taken, end):
            base = i * _ADDR_LEN
            r = self._rssi[i]
            out.append((bytes(store[base : base + _ADDR_LEN]), r - 256 if r > 127 else r))
        self._taken = end
        if end == self._n:
            self._n = self._taken = 0
        if _DEBUG:
            print("BLEScanner:", len(out), "devices,", self.dropped, "dropped")
        return out
