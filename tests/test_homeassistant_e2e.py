"""Home Assistant discovery end to end: the real gateway (in this process), a real Mosquitto and
emulated nodes (the real firmware, a reading a second) under the shipped default policy.

With `[homeassistant] discovery = true` the retained discovery messages appear for both zones,
both nodes and the gateway; the node status and the zone aggregates the gateway publishes give
values through the announced templates; a policy reload (a stream gone, another's window
changed, which releases its open windows at once) and a node's zone changed by remote
configuration announce again and remove what is gone; a later run with discovery off removes
every entity; a gateway with discovery off from the start publishes nothing under the prefix.
No discovery message holds a device address the nodes' scenario put in radio range.

Templates are evaluated as tests/test_homeassistant.py does (Jinja2 is not in this
environment): the exact template grammar, matched in full, and the JSON path it reads.
"""

from __future__ import annotations

import json
import re
import time
import tomllib
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from firmware.host.fleet import Fleet
from gateway import service
from gateway.config import GatewayConfig, HomeAssistantConfig, MqttConfig
from gateway.homeassistant import Announcer
from gateway.ingest import Ingest
from gateway.privacy import PrivacyStage
from gateway.privacy import policy as policy_mod
from gateway.records import Record
from gateway.registry import NodeRegistry
from gateway.service import with_ports
from protocol import Message, Readings

from .gateway_harness import PrivacySpy, deadline, running_gateway
from .mosquitto import TEST_MARKER, Mosquitto, Received, subscribed
from .test_gateway_e2e import no_leftovers  # noqa: F401 - an autouse fixture, here too
from .test_homeassistant import TEMPLATE, evaluate
from .test_privacy_leak import in_range_during, notations
from .waiting import until

pytestmark = pytest.mark.slow  # end to end: scripts/test -m "not slow" skips it

SITE = "ha-site"
GATEWAY_ID = "gw-ha"
BASE = f"edgeveil/{SITE}/{GATEWAY_ID}"
PREFIX = "homeassistant"
DEFAULT = (
    Path(policy_mod.__file__).resolve().parent.parent / "policies" / "default.toml"
).read_text(encoding="utf-8")
PER_ZONE = 8 * 3 + 3 + 1 + 1  # environment (8 quantities x 3), noise 3, occupancy, people
PER_NODE = 9  # node health fields


class Spy(PrivacySpy):
    """Between ingest and the privacy stage: counts each node's readings, changes nothing."""

    def __init__(self, inner: PrivacyStage) -> None:
        super().__init__(inner)
        self.readings: Counter[int] = Counter()

    def process(
        self, node_id: int, zone: str, counter: int, message: Message, arrival: float
    ) -> list[Record]:
        if isinstance(message, Readings):
            self.readings[node_id] += 1
        return super().process(node_id, zone, counter, message, arrival)


@pytest.fixture
def spies(monkeypatch: pytest.MonkeyPatch) -> list[Spy]:
    made: list[Spy] = []

    def ingest(registry: NodeRegistry, stage: PrivacyStage, *args: Any) -> Ingest:
        made.append(Spy(stage))
        return Ingest(registry, made[-1], *args)

    monkeypatch.setattr(service, "Ingest", ingest)
    return made


def gateway_config(
    tmp_path: Path, broker: Mosquitto, policy: Path, discovery: bool, ports: dict[str, str]
) -> GatewayConfig:
    config = GatewayConfig(
        site=SITE,
        gateway_id=GATEWAY_ID,
        state_dir=tmp_path / "state",
        mqtt=MqttConfig(host=broker.host, port=broker.port),
        metrics_listen=None,
        privacy_policy=policy,
        homeassistant=HomeAssistantConfig(discovery=discovery, prefix=PREFIX),
    )
    return with_ports(config, ports)


def is_config(topic: str) -> bool:
    return topic.startswith(f"{PREFIX}/") and topic.endswith("/config")


def configs(received: list[Received]) -> dict[str, bytes]:
    """The latest discovery message per config topic (b"": removed)."""
    return {r.topic: r.payload for r in received if is_config(r.topic)}


async def retained(broker: Mosquitto) -> dict[str, bytes]:
    """The discovery messages a new subscriber gets from the broker: Mosquitto sends the retained
    ones as it grants the subscription, before a marker published afterwards."""
    marker = f"{PREFIX}/{TEST_MARKER}/{uuid.uuid4().hex}"
    async with subscribed(broker, f"{PREFIX}/#") as sub:
        async with aiomqtt.Client(broker.host, broker.port) as client:
            await client.publish(marker, b"end", qos=1)
        got = await sub.wait_for(lambda got: any(r.topic == marker for r in got))
        before = got[: next(i for i, r in enumerate(got) if r.topic == marker)]
    assert all(r.retain for r in before)
    return {r.topic: r.payload for r in before}


