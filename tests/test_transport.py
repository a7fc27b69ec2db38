"""SerialTransport on real pseudo-terminals, and port discovery with fake USB listings.

A pty pair stands for a node on a USB-UART: the transport opens the SLAVE side by path, as it
would open /dev/ttyUSB0, and the test plays the node on the MASTER side. An unplug is the
master closing (the kernel hangs up the slave, as it does for an unplugged USB adapter) plus
the device path going away; a replug is a new pty behind the same path (a symlink in tmp_path,
like /dev/serial/by-id/...).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
import serial
import serial.tools.list_ports
from serial.tools.list_ports_common import ListPortInfo

from gateway import transport as transport_mod
from gateway.config import SerialPortConfig, UsbMatch
from gateway.errors import ConfigError, EdgeveilError
from gateway.ports import (
    AmbiguousPortError,
    PortInfo,
    board_guess,
    find_usb,
    is_absent,
    list_ports,
    resolve,
)
from gateway.transport import Backoff, SerialTransport

from .ptys import Pty
from .waiting import until

FAST: dict[str, Any] = {
    "backoff_base_s": 0.01,
    "backoff_max_s": 0.05,
    "presence_check_s": 0.05,
    "absent_check_s": 0.02,
}
# The backoff as it stands after many failed attempts, only longer than any test waits: a
# reopen that slept it out would fail the test (a timeout), not merely make it slow. The
# absent device is looked for at the production interval.
GROWN_BACKOFF: dict[str, Any] = {
    "backoff_base_s": 3600.0,
    "backoff_max_s": 3600.0,
    "presence_check_s": 0.05,
}


# -- helpers -------------------------------------------------------------------------------


class Recorder:
    """on_data / on_state callbacks that tests can wait on."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.states: list[str] = []
        self.names: set[str] = set()

    def on_data(self, name: str, data: bytes) -> None:
        self.names.add(name)
        self.data += data

    def on_state(self, name: str, state: str) -> None:
        self.names.add(name)
        self.states.append(state)

    async def until(self, predicate: Callable[[], bool], timeout: float = 3.0) -> None:
        await until(predicate, "the transport's state", timeout, lambda: (self.states, self.data))

    async def state(self, state: str, count: int = 1, timeout: float = 3.0) -> None:
        await self.until(lambda: self.states.count(state) >= count, timeout)

    async def received(self, data: bytes, timeout: float = 3.0) -> None:
        await self.until(lambda: data in self.data, timeout)


@contextlib.asynccontextmanager
async def running(transport: SerialTransport) -> AsyncIterator[asyncio.Task[None]]:
    """run() as a named task, cancelled (and the port closed) at the end."""
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(transport.run(), name=transport.task_name)
        try:
            yield task
        finally:
            task.cancel()
    assert task.cancelled()  # run() ends only by cancellation, never with an error


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Every test closes every fd it (and the transport) opened."""
    before = _open_fds()
    yield
    leaked = _open_fds() - before
    details = {fd: _readlink(fd) for fd in leaked}
    assert not leaked, f"file descriptors left open: {details}"


def calls_of(monkeypatch: pytest.MonkeyPatch, name: str) -> list[tuple[Any, ...]]:
    """The calls the transport makes of gateway.transport's `name` from now on: resolve() is
    an attempt to open the port, is_absent() a look for the device while it is away."""
    calls: list[tuple[Any, ...]] = []
    real = getattr(transport_mod, name)

    def counted(*args: Any) -> Any:
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(transport_mod, name, counted)
    return calls


def _readlink(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"


@contextlib.contextmanager
def alarm(seconds: int) -> Iterator[None]:
    """Fail instead of hanging if the event loop itself is stuck (a busy loop in a callback
    that asyncio.timeout cannot interrupt)."""

    def fire(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError(f"event loop stuck for {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def fake_port(device: str, vid: int | None = None, pid: int | None = None, **usb: Any) -> Any:
    info = ListPortInfo(device, skip_link_detection=True)
    info.vid = vid
    info.pid = pid
    for key, value in usb.items():
        setattr(info, key, value)
    if vid is not None:
        info.apply_usb_info()
    return info


@pytest.fixture
def comports(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The fake USB listing: tests put ListPortInfo objects in the returned list."""
    listing: list[Any] = []

    def fake_comports(include_links: bool = False) -> list[Any]:
        return list(listing)

    monkeypatch.setattr(serial.tools.list_ports, "comports", fake_comports)
    return listing


