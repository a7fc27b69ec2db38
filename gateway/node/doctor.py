"""`edgeveil node doctor`: why is this node not reporting? Checks on the spot, each problem
with what to do.

One small script runs on the board through the raw REPL and answers with one JSON document:
MicroPython version, free flash (os.statvfs), the Python heap and what it may grow into,
whether cryptolib does AES (the node seals every frame with AES-CCM, built on cryptolib.aes),
the board's clock, the last reset cause, and whether the deployed configuration is valid and
has its counter state: checked by the firmware's own config.load() and
config.check_continuity() on the board when the application is deployed,
else by parsing the board's edgeveil.json with the same module here on the host. The heap is
judged against what the configuration needs, estimated from the firmware's measured footprint
(footprint.py).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from firmware.edgeveil_node import config as node_config  # the firmware's own validation

from . import footprint
from .board import Board

__all__ = ["Check", "diagnose", "run_checks"]

MIN_FREE_FLASH = 64 * 1024  # room for a deploy of the application plus its staged copies
MIN_FREE_HEAP = 40 * 1024  # without a valid configuration to estimate from: a rough floor
MAX_CLOCK_SKEW_S = 120
MIN_RELEASE = (1, 22)  # the oldest MicroPython the firmware is tested with

# machine.reset_cause() values, the same on ESP32 and RP2040 ports (docs: machine module)
_RESET_CAUSES = {
    1: "power-on",
    2: "hard reset",
    3: "watchdog reset",
    4: "deep-sleep wake",
    5: "soft reset",
}

_SCRIPT = (
    """\
import sys, os, gc, json, time
r = {'release': '.'.join(str(v) for v in sys.implementation.version[:3]),
     'machine': os.uname()[4]}
try:
    s = os.statvfs('/')
    r['flash_free'] = s[0] * s[3]
    r['flash_total'] = s[0] * s[2]
except Exception as e:
    r['flash_error'] = repr(e)
"""
    + footprint.READ_HEAP
    + """\
try:
    import cryptolib
    cryptolib.aes(bytes(16), 1).encrypt(bytes(16))
    r['aes'] = True
except Exception as e:
    r['aes'] = False
    r['aes_error'] = repr(e)
r['epoch_offset'] = time.gmtime(0)[0]
r['time'] = time.time()
try:
    import machine
    r['reset_cause'] = machine.reset_cause()
except Exception:
    r['reset_cause'] = None
try:
    with open('edgeveil.json') as f:
        r['config_text'] = f.read()
except OSError:
    r['config_text'] = None
try:
    from edgeveil_node import config
    r['app'] = True
except ImportError:
    r['app'] = False
if r['app'] and r['config_text'] is not None:
    try:
        c = config.load()
        from edgeveil_node.counter import FrameCounter
        config.check_continuity(c, FrameCounter(epoch=c.epoch))
        r['config_error'] = None
    except Exception as e:
        r['config_error'] = str(e)
print(json.dumps(r))
"""
)


@dataclass(frozen=True)
class Check:
    """One subject's verdict. A warning is worth knowing but does not stop a node."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    warning: bool = False  # when not ok: a warning, not a problem

    @property
    def problem(self) -> bool:
        return not self.ok and not self.warning

    def line(self) -> str:
        mark = "ok  " if self.ok else ("warn" if self.warning else "FAIL")
        return f"{mark} {self.name}: {self.detail}" + ("" if self.ok else f" -> {self.fix}")


def diagnose(board: Board) -> dict[str, Any]:
    """Run the doctor script on the board; its raw findings."""
    result = board.exec_json(_SCRIPT, timeout=30)
    return result if isinstance(result, dict) else {}


def _release(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split("."))
    except ValueError:
        return (0,)


