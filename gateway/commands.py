"""`edgeveil gateway ...`: run, check-config, status, import-nodes.

Each function returns an exit status and raises UsageError for what the user got wrong (the
CLI prints it as one line and exits 2).
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import logging
import os
import signal
import sqlite3
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from protocol.messages import RESET_CAUSES

from . import config as config_mod
from .errors import ConfigError, EdgeveilError, RegistryError
from .node_config import CommandRejected, NodeConfigs, parse_assignments
from .node_health import NodeHealth, summary
from .records import Topics
from .registry import NodeEntry, NodeRegistry
from .service import Gateway, load_policy
from .sqlite import SPOOL_MESSAGE_BYTES, state_dir_bound, state_dir_bytes


class UsageError(Exception):
    """Something the user asked for cannot be done as asked: one line, exit status 2."""


def _load(path: Path | None) -> config_mod.GatewayConfig:
    try:
        return config_mod.load(path)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def setup_logging(level: str) -> None:
    # key facts in the message, never payloads, secrets or device identifiers (ingest, uplink
    # and transport log only counts, reasons, ports and node ids)
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def check_config(path: Path | None) -> int:
    config = _load(path)
    print(f"{path or 'defaults'}: ok")
    print(f"  site {config.site}, gateway {config.gateway_id}, state in {config.state_dir}")
    for port in config.serial:
        where = port.url or (
            f"usb {port.usb.vid:04x}:{port.usb.pid:04x}"
            + (f" serial {port.usb.serial_number}" if port.usb and port.usb.serial_number else "")
            if port.usb
            else "?"
        )
        print(f"  serial {port.name}: {where} at {port.baudrate} baud")
    for fwd in config.packet_forwarders:
        acks = "acks on" if fwd.acks else "acks off"
        print(
            f"  lora {fwd.name}: packet forwarder server on UDP {fwd.host}:{fwd.port}, "
            f"{len(fwd.gateways)} gateways allowed, {acks}"
        )
    for hat in config.spi_radios:
        acks = "acks on" if hat.acks else "acks off"
        print(
            f"  lora {hat.name}: {hat.chip.upper()} on /dev/spidev{hat.bus}.{hat.cs}, "
            f"{hat.freq_hz / 1e6:.3f} MHz SF{hat.sf}BW{hat.bw_khz}, {acks}"
        )
    if config.mqtt is None:
        print("  mqtt: embedded broker on localhost (no [mqtt] table)")
    else:
        m = config.mqtt
        tls = "TLS" if m.tls else "no TLS"
        user = f", user {m.username}" if m.username else ""
        print(f"  mqtt: {m.host}:{m.port}, {tls}{user}, payload {m.payload}")
    s = config.spool
    print(f"  spool: at most {s.max_messages} messages, {s.max_age_s} s, when full: {s.when_full}")
    _check_storage(config)
    print(f"  metrics: {config.metrics_listen or 'off'}")
    try:
        policy = load_policy(config)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    origin = config.privacy_policy or "the default policy"
    print(f"  privacy: {policy.name!r} from {origin}, hash {policy.hash[:12]}")
    return 0


def _check_storage(config: config_mod.GatewayConfig) -> None:
    """The state directory's bound (docs/operators/storage.md) against its filesystem's free space:
    a warning, not an error (the gateway runs degraded on a full disk, losing nothing)."""
    state = config.state_dir
    nodes = _registered_nodes(state / "registry.db")
    bound = state_dir_bound(config.spool.max_messages, max(nodes, 1))
    used = state_dir_bytes(state)
    where = next((p for p in (state, *state.parents) if p.exists()), None)
    try:
        fs = os.statvfs(where or ".")
    except OSError as exc:
        print(f"  storage: cannot read the free space of {where}: {exc.strerror}")
        return
    room = fs.f_bavail * fs.f_frsize + used  # what the directory can grow into, with itself
    mb = 1024 * 1024
    line = (
        f"  storage: the state directory can reach {bound / mb:.0f} MB (a full spool, "
        f"{nodes} nodes registered, bounded WAL files); it uses {used / mb:.1f} MB, "
        f"{fs.f_bavail * fs.f_frsize / mb:.0f} MB free on its filesystem"
    )
    print(line)
    if room < bound:
        print(
            f"  WARNING: storage: {where} has room for {room / mb:.0f} MB, less than the "
            f"{bound / mb:.0f} MB the state directory can reach: when the disk is full the "
            "gateway stops acknowledging frames until space returns. Lower [spool] "
            "max_messages (each message takes about "
            f"{SPOOL_MESSAGE_BYTES} bytes) or give state_dir a larger filesystem"
        )


def _registered_nodes(path: Path) -> int:
    """How many nodes the registry at `path` holds (read-only; 0 when there is none yet)."""
    if not path.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            return int(conn.execute("SELECT count(*) FROM nodes").fetchone()[0])
    except sqlite3.Error:
        return 0  # unreadable or another file: `gateway run` says so in full


def import_nodes(path: Path, config_path: Path | None, replace: bool) -> int:
    config = _load(config_path)
    try:
        config.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"cannot create the state directory {config.state_dir}: {exc.strerror}"
        ) from None
    try:
        with NodeRegistry.open(config.state_dir / "registry.db") as registry:
            added = registry.import_file(path, replace=replace)
            total = len(registry)
    except RegistryError as exc:
        raise UsageError(str(exc)) from None
    print(f"{added} nodes imported from {path}; {total} registered in {config.state_dir}")
    return 0


def advance_counters(config_path: Path | None, downlinks: int, uplinks: int) -> int:
    """After restoring the state directory from a backup (docs/operators/backups.md)."""
    path = _registry_path(config_path, "nothing to advance (was the backup restored?)")
    try:
        with NodeRegistry.open(path) as registry:
            moved, exhausted = registry.advance_after_restore(downlinks, uplinks)
    except RegistryError as exc:
        raise UsageError(str(exc)) from None
    print(
        f"{path}: downlink counters of every node advanced by {downlinks}"
        + (f", uplink replay windows by {uplinks}" if uplinks else "")
        + f" ({moved} nodes); the gateway can start now"
    )
    if exhausted:
        print(
            f"nodes whose downlink counters are used up now: {', '.join(map(str, exhausted))}; "
            "provision them with a new secret"
        )
    return 0


def _registry_path(
    config_path: Path | None,
    missing: str = "import nodes first (edgeveil gateway import-nodes)",
) -> Path:
    """The configuration's registry file; UsageError saying `missing` when there is none."""
    path = _load(config_path).state_dir / "registry.db"
    if not path.exists():
        raise UsageError(f"no registry at {path}: {missing}")
    return path


