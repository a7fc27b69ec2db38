"""What flows between the gateway's stages, and the MQTT topic layout.

    ingest ──Frame──► privacy ──Record──► senml.encode ──OutMessage──► spool ──► uplink

A Record is what may leave the gateway (the privacy stage made it); an OutMessage is a Record
encoded for MQTT, the form the spool stores and the uplink publishes.

Topics (site and gateway ids in every topic, so consumers scale out with shared subscriptions
such as `$share/workers/edgeveil/+/+/node/+/readings`):

    {prefix}/{site}/{gateway}/node/{node_id}/readings   scaled readings, SenML
    {prefix}/{site}/{gateway}/node/{node_id}/status     node health, SenML
    {prefix}/{site}/{gateway}/node/{node_id}/event      node events, SenML
    {prefix}/{site}/{gateway}/availability              "online" / "offline", retained
    {prefix}/{site}/{gateway}/metadata                  gateway metadata, JSON, retained
"""

from __future__ import annotations

from dataclasses import dataclass

KINDS = ("readings", "status", "event")


@dataclass(frozen=True, slots=True)
class Measurement:
    """One SenML record's worth: a name, a SenML unit ("" for none) and a value."""

    name: str
    unit: str
    value: float | int | bool | str


@dataclass(frozen=True, slots=True)
class Record:
    """Something the privacy stage lets leave the gateway."""

    kind: str  # one of KINDS
    node_id: int
    zone: str
    time: float  # Unix time, seconds: the node's when it sent one, else the gateway's arrival
    msg_id: str  # stable across retransmissions and restarts: consumers drop duplicates by it
    measurements: tuple[Measurement, ...]


@dataclass(frozen=True, slots=True)
class OutMessage:
    """An MQTT message as the spool stores it and the uplink publishes it."""

    msg_id: str
    topic: str
    payload: bytes
    retain: bool = False


@dataclass(frozen=True, slots=True)
class Topics:
    prefix: str
    site: str
    gateway_id: str

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.site}/{self.gateway_id}"

    def node(self, node_id: int, kind: str) -> str:
        return f"{self.base}/node/{node_id}/{kind}"

    @property
    def availability(self) -> str:
        return f"{self.base}/availability"

    @property
    def metadata(self) -> str:
        return f"{self.base}/metadata"


def message_id(gateway_id: str, node_id: int, counter: int, part: int = 0) -> str:
    """Deterministic: the same frame gives the same id however often it arrives."""
    return f"{gateway_id}:{node_id}:{counter}:{part}"
