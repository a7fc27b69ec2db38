"""Gateway benchmark, end to end: serial links in, MQTT out, with the gateway as its own process.

    .venv/bin/python benchmarks/bench_gateway.py [--links 20] [--seconds 20] [--nodes 1000]
        [--rate 1.0 | --frames-per-s 17] [--warmup 3] [--idle 3] [--profile py-spy|cprofile]
        [--state-dir-parent DIR] [--no-peer] [--outage SECONDS [--outage-after 10]]
        [--cpu-quota FRACTION]

What it sets up (all in a temporary directory under --state-dir-parent, by default the system's
temporary directory or else /var/tmp, never on tmpfs; all removed at the end, also on Ctrl-C):

- a real Mosquitto on a free 127.0.0.1 port (tests/mosquitto.py's helper);
- a gateway state directory with --nodes registered nodes (random secrets), of which --links
  are senders, one per link;
- one pseudo-terminal pair per link (raw mode); the gateway opens the slave side like a
  USB-UART, this script is the node on the master side;
- the gateway, `python -m gateway.cli gateway run --config F`, as a subprocess, so that its CPU
  (utime + stime) and memory (VmRSS, VmHWM) are read from /proc/<pid>/;
- a subscriber to the readings topics (paho, in a child process so it does not compete with the
  replayer for one interpreter) that notes when each message id arrives.

Then: a few seconds of idle (the baseline), a warm-up under load, and --seconds of measured
load. The replayer writes pre-sealed four-reading frames to every link at --rate times the line
rate of 115200 baud 8N1 (11,520 bytes/s), drains the gateway's acks, and notes when each
(node, counter) was written. It prints figures next to the targets of the gateway issue (at
most 25 % of one core for 20 links, at most 60 MB resident with 1,000 nodes registered), never
asserts on them. --frames-per-s replaces the line rate with a fixed rate for all links together,
each link sending rate/links frames a second, the links' frame times spread evenly (17 frames/s
is about one reading a minute from 1,000 nodes).

Storage (SD-card wear): write_bytes and wchar of /proc/<gateway pid>/io at the start and the end
of the measured seconds, divided by the readings accepted meanwhile. A reading here is one
accepted readings frame (one node's reading cycle, four values; edgeveil_frames_total with
outcome accepted). write_bytes counts what the gateway caused to be sent to the block layer:
SQLite's fsynced WAL frames, checkpoints into the databases, and the gateway's log (its stdout
goes to a file in the same temporary directory; the storage section says how much that grew).
It is a lower bound of what the card sees: the file system's journal and the card's own write
amplification are not in it. On tmpfs it would stay 0, hence the check. The state directory's
files (spool.db, registry.db, privacy.db, their -wal and -shm) are sampled every few seconds;
the report prints their size at one tenth of the measured seconds apart (a 30-minute run shows
whether the directory stays flat after warm-up) and each file's size at the end and its maximum.
Figures are printed next to the issue's targets (at most 1.5 KB written per reading at 17
frames/s, 0.5 KB at line rate), never asserted.

The peer baseline (on unless --no-peer): after the gateway's run, the same replay (the same
nodes and frames on new pty pairs, the same rate and seconds, a fresh Mosquitto and subscriber)
against benchmarks/plain_bridge.py, the bridge a user would write instead of edgeveil
(pyserial, the protocol's framing and AESCCM, one paho QoS 1 publish per frame; no spool,
privacy stage or acks). Both runs go through measured_run(), which takes the system to start;
the report ends with both side by side: delivered readings a second, CPU % of one core, CPU
microseconds per delivered reading, and the ratio gateway / peer of the last (the project's
target: at most 1.0).

--outage SECONDS (with --no-peer; e.g. --rate 0.05 --outage 600 --seconds 660): a broker outage
in the measured seconds. After --outage-after seconds of steady load the Mosquitto is stopped
(SIGTERM) for SECONDS, then started again on the same port; the gateway keeps accepting frames
and spools them. The backlog is frames accepted minus messages PUBACKed (edgeveil_frames_total
with outcome accepted, edgeveil_mqtt_published_total; one record each here), scraped every
0.25 s (edgeveil_spool_depth is updated only every 5 s). The report gives the backlog built
during the outage, the build-up time (the broker away), the drain time (the broker's return
until the backlog is back at its steady level, the largest seen before the outage), the drain
rate (records PUBACKed a second meanwhile, what kept arriving included), and build-up time /
drain time next to the project's target (at least 10). If the backlog has not drained when the
measured seconds end, the load goes on until it has (at most max(30, SECONDS / 2) more seconds).
The subscriber then holds a persistent session (clean_session False, a fixed client id, QoS 1)
on a Mosquitto with persistence, so what the gateway publishes right after the restart reaches
it however late it reconnects; it checks what a subscriber can of the outage tests' invariants:
every frame offered before the broker's return (and in the whole run) arrives, by message id;
duplicates are counted (allowed); each node's counters in first-arrival order increase. Printed,
never asserted. With --profile py-spy the profile covers the drain (from the gateway's first
PUBACK after the return until the backlog is back), not the measured seconds. The latency and
CPU figures then span the outage and its drain: they are no steady-state figures.

--stall (with --outage): the broker is stopped with SIGSTOP instead, and continued with
SIGCONT: a broker that hangs rather than goes away. Its kernel still accepts connections and
bytes, so the gateway sees no error: the window fills, the live path closes, the keepalive
ends the connection (after 1.5 times its 30 s) and reconnect attempts time out, their CONNECT
unanswered until the broker runs again.

--cpu-quota FRACTION (root; a cgroup cpu controller, v2 or v1): the system under test (the
gateway, and the plain bridge in its run) runs in a cgroup of its own that gets at most FRACTION
of one core's time in every 10 ms, a model of a slower processor: a Raspberry Pi's core runs
this Python several times slower than a server's. It shows the rate the gateway sustains on
such a budget and how it behaves beyond it (frames refused unacknowledged as "overloaded",
bounded memory). The model is coarser than a slow core: the quota lets it run at full speed
for its share of each period and then stops it, which adds up to one period to latencies.

--profile samples the gateway during the measured seconds: py-spy (if it is on PATH; samples of
whichever thread holds the GIL, 200 a second, grouped by gateway stage) or cProfile (the gateway
runs under it: the main thread only, the whole run, and much slower). Either prints where the
gateway spends its time; both disturb the figures printed with them.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import math
import multiprocessing
import os
import pstats
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tty
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.mosquitto, when run as benchmarks/bench_gateway.py

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from gateway.registry import NodeRegistry  # noqa: E402
from protocol import NodeKeys, Readings, encode_serial, seal  # noqa: E402
from protocol.quantities import quantity_id as q  # noqa: E402

LINE_BYTES_PER_S = 115200 / 10  # 8N1: a start bit, 8 data bits, a stop bit per byte
TICK_S = 0.005  # the replayer writes what is due on every link this often
SITE = "bench"
GATEWAY_ID = "gateway-1"
CPU_TARGET_PCT = 25.0  # of one core, for 20 links
CPU_TARGET_LINKS = 20
RSS_TARGET_MB = 60.0  # with 1,000 registered nodes
CLK_TCK = os.sysconf("SC_CLK_TCK")
PY_SPY_HZ = 200
KB = 1024
WRITE_TARGET_KB_FIXED = 1.5  # written per reading at 17 frames/s (--frames-per-s)
WRITE_TARGET_KB_LINE = 0.5  # written per reading at line rate
WRITE_TARGET_FPS = 17.0
STATE_SAMPLE_S = 2.0  # the state directory's sizes are sampled about this often
STATE_ROWS = 10  # and printed at this many points of the measured seconds, plus the end
MEMORY_FS = ("tmpfs", "ramfs")  # write_bytes stays 0 there: nothing goes to a block device
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"


# -- /proc ---------------------------------------------------------------------------------------


def cpu_ticks(pid: int | str = "self", tid: int | None = None) -> int:
    """utime + stime of a process (all its threads) or of one thread, in clock ticks."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        with open(path, encoding="ascii") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def thread_ticks(pid: int) -> dict[int, int]:
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return {}
    return {tid: cpu_ticks(pid, tid) for tid in tids}


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak resident) in kB, and VmRSS's two parts: RssAnon (the process's
    own memory: heap, Python objects, the libraries' relocated data) and RssFile (pages of
    the libraries' files mapped in)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                    out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def proc_io(pid: int) -> dict[str, int]:
    """/proc/<pid>/io: wchar, write_bytes, cancelled_write_bytes... of all the threads."""
    try:
        with open(f"/proc/{pid}/io", encoding="ascii") as f:
            return {k: int(v) for k, _, v in (line.partition(":") for line in f)}
    except OSError:
        return {}


def filesystem(path: Path) -> tuple[str, str]:
    """(type, device) of the file system holding `path`: the longest mount point in
    /proc/mounts that contains it."""
    real = os.path.realpath(path)
    best = ("", "?", "?")
    with open("/proc/mounts", encoding="utf-8") as f:
        for line in f:
            device, mount, fstype = line.split()[:3]
            mount = mount.replace("\\040", " ")
            inside = real == mount or real.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) >= len(best[0]):
                best = (mount, fstype, device)
    return best[1], best[2]


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs, from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # without guest time, which user time already includes
    return total - idle, total


# -- setup ---------------------------------------------------------------------------------------


@dataclass
class Link:
    name: str
    node_id: int
    master: int
    slave: int
    path: str
    frames: list[bytes] = field(default_factory=list)  # frames[i] has counter i + 1
    sent_at: array.array[float] = field(default_factory=lambda: array.array("d"))
    next: int = 0  # index of the next frame to offer
    bytes_offered: int = 0
    pending: bytearray = field(default_factory=bytearray)  # offered, not yet taken by the pty
    ack_bytes: int = 0
    write_stalls: int = 0  # ticks on which the pty took less than was due
    phase: float = 0.0  # --frames-per-s: this link's share of a frame interval, 0 <= phase < 1


def make_ptys(count: int, stack: contextlib.ExitStack) -> list[tuple[int, int, str]]:
    out = []
    for _ in range(count):
        master, slave = os.openpty()
        stack.callback(os.close, slave)
        stack.callback(os.close, master)
        tty.setraw(slave)  # no echo, no line editing: a raw UART
        os.set_blocking(master, False)
        out.append((master, slave, os.ttyname(slave)))
    return out


