# `time` of the emulated board: the interpreter's own time module, with sleeps cut into short
# slices so a Ctrl-C typed on the serial line interrupts a sleeping program, as the UART
# interrupt does on a real board (the emulator cannot signal a sleeping wasm thread).
from time import *  # noqa: F403
import time as _time

from _host import call as _call

_SLICE_MS = 50


def _check():
    if _call("tick"):
        raise KeyboardInterrupt


def sleep_ms(ms):
    end = _time.ticks_add(_time.ticks_ms(), ms)
    while True:
        left = _time.ticks_diff(end, _time.ticks_ms())
        if left <= 0:
            break
        _time.sleep_ms(left if left < _SLICE_MS else _SLICE_MS)
        _check()


def sleep_us(us):
    if us >= 1000:
        sleep_ms(us // 1000)
        us %= 1000
    _time.sleep_us(us)


def sleep(seconds):
    sleep_ms(int(seconds * 1000))


def time():
    # whole seconds, as on the esp32 and rp2 ports (the unix build this runs on gives floats)
    return int(_time.time())
