"""The console link's Ctrl-C rule (firmware/edgeveil_node/serial_link.py ConsolePort): a
technician's Ctrl-C stops the node; a 0x03 inside a gateway frame never does; what follows the
Ctrl-C stays on the line for the REPL."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from edgeveil_node.serial_link import ConsolePort

from protocol import Ack, NodeKeys, encode_serial, seal
from tests.firmware_env import FakeClock


class Line:
    """The USB line as a pipe: the test writes what the technician or gateway sends."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        self.stdin = os.fdopen(self.r, "rb", buffering=0)

    def send(self, data: bytes) -> None:
        os.write(self.w, data)

    def unread(self) -> bytes:
        os.set_blocking(self.r, False)
        try:
            return os.read(self.r, 4096)
        except BlockingIOError:
            return b""


@pytest.fixture
def line() -> Iterator[Line]:
    line = Line()
    yield line
    os.close(line.w)
    line.stdin.close()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    clock = FakeClock()
    clock.install(monkeypatch)
    return clock


def _port(line: Line) -> ConsolePort:
    return ConsolePort(stream_in=line.stdin, stream_out=open(os.devnull, "wb"))


def _frame_with_ctrl_c() -> bytes:
    keys = NodeKeys(0x1234, bytes(16))
    for counter in range(1000):  # a gateway frame that carries the byte 0x03
        data = encode_serial(seal(Ack([counter]), counter, keys))
        if b"\r\x03" in data or b"\x03\x03" in data:
            return data
    raise AssertionError("no frame with 0x03 after CR or 0x03 in 1000 counters")


def test_mpremote_interrupt_stops_the_node_and_keeps_its_request(
    line: Line, clock: FakeClock
) -> None:
    port = _port(line)
    line.send(b"\r\x03\r\x01")  # what mpremote sends to take the raw REPL
    with pytest.raises(KeyboardInterrupt):
        port.read()
    assert line.unread() == b"\r\x01"  # for the REPL, which now enters raw mode


def test_two_ctrl_c_from_a_terminal(line: Line, clock: FakeClock) -> None:
    port = _port(line)
    line.send(b"\x03\x03")
    with pytest.raises(KeyboardInterrupt):
        port.read()


def test_one_ctrl_c_then_a_quiet_line(line: Line, clock: FakeClock) -> None:
    port = _port(line)
    line.send(b"\x03")
    assert port.read() == b"\x03"  # not yet: it could be noise
    clock.sleep_ms(100)
    assert port.read() is None
    clock.sleep_ms(200)
    with pytest.raises(KeyboardInterrupt):
        port.read()


def test_ctrl_c_inside_a_gateway_frame_is_data(line: Line, clock: FakeClock) -> None:
    port = _port(line)
    frame = _frame_with_ctrl_c()
    line.send(frame)
    received = b""
    for _ in range(3):
        received += port.read() or b""
        clock.sleep_ms(400)  # long quiet after the frame: still no interrupt
    assert received == frame


def test_a_half_frame_does_not_hide_a_later_ctrl_c(line: Line, clock: FakeClock) -> None:
    port = _port(line)
    line.send(b"\x00\x05\x11")  # a frame cut off by a glitch
    port.read()
    clock.sleep_ms(60)  # a frame is written at once: the pause ends it
    line.send(b"\r\x03")
    with pytest.raises(KeyboardInterrupt):
        port.read()