def run_checks(found: dict[str, Any], host_time: float | None = None) -> list[Check]:
    """Judge the findings; one Check per subject."""
    host_time = time.time() if host_time is None else host_time
    checks = []
    release = str(found.get("release", "?"))
    checks.append(
        Check(
            "micropython",
            _release(release)[:2] >= MIN_RELEASE,
            f"{release} on {found.get('machine', '?')}",
            f"flash MicroPython {'.'.join(map(str, MIN_RELEASE))} or newer (edgeveil node flash)",
        )
    )
    if "flash_free" in found:
        free = int(found["flash_free"])
        checks.append(
            Check(
                "flash",
                free >= MIN_FREE_FLASH,
                f"{free // 1024} KiB free of {int(found.get('flash_total', 0)) // 1024} KiB",
                "remove files you copied by hand (mpremote fs rm), then deploy again",
            )
        )
    else:
        checks.append(
            Check(
                "flash",
                False,
                f"no filesystem ({found.get('flash_error')})",
                "flash MicroPython again (edgeveil node flash): its filesystem is missing",
            )
        )
    checks.append(_heap_check(found))
    checks.append(
        Check(
            "aes",
            bool(found.get("aes")),
            "cryptolib.aes works" if found.get("aes") else f"missing ({found.get('aes_error')})",
            "this MicroPython build lacks cryptolib AES, which the node needs to seal frames: "
            "flash the standard micropython.org build for the board",
        )
    )
    checks.append(_config_check(found))
    checks.append(_clock_check(found, host_time))
    cause = found.get("reset_cause")
    name = _RESET_CAUSES.get(cause, f"code {cause}") if cause is not None else "unknown"
    checks.append(
        Check(
            "last reset",
            cause != 3,
            name,
            "the watchdog restarted the node: a sensor or the link hangs; run edgeveil node "
            "monitor to see where it stops",
            warning=True,
        )
    )
    return checks


def _heap_check(found: dict[str, Any]) -> Check:
    """The board's heap against what its configuration needs (or a rough floor without one)."""
    board = footprint.room(found)
    wanted = _need(found.get("config_text"))
    if board is None or wanted is None:
        heap = int(found.get("heap_free", 0))
        return Check(
            "heap",
            heap >= MIN_FREE_HEAP,
            f"{heap // 1024} KiB free",
            "this board has too little RAM for the node application; use an ESP32 or "
            "RP2040 board with at least 128 KiB of heap",
        )
    ok, warning, detail, fix = footprint.verdict(board, wanted)
    if not ok and found.get("romfs"):
        fix += "; this build has a ROM filesystem: mpremote romfs can hold the .mpy files"
    return Check("heap", ok, detail, fix, warning=warning)


def _need(config_text: object) -> footprint.Need | None:
    if not isinstance(config_text, str):
        return None
    try:
        data = json.loads(config_text)
        node_config.Config(data)
    except (ValueError, node_config.ConfigError):
        return None
    return footprint.need(data)


def _config_check(found: dict[str, Any]) -> Check:
    text = found.get("config_text")
    if text is None:
        return Check(
            "configuration",
            False,
            f"no {node_config.CONFIG_FILE} on the board",
            "edgeveil node provision, then edgeveil node deploy --config FILE",
        )
    if found.get("app"):
        error = found.get("config_error")
        where = "checked on the board"
    else:
        where = "checked here (the application is not deployed)"
        try:
            node_config.Config(json.loads(text))
            error = None
        except ValueError:
            error = f"{node_config.CONFIG_FILE} is not valid JSON"
        except node_config.ConfigError as exc:
            error = str(exc)
    if error:
        return Check("configuration", False, f"invalid, {where}: {error}", _config_fix(error))
    node = json.loads(text).get("node_id")
    deployed = "" if found.get("app") else "; the application is not deployed: run deploy"
    return Check(
        "configuration",
        bool(found.get("app")),
        f"node {node}, valid ({where}){deployed}",
        "edgeveil node deploy --config FILE",
    )


def _config_fix(error: str) -> str:
    """What to do about the firmware's objection to its configuration."""
    if "is bound to board" in error:  # another board's identity (config.check_board)
        return (
            "give this board its own identity: edgeveil node provision, then edgeveil node "
            "deploy with the new file"
        )
    if "no counter state" in error or "never deployed" in error or "counter files" in error:
        return "edgeveil node deploy --config FILE (for lost counter state: fresh keys)"
    return "fix the node's configuration file and deploy it again"


def _clock_check(found: dict[str, Any], host_time: float) -> Check:
    board_time = found.get("time")
    if not isinstance(board_time, int | float):
        return Check("clock", False, "the board has no clock", "flash MicroPython again")
    # MicroPython ports count from 2000-01-01 unless built with the Unix epoch
    epoch_shift = 946684800 if found.get("epoch_offset") == 2000 else 0
    skew = board_time + epoch_shift - host_time
    return Check(
        "clock",
        abs(skew) <= MAX_CLOCK_SKEW_S,
        f"{skew:+.0f} s from this computer",
        "normal after a power cut: the node sets its clock from the gateway's time sync; if "
        "it stays wrong while the node reports, the link downstream is broken (edgeveil node "
        "monitor)",
        warning=True,
    )
