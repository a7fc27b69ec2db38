"""The MQTT interface as a contract (ARCHITECTURE.md rule 7): docs/mqtt/asyncapi.yaml.

    problem = CONTRACT.check(topic, payload, qos)    # None, or what is wrong, in one line

`check` finds the channel whose address template matches the topic (every `{parameter}` one
topic level; where two match, the one with more literal levels: `node/{node_id}/status` before
`node/{node_id}/{stream}`) and validates the payload, decoded by its message's content type,
against that message's JSON Schema with the jsonschema library. A SenML CBOR pack is decoded
with cbor2 and validated twice: its structure against the CBOR schema (integer labels written
as decimal text, as the document says) and, relabelled per RFC 8428 section 6, against the
channel's JSON schema, so both forms keep the same records. Only channels the gateway
publishes to (operations with action `send`) are checked: what clients send the gateway
(commands) may be wrong on purpose in a test. A topic that matches no channel is a problem.

tests/mosquitto.py's Subscriber applies it to everything it receives; the document itself is
validated against the official AsyncAPI 3.0.0 schema from the npm package @asyncapi/specs
(pinned in tests/asyncapi/package-lock.json, installed by scripts/test) in
tests/test_mqtt_contract.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import cbor2
import jsonschema
import yaml
from jsonschema.exceptions import best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

ROOT = Path(__file__).resolve().parent.parent
DOCUMENT = ROOT / "docs" / "mqtt" / "asyncapi.yaml"
SPECS = ROOT / "tests" / "asyncapi" / "node_modules" / "@asyncapi" / "specs" / "schemas"
MISSING_SPECS = "run scripts/test: it installs @asyncapi/specs into tests/asyncapi (npm ci)"

# RFC 8428 section 6, table 6: the CBOR labels of the SenML fields
SENML_CBOR_LABELS = {
    "bver": -1,
    "bn": -2,
    "bt": -3,
    "bu": -4,
    "bv": -5,
    "bs": -6,
    "n": 0,
    "u": 1,
    "v": 2,
    "vs": 3,
    "vb": 4,
    "s": 5,
    "t": 6,
    "ut": 7,
    "vd": 8,
}
_JSON_LABELS = {str(label): name for name, label in SENML_CBOR_LABELS.items()}
_INTEGER = re.compile(r"^-?[0-9]+$")
_PARAMETER = re.compile(r"\{[^/{}]+\}")


@cache
def load_document() -> dict[str, Any]:
    """The document as data, read once: copy it (copy.deepcopy) before changing it."""
    document: dict[str, Any] = yaml.safe_load(DOCUMENT.read_text(encoding="utf-8"))
    return document


def official_schema(version: str = "3.0.0") -> dict[str, Any]:
    """The AsyncAPI schema of `version` as the npm package @asyncapi/specs ships it."""
    path = SPECS / f"{version}.json"
    if not path.exists():
        raise AssertionError(f"{path} is missing: {MISSING_SPECS}")
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return schema


def resolve(document: dict[str, Any], node: Any) -> Any:
    """An AsyncAPI object, with a local Reference Object (`$ref: '#/...'`) followed."""
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), f"only local references are used: {ref}"
        node = document
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def cbor_as_json_data(value: Any) -> Any:
    """Decoded CBOR as JSON Schema sees data: integer map keys as their decimal text (the
    document's convention). ValueError for what JSON cannot hold: a text key that reads as an
    integer (it would pass for an integer label), bytes, tags, other keys."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if isinstance(key, bool) or not isinstance(key, int | str):
                raise ValueError(f"a CBOR map key {key!r} that is neither an integer nor text")
            if isinstance(key, str) and _INTEGER.match(key):
                raise ValueError(f"the text label {key!r} where CBOR needs an integer label")
            out[str(key)] = cbor_as_json_data(item)
        return out
    if isinstance(value, list):
        return [cbor_as_json_data(item) for item in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise ValueError(f"a CBOR item JSON has no form for: {type(value).__name__}")


def senml_json_labels(pack: Any) -> Any:
    """A SenML CBOR pack (as cbor_as_json_data gives it) with RFC 8428's JSON labels."""
    if not isinstance(pack, list):
        return pack
    return [
        {_JSON_LABELS.get(k, k): v for k, v in record.items()}
        if isinstance(record, dict)
        else record
        for record in pack
    ]


@dataclass(frozen=True)
class Message:
    name: str
    content_type: str
    validator: jsonschema.protocols.Validator

    def errors(self, data: Any) -> list[str]:
        """What is wrong with `data`, one line per error: where, and the most telling reason
        (for a failed oneOf/anyOf, the alternative that came closest)."""
        out = []
        for error in self.validator.iter_errors(data):
            best = best_match([error])
            where = "/".join(str(p) for p in best.absolute_path) or "payload"
            out.append(f"{where}: {best.message}")
        return sorted(out)


@dataclass(frozen=True)
class Channel:
    name: str
    address: str
    pattern: re.Pattern[str]
    literals: int  # levels without a parameter: the more, the more specific
    messages: tuple[Message, ...]
    gateway_sends: bool
    qos: int | None
    retain: bool | None


class Contract:
    """The channels of an AsyncAPI document, each with validators of its messages."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        uri = DOCUMENT.as_uri()
        registry: Registry[Any] = Registry().with_resource(
            uri, Resource.from_contents(document, default_specification=DRAFT7)
        )
        sends: dict[str, dict[str, Any]] = {}
        receives: set[str] = set()
        for operation in document.get("operations", {}).values():
            channel = operation["channel"]["$ref"].rsplit("/", 1)[-1]
            if operation["action"] == "send":
                sends[channel] = operation.get("bindings", {}).get("mqtt", {})
            else:
                receives.add(channel)
        channels = []
        for name, channel in document["channels"].items():
            messages = []
            for key, ref in channel.get("messages", {}).items():
                message = resolve(document, ref)
                pointer = _payload_pointer(ref, key, name)
                schema = {"$ref": f"{uri}#{pointer}"}
                messages.append(
                    Message(
                        message.get("name", key),
                        message.get("contentType", document["defaultContentType"]),
                        jsonschema.Draft7Validator(schema, registry=registry),
                    )
                )
            binding = sends.get(name, {})
            levels = channel["address"].split("/")
            channels.append(
                Channel(
                    name,
                    channel["address"],
                    _address_pattern(channel["address"]),
                    sum(1 for level in levels if not _PARAMETER.search(level)),
                    tuple(messages),
                    name in sends,
                    binding.get("qos"),
                    binding.get("retain"),
                )
            )
        self.channels = tuple(channels)

    def channel(self, topic: str) -> Channel | None:
        matches = [c for c in self.channels if c.pattern.fullmatch(topic)]
        return max(matches, key=lambda c: c.literals, default=None)

    def by_name(self, name: str) -> Channel:
        return next(c for c in self.channels if c.name == name)

    def check(self, topic: str, payload: bytes, qos: int | None = None) -> str | None:
        """None when the message keeps the contract, else what is wrong (one line)."""
        channel = self.channel(topic)
        if channel is None:
            return f"{topic}: no channel of {DOCUMENT.name} has this topic"
        if not channel.gateway_sends:
            return None  # a client's message to the gateway, not the gateway's own
        if qos is not None and channel.qos is not None and qos != channel.qos:
            return f"{topic} ({channel.name}): QoS {qos}, the document says {channel.qos}"
        problems = list(self.payload_problems(channel, payload))
        if len(problems) < len(channel.messages):
            return None  # one of the channel's messages accepts it
        return f"{topic} ({channel.name}): {'; '.join(problems)}; payload {payload[:200]!r}"

    def payload_problems(self, channel: Channel, payload: bytes) -> Iterator[str]:
        """One problem per message of the channel that does not accept the payload."""
        for message in channel.messages:
            try:
                data = decode(message.content_type, payload)
            except ValueError as exc:
                yield f"not {message.content_type} ({exc})"
                continue
            errors = message.errors(data)
            if not errors and message.content_type == "application/senml+cbor":
                as_json = [m for m in channel.messages if m.content_type.endswith("senml+json")]
                for other in as_json:  # the same records as the JSON form
                    errors += [f"as SenML JSON: {e}" for e in other.errors(senml_json_labels(data))]
            if errors:
                yield f"{message.name} ({message.content_type}): {'; '.join(errors[:5])}"


def decode(content_type: str, payload: bytes) -> Any:
    """The payload as JSON Schema validates it; ValueError when it is not of that type."""
    if content_type == "text/plain":
        return payload.decode("utf-8")  # UnicodeDecodeError is a ValueError
    if content_type in ("application/json", "application/senml+json"):
        return json.loads(payload)
    if content_type == "application/senml+cbor":
        try:
            return cbor_as_json_data(cbor2.loads(payload))
        except cbor2.CBORDecodeError as exc:
            raise ValueError(str(exc)) from None
    raise ValueError(f"a content type the contract cannot decode: {content_type}")


def _payload_pointer(ref: dict[str, Any], key: str, channel: str) -> str:
    """The JSON pointer of a message's payload within the document."""
    if "$ref" in ref:
        return ref["$ref"][1:] + "/payload"
    return f"/channels/{channel}/messages/{key}/payload"


def _address_pattern(address: str) -> re.Pattern[str]:
    parts = _PARAMETER.split(address)
    return re.compile("[^/]*".join(re.escape(p) for p in parts))


@cache
def contract() -> Contract:
    return Contract(load_document())
