"""`edgeveil emulate`: a fleet of emulated nodes, each the unchanged node firmware on its own
pseudo-terminal, for integrators and tests that need nodes without hardware.

Prints one line per node (``node <id> <device> zone <zone>``), then the path of the node
registry (JSON, mode 0600: it holds the node secrets) that a gateway imports, and runs until
Ctrl-C or SIGTERM, restarting nodes that the scenario reboots or power-cuts. Open a node's
device path with pyserial as you would a USB-serial board.

With --link lora the nodes are on a simulated radio channel instead, heard by emulated packet
forwarders that send to a gateway over UDP: up to MAX_FIRMWARE_LORA_NODES of them run the real
firmware (board processes with a LoRa modem on the radio medium, firmware/host/medium.py);
more, or --radio-only, are radio-side nodes (firmware/host/lora_fleet.py).
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from firmware.host.fleet import EmulatedNode, Fleet, FleetError
from firmware.host.scenario import FAULT_NAMES, SCENARIOS, FaultProfile, parse_faults

if TYPE_CHECKING:
    from firmware.host.medium import RadioMedium

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


def _check_timing(reading_interval: float, duration: float | None) -> None:
    if not 1 <= reading_interval <= MAX_INTERVAL_S:
        raise EmulateError(
            f"--reading-interval must be 1..{MAX_INTERVAL_S} seconds, got {reading_interval:g}"
        )
    if duration is not None and not duration > 0:
        raise EmulateError(f"--duration must be more than 0 seconds, got {duration:g}")


def check_options(
    nodes: int, reading_interval: int, scenario: str, faults: str | None, duration: float | None
) -> FaultProfile | None:
    """Validate what the user typed; EmulateError says what is wrong in one line."""
    if not 1 <= nodes <= MAX_NODES:
        raise EmulateError(f"--nodes must be 1..{MAX_NODES}, got {nodes}")
    _check_timing(reading_interval, duration)
    if scenario not in SCENARIOS:
        raise EmulateError(f"--scenario: unknown {scenario!r} (known: {', '.join(SCENARIOS)})")
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
MAX_FIRMWARE_LORA_NODES = 20  # a process and ~30 MB each; beyond, nodes are radio-side only
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
    _check_timing(reading_interval, duration)
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
    radio_only: bool = False,
    acks: bool = False,
    scenario: str = "office",
    faults: str | None = None,
) -> int:
    """Emulated LoRa nodes on the simulated channel, heard by `gateways` emulated packet
    forwarders that send to the gateway at `forwarder` (Semtech UDP), in real time. Prints the
    nodes, the gateways and the registry, runs until Ctrl-C, SIGTERM or `duration` seconds,
    then prints what the channel delivered.

    Up to MAX_FIRMWARE_LORA_NODES nodes run the real firmware, one process each (see
    _run_firmware_lora); more nodes, or radio_only, are LoraFleet's radio-side nodes."""
    import asyncio  # noqa: PLC0415 - this command only
    import shutil  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    from firmware.host.lora_fleet import LoraFleet  # noqa: PLC0415

    server = check_lora_options(
        nodes, gateways, forwarder, sf, area_m, random_loss, reading_interval, duration
    )
    if not radio_only and nodes > MAX_FIRMWARE_LORA_NODES:
        radio_only = True
        print(
            f"{nodes} nodes: more than {MAX_FIRMWARE_LORA_NODES} run radio-side only (no "
            "firmware; as --radio-only)",
            file=sys.stderr,
            flush=True,
        )
    if radio_only and acks:
        raise EmulateError(
            "--acks needs firmware nodes: leave out --radio-only and use at most "
            f"{MAX_FIRMWARE_LORA_NODES} nodes"
        )
    if not radio_only:
        fault_profile = check_options(nodes, round(reading_interval), scenario, faults, duration)
        return _run_firmware_lora(
            nodes,
            server=server,
            forwarder=forwarder,
            gateways=gateways,
            sf=sf,
            area_m=area_m,
            out=out,
            seed=seed,
            reading_interval=round(reading_interval),
            capture=capture,
            random_loss=random_loss,
            duration=duration,
            acks=acks,
            scenario=scenario,
            faults=fault_profile,
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
        f'[[lora.packet_forwarder]] needs listen = "{forwarder}" and gateways = [{euis}]; '
        "Ctrl-C stops them",
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


def _run_firmware_lora(
    nodes: int,
    *,
    server: tuple[str, int],
    forwarder: str,
    gateways: int,
    sf: int,
    area_m: float,
    out: Path | None,
    seed: int,
    reading_interval: int,
    capture: bool,
    random_loss: float,
    duration: float | None,
    acks: bool,
    scenario: str,
    faults: FaultProfile | None,
) -> int:
    """Real-firmware LoRa nodes: a Fleet of boards (one process each, its pty the console)
    whose `lora` modems transmit into a RadioMedium in this process (firmware/host/medium.py):
    the channel in real time, the packet forwarders, the downlinks back to RX1."""
    import asyncio  # noqa: PLC0415 - this command only
    import contextlib  # noqa: PLC0415
    import random  # noqa: PLC0415

    from firmware.host.medium import RadioMedium, lora_node_config  # noqa: PLC0415

    if out is not None:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EmulateError(f"--out {out}: cannot create it: {exc.strerror}") from exc
    rng = random.Random(seed)  # noqa: S311 - where nodes stand, not keys
    spots: list[tuple[float, float]] = []
    medium = RadioMedium(
        servers=[server],
        gateways=gateways,
        area_m=area_m,
        seed=seed,
        capture=capture,
        random_loss=random_loss,
    )

    def configure(index: int, config: dict[str, Any]) -> dict[str, Any]:
        spots.append(medium.random_spot(rng))
        medium.add_node(config["node_id"], *spots[index])  # on the map before it transmits
        return lora_node_config(config, sf=sf, acks=acks)

    def on_event(node: EmulatedNode, text: str) -> None:
        print(f"node {node.node_id}: {text}", file=sys.stderr, flush=True)

    async def main() -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            if task is not None:
                loop.add_signal_handler(sig, task.cancel)
        async with medium:
            fleet = Fleet(
                nodes,
                seed=seed,
                directory=out,
                scenario=scenario,
                faults=faults,
                reading_interval=reading_interval,
                configure=configure,
                on_event=on_event,
                radio_medium=medium.address,
                # switched on one after the other, spread over (at most) a reading interval:
                # boards that start together send together, and collide every time
                start_gap_s=min(1.0, reading_interval / nodes),
                # before the boards start: a gateway importing it then hears every frame
                on_registry=lambda path: print(f"registry {path}", flush=True),
            )
            starting = asyncio.ensure_future(asyncio.to_thread(fleet.start))
            try:
                try:
                    await asyncio.shield(starting)
                except FleetError as exc:
                    raise EmulateError(str(exc)) from exc
                _print_firmware_lora(fleet, medium, spots, forwarder, sf, reading_interval, acks)
                await asyncio.sleep(duration if duration is not None else 10 * 365 * 86400.0)
            finally:
                with contextlib.suppress(Exception):
                    await starting  # a Ctrl-C while the boards start: let them finish, then stop
                await asyncio.to_thread(fleet.stop)

    with contextlib.suppress(asyncio.CancelledError):  # Ctrl-C, SIGTERM: reported below
        asyncio.run(main())
    report = medium.report()
    losses = ", ".join(f"{n} {reason}" for reason, n in sorted(report.losses.items())) or "none"
    print(
        f"{report.sent} frames sent, {report.delivered} received by a gateway (delivery ratio "
        f"{report.delivery_ratio:.3f}; lost: {losses}); {report.downlinks} downlinks sent, "
        f"{report.downlinks_heard} heard by a node",
        file=sys.stderr,
    )
    return 0


def _print_firmware_lora(  # noqa: PLR0917 - what the banner shows, each named at the call
    fleet: Fleet,
    medium: RadioMedium,
    spots: list[tuple[float, float]],
    forwarder: str,
    sf: int,
    reading_interval: int,
    acks: bool,
) -> None:
    for node, (x, y) in zip(fleet.nodes, spots, strict=True):
        print(f"node {node.node_id} {node.device} x {x:.0f} y {y:.0f} zone {node.zone}")
    for gw in medium.gateways:
        print(f"gateway {gw.eui.hex().upper()} x {gw.x_m:.0f} y {gw.y_m:.0f} -> {forwarder}")
    # the registry line came first, before the boards started (Fleet on_registry)
    euis = ", ".join(f'"{gw.eui.hex().upper()}"' for gw in medium.gateways)
    n = len(fleet.nodes)
    print(
        f"{n} emulated LoRa node{'s' if n > 1 else ''} running the node firmware (SF{sf}, "
        f"868.1 MHz, a reading every {reading_interval} s, acks {'on' if acks else 'off'}; "
        f"consoles on the device paths and in {fleet.directory}/node-*/console.log) and "
        f"{len(medium.gateways)} packet forwarder{'s' if len(medium.gateways) > 1 else ''} "
        f"sending to {forwarder}; the gateway's [[lora.packet_forwarder]] needs "
        f'listen = "{forwarder}", gateways = [{euis}]{" and acks = true" if acks else ""}; '
        "Ctrl-C stops them",
        file=sys.stderr,
        flush=True,
    )