def register_nodes(state_dir: Path, nodes: int, senders: int) -> dict[int, bytes]:
    """Register `nodes` nodes with random secrets; returns the secrets of the senders (spread
    over the id range)."""
    step = nodes // senders
    sender_ids = {1 + i * step for i in range(senders)}
    secrets: dict[int, bytes] = {}
    state_dir.mkdir(mode=0o700)
    with NodeRegistry.open(state_dir / "registry.db") as registry:
        for node_id in range(1, nodes + 1):
            secret = os.urandom(16)
            registry.add(node_id, secret, zone=f"zone-{node_id % 10}")
            if node_id in sender_ids:
                secrets[node_id] = secret
    return secrets


def seal_frames(node_id: int, secret: bytes, count: int) -> list[bytes]:
    keys = NodeKeys(node_id, secret)
    t, h, p, b = q("temperature"), q("humidity"), q("pressure"), q("battery")
    return [
        encode_serial(
            seal(
                Readings(
                    {t: 150 + i % 200, h: 400 + i % 300, p: 10000 + i % 300, b: 3300 - i % 500}
                ),
                i + 1,
                keys,
            )
        )
        for i in range(count)
    ]


# The benchmark measures the per-frame path (one MQTT message per readings frame), so its
# gateway runs a policy that passes readings per node (the demo policy does the same for
# environmental readings); the default policy would turn them into 15-minute aggregates.
READINGS_POLICY = """name = "benchmark: readings pass per node"
[[streams]]
name = "readings"
message = "readings"
quantities = ["temperature", "humidity", "pressure", "battery"]
action = "pass"
"""


def gateway_toml(  # noqa: PLR0917 - the run's settings, one each
    state_dir: Path,
    links: list[Link],
    mqtt_port: int,
    metrics_port: int,
    policy_name: str,
    spool_max: int | None = None,
) -> str:
    policy = state_dir.parent / "policy.toml"
    if policy_name == "default":  # the shipped policy: readings become zone aggregates
        policy.write_text(default_policy_text(), encoding="utf-8")
    else:
        policy.write_text(READINGS_POLICY, encoding="utf-8")
    lines = [
        "[gateway]",
        f'site = "{SITE}"',
        f'id = "{GATEWAY_ID}"',
        f'state_dir = "{state_dir}"',
        'log_level = "info"',
        "",
        "[mqtt]",
        'host = "127.0.0.1"',
        f"port = {mqtt_port}",
        "",
        "[metrics]",
        f'listen = "127.0.0.1:{metrics_port}"',
        "",
        "[privacy]",
        f'policy = "{policy}"',
    ]
    if spool_max is not None:
        lines += ["", "[spool]", f"max_messages = {spool_max}"]
    for link in links:
        lines += ["", "[[serial]]", f'name = "{link.name}"', f'url = "{link.path}"']
    return "\n".join(lines) + "\n"


def default_policy_text() -> str:
    """The policy a gateway runs when none is configured (gateway/policies/default.toml)."""
    return (ROOT / "gateway" / "policies" / "default.toml").read_text(encoding="utf-8")


# -- the subscriber (a child process) ------------------------------------------------------------


def subscriber_main(  # noqa: PLR0915, PLR0917 - a child process's whole life; one call
    host: str, port: int, readings: str, availability: str, conn: Connection, persistent: bool
) -> None:
    """Runs in a child process: subscribe, note (message id, arrival time), report on request.

    Requests on `conn`: "count" -> ("count", distinct message ids so far); "stop" -> ("result",
    nodes, counters, times, cpu ticks, availability), availability being (arrival time,
    payload) of each availability message the gateway published while subscribed (not the
    retained copies a subscription brings). Unprompted: ("online",) once the gateway's
    availability says so.

    `persistent` (--outage): a persistent session (clean_session False, a fixed client id) with
    QoS 1 subscriptions, reconnecting every second while the broker is away, so a broker with
    persistence keeps the subscription and queues what arrives until the subscriber is back.
    """
    import threading  # noqa: PLC0415 - child process only

    import paho.mqtt.client as mqtt  # noqa: PLC0415
    from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent cleans up; Ctrl-C is for it
    mids: list[bytes] = []
    distinct: set[bytes] = set()  # a record sent again (after a lost connection) counts once
    times = array.array("d")
    announced: list[tuple[float, bytes]] = []
    qos = 1 if persistent else 0
    online = threading.Event()
    subscribed = threading.Event()
    # every "mid" of a message, JSON however spaced: one per record of a SenML pack (a message
    # may carry several), or the one of the peer's JSON object. Exact on JSON text: a quote
    # inside a string is escaped, so `"mid":` is always a key.
    mid_key = re.compile(rb'"mid"\s*:\s*"([^"]*)"')

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        client.subscribe([(readings, qos), (availability, qos)])

    def on_subscribe(client: Any, userdata: Any, mid: Any, reasons: Any, props: Any) -> None:
        subscribed.set()

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        now = time.time()
        payload: bytes = message.payload
        if message.topic == availability:
            if payload == b"online":
                online.set()
            if not message.retain:  # published now, not a copy kept from before
                announced.append((now, payload))
            return
        for mid in mid_key.findall(payload):
            mids.append(mid)
            times.append(now)
            distinct.add(mid)

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id="edgeveil-bench-subscriber",
        clean_session=not persistent,
    )
    if persistent:
        client.reconnect_delay_set(1, 1)  # not paho's default of up to 120 s
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect(host, port, keepalive=60)
    client.loop_start()
    try:
        told_online = False
        subscribed.wait(10)
        conn.send(("subscribed",))
        while True:
            if not told_online and online.is_set():
                told_online = True
                conn.send(("online",))
            if not conn.poll(0.05):
                continue
            request = conn.recv()
            if request == "count":
                conn.send(("count", len(distinct)))
            elif request == "stop":
                break
    finally:
        client.loop_stop()
        client.disconnect()
    conn.send(("result", *_parse_mids(mids), times[: len(mids)], cpu_ticks(), announced))


def _parse_mids(mids: list[bytes]) -> tuple[array.array[int], array.array[int]]:
    """b"gateway-1:5:123:0" -> node 5, counter 123."""
    nodes, counters = array.array("q"), array.array("q")
    for mid in mids:
        _, node, counter, _ = mid.split(b":")
        nodes.append(int(node))
        counters.append(int(counter))
    return nodes, counters


class SubscriberProcess:
    def __init__(self, host: str, port: int, persistent: bool = False) -> None:
        base = f"edgeveil/{SITE}/{GATEWAY_ID}"
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=subscriber_main,
            args=(
                host,
                port,
                f"{base}/node/+/readings",
                f"{base}/availability",
                child,
                persistent,
            ),
            name="bench-subscriber",
            daemon=True,
        )
        self._child = child
        self.online = False

    def start(self) -> None:
        self.proc.start()
        self._child.close()
        self._expect("subscribed", 15)

    @property
    def pid(self) -> int:
        assert self.proc.pid is not None
        return self.proc.pid

    def _expect(self, kind: str, timeout: float) -> tuple[Any, ...]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.conn.poll(min(0.1, max(0.0, deadline - time.monotonic()))):
                message: tuple[Any, ...] = self.conn.recv()
                if message[0] == "online":
                    self.online = True
                if message[0] == kind:
                    return message
            if not self.proc.is_alive():
                raise RuntimeError("the subscriber process died")
        raise TimeoutError(f"subscriber: no {kind!r} within {timeout} s")

    def wait_online(self, timeout: float) -> None:
        if not self.online:
            self._expect("online", timeout)

    def count(self) -> int:
        self.conn.send("count")
        return int(self._expect("count", 10)[1])

    def stop(self) -> tuple[Any, ...]:
        self.conn.send("stop")
        return self._expect("result", 60)

    def kill(self) -> None:
        if self.proc.pid is not None and self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join()


# -- the system under test: the gateway, or the peer ---------------------------------------------


PYTHON = str(VENV_PYTHON if VENV_PYTHON.exists() else sys.executable)


class SystemProcess:
    """The system under test as a subprocess of its own (its CPU and memory are read from
    /proc/<pid>/), its stdout and stderr to `log`."""

    name = "system"
    url: str | None = None  # its metrics endpoint, if it has one

    def __init__(self, cmd: list[str], log: Path) -> None:
        self.log_path = log
        self._log = log.open("wb")
        self.proc = subprocess.Popen(  # noqa: S603 - our own gateway or peer
            cmd,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C is for this script, which stops the process
        )
        self.pid = self.proc.pid

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (the gateway stops cleanly, and cProfile writes its file); then SIGKILL."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def wait_ready(self, links: int, sub: SubscriberProcess) -> None:
        raise NotImplementedError

    def print_warnings(self, first: int = 5) -> None:
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        warnings = [ln for ln in text.splitlines() if " WARNING " in ln or " ERROR " in ln]
        if warnings:
            print(f"\ngateway log: {len(warnings)} warnings or errors, the first:")
            for line in warnings[:first]:
                print(f"  {line}")

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])


class GatewayProcess(SystemProcess):
    name = "gateway"

    def __init__(self, config: Path, log: Path, profile_out: Path | None, url: str) -> None:
        cmd = [PYTHON]
        if profile_out is not None:
            cmd += ["-m", "cProfile", "-o", str(profile_out)]
        cmd += ["-m", "gateway.cli", "gateway", "run", "--config", str(config)]
        super().__init__(cmd, log)
        self.url = url  # its metrics

    def wait_ready(self, links: int, sub: SubscriberProcess) -> None:
        assert self.url is not None
        wait_ready(self, self.url, links, sub)


class PeerProcess(SystemProcess):
    """benchmarks/plain_bridge.py on the links' pty slaves, publishing where the gateway would."""

    name = "plain bridge"

    def __init__(self, links: list[Link], nodes: Path, mqtt_port: int, log: Path) -> None:
        topic = f"edgeveil/{SITE}/{GATEWAY_ID}/node/{{node}}/readings"
        cmd = [PYTHON, str(ROOT / "benchmarks" / "plain_bridge.py"), "--nodes", str(nodes)]
        cmd += ["--broker", f"127.0.0.1:{mqtt_port}", "--topic", topic, "--id", "plain-bridge"]
        super().__init__([*cmd, *(link.path for link in links)], log)

    def wait_ready(self, links: int, sub: SubscriberProcess) -> None:
        """Until it says "ready" (the broker accepted it, every port is open)."""
        deadline = time.monotonic() + 30
        while "ready:" not in self.log_path.read_text(encoding="utf-8", errors="replace"):
            if self.proc.poll() is not None:
                raise RuntimeError(f"the plain bridge exited at start:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the plain bridge not ready in 30 s:\n{self.log_tail()}")
            time.sleep(0.1)

    def summary(self) -> str:
        """Its last line: what it did with the frames (printed when it stops)."""
        lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        return next((ln for ln in reversed(lines) if ln.startswith("frames:")), "(no summary)")


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - our local gateway
        text = response.read().decode()
    values: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[sample.name].append((sample.labels, sample.value))
    return values


