"""The MQTT interface's contract, docs/mqtt/asyncapi.yaml (ARCHITECTURE.md rule 7).

- The document is AsyncAPI 3.0.0 by the official JSON Schema (the npm package @asyncapi/specs,
  pinned in tests/asyncapi/package-lock.json, installed by scripts/test), and that schema does
  reject a broken document (controls).
- Its examples keep their own schemas; it follows the code's tables (quantities and units,
  statistics, status fields, event names, withheld values, availability values, payload forms)
  and the gateway's topic layout (records.Topics), so the two cannot drift apart unnoticed.
- Records of every kind the privacy stage releases keep it, as SenML JSON and as SenML CBOR;
  the checker (tests/mqtt_contract.py) rejects what breaks it (controls).
- End to end, in both payload forms: what a running gateway publishes for a node's frames keeps
  it (the Subscriber checks every message, as in every end-to-end test), with what it once
  got wrong: an event without a value is `vb` true, not 1; a status without a field publishes
  nothing instead of `[]`; the gateway's counter_reuse alarm carries the policy hash; and the
  results of configuration commands (rejected, accepted, delivered, applied by the gateway).
"""

from __future__ import annotations

import copy
import json
import os
import random
import time
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiomqtt
import cbor2
import jsonschema
import pytest

from gateway import senml
from gateway.config import PAYLOAD_FORMATS
from gateway.privacy import PolicyEngine, PrivacyLedger
from gateway.privacy import policy as policy_mod
from gateway.privacy.engine import SUPPRESSED, WITHHELD, WITHHELD_ERROR
from gateway.privacy.explain import FORMAT
from gateway.privacy.ledger import utc_day
from gateway.privacy.passthrough import _STATUS
from gateway.privacy.policy import DISTINCT, STATISTICS, Noise
from gateway.records import Record, Topics
from gateway.registry import NodeRegistry
from gateway.service import with_ports
from gateway.uplink import DEGRADED, OFFLINE, ONLINE
from protocol import Event, NodeKeys, Observations, Readings, Status, encode_serial, seal
from protocol.messages import EVENT_CODES, RESET_CAUSES
from protocol.quantities import QUANTITIES, quantity_id

from .gateway_harness import deadline, delivery_config, running_gateway
from .mosquitto import Mosquitto, Received, subscribed
from .mqtt_contract import (
    Contract,
    contract,
    decode,
    load_document,
    official_schema,
    resolve,
    senml_json_labels,
)
from .ptys import Pty
from .test_gateway_e2e import no_leftovers  # noqa: F401 - an autouse fixture, here too
from .waiting import until

HASH = "0" * 64
T0 = 1_800_000_000  # a whole hour, UTC
W = 900


def schema(name: str) -> Any:
    return load_document()["components"]["schemas"][name]


def branches(name: str, index: int) -> list[dict[str, Any]]:
    """The alternatives (anyOf / oneOf) of the `index`th allOf part of a schema."""
    part = schema(name)["allOf"][index]
    alternatives: list[dict[str, Any]] = part.get("anyOf") or part["oneOf"]
    return alternatives


# -- the document ----------------------------------------------------------------------------------


def test_the_document_is_asyncapi_3_0_by_the_official_schema() -> None:
    document = load_document()
    assert document["asyncapi"] == "3.0.0"
    validator = jsonschema.Draft7Validator(official_schema("3.0.0"))
    errors = [
        f"{list(e.absolute_path)}: {e.message[:200]}" for e in validator.iter_errors(document)
    ]
    assert errors == []


@pytest.mark.parametrize(
    ("where", "change"),
    [
        (("operations", "publishNodeEvent", "action"), "publish"),  # AsyncAPI 2's word
        (("operations", "publishAvailability", "bindings", "mqtt", "qos"), 3),
        (("channels", "nodeEvent", "subscribe"), {}),
        (("components", "parameters", "zone", "schema"), {"type": "string"}),  # 2.x form
        (("components", "schemas", "eventPack", "minItems"), -1),
        (("components", "messages", "event", "payload"), "a string is no schema"),
    ],
)
def test_the_official_schema_rejects_a_broken_document(where: tuple[str, ...], change: Any) -> None:
    """Controls: the validation above is not vacuous."""
    document = copy.deepcopy(load_document())
    node = document
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = change
    validator = jsonschema.Draft7Validator(official_schema("3.0.0"))
    assert list(validator.iter_errors(document)), where


