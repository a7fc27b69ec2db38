"""Home Assistant MQTT discovery: what the gateway publishes, announced as Home Assistant sensors.

Opt-in (`[homeassistant] discovery = true`). The gateway announces only what it publishes
already, each entity reading one of its topics:

    zone aggregates  {base}/zone/{zone}/{stream}   one sensor per released measurement of every
                                                   stream grouped by zone, one device per zone
    node health      {base}/node/{node_id}/status  one sensor per health field (when the policy
                                                   lets status pass), one device per node
    the gateway      {base}/availability           one binary sensor "Storage problem", on while
                                                   availability is "degraded"

Nothing per person and nothing per device address can be announced: the entities come from the
policy's streams (by their measurement names: `{quantity}_{statistic}`, and for people counts
only `devices`, never `pseudonym`) and from the node status fields, and the zones and node ids
from the registry. Streams grouped by node and readings that "pass" are not announced.

Discovery topics (Home Assistant's `<discovery_prefix>/<component>/<node_id>/<object_id>/config`,
`prefix` from `[homeassistant] prefix`), retained, JSON:

    {prefix}/sensor/edgeveil_{site}_{gateway}/zone_{zone}_{measurement}/config
    {prefix}/sensor/edgeveil_{site}_{gateway}/node_{node_id}_{field}/config
    {prefix}/binary_sensor/edgeveil_{site}_{gateway}/gateway_storage/config

A zone that is not only letters, digits, `_` and `-` appears in an object id with those
replaced by `_` and the first 8 hex digits of the zone's SHA-256 added (Home Assistant allows
no other characters there); empty: `_e3b0c442`.

Values: each sensor's `value_template` picks its measurement out of the SenML pack by name
(`n`; the last such record when a message holds several) and converts it to the unit Home
Assistant knows (kg/m3 to µg/m³, the ratio "/" to ppm, Pa to hPa). A measurement the pack
does not hold, or holds as text (a count "suppressed" or "withheld: budget"), renders as
`None`, which Home Assistant shows as unknown. Home Assistant timestamps a value when it
arrives: for an aggregate, at the end of its window (the SenML base
time `bt` is its start).

Availability: every entity follows `{base}/availability`. "online" and "degraded" are
available, "offline" (the last will, or a clean stop) is not. Degraded means the gateway's
storage fails (docs/operators/storage.md): what it publishes is still right, but it may take no new
frames in, so values may stop changing; the gateway's "Storage problem" binary sensor shows it.

When: at start, again when the policy (its hash), the zones or the nodes change (checked every
CHECK_S, from the registry as the running gateway sees it: a change another process made is
seen once ingest has read it, at the latest with the node's next frame), and after every
reconnect (a broker without persistence forgets retained messages). The messages go through
the spool like everything the gateway publishes. An entity that no longer exists (a stream
left the policy, the last node left a zone, a node was removed or revoked) gets an empty
retained payload, which removes it from Home Assistant. The config topics published are kept in
`{state_dir}/homeassistant.json`, so entities of a previous run are removed too, also when
discovery was switched off since.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from . import __version__
from .config import HomeAssistantConfig
from .privacy.policy import Policy
from .records import OutMessage, Topics
from .registry import NodeRegistry

log = logging.getLogger("edgeveil.homeassistant")

CHECK_S = 5.0  # how often the policy, zones and nodes are compared with what was announced
STATE_FILE = "homeassistant.json"
AVAILABLE = "{{ 'offline' if value == 'offline' else 'online' }}"  # "degraded" is available

# quantity -> (label, device class, unit, factor from its SenML unit, display precision);
# device classes and units as Home Assistant's sensor documentation lists them
QUANTITIES: dict[str, tuple[str, str | None, str | None, float, int]] = {
    "temperature": ("Temperature", "temperature", "°C", 1, 1),  # Cel
    "humidity": ("Humidity", "humidity", "%", 1, 1),  # %RH
    "pressure": ("Pressure", "pressure", "hPa", 0.01, 1),  # Pa
    "battery": ("Battery", "voltage", "V", 1, 2),  # V
    "pm1": ("PM1", "pm1", "µg/m³", 1_000_000_000, 0),  # kg/m3
    "pm2_5": ("PM2.5", "pm25", "µg/m³", 1_000_000_000, 0),
    "pm10": ("PM10", "pm10", "µg/m³", 1_000_000_000, 0),
    "co2": ("CO2", "carbon_dioxide", "ppm", 1_000_000, 0),  # "/", a ratio
    "noise": ("Noise", "sound_pressure", "dB", 1, 1),  # Bspl
    "illuminance": ("Illuminance", "illuminance", "lx", 1, 0),  # lx
    "motion": ("Motion", None, None, 1, 0),  # PIR triggers
    "people": ("People", None, None, 1, 0),  # from a people counter
}

# node status (gateway/privacy/passthrough.py) -> (SenML name, label, device class, unit, state
# class, display precision); None state class: a text sensor
NODE_HEALTH: tuple[tuple[str, str, str | None, str | None, str | None, int | None], ...] = (
    ("battery", "Battery", "voltage", "V", "measurement", 2),
    ("uptime", "Uptime", "duration", "s", "measurement", 0),
    ("free_heap", "Free heap", "data_size", "B", "measurement", 0),
    ("frames_sent", "Frames sent", None, None, "total_increasing", 0),
    ("retransmissions", "Retransmissions", None, None, "total_increasing", 0),
    ("dropped", "Frames dropped", None, None, "total_increasing", 0),
    ("queue_depth", "Queue depth", None, None, "measurement", 0),
    ("reset_cause", "Reset cause", None, None, None, None),
    ("firmware", "Firmware", None, None, None, None),
)

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_MEASUREMENT = re.compile(r"^[a-z0-9_]+$")  # safe inside the template's quotes

Publish = Callable[[list[OutMessage]], Awaitable[None]]


class _Uplink(Protocol):
    @property
    def reconnects(self) -> int: ...


class Source(Protocol):
    """What discovery reads of the running gateway (gateway.service.Gateway)."""

    @property
    def policy(self) -> Policy: ...

    @property
    def registry(self) -> NodeRegistry: ...

    @property
    def uplink(self) -> _Uplink: ...


@dataclass(frozen=True, slots=True)
class Sensor:
    """One entity: where it reads (topic, SenML name) and how Home Assistant shows it."""

    object_id: str
    name: str
    topic: str
    measurement: str
    device_class: str | None = None
    unit: str | None = None
    state_class: str | None = None  # None: a text sensor
    factor: float = 1
    precision: int | None = None
    category: str | None = None


def zone_slug(zone: str) -> str:
    """A zone as Home Assistant allows it in an object id (see the module docstring)."""
    slug = _UNSAFE.sub("_", zone)
    if slug == zone and zone:
        return zone
    return f"{slug}_{hashlib.sha256(zone.encode()).hexdigest()[:8]}"


def zone_sensors(policy: Policy, topics: Topics, zone: str) -> list[Sensor]:
    """The sensors of one zone: every measurement the policy's zone streams release there."""
    out: list[Sensor] = []
    slug = zone_slug(zone)
    for stream in policy.streams:
        if stream.action != "aggregate" or stream.group_by != "zone":
            continue
        topic = topics.zone(zone, stream.name)
        if stream.personal:  # people counts: the one measurement "devices", never pseudonyms
            label = stream.name.replace("_", " ").capitalize()
            out.append(
                Sensor(
                    f"zone_{slug}_devices",
                    f"{label} (distinct devices)",
                    topic,
                    "devices",
                    state_class="measurement",
                    precision=0,
                )
            )
            continue
        for quantity in stream.quantities:
            label, device_class, unit, factor, precision = QUANTITIES[quantity]
            for stat in stream.statistics:
                measurement = f"{quantity}_{stat}"
                counted = stat == "count"  # how many readings: a number, no unit
                out.append(
                    Sensor(
                        f"zone_{slug}_{measurement}",
                        f"{label} ({stat})",
                        topic,
                        measurement,
                        None if counted else device_class,
                        None if counted else unit,
                        "measurement",
                        1 if counted else factor,
                        0 if counted else precision,
                    )
                )
    return out


