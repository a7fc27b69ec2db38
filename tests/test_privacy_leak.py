"""The leak test: nothing that identifies a device leaves the privacy stage, end to end.

A real gateway (in this process) runs the shipped default policy, with only its windows
shortened to one minute so that releases happen within the test (k, noise, budget and
pseudonymisation exactly as shipped), against a real Mosquitto, fed by emulated nodes (the real
firmware) in the "street" scenario: a crowd of BLE devices with rotating, locally administered
random addresses. The test keeps every topic and payload on `#`, every log record at DEBUG,
the metrics, and the gateway's state files as bytes (spool, registry and privacy ledger, each
with its -wal and -shm), while running and after the stop.

The identifiers that must not appear are the ones the nodes really observed and sent: recorded
by a spy between ingest and the privacy stage (after verification, so exactly what the privacy
stage received), together with everything the scenario put in radio range during the run
(`Scenario.devices(t)`, sampled over the run's world time; the spy's set must be part of it).
Each is looked for in every common notation (`Needles`): raw bytes, hex in either case with no
separator or with ':', '-', ' ' or Cisco-style dots, both byte orders, base64, and the unkeyed
MD5, SHA-1 and SHA-256 of the raw bytes, of the colon notation and of the hex notation (both
byte orders), as raw digests and as hex, including any common substring of 6 or more hex digits
with a hex digest (which covers every truncation, a prefix being a substring).

A 6-hex-digit window is 24 bits: against corpora full of unrelated hex (the policy's SHA-256 is
in every SenML message) and decimal numbers, short chance coincidences with some digest of some
identifier are expected, and the scan computes how many (`Scan.expected`). So: every match that
chance cannot explain (all notations other than digest substrings, and digest substrings long
enough that their expected number by chance is below 1e-6) must be absent, and short digest
coincidences must not exceed what chance allows (the Poisson bound with tail 1e-7). Controls
show the scan finds each notation when it is there, exactly once, and that short truncations of
every identifier's digest would exceed the chance bound.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import prometheus_client
import pytest

from firmware.host.fleet import Fleet
from firmware.host.scenario import Scenario
from gateway import service
from gateway.config import GatewayConfig, MqttConfig
from gateway.ingest import Ingest
from gateway.privacy import PrivacyStage, reveals_presence
from gateway.privacy import policy as policy_mod
from gateway.privacy.engine import SUPPRESSED, WITHHELD
from gateway.records import Record
from gateway.registry import NodeRegistry
from gateway.service import with_ports
from protocol import Message, Observations

from .gateway_harness import PrivacySpy, deadline, running_gateway
from .mosquitto import Mosquitto, Received, subscribed
from .test_gateway_e2e import (  # noqa: F401 - no_leftovers: an autouse fixture, here too
    frames_by_node,
    metric,
    no_leftovers,
)
from .waiting import until

pytestmark = pytest.mark.slow  # end to end: scripts/test -m "not slow" skips it

SITE = "leak-site"
GATEWAY_ID = "gw-leak"
BASE = f"edgeveil/{SITE}/{GATEWAY_ID}"
SEED = 7
NODES = 3
SCENARIO = "street"  # the busiest crowd: about a dozen devices per node and minute
WINDOW_S = 60
CERTAIN = 1e-6  # a match whose expected number by chance is below this is a leak
TAIL = 1e-7  # short coincidences: allowed up to the Poisson quantile with this tail

POLICIES = Path(policy_mod.__file__).resolve().parent.parent / "policies"


def short_window_policy(directory: Path) -> Path:
    """default.toml with window_minutes = 1 wherever it sets 15 or 60; nothing else changed."""
    text = (POLICIES / "default.toml").read_text(encoding="utf-8")
    assert text.count("window_minutes = 15") == 3 and text.count("window_minutes = 60") == 1
    path = directory / "default-1min.toml"
    text = re.sub(r"window_minutes = (15|60)\b", "window_minutes = 1", text)
    path.write_text(text, encoding="utf-8")
    default, derived = policy_mod.default(), policy_mod.load(path)
    assert len(derived.streams) == len(default.streams)
    for shipped, used in zip(default.streams, derived.streams, strict=True):
        same = dataclasses.replace(shipped, window_minutes=1)
        assert used == (same if shipped.action == "aggregate" else shipped), used.name
    people = derived.stream_for("observations")
    assert people is not None and people.k == 5 and people.noise is not None
    assert (people.noise.epsilon, people.noise.daily_cap) == (0.5, 12.0)
    assert (people.pseudonym_bits, people.forward_pseudonyms) == (64, False)
    return path


# -- the scanner ---------------------------------------------------------------------------------


def _md5(data: bytes) -> bytes:
    return hashlib.md5(data, usedforsecurity=False).digest()


def _sha1(data: bytes) -> bytes:
    return hashlib.sha1(data, usedforsecurity=False).digest()


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


HASHES = {"md5": _md5, "sha1": _sha1, "sha256": _sha256}


def colon(address: bytes) -> str:
    return ":".join(f"{b:02x}" for b in address)


def notations(address: bytes) -> dict[str, bytes]:
    """Every notation of one identifier that the scan knows (the controls inject these)."""
    out: dict[str, bytes] = {}
    for order, a in (("", address), (" reversed", address[::-1])):
        h = a.hex()
        out[f"raw{order}"] = a
        out[f"hex{order}"] = h.encode()
        out[f"HEX{order}"] = h.upper().encode()
        for name, sep in (("colon", ":"), ("dash", "-"), ("space", " ")):
            out[f"{name}{order}"] = sep.join(h[i : i + 2] for i in range(0, 12, 2)).encode()
        out[f"COLON{order}"] = out[f"colon{order}"].upper()
        out[f"cisco{order}"] = f"{h[0:4]}.{h[4:8]}.{h[8:12]}".encode()
        out[f"base64{order}"] = base64.b64encode(a)
        out[f"base64url{order}"] = base64.urlsafe_b64encode(a)
        for source, data in (("raw", a), ("colon", colon(a).encode()), ("hex", h.encode())):
            for algo, fn in HASHES.items():
                digest = fn(data)
                out[f"{algo}({source}{order})"] = digest
                out[f"{algo}({source}{order}) hex"] = digest.hex().encode()
    return out


# what each injected notation is reported as (hex and colon are case-insensitive)
def reported_as(notation: str) -> str:
    if notation.startswith(("HEX", "COLON")):
        return notation.lower()
    if notation.startswith("base64url"):
        return notation.replace("base64url", "base64")
    return notation


@dataclass(frozen=True)
class Hit:
    source: str
    identifier: bytes
    notation: str  # e.g. "colon reversed", "sha256(hex) hex"
    digits: int = 0  # digest substrings: the length of the common substring in hex digits
    at: int = 0  # the digest substring's position in the hex digest (0: a truncation)

    def __str__(self) -> str:
        what = self.notation
        if self.digits:
            what += f" digits {self.at}..{self.at + self.digits}"
        return f"{self.source}: {colon(self.identifier)} as {what}"


class Needles:
    """Lookup tables for every notation of every identifier."""

    def __init__(self, identifiers: set[bytes]) -> None:
        self.identifiers = sorted(identifiers)
        self.hex12: dict[bytes, tuple[bytes, str]] = {}  # lowercase hex -> (id, byte order)
        self.raw6: dict[bytes, list[tuple[bytes, str, bytes]]] = {}  # first 6 bytes -> needles
        self.b64: dict[bytes, tuple[bytes, str]] = {}
        self.digests: list[tuple[bytes, str, bytes]] = []  # (id, name, lowercase hex digest)
        self.windows: dict[bytes, list[tuple[int, int]]] = {}  # 6 hex digits -> (digest, at)
        for address in self.identifiers:
            for name, value in notations(address).items():
                order = " reversed" if "reversed" in name else ""
                if name in ("raw", "raw reversed") or (
                    name.startswith(tuple(HASHES)) and not name.endswith(" hex")
                ):
                    self.raw6.setdefault(value[:6], []).append((address, name, value))
                elif name.startswith("hex"):
                    self.hex12[value] = (address, order)
                elif name.startswith("base64"):
                    self.b64[value] = (address, f"base64{order}")
                elif name.endswith(" hex"):
                    index = len(self.digests)
                    self.digests.append((address, name, value))
                    for at in range(len(value) - 5):
                        self.windows.setdefault(value[at : at + 6], []).append((index, at))

    def digest_windows(self, length: int) -> int:
        return sum(max(0, len(d) - length + 1) for _, _, d in self.digests)


HEX_RUN = re.compile(rb"[0-9a-f]{6,}")
SEPARATED = re.compile(rb"(?=([0-9a-f]{2}(?:[:\- ][0-9a-f]{2}){5}))")
CISCO = re.compile(rb"(?=([0-9a-f]{4}\.[0-9a-f]{4}\.[0-9a-f]{4}))")
B64_RUN = re.compile(rb"[A-Za-z0-9+/_-]{8,}")
SEPARATOR_NAMES = {b":": "colon", b"-": "dash", b" ": "space"}


@dataclass
class Scan:
    """What a scan of some corpora found, and what chance alone would give."""

    needles: Needles
    hits: list[Hit] = field(default_factory=list)
    hex_runs: dict[bytes, str] = field(default_factory=dict)  # distinct runs -> first source
    size: int = 0

    def expected(self, digits: int) -> float:
        """Expected number of common substrings of at least `digits` hex digits between the
        corpora's hex runs and the digests, were both random (an upper bound)."""
        corpus = sum(max(0, len(r) - digits + 1) for r in self.hex_runs)
        return corpus * self.needles.digest_windows(digits) / 16.0**digits

    def leaks(self) -> list[Hit]:
        """Matches that chance cannot explain: every notation but short digest substrings."""
        return [h for h in self.hits if not h.digits or self.expected(h.digits) < CERTAIN]

    def coincidences(self) -> list[Hit]:
        return [h for h in self.hits if h.digits and self.expected(h.digits) >= CERTAIN]

    def chance_bound(self) -> int:
        return poisson_quantile(self.expected(6), TAIL)

    def certain_digits(self) -> int:
        return next(d for d in range(6, 65) if self.expected(d) < CERTAIN)


