"""Home Assistant MQTT discovery at unit level (gateway/homeassistant.py): the discovery
messages against the schema Home Assistant documents, their value templates against the SenML
the gateway publishes, what changes when the policy or the zones change, and the
`[homeassistant]` configuration table.

Templates: Jinja2 is not in this environment, so the tests do not render them. Instead every
template must match, in full, the one grammar the module writes (TEMPLATE below), and
`evaluate` does what that grammar says (pick the SenML record whose "n" is the name; its "v"
times the factor, rounded to 3 places; "None" when the record is absent or holds no number;
"vs" for a text sensor). So a test proves which JSON path a template reads and what it yields,
not that Home Assistant's Jinja renders it.
"""

from __future__ import annotations

import asyncio
import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jinja2
import pytest

from gateway import config as config_mod
from gateway import homeassistant as ha
from gateway import senml
from gateway.errors import ConfigError
from gateway.privacy import PolicyEngine, PrivacyLedger
from gateway.privacy import policy as policy_mod
from gateway.privacy.engine import SUPPRESSED, WITHHELD
from gateway.privacy.ledger import utc_day
from gateway.privacy.passthrough import status_record
from gateway.privacy.policy import STATISTICS, Noise, Policy
from gateway.records import OutMessage, Topics
from gateway.registry import NodeRegistry
from protocol import Observations, Readings, Status
from protocol.messages import STATUS_FIELDS
from protocol.quantities import QUANTITIES

from .command import edgeveil
from .test_gateway_cli import assert_one_line_usage_error
from .waiting import until

SITE, GW = "site-1", "gw-1"
TOPICS = Topics("edgeveil", SITE, GW)
T0 = 1_800_000_000  # a whole hour, UTC
SECRET = bytes(range(16))

# -- what Home Assistant documents ---------------------------------------------------------------
# From https://www.home-assistant.io/integrations/sensor.mqtt/ ("Configuration variables"),
# https://www.home-assistant.io/integrations/binary_sensor.mqtt/ and
# https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery (discovery topic, "origin",
# "device"), written down from those pages as they stand (no network here).

AVAILABILITY_KEYS = {"topic", "payload_available", "payload_not_available", "value_template"}
DEVICE_KEYS = {
    "configuration_url",
    "connections",
    "hw_version",
    "identifiers",
    "manufacturer",
    "model",
    "model_id",
    "name",
    "serial_number",
    "suggested_area",
    "sw_version",
    "via_device",
}
ORIGIN_KEYS = {"name", "sw_version", "support_url"}
COMMON_KEYS = {
    "availability",
    "availability_mode",
    "availability_template",
    "availability_topic",
    "default_entity_id",
    "device",
    "device_class",
    "enabled_by_default",
    "encoding",
    "entity_category",
    "entity_picture",
    "expire_after",
    "force_update",
    "icon",
    "json_attributes_template",
    "json_attributes_topic",
    "name",
    "object_id",
    "origin",
    "payload_available",
    "payload_not_available",
    "platform",
    "qos",
    "state_topic",
    "unique_id",
    "value_template",
}
ALLOWED_KEYS = {
    "sensor": COMMON_KEYS
    | {
        "last_reset_value_template",
        "options",
        "state_class",
        "suggested_display_precision",
        "unit_of_measurement",
    },
    "binary_sensor": COMMON_KEYS | {"off_delay", "payload_off", "payload_on"},
}
REQUIRED_KEYS = {"sensor": {"state_topic"}, "binary_sensor": {"state_topic"}}

