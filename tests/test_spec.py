"""protocol/SPEC.md: its generated tables match protocol/quantities.py and the golden vectors."""

from __future__ import annotations

import subprocess
import sys

from .conftest import ROOT


def test_spec_tables_are_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "spec_tables.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