def poisson_quantile(mean: float, tail: float) -> int:
    """The smallest k with P(X > k) < tail for X ~ Poisson(mean)."""
    k, term, cdf = 0, math.exp(-mean), math.exp(-mean)
    while 1.0 - cdf >= tail:
        k += 1
        term *= mean / k
        cdf += term
    return k


class _Scanner:
    def __init__(self, needles: Needles) -> None:
        self.needles = needles
        self.result = Scan(needles)
        self._seen: set[tuple[str, bytes, str, int, int]] = set()

    def hit(self, h: Hit) -> None:
        key = (h.source, h.identifier, h.notation, h.digits, h.at)
        if key not in self._seen:
            self._seen.add(key)
            self.result.hits.append(h)

    def raw(self, source: str, data: bytes) -> None:
        """The address in either byte order, and raw digests (found by their first 6 bytes)."""
        raw6 = self.needles.raw6
        for i in range(len(data) - 5):
            candidates = raw6.get(data[i : i + 6])
            if candidates:
                for address, name, value in candidates:
                    if data[i : i + len(value)] == value:
                        self.hit(Hit(source, address, name))

    def base64(self, source: str, data: bytes) -> None:
        for m in B64_RUN.finditer(data):
            run = m.group()
            for i in range(len(run) - 7):
                found = self.needles.b64.get(run[i : i + 8])
                if found:
                    self.hit(Hit(source, found[0], found[1]))

    def separated(self, source: str, lower: bytes) -> None:
        """Hex octets with ':', '-' or ' ' between them, and Cisco's aabb.ccdd.eeff."""
        for m in SEPARATED.finditer(lower):
            text = m.group(1)
            seps = {text[i : i + 1] for i in range(2, len(text), 3)}
            found = self.needles.hex12.get(bytes(c for c in text if c not in b":- "))
            if found:
                name = SEPARATOR_NAMES[seps.pop()] if len(seps) == 1 else "separated"
                self.hit(Hit(source, found[0], name + found[1]))
        for m in CISCO.finditer(lower):
            found = self.needles.hex12.get(m.group(1).replace(b".", b""))
            if found:
                self.hit(Hit(source, found[0], "cisco" + found[1]))

    def hex_run(self, source: str, run: bytes) -> None:
        """An address in hex anywhere in a run of hex digits, and every common substring of 6
        or more hex digits with a hex digest (reported once, at its full length)."""
        needles = self.needles
        for i in range(len(run) - 11):
            found = needles.hex12.get(run[i : i + 12])
            if found:
                self.hit(Hit(source, found[0], "hex" + found[1]))
        for i in range(len(run) - 5):
            for index, at in needles.windows.get(run[i : i + 6], ()):
                address, name, digest = needles.digests[index]
                if i and at and run[i - 1] == digest[at - 1]:
                    continue  # not the start of this common substring
                n = 6
                while i + n < len(run) and at + n < len(digest) and run[i + n] == digest[at + n]:
                    n += 1
                self.hit(Hit(source, address, name, n, at))


