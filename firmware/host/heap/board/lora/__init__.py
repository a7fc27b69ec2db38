# micropython-lib's `lora` package for the heap meter's board: the modem API LoRaLink uses
# (configure, send, recv, standby, sleep), with no radio behind it. Uplinks are counted; a
# downlink the scenario queues in DOWNLINKS is heard in the next receive window. Only the
# firmware's own heap is measured here: micropython-lib's drivers (lora-sync and a chip
# package) cost heap of their own on a board, measured separately (docs/firmware/ram.md).
import time


class RxPacket(bytearray):
    def __init__(self, payload):
        super().__init__(payload)
        self.ticks_ms = time.ticks_ms()
        self.rssi = -90
        self.snr = 20
        self.valid_crc = True


DOWNLINKS = []
SENT = [0]


class _Modem:
    def __init__(self, *args, **kwargs):
        self.cfg = kwargs.get("lora_cfg")

    def configure(self, lora_cfg):
        self.cfg = lora_cfg

    def send(self, packet, tx_at_ms=None):
        SENT[0] += 1
        return time.ticks_ms()

    def recv(self, timeout_ms=None, rx_length=0xFF, rx_packet=None):
        return RxPacket(DOWNLINKS.pop(0)) if DOWNLINKS else None

    def standby(self):
        pass

    def sleep(self):
        pass


class SX1276(_Modem):
    pass


class SX1262(_Modem):
    pass
