"""Battery voltage through a resistor divider on an ADC pin.

    V_battery = V_pin * ratio_num / ratio_den,   ratio = (R_top + R_bottom) / R_bottom

e.g. 100k/100k: ratio 2/1; 200k over 100k: 3/1. High-value dividers need a 100 nF capacitor
across the bottom resistor: the ADC's sample capacitor loads a 100k source.

The pin voltage is the average of `samples` conversions: ADC.read_uv() where the port has it (the
ESP32: calibrated with the chip's eFuse values, so attenuation and reference are taken care of),
otherwise ADC.read_u16() scaled by the reference voltage (the RP2040: 3.3 V on the Pico's ADC_VREF).
On the ESP32 create the ADC with 11 dB attenuation (ADC(pin, atten=ADC.ATTN_11DB)) so that the
whole 0..3.1 V range is measured. Integer arithmetic only.

Readings (protocol/quantities.py): battery in mV.
"""

from micropython import const

_DEBUG = const(False)

_Q_BATTERY = const(3)  # protocol/quantities.py

_U16_FULL = const(65535)  # read_u16() full scale, machine.ADC docs

_EIO = const(5)


class Battery:
    QUANTITIES = (_Q_BATTERY,)

    def __init__(self, adc, ratio_num=2, ratio_den=1, *, samples=8, vref_mv=3300):
        """adc: a machine.ADC. vref_mv: full scale of read_u16() when read_uv() is missing.
        Does not touch the ADC."""
        if ratio_num <= 0 or ratio_den <= 0 or samples <= 0:
            raise ValueError("Battery: ratio and samples must be positive")
        self._adc = adc
        self._num = ratio_num
        self._den = ratio_den
        self._samples = samples
        self._vref_mv = vref_mv
        self._uv = hasattr(adc, "read_uv")

    def millivolts(self):
        adc = self._adc
        n = self._samples
        total = 0
        if self._uv:
            for _ in range(n):
                total += adc.read_uv()
            avg_uv = total // n
            # uV at the pin -> mV at the battery, rounded
            return (avg_uv * self._num + 500 * self._den) // (1000 * self._den)
        for _ in range(n):
            total += adc.read_u16()
        avg = (total + n // 2) // n  # counts (keeps the products below small-int range)
        den = _U16_FULL * self._den
        return (avg * self._vref_mv * self._num + den // 2) // den

    def start(self):
        """Take one conversion: fails here, not at the first reading, if the ADC is unusable."""
        try:
            self.millivolts()
        except (OSError, ValueError) as exc:
            raise OSError(_EIO, "Battery: ADC read failed: " + str(exc)) from None

    def read_into(self, readings):
        readings[_Q_BATTERY] = self.millivolts()