def scan(corpora: list[tuple[str, bytes]], needles: Needles) -> Scan:
    scanner = _Scanner(needles)
    result = scanner.result
    for source, data in corpora:
        result.size += len(data)
        scanner.raw(source, data)
        scanner.base64(source, data)
        lower = data.lower()  # hex in either case
        scanner.separated(source, lower)
        for m in HEX_RUN.finditer(lower):
            result.hex_runs.setdefault(m.group(), source)
    for run, source in result.hex_runs.items():
        scanner.hex_run(source, run)
    return result


# -- the spy: what the nodes really sent, as the privacy stage received it ------------------------


@dataclass
class Sighted:
    node_id: int
    zone: str
    arrival: float
    addresses: list[bytes]


class Spy(PrivacySpy):
    """Between ingest and the privacy stage: records observations, changes nothing."""

    def __init__(self, inner: PrivacyStage) -> None:
        super().__init__(inner)
        self.frames: list[Sighted] = []
        self.counted = 0  # messages whose number says nothing of who was near

    def process(
        self, node_id: int, zone: str, counter: int, message: Message, arrival: float
    ) -> list[Record]:
        if isinstance(message, Observations):
            addresses = [bytes(a) for a, _ in message.sightings]
            self.frames.append(Sighted(node_id, zone, arrival, addresses))
        if not reveals_presence(message):
            self.counted += 1
        return super().process(node_id, zone, counter, message, arrival)

    @property
    def policy_hash(self) -> str:
        return self.inner.policy_hash


