# Helpers shared by the drivers: the Sensirion CRC-8 and the default sleep. Nothing here
# allocates after import.

import time


def sleep_ms(ms):
    """time.sleep_ms, looked up at each call: a host emulator (firmware/host) installs its own
    after the drivers are imported. Drivers take a sleep_ms argument to replace it (tests)."""
    time.sleep_ms(ms)


def crc8(buf, start, n=2):
    """Sensirion CRC-8 over buf[start:start + n] without slicing.

    Polynomial 0x31 (x^8 + x^5 + x^4 + 1), initialisation 0xFF, no reflection, no final XOR:
    SHT4x datasheet section 4.4 "Checksum Calculation" and SCD4x datasheet section 3.11
    "Checksum Calculation" (both give CRC(0xBEEF) = 0x92 as the example).
    """
    crc = 0xFF
    for i in range(start, start + n):
        crc ^= buf[i]
        for _ in range(8):
            crc = (((crc << 1) ^ 0x31) if crc & 0x80 else (crc << 1)) & 0xFF
    return crc
