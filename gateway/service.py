"""The gateway service: wires the stages together and keeps them running.

    transport ─► link ─► ingest ─► privacy ─► spool ─► uplink ─► MQTT broker
    (serial)    (bytes    (verify,   (what may   (SQLite,   (aiomqtt,
                 ->frames) replay)    leave)      durable)   QoS 1)

Long-lived resources (registry, spool, embedded broker, metrics server) are opened in an exit
stack; the background loops are named tasks in one asyncio.TaskGroup. None of them ends on bad
input: a transport waits for its port, the uplink for its broker, ingest drops bad frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from prometheus_client import start_http_server

from protocol import NEED_DATA, RemoteProtocolError, StreamDecoder

from . import __version__, systemd
from .broker import EmbeddedBroker
from .config import GatewayConfig, MqttConfig
from .errors import EdgeveilError
from .ingest import Ingest
from .metrics import Metrics
from .privacy import DefaultPolicy
from .records import OutMessage, Topics
from .registry import NodeRegistry
from .spool import Spool
from .transport import SerialTransport
from .uplink import Uplink

log = logging.getLogger("edgeveil.gateway")

HOUSEKEEPING_S = 5.0


class Gateway:
    """One gateway. `await Gateway(config).run()` serves until cancelled."""

    # set by run() before any task starts
    registry: NodeRegistry
    spool: Spool
    mqtt: MqttConfig  # the broker in use: configured, or the embedded one
    uplink: Uplink
    ingest: Ingest

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.started = time.time()
        self.ready = asyncio.Event()
        self.transports: dict[str, SerialTransport] = {}
        self._decoders: dict[str, StreamDecoder] = {}
        self.link_states: dict[str, str] = {}

    # -- link layer: bytes from a transport become frames for ingest ---------------------------

    def _on_data(self, port: str, data: bytes) -> None:
        decoder = self._decoders[port]
        decoder.feed(data)
        while True:
            try:
                frame = decoder.next_event()
            except RemoteProtocolError as exc:
                # line noise or the node's console text: counted, never logged (no content)
                self.metrics.line_errors.labels(port, exc.reason_name).inc()
                continue
            if frame is NEED_DATA or not isinstance(frame, bytes):
                return
            self.ingest.submit(port, frame)

    def _on_state(self, port: str, state: str) -> None:
        was = self.link_states.get(port)
        self.link_states[port] = state
        if state == "open":
            self._decoders[port] = StreamDecoder()  # no half frame from before an unplug
            self.metrics.link_up.labels(port).set(1)
        else:
            if was == "open":
                self.metrics.link_disconnects.labels(port).inc()
            self.metrics.link_up.labels(port).set(0)

    async def _send(self, port: str, data: bytes) -> bool:
        transport = self.transports.get(port)
        return await transport.write(data) if transport is not None else False

    def _published(self, message: OutMessage, seconds: float | None) -> None:
        self.metrics.published.inc()
        if seconds is not None:
            self.metrics.latency.observe(seconds)

    # -- housekeeping: spool expiry, gauges, systemd watchdog ----------------------------------

    async def _housekeeping(self) -> None:
        watchdog = systemd.watchdog_interval()
        interval = min(HOUSEKEEPING_S, watchdog) if watchdog else HOUSEKEEPING_S
        dropped = {"full": 0, "age": 0}
        while True:
            spool = self.spool
            await asyncio.to_thread(spool.expire)
            m = self.metrics
            m.spool_depth.set(spool.depth)
            m.spool_oldest_age.set(spool.oldest_age() or 0)
            m.broker_connected.set(1 if self.uplink.connected else 0)
            m.registered_nodes.set(len(self.registry))
            for reason, count in (("full", spool.dropped_full), ("age", spool.dropped_age)):
                m.spool_dropped.labels(reason).inc(count - dropped[reason])
                dropped[reason] = count
            systemd.notify("WATCHDOG=1")  # the loop is alive: it got here
            await asyncio.sleep(interval)

    def metadata(self) -> dict[str, Any]:
        return {
            "site": self.config.site,
            "gateway": self.config.gateway_id,
            "software": f"edgeveil {__version__}",
            "started": int(self.started),
            "nodes": len(self.registry),
            "serial_ports": [p.name for p in self.config.serial],
            "payload": self.mqtt.payload,
            "privacy_policy": "default: readings, status and events pass; observations denied",
        }

    @contextlib.asynccontextmanager
    async def _resources(self) -> AsyncIterator[None]:
        config = self.config
        try:
            config.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise EdgeveilError(
                f"cannot create the state directory {config.state_dir}: {exc.strerror}"
            ) from None
        with contextlib.ExitStack() as stack:
            self.registry = stack.enter_context(NodeRegistry.open(config.state_dir / "registry.db"))
            self.spool = stack.enter_context(
                Spool.open(
                    config.state_dir / "spool.db",
                    config.spool.max_messages,
                    config.spool.max_age_s,
                    config.spool.when_full,
                )
            )
            if config.metrics_listen:
                host, _, port = config.metrics_listen.rpartition(":")
                try:
                    server, _thread = start_http_server(
                        int(port), host.strip("[]"), registry=self.metrics.registry
                    )
                except OSError as exc:  # port taken, or an address this host does not have
                    raise EdgeveilError(
                        f"metrics.listen {config.metrics_listen}: cannot listen: "
                        f"{exc.strerror or exc}"
                    ) from None
                stack.callback(server.shutdown)
            async with contextlib.AsyncExitStack() as astack:
                if config.mqtt is None:
                    broker = await astack.enter_async_context(EmbeddedBroker())
                    log.info(
                        "no [mqtt] configured: embedded broker on %s:%d", broker.host, broker.port
                    )
                    self.mqtt = MqttConfig(host=broker.host, port=broker.port)
                else:
                    self.mqtt = config.mqtt
                yield

    async def run(self) -> None:
        async with self._resources():
            config = self.config
            topics = Topics(self.mqtt.topic_prefix, config.site, config.gateway_id)
            self.uplink = Uplink(
                self.mqtt, self.spool, topics, self.metadata(), on_published=self._published
            )
            self.ingest = Ingest(
                self.registry,
                DefaultPolicy(config.gateway_id),
                self.spool,
                topics,
                self.mqtt.payload,
                self._send,
                self.uplink.notify,
                self.metrics,
            )
            for port in config.serial:
                self._decoders[port.name] = StreamDecoder()
                self.metrics.link_up.labels(port.name).set(0)
                self.transports[port.name] = SerialTransport(port, self._on_data, self._on_state)
            log.info(
                "gateway %s/%s: %d nodes registered, %d serial ports, broker %s:%d",
                config.site,
                config.gateway_id,
                len(self.registry),
                len(config.serial),
                self.mqtt.host,
                self.mqtt.port,
            )
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.uplink.run(), name="uplink")
                tg.create_task(self.ingest.run(), name="ingest")
                for transport in self.transports.values():
                    tg.create_task(transport.run(), name=transport.task_name)
                tg.create_task(self._housekeeping(), name="housekeeping")
                systemd.notify("READY=1")
                self.ready.set()


def with_ports(config: GatewayConfig, devices: dict[str, str]) -> GatewayConfig:
    """The configuration plus serial ports by name -> device path (for demo and tests)."""
    from .config import SerialPortConfig  # noqa: PLC0415

    ports = tuple(SerialPortConfig(name=n, url=d) for n, d in devices.items())
    return replace(config, serial=config.serial + ports)
