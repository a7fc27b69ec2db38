"""Ingest's ack-after-persist rule, at unit speed (tests/test_storage.py's full-disk story is
the slow end-to-end guard of the same rule).

A node's frame is acknowledged, and its counter enters the node's replay window, only once
what the frame produced and its counter (the spool's accepted-counter journal) are durable in
the spool. So a frame the spool refuses, full under `when_full = "refuse_new"` or failing like
a full disk (StorageError), is not acknowledged, leaves nothing in the spool or its journal, is
not counted as accepted, and its retransmission, once the spool takes writes again, is a new
frame and not a duplicate. And with a spool that stores, an ack leaves only after the put()
that holds its frame returned.

Ingest runs as the service runs it: frames handed to `Ingest.submit`, `Ingest.run` as a task,
with a real registry, spool and privacy engine in a temporary directory and frames sealed by
`protocol.seal`. The tests look only at what the spool, the registry, the acks sent to the
node and the metrics show: never at what was handed to the uplink (a pipeline may publish
before its group commit, as long as the acks wait for it), never at ingest's internals.
Each test fails when its guard is removed: an ack sent before the store, the replay window
moved before the store, a refused store taken as done, a refused frame counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway import ingest as ingest_module
from gateway.errors import StorageError
from gateway.ingest import Ingest
from gateway.lora.radio import RadioMeta
from gateway.metrics import Metrics
from gateway.privacy import PolicyEngine, PrivacyLedger
from gateway.privacy import policy as policy_mod
from gateway.records import OutMessage, Topics
from gateway.registry import NodeRegistry
from gateway.spool import Journaled, Spool
from protocol import Ack, NodeKeys, Readings, RemoteProtocolError, open_frame, parse_header, seal
from protocol.quantities import quantity_id
from protocol.replay import DUPLICATE

from .gateway_harness import write_policy

pytestmark = pytest.mark.asyncio

NODE, GW, PORT = 7, "gw-persist", "ttyPERSIST"
SECRET = bytes(range(16))  # TEST ONLY
KEYS = NodeKeys(NODE, SECRET)
QUIET_S = 0.3  # ingest is done with a burst once it did something, then nothing for this long
SETTLE_S = 15.0  # a burst that does not settle within this is a failure
RETRY_S = 0.3  # a node's retransmission interval, here

# what the spool and the node saw, in order: ("put", counters) when a put() begins,
# ("stored", counters) when it returned, ("ack", counters) for an ack sent to the node
Event = tuple[str, tuple[int, ...]]


@pytest.fixture(autouse=True)
def short_gather(monkeypatch: pytest.MonkeyPatch) -> None:
    """Speed only: a batch gathers frames for 50 ms instead of half a second (no effect if the
    module no longer has the constant)."""
    monkeypatch.setattr(ingest_module, "GATHER_S", 0.05, raising=False)


def frame(counter: int) -> bytes:
    """The node's reading under `counter` (the pass-all policy makes one spool message of it)."""
    return seal(Readings({quantity_id("temperature"): 2000 + counter}), counter, KEYS)


def filler(i: int) -> OutMessage:
    """A message of someone else's that takes room in the spool."""
    return OutMessage(f"other:{i}", "edgeveil/site/other", b'[{"n": "filler"}]')


def counters_in(message: OutMessage) -> list[int]:
    """The frame counters of the node's records in a message: a SenML pack (a JSON list) whose
    records name their frame by "mid" (gateway:node:sequence:part); one message may carry
    several."""
    try:
        pack = json.loads(message.payload)
    except ValueError:
        return []
    found = []
    for entry in pack if isinstance(pack, list) else ():
        if isinstance(entry, dict) and "mid" in entry:
            gateway, node, sequence, _part = str(entry["mid"]).split(":")
            if gateway == GW and int(node) == NODE:
                found.append(int(sequence))
    return found


def carried(messages: Sequence[OutMessage], accepted: Sequence[Journaled]) -> tuple[int, ...]:
    """The node's frame counters a put() carries, in its journal rows or its messages."""
    found = {c for n, _e, c, _d in accepted if n == NODE}
    found.update(c for m in messages for c in counters_in(m))
    return tuple(sorted(found))