def test_every_example_keeps_its_message_schema() -> None:
    document = load_document()
    checked = 0
    for channel in contract().channels:
        for key, ref in document["channels"][channel.name]["messages"].items():
            message = resolve(document, ref)
            (validator,) = [m for m in channel.messages if m.name == message.get("name", key)]
            for example in message.get("examples", []):
                assert validator.errors(example["payload"]) == [], (channel.name, example["name"])
                checked += 1
    assert checked >= 20


def test_the_document_follows_the_code_s_tables() -> None:
    readings = [
        (b["properties"]["n"]["const"], b["properties"]["u"]["const"])
        for b in branches("readingRecord", 2)
    ]
    assert readings == [(q[1], q[2]) for q in QUANTITIES]

    stats = "|".join(s for s in STATISTICS if s != "count")
    *per_quantity, counts = branches("statisticRecord", 3)
    assert [
        (b["properties"]["n"]["pattern"], b["properties"]["u"]["const"]) for b in per_quantity
    ] == [(f"^{q[1]}_({stats})$", q[2]) for q in QUANTITIES]
    names = "|".join(q[1] for q in QUANTITIES)
    assert counts["properties"] == {"n": {"pattern": f"^({names})_count$"}, "u": {"const": "count"}}

    status = {}
    for b in branches("statusRecord", 1):
        n = b["properties"]["n"]
        for name in n.get("enum", [n.get("const")]):
            status[name] = b["properties"].get("u", {}).get("const", "")
    assert status == {name: unit for name, unit, _scale in _STATUS.values()} | {
        "reset_cause": "",
        "firmware": "",
        "clock_synced": "",
    }
    (reset,) = [
        b for b in branches("statusRecord", 1) if b["properties"]["n"].get("const") == "reset_cause"
    ]
    assert reset["properties"]["vs"]["anyOf"][0]["enum"] == list(RESET_CAUSES)

    events = branches("eventRecord", 3)
    assert events[0]["properties"]["n"]["enum"] == list(EVENT_CODES)
    assert events[2]["properties"]["n"]["const"] == "counter_reuse"

    withheld = schema("devicesRecord")["allOf"][2]["oneOf"][1]["properties"]["vs"]["enum"]
    assert withheld == [SUPPRESSED, WITHHELD, WITHHELD_ERROR]
    messages = load_document()["components"]["messages"]
    assert messages["availability"]["payload"]["enum"] == [
        v.decode() for v in (ONLINE, DEGRADED, OFFLINE)
    ]
    assert schema("metadata")["properties"]["payload"]["enum"] == list(PAYLOAD_FORMATS)
    assert schema("transparencyStatement")["properties"]["format"]["const"] == FORMAT
    allowed = schema("transparencyStream")["properties"]["statistics"]["items"]["enum"]
    assert allowed == [*STATISTICS, DISTINCT]
    # the extension fields keep their text labels in CBOR, the rest are RFC 8428's
    assert senml._CBOR_LABELS == {"bn": -2, "bt": -3, "n": 0, "u": 1, "v": 2, "vs": 3, "vb": 4}


