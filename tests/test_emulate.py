"""Emulated nodes on real pseudo-terminals: `edgeveil emulate`, the Fleet API, and the unchanged
node firmware sending sealed frames that the gateway side opens with the registry's secret."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import serial

from firmware.host.fleet import Fleet
from gateway.cli import main as edgeveil
from gateway.registry import NodeRegistry
from protocol import (
    NEED_DATA,
    RemoteProtocolError,
    StreamDecoder,
    open_frame,
    parse_header,
)
from protocol.messages import MESSAGE_CLASSES
from protocol.quantities import quantity_id

from .command import child_process
from .waiting import until_sync

pytestmark = pytest.mark.slow  # end to end: scripts/test -m "not slow" skips it

ROOT = Path(__file__).resolve().parent.parent
NODE_LINE = re.compile(r"^node (\d+) (/dev/pts/\d+) zone (\S+)$")


def _nodes_under(text: str) -> list[int]:
    """Pids of live node processes whose command line contains `text` (their flash path)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().split(") ", 1)[1][:1]
        except OSError:
            continue
        if text.encode() in cmdline and b"firmware.host.node" in cmdline and state != "Z":
            pids.append(int(entry.name))
    return pids


class _Lines:
    """The lines a child process prints, with a timeout per line."""

    def __init__(self, stream: Any) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: Any) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def next(self, timeout: float = 15.0) -> str:
        line = self._queue.get(timeout=timeout)
        assert line is not None, "the command ended early"
        return line


# -- edgeveil emulate ---------------------------------------------------------------------------


