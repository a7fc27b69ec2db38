"""The host shims and the emulated board: MicroPython's machine/time/cryptolib/bluetooth on
CPython, backed by simulated chips, a pseudo-terminal and a seeded scenario."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

from firmware.host import board as board_mod
from firmware.host.board import (
    TICKS_HALFPERIOD,
    TICKS_MAX,
    TICKS_PERIOD,
    Board,
    Clock,
    ticks_add,
    ticks_diff,
)
from firmware.host.fleet import default_config
from firmware.host.scenario import Scenario, parse_faults
from protocol.ccm import AesCcm

from .command import child_process
from .waiting import until_sync

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware"
SHIMS = FIRMWARE / "host" / "shims"
SECRET = bytes(range(16))  # TEST ONLY

for _path in (FIRMWARE, SHIMS):  # as on the node: `import machine`, `import edgeveil_node`
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))


def _load_shim(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_shim_{name}", SHIMS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- time: MicroPython's ticks ------------------------------------------------------------------


def test_ticks_diff_and_add_wrap_like_micropython() -> None:
    assert TICKS_PERIOD == 2**30
    assert ticks_diff(0, TICKS_MAX) == 1  # just after the wrap is later
    assert ticks_diff(TICKS_MAX, 0) == -1
    assert ticks_diff(5, 3) == 2
    assert ticks_diff(TICKS_HALFPERIOD - 1, 0) == TICKS_HALFPERIOD - 1
    assert ticks_diff(TICKS_HALFPERIOD, 0) == -TICKS_HALFPERIOD  # the circle's far side
    assert ticks_add(TICKS_MAX, 1) == 0
    assert ticks_add(0, -1) == TICKS_MAX
    for t in (0, 1, 12345, TICKS_MAX - 3, TICKS_HALFPERIOD):
        for delta in (-TICKS_HALFPERIOD + 1, -1000, 0, 7, TICKS_HALFPERIOD - 1):
            later = ticks_add(t, delta)
            assert 0 <= later <= TICKS_MAX
            assert ticks_diff(later, t) == delta
            assert ticks_diff(t, later) == -delta
    for bad in (TICKS_HALFPERIOD, -TICKS_HALFPERIOD, TICKS_PERIOD):
        with pytest.raises(OverflowError):
            ticks_add(0, bad)


class HostTime:
    """The host's monotonic clock and sleep, moving only when slept on or told to."""

    def __init__(self) -> None:
        self.now = 1024.0  # whole binary fractions below: exact ticks, no float rounding
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_clock_ticks_wrap_and_run_at_the_drift_factor() -> None:
    host = HostTime()
    clock = Clock(start_ms=TICKS_PERIOD - 30, monotonic=host.monotonic, sleep=host.sleep)
    before = clock.ticks_ms()  # 30 ms before the wrap
    clock.sleep_ms(125)
    after = clock.ticks_ms()
    assert host.slept == [0.125]
    assert after < before  # wrapped
    assert ticks_diff(after, before) == 125
    assert 0 <= clock.ticks_us() <= TICKS_MAX

    host = HostTime()
    fast = Clock(drift=1.5, monotonic=host.monotonic, sleep=host.sleep)
    t0 = fast.ticks_ms()
    host.now += 0.25  # 250 ms of real time: 375 ms of the board's clock
    assert ticks_diff(fast.ticks_ms(), t0) == 375
    fast.sleep_ms(150)  # 150 ms of the board's clock: 100 ms of real time
    assert host.slept == [pytest.approx(0.1)]
    fast.sleep_us(1500)
    assert host.slept[1:] == [pytest.approx(0.001)]
    fast.sleep_ms(0)  # nothing to wait for
    assert len(host.slept) == 2


def test_scenario_drift_fault_gives_each_node_its_own_clock_rate() -> None:
    faults = parse_faults("drift=20000")
    rates = {Scenario("office", 7, i, faults).drift_factor() for i in range(6)}
    assert len(rates) == 6
    assert all(0.98 <= r <= 1.02 and r != 1.0 for r in rates)
    assert Scenario("office", 7, 0).drift_factor() == 1.0


# -- cryptolib ----------------------------------------------------------------------------------