def test_every_topic_of_the_gateway_has_its_channel() -> None:
    topics = Topics("edgeveil", "site-1", "gw-1")
    expected = {
        topics.zone("plein-noord", "environment"): "zoneAggregate",
        topics.zone("a/b+#", "people"): "zoneAggregate",  # percent-encoded: one level
        topics.zone("", "people"): "zoneAggregate",  # no zone: an empty level
        topics.node(7, "noise"): "nodeAggregate",
        topics.node(7, "readings"): "nodeReadings",
        topics.node(7, "status"): "nodeStatus",
        topics.node(7, "event"): "nodeEvent",
        topics.availability: "availability",
        topics.metadata: "metadata",
        topics.transparency: "transparency",
        topics.transparency_text: "transparencyText",
        topics.budget: "privacyBudget",
        f"{topics.base}/command/node/7/configure": "commandConfigure",
        f"{topics.base}/command/node/7/result": "commandResult",
        # Home Assistant discovery (opt-in), under Home Assistant's own prefix
        "homeassistant/sensor/edgeveil_site-1_gw-1/node_7_battery/config": "homeAssistantDiscovery",
    }
    found = {topic: getattr(contract().channel(topic), "name", None) for topic in expected}
    assert found == expected
    assert {c.name for c in contract().channels} == set(expected.values())
    sends = {c.name for c in contract().channels if c.gateway_sends}
    assert sends == set(expected.values()) - {"commandConfigure"}
    retained = {c.name for c in contract().channels if c.retain}
    assert retained == {
        "availability",
        "metadata",
        "transparency",
        "transparencyText",
        "privacyBudget",
        "homeAssistantDiscovery",
    }
    assert {c.qos for c in contract().channels if c.gateway_sends} == {1}


# -- what the privacy stage releases ---------------------------------------------------------------

EVERY_KIND = f"""
name = "every kind of record"

[[streams]]
name = "climate"
message = "readings"
quantities = ["temperature", "humidity", "pressure", "battery", "pm1", "pm2_5", "pm10", "co2"]
statistics = {json.dumps(list(STATISTICS))}
k = 3

[[streams]]
name = "loudness"
message = "readings"
quantities = ["noise", "illuminance"]
group_by = "node"
statistics = ["mean", "p90", "count"]

[[streams]]
name = "passed"
message = "readings"
quantities = ["motion", "people"]
action = "pass"

[[streams]]
name = "people"
message = "observations"
k = 2
noise = {{ epsilon = 0.5, daily_cap = 1.0 }}
forward_pseudonyms = true

[[streams]]
name = "health"
message = "status"
action = "pass"

[[streams]]
name = "events"
message = "event"
action = "pass"
"""


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def every_kind_of_record(ledger: PrivacyLedger) -> list[Record]:
    policy = policy_mod.parse(tomllib.loads(EVERY_KIND), "test")

    def exact(n: int, _noise: Noise) -> int:
        return n

    engine = PolicyEngine(policy, "gw-1", ledger, Clock(T0 + 1), noisy_count=exact)
    out: list[Record] = []
    every = {quantity_id(q[1]): 10 + q[0] for q in QUANTITIES}
    for counter in range(3):  # k = 3 reached for all but pm1 (below)
        values = {q: v for q, v in every.items() if q != quantity_id("pm1") or counter == 0}
        out += engine.process(5, "plein", counter, Readings(values, T0 + 10 + counter), T0 + 11)
    devices = [bytes([1, 2, 3, 4, 5, i]) for i in range(3)]
    out += engine.process(5, "plein", 3, Observations(0, [(a, -60) for a in devices]), T0 + 20)
    full = {name: 7 for name in _STATUS} | {"reset_cause": 5, "firmware": "0.1.0"}
    out += engine.process(5, "plein", 4, Status({**full, "clock_synced": True}), T0 + 21)
    out += engine.process(5, "plein", 5, Status({"reset_cause": 99}), T0 + 21)  # unknown cause
    out += engine.process(5, "plein", 6, Status({}), T0 + 21)  # nothing to publish
    for counter, event in enumerate((Event(0, 1), Event(6), Event(200, -7)), start=7):
        out += engine.process(5, "plein", counter, event, T0 + 22)
    out += engine.release_due(T0 + W)  # released: climate (pm1 suppressed), loudness, people
    out += engine.process(5, "plein", 10, Observations(0, [(devices[0], -60)]), T0 + W + 1)
    out += engine.release_due(T0 + 2 * W)  # one device: below k, suppressed
    out += engine.process(5, "plein", 11, Observations(0, [(devices[0], -60)]), T0 + 2 * W + 1)
    out += engine.release_due(T0 + 3 * W)  # the day's budget (1.0 = two releases) is spent
    return out


