# The registry of measured quantities: what a readings frame can carry.
#
# A reading travels as a scaled integer n; its value is n * 10**exponent in the SenML unit
# (RFC 8428 section 12.1, units registered with IANA). Floats never cross the wire: MicroPython
# cannot encode them exactly and integers are smaller in CBOR.
#
# Resolutions are chosen to be at least as fine as Cayenne LPP's for the same quantity and as
# fine as the accuracy of the best supported sensor, not finer: every extra digit costs a byte
# on a 51-byte LoRa frame.
#
# Ids are stable forever: a retired quantity keeps its id. Ids must stay below 64 (the readings
# bitmask is a CBOR uint of at most 64 bits: MAX_QUANTITY_ID in protocol/messages.py). SPEC.md's
# registry table is generated from this table (scripts/spec_tables.py; a test fails when they
# differ).

# (id, name, SenML unit, decimal exponent, resolution for humans, typical sensors)
QUANTITIES = (
    (0, "temperature", "Cel", -1, "0.1 °C", "BME280, SHT4x, SCD4x"),
    (1, "humidity", "%RH", -1, "0.1 %RH", "BME280, SHT4x, SCD4x"),
    (2, "pressure", "Pa", 1, "10 Pa = 0.1 hPa", "BME280"),
    (3, "battery", "V", -3, "1 mV", "ADC through a divider"),
    (4, "pm1", "kg/m3", -9, "1 µg/m³", "PMS5003"),
    (5, "pm2_5", "kg/m3", -9, "1 µg/m³", "PMS5003"),
    (6, "pm10", "kg/m3", -9, "1 µg/m³", "PMS5003"),
    (7, "co2", "/", -6, "1 ppm", "SCD4x"),
    (8, "noise", "Bspl", -2, "0.1 dB SPL", "sound level meter module"),
    (9, "illuminance", "lx", 0, "1 lx", "light sensor"),
    (10, "motion", "count", 0, "1 PIR trigger per interval", "PIR"),
    (11, "people", "count", 0, "1 person", "people counter"),
)

_BY_ID = {q[0]: q for q in QUANTITIES}
_BY_NAME = {q[1]: q[0] for q in QUANTITIES}


def quantity_id(name: str) -> int:
    """The id of a registered quantity name; KeyError for an unknown name."""
    return _BY_NAME[name]


def quantity_name(qid: int) -> str:
    """The registered name, or "q<id>" for an id this registry does not know (a newer node)."""
    q = _BY_ID.get(qid)
    return q[1] if q is not None else "q" + str(qid)


def senml_unit(qid: int) -> str:
    return _BY_ID[qid][2]


def exponent(qid: int) -> int:
    return _BY_ID[qid][3]


def is_known(qid: int) -> bool:
    return qid in _BY_ID
