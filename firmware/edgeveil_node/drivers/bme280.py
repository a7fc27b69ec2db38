"""Bosch BME280 temperature, humidity and pressure sensor over I2C.

Section numbers refer to the BME280 datasheet, BST-BME280-DS002 (rev. 1.6 and later keep the
numbering). The chip runs in forced mode with 1x oversampling and the IIR filter off, the
"weather monitoring" setting of section 3.5.1: one measurement per read, then the chip sleeps
(0.1 uA), which suits readings minutes apart.

Compensation is the datasheet's integer code (section 4.2.3): 32-bit for temperature and
humidity, the 64-bit variant for pressure. Python integers are exact, so the results are bit for
bit those of the C code. The 64-bit intermediates become long integers on a 32-bit port (the
ESP32 and RP2040 builds have them): about 1 KB of short-lived heap objects per read (measured on
a 32-bit build), the only allocation in the read path; the bus transfers use preallocated
buffers.

Readings (protocol/quantities.py): temperature 0.1 degC, humidity 0.1 %RH, pressure 10 Pa.
"""

from micropython import const

from ._util import sleep_ms as _default_sleep_ms

_DEBUG = const(False)

# quantity ids, protocol/quantities.py
_Q_TEMPERATURE = const(0)
_Q_HUMIDITY = const(1)
_Q_PRESSURE = const(2)

# I2C address: 0x76 with SDO to GND, 0x77 with SDO to VDDIO (section 6.2)
ADDRESS = const(0x76)

# registers, memory map section 5.3
_REG_CALIB00 = const(0x88)  # calib00..calib25 = 0x88..0xA1 (section 4.2.2, Table 16)
_CALIB00_LEN = const(26)
_REG_ID = const(0xD0)  # section 5.4.1: chip_id, reads 0x60
_REG_RESET = const(0xE0)  # section 5.4.2: write 0xB6 for a power-on reset
_REG_CALIB26 = const(0xE1)  # calib26..calib32 = 0xE1..0xE7 (Table 16)
_CALIB26_LEN = const(7)
_REG_CTRL_HUM = const(0xF2)  # section 5.4.3: osrs_h[2:0]; effective after a ctrl_meas write
_REG_STATUS = const(0xF3)  # section 5.4.4
_REG_CTRL_MEAS = const(0xF4)  # section 5.4.5: osrs_t[7:5] osrs_p[4:2] mode[1:0]
_REG_CONFIG = const(0xF5)  # section 5.4.6: t_sb[7:5] filter[4:2] spi3w_en[0]
_REG_DATA = const(0xF7)  # sections 5.4.7-5.4.9: press 0xF7..F9, temp 0xFA..FC, hum 0xFD..FE
_DATA_LEN = const(8)  # one burst read 0xF7..0xFE (section 4: burst read, shadowed registers)

_CHIP_ID = const(0x60)  # section 5.4.1
_CHIP_ID_BMP280 = const(0x58)  # a BMP280 answers at the same addresses without humidity
_RESET_WORD = const(0xB6)  # section 5.4.2
_STATUS_MEASURING = const(0x08)  # section 5.4.4: bit 3 set while a conversion runs
_STATUS_IM_UPDATE = const(0x01)  # section 5.4.4: bit 0 set while NVM data are copied
_MODE_FORCED = const(0x01)  # section 5.4.5: mode 01 (or 10) = forced mode
_STARTUP_MS = const(2)  # Table 1: t_startup 2 ms (also after a soft reset)
_POLL_TRIES = const(20)  # status polls, 1 ms apart, after the computed measurement time
_SKIPPED_20 = const(0x80000)  # section 5.4.7/5.4.8: reset value / measurement skipped
_SKIPPED_16 = const(0x8000)  # section 5.4.9

# oversampling factor -> osrs code, sections 5.4.3 and 5.4.5: x1=001 x2=010 x4=011 x8=100 x16=101
_OSRS = {1: 1, 2: 2, 4: 3, 8: 4, 16: 5}

_ENODEV = const(19)
_EIO = const(5)
_ETIMEDOUT = const(110)


