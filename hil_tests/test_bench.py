"""The technician's path on a bench board, step by step (see conftest.py for real vs emulated):
provision -> deploy -> the node boots and runs -> a gateway receives and verifies its frames ->
the monitor shows them; and what must hold on any board: the frame counter survives a power
cut, a frame whose acknowledgement is lost is sent again. Then the node's identity over its
life, through the real gateway: a re-key over the serial downlink, a replacement identity
deployed onto the board (the old one revoked once the new one is heard), a revocation.

The tests share one deployed node and run in file order, as the steps on a bench do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import serial
from prometheus_client.parser import text_string_to_metric_families

from protocol import (
    NEED_DATA,
    Ack,
    NodeKeys,
    StreamDecoder,
    encode_serial,
    open_frame,
    parse_header,
    seal,
)
from protocol.errors import RemoteProtocolError
from tests.command import child_process, edgeveil
from tests.gateway_harness import write_policy
from tests.mosquitto import Mosquitto, free_port, subscribed
from tests.waiting import until, until_sync

from .conftest import Bench

pytestmark = pytest.mark.slow  # end to end: scripts/test -m "not slow" skips it

HERE = Path(__file__).resolve().parent
SITE, GATEWAY_ID = "bench", "gw-bench"


@dataclass
class Node:
    node_id: int
    keys: NodeKeys
    config: Path
    registry: Path
    state_dir: Path
    secret: bytes = b""


Until = Callable[[list["Seen"]], bool]  # stop reading the line once this holds


@dataclass
class Seen:
    counter: int
    kind: str
    content: dict[str, object]
    frame: bytes
    epoch: int = 0


class Line:
    """The bench's view of the serial line: every frame the node sends, verified with its key;
    console text is skipped (the framing tells them apart)."""

    def __init__(self, port: str, keys: NodeKeys, secret: bytes = b"") -> None:
        self.serial = serial.Serial(port, 115200, timeout=0.1)
        self.keys = keys
        self.secret = secret  # for frames of another key epoch than `keys`
        self.decoder = StreamDecoder()
        self.rejected: list[str] = []

    def close(self) -> None:
        self.serial.close()

    def frames(self, seconds: float, until: Until) -> list[Seen]:
        """The frames the node sends from now on, until until(frames) holds (a failure after
        `seconds`)."""
        seen: list[Seen] = []

        def read() -> bool:
            self.decoder.feed(self.serial.read(4096))  # waits up to the port's timeout
            while True:
                try:
                    frame = self.decoder.next_event()
                except RemoteProtocolError:
                    continue  # console text and boot noise
                if frame is NEED_DATA or not isinstance(frame, bytes):
                    break
                try:
                    header = parse_header(frame)
                    keys = self.keys
                    if header.epoch != keys.epoch and self.secret:
                        keys = NodeKeys(keys.node_id, self.secret, epoch=header.epoch)
                    message = open_frame(frame, keys, True, header)
                except RemoteProtocolError as exc:
                    self.rejected.append(exc.reason_name)
                    continue
                d = message.to_dict()
                seen.append(Seen(header.counter, str(d["type"]), d, frame, header.epoch))
            return until(seen)

        until_sync(
            read,
            "the frames the test waits for",
            seconds,
            lambda: ([(s.kind, s.counter) for s in seen], self.rejected),
            interval=0,
        )
        return seen

    def ack(self, counters: list[int], downlink_counter: int) -> None:
        self.serial.write(encode_serial(seal(Ack(counters), downlink_counter, self.keys)))


@pytest.fixture(scope="module")
def node(bench: Bench, tmp_path_factory: pytest.TempPathFactory) -> Node:
    work = tmp_path_factory.mktemp("technician")
    state_dir = work / "state"
    state_dir.mkdir(mode=0o700)
    registry = state_dir / "registry.db"
    config = work / "node.json"
    result = edgeveil(
        "node",
        "provision",
        "--zone",
        "bench-north",
        "--registry",
        str(registry),
        "--out",
        str(config),
        "--template",
        str(HERE / "node-template.json"),
        "--sensor",
        bench.sensor,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(config.read_text())
    assert str(data["node_id"]) in result.stdout  # the label names the node
    assert data["secret"] not in result.stdout  # and never shows its secret
    deploy = edgeveil(
        "node",
        "deploy",
        "--port",
        bench.port,
        "--config",
        str(config),
        "--cache",
        str(work / "cache"),
        timeout=600,
    )
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    secret = bytes.fromhex(data["secret"])
    keys = NodeKeys(data["node_id"], secret)
    return Node(data["node_id"], keys, config, registry, state_dir, secret)


@pytest.fixture
def line(bench: Bench, node: Node) -> Iterator[Line]:
    line = Line(bench.port, node.keys)
    yield line
    line.close()


def _has(kind: str, n: int = 1) -> Until:
    return lambda seen: sum(s.kind == kind for s in seen) >= n


def _has_new(kind: str, above: int, n: int) -> Until:
    """n frames of `kind` whose counters are above `above`: sent for the first time."""
    return lambda seen: len({s.counter for s in seen if s.kind == kind and s.counter > above}) >= n


def test_deployed_node_boots_and_sends_verified_frames(line: Line) -> None:
    seen = line.frames(40, until=_has("readings"))
    kinds = [s.kind for s in seen]
    assert "readings" in kinds, f"no readings from the node in 40 s (saw {kinds})"
    reading = next(s for s in seen if s.kind == "readings")
    values = reading.content["values"]
    assert isinstance(values, dict)
    assert {"temperature", "humidity", "pressure"} <= set(values)
    assert not line.rejected


def test_doctor_finds_no_problem_and_the_node_resumes(bench: Bench, node: Node) -> None:
    result = edgeveil("node", "doctor", "--port", bench.port, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"node {node.node_id}" in result.stdout  # the configuration on the board is this node's
    line = Line(bench.port, node.keys)
    try:
        seen = line.frames(40, until=lambda seen: _has("readings")(seen) and _has("status")(seen))
    finally:
        line.close()
    assert any(s.kind == "readings" for s in seen), "the node did not resume after doctor"
    # restarted by doctor's soft reboot, not by its watchdog after being left in the REPL
    causes = {s.content["reset_cause"] for s in seen if s.kind == "status"}
    assert causes and "watchdog" not in causes and 3 not in causes, causes


def test_lost_acknowledgement_means_the_frame_is_sent_again(line: Line) -> None:
    # nobody acknowledges on the bench: every frame must come back, byte for byte
    first = line.frames(30, until=_has("readings"))
    reading = next(s for s in first if s.kind == "readings")
    again = line.frames(10, until=lambda seen: any(s.frame == reading.frame for s in seen))
    assert any(s.frame == reading.frame for s in again), "the unacknowledged frame never came back"
    # acknowledged now: it stops. Its next try was due 3 s after the last (ack timeout 1.5 s,
    # doubling): two readings cycles of the node later (5 s apart), it would have come
    line.ack([reading.counter], downlink_counter=int(time.time()))
    newest = max(s.counter for s in first + again)
    later = line.frames(30, until=_has_new("readings", newest, 2))
    assert not any(s.frame == reading.frame for s in later[1:]), "sent again after its ack"


def test_counter_survives_a_power_cut(bench: Bench, node: Node) -> None:
    line = Line(bench.port, node.keys)
    try:
        before = line.frames(30, until=_has("readings"))
    finally:
        line.close()
    assert before
    highest = max(s.counter for s in before)
    bench.power_cycle()
    line = Line(bench.port, node.keys)
    try:
        after = line.frames(40, until=_has("readings"))
    finally:
        line.close()
    boot = [s for s in after if s.kind == "event" and s.content.get("event") == "boot"]
    assert boot, f"no boot event after the power cut (saw {[s.kind for s in after]})"
    assert min(s.counter for s in after) > highest, "a counter value came back after the cut"


def _gateway_config(
    bench: Bench, node: Node, broker: Mosquitto, directory: Path, metrics_port: int | None = None
) -> Path:
    policy = write_policy(directory)  # everything passes: the bench checks delivery, not privacy
    config = directory / "gateway.toml"
    listen = "false" if metrics_port is None else f'"127.0.0.1:{metrics_port}"'
    config.write_text(
        f'[gateway]\nsite = "{SITE}"\nid = "{GATEWAY_ID}"\nstate_dir = "{node.state_dir}"\n'
        f'[[serial]]\nname = "bench"\nurl = "{bench.port}"\n'
        f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n'
        f'[metrics]\nlisten = {listen}\n[privacy]\npolicy = "{policy}"\n',
        encoding="utf-8",
    )
    return config


@contextlib.contextmanager
def gateway_with_metrics(
    bench: Bench, node: Node, broker: Mosquitto, directory: Path
) -> Iterator[tuple[Path, GatewayOutput, str]]:
    """running_gateway() with its metrics on a free port: (configuration, output, metrics
    URL). A port another process takes before the gateway binds it is chosen again."""
    for attempt in range(3):
        port = free_port()
        config = _gateway_config(bench, node, broker, directory, port)
        with running_gateway(config, directory / "gateway.log") as output:
            url = f"http://127.0.0.1:{port}/metrics"

            def answers(url: str = url) -> bool:
                if not output.running():
                    return True  # it said why in its log
                with contextlib.suppress(OSError):
                    urllib.request.urlopen(url, timeout=2).close()  # noqa: S310 - ours
                    return True
                return False

            until_sync(answers, "the gateway's metrics answer", 30, output)
            if not output.running() and "Address already in use" in output() and attempt < 2:
                continue
            assert output.running(), output()
            yield config, output, url
            return


async def _at_least(count: Awaitable[float], n: float) -> bool:
    return await count >= n


def _frames_counted(url: str, node_id: int, outcome: str) -> float:
    """The gateway's count of the node's frames with this outcome (accepted, revoked...)."""
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - our URL
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "edgeveil_frames_total"
        and sample.labels.get("node") == str(node_id)
        and sample.labels.get("outcome") == outcome
    )


def test_gateway_receives_and_verifies_the_nodes_frames(
    bench: Bench, node: Node, tmp_path: Path
) -> None:
    with Mosquitto(tmp_path / "broker") as broker:
        config = _gateway_config(bench, node, broker, tmp_path)
        received = asyncio.run(_readings_through_gateway(broker, config))
    payload = json.loads(received)
    names = {record.get("n") for record in payload if isinstance(record, dict)}
    assert names & {"temperature", "humidity", "pressure"}, payload


async def _readings_through_gateway(broker: Mosquitto, config: Path) -> bytes:
    async with subscribed(broker, f"edgeveil/{SITE}/{GATEWAY_ID}/#") as sub:
        with running_gateway(config, config.parent / "gateway.log") as output:

            def a_reading() -> bytes | None:
                assert output.running(), output()
                for message in sub.received:
                    if "/node/" in message.topic and b"temperature" in message.payload:
                        return message.payload
                return None

            payload = await until(
                a_reading, "readings on MQTT", 60, lambda: [m.topic for m in sub.received]
            )
            assert payload is not None
            return payload


def test_monitor_shows_the_nodes_frames(bench: Bench, node: Node) -> None:
    result = edgeveil(
        "node",
        "monitor",
        "--port",
        bench.port,
        "--registry",
        str(node.registry),
        "--duration",
        "15",
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert str(node.node_id) in result.stdout, result.stdout
    assert "readings" in result.stdout, result.stdout


# -- the node's identity over its life, through the real gateway ------------------------


@dataclass
class GatewayOutput:
    """What a gateway child process said so far, and whether it still runs."""

    log: Path
    process: subprocess.Popen[str]

    def __call__(self) -> str:
        return self.log.read_text()

    def running(self) -> bool:
        return self.process.poll() is None


@contextlib.contextmanager
def running_gateway(config: Path, log: Path) -> Iterator[GatewayOutput]:
    """`edgeveil gateway run` in a child process, stopped (SIGTERM) at the end of the block,
    killed if it does not stop."""
    with (
        log.open("w") as out,
        child_process(
            [sys.executable, "-m", "gateway.cli", "gateway", "run", "--config", str(config)],
            stdout=out, stderr=subprocess.STDOUT, text=True,
        ) as gateway,
    ):  # fmt: skip
        try:
            yield GatewayOutput(log, gateway)
        finally:
            gateway.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                gateway.wait(timeout=20)


def _listed(config: Path) -> dict[int, list[str]]:
    """`edgeveil gateway nodes list --json`: node id -> [zone, key epoch, highest counter,
    state]."""
    result = edgeveil("gateway", "nodes", "list", "--json", "--config", str(config))
    assert result.returncode == 0, result.stderr
    nodes = json.loads(result.stdout)["nodes"]
    return {
        n["node"]: [n["zone"] or "-", str(n["key_epoch"]), str(n["highest_counter"]), n["state"]]
        for n in nodes
    }


def _readings_of(sub: Any, node_id: int) -> int:
    return sum(f"/node/{node_id}/" in m.topic and b"temperature" in m.payload for m in sub.received)


async def _watch(broker: Mosquitto, steps: Callable[[Any], Awaitable[None]]) -> None:
    async with subscribed(broker, f"edgeveil/{SITE}/{GATEWAY_ID}/#") as sub:
        await steps(sub)


async def _more_readings(sub: Any, node_id: int, more: int = 1, seconds: float = 60) -> None:
    start = _readings_of(sub, node_id)
    await until(
        lambda: _readings_of(sub, node_id) >= start + more,
        f"{more} more readings of node {node_id}",
        seconds,
        interval=0.2,
    )


def test_a_rekey_reaches_the_node_over_the_serial_downlink(
    bench: Bench, node: Node, tmp_path: Path
) -> None:
    with Mosquitto(tmp_path / "broker") as broker:
        config = _gateway_config(bench, node, broker, tmp_path)
        with running_gateway(config, tmp_path / "gateway.log") as output:

            async def steps(sub: Any) -> None:
                await _more_readings(sub, node.node_id)  # heard under its current keys
                rekey = edgeveil("gateway", "nodes", "rekey", str(node.node_id), "--config",
                                 str(config))  # fmt: skip
                assert rekey.returncode == 0, rekey.stderr
                assert f"node {node.node_id}: re-key to key epoch 1 requested" in rekey.stdout
                assert "pending" in _listed(config)[node.node_id][3]
                await until(  # in a thread: each look runs a command
                    lambda: asyncio.to_thread(lambda: _listed(config)[node.node_id][1] == "1"),
                    "the node uses key epoch 1",
                    60,
                    interval=0.5,
                )
                await _more_readings(sub, node.node_id, 2)  # and reports on under the new keys

            asyncio.run(_watch(broker, steps))
            log = output()
    assert f"node {node.node_id} now uses key epoch 1" in log, log
    assert "pending" not in _listed(config)[node.node_id][3]
    line = Line(bench.port, node.keys, node.secret)
    try:
        seen = line.frames(30, until=_has("readings"))
    finally:
        line.close()
    assert seen and {s.epoch for s in seen} == {1}, [(s.epoch, s.kind) for s in seen]


def test_a_replacement_takes_over_and_the_old_identity_is_retired(
    bench: Bench, node: Node, tmp_path: Path
) -> None:
    new_config = tmp_path / "replacement.json"
    provisioned = edgeveil(
        "node", "provision", "--replace", str(node.node_id), "--registry", str(node.registry),
        "--out", str(new_config), "--template", str(HERE / "node-template.json"),
        "--sensor", bench.sensor,
    )  # fmt: skip
    assert provisioned.returncode == 0, provisioned.stderr
    new_id = json.loads(new_config.read_text())["node_id"]
    deploy = edgeveil(
        "node", "deploy", "--port", bench.port, "--config", str(new_config),
        "--cache", str(tmp_path / "cache"), timeout=600,
    )  # fmt: skip
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    registry_only = tmp_path / "registry.toml"  # the state directory, for nodes list
    registry_only.write_text(f'[gateway]\nstate_dir = "{node.state_dir}"\n', encoding="utf-8")
    pending = _listed(registry_only)[node.node_id][3]
    assert pending == f"active, until node {new_id} is heard", pending
    with (
        Mosquitto(tmp_path / "broker") as broker,
        gateway_with_metrics(bench, node, broker, tmp_path) as (config, output, metrics),
    ):

        async def steps(sub: Any) -> None:
            await _more_readings(sub, new_id, 2)  # the replacement reports
            listed = _listed(config)
            assert listed[node.node_id][3].startswith("revoked"), listed
            assert listed[new_id][3] == "active", listed
            # revoked in turn (a stolen board, say): from the next frames on, refused
            revoke = edgeveil("gateway", "nodes", "revoke", str(new_id), "--config",
                              str(config))  # fmt: skip
            assert revoke.returncode == 0, revoke.stderr

            # the node's frames, refused one after the other, are the clock here: what
            # was accepted before the revocation has gone out by the third refusal, and
            # nothing more comes in the two reading intervals up to the fifth
            def refused() -> Awaitable[float]:
                return asyncio.to_thread(_frames_counted, metrics, new_id, "revoked")

            await until(
                lambda: _at_least(refused(), 3), "three frames refused as revoked", 60, interval=0.5
            )
            before = _readings_of(sub, new_id)
            await until(lambda: _at_least(refused(), 5), "two more refused", 60, interval=0.5)
            assert _readings_of(sub, new_id) == before, "published after its revocation"

        asyncio.run(_watch(broker, steps))
        log = output()
    assert f"node {node.node_id} revoked: its replacement {new_id} was heard" in log, log
    assert f"frame rejected: revoked: node {new_id} is revoked" in log, log