def test_records_of_every_kind_keep_the_contract_as_json_and_cbor(tmp_path: Path) -> None:
    with PrivacyLedger.open(tmp_path / "privacy.db", today=utc_day(T0)) as ledger:
        records = every_kind_of_record(ledger)
    topics = Topics("edgeveil", "site-1", "gw-1")
    channels: set[str] = set()
    shown: set[object] = set()
    for record in records:
        for form in PAYLOAD_FORMATS:
            message = senml.encode(record, topics, form)
            assert contract().check(message.topic, message.payload, 1) is None
        channels.add(getattr(contract().channel(message.topic), "name", ""))
        shown.update(m.value for m in record.measurements if isinstance(m.value, str | bool))
    assert channels == {"zoneAggregate", "nodeAggregate", "nodeReadings", "nodeStatus", "nodeEvent"}
    assert {SUPPRESSED, WITHHELD, True, "soft", "99", "0.1.0"} <= shown
    assert sum(r.kind == "status" for r in records) == 2  # the one without a field left nothing
    names = {m.name for r in records for m in r.measurements}
    assert {"pseudonym", "devices", "pm1_count", "noise_p90", "event200", "time_request"} <= names


# -- the checker's controls ------------------------------------------------------------------------

BN = "urn:dev:edgeveil:site-1:7:"
HEAD = {"bn": BN, "bt": 1.5, "mid": "gw-1:7:1:0", "policy": HASH}
BASE = "edgeveil/site-1/gw-1"


def cbor_pack(*records: dict[Any, Any]) -> bytes:
    return cbor2.dumps(list(records), canonical=True)


@pytest.mark.parametrize(
    ("topic", "payload", "qos"),
    [
        pytest.param(f"{BASE}/node/7/status", b"[]", 1, id="empty-pack"),
        pytest.param(
            f"{BASE}/node/7/readings",
            json.dumps([{**HEAD, "policy": ""} | {"n": "temperature", "u": "Cel", "v": 2}]),
            1,
            id="no-policy",
        ),
        pytest.param(
            f"{BASE}/node/7/readings",
            json.dumps(
                [{k: v for k, v in HEAD.items() if k != "mid"} | {"n": "co2", "u": "/", "v": 1}]
            ),
            1,
            id="no-mid",
        ),
        pytest.param(
            f"{BASE}/node/7/readings",
            json.dumps([HEAD | {"n": "temperature", "u": "K", "v": 290}]),
            1,
            id="wrong-unit",
        ),
        pytest.param(
            f"{BASE}/node/7/status",
            json.dumps(
                [
                    HEAD | {"n": "uptime", "u": "s", "v": 1},
                    {"mid": "x", "n": "dropped", "u": "count", "v": 0},
                ]
            ),
            1,
            id="header-twice",
        ),
        pytest.param(
            f"{BASE}/node/7/event",
            json.dumps([HEAD | {"n": "time_request", "v": 1, "vb": True}]),
            1,
            id="two-values",
        ),
        pytest.param(
            f"{BASE}/node/7/event",
            json.dumps([HEAD | {"n": "counter_reuse", "v": 1}]),
            1,
            id="alarm-with-a-number",
        ),
        pytest.param(
            f"{BASE}/node/7/event",
            json.dumps([HEAD | {"n": "boot", "v": 1}, {"n": "boot", "v": 1}]),
            1,
            id="two-events",
        ),
        pytest.param(
            f"{BASE}/zone/plein/people",
            json.dumps(
                [
                    HEAD
                    | {
                        "bn": "urn:dev:edgeveil:site-1:gw-1:people:",
                        "n": "devices",
                        "u": "count",
                        "vs": "hidden",
                    }
                ]
            ),
            1,
            id="unknown-withheld",
        ),
        pytest.param(
            f"{BASE}/node/7/event",
            cbor_pack({"-2": BN, -3: 1.5, "mid": "gw-1:7:1:0", "policy": HASH, 0: "boot", 2: 1}),
            1,
            id="cbor-text-label",
        ),
        pytest.param(
            f"{BASE}/node/7/status",
            cbor_pack({-2: BN, -3: 1.5, "mid": "gw-1:7:1:0", "policy": HASH, 0: "mood", 3: "fine"}),
            1,
            id="cbor-unknown-status-field",
        ),
        pytest.param(f"{BASE}/availability", b"up", 1, id="availability-value"),
        pytest.param(f"{BASE}/availability", b"online", 0, id="qos-0"),
        pytest.param(f"{BASE}/metadata", b"{}", 1, id="metadata-empty"),
        pytest.param(f"{BASE}/nodes/7/status", b"[]", 1, id="no-channel"),
        pytest.param("probe", b"x", 1, id="foreign-topic"),
    ],
)
def test_the_checker_rejects_what_breaks_the_contract(topic: str, payload: Any, qos: int) -> None:
    data = payload.encode() if isinstance(payload, str) else payload
    assert contract().check(topic, data, qos) is not None