class WatchedSpool(Spool):
    """The real spool, writing down when a put() begins and when it returned (with the frame
    counters it carries); while `disk_full` it fails as a spool on a full disk does: it stores
    nothing, tells its health and raises StorageError."""

    timeline: list[Event]
    on_put: Callable[[tuple[int, ...]], None] | None = None  # called as a put begins
    disk_full = False
    put_s = 0.0  # how long a put takes before it stores (a slow SD card)
    busy = 0  # puts under way

    def put(
        self,
        messages: Sequence[OutMessage],
        now: float | None = None,
        *,
        accepted: Sequence[Journaled] = (),
    ) -> int:
        counters = carried(messages, accepted)
        self.busy += 1
        try:
            self.timeline.append(("put", counters))
            if self.on_put is not None:
                self.on_put(counters)
            if self.disk_full:
                error = StorageError(
                    "spool", "disk_full", f"the spool {self.path} cannot be written: disk full"
                )
                self.health.failed(error)  # as gateway.sqlite.transaction reports a failure
                raise error
            time.sleep(self.put_s)
            new = super().put(messages, now, accepted=accepted)
            self.timeline.append(("stored", counters))
            return new
        finally:
            self.busy -= 1


@dataclass
class Rig:
    """Ingest running as a task, with its real registry, spool and privacy engine."""

    spool: WatchedSpool
    registry: NodeRegistry
    metrics: Metrics
    ingest: Ingest
    timeline: list[Event]

    async def offer(self, *frames: bytes) -> list[int]:
        """The node sends these frames (one burst, as a link delivers them); the counters
        acknowledged in answer, once ingest has settled."""
        start = len(self.timeline)
        for sealed in frames:
            self.ingest.submit(PORT, sealed)
        await self.settled()
        return [c for kind, counters in self.timeline[start:] if kind == "ack" for c in counters]

    async def retransmit(self, *frames: bytes, tries: int = 20) -> list[int]:
        """As a node does: send the frames, then again those not acknowledged, until all are
        (a gateway whose storage failed may refuse a few unseen first); the counters acked."""
        acked: list[int] = []
        waiting = {parse_header(f).counter: f for f in frames}
        for _ in range(tries):
            acked.extend(await self.offer(*waiting.values()))
            waiting = {c: f for c, f in waiting.items() if c not in acked}
            if not waiting:
                break
            await asyncio.sleep(RETRY_S)
        return acked

    async def settled(self) -> None:
        """Until ingest did something (a put, an ack, a count) and then nothing for QUIET_S,
        with no put under way: a refusal is only proven once ingest has dealt with the burst."""
        last = self._activity()
        changed_at: float | None = None
        deadline = time.monotonic() + SETTLE_S
        while True:
            await asyncio.sleep(0.02)
            now = time.monotonic()
            activity = self._activity()
            if activity != last:
                last, changed_at = activity, now
            elif changed_at is not None and not self.spool.busy and now - changed_at >= QUIET_S:
                return
            if now > deadline:
                raise AssertionError(f"ingest did not settle within {SETTLE_S} s: {last}")

    def _activity(self) -> tuple[int, float]:
        counted = sum(
            sample.value
            for metric in self.metrics.registry.collect()
            for sample in metric.samples
            if not sample.name.endswith("_created")
        )
        return len(self.timeline), counted

    def outcome(self, outcome: str) -> float:
        """The node's frames counted with this outcome (accepted, duplicate, ...)."""
        labels = {"port": PORT, "node": str(NODE), "outcome": outcome}
        return self.metrics.registry.get_sample_value("edgeveil_frames_total", labels) or 0.0

    def spooled(self) -> list[int]:
        """The node's frame counters in the messages the spool holds (one per record)."""
        return sorted(c for _seq, m in self.spool.peek(100_000) for c in counters_in(m))

    def journaled(self) -> list[int]:
        """The node's frame counters in the spool's accepted-counter journal."""
        return sorted(c for _seq, (n, _e, c, _d) in self.spool.journal() if n == NODE)

    def in_window(self, counter: int) -> bool:
        """Whether the node's replay window holds the counter (a copy would be a duplicate)."""
        entry = self.registry.get(NODE)
        assert entry is not None
        try:
            return entry.window.check(counter) == DUPLICATE
        except RemoteProtocolError:  # below the window: taken long ago
            return True

    def free(self, seqs: Iterable[int] | None = None) -> None:
        """The broker took messages (all, or those given): room in the spool again."""
        if seqs is None:
            seqs = [seq for seq, _m in self.spool.peek(100_000)]
        self.spool.delete(seqs)


