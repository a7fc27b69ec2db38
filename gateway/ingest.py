"""The ingest stage: verify frames, drop what is bad, store what is good, acknowledge.

For each frame that a link delivered:

    header -> registered node? -> replay window -> verify and decrypt -> privacy stage
           -> SenML -> offered to the uplink (published at once while nothing waits in the
              spool) ... group commit: spool (durable: what the broker has not acknowledged
              yet, and the frames' counters) -> replay window updated -> acknowledgement

Frames are taken as they come and stored in groups (group commit: GATHER_FRAMES, GATHER_S):
one spool transaction (one fsync) covers a whole group: the messages the broker has not
acknowledged by then and the frames' counters (the spool's accepted-counter journal, which
the registry takes every FOLD_S, in a worker thread). A node is acknowledged only after that
transaction returned, when each of its frame's messages is either acknowledged by the broker
or in the spool, so delivery is at-least-once from node to broker. A retransmitted frame (a
DUPLICATE in the replay window, or the same counter twice in one group: one ack for both) is
acknowledged again and forwarded nothing, but only MAX_REACKS times: a
node gives up after its retries, so further copies are replays, and every ack costs a downlink
counter and, on LoRa, airtime. A bad frame is counted by reason, logged once per burst and
dropped; nothing here can stop the service.

A frame under a counter already accepted whose bytes differ from the accepted frame's is no
retransmission: it is COUNTER_REUSE (a second board holds the node's key, or a restored backup
set its counter back). It is rejected unacknowledged, counted and logged like any rejection,
and raises an alarm event on the node's event topic (no content; at most one an hour per node,
and never from a frame that says people were near: the next status frame raises it).

Key epochs (SPEC.md sections 9 and 10): a frame of a higher key epoch than the node's current
one is opened with that epoch's keys; accepted, it makes the epoch current (NodeRegistry.
accept_many), and frames of older epochs are refused from then on (RETIRED_KEY). A node with
a re-key requested (`edgeveil gateway nodes rekey`) is sent a configuration update with its
next epoch whenever it is heard under its old keys (at most once a minute), until it is heard
under the new ones.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict, defaultdict, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

from protocol import (
    Ack,
    ConfigUpdate,
    Event,
    Header,
    Message,
    NodeKeys,
    Readings,
    Reason,
    RemoteProtocolError,
    Status,
    TimeSync,
    open_frame,
    parse_header,
    seal,
)
from protocol.messages import MAX_ACKED, OBSERVATIONS
from protocol.replay import DUPLICATE

from . import senml
from .errors import RegistryError, SpoolFullError, StorageError
from .lora.radio import RX1_LEAD_S, RX2_DELAY_US, RadioMeta
from .metrics import UNREGISTERED, Metrics
from .node_config import NodeConfigs
from .node_health import HealthBook
from .privacy import PrivacyStage, reveals_presence
from .records import Measurement, OutMessage, Record, Topics
from .registry import REUSE_HINT, Accepted, NodeEntry, NodeRegistry, frame_digest
from .spool import Spool
from .throttle import Throttle
from .uplink import HELD, Offered

log = logging.getLogger("edgeveil.ingest")

QUEUE_LIMIT = 10_000  # frames waiting for ingest; beyond it they are dropped unacknowledged
BATCH_LIMIT = 256  # frames taken from the queue at once
# Group commit. A group gathers frames until it holds GATHER_FRAMES or GATHER_S passed since
# its first frame: one spool commit (an fsync, and a few KB written to the SD card) then
# serves all of them, and each node of the group gets one ack. Its frames are verified and
# their messages published as they come (the uplink's live path), so the gathering delays
# only the acks and the commit. At one reading a minute from 1,000 nodes that is 8 frames
# per commit instead of one; at 20 serial links' line rate, 256 frames every 37 ms.
# An ack leaves at most GATHER_S later: a serial node waits 2 s for it. A LoRa frame closes
# its group within GATHER_LORA_S, as its ack must reach the concentrator before RX1 opens,
# 1 s after the uplink.
GATHER_S = 0.5
GATHER_FRAMES = 256
GATHER_LORA_S = 0.2
TIME_SYNC_GAP_S = 60.0  # answer a node's time requests at most once a minute
# Acks sent again for one frame (its counter): more than a node's retries (5 by default; its
# retransmit.max_retries), fewer than a replayer would like. Remembered for the last
# REACK_MEMORY frames acknowledged again (bounded memory).
MAX_REACKS = 8
REACK_MEMORY = 4096
_BOOT = 0  # protocol event codes
_CONFIG_APPLIED = 4
_CONFIG_REJECTED = 5
_TIME_REQUEST = 6
_COUNTER_LOW = 8
# a LoRa uplink older than this has no receive window left to answer in (RX2, with the lead a
# concentrator needs): its node gets its configuration at its next uplink
RX_REACHABLE_S = RX2_DELAY_US / 1e6 - RX1_LEAD_S
REUSE_ALARM_GAP_S = 3600.0  # counter-reuse alarms published per node at most this often
REKEY_GAP_S = 60.0  # a requested re-key is sent to a node at most this often
# The registry writes the counters the spool's journal holds every FOLD_S, or once it holds
# FOLD_FRAMES: each node's window and evidence pages once per fold instead of once per frame
# (docs/operators/storage.md); memory for the pending counters stays bounded: about 170 bytes
# a frame, so 4,096 frames hold 0.7 MB (8,192 cost the gateway 1.4 MB of resident memory at line
# rate and wrote no fewer bytes per reading: the evidence rows are written once either way).
FOLD_S = 300.0
FOLD_FRAMES = 4096
# While the spool or the registry fails to write, one batch in this many seconds tries the
# disk again; the others are refused before the privacy stage, which would otherwise take the
# same readings into its windows again with every retransmission
STORAGE_RETRY_S = 2.0


class CounterReuse(RemoteProtocolError):
    """An authentic frame under an accepted counter, with other bytes than the accepted one."""

    def __init__(self, node_id: int, counter: int, message: Message) -> None:
        super().__init__(
            Reason.COUNTER_REUSE,
            f"node {node_id}: counter {counter} reused: an authentic frame that differs from "
            f"the one accepted under it; {REUSE_HINT}",
        )
        self.message = message  # decides whether the rejection may be counted; never logged


class LivePath(Protocol):
    """What ingest needs of the uplink (gateway.uplink.Uplink): see Uplink.offer."""

    def offer(self, messages: Sequence[OutMessage]) -> list[Offered]: ...

    def settle(self, stored: Iterable[tuple[Offered, int | None]]) -> None: ...


@dataclass(slots=True)
class _Group:
    """Frames that share one spool commit, and what they produced and ask for."""

    batch: list[Arrival] = field(default_factory=list)
    out: list[Offered] = field(default_factory=list)  # every message, offered to the uplink
    accepted: list[Accepted] = field(default_factory=list)  # node, counter, digest, epoch
    counted: list[tuple[str, str, bool, int]] = field(default_factory=list)
    # port, node, left nothing, counter
    produced: dict[tuple[int, int, int], list[OutMessage]] = field(default_factory=dict)
    in_batch: dict[tuple[int, int, int], bytes] = field(default_factory=dict)  # key -> digest
    acks: defaultdict[tuple[str, int], list[int]] = field(default_factory=lambda: defaultdict(list))
    radios: dict[tuple[str, int], RadioMeta | None] = field(default_factory=dict)
    time_syncs: set[tuple[str, int]] = field(default_factory=set)
    rekeys: dict[tuple[str, int], float] = field(default_factory=dict)  # heard under old keys
    answers: list[tuple[int, int, bool]] = field(default_factory=list)  # node, version, applied


@dataclass(frozen=True, slots=True)
class Arrival:
    port: str
    frame: bytes
    time: float
    radio: RadioMeta | None = None  # LoRa links: how it was heard, for the downlink


class BurstLog:
    """Logs the first rejection of a kind, then at most one summary line per `every` seconds."""

    def __init__(self, every: float = 60.0, what: str = "frame rejected") -> None:
        self.what = what
        self._throttle = Throttle(every)

    def rejected(self, port: str, reason: str, detail: str) -> None:
        report = self._throttle.due((port, reason), time.monotonic())
        if report is None:
            return
        held = report[0] - 1  # the others since the last line
        more = f" (and {held} more since the last report)" if held else ""
        log.warning("port %s: %s: %s: %s%s", port, self.what, reason, detail, more)


# send(port, sealed frame, radio metadata of the uplink answered or None): the link layer
# frames it for its medium (COBS on serial, a txpk on LoRa); False when it was not sent
Send = Callable[[str, bytes, RadioMeta | None], Awaitable[bool]]


class Ingest:
    def __init__(  # noqa: PLR0917 - one argument per collaborator, each named at the call
        self,
        registry: NodeRegistry,
        policy: PrivacyStage,
        spool: Spool,
        topics: Topics,
        payload_format: str,
        send: Send,
        uplink: LivePath | None,  # the Uplink; None: every message waits for the spool
        metrics: Metrics,
        sends_downlinks: Callable[[str], bool] = lambda _port: True,
        configs: NodeConfigs | None = None,
        health: HealthBook | None = None,
    ) -> None:
        self.registry = registry
        self.policy = policy
        self.spool = spool
        self.topics = topics
        self.payload_format = payload_format
        self.send = send
        self.uplink = uplink
        self.metrics = metrics
        # whether a link sends downlinks at all (a LoRa link with acks off does not): asked
        # before sealing, so no downlink counter is spent on a frame that never leaves
        self.sends_downlinks = sends_downlinks
        self.configs = configs  # remote configuration commands (gateway.node_config)
        self.health = health  # what `gateway nodes` shows (gateway.node_health)
        # frames waiting for ingest, oldest first (a deque and one event rather than an
        # asyncio.Queue: thousands of frames a second, each put and got once)
        self.queue: deque[Arrival] = deque()
        self._arrived = asyncio.Event()
        # frames queued, and frames done with (their group stored, acknowledged and counted,
        # or refused): when `finished` reaches a value `received` had, those frames are through
        self.received = 0
        self.finished = 0
        self.burst_log = BurstLog()
        # nodes that say they must be replaced (counter_low events): once an hour per node
        self.replace_log = BurstLog(3600.0, "node must be replaced")
        self._reacks: OrderedDict[tuple[int, int, int], int] = OrderedDict()
        self._last_time_sync: dict[int, float] = {}
        self._last_reuse_alarm: dict[int, float] = {}
        self._last_rekey: dict[int, float] = {}
        # where each node was last heard: a serial node gets its configuration at once
        self._last_link: dict[int, tuple[str, RadioMeta | None]] = {}
        self._storage_tried = -STORAGE_RETRY_S
        # frames whose messages were spooled but whose counters the registry failed to record
        # (node, epoch, counter) -> frame digest: their retransmission is recorded, not spooled
        # again (bounded like the re-ack memory; forgotten at a restart: then a duplicate)
        self._unrecorded: OrderedDict[tuple[int, int, int], bytes] = OrderedDict()
        self._folded_at = time.monotonic()
        self._folding: asyncio.Task[None] | None = None  # a fold in a worker thread
        # what the spool's journal holds from before a restart: the windows take it first
        taken = self.registry.replay_journal(row for _seq, row in self.spool.journal())
        if taken:
            log.info("%d accepted frame counters taken from the spool's journal", taken)

    def submit(self, port: str, frame: bytes, radio: RadioMeta | None = None) -> None:
        """Called by the link layer for each frame; never blocks, never raises. LoRa links
        pass the radio metadata; it stays in the gateway (downlink routing only)."""
        if len(self.queue) >= QUEUE_LIMIT:
            # the node keeps it and sends it again: nothing acknowledged is lost
            self.metrics.frames.labels(port, UNREGISTERED, "overloaded").inc()
            return
        self.queue.append(Arrival(port, frame, time.time(), radio))
        self.received += 1
        self._arrived.set()

    async def run(self) -> None:
        """Take frames as they come: each is verified and passed through the privacy stage at
        once, and its messages are offered to the uplink (published now if nothing waits in
        the spool), while the group gathers for its one spool commit (GATHER_S,
        GATHER_FRAMES); the group's nodes are acknowledged after that commit."""
        loop = asyncio.get_running_loop()
        queue, arrived = self.queue, self._arrived
        while True:
            while not queue:
                arrived.clear()
                await arrived.wait()
            group = self._begin()
            gathered_by = loop.time() + GATHER_S
            closing = loop.call_at(gathered_by, arrived.set)  # wakes the wait below in time
            try:
                while True:
                    take = min(len(queue), BATCH_LIMIT)
                    arrivals = [queue.popleft() for _ in range(take)]
                    if gathered_by - loop.time() > GATHER_LORA_S and any(
                        a.radio is not None for a in arrivals
                    ):
                        gathered_by = loop.time() + GATHER_LORA_S
                        closing.cancel()
                        closing = loop.call_at(gathered_by, arrived.set)
                    self._take(arrivals, group)
                    if loop.time() >= gathered_by or len(group.batch) >= GATHER_FRAMES:
                        break
                    if not queue:
                        arrived.clear()
                        await arrived.wait()
            finally:
                closing.cancel()
            await self._finish(group)

    async def process(self, batch: list[Arrival]) -> None:
        """One group of frames, from verification to the acknowledgements."""
        group = self._begin()
        self._take(batch, group)
        await self._finish(group)

    def _begin(self) -> _Group:
        self.registry.reload_if_changed()  # a revocation or re-import by a technician command
        self.policy.stage()  # windows take the group's messages once they are stored (commit)
        return _Group()

    def _take(self, arrivals: list[Arrival], group: _Group) -> None:
        """Verify the frames and pass the new ones through the privacy stage; their messages
        are offered to the uplink at once."""
        if not arrivals or self._storage_refuses(arrivals):
            return
        group.batch.extend(arrivals)
        out: list[OutMessage] = []
        for arrival in arrivals:
            verified = self._verify(arrival, group.in_batch, out)
            if verified is None:
                continue
            entry, header, digest, duplicate, message = verified
            key = (entry.node_id, header.epoch, header.counter)
            node = (arrival.port, entry.node_id)
            if entry.rekey is not None and header.epoch < entry.rekey:
                group.rekeys[node] = arrival.time
            if not duplicate or self._may_ack_again(key):
                acks = group.acks[node]
                if header.counter not in acks:  # copies in one group: one ack
                    acks.append(header.counter)
                group.radios[node] = arrival.radio
            personal = reveals_presence(message)
            if not personal:
                self._heard(arrival, entry.node_id, duplicate)
            if duplicate:
                continue
            group.in_batch[key] = digest
            if self._unrecorded.get(key) == digest:
                # its messages are in the spool (perhaps published already): only its counter
                # is to be recorded, and the privacy stage must not take it a second time
                group.accepted.append((entry.node_id, header.counter, digest, header.epoch))
                if not personal:
                    group.counted.append((arrival.port, str(entry.node_id), False, header.counter))
                continue
            # the frame's place in the node's life: its key epoch's counters follow the older
            # epochs', so message ids (records.message_id) stay distinct across re-keys
            sequence = (header.epoch << 32) | header.counter
            records = self.policy.process(
                entry.node_id, entry.zone, sequence, message, arrival.time
            )
            # no records: dropped by the policy, or taken into a window. Sightings and motion
            # events are not counted at all: how many there are says people were near
            if not personal:
                group.counted.append(
                    (arrival.port, str(entry.node_id), not records, header.counter)
                )
            fmt = self.payload_format
            messages = [senml.encode(r, self.topics, fmt, arrival.time) for r in records]
            out.extend(messages)
            group.produced[key] = messages
            group.accepted.append((entry.node_id, header.counter, digest, header.epoch))
            self._requests(arrival.port, entry, message, group.time_syncs, group.answers)
        if out:
            offered = self.offer(out)
            group.out.extend(offered)

    async def _finish(self, group: _Group) -> None:
        """Store the group (one spool commit), then acknowledge and count what was stored."""
        if self._folding is not None:  # the registry takes the journal before it grows
            await self._folding
            self._folding = None
        unstored = await self._store(group)
        acks, counted = self._stored(unstored, group.acks, group.counted)
        self._count(counted)
        await self._downlink(acks, group.time_syncs, group.radios, group.rekeys, group.answers)
        self.finished += len(group.batch)

    def _stored(
        self,
        unstored: set[tuple[int, int, int]],
        acks: dict[tuple[str, int], list[int]],
        counted: list[tuple[str, str, bool, int]],
    ) -> tuple[dict[tuple[str, int], list[int]], list[tuple[str, str, bool, int]]]:
        """The batch is stored but for `unstored` (node, epoch, counter): their messages do
        not join their windows (they come again, and join then: counted once), and they are
        neither acknowledged nor counted. The acks and counts that remain."""
        refused = {(n, (e << 32) | c) for n, e, c in unstored}
        self.policy.commit(lambda node, sequence: (node, sequence) not in refused)
        if not unstored:
            return acks, counted
        new = {(n, c) for n, _e, c in unstored}
        acks = {k: [c for c in v if (k[1], c) not in new] for k, v in acks.items()}
        return acks, [c for c in counted if (int(c[1]), c[3]) not in new]

    def _heard(self, arrival: Arrival, node_id: int, duplicate: bool) -> None:
        """An authentic frame that is no presence frame: the node's health knows it was heard
        (a duplicate is counted here; a new frame once it is stored, _count)."""
        if duplicate:
            self.metrics.frames.labels(arrival.port, str(node_id), "duplicate").inc()
        if self.health is not None:
            self.health.heard(node_id, arrival.port, arrival.radio, arrival.time)
            if duplicate:
                self.health.counted(node_id, "duplicate")

    def _requests(
        self,
        port: str,
        entry: NodeEntry,
        message: Message,
        time_syncs: set[tuple[str, int]],
        answers: list[tuple[int, int, bool]],
    ) -> None:
        """What a new frame asks of the gateway: the time, or fresh keys (counter_low); or
        what it answers: a configuration applied or rejected (its version)."""
        if type(message) is Readings:  # nearly every frame: it asks nothing, tells its interval
            if self.health is not None:
                self.health.reading(entry.node_id, time.time())
            return
        if _wants_time(message):
            time_syncs.add((port, entry.node_id))
        if self.health is not None:
            self._health(entry.node_id, message)
        if (
            isinstance(message, Event)
            and message.code in (_CONFIG_APPLIED, _CONFIG_REJECTED)
            and message.value is not None
        ):
            answers.append((entry.node_id, message.value, message.code == _CONFIG_APPLIED))
        if isinstance(message, Event) and message.code == _COUNTER_LOW:
            self._counter_low(port, entry, message.value)

    def _health(self, node_id: int, message: Message) -> None:
        """What a new frame other than readings (_requests tells their interval) tells of its
        node's health: a status, a boot event."""
        assert self.health is not None  # noqa: S101 - the caller checked
        if isinstance(message, Status):
            self.health.status(node_id, dict(message.fields), time.time())
        elif isinstance(message, Event) and message.code == _BOOT:
            self.health.boot(node_id, message.value)

    def _storage_refuses(self, batch: list[Arrival]) -> bool:
        """True when the batch is refused unseen, unacknowledged (the nodes keep its frames),
        because the spool or the registry cannot write: see STORAGE_RETRY_S. Counted per port
        as `storage_unavailable`, observation frames not at all."""
        if not self.spool.health.failing and not self.registry.health.failing:
            return False
        failing = {**self.spool.health.failing, **self.registry.health.failing}
        if "spool" not in failing and "registry" not in failing:
            return False
        now = time.monotonic()
        if now - self._storage_tried >= STORAGE_RETRY_S:
            self._storage_tried = now
            return False  # this one tries the disk
        for arrival in batch:
            try:
                if parse_header(arrival.frame).msg_type == OBSERVATIONS:
                    continue
            except RemoteProtocolError:
                pass
            self.metrics.frames.labels(arrival.port, UNREGISTERED, "storage_unavailable").inc()
        self.finished += len(batch)  # done with: refused
        return True

    async def _store(self, group: _Group) -> set[tuple[int, int, int]]:
        """Spool what the group produced and the broker has not acknowledged yet, with its
        frames' counters (the accepted-counter journal, in the same transaction: one fsync),
        then move the registry's windows. Returns the frames (node, epoch, counter) that are
        not durable and so must not be acknowledged: empty when all are. Never raises for the
        storage."""
        unstored: set[tuple[int, int, int]] = set()
        in_batch, accepted = group.in_batch, group.accepted
        journal = [(n, e, c, d) for (n, e, c), d in in_batch.items()]
        keep = [o for o in group.out if not o.acked]  # the broker holds the others
        settled: list[tuple[Offered, int | None]] = [(o, None) for o in keep]
        if keep or journal:
            try:
                # off the event loop: put() returns once the batch is on disk (fsync)
                put = partial(self.spool.put, [o.message for o in keep], accepted=journal)
                settled = list(zip(keep, await asyncio.to_thread(put), strict=True))
            except SpoolFullError as exc:
                unstored, settled = await self._store_what_fits(group, keep)
                # not stored, so neither accepted nor acknowledged: the nodes send them again
                # (and again: logged like a rejection, once per burst, not once per batch)
                refused = sum(len(group.produced.get(k, ())) for k in unstored)
                self.metrics.spool_dropped.labels("refused").inc(refused)
                self.burst_log.rejected(
                    "*", "spool_full", f"{exc}; {len(unstored)} frames not acknowledged"
                )
            except StorageError:
                self._settle(settled)
                return set(in_batch)  # StorageHealth logged it, once per burst
        self._settle(settled)
        if unstored:  # by node and counter, as the acknowledgements are
            not_stored = {(n, c) for n, _e, c in unstored}
            accepted = [a for a in accepted if (a[0], a[1]) not in not_stored]
        if accepted:
            try:
                self.registry.accept_many(accepted, journaled=True)
            except StorageError:
                # journaled, but a new key epoch or a replacement could not be committed to
                # the registry: unacknowledged, the frames come again and are then recorded
                # without being spooled a second time (_unrecorded)
                recorded = {k: d for k, d in in_batch.items() if k not in unstored}
                self._unrecorded.update(recorded)
                while len(self._unrecorded) > REACK_MEMORY:
                    self._unrecorded.popitem(last=False)
                return set(in_batch)
            for key in in_batch:
                self._unrecorded.pop(key, None)
        if self._fold_due():
            # in a worker thread: thousands of counters and an fsync, not on the event loop.
            # The next group's commit waits for it (_finish): the journal's end it forgets up
            # to must be the end of what the registry holds
            self._folding = asyncio.create_task(asyncio.to_thread(self.fold, force=True))
        return unstored

    def _fold_due(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return now - self._folded_at >= FOLD_S or self.registry.pending >= FOLD_FRAMES

    def fold(self, *, now: float | None = None, force: bool = False) -> None:
        """Every FOLD_S (or FOLD_FRAMES frames, or when `force`d: at a clean stop) the
        registry writes the journaled counters into its own file, and the spool's journal
        then forgets them. A failure of the storage leaves both as they are, to try again.
        Thread-safe as long as no group is stored meanwhile (the caller sees to that)."""
        now = time.monotonic() if now is None else now
        if not (force or self._fold_due(now)):
            return
        self._folded_at = now
        try:
            upto = self.spool.journal_end()
            self.registry.fold()
            self.spool.forget_journal(upto)
        except StorageError:
            pass  # logged by StorageHealth; the journal keeps them

    async def _store_what_fits(
        self, group: _Group, keep: list[Offered]
    ) -> tuple[set[tuple[int, int, int]], list[tuple[Offered, int | None]]]:
        """A spool that refuses new messages (refuse_new) refused the whole group: store its
        frames frame by frame, in order, until one does not fit (so a group larger than the
        room left never blocks the spool for good). The frames not stored, and each kept
        message's sequence number (None: not stored)."""
        unstored: set[tuple[int, int, int]] = set()
        seqs: dict[int, int] = {}  # id(message) -> its sequence number
        offered_of = {id(o.message): o for o in keep}
        for key, digest in group.in_batch.items():
            offered = [
                offered_of[id(m)] for m in group.produced.get(key, ()) if id(m) in offered_of
            ]
            if unstored:
                unstored.add(key)
                continue
            try:
                messages = [o.message for o in offered]
                put = partial(self.spool.put, messages, accepted=[(*key, digest)])
                stored = await asyncio.to_thread(put)
            except (SpoolFullError, StorageError):
                unstored.add(key)
                continue
            seqs.update(zip((id(m) for m in messages), stored, strict=True))
        return unstored, [(o, seqs.get(id(o.message))) for o in keep]

    def _settle(self, settled: list[tuple[Offered, int | None]]) -> None:
        if settled and self.uplink is not None:
            self.uplink.settle(settled)

    def offer(self, messages: list[OutMessage]) -> list[Offered]:
        """The messages to the uplink's live path (published before they are stored, when
        nothing waits in the spool); without an uplink, all are left to the spool."""
        if self.uplink is None:
            return [Offered(m, HELD) for m in messages]
        return self.uplink.offer(messages)

    def _verify(
        self,
        arrival: Arrival,
        in_batch: dict[tuple[int, int, int], bytes],
        out: list[OutMessage],
    ) -> tuple[NodeEntry, Header, bytes, bool, Message] | None:
        """(entry, header, frame digest, whether a retransmission, message), or None for a
        rejected frame (counted and logged; a counter reuse adds its alarm to `out`)."""
        try:
            header = parse_header(arrival.frame)
            entry = self.registry.get(header.node_id)
            if entry is None:
                raise RemoteProtocolError(
                    Reason.UNKNOWN_NODE,
                    f"node {header.node_id} is not registered (edgeveil gateway import-nodes)",
                )
            if entry.revoked:
                raise RemoteProtocolError(
                    Reason.REVOKED,
                    f"node {header.node_id} is revoked (edgeveil gateway nodes revoke); only a "
                    "new identity brings it back: edgeveil node provision, then import-nodes",
                )
            if header.epoch < entry.epoch:
                raise RemoteProtocolError(
                    Reason.RETIRED_KEY,
                    f"node {header.node_id}: sealed under key epoch {header.epoch}, retired: "
                    f"the node uses epoch {entry.epoch} (a frame sent before its keys were "
                    "renewed, a replay, or a copy of the node still on its old keys)",
                )
            digest = frame_digest(arrival.frame)
            duplicate, message = self._classify(arrival.frame, header, entry, digest, in_batch)
        except CounterReuse as exc:
            personal = reveals_presence(exc.message)
            self._rejected(arrival, exc, personal)
            if not personal and entry is not None:
                out.extend(self._reuse_alarm(arrival, entry))
            return None
        except RemoteProtocolError as exc:
            self._rejected(arrival, exc)
            return None
        return entry, header, digest, duplicate, message

    def _classify(
        self,
        frame: bytes,
        header: Header,
        entry: NodeEntry,
        digest: bytes,
        in_batch: dict[tuple[int, int, int], bytes],
    ) -> tuple[bool, Message]:
        """(whether it is a retransmission, the message) for a frame of a registered node;
        RemoteProtocolError for one to reject: REPLAY, AUTH_FAILED, MALFORMED, COUNTER_REUSE
        (CounterReuse)."""
        key = (entry.node_id, header.epoch, header.counter)
        if header.epoch > entry.epoch:  # fresh keys: nothing accepted under them yet
            message = open_frame(frame, self.registry.keys_for(*key[:2]), True, header)
            recorded = in_batch.get(key)
            if recorded is not None and recorded != digest:
                raise CounterReuse(entry.node_id, header.counter, message)
            return recorded is not None, message
        try:
            verdict = entry.window.check(header.counter)
        except RemoteProtocolError:  # REPLAY: below the window, unless the evidence says reuse
            recorded = self.registry.digest(entry.node_id, header.counter)
            if recorded is None or recorded == digest:
                raise
            message = open_frame(frame, entry.keys, True, header)  # a forgery: AUTH_FAILED
            raise CounterReuse(entry.node_id, header.counter, message) from None
        message = open_frame(frame, entry.keys, True, header)
        if verdict != DUPLICATE and key not in in_batch:
            return False, message
        # authentic and under a counter already taken: the same bytes are a retransmission,
        # other bytes a second sealing under the same key and nonce
        recorded = in_batch.get(key) or self.registry.digest(entry.node_id, header.counter)
        if recorded is not None and recorded != digest:
            raise CounterReuse(entry.node_id, header.counter, message)
        return True, message

    def _counter_low(self, port: str, entry: NodeEntry, left: int | None) -> None:
        """A node running out of frame counters gets fresh keys (a re-key: its counter starts
        again at 0), or, when its generation of key epochs is used up, is named for
        replacement in the log."""
        node_id = entry.node_id
        if entry.rekey is not None:
            return  # on its way
        try:
            epoch = self.registry.request_rekey(node_id)
        except StorageError:
            return  # logged by StorageHealth; asked again with the node's next status
        except RegistryError as exc:
            self.replace_log.rejected(
                port,
                f"counter_low {node_id}",
                f"node {node_id} has {left} frame counters left and then falls silent, and "
                f"gets no new keys here ({exc}): replace it (edgeveil node provision --replace "
                f"{node_id})",
            )
            return
        log.warning(
            "node %d has %s frame counters left: re-keying it to key epoch %d, after which its "
            "counter starts again",
            node_id,
            left,
            epoch,
        )

    def _reuse_alarm(self, arrival: Arrival, entry: NodeEntry) -> list[OutMessage]:
        """The alarm event for a counter reuse, unless one went out within the hour."""
        node_id = entry.node_id
        last = self._last_reuse_alarm.get(node_id)
        if last is not None and arrival.time - last < REUSE_ALARM_GAP_S:
            return []
        self._last_reuse_alarm[node_id] = arrival.time
        gateway = self.topics.gateway_id
        record = Record(
            "event",
            node_id,
            entry.zone,
            arrival.time,
            f"{gateway}:{node_id}:alarm:counter_reuse:{int(arrival.time)}",
            (Measurement("counter_reuse", "", True),),  # no content: that it happened
            policy=self.policy.policy_hash,
        )
        return [senml.encode(record, self.topics, self.payload_format)]

    def _rejected(self, arrival: Arrival, exc: RemoteProtocolError, personal: bool = False) -> None:
        """Counted by node and reason (observations not at all: their number says people were
        near; `personal` for a decoded frame that says so), logged once per burst."""
        node = UNREGISTERED
        if exc.reason != Reason.UNKNOWN_NODE:
            try:
                header = parse_header(arrival.frame)
                node = str(header.node_id) if header.node_id in self.registry else node
                personal = personal or header.msg_type == OBSERVATIONS
            except RemoteProtocolError:
                pass
        if not personal:
            self.metrics.frames.labels(arrival.port, node, exc.reason_name).inc()
            if self.health is not None and node != UNREGISTERED:
                self.health.counted(int(node), exc.reason_name)
        self.burst_log.rejected(arrival.port, exc.reason_name, exc.detail)

    def _may_ack_again(self, key: tuple[int, int, int]) -> bool:
        """Whether a duplicate of this (node, counter) is acknowledged once more."""
        times = self._reacks.pop(key, 0) + 1
        self._reacks[key] = times  # most recent last
        while len(self._reacks) > REACK_MEMORY:
            self._reacks.popitem(last=False)
        return times <= MAX_REACKS

    def _count(self, counted: list[tuple[str, str, bool, int]]) -> None:
        """Count frames once they are stored: a frame the full spool refused comes again, and
        is counted then (not twice)."""
        per_node = Counter((port, node) for port, node, _nothing, _counter in counted)
        for (port, node), frames in per_node.items():  # one labels() lookup per node: hot
            self.metrics.frames.labels(port, node, "accepted").inc(frames)
            if self.health is not None:
                self.health.counted(int(node), "accepted", frames)
        denied = sum(1 for c in counted if c[2])
        if denied:
            self.metrics.privacy_denied.inc(denied)

    async def _downlink(
        self,
        acks: dict[tuple[str, int], list[int]],
        time_syncs: set[tuple[str, int]],
        radios: dict[tuple[str, int], RadioMeta | None],
        rekeys: dict[tuple[str, int], float],
        answers: list[tuple[int, int, bool]],
    ) -> None:
        now = time.time()
        if self.configs is not None:  # before the next command is picked
            for node_id, version, applied in answers:
                await self.configs.answered(node_id, version, applied)
        # Time sync first: a LoRa uplink has room for one downlink (RX1), and a node asking
        # for the time would otherwise never get it past its acks. The ack it misses then
        # (at most once per TIME_SYNC_GAP_S) comes with its retransmission.
        for port, node_id in time_syncs:
            if now - self._last_time_sync.get(node_id, 0.0) < TIME_SYNC_GAP_S:
                continue
            entry = self.registry.get(node_id)
            radio = radios.get((port, node_id))
            if entry is not None and await self._send(port, entry.keys, TimeSync(int(now)), radio):
                self._last_time_sync[node_id] = now
        for (port, node_id), heard in rekeys.items():
            await self._send_rekey(port, node_id, radios.get((port, node_id)), heard)
        for (port, node_id), radio in radios.items():
            self._last_link[node_id] = (port, radio)
            if (port, node_id) not in rekeys:  # new keys first: the update follows them
                await self.send_config(node_id)
        for (port, node_id), counters in acks.items():
            entry = self.registry.get(node_id)
            if entry is None:
                continue
            for start in range(0, len(counters), MAX_ACKED):
                chunk = counters[start : start + MAX_ACKED]
                await self._send(port, entry.keys, Ack(chunk), radios.get((port, node_id)))

    async def send_config(self, node_id: int) -> bool:
        """The node's due configuration command (gateway.node_config), as a config_update on
        the link it was last heard on: at once on a serial line, in the receive window of the
        uplink just heard on LoRa (an older uplink's window has passed: not sent then)."""
        if self.configs is None or node_id not in self._last_link:
            return False
        port, radio = self._last_link[node_id]
        entry = self.registry.get(node_id)
        command = await self.configs.due(node_id)
        if entry is None or command is None or command.version is None:
            return False
        if not self.sends_downlinks(port):
            await self.configs.fail(command, f"{port} sends no downlinks (acks = false)")
            return False
        if radio is not None and time.monotonic() - radio.received > RX_REACHABLE_S:
            return False
        update = ConfigUpdate(command.version, command.settings)
        if not await self._send(port, entry.keys, update, radio):
            return False
        await self.configs.sent(command)
        return True

    async def _send_rekey(
        self, port: str, node_id: int, radio: RadioMeta | None, now: float
    ) -> None:
        """The node's requested re-key (SPEC.md 7.7: key_epoch alone, the epoch as the
        version), sealed under its current keys, unless one went out within REKEY_GAP_S."""
        entry = self.registry.get(node_id)
        if entry is None or entry.rekey is None or entry.rekey <= entry.epoch:
            return
        if now - self._last_rekey.get(node_id, 0.0) < REKEY_GAP_S:
            return
        update = ConfigUpdate(entry.rekey, {"key_epoch": entry.rekey})
        if await self._send(port, entry.keys, update, radio):
            self._last_rekey[node_id] = now
            log.info("node %d: re-key to key epoch %d sent on %s", node_id, entry.rekey, port)

    async def _send(
        self,
        port: str,
        keys: NodeKeys,
        message: Ack | TimeSync | ConfigUpdate,
        radio: RadioMeta | None,
    ) -> bool:
        if not self.sends_downlinks(port):
            return False
        try:
            counter = self.registry.next_downlink_counter(keys.node_id)
        except StorageError:
            # no counter could be reserved durably, so none is used (logged by StorageHealth):
            # the node sends its frame again, and is answered once the disk takes writes
            return False
        return await self.send(port, seal(message, counter, keys), radio)


def _wants_time(message: object) -> bool:
    if isinstance(message, Event):
        return message.code == _TIME_REQUEST
    if isinstance(message, Status):
        return message.fields.get("clock_synced") is False
    return False
