"""`edgeveil node flash`: write a MicroPython firmware image to a board.

Two routes, chosen by the image:

- ESP32 family (.bin): through esptool (its Python API). The image's header says which chip
  it was built for (ESP-IDF app image format: byte 0 magic 0xE9, bytes 12-13 chip id); that
  is checked against the chip that answers before anything is erased. The whole flash is
  erased, then the image written at the chip's bootloader offset (ESP32 and S2 0x1000,
  S3/C3/C6 0x0: esptool's own chip definitions say which).
- RP2040 (.uf2): the UF2 bootloader in the chip's ROM. Hold BOOTSEL while plugging the board
  in; it appears as a USB drive labelled RPI-RP2; copying a .uf2 file onto it flashes it and
  the board restarts. The file is checked first: every 512-byte block must carry the UF2
  magic numbers and the RP2040 family id 0xe48bff56 (a Pico 2 / RP2350 file would not boot).

The image is a file the technician supplies (downloaded from micropython.org/download once,
then kept); nothing is downloaded here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import NodeCommandError

__all__ = [
    "RP2040_FAMILY",
    "EspImage",
    "check_esp_image",
    "check_uf2",
    "find_uf2_mount",
    "flash_esp",
    "flash_uf2",
]

ESP_IMAGE_MAGIC = 0xE9
UF2_MAGIC_START0 = 0x0A324655  # "UF2\n"
UF2_MAGIC_START1 = 0x9E5D5157
UF2_MAGIC_END = 0x0AB16F30
UF2_FLAG_FAMILY_ID = 0x00002000
UF2_BLOCK = 512
RP2040_FAMILY = 0xE48BFF56
# Other families a technician may be holding by mistake (from the UF2 family list)
_OTHER_FAMILIES = {
    0xE48BFF57: "RP2350 absolute (Pico 2)",
    0xE48BFF59: "RP2350 ARM secure (Pico 2)",
    0xE48BFF5A: "RP2350 RISC-V (Pico 2)",
    0xE48BFF5B: "RP2350 ARM non-secure (Pico 2)",
    0x1C5F21B0: "ESP32",
    0xBFDD4EEE: "ESP32-S2",
    0xC47E5767: "ESP32-S3",
    0xD42BA06C: "ESP32-C3",
    0x68ED2B88: "SAMD21",
    0x55114460: "SAMD51",
    0xADA52840: "nRF52840",
}
RP2_LABEL = "RPI-RP2"
ESP_CONNECT_ATTEMPTS = 3


@dataclass(frozen=True)
class EspImage:
    chip: str  # esptool's chip name, e.g. "ESP32-S3"
    offset: int  # where the image goes in flash
    data: bytes


def _esp_chips() -> dict[int, Any]:
    from esptool.targets import CHIP_DEFS  # noqa: PLC0415 - esptool only for this command

    return {
        cls.IMAGE_CHIP_ID: cls
        for cls in CHIP_DEFS.values()
        if getattr(cls, "IMAGE_CHIP_ID", None) is not None
    }


def check_esp_image(path: Path) -> EspImage:
    """Read a MicroPython .bin for the ESP32 family and say which chip it is for.
    NodeCommandError when it is not such an image."""
    data = _read(path)
    if len(data) < 24 or data[0] != ESP_IMAGE_MAGIC:
        raise NodeCommandError(
            f"{path} is not an ESP32 firmware image (no 0xE9 header): use the .bin from "
            "micropython.org/download for your board (or a .uf2 for an RP2040 board)"
        )
    chip_id = struct.unpack_from("<H", data, 12)[0]
    chip = _esp_chips().get(chip_id)
    if chip is None:
        raise NodeCommandError(
            f"{path}: an ESP image for an unknown chip (id {chip_id}); ESP8266 images "
            "and damaged files look like this: use the ESP32 .bin for your board"
        )
    return EspImage(chip.CHIP_NAME, int(chip.BOOTLOADER_FLASH_OFFSET), data)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise NodeCommandError(f"cannot read the firmware image {path}: {exc.strerror}") from None


def flash_esp(port: str, image: EspImage, baud: int = 460800, erase: bool = True) -> str:
    """Check the chip on `port` against the image, erase, write, reset. Returns the chip."""
    from esptool.cmds import (  # noqa: PLC0415
        attach_flash,
        detect_chip,
        erase_flash,
        reset_chip,
        run_stub,
        write_flash,
    )
    from esptool.util import FatalError  # noqa: PLC0415

    from .board import port_error  # noqa: PLC0415

    esp = None
    try:
        try:
            esp = detect_chip(port, 115200, connect_attempts=ESP_CONNECT_ATTEMPTS)
        except OSError as exc:  # serial.SerialException is an OSError
            if exc.errno is not None:
                raise port_error(port, exc) from None
            raise _no_bootloader(port) from None
        except FatalError:
            raise _no_bootloader(port) from None
        if image.chip != esp.CHIP_NAME:
            raise NodeCommandError(
                f"wrong firmware for the chip: the image is for {image.chip}, the board is "
                f"{esp.CHIP_NAME}: use the {esp.CHIP_NAME} build from micropython.org/download"
            )
        esp = run_stub(esp)
        if baud != 115200:
            esp.change_baud(baud)
        attach_flash(esp)
        if erase:
            erase_flash(esp)
        write_flash(esp, [(image.offset, image.data)])
        reset_chip(esp, "hard-reset")
        return str(esp.CHIP_NAME)
    except FatalError as exc:
        raise NodeCommandError(
            f"flashing stopped: {exc}; the board stays in its bootloader: run flash again"
        ) from None
    finally:
        if esp is not None:
            with contextlib.suppress(Exception):
                esp._port.close()


def _no_bootloader(port: str) -> NodeCommandError:
    return NodeCommandError(
        f"no ESP32 bootloader answers on {port}: hold BOOT, press and release RESET (EN), "
        "release BOOT, then run flash again (an RP2040 board needs a .uf2 image instead)"
    )


# -- RP2040: UF2 ---------------------------------------------------------------------------


def check_uf2(path: Path) -> int:
    """Check that `path` is a complete UF2 file for the RP2040; returns its block count."""
    data = _read(path)
    if not data or len(data) % UF2_BLOCK:
        raise NodeCommandError(
            f"{path} is not a UF2 file (size {len(data)} is not a multiple of 512 bytes): "
            "download the RP2040 .uf2 from micropython.org/download again"
        )
    total = len(data) // UF2_BLOCK
    for index in range(total):
        block = data[index * UF2_BLOCK : (index + 1) * UF2_BLOCK]
        start0, start1, flags, _addr, _size, number, count, family = struct.unpack_from(
            "<8I", block
        )
        (end,) = struct.unpack_from("<I", block, UF2_BLOCK - 4)
        if (start0, start1, end) != (UF2_MAGIC_START0, UF2_MAGIC_START1, UF2_MAGIC_END):
            raise NodeCommandError(
                f"{path}: block {index} is not a UF2 block (damaged or not a .uf2 file): "
                "download it again"
            )
        if not flags & UF2_FLAG_FAMILY_ID or family != RP2040_FAMILY:
            what = _OTHER_FAMILIES.get(family, f"family 0x{family:08x}")
            if not flags & UF2_FLAG_FAMILY_ID:
                what = "no family id"
            raise NodeCommandError(
                f"wrong firmware for the chip: {path} is for {what}, not the RP2040: use "
                "the RP2040 (Raspberry Pi Pico) build from micropython.org/download"
            )
        if number != index or count != total:
            raise NodeCommandError(
                f"{path}: block {index} says it is {number} of {count}: the file is "
                "incomplete or damaged, download it again"
            )
    return total


def find_uf2_mount() -> Path | None:
    """Where an RP2040 in BOOTSEL mode is mounted (a drive labelled RPI-RP2), if anywhere."""
    user = os.environ.get("USER", "")
    candidates = [
        Path("/media") / user / RP2_LABEL,
        Path("/run/media") / user / RP2_LABEL,
        Path("/media") / RP2_LABEL,
        Path("/Volumes") / RP2_LABEL,
    ]
    for path in candidates:
        if _is_rp2_drive(path):
            return path
    return None


def _is_rp2_drive(path: Path) -> bool:
    try:
        return "RPI-RP2" in (path / "INFO_UF2.TXT").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False


def flash_uf2(image: Path, mount: Path | None) -> Path:
    """Copy a checked .uf2 onto the RP2040's boot drive; returns where it was copied."""
    check_uf2(image)
    if mount is None:
        mount = find_uf2_mount()
        if mount is None:
            raise NodeCommandError(
                "no RPI-RP2 drive found: unplug the board, hold BOOTSEL, plug it in, release "
                "BOOTSEL; it mounts as RPI-RP2 (or give --mount DIR)"
            )
    elif not _is_rp2_drive(mount):
        raise NodeCommandError(
            f"{mount} is not an RP2040 boot drive (no INFO_UF2.TXT naming RPI-RP2): hold "
            "BOOTSEL while plugging the board in, then give the drive's mount point"
        )
    target = mount / image.name
    try:
        with image.open("rb") as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst)
            dst.flush()
            os.fsync(dst.fileno())
    except OSError as exc:
        raise NodeCommandError(
            f"copying to {mount} failed ({exc.strerror}): the board keeps its bootloader; "
            "put it in BOOTSEL mode again and rerun flash"
        ) from None
    return target
