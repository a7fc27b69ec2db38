"""A pseudo-terminal pair standing for a node on a USB-UART: the one Pty of the tests.

The code under test (SerialTransport, the gateway) opens `path`, the SLAVE side, as it would
open /dev/ttyUSB0; the test plays the node on the MASTER side. The test keeps the slave open
too, so the line survives the gateway's death (as a USB adapter stays plugged in when the
gateway crashes). An unplug is close(): the master goes first, and the kernel hangs up the
slave as it does for an unplugged adapter.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty


class Pty:
    """A raw pseudo-terminal pair (no echo, no line editing: a UART); the test is the node."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        self.closed = False

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    async def read(self, n: int, timeout: float = 3.0) -> bytes:
        """Exactly n bytes from the line, as they come."""
        loop = asyncio.get_running_loop()
        buf = bytearray()
        async with asyncio.timeout(timeout):
            while len(buf) < n:
                ready = asyncio.Event()
                loop.add_reader(self.master, ready.set)
                try:
                    await ready.wait()
                finally:
                    loop.remove_reader(self.master)
                with contextlib.suppress(BlockingIOError):
                    buf += os.read(self.master, n - len(buf))
        return bytes(buf)

    def drain(self) -> bytes:
        """What is on the line now, without waiting."""
        out = bytearray()
        while True:
            try:
                chunk = os.read(self.master, 4096)
            except (BlockingIOError, OSError):
                return bytes(out)
            if not chunk:
                return bytes(out)
            out += chunk

    def close(self) -> None:
        """Unplug: the master goes first, so the other side's fd is hung up."""
        if not self.closed:
            self.closed = True
            os.close(self.master)
            os.close(self.slave)
