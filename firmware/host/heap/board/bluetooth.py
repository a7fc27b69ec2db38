# `bluetooth` for the heap meter's board: a BLE radio whose scans hear CROWD, the devices the
# scenario puts near the node (firmware/host/sim/ble.py delivers them through the scanner's IRQ
# handler, as the stack does, with the stack's reused buffers).
from sim.ble import SimBLE

CROWD = []  # (address, address type, RSSI, advertising data) of each advertisement


def BLE():
    return SimBLE(CROWD)
