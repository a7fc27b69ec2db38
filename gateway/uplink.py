"""The uplink: drains the spool to an MQTT broker, at least once, forever.

    spool ──peek──► Uplink ──PUBLISH QoS 1──► broker
      ▲                │
      └────delete──────┘  only after the broker's PUBACK, in spool order

The spool (a file), not the broker's session, holds whatever the broker has not acknowledged:
the MQTT session is clean (`clean_session=True`) and every connection starts again at the
oldest spooled message. A message that was published but whose PUBACK never came is published
again after the reconnect; consumers drop duplicates by the message id every payload carries.

Availability is an MQTT last will: "offline", QoS 1, retained. After EVERY connect the uplink
publishes "online" and the gateway metadata, both retained, before any data: a broker that
restarted without persistence has forgotten both, and a bridge or dashboard that saw the will
would otherwise keep showing the gateway offline. A clean stop publishes "offline" itself, as the
will is not sent when a client disconnects properly. While the gateway's storage fails
(`set_degraded`), availability is "degraded" instead of "online": the gateway publishes what it
holds, but takes no new data in.

Acknowledged messages are deleted in groups (DELETE_BATCH, DELETE_AFTER_S), and one the broker
acknowledged but the spool could not delete (a full or failing disk) is not published again:
its sequence number is kept in memory until the deletion succeeds, so the broker sees each
message once while the disk refuses writes (and at least once across a crash).

Connection errors never end `run()`: it logs the first error of an outage (no stack trace), then
retries with exponential backoff and jitter, and logs the reconnect. Configuration problems
(an unreadable password file or certificate) are raised by the constructor as ConfigError, at
start, where the operator sees them.

The gateway's one subscription is remote configuration (gateway.node_config): its messages go
to `on_message`, in order. Built on aiomqtt (paho-mqtt underneath), which offers no
"connection lost" callback: a connection's loss surfaces as the end of `client.messages`, which
the receiving task awaits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import socket
import ssl
import struct
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

import aiomqtt
import paho.mqtt.client as mqtt
from aiomqtt.exceptions import MqttConnectError

from . import senml
from .config import MqttConfig
from .errors import ConfigError, StorageError
from .records import OutMessage, Topics

log = logging.getLogger("edgeveil.uplink")

ONLINE = b"online"
OFFLINE = b"offline"
DEGRADED = b"degraded"  # running, but its storage fails: frames are not acknowledged
STABLE_AFTER_S = 10.0  # a connection that lasted this long resets the backoff
# Reconnect attempts are at most this far apart (with jitter, 5 to 10 s once it is reached).
# Everything that arrives while the broker is away waits for the next attempt after its
# return: with 30 s (0.1.0), a 20-second outage at full line rate was followed by up to 29 s
# more of backlog, and a 2-minute outage could not drain 10 times faster than it built up.
# An attempt is one TCP connect: one every 10 s is no load on a broker, even from a fleet.
RECONNECT_MAX_S = 10.0
# Published messages are deleted from the spool in one transaction once DELETE_BATCH of them
# are set aside or the oldest was set aside DELETE_AFTER_S ago: a delete writes a few pages
# of the spool's WAL however many rows it removes, so deleting each small batch on its own
# wrote more than storing it (docs/operators/storage.md). A crash in between publishes those again.
DELETE_BATCH = 256
DELETE_AFTER_S = 5.0
# The packs of one topic that wait together are joined into one MQTT message of at most
# PACK_BYTES (senml.join): under load one PUBLISH and one PUBACK carry many records, and when
# little waits each record leaves alone, at once.
PACK_BYTES = 16 * 1024
# Messages offered before they are stored (offer()) that may wait to be published or for their
# PUBACK at once; more are held for the spool, and the live path closes until it drained them.
LIVE_LIMIT = 4096
# Under load, offered messages are taken at most every LIVE_GATHER_S, so that a node's readings
# of that time leave as one pack: at 20 serial links' line rate about 7 records per MQTT
# message instead of 1, and a fraction of the work per record in paho and in the broker. A
# gateway is under load when the last take held LIVE_BUSY messages or more; a quiet one sends
# each message as it comes (a take of one or a few), so its latency stays a few ms.
LIVE_GATHER_S = 0.02
LIVE_BUSY = 32


# what became of an offered message (Offered.state)
QUEUED, INFLIGHT, ACKED, FAILED, HELD = range(5)


@dataclass(slots=True, eq=False)
class Offered:
    """A message offered to the live path (Uplink.offer): its state (QUEUED to be published,
    INFLIGHT awaiting its PUBACK, ACKED, FAILED: not acknowledged, HELD: not published, left
    to the spool) and, once its batch is stored while it is in flight, its sequence number."""

    message: OutMessage
    state: int = QUEUED
    seq: int | None = None
    settled: bool = False  # its batch was stored (or refused): Uplink.settle

    @property
    def acked(self) -> bool:
        return self.state == ACKED


@dataclass(slots=True, eq=False)
class _Pack:
    """One MQTT message to publish: the messages joined into it, spooled (their sequence
    numbers) or offered."""

    topic: str
    retain: bool
    messages: list[OutMessage] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    offered: list[Offered] = field(default_factory=list)
    size: int = 0
    round: _Round | None = None  # the drain round it belongs to (spooled messages)


@dataclass(slots=True, eq=False)
class _Round:
    """A drain round: how many of its packs still await their PUBACK; `done` is set when none
    does, or when the connection ended first (`left` then says how many never came)."""

    left: int
    done: asyncio.Event = field(default_factory=asyncio.Event)


class SpoolQueue(Protocol):
    """What the uplink needs of the spool (gateway.spool.Spool has more).

    `peek` gives the oldest messages first (only those with a sequence number above `after`),
    with their sequence numbers; `published` says the broker acknowledged some (deleted later,
    in groups); `delete` removes published ones, or raises StorageError and removes none.
    `peek` and `delete` are called in a worker thread (asyncio.to_thread), as ingest calls
    `put`: they may block on the disk.
    """

    def peek(self, limit: int, after: int = 0, /) -> Sequence[tuple[int, OutMessage]]: ...

    def delete(self, seqs: list[int], /) -> object: ...

    def published(self, seqs: list[int], /) -> object: ...


# what one PUBACK acknowledged: each message's seconds from its arrival (OutMessage.created)
# to the PUBACK, None where unknown; called once per MQTT message, so per pack, not per record
OnPublished = Callable[[list[float | None]], None]
OnMessage = Callable[[str, bytes], Awaitable[None]]  # topic, payload


class _PahoLog(logging.Logger):
    """paho-mqtt's log, one per Uplink: warnings and errors go to "edgeveil.uplink.mqtt",
    except socket errors, which are kept to explain a lost connection in our own one line."""

    _SOCKET = ("failed to receive on socket: ", "timeout on socket: ")

    def __init__(self) -> None:
        super().__init__("edgeveil.uplink.mqtt", logging.WARNING)  # no packet traces
        self.parent = log
        self.socket_error: str | None = None

    def handle(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        for prefix in self._SOCKET:
            if text.startswith(prefix):
                self.socket_error = text.removeprefix(prefix)
                return
        super().handle(record)


class Backoff:
    """Exponential backoff with "equal jitter": the n-th delay lies in [d/2, d] for
    d = min(maximum, initial * 2**n), so a fleet of gateways does not reconnect in step
    after a broker restart."""

    def __init__(
        self, initial: float = 0.5, maximum: float = 30.0, rng: random.Random | None = None
    ) -> None:
        if not 0 < initial <= maximum:
            raise ValueError("backoff needs 0 < initial <= maximum")
        self.initial = initial
        self.maximum = maximum
        self.attempt = 0
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography

    def next(self) -> float:
        ceiling = min(self.maximum, self.initial * 2.0 ** min(self.attempt, 30))
        self.attempt += 1
        return ceiling / 2 + self._rng.random() * ceiling / 2

    def reset(self) -> None:
        self.attempt = 0


class Uplink:
    """Publishes what the spool holds to one MQTT broker, reconnecting forever.

    Two ways to run it:

        async with Uplink(...) as uplink:      # runs in a task named "edgeveil-uplink"
            ...                                # leaving the block is close(): "offline"

        tg.create_task(uplink.run(), name="uplink")   # in the service's TaskGroup
        ...
        await uplink.close()                   # run() then publishes "offline" and returns

    State for metrics and status (read it, do not set it): `connected` (connected and
    "online" announced), `published` (spooled messages the broker acknowledged with a
    PUBACK; one sent again after a reconnect counts again), `reconnects` (connections made
    after the first), `last_error` (the latest connection error, kept after a reconnect;
    None if there was none).
    """

    def __init__(  # noqa: PLR0915 - the state, each piece named and explained
        self,
        config: MqttConfig,
        spool: SpoolQueue,
        topics: Topics,
        metadata: Mapping[str, Any],
        *,
        on_published: OnPublished | None = None,
        subscriptions: Sequence[str] = (),
        on_message: OnMessage | None = None,
        window: int = 32,
        batch: int = 1024,
        poll_interval_s: float = 1.0,
        delete_after_s: float = DELETE_AFTER_S,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = RECONNECT_MAX_S,
        publish_timeout_s: float | None = None,
        connect_timeout_s: float = 10.0,
    ) -> None:
        if window < 1 or batch < 1:
            raise ValueError("window and batch must be at least 1")
        self.config = config
        self.topics = topics
        self.client_id = config.client_id or f"edgeveil-{topics.site}-{topics.gateway_id}"
        self._spool = spool
        self._metadata = _metadata_json(metadata)
        self._metadata_dirty = False
        self._degraded: str | None = None
        self._availability_dirty = False
        self._on_published = on_published
        self._subscriptions = tuple(subscriptions)
        self._on_message = on_message
        self._window = window
        self._batch = max(batch, window)
        self._poll_interval = poll_interval_s
        self._delete_after = delete_after_s
        self._backoff = Backoff(backoff_initial_s, backoff_max_s)
        # A safety net only: a dead connection is noticed by keepalive well before this.
        self._publish_timeout = publish_timeout_s or 2.0 * config.keepalive_s + 10.0
        self._connect_timeout = connect_timeout_s
        self._paho_log = _PahoLog()
        self._session_up = False  # past CONNACK in the current attempt
        self._up_since: float | None = None  # when the current attempt got its CONNACK
        self._password = _read_password(config)
        self._tls = _tls_context(config)

        self.connected = False
        self.published = 0
        self.reconnects = 0
        self.last_error: str | None = None
        self._last_unexpected: str | None = None
        self._connections = 0
        self._outage_since: float | None = None
        self._failed_attempts = 0
        # published and acknowledged, not yet deleted (see DELETE_AFTER_S; or the disk
        # refused): oldest first
        self._undeleted: list[int] = []
        self._delete_due = 0.0
        # the live path (offer(), settle()): messages published before they are stored. It
        # opens in two steps (_work_on): `open`, offers join the live queue instead of being
        # held for the spool; `ready`, the queue is published, once everything handed to the
        # spool before is published. Between the two, the last held messages are stored and
        # drained, and the queue waits behind them.
        self._live_open = False
        self._live_ready = False
        self._live_queue: list[Offered] = []  # offered, to be published
        self._live_unsettled = 0  # offered and not published, not yet stored by ingest
        self._handed_to_spool = 0  # offered messages left to the spool so far (held, failed)
        self._live_inflight = 0  # offered, queued or awaiting PUBACK
        self._live_seqs: set[int] = set()  # stored while in flight: the drain leaves them
        self._live_flushed = 0.0  # when offered messages were last taken (LIVE_GATHER_S)
        self._live_busy = False  # that take was large: the next waits (LIVE_BUSY)
        self._spool_news = True  # the spool may hold what is not published yet: peek it
        self._poll_due = 0.0  # the spool is peeked at least this often (poll_interval_s)
        self._window_lock: asyncio.Semaphore | None = None  # the connection's window
        self._paho: mqtt.Client | None = None  # the connection's paho client (_publish)
        self._awaiting: dict[int, _Pack] = {}  # paho message id -> pack awaiting its PUBACK
        self._all_acked: asyncio.Event | None = None  # a clean stop's wait: nothing awaiting

        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._done = asyncio.Event()
        self._running = False
        self._task: asyncio.Task[None] | None = None

    # -- the API the service uses --------------------------------------------------------------

    def notify(self) -> None:
        """The spool has new messages: publish them now rather than at the next poll. Call
        from the event loop's thread."""
        self._spool_news = True
        self._wake.set()

    def offer(self, messages: Sequence[OutMessage]) -> list[Offered]:
        """Messages not stored yet: publish them now if nothing in the spool waits before them
        (the live path), else hold them for the spool. Call from the event loop's thread.

        The caller stores every offered message that is not `acked` by the time it stores its
        batch, then calls settle() with each one's sequence number (None: not stored). An
        acknowledged frame's messages are thus in the spool or acknowledged by the broker, and
        a message published live and then stored is not published again from the spool. The
        live path closes when a message must be held (the connection is down, or LIVE_LIMIT
        wait); it opens again in two steps: once the drain finds nothing stored left to
        publish, offers join the live queue rather than the spool; once everything held
        before them is stored and published too, the queue goes (_caught_up). So a node's
        messages leave in order on either path.
        """
        now = time.time()  # for a message that does not say when it arrived (latency)
        offered = [Offered(m if m.created else replace(m, created=now)) for m in messages]
        if not offered:
            return offered
        if self._live_open and self._live_inflight + len(offered) <= LIVE_LIMIT:
            self._live_queue.extend(offered)
            self._live_inflight += len(offered)
            self._wake.set()
        else:
            # what follows must not overtake these: the live path closes, and what waits in
            # its queue, offered before these, goes the spool's way too (else it could wait
            # behind them)
            for queued in self._live_queue:
                self._fail(queued)
            self._live_queue = []
            self._live_open = self._live_ready = False
            for o in offered:
                o.state = HELD
            self._live_unsettled += len(offered)
            self._handed_to_spool += len(offered)
        return offered

    def settle(self, stored: Iterable[tuple[Offered, int | None]]) -> None:
        """What became of offered messages when their batch was stored: each one's sequence
        number in the spool, or None when it was not stored (acknowledged by the broker
        already, or its frame was refused and comes again)."""
        for offered, seq in stored:
            offered.settled = True
            state = offered.state
            if state in (HELD, FAILED):
                self._live_unsettled -= 1  # in the spool now (or refused): the drain's
                self._spool_news = True
            elif seq is None:
                continue
            elif state == ACKED:
                self._set_aside([seq])
            else:  # queued or in flight: its PUBACK deletes it from the spool
                offered.seq = seq
                self._live_seqs.add(seq)
        self._wake.set()

    def set_metadata(self, metadata: Mapping[str, Any]) -> None:
        """Replace the retained metadata; it is published at once if connected."""
        self._metadata = _metadata_json(metadata)
        self._metadata_dirty = True
        self._wake.set()

    def set_degraded(self, reason: str | None) -> None:
        """The gateway is degraded (`reason`, e.g. "spool: disk_full") or not (None): the
        availability topic says "degraded" or "online", at once if connected."""
        if reason == self._degraded:
            return
        self._degraded = reason
        self._availability_dirty = True
        self._wake.set()

    @property
    def _availability(self) -> bytes:
        return DEGRADED if self._degraded else ONLINE

    async def run(self) -> None:
        """Connect, announce, drain the spool, and reconnect after any error, until close().

        Connection errors never escape. Cancelling it publishes "offline" (within 2 s, if the
        connection is up) before disconnecting, like close().
        """
        if self._running:
            raise RuntimeError("Uplink.run() is already running")
        self._running = True
        self._done.clear()
        try:
            while not self._stop.is_set():
                self._up_since = None
                try:
                    await self._session()
                except aiomqtt.MqttError as exc:
                    reason = _describe(exc, self._paho_log.socket_error)
                    if not self._session_up and not isinstance(exc, MqttConnectError):
                        reason = f"cannot connect: {reason}"
                    self._lost(reason)
                except Exception as exc:
                    # Not a connection problem: a bug or a failing spool. Say so loudly (once),
                    # then retry like any outage: losing the uplink must not stop the service.
                    self._lost(f"{type(exc).__name__}: {exc}", exc)
                finally:
                    self.connected = False
                    self._live_open = self._live_ready = False
                    for offered in self._live_queue:  # never published: the spool's now
                        self._fail(offered)
                    self._live_queue = []
                if self._undeleted:  # published before the loss: no broker needed to delete
                    await self._delete()
                if self._stop.is_set():
                    break
                up = self._up_since
                if up is not None and time.monotonic() - up >= STABLE_AFTER_S:
                    self._backoff.reset()  # not after a slow failed attempt: only a real session
                delay = self._backoff.next()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stop.wait()
        finally:
            self._running = False
            self._done.set()

    async def close(self, timeout: float = 10.0) -> None:
        """Stop: finish what is in flight, publish "offline", disconnect. Idempotent."""
        self._stop.set()
        self._wake.set()
        if self._running:
            try:
                async with asyncio.timeout(timeout):
                    await self._done.wait()
            except TimeoutError:
                log.warning("MQTT uplink did not stop within %.0f s; cancelling it", timeout)
                if self._task is not None:
                    self._task.cancel()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self.run(), name="edgeveil-uplink")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- one connection ------------------------------------------------------------------------

    def _client(self) -> aiomqtt.Client:
        c = self.config
        client = aiomqtt.Client(
            c.host,
            c.port,
            username=c.username,
            password=self._password,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V311,
            will=aiomqtt.Will(self.topics.availability, OFFLINE, qos=1, retain=True),
            clean_session=True,
            keepalive=c.keepalive_s,
            timeout=self._connect_timeout,
            max_inflight_messages=self._window,
            tls_context=self._tls,
            logger=self._paho_log,
        )
        # aiomqtt warns above 10 pending publishes; our window is the bound that matters.
        client.pending_calls_threshold = self._window + 8
        return client

    async def _session(self) -> None:
        """One connection's lifetime: returns after a clean stop, raises when it is lost."""
        self._paho_log.socket_error = None
        self._session_up = False
        client = self._client()
        try:
            async with client:
                self._session_up = True
                self._up_since = time.monotonic()
                await self._connected(client)
        except BaseException:
            if not self._session_up:
                _abandon(client)  # the attempt failed before its CONNACK
            raise

    async def _connected(self, client: aiomqtt.Client) -> None:
        """The connection's two tasks: returns after a clean stop, raises when it is lost."""
        watch = asyncio.create_task(self._receive(client), name="edgeveil-uplink-watch")
        work = asyncio.create_task(self._work(client), name="edgeveil-uplink-work")
        try:
            await asyncio.wait((watch, work), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            await _cancel(work)
            if not watch.done():
                with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                    async with asyncio.timeout(2.0):
                        await client.publish(self.topics.availability, OFFLINE, qos=1, retain=True)
            await _cancel(watch)
            raise
        if work.done() and not work.cancelled() and work.exception() is None:
            await _cancel(watch)
            return
        await _cancel(work)
        await _cancel(watch)
        for task in (watch, work):  # the watcher's error names the cause of a loss
            error = None if task.cancelled() else task.exception()
            if error is not None:
                raise error
        raise aiomqtt.MqttError("connection lost")  # both were cancelled: not expected

    async def _work(self, client: aiomqtt.Client) -> None:
        self._window_lock = asyncio.Semaphore(self._window)  # this connection's in flight
        paho = client._client  # aiomqtt's paho client: see _publish
        _no_delay(paho)
        aiomqtt_on_publish = paho.on_publish

        def on_publish(*args: Any) -> None:  # paho's callback, in the event loop's thread
            if aiomqtt_on_publish is not None:
                aiomqtt_on_publish(*args)  # its own publishes (announcements, retained)
            self._puback(args[2])

        paho.on_publish = on_publish
        self._paho = paho
        try:
            await self._work_on(client)
        finally:
            paho.on_publish = aiomqtt_on_publish
            self._paho = None
            awaiting, self._awaiting = self._awaiting, {}
            for pack in awaiting.values():  # a lost connection: not acknowledged
                self._sent(pack, None)
                if pack.round is not None:
                    pack.round.done.set()  # its wait ends; `left` says it failed
            self._window_lock = None

    async def _work_on(self, client: aiomqtt.Client) -> None:
        await self._announce(client)
        self._spool_news = True  # a new connection starts at the oldest spooled message
        while not self._stop.is_set():
            if self._availability_dirty:
                self._availability_dirty = False
                await self._retained(client, self.topics.availability, self._availability)
            if self._metadata_dirty:
                self._metadata_dirty = False
                await self._retained(client, self.topics.metadata, self._metadata)
            self._wake.clear()  # before the peek: a notify() during the batch is not missed
            if self._undeleted and (
                len(self._undeleted) >= DELETE_BATCH or time.monotonic() >= self._delete_due
            ):
                await self._delete()
            if self._live_queue and self._live_ready:  # offered: not in the spool's order
                await self._publish(client, [], await self._take_live())
                if not self._spool_news:  # else the spool's turn: no starving it under load
                    continue
            if self._live_ready and not self._spool_news and time.monotonic() < self._poll_due:
                # nothing new was stored for the drain (notify, settle and a failure say so):
                # no peek, whose thread hop and wait for the spool's lock (held through a
                # group's fsync) would hold back the next live message
                await self._idle()
                continue
            if self._live_open and self._live_unsettled and not self._spool_news:
                await self._idle()  # the last held messages are being stored: settle() wakes
                continue
            self._spool_news = False
            self._poll_due = time.monotonic() + self._poll_interval
            held = self._live_unsettled  # before the peek: what is held is stored by then
            handed = self._handed_to_spool  # and more handed over during it: not seen by it
            after = max(self._undeleted, default=0)
            live_before = set(self._live_seqs)  # acknowledged during the peek: still left out
            peeked = await asyncio.to_thread(self._spool.peek, self._batch, after)
            in_flight = live_before | self._live_seqs  # and those stored in flight meanwhile
            batch = [(seq, m) for seq, m in peeked if seq not in in_flight]
            if batch:
                self._spool_news = True  # there may be more
                await self._publish(client, batch, [])
                continue
            self._caught_up(held, handed)
            if self._live_queue or not self._live_ready:
                continue  # publish the queue, or peek again once the held are stored
            await self._idle()
        if self._awaiting:  # a clean stop: their PUBACKs first
            self._all_acked = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._publish_timeout):
                    await self._all_acked.wait()
            self._all_acked = None
        if self._undeleted:
            await self._delete()  # a clean stop leaves nothing to publish twice
        await client.publish(self.topics.availability, OFFLINE, qos=1, retain=True, timeout=5.0)

    def _caught_up(self, held: int, handed: int) -> None:
        """The drain's peek found nothing left to publish: offers join the live queue from
        now on. The queue may go once nothing handed to the spool is left: when the peek
        began, all of it was stored (`held`: none unsettled), and none was handed over while
        it ran (`handed`: the count then). Otherwise another peek decides, once the held
        messages are stored: until then the queue waits behind them."""
        self._live_open = True
        if not held and handed == self._handed_to_spool:
            self._live_ready = True

    async def _take_live(self) -> list[Offered]:
        """The offered messages to publish now; under load (LIVE_BUSY), once LIVE_GATHER_S
        has passed since the last ones were taken, so that more of them join."""
        since = time.monotonic() - self._live_flushed
        if self._live_busy and since < LIVE_GATHER_S:
            await asyncio.sleep(LIVE_GATHER_S - since)
        self._live_flushed = time.monotonic()
        self._live_busy = len(self._live_queue) >= LIVE_BUSY
        live, self._live_queue = self._live_queue, []
        return live

    async def _idle(self) -> None:
        """Wait for news (an offer, a notify), a deletion due or the next poll of the spool."""
        wait = max(0.0, self._poll_due - time.monotonic())
        if self._undeleted:
            wait = max(0.0, min(wait, self._delete_due - time.monotonic()))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self._wake.wait()

    async def _receive(self, client: aiomqtt.Client) -> None:
        """Hands each message on the subscriptions to on_message, one at a time, in order;
        ends (with MqttError) when the connection is lost, which is how aiomqtt tells it."""
        async for message in client.messages:
            if self._on_message is None or not isinstance(message.payload, bytes):
                continue
            try:
                await self._on_message(str(message.topic), message.payload)
            except Exception:  # a bug in a handler must not cost the connection
                log.exception("MQTT message on %s: handler failed", message.topic)

    async def _retained(self, client: aiomqtt.Client, topic: str, payload: bytes) -> None:
        await client.publish(topic, payload, qos=1, retain=True, timeout=self._publish_timeout)

    async def _announce(self, client: aiomqtt.Client) -> None:
        self._availability_dirty = False
        await self._retained(client, self.topics.availability, self._availability)
        self._metadata_dirty = False
        await self._retained(client, self.topics.metadata, self._metadata)
        for topic_filter in self._subscriptions:  # after every connect: the session is clean
            await client.subscribe(topic_filter, qos=1, timeout=self._publish_timeout)
        self._connections += 1
        if self._connections > 1:
            self.reconnects += 1
        self.connected = True
        c = self.config
        if self._outage_since is not None:
            log.info(
                "MQTT connected to %s:%d again after %.0f s (%d failed attempts)",
                c.host,
                c.port,
                time.monotonic() - self._outage_since,
                self._failed_attempts,
            )
        else:
            log.info("MQTT connected to %s:%d as %s", c.host, c.port, self.client_id)
        self._outage_since = None
        self._failed_attempts = 0

    def _packs(
        self, spooled: Sequence[tuple[int, OutMessage]], live: Sequence[Offered]
    ) -> list[_Pack]:
        """The messages as MQTT messages to publish, in order: the SenML messages of one topic
        joined (senml.join, at most PACK_BYTES), each other message alone. A pack takes a
        topic's next message only while no message of another topic of the same node or zone
        came between them, so what one node sent stays in order across its topics too."""
        packs: list[_Pack] = []
        open_packs: dict[str, _Pack] = {}  # by topic
        last_topic: dict[str, str] = {}  # by the topic's node or zone: the latest one taken
        items: list[tuple[int | None, OutMessage, Offered | None]] = [
            (seq, m, None) for seq, m in spooled
        ]
        items.extend((None, o.message, o) for o in live)
        for seq, message, offered in items:
            topic = message.topic
            joinable = not message.retain and self.topics.carries_senml(topic)
            pack = None
            if joinable:
                source = topic.rpartition("/")[0]  # {base}/node/{id} or {base}/zone/{zone}
                if last_topic.get(source, topic) == topic:
                    pack = open_packs.get(topic)
                last_topic[source] = topic
                if pack is not None and pack.size + len(message.payload) > PACK_BYTES:
                    pack = None
            if pack is None:
                pack = _Pack(topic, message.retain)
                packs.append(pack)
                if joinable:
                    open_packs[topic] = pack
            pack.messages.append(message)
            pack.size += len(message.payload)
            if offered is None:
                assert seq is not None  # noqa: S101 - spooled items have one
                pack.seqs.append(seq)
            else:
                pack.offered.append(offered)
        return packs

    async def _publish(
        self,
        client: aiomqtt.Client,
        spooled: Sequence[tuple[int, OutMessage]],
        live: Sequence[Offered],
    ) -> None:
        """Publish in order, with at most `window` MQTT messages of the connection awaiting
        their PUBACK. Spooled messages: returns once all are acknowledged (or raises), so the
        next peek starts after them. Offered messages: returns once they are sent; each
        pack's PUBACK is accounted for when it comes (_puback). Pipelining them matters: a
        broker with Nagle's algorithm on (Mosquitto's default) holds back the PUBACKs after
        the first of a burst until it sees our next segment, so waiting for a whole burst
        before sending more cost up to 40 ms (the delayed-ack timer) per burst.

        The data's PUBLISHes go to paho directly, their PUBACKs come back through paho's
        on_publish (hooked in _work): aiomqtt's publish() costs a future, an event, a
        semaphore and a coroutine chain per message, which at thousands of messages a second
        was a third of the gateway's time. The connection, its errors and everything else
        stay aiomqtt's."""
        window, paho = self._window_lock, self._paho
        assert window is not None and paho is not None  # noqa: S101 - set in _work
        packs = self._packs(spooled, live)
        for offered in live:
            offered.state = INFLIGHT
        drain = _Round(len(packs)) if spooled else None
        for i, pack in enumerate(packs):
            try:
                await window.acquire()
            except BaseException:
                self._never_sent(packs[i:])
                raise
            if self._stop.is_set() or self._window_lock is not window:
                window.release()
                self._never_sent(packs[i:])
                return
            payload = pack.messages[0].payload
            if len(pack.messages) > 1:
                payload = senml.join([m.payload for m in pack.messages], self.config.payload)
            pack.round = drain
            info = paho.publish(pack.topic, payload, qos=1, retain=pack.retain)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:  # the connection is gone
                window.release()
                self._never_sent(packs[i:])
                raise aiomqtt.MqttCodeError(info.rc, "could not publish")
            self._awaiting[info.mid] = pack
        if drain is not None and drain.left > 0:
            await drain.done.wait()
            if drain.left > 0:  # the connection ended first
                raise aiomqtt.MqttError("connection lost while publishing")

    def _puback(self, mid: int) -> None:
        """The broker acknowledged one of our PUBLISHes (paho's on_publish)."""
        pack = self._awaiting.pop(mid, None)
        if pack is None:
            return  # aiomqtt's own (announcements)
        if self._window_lock is not None:
            self._window_lock.release()
        self._sent(pack, time.time())
        if pack.round is not None:
            pack.round.left -= 1
            if not pack.round.left:
                pack.round.done.set()
        if not self._awaiting and self._all_acked is not None:
            self._all_acked.set()

    def _never_sent(self, packs: Sequence[_Pack]) -> None:
        for pack in packs:
            for offered in pack.offered:
                self._fail(offered)

    def _sent(self, pack: _Pack, acked_at: float | None) -> None:
        """Count an acknowledged pack and set its spooled messages aside for deletion; the
        offered messages of one not acknowledged fail (see _fail).

        Synchronous, so a cancellation (the connection was lost) cannot separate a PUBACK
        from its count. `published` counts PUBACKs: a message whose delete is interrupted is
        sent and counted again (at least once)."""
        if acked_at is None:
            for offered in pack.offered:
                self._fail(offered)
            return
        acked_seqs = list(pack.seqs)
        for offered in pack.offered:
            offered.state = ACKED
            self._live_inflight -= 1
            if offered.seq is not None:
                self._live_seqs.discard(offered.seq)
                acked_seqs.append(offered.seq)
        self._published(pack.messages, acked_at)
        if acked_seqs:
            # Deleted later, several batches in one transaction (_work). A crash before the
            # delete means duplicates, never a loss.
            self._set_aside(acked_seqs)

    def _fail(self, offered: Offered) -> None:
        """An offered message that was not acknowledged: the spool publishes it (it stores it
        if it has not yet), after the messages before it. The live path closes until then."""
        self._live_open = self._live_ready = False
        self._handed_to_spool += 1
        if offered.state in (QUEUED, INFLIGHT):
            self._live_inflight -= 1
        offered.state = FAILED
        if not offered.settled:
            self._live_unsettled += 1  # settle() counts it off once it is stored
        elif offered.seq is not None:
            self._live_seqs.discard(offered.seq)  # in the spool: the drain publishes it
            self._spool_news = True

    def _set_aside(self, seqs: list[int]) -> None:
        """Acknowledged spooled messages, deleted in groups (_delete)."""
        if not self._undeleted:
            self._delete_due = time.monotonic() + self._delete_after
        self._undeleted.extend(seqs)
        self._spool.published(seqs)  # no longer waiting, though still in the file

    async def _delete(self) -> None:
        """Delete the published messages set aside; what the disk refuses stays set aside for
        the next try (the spool's health logs the failure)."""
        # taken out first: PUBACKs set more aside while the delete runs in its thread, and a
        # delete interrupted here (a lost connection) still runs to its end there
        pending, self._undeleted = self._undeleted, []
        try:
            await asyncio.to_thread(self._spool.delete, pending)
        except StorageError:
            self._undeleted = pending + self._undeleted
            self._delete_due = time.monotonic() + self._delete_after
        else:
            if self._undeleted:
                self._delete_due = time.monotonic() + self._delete_after

    def _published(self, messages: Sequence[OutMessage], acked_at: float) -> None:
        self.published += len(messages)
        if self._on_published is not None:
            latencies = [
                None if m.created is None else max(0.0, acked_at - m.created) for m in messages
            ]
            try:
                self._on_published(latencies)
            except Exception:
                log.exception("on_published callback failed")

    # -- errors --------------------------------------------------------------------------------

    def _lost(self, reason: str, exc: BaseException | None = None) -> None:
        """One warning per outage (its first error); a changed reason at info, repeats at debug.

        `exc` is an error that is not about the connection (a bug, a failing spool): logged
        as an error with its stack trace, once for as long as it stays the same."""
        c = self.config
        first = self._outage_since is None
        if first:
            self._outage_since = time.monotonic()
        self._failed_attempts += 1
        if exc is not None:
            if reason != self._last_unexpected:
                log.error("MQTT uplink: %s; retrying with backoff", reason, exc_info=exc)
                self._last_unexpected = reason
            else:
                log.debug("MQTT uplink: %s (again)", reason)
        elif first:
            log.warning(
                "MQTT broker %s:%d: %s; retrying with backoff (at most %g s apart)",
                c.host,
                c.port,
                reason,
                self._backoff.maximum,
            )
        elif reason != self.last_error:
            log.info("MQTT broker %s:%d still unreachable: %s", c.host, c.port, reason)
        else:
            log.debug("MQTT broker %s:%d: %s (again)", c.host, c.port, reason)
        self.last_error = reason