def in_range_during(scenario: Scenario, until_t: float, step: float = 0.02) -> set[bytes]:
    """Every address the scenario put in radio range between world time 0 and until_t."""
    out: set[bytes] = set()
    for i in range(math.ceil(until_t / step) + 1):
        out.update(d.address for d in scenario.devices(i * step))
    return out


def state_files(directory: Path, label: str) -> list[tuple[str, bytes]]:
    out = []
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            with contextlib.suppress(FileNotFoundError):  # a -shm removed meanwhile
                out.append((f"{label} {path.name}", path.read_bytes()))
    return out


def people_releases(received: list[Received]) -> list[tuple[str, int, object]]:
    """(zone, window start, value) of every people count published."""
    out = []
    prefix = f"{BASE}/zone/"
    for r in received:
        if r.topic.startswith(prefix) and r.topic.endswith("/people"):
            pack = json.loads(r.payload)
            entry = pack[0]
            value = entry.get("v", entry.get("vs"))
            # the count alone, with how much of its window it covers when that is not all
            assert entry["n"] == "devices" and [e["n"] for e in pack[1:]] in ([], ["covered"])
            out.append((r.topic[len(prefix) : -len("/people")], int(entry["bt"]), value))
    return out


# -- the test --------------------------------------------------------------------------------------


@pytest.fixture
def spies(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Spy]]:
    made: list[Spy] = []

    def ingest(registry: NodeRegistry, policy: PrivacyStage, *args: Any) -> Ingest:
        spy = Spy(policy)
        made.append(spy)
        return Ingest(registry, spy, *args)

    monkeypatch.setattr(service, "Ingest", ingest)
    yield made