def _s16(lsb, msb):
    v = (msb << 8) | lsb
    return v - 0x10000 if v & 0x8000 else v


def _s8(v):
    return v - 0x100 if v & 0x80 else v


def measurement_time_ms(osrs_t, osrs_p, osrs_h):
    """Maximum measurement time in whole ms (section 9.1, Appendix B):
    t_measure,max = 1.25 + 2.3*osrs_t + (2.3*osrs_p + 0.575) + (2.3*osrs_h + 0.575) ms."""
    us = 1250 + 2300 * osrs_t + 2300 * osrs_p + 575 + 2300 * osrs_h + 575
    return (us + 999) // 1000


class BME280:
    QUANTITIES = (_Q_TEMPERATURE, _Q_HUMIDITY, _Q_PRESSURE)

    def __init__(self, i2c, address=ADDRESS, *, osrs_t=1, osrs_p=1, osrs_h=1, sleep_ms=None):
        """osrs_*: oversampling factor 1, 2, 4, 8 or 16 (section 3.4). Does not touch the bus."""
        if osrs_t not in _OSRS or osrs_p not in _OSRS or osrs_h not in _OSRS:
            raise ValueError("BME280: oversampling must be 1, 2, 4, 8 or 16")
        self._i2c = i2c
        self._addr = address
        self._sleep_ms = sleep_ms or _default_sleep_ms
        self._ctrl_hum = _OSRS[osrs_h]
        self._ctrl_meas = (_OSRS[osrs_t] << 5) | (_OSRS[osrs_p] << 2)  # mode bits 00 = sleep
        self._meas_ms = measurement_time_ms(osrs_t, osrs_p, osrs_h)
        # preallocated buffers, reused on every read
        self._b1 = bytearray(1)
        self._data = bytearray(_DATA_LEN)
        self._calib = bytearray(_CALIB00_LEN)  # also holds calib26..32 briefly during start()
        self.started = False
        self.adc_p = self.adc_t = self.adc_h = 0  # last raw values, see measure_raw()
        # trimming parameters (section 4.2.2, Table 16), set by start() or load_calibration()
        self.dig_T1 = self.dig_T2 = self.dig_T3 = 0
        self.dig_P1 = self.dig_P2 = self.dig_P3 = self.dig_P4 = self.dig_P5 = 0
        self.dig_P6 = self.dig_P7 = self.dig_P8 = self.dig_P9 = 0
        self.dig_H1 = self.dig_H2 = self.dig_H3 = self.dig_H4 = self.dig_H5 = self.dig_H6 = 0

    # -- bus helpers ----------------------------------------------------------------------

    def _write(self, reg, value):
        b1 = self._b1
        b1[0] = value
        self._i2c.writeto_mem(self._addr, reg, b1)

    def _read1(self, reg):
        self._i2c.readfrom_mem_into(self._addr, reg, self._b1)
        return self._b1[0]

    # -- set-up ---------------------------------------------------------------------------

    def start(self):
        """Check the chip id, reset the chip, load its trimming parameters, configure it."""
        try:
            chip_id = self._read1(_REG_ID)
        except OSError:
            raise OSError(
                _ENODEV,
                "BME280: no answer at I2C address "
                + hex(self._addr)
                + " (check wiring and power; the address is 0x76 with SDO low, 0x77 high)",
            ) from None
        if chip_id != _CHIP_ID:
            what = " (a BMP280: it has no humidity sensor)" if chip_id == _CHIP_ID_BMP280 else ""
            raise OSError(
                _ENODEV,
                "BME280: wrong chip id "
                + hex(chip_id)
                + " at "
                + hex(self._addr)
                + ", expected 0x60"
                + what,
            )
        self._write(_REG_RESET, _RESET_WORD)  # section 5.4.2: same as power-on reset
        self._sleep_ms(_STARTUP_MS)
        for _ in range(_POLL_TRIES):  # section 5.4.4: im_update clears when NVM is copied
            if not self._read1(_REG_STATUS) & _STATUS_IM_UPDATE:
                break
            self._sleep_ms(1)
        else:
            raise OSError(_ETIMEDOUT, "BME280: NVM copy after reset did not finish")
        c = self._calib
        self._i2c.readfrom_mem_into(self._addr, _REG_CALIB00, c)
        self._load_tp(c)
        self.dig_H1 = c[25]  # 0xA1, unsigned char
        h = memoryview(c)[:_CALIB26_LEN]
        self._i2c.readfrom_mem_into(self._addr, _REG_CALIB26, h)
        self._load_h(h)
        self._write(_REG_CONFIG, 0)  # section 5.4.6: filter off (3.5.1); only written in sleep
        self._write(_REG_CTRL_HUM, self._ctrl_hum)
        self._write(_REG_CTRL_MEAS, self._ctrl_meas)  # sleep mode, oversampling latched
        self.started = True
        if _DEBUG:
            print("BME280: calibration T", self.dig_T1, self.dig_T2, self.dig_T3)

    def _load_tp(self, c):
        # Table 16: 0x88..0x9F, little endian words; T1 and P1 unsigned, the rest signed
        self.dig_T1 = c[0] | (c[1] << 8)
        self.dig_T2 = _s16(c[2], c[3])
        self.dig_T3 = _s16(c[4], c[5])
        self.dig_P1 = c[6] | (c[7] << 8)
        self.dig_P2 = _s16(c[8], c[9])
        self.dig_P3 = _s16(c[10], c[11])
        self.dig_P4 = _s16(c[12], c[13])
        self.dig_P5 = _s16(c[14], c[15])
        self.dig_P6 = _s16(c[16], c[17])
        self.dig_P7 = _s16(c[18], c[19])
        self.dig_P8 = _s16(c[20], c[21])
        self.dig_P9 = _s16(c[22], c[23])

    def _load_h(self, h):
        # Table 16: 0xE1/0xE2 dig_H2 (signed short), 0xE3 dig_H3 (unsigned char),
        # 0xE4 / 0xE5[3:0] dig_H4 [11:4]/[3:0], 0xE5[7:4] / 0xE6 dig_H5 [3:0]/[11:4],
        # 0xE7 dig_H6 (signed char). H4 and H5 are 12-bit signed: the whole bytes carry the sign.
        self.dig_H2 = _s16(h[0], h[1])
        self.dig_H3 = h[2]
        self.dig_H4 = (_s8(h[3]) * 16) | (h[4] & 0x0F)
        self.dig_H5 = (_s8(h[5]) * 16) | (h[4] >> 4)
        self.dig_H6 = _s8(h[6])

    def load_calibration(self, calib00_25, calib26_32):
        """Set the trimming parameters from register images (0x88..0xA1, 0xE1..0xE7)."""
        self._load_tp(calib00_25)
        self.dig_H1 = calib00_25[25]
        self._load_h(calib26_32)

    # -- compensation, section 4.2.3 ------------------------------------------------------

    def t_fine(self, adc_t):
        """Fine temperature (1/5120 degC), from BME280_compensate_T_int32 (section 4.2.3)."""
        t1 = self.dig_T1
        var1 = (((adc_t >> 3) - (t1 << 1)) * self.dig_T2) >> 11
        d = (adc_t >> 4) - t1
        var2 = (((d * d) >> 12) * self.dig_T3) >> 14
        return var1 + var2

    @staticmethod
    def temperature_centi(t_fine):
        """Temperature in 0.01 degC: T = (t_fine * 5 + 128) >> 8 (section 4.2.3)."""
        return (t_fine * 5 + 128) >> 8

    def compensate_pressure(self, adc_p, t_fine):
        """Pressure in Pa as Q24.8 (Pa * 256), BME280_compensate_P_int64 (section 4.2.3).
        Returns 0 where the C code would divide by zero."""
        var1 = t_fine - 128000
        var2 = var1 * var1 * self.dig_P6
        var2 = var2 + ((var1 * self.dig_P5) << 17)
        var2 = var2 + (self.dig_P4 << 35)
        var1 = ((var1 * var1 * self.dig_P3) >> 8) + ((var1 * self.dig_P2) << 12)
        var1 = (((1 << 47) + var1) * self.dig_P1) >> 33
        if var1 == 0:
            return 0  # avoid exception caused by division by zero (datasheet comment)
        p = 1048576 - adc_p
        n = ((p << 31) - var2) * 3125
        p = n // var1 if n >= 0 else -((-n) // var1)  # C division truncates towards zero
        var1 = (self.dig_P9 * (p >> 13) * (p >> 13)) >> 25
        var2 = (self.dig_P8 * p) >> 19
        return ((p + var1 + var2) >> 8) + (self.dig_P7 << 4)

    def compensate_humidity(self, adc_h, t_fine):
        """Humidity in %RH as Q22.10 (%RH * 1024), bme280_compensate_H_int32 (section 4.2.3)."""
        v = t_fine - 76800
        v = ((((adc_h << 14) - (self.dig_H4 << 20) - (self.dig_H5 * v)) + 16384) >> 15) * (
            (
                (
                    ((((v * self.dig_H6) >> 10) * (((v * self.dig_H3) >> 11) + 32768)) >> 10)
                    + 2097152
                )
                * self.dig_H2
                + 8192
            )
            >> 14
        )
        v = v - (((((v >> 15) * (v >> 15)) >> 7) * self.dig_H1) >> 4)
        if v < 0:
            v = 0
        elif v > 419430400:
            v = 419430400
        return v >> 12

    # -- reading --------------------------------------------------------------------------

    def measure_raw(self):
        """One forced-mode measurement (section 3.3.2); leaves adc_P, adc_T, adc_H in
        self.adc_p, self.adc_t, self.adc_h (no tuple is allocated)."""
        self._write(_REG_CTRL_HUM, self._ctrl_hum)  # rewritten: survives a sensor brown-out
        self._write(_REG_CTRL_MEAS, self._ctrl_meas | _MODE_FORCED)
        self._sleep_ms(self._meas_ms)  # section 9.1 maximum time
        for _ in range(_POLL_TRIES):
            if not self._read1(_REG_STATUS) & _STATUS_MEASURING:
                break
            self._sleep_ms(1)
        else:
            raise OSError(_ETIMEDOUT, "BME280: measurement did not finish")
        d = self._data
        self._i2c.readfrom_mem_into(self._addr, _REG_DATA, d)
        # 20-bit values msb[19:12] lsb[11:4] xlsb[7:4] (sections 5.4.7, 5.4.8); hum 16-bit (5.4.9)
        self.adc_p = (d[0] << 12) | (d[1] << 4) | (d[2] >> 4)
        self.adc_t = (d[3] << 12) | (d[4] << 4) | (d[5] >> 4)
        self.adc_h = (d[6] << 8) | d[7]

    def read_into(self, readings):
        if not self.started:
            raise OSError(_EIO, "BME280: start() has not succeeded")
        self.measure_raw()
        adc_p = self.adc_p
        adc_t = self.adc_t
        adc_h = self.adc_h
        # (not `in (...)`: that would build a tuple on every read)
        if adc_t == _SKIPPED_20 or adc_p == _SKIPPED_20 or adc_h == _SKIPPED_16:  # noqa: PLR1714
            # reset values: the chip lost its configuration (brown-out) or did not measure
            raise OSError(_EIO, "BME280: no measurement data (chip reset?)")
        t_fine = self.t_fine(adc_t)
        p = self.compensate_pressure(adc_p, t_fine)
        if p == 0:
            raise OSError(_EIO, "BME280: invalid pressure trimming (dig_P1 = 0?)")
        # round half up to the registry resolution
        readings[_Q_TEMPERATURE] = (self.temperature_centi(t_fine) + 5) // 10
        readings[_Q_PRESSURE] = (p + 1280) // 2560  # Q24.8 Pa -> 10 Pa
        readings[_Q_HUMIDITY] = (self.compensate_humidity(adc_h, t_fine) * 10 + 512) >> 10