def total(
    metrics: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str
) -> float:
    return sum(
        v for lab, v in metrics.get(name, []) if all(lab.get(k) == x for k, x in labels.items())
    )


def wait_ready(gw: SystemProcess, url: str, links: int, sub: SubscriberProcess) -> None:
    deadline = time.monotonic() + 30
    while True:
        if gw.proc.poll() is not None:
            raise RuntimeError(f"the gateway exited at start:\n{gw.log_tail()}")
        try:
            up = total(scrape(url), "edgeveil_link_up")
        except OSError:
            up = -1
        if up == links:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"gateway not ready in 30 s ({up} links up):\n{gw.log_tail()}")
        time.sleep(0.1)
    sub.wait_online(max(1.0, deadline - time.monotonic()))


# -- the replayer --------------------------------------------------------------------------------


class Replayer:
    """Writes frames to every link's pty master at `rate` times the line rate, or at
    `frames_per_s` for all links together; drains acks."""

    def __init__(self, links: list[Link], rate: float, frames_per_s: float | None = None) -> None:
        self.links = links
        self.bytes_per_s = LINE_BYTES_PER_S * rate
        self.link_fps = frames_per_s / len(links) if frames_per_s else 0.0
        self.running = False
        self.ran_out = 0

    def _drain(self, link: Link) -> None:
        while True:
            try:
                data = os.read(link.master, 65536)
            except BlockingIOError:
                return
            except OSError:  # EIO: nobody holds the slave; not expected, we hold it open
                asyncio.get_running_loop().remove_reader(link.master)
                return
            if not data:
                return
            link.ack_bytes += len(data)
            self._received(link, data)

    def _received(self, link: Link, data: bytes) -> None:
        """What the gateway sent on `link` (its acks): drained and counted only; a subclass
        may read it (benchmarks/bench_crash.py)."""

    def _tick(self, link: Link, elapsed: float, now: float) -> None:
        frames, sent_at, i = link.frames, link.sent_at, link.next
        if self.link_fps:
            # frame k of link j is due at (k + 1 - phase_j) / link_fps: the links take turns
            due_frames = math.floor(elapsed * self.link_fps + link.phase)
            last = min(len(frames), due_frames)
            if due_frames > len(frames):
                self.ran_out += 1
        else:
            due = elapsed * self.bytes_per_s - link.bytes_offered
            last = i
            while last < len(frames) and len(frames[last]) <= due:
                due -= len(frames[last])
                last += 1
            if last == len(frames) and due > 40:
                self.ran_out += 1
        while i < last:
            frame = frames[i]
            link.bytes_offered += len(frame)
            link.pending += frame
            sent_at[i] = now
            i += 1
        link.next = i
        if link.pending:
            try:
                written = os.write(link.master, link.pending)
            except BlockingIOError:
                written = 0
            if written < len(link.pending):
                link.write_stalls += 1
            del link.pending[:written]

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for link in self.links:
            loop.add_reader(link.master, self._drain, link)
        self.running = True
        start = time.monotonic()
        try:
            while self.running:
                elapsed = time.monotonic() - start
                now = time.time()
                for link in self.links:
                    self._tick(link, elapsed, now)
                await asyncio.sleep(TICK_S)
        finally:
            for link in self.links:
                loop.remove_reader(link.master)

    def offered_between(self, t0: float, t1: float) -> int:
        return sum(1 for link in self.links for t in link.sent_at if t0 <= t < t1)


# -- measuring -----------------------------------------------------------------------------------


@dataclass
class Snapshot:
    wall: float
    mono: float
    gw_ticks: int  # of the system under test: the gateway, or the peer
    gw_threads: dict[int, int]
    other_ticks: dict[str, int]
    machine: tuple[int, int]
    metrics: dict[str, list[tuple[dict[str, str], float]]]
    io: dict[str, int]


async def snapshot(gw_pid: int, others: dict[str, int | str], url: str | None) -> Snapshot:
    mono, wall = time.monotonic(), time.time()
    gw = cpu_ticks(gw_pid)
    threads = thread_ticks(gw_pid)
    other = {name: cpu_ticks(pid) for name, pid in others.items()}
    machine = machine_ticks()
    io = proc_io(gw_pid)
    metrics = await asyncio.to_thread(scrape, url) if url else {}  # the peer has none
    return Snapshot(wall, mono, gw, threads, other, machine, metrics, io)


def file_sizes(directory: Path) -> dict[str, int]:
    """Bytes in each file of `directory` (the state directory: spool.db, spool.db-wal...)."""
    sizes = {}
    with os.scandir(directory) as entries:
        for entry in entries:
            with contextlib.suppress(FileNotFoundError):  # a -wal or -shm may come and go
                if entry.is_file():
                    sizes[entry.name] = entry.stat().st_size
    return sizes


class StateSampler:
    """Samples the state directory's file sizes during the measured seconds. Keeps each file's
    maximum and STATE_ROWS + 1 rows of sizes, so memory stays bounded however long the run."""

    def __init__(self, state_dir: Path, seconds: float) -> None:
        self.state_dir = state_dir
        self.per_row = math.ceil(seconds / STATE_ROWS / STATE_SAMPLE_S)
        self.sample_s = seconds / STATE_ROWS / self.per_row
        self.max: dict[str, int] = {}
        self.max_total = 0
        self.rows: list[tuple[float, dict[str, int]]] = []  # (seconds into the window, sizes)

    def sample(self, at: float, row: bool) -> dict[str, int]:
        sizes = file_sizes(self.state_dir)
        for name, size in sizes.items():
            self.max[name] = max(size, self.max.get(name, 0))
        self.max_total = max(self.max_total, sum(sizes.values()))
        if row:
            self.rows.append((at, sizes))
        return sizes

    async def run(self, start: float) -> None:
        """Samples at start, start + sample_s, ...; the caller takes the one at the end."""
        for k in range(STATE_ROWS * self.per_row):
            await asyncio.sleep(max(0.0, start + k * self.sample_s - time.monotonic()))
            self.sample(k * self.sample_s, row=k % self.per_row == 0)


