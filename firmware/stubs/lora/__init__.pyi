# Type stub for the subset of micropython-lib's `lora` package (micropython/lora in
# micropython-lib: lora, lora-sync, lora-sx127x, lora-sx126x) that the node firmware uses. The
# package ships no stubs; tests/test_firmware_types.py puts this directory on mypy's path so that
# a misspelt call or keyword on the modem is an error. API: micropython/lora/README.md.

from typing import Any

from machine import SPI, Pin

class RxPacket(bytearray):
    ticks_ms: int
    snr: int  # dB x 4
    rssi: int  # dBm
    valid_crc: bool

class _SyncModem:
    rx_crc_error: bool
    def configure(self, lora_cfg: dict[str, Any]) -> None: ...
    def send(self, packet: bytes | bytearray, tx_at_ms: int | None = None) -> int: ...
    def recv(
        self,
        timeout_ms: int | None = None,
        rx_length: int = 0xFF,
        rx_packet: RxPacket | None = None,
    ) -> RxPacket | None: ...
    def get_time_on_air_us(self, payload_len: int) -> int: ...
    def standby(self) -> None: ...
    def sleep(self) -> None: ...

class SX1276(_SyncModem):
    def __init__(
        self,
        spi: SPI,
        cs: Pin,
        dio0: Pin | None = None,
        dio1: Pin | None = None,
        reset: Pin | None = None,
        lora_cfg: dict[str, Any] | None = None,
        ant_sw: object | None = None,
    ) -> None: ...

class SX1262(_SyncModem):
    def __init__(
        self,
        spi: SPI,
        cs: Pin,
        busy: Pin,
        dio1: Pin | None = None,
        dio2_rf_sw: bool = True,
        dio3_tcxo_millivolts: int | None = None,
        dio3_tcxo_start_time_us: int = 1000,
        reset: Pin | None = None,
        lora_cfg: dict[str, Any] | None = None,
        ant_sw: object | None = None,
    ) -> None: ...