def list_nodes(config_path: Path | None, as_json: bool = False) -> int:
    path = _registry_path(config_path)
    now = time.time()
    try:
        with NodeRegistry.open(path) as registry:
            revoked = registry.revoked()
            successors = registry.successors()
            books = registry.health_docs()
            nodes = []
            for node_id in registry.node_ids():
                entry = registry.get(node_id)
                if entry is None:
                    continue
                doc = books.get(node_id)
                health = summary(None if doc is None else NodeHealth.from_doc(node_id, doc), now)
                waiting = len(registry.open_commands(node_id))
                highest = entry.window.highest
                nodes.append(
                    {
                        "node": node_id,
                        "zone": entry.zone,
                        "key_epoch": entry.epoch,
                        "highest_counter": None if highest < 0 else highest,
                        "state": _node_state(entry, node_id, revoked, successors, health),
                        "commands_waiting": waiting,
                        **health,
                    }
                )
    except RegistryError as exc:
        raise UsageError(str(exc)) from None
    if as_json:
        print(json.dumps({"registry": str(path), "time": now, "nodes": nodes}, indent=1))
        return 0
    print(f"{path}: {len(nodes)} nodes")
    if nodes:
        table = [
            (
                "node",
                "zone",
                "link",
                "last heard",
                "frames",
                "rejected",
                "battery",
                "uptime",
                "resets",
                "queue",
                "dropped",
                "clock",
                "signal",
                "state",
            ),
            *(_node_row(n, now) for n in nodes),
        ]
        widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
        for row in table:
            print("  " + "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _node_state(
    entry: NodeEntry,
    node_id: int,
    revoked: dict[int, float],
    successors: dict[int, int],
    health: dict[str, Any],
) -> str:
    if node_id in revoked:
        return "revoked " + _utc(revoked[node_id])
    state = "active"
    if node_id in successors:
        state = f"active, until node {successors[node_id]} is heard"
    elif entry.rekey is not None:
        state = f"active, re-key to key epoch {entry.rekey} pending"
    if health.get("silent"):
        state = "SILENT, " + state
    return state


def _reset_cause(cause: int) -> str:
    return RESET_CAUSES[cause] if 0 <= cause < len(RESET_CAUSES) else str(cause)


def _ago(then: float | None, now: float) -> str:
    if then is None:
        return "never"
    seconds = max(0, int(now - then))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def _node_row(node: dict[str, Any], now: float) -> tuple[str, ...]:
    status = node.get("status") or {}

    def field(name: str, fmt: str = "{}") -> str:
        return fmt.format(status[name]) if name in status else "-"

    rejected = sum((node.get("frames_rejected") or {}).values())
    lora = node.get("lora")
    signal = "-"
    if lora:
        signal = f"SF{lora['sf']} {lora['rssi_dbm']:g} dBm {lora['snr_db']:g} dB"
    cause = node.get("reset_cause")
    resets = f"{node.get('boots', 0)}" + (f" ({_reset_cause(cause)})" if cause is not None else "")
    clock = "-"
    if "clock_synced" in status:
        clock = "synced" if status["clock_synced"] else "NOT SYNCED"
    return (
        str(node["node"]),
        node["zone"] or "-",
        node.get("link") or "-",
        _ago(node.get("last_heard"), now),
        str(node.get("frames_accepted", 0)),
        str(rejected),
        field("battery_mv", "{} mV"),
        field("uptime_s", "{} s"),
        resets,
        field("queue_depth"),
        field("dropped"),
        clock,
        signal,
        node["state"],
    )