def pct(ticks: int, seconds: float) -> float:
    return 100.0 * ticks / CLK_TCK / seconds if seconds > 0 else 0.0


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return math.nan
    index = min(len(sorted_values) - 1, max(0, math.ceil(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


def histogram_quantile(
    before: dict[str, list[tuple[dict[str, str], float]]],
    after: dict[str, list[tuple[dict[str, str], float]]],
    name: str,
    fraction: float,
) -> tuple[float, int]:
    """Like Prometheus' histogram_quantile over the increase between two scrapes: linear
    interpolation inside the bucket. Returns (seconds, observations); inf above the last bound."""

    def buckets(m: dict[str, list[tuple[dict[str, str], float]]]) -> dict[float, float]:
        return {float(lab["le"]): v for lab, v in m.get(f"{name}_bucket", [])}

    b0, b1 = buckets(before), buckets(after)
    bounds = sorted(b1)
    cumulative = [b1[b] - b0.get(b, 0.0) for b in bounds]
    count = int(cumulative[-1]) if cumulative else 0
    if count == 0:
        return math.nan, 0
    rank = fraction * count
    lower, below = 0.0, 0.0
    for bound, cum in zip(bounds, cumulative, strict=True):
        if cum >= rank:
            if math.isinf(bound):
                return math.inf, count
            inside = cum - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0), count
        lower, below = bound, cum
    return math.inf, count


def fmt_ms(seconds: float, inf: str = "undelivered") -> str:
    if math.isnan(seconds):
        return "n/a"
    if math.isinf(seconds):
        return inf
    return f"{seconds * 1000:,.1f} ms"


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


# -- profiles ------------------------------------------------------------------------------------


def start_py_spy(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    exe = shutil.which("py-spy") or shutil.which("py-spy", path=str(VENV_PYTHON.parent))
    if exe is None:
        print("  (py-spy is not on PATH: no profile; pip install py-spy, or --profile cprofile)")
        return None
    return subprocess.Popen(  # noqa: S603 - py-spy from PATH, on our own gateway
        [
            exe, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))),
            "--rate", str(PY_SPY_HZ), "--format", "raw", "--function", "--gil",
            "--output", str(out),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip


def _short(frame: str) -> str:
    """'publish (gateway/uplink.py:383)' -> 'publish (uplink.py:383)'."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path, _, line = where.rpartition(":")
    return f"{name} ({Path(path).name}:{line})" if path else frame


# Stages of the gateway, by a frame somewhere in the stack: the innermost match wins.
STAGES = (
    ("acks: seal + write (Ingest._downlink)", ("Ingest._downlink (",)),
    ("ingest: verify, privacy, SenML, spool hand-off (Ingest.process)", ("Ingest.process (",)),
    ("serial: read + COBS/CRC (transport, Gateway._on_data)", ("_on_data (", "_read_ready (")),
    ("MQTT: aiomqtt + paho (Uplink)", ("Uplink.", "(client.py:", "(properties.py:")),
    ("worker threads: SQLite spool and registry (to_thread)", ("_worker (thread.py:",)),
    ("metrics HTTP (prometheus_client)", ("(exposition.py:",)),
    ("housekeeping", ("_housekeeping (",)),
)


def _stage(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, marks in STAGES:
            if any(mark in frame for mark in marks):
                return name
    return "event loop itself: select, callbacks, task switching"


def report_py_spy(out: Path, seconds: float, top: int = 25) -> None:
    self_t: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    by_file: Counter[str] = Counter()
    by_stage: Counter[str] = Counter()
    samples = 0
    for line in out.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack or not number.isdigit():
            continue
        count = int(number)
        frames = [_short(f) for f in stack.split(";") if f]
        if not frames:
            continue
        samples += count
        self_t[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
        by_file[frames[-1].rpartition("(")[2].partition(":")[0]] += count
        by_stage[_stage(frames)] += count
    if not samples:
        print("  py-spy recorded no samples")
        return
    print(
        f"\ngateway profile (py-spy --gil: {samples} samples of the thread holding the GIL, "
        f"{samples / (PY_SPY_HZ * seconds):.0%} of the {seconds:g} s; time in C with the GIL "
        "released, e.g. SQLite's fsync, is not in it):"
    )
    print("  by stage (innermost matching frame):")
    for name, n in by_stage.most_common():
        print(f"    {100 * n / samples:5.1f} %  {name}")
    print("  by the file of the innermost frame (self time):")
    for name, n in by_file.most_common(15):
        print(f"    {100 * n / samples:5.1f} %  {name}")
    print("  functions by self time:")
    for name, n in self_t.most_common(top):
        print(f"    {100 * n / samples:5.1f} %  {name}")
    print("  functions by inclusive time (without the frames of nearly every sample):")
    shown = [(name, n) for name, n in incl.most_common() if n < 0.9 * samples]
    for name, n in shown[:top]:
        print(f"    {100 * n / samples:5.1f} %  {name}")


def report_cprofile(out: Path, top: int = 25) -> None:
    if not out.exists():
        print("  (no cProfile output: the gateway did not stop cleanly)")
        return
    print("\ngateway profile (cProfile, main thread, whole run including start and idle):")
    stats = pstats.Stats(str(out))
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)


# -- a broker outage (--outage) ------------------------------------------------------------------


OUTAGE_SAMPLE_S = 0.25  # the backlog is scraped this often
DRAIN_TARGET = 10.0  # the backlog drains at least this many times faster than it built up


def outage_extra_s(args: argparse.Namespace) -> float:
    """How long the load may go on after the measured seconds while the backlog drains."""
    return max(30.0, args.outage / 2) if args.outage else 0.0


@dataclass
class Outage:
    """A broker outage in the measured seconds and the gateway's backlog around it: frames
    accepted minus messages PUBACKed, from its metrics (one record a frame and a message with
    the benchmark's policy). Times are time.monotonic(), the *_wall ones time.time()."""

    asked_s: float
    port_before: int
    stall: bool = False  # SIGSTOP and SIGCONT instead of stop and start (--stall)
    port_after: int = 0
    down: float = math.nan  # stop() called: SIGTERM to the broker
    down_wall: float = math.nan
    stop_s: float = math.nan  # how long the broker took to exit
    up: float = math.nan  # start() returned: the broker listens again
    up_wall: float = math.nan
    start_s: float = math.nan
    samples: list[tuple[float, float, float]] = field(default_factory=list)  # at, acc., pub.
    steady: float = math.nan  # the largest backlog before the outage: "back to steady"
    reconnected: float | None = None  # the gateway's first PUBACK after the return (sampled)
    drained: float | None = None  # the first sample after the return at or below `steady`
    extended_s: float = 0.0  # the load went on this long after the measured seconds
    profiled_s: float = 0.0  # py-spy sampled the drain this long
    final: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)
    reconnected_event: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    drained_event: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    url: str = field(default="", init=False)
    _published_up: float | None = field(default=None, init=False)  # PUBACKed while away
    _stop: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list, init=False)

    def begin(
        self,
        args: argparse.Namespace,
        url: str,
        broker: Any,
        start: float,
        spied: tuple[int, Path | None],
    ) -> None:
        """At the start of the measured seconds (`start`, monotonic): watch the backlog, stop
        the broker --outage-after later; with py-spy, profile the gateway (pid, output) while
        it drains."""
        self.url = url
        self._tasks = [
            asyncio.create_task(self.run(broker, start + args.outage_after)),
            asyncio.create_task(self.watch(url, self._stop)),
        ]
        pid, profile = spied
        if profile is not None and args.profile == "py-spy":
            limit = args.seconds - args.outage_after - args.outage + outage_extra_s(args)
            self._tasks.append(asyncio.create_task(self.profile_drain(pid, profile, limit)))

    async def drain(self, args: argparse.Namespace, end: float) -> None:
        """After the measured seconds (`end`): the load goes on until the backlog is back at
        its steady level, at most outage_extra_s() more."""
        await self._tasks[0]  # the broker is back: --outage-after + --outage < --seconds
        if self.drained_event.is_set():
            return
        limit = outage_extra_s(args)
        print(
            f"  the backlog has not drained in the measured seconds: the load goes on until "
            f"it has, at most {limit:.0f} s"
        )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit):
                await self.drained_event.wait()
        self.extended_s = time.monotonic() - end

    async def finish(self) -> None:
        """Stop watching (and profiling); the gateway's metrics at the end."""
        self._stop.set()
        for task in self._tasks:
            await task
        with contextlib.suppress(OSError):
            self.final = await asyncio.to_thread(scrape, self.url)

    @staticmethod
    def backlog(sample: tuple[float, float, float]) -> float:
        return sample[1] - sample[2]

    def _note(self, at: float) -> None:
        """After a new sample: did the gateway publish again, is the backlog back?"""
        if math.isnan(self.up) or at <= self.up:
            return
        samples = self.samples
        if self._published_up is None:  # the first sample after the return
            self._published_up = samples[-2][2] if len(samples) > 1 else 0.0
        if self.reconnected is None and samples[-1][2] > self._published_up:
            self.reconnected = at
            self.reconnected_event.set()
        if self.drained is None and self.backlog(samples[-1]) <= self.steady:
            self.drained = at
            self.drained_event.set()

    async def watch(self, url: str, stop: asyncio.Event) -> None:
        """Scrape the gateway's metrics every OUTAGE_SAMPLE_S until `stop`."""
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                m = await asyncio.to_thread(scrape, url)
            except OSError:
                m = None
            if m is not None:
                at = (t0 + time.monotonic()) / 2
                accepted = total(m, "edgeveil_frames_total", outcome="accepted")
                published = total(m, "edgeveil_mqtt_published_total")
                self.samples.append((at, accepted, published))
                self._note(at)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, t0 + OUTAGE_SAMPLE_S - time.monotonic())):
                    await stop.wait()

    async def run(self, broker: Any, after: float) -> None:
        """Stop the broker at `after` (monotonic), start it again asked_s later."""
        await asyncio.sleep(max(0.0, after - time.monotonic()))
        before = [self.backlog(s) for s in self.samples]
        self.steady = max(before, default=0.0)
        self.down, self.down_wall = time.monotonic(), time.time()
        await asyncio.to_thread(broker.pause if self.stall else broker.stop)
        self.stop_s = time.monotonic() - self.down
        await asyncio.sleep(max(0.0, self.down + self.asked_s - time.monotonic()))
        t = time.monotonic()
        await asyncio.to_thread(broker.resume if self.stall else broker.start)
        self.up, self.up_wall = time.monotonic(), time.time()
        self.start_s = self.up - t
        self.port_after = broker.port

    async def profile_drain(self, gw_pid: int, out: Path, limit: float) -> None:
        """py-spy on the gateway from its first PUBACK after the return until the backlog is
        back (or `limit` seconds); stopped by SIGINT, on which it writes its samples."""
        await self.reconnected_event.wait()
        if self.drained_event.is_set():
            print("  (py-spy: the backlog was back before the first sample: nothing to profile)")
            return
        spy = start_py_spy(gw_pid, limit + 5, out)
        if spy is None:
            return
        t = time.monotonic()
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(limit):
                    await self.drained_event.wait()
        finally:
            self.profiled_s = time.monotonic() - t
            with contextlib.suppress(ProcessLookupError):
                spy.send_signal(signal.SIGINT)
            _, err = await asyncio.to_thread(spy.communicate)
        if spy.returncode not in (0, -signal.SIGINT):
            print(f"  py-spy failed: {err.decode(errors='replace').strip()}")

    def at(self, when: float) -> tuple[float, float, float]:
        """The last sample at or before `when` (the first one if none is)."""
        best = self.samples[0]
        for sample in self.samples:
            if sample[0] > when:
                break
            best = sample
        return best


