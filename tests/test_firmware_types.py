"""The node firmware type-checks against the MicroPython stubs of ESP32 and RP2040 boards.

How it works: scripts/test installs the pinned stub packages of the micropython-stubs project
(`micropython-esp32-stubs`, `micropython-rp2-stubs`, each with its `micropython-stdlib-stubs`)
into .stubs/esp32 and .stubs/rp2 with `pip install --target`, outside .venv. A stub package is
not the typeshed that mypy's --custom-typeshed-dir needs (its port modules, machine.pyi,
time.pyi, ..., sit beside a reduced stdlib/ instead of inside it), so this test lays one out per
port with symlinks and runs mypy with it as the whole standard library and no site-packages:
`import machine`, `bluetooth`, `cryptolib`, `time.ticks_ms`, `gc.mem_free` resolve to the
device's API, and a CPython-only or misspelt call is an error. --check-untyped-defs, because the
firmware is unannotated. Checked: firmware/main.py, firmware/boot.py, firmware/edgeveil_node/
(drivers included) and protocol/ except protocol/_fast.py, the gateway's cbor2/cryptography
backend that a board never imports (skipped, so the names _backend.py takes from it are Any).
Limit: an object that reaches the firmware as an unannotated argument (the i2c bus a driver is
handed) is Any, so only calls on modules and on objects built in view are checked. Packages
from micropython-lib that ship no stubs get a small one under firmware/stubs/ (the `lora` modem).

Run just this check: `.venv/bin/pytest tests/test_firmware_types.py` (scripts/test once first).
A failure prints the mypy command line to run by hand.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import ROOT

PORTS = ("esp32", "rp2")
STUBS = ROOT / ".stubs"  # filled by scripts/test
FIRMWARE = ROOT / "firmware"

# mypy settings for MicroPython code; custom_typeshed_dir and cache_dir are added per port.
MYPY_INI = """\
[mypy]
python_version = 3.11
mypy_path = {firmware},{firmware}/stubs
explicit_package_bases = True
no_site_packages = True
check_untyped_defs = True
warn_unused_ignores = True
warn_redundant_casts = True
# The firmware is unannotated on purpose: an empty list or dict whose element type mypy cannot
# infer becomes Any rather than an error. This check is about the device's API.
disable_error_code = var-annotated
custom_typeshed_dir = {typeshed}
cache_dir = {cache}

[mypy-protocol._fast]
follow_imports = skip
"""


def firmware_targets() -> list[str]:
    """What a board runs, relative to ROOT: edgeveil_node as a directory, so that every module
    in it (drivers that are added later too) is checked."""
    protocol = sorted(
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "protocol").glob("*.py")
        if p.name != "_fast.py"
    )
    return ["firmware/main.py", "firmware/boot.py", "firmware/edgeveil_node", *protocol]


def source_file_count() -> int:
    """How many files mypy must report as checked for firmware_targets()."""
    node = list((FIRMWARE / "edgeveil_node").rglob("*.py"))
    protocol = [t for t in firmware_targets() if t.startswith("protocol/")]
    return 2 + len(node) + len(protocol)


def build_typeshed(port: str, dest: Path) -> Path:
    """A typeshed layout for mypy from the pip --target directory of one port: stdlib/ holds the
    reduced stdlib of micropython-stdlib-stubs plus every port module and package (a port module
    wins over a stdlib one of the same name), stubs/ holds mypy-extensions."""
    src = STUBS / port
    missing = [
        str(p.relative_to(ROOT))
        for p in (
            src / "stdlib" / "VERSIONS",
            src / "machine.pyi",
            src / "_mpy_shed",
            src / "stubs",
        )
        if not p.exists()
    ]
    if missing:
        pytest.fail(
            f"the MicroPython stubs for {port} are not installed (missing: {', '.join(missing)}): "
            "run scripts/test, which installs them into .stubs/",
            pytrace=False,
        )
    entries = {e.name: e for e in (src / "stdlib").iterdir()}
    for e in src.iterdir():
        if e.suffix == ".pyi" or (e / "__init__.pyi").is_file():
            entries[e.name] = e
    stdlib = dest / "stdlib"
    stdlib.mkdir(parents=True)
    for name, target in entries.items():
        (stdlib / name).symlink_to(target, target_is_directory=target.is_dir())
    (dest / "stubs").symlink_to(src / "stubs", target_is_directory=True)
    return dest


@pytest.fixture(scope="module")
def mypy_config(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """The mypy configuration of a port, made on first use (so that missing stubs fail the test
    that needs them, with the message of build_typeshed)."""
    base = tmp_path_factory.mktemp("micropython-typeshed")
    configs: dict[str, Path] = {}

    def config(port: str) -> Path:
        if importlib.util.find_spec("mypy") is None:
            pytest.fail(
                "mypy is not installed in this environment: run scripts/test", pytrace=False
            )
        if port not in configs:
            typeshed = build_typeshed(port, base / port)
            ini = base / f"mypy-{port}.ini"
            cache = base / f"cache-{port}"
            ini.write_text(
                MYPY_INI.format(firmware=FIRMWARE, typeshed=typeshed, cache=cache),
                encoding="utf-8",
            )
            configs[port] = ini
        return configs[port]

    return config


def run_mypy(config: Path, targets: list[str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYPY")}
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(config), *targets],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def command_line(config: Path, targets: list[str]) -> str:
    return f"cd {ROOT} && .venv/bin/mypy --config-file {config} {' '.join(targets)}"


@pytest.mark.parametrize("port", PORTS)
def test_firmware_uses_only_the_boards_api(port: str, mypy_config: Callable[[str], Path]) -> None:
    config = mypy_config(port)
    targets = firmware_targets()
    result = run_mypy(config, targets)
    assert result.returncode == 0, (
        f"the firmware does not type-check against the MicroPython {port} stubs:\n"
        f"{result.stdout}{result.stderr}\nre-run: {command_line(config, targets)}"
    )
    # every source file was checked, none skipped or hidden
    checked = re.search(r"no issues found in (\d+) source files", result.stdout)
    assert checked, result.stdout
    assert int(checked.group(1)) == source_file_count(), result.stdout


# Deliberate mistakes, written the way the firmware is (unannotated functions and methods), each
# marked with the error code the check must report; `expect[PORT]` only on that port. The calls
# that are right must pass: the stubs are found and are the board's, not Any.
WRONG_CALLS = """\
import gc
import time