# -- data both ways on a real pty ----------------------------------------------------------


def test_pty_data_both_ways() -> None:
    async def main() -> None:
        pty = Pty()
        rec = Recorder()
        port = SerialPortConfig(name="node-a", url=pty.path)
        transport = SerialTransport(port, rec.on_data, rec.on_state, **FAST)
        assert transport.state == "waiting"
        assert await transport.write(b"x") is False  # not open yet
        try:
            async with running(transport):
                await rec.state("open")
                assert transport.device == pty.path
                frame = bytes(range(1, 256)) * 4 + b"\x00"  # more than one read's worth
                pty.send(frame)
                await rec.received(frame)
                assert await transport.write(b"\x00ack\x00") is True
                assert await pty.read(5) == b"\x00ack\x00"
                assert rec.names == {"node-a"}
                assert transport.stats() == {
                    "opens": 1,
                    "disconnects": 0,
                    "bytes_in": len(frame),
                    "bytes_out": 5,
                    "writes_dropped": 1,
                    "callback_errors": 0,
                }
            assert rec.states == ["open"]
            assert transport.device is None
            assert await transport.write(b"late") is False
        finally:
            pty.close()

    asyncio.run(main())


def test_pty_is_opened_exclusively() -> None:
    """A second transport on the same port waits ("busy") instead of stealing bytes."""

    async def main() -> None:
        pty = Pty()
        first, second = Recorder(), Recorder()
        port = SerialPortConfig(name="node-a", url=pty.path)
        try:
            async with running(SerialTransport(port, first.on_data, first.on_state, **FAST)):
                await first.state("open")
                other = SerialTransport(port, second.on_data, second.on_state, **FAST)
                async with running(other):
                    await second.state("waiting")
                    assert other.waiting_reason is not None
                    assert "exclusively lock" in other.waiting_reason
        finally:
            pty.close()

    asyncio.run(main())


# -- unplug and replug ---------------------------------------------------------------------