# https://www.home-assistant.io/integrations/sensor/#device-class: the units each device class
# accepts (the subset of classes that could describe what a gateway publishes)
DATA_SIZE_UNITS = {
    "bit", "kbit", "Mbit", "Gbit", "B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB",
    "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB",
}  # fmt: skip
SENSOR_DEVICE_CLASS_UNITS: dict[str, set[str]] = {
    "battery": {"%"},
    "carbon_dioxide": {"ppm"},
    "carbon_monoxide": {"ppm"},
    "data_size": DATA_SIZE_UNITS,
    "duration": {"d", "h", "min", "s", "ms"},
    "humidity": {"%"},
    "illuminance": {"lx"},
    "pm1": {"µg/m³"},
    "pm10": {"µg/m³"},
    "pm25": {"µg/m³"},
    "pressure": {"cbar", "bar", "hPa", "mmHg", "inHg", "kPa", "mbar", "Pa", "psi"},
    "signal_strength": {"dB", "dBm"},
    "sound_pressure": {"dB", "dBA"},
    "temperature": {"°C", "°F", "K"},
    "voltage": {"V", "mV", "µV", "kV", "MV"},
}
# https://www.home-assistant.io/integrations/sensor/#state-class, and the state classes Home
# Assistant accepts per device class (measurements only, except the ones that can add up)
STATE_CLASSES = {"measurement", "total", "total_increasing"}
DEVICE_CLASS_STATE_CLASSES = {
    dc: {"measurement"} for dc in SENSOR_DEVICE_CLASS_UNITS if dc not in ("data_size", "duration")
} | {"data_size": STATE_CLASSES, "duration": STATE_CLASSES}
# https://www.home-assistant.io/integrations/binary_sensor/#device-class
BINARY_SENSOR_DEVICE_CLASSES = {
    "battery", "connectivity", "problem", "running", "safety", "update", "motion", "occupancy",
}  # fmt: skip
# https://developers.home-assistant.io/docs/core/entity/#generic-properties: a sensor may be
# "diagnostic"; "config" is for entities that change a device's configuration
ENTITY_CATEGORIES = {"diagnostic"}
DISCOVERY_TOPIC = re.compile(
    r"^homeassistant/(?P<component>sensor|binary_sensor)/(?P<node_id>[A-Za-z0-9_-]+)/"
    r"(?P<object_id>[A-Za-z0-9_-]+)/config$"
)

# -- the one template grammar, evaluated ---------------------------------------------------------

TEMPLATE = re.compile(
    r"\{% set e = value_json \| selectattr\('n', 'eq', '(?P<name>[a-z0-9_]+)'\) \| list "
    r"\| last \| default\(\{\}\) %\}"
    r"(?:\{\{ (?P<number>e\['v'\]|\(e\['v'\] \* (?P<factor>[0-9.]+)\) \| round\(3\)) "
    r"if 'v' in e else 'None' \}\}"
    r"|\{\{ e\['vs'\] if 'vs' in e else '' \}\})"
)


def evaluate(template: str, payload: bytes) -> str:
    """What the template renders for a payload, by Jinja2 itself (Home Assistant's templates
    are Jinja2 with more filters; these use only Jinja2's own), `value_json` the parsed
    payload as Home Assistant gives it."""
    assert TEMPLATE.fullmatch(template), f"not the module's template grammar: {template}"
    environment = jinja2.Environment(autoescape=False)  # noqa: S701 - text, not HTML
    return environment.from_string(template).render(value_json=json.loads(payload))


# -- helpers ---------------------------------------------------------------------------------------

ALL_QUANTITIES = [q[1] for q in QUANTITIES]
FULL_POLICY = f"""
name = "every quantity, every statistic"

[[streams]]
name = "everything"
message = "readings"
quantities = {json.dumps(ALL_QUANTITIES)}
statistics = {json.dumps(list(STATISTICS))}

[[streams]]
name = "people"
message = "observations"
k = 2
noise = {{ epsilon = 0.5, daily_cap = 4.0 }}
forward_pseudonyms = true

[[streams]]
name = "health"
message = "status"
action = "pass"
"""


def parse(text: str) -> Policy:
    return policy_mod.parse(tomllib.loads(text), "test")


