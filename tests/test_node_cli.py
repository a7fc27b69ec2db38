"""The `edgeveil node` command group: help texts, list-ports, the board errors a technician
meets, and micropython-lib packages from the local cache."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import serial.tools.list_ports
from serial.tools.list_ports_common import ListPortInfo

from firmware.host.fleet import open_pty
from gateway.cli import main
from gateway.node import board as board_mod
from gateway.node import deploy
from gateway.node.board import port_error
from gateway.node.errors import NodeCommandError

from .command import edgeveil

SUBCOMMANDS = ("list-ports", "flash", "provision", "deploy", "fetch-packages", "monitor", "doctor")


def test_every_node_command_has_help_and_is_listed() -> None:
    group = edgeveil("node", "--help")
    assert group.returncode == 0
    for name in SUBCOMMANDS:
        assert f"    {name}" in group.stdout, name
        result = edgeveil("node", name, "--help")
        assert result.returncode == 0, name
        assert result.stdout.startswith(f"usage: edgeveil node {name}"), name
    assert "node" in edgeveil("--help").stdout


def test_list_ports_shows_usb_ids_serial_numbers_and_board_guesses(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    usb = ListPortInfo("/dev/ttyUSB0")
    usb.vid, usb.pid, usb.serial_number = 0x10C4, 0xEA60, "0001"
    usb.apply_usb_info()
    pico = ListPortInfo("/dev/ttyACM0")
    pico.vid, pico.pid, pico.serial_number = 0x2E8A, 0x0005, "E6614C311B"
    pico.apply_usb_info()
    monkeypatch.setattr(serial.tools.list_ports, "comports", lambda *a, **k: [usb, pico])
    assert main(["node", "list-ports"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "/dev/ttyACM0  2e8a:0005  serial E6614C311B  Raspberry Pi RP2040/RP2350 running "
        "MicroPython",
        "/dev/ttyUSB0  10c4:ea60  serial 0001  Silicon Labs CP210x USB-UART (ESP32/ESP8266 dev "
        "boards)",
    ]
    monkeypatch.setattr(serial.tools.list_ports, "comports", lambda *a, **k: [])
    assert main(["node", "list-ports"]) == 1
    assert "plug the board in" in capsys.readouterr().out


def test_port_errors_name_the_fix() -> None:
    busy = str(port_error("/dev/ttyUSB0", OSError(errno.EBUSY, "busy")))
    assert "another program (mpremote, a serial monitor, a running gateway?)" in busy
    denied = str(port_error("/dev/ttyUSB0", OSError(errno.EACCES, "denied")))
    assert denied == (
        "permission denied on /dev/ttyUSB0: add yourself to the dialout group "
        "(sudo usermod -aG dialout $USER) and log in again"
    )
    assert "plug the board in" in str(port_error("/dev/ttyUSB3", OSError(errno.ENOENT, "x")))


def test_a_port_without_micropython_behind_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # the command gives the board three tries of 2 s each to answer; nothing ever answers on
    # this line, so shorter tries show the same (the command's main(), in this process)
    monkeypatch.setattr(board_mod, "RAW_REPL_TIMEOUT_S", 0.2)
    master, slave = open_pty()  # nothing answers on this line
    try:
        status = main(["node", "doctor", "--port", os.ttyname(slave)])
    finally:
        os.close(master)
        os.close(slave)
    stderr = capsys.readouterr().err
    assert status == 2
    assert "does not answer as MicroPython: flash MicroPython first" in stderr
    assert len(stderr.strip().splitlines()) == 1


def _local_package(root: Path) -> Path:
    """A micropython-lib style package.json with its file beside it, as mip reads it."""
    package = root / "blink"
    (package / "blink").mkdir(parents=True)
    (package / "blink" / "__init__.py").write_text("def on():\n    return 1\n")
    (package / "package.json").write_text(
        json.dumps({"urls": [["blink/__init__.py", "blink/__init__.py"]], "version": "0.1"})
    )
    return package / "package.json"


def test_packages_are_fetched_into_the_cache_and_built_for_lib(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    fetched = edgeveil(
        "node", "fetch-packages", str(_local_package(tmp_path)), "--cache", str(cache)
    )
    assert fetched.returncode == 0, fetched.stderr
    files = deploy.package_files(["blink"], cache)
    assert list(files) == ["/lib/blink/__init__.py"]
    built = deploy.build(6 | 3 << 8, b"{}", files, cache)
    assert built.files["/lib/blink/__init__.mpy"].startswith(b"M\x06")

    with pytest.raises(NodeCommandError, match="while online, run: edgeveil node fetch-packages"):
        deploy.package_files(["lora-sx127x"], cache)


def test_a_package_naming_a_file_outside_the_cache_is_refused(tmp_path: Path) -> None:
    """A package.json whose target climbs out of the cache (security review)."""
    package = tmp_path / "src" / "evil"
    package.mkdir(parents=True)
    (package / "evil.py").write_text("print('pwned')\n")
    (package / "package.json").write_text(
        json.dumps({"urls": [["../../../escaped.py", "evil.py"]], "version": "0.1"})
    )
    cache = tmp_path / "deep" / "er" / "cache"
    result = edgeveil(
        "node", "fetch-packages", str(package / "package.json"), "--cache", str(cache)
    )
    assert result.returncode == 2
    assert "the package names a file outside its directory" in result.stderr
    assert not list(tmp_path.rglob("escaped.py"))
    assert not (cache / "packages" / "evil").exists()
    assert not [p for p in (cache / "packages").iterdir() if p.name.startswith(".fetch-")]
    with pytest.raises(NodeCommandError, match="not a micropython-lib package name"):
        deploy.package_files(["../../etc"], cache)


def test_lora_nodes_need_the_modem_packages() -> None:
    assert deploy.required_packages({"link": {"type": "serial", "port": "console"}}) == []
    assert deploy.required_packages({"link": {"type": "lora", "chip": "sx1276"}}) == [
        "lora-sync",
        "lora-sx127x",
    ]
    assert deploy.required_packages({"link": {"type": "lora", "chip": "sx1262"}}) == [
        "lora-sync",
        "lora-sx126x",
    ]


def test_board_mpy_versions() -> None:
    assert deploy.board_mpy(6 | 3 << 8 | 10 << 10) == "6.3"  # xtensawin arch bits ignored
    assert deploy.board_mpy(6 | 2 << 8) == "6.2"
    assert deploy.board_mpy(5) == "5"
    assert deploy.board_mpy(0) is None
