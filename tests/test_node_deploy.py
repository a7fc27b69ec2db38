"""`edgeveil node deploy` and `doctor` against the emulated MicroPython board
(firmware/host/mpboard.py: real MicroPython, mpremote's REPL protocol, flash in a directory)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from firmware.host.mpboard import EmulatedBoard
from gateway.node.provision import provision

from .command import ROOT, child_process, edgeveil
from .waiting import until_sync

pytestmark = [pytest.mark.micropython, pytest.mark.slow]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def node(tmp_path: Path) -> tuple[Path, Path]:
    """A provisioned node: its configuration and the export file holding its key."""
    done = provision(zone="hal-1", export=tmp_path / "export.json", config_out=tmp_path / "n.json")
    return done.config_path, done.registered_in


@pytest.fixture
def board(tmp_path: Path) -> Iterator[EmulatedBoard]:
    with EmulatedBoard(tmp_path / "flash") as emulated:
        yield emulated


def _deploy(
    board: EmulatedBoard, config: Path, cache: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    return edgeveil(
        "node", "deploy", "--port", board.device, "--config", str(config), "--cache", str(cache),
        *extra, timeout=180,
    )  # fmt: skip


def _first_frame(board: EmulatedBoard, registry: Path) -> subprocess.CompletedProcess[str]:
    return edgeveil(
        "node", "monitor", "--port", board.device, "--registry", str(registry), "--once",
        "--duration", "60", timeout=90,
    )  # fmt: skip


def test_deploy_copies_verifies_resets_and_then_copies_only_changes(
    board: EmulatedBoard, node: tuple[Path, Path], cache: Path
) -> None:
    config, registry = node
    flash = board.flash_dir
    (flash / "edgeveil_node").mkdir(parents=True)
    (flash / "edgeveil_node" / "app.py").write_text("raise SystemExit  # an old copy by hand\n")

    first = _deploy(board, config, cache)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "board: MicroPython" in first.stdout
    # the board's heap against what this configuration needs (footprint.py)
    assert re.search(r"heap: \d+ KiB for Python; this configuration needs about", first.stdout)
    assert (flash / "edgeveil_node" / "app.mpy").read_bytes().startswith(b"M\x06")
    assert (flash / "edgeveil.json").read_bytes() == config.read_bytes()
    assert (flash / "main.py").read_bytes() == (ROOT / "firmware" / "main.py").read_bytes()
    assert not (flash / "edgeveil_node" / "app.py").exists()  # would shadow app.mpy
    assert "removed: /edgeveil_node/app.py" in first.stdout
    manifest = json.loads((flash / ".edgeveil" / "manifest.json").read_text())["files"]
    for path, digest in manifest.items():
        assert hashlib.sha256((flash / path.lstrip("/")).read_bytes()).hexdigest() == digest
    assert not list(flash.rglob("*.new"))

    # the board was reset into the node application: it sends frames its key verifies
    seen = _first_frame(board, registry)
    assert seen.returncode == 0, seen.stdout + seen.stderr
    node_id = json.loads(config.read_text())["node_id"]
    assert f"frame    node {node_id} #" in seen.stdout

    again = _deploy(board, config, cache)
    assert again.returncode == 0, again.stderr
    assert f"copy: 0 of {len(manifest)} files changed" in again.stdout

    data = json.loads(config.read_text())
    data["zone"] = "hal-2"
    config.write_text(json.dumps(data))
    changed = _deploy(board, config, cache, "--no-reset")
    assert changed.returncode == 0, changed.stderr
    assert f"copy: 1 of {len(manifest)} files changed" in changed.stdout
    assert json.loads((flash / "edgeveil.json").read_text())["zone"] == "hal-2"


def test_an_identity_stays_on_the_board_it_was_first_deployed_to(
    tmp_path: Path, node: tuple[Path, Path], cache: Path
) -> None:
    """The same node-N.json onto a second board would seal other frames under the
    first board's key and nonces. Deploy binds it to the first board and refuses the second;
    a copy by hand (every file of board A put on board B) is refused by the node itself."""
    config, _ = node
    with EmulatedBoard(tmp_path / "a") as board_a:
        first = _deploy(board_a, config, cache, "--no-reset")
        uid_a = board_a.uid.hex()
        assert first.returncode == 0, first.stdout + first.stderr
        again = _deploy(board_a, config, cache, "--no-reset")  # the same board: fine
        assert again.returncode == 0, again.stdout + again.stderr
    assert f"bound: {config} to chip {uid_a}" in first.stdout
    assert "bound:" not in again.stdout
    assert json.loads(config.read_text())["board"] == uid_a  # saved on this computer
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert json.loads((tmp_path / "a" / "edgeveil.json").read_text())["board"] == uid_a

    with EmulatedBoard(tmp_path / "b") as board_b:
        uid_b = board_b.uid.hex()
        refused = _deploy(board_b, config, cache)
    assert uid_a != uid_b
    assert refused.returncode == 2, refused.stdout + refused.stderr
    node_id = json.loads(config.read_text())["node_id"]
    assert f"(node {node_id}) is bound to board {uid_a}; this is board {uid_b}" in refused.stderr
    assert "edgeveil node provision" in refused.stderr
    assert not (tmp_path / "b" / "edgeveil.json").exists()  # nothing was written

    shutil.copytree(tmp_path / "a", tmp_path / "b", dirs_exist_ok=True)  # mpremote cp, by hand
    with EmulatedBoard(tmp_path / "b") as board_b:
        doctor = edgeveil("node", "doctor", "--port", board_b.device, timeout=60)
    assert doctor.returncode == 1, doctor.stdout + doctor.stderr
    assert (
        f"FAIL configuration: invalid, checked on the board: this configuration (node "
        f"{node_id}) is bound to board {uid_a}; this is board {uid_b}: one identity per board"
    ) in doctor.stdout
    assert "-> give this board its own identity: edgeveil node provision" in doctor.stdout


def test_deploy_refuses_a_config_the_node_would_refuse(
    tmp_path: Path, node: tuple[Path, Path], cache: Path
) -> None:
    config, _ = node
    data = json.loads(config.read_text())
    data["sensors"] = [{"type": "bme280", "i2c": 0}]
    config.write_text(json.dumps(data))
    # no board needed: the configuration is checked before the port is opened
    result = edgeveil(
        "node", "deploy", "--port", "/dev/ttyUSB97", "--config", str(config), "--cache",
        str(cache),
    )  # fmt: skip
    assert result.returncode == 2
    assert 'sensors[0] (bme280): missing "scl"' in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_doctor_reports_a_healthy_node_and_what_to_do_on_a_bare_board(
    tmp_path: Path, node: tuple[Path, Path], cache: Path, board: EmulatedBoard
) -> None:
    config, _ = node
    assert _deploy(board, config, cache, "--no-reset").returncode == 0
    healthy = edgeveil("node", "doctor", "--port", board.device, timeout=60)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert "ok   aes: cryptolib.aes works" in healthy.stdout
    # the emulated board has a module-with-PSRAM heap (mpboard.py says why): plenty to spare
    assert re.search(
        r"ok   heap: \d+ KiB for Python; this configuration needs about", healthy.stdout
    )
    node_id = json.loads(config.read_text())["node_id"]
    assert f"ok   configuration: node {node_id}, valid (checked on the board)" in healthy.stdout
    assert "0 problems" in healthy.stdout

    with EmulatedBoard(tmp_path / "bare", aes=False) as bare:
        result = edgeveil("node", "doctor", "--port", bare.device, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL aes: missing" in result.stdout
    assert "flash the standard micropython.org build" in result.stdout
    assert "FAIL configuration: no edgeveil.json on the board -> edgeveil node provision" in (
        result.stdout
    )
    assert "2 problems" in result.stdout


def test_unplugged_mid_deploy_leaves_the_previous_version_booting(
    tmp_path: Path, node: tuple[Path, Path], cache: Path
) -> None:
    config, registry = node
    flash = tmp_path / "flash"
    with EmulatedBoard(flash) as board:
        assert _deploy(board, config, cache).returncode == 0
        deployed = json.loads((flash / ".edgeveil" / "manifest.json").read_text())["files"]
        before = {flash / p.lstrip("/"): (flash / p.lstrip("/")).read_bytes() for p in deployed}
        data = json.loads(config.read_text())
        data["zone"] = "elsewhere"
        config.write_text(json.dumps(data))
        with child_process(
            [sys.executable, "-m", "gateway.cli", "node", "deploy", "--port", board.device,
             "--config", str(config), "--cache", str(cache), "--force"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ) as deploy:  # fmt: skip

            def copying() -> bool:  # the copy has begun: pull the cable
                assert deploy.poll() is None, deploy.communicate()
                return bool(list(flash.rglob("*.new")))

            until_sync(copying, "the deploy begins to copy", 60)
            board.kill()
            out, err = deploy.communicate(timeout=120)
    assert deploy.returncode == 2, out + err
    assert "none switched over: the board still boots its previous version" in err
    assert "run deploy again" in err
    assert "Traceback" not in err
    for path, content in before.items():  # nothing under a real name changed
        assert path.read_bytes() == content, path

    with EmulatedBoard(flash) as board:  # plugged back in
        seen = _first_frame(board, registry)
        assert seen.returncode == 0, seen.stdout + seen.stderr
        assert f"frame    node {data['node_id']} #" in seen.stdout
        again = _deploy(board, config, cache)
        assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads((flash / "edgeveil.json").read_text())["zone"] == "elsewhere"
    assert not list(flash.rglob("*.new"))


def test_deploy_romfs_runs_the_modules_from_the_rom_filesystem(
    tmp_path: Path, node: tuple[Path, Path], cache: Path
) -> None:
    config, registry = node
    with EmulatedBoard(tmp_path / "flash", romfs_bytes=256 * 1024) as board:
        assert _deploy(board, config, cache, "--no-reset").returncode == 0  # modules on flash
        moved = _deploy(board, config, cache, "--romfs")
        assert moved.returncode == 0, moved.stdout + moved.stderr
        written = r"romfs: \d+ bytes written to the ROM filesystem \(262144 bytes\), verified"
        assert re.search(written, moved.stdout)
        assert "removed: /edgeveil_node/__init__.mpy" in moved.stdout
        # nothing of the node's code is left on the flash to shadow /rom: not even a directory
        left = sorted(p.name for p in board.flash_dir.iterdir())
        assert "edgeveil_node" not in left and "protocol" not in left
        assert {"boot.py", "main.py", "edgeveil.json"} <= set(left)
        seen = _first_frame(board, registry)  # the node runs from /rom: its frames verify
        assert seen.returncode == 0, seen.stdout + seen.stderr
        again = _deploy(board, config, cache, "--romfs", "--no-reset")
        assert "romfs: the board holds this image already" in again.stdout


def test_deploy_romfs_on_a_build_without_one_says_so(
    board: EmulatedBoard, node: tuple[Path, Path], cache: Path
) -> None:
    config, _ = node
    result = _deploy(board, config, cache, "--romfs")
    assert result.returncode == 2
    assert "this board's MicroPython has no ROM filesystem" in result.stderr
    assert not (board.flash_dir / "main.py").exists()  # nothing was written
