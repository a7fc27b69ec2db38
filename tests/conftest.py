from __future__ import annotations

import json
import os
import random
from collections.abc import Generator
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

# The random data of a test comes from its `rng`, seeded afresh for every run (never a fixed
# test key) and named in the report of a test that fails; EDGEVEIL_TEST_SEED=N runs with N.
SEED_ENV = "EDGEVEIL_TEST_SEED"
_SEED = pytest.StashKey[int]()


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    """A random.Random for the test's random data (keys, payloads, moments, orders)."""
    chosen = os.environ.get(SEED_ENV)
    seed = int(chosen) if chosen else int.from_bytes(os.urandom(8), "big")
    request.node.stash[_SEED] = seed
    request.node.user_properties.append(("random seed", seed))  # in --junitxml too
    return random.Random(seed)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    seed = item.stash.get(_SEED, None)
    if seed is not None and report.failed:
        report.sections.append(("random seed", f"{seed}: {SEED_ENV}={seed} repeats this run"))
    return report


@pytest.fixture(scope="session")
def vectors() -> dict[str, Any]:
    return VECTORS
