"""What `edgeveil gateway run` loads before it serves: what a serial gateway uses, and not
more (resident memory on the Raspberry Pi; benchmarks/bench_gateway.py's RSS target). Asked of
a fresh interpreter, as this one has imported everything by now."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def loaded_by(*modules: str) -> set[str]:
    code = f"import sys, {', '.join(modules)}; print(*sorted(sys.modules), sep=chr(10))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return set(out.stdout.split())


def test_the_service_loads_opendp_but_not_its_prelude_nor_the_lora_links() -> None:
    loaded = loaded_by("gateway.cli", "gateway.commands")  # `gateway run`'s imports
    assert "opendp.measurements" in loaded  # the default policy's noise, used all day
    unused = ("opendp.prelude", "opendp.extras", "opendp.transformations", "opendp.combinators")
    assert sorted(m for m in loaded if m.startswith(unused)) == []
    assert "gateway.lora.forwarder" not in loaded  # imported when a LoRa link is configured
    assert "gateway.lora.spi" not in loaded


def test_other_commands_than_emulate_leave_the_emulator_unloaded() -> None:
    # `gateway check-config` stands for `gateway run`, which would serve until stopped
    code = (
        "import sys, contextlib, io, gateway.cli as cli\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert cli.main(['gateway', 'check-config']) == 0\n"
        "print(*sorted(sys.modules), sep=chr(10))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    loaded = set(out.stdout.split())
    assert "gateway.service" in loaded
    assert "gateway.emulate" not in loaded
    assert "firmware.host.scenario" not in loaded
    # its help is built when it is the command, and for the whole reference
    help_text = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "emulate", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--faults LIST" in help_text
    assert "--scenario NAME" in help_text
