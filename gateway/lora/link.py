"""What the two LoRa transports (packet forwarder server, SPI radio) share: the outward shape
of a gateway link as the service sees it (name, task name, state, waiting reason, whether it
sends downlinks, stats), state changes reported once, and the downlink counters."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from ..metrics import Metrics
from ..transport import PortState
from .radio import RadioMeta

log = logging.getLogger("edgeveil.lora")

OnFrame = Callable[[str, bytes, RadioMeta], None]


def observations(frame: bytes) -> bool:
    """A frame of BLE sightings, by its clear header byte (SPEC.md section 5.1: type 1). No
    radio metric counts them, not even per concentrator: their number says people were near,
    and at a site with one node a concentrator's packet count is that node's."""
    return bool(frame) and not frame[0] & 0x80 and (frame[0] >> 4) & 0x07 == 1


class _LinkConfig(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def acks(self) -> bool: ...


ConfigT = TypeVar("ConfigT", bound=_LinkConfig)


class LoraLink(Generic[ConfigT]):
    """Base of a LoRa transport; subclasses name their task kind and do the radio work."""

    TASK_KIND = "lora"

    def __init__(
        self,
        config: ConfigT,
        on_frame: OnFrame,
        on_state: Callable[[str, str], None] | None,
        metrics: Metrics | None,
    ) -> None:
        self.config = config
        self._on_frame = on_frame
        self._on_state = on_state
        self.metrics = metrics or Metrics()
        self._state: PortState = "waiting"
        self._waiting_reason: str | None = "not started"
        self.counts: Counter[str] = Counter()

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def task_name(self) -> str:
        return f"{self.TASK_KIND}:{self.config.name}"

    @property
    def state(self) -> PortState:
        return self._state

    @property
    def waiting_reason(self) -> str | None:
        return None if self._state == "open" else self._waiting_reason

    @property
    def sends_downlinks(self) -> bool:
        """Acks and time sync go out on this link (`acks = true`); off, none is even sealed."""
        return self.config.acks

    def stats(self) -> dict[str, int]:
        return dict(self.counts)

    def _count_downlink(self, outcome: str) -> None:
        self.counts[f"downlink:{outcome}"] += 1
        self.metrics.lora_downlinks.labels(self.name, outcome).inc()

    def _set_state(self, state: PortState, reason: str | None) -> None:
        changed = state != self._state or reason != self._waiting_reason
        self._state, self._waiting_reason = state, reason
        if state == "waiting" and changed:
            log.warning("lora %s: waiting: %s", self.name, reason)
        if self._on_state is not None and changed:
            try:
                self._on_state(self.name, state)
            except Exception:
                log.exception("lora %s: on_state failed", self.name)
