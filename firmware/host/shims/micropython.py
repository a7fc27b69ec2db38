"""MicroPython's `micropython` module for an emulated node (and for firmware tests on CPython).

const() is the identity (MicroPython folds it at compile time); native/viper are identity
decorators (the code runs as plain bytecode). schedule() runs the callback on the main thread
at the next bytecode boundary through the emulated board's scheduler. Works without a board
too (firmware unit tests import the firmware with this directory on sys.path): then schedule()
runs the callback at once and kbd_intr() only records the character.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

_F = TypeVar("_F")

_state = {"kbd_intr": 3, "emergency_buf": 0, "opt_level": 0, "heap_locked": 0}


def const(value: _F) -> _F:
    return value


def native(func: _F) -> _F:
    return func


def viper(func: _F) -> _F:
    return func


def asm_thumb(func: _F) -> _F:
    return func


def asm_xtensa(func: _F) -> _F:
    return func


def _board() -> Any:
    from firmware.host import board  # noqa: PLC0415 - absent in plain firmware unit tests

    return board._current  # None when no board is running


def kbd_intr(chr: int) -> None:
    """Set the character that raises KeyboardInterrupt on the console (-1: none)."""
    _state["kbd_intr"] = chr
    b = _board()
    if b is not None and b.link.console:
        b.link.interrupt_char = chr


def schedule(func: Callable[[Any], Any], arg: Any) -> None:
    """Run func(arg) on the main thread "very soon"; RuntimeError when 4 are already waiting."""
    b = _board()
    if b is None:
        func(arg)
        return
    b.scheduler.schedule(func, arg, user=True)


def alloc_emergency_exception_buf(size: int) -> None:
    _state["emergency_buf"] = size


def mem_info(verbose: Any = None) -> None:
    import gc  # noqa: PLC0415

    free = getattr(gc, "mem_free", lambda: 100_000)()
    used = getattr(gc, "mem_alloc", lambda: 11_168)()
    print(f"stack: 736 out of 15360\nGC: total: {free + used}, used: {used}, free: {free}")


def qstr_info(verbose: Any = None) -> None:
    print("qstr pool: n_pool=1, n_qstr=0, n_str_data_bytes=0, n_total_bytes=0")


def stack_use() -> int:
    return 736


def opt_level(level: int | None = None) -> int | None:
    if level is None:
        return _state["opt_level"]
    _state["opt_level"] = level
    return None


def heap_lock() -> int:
    _state["heap_locked"] += 1
    return _state["heap_locked"] - 1


def heap_unlock() -> int:
    _state["heap_locked"] = max(0, _state["heap_locked"] - 1)
    return _state["heap_locked"]


def heap_locked() -> int:
    return _state["heap_locked"]
