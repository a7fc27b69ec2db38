"""One zone, one gateway (gateway/zones.py): gateways of one site announce the
zones they serve in their retained metadata, and each warns of a zone another one serves too,
when its policy counts devices per zone (a device seen by both would be counted twice)."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest

from gateway.records import Topics
from gateway.registry import NodeRegistry
from gateway.zones import SharedZones, load_shared

from .command import edgeveil
from .gateway_harness import deadline, delivery_config, running_gateway
from .mosquitto import Mosquitto
from .waiting import until

SECRET = bytes(range(16))  # TEST ONLY
TOPICS = Topics("edgeveil", "site", "gw-a")


def metadata(zones: list[str]) -> bytes:
    return json.dumps({"gateway": "gw-b", "zones": zones}).encode()


def test_a_zone_another_gateway_serves_is_warned_of_once_and_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    shared = SharedZones(TOPICS, tmp_path)
    assert shared.subscription == "edgeveil/site/+/metadata"
    ours = ["markt", "plein"]
    shared.heard("edgeveil/site/gw-a/metadata", metadata(ours), ours, True)  # our own: no
    shared.heard("edgeveil/site/gw-b/metadata", metadata(["plein", "haven"]), ours, True)
    shared.heard("edgeveil/site/gw-b/metadata", metadata(["plein", "haven"]), ours, True)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "zone 'plein' is also served by gateway gw-b" in warnings[0]
    assert load_shared(tmp_path) == {"plein": ["gw-b"]}
    # without a count of devices per zone, a shared zone is harmless
    calm = SharedZones(TOPICS, tmp_path / "calm")
    (tmp_path / "calm").mkdir()
    calm.heard("edgeveil/site/gw-b/metadata", metadata(["plein"]), ours, False)
    assert calm.shared == {}
    # gw-b gone (its retained metadata cleared) or moved on: nothing shared any more
    shared.heard("edgeveil/site/gw-b/metadata", b"", ours, True)
    assert load_shared(tmp_path) == {} and shared.shared == {}


@pytest.mark.asyncio
@deadline(60)
async def test_two_gateways_of_a_site_find_the_zone_they_share(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="edgeveil.zones")
    with Mosquitto(tmp_path / "mosquitto") as broker:
        configs = []
        for gateway, node, zone in (("gw-a", 1, "plein"), ("gw-b", 2, "plein")):
            state = tmp_path / gateway
            state.mkdir(mode=0o700)
            with NodeRegistry.open(state / "registry.db") as registry:
                registry.add(node, SECRET, zone)
            configs.append(delivery_config(tmp_path, state, broker, "site", gateway))
        # the shipped default policy counts people per zone
        configs = [dataclasses.replace(c, privacy_policy=None) for c in configs]
        async with running_gateway(configs[0]) as first, running_gateway(configs[1]) as second:
            await until(
                lambda: (
                    first.shared_zones.shared == {"plein": ["gw-b"]}
                    and second.shared_zones.shared == {"plein": ["gw-a"]}
                ),
                "each gateway finds the other serving zone plein",
                20,
            )
        said = [r.getMessage() for r in caplog.records if "also served" in r.getMessage()]
        assert sorted(said) == [
            "zone 'plein' is also served by gateway gw-a of site site: each gateway counts the "
            "devices of its own nodes, so a device seen by both is counted twice; serve a zone "
            "from one gateway (docs/operators/zones.md)",
            "zone 'plein' is also served by gateway gw-b of site site: each gateway counts the "
            "devices of its own nodes, so a device seen by both is counted twice; serve a zone "
            "from one gateway (docs/operators/zones.md)",
        ]
    config_file = tmp_path / "gw-a.toml"
    config_file.write_text(
        f'[gateway]\nsite = "site"\nid = "gw-a"\nstate_dir = "{tmp_path / "gw-a"}"\n'
    )
    checked = edgeveil("policy", "check", "--config", str(config_file))
    assert checked.returncode == 0, checked.stderr
    assert "warning: zone 'plein' is also served by gateway gw-b" in checked.stdout
