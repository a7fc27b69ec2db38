"""The gateway's systemd unit is hardened (security review): scored by
systemd-analyze itself, with and without the drop-in for a LoRa HAT on SPI."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import ROOT

UNIT = ROOT / "deploy" / "edgeveil-gateway.service"
SPI_DROP_IN = ROOT / "deploy" / "lora-spi-hat.conf"
MOST_EXPOSED = 3.0

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (Debian package systemd)",
)


def _exposure(unit: Path) -> float:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],  # noqa: S607
        capture_output=True,
        text=True,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert found, result.stdout + result.stderr
    return float(found.group(1))


def test_the_unit_is_scored_3_or_lower(tmp_path: Path) -> None:
    unit = tmp_path / UNIT.name
    shutil.copy(UNIT, unit)
    score = _exposure(unit)
    print(f"\nsystemd-analyze security: {score}")
    assert score <= MOST_EXPOSED
    text = UNIT.read_text(encoding="utf-8")
    assert "After=network-online.target time-sync.target" in text  # a Pi has no clock


def test_the_spi_drop_in_keeps_it_hardened(tmp_path: Path) -> None:
    unit = tmp_path / UNIT.name
    drop_in = SPI_DROP_IN.read_text(encoding="utf-8").split("[Service]", 1)[1]
    unit.write_text(UNIT.read_text(encoding="utf-8").replace("[Install]", drop_in + "\n[Install]"))
    assert _exposure(unit) <= MOST_EXPOSED
    assert "DeviceAllow=/dev/spidev0.0 rw" in unit.read_text(encoding="utf-8")