@dataclass
class Capture:
    """Everything behind the privacy stage, and what shows the run was not vacuous."""

    frames: list[Sighted]
    received: list[Received]
    corpora: list[tuple[str, bytes]]
    state_files: set[str]
    in_range: set[bytes]
    nodes: dict[int, str]  # node id -> zone
    accepted: dict[int, int]
    denied: float
    counted: int  # messages the spy saw that do not reveal presence, when the metrics were read
    releases: float
    debug_records: int  # log records at DEBUG from the gateway


async def run_gateway(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, spies: list[Spy]
) -> Capture:
    """Nodes, Mosquitto and the gateway, until a people count of a window in which the nodes
    sent sightings is on MQTT and everything the gateway spooled is published."""
    caplog.set_level(logging.DEBUG)
    state = tmp_path / "state"
    broker = Mosquitto(tmp_path / "mosquitto")
    fleet = Fleet(
        n=NODES, seed=SEED, scenario=SCENARIO, directory=tmp_path / "nodes", reading_interval=1
    )
    with broker, fleet:
        state.mkdir(mode=0o700)
        with NodeRegistry.open(state / "registry.db") as registry:
            registry.import_file(fleet.registry_path)
        config = with_ports(
            GatewayConfig(
                site=SITE,
                gateway_id=GATEWAY_ID,
                state_dir=state,
                mqtt=MqttConfig(host=broker.host, port=broker.port),
                metrics_listen=None,
                privacy_policy=short_window_policy(tmp_path),
            ),
            {f"node{i + 1}": node.device for i, node in enumerate(fleet.nodes)},
        )
        async with subscribed(broker, "#") as sub, running_gateway(config) as gateway:
            spy = spies[0]

            def released_with_sightings() -> bool:
                return any(
                    f.zone == zone and start <= f.arrival < start + WINDOW_S
                    for zone, start, _ in people_releases(sub.received)
                    for f in spy.frames
                )

            def released() -> float:  # the privacy stage's metric (housekeeping: every 5 s)
                outcomes = ("released", "suppressed", "withheld")
                total = "edgeveil_privacy_releases_total"
                return sum(metric(gateway, total, outcome=o) for o in outcomes)

            # windows end on the minute: at most a minute after the first sightings
            await until(
                released_with_sightings,
                "a people count of a window with sightings was published",
                timeout=80,
                detail=lambda: (len(spy.frames), people_releases(sub.received)),
            )
            await until(lambda: gateway.spool.depth == 0, "everything published", 10)
            await until(
                lambda: released() >= len(people_releases(sub.received)), "release metrics", 10
            )
            running = state_files(state, "running")
            corpora = [
                ("metrics", prometheus_client.generate_latest(gateway.metrics.registry)),
                ("engine repr", repr(gateway.engine).encode()),
            ]
            accepted = frames_by_node(gateway, "accepted")
            denied = metric(gateway, "edgeveil_privacy_denied_total")
            counted = sum(spy.counted for spy in spies)
            releases = released()
            world_end = time.time() - fleet.world_start + 1.0
            received = list(sub.received)
        stopped = state_files(state, "stopped")
        corpora.append(("mosquitto log", broker.log().encode()))
    logs = caplog.text.encode() + b"\n".join(
        repr(r.args).encode() for r in caplog.records if r.args
    )
    corpora.append(("log", logs))
    for r in received:
        corpora += [(f"mqtt topic {r.topic}", r.topic.encode()), (f"mqtt {r.topic}", r.payload)]
    corpora += running + stopped
    in_range: set[bytes] = set()
    for scenario in fleet.scenarios:
        in_range |= in_range_during(scenario, world_end)
    return Capture(
        frames=spy.frames,
        received=received,
        corpora=corpora,
        state_files={name.split(" ", 1)[1] for name, _ in running + stopped},
        in_range=in_range,
        nodes={n.node_id: n.zone for n in fleet.nodes},
        accepted=accepted,
        denied=denied,
        counted=counted,
        releases=releases,
        debug_records=sum(
            r.levelno == logging.DEBUG and r.name.startswith(("gateway", "edgeveil"))
            for r in caplog.records
        ),
    )


