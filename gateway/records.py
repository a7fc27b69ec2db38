"""What flows between the gateway's stages, and the MQTT topic layout.

    ingest ──Frame──► privacy ──Record──► senml.encode ──OutMessage──► spool ──► uplink

A Record is what may leave the gateway (the privacy stage made it); an OutMessage is a Record
encoded for MQTT, the form the spool stores and the uplink publishes.

Topics (site and gateway ids in every topic, so consumers scale out with shared subscriptions
such as `$share/workers/edgeveil/+/+/zone/+/environment`):

    {prefix}/{site}/{gateway}/zone/{zone}/{stream}      a stream's window aggregates, SenML
    {prefix}/{site}/{gateway}/node/{node_id}/{stream}   the same, for streams grouped by node
    {prefix}/{site}/{gateway}/node/{node_id}/readings   readings of "pass" streams, SenML
    {prefix}/{site}/{gateway}/node/{node_id}/status     node health, SenML
    {prefix}/{site}/{gateway}/node/{node_id}/event      node events, and the gateway's alarm
                                                        counter_reuse (ingest.py), SenML
    {prefix}/{site}/{gateway}/availability              "online" / "degraded" / "offline", retained
    {prefix}/{site}/{gateway}/metadata                  gateway metadata, JSON, retained
    {prefix}/{site}/{gateway}/transparency              the transparency statement, JSON, retained
    {prefix}/{site}/{gateway}/transparency/text         the same in words (English), retained
    {prefix}/{site}/{gateway}/privacy/budget            privacy budget spent today, JSON, retained

and, with `[homeassistant] discovery = true`, Home Assistant's discovery messages (retained JSON,
gateway/homeassistant.py): `{ha prefix}/{component}/edgeveil_{site}_{gateway}/{object_id}/config`.

A zone goes into a topic percent-encoded (RFC 3986: everything but letters, digits and `-._~`),
so a zone can never add a topic level or an MQTT wildcard; a node without a zone gives an empty
level (`.../zone//people`, which MQTT allows and `+` matches). A stream grouped by node cannot
be named readings, status or event (the engine refuses such a policy), so its topic never
collides with the per-message ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import quote

KINDS = ("readings", "status", "event", "aggregate")
_NODE_TOPICS_KEPT = 65_536


@dataclass(frozen=True, slots=True)
class Measurement:
    """One SenML record's worth: a name, a SenML unit ("" for none) and a value."""

    name: str
    unit: str
    value: float | int | bool | str


@dataclass(frozen=True, slots=True)
class Record:
    """Something the privacy stage lets leave the gateway.

    Per-message records (readings, status, event) come from one node. An "aggregate" is one
    window of one stream: `stream` names it, `time` is the window's start, `group_by` says
    whether it covers a zone (`node_id` is then 0) or one node (`node_id`).
    """

    kind: str  # one of KINDS
    node_id: int
    zone: str
    time: float  # Unix time, seconds: the node's when it sent one, else the gateway's arrival
    msg_id: str  # stable across retransmissions and restarts: consumers drop duplicates by it
    measurements: tuple[Measurement, ...]
    stream: str = ""  # the policy stream that released it ("" for none)
    policy: str = ""  # the hash of the privacy policy under which it left ("" for none)
    group_by: str = ""  # aggregates: "zone" or "node"


@dataclass(frozen=True, slots=True)
class OutMessage:
    """An MQTT message as the spool stores it and the uplink publishes it.

    `created`: when what it carries arrived at the gateway (time.time(): a frame's arrival, a
    window's release), the start of its arrival-to-PUBACK latency; None for "when stored"."""

    msg_id: str
    topic: str
    payload: bytes
    retain: bool = False
    created: float | None = None


@dataclass(frozen=True, slots=True)
class Topics:
    prefix: str
    site: str
    gateway_id: str
    # (node, kind) -> its topic: every record a node sends asks for one of its few topics
    _node_topics: dict[tuple[int, str], str] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _base: str = field(init=False, repr=False, compare=False)  # computed once: per message

    def __post_init__(self) -> None:
        object.__setattr__(self, "_base", f"{self.prefix}/{self.site}/{self.gateway_id}")

    @property
    def base(self) -> str:
        return self._base

    def node(self, node_id: int, kind: str) -> str:
        topic = self._node_topics.get((node_id, kind))
        if topic is None:
            topic = f"{self._base}/node/{node_id}/{kind}"
            if len(self._node_topics) >= _NODE_TOPICS_KEPT:
                self._node_topics.clear()  # simple and bounded
            self._node_topics[(node_id, kind)] = topic
        return topic

    def zone(self, zone: str, stream: str) -> str:
        return f"{self.base}/zone/{quote(zone, safe='')}/{stream}"

    def record(self, record: Record) -> str:
        """Where a record is published: an aggregate by its grouping, others by node and kind."""
        if record.kind != "aggregate":
            return self.node(record.node_id, record.kind)
        if record.group_by == "node":
            return self.node(record.node_id, record.stream)
        return self.zone(record.zone, record.stream)

    def carries_senml(self, topic: str) -> bool:
        """Whether a topic carries SenML records (node and zone topics; not the gateway's JSON
        documents, command results or Home Assistant's discovery): the uplink may join such
        messages into one pack (senml.join)."""
        base = self._base
        return topic.startswith(base) and topic.startswith(("/node/", "/zone/"), len(base))

    @property
    def transparency(self) -> str:
        return f"{self.base}/transparency"

    @property
    def transparency_text(self) -> str:
        return f"{self.base}/transparency/text"

    @property
    def budget(self) -> str:
        return f"{self.base}/privacy/budget"

    @property
    def availability(self) -> str:
        return f"{self.base}/availability"

    @property
    def metadata(self) -> str:
        return f"{self.base}/metadata"


def message_id(gateway_id: str, node_id: int, counter: int, part: int = 0) -> str:
    """Deterministic: the same frame gives the same id however often it arrives. `counter`:
    the frame's sequence, its key epoch x 2^32 + its frame counter (the counter alone at epoch
    0), so a node's frames under fresh keys never take the ids of its earlier ones."""
    return f"{gateway_id}:{node_id}:{counter}:{part}"