def configs(policy: Policy, nodes: dict[int, str]) -> dict[str, dict[str, Any]]:
    return ha.Announcer(TOPICS, "homeassistant").configs(policy, nodes)


def every_config() -> Iterator[tuple[str, dict[str, Any]]]:
    nodes = {7: "plein-noord", 8: "Plein Noord/2", 9: ""}
    for policy in (policy_mod.default(), parse(FULL_POLICY)):
        yield from configs(policy, nodes).items()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def exact(n: int, noise: Noise) -> int:
    return n


# -- the schema ------------------------------------------------------------------------------------


def test_discovery_messages_use_only_what_home_assistant_documents() -> None:
    unique_ids: dict[str, str] = {}  # unique id -> its topic: one each, in both policies
    checked = 0
    for topic, config in every_config():
        match = DISCOVERY_TOPIC.fullmatch(topic)
        assert match is not None, topic
        component = match["component"]
        assert set(config) <= ALLOWED_KEYS[component], (
            topic,
            set(config) - ALLOWED_KEYS[component],
        )
        assert REQUIRED_KEYS[component] <= set(config), topic
        assert match["node_id"] == f"edgeveil_{SITE}_{GW}"
        assert config["unique_id"] == f"{match['node_id']}_{match['object_id']}"
        assert unique_ids.setdefault(config["unique_id"], topic) == topic
        assert isinstance(config["name"], str) and config["name"]
        assert config["qos"] in (0, 1, 2)
        assert set(config["device"]) <= DEVICE_KEYS
        assert config["device"]["identifiers"] and config["device"]["name"]
        assert set(config["origin"]) <= ORIGIN_KEYS and config["origin"]["name"] == "edgeveil"
        for entry in config["availability"]:
            assert set(entry) <= AVAILABILITY_KEYS and "topic" in entry
        assert config.get("entity_category", "diagnostic") in ENTITY_CATEGORIES
        if component == "binary_sensor":
            assert config["device_class"] in BINARY_SENSOR_DEVICE_CLASSES
            checked += 1
            continue
        device_class = config.get("device_class")
        unit = config.get("unit_of_measurement")
        state_class = config.get("state_class")
        if device_class is not None:
            assert unit in SENSOR_DEVICE_CLASS_UNITS[device_class], (topic, device_class, unit)
            assert state_class in DEVICE_CLASS_STATE_CLASSES[device_class], (topic, state_class)
        if state_class is None:  # a text sensor: nothing numeric about it
            assert unit is None and device_class is None
            assert "suggested_display_precision" not in config
        else:
            assert state_class in STATE_CLASSES
            assert isinstance(config["suggested_display_precision"], int)
        assert TEMPLATE.fullmatch(config["value_template"]), config["value_template"]
        checked += 1
    assert checked > 100  # both policies, three zones, three nodes


