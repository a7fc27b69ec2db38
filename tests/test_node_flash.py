"""`edgeveil node flash`: image checks before anything is written, the UF2 copy, and esptool
meeting a port with no bootloader behind it."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from firmware.host.fleet import open_pty
from gateway.node.errors import NodeCommandError
from gateway.node.flash import RP2040_FAMILY, check_esp_image, check_uf2, flash_uf2

from .command import edgeveil

UF2_FLAG_FAMILY = 0x2000


def esp_image(path: Path, chip_id: int, magic: int = 0xE9) -> Path:
    """The first bytes of an ESP-IDF image (bootloader header + extended header), then
    filler: what the checks read."""
    header = bytearray(24)
    header[0] = magic
    header[1] = 3  # segments
    struct.pack_into("<H", header, 12, chip_id)
    path.write_bytes(bytes(header) + b"\xff" * 4096)
    return path


def uf2(path: Path, blocks: int = 4, family: int = RP2040_FAMILY, flags: int = UF2_FLAG_FAMILY,
        damage: int | None = None) -> Path:  # fmt: skip
    data = bytearray()
    for n in range(blocks):
        block = bytearray(512)
        struct.pack_into(
            "<8I", block, 0, 0x0A324655, 0x9E5D5157, flags, 0x10000000 + 256 * n, 256, n,
            blocks, family,
        )  # fmt: skip
        block[32 : 32 + 256] = bytes([n]) * 256
        struct.pack_into("<I", block, 508, 0x0AB16F30 if n != damage else 0)
        data += block
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    ("chip_id", "chip", "offset"),
    [(0, "ESP32", 0x1000), (2, "ESP32-S2", 0x1000), (9, "ESP32-S3", 0x0), (5, "ESP32-C3", 0x0)],
)
def test_esp_image_names_its_chip_and_offset(
    tmp_path: Path, chip_id: int, chip: str, offset: int
) -> None:
    image = check_esp_image(esp_image(tmp_path / "fw.bin", chip_id))
    assert (image.chip, image.offset) == (chip, offset)


def test_files_that_are_not_esp_images_are_refused(tmp_path: Path) -> None:
    with pytest.raises(NodeCommandError, match="not an ESP32 firmware image"):
        check_esp_image(esp_image(tmp_path / "a.bin", 0, magic=0x7F))
    with pytest.raises(NodeCommandError, match="unknown chip"):
        check_esp_image(esp_image(tmp_path / "b.bin", 0x7777))
    with pytest.raises(NodeCommandError, match="cannot read"):
        check_esp_image(tmp_path / "missing.bin")


def test_uf2_for_rp2040_is_copied_to_the_boot_drive(tmp_path: Path) -> None:
    image = uf2(tmp_path / "rp2-pico.uf2")
    assert check_uf2(image) == 4
    drive = tmp_path / "RPI-RP2"
    drive.mkdir()
    (drive / "INFO_UF2.TXT").write_text("UF2 Bootloader v3.0\nModel: Raspberry Pi RP2\n"
                                        "Board-ID: RPI-RP2\n")  # fmt: skip
    result = edgeveil("node", "flash", "--firmware", str(image), "--mount", str(drive))
    assert result.returncode == 0, result.stderr
    assert (drive / "rp2-pico.uf2").read_bytes() == image.read_bytes()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"family": 0xE48BFF59}, "RP2350"),
        ({"family": 0xC47E5767}, "ESP32-S3"),
        ({"flags": 0}, "no family id"),
        ({"damage": 2}, "block 2 is not a UF2 block"),
    ],
)
def test_wrong_or_damaged_uf2_is_refused_before_copying(
    tmp_path: Path, kwargs: dict[str, int], message: str
) -> None:
    image = uf2(tmp_path / "x.uf2", **kwargs)
    drive = tmp_path / "drive"
    drive.mkdir()
    (drive / "INFO_UF2.TXT").write_text("Board-ID: RPI-RP2\n")
    with pytest.raises(NodeCommandError, match=message):
        flash_uf2(image, drive)
    assert sorted(p.name for p in drive.iterdir()) == ["INFO_UF2.TXT"]


def test_truncated_uf2_and_a_mount_that_is_no_boot_drive(tmp_path: Path) -> None:
    image = uf2(tmp_path / "x.uf2")
    short = tmp_path / "short.uf2"
    short.write_bytes(image.read_bytes()[:1000])
    with pytest.raises(NodeCommandError, match="not a multiple of 512"):
        check_uf2(short)
    complete = image.read_bytes()
    cut = tmp_path / "cut.uf2"
    cut.write_bytes(complete[:1024])  # 2 of the 4 blocks
    with pytest.raises(NodeCommandError, match="incomplete or damaged"):
        check_uf2(cut)
    result = edgeveil("node", "flash", "--firmware", str(image), "--mount", str(tmp_path))
    assert result.returncode == 2
    assert "is not an RP2040 boot drive" in result.stderr


def test_esptool_on_a_port_without_bootloader_is_one_line(tmp_path: Path) -> None:
    image = esp_image(tmp_path / "fw.bin", 0)
    master, slave = open_pty()  # a serial line with nothing behind it
    try:
        result = edgeveil("node", "flash", "--port", os.ttyname(slave), "--firmware", str(image))
    finally:
        os.close(master)
        os.close(slave)
    assert result.returncode == 2, result.stderr
    assert "no ESP32 bootloader answers" in result.stderr
    assert "hold BOOT" in result.stderr
    assert "Traceback" not in result.stderr
