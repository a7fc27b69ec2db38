"""The edgeveil command as a user runs it: a real process, its output and exit status."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.live import describe

from .command import edgeveil


def test_live_demo_shows_what_leaves_the_gateway() -> None:
    """The README's first command: emulated nodes, the gateway and a broker, printed live."""
    result = edgeveil("demo", "--nodes", "2", "--duration", "8", timeout=90)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.endswith("availability                 online") for line in lines)
    assert sum("/readings" in line or "/environment" in line for line in lines) >= 2
    published = [line for line in lines if line[:2].isdigit()]  # "HH:MM:SS  topic  content"
    assert not any("observations" in line for line in published)  # personal data never leaves
    assert "Traceback" not in result.stderr


def test_the_live_view_names_an_event_without_a_value_and_shows_a_value() -> None:
    """An event without a value ("vb": true) is shown by its name, never as a number."""
    topic = "edgeveil/demo-site/gateway-1/node/7/event"
    head = {"bn": "urn:dev:edgeveil:demo-site:7:", "bt": 1.5, "mid": "gateway-1:7:1:0"}

    def shown(record: dict[str, Any]) -> str:
        return describe(topic, json.dumps([head | record]).encode())

    assert shown({"n": "time_request", "vb": True}) == f"{'node/7/event':<28} time_request"
    assert shown({"n": "boot", "v": 1}) == f"{'node/7/event':<28} boot 1"


def test_demo_shows_every_message_and_the_rejections() -> None:
    result = edgeveil("demo", "--protocol")
    assert result.returncode == 0, result.stderr
    for name in (
        "readings",
        "observations",
        "status",
        "event",
        "ack",
        "time_sync",
        "config_update",
    ):
        assert name in result.stdout
    assert "TOO BIG" not in result.stdout
    assert "one bit flipped             -> rejected: auth_failed" in result.stdout
    assert "duplicate" in result.stdout
    assert "frame of 26 bytes" in result.stdout


def test_decode_header_only_and_verified(vectors: dict[str, Any], tmp_path: Path) -> None:
    v = vectors["valid"][0]
    result = edgeveil("decode", v["frame"])
    assert result.returncode == 0
    assert "readings  node 4660  counter 300" in result.stdout
    secret = tmp_path / "node.secret"
    secret.write_text(v["secret"] + "\n")
    result = edgeveil("decode", v["frame"], "--secret-file", str(secret))
    assert result.returncode == 0, result.stderr
    assert "'temperature': 215" in result.stdout


def test_decode_reports_a_rejection(vectors: dict[str, Any], tmp_path: Path) -> None:
    secret = tmp_path / "node.secret"
    secret.write_text(vectors["valid"][0]["secret"])
    forged = next(v for v in vectors["invalid"] if v["name"] == "forged")
    result = edgeveil("decode", forged["frame"], "--secret-file", str(secret))
    assert result.returncode == 1
    assert "\nrejected: auth_failed" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("decode", "not-hex"), "FRAME must be hex digits"),
        (
            ("decode", "051234", "--secret-file", "/nonexistent/secret"),
            "cannot read the secret file",
        ),
        (("frobnicate",), "invalid choice"),
        ((), "required"),
    ],
)
def test_bad_arguments_give_one_clear_line_and_status_2(
    args: tuple[str, ...], message: str
) -> None:
    result = edgeveil(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
