"""Every technician path, on the emulated MicroPython board, never seals two frames under one
key and nonce.

Real MicroPython runs the deployed node application (firmware/host/mpboard.py); what the
boards put on their serial lines is read back as bytes, and every frame's (key, nonce) pair
is computed from the node's secret, the frame's key epoch and its counter. Paths: deploy onto
board A; the same file onto board B (refused); a hand copy of A's flash onto B (the node
refuses to seal); A's flash erased and deployed again (fresh keys, which the gateway takes);
A erased and the files copied back by hand (the node refuses); A's flash restored from a
backup (a raw copy, the one clone no tool can stop: the gateway reports the reuse).

Without the binding (config.check_board / deploy.bind) board B seals under A's identity from
counter 0; without the epoch logic (deploy._identity, config.check_continuity) the re-deploy
and the hand copy start A's old keys at counter 0 again: either way the uniqueness assertion
fails.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import serial

from firmware.host.mpboard import EmulatedBoard
from gateway.ingest import Arrival
from gateway.node.monitor import StreamSplitter
from gateway.node.provision import provision
from protocol import ConfigUpdate, Event, NodeKeys, encode_serial, open_frame, parse_header, seal

from .command import edgeveil
from .test_counter_reuse import Gateway
from .waiting import until_sync

pytestmark = [pytest.mark.micropython, pytest.mark.asyncio, pytest.mark.slow]

SENSOR = "bme280:i2c=0,scl=22,sda=21"


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def _deploy(board: EmulatedBoard, config: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    return edgeveil(
        "node", "deploy", "--port", board.device, "--config", str(config), "--cache", str(cache),
        "--no-reset", timeout=180,
    )  # fmt: skip


def listen(
    flash: Path,
    seconds: float,
    frames_wanted: int = 0,
    answer: bytes = b"",
    console_wanted: str = "",
) -> tuple[list[bytes], list[str]]:
    """Power the board on flash `flash` up and read its line: (frames, console lines), until
    `frames_wanted` distinct frames came or a console line holds `console_wanted` (a failure
    after `seconds`). `answer`: a sealed frame from the gateway, written once the node has
    sent its first frame."""
    assert frames_wanted or console_wanted, "listen for what?"
    splitter = StreamSplitter()
    frames: list[bytes] = []
    console: list[str] = []
    with EmulatedBoard(flash) as board, serial.Serial(board.device, 115200, timeout=0.2) as line:

        def heard() -> bool:
            for event in splitter.feed(line.read(4096)):
                if event.kind == "frame":
                    if answer and not frames:
                        line.write(encode_serial(answer))
                    frames.append(event.frame)
                elif event.kind == "console":
                    console.append(event.text)
            return bool(frames_wanted and len(set(frames)) >= frames_wanted) or bool(
                console_wanted and any(console_wanted in text for text in console)
            )

        until_sync(
            heard,
            f"{frames_wanted} distinct frames or a console line with {console_wanted!r}",
            seconds,
            lambda: (len(set(frames)), console[-5:]),
            interval=0,
        )
    return frames, console


def _counter_files(names: list[str]) -> list[str]:
    return [name for name in names if name in ("counter.a", "counter.b")]


def erase(flash: Path) -> None:
    """What esptool's erase does to the filesystem (the chip, and so its id, stays)."""
    for item in flash.iterdir():
        shutil.rmtree(item) if item.is_dir() else item.unlink()


def key_nonce_pairs(
    frames: list[bytes], node_id: int, secret: bytes
) -> dict[tuple[bytes, bytes], bytes]:
    """(key, nonce) -> the frame sealed under it; AssertionError when two frames share one."""
    sealed: dict[tuple[bytes, bytes], bytes] = {}
    for frame in frames:
        header = parse_header(frame)
        assert header.node_id == node_id
        keys = NodeKeys(node_id, secret, epoch=header.epoch)
        pair = (keys.uplink_key, keys.nonce(header.counter))
        assert sealed.setdefault(pair, frame) == frame, f"key and nonce used twice: {header}"
    return sealed


