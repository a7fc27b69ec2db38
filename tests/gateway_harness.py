"""Helpers for tests that run the gateway service: a policy that passes everything, message
ids, a per-test deadline, the gateway as a task of the test's loop (waiting for conditions:
tests/waiting.py)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from gateway.config import GatewayConfig, MqttConfig
from gateway.privacy import PrivacyStage
from gateway.records import Record
from gateway.service import Gateway
from protocol import Message
from protocol.quantities import QUANTITIES

from .mosquitto import Mosquitto, Received
from .waiting import until

TestFunction = Callable[..., Awaitable[None]]

DELIVERY_POLICY = f"""name = "e2e delivery"

[[streams]]
name = "readings"
message = "readings"
quantities = {json.dumps([q[1] for q in QUANTITIES])}
action = "pass"

[[streams]]
name = "health"
message = "status"
action = "pass"

[[streams]]
name = "events"
message = "event"
action = "pass"
"""


def write_policy(directory: Path) -> Path:
    path = directory / "delivery-policy.toml"
    path.write_text(DELIVERY_POLICY, encoding="utf-8")
    return path


async def ingest_settled(gateway: Gateway, timeout: float = 10.0) -> None:
    """Wait until the gateway's ingest has processed, whole, every frame it was given before
    this call (stored, acknowledged, counted; or refused): a positive event, not a pause."""
    given = gateway.ingest.received
    await until(
        lambda: gateway.ingest.finished >= given,
        "the ingest finishes the frames it was given",
        timeout,
        detail=lambda: (gateway.ingest.finished, given),
    )


def mid_of(r: Received) -> str:
    return str(json.loads(r.payload)[0]["mid"])


def parse_mid(mid: str) -> tuple[str, int, int]:
    """(gateway, node id, frame counter) of a message id."""
    gateway, node, counter, part = mid.split(":")
    assert part == "0", mid
    return gateway, int(node), int(counter)


class PrivacySpy:
    """Between ingest and the privacy stage, changing nothing: a subclass's process() looks at
    each message, then returns super().process(...)."""

    def __init__(self, inner: PrivacyStage) -> None:
        self.inner = inner

    def stage(self) -> None:
        self.inner.stage()

    def commit(self, stored: Callable[[int, int], bool]) -> None:
        self.inner.commit(stored)

    def process(
        self, node_id: int, zone: str, counter: int, message: Message, arrival: float
    ) -> list[Record]:
        return self.inner.process(node_id, zone, counter, message, arrival)


def deadline(seconds: float) -> Callable[[TestFunction], TestFunction]:
    """Fail a test that runs longer than `seconds` (its clean-up still runs) instead of hanging:
    every wait inside has its own timeout, this is the last resort."""

    def wrap(test: TestFunction) -> TestFunction:
        @functools.wraps(test)
        async def run(*args: Any, **kwargs: Any) -> None:
            async with asyncio.timeout(seconds):
                await test(*args, **kwargs)

        return run

    return wrap


@contextlib.asynccontextmanager
async def running_gateway(config: GatewayConfig) -> AsyncIterator[Gateway]:
    """The gateway service as a task of this event loop; cancelled (a clean stop) at the end."""
    gateway = Gateway(config)
    task = asyncio.create_task(gateway.run(), name="gateway")
    ready = asyncio.create_task(gateway.ready.wait(), name="gateway ready")
    try:
        await asyncio.wait((task, ready), timeout=15, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # raises what stopped it
        assert gateway.ready.is_set(), "the gateway did not start within 15 s"
        yield gateway
    finally:
        ready.cancel()
        task.cancel()
        async with asyncio.timeout(15):  # a gateway that does not stop is a failure
            with contextlib.suppress(asyncio.CancelledError):
                await task
            with contextlib.suppress(asyncio.CancelledError):
                await ready


def delivery_config(
    tmp_path: Path, state: Path, broker: Mosquitto, site: str, gateway_id: str, **links: Any
) -> GatewayConfig:
    """A gateway on `broker` that lets everything pass (write_policy), no metrics endpoint;
    `links` are GatewayConfig's link fields, e.g. packet_forwarders=(...)."""
    return GatewayConfig(
        site=site,
        gateway_id=gateway_id,
        state_dir=state,
        mqtt=MqttConfig(host=broker.host, port=broker.port),
        metrics_listen=None,
        privacy_policy=write_policy(tmp_path),
        **links,
    )