def test_the_default_policy_gives_each_zone_its_sensors_with_the_right_classes() -> None:
    got = configs(policy_mod.default(), {7: "plein-noord", 8: "plein-noord"})
    base = f"homeassistant/sensor/edgeveil_{SITE}_{GW}"
    zone_topic = f"edgeveil/{SITE}/{GW}/zone/plein-noord"
    zone = {t: c for t, c in got.items() if "/zone_" in t}
    # environment 8 x (mean, min, max), noise 3, occupancy 1, people 1; two nodes, 9 each; 1
    assert (len(zone), len(got)) == (29, 29 + 2 * 9 + 1)
    assert {c["device"]["name"] for c in zone.values()} == {"Zone plein-noord"}
    expected = {
        "temperature_mean": ("environment", "temperature", "°C"),
        "humidity_max": ("environment", "humidity", "%"),
        "pressure_min": ("environment", "pressure", "hPa"),
        "pm1_mean": ("environment", "pm1", "µg/m³"),
        "pm2_5_mean": ("environment", "pm25", "µg/m³"),
        "pm10_mean": ("environment", "pm10", "µg/m³"),
        "co2_mean": ("environment", "carbon_dioxide", "ppm"),
        "illuminance_mean": ("environment", "illuminance", "lx"),
        "noise_p90": ("noise", "sound_pressure", "dB"),
        "motion_sum": ("occupancy", None, None),
        "devices": ("people", None, None),
    }
    for measurement, (stream, device_class, unit) in expected.items():
        config = got[f"{base}/zone_plein-noord_{measurement}/config"]
        assert config["state_topic"] == f"{zone_topic}/{stream}"
        assert config.get("device_class") == device_class
        assert config.get("unit_of_measurement") == unit
        assert config["state_class"] == "measurement"
    battery = got[f"{base}/node_7_battery/config"]
    assert battery["state_topic"] == f"edgeveil/{SITE}/{GW}/node/7/status"
    assert (battery["device_class"], battery["unit_of_measurement"]) == ("voltage", "V")
    assert battery["device"]["name"] == "Node 7"
    frames = got[f"{base}/node_7_frames_sent/config"]
    assert frames["state_class"] == "total_increasing"


def test_every_quantity_converts_its_senml_unit_to_the_home_assistant_unit() -> None:
    # SenML unit (protocol/quantities.py) -> (Home Assistant unit, factor), worked out by hand
    conversions = {
        "Cel": ("°C", 1),
        "%RH": ("%", 1),
        "Pa": ("hPa", 0.01),
        "V": ("V", 1),
        "kg/m3": ("µg/m³", 1e9),
        "/": ("ppm", 1e6),
        "Bspl": ("dB", 1),
        "lx": ("lx", 1),
        "count": (None, 1),
    }
    assert set(ha.QUANTITIES) == set(ALL_QUANTITIES)
    for _qid, name, unit, *_ in QUANTITIES:
        _label, _device_class, ha_unit, factor, _precision = ha.QUANTITIES[name]
        assert (ha_unit, factor) == conversions[unit], name


def test_node_health_covers_what_a_status_record_carries_in_the_same_units() -> None:
    # a LoRa link's health (v1.1 status keys 10-15) is published in the node's status but not
    # announced: discovery does not know which nodes are on LoRa (serial ones would show
    # six unknown sensors each)
    lora = {"airtime_ms", "deferred", "budget_drops", "too_big"}
    fields = {name: 1 for _, name, kind in STATUS_FIELDS if kind == "uint" and name not in lora}
    status = Status({**fields, "reset_cause": 1, "firmware": "0.1.0", "clock_synced": True})
    record = status_record(GW, 7, "z", 1, status, T0)
    units = {m.name: m.unit for m in record.measurements}
    sensors = {s.measurement: s for s in ha.node_sensors(TOPICS, 7)}
    assert set(units) - {"clock_synced"} == set(sensors)  # a boolean: not announced
    for name, sensor in sensors.items():
        expected = None if units[name] in ("", "count") else units[name]
        assert sensor.unit == expected, name
        assert (sensor.state_class is None) == (units[name] == ""), name


# -- templates against what the gateway publishes --------------------------------------------------


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[PrivacyLedger]:
    with PrivacyLedger.open(tmp_path / "privacy.db", today=utc_day(T0)) as led:
        yield led