@contextlib.asynccontextmanager
async def running_ingest(directory: Path, max_messages: int = 10_000) -> AsyncIterator[Rig]:
    """Ingest as a task of this loop, on a spool of `max_messages` that refuses new messages
    when full (refuse_new), with a policy that passes every reading."""
    timeline: list[Event] = []
    with (
        NodeRegistry.open(directory / "registry.db") as registry,
        PrivacyLedger.open(directory / "privacy.db") as ledger,
        WatchedSpool.open(directory / "spool.db", max_messages, 86_400, "refuse_new") as spool,
    ):
        assert isinstance(spool, WatchedSpool)
        spool.timeline = timeline
        registry.add(NODE, SECRET, "square")
        engine = PolicyEngine(policy_mod.load(write_policy(directory)), GW, ledger)
        engine.add_node(NODE, "square")
        metrics = Metrics()

        async def send(_port: str, sealed: bytes, _radio: RadioMeta | None) -> bool:
            message = open_frame(sealed, KEYS, uplink=False, header=parse_header(sealed))
            if isinstance(message, Ack):
                timeline.append(("ack", tuple(message.counters)))
            return True

        ingest = Ingest(
            registry,
            engine,
            spool,
            Topics("edgeveil", "site", GW),
            "senml-json",
            send,
            None,  # no uplink: what is handed to it, and when, is not asserted here
            metrics,
        )
        task = asyncio.create_task(ingest.run(), name="ingest")
        try:
            yield Rig(spool, registry, metrics, ingest, timeline)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@pytest.mark.parametrize("refusal", ["spool_full", "disk_full"])
async def test_a_frame_the_spool_refuses_is_not_acknowledged_and_comes_again_as_new(
    tmp_path: Path, refusal: str
) -> None:
    """spool_full: refuse_new and no room; disk_full: the spool raises StorageError."""
    async with running_ingest(tmp_path, max_messages=3) as rig:
        if refusal == "spool_full":
            rig.spool.put([filler(i) for i in range(3)])
        else:
            rig.spool.disk_full = True
        counters = [0, 1, 2]
        frames = [frame(c) for c in counters]

        assert await rig.offer(*frames) == []  # not acknowledged: the node keeps them
        assert rig.spooled() == []
        assert rig.journaled() == []
        assert not [c for c in counters if rig.in_window(c)]
        assert rig.outcome("accepted") == 0
        assert await rig.offer(frames[1]) == []  # its retransmission: refused again

        if refusal == "spool_full":
            rig.free()  # the broker took the other messages
        else:
            rig.spool.disk_full = False
            rig.spool.expire()  # the disk has room: another write of the spool succeeds
        assert sorted(await rig.retransmit(*frames)) == counters
        # accepted as new frames, each once, not as duplicates of something taken before
        assert rig.outcome("accepted") == len(counters)
        assert rig.outcome("duplicate") == 0
        assert rig.spooled() == counters
        assert rig.journaled() == counters
        assert all(rig.in_window(c) for c in counters)


async def test_a_burst_larger_than_the_room_left_is_acknowledged_as_far_as_it_was_stored(
    tmp_path: Path,
) -> None:
    """refuse_new with room for two of six frames: whatever is acknowledged is in the spool
    and its journal and the window, whatever is not is in none of them and comes again as
    new."""
    async with running_ingest(tmp_path, max_messages=8) as rig:
        rig.spool.put([filler(i) for i in range(6)])
        fillers = [seq for seq, _m in rig.spool.peek(100)]
        counters = list(range(6))

        acked = sorted(await rig.offer(*(frame(c) for c in counters)))
        assert len(acked) <= 2
        assert rig.spooled() == acked
        assert rig.journaled() == acked
        assert [c for c in counters if rig.in_window(c)] == acked
        assert rig.outcome("accepted") == len(acked)
        refused = [c for c in counters if c not in acked]

        rig.free(fillers)
        assert sorted(await rig.retransmit(*(frame(c) for c in refused))) == refused
        assert rig.outcome("accepted") == len(counters)
        assert rig.outcome("duplicate") == 0
        assert rig.spooled() == counters
        assert rig.journaled() == counters


async def test_an_ack_leaves_only_after_the_put_that_stores_its_frame_returned(
    tmp_path: Path,
) -> None:
    """A slow spool (each put takes 100 ms) and two bursts that may overlap: every ack comes
    after the put holding its frame returned, and while a put is under way the replay window
    does not yet hold the frames it stores."""
    async with running_ingest(tmp_path) as rig:
        rig.spool.put_s = 0.1
        held_early: list[int] = []

        def at_put(counters: tuple[int, ...]) -> None:
            held_early.extend(c for c in counters if rig.in_window(c))

        rig.spool.on_put = at_put
        for c in range(4):
            rig.ingest.submit(PORT, frame(c))
        await asyncio.sleep(0.1)  # the next burst while the first is being stored
        acked = await rig.offer(*(frame(c) for c in range(4, 8)))
        assert sorted(c for kind, cs in rig.timeline if kind == "ack" for c in cs) == list(
            range(8)
        ), rig.timeline
        assert len(acked) >= 4
        stored: set[int] = set()
        for kind, counters in rig.timeline:
            if kind == "stored":
                stored.update(counters)
            elif kind == "ack":
                early = [c for c in counters if c not in stored]
                assert not early, f"acked {early} before their put returned: {rig.timeline}"
        assert held_early == []
        assert rig.outcome("accepted") == 8
        assert rig.spooled() == list(range(8))
        assert rig.journaled() == list(range(8))