def show_node(config_path: Path | None, node_id: int) -> int:
    path = _registry_path(config_path)
    try:
        with NodeRegistry.open(path) as registry:
            entry = registry.get(node_id)
            if entry is None:
                raise UsageError(
                    f"node {node_id} is not registered in {path} (edgeveil gateway nodes list "
                    "shows the registered ones)"
                )
            revoked = registry.revoked()
            history = registry.commands(node_id)
            doc = registry.health_docs().get(node_id)
    except RegistryError as exc:
        raise UsageError(str(exc)) from None
    highest = entry.window.highest
    print(f"node {node_id}")
    print(f"  zone             {entry.zone or '-'}")
    print(f"  key epoch        {entry.epoch}")
    print(f"  highest counter  {'-' if highest < 0 else highest}")
    state = "revoked " + _utc(revoked[node_id]) if node_id in revoked else "active"
    if entry.rekey is not None and node_id not in revoked:
        state += f", re-key to key epoch {entry.rekey} pending"
    print(f"  state            {state}")
    if doc is not None:
        _print_health(NodeHealth.from_doc(node_id, doc))
    print(f"  configuration changes ({len(history)}, newest first):")
    for c in history:
        settings = " ".join(f"{k}={json.dumps(v)}" for k, v in sorted(c.settings.items()))
        version = "-" if c.version is None else str(c.version)
        who = f"{c.source}" + (f" ({c.by})" if c.by else "")
        line = f"    {_utc(c.created)}  {c.id}  {who}  version {version}  {c.state}"
        if c.sends:
            line += f" after {c.sends} deliveries" if c.sends > 1 else " after 1 delivery"
        if c.reason:
            line += f": {c.reason}"
        print(line)
        if settings:
            print(f"      {settings}")
    return 0


def _print_health(node: NodeHealth) -> None:
    now = time.time()
    health = summary(node, now)
    interval = health["reading_interval_s"]
    print(f"  link             {health['link'] or '-'}")
    print(f"  first heard      {_utc(health['first_heard']) if health['first_heard'] else '-'}")
    heard = _ago(health["last_heard"], now) + (" (SILENT)" if health["silent"] else "")
    print(f"  last heard       {heard}")
    print(f"  reading interval {'-' if interval is None else f'{interval:g} s (observed)'}")
    rejected = health["frames_rejected"]
    print(
        f"  frames           {health['frames_accepted']} accepted, "
        f"{health['frames_duplicate']} duplicate, rejected: "
        + (", ".join(f"{k} {v}" for k, v in sorted(rejected.items())) or "none")
    )
    cause = health["reset_cause"]
    shown = "-" if cause is None else _reset_cause(cause)
    print(f"  resets           {health['boots']} heard, last cause {shown}")
    if health["status"]:
        fields = " ".join(f"{k}={v}" for k, v in sorted(health["status"].items()))
        print(f"  last status      {_ago(health['status_at'], now)}: {fields}")
    if "lora" in health:
        lora = health["lora"]
        signal = f"SF{lora['sf']}, RSSI {lora['rssi_dbm']} dBm, SNR {lora['snr_db']} dB"
        print(f"  LoRa             {signal}")


def configure_node(
    config_path: Path | None, node_id: int, assignments: list[str], by: str | None
) -> int:
    path = _registry_path(config_path)
    config = _load(config_path)
    try:
        settings = parse_assignments(assignments)
        with NodeRegistry.open(path) as registry:
            prefix = (config.mqtt or config_mod.MqttConfig()).topic_prefix
            topics = Topics(prefix, config.site, config.gateway_id)
            configs = NodeConfigs(registry, topics, publish=None)
            command_id = f"cli-{int(time.time())}-{os.getpid()}"
            command = asyncio.run(
                configs.submit(
                    node_id, command_id, settings, source="cli", by=by or getpass.getuser()
                )
            )
    except CommandRejected as exc:
        raise UsageError(f"node {node_id}: not configured: {exc}") from None
    except RegistryError as exc:
        raise UsageError(str(exc)) from None
    if command.version is None:
        print(f"node {node_id}: zone changed to {settings['zone']!r} (applies from its next frame)")
        return 0
    print(
        f"node {node_id}: configuration {command.id} accepted as version {command.version}; a "
        "running gateway sends it at the node's next contact and publishes the results on "
        f"{topics.base}/command/node/{node_id}/result. Follow it with: edgeveil gateway nodes "
        f"show {node_id}"
    )
    return 0


