"""One emulated node: the unchanged node firmware on CPython, on an emulated board.

    python -m firmware.host.node --flash DIR [--seed S] [--scenario NAME] [--ready-file F]

DIR is the board's flash filesystem: it holds edgeveil.json (the node's configuration) and the
firmware writes its counter and settings files there with plain open(). The process prints the
device path of its pseudo-terminal (the node's serial line) to the ready file, or to stdout when
there is none; open that path with pyserial (or any terminal program) as you would a USB-serial
board. Then it runs firmware/boot.py and firmware/main.py as MicroPython does at power-on.

The emulator's own diagnostics go to stderr, never to the pty. In link port "uart" mode the
node's console (print()) is this process's stdout; in "console" mode it is the pty.

One process is one life of the board. It ends with an exit status that tells the runner
(firmware/host/fleet.py) how to start the next one: 72 machine.reset() (HARD_RESET), 73 the
watchdog (WDT_RESET), 74 deepsleep() (DEEPSLEEP_RESET), 75 machine.soft_reset() (SOFT_RESET);
a power cut is SIGKILL, and the next life starts with --reset-cause power_on. The runner keeps
the pty open across lives (--pty), as a USB-serial adapter stays on the host while the board
behind it reboots.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import runpy
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent  # firmware/host
FIRMWARE = HERE.parent  # firmware: main.py, boot.py, edgeveil_node/
ROOT = FIRMWARE.parent  # protocol/ lives here
SHIMS = HERE / "shims"

CAUSES = {"power_on": 1, "hard": 2, "watchdog": 3, "deep_sleep": 4, "soft": 5}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from .scenario import SCENARIOS  # noqa: PLC0415

    parser = argparse.ArgumentParser(
        prog="python -m firmware.host.node",
        description="Run the node firmware on an emulated board behind a pseudo-terminal.",
    )
    parser.add_argument(
        "--flash",
        required=True,
        type=Path,
        metavar="DIR",
        help="the board's flash filesystem (holds edgeveil.json)",
    )
    parser.add_argument("--seed", type=int, default=0, help="scenario seed (default 0)")
    parser.add_argument(
        "--scenario",
        default="office",
        choices=sorted(SCENARIOS),
        help="the world around the node (default office)",
    )
    parser.add_argument(
        "--faults",
        default=None,
        metavar="LIST",
        help="override the scenario's faults, e.g. drop=0.1,garbage or none",
    )
    parser.add_argument(
        "--node-index",
        type=int,
        default=0,
        metavar="N",
        help="this node's place in its fleet: each gets its own world",
    )
    parser.add_argument(
        "--ready-file",
        type=Path,
        metavar="F",
        help="write the pty device path here once the board is up",
    )
    parser.add_argument(
        "--reset-cause",
        default="power_on",
        choices=sorted(CAUSES),
        help="what machine.reset_cause() reports (default power_on)",
    )
    parser.add_argument(
        "--boot",
        type=int,
        default=0,
        metavar="N",
        help="how many lives this node had before (seeds the line faults)",
    )
    parser.add_argument(
        "--world-start",
        type=float,
        default=None,
        metavar="EPOCH",
        help="Unix time of the world's t=0 (default: now)",
    )
    parser.add_argument(
        "--pty",
        default=None,
        metavar="MASTER,SLAVE",
        help="inherited pty file descriptors (the runner keeps the pty)",
    )
    parser.add_argument(
        "--ticks-start",
        type=int,
        default=0,
        metavar="MS",
        help="time.ticks_ms() at boot, e.g. 1073740000 to wrap soon",
    )
    parser.add_argument(
        "--unique-id",
        default=None,
        metavar="HEX",
        help="machine.unique_id() (default: derived from the flash path)",
    )
    parser.add_argument(
        "--main",
        type=Path,
        default=None,
        metavar="FILE",
        help="run this script instead of the firmware's boot.py and main.py (tests)",
    )
    parser.add_argument(
        "--protocol-backend",
        default="micropython",
        choices=("micropython", "cpython"),
        help="protocol/ on the node's own CBOR and AES-CCM over cryptolib "
        "(micropython, as on a board; default) or on cbor2/cryptography",
    )
    return parser.parse_args(argv)


def _install_paths() -> None:
    # shims first (import machine), then the firmware as the board's root (import
    # edgeveil_node), then the repository root (import protocol, as frozen on the board)
    for path in (str(ROOT), str(FIRMWARE), str(SHIMS)):
        while path in sys.path:
            sys.path.remove(path)
        sys.path.insert(0, path)


def _log(*parts: object) -> None:
    print("[emulator]", *parts, file=sys.stderr, flush=True)


def _write_ready(path: Path | None, device: str) -> None:
    if path is None:
        print(device, flush=True)
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(device + "\n", encoding="utf-8")
    tmp.replace(path)


def _run_firmware(script: Path | None) -> None:
    """MicroPython's start-up: boot.py, then main.py, each from the board's root."""
    scripts = [script] if script is not None else [FIRMWARE / "boot.py", FIRMWARE / "main.py"]
    for path in scripts:
        if path.exists():
            runpy.run_path(str(path), run_name="__main__")


def _repl_idle() -> None:
    """After main.py a board sits in the REPL; the watchdog, if started, still runs."""
    _log("main.py ended: the board idles at the REPL (the runner or Ctrl-C stops it)")
    while True:
        time.sleep(1)


def _run_and_idle(script: Path | None) -> None:
    try:
        _run_firmware(script)
    except KeyboardInterrupt:
        print("KeyboardInterrupt:", file=sys.stdout)
    except SystemExit as exc:
        _log(f"firmware called sys.exit({exc.code})")
    except BaseException as exc:  # the board prints it and goes to the REPL
        print_exception = getattr(sys, "print_exception")  # noqa: B009
        print_exception(exc)  # on the console (MicroPython does the same)
        if sys.stdout is not sys.__stdout__:
            print_exception(exc, sys.stderr)
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    _repl_idle()


def _make_board(args: argparse.Namespace, scenario: Any) -> Any:
    from . import board as board_mod  # noqa: PLC0415

    pty = None
    if args.pty:
        master, slave = (int(x) for x in args.pty.split(","))
        pty = (master, slave)
    clock = board_mod.Clock(scenario.drift_factor(), args.ticks_start)
    board = board_mod.Board(
        board_mod.CONFIG_FILE,
        scenario,
        clock=clock,
        pty=pty,
        world_start=args.world_start,
        boot=args.boot,
        reset_cause=CAUSES[args.reset_cause],
        unique_id=bytes.fromhex(args.unique_id) if args.unique_id else None,
    )
    board_mod.install_time(board)
    board_mod.install_gc()
    board_mod.install_sys_os()
    board_mod.install(board)
    return board


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    flash = args.flash.resolve()
    if not flash.is_dir():
        print(f"node: error: --flash {args.flash}: no such directory", file=sys.stderr)
        return 2

    from .scenario import Scenario, parse_faults  # noqa: PLC0415

    faults = None
    if args.faults is not None:
        try:
            faults = parse_faults(args.faults)
        except ValueError as exc:
            print(f"node: error: --faults: {exc}", file=sys.stderr)
            return 2
    scenario = Scenario(args.scenario, args.seed, args.node_index, faults)

    # paths given relative to where we were started, before the firmware's chdir
    main_script = args.main.resolve() if args.main is not None else None
    ready_file = args.ready_file.resolve() if args.ready_file is not None else None
    os.chdir(flash)  # the flash filesystem is the firmware's current directory
    _install_paths()
    if args.protocol_backend == "micropython":
        # what a board runs: protocol/_backend.py falls back to the small implementations
        sys.modules["protocol._fast"] = None  # type: ignore[assignment]
    board = _make_board(args, scenario)
    board.start()

    def stop(_signum: int, _frame: Any) -> None:
        # the runner switches the node off: nothing to save (a board has no shutdown either)
        board.flush_console()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)

    _log(
        f"node on {board.device}, flash {flash}, reset cause {args.reset_cause},"
        f" scenario {scenario.name} (seed {args.seed}),"
        f" link {board.link_spec.get('port') or board.link_spec.get('type')},"
        f" drift {board.clock.drift:.6f}"
    )
    if board.link.console:
        board.attach_console()
    _write_ready(ready_file, board.device)
    _run_and_idle(main_script)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
