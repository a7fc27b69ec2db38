"""Writing a page generated from the code, or checking that it is fresh (`--check`): the one
behaviour of scripts/cli_reference.py and scripts/config_reference.py, whose tests fail when
a page is stale."""

from __future__ import annotations

import sys
from pathlib import Path


def write_or_check(out: Path, text: str, script: str) -> int:
    """With --check on the command line: 1 (and why, on stderr) when `out` differs from
    `text`, else 0. Without: write it. `script` names the command that regenerates it."""
    if "--check" in sys.argv:
        if not out.is_file() or out.read_text(encoding="utf-8") != text:
            print(f"{out} is out of date: run {script}", file=sys.stderr)
            return 1
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}")
    return 0
