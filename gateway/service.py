"""The gateway service: wires the stages together and keeps them running.

    transport ─► link ─► ingest ─► privacy ─► spool ─► uplink ─► MQTT broker
    (serial)    (bytes    (verify,   (what may   (SQLite,   (aiomqtt,
                 ->frames) replay)    leave)      durable)   QoS 1)

Long-lived resources (registry, spool, privacy ledger, embedded broker, metrics server) are
opened in an exit stack; the background loops are named tasks in one asyncio.TaskGroup. None of
them ends on bad input: a transport waits for its port, the uplink for its broker, ingest drops
bad frames.

The privacy stage is a PolicyEngine (gateway/privacy/engine.py) driven by the policy file of
`[privacy] policy` (default: the shipped default policy). Its task "privacy-windows" releases
due windows every second (gateway clock, UTC-aligned windows) into the spool, and publishes,
retained, the transparency statement of the policy in force (`{base}/transparency`, JSON, and
`{base}/transparency/text`, English) and after each release the day's privacy budget
(`{base}/privacy/budget`). Both are spooled like any message (and spooled again after a
reconnect, as a broker without persistence forgets retained messages). SIGHUP
(`reload_policy()`) reads the policy file again and applies it without losing window state
(PolicyEngine.reload); a policy file with an error is logged and the running policy kept.

Storage (gateway/sqlite.py): the three stores share one StorageHealth. A write the disk
refuses never stops the service: ingest acknowledges nothing it could not store, the uplink
keeps what it could not delete, window releases that could not be spooled wait in memory
(UNSPOOLED_LIMIT) and are spooled again every second, the ledger releases nothing it could
not book. Housekeeping turns the health into metrics and into the availability topic
("degraded"). A store that cannot be opened for the disk's sake (a full disk at the first
start) is tried again every STORE_RETRY_S instead of ending the service.

Home Assistant discovery (gateway/homeassistant.py, `[homeassistant] discovery`): the task
"homeassistant" spools the retained discovery messages of the zones and nodes served under the
policy in force, and again when they change or after a reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import start_http_server

from protocol import NEED_DATA, RemoteProtocolError, StreamDecoder, encode_serial

from . import __version__, senml, systemd
from .broker import EmbeddedBroker
from .config import GatewayConfig, MqttConfig
from .errors import ConfigError, EdgeveilError, SpoolFullError, StorageError
from .homeassistant import Discovery
from .ingest import Ingest
from .lora.radio import RadioMeta
from .metrics import Metrics
from .node_config import NodeConfigs
from .node_health import SAVE_S as HEALTH_SAVE_S
from .node_health import HealthBook
from .privacy import PolicyEngine, PrivacyLedger
from .privacy import policy as policy_mod
from .privacy.engine import check as check_policy
from .privacy.explain import statement_json, statement_text
from .privacy.policy import Policy
from .records import OutMessage, Record, Topics
from .registry import NodeRegistry
from .spool import Spool
from .sqlite import (
    StorageHealth,
    free_bytes,
    make_reserve,
    release_reserve,
    state_dir_bytes,
)
from .transport import SerialTransport
from .uplink import Uplink
from .zones import SharedZones, served_zones

if TYPE_CHECKING:
    from .lora.forwarder import ForwarderTransport
    from .lora.spi import SpiTransport

log = logging.getLogger("edgeveil.gateway")

HOUSEKEEPING_S = 5.0
RELEASE_TICK_S = 1.0  # how often the privacy engine's due windows are released
STORE_RETRY_S = 5.0  # a store the disk does not let open is tried again this often
# released windows kept in memory while the spool cannot write (their aggregates cannot be
# produced again); beyond this the oldest are dropped and counted (spool_dropped "storage")
UNSPOOLED_LIMIT = 10_000
STORES = ("spool", "registry", "privacy ledger")

T = TypeVar("T")


def load_policy(config: GatewayConfig) -> Policy:
    """The configured privacy policy, one the engine can apply; ConfigError (naming the file
    and, where it can, the key) if it is not."""
    path = config.privacy_policy
    try:
        policy = policy_mod.default() if path is None else policy_mod.load(path)
    except (TypeError, ValueError) as exc:  # a value of a type the schema does not check
        raise ConfigError("", f"a value has the wrong type ({exc})", str(path)) from None
    check_policy(policy)
    return policy


class Gateway:
    """One gateway. `await Gateway(config).run()` serves until cancelled."""

    # set by run() before any task starts
    registry: NodeRegistry
    spool: Spool
    mqtt: MqttConfig  # the broker in use: configured, or the embedded one
    uplink: Uplink
    ingest: Ingest
    configs: NodeConfigs
    shared_zones: SharedZones
    _zones: list[str]  # the zones of the nodes served, as the metadata announces them
    node_health: HealthBook
    policy: Policy
    ledger: PrivacyLedger
    engine: PolicyEngine
    topics: Topics
    discovery: Discovery

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.started = time.time()
        self.ready = asyncio.Event()
        self.transports: dict[str, SerialTransport] = {}
        self.lora: dict[str, ForwarderTransport | SpiTransport] = {}  # LoRa links by name
        self._decoders: dict[str, StreamDecoder] = {}
        self.link_states: dict[str, str] = {}
        self._reload = asyncio.Event()
        self._privacy_seen = {"dropped": dict[str, int](), "releases": dict[str, int]()}
        self.health = StorageHealth()  # shared by the spool, the registry and the ledger
        self._storage_seen: dict[tuple[str, str], int] = {}
        self._unspooled: list[OutMessage] = []  # released, not yet spooled (disk refused)

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

    def _sends_downlinks(self, port: str) -> bool:
        lora = self.lora.get(port)
        return lora is None or lora.sends_downlinks

    async def _send(self, port: str, frame: bytes, radio: RadioMeta | None) -> bool:
        """A sealed downlink to the link its node was last heard on: COBS-framed on a serial
        line, a txpk in RX1 through the best gateway on LoRa."""
        serial = self.transports.get(port)
        if serial is not None:
            return await serial.write(encode_serial(frame))
        lora = self.lora.get(port)
        return await lora.send(frame, radio) if lora is not None else False

    async def _message(self, topic: str, payload: bytes) -> None:
        """A message on a subscription: another gateway's metadata (gateway.zones), or a
        remote configuration command."""
        if topic.endswith("/metadata"):
            self.shared_zones.heard(topic, payload, self._zones, self._counts_devices())
            return
        await self._command(topic, payload)

    def _counts_devices(self) -> bool:
        """The policy counts distinct devices per zone (what two gateways would count twice)."""
        return any(s.personal and s.group_by == "zone" for s in self.policy.streams)

    def _zones_changed(self) -> None:
        """Announce the zones served again when they changed (nodes imported, a zone set by
        remote configuration), and compare them with the other gateways' anew."""
        zones = served_zones(self.registry)
        if zones != self._zones:
            self._zones = zones
            self.uplink.set_metadata(self.metadata())
            self.shared_zones.check(zones, self._counts_devices())

    async def _command(self, topic: str, payload: bytes) -> None:
        """A remote configuration command from MQTT: checked and stored, then sent at once to
        a node on a serial line (a LoRa node gets it at its next uplink)."""
        command = await self.configs.handle_mqtt(topic, payload)
        if command is not None and command.version is not None:
            await self.ingest.send_config(command.node_id)

    def _published(self, latencies: list[float | None]) -> None:
        """What one PUBACK acknowledged (Uplink's on_published)."""
        self.metrics.published.inc(len(latencies))
        observe = self.metrics.latency.observe
        for seconds in latencies:
            if seconds is not None:
                observe(seconds)

    # -- housekeeping: spool expiry, gauges, systemd watchdog ----------------------------------

    async def _housekeeping(self) -> None:
        watchdog = systemd.watchdog_interval()
        interval = min(HOUSEKEEPING_S, watchdog) if watchdog else HOUSEKEEPING_S
        dropped = {"full": 0, "age": 0}
        health_saved = time.monotonic()
        while True:
            if time.monotonic() - health_saved >= HEALTH_SAVE_S:
                health_saved = time.monotonic()
                docs = self.node_health.changed()
                try:
                    await asyncio.to_thread(self.registry.save_health, docs)
                except StorageError:  # logged by the health; saved at the next round
                    self.node_health.unsaved(docs)
            spool = self.spool
            with contextlib.suppress(StorageError):  # logged by the health; tried next round
                await asyncio.to_thread(spool.expire)
            self._storage_state()
            m = self.metrics
            m.spool_depth.set(spool.depth)
            m.spool_oldest_age.set(spool.oldest_age() or 0)
            m.broker_connected.set(1 if self.uplink.connected else 0)
            m.registered_nodes.set(len(self.registry))
            for reason, count in (("full", spool.dropped_full), ("age", spool.dropped_age)):
                m.spool_dropped.labels(reason).inc(count - dropped[reason])
                dropped[reason] = count
            self._privacy_metrics()
            self._zones_changed()
            systemd.notify("WATCHDOG=1")  # the loop is alive: it got here
            await asyncio.sleep(interval)

    def _storage_state(self) -> None:
        """The stores' health as metrics and as availability; the state directory's size."""
        m, health = self.metrics, self.health
        for store in STORES:
            m.storage_degraded.labels(store).set(1 if store in health.failing else 0)
        for key, count in list(health.failures.items()):
            m.storage_errors.labels(*key).inc(count - self._storage_seen.get(key, 0))
            self._storage_seen[key] = count
        self.uplink.set_degraded(health.degraded)
        if not health.failing:
            make_reserve(self.config.state_dir)  # after it was given back: set aside again
        m.state_dir_bytes.set(state_dir_bytes(self.config.state_dir))
        free = free_bytes(self.config.state_dir)
        if free is not None:
            m.state_dir_free_bytes.set(free)

    def _privacy_metrics(self) -> None:
        engine, seen = self.engine, self._privacy_seen
        for table, counter, counts in (
            ("dropped", self.metrics.privacy_dropped, engine.dropped),
            ("releases", self.metrics.privacy_releases, engine.releases),
        ):
            for key, count in list(counts.items()):
                counter.labels(key).inc(count - seen[table].get(key, 0))
                seen[table][key] = count

    # -- privacy: windows, statement, budget, reload -------------------------------------------

    def reload_policy(self) -> None:
        """Read the policy file again and apply it (SIGHUP). Call from the event loop."""
        self._reload.set()

    async def _privacy_windows(self) -> None:
        """Every second: apply a requested reload, release due windows, publish the budget."""
        await self._publish_privacy_state()
        reconnects = self.uplink.reconnects
        while True:
            await asyncio.sleep(RELEASE_TICK_S - time.time() % RELEASE_TICK_S + 0.001)
            if self._reload.is_set():
                self._reload.clear()
                await self._reload_policy()
            if self._unspooled:
                await self._spool([])  # releases the disk refused before
            due = self.engine.detach_due(time.time())  # in memory, on the loop like process()
            if due:
                records = await asyncio.to_thread(self.engine.release, due)  # ledger: fsync
                if records:
                    await self._spool_records(records)
                await self._publish_budget()
            if self.uplink.reconnects != reconnects:  # the broker may have lost retained state
                reconnects = self.uplink.reconnects
                await self._publish_privacy_state()

    async def _reload_policy(self) -> None:
        try:
            policy = await asyncio.to_thread(load_policy, self.config)
            due = self.engine.apply(policy)
        except ConfigError as exc:
            log.error("privacy policy not reloaded, the running one stays: %s", exc)
            return
        records = await asyncio.to_thread(self.engine.release, due)
        self.policy = policy
        self.uplink.set_metadata(self.metadata())
        if records:
            await self._spool_records(records)
        await self._publish_privacy_state()

    async def _spool_records(self, records: list[Record]) -> None:
        out = [senml.encode(r, self.topics, self.mqtt.payload) for r in records]
        await self._spool(out)

    async def _spool(self, out: list[OutMessage]) -> None:
        """Spool the gateway's own messages (releases, statement, budget). What the disk
        refuses is kept and tried again (see UNSPOOLED_LIMIT); what a full spool refuses
        (refuse_new) is dropped and counted."""
        pending = self._unspooled + out
        if not pending:
            return
        try:
            await asyncio.to_thread(self.spool.put, pending)
        except SpoolFullError as exc:
            self._unspooled = []
            self.metrics.spool_dropped.labels("refused").inc(len(pending))
            log.warning("privacy releases not stored: %s", exc)
            return
        except StorageError:  # logged by the health
            self._unspooled = pending[-UNSPOOLED_LIMIT:]
            lost = len(pending) - len(self._unspooled)
            if lost:
                self.metrics.spool_dropped.labels("storage").inc(lost)
                log.error("%d privacy releases dropped: the disk refused them too long", lost)
            return
        self._unspooled = []
        self.uplink.notify()

    async def _publish_privacy_state(self) -> None:
        """The transparency statement of the policy in force and today's budget, retained."""
        policy, gw = self.policy, self.config.gateway_id
        statement = json.dumps(statement_json(policy), sort_keys=True, ensure_ascii=False)
        text = statement_text(policy, "en")
        tag = policy.hash[:16]
        await self._spool(
            [
                OutMessage(
                    f"{gw}:transparency:{tag}", self.topics.transparency, statement.encode(), True
                ),
                OutMessage(
                    f"{gw}:transparency-text:{tag}",
                    self.topics.transparency_text,
                    text.encode(),
                    True,
                ),
            ]
        )
        await self._publish_budget()

    async def _publish_budget(self) -> None:
        report = await asyncio.to_thread(self.engine.budget_report)
        payload = json.dumps(report, sort_keys=True, ensure_ascii=False).encode()
        msg_id = f"{self.config.gateway_id}:privacy-budget:{time.time_ns()}"
        await self._spool([OutMessage(msg_id, self.topics.budget, payload, True)])

    def metadata(self) -> dict[str, Any]:
        return {
            "site": self.config.site,
            "gateway": self.config.gateway_id,
            "software": f"edgeveil {__version__}",
            "started": int(self.started),
            "nodes": len(self.registry),
            "serial_ports": [p.name for p in self.config.serial],
            "lora_links": [f.name for f in self.config.packet_forwarders]
            + [r.name for r in self.config.spi_radios],
            "payload": self.mqtt.payload,
            "privacy_policy": {"name": self.policy.name, "hash": self.policy.hash},
            "zones": self._zones,  # gateway.zones: one zone, one gateway
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
        self.policy = load_policy(config)
        state, health = config.state_dir, self.health
        with contextlib.ExitStack() as stack:
            self.registry = stack.enter_context(
                await self._opened(lambda: NodeRegistry.open(state / "registry.db", health))
            )
            self.ledger = stack.enter_context(
                await self._opened(lambda: PrivacyLedger.open(state / "privacy.db", health=health))
            )
            spool = config.spool
            self.spool = stack.enter_context(
                await self._opened(
                    lambda: Spool.open(
                        state / "spool.db",
                        spool.max_messages,
                        spool.max_age_s,
                        spool.when_full,
                        health=health,
                    )
                )
            )
            make_reserve(state)  # none when the disk is full: housekeeping tries again
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

    async def _opened(self, open_store: Callable[[], T]) -> T:
        """open_store(), tried again every STORE_RETRY_S while the disk refuses: on a full
        disk the gateway waits, degraded, instead of ending in a restart loop."""
        failed: StorageError | None = None
        while True:
            try:
                store = open_store()
            except StorageError as exc:
                failed = exc
                self.health.failed(exc)
                if release_reserve(self.config.state_dir):
                    continue  # room for the files' shared-memory index: try again at once
                systemd.notify(f"STATUS=waiting for storage: {exc}")
                systemd.notify("WATCHDOG=1")  # alive, waiting on purpose
                await asyncio.sleep(STORE_RETRY_S)
                continue
            if failed is not None:
                self.health.succeeded(failed.store)
            return store

    async def run(self) -> None:
        async with self._resources():
            config = self.config
            topics = self.topics = Topics(self.mqtt.topic_prefix, config.site, config.gateway_id)
            self.engine = PolicyEngine(self.policy, config.gateway_id, self.ledger)
            for node_id in self.registry.node_ids():  # their windows are released from the start
                entry = self.registry.get(node_id)
                if entry is not None:
                    self.engine.add_node(node_id, entry.zone)
            self.configs = NodeConfigs(self.registry, topics, self._spool)
            self.shared_zones = SharedZones(topics, config.state_dir)
            self._zones = served_zones(self.registry)
            self.node_health = HealthBook(self.registry)
            self.uplink = Uplink(
                self.mqtt,
                self.spool,
                topics,
                self.metadata(),
                on_published=self._published,
                subscriptions=[self.configs.subscription, self.shared_zones.subscription],
                on_message=self._message,
            )
            self.discovery = Discovery(config.homeassistant, topics, config.state_dir, self._spool)
            self.ingest = Ingest(
                self.registry,
                self.engine,
                self.spool,
                topics,
                self.mqtt.payload,
                self._send,
                self.uplink,
                self.metrics,
                self._sends_downlinks,
                self.configs,
                self.node_health,
            )
            for port in config.serial:
                self._decoders[port.name] = StreamDecoder()
                self.metrics.link_up.labels(port.name).set(0)
                self.transports[port.name] = SerialTransport(port, self._on_data, self._on_state)
            # LoRa: the radio's packet length delimits frames, so no link decoder; the radio
            # metadata goes with each frame to ingest (downlink routing) and nowhere else
            if config.packet_forwarders:
                # imported only when configured: a serial-only gateway keeps the LoRa modules'
                # memory (about 0.4 MB resident) free on the Raspberry Pi
                from .lora.forwarder import ForwarderTransport  # noqa: PLC0415
            for forwarder in config.packet_forwarders:
                self.metrics.link_up.labels(forwarder.name).set(0)
                self.lora[forwarder.name] = ForwarderTransport(
                    forwarder, self.ingest.submit, self._on_state, metrics=self.metrics
                )
            if config.spi_radios:
                from .lora.spi import SpiTransport  # noqa: PLC0415 - as ForwarderTransport
            for radio in config.spi_radios:
                self.metrics.link_up.labels(radio.name).set(0)
                self.lora[radio.name] = SpiTransport(
                    radio, self.ingest.submit, self._on_state, metrics=self.metrics
                )
            log.info(
                "gateway %s/%s: %d nodes registered, %d serial ports, %d LoRa links, broker %s:%d, "
                "privacy policy %r (%s)",
                config.site,
                config.gateway_id,
                len(self.registry),
                len(config.serial),
                len(config.packet_forwarders) + len(config.spi_radios),
                self.mqtt.host,
                self.mqtt.port,
                self.policy.name,
                self.policy.hash[:12],
            )
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self.uplink.run(), name="uplink")
                    tg.create_task(self.ingest.run(), name="ingest")
                    tg.create_task(self._privacy_windows(), name="privacy-windows")
                    for transport in (*self.transports.values(), *self.lora.values()):
                        tg.create_task(transport.run(), name=transport.task_name)
                    tg.create_task(self._housekeeping(), name="housekeeping")
                    tg.create_task(self.discovery.run(self), name="homeassistant")
                    systemd.notify("READY=1")
                    self.ready.set()
            finally:
                self.ingest.fold(force=True)  # the registry takes the journaled counters
                with contextlib.suppress(StorageError):  # logged by the health
                    self.node_health.save()
                self.engine.close()  # pseudonym keys destroyed; open windows are not released


def with_ports(config: GatewayConfig, devices: dict[str, str]) -> GatewayConfig:
    """The configuration plus serial ports by name -> device path (for demo and tests)."""
    from .config import SerialPortConfig  # noqa: PLC0415

    ports = tuple(SerialPortConfig(name=n, url=d) for n, d in devices.items())
    return replace(config, serial=config.serial + ports)
