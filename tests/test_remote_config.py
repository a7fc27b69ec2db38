"""Remote configuration of nodes (gateway/node_config.py): commands from MQTT or the command
line, checked with the node firmware's own rules, kept in the registry's file, delivered as
sealed config_updates and followed to the node's answer; results on MQTT; only clients the
broker's ACL allows may send them (examples/mosquitto-acl.conf, on a real Mosquitto)."""

from __future__ import annotations

import itertools
import json
import statistics
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from gateway import config as config_mod
from gateway.config import MqttConfig
from gateway.node_config import (
    FIRST_VERSION,
    MAX_OPEN,
    MAX_SENDS,
    RESEND_S,
    CommandRejected,
    NodeConfigs,
    parse_assignments,
)
from gateway.records import OutMessage, Topics
from gateway.registry import NodeRegistry

from .command import ROOT, edgeveil
from .gateway_harness import deadline, delivery_config, running_gateway
from .mosquitto import Mosquitto, mosquitto_passwd, subscribed
from .test_gateway_e2e import BASE, serial_site
from .waiting import until

TOPICS = Topics("edgeveil", "site", "gw")
SECRET = bytes(range(16))


def results(published: list[OutMessage]) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in published]


@pytest.fixture
def configs(tmp_path: Path) -> tuple[NodeConfigs, NodeRegistry, list[OutMessage]]:
    registry = NodeRegistry.open(tmp_path / "registry.db")
    registry.add(7, SECRET, "south")
    published: list[OutMessage] = []

    async def publish(messages: list[OutMessage]) -> None:
        published.extend(messages)

    return NodeConfigs(registry, TOPICS, publish), registry, published


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"reading_interval_s": 0}, "reading_interval_s: must be a whole number 1..86400000"),
        ({"status_interval_s": True}, "status_interval_s: must be a whole number"),
        ({"ble_scan": 1}, "ble_scan: must be true or false"),
        ({"zone": "x" * 33}, "zone: must be text of at most 32 bytes"),
        ({"zone": ""}, "zone: must not be empty"),
        ({"key_epoch": 3}, "key_epoch: not a setting a node takes remotely"),
        ({"policy": "open"}, "policy: not a setting a node takes remotely"),
        ({}, "settings: must name at least one setting"),
        ([300], "settings: must name at least one setting"),
    ],
)
@pytest.mark.asyncio
async def test_a_wrong_command_is_rejected_and_nothing_is_stored(
    configs: tuple[NodeConfigs, NodeRegistry, list[OutMessage]], settings: Any, words: str
) -> None:
    nc, registry, published = configs
    with pytest.raises(CommandRejected, match=words):
        await nc.submit(7, "c1", settings, source="mqtt")
    assert registry.commands(7) == [] and published == []
    assert registry.get(7) is not None and registry.get(7).zone == "south"  # type: ignore[union-attr]


@pytest.mark.asyncio
async def test_unknown_and_revoked_nodes_and_bad_ids_are_rejected(
    configs: tuple[NodeConfigs, NodeRegistry, list[OutMessage]],
) -> None:
    nc, registry, _ = configs
    with pytest.raises(CommandRejected, match="node 8 is not registered"):
        await nc.submit(8, "c1", {"reading_interval_s": 60}, source="cli")
    with pytest.raises(CommandRejected, match="id: 1 to 64"):
        await nc.submit(7, "no spaces", {"reading_interval_s": 60}, source="cli")
    registry.revoke(7)
    with pytest.raises(CommandRejected, match="node 7 is revoked"):
        await nc.submit(7, "c1", {"reading_interval_s": 60}, source="cli")