async def _cancel(task: asyncio.Task[Any]) -> None:
    """Cancel a task and wait for it, retrieving its outcome (no "never retrieved" noise)."""
    if not task.done():
        task.cancel()
    await asyncio.wait((task,))  # raises only if the caller itself is cancelled
    if not task.cancelled():
        task.exception()


def _abandon(client: aiomqtt.Client) -> None:
    """A connect attempt that failed (no CONNACK in time, or cancelled): reset its socket.

    aiomqtt leaves it open, with its CONNECT sent. A broker that was only slow (stalled, or
    busy: its kernel still accepts connections) would read that CONNECT later and connect the
    abandoned client under our client id, taking over the connection that replaced it; and
    aiomqtt would log that client's disconnection as a future's exception nobody retrieved. A
    reset (SO_LINGER 0) makes the broker's kernel drop what it has not read, so the CONNECT is
    never read; closing the socket through paho has aiomqtt stop watching it."""
    paho = client._client  # aiomqtt's paho client, as in Uplink._work
    sock = paho.socket()
    if sock is None:
        return  # the TCP connection itself failed: nothing was sent
    if isinstance(sock, socket.socket):  # ssl.SSLSocket too
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    paho._sock_close()  # private: paho has no public way to drop a connection unsent


def _describe(exc: aiomqtt.MqttError, socket_error: str | None = None) -> str:
    """One line that says what went wrong and, where we know, what to do."""
    if isinstance(exc, MqttConnectError):
        text = f"broker refused the connection: {exc}"
        lowered = text.lower()
        if "authori" in lowered or "user name" in lowered or "password" in lowered:
            text += " (check mqtt.username and mqtt.password_file)"
        return text
    cause = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    if str(exc).startswith("Disconnected during message iteration"):  # from _receive
        if socket_error:
            return f"connection lost: {socket_error}"
        if "Keep alive timeout" in str(cause):
            return "connection lost: the broker did not answer within the keepalive"
        return "connection lost: closed by the broker"
    text = str(exc) or type(exc).__name__
    if cause is not None and str(cause) and str(cause) not in text:
        text = f"{text}: {cause}"
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        text += " (check mqtt.ca_file and that the broker's certificate names mqtt.host)"
    return text


