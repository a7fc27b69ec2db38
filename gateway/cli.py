"""The `edgeveil` command: gateway, technician and emulation commands.

Bad arguments end with a one-line error and exit status 2; nothing here prints a traceback
for something a user typed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from .privacy.policy import Policy

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
        f"{len(frame)} bytes  protocol v{header.version}{'.1' if header.epoch else ''}  "
        f"{kind.NAME}  node {header.node_id}  counter {header.counter}"
        f"{f'  key epoch {header.epoch}' if header.epoch else ''}"
        f"  ({'node to gateway' if kind.UPLINK else 'gateway to node'})"
    )
    if secret is None:
        print("content: sealed (give --secret-file to verify and decrypt)")
        return 0
    try:
        keys = NodeKeys(header.node_id, secret, epoch=header.epoch)
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
        if args.link == "lora":
            from .emulate import LORA_READING_INTERVAL_S, run_emulate_lora  # noqa: PLC0415

            interval = args.reading_interval
            if interval is None:
                interval = LORA_READING_INTERVAL_S
            return run_emulate_lora(
                args.nodes,
                gateways=args.gateways,
                forwarder=args.forwarder,
                sf=args.sf,
                area_m=args.area_m,
                out=args.out,
                seed=args.seed,
                reading_interval=interval,
                capture=not args.no_capture,
                random_loss=args.random_loss,
                duration=args.duration,
                radio_only=args.radio_only,
                acks=args.acks,
                scenario=args.scenario,
                faults=args.faults,
            )
        return run_emulate(
            args.nodes,
            out=args.out,
            seed=args.seed,
            scenario=args.scenario,
            reading_interval=5 if args.reading_interval is None else args.reading_interval,
            faults=args.faults,
            duration=args.duration,
        )
    except EmulateError as exc:
        raise CliError(str(exc)) from exc


def _add_emulate(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], *, arguments: bool = True
) -> None:
    summary = (
        "run emulated nodes: the real node firmware, over pseudo-terminals or a simulated "
        "LoRa channel (no hardware)"
    )
    if not arguments:
        # another command runs: its help would import the emulator (about 0.5 MB resident
        # for as long as a gateway runs, on a Raspberry Pi); `edgeveil --help` shows the
        # summary only
        commands.add_parser("emulate", help=summary)
        return
    from .emulate import faults_help, scenario_help  # noqa: PLC0415

    emulate = commands.add_parser(
        "emulate",
        help=summary,
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
        default=None,
        metavar="SECONDS",
        help="seconds between readings (default 5, with --link lora 60; status and scans "
        "scale with it)",
    )
    emulate.add_argument("--faults", metavar="LIST", help=faults_help())
    lora = emulate.add_argument_group(
        "LoRa (--link lora)",
        "Nodes on a simulated radio channel (path loss, SNR floors, collisions with capture; "
        "see docs/integrators/emulated-lora.md), heard by emulated packet forwarders that send to "
        "a gateway's [[lora.packet_forwarder]] over UDP (Semtech protocol), in real time. Up "
        "to 20 nodes, each is the real node firmware in its own process (its pseudo-terminal "
        "is its console) with an emulated LoRa modem; with more nodes, or --radio-only, the "
        "nodes are their radio side only (sealed readings, no firmware), which scales to "
        "thousands.",
    )
    lora.add_argument(
        "--link",
        choices=("serial", "lora"),
        default="serial",
        help="serial: firmware processes on pseudo-terminals (default); lora: see below",
    )
    lora.add_argument(
        "--gateways", type=int, default=1, metavar="G", help="packet forwarders (default 1)"
    )
    lora.add_argument(
        "--forwarder",
        default="127.0.0.1:1700",
        metavar="HOST:PORT",
        help="the gateway's packet forwarder server (default 127.0.0.1:1700)",
    )
    lora.add_argument(
        "--sf", type=int, default=9, metavar="SF", help="spreading factor 7..12 (default 9)"
    )
    lora.add_argument(
        "--area-m",
        type=float,
        default=2000.0,
        metavar="METRES",
        help="side of the square the nodes are spread over (default 2000)",
    )
    lora.add_argument(
        "--random-loss",
        type=float,
        default=0.0,
        metavar="P",
        help="extra loss probability per frame and gateway (default 0)",
    )
    lora.add_argument(
        "--radio-only",
        action="store_true",
        help="nodes without the firmware: identity, modem and sealed readings only (the "
        "default above 20 nodes)",
    )
    lora.add_argument(
        "--acks",
        action="store_true",
        help="firmware nodes ask for acknowledgements and time in RX1 (the gateway's "
        "[[lora.packet_forwarder]] needs acks = true too); default: fire and forget",
    )
    lora.add_argument(
        "--no-capture",
        action="store_true",
        help="overlapping frames on one channel and SF are all lost (default: capture at 6 dB)",
    )
    emulate.add_argument(
        "--duration",
        type=float,
        metavar="SECONDS",
        help="stop after this many seconds (default: run until Ctrl-C)",
    )
    emulate.set_defaults(handler=_emulate)


def _demo(args: argparse.Namespace) -> int:
    if args.protocol:
        return run_protocol_demo()
    if not 1 <= args.nodes <= 32:
        raise CliError(f"--nodes must be 1..32, got {args.nodes}")
    if args.duration is not None and args.duration <= 0:
        raise CliError(f"--duration must be more than 0 seconds, got {args.duration}")
    from .live import run_demo  # noqa: PLC0415 - starts the heavy parts only when asked

    return run_demo(args.nodes, args.duration, args.seed)


def _gateway(args: argparse.Namespace) -> int:  # noqa: PLR0911 - one return per command
    from . import commands  # noqa: PLC0415 - the service's imports only when it is used

    try:
        if args.gateway_command == "run":
            return commands.run(args.config)
        if args.gateway_command == "check-config":
            return commands.check_config(args.config)
        if args.gateway_command == "import-nodes":
            return commands.import_nodes(args.file, args.config, args.replace)
        if args.gateway_command == "advance-counters":
            if args.downlinks < 1 or args.uplinks < 0:
                raise CliError("--downlinks must be at least 1 and --uplinks at least 0")
            return commands.advance_counters(args.config, args.downlinks, args.uplinks)
        if args.gateway_command == "nodes":
            if args.nodes_command == "revoke":
                return commands.revoke_node(args.config, args.node)
            if args.nodes_command == "rekey":
                return commands.rekey_node(args.config, args.node)
            if args.nodes_command == "configure":
                return commands.configure_node(args.config, args.node, args.settings, args.by)
            if args.nodes_command == "show":
                return commands.show_node(args.config, args.node)
            return commands.list_nodes(args.config, args.json)
        return commands.status(args.metrics)
    except commands.UsageError as exc:
        raise CliError(str(exc)) from None


def _add_gateway(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    gateway = commands.add_parser(
        "gateway",
        help="run and inspect the gateway service",
        description="The gateway service: serial links in, verified and anonymised data out "
        "over MQTT, nothing lost on the way.",
    )
    sub = gateway.add_subparsers(dest="gateway_command", metavar="COMMAND", required=True)
    # --config, the same on every command that reads the configuration
    with_config = argparse.ArgumentParser(add_help=False)
    with_config.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="the gateway's TOML configuration (default: built-in defaults)",
    )
    sub.add_parser(
        "run",
        parents=[with_config],
        help="run the gateway until SIGTERM or Ctrl-C",
        description="Run the gateway service. Errors in the configuration stop it at once with a "
        "one-line message; everything else (ports unplugged, broker away) it waits out.",
    )
    sub.add_parser(
        "check-config",
        parents=[with_config],
        help="validate a configuration file and summarise it",
        description="Read and validate a configuration file without starting anything. Exit "
        "status 0 when it is valid, 2 with the key and the problem when it is not.",
    )
    imp = sub.add_parser(
        "import-nodes",
        parents=[with_config],
        help="register nodes from a registry file (edgeveil emulate, provisioning)",
        description="Add the nodes of a registry file (JSON with node ids and secrets) to the "
        "gateway's node registry. Nodes already registered with the same secret are skipped.",
    )
    imp.add_argument("file", type=Path, metavar="FILE", help="the registry file to import")
    imp.add_argument(
        "--replace", action="store_true", help="replace nodes whose secret or zone differs"
    )
    advance = sub.add_parser(
        "advance-counters",
        parents=[with_config],
        help="after restoring a backup: move every node's counters past the backup's",
        description="Run this after restoring the gateway's state directory from a backup, "
        "before the gateway starts: a restored registry holds old counter state, and the "
        "gateway would seal downlinks with nonces it used already. Moves every node's downlink "
        "counter limit forward (and, with --uplinks, its replay window).",
    )
    advance.add_argument(
        "--downlinks",
        type=int,
        default=1 << 24,
        metavar="N",
        help="downlink counters to skip per node: more than the gateway can have sealed "
        "since the backup (default 16777216: years of one downlink per uplink)",
    )
    advance.add_argument(
        "--uplinks",
        type=int,
        default=0,
        metavar="N",
        help="also refuse uplink counters up to N above the backup's (frames sent since the "
        "backup could otherwise be replayed once each; a node's own frames are then refused "
        "until its counter passes the mark; default 0)",
    )
    nodes = sub.add_parser(
        "nodes",
        help="the registered nodes: list, show, configure, revoke or re-key them",
        description="The gateway's node registry (the state directory's registry.db).",
    )
    nodes_sub = nodes.add_subparsers(dest="nodes_command", metavar="COMMAND", required=True)
    listing = nodes_sub.add_parser(
        "list",
        parents=[with_config],
        help="every registered node: zone, link, last heard, frames, health, state",
        description="List the registered nodes: id, zone, the link it was last heard on and "
        "when, its frames accepted and rejected, from its last status battery, uptime, queue "
        "depth, dropped frames and clock sync, its resets and their cause, on LoRa its last "
        "spreading factor, RSSI and SNR, and its state (active, SILENT when nothing was heard "
        "for three times its observed reading interval, re-key pending, replaced, revoked). "
        "Reads the state directory: a running gateway saves these figures every 30 s, a "
        "stopped one left them at its stop. Presence frames (sightings, motion) are counted "
        "nowhere. Secrets are never shown.",
    )
    listing.add_argument(
        "--json", action="store_true", help="one JSON document, for scripts (more fields)"
    )
    revoke = nodes_sub.add_parser(
        "revoke",
        parents=[with_config],
        help="refuse a node's frames from now on (a lost, stolen or cloned node)",
        description="Revoke a node's identity: from the gateway's next batch of frames on, "
        "every frame of the node is refused (counted as 'revoked'), nothing of it is forwarded "
        "or acknowledged. A running gateway picks it up without a restart. Only a new identity "
        "brings the node back: edgeveil node provision, then gateway import-nodes.",
    )
    revoke.add_argument("node", type=int, metavar="NODE", help="the node id to revoke")
    rekey = nodes_sub.add_parser(
        "rekey",
        parents=[with_config],
        help="give a node fresh keys over the air (a configuration update)",
        description="Re-key a node in the field: the gateway sends it its next key epoch (a "
        "sealed configuration update, serial or LoRa) each time it hears the node under its "
        "current keys, at most once a minute, until the node is heard under the new ones. The "
        "node switches once nothing sealed under the old keys waits for an acknowledgement; "
        "from its first frame under the new keys on, the old keys are refused ('retired_key'). "
        "A node that misses the update keeps working on its current keys. The request is kept "
        "in the registry (a restart does not lose it); `nodes list` shows it as pending. At "
        "most 15 re-keys follow one deploy; then deploy the node again or replace it.",
    )
    rekey.add_argument("node", type=int, metavar="NODE", help="the node id to re-key")
    show = nodes_sub.add_parser(
        "show",
        parents=[with_config],
        help="one node: zone, keys' state, and its history of configuration changes",
        description="Show one registered node: its zone, key epoch, highest counter accepted, "
        "state, and its latest remote configuration commands (source, who asked, settings, "
        "version, state and reason). Secrets are never shown.",
    )
    show.add_argument("node", type=int, metavar="NODE", help="the node id")
    configure = nodes_sub.add_parser(
        "configure",
        parents=[with_config],
        help="change a node's settings remotely (reading interval, zone ...)",
        description="Queue a configuration change for a node: checked with the node "
        "firmware's own rules, kept in the registry (a restart keeps it), sent by the running "
        "gateway as a sealed configuration update at the node's next contact (serial: its next "
        "frame; LoRa: the receive window after its next uplink), again every minute until the "
        "node answers (at most 5 times). The zone is the gateway's and changes at once. The "
        "same is possible over MQTT: {prefix}/{site}/{gateway}/command/node/NODE/configure, "
        "results on .../result (docs/operators/remote-configuration.md). Settings: "
        "reading_interval_s, status_interval_s, scan_window_s (seconds, at least 1), "
        "max_retries (0 or more), ble_scan (true or false), zone (text, at most 32 bytes).",
    )
    configure.add_argument("node", type=int, metavar="NODE", help="the node id")
    configure.add_argument(
        "settings",
        nargs="+",
        metavar="NAME=VALUE",
        help="e.g. reading_interval_s=300 zone=north-square",
    )
    configure.add_argument(
        "--by", metavar="NAME", help="who asks, for the audit log (default: your user name)"
    )
    status = sub.add_parser(
        "status",
        help="what a running gateway is doing: links, broker, spool, frames",
        description="Ask a running gateway (through its metrics endpoint) for its state.",
    )
    status.add_argument(
        "--metrics",
        default="http://127.0.0.1:9108/metrics",
        metavar="URL",
        help="the gateway's metrics URL (default http://127.0.0.1:9108/metrics)",
    )
    gateway.set_defaults(handler=_gateway)


def _load_policy(path: Path | None, config_path: Path | None) -> tuple[Policy, str]:
    """The policy of --policy, else the one the gateway configuration names ([privacy]
    policy), else the shipped default; and where it came from. Errors: one-line CliError."""
    from . import config  # noqa: PLC0415 - only the policy commands need these
    from .errors import ConfigError  # noqa: PLC0415
    from .privacy import engine, policy  # noqa: PLC0415

    try:
        if path is None and config_path is not None:
            path = config.load(config_path).privacy_policy
        loaded = policy.default() if path is None else policy.load(path)
        engine.check(loaded)  # what the gateway would refuse to run is not explained either
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    except UnicodeDecodeError:
        raise CliError(f"{path} is not UTF-8 text (a TOML file must be)") from None
    except (TypeError, ValueError) as exc:  # a value of the wrong type the schema did not name
        raise CliError(
            f"{path}: a value has the wrong type ({exc}); compare it with "
            "gateway/policies/default.toml"
        ) from None
    return loaded, str(path) if path is not None else "default policy"


def _policy(args: argparse.Namespace) -> int:
    from .privacy.policy import budget_shortfall, releases_per_day, windows_per_day  # noqa: PLC0415

    loaded, where = _load_policy(args.policy, args.config)
    if args.policy_command == "check":
        print(f"{where}: ok")
        print(f"  {loaded.name}: {len(loaded.streams)} streams, fingerprint {loaded.hash}")
        for stream in loaded.streams:
            what = ", ".join(stream.quantities) or stream.message
            how = (
                "pass, per node"
                if stream.action == "pass"
                else f"aggregate per {stream.group_by} every {stream.window_minutes} min"
            )
            print(f"  {stream.name}: {what} ({how})")
            short = budget_shortfall(stream)
            if short and stream.noise is not None:
                print(
                    f"  warning: {stream.name}: its daily cap {stream.noise.daily_cap:g} pays for "
                    f"{releases_per_day(stream)} of the {windows_per_day(stream)} windows per "
                    f"{stream.group_by} and day; the other {short} are withheld (budget) every "
                    "day. Raise daily_cap or lengthen window_minutes (the statement says so too)"
                )
        unset = [
            name
            for name, value in vars(loaded.register).items()
            if str(value).startswith("not set")
        ]
        if unset:
            print(f"  register not filled in: {', '.join(unset)}")
        if args.config is not None:
            from . import config as config_mod  # noqa: PLC0415
            from .zones import load_shared  # noqa: PLC0415

            state_dir = config_mod.load(args.config).state_dir
            for zone, gateways in sorted(load_shared(state_dir).items()):
                print(
                    f"  warning: zone {zone!r} is also served by gateway {', '.join(gateways)}: "
                    "each gateway counts its own nodes' devices, so a device seen by both is "
                    "counted twice; serve a zone from one gateway (docs/operators/zones.md)"
                )
        return 0
    from .privacy import explain  # noqa: PLC0415 - OpenDP only when a statement is written

    if args.format == "json":
        print(json.dumps(explain.statement_json(loaded), indent=2, ensure_ascii=False))
    else:
        print(explain.statement_text(loaded, args.language), end="")
    return 0


def _add_policy(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    policy = commands.add_parser(
        "policy",
        help="check a privacy policy, or explain it in plain language",
        description="The privacy policy says, per stream of data, what may leave the gateway. "
        "Which policy: --policy FILE; else the one the gateway configuration of --config names "
        "([privacy] policy); else the default policy shipped with edgeveil.",
    )
    sub = policy.add_subparsers(dest="policy_command", metavar="COMMAND", required=True)
    # --policy and --config, the same on both commands
    which = argparse.ArgumentParser(add_help=False)
    which.add_argument(
        "--policy",
        type=Path,
        metavar="FILE",
        help="the policy's TOML file (default: the one --config names, else the shipped one)",
    )
    which.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="without --policy: the policy this gateway configuration names ([privacy] policy)",
    )
    explain = sub.add_parser(
        "explain",
        parents=[which],
        help="the transparency statement: what is measured, what leaves, what never does",
        description="Write the transparency statement for residents: what the sensors measure, "
        "what leaves the gateway and how often, what never leaves, how long data is kept, the "
        "protections for counts of people and devices, the register fields and the policy's "
        "fingerprint. The same text the gateway publishes.",
    )
    explain.add_argument(
        "--language",
        choices=("en", "nl"),
        default="en",
        help="en (English, the default) or nl (Dutch)",
    )
    explain.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="text (default) or json: the same facts as data, with the texts in both languages",
    )
    sub.add_parser(
        "check",
        parents=[which],
        help="validate a policy file and summarise it",
        description="Read and validate a policy file. Exit status 0 when it is valid, 2 with "
        "the key and the problem when it is not.",
    )
    policy.set_defaults(handler=_policy)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; given the `command` to run, only its arguments need building
    (the emulate command's are left out for the others)."""
    parser = argparse.ArgumentParser(
        prog="edgeveil",
        description="Privacy-preserving edge gateway for sensor networks.",
    )
    parser.add_argument("--version", action="version", version=f"edgeveil {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = commands.add_parser(
        "demo",
        help="run emulated nodes, the gateway and an embedded broker here, and show what leaves",
        description="Start emulated nodes (the real node firmware on pseudo-terminals), the "
        "gateway and an embedded MQTT broker on this machine, in a temporary directory, and "
        "print every message the gateway publishes. Nothing to install or configure. "
        "With --protocol: walk through the wire protocol instead (sealing, sizes, COSE form, "
        "rejections).",
    )
    demo.add_argument(
        "--nodes", type=int, default=3, metavar="N", help="emulated nodes (default 3)"
    )
    demo.add_argument(
        "--duration", type=float, metavar="SECONDS", help="stop after this long (default: Ctrl-C)"
    )
    demo.add_argument(
        "--seed", type=int, default=0, metavar="S", help="seed of the simulated world"
    )
    demo.add_argument("--protocol", action="store_true", help="the wire protocol walk-through")
    demo.set_defaults(handler=_demo)

    _add_gateway(commands)
    _add_policy(commands)

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

    _add_emulate(commands, arguments=command in (None, "emulate"))
    from .node.cli import add_node_commands  # noqa: PLC0415 - argparse only; handlers lazy

    add_node_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)  # no option takes a value
    args = build_parser(command).parse_args(argv)
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
