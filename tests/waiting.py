"""Waiting in tests: for a condition, never for a fixed time. The one polling helper of the
suites (tests/ and hil_tests/), in an async and a blocking form:

    await until(lambda: gateway.spool.depth == 0, "the spool drained", timeout=10)
    nodes = await until(listed_nodes, "both nodes listed")    # the condition may be async
    until_sync(lambda: proc.poll() is not None, "the child exited", timeout=5)

Each returns the condition's first true value, and fails with `what` and `detail()` after
`timeout` seconds; the timeout only stops a test that would otherwise hang, it is never what
a test asserts. A test that must show something did NOT happen first waits for a positive event
that proves the system has moved past the point where it would have happened (a later frame,
a marker message, a counter, a log line), then asserts: a fixed sleep proves nothing on a
loaded machine.

A condition may do work (read a port, run a command) and remember what it saw; `interval` is
the pause between two looks (0 for a condition that blocks on its own, such as a read with a
timeout).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

INTERVAL_S = 0.02


def _failure(what: str, timeout: float, detail: Callable[[], object]) -> AssertionError:
    shown = detail()
    return AssertionError(f"not within {timeout:g} s: {what}" + (f"; {shown}" if shown else ""))


async def until(
    condition: Callable[[], T | Awaitable[T]],
    what: str,
    timeout: float = 5.0,
    detail: Callable[[], object] = lambda: "",
    *,
    interval: float = INTERVAL_S,
) -> T:
    """Look at `condition` every `interval` s until it is true; returns that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise _failure(what, timeout, detail)
        await asyncio.sleep(interval)


def until_sync(
    condition: Callable[[], T],
    what: str,
    timeout: float = 5.0,
    detail: Callable[[], object] = lambda: "",
    *,
    interval: float = INTERVAL_S,
) -> T:
    """until() for code without an event loop (signal handlers still run meanwhile)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise _failure(what, timeout, detail)
        if interval:
            time.sleep(interval)