def test_cryptolib_shim_is_exactly_aes(rng: random.Random) -> None:
    cryptolib = _load_shim("cryptolib")
    for key_len in (16, 32):
        key = rng.randbytes(key_len)
        blocks = rng.randbytes(16 * 8)
        reference = Cipher(algorithms.AES(key), modes.ECB()).encryptor()  # noqa: S305
        expected = reference.update(blocks)
        shim = cryptolib.aes(key, 1)
        assert shim.encrypt(blocks) == expected
        out = bytearray(16)
        assert cryptolib.aes(key, 1).encrypt(bytearray(blocks[:16]), out) is None
        assert bytes(out) == expected[:16]
        assert cryptolib.aes(key, 1).decrypt(expected) == blocks
    iv = rng.randbytes(16)
    key = rng.randbytes(16)
    cbc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor().update(bytes(32))
    assert cryptolib.aes(key, 2, iv).encrypt(bytes(32)) == cbc
    with pytest.raises(ValueError, match="blksize"):
        cryptolib.aes(key, 1).encrypt(b"short")
    with pytest.raises(ValueError):
        cryptolib.aes(bytes(15), 1)


def test_protocol_ccm_on_the_cryptolib_shim_matches_cryptography(rng: random.Random) -> None:
    # what protocol/ does on the node: its own AES-CCM over cryptolib.aes(key, 1).encrypt
    cryptolib = _load_shim("cryptolib")
    key = rng.randbytes(16)
    ccm = AesCcm(cryptolib.aes(key, 1).encrypt, 8)
    for n in (0, 1, 15, 16, 17, 100):
        nonce, data, aad = rng.randbytes(13), rng.randbytes(n), rng.randbytes(n // 2 + 3)
        sealed = ccm.encrypt(nonce, data, aad)
        assert sealed == AESCCM(key, tag_length=8).encrypt(nonce, data, aad)
        assert ccm.decrypt(nonce, sealed, aad) == data


# -- the board ----------------------------------------------------------------------------------


@pytest.fixture
def board(monkeypatch: pytest.MonkeyPatch) -> Iterator[Board]:
    """A board built from the fleet's default configuration, in this process. Its world has
    been going for 10 minutes (people around), its pty is open, its world thread runs, and
    MicroPython's time functions run on its clock (as node.py installs them)."""
    config = default_config(4660, SECRET, "test-zone", 1)
    b = Board(config, Scenario("street", 3), world_start=time.time() - 600)
    for name in ("ticks_ms", "ticks_us", "sleep_ms", "sleep_us"):
        monkeypatch.setattr(time, name, getattr(b.clock, name), raising=False)
    monkeypatch.setattr(time, "ticks_diff", ticks_diff, raising=False)
    monkeypatch.setattr(time, "ticks_add", ticks_add, raising=False)
    board_mod.install(b)
    b.start()
    try:
        yield b
    finally:
        b.close()
        board_mod.install(None)


def test_board_has_the_configured_chips_at_their_addresses(board: Board) -> None:
    import machine

    i2c = machine.I2C(0, scl=machine.Pin(22), sda=machine.Pin(21), freq=100_000)
    assert i2c.scan() == [0x44, 0x76]  # SHT4x, BME280
    assert machine.I2C(0, scl=machine.Pin(5), sda=machine.Pin(4)).scan() == []  # miswired
    assert machine.I2C(1).scan() == []
    with pytest.raises(OSError) as missing:
        i2c.readfrom(0x62, 3)  # no SCD4x on this board
    assert missing.value.errno == 19  # ENODEV, as MicroPython
    assert type(board.uart(1)).__name__ == "LinkUart"
    assert type(board.uart(2)).__name__ == "PmsUart"
    assert os.isatty(board.link.slave)
    assert board.device.startswith("/dev/pts/")


def test_real_drivers_read_the_scenario_through_the_shims(board: Board) -> None:
    import machine
    from edgeveil_node.drivers.battery import Battery
    from edgeveil_node.drivers.bme280 import BME280
    from edgeveil_node.drivers.pms5003 import PMS5003
    from edgeveil_node.drivers.sht4x import SHT4x

    i2c = machine.I2C(0, scl=machine.Pin(22), sda=machine.Pin(21))
    values: dict[int, int] = {}
    bme = BME280(i2c, 0x76)
    bme.start()
    bme.read_into(values)
    conditions = board.conditions()
    assert values[0] == pytest.approx(conditions.temperature_c * 10, abs=6)  # 0.1 degC
    assert values[2] == pytest.approx(conditions.pressure_pa / 10, abs=5)  # 10 Pa
    sht = SHT4x(i2c, 0x44)
    sht.start()
    sht.read_into(values)
    assert values[0] == pytest.approx(conditions.temperature_c * 10, abs=6)
    assert values[1] == pytest.approx(conditions.humidity_pct * 10, abs=30)

    battery = Battery(machine.ADC(machine.Pin(35), atten=machine.ADC.ATTN_11DB), 2, 1)
    battery.read_into(values)
    assert values[3] == pytest.approx(board.battery_mv(), abs=25)
    unattenuated = Battery(machine.ADC(machine.Pin(35)), 2, 1)  # forgot ATTN_11DB
    assert unattenuated.millivolts() == 1900  # saturates at 950 mV, as on an ESP32

    pms = PMS5003(machine.UART(2, baudrate=9600, rx=25, tx=26, rxbuf=256))
    pms.read_into(values)  # waits for the sensor's next frame (one a second)
    assert values[5] == round(board.conditions().pm25_ugm3)


def test_pin_irq_runs_on_the_main_thread_for_the_chosen_edges(board: Board) -> None:
    import machine
    import micropython

    calls: list[tuple[Any, bool]] = []
    pin = machine.Pin(4, machine.Pin.IN)
    pin.irq(lambda p: calls.append((p, threading.current_thread() is threading.main_thread())),
            trigger=machine.Pin.IRQ_RISING)  # fmt: skip
    line = board.pin(4)

    def world() -> None:  # another thread, like the PIR's output
        for level in (1, 0, 1, 0):
            line.drive(level)

    t = threading.Thread(target=world)
    t.start()
    t.join()
    # the edges queued their handlers as they came; a callback scheduled after them runs
    # after them (one queue, first in first out): when it has run, every handler has
    marker: list[bool] = []
    micropython.schedule(marker.append, True)
    until_sync(lambda: marker, "the callback scheduled after the edges")
    assert len(calls) == 2  # rising edges only
    assert all(p is pin and on_main for p, on_main in calls)
    assert pin.value() == 0

    out = machine.Pin(5, machine.Pin.OUT, value=1)
    assert out.value() == 1
    out.off()
    assert out.value() == 0


def test_micropython_schedule_queue_is_bounded(board: Board) -> None:
    import micropython

    ran: list[int] = []
    state = machine_disable_irq()
    try:
        for i in range(4):
            micropython.schedule(ran.append, i)
        with pytest.raises(RuntimeError, match="schedule queue full"):
            micropython.schedule(ran.append, 99)
        board.scheduler.run_pending()  # what the wake-up signal's handler does
        assert ran == []  # IRQs disabled: nothing runs
    finally:
        machine_enable_irq(state)
    until_sync(lambda: ran == [0, 1, 2, 3], "the callbacks run once IRQs are enabled")
    assert micropython.const(5) == 5


def machine_disable_irq() -> int:
    import machine

    return int(machine.disable_irq())


def machine_enable_irq(state: int) -> None:
    import machine

    machine.enable_irq(state)


def test_ble_scan_hears_the_crowd_with_local_addresses(board: Board) -> None:
    import bluetooth
    from edgeveil_node.drivers.ble_scan import BLEScanner

    expected = {d.address for d in board.devices()}
    assert len(expected) >= 2  # a street after 10 minutes
    scanner = BLEScanner(bluetooth.BLE(), max_devices=64)
    scanner.start_window(600)
    until_sync(scanner.window_done, "the scan window ends", 3.0)
    seen = scanner.take()
    addresses = {a for a, _ in seen}
    assert addresses and addresses <= expected | {d.address for d in board.devices()}
    for address, rssi in seen:
        assert address[0] & 0x02 and not address[0] & 0x01  # locally administered, unicast
        assert -100 <= rssi <= -30


def test_link_uart_is_the_pty(board: Board) -> None:
    import machine

    uart = machine.UART(1, baudrate=115200, tx=17, rx=16)
    peer = os.open(board.device, os.O_RDWR | os.O_NOCTTY)
    try:
        uart.write(b"\x00frame\x00")
        until_sync(lambda: _readable(peer), "the frame on the pty")
        assert os.read(peer, 100) == b"\x00frame\x00"
        os.write(peer, b"ack\n")
        until_sync(lambda: uart.any() == 4, "the answer in the UART")
        buf = bytearray(8)
        assert uart.readinto(buf) == 4
        assert bytes(buf[:4]) == b"ack\n"
        assert uart.read() is None
        os.write(peer, bytes(1000))  # more than the 256-byte receive buffer
        until_sync(lambda: board.link.lost_rx > 0, "bytes beyond the receive buffer lost")
        assert uart.any() == 256
    finally:
        os.close(peer)


def _readable(fd: int) -> bool:
    import select

    return bool(select.select([fd], [], [], 0)[0])


# -- the scenario -------------------------------------------------------------------------------


def test_scenario_is_repeatable_and_addresses_rotate() -> None:
    a, b = Scenario("street", 11, 2), Scenario("street", 11, 2)
    for t in (0.0, 55.5, 600.0, 3600.0):
        assert a.conditions(t) == b.conditions(t)
        assert a.devices(t) == b.devices(t)
    assert Scenario("street", 12, 2).devices(600.0) != a.devices(600.0)
    day = Scenario("office", 1)
    temps = [day.conditions(h * 3600.0).temperature_c for h in range(24)]
    assert max(temps) - min(temps) > 2  # a day/night swing
    before = {d.address for d in a.devices(600.0)}
    after = {d.address for d in a.devices(600.0 + 3 * 45.0)}  # past a rotation period
    assert before - after  # private addresses changed
    for d in a.devices(900.0):
        assert d.address[0] & 0x03 == 0x02  # locally administered, unicast: never a vendor OUI


def test_fault_lists_parse_and_reject_nonsense() -> None:
    f = parse_faults("drop=0.5,garbage,power-cut=12")
    assert (f.drop, f.garbage, f.power_cut_s, f.reboot_s) == (0.5, 0.2, 12.0, 0.0)
    assert parse_faults("none").enabled() == []
    assert parse_faults("all").enabled() == ["garbage", "drop", "reboot", "power-cut", "drift"]
    for bad in ("drop=2", "lightning", "reboot=-1", "drop=x"):
        with pytest.raises(ValueError):
            parse_faults(bad)


def test_line_faults_drop_and_add_garbage_repeatably() -> None:
    scenario = Scenario("office", 5, 0, parse_faults("drop=0.3,garbage=0.3"))
    runs = []
    for _ in range(2):
        faults = scenario.line_faults(boot=1)
        runs.append([faults.on_write(b"\x00frame%d\x00" % i) for i in range(200)])
    assert runs[0] == runs[1]
    pieces = runs[0]
    assert 30 < sum(1 for p in pieces if p == []) < 90
    assert any(len(p) > 1 for p in pieces)


# -- the watchdog, in a real node process --------------------------------------------------------

# Fed ten times as often as it must be (the margin is for a loaded machine: the watchdog
# counts real time); then only the watchdog can end the hour-long sleep.
WDT_MAIN = """
import machine, time
print("cause", machine.reset_cause(), flush=True)
wdt = machine.WDT(timeout=1000)
for _ in range(6):          # fed: no reset
    time.sleep_ms(100)
    wdt.feed()
print("stops feeding", flush=True)
time.sleep(3600)
print("still alive")
"""


def test_watchdog_resets_a_node_that_stops_feeding_it(tmp_path: Path) -> None:
    flash = tmp_path / "flash"
    flash.mkdir()
    config = default_config(1, SECRET, "wdt", 1)  # link on a UART: print() is stdout
    (flash / "edgeveil.json").write_text(json.dumps(config))
    script = tmp_path / "main.py"
    script.write_text(WDT_MAIN)
    with child_process(
        [sys.executable, "-m", "firmware.host.node", "--flash", str(flash), "--main",
         str(script), "--reset-cause", "watchdog", "--ready-file", str(tmp_path / "ready")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
    ) as proc:  # fmt: skip
        out, err = proc.communicate(timeout=30)  # a watchdog that never bites: a failure
    assert proc.returncode == board_mod.EXIT_STATUS[board_mod.WDT_RESET], err
    assert b"cause 3" in out  # machine.reset_cause() == machine.WDT_RESET
    assert b"stops feeding" in out
    assert b"still alive" not in out
    assert b"watchdog" in err
    assert (tmp_path / "ready").read_text().startswith("/dev/pts/")
