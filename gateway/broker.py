"""An embedded MQTT broker (amqtt) for `edgeveil demo` and first steps: nothing to install.

    async with EmbeddedBroker() as broker:          # 127.0.0.1, a free port
        config = MqttConfig(host=broker.host, port=broker.port)

It listens on a loopback address only, allows anonymous clients and keeps nothing on disk.
Production and the tests use Mosquitto (or any MQTT 3.1.1/5 broker); this is a convenience
that lets a gateway without `[mqtt]` in its configuration start and be watched with any MQTT
client.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from .config import is_loopback
from .errors import EdgeveilError

if TYPE_CHECKING:
    from amqtt.broker import Broker

log = logging.getLogger("edgeveil.broker")

_ANONYMOUS = "amqtt.plugins.authentication.AnonymousAuthPlugin"


class EmbeddedBrokerError(EdgeveilError):
    """The embedded broker could not start (its port is taken, most likely)."""


class EmbeddedBroker:
    """amqtt's broker on host:port (port 0: a free port, see `.port` once started)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if not is_loopback(host):
            raise ValueError(f"the embedded broker listens on loopback only, not on {host!r}")
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0..65535, got {port}")
        self.host = host
        self.port = port
        self._requested_port = port
        self._broker: Broker | None = None

    async def start(self) -> None:
        # imported here: amqtt and what it brings (websockets, transitions, ...) take about
        # 15 MB of a gateway's memory, and only a gateway without [mqtt] runs this broker
        from amqtt.broker import Broker  # noqa: PLC0415
        from amqtt.errors import BrokerError  # noqa: PLC0415

        _quiet_amqtt_logs()
        # amqtt offers no public way to read the port it bound, so for port 0 we pick a
        # free one; another process taking it in between is retried.
        attempts = 3 if self._requested_port == 0 else 1
        for attempt in range(attempts):
            port = self._requested_port or _free_port(self.host)
            broker = Broker(_config(self.host, port))
            try:
                await broker.start()
            except BrokerError as exc:
                if attempt + 1 == attempts:
                    raise EmbeddedBrokerError(
                        f"embedded MQTT broker cannot listen on {self.host}:{port}: "
                        f"{exc.__cause__ or exc}"
                    ) from exc
                continue
            self._broker = broker
            self.port = port
            log.info("embedded MQTT broker (amqtt) listening on %s:%d", self.host, port)
            return

    async def stop(self) -> None:
        broker, self._broker = self._broker, None
        if broker is not None:
            await broker.shutdown()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.shield(self.stop())


def _config(host: str, port: int) -> dict[str, Any]:
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return {
        "listeners": {"default": {"type": "tcp", "bind": bind}},
        # Only anonymous access: no event/packet logger plugins, no $SYS topics.
        "plugins": {_ANONYMOUS: {"allow_anonymous": True}},
    }


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _quiet_amqtt_logs() -> None:
    """amqtt logs every connection at INFO, and harmless protocol bookkeeping at WARNING
    ("PUBACK waiter ... already done" with QoS 1 subscribers): keep it to errors, unless
    someone chose a level for it."""
    for name in ("amqtt", "transitions"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.ERROR)


__all__ = ["EmbeddedBroker", "EmbeddedBrokerError"]