def published(policy: Policy, ledger: PrivacyLedger) -> dict[str, bytes]:
    """Topic -> payload of what the privacy engine releases for one node in zone "z" over one
    window: every quantity read three times, three devices seen, one status."""
    engine = PolicyEngine(policy, GW, ledger, Clock(T0 + 1), noisy_count=exact)
    out = []
    for i, value in enumerate((10, 20, 60)):
        values = {q[0]: value * (q[0] + 1) for q in QUANTITIES}
        out += engine.process(7, "z", i, Readings(values, T0 + i), T0 + i)
    addresses = [bytes([0x02, i, 3, 4, 5, 6]) for i in range(3)]
    out += engine.process(7, "z", 9, Observations(0, [(a, -60) for a in addresses]), T0 + 5)
    fields = {"battery_mv": 3712, "uptime_s": 600, "free_heap": 50_000, "frames_sent": 40}
    fields |= {"retransmissions": 2, "dropped": 0, "queue_depth": 1}
    status = Status({**fields, "reset_cause": 1, "firmware": "0.1.0", "clock_synced": True})
    out += engine.process(7, "z", 10, status, T0 + 6)
    out += engine.release_due(T0 + 3600)
    messages = [senml.encode(r, TOPICS, "senml+json") for r in out]
    return {m.topic: m.payload for m in messages}


def test_a_template_reads_the_newest_record_of_a_joined_pack() -> None:
    """A busy gateway joins a topic's waiting records into one message (senml.join): the
    entity shows the last, newest value of its measurement, once, not all of them."""
    sensor = ha.Sensor("t", "Temperature", "t", "temperature", "temperature", "°C", "measurement")
    text = ha.Sensor("c", "Count", "t", "people_count")

    def record(mid: str, temperature: float, count: str) -> bytes:
        head = {"bn": "urn:dev:edgeveil:s:1:", "bt": 1, "mid": mid, "policy": "0" * 64}
        entries = [head | {"n": "temperature", "u": "Cel", "v": temperature}]
        entries.append({"n": "people_count", "vs": count})
        return json.dumps(entries, separators=(",", ":")).encode()

    joined = senml.join([record("a", 20.5, "suppressed"), record("b", 21.25, "7")], "senml+json")
    assert evaluate(ha.value_template(sensor), joined) == "21.25"
    assert evaluate(ha.value_template(text), joined) == "7"
    assert evaluate(ha.value_template(sensor), b'[{"n":"humidity","v":1}]') == "None"


def test_templates_read_the_values_the_gateway_publishes(ledger: PrivacyLedger) -> None:
    policy = parse(FULL_POLICY)
    payloads = published(policy, ledger)
    checked: dict[str, str] = {}
    for config in configs(policy, {7: "z"}).values():
        payload = payloads.get(config["state_topic"])
        if payload is None:
            assert config["state_topic"].endswith("/availability")
            continue
        pack = {e["n"]: e for e in json.loads(payload)}
        got = evaluate(config["value_template"], payload)
        match = TEMPLATE.fullmatch(config["value_template"])
        assert match is not None
        measurement = match["name"]
        entry = pack[measurement]  # every announced measurement is in what was published
        if "state_class" not in config:
            assert got == entry["vs"]
        else:
            float(got)  # a number Home Assistant takes
        checked[measurement] = got
    pm = 10 * 6 + 20 * 6 + 60 * 6  # pm2_5 (id 5) read as 60, 120, 360 µg/m³
    assert checked["pm2_5_mean"] == str(round(pm / 3, 3))
    assert checked["pm2_5_max"] == "360.0"
    assert checked["co2_min"] == str(round(10 * 8 * 1.0, 3))  # id 7: 80 ppm
    assert checked["pressure_max"] == str(round(60 * 3 * 10 / 100, 3))  # 1800 Pa = 18 hPa
    assert checked["temperature_mean"] == str(round((10 + 20 + 60) / 3 * 0.1, 3))
    assert checked["devices"] == "3"
    assert checked["battery"] == "3.712"
    assert checked["reset_cause"] == "power_on"
    assert checked["firmware"] == "0.1.0"
    assert len(checked) == len(ALL_QUANTITIES) * len(STATISTICS) + 1 + 9


