"""The peer baseline of benchmarks/bench_gateway.py: the serial-to-MQTT bridge a user would write
instead of running edgeveil.

    .venv/bin/python benchmarks/plain_bridge.py --nodes nodes.json --broker 127.0.0.1:1883 \\
        --topic 'site/node/{node}/readings' [--id plain-bridge] PORT [PORT ...]

Per port, pyserial's ReaderThread (one thread a port, `read(in_waiting or 1)`) feeds the
protocol's COBS + CRC-32 stream decoder (protocol/framing.py); each frame is opened with the
node's keys (protocol.open_frame: COSE_Encrypt0 with cryptography's AESCCM) and its readings
go out as one JSON object per frame, published with QoS 1 by paho-mqtt from the reader thread
(paho's network thread sends). The JSON carries "mid" ("<id>:<node>:<counter>:0", the message
id the gateway would give the frame), the node, the time it was received and each reading in
its unit. Ports are pyserial URLs or device paths; the node file is the registry's JSON
exchange format, what `edgeveil gateway import-nodes` reads and NodeRegistry.export_file
writes ({"nodes": [{"node_id": 5, "secret": "<hex>", ...}, ...]}).

What it leaves out, as such a bridge does: no spool (a broker away means lost readings), no
privacy stage, no replay window (a replayed frame is published again), no acks to the nodes
(they retransmit, which bench_gateway.py's replayer does not), no metrics. The in-flight
window is the gateway's (32 QoS 1 messages; paho's default is 20), so the two differ in the
work they do per frame, not in how many PUBACKs they wait for.

It prints "ready" once the broker accepted it and every port is open; on SIGTERM or Ctrl-C it
stops and prints what it did.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # protocol/, when run as benchmarks/plain_bridge.py

import paho.mqtt.client as mqtt  # noqa: E402
import serial  # noqa: E402
import serial.threaded  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from protocol import NodeKeys, Readings, RemoteProtocolError, open_frame, parse_header  # noqa: E402
from protocol.framing import NEED_DATA, StreamDecoder  # noqa: E402
from protocol.quantities import exponent, is_known, quantity_name  # noqa: E402

INFLIGHT = 32  # QoS 1 messages awaiting their PUBACK: the gateway's uplink window


def load_keys(path: Path) -> dict[int, NodeKeys]:
    document = json.loads(path.read_text(encoding="utf-8"))
    return {
        int(node["node_id"]): NodeKeys(int(node["node_id"]), bytes.fromhex(node["secret"]))
        for node in document["nodes"]
    }


def scaled(qid: int, value: int) -> float | int:
    """A reading in its unit: the wire's scaled integer times 10^exponent."""
    if not is_known(qid):
        return value
    e = int(exponent(qid))
    factor = int(10 ** abs(e))
    return value / factor if e < 0 else value * factor


class Bridge:
    """Frames in (any port's reader thread), MQTT messages out."""

    def __init__(
        self, keys: dict[int, NodeKeys], client: mqtt.Client, topic: str, bridge_id: str
    ) -> None:
        self.keys = keys
        self.client = client
        self.topic = topic
        self.bridge_id = bridge_id
        self.counts: Counter[str] = Counter()  # outcome -> frames
        self.lock = threading.Lock()

    def frame(self, frame: bytes) -> None:
        try:
            header = parse_header(frame)
            keys = self.keys.get(header.node_id)
            if keys is None:
                self.count("unknown_node")
                return
            message = open_frame(frame, keys, True, header)
        except RemoteProtocolError as exc:
            self.count(exc.reason_name)
            return
        if not isinstance(message, Readings):
            self.count("not_readings")
            return
        node = header.node_id
        payload: dict[str, Any] = {
            "mid": f"{self.bridge_id}:{node}:{header.counter}:0",
            "node": node,
            "time": time.time(),
        }
        for qid, value in message.values.items():
            payload[quantity_name(qid)] = scaled(qid, value)
        self.client.publish(self.topic.format(node=node), json.dumps(payload), qos=1)
        self.count("published")

    def count(self, outcome: str) -> None:
        with self.lock:
            self.counts[outcome] += 1


class FrameReader(serial.threaded.Protocol):
    """One port's byte stream, split into frames by the protocol's serial framing."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.decoder = StreamDecoder()

    def data_received(self, data: bytes) -> None:
        self.decoder.feed(data)
        while True:
            try:
                frame = self.decoder.next_event()
            except RemoteProtocolError as exc:  # line noise, console text
                self.bridge.count(exc.reason_name)
                continue
            if frame is NEED_DATA:
                return
            assert isinstance(frame, bytes)
            self.bridge.frame(frame)


def connect(host: str, port: int, client_id: str) -> mqtt.Client:
    connected = threading.Event()

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not reason.is_failure:
            connected.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    client.max_inflight_messages_set(INFLIGHT)
    client.on_connect = on_connect
    client.connect(host, port, keepalive=60)
    client.loop_start()
    if not connected.wait(10):
        client.loop_stop()
        raise SystemExit(f"plain bridge: the broker {host}:{port} did not accept us in 10 s")
    return client


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ports", nargs="+", help="serial ports: device paths or pyserial URLs")
    parser.add_argument("--nodes", type=Path, required=True, help="the nodes' secrets (JSON)")
    parser.add_argument("--broker", default="127.0.0.1:1883", help="MQTT broker, host:port")
    parser.add_argument(
        "--topic", default="plain/node/{node}/readings", help="topic; {node}: the node id"
    )
    parser.add_argument("--id", default="plain-bridge", help="client id and message id prefix")
    args = parser.parse_args()
    host, _, port = args.broker.rpartition(":")

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    keys = load_keys(args.nodes)
    client = connect(host, int(port), args.id)
    bridge = Bridge(keys, client, args.topic, args.id)
    readers = []
    try:
        for url in args.ports:
            port_ = serial.serial_for_url(url, baudrate=115200)
            reader = serial.threaded.ReaderThread(port_, lambda: FrameReader(bridge))
            reader.start()
            readers.append(reader)
        print(f"ready: {len(readers)} ports, {len(keys)} nodes, broker {args.broker}", flush=True)
        while not stop.wait(0.5):
            if not all(r.alive for r in readers):
                print("plain bridge: a port failed", flush=True)
                break
    finally:
        for reader in readers:
            reader.close()
        client.loop_stop()
        client.disconnect()
    print("frames: " + ", ".join(f"{k} {v}" for k, v in sorted(bridge.counts.items())), flush=True)


if __name__ == "__main__":
    main()
