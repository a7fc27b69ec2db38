# `time` for the heap meter's board (firmware/host/heap): MicroPython's own time functions on a
# virtual clock that moves only when the firmware sleeps or the scenario advances it, so a day
# of node life runs in seconds and every run allocates the same. The simulated chips share the
# clock (their datasheet timings are checked against it).
from sim.clock import SimClock

CLOCK = SimClock()
_EPOCH = 1798761600  # 2027-01-01 00:00:00 UTC: what time() starts at
# Ticks wrap at 2**30 like MicroPython's (TICKS_PERIOD). Masks, not `% 2**30`: 2**30 is not a
# small int, and arithmetic with it would allocate where the C functions allocate nothing.
_MASK = 0x3FFFFFFF
_HALF = 0x20000000


def ticks_ms():
    return CLOCK.now_ms & _MASK


def ticks_us():
    return (CLOCK.now_ms * 1000) & _MASK


def ticks_add(ticks, delta):
    return (ticks + delta) & _MASK


def ticks_diff(end, start):
    return ((end - start + _HALF) & _MASK) - _HALF


def sleep_ms(ms):
    CLOCK.sleep_ms(ms)


def sleep_us(us):
    CLOCK.sleep_ms(us // 1000)


def sleep(seconds):
    CLOCK.sleep_ms(int(seconds * 1000))


def time():
    return _EPOCH + CLOCK.now_ms // 1000


def advance(ms):
    """Time passing between scheduler steps (the node asleep or waiting)."""
    CLOCK.advance(ms)
