"""The node firmware's configuration module (firmware/edgeveil_node/config.py), loaded on
CPython, so that provision, deploy and doctor judge a node's edgeveil.json with exactly the
code the node runs.

The firmware imports `micropython` (for const()); CPython has no such module, so the host
shim of it (firmware/host/shims/micropython.py, const() is the identity) is registered under
that name first. Only that one module: the other shims (machine, bluetooth) stay out of the
gateway's process.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import firmware

__all__ = ["load"]


def load() -> ModuleType:
    """firmware.edgeveil_node.config, importable on CPython."""
    if "micropython" not in sys.modules:
        try:
            import micropython  # type: ignore[import-not-found]  # noqa: F401, PLC0415
        except ImportError:
            shim = Path(firmware.__file__).parent / "host" / "shims" / "micropython.py"
            spec = importlib.util.spec_from_file_location("micropython", shim)
            assert spec is not None and spec.loader is not None  # noqa: S101 - a file we ship
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            sys.modules["micropython"] = module
    from firmware.edgeveil_node import config  # noqa: PLC0415

    loaded: ModuleType = config
    return loaded