def test_emulate_starts_nodes_prints_devices_and_writes_a_private_registry(
    tmp_path: Path,
) -> None:
    out = tmp_path / "fleet"
    with child_process(
        [sys.executable, "-m", "gateway.cli", "emulate", "--nodes", "2", "--out", str(out),
         "--reading-interval", "1", "--seed", "3"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=ROOT,
    ) as proc:  # fmt: skip
        try:
            lines = _Lines(proc.stdout)
            nodes = [NODE_LINE.match(lines.next()) for _ in range(2)]
            assert all(nodes), nodes
            registry_line = lines.next()
            assert registry_line == f"registry {out / 'registry.json'}"
            registry_path = out / "registry.json"
            assert stat.S_IMODE(registry_path.stat().st_mode) == 0o600
            registry = json.loads(registry_path.read_text())
            assert registry["format"] == "edgeveil-registry"
            assert registry["version"] == 1
            entries = registry["nodes"]
            assert [(str(e["node_id"]), e["device"], e["zone"]) for e in entries] == [
                m.groups() for m in nodes if m
            ]
            assert len({e["node_id"] for e in entries}) == 2
            for entry in entries:
                assert re.fullmatch(r"[0-9a-f]{32}", entry["secret"])
                fd = os.open(entry["device"], os.O_RDWR | os.O_NOCTTY)  # a terminal, like ttyUSB0
                try:
                    assert os.isatty(fd)
                finally:
                    os.close(fd)
            assert len(_nodes_under(str(out))) == 2
        finally:
            proc.send_signal(signal.SIGTERM)  # a clean stop: the nodes go with it
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for pid in _nodes_under(str(out)):  # never leave nodes behind
                os.kill(pid, signal.SIGKILL)
        assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    assert _nodes_under(str(out)) == []


def test_emulate_out_may_be_a_relative_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each node runs in its own flash directory: a relative --out must still name the one
    under the directory emulate was started in (it used to fail: --flash: no such directory)."""
    monkeypatch.chdir(tmp_path)
    assert edgeveil(["emulate", "--out", "fleet", "--duration", "0.1"]) == 0  # nodes were up
    lines = capsys.readouterr().out.splitlines()
    node = NODE_LINE.match(lines[0])
    assert node is not None, lines
    fleet = tmp_path.resolve() / "fleet"
    assert lines[1] == f"registry {fleet / 'registry.json'}"
    assert (fleet / f"node-{node.group(1)}" / "flash" / "edgeveil.json").is_file()
    assert _nodes_under(str(fleet)) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--nodes", "0"), "--nodes must be 1..256, got 0"),
        (("--nodes", "-3"), "--nodes must be 1..256, got -3"),
        (("--reading-interval", "0"), "--reading-interval must be"),
        (("--faults", "lightning"), "unknown fault 'lightning'"),
        (("--faults", "drop=7"), "drop=7"),
        (("--scenario", "moon"), "unknown 'moon'"),
    ],
)
def test_emulate_bad_arguments_give_one_line_and_status_2(
    args: tuple[str, ...], message: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "emulate", *args],
        capture_output=True, text=True, check=False, timeout=30, stdin=subprocess.DEVNULL,
        cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("edgeveil emulate: error: ")
    assert message in result.stderr
    assert result.stdout == ""


# -- the Fleet API --------------------------------------------------------------------------------

# A stand-in firmware that uses the link UART directly: it resets itself once after its first
# power-on (the runner must start it again with HARD_RESET), then answers "cause?" with its
# reset cause and echoes everything else.
ECHO_MAIN = """
import machine, os, time
uart = machine.UART(1, baudrate=115200, tx=17, rx=16)
if "reset-once" not in os.listdir():
    open("reset-once", "w").close()
    machine.reset()
while True:
    data = uart.read()
    if data and b"cause?" in data:
        uart.write(b"cause %d\\n" % machine.reset_cause())
    elif data:
        uart.write(b"echo " + data)
    time.sleep_ms(5)
"""


def _read_until(port: serial.Serial, needle: bytes, timeout: float = 8.0) -> bytes:
    data = bytearray()

    def found() -> bool:
        data.extend(port.read(64))  # waits up to the port's timeout
        return needle in data

    until_sync(found, f"{needle!r} from the node", timeout, lambda: bytes(data), interval=0)
    return bytes(data)


def _cause(port: serial.Serial, timeout: float = 8.0) -> int:
    """Ask the node for its reset cause until it answers (it may still be booting)."""
    data = bytearray()

    def answer() -> re.Match[bytes] | None:
        port.write(b"cause?\n")
        data.extend(port.read(64))
        return re.search(rb"cause (\d)\n", data)

    return int(until_sync(answer, "the node's reset cause", timeout, lambda: bytes(data))[1])


def test_fleet_pty_talks_like_a_serial_board_across_resets_and_power_cuts(
    tmp_path: Path,
) -> None:
    script = tmp_path / "echo_main.py"
    script.write_text(ECHO_MAIN)
    with Fleet(n=1, seed=1, directory=tmp_path / "fleet", firmware_main=script) as fleet:
        node = fleet.nodes[0]
        assert stat.S_IMODE(fleet.registry_path.stat().st_mode) == 0o600
        assert stat.S_IMODE((node.flash / "edgeveil.json").stat().st_mode) == 0o600
        device = node.device
        with serial.serial_for_url(device, baudrate=115200, timeout=0.1) as port:
            assert _cause(port) == 2  # machine.reset() -> restarted with HARD_RESET
            port.write(b"ping\n")
            _read_until(port, b"echo ping\n")
            assert node.reset_causes == ["power_on", "hard"]

            fleet.power_cut(0)  # kill -9 at whatever it was doing; power back at once
            fleet.wait_ready(0)
            assert node.device == device  # the same path: the adapter stayed
            assert _cause(port) == 1  # PWRON_RESET
            port.write(b"after the cut\n")
            _read_until(port, b"echo after the cut\n")

            fleet.restart(0)  # the reset button
            assert _cause(port) == 2
            assert node.reset_causes == ["power_on", "hard", "power_on", "hard"]
            pid = node.pid

            fleet.power_cut(0, off_s=None)  # stays off: the line is dead, writes never block
            assert node.state == "off"
            port.write(b"x" * 20000)
            port.flush()
            fleet.power_on(0)
            assert _cause(port) == 1
            assert node.pid != pid
    assert node.state == "stopped"
    assert _nodes_under(str(tmp_path)) == []


def test_scenario_reboots_and_power_cuts_are_survived(tmp_path: Path) -> None:
    script = tmp_path / "echo_main.py"
    script.write_text(ECHO_MAIN)
    events: list[str] = []
    with Fleet(
        n=1,
        seed=4,
        directory=tmp_path / "fleet",
        faults="reboot=0.4,power-cut=0.4",
        firmware_main=script,
        on_event=lambda node, text: events.append(text),
    ) as fleet:
        node = fleet.nodes[0]
        until_sync(
            lambda: "hard" in node.reset_causes[2:] and node.reset_causes.count("power_on") > 1,
            "a scenario reboot and power cut",
            8,
            lambda: (node.reset_causes, events),
        )
        assert any(e.startswith("scenario: power cut") for e in events)
        with serial.serial_for_url(node.device, baudrate=115200, timeout=0.1) as port:
            assert _cause(port) in (1, 2)  # still answering, on the same device path


def test_fleet_identities_are_fresh_every_time(tmp_path: Path) -> None:
    seen = []
    for run in range(2):
        with Fleet(n=2, seed=5, directory=tmp_path / f"run{run}") as fleet:
            seen.append({(n.node_id, n.secret) for n in fleet.nodes})
            assert all(len(n.secret) == 16 for n in fleet.nodes)
    assert not seen[0] & seen[1]
    assert len({node_id for node_id, _ in seen[0] | seen[1]}) == 4


# -- end to end: the real firmware ------------------------------------------------------------


@pytest.fixture
def firmware_fleet(tmp_path: Path) -> Iterator[Fleet]:
    with Fleet(n=1, seed=2, directory=tmp_path / "fleet", reading_interval=1) as fleet:
        yield fleet


def test_firmware_sends_sealed_frames_the_registry_secret_opens(firmware_fleet: Fleet) -> None:
    registry = json.loads(firmware_fleet.registry_path.read_text())
    entry = registry["nodes"][0]
    # the gateway's own registry imports the file and gives the keys
    with NodeRegistry.open(firmware_fleet.directory / "gateway.db") as gateway_registry:
        assert gateway_registry.import_file(firmware_fleet.registry_path) == 1
        node = gateway_registry.get(entry["node_id"])
        assert node is not None and node.zone == entry["zone"]
        keys = node.keys
    decoder = StreamDecoder()
    messages: dict[str, list[Any]] = {}
    with serial.serial_for_url(entry["device"], baudrate=115200, timeout=0.1) as port:

        def read_frames() -> bool:
            decoder.feed(port.read(512))
            while True:
                try:
                    frame = decoder.next_event()
                except RemoteProtocolError:
                    continue  # line noise or console text: not a frame
                if frame is NEED_DATA:
                    break
                assert isinstance(frame, bytes)
                header = parse_header(frame)
                assert header.node_id == entry["node_id"]
                kind = MESSAGE_CLASSES[header.msg_type]
                message = open_frame(frame, keys, uplink=True, header=header)
                messages.setdefault(kind.NAME, []).append(message)
            return {"readings", "status"} <= messages.keys() and bool(_boot_events(messages))

        until_sync(
            read_frames,
            "a boot event, readings and a status from the node",
            12,
            lambda: f"got {sorted(messages)}; console: {firmware_fleet.nodes[0].console_text()}",
            interval=0,
        )
    # (frames sent before the port was opened were flushed by pyserial's open(); the node
    # sends them again until the gateway acknowledges them)
    assert _boot_events(messages)[0].value == 1  # PWRON_RESET
    values = messages["readings"][0].values
    assert quantity_id("temperature") in values
    assert -400 < values[quantity_id("temperature")] < 600  # 0.1 degC


def _boot_events(messages: dict[str, list[Any]]) -> list[Any]:
    return [m for m in messages.get("event", []) if m.to_dict()["event"] == "boot"]
