# `gc` of the emulated board. The wasm interpreter's collector cannot see references held on
# the wasm stack, so collecting while code runs could free live objects. The board runs with a
# large heap and never collects (the ROM turns the automatic collector off); collect() is a
# no-op here, and a program that runs out of heap gets a MemoryError instead of corruption.
from gc import *  # noqa: F403
import gc as _gc


def collect():
    return None


def enable():
    return None