def test_the_checker_leaves_clients_commands_to_the_gateway() -> None:
    """A test may send the gateway a malformed command on purpose: only what the gateway
    publishes is held to the contract (its answer on the result topic is)."""
    check = contract().check
    assert check(f"{BASE}/command/node/7/configure", b"not json", 1) is None
    result = {"id": "c1", "node": 7, "state": "rejected", "source": "mqtt", "by": None, "time": 1.5}
    assert check(f"{BASE}/command/node/7/result", json.dumps(result).encode(), 1) is not None
    result["reason"] = "settings: at least one setting"
    assert check(f"{BASE}/command/node/7/result", json.dumps(result).encode(), 1) is None


def test_a_new_document_is_checked_as_written(tmp_path: Path) -> None:
    """The checker reads the channels from the document, not from a list of its own."""
    document = copy.deepcopy(load_document())
    document["components"]["messages"]["availability"]["payload"]["enum"].append("resting")
    assert Contract(document).check(f"{BASE}/availability", b"resting", 1) is None
    assert contract().check(f"{BASE}/availability", b"resting", 1) is not None


# -- end to end ------------------------------------------------------------------------------------

SITE = "contract-site"
GATEWAY_ID = "gw-contract"
TOPIC_BASE = f"edgeveil/{SITE}/{GATEWAY_ID}"
NODE = 4242


def senml_of(r: Received, form: str) -> list[dict[str, Any]]:
    """A SenML pack with JSON labels, whichever form it came in."""
    if form == "senml+cbor":
        pack: list[dict[str, Any]] = senml_json_labels(decode("application/senml+cbor", r.payload))
        return pack
    pack = json.loads(r.payload)
    return pack


async def send_commands(broker: Mosquitto) -> None:
    """Not a command (rejected, with no id to give back), a setting for the node (accepted
    with a version, delivered at its next contact), a zone alone (the gateway's: applied at
    once, without a version)."""
    configure = f"{TOPIC_BASE}/command/node/{NODE}/configure"
    async with aiomqtt.Client(broker.host, broker.port) as client:
        for body in (
            b"not a command",
            json.dumps({"id": "slower", "settings": {"reading_interval_s": 300}}),
            json.dumps({"id": "move", "settings": {"zone": "north"}, "by": "test"}),
        ):
            await client.publish(configure, body, qos=1)


def result_states(received: list[Received]) -> list[tuple[str, str, bool, bool]]:
    """(id, state, with a version, with a reason) of each command result, sorted."""
    results = [json.loads(r.payload) for r in received]
    return sorted((r["id"], r["state"], "version" in r, "reason" in r) for r in results)


