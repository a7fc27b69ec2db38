"""`edgeveil emulate`: a fleet of emulated nodes, each the unchanged node firmware on its own
pseudo-terminal, for integrators and tests that need nodes without hardware.

Prints one line per node (``node <id> <device> zone <zone>``), then the path of the node
registry (JSON, mode 0600: it holds the node secrets) that a gateway imports, and runs until
Ctrl-C or SIGTERM, restarting nodes that the scenario reboots or power-cuts. Open a node's
device path with pyserial as you would a USB-serial board.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from firmware.host.fleet import EmulatedNode, Fleet, FleetError
from firmware.host.scenario import FAULT_NAMES, SCENARIOS, FaultProfile, parse_faults

MAX_NODES = 256
MAX_INTERVAL_S = 86400


class EmulateError(Exception):
    """A problem with the options or the start of the fleet: one line for the user."""


def scenario_help() -> str:
    return "; ".join(f"{p.name}: {p.description}" for p in SCENARIOS.values())


def faults_help() -> str:
    return (
        f"comma-separated faults from {', '.join(FAULT_NAMES)}, each optionally =VALUE: "
        "garbage=P and drop=P (probability per write, 0..1), reboot=S and power-cut=S (mean "
        "seconds between), drift=PPM (clock drift); or all, or none. Default: the scenario's"
    )


def check_options(
    nodes: int, reading_interval: int, scenario: str, faults: str | None, duration: float | None
) -> FaultProfile | None:
    """Validate what the user typed; EmulateError says what is wrong in one line."""
    if not 1 <= nodes <= MAX_NODES:
        raise EmulateError(f"--nodes must be 1..{MAX_NODES}, got {nodes}")
    if not 1 <= reading_interval <= MAX_INTERVAL_S:
        raise EmulateError(
            f"--reading-interval must be 1..{MAX_INTERVAL_S} seconds, got {reading_interval}"
        )
    if scenario not in SCENARIOS:
        raise EmulateError(f"--scenario: unknown {scenario!r} (known: {', '.join(SCENARIOS)})")
    if duration is not None and not duration > 0:
        raise EmulateError(f"--duration must be more than 0 seconds, got {duration}")
    if faults is None:
        return None
    try:
        return parse_faults(faults)
    except ValueError as exc:
        raise EmulateError(f"--faults: {exc}") from exc


def run_emulate(
    nodes: int,
    *,
    out: Path | None = None,
    seed: int = 0,
    scenario: str = "office",
    reading_interval: int = 5,
    faults: str | None = None,
    duration: float | None = None,
) -> int:
    """Start the fleet, print the nodes and the registry, run until Ctrl-C, SIGTERM or
    `duration` seconds, then stop every node."""
    fault_profile = check_options(nodes, reading_interval, scenario, faults, duration)
    if out is not None:
        if out.exists() and not out.is_dir():
            raise EmulateError(f"--out {out}: exists and is not a directory")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EmulateError(f"--out {out}: cannot create it: {exc.strerror}") from exc

    def on_event(node: EmulatedNode, text: str) -> None:
        print(f"node {node.node_id}: {text}", file=sys.stderr, flush=True)

    fleet = Fleet(
        nodes,
        seed=seed,
        directory=out,
        scenario=scenario,
        faults=fault_profile,
        reading_interval=reading_interval,
        on_event=on_event,
    )
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            fleet.start()
        except FleetError as exc:
            raise EmulateError(str(exc)) from exc
        for node in fleet.nodes:
            print(f"node {node.node_id} {node.device} zone {node.zone}", flush=True)
        print(f"registry {fleet.registry_path}", flush=True)
        enabled = ", ".join(fleet.faults.enabled()) or "none"
        print(
            f"{nodes} emulated node{'s' if nodes > 1 else ''} running (scenario {scenario}, "
            f"seed {seed}, faults {enabled}); consoles in {fleet.directory}/node-*/console.log; "
            "Ctrl-C stops them",
            file=sys.stderr,
            flush=True,
        )
        deadline = None if duration is None else time.monotonic() + duration
        while not stop.wait(0.2):
            if deadline is not None and time.monotonic() >= deadline:
                break
    finally:
        fleet.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
