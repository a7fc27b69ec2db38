"""Policy files: validation errors name the key; the default policy's choices."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import ConfigError
from gateway.privacy import PolicyEngine, PrivacyLedger
from gateway.privacy import policy as policy_mod
from protocol import Event

DEFAULT = tomllib.loads(
    resources.files("gateway.policies").joinpath("default.toml").read_text("utf-8")
)


def with_stream_change(name: str, **change: Any) -> dict[str, Any]:
    data: dict[str, Any] = {**DEFAULT, "streams": [dict(s) for s in DEFAULT["streams"]]}
    for stream in data["streams"]:
        if stream["name"] == name:
            stream.update(change)
    return data


@pytest.mark.parametrize(
    ("stream", "change", "key"),
    [
        ("environment", {"quantities": 5}, "quantities"),
        ("environment", {"statistics": "mean"}, "statistics"),
        ("people", {"noise": {"epsilon": "high"}}, "noise.epsilon"),
        ("people", {"noise": {"epsilon": True}}, "noise.epsilon"),
        ("people", {"noise": {"max_contribution": 1.5}}, "noise.max_contribution"),
        ("events", {"events": ["fireworks"]}, "events"),
        ("environment", {"events": ["boot"]}, "events"),
    ],
)
def test_wrong_types_name_the_key(stream: str, change: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        policy_mod.parse(with_stream_change(stream, **change), "p.toml")
    assert f"({stream}).{key}" in str(info.value)


def test_a_policy_that_is_not_utf8_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_bytes(b'name = "\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        policy_mod.load(path)


def test_default_policy_passes_node_events_but_not_motion(tmp_path: Path) -> None:
    """A PIR event is per node and to the second: finer than the occupancy stream allows."""
    with PrivacyLedger.open(tmp_path / "privacy.db") as ledger:
        engine = PolicyEngine(policy_mod.default(), "gw", ledger)
        assert engine.process(7, "square", 1, Event(0, 1), 1_790_000_000.0)  # boot
        assert engine.process(7, "square", 2, Event(2, 0), 1_790_000_000.0)  # sensor fault
        assert engine.process(7, "square", 3, Event(1, 2), 1_790_000_000.0) == []  # motion
        engine.close()
