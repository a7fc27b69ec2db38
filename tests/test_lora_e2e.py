"""End to end over LoRa: 200 emulated LoRa nodes -> the simulated channel -> two emulated packet
forwarders -> real UDP on localhost -> the gateway's packet forwarder server (gateway/lora) ->
ingest, privacy, spool, uplink -> a real Mosquitto -> a subscriber.

The channel simulator decides which frames reach which gateway (collisions, capture, range);
the test holds the rest of the system to that: every frame the channel delivered to at least
one gateway must arrive on MQTT exactly once (two gateways hearing the same frame are merged
by the server, a replay by the ingest), and nothing else may arrive. The delivery ratio is
computed from what the subscriber received against what the nodes sent, and printed.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from firmware.host.lora_fleet import LoraFleet
from gateway.config import PacketForwarderConfig
from gateway.registry import NodeRegistry
from protocol import Readings, seal
from protocol.quantities import quantity_id

from .gateway_harness import deadline, delivery_config, parse_mid, running_gateway
from .mosquitto import Mosquitto, subscribed
from .test_lora_gateway import FakeForwarder
from .waiting import until

pytestmark = pytest.mark.slow  # end to end: scripts/test -m "not slow" skips it

SITE = "lora-site"
GATEWAY_ID = "gw-lora"
NODES = 200
SIM_SECONDS = 240  # simulated: each node sends about 4 readings


@pytest.mark.asyncio
@deadline(90)
async def test_200_lora_nodes_deliver_what_the_channel_delivered(tmp_path: Path) -> None:
    fleet = LoraFleet(NODES, gateways=2, seed=7, reading_interval=60, sf=9)  # servers: below
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    fleet.write_registry(tmp_path / "registry.json")
    with NodeRegistry.open(state / "registry.db") as registry:
        assert registry.import_file(tmp_path / "registry.json") == NODES

    with Mosquitto(tmp_path / "mosquitto") as broker:
        euis = tuple(gw.eui.hex().upper() for gw in fleet.gateways)
        config = delivery_config(
            tmp_path,
            state,
            broker,
            SITE,
            GATEWAY_ID,
            packet_forwarders=(
                PacketForwarderConfig(
                    name="lora", host="127.0.0.1", port=0, gateways=euis, acks=False
                ),
            ),
        )
        base = f"edgeveil/{SITE}/{GATEWAY_ID}"
        async with (
            subscribed(broker, f"{base}/node/#") as sub,
            running_gateway(config) as gateway,
        ):
            # the port the system chose, read back: no port to lose to another process
            server = await until(lambda: gateway.lora["lora"].address, "the server listens", 10)
            fleet.servers = [server]
            await sub.wait_subscribed()
            report = await fleet.run(SIM_SECONDS, speed=None)
            expected = report.delivered_frames

            def arrived() -> list[tuple[int, int]]:
                out = []
                for r in sub.received:
                    if r.topic.endswith("/readings"):
                        _, node, counter = parse_mid(str(json.loads(r.payload)[0]["mid"]))
                        out.append((node, counter))
                return out

            await until(
                lambda: set(arrived()) >= expected,
                "every frame the channel delivered is on MQTT",
                timeout=30,
                detail=lambda: f"{len(set(arrived()))} of {len(expected)}",
            )
            # anything extra or doubled was sent before a marker frame of the test's own:
            # the server takes datagrams in order, and the gateway publishes what it
            # accepts in that order; once the marker is on MQTT, nothing else is coming
            node = fleet.nodes[0]
            marker = (node.node_id, node.counter)  # the node's next counter, never sent
            forwarder = FakeForwarder(euis[0], server)
            try:
                frame = seal(Readings({quantity_id("temperature"): 200}), node.counter, node.keys)
                forwarder.push_data(frame, rssi=-80, tmst=1)
                await until(lambda: marker in arrived(), "the marker frame on MQTT", 10)
            finally:
                forwarder.close()

    got = [frame for frame in arrived() if frame != marker]
    doubled = [frame for frame, n in Counter(got).items() if n > 1]
    assert not doubled, f"{len(doubled)} frames arrived more than once, e.g. {doubled[:3]}"
    assert set(got) == expected, f"{len(set(got) - expected)} frames the channel did not deliver"
    sent = sum(len(node.sent) for node in fleet.nodes)
    ratio = len(got) / sent
    heard_by_both = sum(
        1 for tx in fleet.transmissions if len(tx.receptions) == len(fleet.gateways)
    )
    print(
        f"\n{NODES} LoRa nodes, SF9, {len(fleet.gateways)} gateways, {SIM_SECONDS} s simulated, "
        f"offered load G = {report.offered_load:.2f} Erlang: {sent} frames sent, {len(got)} on "
        f"MQTT, delivery ratio {ratio:.3f} (channel: {report.delivery_ratio:.3f}; lost "
        f"{report.losses}; {heard_by_both} frames heard by both gateways, merged)"
    )
    assert ratio == report.delivery_ratio
    assert sent == report.sent >= NODES * 3
    assert 0.2 < ratio < 1.0  # G ~0.7 on one channel: ALOHA with capture and two gateways
    # acks are off on this link: no downlink was sealed, so no downlink counter was reserved
    with sqlite3.connect(state / "registry.db") as db:
        assert db.execute("SELECT COUNT(*) FROM downlink").fetchone() == (0,)