def report_outage(args: argparse.Namespace, o: Outage) -> None:  # noqa: PLR0915 - one printed page
    backlog = Outage.backlog
    if math.isnan(o.up) or not o.samples:
        print("\nbroker outage: did not complete (the run ended before the broker was back)")
        return
    away = o.up - o.down
    pre = sorted(backlog(s) for s in o.samples if s[0] < o.down)
    median = pre[len(pre) // 2] if pre else math.nan
    s_down, s_up = o.at(o.down), o.at(o.up)
    after = [s for s in o.samples if s[0] >= o.down]
    peak = max(after, key=backlog)
    built = backlog(s_up) - median
    same = "the same port" if o.port_after == o.port_before else "ANOTHER port"
    into = f"{o.down - o.samples[0][0] + OUTAGE_SAMPLE_S / 2:.0f} s into the measured seconds"
    if o.stall:
        print(
            f"\nbroker stall: Mosquitto stopped with SIGSTOP {into}, continued (SIGCONT) "
            f"{away:.1f} s later (asked {o.asked_s:g} s); persistence on"
        )
    else:
        print(
            f"\nbroker outage: Mosquitto stopped (SIGTERM, gone in {o.stop_s:.2f} s) {into}, "
            f"started again {away:.1f} s later (asked {o.asked_s:g} s; listening "
            f"{o.start_s:.2f} s after its start) on {same}, {o.port_before} -> "
            f"{o.port_after}; persistence on"
        )
    print(
        f"  backlog = frames accepted - messages PUBACKed (gateway metrics, {len(o.samples):,} "
        f"samples {OUTAGE_SAMPLE_S:g} s apart; one record a frame and a message here)"
    )
    print(
        f"  steady backlog before the outage: median {median:,.0f}, max {o.steady:,.0f} "
        f"({len(pre)} samples; the max is the level the drain must reach)"
    )
    print(
        "    (below 0 while the live path's PUBACK comes before the store that counts a frame "
        "accepted; a record published twice, in flight when the broker went, counts twice, so "
        "after the outage the level is lower by those)"
    )
    rate_in = (s_up[1] - s_down[1]) / away if away > 0 else math.nan
    print(
        f"  built up while the broker was away ({away:.1f} s): {built:,.0f} records at its "
        f"return (backlog {backlog(s_up):,.0f}; frames accepted meanwhile {rate_in:,.0f}/s); "
        f"peak {backlog(peak):,.0f} at {peak[0] - o.up:+.1f} s from the return"
    )
    if o.reconnected is not None:
        print(
            f"  the gateway's first PUBACK after the return: {o.reconnected - o.up:+.1f} s "
            "(its reconnect backoff: 0.5 s doubling to at most 10 s apart, with jitter)"
        )
    else:
        print("  the gateway published nothing after the broker's return")
    if o.drained is None:
        last = o.samples[-1]
        pub = last[2] - s_up[2]
        span = last[0] - o.up
        print(
            f"  NOT drained: {span:.1f} s after the return (the load went on "
            f"{o.extended_s:.0f} s past the measured seconds) the backlog is still "
            f"{backlog(last):,.0f}, steady {o.steady:,.0f}; {pub:,.0f} records PUBACKed "
            f"meanwhile, {pub / span if span > 0 else math.nan:,.0f}/s"
        )
        ratio = away / span if span > 0 else math.nan
        print(
            f"  ratio build-up time / drain time: below {away:.1f} / {span:.1f} = {ratio:.2f}"
            f"   target >= {DRAIN_TARGET:g}: NOT met"
        )
        return
    drain = o.drained - o.up
    s_end = o.at(o.drained)
    published = s_end[2] - s_up[2]
    arrived = s_end[1] - s_up[1]
    print(
        f"  drain time: {drain:.1f} s from the broker's return until the backlog was back at "
        f"<= {o.steady:,.0f} ({backlog(s_end):,.0f})"
        + (
            f"; the load went on {o.extended_s:.1f} s past the measured seconds"
            if o.extended_s
            else ""
        )
    )
    if o.reconnected is not None and drain > 0:
        busy = o.drained - o.reconnected
        print(
            f"    of which {o.reconnected - o.up:.1f} s before the first PUBACK, "
            f"{busy:.1f} s publishing"
            + (" (within one sample)" if busy < 1.5 * OUTAGE_SAMPLE_S else "")
        )
    rate = published / drain if drain > 0 else math.inf
    print(
        f"  drain rate: {rate:,.0f} records/s PUBACKed ({published:,.0f} in {drain:.1f} s, "
        f"of which {arrived:,.0f} arrived meanwhile: {arrived / drain if drain > 0 else 0:,.0f}/s)"
    )
    if o.reconnected is not None and o.drained > o.reconnected:
        busy = o.drained - o.reconnected
        window = [s for s in o.samples if o.reconnected - OUTAGE_SAMPLE_S <= s[0] <= o.drained]
        k = max(1, round(1.0 / OUTAGE_SAMPLE_S))
        rates = [
            (window[i + k][2] - window[i][2]) / (window[i + k][0] - window[i][0])
            for i in range(len(window) - k)
        ]
        print(
            f"    while publishing: {published / busy:,.0f} records/s on average"
            + (f", {max(rates):,.0f}/s at most over 1 s" if rates else "")
        )
    ratio = away / drain if drain > 0 else math.inf
    print(
        f"  ratio build-up time / drain time: {away:.1f} / {drain:.1f} = {ratio:.1f}   "
        f"target >= {DRAIN_TARGET:g}: {verdict(ratio >= DRAIN_TARGET)}"
    )
    if o.reconnected is not None and o.drained > o.reconnected:
        print(
            f"    counting from the gateway's first PUBACK instead: "
            f"{away / (o.drained - o.reconnected):.1f}"
        )
    # the drain as a curve: the backlog at 8 points from the return to the end
    if o.drained > o.up:
        points = [o.up + drain * k / 8 for k in range(9)]
        print(
            "  backlog from the return on: "
            + ", ".join(f"{p - o.up:.1f} s {backlog(o.at(p)):,.0f}" for p in points)
        )
    if args.profile == "py-spy":
        print(f"  (py-spy sampled the gateway for {o.profiled_s:.1f} s of the drain)")


def report_invariants(links: list[Link], r: Results, o: Outage) -> None:
    """What a subscriber can check of the outage tests' invariants: every frame offered
    arrives (by message id), duplicates (counted, allowed), each node's order."""
    nodes, counters = r.received[1:3]
    announced: list[tuple[float, bytes]] = r.received[5]
    first: set[tuple[int, int]] = set()
    duplicates = 0
    last: dict[int, int] = {}
    inversions: Counter[int] = Counter()
    for node, counter in zip(nodes, counters, strict=True):
        key = (node, counter)
        if key in first:
            duplicates += 1
            continue
        first.add(key)
        if counter < last.get(node, 0):
            inversions[node] += 1
        else:
            last[node] = counter
    phases = ("before the outage", "while the broker was away", "after its return")
    offered: Counter[str] = Counter()
    missing: Counter[str] = Counter()
    examples: list[tuple[int, int]] = []
    for link in links:
        for i in range(link.next):
            sent = link.sent_at[i]
            phase = phases[0 if sent < o.down_wall else 1 if sent < o.up_wall else 2]
            offered[phase] += 1
            if (link.node_id, i + 1) not in first:
                missing[phase] += 1
                if len(examples) < 5:
                    examples.append((link.node_id, i + 1))
    print(
        "\ninvariants, from the subscriber's side (a persistent session, QoS 1; by message id, "
        "one per record):"
    )
    for phase in phases:
        print(
            f"  frames offered {phase + ':':<27} {offered[phase]:9,}, arrived "
            f"{offered[phase] - missing[phase]:9,}, missing {missing[phase]:,}"
        )
    lost = missing[phases[0]] + missing[phases[1]]
    print(
        f"  every frame offered before the broker's return arrived: {verdict(lost == 0)}"
        + (f" (missing e.g. node, counter: {examples})" if examples else "")
    )
    received = len(nodes)
    print(
        f"  duplicates: {duplicates:,} of {received:,} records received (allowed: consumers drop "
        "them by message id)"
    )
    in_order = sum(1 for link in links if inversions[link.node_id] == 0)
    print(
        f"  order per node (counters in first-arrival order increase): {in_order} of "
        f"{len(links)} nodes; {sum(inversions.values()):,} out of order: "
        f"{verdict(not inversions)}"
    )
    online = [t for t, payload in announced if payload == b"online" and t >= o.up_wall]
    if online:
        print(
            f'  the subscriber saw the gateway announce "online" {online[0] - o.up_wall:+.1f} s '
            "after the broker's return"
        )
    m = o.final
    if m:
        outcomes: Counter[str] = Counter()
        for labels, value in m.get("edgeveil_frames_total", []):
            outcomes[labels["outcome"]] += int(value)
        total_offered = sum(link.next for link in links)
        rest = ", ".join(f"{k} {v:,}" for k, v in sorted(outcomes.items()) if k != "accepted")
        print(
            f"  gateway, whole run: {outcomes['accepted']:,} frames accepted of {total_offered:,}"
            f" offered; other outcomes: {rest or 'none'}; "
            f"{total(m, 'edgeveil_mqtt_published_total'):,.0f} records PUBACKed; spool depth "
            f"{total(m, 'edgeveil_spool_depth'):,.0f} (the 5-s gauge); spool dropped "
            f"{total(m, 'edgeveil_spool_dropped_total'):,.0f}"
        )
    print(
        "  (the replayer does not open the gateway's acks: a frame offered and missing here "
        "may have been acknowledged or not; every one offered is accepted in a clean run)"
    )


# -- the run -------------------------------------------------------------------------------------


@dataclass
class Results:
    idle_s: float
    idle_ticks: int
    idle_mem: dict[str, int]
    idle_machine: float  # % of one core busy on the whole machine while the gateway idled
    start: Snapshot
    end: Snapshot
    end_mem: dict[str, int]
    offered: int
    offered_total: int
    drain_s: float
    received: tuple[Any, ...]
    ack_bytes: int
    write_stalls: int
    ran_out: int
    state_before: dict[str, int]  # the state directory's files before the load
    state: StateSampler
    log_bytes: int  # the gateway's log grew this much in the measured seconds
    outage: Outage | None = None  # --outage: the broker's outage and the backlog around it


async def measure(  # noqa: PLR0917 - the run's parts, each named at the one call
    args: argparse.Namespace,
    links: list[Link],
    gw: SystemProcess,
    sub: SubscriberProcess,
    url: str | None,
    others: dict[str, int | str],
    profile: Path | None,
    state: Path,
    broker: Any = None,
) -> Results:
    """The idle baseline, the warm-up, the measured seconds, the drain. With --outage,
    `broker` (tests.mosquitto.Mosquitto) goes away for a while in the measured seconds."""
    state_before = file_sizes(state)
    # idle baseline: links open, broker connected, no traffic
    t = time.monotonic()
    ticks, machine = cpu_ticks(gw.pid), machine_ticks()
    await asyncio.sleep(args.idle)
    idle_ticks, idle_s = cpu_ticks(gw.pid) - ticks, time.monotonic() - t
    busy, all_ = (b - a for a, b in zip(machine, machine_ticks(), strict=True))
    idle_machine = (os.cpu_count() or 1) * 100 * busy / max(1, all_)
    idle_mem = memory_kb(gw.pid)

    replayer = Replayer(links, args.rate, args.frames_per_s)
    task = asyncio.create_task(replayer.run())
    await asyncio.sleep(args.warmup)
    spy = outage = None
    if args.outage and url is not None and broker is not None:
        outage = Outage(args.outage, broker.port, stall=args.stall)
    elif profile is not None and args.profile == "py-spy":
        spy = start_py_spy(gw.pid, args.seconds, profile)
    start = await snapshot(gw.pid, others, url)
    if outage is not None and url is not None:
        outage.begin(args, url, broker, start.mono, (gw.pid, profile))
    log_start = gw.log_path.stat().st_size
    sampler = StateSampler(state, args.seconds)
    sampling = asyncio.create_task(sampler.run(start.mono))
    await asyncio.sleep(args.seconds - (time.monotonic() - start.mono))
    end = await snapshot(gw.pid, others, url)
    end_mem = memory_kb(gw.pid)
    log_bytes = gw.log_path.stat().st_size - log_start
    await sampling
    sampler.sample(end.mono - start.mono, row=True)
    if outage is not None:
        await outage.drain(args, end.mono)
    replayer.running = False
    await task
    offered_total = sum(link.next for link in links)

    # drain: let the gateway and the broker deliver what was offered (at most 15 s; after an
    # outage at most 60 s, as what is left of a backlog may take longer)
    limit, stable = (60.0, 5.0) if outage is not None else (15.0, 2.0)
    drain_s = await wait_delivered(sub, offered_total, limit, stable)
    received = await asyncio.to_thread(sub.stop)
    if outage is not None:
        await outage.finish()
    if spy is not None:
        _, err = await asyncio.to_thread(spy.communicate)
        if spy.returncode != 0:
            print(f"  py-spy failed: {err.decode(errors='replace').strip()}")
    return Results(
        idle_s=idle_s,
        idle_ticks=idle_ticks,
        idle_mem=idle_mem,
        idle_machine=idle_machine,
        start=start,
        end=end,
        end_mem=end_mem,
        offered=replayer.offered_between(start.wall, end.wall),
        offered_total=offered_total,
        drain_s=drain_s,
        received=received,
        ack_bytes=sum(link.ack_bytes for link in links),
        write_stalls=sum(link.write_stalls for link in links),
        ran_out=replayer.ran_out,
        state_before=state_before,
        state=sampler,
        log_bytes=log_bytes,
        outage=outage,
    )


async def wait_delivered(
    sub: SubscriberProcess, offered: int, limit: float, stable: float
) -> float:
    """Until the subscriber has `offered` records, or its count stood still `stable` seconds,
    or `limit` seconds passed; returns the seconds waited."""
    t = time.monotonic()
    last, stable_since = -1, time.monotonic()
    while time.monotonic() - t < limit:
        await asyncio.sleep(0.25)
        n = await asyncio.to_thread(sub.count)
        if n != last:
            last, stable_since = n, time.monotonic()
        if n >= offered or time.monotonic() - stable_since > stable:
            break
    return time.monotonic() - t


def delivery(links: list[Link], r: Results) -> tuple[int, list[float]]:
    """(readings the subscriber received in the measured seconds (one per "mid"), latencies
    from frame written to receipt of the frames written in them, sorted)."""
    s0, s1 = r.start, r.end
    nodes, counters, times = r.received[1:4]
    by_node = {link.node_id: link for link in links}
    latencies: list[float] = []
    received_in_window = 0
    for node, counter, at in zip(nodes, counters, times, strict=True):
        if s0.wall <= at < s1.wall:
            received_in_window += 1
        link = by_node.get(node)
        if link is None or not 0 < counter <= len(link.sent_at):
            continue
        sent = link.sent_at[counter - 1]
        if s0.wall <= sent < s1.wall:
            latencies.append(at - sent)
    latencies.sort()
    return received_in_window, latencies


def load_text(args: argparse.Namespace, frame_len: float) -> str:
    if args.frames_per_s:
        return (
            f"at 115200 baud, {args.frames_per_s:g} frames/s in all "
            f"({args.frames_per_s / args.links:.3g} a link, evenly spaced; "
            f"frames of {frame_len:.1f} B on the wire)"
        )
    return (
        f"at {args.rate:.0%} of 115200 baud ({LINE_BYTES_PER_S * args.rate:,.0f} B/s each, "
        f"frames of {frame_len:.1f} B on the wire)"
    )


def report(args: argparse.Namespace, links: list[Link], r: Results, gw_pid: int) -> None:  # noqa: PLR0915 - one printed page
    s0, s1 = r.start, r.end
    span = s1.mono - s0.mono
    m0, m1 = s0.metrics, s1.metrics

    def delta(name: str, **labels: str) -> float:
        return total(m1, name, **labels) - total(m0, name, **labels)

    outcomes: Counter[str] = Counter()
    for labels, value in m1.get("edgeveil_frames_total", []):
        before = sum(v for lab, v in m0.get("edgeveil_frames_total", []) if lab == labels)
        outcomes[labels["outcome"]] += int(value - before)
    accepted = outcomes.get("accepted", 0)

    sub_ticks = r.received[4]
    received_in_window, latencies = delivery(links, r)
    lost = r.offered - len(latencies)
    # frames never delivered count as slower than any delivered one
    ranked = latencies + [math.inf] * max(0, lost)

    frame_len = sum(len(f) for link in links for f in link.frames[:1000]) / sum(
        min(1000, len(link.frames)) for link in links
    )
    print(
        f"\nedgeveil gateway, end to end: {args.links} serial links {load_text(args, frame_len)},"
    )
    print(
        f"{args.nodes} nodes registered ({args.links} sending), Mosquitto on 127.0.0.1;"
        f" {span:.1f} s measured after {args.warmup:g} s of warm-up; "
        f"{os.cpu_count()} CPUs"
    )
    print("\nthroughput                                 per second")
    print(f"  frames offered (replayer)               {r.offered / span:9,.0f}")
    print(f"  frames accepted (gateway metrics)       {accepted / span:9,.0f}")
    print(
        f"  published, PUBACKed (gateway metrics)   "
        f"{delta('edgeveil_mqtt_published_total') / span:9,.0f}"
    )
    print(f"  readings received (subscriber: mids)    {received_in_window / span:9,.0f}")
    others = ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()) if k != "accepted")
    line_errors = int(delta("edgeveil_line_errors_total"))
    print(
        f"  in the window: {accepted} accepted; other outcomes: {others or 'none'}; "
        f"line errors {line_errors}; acks read {r.ack_bytes:,} B; "
        f"pty write stalls {r.write_stalls}"
    )
    if r.ran_out:
        print(f"  (the replayer ran out of pre-sealed frames {r.ran_out} times: rate too low)")
    if r.outage is not None:
        print("  (an outage run: the window holds the outage and its drain)")
        report_outage(args, r.outage)
        report_invariants(links, r, r.outage)

    p50, p99 = percentile(latencies, 0.50), percentile(latencies, 0.99)
    g50, count = histogram_quantile(m0, m1, "edgeveil_latency_seconds", 0.50)
    g99, _ = histogram_quantile(m0, m1, "edgeveil_latency_seconds", 0.99)
    share = len(latencies) / r.offered if r.offered else 0.0
    print("\nlatency                                    p50          p99")
    if r.outage is not None:
        print(
            "  (an outage run: the frames held while the broker was away are in these, so they "
            "say nothing of the steady state)"
        )
    print(
        f"  frame written -> subscriber receipt  {fmt_ms(p50):>12} {fmt_ms(p99):>12}"
        f"   (of the {len(latencies):,} frames delivered, {share:.1%} of the {r.offered:,}"
        " offered in the window; includes the broker hop)"
    )
    if lost > 0:
        q50, q99 = percentile(ranked, 0.50), percentile(ranked, 0.99)
        print(
            f"    counting the {lost:,} not delivered within {r.drain_s:.1f} s after the load "
            f"stopped as slowest: p50 {fmt_ms(q50)}, p99 {fmt_ms(q99)}"
        )
    print(
        f"  gateway arrival -> PUBACK (histogram)~{fmt_ms(g50, '> 1 h'):>11} "
        f"~{fmt_ms(g99, '> 1 h'):>11}"
        f"   ({count:,} observations; estimated within buckets)"
    )
    published = delta("edgeveil_mqtt_published_total")
    if count < 0.9 * published:
        print(
            f"    (only {count:,} observations for {published:,.0f} messages published: the "
            "gateway remembers the arrival of the newest 10,000 spooled messages only "
            "(uplink._PUT_TIMES_KEPT), so with a deeper spool backlog it observes none)"
        )
    depth = total(m1, "edgeveil_spool_depth")
    print(
        f"  backlog: {accepted - published:,.0f} more frames accepted than messages published"
        f" in the window (edgeveil_spool_depth, updated every 5 s: {depth:,.0f} at the end)"
    )

    idle_cpu = pct(r.idle_ticks, r.idle_s)
    load_cpu = pct(s1.gw_ticks - s0.gw_ticks, span)
    cpu_target = CPU_TARGET_PCT * args.links / CPU_TARGET_LINKS
    rss_idle = r.idle_mem.get("VmRSS", 0) / 1024
    rss_load = r.end_mem.get("VmRSS", 0) / 1024
    hwm = r.end_mem.get("VmHWM", 0) / 1024
    print("\ngateway process                       idle       load     target      ")
    print(
        f"  CPU, % of one core               {idle_cpu:8.1f} {load_cpu:10.1f}   "
        f"<= {cpu_target:4.1f} %   {verdict(load_cpu <= cpu_target)}"
    )
    print(
        f"  RSS, MB (VmRSS)                  {rss_idle:8.1f} {rss_load:10.1f}   "
        f"<= {RSS_TARGET_MB:4.0f} MB  {verdict(max(rss_load, hwm) <= RSS_TARGET_MB)}"
    )
    print(f"  peak RSS, MB (VmHWM)                       {hwm:10.1f}")
    for part, what in (("RssAnon", "anonymous"), ("RssFile", "file-backed")):
        idle_part = r.idle_mem.get(part, 0) / 1024
        load_part = r.end_mem.get(part, 0) / 1024
        print(f"    of it {what:<12} MB          {idle_part:8.1f} {load_part:10.1f}")
    print(
        "    (file-backed: pages of the libraries' files, OpenDP's 275 MB one the largest; how"
        " many the kernel maps in with each fault depends on how much of the files is in the"
        " page cache, so the same gateway shows several MB more after the files were just"
        " installed or read than after a reboot)"
    )
    if args.links != CPU_TARGET_LINKS:
        print(
            f"  (the CPU target is {CPU_TARGET_PCT:g} % for {CPU_TARGET_LINKS} links; "
            f"prorated to {args.links} links)"
        )
    if args.nodes != 1000:
        print("  (the RSS target is stated for 1,000 registered nodes)")
    if args.profile:
        print("  (profiled run: the profiler disturbs these figures)")
    if args.cpu_quota:
        print(
            f"  (--cpu-quota {args.cpu_quota:g}: CPU is at most {args.cpu_quota:.0%} of one core;"
            " the CPU target is for the whole core)"
        )
    if r.outage is not None:
        print(
            "  (an outage run: the load CPU is the average over the outage and its drain, "
            "not a steady-state figure; the target does not apply)"
        )

    main_tid = gw_pid
    d_threads = {
        tid: s1.gw_threads.get(tid, 0) - s0.gw_threads.get(tid, 0) for tid in s1.gw_threads
    }
    main = d_threads.pop(main_tid, 0)
    busy = sorted((v for v in d_threads.values() if v > 0), reverse=True)
    print(
        f"  by thread: event loop {pct(main, span):.1f} %, {len(d_threads)} other threads "
        f"(asyncio.to_thread workers: spool and registry SQLite; metrics HTTP) "
        f"{pct(sum(busy), span):.1f} %"
        + (f" (busiest {', '.join(f'{pct(v, span):.1f}' for v in busy[:4])})" if busy else "")
    )

    o0, o1 = s0.other_ticks, s1.other_ticks
    busy_m = s1.machine[0] - s0.machine[0]
    total_m = s1.machine[1] - s0.machine[1]
    cores = os.cpu_count() or 1
    print(
        "\ncontext, % of one core over the window: "
        + ", ".join(f"{k} {pct(o1[k] - o0[k], span):.1f}" for k in o1)
        + ("; mosquitto n/a (restarted)" if r.outage is not None else "")
        + f"; whole machine {100 * cores * busy_m / total_m:.0f} of {100 * cores}"
        f" (during the idle baseline, {r.idle_machine:.0f}: load that is not ours)"
    )
    print(
        f"  subscriber process, whole run: {sub_ticks / CLK_TCK:.1f} s CPU; "
        f"drained {r.drain_s:.1f} s after the load stopped"
    )
    report_storage(args, r, accepted, span)


