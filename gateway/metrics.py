"""Prometheus metrics of one gateway, on their own registry (so tests and several gateways in
one process do not share counters).

Labels never carry anything personal. The `node` label is a registered node id, or
"unregistered" for frames whose header names a node the registry does not know: that id comes
from an unauthenticated header, and using it as a label would let anyone create unbounded
series.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

UNREGISTERED = "unregistered"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.frames = Counter(
            "edgeveil_frames",
            "Frames received, by port, node and outcome (accepted, duplicate or a reject reason); "
            "observations and motion events are not counted: their number says people were near",
            ["port", "node", "outcome"],
            registry=r,
        )
        self.line_errors = Counter(
            "edgeveil_line_errors",
            "Serial chunks that were not frames (noise, console text), by port and reason",
            ["port", "reason"],
            registry=r,
        )
        self.link_up = Gauge(
            "edgeveil_link_up",
            "1 while the serial port is open, 0 while waiting",
            ["port"],
            registry=r,
        )
        self.link_disconnects = Counter(
            "edgeveil_link_disconnects", "Times a serial port went away", ["port"], registry=r
        )
        self.broker_connected = Gauge(
            "edgeveil_broker_connected", "1 while connected to the MQTT broker", registry=r
        )
        self.published = Counter(
            "edgeveil_mqtt_published", "Messages acknowledged by the broker (PUBACK)", registry=r
        )
        self.spool_depth = Gauge(
            "edgeveil_spool_depth", "Messages waiting in the spool", registry=r
        )
        self.spool_oldest_age = Gauge(
            "edgeveil_spool_oldest_age_seconds", "Age of the oldest spooled message", registry=r
        )
        self.spool_dropped = Counter(
            "edgeveil_spool_dropped",
            "Messages the spool gave up: full (drop_oldest), too old, or refused (refuse_new)",
            ["reason"],
            registry=r,
        )
        self.privacy_denied = Counter(
            "edgeveil_privacy_denied",
            "Accepted messages that left nothing of their own: dropped by the privacy policy, or "
            "taken into a window whose aggregate leaves later (each accepted message is either "
            "this or one MQTT message); observations and motion events are not counted",
            registry=r,
        )
        self.privacy_dropped = Counter(
            "edgeveil_privacy_dropped",
            "What the privacy stage dropped, by reason: unselected (messages no policy stream "
            "selects), unselected_quantity (reading values no stream selects), late (values or "
            "sightings for a window released already), overflow (beyond a window's bounds)",
            ["reason"],
            registry=r,
        )
        self.privacy_releases = Counter(
            "edgeveil_privacy_releases",
            "Windows the privacy stage released, and counts it suppressed (below k) or withheld "
            "(daily privacy budget spent)",
            ["outcome"],
            registry=r,
        )
        self.storage_degraded = Gauge(
            "edgeveil_storage_degraded",
            "1 while the store's last write failed (full disk, I/O error, read-only): frames "
            "are then not acknowledged, and the availability topic says degraded",
            ["store"],
            registry=r,
        )
        self.storage_errors = Counter(
            "edgeveil_storage_errors",
            "Writes a store failed, by reason (disk_full, io_error, read_only, busy, "
            "cannot_open, corrupt, error)",
            ["store", "reason"],
            registry=r,
        )
        self.state_dir_bytes = Gauge(
            "edgeveil_state_dir_bytes",
            "Size of the state directory's files (databases and their WAL files)",
            registry=r,
        )
        self.state_dir_free_bytes = Gauge(
            "edgeveil_state_dir_free_bytes",
            "Free space on the state directory's filesystem (for the gateway's user)",
            registry=r,
        )
        self.registered_nodes = Gauge(
            "edgeveil_registered_nodes", "Nodes in the registry", registry=r
        )
        # LoRa links. The `gateway` label is a concentrator EUI from the allow-list or an SPI
        # radio's name: bounded. Link quality is per gateway, never per node (RSSI and SNR
        # per node could locate it).
        self.lora_datagrams = Counter(
            "edgeveil_lora_datagrams",
            "Packet forwarder datagrams, by link and outcome: push_data, pull_data, tx_ack, "
            "unknown_gateway (EUI not allowed: ignored), or a reason it was malformed",
            ["port", "outcome"],
            registry=r,
        )
        self.lora_packets = Counter(
            "edgeveil_lora_packets",
            "Radio packets, by link, gateway and outcome: forwarded (to ingest), merged (a copy "
            "another gateway heard too), late (a copy after its frame went on), or a rejection "
            "reason (crc_error, base64, not_lora ...)",
            ["port", "gateway", "outcome"],
            registry=r,
        )
        self.lora_rssi = Histogram(
            "edgeveil_lora_rssi_dbm",
            "RSSI of received packets, per gateway (link quality; never per node)",
            ["port", "gateway"],
            buckets=(-130, -120, -115, -110, -105, -100, -90, -80, -70, -50, -30),
            registry=r,
        )
        self.lora_snr = Histogram(
            "edgeveil_lora_snr_db",
            "SNR of received packets, per gateway (link quality; never per node)",
            ["port", "gateway"],
            buckets=(-20, -15, -10, -7.5, -5, -2.5, 0, 2.5, 5, 7.5, 10, 15),
            registry=r,
        )
        self.lora_downlinks = Counter(
            "edgeveil_lora_downlinks",
            "Downlinks (acks, time sync), by link and outcome: sent (in RX1), too_late (RX1 "
            "missed), duty_cycle (sub-band limit reached), outside_plan, crosses_edge, "
            "over_power (the region plan), overlap (the concentrator sends another then), "
            "slot_taken (two downlinks per uplink already), too_big (for the data rate), "
            "no_route (gateway sent no PULL_DATA yet); rx2_sent or rx2_<reason> for RX2, tried "
            "after too_late, overlap or duty_cycle in RX1; or a TX_ACK result (tx_ok, "
            "TOO_LATE ...)",
            ["port", "outcome"],
            registry=r,
        )
        self.lora_airtime = Counter(
            "edgeveil_lora_downlink_airtime_seconds",
            "Time on air of the downlinks a concentrator confirmed sending (TX_ACK; protocol v1: "
            "scheduled), per gateway (the EU868 duty cycle: docs/operators/lora.md)",
            ["port", "gateway"],
            registry=r,
        )
        self.latency = Histogram(
            "edgeveil_latency_seconds",
            "From a frame's arrival to the broker's PUBACK of what it produced",
            buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 300, 3600),
            registry=r,
        )
