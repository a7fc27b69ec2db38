# LoRa time on air and frame size limits.
#
# Time on air is Semtech's formula, SX1276/77/78/79 datasheet rev. 7, section 4.1.1.7 "Time on
# air" (the SX1261/2 datasheet section 6.1.4 gives the same result for SF7..SF12):
#
#   T_sym      = 2^SF / BW
#   n_payload  = 8 + max(ceil((8 PL - 4 SF + 28 + 16 CRC - 20 IH) / (4 (SF - 2 DE))) (CR + 4), 0)
#   T_packet   = (n_preamble + 4.25 + n_payload) T_sym
#
# where CR + 4 is what this project (like micropython-lib's `lora`) calls coding_rate (5..8 for
# 4/5..4/8), IH = 1 in implicit header mode, and DE = 1 when low data rate optimisation is on.
# Section 4.1.1.6 ("Low Data Rate Optimization") mandates it when a symbol exceeds 16 ms (SF11
# and SF12 at 125 kHz, SF12 at 250 kHz; no standard bandwidth gives exactly 16 ms).
# micropython-lib's drivers switch it on from 16 ms, so the formula uses their rule.
# Integer arithmetic throughout: 4 x the symbol count is whole, and the results equal Semtech's
# calculator to the microsecond (tests/test_lora_firmware.py). Pure functions: the same numbers
# on MicroPython and CPython (the gateway's simulator uses them as well).

try:
    from micropython import const
except ImportError:  # CPython: the gateway and the emulators use this module as it is

    def const(value):  # type: ignore[misc]  # MicroPython's const() is the identity
        return value

_LDRO_SYMBOL_US = const(16000)  # SX1276 datasheet 4.1.1.6: LowDataRateOptimize

# The largest frame this project sends per spreading factor in EU868: LoRaWAN Regional Parameters
# RP002-1.0.4 (EU863-870, table "Maximum payload size") allows an application payload N of
# 51 bytes at DR0-DR2 (SF12-SF10), 115 at DR3 (SF9) and 222 at DR4-DR7 (SF8, SF7) without
# FOpts. We apply N to our whole radio payload, the sealed frame (LoRa carries it raw, SPEC.md
# section 1): a LoRaWAN packet of that size is 13 bytes longer (MHDR, FHDR, FPort, MIC), so a node
# of ours never holds the channel longer than the largest LoRaWAN uplink at the same data rate,
# and every limit stays below the 255-byte FIFO of both chips. Index: SF - 7.
_MAX_FRAME_BY_SF = (222, 222, 115, 51, 51, 51)


def symbol_time_us(sf, bw_hz):
    """Length of one LoRa symbol in microseconds (exact for 125, 250 and 500 kHz)."""
    return (1 << sf) * 1000000 // bw_hz


def low_data_rate_optimize(sf, bw_hz):
    return symbol_time_us(sf, bw_hz) >= _LDRO_SYMBOL_US


def symbols_x4(  # noqa: PLR0917 - the datasheet formula's own parameters
    payload_len, sf, bw_hz, coding_rate=5, preamble_len=8, explicit_header=True, crc=True
):
    """4 x the number of symbols of a packet (the preamble's 4.25 makes it fractional)."""
    bits = 8 * payload_len - 4 * sf + 28 + (16 if crc else 0) - (0 if explicit_header else 20)
    bits_per_symbol = 4 * (sf - 2) if low_data_rate_optimize(sf, bw_hz) else 4 * sf
    payload_symbols = 0
    if bits > 0:
        payload_symbols = (bits + bits_per_symbol - 1) // bits_per_symbol * coding_rate
    return 4 * (preamble_len + 8 + payload_symbols) + 17


def time_on_air_us(  # noqa: PLR0917 - the datasheet formula's own parameters
    payload_len, sf, bw_hz, coding_rate=5, preamble_len=8, explicit_header=True, crc=True
):
    """Time on air of one packet in microseconds (Semtech's formula, see the top of the file)."""
    n4 = symbols_x4(payload_len, sf, bw_hz, coding_rate, preamble_len, explicit_header, crc)
    return symbol_time_us(sf, bw_hz) * n4 // 4


def max_frame(sf):
    """The largest sealed frame a node sends at this spreading factor (7..12) in EU868."""
    if not 7 <= sf <= 12:
        raise ValueError("spreading factor must be 7..12")
    return _MAX_FRAME_BY_SF[sf - 7]
