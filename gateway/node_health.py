"""What the gateway knows of each node's health, for `edgeveil gateway nodes`: where and when it
was heard, its frames by outcome, its last status, its resets and, on LoRa, its last signal.

Kept in memory by ingest (a dict update per frame) and saved to the registry's file every
SAVE_S and when the gateway stops, so `gateway nodes` reads the same figures whether the
gateway runs (at most SAVE_S old) or not. Nothing here is published.

Presence frames (sightings and motion events) leave no trace here, not even in "last heard":
when they come says when people were near (SPEC.md 7.3). Frames that fail authentication count
among the node's rejected frames but never make it "heard": anyone can write a node's id into a
header. Radio figures (RSSI, SNR, spreading factor) are kept per node here because a node is
infrastructure on a lamppost, and the operator aligning its antenna needs them; like every
other figure here they stay on the gateway.

A node is marked silent when nothing was heard from it for SILENT_FACTOR times its reading
interval (the median gap between its last readings frames), or for SILENT_DEFAULT_S while the
gateway has not seen enough readings to tell its interval.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .lora.radio import RadioMeta
from .registry import NodeRegistry

__all__ = ["SAVE_S", "SILENT_DEFAULT_S", "SILENT_FACTOR", "HealthBook", "NodeHealth"]

SAVE_S = 30.0
SILENT_FACTOR = 3
SILENT_DEFAULT_S = 3600.0
_GAPS_KEPT = 8


@dataclass
class NodeHealth:
    node_id: int
    link: str | None = None  # the port or LoRa link it was last heard on
    lora: bool = False
    first_heard: float | None = None
    last_heard: float | None = None
    frames: dict[str, int] = field(default_factory=dict)  # outcome -> count
    status: dict[str, Any] = field(default_factory=dict)  # its last status message's fields
    status_at: float | None = None
    boots: int = 0  # boot events heard
    reset_cause: int | None = None  # from its last boot event or status
    last_reading: float | None = None
    gaps: deque[float] = field(default_factory=lambda: deque(maxlen=_GAPS_KEPT))
    rssi: float | None = None
    snr: float | None = None
    sf: int | None = None

    def interval_s(self) -> float | None:
        """Its reading interval as observed: the median of the last gaps between readings."""
        return statistics.median(self.gaps) if len(self.gaps) >= 2 else None

    def silent(self, now: float) -> bool:
        if self.last_heard is None:
            return False  # never heard: nothing to compare with
        interval = self.interval_s()
        limit = SILENT_DEFAULT_S if interval is None else SILENT_FACTOR * interval
        return now - self.last_heard > limit

    def to_doc(self) -> dict[str, Any]:
        return {
            "link": self.link,
            "lora": self.lora,
            "first_heard": self.first_heard,
            "last_heard": self.last_heard,
            "frames": dict(self.frames),  # copies: another thread may write the document
            "status": dict(self.status),
            "status_at": self.status_at,
            "boots": self.boots,
            "reset_cause": self.reset_cause,
            "last_reading": self.last_reading,
            "gaps": list(self.gaps),
            "rssi": self.rssi,
            "snr": self.snr,
            "sf": self.sf,
        }

    @classmethod
    def from_doc(cls, node_id: int, doc: dict[str, Any]) -> NodeHealth:
        health = cls(node_id)
        for name in ("link", "lora", "first_heard", "last_heard", "status_at", "boots"):
            if name in doc:
                setattr(health, name, doc[name])
        for name in ("reset_cause", "last_reading", "rssi", "snr", "sf"):
            setattr(health, name, doc.get(name))
        health.frames = {str(k): int(v) for k, v in doc.get("frames", {}).items()}
        health.status = dict(doc.get("status", {}))
        health.gaps.extend(float(g) for g in doc.get("gaps", ()))
        return health


class HealthBook:
    """Every node's health (module docstring); ingest reports, the service saves."""

    def __init__(self, registry: NodeRegistry) -> None:
        self.registry = registry
        self.nodes = {
            node_id: NodeHealth.from_doc(node_id, doc)
            for node_id, doc in registry.health_docs().items()
        }
        self._dirty: set[int] = set()

    def _node(self, node_id: int) -> NodeHealth:
        self._dirty.add(node_id)
        health = self.nodes.get(node_id)
        if health is None:
            health = self.nodes[node_id] = NodeHealth(node_id)
        return health

    def heard(self, node_id: int, link: str, radio: RadioMeta | None, at: float) -> None:
        """An authentic frame of the node (not a presence frame)."""
        health = self._node(node_id)
        health.link, health.lora = link, radio is not None
        if health.first_heard is None:
            health.first_heard = at
        health.last_heard = max(at, health.last_heard or at)
        if radio is not None:
            health.rssi, health.snr, health.sf = radio.rssi, radio.snr, radio.rate.sf

    def counted(self, node_id: int, outcome: str, frames: int = 1) -> None:
        """The node's frames, by outcome: accepted, duplicate or a rejection reason."""
        counts = self._node(node_id).frames
        counts[outcome] = counts.get(outcome, 0) + frames

    def reading(self, node_id: int, at: float) -> None:
        health = self._node(node_id)
        if health.last_reading is not None and at > health.last_reading:
            health.gaps.append(round(at - health.last_reading, 3))
        health.last_reading = at

    def status(self, node_id: int, fields: dict[str, Any], at: float) -> None:
        health = self._node(node_id)
        health.status, health.status_at = dict(fields), at
        if "reset_cause" in fields:
            health.reset_cause = fields["reset_cause"]

    def boot(self, node_id: int, reset_cause: int | None) -> None:
        health = self._node(node_id)
        health.boots += 1
        health.reset_cause = reset_cause

    def changed(self) -> dict[int, dict[str, Any]]:
        """The documents of the nodes that changed since the last call (call it on the event
        loop, then write them with NodeRegistry.save_health, e.g. in a worker thread; when
        that fails, give them back with unsaved())."""
        dirty, self._dirty = self._dirty, set()
        return {n: self.nodes[n].to_doc() for n in dirty}

    def unsaved(self, docs: dict[int, dict[str, Any]]) -> None:
        self._dirty |= set(docs)

    def save(self) -> None:
        """Write what changed now (blocking). StorageError leaves it to the next save."""
        docs = self.changed()
        try:
            self.registry.save_health(docs)
        except Exception:
            self.unsaved(docs)
            raise


def summary(health: NodeHealth | None, now: float | None = None) -> dict[str, Any]:
    """One node's health as `gateway nodes --json` gives it."""
    now = time.time() if now is None else now
    if health is None:
        health = NodeHealth(0)  # never heard
    rejected = {k: v for k, v in health.frames.items() if k not in ("accepted", "duplicate")}
    out: dict[str, Any] = {
        "heard": health.last_heard is not None,
        "link": health.link,
        "first_heard": health.first_heard,
        "last_heard": health.last_heard,
        "silent": health.silent(now),
        "reading_interval_s": health.interval_s(),
        "frames_accepted": health.frames.get("accepted", 0),
        "frames_duplicate": health.frames.get("duplicate", 0),
        "frames_rejected": rejected,
        "boots": health.boots,
        "reset_cause": health.reset_cause,
        "status": health.status,
        "status_at": health.status_at,
    }
    if health.lora:
        out["lora"] = {"rssi_dbm": health.rssi, "snr_db": health.snr, "sf": health.sf}
    return out
