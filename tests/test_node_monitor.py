"""`edgeveil node monitor`: console text and frames apart, frames verified with the registry."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import serial

from firmware.host.fleet import Fleet
from gateway.node.monitor import Judge, StreamSplitter
from gateway.registry import NodeRegistry, frame_digest
from protocol import Event, NodeKeys, encode_serial, seal

from .command import edgeveil

pytestmark = pytest.mark.slow  # end to end: scripts/test -m "not slow" skips it

SECRET = bytes(range(32))  # test key, not used anywhere else
NODE = 4660


def _frame(counter: int, secret: bytes = SECRET, node: int = NODE) -> bytes:
    return seal(Event(0, counter), counter, NodeKeys(node, secret))


def test_splitter_tells_console_lines_frames_and_noise_apart() -> None:
    frame = _frame(1)
    stream = (
        b"edgeveil node 4660 firmware 0.1.0 starting\r\n"
        + encode_serial(frame)
        + b'Traceback (most recent call last):\r\n  File "app.py"\r\n'
        + b"\x00\x07\xff\x13\x80\x00"  # binary garbage between delimiters
        + encode_serial(_frame(2))
    )
    events = []
    splitter = StreamSplitter()
    for i in range(len(stream)):  # one byte at a time: chunks cut anywhere
        events.extend(splitter.feed(stream[i : i + 1]))
    kinds = [(e.kind, e.text) if e.kind != "frame" else ("frame", e.frame) for e in events]
    assert kinds == [
        ("console", "edgeveil node 4660 firmware 0.1.0 starting"),
        ("frame", frame),
        ("console", "Traceback (most recent call last):"),
        ("console", '  File "app.py"'),
        ("noise", kinds[4][1]),
        ("frame", _frame(2)),
    ]
    assert str(kinds[4][1]).startswith("bad_")


def test_console_line_shows_before_the_next_delimiter() -> None:
    splitter = StreamSplitter()
    assert splitter.feed(b"\x00") == []
    events = splitter.feed(b"edgeveil: cannot start: edgeveil.json not found\r\npartial")
    assert [e.text for e in events] == ["edgeveil: cannot start: edgeveil.json not found"]
    assert [e.text for e in splitter.feed(b" line\x00")] == ["partial line"]


@pytest.fixture
def registry(tmp_path: Path) -> NodeRegistry:
    reg = NodeRegistry.open(tmp_path / "registry.db")
    reg.add(NODE, SECRET, "hal")
    return reg


def test_judge_verifies_counts_duplicates_and_names_rejections(registry: NodeRegistry) -> None:
    judge = Judge(registry)
    ok, line = judge.judge(_frame(5))
    assert ok
    assert line.startswith("node 4660 #5 event {")
    ok, line = judge.judge(_frame(5))
    assert ok
    assert "duplicate" in line
    ok, line = judge.judge(_frame(6, secret=bytes(32)))
    assert not ok
    assert "auth_failed" in line
    assert "provision and deploy it again" in line
    ok, line = judge.judge(_frame(1, node=99))
    assert not ok
    assert "node 99 #1 event: unknown_node" in line
    ok, line = judge.judge(b"\x01\x02\x03")
    assert not ok
    assert judge.summary(console=2, noise=1) == (
        "frames: 1 verified, 1 duplicate, 3 rejected (auth_failed 1, "
        f"{line.split(':')[0]} 1, unknown_node 1); console lines: 2; noise: 1 chunks"
    )
    registry.close()


def test_judge_tells_a_reused_counter_from_a_retransmission(registry: NodeRegistry) -> None:
    """Two boards with one identity: the second seals other content under a counter the
    first used, seen here or accepted by the gateway whose registry the monitor reads."""
    judge = Judge(registry)
    assert judge.judge(_frame(5))[0]
    clone = seal(Event(1, 5), 5, NodeKeys(NODE, SECRET))
    ok, line = judge.judge(clone)
    assert not ok
    assert line.startswith("node 4660 #5 event: counter_reuse: counter reused: two boards or a ")
    assert "edgeveil node provision" in line
    registry.accept(NODE, 9, frame_digest(_frame(9)))  # the gateway accepted counter 9
    assert judge.judge(_frame(9))[0]  # the same frame: fine
    ok, line = Judge(registry).judge(seal(Event(1, 9), 9, NodeKeys(NODE, SECRET)))
    assert not ok
    assert "counter_reuse" in line
    registry.close()


def test_monitor_verifies_an_emulated_nodes_frames_live(tmp_path: Path) -> None:
    with Fleet(n=1, seed=3, directory=tmp_path / "fleet", reading_interval=1) as fleet:
        node = fleet.nodes[0]
        result = edgeveil(
            "node", "monitor", "--port", node.device, "--registry", str(fleet.registry_path),
            "--once", "--duration", "30",
        )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"frame    node {node.node_id} #" in result.stdout
    assert "frames: 1 verified, 0 duplicate, 0 rejected" in result.stdout


def test_monitor_port_problems_are_one_line(tmp_path: Path) -> None:
    export = tmp_path / "e.json"
    with NodeRegistry.open(tmp_path / "r.db") as reg:
        reg.add(NODE, SECRET)
        reg.export_file(export)
    absent = edgeveil("node", "monitor", "--port", "/dev/ttyUSB97", "--registry", str(export))
    assert absent.returncode == 2
    assert "plug the board in" in absent.stderr
    master, slave = os.openpty()
    try:
        silent = edgeveil(
            "node", "monitor", "--port", os.ttyname(slave), "--registry", str(export),
            "--duration", "0.5",
        )  # fmt: skip
        assert silent.returncode == 1
        assert "frames: 0 verified" in silent.stdout
        assert "no frames: a node with a uart link sends them on its own pins" in silent.stdout
        with serial.Serial(os.ttyname(slave), exclusive=True):  # another program has it
            busy = edgeveil(
                "node", "monitor", "--port", os.ttyname(slave), "--registry", str(export)
            )
    finally:
        os.close(master)
        os.close(slave)
    assert busy.returncode == 2
    assert "busy: another program" in busy.stderr
    assert len(busy.stderr.strip().splitlines()) == 1