def node_sensors(topics: Topics, node_id: int) -> list[Sensor]:
    topic = topics.node(node_id, "status")
    return [
        Sensor(
            f"node_{node_id}_{name}",
            label,
            topic,
            name,
            device_class,
            unit,
            state_class,
            1,
            precision,
            None if name == "battery" else "diagnostic",
        )
        for name, label, device_class, unit, state_class, precision in NODE_HEALTH
    ]


def value_template(sensor: Sensor) -> str:
    """Jinja: the sensor's SenML record by name, its number in the entity's unit (or its text);
    "None" (unknown) when the record is absent or holds no number. A message may hold several
    records of the same name (a pack of several readings): the last one is the newest."""
    if not _MEASUREMENT.match(sensor.measurement):
        raise ValueError(f"measurement name {sensor.measurement!r} cannot go into a template")
    pick = (
        f"{{% set e = value_json | selectattr('n', 'eq', '{sensor.measurement}') | list "
        "| last | default({}) %}"
    )
    if sensor.state_class is None:
        return pick + "{{ e['vs'] if 'vs' in e else '' }}"
    value = "e['v']"
    if sensor.factor != 1:
        factor = int(sensor.factor) if sensor.factor >= 1 else sensor.factor
        value = f"({value} * {factor}) | round(3)"
    return pick + f"{{{{ {value} if 'v' in e else 'None' }}}}"


