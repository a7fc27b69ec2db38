"""Virtual time for the simulated chips: it moves only when someone sleeps on it.

Pass `clock.sleep_ms` to a driver as its sleep_ms argument: the driver's waits then advance the
simulated chips' time instead of the wall clock, so tests are fast and timing is checked (a chip
model answers with a NACK when it is read before its datasheet duration has passed).

Pure Python that also runs under MicroPython.
"""


class SimClock:
    def __init__(self, now_ms=0):
        self.now_ms = now_ms
        self.slept_ms = 0  # total time drivers waited

    def sleep_ms(self, ms):
        if ms < 0:
            raise ValueError("negative sleep")
        self.now_ms += ms
        self.slept_ms += ms

    def advance(self, ms):
        """Time passing outside the driver (between readings)."""
        self.now_ms += ms

    def ticks_ms(self):
        return self.now_ms