def report_peer(links: list[Link], r: Results, peer: PeerProcess) -> None:
    span = r.end.mono - r.start.mono
    received, latencies = delivery(links, r)
    share = len(latencies) / r.offered if r.offered else 0.0
    p50, p99 = percentile(latencies, 0.50), percentile(latencies, 0.99)
    print(
        "plain bridge (pyserial ReaderThread a port, the protocol's COBS framing, AESCCM via "
        "protocol.open_frame, one paho QoS 1 publish per frame; no spool, privacy stage or acks)"
    )
    print(
        f"  per second: frames offered {r.offered / span:,.0f}, readings received "
        f"(subscriber) {received / span:,.0f}; pty write stalls {r.write_stalls}, "
        f"acks read {r.ack_bytes:,} B"
    )
    print(
        f"  latency frame written -> subscriber receipt: p50 {fmt_ms(p50)}, p99 {fmt_ms(p99)} "
        f"(of the {len(latencies):,} frames delivered, {share:.1%} of those offered)"
    )
    load = pct(r.end.gw_ticks - r.start.gw_ticks, span)
    rss, hwm = r.end_mem.get("VmRSS", 0) / 1024, r.end_mem.get("VmHWM", 0) / 1024
    print(
        f"  CPU, % of one core: idle {pct(r.idle_ticks, r.idle_s):.1f}, load {load:.1f}; "
        f"RSS {rss:.1f} MB (peak {hwm:.1f} MB); drained {r.drain_s:.1f} s"
    )
    print(f"  its count over the whole run: {peer.summary()}")