async def test_no_technician_path_seals_two_frames_under_one_key_and_nonce(  # noqa: PLR0915 - one story
    tmp_path: Path, cache: Path
) -> None:
    export = tmp_path / "export.json"
    done = provision(zone="hal-1", export=export, config_out=tmp_path / "n.json", sensors=(SENSOR,))
    config = done.config_path
    data = json.loads(config.read_text())
    node_id, secret = data["node_id"], bytes.fromhex(data["secret"])
    a, b = tmp_path / "a", tmp_path / "b"
    wire: list[bytes] = []

    # 1. deploy onto board A: the node reports
    with EmulatedBoard(a) as board_a:
        first = _deploy(board_a, config, cache)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "counter: fresh state written (key epoch 0, counter 0)" in first.stdout
    # the gateway changes a setting each time the node runs: it answers config_applied with
    # the version, so two runs from the same state seal different frames (the emulated board is
    # deterministic; a board in the field is not)
    keys = NodeKeys(node_id, secret)
    frames, _ = listen(a, 60, 5, seal(ConfigUpdate(3, {"reading_interval_s": 60}), 0, keys))
    assert {parse_header(f).epoch for f in frames} == {0}
    assert Event(4, 3) in [open_frame(f, keys) for f in frames]
    wire += frames

    # 2. the same file onto board B: refused before anything is written
    with EmulatedBoard(b) as board_b:
        refused = _deploy(board_b, config, cache)
    assert refused.returncode == 2 and "is bound to board" in refused.stderr

    # 3. A's flash copied onto B by hand (mpremote cp): B seals nothing, and says why
    shutil.copytree(a, b, dirs_exist_ok=True)
    update = seal(ConfigUpdate(5, {"reading_interval_s": 60}), 1, keys)
    frames, console = listen(b, 60, 5, update, console_wanted="is bound to board")
    assert frames == []
    assert any(f"this configuration (node {node_id}) is bound to board" in c for c in console)
    wire += frames
    frames, _ = listen(a, 60, 5, seal(ConfigUpdate(4, {"reading_interval_s": 60}), 1, keys))
    assert Event(4, 4) in [open_frame(f, keys) for f in frames]  # A goes on as before
    wire += frames
    key_nonce_pairs(wire, node_id, secret)

    # 4. A's flash erased, then deployed again with the same file: fresh keys
    erase(a)
    with EmulatedBoard(a) as board_a:
        again = _deploy(board_a, config, cache)
    assert again.returncode == 0, again.stdout + again.stderr
    backup = tmp_path / "backup"
    shutil.copytree(a, backup)  # a technician's raw flash backup, taken now
    # the node runs; the gateway changes a setting (the node answers config_applied 1)
    epoch = json.loads(config.read_text()).get("epoch", 0)  # saved on this computer first
    keys = NodeKeys(node_id, secret, epoch=epoch)
    fresh, _ = listen(a, 60, 5, seal(ConfigUpdate(1, {"reading_interval_s": 60}), 0, keys))
    wire += fresh
    key_nonce_pairs(wire, node_id, secret)
    assert Event(4, 1) in [open_frame(f, keys) for f in fresh]
    assert "the board's counter state is missing" in again.stdout
    assert "key epoch 16" in again.stdout
    assert epoch == 16
    assert {parse_header(f).epoch for f in fresh} == {16}
    assert min(parse_header(f).counter for f in fresh) == 0

    # 5. erased again and the files copied back by hand, without the counter state
    erase(a)
    shutil.copytree(backup, a, dirs_exist_ok=True, ignore=lambda _d, names: _counter_files(names))
    update = seal(ConfigUpdate(6, {"reading_interval_s": 60}), 1, keys)
    frames, console = listen(a, 60, 5, update, console_wanted="no counter state of node")
    wire += frames
    key_nonce_pairs(wire, node_id, secret)  # every path above: no pair twice
    assert frames == []
    assert any(f"no counter state of node {node_id} (key epoch 16)" in c for c in console), (
        "\n".join(console)
    )
    with EmulatedBoard(a) as board_a:
        doctor = edgeveil("node", "doctor", "--port", board_a.device, timeout=60)
    assert doctor.returncode == 1, doctor.stdout + doctor.stderr
    assert (
        f"FAIL configuration: invalid, checked on the board: no counter state of node {node_id}"
        in doctor.stdout
    )
    assert (
        "-> edgeveil node deploy --config FILE (for lost counter state: fresh keys)"
        in doctor.stdout
    )

    # the gateway takes the node's frames, under both epochs, and then only the new keys
    (tmp_path / "gateway").mkdir()
    gateway = Gateway(tmp_path / "gateway", node=node_id, secret=secret)
    try:
        await gateway.ingest.process([Arrival("ttyTEST", f, gateway.now) for f in wire])
        assert gateway.outcome("accepted") == len({f for f in wire})
        assert gateway.registry.get(node_id).epoch == 16  # type: ignore[union-attr]

        # 6. the raw backup restored: the one clone no tool can stop; the gateway says so
        erase(a)
        shutil.copytree(backup, a, dirs_exist_ok=True)
        # it runs what it ran after the backup, until the gateway's next setting (version 2)
        restored, _ = listen(a, 60, 5, seal(ConfigUpdate(2, {"reading_interval_s": 60}), 0, keys))
        assert Event(4, 2) in [open_frame(f, keys) for f in restored]
        await gateway.ingest.process([Arrival("ttyTEST", f, gateway.now) for f in restored])
        assert gateway.outcome("counter_reuse") >= 1
        assert len(gateway.alarms()) == 1
    finally:
        gateway.close()
