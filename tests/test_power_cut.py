"""Power cuts: the node is killed (SIGKILL, no clean-up of any kind) at random instants, 200
times (20 in the quick loop, scripts/test -m "not slow"), and restarted each time on the same
flash. No frame counter may ever be used twice, and
the counter may never move backwards.

Each "boot" is a forked child running the real node application (edgeveil_node.app.Node) with
its real FrameCounter on real files; it seals frames as fast as it can and writes each one to a
pipe, the wire. The parent cuts the power after a random delay, reads what reached the wire and
boots the node again.
"""

from __future__ import annotations

import os
import random
import signal
import struct
import time
from pathlib import Path

import pytest
from edgeveil_node import config as config_mod
from edgeveil_node.app import Node
from edgeveil_node.counter import FrameCounter

from protocol import NodeKeys, open_frame, parse_header

from . import firmware_env  # noqa: F401 - makes the firmware importable

SECRET = bytes(range(16, 32))  # TEST ONLY
NODE_ID = 9
CUTS = 200


class PipeLink:
    MAX_SIGHTINGS = 4

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, frame: bytes, personal: bool = False) -> None:
        os.write(self.fd, struct.pack(">H", len(frame)) + frame)  # < PIPE_BUF: atomic

    def poll(self) -> tuple[()]:
        return ()


class Sensor:
    QUANTITIES = (0,)

    def read_into(self, values: dict[int, int]) -> None:
        values[0] = 215


def boot(flash: Path, wire: int) -> None:
    """The node's life until the power goes: runs in the forked child, never returns."""
    try:
        os.chdir(flash)
        start = time.monotonic()
        time.ticks_ms = lambda: int((time.monotonic() - start) * 1000)  # type: ignore[attr-defined]
        time.ticks_diff = lambda a, b: a - b  # type: ignore[attr-defined]
        time.ticks_add = lambda a, b: a + b  # type: ignore[attr-defined]
        config = config_mod.Config(
            {
                "node_id": NODE_ID,
                "secret": SECRET.hex(),
                "retransmit": {"ack_timeout_ms": 3_600_000, "max_retries": 0, "queue": 48},
            }
        )
        node = Node(
            config,
            NodeKeys(NODE_ID, SECRET),
            FrameCounter(),
            PipeLink(wire),
            sensors=[Sensor()],
            settings_file="settings.json",
        )
        while True:
            node.readings_cycle()
    finally:
        os._exit(1)


def read_frames(fd: int) -> list[bytes]:
    data = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    frames = []
    while len(data) >= 2:
        (n,) = struct.unpack(">H", data[:2])
        frames.append(data[2 : 2 + n])
        data = data[2 + n :]
    assert not data, "a frame was torn on the wire"
    return frames


@pytest.mark.parametrize("cuts", [20, pytest.param(CUTS, marks=pytest.mark.slow)])
def test_power_cuts_never_reuse_a_counter(tmp_path: Path, cuts: int) -> None:
    rng = random.Random(2026)
    keys = NodeKeys(NODE_ID, SECRET)
    counters: list[int] = []
    boots_that_sent = 0
    for _ in range(cuts):
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            boot(tmp_path, write_end)
        os.close(write_end)
        time.sleep(rng.uniform(0, 0.05))  # the power goes at a random instant
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        frames = read_frames(read_end)
        os.close(read_end)
        boots_that_sent += bool(frames)
        for frame in frames:
            header = parse_header(frame)
            open_frame(frame, keys, header=header)  # every frame on the wire is intact and valid
            counters.append(header.counter)
    # some cuts come before the first frame (that is part of the test); most must not, or the
    # test would prove little. A loaded machine delays the children, hence the margin.
    assert boots_that_sent > cuts // 5, f"only {boots_that_sent} boots got to send"
    assert len(counters) == len(set(counters)), "a counter value was used twice"
    assert counters == sorted(counters), "the counter moved backwards"