def revoke_node(config_path: Path | None, node_id: int) -> int:
    path = _registry_path(config_path)
    try:
        with NodeRegistry.open(path) as registry:
            changed = registry.revoke(node_id)
    except RegistryError as exc:
        raise UsageError(f"{exc} (edgeveil gateway nodes list shows the registered ones)") from None
    if not changed:
        print(f"node {node_id} was revoked already")
        return 0
    print(
        f"node {node_id} revoked: its frames are refused from now on (a running gateway "
        "applies it with its next frames). To bring the place back into service: provision a "
        "new identity (edgeveil node provision), deploy it and import it here"
    )
    return 0


def rekey_node(config_path: Path | None, node_id: int) -> int:
    path = _registry_path(config_path)
    try:
        with NodeRegistry.open(path) as registry:
            epoch = registry.request_rekey(node_id)
    except RegistryError as exc:
        raise UsageError(f"{exc} (edgeveil gateway nodes list shows the registered ones)") from None
    print(
        f"node {node_id}: re-key to key epoch {epoch} requested. A running gateway sends it "
        "each time it hears the node (at most once a minute) until the node uses the new keys; "
        "edgeveil gateway nodes list shows it pending until then"
    )
    return 0


def _utc(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(when))


def run(path: Path | None) -> int:
    config = _load(path)
    setup_logging(config.log_level)
    gateway = Gateway(config)

    async def main() -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            if task is not None:  # stop cleanly: the uplink says "offline" on its way out
                loop.add_signal_handler(sig, task.cancel)
        loop.add_signal_handler(signal.SIGHUP, gateway.reload_policy)  # systemctl reload
        await gateway.run()

    try:
        asyncio.run(main())
    except asyncio.CancelledError:
        pass
    except EdgeveilError as exc:
        print(f"edgeveil gateway: {exc}", file=sys.stderr)
        return 1
    return 0


def status(metrics_url: str) -> int:
    if not metrics_url.startswith(("http://", "https://")):
        raise UsageError(f"--metrics must be an http:// URL, got {metrics_url!r}")
    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as response:  # noqa: S310 - local URL the user gave
            text = response.read().decode()
    except (urllib.error.URLError, OSError, ValueError) as exc:  # ValueError: a malformed URL
        reason = getattr(exc, "reason", exc)
        print(f"no gateway answers at {metrics_url} ({reason}): is it running, with metrics on?")
        return 1
    values: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                values[sample.name].append((sample.labels, sample.value))
    except ValueError:
        print(f"{metrics_url} answers, but not with Prometheus metrics: is it the gateway's?")
        return 1

    def one(name: str) -> float:
        return sum(v for _, v in values.get(name, []))

    print(
        f"broker: {'connected' if one('edgeveil_broker_connected') else 'NOT connected'}, "
        f"{int(one('edgeveil_mqtt_published_total'))} messages published"
    )
    print(
        f"spool: {int(one('edgeveil_spool_depth'))} waiting, oldest "
        f"{one('edgeveil_spool_oldest_age_seconds'):.0f} s"
    )
    failing = [labels["store"] for labels, v in values.get("edgeveil_storage_degraded", []) if v]
    errors = ", ".join(
        f"{labels['store']} {labels['reason']} {int(v)}"
        for labels, v in values.get("edgeveil_storage_errors_total", [])
        if v
    )
    size = one("edgeveil_state_dir_bytes") / 1e6
    free = one("edgeveil_state_dir_free_bytes") / 1e6
    if failing:
        print(
            f"storage: DEGRADED, cannot write the {' and the '.join(failing)} (failed writes: "
            f"{errors}): frames are not acknowledged until it writes again; the log says "
            f"what to do. State directory {size:.1f} MB, {free:.0f} MB free"
        )
    else:
        past = f"; failed writes since start: {errors}" if errors else ""
        print(f"storage: ok, state directory {size:.1f} MB, {free:.0f} MB free{past}")
    for labels, value in values.get("edgeveil_link_up", []):
        print(f"serial {labels['port']}: {'open' if value else 'WAITING for the port'}")
    outcomes: dict[str, float] = defaultdict(float)
    for labels, value in values.get("edgeveil_frames_total", []):
        outcomes[labels["outcome"]] += value
    shown = ", ".join(f"{k} {int(v)}" for k, v in sorted(outcomes.items())) or "none yet"
    print(f"frames: {shown}")
    print(f"nodes registered: {int(one('edgeveil_registered_nodes'))}")
    return 0