class Announcer:
    """The discovery messages of one gateway (pure: no I/O)."""

    def __init__(self, topics: Topics, prefix: str) -> None:
        self.topics = topics
        self.prefix = prefix
        self.node_id = f"edgeveil_{topics.site}_{topics.gateway_id}"
        self.gateway_device = self.node_id
        self._availability = [{"topic": topics.availability, "value_template": AVAILABLE}]
        self._origin = {"name": "edgeveil", "sw_version": __version__}

    def topic(self, component: str, object_id: str) -> str:
        return f"{self.prefix}/{component}/{self.node_id}/{object_id}/config"

    def configs(self, policy: Policy, nodes: Mapping[int, str]) -> dict[str, dict[str, Any]]:
        """Every config message (topic -> payload) for the policy and the nodes served
        (node id -> zone): the gateway, each zone with a node, and each node (when status
        passes)."""
        out = {self.topic("binary_sensor", "gateway_storage"): self._gateway()}
        for zone in sorted(set(nodes.values())):
            device = self._device(
                f"zone_{zone_slug(zone)}", f"Zone {zone}" if zone else "No zone", "zone aggregates"
            )
            if zone:
                device["suggested_area"] = zone
            for sensor in zone_sensors(policy, self.topics, zone):
                out[self.topic("sensor", sensor.object_id)] = self._sensor(sensor, device)
        status = policy.stream_for("status")
        if status is not None and status.action == "pass":
            for node_id in sorted(nodes):
                device = self._device(f"node_{node_id}", f"Node {node_id}", "sensor node")
                for sensor in node_sensors(self.topics, node_id):
                    out[self.topic("sensor", sensor.object_id)] = self._sensor(sensor, device)
        return out

    def _device(self, key: str, name: str, model: str) -> dict[str, Any]:
        return {
            "identifiers": [f"{self.node_id}_{key}"],
            "name": name,
            "manufacturer": "edgeveil",
            "model": model,
            "via_device": self.gateway_device,
        }

    def _common(self, object_id: str, name: str, device: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": name,
            "unique_id": f"{self.node_id}_{object_id}",
            "availability": self._availability,
            "device": device,
            "origin": self._origin,
            "qos": 1,
        }

    def _sensor(self, sensor: Sensor, device: dict[str, Any]) -> dict[str, Any]:
        config = self._common(sensor.object_id, sensor.name, device)
        config["state_topic"] = sensor.topic
        config["value_template"] = value_template(sensor)
        optional = {
            "device_class": sensor.device_class,
            "unit_of_measurement": sensor.unit,
            "state_class": sensor.state_class,
            "suggested_display_precision": sensor.precision,
            "entity_category": sensor.category,
        }
        config.update({k: v for k, v in optional.items() if v is not None})
        return config

    def _gateway(self) -> dict[str, Any]:
        t = self.topics
        device = {
            "identifiers": [self.gateway_device],
            "name": f"edgeveil gateway {t.gateway_id}",
            "manufacturer": "edgeveil",
            "model": "gateway",
            "sw_version": __version__,
        }
        config = self._common("gateway_storage", "Storage problem", device)
        config.update(
            state_topic=t.availability,
            value_template="{{ 'ON' if value == 'degraded' else 'OFF' }}",
            device_class="problem",
            entity_category="diagnostic",
        )
        return config


