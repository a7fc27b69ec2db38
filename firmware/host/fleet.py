"""A fleet of emulated nodes: each one the unchanged firmware in its own process, on its own
pseudo-terminal, with a fresh identity, supervised like boards on a bench.

    from firmware.host.fleet import Fleet

    with Fleet(n=3, seed=1, directory=tmp_path) as fleet:
        node = fleet.nodes[0]
        node.device, node.node_id, node.secret, node.zone   # open node.device with pyserial
        fleet.power_cut(0)          # kill -9, power back after a moment (PWRON_RESET)
        fleet.restart(1)            # the reset button (HARD_RESET)
        fleet.registry_path         # JSON the gateway imports (mode 0600: it holds secrets)

Options: scenario and faults (firmware/host/scenario.py; faults as in `--faults`, e.g.
"drop=0.1,garbage"), reading_interval (seconds), configure(index, config) to change a node's
edgeveil.json before it starts (e.g. config["link"] = {"type": "serial", "port": "console"}),
on_event(node, text) to hear about resets and power cuts, on_registry(path) to hear that the
registry is written (before any board starts), firmware_main to run a script of your own
instead of firmware/main.py (it gets the same shims and board).

LoRa nodes: configure each node's link as LoRa (medium.lora_node_config) and give the address
of a running RadioMedium (firmware/host/medium.py) as radio_medium: the boards' `lora` modems
transmit into its channel; the pty stays each node's USB console. start_gap_s switches the
nodes on one after the other: boards switched on at the same instant send their first frames
at the same instant, and on one radio channel those collide.

Identities are fresh every time: node ids and 16-byte secrets from os.urandom, never fixed and
never derived from the seed (the seed makes the world repeatable, not the keys).

The runner keeps each node's pty open for the whole run, so the device path survives reboots
and power cuts, as a USB-serial adapter stays on the host while the board behind it restarts;
while a node is off, what the gateway writes is drained and lost, as on a dead line. A node
process that resets itself (machine.reset(), the watchdog, deepsleep) exits with a status that
names the reset cause (board.EXIT_STATUS) and is started again with that cause; the scenario's
reboots and power cuts are SIGKILL, then a start with HARD_RESET or (after the power was off a
while) PWRON_RESET.

Directory layout: DIR/registry.json, and per node DIR/node-<id>/flash/ (the board's flash:
edgeveil.json, counter files), DIR/node-<id>/console.log (console output and emulator
diagnostics of every life).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import termios
import threading
import time
import tty
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firmware.edgeveil_node import counter  # the node's own counter state format

from .scenario import FaultProfile, PowerEvent, Scenario, format_faults, parse_faults

__all__ = ["ENV_MEDIUM", "EmulatedNode", "Fleet", "FleetError", "default_config", "write_private"]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

REGISTRY_FORMAT = "edgeveil-registry"
REGISTRY_VERSION = 1
READY_TIMEOUT_S = 15.0

ENV_MEDIUM = "EDGEVEIL_RADIO_MEDIUM"  # the radio medium of LoRa boards (medium.py), HOST:PORT
# board.EXIT_STATUS, repeated here so that this module does not import the board (it runs in
# the runner, which never touches emulated hardware)
_EXIT_CAUSES = {72: "hard", 73: "watchdog", 74: "deep_sleep", 75: "soft"}


class FleetError(Exception):
    """A node could not be started or supervised; the message says which and why."""


def default_config(
    node_id: int, secret: bytes, zone: str, reading_interval: int = 5
) -> dict[str, Any]:
    """An ESP32-style board: link on UART 1, BME280 + SHT4x on I2C 0, a PMS5003 on UART 2, a
    PIR, a battery divider and BLE scanning, with intervals short enough for tests."""
    r = reading_interval
    return {
        "node_id": node_id,
        "secret": secret.hex(),
        "zone": zone,
        "link": {
            "type": "serial",
            "port": "uart",
            "uart": 1,
            "baudrate": 115200,
            "tx": 17,
            "rx": 16,
        },
        "sensors": [
            {"type": "bme280", "i2c": 0, "scl": 22, "sda": 21, "address": 0x76},
            {"type": "sht4x", "i2c": 0, "scl": 22, "sda": 21, "address": 0x44},
            {"type": "pms5003", "uart": 2, "rx": 25, "tx": 26},
            {"type": "pir", "pin": 27},
            {"type": "battery", "pin": 35},
            {"type": "ble_scan"},
        ],
        "intervals": {
            "reading_s": r,
            "status_s": max(10, 6 * r),
            "scan_s": max(5, 2 * r),
            "scan_window_s": 2 if r >= 2 else 1,
        },
        "retransmit": {"ack_timeout_ms": 2000, "max_retries": 5, "queue": 16},
        "watchdog_ms": 10000,
        "sleep": False,
    }


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner may read (mode 0600), atomically."""
    tmp = path.with_name("." + path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode("utf-8"))
    finally:
        os.close(fd)
    os.replace(tmp, path)