def test_twenty_unplug_replug_cycles(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The acceptance test: the link recovers by itself after every replug, and data written
    after each replug arrives, both ways."""
    caplog.set_level(logging.INFO, logger="gateway.transport")
    cycles = 20
    link = tmp_path / "ttyNODE"

    async def main() -> None:
        rec = Recorder()
        port = SerialPortConfig(name="node-a", url=str(link))
        transport = SerialTransport(port, rec.on_data, rec.on_state, **FAST)
        pty = Pty()
        link.symlink_to(pty.path)
        try:
            async with running(transport):
                for cycle in range(cycles + 1):
                    await rec.state("open", cycle + 1)
                    assert transport.state == "open"
                    up = f"reading {cycle}\x00".encode()
                    pty.send(up)
                    await rec.received(up)
                    down = f"ack {cycle}".encode()
                    assert await transport.write(down) is True
                    assert await pty.read(len(down)) == down
                    if cycle == cycles:
                        break
                    # unplug: the device hangs up and its path goes away
                    pty.close()
                    link.unlink()
                    await rec.state("waiting", cycle + 1)
                    assert await transport.write(b"nobody") is False
                    # replug: a new device behind the same path
                    pty = Pty()
                    link.symlink_to(pty.path)
        finally:
            pty.close()
        assert transport.opens == cycles + 1
        assert transport.disconnects == cycles
        assert rec.states == ["open", "waiting"] * cycles + ["open"]

    asyncio.run(main())  # each step waits for its event: no backoff was sat out (FAST)
    # one line per state change (plus the final "closed"), never one per chunk or per retry
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.transport"]
    assert len(lines) == 2 * cycles + 2, lines
    assert not any("reading" in line or "ack" in line for line in lines)
    assert not [r for r in caplog.records if r.name == "asyncio"]  # no "Fatal write error"


def test_port_absent_at_start_is_waited_for(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    link = tmp_path / "ttyNODE"
    looks = calls_of(monkeypatch, "is_absent")

    async def main() -> None:
        rec = Recorder()
        port = SerialPortConfig(name="node-b", url=str(link))
        transport = SerialTransport(port, rec.on_data, rec.on_state, **FAST)
        async with running(transport):
            await rec.state("waiting")
            assert transport.waiting_reason is not None
            assert transport.waiting_reason == f"{link} is not present"
            seen = len(looks)
            await rec.until(lambda: len(looks) >= seen + 3)  # it looked for the device again
            assert rec.states == ["waiting"]  # reported once, not per look
            pty = Pty()
            try:
                link.symlink_to(pty.path)
                await rec.state("open")
                pty.send(b"hello\x00")
                await rec.received(b"hello\x00")
            finally:
                pty.close()
        assert transport.opens == 1
        assert transport.disconnects == 0

    caplog.set_level(logging.INFO, logger="gateway.transport")
    asyncio.run(main())
    waiting = [r for r in caplog.records if "waiting" in r.getMessage()]
    assert len(waiting) == 1


def test_device_back_is_reopened_without_waiting_out_the_backoff(tmp_path: Path) -> None:
    """Absent at start, unplugged while open, unplugged while it was there but failing to
    open (busy: the backoff case): each time, the device is opened as soon as it is back."""
    link = tmp_path / "ttyNODE"

    async def main() -> None:
        rec = Recorder()
        port = SerialPortConfig(name="n", url=str(link))
        transport = SerialTransport(port, rec.on_data, rec.on_state, **GROWN_BACKOFF)

        async def unplug(pty: Pty) -> None:
            """Unplug, and wait until the transport has seen the device gone: a person's
            replug takes longer than its look (absent_check_s). A device back before the
            transport looked is, to it, one whose link just failed: retried by backoff."""
            link.unlink()
            pty.close()
            await rec.until(lambda: transport.waiting_reason == f"{link} is not present")

        pty = Pty()
        holder: serial.Serial | None = None
        try:
            async with running(transport):
                await rec.state("waiting")  # absent at start
                link.symlink_to(pty.path)
                await rec.state("open")
                for opened in (2, 3):  # unplugged while open, and back
                    await unplug(pty)
                    pty = Pty()
                    link.symlink_to(pty.path)
                    await rec.state("open", opened)
                # back, but another program holds it: retried after the backoff (an hour)...
                await unplug(pty)
                pty = Pty()
                holder = serial.Serial(pty.path, exclusive=True)
                link.symlink_to(pty.path)
                await rec.until(lambda: "exclusively lock" in (transport.waiting_reason or ""))
                # ...unless it is unplugged meanwhile: then it is looked for again
                holder.close()
                await unplug(pty)
                pty = Pty()
                link.symlink_to(pty.path)
                await rec.state("open", 4)
                pty.send(b"back\x00")
                await rec.received(b"back\x00")
        finally:
            if holder is not None:
                holder.close()
            pty.close()
        assert rec.states == ["waiting"] + ["open", "waiting"] * 3 + ["open"]

    asyncio.run(main())


@pytest.mark.parametrize("writes_pending", [False, True], ids=["idle", "writes-pending"])
def test_unplug_logs_one_line_and_no_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, writes_pending: bool
) -> None:
    """At every level, from every logger: pyserial-asyncio-fast flushing the dead port
    (termios.error EIO, at DEBUG) or writing what was queued to it (an ERROR from the event
    loop's exception handler) must not show up as tracebacks."""
    caplog.set_level(logging.DEBUG)
    link = tmp_path / "ttyNODE"

    async def main() -> list[logging.LogRecord]:
        rec = Recorder()
        port = SerialPortConfig(name="n", url=str(link))
        transport = SerialTransport(port, rec.on_data, rec.on_state, **FAST)
        pty = Pty()
        link.symlink_to(pty.path)
        try:
            async with running(transport):
                await rec.state("open")
                if writes_pending:  # the node stopped reading: bytes wait in the transport
                    while await transport.write(b"a" * 4000):
                        await asyncio.sleep(0)
                    # the tty is full now; write() refuses more, so that its last bytes may
                    # all have reached the tty: queue some in the transport itself
                    assert transport._link is not None
                    transport._link.transport.write(b"a" * 4000)
                    assert transport._link.transport.get_write_buffer_size() > 0
                caplog.clear()
                link.unlink()
                pty.close()
                await rec.state("waiting")
                await rec.until(lambda: transport.waiting_reason == f"{link} is not present")
                unplug = list(caplog.records)
                pty = Pty()
                link.symlink_to(pty.path)
                await rec.state("open", 2)
        finally:
            pty.close()
        return unplug

    unplug = asyncio.run(main())
    lines = [f"{r.levelname} {r.name}: {r.getMessage()}" for r in unplug]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"WARNING gateway.transport: serial n: lost {link} ("), lines
    assert not [r for r in caplog.records if r.exc_info], "no tracebacks"


def test_device_path_removed_while_open(tmp_path: Path) -> None:
    """A driver that does not hang up: the path check notices the device is gone."""
    link = tmp_path / "ttyNODE"

    async def main() -> None:
        rec = Recorder()
        port = SerialPortConfig(name="node-c", url=str(link))
        transport = SerialTransport(port, rec.on_data, rec.on_state, **FAST)
        pty = Pty()
        link.symlink_to(pty.path)
        try:
            async with running(transport):
                await rec.state("open")
                link.unlink()  # the master stays open: no hangup, only the path is gone
                await rec.state("waiting")
                assert transport.disconnects == 1
                link.symlink_to(pty.path)
                await rec.state("open", 2)
                pty.send(b"again\x00")
                await rec.received(b"again\x00")
        finally:
            pty.close()

    asyncio.run(main())


def test_hangup_seen_by_write_before_read() -> None:
    """write() right after an unplug, before the loop has read the hangup: refused."""

    async def main() -> None:
        rec = Recorder()
        pty = Pty()
        transport = SerialTransport(
            SerialPortConfig(name="n", url=pty.path), rec.on_data, rec.on_state, **FAST
        )
        async with running(transport):
            await rec.state("open")
            pty.close()
            assert await transport.write(b"ack") is False  # no await in between: poll saw it
            await rec.state("waiting")

    asyncio.run(main())


# -- writes to a node that does not read ---------------------------------------------------


def test_write_to_full_port_is_refused_without_blocking() -> None:
    """pyserial's non-blocking write() spins on EAGAIN; the transport must not let it."""

    async def main() -> None:
        rec = Recorder()
        pty = Pty()  # nobody reads the master: the tty buffer fills up
        transport = SerialTransport(
            SerialPortConfig(name="n", url=pty.path), rec.on_data, rec.on_state, **FAST
        )
        try:
            async with running(transport):
                await rec.state("open")
                accepted = 0
                for _ in range(10_000):
                    if not await transport.write(b"a" * 100):
                        break
                    accepted += 100
                    await asyncio.sleep(0)
                else:
                    pytest.fail("write() never refused")
                assert transport.writes_dropped == 1
                assert transport.state == "open"  # refused, not broken
                # the node reads again: writes go through again
                await asyncio.sleep(0)
                drained = [len(pty.drain())]

                async def written() -> bool:
                    if await transport.write(b"b"):
                        return True
                    drained.append(len(pty.drain()))
                    return False

                await until(written, "write() takes bytes again", 3)
                got = sum(drained) + len(await pty.read(1))
                assert got >= accepted
        finally:
            pty.close()

    with alarm(10):
        asyncio.run(main())


# -- callbacks that fail -------------------------------------------------------------------


def test_failing_callbacks_do_not_break_the_link(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        pty = Pty()
        seen: list[bytes] = []
        opened = asyncio.Event()

        def on_data(name: str, data: bytes) -> None:
            seen.append(data)
            raise RuntimeError("bug in the service")

        def on_state(name: str, state: str) -> None:
            if state == "open":
                opened.set()
            raise RuntimeError("bug in on_state")

        transport = SerialTransport(
            SerialPortConfig(name="n", url=pty.path), on_data, on_state, **FAST
        )
        try:
            async with running(transport):
                async with asyncio.timeout(3):
                    await opened.wait()
                for i in range(3):
                    pty.send(b"x%d" % i)
                    await until(lambda i=i: len(seen) > i, "the data handed to on_data", 3)
                assert transport.state == "open"
                assert await transport.write(b"ok") is True
                assert await pty.read(2) == b"ok"
        finally:
            pty.close()
        assert transport.callback_errors == 4  # 1 on_state + 3 on_data

    caplog.set_level(logging.INFO, logger="gateway.transport")
    asyncio.run(main())
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 2  # on_state once, on_data once per link


# -- other URLs ----------------------------------------------------------------------------


def test_hwgrep_url_finds_the_pty(comports: list[Any]) -> None:
    async def main() -> None:
        pty = Pty()
        comports.append(fake_port("/dev/ttyS0"))
        comports.append(
            fake_port(
                pty.path, 0x10C4, 0xEA60, serial_number="NODE-7F3A", product="CP2102 USB to UART"
            )
        )
        rec = Recorder()
        port = SerialPortConfig(name="n", url="hwgrep://NODE-7F3A")
        transport = SerialTransport(port, rec.on_data, rec.on_state, **FAST)
        try:
            async with running(transport):
                await rec.state("open")
                assert transport.device == pty.path
                pty.send(b"via hwgrep\x00")
                await rec.received(b"via hwgrep\x00")
        finally:
            pty.close()

    asyncio.run(main())


def test_hwgrep_without_match_waits(comports: list[Any]) -> None:
    async def main() -> None:
        rec = Recorder()
        port = SerialPortConfig(name="n", url="hwgrep://NOTHERE")
        transport = SerialTransport(port, rec.on_data, rec.on_state, **FAST)
        async with running(transport):
            await rec.state("waiting")
            assert transport.waiting_reason is not None
            assert transport.waiting_reason == "hwgrep://NOTHERE is not present"

    asyncio.run(main())


def test_usb_match_follows_reenumeration(comports: list[Any]) -> None:
    """ttyUSB0 unplugged comes back as ttyUSB1: the USB match finds it under its new name."""

    async def main() -> None:
        rec = Recorder()
        usb = UsbMatch(0x1A86, 0x55D4, "5434012345")
        transport = SerialTransport(
            SerialPortConfig(name="n", usb=usb), rec.on_data, rec.on_state, **FAST
        )
        first = Pty()
        comports.append(fake_port(first.path, 0x1A86, 0x55D4, serial_number="5434012345"))
        second: Pty | None = None
        try:
            async with running(transport):
                await rec.state("open")
                assert transport.device == first.path
                first.close()
                comports.clear()
                await rec.state("waiting")
                absent = "no USB port matches 1a86:55d4 serial_number '5434012345'"
                await rec.until(lambda: transport.waiting_reason == absent)
                second = Pty()
                comports.append(fake_port(second.path, 0x1A86, 0x55D4, serial_number="5434012345"))
                await rec.state("open", 2)
                assert transport.device == second.path
                second.send(b"back\x00")
                await rec.received(b"back\x00")
        finally:
            first.close()
            if second is not None:
                second.close()

    asyncio.run(main())


def test_ambiguous_usb_match_waits_and_says_why(
    comports: list[Any], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts = calls_of(monkeypatch, "resolve")

    async def main() -> None:
        comports.append(fake_port("/dev/ttyUSB0", 0x10C4, 0xEA60, serial_number="0001"))
        comports.append(fake_port("/dev/ttyUSB1", 0x10C4, 0xEA60, serial_number="0002"))
        rec = Recorder()
        transport = SerialTransport(
            SerialPortConfig(name="n", usb=UsbMatch(0x10C4, 0xEA60)),
            rec.on_data,
            rec.on_state,
            **FAST,
        )
        async with running(transport):
            await rec.state("waiting")
            tried = len(attempts)
            await rec.until(lambda: len(attempts) >= tried + 3)  # retries go on, quietly
        assert transport.waiting_reason is not None
        assert "add serial_number" in transport.waiting_reason
        assert rec.states == ["waiting"]

    caplog.set_level(logging.INFO, logger="gateway.transport")
    asyncio.run(main())
    assert sum("serial_number" in r.getMessage() for r in caplog.records) == 1


def test_url_without_fd_waits_with_a_clear_reason() -> None:
    async def main() -> None:
        rec = Recorder()
        transport = SerialTransport(
            SerialPortConfig(name="n", url="loop://"), rec.on_data, rec.on_state, **FAST
        )
        async with running(transport):
            await rec.state("waiting")
        assert transport.waiting_reason is not None
        assert "loop:// ports have no file descriptor" in transport.waiting_reason

    asyncio.run(main())


def test_socket_url_reconnects() -> None:
    """socket:// (a remote serial server): data both ways, and reconnect after it drops."""

    async def main() -> None:
        peers: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

        async def accept(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await peers.put((r, w))

        server = await asyncio.start_server(accept, "127.0.0.1", 0)
        host, tcp_port = server.sockets[0].getsockname()[:2]
        rec = Recorder()
        transport = SerialTransport(
            SerialPortConfig(name="n", url=f"socket://{host}:{tcp_port}"),
            rec.on_data,
            rec.on_state,
            **FAST,
        )
        try:
            async with running(transport):
                for cycle in range(1, 4):
                    reader, writer = await asyncio.wait_for(peers.get(), 3)
                    await rec.state("open", cycle)
                    writer.write(b"net %d\x00" % cycle)
                    await rec.received(b"net %d\x00" % cycle)
                    assert await transport.write(b"ack") is True
                    assert await asyncio.wait_for(reader.readexactly(3), 3) == b"ack"
                    writer.close()
                    await writer.wait_closed()
                    await rec.state("waiting", cycle)
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())


def test_cancel_while_opening_leaks_nothing(tmp_path: Path, rng: random.Random) -> None:
    async def main() -> None:
        pty = Pty()
        before = _open_fds()
        try:
            for _ in range(20):
                rec = Recorder()
                transport = SerialTransport(
                    SerialPortConfig(name="n", url=pty.path), rec.on_data, rec.on_state, **FAST
                )
                task = asyncio.create_task(transport.run())
                await asyncio.sleep(rng.uniform(0, 0.003))
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            # an open that finishes after the cancel is closed when it finishes (in a thread)
            await until(
                lambda: _open_fds() <= before,
                "every port opened after a cancel closed again",
                detail=lambda: {fd: _readlink(fd) for fd in _open_fds() - before},
            )
        finally:
            pty.close()

    asyncio.run(main())


# -- backoff -------------------------------------------------------------------------------


def test_backoff_doubles_to_the_maximum_with_jitter() -> None:
    backoff = Backoff(0.2, 10.0, rng=random.Random(1))
    nominal = [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0, 10.0]
    for expected in nominal:
        delay = backoff.next_delay()
        assert 0.8 * expected <= delay <= 1.2 * expected
    backoff.reset()
    assert 0.16 <= backoff.next_delay() <= 0.24
    with pytest.raises(ValueError, match="base"):
        Backoff(0, 1)
    with pytest.raises(ValueError, match="base"):
        Backoff(2, 1)


def test_production_defaults() -> None:
    transport = SerialTransport(SerialPortConfig(name="n", url="/dev/null"), lambda n, d: None)
    assert transport._backoff.base == 0.2
    assert transport._backoff.maximum == 10.0
    assert transport._absent_check_s == 0.25  # back within 1 s of a replug, cheaply
    assert transport.task_name == "serial:n"


# -- port discovery ------------------------------------------------------------------------


def test_list_ports_guesses_boards(comports: list[Any]) -> None:
    comports.extend(
        [
            fake_port(
                "/dev/ttyUSB10", 0x0403, 0x6001, serial_number="A50285BI", manufacturer="FTDI"
            ),
            fake_port("/dev/ttyACM0", 0x303A, 0x1001, serial_number="F4:12:FA:00:11:22"),
            fake_port("/dev/ttyUSB2", 0x1A86, 0x7523),
            fake_port("/dev/ttyACM1", 0x2E8A, 0x0005, serial_number="e66038b7138d2c2f"),
            fake_port("/dev/ttyAMA0"),
            fake_port("/dev/ttyUSB3", 0x1234, 0x5678),
        ]
    )
    ports = list_ports()
    assert [p.device for p in ports] == [
        "/dev/ttyACM0",
        "/dev/ttyACM1",
        "/dev/ttyAMA0",
        "/dev/ttyUSB2",
        "/dev/ttyUSB3",
        "/dev/ttyUSB10",
    ]
    by_device = {p.device: p for p in ports}
    assert "ESP32" in (by_device["/dev/ttyACM0"].board or "")
    assert "MicroPython" in (by_device["/dev/ttyACM1"].board or "")
    assert "CH340" in (by_device["/dev/ttyUSB2"].board or "")
    assert "FT232R" in (by_device["/dev/ttyUSB10"].board or "")
    assert by_device["/dev/ttyUSB10"].manufacturer == "FTDI"
    assert by_device["/dev/ttyUSB10"].serial_number == "A50285BI"
    assert by_device["/dev/ttyUSB10"].usb_id == "0403:6001"
    assert by_device["/dev/ttyAMA0"].board is None
    assert by_device["/dev/ttyAMA0"].usb_id is None
    assert by_device["/dev/ttyUSB3"].board is None
    assert "CP210x" in (board_guess(0x10C4, 0xEA60) or "")
    assert "CH9102" in (board_guess(0x1A86, 0x55D4) or "")
    assert "Espressif" in (board_guess(0x303A, 0x0002) or "")  # any Espressif native USB


@pytest.mark.parametrize(
    "url",
    [
        "/dev/ttyUSB0",
        "/dev/serial/by-id/usb-Silicon_Labs_CP2102_USB_to_UART_Bridge_Controller_0001-if00-port0",
        "socket://192.0.2.10:7000",
        "rfc2217://192.0.2.10:2217",
        "loop://",
        "hwgrep://CP2102",
    ],
)
def test_resolve_url_is_the_url(url: str, comports: list[Any]) -> None:
    assert resolve(SerialPortConfig(name="n", url=url)) == url


def test_resolve_usb(comports: list[Any]) -> None:
    comports.extend(
        [
            fake_port("/dev/ttyUSB0", 0x10C4, 0xEA60, serial_number="0001"),
            fake_port("/dev/ttyUSB1", 0x10C4, 0xEA60, serial_number="0002"),
            fake_port("/dev/ttyUSB2", 0x1A86, 0x7523),
        ]
    )

    def usb(vid: int, pid: int, sn: str | None = None) -> SerialPortConfig:
        return SerialPortConfig(name="node-a", usb=UsbMatch(vid, pid, sn))

    assert resolve(usb(0x1A86, 0x7523)) == "/dev/ttyUSB2"  # unique without a serial number
    assert resolve(usb(0x10C4, 0xEA60, "0002")) == "/dev/ttyUSB1"
    assert resolve(usb(0x10C4, 0xEA60, "0002".upper())) == "/dev/ttyUSB1"
    assert resolve(usb(0x0403, 0x6001)) is None  # absent
    assert resolve(usb(0x10C4, 0xEA60, "0003")) is None
    with pytest.raises(AmbiguousPortError) as info:
        resolve(usb(0x10C4, 0xEA60))
    message = str(info.value)
    assert "2 ports match USB 10c4:ea60" in message
    assert "/dev/ttyUSB0 (serial_number '0001')" in message
    assert 'add serial_number = "..."' in message
    assert isinstance(info.value, ConfigError)
    assert isinstance(info.value, EdgeveilError)
    assert [p.device for p in info.value.ports] == ["/dev/ttyUSB0", "/dev/ttyUSB1"]


def test_resolve_usb_that_serial_numbers_cannot_separate(comports: list[Any]) -> None:
    # two CH340s without serial numbers; one FT2232 with two interfaces, one serial number
    comports.extend(
        [
            fake_port("/dev/ttyUSB0", 0x1A86, 0x7523),
            fake_port("/dev/ttyUSB1", 0x1A86, 0x7523),
            fake_port("/dev/ttyUSB2", 0x0403, 0x6010, serial_number="FT2X"),
            fake_port("/dev/ttyUSB3", 0x0403, 0x6010, serial_number="FT2X"),
        ]
    )
    for match in (UsbMatch(0x1A86, 0x7523), UsbMatch(0x0403, 0x6010, "FT2X")):
        with pytest.raises(AmbiguousPortError, match="name the port by url"):
            resolve(SerialPortConfig(name="n", usb=match))


def test_is_absent(comports: list[Any], tmp_path: Path) -> None:
    comports.append(fake_port("/dev/ttyUSB0", 0x10C4, 0xEA60, serial_number="0001"))

    def url(text: str) -> SerialPortConfig:
        return SerialPortConfig(name="n", url=text)

    def usb(vid: int, pid: int, sn: str | None = None) -> SerialPortConfig:
        return SerialPortConfig(name="n", usb=UsbMatch(vid, pid, sn))

    assert not is_absent(usb(0x10C4, 0xEA60, "0001"))
    assert is_absent(usb(0x10C4, 0xEA60, "0002"))
    assert not is_absent(url("hwgrep://10C4:EA60&skip_busy"))
    assert is_absent(url("hwgrep://1a86"))
    (tmp_path / "ttyNODE").symlink_to(tmp_path / "gone")
    assert is_absent(url(str(tmp_path / "ttyNODE")))  # a by-id link left to a gone tty
    assert not is_absent(url(str(tmp_path)))
    for network in ("socket://192.0.2.10:7000", "rfc2217://192.0.2.10:2217", "loop://"):
        assert not is_absent(url(network))  # nothing local to look for


def test_find_usb_on_given_ports() -> None:
    ports = [
        PortInfo("/dev/ttyACM0", "x", 0x2E8A, 0x0005, "abc"),
        PortInfo("/dev/ttyACM1", "y", 0x2E8A, 0x0005, None),
    ]
    assert [p.device for p in find_usb(UsbMatch(0x2E8A, 0x0005), ports)] == [
        "/dev/ttyACM0",
        "/dev/ttyACM1",
    ]
    assert [p.device for p in find_usb(UsbMatch(0x2E8A, 0x0005, "ABC"), ports)] == ["/dev/ttyACM0"]
