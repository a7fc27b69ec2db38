"""The edgeveil command as a user runs it: a real process, its output and exit status."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from firmware.host.scenario import Scenario
from gateway.live import DEMO_POLICY, demo_scenarios, describe, describe_records
from gateway.privacy import dp, policy

from .command import ROOT, edgeveil


@pytest.mark.slow  # end to end: nodes, gateway and broker for 8 s
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


def test_the_demo_places_count_people_above_k_and_below_it() -> None:
    """The demo's busy street sees enough distinct devices in a minute for
    the demo policy's k and noise, so its counts are released; its closed building at night
    sees fewer than k, so its counts stay suppressed. Counted as the nodes scan (2 s every 6 s,
    the demo's 3-second reading interval), in every whole minute of the first four, for
    the demo's seed and two others."""
    people = policy.load(DEMO_POLICY).stream_for("observations")
    assert people is not None and people.k is not None and people.noise is not None
    margin = round(dp.accuracy(people.noise, 0.05))  # +/- this at 95 %
    assert demo_scenarios(3) == ["street", "office", "night"]
    for seed in range(3):
        street = _distinct_per_minute(Scenario("street", seed, 0))
        night = _distinct_per_minute(Scenario("night", seed, 2))
        assert min(street[1:]) >= people.k + margin, street
        assert max(night) < people.k, night


def _distinct_per_minute(scenario: Scenario, minutes: int = 4) -> list[int]:
    counts = []
    for minute in range(minutes):
        seen = set()
        for scan in range(minute * 60, (minute + 1) * 60, 6):
            for step in range(20):  # a 2-second scan window
                seen.update(d.address for d in scenario.devices(scan + step / 10))
        counts.append(len(seen))
    return counts


def test_the_readme_shows_what_the_demo_prints() -> None:
    """The README's sample of the demo: lines in the live view's format, on the demo's zones,
    with a released people count in the street's zone and a suppressed one at night."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("What the demo shows", 1)[1].split("```", 2)[1]
    lines = [line for line in block.splitlines() if line.strip()]
    zones = {f"{name}-{i + 1}" for i, name in enumerate(demo_scenarios(3))}
    shown = re.compile(r"^\d\d:\d\d:\d\d  (\S+) +(\S.*)$")
    for line in lines:
        match = shown.match(line)
        assert match, line
        topic = match[1]
        if topic.startswith("zone/"):
            assert topic.split("/")[1] in zones, line
    assert any(re.search(r"zone/street-1/people +devices \d+ count", line) for line in lines)
    assert any(re.search(r"zone/night-3/people +devices suppressed count", line) for line in lines)


def test_the_live_view_names_an_event_without_a_value_and_shows_a_value() -> None:
    """An event without a value ("vb": true) is shown by its name, never as a number."""
    topic = "edgeveil/demo-site/gateway-1/node/7/event"
    head = {"bn": "urn:dev:edgeveil:demo-site:7:", "bt": 1.5, "mid": "gateway-1:7:1:0"}

    def shown(record: dict[str, Any]) -> str:
        return describe(topic, json.dumps([head | record]).encode())

    assert shown({"n": "time_request", "vb": True}) == f"{'node/7/event':<28} time_request"
    assert shown({"n": "boot", "v": 1}) == f"{'node/7/event':<28} boot 1"


def test_the_live_view_shows_each_record_of_a_joined_pack_on_its_own_line() -> None:
    """A busy gateway joins a topic's records into one message (senml.join): one line each."""
    topic = "edgeveil/demo-site/gateway-1/node/7/readings"
    records = [
        [{"bn": "urn:dev:edgeveil:demo-site:7:", "bt": t, "mid": f"gateway-1:7:{t}:0"}]
        for t in (1, 2)
    ]
    records[0][0] |= {"n": "temperature", "u": "Cel", "v": 21.5}
    records[0].append({"n": "humidity", "u": "%RH", "v": 40})
    records[1][0] |= {"n": "temperature", "u": "Cel", "v": 21.75}
    joined = json.dumps(records[0] + records[1]).encode()
    tail = f"{'node/7/readings':<28}"
    assert describe_records(topic, joined) == [
        f"{tail} temperature 21.5 Cel, humidity 40 %RH",
        f"{tail} temperature 21.75 Cel",
    ]
    assert describe_records(topic, json.dumps(records[1]).encode()) == [
        describe(topic, json.dumps(records[1]).encode())
    ]


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


def test_the_command_line_reference_is_current() -> None:
    """docs/reference/cli.md is generated from the argument parsers: a changed --help without
    the regenerated page fails here (run scripts/cli_reference.py)."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "cli_reference.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
