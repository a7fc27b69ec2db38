"""The `edgeveil` command: gateway, technician and emulation commands.

Bad arguments end with a one-line error and exit status 2; nothing here prints a traceback
for something a user typed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from protocol import (
    LocalProtocolError,
    NodeKeys,
    RemoteProtocolError,
    open_frame,
    parse_header,
)
from protocol.messages import MESSAGE_CLASSES

from . import __version__
from .demo import run_protocol_demo

EXIT_USAGE = 2


class CliError(Exception):
    """A problem with what the user asked for: printed as one line, exit status 2."""


def _read_secret(path: Path) -> bytes:
    try:
        text = path.read_text(encoding="ascii").strip()
    except OSError as exc:
        raise CliError(f"cannot read the secret file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise CliError(f"{path} must hold the node secret as hex text") from exc
    try:
        return bytes.fromhex(text)
    except ValueError as exc:
        raise CliError(f"{path} must hold the node secret as hex text (0-9, a-f)") from exc


def _decode(args: argparse.Namespace) -> int:
    try:
        frame = bytes.fromhex(args.frame)
    except ValueError as exc:
        raise CliError("FRAME must be hex digits, e.g. 0a12340... (spaces allowed)") from exc
    secret = None if args.secret_file is None else _read_secret(args.secret_file)
    try:
        header = parse_header(frame)
    except RemoteProtocolError as exc:
        print(f"rejected: {exc.reason_name}: {exc.detail}")
        return 1
    kind = MESSAGE_CLASSES[header.msg_type]
    print(
        f"{len(frame)} bytes  protocol v{header.version}  {kind.NAME}  node {header.node_id}"
        f"  counter {header.counter}  ({'node to gateway' if kind.UPLINK else 'gateway to node'})"
    )
    if secret is None:
        print("content: sealed (give --secret-file to verify and decrypt)")
        return 0
    try:
        keys = NodeKeys(header.node_id, secret)
        message = open_frame(frame, keys, uplink=kind.UPLINK, header=header)
    except LocalProtocolError as exc:
        raise CliError(str(exc)) from exc
    except RemoteProtocolError as exc:
        print(f"rejected: {exc.reason_name}: {exc.detail}")
        return 1
    print(f"verified: {message.to_dict()}")
    return 0


def _emulate(args: argparse.Namespace) -> int:
    try:
        from .emulate import EmulateError, run_emulate  # noqa: PLC0415 - only this command
    except ImportError as exc:
        raise CliError(f"the node emulator (firmware.host) is not installed: {exc}") from exc

    try:
        return run_emulate(
            args.nodes,
            out=args.out,
            seed=args.seed,
            scenario=args.scenario,
            reading_interval=args.reading_interval,
            faults=args.faults,
            duration=args.duration,
        )
    except EmulateError as exc:
        raise CliError(str(exc)) from exc


def _add_emulate(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    try:  # the texts come from the emulator; the other commands work without it
        from .emulate import faults_help, scenario_help  # noqa: PLC0415
    except ImportError:

        def scenario_help() -> str:
            return "Scenarios: office, street, night, stress."

        def faults_help() -> str:
            return "Faults: garbage, drop, reboot, power-cut, drift (NAME=VALUE), all or none."

    emulate = commands.add_parser(
        "emulate",
        help="run emulated nodes on pseudo-terminals (the real node firmware, no hardware)",
        description="Start N emulated nodes: the unchanged node firmware on CPython, each on "
        "its own pseudo-terminal that a gateway opens like a USB-serial board. Prints one line "
        "per node (node id, device path, zone) and the path of a node registry the gateway "
        "imports (mode 0600: it holds the node secrets), then runs until Ctrl-C or SIGTERM, "
        "restarting nodes that the scenario reboots or power-cuts. Node ids and secrets are "
        "new random ones on every run; --seed makes the simulated world repeatable.",
    )
    emulate.add_argument(
        "--nodes", type=int, default=1, metavar="N", help="how many nodes (default 1)"
    )
    emulate.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="keep the registry, each node's flash and console log here (default: a "
        "temporary directory, removed at exit)",
    )
    emulate.add_argument(
        "--seed", type=int, default=0, metavar="S", help="seed of the simulated world (default 0)"
    )
    emulate.add_argument(
        "--scenario",
        default="office",
        metavar="NAME",
        help=f"the world around the nodes (default office). {scenario_help()}",
    )
    emulate.add_argument(
        "--reading-interval",
        type=int,
        default=5,
        metavar="SECONDS",
        help="seconds between readings (default 5; status and scans scale with it)",
    )
    emulate.add_argument("--faults", metavar="LIST", help=faults_help())
    emulate.add_argument(
        "--duration",
        type=float,
        metavar="SECONDS",
        help="stop after this many seconds (default: run until Ctrl-C)",
    )
    emulate.set_defaults(handler=_emulate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeveil",
        description="Privacy-preserving edge gateway for sensor networks.",
    )
    parser.add_argument("--version", action="version", version=f"edgeveil {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = commands.add_parser(
        "demo",
        help="show the whole path on this machine (for now: the wire protocol at work)",
        description="Seal one frame of every v1 message type with a throw-away test key, show its "
        "size, bytes and standard COSE form, open it again, and show tampered frames rejected.",
    )
    demo.set_defaults(handler=lambda _args: run_protocol_demo())

    decode = commands.add_parser(
        "decode",
        help="explain a sealed frame (hex): header, and content when the node secret is given",
        description="Parse a sealed frame's clear header; with --secret-file, verify and decrypt "
        "it. Use it to find out why a gateway rejects a node's frames.",
    )
    decode.add_argument("frame", metavar="FRAME", help="the frame as hex digits")
    decode.add_argument(
        "--secret-file",
        type=Path,
        metavar="PATH",
        help="file holding the node's secret as hex (never type secrets on a command line)",
    )
    decode.set_defaults(handler=_decode)

    _add_emulate(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.handler(args)
    except CliError as exc:
        print(f"edgeveil {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return status


if __name__ == "__main__":
    raise SystemExit(main())