@pytest.mark.asyncio
async def test_commands_are_versioned_bounded_durable_and_taken_once(
    configs: tuple[NodeConfigs, NodeRegistry, list[OutMessage]], tmp_path: Path
) -> None:
    nc, registry, published = configs
    first = await nc.submit(7, "c1", {"reading_interval_s": 60}, source="mqtt", by="ops")
    again = await nc.submit(7, "c1", {"reading_interval_s": 60}, source="mqtt", by="ops")
    assert first.version == FIRST_VERSION and again.seq == first.seq  # a QoS 1 duplicate
    for n in range(2, MAX_OPEN + 1):
        command = await nc.submit(7, f"c{n}", {"status_interval_s": 60 * n}, source="cli")
        assert command.version == FIRST_VERSION + n - 1
    with pytest.raises(CommandRejected, match=f"node 7 has {MAX_OPEN} commands waiting"):
        await nc.submit(7, "c9", {"reading_interval_s": 5}, source="cli")
    assert [r["state"] for r in results(published)] == ["accepted"] * MAX_OPEN
    assert results(published)[0] == {
        "id": "c1",
        "node": 7,
        "state": "accepted",
        "source": "mqtt",
        "by": "ops",
        "time": results(published)[0]["time"],
        "version": FIRST_VERSION,
    }
    assert published[0].topic == "edgeveil/site/gw/command/node/7/result"
    registry.close()
    # a restart keeps them, in order
    with NodeRegistry.open(tmp_path / "registry.db") as reopened:
        kept = reopened.open_commands(7)
        assert [c.id for c in kept] == ["c1", "c2", "c3", "c4"]
        assert kept[0].settings == {"reading_interval_s": 60} and kept[0].by == "ops"


@pytest.mark.asyncio
async def test_a_zone_alone_is_applied_by_the_gateway_at_once(
    configs: tuple[NodeConfigs, NodeRegistry, list[OutMessage]],
) -> None:
    nc, registry, published = configs
    command = await nc.submit(7, "z", {"zone": "north"}, source="cli")
    assert command.state == "applied" and command.version is None
    assert registry.get(7).zone == "north"  # type: ignore[union-attr]
    assert registry.open_commands(7) == [] and await nc.due(7) is None
    assert [r["state"] for r in results(published)] == ["applied"]
    # with node settings, the zone changes now and the rest goes to the node
    mixed = await nc.submit(7, "m", {"zone": "west", "reading_interval_s": 30}, source="cli")
    assert registry.get(7).zone == "west"  # type: ignore[union-attr]
    assert mixed.settings == {"reading_interval_s": 30} and mixed.state == "accepted"


@pytest.mark.asyncio
async def test_delivery_until_the_node_answers_or_gives_up(
    configs: tuple[NodeConfigs, NodeRegistry, list[OutMessage]],
) -> None:
    nc, registry, published = configs
    one = await nc.submit(7, "one", {"reading_interval_s": 30}, source="cli")
    two = await nc.submit(7, "two", {"reading_interval_s": 40}, source="cli")
    now = 1_000_000.0
    due = await nc.due(7, now)
    assert due is not None and due.id == "one"
    await nc.sent(due, now)
    assert await nc.due(7, now + 1) is None  # sent a moment ago: not again yet
    for n in range(1, MAX_SENDS):
        due = await nc.due(7, now + n * RESEND_S)
        assert due is not None and due.id == "one"
        await nc.sent(due, now + n * RESEND_S)
    assert registry.open_commands(7)[0].sends == MAX_SENDS
    # no answer to any delivery: it fails, and the next command is due
    due = await nc.due(7, now + 10 * RESEND_S)
    assert due is not None and due.id == "two"
    await nc.sent(due, now + 10 * RESEND_S)
    await nc.answered(7, one.version or 0, applied=True)  # too late: it failed already
    await nc.answered(7, (two.version or 0) + 5, applied=True)  # a version never sent
    await nc.answered(7, two.version or 0, applied=False)
    states = [(r["id"], r["state"], r.get("reason")) for r in results(published)]
    assert states == [
        ("one", "accepted", None),
        ("two", "accepted", None),
        ("one", "delivered", None),
        ("one", "failed", f"the node did not answer {MAX_SENDS} deliveries"),
        ("two", "delivered", None),
        ("two", "rejected", "the node rejected it"),
    ]
    history = registry.commands(7)
    assert [(c.id, c.state) for c in history] == [("two", "rejected"), ("one", "failed")]


