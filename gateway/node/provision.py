"""`edgeveil node provision`: a new node identity, its configuration file, its registration.

A node is: a random node id (unique in the registry it joins), a random 32-byte secret (the
`secrets` module), a zone, a link and its sensors. Provisioning writes the node's
configuration (the edgeveil.json that `deploy` copies to the board; mode 0600, it holds the
secret) and registers the node with its gateway, either directly in a registry database or in
an export file (JSON, mode 0600) that the gateway imports with `edgeveil gateway import-nodes`.
Provisioning a box of boards into one export file appends to it.

`replaces=OLD` (`--replace NODE`) provisions a replacement for a broken board: a new identity
(never the old one: its counter state is lost with the board) in the old node's zone, recorded
as OLD's successor. The gateway revokes OLD when it accepts the new node's first frame, so the
place is never without a working identity and the old one cannot come back.

The configuration is validated with the firmware's own config module, so a file provisioning
writes is one the node accepts. The label (text and QR code) shows the node id and zone only:
never the secret.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firmware.edgeveil_node import config as node_config  # the firmware's own validation
from protocol.keys import MAX_NODE_ID

from ..errors import RegistryError
from ..registry import MAX_ZONE_BYTES, NodeRegistry
from .errors import NodeCommandError

__all__ = ["Provisioned", "label_text", "parse_link", "parse_sensor", "provision", "qr_payload"]

SECRET_BYTES = 32


@dataclass(frozen=True)
class Provisioned:
    node_id: int
    zone: str
    config_path: Path
    registered_in: Path
    exported: bool  # True: registered_in is an export file to import at the gateway


def _pairs(text: str, what: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise NodeCommandError(f"{what}: {item!r} must be KEY=NUMBER, e.g. scl=22")
        try:
            out[key.strip()] = int(value, 0)
        except ValueError:
            raise NodeCommandError(f"{what}: {key}={value!r} must be a whole number") from None
    return out


def parse_sensor(text: str) -> dict[str, Any]:
    """'bme280:i2c=0,scl=22,sda=21' -> {"type": "bme280", "i2c": 0, "scl": 22, "sda": 21}."""
    kind, _, rest = text.partition(":")
    if kind not in node_config.SENSOR_TYPES:
        raise NodeCommandError(
            f"--sensor {text!r}: unknown type {kind!r} (known: "
            f"{', '.join(node_config.SENSOR_TYPES)})"
        )
    return {"type": kind, **_pairs(rest, f"--sensor {kind}")}


def parse_link(text: str) -> dict[str, Any]:
    """'console' or 'uart:uart=1,tx=17,rx=16[,baudrate=115200]' -> the config's link object."""
    port, _, rest = text.partition(":")
    if port not in ("console", "uart"):
        raise NodeCommandError(
            f"--link {text!r}: must be console (frames on the USB line) or "
            "uart:uart=N,tx=PIN,rx=PIN"
        )
    return {"type": "serial", "port": port, **_pairs(rest, "--link")}


