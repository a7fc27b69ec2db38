"""One zone, one gateway: a zone served by two gateways counts a device once per gateway.

Each gateway counts the distinct devices its own nodes see, with its own pseudonym keys, so two
gateways cannot tell that they saw the same device. A zone whose nodes report to more than one
gateway therefore gets one count per gateway, and their sum counts a device seen by both twice.
The rule (docs/operators/zones.md): serve a zone from one gateway.

What the gateway can see of it: every gateway announces the zones of the nodes it serves in its
retained metadata (`{prefix}/{site}/{gateway}/metadata`, "zones"), and reads the others' of the
same site. When the policy counts devices per zone and another gateway announces one of this
gateway's zones, the gateway warns in its log (once per zone and gateway) and keeps the finding
in its state directory (SHARED_FILE), where `edgeveil policy check --config` shows it. Gateways
on other brokers, or that announce nothing, stay unseen.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from .records import Topics
from .registry import NodeRegistry

__all__ = ["SHARED_FILE", "SharedZones", "load_shared", "served_zones"]

log = logging.getLogger("edgeveil.zones")

SHARED_FILE = "shared_zones.json"


def served_zones(registry: NodeRegistry) -> list[str]:
    """The zones of the nodes this gateway serves, sorted."""
    return sorted(set(registry.served().values()))


class SharedZones:
    """The other gateways' announced zones, and which of ours they share."""

    def __init__(self, topics: Topics, state_dir: Path) -> None:
        self.topics = topics
        self.path = state_dir / SHARED_FILE
        self.others: dict[str, set[str]] = {}  # gateway id -> the zones it announces
        self.shared: dict[str, list[str]] = load_shared(state_dir)  # zone -> other gateways

    @property
    def subscription(self) -> str:
        """Every gateway's metadata of this site (retained: the broker sends them at once)."""
        return f"{self.topics.prefix}/{self.topics.site}/+/metadata"

    def heard(self, topic: str, payload: bytes, ours: list[str], counts_devices: bool) -> None:
        """Another gateway's metadata; `ours`: this gateway's zones; `counts_devices`: the
        policy counts devices per zone."""
        gateway = topic.split("/")[-2]
        if gateway == self.topics.gateway_id:
            return
        try:
            data = json.loads(payload)
        except (UnicodeDecodeError, ValueError):
            data = None
        zones = data.get("zones") if isinstance(data, dict) else None
        if not isinstance(zones, list):
            self.others.pop(gateway, None)  # gone (an empty retained message) or no zones
        else:
            self.others[gateway] = {z for z in zones if isinstance(z, str)}
        self.check(ours, counts_devices)

    def check(self, ours: list[str], counts_devices: bool) -> None:
        """Compare our zones with the others' (after either changed); warn of new sharing."""
        shared: dict[str, list[str]] = {}
        if counts_devices:
            for zone in ours:
                gateways = sorted(g for g, zones in self.others.items() if zone in zones)
                if gateways:
                    shared[zone] = gateways
        for zone, gateways in shared.items():
            new = set(gateways) - set(self.shared.get(zone, ()))
            if new:
                log.warning(
                    "zone %r is also served by gateway %s of site %s: each gateway counts the "
                    "devices of its own nodes, so a device seen by both is counted twice; "
                    "serve a zone from one gateway (docs/operators/zones.md)",
                    zone,
                    ", ".join(sorted(new)),
                    self.topics.site,
                )
        if shared != self.shared:
            self.shared = shared
            self._save()

    def _save(self) -> None:
        try:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.shared, indent=1, sort_keys=True), encoding="utf-8")
            tmp.replace(self.path)
        except OSError as exc:  # a full disk: the log said it already
            log.debug("%s not written: %s", self.path, exc)


def load_shared(state_dir: Path) -> dict[str, list[str]]:
    """What a gateway found shared (zone -> other gateways), from its state directory."""
    try:
        data: Any = json.loads((state_dir / SHARED_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): [str(g) for g in v] for k, v in data.items() if isinstance(v, list)}