@dataclass
class EmulatedNode:
    """One node of a fleet. `device` is the path to open; it stays the same across reboots."""

    index: int
    node_id: int
    secret: bytes = field(repr=False)  # never in a log line or a test report
    zone: str
    directory: Path
    config: dict[str, Any] = field(repr=False)  # holds the secret too
    unique_id: bytes
    device: str = ""
    state: str = "new"  # new, running, off, failed, stopped
    boots: int = 0  # lives started so far
    reset_causes: list[str] = field(default_factory=list)  # the cause of each life
    process: subprocess.Popen[bytes] | None = None
    master: int = -1
    slave: int = -1
    _expected_exit: bool = False
    _power_on_at: float | None = None
    _events: Iterator[PowerEvent] | None = None
    _next_event: PowerEvent | None = None

    @property
    def flash(self) -> Path:
        return self.directory / "flash"

    @property
    def log_path(self) -> Path:
        return self.directory / "console.log"

    @property
    def ready_path(self) -> Path:
        return self.directory / "ready"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def registry_entry(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "secret": self.secret.hex(),
            "zone": self.zone,
            "device": self.device,
        }

    def console_text(self) -> str:
        """Everything the node printed so far (all lives), with emulator diagnostics."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""


class Fleet:
    """N emulated nodes and the runner that keeps them alive. Use as a context manager, or
    call start() and stop()."""

    def __init__(
        self,
        n: int = 1,
        *,
        seed: int = 0,
        directory: str | Path | None = None,
        scenario: str | Sequence[str] = "office",
        faults: str | FaultProfile | None = None,
        reading_interval: int = 5,
        configure: Callable[[int, dict[str, Any]], dict[str, Any] | None] | None = None,
        on_event: Callable[[EmulatedNode, str], None] | None = None,
        protocol_backend: str = "micropython",
        ready_timeout: float = READY_TIMEOUT_S,
        firmware_main: str | Path | None = None,
        radio_medium: str | None = None,
        start_gap_s: float = 0.0,
        on_registry: Callable[[Path], None] | None = None,
    ) -> None:
        if n < 1:
            raise ValueError("a fleet needs at least 1 node")
        if reading_interval < 1:
            raise ValueError("reading_interval must be at least 1 second")
        if isinstance(faults, str):
            faults = parse_faults(faults)
        self.n = n
        self.seed = seed
        # one scenario for every node, or one per node (each node's zone is named after it)
        names = [scenario] * n if isinstance(scenario, str) else list(scenario)
        if len(names) != n:
            raise ValueError(f"{len(names)} scenarios for {n} nodes")
        self.scenario_names = names
        self.scenario_name = names[0]
        self.scenarios = [Scenario(name, seed, i, faults) for i, name in enumerate(names)]
        self.faults = self.scenarios[0].faults
        self.reading_interval = reading_interval
        self.configure = configure
        self.on_event = on_event
        self.on_registry = on_registry
        self.protocol_backend = protocol_backend
        self.ready_timeout = ready_timeout
        self.firmware_main = Path(firmware_main).resolve() if firmware_main is not None else None
        self.radio_medium = radio_medium
        self.start_gap_s = start_gap_s
        self._own_directory = directory is None
        # absolute: each node runs in its own flash directory, so a path relative to ours
        # (edgeveil emulate --out fleet) would name nothing there
        self.directory = (
            Path(directory).resolve()
            if directory is not None
            else Path(tempfile.mkdtemp(prefix="edgeveil-fleet-"))
        )
        self.nodes: list[EmulatedNode] = []
        self.world_start = 0.0
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._supervisor: threading.Thread | None = None
        self.started = False

    @property
    def registry_path(self) -> Path:
        return self.directory / "registry.json"

    # -- life cycle --------------------------------------------------------------------------

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Fleet:
        """Create the identities and flash directories, write the registry (then call
        on_registry(path): a gateway that imports it now misses none of the nodes' first
        frames), start every node and wait until each is up. FleetError if a node does not
        come up."""
        if self.started:
            return self
        self.started = True
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            os.chmod(self.directory, 0o700)
            self.world_start = time.time()
            self.nodes = [self._create(i) for i in range(self.n)]
            self._write_registry()
            if self.on_registry is not None:
                self.on_registry(self.registry_path)
            for i, node in enumerate(self.nodes):
                if i and self.start_gap_s > 0:
                    time.sleep(self.start_gap_s)  # boards not switched on at one instant
                self._spawn(node, "power_on")
            for node in self.nodes:
                self._wait_ready(node, self.ready_timeout)
        except BaseException:
            self.stop()
            raise
        self._supervisor = threading.Thread(target=self._supervise, name="fleet", daemon=True)
        self._supervisor.start()
        return self

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL after 2 s) and close the ptys."""
        self._stop.set()
        if self._supervisor is not None and self._supervisor is not threading.current_thread():
            self._supervisor.join(timeout=2)
        with self._lock:
            for node in self.nodes:
                node._expected_exit = True
                if node.process is not None and node.process.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        node.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 2.0
            for node in self.nodes:
                proc = node.process
                if proc is None:
                    continue
                try:
                    proc.wait(timeout=max(0.05, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    proc.wait(timeout=5)
                node.state = "stopped"
            for node in self.nodes:
                for fd in (node.master, node.slave):
                    if fd >= 0:
                        with contextlib.suppress(OSError):
                            os.close(fd)
                node.master = node.slave = -1
        if self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until stop() is called (True) or timeout seconds passed (False)."""
        return self._stop.wait(timeout)

    # -- nodes -------------------------------------------------------------------------------

    def _create(self, index: int) -> EmulatedNode:
        taken = {node.node_id for node in self.nodes}
        while True:
            node_id = int.from_bytes(os.urandom(4), "big")
            if node_id and node_id not in taken:
                break
        secret = os.urandom(16)
        zone = f"{self.scenario_names[index]}-{index + 1}"
        config = default_config(node_id, secret, zone, self.reading_interval)
        if self.configure is not None:
            changed = self.configure(index, config)
            if changed is not None:
                config = changed
        raw = bytearray(os.urandom(6))
        raw[0] = (raw[0] & 0xFC) | 0x02  # locally administered, like every address we make
        directory = self.directory / f"node-{node_id}"
        node = EmulatedNode(index, node_id, secret, zone, directory, config, bytes(raw))
        node.flash.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        # what `edgeveil node deploy` does on a first deploy: bind the identity to the chip and
        # give it its first counter state (a node refuses a configuration without either)
        config["board"] = node.unique_id.hex()
        write_private(node.flash / "edgeveil.json", json.dumps(config, indent=2) + "\n")
        slot = node.flash / counter.SLOTS[0]
        if not slot.exists():
            slot.write_bytes(counter.slot_bytes(1, 0, int(config.get("epoch", 0))))
        node.master, node.slave = open_pty()
        node.device = os.ttyname(node.slave)
        node._events = self.scenarios[index].power_events()
        node._next_event = next(node._events, None)
        return node

    def _spawn(self, node: EmulatedNode, cause: str) -> None:
        """Start the next life of `node` (lock held or before the supervisor runs)."""
        with contextlib.suppress(FileNotFoundError):
            node.ready_path.unlink()
        cmd = [
            sys.executable,
            "-m",
            "firmware.host.node",
            "--flash", str(node.flash),
            "--seed", str(self.seed),
            "--scenario", self.scenario_names[node.index],
            "--faults", format_faults(self.faults),
            "--node-index", str(node.index),
            "--ready-file", str(node.ready_path),
            "--reset-cause", cause,
            "--boot", str(node.boots),
            "--world-start", repr(self.world_start),
            "--pty", f"{node.master},{node.slave}",
            "--unique-id", node.unique_id.hex(),
            "--protocol-backend", self.protocol_backend,
        ]  # fmt: skip
        if self.firmware_main is not None:
            cmd += ["--main", str(self.firmware_main)]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        if self.radio_medium is not None:
            env[ENV_MEDIUM] = self.radio_medium  # where the board's `lora` modem transmits
        with open(node.log_path, "ab") as log:
            log.write(f"--- life {node.boots + 1}: reset cause {cause}\n".encode())
            log.flush()
            node.process = subprocess.Popen(  # noqa: S603 - our own node module
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(node.master, node.slave),
                cwd=node.flash,
                env=env,
                start_new_session=True,  # Ctrl-C in the terminal reaches the runner only
            )
        node.boots += 1
        node.reset_causes.append(cause)
        node.state = "running"
        node._expected_exit = False
        node._power_on_at = None

    def _wait_ready(self, node: EmulatedNode, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not node.ready_path.exists():
            proc = node.process
            if proc is not None and proc.poll() is not None:
                raise FleetError(
                    f"node {node.node_id} exited with status {proc.returncode} while starting:"
                    f" {_tail(node.console_text())}"
                )
            if time.monotonic() > deadline:
                raise FleetError(f"node {node.node_id} not up within {timeout:.0f} s")
            time.sleep(0.02)

    def wait_ready(self, index: int, timeout: float | None = None) -> None:
        """Wait until node `index` runs its firmware (after a restart or power-on)."""
        self._wait_ready(self.nodes[index], self.ready_timeout if timeout is None else timeout)

    def _write_registry(self) -> None:
        registry = {
            "format": REGISTRY_FORMAT,
            "version": REGISTRY_VERSION,
            "nodes": [node.registry_entry() for node in self.nodes],
        }
        write_private(self.registry_path, json.dumps(registry, indent=2) + "\n")

    def _event(self, node: EmulatedNode, text: str) -> None:
        if self.on_event is not None:
            self.on_event(node, text)

    # -- power -------------------------------------------------------------------------------

    def _kill(self, node: EmulatedNode) -> None:
        proc = node.process
        node._expected_exit = True
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()  # SIGKILL: nothing is saved, nothing is flushed
            proc.wait(timeout=5)

    def power_cut(self, index: int, off_s: float | None = 0.0) -> None:
        """Cut the power of node `index` (SIGKILL, at whatever it was doing). The power comes
        back after off_s seconds (the node starts with PWRON_RESET); None: it stays off
        until power_on()."""
        node = self.nodes[index]
        with self._lock:
            self._kill(node)
            node.state = "off"
            self._event(node, "power cut")
            if off_s is not None:
                if off_s <= 0:
                    self._spawn(node, "power_on")
                else:
                    node._power_on_at = time.monotonic() + off_s

    def power_on(self, index: int, wait: bool = True) -> None:
        node = self.nodes[index]
        with self._lock:
            if node.state == "running" and node.process is not None and node.process.poll() is None:
                return
            self._spawn(node, "power_on")
        if wait:
            self.wait_ready(index)

    def restart(self, index: int, wait: bool = True) -> None:
        """Press the reset button of node `index`: SIGKILL, then a start with HARD_RESET
        (PWRON_RESET if it was off)."""
        node = self.nodes[index]
        with self._lock:
            was_off = node.state != "running"
            self._kill(node)
            self._event(node, "reset button")
            self._spawn(node, "power_on" if was_off else "hard")
        if wait:
            self.wait_ready(index)

    # -- supervision -------------------------------------------------------------------------

    def _supervise(self) -> None:
        while not self._stop.wait(0.05):
            try:
                with self._lock:
                    for node in self.nodes:
                        self._check(node)
            except Exception as exc:  # keep supervising; say what broke
                print(f"[fleet] supervisor: {exc!r}", file=sys.stderr)

    def _check(self, node: EmulatedNode) -> None:
        now = time.monotonic()
        if node.state in ("off", "failed"):
            _drain(node.master)  # a dead line: the gateway's bytes go nowhere
            if node._power_on_at is not None and now >= node._power_on_at:
                self._spawn(node, "power_on")
                self._event(node, "power back")
            return
        if node.state != "running" or node.process is None:
            return
        status = node.process.poll()
        if status is not None and not node._expected_exit:
            cause = _EXIT_CAUSES.get(status)
            if cause is not None:
                self._event(node, f"reset ({cause})")
                _drain(node.master)
                self._spawn(node, cause)
            else:
                node.state = "failed"
                self._event(
                    node, f"emulator exited with status {status}: {_tail(node.console_text())}"
                )
            return
        event = node._next_event
        if event is not None and time.time() - self.world_start >= event.at:
            node._next_event = next(node._events, None) if node._events is not None else None
            if event.kind == "reboot":
                self._kill(node)
                self._event(node, "scenario: reboot")
                self._spawn(node, "hard")
            else:
                self._kill(node)
                node.state = "off"
                node._power_on_at = now + event.off_s
                self._event(node, f"scenario: power cut for {event.off_s:.1f} s")


def open_pty() -> tuple[int, int]:
    """A pty pair (master, slave), the slave raw: no echo, no line editing, no newline
    translation, as a USB-serial adapter. The board of a node started alone uses it too."""
    master, slave = os.openpty()
    tty.setraw(slave)
    attrs = termios.tcgetattr(slave)
    attrs[4] = attrs[5] = termios.B115200
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    return master, slave


def _drain(fd: int) -> None:
    if fd < 0:
        return
    os.set_blocking(fd, False)
    with contextlib.suppress(BlockingIOError, OSError):
        while os.read(fd, 4096):
            pass


def _tail(text: str, lines: int = 3) -> str:
    return " | ".join(text.strip().splitlines()[-lines:]) or "(no output)"