@pytest.mark.asyncio
@pytest.mark.parametrize("form", PAYLOAD_FORMATS)
@deadline(60)
async def test_what_the_gateway_publishes_keeps_the_contract(
    tmp_path: Path, form: str, rng: random.Random
) -> None:
    secret = rng.randbytes(16)  # fresh for every run: never a fixed test key
    keys = NodeKeys(NODE, secret)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    with NodeRegistry.open(state / "registry.db") as registry:
        registry.add(NODE, secret, "plein noord/1")
    pty = Pty()
    try:
        with Mosquitto(tmp_path / "mosquitto") as broker:
            config = delivery_config(tmp_path, state, broker, SITE, GATEWAY_ID)
            config = with_ports(
                replace(config, mqtt=replace(config.mqtt, payload=form)), {"n": pty.path}
            )
            assert config.privacy_policy is not None
            policy = policy_mod.load(config.privacy_policy)
            now = int(time.time())
            frames = [
                Event(0, 1),  # boot, reset cause 1
                Event(6),  # time_request: no value
                Status({}),  # nothing to publish
                Status({"uptime_s": 5, "firmware": "0.1.0", "clock_synced": False}),
                Readings({quantity_id("temperature"): 215}, now),
                Event(200),  # a code this gateway does not know, without a value
            ]
            async with (
                subscribed(broker, f"{TOPIC_BASE}/#") as sub,
                running_gateway(config) as gateway,
            ):
                await until(lambda: gateway.link_states.get("n") == "open", "port open", 10)
                for counter, message in enumerate(frames):
                    os.write(pty.master, encode_serial(seal(message, counter, keys)))

                def on(kind: str) -> list[Received]:
                    return [
                        r for r in sub.received if r.topic == f"{TOPIC_BASE}/node/{NODE}/{kind}"
                    ]

                def on_result() -> list[Received]:
                    result = f"{TOPIC_BASE}/command/node/{NODE}/result"
                    return [r for r in sub.received if r.topic == result]

                await sub.wait_for(lambda _got: len(on("event")) >= 3 and on("readings"), 15)
                # the same counter over other bytes: two boards with one identity
                reused = Readings({quantity_id("temperature"): -50}, now)
                os.write(pty.master, encode_serial(seal(reused, 4, keys)))
                await sub.wait_for(lambda _got: len(on("event")) >= 4, 15)
                await send_commands(broker)
                await sub.wait_for(lambda _got: len(on_result()) >= 3, 15)
                contact = Readings({quantity_id("temperature"): 220}, now)
                os.write(pty.master, encode_serial(seal(contact, 6, keys)))
                await sub.wait_for(lambda _got: len(on_result()) >= 4, 15)
                await until(
                    lambda: len({r.topic for r in sub.received}) >= 9, "retained topics", 10
                )
                problems = sub.contract_problems()
            assert problems == []  # the subscriber's exit checked it too
    finally:
        pty.close()

    events = {p[0]["n"]: p[0] for p in (senml_of(r, form) for r in on("event"))}
    assert set(events) == {"boot", "time_request", "event200", "counter_reuse"}
    assert events["boot"]["v"] == 1 and "vb" not in events["boot"]
    for name in ("time_request", "event200", "counter_reuse"):
        assert events[name]["vb"] is True and "v" not in events[name], events[name]
    assert {e["policy"] for e in events.values()} == {policy.hash}  # the alarm's too
    assert events["counter_reuse"]["mid"].startswith(f"{GATEWAY_ID}:{NODE}:alarm:counter_reuse:")
    (status,) = [senml_of(r, form) for r in on("status")]  # not the status without a field
    assert [(r["n"], r.get("v", r.get("vs", r.get("vb")))) for r in status] == [
        ("uptime", 5),
        ("firmware", "0.1.0"),
        ("clock_synced", False),
    ]
    assert result_states(on_result()) == [
        ("", "rejected", False, True),
        ("move", "applied", False, False),
        ("slower", "accepted", True, False),
        ("slower", "delivered", True, False),
    ]
    channels = {getattr(contract().channel(r.topic), "name", "") for r in sub.received}
    assert channels == {
        "commandConfigure",  # the test's own commands, which the subscriber sees too
        "commandResult",
        "availability",
        "metadata",
        "transparency",
        "transparencyText",
        "privacyBudget",
        "nodeReadings",
        "nodeStatus",
        "nodeEvent",
    }
    metadata = json.loads(next(r.payload for r in sub.received if r.topic.endswith("/metadata")))
    assert metadata["payload"] == form