def _no_delay(paho: mqtt.Client) -> None:
    """TCP_NODELAY on the connection: paho leaves Nagle's algorithm on, which holds a small
    PUBLISH back until the broker acknowledged the previous segment (up to 40 ms with delayed
    acks) and so delayed every message of a quiet gateway."""
    sock = paho.socket()
    if isinstance(sock, socket.socket):  # an SSLSocket too; not a websocket wrapper
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _metadata_json(metadata: Mapping[str, Any]) -> bytes:
    return json.dumps(dict(metadata), sort_keys=True, separators=(",", ":")).encode()


def _check_private(path: Path, key: str) -> None:
    """A credential file others can read is refused: anyone on the gateway could take it."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror}") from None
    if mode & 0o007:
        raise ConfigError(
            key,
            f"{path} can be read by every user of this machine (mode {mode & 0o777:o}): "
            f"chmod o-rwx {path} (600, or 640 for the gateway's group)",
        )


def _read_password(config: MqttConfig) -> str | None:
    if config.password_file is None:
        return None
    _check_private(config.password_file, "mqtt.password_file")
    try:
        text = config.password_file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            "mqtt.password_file", f"cannot read {config.password_file}: {exc.strerror}"
        ) from None
    password = text.rstrip("\r\n")
    if not password:
        raise ConfigError("mqtt.password_file", f"{config.password_file} is empty")
    return password


def _tls_context(config: MqttConfig) -> ssl.SSLContext | None:
    """TLS 1.2+, the broker's certificate checked against ca_file (else the system's CAs) and
    mqtt.host; a client certificate when cert_file and key_file are given."""
    if not config.tls:
        return None
    key = "mqtt.ca_file"
    try:
        ca = None if config.ca_file is None else str(config.ca_file)
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if config.cert_file is not None and config.key_file is not None:
            _check_private(config.key_file, "mqtt.key_file")
            key = "mqtt.cert_file"
            context.load_cert_chain(config.cert_file, config.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(key, f"cannot load: {exc}") from None
    return context


__all__ = ["OFFLINE", "ONLINE", "Backoff", "Offered", "OnPublished", "SpoolQueue", "Uplink"]
