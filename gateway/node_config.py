"""Remote configuration of nodes: a command from MQTT or from `edgeveil gateway nodes configure`,
checked with the node firmware's own rules, kept in the registry's file until the node answers,
delivered as a sealed config_update (SPEC.md section 7.7) at the node's next contact, and
followed to the node's config_applied or config_rejected event.

    MQTT  {prefix}/{site}/{gateway}/command/node/{node}/configure
          {"id": "c-17", "settings": {"reading_interval_s": 300}, "by": "ops-dashboard"}
    CLI   edgeveil gateway nodes configure 42 reading_interval_s=300 --by alice

A command's states, each published as JSON on {prefix}/{site}/{gateway}/command/node/{node}/result
(QoS 1, through the spool like everything the gateway publishes) and logged (the audit trail,
naming the source and who asked):

    accepted   checked and stored: a gateway restart keeps it
    delivered  sent to the node as a config_update under its version (sent again every
               RESEND_S at the node's contacts until the node answers, at most MAX_SENDS times)
    applied    the node answered config_applied (a zone alone: applied by the gateway at once)
    rejected   refused by the gateway's checks (nothing sent, nothing stored) or by the node
    failed     the node did not answer MAX_SENDS deliveries

Rules that keep it safe:

- Only the settings SPEC.md 7.7 gives a node, checked by firmware/edgeveil_node/config.py's
  check_update() (the rules of the node's configuration file) before anything is stored or
  sent. `key_epoch` is the gateway's own (re-keys) and the privacy policy is not a setting:
  neither can be set remotely.
- The zone is the gateway's: it decides which zone's aggregates a node's frames join, so it
  changes in the registry when the command is accepted (the node's own copy is not used).
- Bounded: at most MAX_OPEN commands wait per node; the next is rejected until they end.
- Versions count from FIRST_VERSION per node, above every re-key's version (a key epoch,
  1..255), so a node's answer names one of them unambiguously.
- Who may publish on the command topics is the broker's decision: ship the ACL
  (examples/mosquitto-acl.conf) so that only operators may. MQTT 3.1.1 does not tell a
  subscriber who published; `by` is what the client says, logged as such.
- The gateway's MQTT session is clean: a command published while the gateway is away from the
  broker is not delivered to it; a client that sees no `accepted` publishes it again (same id:
  a command whose id is still open for the node is taken once).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from firmware.edgeveil_node import config as node_config_rules

from .errors import RegistryError
from .records import OutMessage, Topics
from .registry import Command, NodeRegistry

__all__ = [
    "FIRST_VERSION",
    "MAX_OPEN",
    "MAX_SENDS",
    "RESEND_S",
    "CommandRejected",
    "NodeConfigs",
    "check_settings",
    "parse_assignments",
]

log = logging.getLogger("edgeveil.config")

FIRST_VERSION = 256
MAX_OPEN = 4
RESEND_S = 60.0
MAX_SENDS = 5
_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_COMMAND_TOPIC = re.compile(r"command/node/(\d{1,10})/configure")

Publish = Callable[[list[OutMessage]], Awaitable[None]]


class CommandRejected(Exception):
    """A command the gateway refuses before storing or sending anything; the reason is for the
    client (the result's `reason`) and the log."""


def check_settings(settings: Any) -> tuple[dict[str, Any], str | None]:
    """(what the node is sent, the new zone or None), by the node firmware's own rules;
    CommandRejected naming the first wrong setting."""
    try:
        node_config_rules.check_update(settings)
    except node_config_rules.ConfigError as exc:
        raise CommandRejected(str(exc)) from None
    node = {k: v for k, v in settings.items() if k != "zone"}
    zone = settings.get("zone")
    if zone == "":
        raise CommandRejected("zone: must not be empty")
    return node, zone


def parse_assignments(assignments: list[str]) -> dict[str, Any]:
    """`reading_interval_s=300 ble_scan=false zone=north` from the command line as settings:
    the zone as text, true/false as booleans, the rest as whole numbers."""
    settings: dict[str, Any] = {}
    for item in assignments:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise CommandRejected(
                f"{item!r}: write settings as name=value, e.g. reading_interval_s=300"
            )
        if name == "zone":
            settings[name] = text
        elif text in ("true", "false"):
            settings[name] = text == "true"
        else:
            try:
                settings[name] = int(text)
            except ValueError:
                raise CommandRejected(f"{name}: {text!r} is not a whole number") from None
    return settings


class NodeConfigs:
    """The service's side of remote configuration (module docstring). `publish` puts result
    messages into the spool (None: results are only logged, as for the command line)."""

    def __init__(self, registry: NodeRegistry, topics: Topics, publish: Publish | None) -> None:
        self.registry = registry
        self.topics = topics
        self._publish = publish

    @property
    def subscription(self) -> str:
        """The topic filter of every node's command topic."""
        return f"{self.topics.base}/command/node/+/configure"

    # -- commands in ---------------------------------------------------------------------------

    async def submit(
        self, node_id: int, id_: str, settings: Any, *, source: str, by: str | None = None
    ) -> Command:
        """Check and store a command; its `accepted` (or, for a zone alone, `applied`) result
        is published. CommandRejected (with nothing stored, nothing sent) otherwise; the
        caller reports it (reject())."""
        if not _ID.fullmatch(id_):
            raise CommandRejected("id: 1 to 64 letters, digits or . _ : -")
        if by is not None and (not isinstance(by, str) or len(by) > 64):
            raise CommandRejected("by: text of at most 64 characters")
        node, zone = check_settings(settings)
        entry = self.registry.get(node_id)
        if entry is None:
            raise CommandRejected(f"node {node_id} is not registered at this gateway")
        if entry.revoked:
            raise CommandRejected(f"node {node_id} is revoked")
        for command in self.registry.open_commands(node_id):
            if command.id == id_:
                return command  # the same command delivered twice (QoS 1): taken once
        try:
            command = self.registry.add_command(
                node_id,
                id_,
                node,
                source=source,
                by=by,
                zone=zone,
                first_version=FIRST_VERSION,
                max_open=MAX_OPEN,
            )
        except RegistryError as exc:
            raise CommandRejected(str(exc)) from None
        log.info(
            "node %d: configuration %r from %s%s accepted: %s%s",
            node_id,
            id_,
            source,
            f" (by {by!r})" if by else "",
            json.dumps(settings, sort_keys=True),
            f", version {command.version}" if command.version is not None else "",
        )
        await self._result(command)
        return command

    async def reject(
        self, node_id: int, id_: str, reason: str, *, source: str, by: str | None = None
    ) -> None:
        """Publish and log a command refused before it was stored."""
        log.warning(
            "node %d: configuration %r from %s%s rejected: %s",
            node_id,
            id_,
            source,
            f" (by {by!r})" if by else "",
            reason,
        )
        now = time.time()
        refused = Command(
            0, node_id, id_, source, by, {}, None, "rejected", reason, now, now, 0, None
        )
        await self._result(refused)

    async def handle_mqtt(self, topic: str, payload: bytes) -> Command | None:
        """A message on a command topic (the uplink calls this for each one): the command
        stored, or None (rejected, and its result published)."""
        match = _COMMAND_TOPIC.fullmatch(topic.removeprefix(self.topics.base + "/"))
        if match is None:
            log.warning("MQTT message on %r ignored: not a command topic", topic[:120])
            return None
        node_id = int(match[1])
        try:
            body = json.loads(payload)
        except (UnicodeDecodeError, ValueError):
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            await self.reject(
                node_id,
                "",
                'the payload must be a JSON object with "id" (text) and "settings" (an object)',
                source="mqtt",
            )
            return None
        id_, by = body["id"][:64], body.get("by")
        unknown = set(body) - {"id", "settings", "by"}
        try:
            if unknown:
                raise CommandRejected(f"unknown field {sorted(unknown)[0]!r} (id, settings, by)")
            return await self.submit(node_id, id_, body.get("settings"), source="mqtt", by=by)
        except CommandRejected as exc:
            shown_by = by if isinstance(by, str) and len(by) <= 64 else None
            await self.reject(node_id, id_, str(exc), source="mqtt", by=shown_by)
        return None

    # -- deliveries and answers ----------------------------------------------------------------

    async def due(self, node_id: int, now: float | None = None) -> Command | None:
        """The command to send to the node at this contact, if any: its oldest open one, unless
        it was sent less than RESEND_S ago. A command sent MAX_SENDS times without an answer
        fails here, and the next one is due."""
        now = time.time() if now is None else now
        for command in self.registry.open_commands(node_id):
            if command.last_sent is not None and now - command.last_sent < RESEND_S:
                return None
            if command.sends < MAX_SENDS:
                return command
            reason = f"the node did not answer {command.sends} deliveries"
            await self._finish(command, "failed", reason)
        return None

    async def sent(self, command: Command, now: float | None = None) -> None:
        """The command went out as a config_update (again), at `now`."""
        self.registry.update_command(command.seq, "delivered", sent=True, now=now)
        if command.state != "delivered":
            log.info("node %d: configuration %r delivered", command.node_id, command.id)
            await self._result(replace(command, state="delivered", updated=time.time()))

    async def answered(self, node_id: int, version: int, applied: bool) -> None:
        """The node's config_applied (or config_rejected) event for `version`."""
        for command in self.registry.open_commands(node_id):
            if command.version == version:
                if applied:
                    await self._finish(command, "applied", None)
                else:
                    await self._finish(command, "rejected", "the node rejected it")
                return

    async def fail(self, command: Command, reason: str) -> None:
        """The command cannot be delivered (the node's link sends no downlinks)."""
        await self._finish(command, "failed", reason)

    async def _finish(self, command: Command, state: str, reason: str | None) -> None:
        self.registry.update_command(command.seq, state, reason)
        log.info(
            "node %d: configuration %r %s%s",
            command.node_id,
            command.id,
            state,
            f": {reason}" if reason else "",
        )
        await self._result(replace(command, state=state, reason=reason, updated=time.time()))

    async def _result(self, command: Command) -> None:
        if self._publish is None:
            return
        body: dict[str, Any] = {
            "id": command.id,
            "node": command.node_id,
            "state": command.state,
            "source": command.source,
            "by": command.by,
            "time": round(time.time(), 3),
        }
        if command.version is not None:
            body["version"] = command.version
        if command.reason is not None:
            body["reason"] = command.reason
        topic = f"{self.topics.base}/command/node/{command.node_id}/result"
        msg_id = f"{self.topics.gateway_id}:{command.node_id}:command:{command.seq}:{command.state}"
        if command.seq == 0:  # rejected before it was stored: no sequence of its own
            msg_id += f":{time.time_ns()}"
        payload = json.dumps(body, separators=(",", ":")).encode()
        await self._publish([OutMessage(msg_id, topic, payload)])
