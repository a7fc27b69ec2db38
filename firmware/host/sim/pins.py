"""Simulated machine.Pin and machine.ADC for the PIR and battery drivers.

    pin = SimPin()
    pir = PIR(pin); pir.start()
    pin.pulse(3)              # three rising edges: the handler runs like an interrupt

    adc = SimADC(2000)        # 2000 mV at the pin; read_uv() and read_u16() (like the ESP32)
    adc = SimADCU16(2000)     # read_u16() only (like the RP2040)

Pure Python that also runs under MicroPython.
"""


class SimPin:
    IN = 0
    OUT = 1
    PULL_DOWN = 2
    IRQ_FALLING = 4
    IRQ_RISING = 8  # values as on the rp2 port; drivers take them from the class

    def __init__(self, value=0):
        self._value = value
        self.handler = None
        self.trigger = 0
        self.hard = False
        self.edges = 0

    def value(self, v=None):
        if v is None:
            return self._value
        v = 1 if v else 0
        old = self._value
        self._value = v
        if old == 0 and v == 1:
            self.edges += 1
            if self.handler is not None and self.trigger & self.IRQ_RISING:
                self.handler(self)
        elif old == 1 and v == 0 and self.handler is not None and self.trigger & self.IRQ_FALLING:
            self.handler(self)
        return None

    def irq(self, handler=None, trigger=IRQ_FALLING | IRQ_RISING, hard=False):
        self.handler = handler
        self.trigger = trigger if handler is not None else 0
        self.hard = hard
        return self

    def pulse(self, n=1):
        """n rising (and falling) edges, as a PIR output going high and low again."""
        for _ in range(n):
            self.value(1)
            self.value(0)


class SimADCU16:
    """An ADC with read_u16() only: `millivolts` at the pin, `vref_mv` full scale."""

    def __init__(self, millivolts=0, vref_mv=3300):
        self.millivolts = millivolts
        self.vref_mv = vref_mv
        self.reads = 0

    def read_u16(self):
        self.reads += 1
        v = round(self.millivolts * 65535 / self.vref_mv)
        return 0 if v < 0 else (65535 if v > 65535 else v)


class SimADC(SimADCU16):
    """An ADC with read_uv() as well (calibrated microvolts, like the ESP32 port)."""

    def read_uv(self):
        self.reads += 1
        return round(self.millivolts * 1000)
