"""What the Sensirion chip models share: the CRC-8 and the word-with-CRC answer format.

CRC-8 with polynomial 0x31, initialisation 0xFF, no reflection, no final XOR (SHT4x datasheet
section 4.4, SCD4x datasheet section 3.11; both give CRC(0xBEEF) = 0x92). Written independently
of the driver's copy so that a test compares two implementations. Pure Python that also runs
under MicroPython.
"""


def crc8(data):
    crc = 0xFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def words_with_crc(words):
    """Big-endian 16-bit words, each followed by its CRC."""
    out = bytearray()
    for w in words:
        pair = bytes([(w >> 8) & 0xFF, w & 0xFF])
        out += pair
        out.append(crc8(pair))
    return bytes(out)


def clamp16(x):
    return 0 if x < 0 else (0xFFFF if x > 0xFFFF else x)
