# `bluetooth` for the heap meter's board: a BLE radio whose scans hear the crowd the scenario
# puts near the node (set_crowd, before the baseline). Each advertisement reaches the scanner's
# IRQ handler as _IRQ_SCAN_RESULT (5) with (addr_type, addr, adv_type, rssi, adv_data), then
# _IRQ_SCAN_DONE (6), inside gap_scan(). Like the C module, which reuses one tuple and two
# memoryviews for every event, delivering allocates nothing: the events are built once (the
# simulated stack of firmware/host/sim builds each one, which a board does not).
from sim.ble import IRQ_SCAN_DONE, IRQ_SCAN_RESULT, SimBLE

_EVENTS = []


def set_crowd(devices):
    """devices: (address, address type, RSSI, advertising data) of each advertisement."""
    _EVENTS[:] = [(kind, memoryview(a), 0, rssi, memoryview(adv)) for a, kind, rssi, adv in devices]


class BLE(SimBLE):
    def gap_scan(self, duration_ms, interval_us=1280000, window_us=11250, active=False):
        if not self._active:
            raise OSError(1)  # EPERM: the stack is not active
        handler = self._handler
        if duration_ms is not None:
            for event in _EVENTS:
                handler(IRQ_SCAN_RESULT, event)
        handler(IRQ_SCAN_DONE, ())