def controls(corpora: list[tuple[str, bytes]], needles: Needles, observed: set[bytes]) -> None:
    """The scan finds a leak: one identifier put into a copy of the biggest corpus (a state
    file) is found exactly there; each notation of one identifier is found as that notation;
    8-digit truncated hashes of every identifier are more than chance allows."""
    victim = sorted(observed)[len(observed) // 2]
    spiked = list(corpora)
    biggest = max(range(len(spiked)), key=lambda i: len(spiked[i][1]))
    name, data = spiked[biggest]
    middle = len(data) // 2
    spiked[biggest] = (name, data[:middle] + colon(victim).encode() + data[middle:])
    caught = scan(spiked, needles).leaks()
    assert [(h.source, h.identifier, h.notation) for h in caught] == [(name, victim, "colon")]

    small = [(n, d) for n, d in corpora if n.startswith("mqtt")]
    for notation, value in notations(victim).items():
        injected = scan([*small, ("injected", b'{"device":"' + value + b'"}')], needles)
        found = [h for h in injected.leaks() if h.source == "injected"]
        assert [(h.identifier, h.notation) for h in found] == [(victim, reported_as(notation))], (
            notation,
            [str(h) for h in found],
        )
        if notation.endswith(" hex"):
            assert (found[0].at, found[0].digits) == (0, len(value))  # the whole digest

    # short truncations: one is indistinguishable from chance; one per identifier is not
    truncated = b" ".join(
        hashlib.new(algo, colon(a).encode(), usedforsecurity=False).hexdigest()[:8].encode()
        for a in sorted(needles.identifiers)
        for algo in HASHES
    )
    spread = scan([*small, ("injected", truncated)], needles)
    assert len(spread.coincidences()) > spread.chance_bound()


@pytest.mark.asyncio
@deadline(110)
async def test_no_device_identifier_leaves_the_gateway_in_any_notation(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, spies: list[Spy]
) -> None:
    run = await run_gateway(tmp_path, caplog, spies)

    # not vacuous: the nodes' crowd was sent, accepted and counted, and counts were published
    observed = {a for f in run.frames for a in f.addresses}
    frames = len(run.frames)
    assert frames >= NODES and len(observed) >= 5, (frames, len(observed))
    assert {f.node_id for f in run.frames} == set(run.nodes)
    assert set(run.accepted) == set(run.nodes)
    # the gateway's own counts of accepted frames, and of frames that left nothing of their
    # own, leave the observation frames out: their number says people were near
    assert 0 < sum(run.accepted.values()) <= run.counted
    assert run.denied <= run.counted
    people = people_releases(run.received)
    assert {z for z, _, _ in people} <= set(run.nodes.values())
    assert all(v in (SUPPRESSED, WITHHELD) or (isinstance(v, int) and v >= 5) for *_, v in people)
    assert run.releases >= len(people) > 0
    assert observed <= run.in_range, "the spy saw addresses the scenario did not make"
    identifiers = observed | run.in_range
    assert all(a[0] & 0x03 == 0x02 for a in identifiers)  # locally administered, as promised
    assert {"spool.db", "registry.db", "privacy.db"} <= run.state_files, run.state_files
    assert run.debug_records > 0  # the logs were captured at DEBUG

    needles = Needles(identifiers)
    started = time.monotonic()
    result = scan(run.corpora, needles)
    took = time.monotonic() - started
    print(
        f"\nleak scan: {len(observed)} identifiers sent in {frames} observation frames by "
        f"{NODES} nodes ({len(identifiers)} in range); people counts on MQTT: "
        f"{sorted(((z, v) for z, _, v in people), key=str)}; {len(run.received)} MQTT messages, "
        f"{len(run.corpora)} corpora ({', '.join(sorted(run.state_files))}), {result.size} "
        f"bytes, {len(result.hex_runs)} distinct hex runs, scanned in {took:.1f} s; "
        f"{result.expected(6):.2f} hex coincidences of >= 6 digits expected by chance "
        f"(bound {result.chance_bound()}), found {len(result.coincidences())}"
        f"{[str(h) for h in result.coincidences()]}; >= {result.certain_digits()} digits: leak"
    )
    assert not result.leaks(), "\n".join(str(h) for h in result.leaks()[:20])
    assert len(result.coincidences()) <= result.chance_bound(), [
        str(h) for h in result.coincidences()
    ]
    controls(run.corpora, needles, observed)