@pytest.mark.parametrize("withheld", [SUPPRESSED, WITHHELD])
def test_a_count_withheld_or_a_measurement_absent_is_unknown(withheld: str) -> None:
    [devices] = [
        s for s in ha.zone_sensors(policy_mod.default(), TOPICS, "z") if s.measurement == "devices"
    ]
    template = ha.value_template(devices)
    pack = [{"bn": "x", "bt": T0, "mid": "m", "n": "devices", "u": "count", "vs": withheld}]
    assert evaluate(template, json.dumps(pack).encode()) == "None"
    other = [{"bn": "x", "bt": T0, "mid": "m", "n": "temperature_mean", "u": "Cel", "v": 21.5}]
    assert evaluate(template, json.dumps(other).encode()) == "None"


def test_nothing_per_person_or_per_device_is_announced() -> None:
    """Even under a policy that forwards pseudonyms (FULL_POLICY), no entity reads one: the
    entities read zone aggregates, node status and availability, nothing else."""
    base = f"edgeveil/{SITE}/{GW}"
    allowed = re.compile(
        rf"^{re.escape(base)}/(zone/[^/]*/(everything|people|environment|noise|occupancy)"
        rf"|node/\d+/status|availability)$"
    )
    released = {f"{q}_{s}" for q in ALL_QUANTITIES for s in STATISTICS} | {"devices"}
    health = {name for name, *_ in ha.NODE_HEALTH}
    for topic, config in every_config():
        text = json.dumps(config)
        assert "pseudonym" not in text and "observations" not in text, topic
        assert allowed.match(config["state_topic"]), config["state_topic"]
        if "/zone/" in config["state_topic"]:
            match = TEMPLATE.fullmatch(config["value_template"])
            assert match is not None and match["name"] in released, topic
        elif "/node/" in config["state_topic"]:
            match = TEMPLATE.fullmatch(config["value_template"])
            assert match is not None and match["name"] in health, topic


def test_zones_become_object_ids_home_assistant_allows_without_collisions() -> None:
    zones = ["plein-noord", "Plein Noord", "Plein_Noord", "plein/noord", "plein+#", "", "straße"]
    slugs = [ha.zone_slug(z) for z in zones]
    assert len(set(slugs)) == len(zones)
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", s) for s in slugs)
    assert slugs[0] == "plein-noord" and slugs[2] == "Plein_Noord"
    got = configs(policy_mod.default(), {1: "plein/noord"})
    topic = next(c["state_topic"] for t, c in got.items() if "temperature_mean" in t)
    assert topic == f"edgeveil/{SITE}/{GW}/zone/plein%2Fnoord/environment"  # as the data goes


def test_no_node_devices_when_status_does_not_pass() -> None:
    policy = parse(
        'name = "readings only"\n[[streams]]\nname = "environment"\nmessage = "readings"\n'
        'quantities = ["temperature"]\n'
    )
    got = configs(policy, {7: "z"})
    assert sorted(t.split("/")[3] for t in got) == [
        "gateway_storage",
        "zone_z_temperature_mean",
    ]


def test_availability_maps_online_and_degraded_to_available() -> None:
    """The availability template is a single conditional; what it yields for each value the
    gateway publishes, and the binary sensor's state."""
    _, gateway = next(iter(configs(policy_mod.default(), {}).items()))
    [availability] = gateway["availability"]
    assert availability == {
        "topic": f"edgeveil/{SITE}/{GW}/availability",
        "value_template": ha.AVAILABLE,
    }
    assert ha.AVAILABLE == "{{ 'offline' if value == 'offline' else 'online' }}"
    assert gateway["value_template"] == "{{ 'ON' if value == 'degraded' else 'OFF' }}"
    assert gateway["device_class"] == "problem"


# -- changes ---------------------------------------------------------------------------------------


def announced(messages: list[OutMessage]) -> tuple[set[str], set[str]]:
    """(topics with a config, topics emptied)"""
    assert all(m.retain for m in messages)
    return {m.topic for m in messages if m.payload}, {m.topic for m in messages if not m.payload}


