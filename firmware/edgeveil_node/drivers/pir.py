"""A PIR motion sensor module (HC-SR501, AM312 and the like) on a GPIO, counted by interrupt.

The module drives its output high for a while when it sees motion; every rising edge is one
trigger. The interrupt handler only increments a counter: it allocates nothing, as MicroPython
requires of a hard interrupt handler (docs "Writing interrupt handlers"). Readers never write
the counter: each keeps the count it last saw and reports the difference, so no interrupt can be
lost between a read and a reset, and no interrupt has to be disabled. The counter wraps at 2^30
so it stays a small int on 32-bit ports (a long int would allocate inside the handler).

Two independent readers: read_into() (motion per readings interval) and triggered() (for event
frames); each sees every trigger once.

Readings (protocol/quantities.py): motion = PIR triggers since the previous read_into().
"""

from micropython import const

_DEBUG = const(False)

_Q_MOTION = const(10)  # protocol/quantities.py

_MASK = const(0x3FFFFFFF)  # 2^30 - 1: the count wraps before it leaves the small int range


class PIR:
    QUANTITIES = (_Q_MOTION,)

    def __init__(self, pin, *, hard=True):
        """pin: a machine.Pin configured as input (pull-down if the module output floats).
        hard: register a hard interrupt where the port supports it. Does not touch the pin."""
        self._pin = pin
        self._hard = hard
        self._count = 0  # written only by the interrupt handler
        self._seen_read = 0  # written only by read_into()
        self._seen_event = 0  # written only by triggered()
        self._handler = self._on_edge  # bound once: no allocation when the IRQ is (re)armed
        self.started = False

    def _on_edge(self, pin):
        # interrupt context: no allocation, no exception
        self._count = (self._count + 1) & _MASK

    def start(self):
        pin = self._pin
        trigger = type(pin).IRQ_RISING  # the port's constant (machine.Pin.IRQ_RISING)
        try:
            pin.irq(handler=self._handler, trigger=trigger, hard=self._hard)
        except TypeError:  # a port without the hard= argument
            pin.irq(handler=self._handler, trigger=trigger)
        # start from now: edges before start() are not counted
        self._seen_read = self._seen_event = self._count
        self.started = True

    def stop(self):
        self._pin.irq(handler=None)
        self.started = False

    def count(self):
        """Triggers since start(), modulo 2^30 (diagnostics)."""
        return self._count

    def triggered(self):
        """Triggers since the previous call (or since start())."""
        c = self._count  # one read: the handler may run at any point after it
        n = (c - self._seen_event) & _MASK
        self._seen_event = c
        return n

    def read_into(self, readings):
        c = self._count
        readings[_Q_MOTION] = (c - self._seen_read) & _MASK
        self._seen_read = c
