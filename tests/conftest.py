from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from . import firmware_env  # noqa: F401 - puts the node firmware (edgeveil_node) on sys.path

ROOT = Path(__file__).resolve().parent.parent
VECTORS = json.loads((ROOT / "protocol" / "vectors" / "v1.json").read_text(encoding="utf-8"))

# Bounded in CI; `HYPOTHESIS_PROFILE=long` for a longer local fuzz run (see
# docs/development/fuzzing.md).
settings.register_profile("ci", max_examples=200, deadline=None)
settings.register_profile(
    "long", max_examples=50_000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def vectors() -> dict[str, Any]:
    return VECTORS