def compare(gateway: tuple[list[Link], Results], peer: tuple[list[Link], Results]) -> None:
    """Both runs side by side, over their measured seconds: CPU per delivered reading is the
    system's CPU time divided by the readings the subscriber received meanwhile."""
    rows = []
    for links, r in (gateway, peer):
        span = r.end.mono - r.start.mono
        received, _ = delivery(links, r)
        cpu_s = (r.end.gw_ticks - r.start.gw_ticks) / CLK_TCK
        per_reading = 1e6 * cpu_s / received if received else math.inf
        rows.append((r.offered / span, received / span, 100 * cpu_s / span, per_reading))
    (g_offered, g_rate, g_cpu, g_us), (p_offered, p_rate, p_cpu, p_us) = rows
    print("\ngateway vs peer, over the measured seconds         gateway        peer")
    print(f"  frames offered/s (replayer)                  {g_offered:10,.0f}  {p_offered:10,.0f}")
    print(f"  delivered readings/s (subscriber)            {g_rate:10,.0f}  {p_rate:10,.0f}")
    print(f"  CPU, % of one core                           {g_cpu:10.1f}  {p_cpu:10.1f}")
    print(f"  CPU microseconds per delivered reading       {g_us:10.1f}  {p_us:10.1f}")
    for name, (offered, rate, _, _) in zip(("gateway", "peer"), rows, strict=True):
        if rate < 0.95 * offered:
            print(
                f"  (the {name} delivered {rate / offered:.0%} of the frames offered meanwhile: "
                "it fell behind, and its CPU time went to readings delivered later as well)"
            )
    ratio = g_us / p_us if p_us else math.inf
    print(
        f"  ratio gateway / peer, CPU per delivered reading: {ratio:.2f}   target <= 1.0: "
        f"{verdict(ratio <= 1.0)}"
    )


def _kb(n: float) -> str:
    return f"{n / KB:,.1f}"


def _by_database(sizes: dict[str, int]) -> dict[str, int]:
    """spool.db + spool.db-wal + spool.db-shm -> "spool.db": their sum."""
    out: Counter[str] = Counter()
    for name, size in sizes.items():
        out[name.removesuffix("-wal").removesuffix("-shm")] += size
    return dict(out)


def report_storage(args: argparse.Namespace, r: Results, accepted: int, span: float) -> None:
    io0, io1 = r.start.io, r.end.io
    written = io1.get("write_bytes", 0) - io0.get("write_bytes", 0)
    cancelled = io1.get("cancelled_write_bytes", 0) - io0.get("cancelled_write_bytes", 0)
    wchar = io1.get("wchar", 0) - io0.get("wchar", 0)
    fstype, device = filesystem(r.state.state_dir)
    if args.frames_per_s:
        target, stated = WRITE_TARGET_KB_FIXED, f"{WRITE_TARGET_FPS:g} frames/s"
        stated_here = args.frames_per_s == WRITE_TARGET_FPS
    else:
        target, stated, stated_here = WRITE_TARGET_KB_LINE, "line rate", args.rate == 1.0
    per_reading = written / accepted / KB if accepted else math.nan
    print(f"\nstorage: state directory on {fstype} ({device}), {r.state.state_dir}")
    print(
        f"  gateway write_bytes (to the block layer)  {written:14,} B"
        f"   {written / span / KB:8,.1f} KB/s   (cancelled_write_bytes {cancelled:,} B)"
    )
    print(
        f"  gateway wchar (every write, pty/MQTT too) {wchar:14,} B"
        f"   {wchar / span / KB:8,.1f} KB/s"
    )
    print(f"  readings accepted (readings frames)       {accepted:14,}")
    print(
        f"  written per reading                       {per_reading:14,.2f} KB   target <= "
        f"{target:g} KB at {stated}: {verdict(per_reading <= target)}"
        + ("" if stated_here else " (the target is stated for another rate)")
    )
    print(
        f"  (KB = {KB:,} B; the gateway's log, stdout to a file on the same disk, grew "
        f"{r.log_bytes:,} B in the window, counted in write_bytes)"
    )
    if fstype in MEMORY_FS:
        print(f"  (on {fstype} write_bytes stays 0: nothing is written to a disk)")

    last = r.state.rows[-1][1]
    start = r.state.rows[0][1]
    print(
        f"  state directory, KB: before the load {_kb(sum(r.state_before.values()))}, "
        f"window start {_kb(sum(start.values()))}, end {_kb(sum(last.values()))}, "
        f"max {_kb(r.state.max_total)} (sampled every {r.state.sample_s:.1f} s)"
    )
    print("  file, KB                    end        max")
    for name in sorted(r.state.max):
        print(f"    {name:<20} {_kb(last.get(name, 0)):>10} {_kb(r.state.max[name]):>10}")
    names = sorted(_by_database(r.state.max))
    print("  over the window, KB (each database with its -wal and -shm):")
    print("    " + f"{'s':>7} {'total':>10}" + "".join(f" {n:>12}" for n in names))
    for at, sizes in r.state.rows:
        dbs = _by_database(sizes)
        print(
            f"    {at:7.0f} {_kb(sum(sizes.values())):>10}"
            + "".join(f" {_kb(dbs.get(n, 0)):>12}" for n in names)
        )


CGROUP_V2 = Path("/sys/fs/cgroup")
CGROUP_V1_CPU = Path("/sys/fs/cgroup/cpu")
QUOTA_PERIOD_US = 10_000  # short periods: a throttled process waits at most this long


def confine(pid: int, quota: float, stack: contextlib.ExitStack) -> str:
    """Move process `pid` (every thread) into a new cgroup that may use at most `quota` of one
    core's time in each QUOTA_PERIOD_US (--cpu-quota); removed again through `stack`. Returns
    how, for the report. Raises SystemExit with what to do when it cannot."""
    quota_us = max(1000, round(quota * QUOTA_PERIOD_US))  # the kernel's least is 1 ms
    name = f"edgeveil-bench-{os.getpid()}-{pid}"
    v2 = (CGROUP_V2 / "cgroup.controllers").exists()
    parent = CGROUP_V2 if v2 else CGROUP_V1_CPU
    if not v2 and not (parent / "cpu.cfs_quota_us").exists():
        raise SystemExit("--cpu-quota: no cgroup cpu controller (v2 or v1) on this machine")
    group = parent / name
    try:
        if v2 and "cpu" not in (parent / "cgroup.subtree_control").read_text().split():
            (parent / "cgroup.subtree_control").write_text("+cpu")
        group.mkdir()
        if v2:
            (group / "cpu.max").write_text(f"{quota_us} {QUOTA_PERIOD_US}")
        else:
            (group / "cpu.cfs_period_us").write_text(str(QUOTA_PERIOD_US))
            (group / "cpu.cfs_quota_us").write_text(str(quota_us))
        (group / "cgroup.procs").write_text(str(pid))
    except OSError as exc:
        raise SystemExit(f"--cpu-quota needs root and a writable {parent}: {exc}") from exc

    def remove() -> None:
        with contextlib.suppress(OSError):  # still running: back to the parent first
            for moved in (group / "cgroup.procs").read_text().split():
                (parent / "cgroup.procs").write_text(moved)
        with contextlib.suppress(OSError):
            group.rmdir()

    stack.callback(remove)
    version = "v2" if v2 else "v1"
    return f"cgroup {version} {group}: {quota_us} us of CPU time every {QUOTA_PERIOD_US} us"


def make_links(
    args: argparse.Namespace, secrets: dict[int, bytes], stack: contextlib.ExitStack
) -> list[Link]:
    """One pty pair and one sending node per link, with enough frames for the whole run."""
    seconds = args.warmup + args.seconds + outage_extra_s(args) + 2
    per_link = math.ceil(LINE_BYTES_PER_S * args.rate * seconds / 31) + 16  # 31 B: shortest
    if args.frames_per_s:
        per_link = math.ceil(args.frames_per_s / args.links * seconds) + 16
    links = []
    ptys = make_ptys(args.links, stack)
    for i, ((master, slave, path), (node_id, secret)) in enumerate(
        zip(ptys, sorted(secrets.items()), strict=True)
    ):
        frames = seal_frames(node_id, secret, per_link)
        link = Link(f"link-{i + 1:02d}", node_id, master, slave, path, frames)
        link.phase = i / args.links
        link.sent_at = array.array("d", bytes(8 * len(frames)))
        links.append(link)
    return links