def same(got: dict[str, bytes], expected: dict[str, dict[str, Any]]) -> None:
    assert set(got) == set(expected), set(got) ^ set(expected)
    for topic, config in expected.items():
        assert json.loads(got[topic]) == config, topic


def without_noise_and_with_a_new_environment_window(text: str) -> str:
    """The default policy without its noise stream, its environment window 2 minutes: a shape
    change, so the environment's open windows are released at the reload."""
    start, end = text.index("# Noise as levels only"), text.index("# PIR occupancy")
    changed = (text[:start] + text[end:]).replace("window_minutes = 15", "window_minutes = 2", 1)
    policy = policy_mod.parse(tomllib.loads(changed), "changed")
    assert [s.name for s in policy.streams][:2] == ["environment", "occupancy"]
    assert policy.streams[0].window_minutes == 2
    return changed


def values(config: dict[str, Any], payload: bytes) -> tuple[str, str]:
    """(the SenML name the template reads, what it renders for the payload)"""
    match = TEMPLATE.fullmatch(config["value_template"])
    assert match is not None, config["value_template"]
    return match["name"], evaluate(config["value_template"], payload)


def check_status(expected: dict[str, dict[str, Any]], topic: str, payload: bytes | None) -> None:
    """Each health template of the node renders the value of the status it reads."""
    assert payload is not None
    pack = {e["n"]: e for e in json.loads(payload)}
    sensors = [c for c in expected.values() if c["state_topic"] == topic]
    assert len(sensors) == PER_NODE
    for c in sensors:
        name, shown = values(c, payload)
        entry = pack[name]
        assert shown == str(entry.get("v", entry.get("vs"))), (name, shown, entry)
        if "state_class" in c:
            float(shown)  # a number Home Assistant takes


def check_environment(expected: dict[str, dict[str, Any]], topic: str, payload: bytes) -> None:
    """Each environment template of the zone renders its statistic in the entity's unit."""
    pack = {e["n"]: e for e in json.loads(payload)}
    shown = {}
    for c in expected.values():
        if c["state_topic"] == topic:
            name, shown[name] = values(c, payload)
    assert len(shown) == 8 * 3
    assert float(shown["temperature_mean"]) == pack["temperature_mean"]["v"]
    pm, hpa = pack["pm2_5_max"]["v"] * 1e9, pack["pressure_min"]["v"] / 100
    assert float(shown["pm2_5_max"]) == pytest.approx(pm, abs=1e-3)  # µg/m³
    assert float(shown["pressure_min"]) == pytest.approx(hpa, abs=1e-3)  # hPa
    # the emulated boards measure neither CO2 nor light: unknown
    assert shown["co2_mean"] == shown["illuminance_max"] == "None"
    assert all(float(v) >= 0 for k, v in shown.items() if not k.startswith(("co2", "illum")))


def check_nothing_per_device(announced: list[Received], in_range: set[bytes]) -> None:
    """No address the nodes' scenario put in radio range, in any notation the leak test knows,
    is in a discovery message, and entities read only zone aggregates, node status and
    availability."""
    assert in_range, "the scenario put no device in range: the check would be vacuous"
    reads = re.compile(rf"^{re.escape(BASE)}/(zone/[^/]+/[a-z_]+|node/\d+/status|availability)$")
    assert announced
    for r in announced:
        if not r.payload:
            continue
        text = r.payload.decode()
        assert "pseudonym" not in text and "observations" not in text, r.topic
        assert reads.match(json.loads(r.payload)["state_topic"]), r.topic
        lowered = r.payload.lower()
        for address in in_range:
            for notation, needle in notations(address).items():
                assert needle.lower() not in lowered, (r.topic, notation)