def test_changes_publish_everything_again_and_remove_what_is_gone(tmp_path: Path) -> None:
    on = config_mod.HomeAssistantConfig(discovery=True)
    discovery = ha.Discovery(on, TOPICS, tmp_path, publish=None)
    default = policy_mod.default()
    first, gone = announced(discovery.messages(default, {7: "a", 8: "b"}))
    assert not gone and len(first) == 2 * 29 + 2 * 9 + 1
    assert discovery.messages(default, {7: "a", 8: "b"}) == []  # nothing changed
    again, gone = announced(discovery.messages(default, {7: "a", 8: "b"}, again=True))
    assert (again, gone) == (first, set())  # after a reconnect

    moved, gone = announced(discovery.messages(default, {7: "a", 8: "a"}))  # node 8 moved
    assert {t for t in first if "zone_b_" in t} == gone
    assert moved == first - gone

    text = (Path(policy_mod.__file__).parent.parent / "policies" / "default.toml").read_text()
    without_noise = text.replace('name = "noise"', 'name = "sound"')
    renamed, gone = announced(discovery.messages(parse(without_noise), {7: "a", 8: "a"}))
    assert not gone  # the same measurements, another topic: configs changed, none removed
    assert {t for t in renamed if "noise_" in t} == {t for t in moved if "noise_" in t}

    reloaded = policy_mod.parse(tomllib.loads(without_noise), "reloaded")
    assert discovery.messages(reloaded, {7: "a", 8: "a"}) == []  # same hash: nothing

    no_status = parse(
        FULL_POLICY.split('[[streams]]\nname = "health"', maxsplit=1)[0]
    )  # a superset, but
    _, gone = announced(discovery.messages(no_status, {7: "a"}))  # no node health
    assert gone == {t for t in renamed if "/node_" in t}


def test_removed_after_a_restart_with_discovery_off(tmp_path: Path) -> None:
    """The topics announced are kept in the state directory; a later run with discovery off
    empties each of them once and forgets the file."""
    registry_path = tmp_path / "registry.db"
    with NodeRegistry.open(registry_path) as registry:
        registry.add(7, SECRET, "a")
        registry.add(8, SECRET[::-1], "b")
        registry.revoke(8)

        source = SimpleNamespace(
            policy=policy_mod.default(), registry=registry, uplink=SimpleNamespace(reconnects=0)
        )
        spooled: list[list[OutMessage]] = []

        async def publish(messages: list[OutMessage]) -> None:
            spooled.append(messages)

        async def run(discovery: bool) -> None:
            config = config_mod.HomeAssistantConfig(discovery=discovery)
            task = asyncio.create_task(ha.Discovery(config, TOPICS, tmp_path, publish).run(source))
            await until(lambda: spooled or task.done(), "the announcement")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(run(True))
        configs_, gone = announced(spooled.pop())
        assert not gone and len(configs_) == 29 + 9 + 1  # node 8 is revoked: not served
        stored = json.loads((tmp_path / ha.STATE_FILE).read_text())
        assert set(stored) == configs_

        async def off() -> None:
            config = config_mod.HomeAssistantConfig(discovery=False)
            await ha.Discovery(config, TOPICS, tmp_path, publish).run(source)

        asyncio.run(off())  # returns by itself
        assert announced(spooled.pop()) == (set(), configs_)
        assert not (tmp_path / ha.STATE_FILE).exists()
        asyncio.run(off())
        assert spooled == []  # nothing left to remove: nothing published