@pytest.mark.asyncio
async def test_mqtt_payloads_that_are_not_commands_are_rejected_with_a_result(
    configs: tuple[NodeConfigs, NodeRegistry, list[OutMessage]],
) -> None:
    nc, registry, published = configs
    topic = "edgeveil/site/gw/command/node/7/configure"
    assert await nc.handle_mqtt(topic, b"not json") is None
    assert await nc.handle_mqtt(topic, b'{"id": "a", "settings": {}, "extra": 1}') is None
    got = await nc.handle_mqtt(topic, b'{"id": "b", "settings": {"max_retries": 3}}')
    assert got is not None and got.settings == {"max_retries": 3}
    assert await nc.handle_mqtt("edgeveil/site/gw/command/node/x/configure", b"{}") is None
    reasons = [(r["state"], r.get("reason", "")) for r in results(published)]
    assert reasons[0][0] == "rejected" and "JSON object" in reasons[0][1]
    assert reasons[1] == ("rejected", "unknown field 'extra' (id, settings, by)")
    assert reasons[2] == ("accepted", "")
    assert len(reasons) == 3  # a topic that names no node is only logged
    assert [c.id for c in registry.open_commands(7)] == ["b"]


def test_command_line_settings() -> None:
    assert parse_assignments(["reading_interval_s=300", "ble_scan=false", "zone=42"]) == {
        "reading_interval_s": 300,
        "ble_scan": False,
        "zone": "42",
    }
    with pytest.raises(CommandRejected, match="name=value"):
        parse_assignments(["reading_interval_s"])
    with pytest.raises(CommandRejected, match="'soon' is not a whole number"):
        parse_assignments(["reading_interval_s=soon"])


# -- a real node, a real gateway, a real broker ----------------------------------------------


def readings_times(received: list[Any], node_id: int) -> list[float]:
    """The SenML base times of the node's readings (its clock once synced), in order."""
    out = []
    for r in received:
        if r.topic == f"{BASE}/node/{node_id}/readings":
            out.append(float(json.loads(r.payload)[0]["bt"]))
    return out


@pytest.mark.slow  # end to end: an emulated board, readings 4 s apart
@pytest.mark.asyncio
@deadline(90)
async def test_a_command_over_mqtt_reaches_a_serial_node_which_applies_it(
    tmp_path: Path,
) -> None:
    with serial_site(tmp_path, 1, seed=3) as (broker, fleet, config_file):
        node_id = fleet.nodes[0].node_id
        command_topic = f"{BASE}/command/node/{node_id}/configure"
        async with (
            subscribed(broker, f"{BASE}/#") as sub,
            running_gateway(config_mod.load(config_file)) as gateway,
            aiomqtt.Client(broker.host, broker.port) as client,
        ):

            def states(command_id: str) -> list[str]:
                return [
                    json.loads(r.payload)["state"]
                    for r in sub.received
                    if r.topic.endswith("/result") and json.loads(r.payload)["id"] == command_id
                ]

            await until(lambda: len(readings_times(sub.received, node_id)) >= 3, "readings", 20)
            # a wrong command: rejected with its reason, nothing stored, nothing sent
            bad = {"id": "bad", "settings": {"reading_interval_s": 0}}
            await client.publish(command_topic, json.dumps(bad), qos=1)
            await until(lambda: states("bad") == ["rejected"], "the rejection", 10)
            assert gateway.registry.commands(node_id) == []
            # a good one: accepted, delivered over the serial line at once, applied by the node
            good = {"id": "slower", "settings": {"reading_interval_s": 4}, "by": "test"}
            await client.publish(command_topic, json.dumps(good), qos=1)
            await until(
                lambda: states("slower") == ["accepted", "delivered", "applied"],
                "the node applies the command",
                20,
                detail=lambda: states("slower"),
            )
            applied_at = len(readings_times(sub.received, node_id))
            await until(
                lambda: len(readings_times(sub.received, node_id)) >= applied_at + 4,
                "readings at the new interval",
                30,
            )
            # the node's readings now come at least 4 s apart on its own clock, where it was
            # told 1 s (a lower bound: a busy machine only makes them later, never sooner)
            times = readings_times(sub.received, node_id)
            after = [b - a for a, b in itertools.pairwise(times[applied_at + 1 :])]
            assert statistics.median(after) >= 3.5, (times, applied_at)
            history = gateway.registry.commands(node_id)
            assert [(c.id, c.state, c.sends) for c in history] == [("slower", "applied", 1)]
            assert history[0].source == "mqtt" and history[0].by == "test"

        # the command line sees the history, with the gateway stopped
        shown = edgeveil("gateway", "nodes", "show", str(node_id), "--config", str(config_file))
        assert shown.returncode == 0, shown.stderr
        assert "slower  mqtt (test)" in shown.stdout and "applied after 1 delivery" in shown.stdout