def _payload(config: dict[str, Any]) -> bytes:
    return json.dumps(config, sort_keys=True, ensure_ascii=False).encode()


class Discovery:
    """Keeps Home Assistant's view in step with the gateway: run() in the service's TaskGroup."""

    def __init__(
        self, config: HomeAssistantConfig, topics: Topics, state_dir: Path, publish: Publish
    ) -> None:
        self.config = config
        self.announcer = Announcer(topics, config.prefix)
        self.file = state_dir / STATE_FILE
        self._publish = publish
        self._gateway_id = topics.gateway_id
        self.announced: dict[str, bytes] = {}  # config topic -> payload, as last published
        self._policy_hash = ""

    def messages(
        self, policy: Policy, nodes: Mapping[int, str], *, again: bool = False
    ) -> list[OutMessage]:
        """What to publish now: every config when anything changed (or `again`), and an empty
        payload for every config topic announced before that is gone. Remembers it as
        announced (the caller spools it)."""
        wanted: dict[str, bytes] = {}
        if self.config.discovery:
            configs = self.announcer.configs(policy, nodes)
            wanted = {topic: _payload(c) for topic, c in configs.items()}
        if wanted == self.announced and policy.hash == self._policy_hash and not again:
            return []
        self._policy_hash = policy.hash
        gone = sorted(set(self.announced) - set(wanted))
        out = [self._message(topic, b"") for topic in gone]
        out += [self._message(topic, payload) for topic, payload in wanted.items()]
        self.announced = wanted
        return out

    def _message(self, topic: str, payload: bytes) -> OutMessage:
        object_id = topic.rsplit("/", 2)[-2]
        state = "config" if payload else "removed"
        msg_id = f"{self._gateway_id}:homeassistant:{object_id}:{state}"
        return OutMessage(msg_id, topic, payload, retain=True)

    async def run(self, source: Source) -> None:
        """Announce at start, then every CHECK_S what changed; again after a reconnect. Ends
        at once when discovery is off and nothing of a previous run is to be removed."""
        self.announced = dict.fromkeys(self._load(), b"")
        if not self.config.discovery and not self.announced:
            return
        reconnects = source.uplink.reconnects
        while True:
            again = source.uplink.reconnects != reconnects
            reconnects = source.uplink.reconnects
            before = self.announced
            try:
                out = self.messages(source.policy, source.registry.served(), again=again)
                if out:
                    await self._publish(out)
                    self._save(self.announced)
            except Exception:  # a bug here must not stop the gateway (it is in its TaskGroup)
                self.announced, self._policy_hash = before, ""  # all of it again next time
                log.exception("Home Assistant discovery failed; trying again in %g s", CHECK_S)
            if not self.config.discovery:
                return  # what a previous run announced is removed
            await asyncio.sleep(CHECK_S)

    def _load(self) -> list[str]:
        try:
            topics = json.loads(self.file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            log.warning("%s unreadable (%s): entities of a previous run stay", self.file, exc)
            return []
        if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
            log.warning("%s is not a list of topics: entities of a previous run stay", self.file)
            return []
        return topics

    def _save(self, topics: Iterable[str]) -> None:
        listed = sorted(topics)
        try:
            if not listed:
                self.file.unlink(missing_ok=True)
                return
            tmp = self.file.with_suffix(".tmp")
            tmp.write_text(json.dumps(listed, indent=0) + "\n", encoding="utf-8")
            os.replace(tmp, self.file)
        except OSError as exc:
            log.warning("cannot write %s (%s): a restart may leave stale entities", self.file, exc)


__all__ = [
    "CHECK_S",
    "NODE_HEALTH",
    "QUANTITIES",
    "Announcer",
    "Discovery",
    "Sensor",
    "node_sensors",
    "value_template",
    "zone_sensors",
    "zone_slug",
]
