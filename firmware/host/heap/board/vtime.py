# `time` for the heap meter's board (firmware/host/heap): MicroPython's own time functions on a
# virtual clock that moves only when the firmware sleeps or the scenario advances it, so a day
# of node life runs in seconds and every run allocates the same. The simulated chips share the
# clock (their datasheet timings are checked against it).
from sim.clock import SimClock

CLOCK = SimClock()
_EPOCH = 1798761600  # 2027-01-01 00:00:00 UTC: what time() starts at
_PERIOD = 1 << 30  # ticks wrap like MicroPython's (TICKS_PERIOD)


def ticks_ms():
    return CLOCK.now_ms % _PERIOD


def ticks_us():
    return (CLOCK.now_ms * 1000) % _PERIOD


def ticks_add(ticks, delta):
    return (ticks + delta) % _PERIOD


def ticks_diff(end, start):
    half = _PERIOD // 2
    return ((end - start + half) % _PERIOD) - half


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
