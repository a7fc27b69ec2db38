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


# -- LoRa -------------------------------------------------------------------------------------

MAX_LORA_NODES = 5000
MAX_LORA_GATEWAYS = 16
LORA_READING_INTERVAL_S = 60  # one channel at SF9 carries ~200 nodes at this rate (G ~0.7)


def check_lora_options(  # noqa: PLR0917 - one per option, each named at the call
    nodes: int,
    gateways: int,
    forwarder: str,
    sf: int,
    area_m: float,
    random_loss: float,
    reading_interval: float,
    duration: float | None,
) -> tuple[str, int]:
    """Validate the LoRa options; the forwarder's (host, port), or EmulateError in one line."""
    from firmware.host.forwarder import parse_address  # noqa: PLC0415

    if not 1 <= nodes <= MAX_LORA_NODES:
        raise EmulateError(f"--nodes must be 1..{MAX_LORA_NODES} with --link lora, got {nodes}")
    if not 1 <= gateways <= MAX_LORA_GATEWAYS:
        raise EmulateError(f"--gateways must be 1..{MAX_LORA_GATEWAYS}, got {gateways}")
    if not 7 <= sf <= 12:
        raise EmulateError(f"--sf must be 7..12, got {sf}")
    if not 10 <= area_m <= 100_000:
        raise EmulateError(f"--area-m must be 10..100000 metres, got {area_m:g}")
    if not 0 <= random_loss < 1:
        raise EmulateError(f"--random-loss must be a probability 0..1, got {random_loss:g}")
    if not 1 <= reading_interval <= MAX_INTERVAL_S:
        raise EmulateError(
            f"--reading-interval must be 1..{MAX_INTERVAL_S} seconds, got {reading_interval:g}"
        )
    if duration is not None and not duration > 0:
        raise EmulateError(f"--duration must be more than 0 seconds, got {duration}")
    try:
        return parse_address(forwarder)
    except ValueError as exc:
        raise EmulateError(f"--forwarder: {exc}") from None


def run_emulate_lora(
    nodes: int,
    *,
    gateways: int = 1,
    forwarder: str = "127.0.0.1:1700",
    sf: int = 9,
    area_m: float = 2000.0,
    out: Path | None = None,
    seed: int = 0,
    reading_interval: float = LORA_READING_INTERVAL_S,
    capture: bool = True,
    random_loss: float = 0.0,
    duration: float | None = None,
) -> int:
    """Emulated LoRa nodes on the simulated channel, heard by `gateways` emulated packet
    forwarders that send to the gateway at `forwarder` (Semtech UDP), in real time. Prints the
    nodes, the gateways and the registry, runs until Ctrl-C, SIGTERM or `duration` seconds,
    then prints what the channel delivered."""
    import asyncio  # noqa: PLC0415 - this command only
    import shutil  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    from firmware.host.lora_fleet import LoraFleet  # noqa: PLC0415

    server = check_lora_options(
        nodes, gateways, forwarder, sf, area_m, random_loss, reading_interval, duration
    )
    directory = out if out is not None else Path(tempfile.mkdtemp(prefix="edgeveil-lora-"))
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EmulateError(f"--out {directory}: cannot create it: {exc.strerror}") from exc

    fleet = LoraFleet(
        nodes,
        gateways=gateways,
        servers=[server],
        sf=sf,
        area_m=area_m,
        reading_interval=reading_interval,
        seed=seed,
        capture=capture,
        random_loss=random_loss,
    )
    registry = directory / "registry.json"
    fleet.write_registry(registry)
    for node in fleet.nodes:
        print(f"node {node.node_id} x {node.x_m:.0f} y {node.y_m:.0f} zone {node.zone}")
    for gw in fleet.gateways:
        print(f"gateway {gw.eui.hex().upper()} x {gw.x_m:.0f} y {gw.y_m:.0f} -> {forwarder}")
    print(f"registry {registry}", flush=True)
    euis = ", ".join(f'"{gw.eui.hex().upper()}"' for gw in fleet.gateways)
    print(
        f"{nodes} emulated LoRa node{'s' if nodes > 1 else ''} (SF{sf}, 868.1 MHz, "
        f"{area_m:g} m square, a reading every {reading_interval:g} s within the 1 % duty "
        f"cycle) and {gateways} packet "
        f"forwarder{'s' if gateways > 1 else ''} sending to {forwarder}; the gateway's "
        f"[[lora.packet_forwarder]] needs gateways = [{euis}]; Ctrl-C stops them",
        file=sys.stderr,
        flush=True,
    )

    async def main() -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            if task is not None:
                loop.add_signal_handler(sig, task.cancel)
        await fleet.run(duration if duration is not None else 10 * 365 * 86400.0, speed=1.0)

    started = time.monotonic()
    try:
        asyncio.run(main())
    except asyncio.CancelledError:
        pass  # Ctrl-C or SIGTERM: the report below covers what ran
    finally:
        if out is None:
            shutil.rmtree(directory, ignore_errors=True)
    report = fleet.report(time.monotonic() - started)
    losses = ", ".join(f"{n} {reason}" for reason, n in sorted(report.losses.items())) or "none"
    print(
        f"{report.sent} frames sent, {report.delivered} received by a gateway (delivery ratio "
        f"{report.delivery_ratio:.3f}; lost: {losses}); offered load {report.offered_load:.2f} "
        "Erlang",
        file=sys.stderr,
    )
    return 0
