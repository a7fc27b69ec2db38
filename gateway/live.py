"""`edgeveil demo`: emulated nodes, the gateway and an embedded broker on this machine, with a
live view of everything the gateway publishes.

Nothing to install or configure: the nodes are the real node firmware on pseudo-terminals
(firmware/host), the gateway is the real service with its registry and spool in a temporary
directory, the broker is the embedded one. Ctrl-C stops it (or --duration).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import aiomqtt

from firmware.host.fleet import Fleet

from . import policies, senml
from .config import GatewayConfig, SerialPortConfig
from .registry import NodeRegistry
from .service import Gateway

# the default policy on a demo's clock (one-minute windows; environmental readings pass)
DEMO_POLICY = Path(policies.__file__).parent / "demo.toml"


def describe(topic: str, payload: bytes) -> str:
    """One line for the live view: what was published, in words a visitor can read."""
    tail = topic.split("/", 3)[-1]
    if tail.endswith(("availability",)):
        return f"{tail:<28} {payload.decode(errors='replace')}"
    try:
        data: Any = json.loads(payload)
    except ValueError:
        return f"{tail:<28} ({len(payload)} bytes)"
    if tail.endswith("transparency/text"):
        return f"{tail:<28} {payload.decode(errors='replace').splitlines()[0]}"
    if isinstance(data, dict):  # metadata, transparency statement, privacy budget
        return f"{tail:<28} {_document(tail, data)}"
    parts = []
    for entry in data:
        value = entry.get("v", entry.get("vs", entry.get("vb")))
        if tail.endswith("/event") and value is True:  # an event without a value: its name
            parts.append(str(entry.get("n")))
            continue
        unit = entry.get("u", "")
        if unit == "kg/m3" and isinstance(value, float):  # SenML's unit; people read µg/m³
            value, unit = round(value * 1e9), "µg/m³"
        parts.append(f"{entry.get('n')} {value}{' ' + unit if unit else ''}")
    return f"{tail:<28} {', '.join(parts)}"


def describe_records(topic: str, payload: bytes) -> list[str]:
    """describe() for each record of a message: a SenML message may hold several
    (senml.records), and each gets its own line."""
    try:
        data: Any = json.loads(payload)
    except ValueError:
        data = None
    if not isinstance(data, list):
        return [describe(topic, payload)]
    return [describe(topic, json.dumps(r).encode()) for r in senml.records(data)]


def _document(tail: str, data: dict[str, Any]) -> str:
    if tail.endswith("transparency"):
        policy = data.get("policy", {})
        name = policy.get("name", "?") if isinstance(policy, dict) else "?"
        return f"statement of the privacy policy {name!r}"
    if tail.endswith("privacy/budget"):
        spent = [
            f"{stream} {zone} {numbers.get('spent')} of {info.get('daily_cap')}"
            for stream, info in data.get("streams", {}).items()
            for zone, numbers in info.get("zones", {}).items()
        ]
        return f"epsilon spent today: {', '.join(spent) or 'none yet'}"
    return f"{data.get('software', '')}, {data.get('nodes', '?')} nodes"


async def _watch(gateway: Gateway, duration: float | None) -> int:
    mqtt = gateway.mqtt
    received = 0
    async with aiomqtt.Client(mqtt.host, mqtt.port, identifier="edgeveil-demo-view") as client:
        await client.subscribe(f"{mqtt.topic_prefix}/#", qos=1)
        deadline = None if duration is None else time.monotonic() + duration
        messages = client.messages
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                message = await asyncio.wait_for(anext(messages), timeout)
            except TimeoutError:
                return received
            payload = message.payload if isinstance(message.payload, bytes) else b""
            stamp = time.strftime("%H:%M:%S")
            for line in describe_records(str(message.topic), payload):
                print(f"{stamp}  {line}", flush=True)
            received += 1


# The demo's places, one per node in turn: a busy street, so that people counts are released
# (enough distinct devices a minute for k and the noise), an office, and a closed building at
# night, where counts stay suppressed (below k): both sides of the protection are seen.
DEMO_SCENARIOS = ("street", "office", "night")


def demo_scenarios(nodes: int) -> list[str]:
    return [DEMO_SCENARIOS[i % len(DEMO_SCENARIOS)] for i in range(nodes)]


async def _demo(nodes: int, duration: float | None, seed: int, workdir: Path) -> int:
    with Fleet(
        n=nodes,
        seed=seed,
        directory=workdir / "nodes",
        reading_interval=3,
        scenario=demo_scenarios(nodes),
    ) as fleet:
        state = workdir / "gateway"
        state.mkdir(mode=0o700)
        with NodeRegistry.open(state / "registry.db") as registry:
            registry.import_file(fleet.registry_path)
        config = GatewayConfig(
            site="demo-site",
            gateway_id="gateway-1",
            state_dir=state,
            serial=tuple(
                SerialPortConfig(name=f"node{i + 1}", url=node.device)
                for i, node in enumerate(fleet.nodes)
            ),
            metrics_listen=None,
            privacy_policy=DEMO_POLICY,
        )
        print(
            f"edgeveil demo: {nodes} emulated nodes on pseudo-terminals, the gateway, an "
            "embedded MQTT broker. Ctrl-C stops."
        )
        print(
            "Privacy policy: gateway/policies/demo.toml (readings pass; people counted per "
            "minute, with noise and k)"
        )
        for node in fleet.nodes:
            print(f"  node {node.node_id} on {node.device} (zone {node.zone})")
        print(
            "What leaves the gateway (BLE device addresses never do: at most a noisy count):\n",
            flush=True,
        )
        gateway = Gateway(config)
        service = asyncio.create_task(gateway.run(), name="gateway")
        try:
            await asyncio.wait_for(gateway.ready.wait(), 30)
            return await _watch(gateway, duration)
        finally:
            service.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await service


def run_demo(nodes: int = 3, duration: float | None = None, seed: int = 0) -> int:
    with tempfile.TemporaryDirectory(prefix="edgeveil-demo-") as tmp:
        try:
            received = asyncio.run(_demo(nodes, duration, seed, Path(tmp)))
        except KeyboardInterrupt:
            print("\nstopped")
            return 0
    print(f"\n{received} messages published")
    return 0