def test_run_survives_a_failure_and_announces_again_after_a_reconnect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A publish that fails is logged and everything is tried again at the next check (the task
    is in the gateway's TaskGroup: ending it would stop the gateway); a reconnect announces
    everything again."""
    monkeypatch.setattr(ha, "CHECK_S", 0.01)
    with NodeRegistry.open(tmp_path / "registry.db") as registry:
        registry.add(7, SECRET, "a")
        uplink = SimpleNamespace(reconnects=0)
        checks: list[None] = []  # one per pass of the discovery's loop

        def served() -> list[Any]:
            checks.append(None)
            return registry.served()

        counted = SimpleNamespace(served=served)
        source = SimpleNamespace(policy=policy_mod.default(), registry=counted, uplink=uplink)
        spooled: list[list[OutMessage]] = []

        async def publish(messages: list[OutMessage]) -> None:
            spooled.append(messages)
            if len(spooled) == 1:
                raise OSError("the spool refused")

        async def scenario() -> None:
            config = config_mod.HomeAssistantConfig(discovery=True)
            task = asyncio.create_task(ha.Discovery(config, TOPICS, tmp_path, publish).run(source))
            await until(lambda: len(spooled) >= 2, "announced again after the failure")
            uplink.reconnects = 1
            await until(lambda: len(spooled) >= 3, "announced again after the reconnect")
            seen = len(checks)
            await until(lambda: len(checks) >= seen + 3, "three more checks")  # nothing changed
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(scenario())
    assert len(spooled) == 3
    assert [announced(m)[0] for m in spooled[1:]] == [announced(spooled[0])[0]] * 2
    assert len(spooled[0]) == 29 + 9 + 1


# -- configuration ---------------------------------------------------------------------------------


def parse_config(text: str) -> config_mod.GatewayConfig:
    return config_mod.parse(tomllib.loads(text), "gateway.toml")


def test_homeassistant_table_defaults_and_values() -> None:
    assert parse_config("").homeassistant == config_mod.HomeAssistantConfig(False, "homeassistant")
    got = parse_config('[homeassistant]\ndiscovery = true\nprefix = "ha/site-1"\n').homeassistant
    assert got == config_mod.HomeAssistantConfig(True, "ha/site-1")
    # JSON payloads, said or by default, and the embedded broker (no [mqtt]) are fine
    parse_config('[mqtt]\npayload = "senml+json"\n[homeassistant]\ndiscovery = true\n')
    parse_config('[mqtt]\nhost = "localhost"\n[homeassistant]\ndiscovery = true\n')
    parse_config('[mqtt]\npayload = "senml+cbor"\n[homeassistant]\ndiscovery = false\n')


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("[homeassistant]\ndiscovery = 1\n", "homeassistant.discovery", "true or false"),
        ('[homeassistant]\nprefix = "home/#"\n', "homeassistant.prefix", "discovery_prefix"),
        ('[homeassistant]\nprefix = ""\n', "homeassistant.prefix", "discovery_prefix"),
        ('[homeassistant]\nprefix = "/ha"\n', "homeassistant.prefix", "discovery_prefix"),
        ("[homeassistant]\ndiscover = true\n", "homeassistant.discover", "unknown key"),
        (
            '[mqtt]\npayload = "senml+cbor"\n[homeassistant]\ndiscovery = true\n',
            "homeassistant.discovery",
            'set mqtt.payload = "senml+json" or discovery = false',
        ),
    ],
)
def test_bad_homeassistant_table_names_the_key(text: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert caught.value.key == key
    assert problem in str(caught.value)
    assert "\n" not in str(caught.value)


def test_check_config_refuses_discovery_with_cbor_payloads_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(
        '[mqtt]\nhost = "localhost"\npayload = "senml+cbor"\n\n[homeassistant]\ndiscovery = true\n',
        encoding="utf-8",
    )
    result = edgeveil("gateway", "check-config", "--config", str(path), cwd=tmp_path)
    line = assert_one_line_usage_error(result, str(path), "homeassistant.discovery", "senml+json")
    assert "Home Assistant" in line


def test_example_configuration_documents_the_table() -> None:
    example = Path(__file__).resolve().parent.parent / "examples" / "gateway.toml"
    parsed = tomllib.loads(example.read_text(encoding="utf-8"))
    assert parsed["homeassistant"] == {"discovery": False, "prefix": "homeassistant"}
