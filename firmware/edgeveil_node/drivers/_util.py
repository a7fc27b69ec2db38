# Helpers shared by the drivers: the Sensirion CRC-8 and a millisecond sleep that also exists on
# CPython (host runs). Nothing here allocates after import.

try:
    from time import sleep_ms
except ImportError:  # CPython (firmware/host, tests): time has no sleep_ms
    from time import sleep as _sleep

    def sleep_ms(ms):
        _sleep(ms / 1000)


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
            if crc & 0x80:
                crc = ((crc << 1) ^ 0x31) & 0xFF
            else:
                crc = (crc << 1) & 0xFF
    return crc