@pytest.mark.slow  # end to end: an emulated board
@pytest.mark.asyncio
@deadline(90)
async def test_a_command_taken_while_the_gateway_is_down_reaches_the_node_after_the_start(
    tmp_path: Path,
) -> None:
    with serial_site(tmp_path, 1, seed=5) as (broker, fleet, config_file):
        node_id = fleet.nodes[0].node_id
        result = edgeveil(
            "gateway",
            "nodes",
            "configure",
            str(node_id),
            "reading_interval_s=3",
            "zone=harbour",
            "--by",
            "night-shift",
            "--config",
            str(config_file),
        )
        assert result.returncode == 0, result.stderr
        assert f"accepted as version {FIRST_VERSION}" in result.stdout
        wrong = edgeveil(
            "gateway",
            "nodes",
            "configure",
            str(node_id),
            "key_epoch=9",
            "--config",
            str(config_file),
        )
        assert wrong.returncode == 2 and "key_epoch: not a setting" in wrong.stderr
        async with (
            subscribed(broker, f"{BASE}/command/#") as sub,
            running_gateway(config_mod.load(config_file)) as gateway,
        ):
            await until(
                lambda: (
                    [json.loads(r.payload)["state"] for r in sub.received]
                    == ["delivered", "applied"]
                ),
                "the stored command delivered and applied after the start",
                30,
                detail=lambda: [r.payload for r in sub.received],
            )
            (command,) = gateway.registry.commands(node_id)
            assert (command.source, command.by, command.state) == ("cli", "night-shift", "applied")
            assert gateway.registry.get(node_id).zone == "harbour"  # type: ignore[union-attr]


@pytest.mark.asyncio
@deadline(60)
async def test_only_clients_the_acl_allows_can_configure_a_node(tmp_path: Path) -> None:
    """The shipped ACL on a real Mosquitto: a consumer's command never reaches the gateway
    (the broker drops it), an operator's does."""
    passwd = tmp_path / "passwd"
    for user in ("edgeveil-gateway", "operator", "dashboard"):
        mosquitto_passwd(passwd, user, f"{user} secret")
    (tmp_path / "gateway-password").write_text("edgeveil-gateway secret\n")
    (tmp_path / "gateway-password").chmod(0o600)
    acl = ROOT / "examples" / "mosquitto-acl.conf"
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    with NodeRegistry.open(state / "registry.db") as registry:
        registry.add(7, SECRET, "south")
    with Mosquitto(tmp_path / "mosquitto", password_file=passwd, extra=f"acl_file {acl}") as broker:
        config = delivery_config(tmp_path, state, broker, "site", "gw")
        mqtt = MqttConfig(
            host=broker.host,
            port=broker.port,
            username="edgeveil-gateway",
            password_file=tmp_path / "gateway-password",
        )
        config = config_mod.GatewayConfig(**{**config.__dict__, "mqtt": mqtt})
        topic = "edgeveil/site/gw/command/node/7/configure"
        async with (
            subscribed(
                broker,
                "edgeveil/site/gw/command/#",
                username="operator",
                password="operator secret",  # noqa: S106
            ) as sub,
            running_gateway(config) as gateway,
        ):
            # connected: announced and subscribed (the uplink subscribes before it says so)
            await until(lambda: gateway.uplink.connected, "the gateway is connected", 10)
            for user, command_id in (("dashboard", "from-dashboard"), ("operator", "from-ops")):
                async with aiomqtt.Client(
                    broker.host, broker.port, username=user, password=f"{user} secret"
                ) as client:
                    body = {"id": command_id, "settings": {"reading_interval_s": 60}}
                    await client.publish(topic, json.dumps(body), qos=1)
            # the dashboard published first, and the broker hands the gateway (and the
            # operator's subscription) one client's messages after the other's in that
            # order: once the operator's command and its result are here, a dashboard
            # command that had passed would be here too
            await until(
                lambda: sum(b"from-ops" in r.payload for r in sub.received) >= 2,
                "the operator's command and its result",
                10,
            )
            assert [c.id for c in gateway.registry.commands(7)] == ["from-ops"]
            # the operator's subscription covers the command topics too: the dashboard's
            # command never passed the broker, the operator's did (and its result)
            assert not any(b"from-dashboard" in r.payload for r in sub.received)
            assert sum(b"from-ops" in r.payload for r in sub.received) == 2