def _read_template(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise NodeCommandError(f"cannot read the template {path}: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise NodeCommandError(f"the template {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise NodeCommandError(f"the template {path} must be a JSON object like edgeveil.json")
    for key in ("node_id", "secret"):
        if key in data:
            raise NodeCommandError(
                f"the template {path} has {key!r}: remove it (provision makes a new one per node)"
            )
    return data


def _new_node_id(taken: set[int]) -> int:
    while True:
        node_id = 1 + secrets.randbelow(MAX_NODE_ID)
        if node_id not in taken:
            return node_id


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner may read, through a temporary file and a rename."""
    directory = path.parent if str(path.parent) else Path()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.")  # mode 0600
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise NodeCommandError(f"cannot write {path}: {exc.strerror}") from None


def build_config(
    *,
    node_id: int,
    secret: bytes,
    zone: str,
    template: dict[str, Any],
    link: dict[str, Any] | None,
    sensors: list[dict[str, Any]],
) -> dict[str, Any]:
    """The node's configuration document, validated by the firmware's config module."""
    data = dict(template)
    data["node_id"] = node_id
    data["secret"] = secret.hex()
    data["zone"] = zone
    if link is not None:
        data["link"] = link
    if sensors:
        data["sensors"] = sensors
    try:
        node_config.Config(data)
    except node_config.ConfigError as exc:
        raise NodeCommandError(f"the node configuration would be invalid: {exc}") from None
    return data


def provision(
    *,
    zone: str | None,
    config_out: Path | None = None,
    registry: Path | None = None,
    export: Path | None = None,
    template: Path | None = None,
    link: str | None = None,
    sensors: tuple[str, ...] = (),
    node_id: int | None = None,
    replaces: int | None = None,
) -> Provisioned:
    """Create, register and write one node. Exactly one of `registry`, `export`. `zone` may
    be None only when replacing a node in `registry` (the new node takes its zone)."""
    if replaces is not None and registry is not None and export is None:
        zone = _zone_of_replaced(registry, replaces, zone)
    if zone is None:
        raise NodeCommandError(
            "--zone: say where the node hangs"
            + (" (the export file does not know the replaced node's zone)" if replaces else "")
        )
    if len(zone.encode("utf-8")) > MAX_ZONE_BYTES:
        raise NodeCommandError(f"--zone: at most {MAX_ZONE_BYTES} bytes, got {zone!r}")
    if node_id is not None and not 1 <= node_id <= MAX_NODE_ID:
        raise NodeCommandError(f"--node-id must be 1..{MAX_NODE_ID}, got {node_id}")
    base = {} if template is None else _read_template(template)
    parsed_link = None if link is None else parse_link(link)
    parsed_sensors = [parse_sensor(s) for s in sensors]
    secret = secrets.token_bytes(SECRET_BYTES)

    def register(reg: NodeRegistry, where: Path) -> dict[str, Any]:
        chosen = _pick_id(node_id, set(reg.node_ids()), where)
        document = build_config(
            node_id=chosen,
            secret=secret,
            zone=zone,
            template=base,
            link=parsed_link,
            sensors=parsed_sensors,
        )
        reg.add(chosen, secret, zone, replaces=replaces)
        return document

    try:
        if registry is not None and export is None:
            target = registry
            with NodeRegistry.open(registry) as reg:
                document = register(reg, registry)
        elif export is not None and registry is None:
            # appended through a scratch registry, so the file is read, validated and
            # written by the registry's own code
            target = export
            with (
                tempfile.TemporaryDirectory() as scratch,
                NodeRegistry.open(Path(scratch) / "registry.db") as reg,
            ):
                if export.exists():
                    reg.import_file(export, check_replaced=False)
                document = register(reg, export)
                reg.export_file(export)
        else:
            raise NodeCommandError(
                "say where to register the node: --registry FILE (the gateway's registry.db) "
                "or --export FILE (a file to import at the gateway), one of them"
            )
    except RegistryError as exc:
        raise NodeCommandError(str(exc)) from None
    node_id = int(document["node_id"])

    out = config_out if config_out is not None else Path(f"node-{node_id}.json")
    write_private(out, json.dumps(document, indent=2) + "\n")
    return Provisioned(node_id, zone, out, target, exported=export is not None)


def _zone_of_replaced(registry: Path, replaces: int, zone: str | None) -> str:
    """The zone of the node being replaced; NodeCommandError when it is not in the registry,
    is revoked already, or `zone` (if given) says otherwise."""
    try:
        with NodeRegistry.open(registry) as reg:
            entry = reg.get(replaces)
    except RegistryError as exc:
        raise NodeCommandError(str(exc)) from None
    if entry is None:
        raise NodeCommandError(
            f"--replace {replaces}: node {replaces} is not in {registry} (edgeveil gateway "
            "nodes list shows the registered ones)"
        )
    if entry.revoked:
        raise NodeCommandError(
            f"--replace {replaces}: node {replaces} is revoked already; provision the new board "
            "without --replace"
        )
    if zone is not None and zone != entry.zone:
        raise NodeCommandError(
            f"--zone {zone!r}: node {replaces} hangs in {entry.zone!r}; a replacement takes its "
            "place (leave --zone out, or provision without --replace)"
        )
    return entry.zone


def _pick_id(wanted: int | None, taken: set[int], where: Path) -> int:
    if wanted is None:
        return _new_node_id(taken)
    if wanted in taken:
        raise NodeCommandError(
            f"node {wanted} is registered in {where} already: leave out --node-id for a new one"
        )
    return wanted


def qr_payload(node_id: int, zone: str) -> str:
    """What the label's QR code holds: the node id and zone, never the secret."""
    return f"edgeveil node {node_id} zone {zone}"


def label_text(node_id: int, zone: str) -> str:
    """The label as terminal text: id and zone, then the QR code."""
    import segno  # noqa: PLC0415 - only when a label is printed

    qr = segno.make(qr_payload(node_id, zone), error="m")
    buffer = io.StringIO()
    qr.terminal(out=buffer, compact=True, border=2)
    return f"node {node_id}\nzone {zone or '(none)'}\n{buffer.getvalue()}"


def save_label(node_id: int, zone: str, path: Path) -> None:
    """The QR code as an image to print (.png or .svg, by the file name)."""
    import segno  # noqa: PLC0415

    if path.suffix.lower() not in (".png", ".svg"):
        raise NodeCommandError(f"--label {path}: give a .png or .svg file name")
    try:
        segno.make(qr_payload(node_id, zone), error="m").save(str(path), scale=8, border=2)
    except OSError as exc:
        raise NodeCommandError(f"cannot write {path}: {exc.strerror}") from None