# What a run starts as the system under test, given the port of the run's broker: a process
# that reads the links' pty slaves and publishes to that broker.
StartSystem = Callable[[int], SystemProcess]


def measured_run(  # noqa: PLR0917 - the run's parts, each named at the call
    args: argparse.Namespace,
    links: list[Link],
    start: StartSystem,
    directory: Path,
    state: Path,
    profile: Path | None = None,
) -> tuple[Results, SystemProcess]:
    """One run: a Mosquitto and a subscriber of its own (in `directory`: nothing retained or
    queued from another run), the system `start` starts, then measure(): its idle baseline,
    the replay on `links` (warm-up, measured seconds), the drain. All stopped at the end."""
    from tests.mosquitto import Mosquitto  # noqa: PLC0415 - after sys.path

    with contextlib.ExitStack() as stack:
        # set_tcp_nodelay: Mosquitto's default leaves Nagle's algorithm on, so a PUBACK waits
        # for the client's ACK of the one before (our kernel delays that ACK until it has
        # something to send): arrival-to-PUBACK p99 of about 50 ms at 5 % of line rate
        # against 5 ms with it set (docs/operators/install.md recommends it to operators).
        # --outage: persistence keeps the subscriber's session (and what is queued for it)
        # across the broker's restart
        broker = Mosquitto(
            directory / "mosquitto",
            persistence=bool(args.outage),
            extra="max_queued_messages 0\nmax_inflight_messages 0\nset_tcp_nodelay true",
        )
        stack.callback(broker.kill)
        broker.start()
        sub = SubscriberProcess(broker.host, broker.port, persistent=bool(args.outage))
        stack.callback(sub.kill)
        sub.start()

        t = time.monotonic()
        system = start(broker.port)
        stack.callback(system.stop)
        if args.cpu_quota:
            how = confine(system.pid, args.cpu_quota, stack)
            print(f"  {system.name} confined to {args.cpu_quota:.0%} of one core ({how})")
        system.wait_ready(len(links), sub)
        print(f"  {system.name} pid {system.pid} ready in {time.monotonic() - t:.1f} s")

        others: dict[str, int | str] = {"replayer (this process)": "self"}
        broker_proc = getattr(broker, "_proc", None)
        if broker_proc is not None and not args.outage:  # a restarted one: another pid
            others["mosquitto"] = broker_proc.pid
        others["subscriber"] = sub.pid
        print(
            f"  idle {args.idle:g} s, then load: warm-up {args.warmup:g} s, "
            f"measured {args.seconds:g} s"
            + (
                f"; the broker away for {args.outage:g} s after {args.outage_after:g} s of them"
                if args.outage
                else ""
            )
        )
        results = asyncio.run(
            measure(args, links, system, sub, system.url, others, profile, state, broker)
        )
        if system.proc.poll() is not None:
            print(f"the {system.name} exited during the run:\n{system.log_tail()}")
        system.stop()
    return results, system


def relink(links: list[Link], stack: contextlib.ExitStack) -> list[Link]:
    """The same nodes and frames on new pty pairs, nothing offered yet: another run's links."""
    out = []
    for link, (master, slave, path) in zip(links, make_ptys(len(links), stack), strict=True):
        fresh = Link(link.name, link.node_id, master, slave, path, link.frames, phase=link.phase)
        fresh.sent_at = array.array("d", bytes(8 * len(link.frames)))
        out.append(fresh)
    return out


def run(args: argparse.Namespace) -> None:
    from tests.mosquitto import free_port  # noqa: PLC0415 - after sys.path

    with contextlib.ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="edgeveil-bench-", dir=args.state_dir_parent))
        if args.keep:
            print(f"  keeping {tmp}")
        else:
            stack.callback(shutil.rmtree, tmp, ignore_errors=True)

        t = time.monotonic()
        state = tmp / "state"
        secrets = register_nodes(state, args.nodes, args.links)
        print(f"  {args.nodes} nodes registered in {time.monotonic() - t:.1f} s")

        t = time.monotonic()
        links = make_links(args, secrets, stack)
        print(
            f"  {sum(len(link.frames) for link in links):,} frames sealed for {args.links} links "
            f"in {time.monotonic() - t:.1f} s"
        )

        profile: Path | None = None
        if args.profile:
            profile = tmp / ("gateway.prof" if args.profile == "cprofile" else "py-spy.txt")

        def start_gateway(mqtt_port: int) -> SystemProcess:
            metrics_port = free_port()
            config = tmp / "gateway.toml"
            toml = gateway_toml(
                state, links, mqtt_port, metrics_port, args.policy, args.spool_max_messages
            )
            config.write_text(toml, encoding="utf-8")
            cprofile = profile if args.profile == "cprofile" else None
            url = f"http://127.0.0.1:{metrics_port}/metrics"
            print(f"  gateway state in {state}")
            return GatewayProcess(config, tmp / "gateway.log", cprofile, url)

        results, gw = measured_run(args, links, start_gateway, tmp, state, profile)
        report(args, links, results, gw.pid)
        if profile is not None and args.profile == "py-spy" and profile.exists():
            spied = round(results.outage.profiled_s, 1) if results.outage else args.seconds
            report_py_spy(profile, spied)
        elif profile is not None and args.profile == "cprofile":
            report_cprofile(profile)
        gw.print_warnings()
        if not args.peer:
            return

        peer_dir = tmp / "peer"
        (peer_dir / "state").mkdir(parents=True)  # it keeps none: sampled empty
        nodes = peer_dir / "nodes.json"
        with NodeRegistry.open(state / "registry.db") as registry:
            registry.export_file(nodes)  # every registered node, as the gateway has them
        peer_links = relink(links, stack)
        print(
            "\npeer baseline: the same replay against benchmarks/plain_bridge.py (the same "
            "nodes and frames on new ptys, the same rate and seconds; its own Mosquitto)"
        )

        def start_peer(mqtt_port: int) -> SystemProcess:
            return PeerProcess(peer_links, nodes, mqtt_port, peer_dir / "bridge.log")

        peer_results, peer = measured_run(
            args, peer_links, start_peer, peer_dir, peer_dir / "state"
        )
        assert isinstance(peer, PeerProcess)
        report_peer(peer_links, peer_results, peer)
        compare((links, results), (peer_links, peer_results))


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse contradictory or impossible options (parser.error exits); choose the state
    directory's parent when none is given."""
    if not 1 <= args.links <= args.nodes:
        parser.error("--links must be 1..--nodes")
    if not 0 < args.rate <= 4 or args.seconds <= 0 or args.warmup < 0 or args.idle <= 0:
        parser.error("--rate must be in (0, 4]; --seconds and --idle > 0; --warmup >= 0")
    if args.frames_per_s is not None and args.frames_per_s <= 0:
        parser.error("--frames-per-s must be > 0")
    if args.cpu_quota is not None and not 0.1 <= args.cpu_quota <= 2:
        parser.error("--cpu-quota must be in 0.1..2 (a fraction of one core)")
    if args.stall and args.outage is None:
        parser.error("--stall needs --outage")
    if args.outage is not None:
        if args.outage <= 0 or args.outage_after < 1:
            parser.error("--outage must be > 0, --outage-after at least 1")
        if args.outage_after + args.outage >= args.seconds:
            parser.error("--outage-after + --outage must end before --seconds do")
        if args.peer:
            parser.error(
                "--outage needs --no-peer (the plain bridge keeps nothing while the broker is "
                "away: there is no backlog to compare)"
            )
    if args.state_dir_parent is None:
        args.state_dir_parent = Path(tempfile.gettempdir())
        if filesystem(args.state_dir_parent)[0] in MEMORY_FS:
            args.state_dir_parent = Path("/var/tmp")  # noqa: S108 - a disk, usually
    fstype = filesystem(args.state_dir_parent)[0]
    if fstype in MEMORY_FS:
        parser.error(
            f"{args.state_dir_parent} is on {fstype}: no bytes reach a disk there; "
            "choose --state-dir-parent on a disk"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--links", type=int, default=20, help="serial links (senders)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds")
    parser.add_argument("--nodes", type=int, default=1000, help="registered nodes")
    load = parser.add_mutually_exclusive_group()
    load.add_argument("--rate", type=float, default=1.0, help="fraction of the line rate")
    load.add_argument(
        "--frames-per-s", type=float, help="fixed frame rate of all links together, e.g. 17"
    )
    parser.add_argument(
        "--policy",
        choices=("pass", "default"),
        default="pass",
        help="pass: every readings frame one MQTT message (the per-frame path, default); "
        "default: the shipped policy, readings as 15-minute zone aggregates (storage figures "
        "of a typical site; nothing to deliver per frame)",
    )
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load first")
    parser.add_argument("--idle", type=float, default=3.0, help="seconds of idle baseline")
    parser.add_argument("--profile", choices=("py-spy", "cprofile"), help="profile the gateway")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--peer",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="after the gateway's run, the same replay against the plain bridge "
        "(benchmarks/plain_bridge.py), and both side by side (default: on)",
    )
    parser.add_argument(
        "--outage",
        type=float,
        metavar="SECONDS",
        help="stop the broker this long in the measured seconds, then start it again; report "
        "how fast the gateway's backlog drains (needs --no-peer)",
    )
    parser.add_argument(
        "--outage-after",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="--outage: seconds of steady load in the measured seconds before the broker stops",
    )
    parser.add_argument(
        "--spool-max-messages",
        type=int,
        metavar="N",
        help="the gateway's [spool] max_messages (default: the gateway's, 1,000,000): with "
        "--outage, a spool that fills (when_full = drop_oldest). The drain figures then do not "
        "apply: dropped messages are never PUBACKed, so the backlog never comes back",
    )
    parser.add_argument(
        "--stall",
        action="store_true",
        help="--outage: stop the broker with SIGSTOP and continue it with SIGCONT (a broker "
        "that hangs: connections and bytes still accepted, nothing answered) instead of "
        "stopping and starting it",
    )
    parser.add_argument(
        "--cpu-quota",
        type=float,
        metavar="FRACTION",
        help="run the system under test with at most this fraction of one core (a cgroup; "
        "needs root): a model of a slower processor such as a Raspberry Pi's, e.g. 0.33",
    )
    parser.add_argument(
        "--state-dir-parent",
        type=Path,
        help="where the temporary directory goes (a disk, not tmpfs; default: the system's "
        "temporary directory, or /var/tmp if that is tmpfs)",
    )
    args = parser.parse_args()
    check(parser, args)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        run(args)
    except KeyboardInterrupt:
        print("\ninterrupted: everything stopped and removed", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