import bluetooth
import cryptolib
import machine
import micropython

_ADDRESS = micropython.const(0x76)


class Sensor:
    def __init__(self):
        self._i2c = machine.I2C(0)

    def read(self):
        return self._i2c.read_mem(_ADDRESS, 0xD0, 1)  # expect: attr-defined (readfrom_mem)

    def read_right(self):
        return self._i2c.readfrom_mem(_ADDRESS, 0xD0, 1)


def cycle():
    start = time.ticks_msec()  # expect: attr-defined (ticks_ms)
    time.perf_counter()  # expect: attr-defined (CPython only)
    gc.mem_free(True)  # expect: call-arg
    machine.lightsleep("1s")  # expect: call-overload
    return time.ticks_ms() - time.ticks_ms()  # expect: operator (ticks wrap: ticks_diff)


def cycle_right():
    start = time.ticks_ms()
    machine.lightsleep(10)
    time.sleep_ms(20)
    gc.collect()
    ble = bluetooth.BLE()
    ble.active(True)
    cryptolib.aes(bytes(16), 1).encrypt(bytes(16))
    return gc.mem_free() + time.ticks_diff(time.ticks_ms(), start)


def port_specific():
    import esp32  # expect[rp2]: import-not-found

    import rp2  # expect[esp32]: import-not-found

    return esp32, rp2
"""

_EXPECT = re.compile(r"# expect(?:\[(\w+)\])?: ([\w-]+)")
_ERROR = re.compile(r"^(?P<path>[^:\n]+):(?P<line>\d+): error: .*\[(?P<code>[\w-]+)\]$", re.M)


@pytest.mark.parametrize("port", PORTS)
def test_a_call_the_board_lacks_fails_the_check(
    port: str, mypy_config: Callable[[str], Path], tmp_path: Path
) -> None:
    source = tmp_path / "wrong_calls.py"
    source.write_text(WRONG_CALLS, encoding="utf-8")
    expected = set()
    for number, line in enumerate(WRONG_CALLS.splitlines(), start=1):
        mark = _EXPECT.search(line)
        if mark and mark.group(1) in (None, port):
            expected.add((number, mark.group(2)))
    assert len(expected) == 7

    result = run_mypy(mypy_config(port), [str(source)])
    reported = {
        (int(m["line"]), m["code"])
        for m in _ERROR.finditer(result.stdout)
        if m["path"] == str(source)
    }
    assert result.returncode == 1, result.stdout + result.stderr
    assert reported == expected, (
        f"{port}: expected errors (line, code) {sorted(expected)}, got {sorted(reported)}:\n"
        f"{result.stdout}{result.stderr}"
    )
