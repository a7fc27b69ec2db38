"""One serial link to sensor nodes, that survives the USB adapter being knocked loose.

`SerialTransport.run()` is a background loop for the service's TaskGroup (one named task per
port, `transport.task_name`). It resolves the configured port (gateway.ports.resolve), opens
it with pyserial-asyncio-fast, hands every received chunk to `on_data(port_name, data)`, and
when the port goes away it reports the state "waiting" and reopens it as soon as it comes
back: forever, raising out of run() only when cancelled.

How a lost port is noticed on Linux:

- USB unplug: the kernel hangs up the tty (usb-serial and cdc-acm call tty_port_tty_hangup).
  The fd then polls readable with POLLHUP; pyserial's read() sees EOF ("device reports
  readiness to read but returned no data") or EIO, raises SerialException, and the
  transport aborts the port and calls connection_lost(). No polling: this is
  noticed in the same event-loop turn. A pseudo-terminal whose master side closes behaves
  the same way, which is what the tests use.
- write(): a poll(0) before each write; POLLHUP/POLLERR there aborts the link at once.
- The device path (a /dev path, a /dev/serial/by-id/... symlink, the device a hwgrep://
  or USB match resolved to) is checked every `presence_check_s` seconds while open, as a
  backstop for drivers that do not hang up; a path that is gone closes the link.
- socket:// links: the peer closing the connection (EOF) or a socket error.

Reopening: each attempt resolves the port again (a USB adapter often comes back as ttyUSB1
instead of ttyUSB0). What comes before the next attempt depends on whether the device is there
(gateway.ports.is_absent: its device path exists, a USB or hwgrep:// match lists it):

- Absent (unplugged): it is looked for every `absent_check_s` (0.25 s; a stat or a sysfs
  listing, no open) and opened as soon as it is back, so a replug is open again within a
  fraction of a second however long the port was away.
- There, but it did not open (busy, permission denied, a broken device) or its link failed:
  exponential backoff, so that it is not hammered. Waits start at `backoff_base_s` (0.2 s),
  double up to `backoff_max_s` (10 s), each with +-20 % jitter so that many ports do not
  retry in step; they start again from the base after a link that stayed open at least
  `backoff_max_s` (a port that opens and at once fails again backs off instead of spinning),
  and after the device was absent. Presence is checked during the wait too: a device
  unplugged then is looked for as above. (One back within `absent_check_s` of a loss, before
  the gateway looked, is to it a link that failed: it waits the backoff.)
- Network URLs (socket://, rfc2217://) have nothing local to look for: backoff only.

Logging: one line per state change (and one when the reason for waiting changes, e.g. from
"not present" to "permission denied"); never per chunk, never any data. An unplug is one
line and no traceback at any level: a port whose read or write failed is aborted, not closed
with a flush (see _PortTransport).

Writes never block and never queue much: `write()` returns False (the bytes are not sent)
when the port is not open now, or when the kernel's output buffer is full (a node that
stopped reading its UART). The nodes retransmit what was not acknowledged. The check also
protects the event loop: pyserial's non-blocking write() retries EAGAIN in a busy loop, which
would freeze the whole gateway on a full tty buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import random
import select
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import serial
import serial_asyncio_fast

from .config import SerialPortConfig
from .ports import describe_absent, is_absent, resolve

__all__ = ["Backoff", "PortState", "SerialTransport"]

log = logging.getLogger(__name__)

PortState = Literal["open", "waiting"]

# Bytes the transport may hold back for a slow port before write() refuses more. Acks are a
# few dozen bytes; this is far more than a healthy 115200-baud line ever has pending.
DEFAULT_MAX_PENDING_WRITE = 4096
_CLOSE_TIMEOUT_S = 5.0


class Backoff:
    """Exponential backoff: base, 2*base, 4*base ... up to maximum, each +-jitter (a fraction)."""

    def __init__(
        self,
        base: float,
        maximum: float,
        jitter: float = 0.2,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 < base <= maximum:
            raise ValueError(f"backoff needs 0 < base <= maximum, got {base}, {maximum}")
        if not 0 <= jitter < 1:
            raise ValueError(f"jitter must be 0 <= jitter < 1, got {jitter}")
        self.base = base
        self.maximum = maximum
        self.jitter = jitter
        self._rng = rng or random.Random()  # noqa: S311 - spreading retries, not security
        self._delay = base

    def next_delay(self) -> float:
        """The next wait in seconds; the one after is twice as long (up to the maximum)."""
        delay = self._delay
        self._delay = min(delay * 2, self.maximum)
        return delay * self._rng.uniform(1 - self.jitter, 1 + self.jitter)

    def reset(self) -> None:
        self._delay = self.base


class _NotNow(Exception):
    """The port cannot be opened now; the message says why, in one line."""


class _Absent(_NotNow):
    """The port is not there (not plugged in, no USB match)."""


_ABSENT_ERRNOS = (errno.ENOENT, errno.ENODEV, errno.ENXIO, errno.EIO)


def _is_absent(exc: BaseException) -> bool:
    """Whether a failure to open just means the device is not (yet, or no longer) there."""
    if isinstance(exc, _Absent):
        return True
    if isinstance(exc, serial.SerialException):
        return exc.errno in _ABSENT_ERRNOS or str(exc).startswith("no ports found matching")
    return False


class _LinkProtocol(asyncio.Protocol):
    def __init__(self, on_data: Callable[[bytes], None], lost: asyncio.Future[None]) -> None:
        self._on_data = on_data
        self.lost = lost
        self.error: BaseException | None = None

    def data_received(self, data: bytes) -> None:
        self._on_data(data)

    def eof_received(self) -> bool | None:
        return None  # socket:// peer closed: close our side too, connection_lost follows

    def connection_lost(self, exc: BaseException | None) -> None:
        self.error = exc
        if not self.lost.done():
            self.lost.set_result(None)


@dataclass
class _Link:
    transport: asyncio.Transport
    protocol: _LinkProtocol
    target: str  # what was opened: a device path or URL
    device: str | None  # the local device path to watch, None for network URLs
    serial: serial.Serial | None  # the fd-backed port, None for socket://
    reason: str | None = None  # why we closed it ourselves
    callback_failed: bool = field(default=False)


class _PortTransport(serial_asyncio_fast.SerialTransport):
    """pyserial-asyncio-fast's serial transport, but a port that failed is aborted, not closed.

    On a read error (an unplug) the library closes gracefully: it flushes (tcdrain) first,
    which on the hung-up fd of a gone device fails with EIO and is logged with a traceback
    ("Failed to flush serial connection", at DEBUG). With bytes still queued it goes on
    writing to the dead fd, and that failure goes to the event loop's exception handler, an
    ERROR with a traceback. A failed port has nothing left to flush, and its loss is no
    programming error: the protocol hears connection_lost(exc) and SerialTransport logs it
    in one line. These are private hooks of pyserial-asyncio-fast 0.16 (pinned to 0.16.x
    in pyproject.toml; test_transport.py's unplug tests notice if they change).
    """

    def _close(self, exc: Exception | None = None) -> None:
        if exc is None:
            super()._close()  # close() by its owner, or a write after close: graceful
        else:
            self._abort(exc)

    def _fatal_error(
        self, exc: BaseException, message: str = "Fatal error on serial transport"
    ) -> None:
        if isinstance(exc, serial.SerialException):
            self._abort(exc)
        else:
            super()._fatal_error(exc, message)  # anything else is a bug: keep its traceback


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, serial.SerialException | _NotNow | OSError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _close_when_opened(future: asyncio.Future[serial.Serial]) -> None:
    """Close a port whose open finished after the task that asked for it was cancelled."""
    if not future.cancelled() and future.exception() is None:
        with contextlib.suppress(Exception):
            future.result().close()


class SerialTransport:
    """One serial link; `run()` keeps it open for as long as the service runs.

    on_data(port_name, chunk) is called from the event loop for every chunk read, in order,
    chunks cut anywhere (feed them to a protocol.StreamDecoder). on_state(port_name, state) is
    called on every state change, "open" or "waiting", starting with the first outcome of
    run(). Both must be quick and must not block; an exception from them is logged and
    counted (callback_errors), and the link goes on.
    """

    def __init__(
        self,
        port: SerialPortConfig,
        on_data: Callable[[str, bytes], None],
        on_state: Callable[[str, str], None] | None = None,
        *,
        backoff_base_s: float = 0.2,
        backoff_max_s: float = 10.0,
        presence_check_s: float | None = 1.0,
        absent_check_s: float = 0.25,
        max_pending_write: int = DEFAULT_MAX_PENDING_WRITE,
    ) -> None:
        if presence_check_s is not None and presence_check_s <= 0:
            raise ValueError(f"presence_check_s must be > 0 or None, got {presence_check_s}")
        if absent_check_s <= 0:
            raise ValueError(f"absent_check_s must be > 0, got {absent_check_s}")
        self.port = port
        self._on_data = on_data
        self._on_state = on_state
        self._backoff = Backoff(backoff_base_s, backoff_max_s)
        self._presence_check_s = presence_check_s
        self._absent_check_s = absent_check_s
        self._max_pending_write = max_pending_write
        self._state: PortState = "waiting"
        self._reported = False  # no state reported yet
        self._waiting_reason: str | None = None
        self._link: _Link | None = None
        self.opens = 0
        self.disconnects = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.writes_dropped = 0  # write() calls that returned False
        self.callback_errors = 0

    # -- public ---------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.port.name

    @property
    def task_name(self) -> str:
        """The name to give run()'s task in the TaskGroup."""
        return f"serial:{self.port.name}"

    @property
    def state(self) -> PortState:
        return self._state

    @property
    def device(self) -> str | None:
        """The device path or URL open now, None while waiting."""
        link = self._link
        return None if link is None else (link.device or link.target)

    @property
    def waiting_reason(self) -> str | None:
        """Why the port is not open (one line), None while open."""
        return None if self._state == "open" else self._waiting_reason

    def stats(self) -> dict[str, int]:
        """The counters, for metrics."""
        return {
            "opens": self.opens,
            "disconnects": self.disconnects,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "writes_dropped": self.writes_dropped,
            "callback_errors": self.callback_errors,
        }

    async def run(self) -> None:
        """Open the port, keep reading, reopen it after every loss. Returns only by
        cancellation; the port is closed when it ends."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                absent = False
                try:
                    link = await self._open()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # every failure to open means: wait, try again
                    self._set_waiting(_one_line(exc), absent=_is_absent(exc))
                    absent = isinstance(exc, _Absent)
                else:
                    opened_at = loop.time()
                    self._link = link
                    self.opens += 1
                    self._set_open(link)
                    reason = await self._hold(link)
                    self._link = None
                    self.disconnects += 1
                    self._set_waiting(reason, lost=link.target)
                    if loop.time() - opened_at >= self._backoff.maximum:
                        self._backoff.reset()
                await self._wait_to_retry(absent)
        finally:
            await self._close()

    async def write(self, data: bytes) -> bool:
        """Send data if the port is open now and can take it; False if not (nothing sent).

        Does not wait for the bytes to leave: True means they are handed to the OS."""
        link = self._link
        if link is None or link.transport.is_closing() or link.protocol.lost.done():
            self.writes_dropped += 1
            return False
        if not data:
            return True
        if not self._can_write(link, len(data)):
            self.writes_dropped += 1
            return False
        link.transport.write(data)
        self.bytes_out += len(data)
        return True

    # -- opening and holding --------------------------------------------------------------

    async def _open(self) -> _Link:
        target = await asyncio.to_thread(resolve, self.port)
        if target is None or await self._device_absent():
            # looked for, not tried: the same one line whatever pyserial would have said
            raise _Absent(describe_absent(self.port))
        loop = asyncio.get_running_loop()
        lost: asyncio.Future[None] = loop.create_future()
        protocol = _LinkProtocol(self._received, lost)
        if target.lower().startswith("socket://"):
            # pyserial's socket:// port has a socket, not a tty: asyncio's own socket
            # transport (pyserial-asyncio-fast does this) handles connect, EOF and errors.
            transport, _ = await serial_asyncio_fast.create_serial_connection(
                loop, lambda: protocol, target, baudrate=self.port.baudrate
            )
            return _Link(transport, protocol, target, None, None)
        port = await self._open_serial(target)
        try:
            port.fileno()
        except Exception:
            port.close()
            scheme = target.partition("://")[0]
            raise _NotNow(
                f"{scheme}:// ports have no file descriptor for the event loop to watch; "
                "use a device path, hwgrep://, a USB match or socket://"
            ) from None
        transport = _PortTransport(loop, protocol, port)
        device = port.port if isinstance(port.port, str) and port.port.startswith("/") else None
        return _Link(transport, protocol, target, device, port)

    async def _open_serial(self, target: str) -> serial.Serial:
        """serial_for_url in a thread (opening can block), never leaking a port that finishes
        opening after we were cancelled."""
        loop = asyncio.get_running_loop()
        opening = loop.run_in_executor(
            None,
            functools.partial(
                serial.serial_for_url,
                target,
                baudrate=self.port.baudrate,
                exclusive=True,  # flock: a second gateway or tool gets "busy", not half the bytes
            ),
        )
        try:
            return await asyncio.shield(opening)
        except asyncio.CancelledError:
            opening.add_done_callback(_close_when_opened)
            raise

    async def _wait_to_retry(self, absent: bool) -> None:
        """Wait until the next open is worth trying.

        A device that is there but did not open or failed at once (busy, permission denied,
        broken) is retried after the backoff, so it is not hammered. An absent device costs
        nothing to look for, so it is looked for every absent_check_s and opened as soon as it
        is back, instead of after the rest of a backoff that may have grown to backoff_max_s;
        also when it goes away during a backoff (unplugged after a failure, or after a loss
        while udev had not yet removed its device path)."""
        loop = asyncio.get_running_loop()
        retry_at = loop.time() + self._backoff.next_delay()
        while not absent:
            if loop.time() >= retry_at:
                return
            absent = await self._device_absent()
            if absent:
                self._set_waiting(describe_absent(self.port), absent=True)
            else:
                await asyncio.sleep(min(self._absent_check_s, retry_at - loop.time()))
        while await self._device_absent():
            await asyncio.sleep(self._absent_check_s)
        self._backoff.reset()  # plugged in again: a fresh start

    async def _device_absent(self) -> bool:
        try:
            return await asyncio.to_thread(is_absent, self.port)  # USB matches read sysfs
        except Exception:  # cannot tell (a bad hwgrep regexp...): the open will say why
            return False

    async def _hold(self, link: _Link) -> str:
        """Wait until the link is lost; return why, in one line."""
        lost = link.protocol.lost
        while not lost.done():
            await asyncio.wait((lost,), timeout=self._presence_check_s)
            if lost.done() or link.device is None:
                continue
            if not os.path.exists(link.device):
                self._abort(link, f"{link.device} disappeared")
        if link.reason is not None:
            return link.reason
        error = link.protocol.error
        return "closed" if error is None else _one_line(error)

    def _abort(self, link: _Link, reason: str) -> None:
        if link.reason is None:
            link.reason = reason
        if not link.transport.is_closing():
            link.transport.abort()

    async def _close(self) -> None:
        link, self._link = self._link, None
        if link is None:
            return
        self._abort(link, "stopped")
        # abort() closes the port in a thread and then calls connection_lost: wait for it,
        # so that the fd is closed when run() ends.
        await asyncio.wait((link.protocol.lost,), timeout=_CLOSE_TIMEOUT_S)
        log.info("serial %s: closed %s", self.name, link.target)

    def _can_write(self, link: _Link, size: int) -> bool:
        pending = link.transport.get_write_buffer_size()
        if pending + size > self._max_pending_write:
            return False
        if link.serial is None or pending:
            # a socket, or bytes already queued: the transport writes when the fd is writable
            return True
        try:
            poller = select.poll()
            poller.register(link.serial.fileno(), select.POLLOUT)
            events = poller.poll(0)
        except (OSError, ValueError, serial.SerialException) as exc:
            self._abort(link, _one_line(exc))
            return False
        mask = events[0][1] if events else 0
        if mask & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
            self._abort(link, "hung up (device gone)")
            return False
        # No POLLOUT: the tty's output buffer is (nearly) full. pyserial would spin on EAGAIN.
        return bool(mask & select.POLLOUT)

    # -- callbacks and state ---------------------------------------------------------------

    def _received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        try:
            self._on_data(self.port.name, data)
        except Exception:
            self.callback_errors += 1
            link = self._link
            if link is not None and not link.callback_failed:
                link.callback_failed = True
                log.exception(
                    "serial %s: on_data failed (later failures on this link are only counted)",
                    self.name,
                )

    def _set_open(self, link: _Link) -> None:
        self._state = "open"
        self._waiting_reason = None
        where = link.target
        if link.device not in (None, link.target):
            where += f" ({link.device})"  # what hwgrep:// or a USB match found
        if self.port.usb is not None:
            where += f" (USB {self.port.usb.vid:04x}:{self.port.usb.pid:04x})"
        log.info("serial %s: open %s at %d baud", self.name, where, self.port.baudrate)
        self._report()

    def _set_waiting(self, reason: str, lost: str | None = None, absent: bool = False) -> None:
        changed = self._state != "waiting" or not self._reported
        if changed:
            self._state = "waiting"
            if lost is not None:
                log.warning(
                    "serial %s: lost %s (%s); reopening when it returns", self.name, lost, reason
                )
            else:
                log.warning("serial %s: waiting: %s", self.name, reason)
        elif reason != self._waiting_reason and not absent:
            # e.g. the device came back but cannot be opened ("permission denied"); that it
            # is absent after a loss goes without saying
            log.warning("serial %s: still waiting: %s", self.name, reason)
        self._waiting_reason = reason
        if changed:
            self._report()

    def _report(self) -> None:
        self._reported = True
        if self._on_state is None:
            return
        try:
            self._on_state(self.port.name, self._state)
        except Exception:
            self.callback_errors += 1
            log.exception("serial %s: on_state failed", self.name)