@pytest.mark.asyncio
@deadline(240)
async def test_home_assistant_discovery_follows_the_gateway(  # noqa: PLR0915 - one story
    tmp_path: Path, spies: list[Spy]
) -> None:
    policy_path = tmp_path / "policy.toml"
    policy_path.write_text(DEFAULT, encoding="utf-8")
    broker = Mosquitto(tmp_path / "mosquitto")
    fleet = Fleet(n=2, seed=11, directory=tmp_path / "nodes", reading_interval=1)
    with broker, fleet:
        state = tmp_path / "state"
        state.mkdir(mode=0o700)
        with NodeRegistry.open(state / "registry.db") as registry:
            registry.import_file(fleet.registry_path)
        nodes = {n.node_id: n.zone for n in fleet.nodes}
        assert len(set(nodes.values())) == 2
        ports = {f"node{i + 1}": n.device for i, n in enumerate(fleet.nodes)}
        config = gateway_config(tmp_path, broker, policy_path, True, ports)

        async with subscribed(broker, "#") as sub, running_gateway(config) as gateway:
            announcer = Announcer(gateway.topics, PREFIX)

            # 1. every entity of the policy, for both zones and both nodes, retained
            expected = announcer.configs(gateway.policy, nodes)
            assert len(expected) == 1 + 2 * PER_ZONE + 2 * PER_NODE
            await sub.wait_for(lambda got: set(expected) <= set(configs(got)), timeout=30)
            same(configs(sub.received), expected)
            same(await retained(broker), expected)  # what Home Assistant gets when it subscribes
            availability = {a["topic"] for c in expected.values() for a in c["availability"]}
            assert availability == {f"{BASE}/availability"}
            assert sub.payloads(f"{BASE}/availability")[-1] == b"online"

            # 2. each node's status renders through its health templates
            def status_of(node_id: int) -> bytes | None:
                got = sub.payloads(f"{BASE}/node/{node_id}/status")
                return got[-1] if got else None

            await until(
                lambda: all(status_of(n) for n in nodes), "a status from each node", timeout=60
            )
            for node_id in nodes:
                check_status(expected, f"{BASE}/node/{node_id}/status", status_of(node_id))

            # 3. a policy reload: the noise stream gone, the environment released at once
            # (with what its window holds: readings of both nodes)
            await until(
                lambda: all(spies[0].readings[n] >= 3 for n in nodes),
                "readings from each node in the privacy stage",
                timeout=60,
            )
            policy_path.write_text(
                without_noise_and_with_a_new_environment_window(DEFAULT), encoding="utf-8"
            )
            gateway.reload_policy()
            noise = {t for t, c in expected.items() if c["state_topic"].endswith("/noise")}
            assert len(noise) == 2 * 3
            env_topics = {gateway.topics.zone(zone, "environment") for zone in nodes.values()}

            def reloaded(got: list[Received]) -> bool:
                published = {r.topic for r in got if r.payload.find(b":reload") > 0}
                return env_topics <= published and all(configs(got)[t] == b"" for t in noise)

            await sub.wait_for(reloaded, timeout=30)
            reloaded_expected = announcer.configs(gateway.policy, nodes)
            assert set(expected) - set(reloaded_expected) == noise
            for env_topic in env_topics:
                check_environment(reloaded_expected, env_topic, sub.payloads(env_topic)[-1])

            # 4. a node moves to another zone (remote configuration): announced again, and
            # the zone it left, with no node now, removed
            moved = fleet.nodes[0]
            command = {"id": "ha-zone", "settings": {"zone": "Plein Noord"}, "by": "test"}
            async with aiomqtt.Client(broker.host, broker.port) as client:
                topic = f"{BASE}/command/node/{moved.node_id}/configure"
                await client.publish(topic, json.dumps(command).encode(), qos=1)
            now = {**nodes, moved.node_id: "Plein Noord"}
            final = announcer.configs(gateway.policy, now)
            left = {t for t in reloaded_expected if f"/zone_{moved.zone}_" in t}
            assert len(left) == PER_ZONE - 3

            def moved_over(got: list[Received]) -> bool:
                seen = configs(got)
                return all(seen.get(t) == b"" for t in left) and set(final) <= set(seen)

            await sub.wait_for(moved_over, timeout=30)
            moved_topic = next(c["state_topic"] for c in final.values() if "Plein" in str(c))
            assert moved_topic.startswith(f"{BASE}/zone/Plein%20Noord/")
            same(await retained(broker), final)
            world_end = time.time() - fleet.world_start + 1.0
            announced = [r for r in sub.received if is_config(r.topic)]

        # 5. the next run has discovery off: every entity is removed
        off = gateway_config(tmp_path, broker, policy_path, False, ports)
        async with subscribed(broker, f"{PREFIX}/#") as sub, running_gateway(off):
            await sub.wait_for(
                lambda got: all(configs(got).get(t) == b"" for t in final), timeout=20
            )
        assert await retained(broker) == {}
        assert not (state / "homeassistant.json").exists()

    in_range: set[bytes] = set()
    for scenario in fleet.scenarios:
        in_range |= in_range_during(scenario, world_end)
    check_nothing_per_device(announced, in_range)


@pytest.mark.asyncio
@deadline(60)
async def test_discovery_off_publishes_nothing_under_the_prefix(tmp_path: Path) -> None:
    policy_path = tmp_path / "policy.toml"
    policy_path.write_text(DEFAULT, encoding="utf-8")
    with Mosquitto(tmp_path / "mosquitto") as broker:
        config = gateway_config(tmp_path, broker, policy_path, False, {})
        async with subscribed(broker, "#") as sub, running_gateway(config) as gateway:
            wanted = {f"{BASE}/availability", f"{BASE}/metadata", f"{BASE}/transparency"}
            await sub.wait_for(lambda got: wanted <= {r.topic for r in got}, timeout=15)
            await until(lambda: gateway.spool.depth == 0, "everything published", 10)
            assert not [r.topic for r in sub.received if r.topic.startswith(f"{PREFIX}/")]
        assert await retained(broker) == {}
        assert not (tmp_path / "state" / "homeassistant.json").exists()
