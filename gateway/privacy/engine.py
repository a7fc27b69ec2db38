"""The privacy engine: applies a privacy policy (policy.py) to every verified message.

    ingest ──message──► PolicyEngine.process ──► records of "pass" streams (at once)
                              │
                              └──► windows (bounded state, RAM only)
    timer (every second) ──► PolicyEngine.release_due(now) ──► one record per window, once

Nothing personal crosses it (ARCHITECTURE.md, rule 4): what comes out are Records, and a
Record never holds a device address, a key or an unkeyed hash of an address.

What happens to a message:

- **Default deny.** The stream that selects it is `policy.stream_for(message, quantity)`. What
  no stream selects is dropped and counted in `dropped` by reason: "unselected" (a whole
  status, event or observations message), "unselected_quantity" (one reading value).
- **pass** streams (node health and events in the default policy; readings if a policy says
  so) give one record per message, as it came, in SenML units (passthrough.py).
- **aggregate** readings streams: each value goes to its stream's window (windows.py) of the
  node's zone (or the node), timed by the node's clock when it sent one, else by its arrival
  (a node clock more than MAX_AHEAD_S ahead of the gateway's is not believed: arrival).
- **observations** (personal data): each address becomes a keyed pseudonym (pseudonyms.py)
  at once, and only the pseudonym goes into the window's set; the address is not kept, not
  even there. Observations are timed by their arrival.
- A value or sighting for a window that was released already is dropped as "late"; one
  beyond a window's or a stream's bound as "overflow" (windows.py).

What leaves, once per window (`release_due(now)`, called every second by the service's
"privacy-windows" task; a window is released when `now` reaches its end, also when no frame
arrives, and its state is discarded):

- one record of kind "aggregate": time = the window's start, msg_id
  `{gateway}:{stream}:{group}:{window_start}` (group: the zone, or the node id), node_id 0 for
  a zone (the node for streams grouped by node), and measurements named
  `{quantity}_{statistic}` (`temperature_mean`, in the quantity's SenML unit; `_count` in
  "count"), or `devices` (unit "count") for observation streams. Readings streams release a
  window only if it holds values; with `k`, a quantity with fewer than k values in the window
  has its statistics released as "suppressed".
- counts of devices (observation streams, which the policy requires to have k and noise):
  1. the privacy budget is booked in the ledger (ledger.py) BEFORE anything else: a release
     that would take the stream's (zone's, day's) total beyond `daily_cap` is refused, counted,
     logged once per stream, zone and day, and released as the string "withheld: budget";
  2. the true number of distinct pseudonyms gets discrete Laplace noise from OpenDP
     (dp.noisy_count), clamped at 0;
  3. small-count suppression: a NOISY count below k is released as "suppressed". Suppressing
     on the noisy value (not the true one) keeps the decision post-processing of the DP
     release, so it cannot leak anything the noisy count does not; a true count of 0..k-1 is
     still usually suppressed, because the noise is small against k in sensible policies.
  To keep even the existence of a release independent of whether anyone was there, every
  window of every known group (a zone, or a node, that this engine has heard from or was told
  of with `add_node`) is released, with a count of 0 when nobody was seen: the number and
  timing of releases and budget refusals depend only on time and on which nodes exist.
- `forward_pseudonyms = true` (which no default sets) adds the window's truncated pseudonyms
  as hex strings ("pseudonym" entries, sorted), but only in windows whose count was released
  (neither suppressed nor withheld). It discloses the exact count, so a stream that forwards
  pseudonyms has no differential privacy worth the name; the engine logs a warning.
- every record, forwarded or released, carries the policy's hash (SenML field "policy").

`budget_report()` gives today's spending per stream and zone, for the service to publish.

**Reload** (`reload(new_policy)`, on SIGHUP in the service): the new policy applies to every
message from then on; no window state is lost. Streams are matched by name:

- a stream that still exists with the same shape (message, window_minutes, group_by, and for
  observations pseudonym_bits and the key rotation period) keeps its open windows and its
  pseudonym key; its new definition (quantities, statistics, k, noise, forward_pseudonyms)
  applies when those windows are released, under the new policy's hash. Values of quantities
  it no longer selects are dropped from them at release; newly selected ones are collected
  from the reload on.
- a stream that disappeared, or whose shape changed, releases what its open windows hold at
  once, under its old definition and the old policy's hash (and booking its budget as always),
  with msg_id `{gateway}:{stream}:{group}:{window_start}:reload`; its key is destroyed. A
  changed stream then starts afresh like a new one.
- a new stream starts with empty windows at the reload.

`reload` refuses (ConfigError, nothing changed) a policy this engine cannot apply.

Concurrency: the engine has no lock (a lock would cost the hot path more than its privacy
work). `process`, `detach_due`, `apply`, `add_node` and `close` belong to one thread (the
event loop). `release(due)`, which books budget in the ledger (an fsync), draws the noise and
builds the records of windows already detached, touches nothing else of the engine but its
counters and may run in a worker thread; `release_due(now)` and `reload(policy)` are the
one-thread forms of detach-then-release.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from typing import Protocol as TypingProtocol

from protocol import Event, Message, Observations, Readings, Status
from protocol.messages import EVENT_CODES
from protocol.quantities import QUANTITIES, exponent, quantity_id, quantity_name, senml_unit

from ..errors import ConfigError, StorageError
from ..records import KINDS, Measurement, Record
from . import dp, passthrough
from .ledger import PrivacyLedger, utc_day
from .policy import Noise, Policy, Stream
from .pseudonyms import Pseudonymizer, rotation_seconds
from .windows import MAX_DEVICES, PERCENTILES, Group, Stats, StreamWindows, Window, window_start

MOTION_EVENT = EVENT_CODES.index("motion")


def reveals_presence(message: Message) -> bool:
    """A message whose very number says whether people were near: BLE sightings and PIR
    motion events (a node sends them only when someone is there). Nothing may count them per
    node, or even per gateway, outside the policy's protected figures: no metric, no log
    line, no status field."""
    return isinstance(message, Observations) or (
        isinstance(message, Event) and message.code == MOTION_EVENT
    )


log = logging.getLogger("edgeveil.privacy")

MAX_AHEAD_S = 60.0  # a node's time further ahead of the gateway's than this is not believed
DROP_REASONS = ("unselected", "unselected_quantity", "late", "overflow")
OUTCOMES = ("released", "suppressed", "withheld")
SUPPRESSED = "suppressed"
WITHHELD = "withheld: budget"
WITHHELD_ERROR = "withheld: ledger error"

NoisyCount = Callable[[int, Noise], int]


class PrivacyStage(TypingProtocol):
    """What the ingest stage calls for every new, verified message: process() between stage()
    and commit(), so that a message joins its window only once its frame's outcome is stored
    (two-phase acceptance: a frame the spool refused comes again, and counts once)."""

    def stage(self) -> None: ...

    def process(
        self, node_id: int, zone: str, counter: int, message: Message, arrival: float
    ) -> list[Record]: ...

    def commit(self, stored: Callable[[int, int], bool]) -> None: ...

    @property
    def policy_hash(self) -> str:
        """The hash of the policy in force: what the gateway's own alarm leaves under."""
        ...


def _shape(stream: Stream) -> tuple[Any, ...]:
    """What a stream's open windows and keys depend on (see "Reload" above)."""
    rotation = rotation_seconds(stream) if stream.personal else 0
    bits = stream.pseudonym_bits if stream.personal else 0
    return (stream.message, stream.action, stream.window_minutes, stream.group_by, bits, rotation)


class _State:
    """One stream at run time: its definition, its windows and (observations) its key."""

    __slots__ = (
        "by_zone",
        "keep_samples",
        "opened",
        "policy_hash",
        "pseudonymizer",
        "shape",
        "since",
        "stream",
        "windows",
    )

    def __init__(self, stream: Stream, policy_hash: str, now: float, token_bytes: Any) -> None:
        self.shape = _shape(stream)
        self.by_zone = stream.group_by == "zone"
        self.windows: StreamWindows | None = None
        self.pseudonymizer: Pseudonymizer | None = None
        if stream.action == "aggregate":
            self.windows = StreamWindows(stream.window_minutes * 60, released_until=now)
        if stream.personal:
            self.pseudonymizer = Pseudonymizer(
                rotation_seconds(stream), stream.pseudonym_bits, token_bytes=token_bytes
            )
        self.stream = stream
        self.policy_hash = policy_hash
        self.keep_samples = False
        self.since = now  # when it began collecting (the gateway's start, or a reload)
        self.opened = -1  # observations: the window start last opened for every known group
        self.define(stream, policy_hash)

    def define(self, stream: Stream, policy_hash: str) -> None:
        self.stream = stream
        self.policy_hash = policy_hash
        self.keep_samples = any(s in PERCENTILES for s in stream.statistics)


@dataclass(frozen=True, slots=True)
class Due:
    """A detached window with what its release needs (captured when it was detached)."""

    stream: Stream
    policy_hash: str
    window: Window
    by_zone: bool
    suffix: str = ""
    since: float = 0.0  # the stream began collecting then (its window may begin earlier)
    until: float | None = None  # detached before its end (a reload): collected until then

    def covered_s(self) -> int | None:
        """Seconds of its window the release covers, when that is not the whole window: the
        gateway restarted or the policy changed within it (nothing is kept across either)."""
        w = self.window
        start = max(w.start, self.since)
        end = w.end if self.until is None else min(w.end, self.until)
        return None if (start, end) == (w.start, w.end) else max(0, int(end - start))


def check(policy: Policy) -> None:
    """Raise ConfigError if this engine cannot apply the policy as its statement describes."""
    for index, s in enumerate(policy.streams):
        where = f"streams[{index}] ({s.name})"
        if s.message in ("status", "event") and s.action != "pass":
            raise ConfigError(
                f"{where}.action", 'node health and events can only "pass"', policy.source
            )
        if s.noise is not None and not s.personal:
            raise ConfigError(
                f"{where}.noise",
                "noise is applied to counts of devices (observations) only",
                policy.source,
            )
        if s.personal and (s.noise is None or s.k is None):
            raise ConfigError(where, "observations need both k and noise", policy.source)
        if s.action == "aggregate" and s.group_by == "node" and s.name in KINDS:
            raise ConfigError(
                f"{where}.name",
                f"a stream grouped by node cannot be named {s.name!r} (a node topic)",
                policy.source,
            )


class PolicyEngine:
    """The privacy stage driven by a policy. See the module docstring."""

    def __init__(
        self,
        policy: Policy,
        gateway_id: str,
        ledger: PrivacyLedger,
        clock: Callable[[], float] = time.time,
        *,
        noisy_count: NoisyCount = dp.noisy_count,
        token_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        check(policy)
        self.gateway_id = gateway_id
        self.ledger = ledger
        self._clock = clock
        self._noisy_count = noisy_count
        self._token_bytes = token_bytes
        self._nodes: dict[int, str] = {}  # node id -> zone: the known groups
        self._refusals_logged: set[tuple[str, str, str]] = set()
        # what was dropped, by reason: messages ("unselected"), reading values
        # ("unselected_quantity"), values or sightings ("late", "overflow")
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        # The same for what says people were near (sightings, motion events), kept apart and
        # never exported (no metric, no log line): how many of them were dropped tells whether
        # and how many people were there, which only the released, protected figures may say.
        self.dropped_personal = {"unselected": 0, "late": 0, "overflow": 0}
        # releases by outcome: windows released; counts (observations) or quantities (readings
        # with k) suppressed; counts withheld (budget spent, or the ledger failed)
        self.releases = dict.fromkeys(OUTCOMES, 0)
        self.policy = policy
        self._states: dict[str, _State] = {}
        self._routes: dict[int, _State] = {}
        self._readings_windowed = False
        self._observations: _State | None = None
        self._status: _State | None = None
        self._event: _State | None = None
        # messages processed since stage(), for their windows at commit():
        # (node, zone, counter, message, arrival); None while not staging
        self._staged: list[tuple[int, str, int, Message, float]] | None = None
        now = clock()
        self._install(
            policy, {s.name: _State(s, policy.hash, now, token_bytes) for s in policy.streams}
        )

    def __repr__(self) -> str:  # counts only: never a key, a pseudonym or an address
        open_windows = sum(len(s.windows) for s in self._states.values() if s.windows)
        return (
            f"PolicyEngine(policy={self.policy.name!r}, hash={self.policy.hash[:12]}, "
            f"streams={len(self._states)}, open_windows={open_windows})"
        )

    @property
    def policy_hash(self) -> str:
        return self.policy.hash

    def _install(self, policy: Policy, states: dict[str, _State]) -> None:
        self.policy = policy
        self._states = states
        routes: dict[int, _State] = {}
        for qid, name, *_ in QUANTITIES:
            stream = policy.stream_for("readings", name)
            if stream is not None:
                routes[qid] = states[stream.name]
        self._routes = routes
        # whether any readings go into windows: if none do (a policy that only passes them),
        # readings are not staged for commit(), which would have nothing to add
        self._readings_windowed = any(r.windows is not None for r in routes.values())

        def one(message: str) -> _State | None:
            stream = policy.stream_for(message)
            return None if stream is None else states[stream.name]

        self._observations = one("observations")
        self._status = one("status")
        self._event = one("event")
        for s in policy.streams:
            if s.forward_pseudonyms:
                log.warning(
                    "stream %s forwards pseudonyms: the exact number of devices leaves the "
                    "gateway with them (no differential privacy for that stream)",
                    s.name,
                )

    def _event_selected(self, event: Event) -> bool:
        names = self._event.stream.events if self._event is not None else ()
        if not names:
            return True
        return event.code < len(EVENT_CODES) and EVENT_CODES[event.code] in names

    # -- messages in -----------------------------------------------------------------------

    def stage(self) -> None:
        """From now on, what process() adds to windows waits for commit()."""
        self._staged = []

    def commit(self, stored: Callable[[int, int], bool] = lambda _node, _counter: True) -> None:
        """Add the messages processed since stage() to their windows, those whose frame
        stored(node, counter) says is stored (the others' frames come again); stop staging."""
        staged, self._staged = self._staged or [], None
        for node_id, zone, counter, message, arrival in staged:
            if not stored(node_id, counter):
                continue
            if isinstance(message, Readings):
                self._readings(node_id, zone, counter, message, arrival, passing=False)
            elif isinstance(message, Observations):
                self._sightings(node_id, zone, message, arrival)

    def add_node(self, node_id: int, zone: str) -> None:
        """Make a node's group known (its windows are released even when nobody is seen)."""
        self._note_node(node_id, zone, self._clock())

    def process(
        self, node_id: int, zone: str, counter: int, message: Message, arrival: float
    ) -> list[Record]:
        if self._nodes.get(node_id) != zone:
            self._note_node(node_id, zone, arrival)
        if isinstance(message, Readings):
            if self._staged is not None:  # its windows at commit(); its pass record now
                if self._readings_windowed:
                    self._staged.append((node_id, zone, counter, message, arrival))
                return self._readings(node_id, zone, counter, message, arrival, windows=False)
            return self._readings(node_id, zone, counter, message, arrival)
        if isinstance(message, Observations):
            if self._staged is not None:
                self._staged.append((node_id, zone, counter, message, arrival))
            else:
                self._sightings(node_id, zone, message, arrival)
            return []
        if isinstance(message, Status) and self._status is not None:
            h = self._status.policy_hash
            gw = self.gateway_id
            status = passthrough.status_record(gw, node_id, zone, counter, message, arrival, h)
            return [] if status is None else [status]
        if isinstance(message, Event) and self._event is not None and self._event_selected(message):
            h = self._event.policy_hash
            gw = self.gateway_id
            return [passthrough.event_record(gw, node_id, zone, counter, message, arrival, h)]
        if reveals_presence(message):
            self.dropped_personal["unselected"] += 1
        else:
            self.dropped["unselected"] += 1
        return []

    def _readings(  # noqa: PLR0912, PLR0915 - the hot path, inlined on purpose
        self,
        node_id: int,
        zone: str,
        counter: int,
        message: Readings,
        arrival: float,
        *,
        windows: bool = True,
        passing: bool = True,
    ) -> list[Record]:
        """The message's values into their windows (unless not `windows`) and the record of
        its pass streams (unless not `passing`: then [])."""
        t: float = arrival if message.time is None else message.time
        if t > arrival + MAX_AHEAD_S:
            t = arrival
        routes = self._routes
        last: _State | None = None
        values: dict[int, Stats] | None = None  # of the window of the stream of the last value
        passed: list[int] | None = None
        unselected = 0
        for qid, value in message.values.items():
            state = routes.get(qid)
            if state is None:
                unselected += passing  # counted once, in the phase that passes
                continue
            stream_windows = state.windows
            if stream_windows is None:  # a pass stream
                if passing:
                    if passed is None:
                        passed = []
                    passed.append(qid)
                continue
            if not windows:
                continue
            if state is not last:
                last = state
                group: Group = zone if state.by_zone else node_id
                window = stream_windows.current.get(group)  # the fast path of windows.get()
                if window is None or not window.start <= t < window.end:
                    window = stream_windows.get(group, t, 0 if state.by_zone else node_id, zone)
                values = None if window is None else window.values
            if values is None:
                self.dropped["late" if stream_windows.late(t) else "overflow"] += 1
                continue
            stats = values.get(qid)
            if stats is None:
                stats = values[qid] = Stats(state.keep_samples)
            # Stats.add(value), inlined: this runs for every value of every readings frame
            n = stats.count
            if n == 0:
                stats.low = stats.high = value
            elif value < stats.low:
                stats.low = value
            elif value > stats.high:
                stats.high = value
            stats.count = n + 1
            stats.total += value
            if stats.samples is not None:
                stats.sample(n, value)
        if unselected:
            self.dropped["unselected_quantity"] += unselected
        if passed is None:
            return []
        first = routes[passed[0]]
        record = passthrough.readings_record(
            self.gateway_id, node_id, zone, counter, message, arrival, passed, first.policy_hash
        )
        return [] if record is None else [record]

    def _sightings(self, node_id: int, zone: str, message: Observations, arrival: float) -> None:
        state = self._observations
        dropped = self.dropped_personal
        if state is None or state.windows is None or state.pseudonymizer is None:
            dropped["unselected"] += 1
            return
        sightings = message.sightings
        windows = state.windows
        group: Group = zone if state.by_zone else node_id
        window = windows.current.get(group)  # the fast path of windows.get()
        if window is None or not window.start <= arrival < window.end:
            window = windows.get(group, arrival, 0 if state.by_zone else node_id, zone)
            if window is None:
                dropped["late" if windows.late(arrival) else "overflow"] += len(sightings)
                return
        devices = window.devices
        if len(devices) + len(sightings) <= MAX_DEVICES:  # window.add_devices' fast path
            if not state.pseudonymizer.add_sightings(arrival, sightings, devices):
                dropped["late"] += len(sightings)  # that period's key is gone (clock stepped back)
            return
        pseudonyms = state.pseudonymizer.pseudonyms(arrival, [a for a, _ in sightings])
        if pseudonyms is None:
            dropped["late"] += len(sightings)
            return
        lost = window.add_devices(pseudonyms)
        if lost:
            dropped["overflow"] += lost

    def _note_node(self, node_id: int, zone: str, t: float) -> None:
        """A node (and its group) is known: open the current window for it in observation
        streams, so that window is released whether or not anyone is seen."""
        self._nodes[node_id] = zone
        for state in self._states.values():
            if state.pseudonymizer is not None and state.windows is not None:
                if state.by_zone:
                    state.windows.get(zone, t, 0, zone)
                else:
                    state.windows.get(node_id, t, node_id, zone)

    # -- windows out -----------------------------------------------------------------------

    def release_due(self, now: float) -> list[Record]:
        """Release every window that ends at or before `now`, exactly once: detach_due(now)
        and then release() (which books budget in the ledger, an fsync)."""
        return self.release(self.detach_due(now))

    def detach_due(self, now: float) -> list[Due]:
        """Take every window that ends at or before `now` out of the engine (it can no longer
        be added to, nor released again), destroy keys whose period is over, and open the
        current window of every known group in observation streams. In memory only: call it
        from the thread that calls process(). Hand the result to release()."""
        due: list[Due] = []
        for state in self._states.values():
            windows = state.windows
            if windows is None:
                continue
            stream, h, by_zone = state.stream, state.policy_hash, state.by_zone
            since = state.since
            due.extend(Due(stream, h, w, by_zone, since=since) for w in windows.take_due(now))
            if state.pseudonymizer is not None:
                state.pseudonymizer.expire(now)
                start = window_start(now, windows.seconds)
                if start != state.opened:  # a new window: open it for every known group
                    state.opened = start
                    for node_id, zone in self._nodes.items():
                        if by_zone:
                            windows.get(zone, now, 0, zone)
                        else:
                            windows.get(node_id, now, node_id, zone)
        return due

    def reload(self, policy: Policy) -> list[Record]:
        """Apply a new policy without losing window state (module docstring, "Reload"):
        apply(policy), then release() what streams that went away held."""
        return self.release(self.apply(policy))

    def apply(self, policy: Policy) -> list[Due]:
        """Switch to a new policy (in memory; call it from the thread that calls process()).
        Returns the detached windows of streams that went away, for release()."""
        check(policy)
        now = self._clock()
        due: list[Due] = []
        old = self._states
        states: dict[str, _State] = {}
        for s in policy.streams:
            kept = old.get(s.name)
            if kept is not None and kept.shape == _shape(s):
                kept.define(s, policy.hash)
                states[s.name] = kept
            else:
                states[s.name] = _State(s, policy.hash, now, self._token_bytes)
        for name, state in old.items():
            if states.get(name) is state:
                continue
            if state.windows is not None:
                due.extend(
                    Due(
                        state.stream,
                        state.policy_hash,
                        w,
                        state.by_zone,
                        ":reload",
                        since=state.since,
                        until=now,
                    )
                    for w in state.windows.take_all()
                )
            if state.pseudonymizer is not None:
                state.pseudonymizer.destroy()
        self._install(policy, states)
        for node_id, zone in list(self._nodes.items()):
            self._note_node(node_id, zone, now)
        log.info("privacy policy %r (%s) applied", policy.name, policy.hash[:12])
        return due

    def close(self) -> None:
        """Destroy every key and forget every window (nothing is released)."""
        for state in self._states.values():
            if state.pseudonymizer is not None:
                state.pseudonymizer.destroy()
            if state.windows is not None:
                state.windows.take_all()

    def release(self, due: list[Due]) -> list[Record]:
        """The records of detached windows: budget booked first, then noise, suppression.
        Touches no engine state but counters: it may run in a worker thread."""
        out = []
        for d in due:
            try:
                record = self._release(d)
            except Exception:  # a bug must not stop the other releases (or the service)
                log.exception("stream %s: window %d not released", d.stream.name, d.window.start)
                continue
            finally:
                d.window.devices.clear()  # the window's state is discarded in any case
                d.window.values.clear()
            if record is not None:
                out.append(record)
        return out

    def _release(self, d: Due) -> Record | None:
        w, stream = d.window, d.stream
        group: Group = w.zone if d.by_zone else w.node_id
        measurements = self._count(d) if stream.personal else self._statistics(stream, w)
        if not measurements:
            return None
        covered = d.covered_s()
        if covered is not None:  # only part of the window: the message says which part
            measurements.append(Measurement("covered", "s", covered))
        msg_id = f"{self.gateway_id}:{stream.name}:{group}:{w.start}{d.suffix}"
        return Record(
            "aggregate",
            0 if d.by_zone else w.node_id,
            w.zone,
            float(w.start),
            msg_id,
            tuple(measurements),
            stream=stream.name,
            policy=d.policy_hash,
            group_by=stream.group_by,
        )

    def _statistics(self, stream: Stream, w: Window) -> list[Measurement]:
        out: list[Measurement] = []
        for qid in (quantity_id(q) for q in stream.quantities):
            stats = w.values.get(qid)
            if stats is None:
                continue
            name, unit, exp = quantity_name(qid), senml_unit(qid), exponent(qid)
            suppress = stream.k is not None and stats.count < stream.k
            if suppress:
                self.releases["suppressed"] += 1
            for stat, value in stats.compute(stream.statistics):
                u = "count" if stat == "count" else unit
                shown: float | int | str = SUPPRESSED if suppress else _in_unit(stat, value, exp)
                out.append(Measurement(f"{name}_{stat}", u, shown))
        if out:
            self.releases["released"] += 1
        return out

    def _count(self, d: Due) -> list[Measurement]:
        stream, w = d.stream, d.window
        noise = stream.noise
        if noise is None or stream.k is None:  # check() refuses such policies
            raise ConfigError(stream.name, "observations need both k and noise")
        label = w.zone if d.by_zone else f"node:{w.node_id}"
        day = utc_day(w.start)
        try:
            booked = self.ledger.try_spend(
                stream.name, label, day, dp.epsilon(noise), noise.daily_cap
            )
        except StorageError:  # nothing booked, so nothing released; the ledger's health logs it
            self.releases["withheld"] += 1
            return [Measurement("devices", "count", WITHHELD_ERROR)]
        except Exception:
            log.exception(
                "stream %s, %s: privacy ledger failed; window not released", stream.name, label
            )
            self.releases["withheld"] += 1
            return [Measurement("devices", "count", WITHHELD_ERROR)]
        if not booked:
            self.releases["withheld"] += 1
            self._log_refusal(stream, label, day, w.start)
            return [Measurement("devices", "count", WITHHELD)]
        noisy = self._noisy_count(len(w.devices), noise)  # only after the booking
        if noisy < stream.k:
            self.releases["suppressed"] += 1
            return [Measurement("devices", "count", SUPPRESSED)]
        self.releases["released"] += 1
        out = [Measurement("devices", "count", noisy)]
        if stream.forward_pseudonyms:
            out.extend(Measurement("pseudonym", "", p.hex()) for p in sorted(w.devices))
        return out

    def _log_refusal(self, stream: Stream, label: str, day: str, start: int) -> None:
        key = (stream.name, label, day)
        if key in self._refusals_logged:
            return
        if len(self._refusals_logged) > 10_000:  # bounded: older days are of no interest
            self._refusals_logged = {k for k in self._refusals_logged if k[2] == day}
        self._refusals_logged.add(key)
        cap = stream.noise.daily_cap if stream.noise else 0.0
        log.warning(
            "stream %s, zone %s: daily privacy budget %s spent; window %s not released "
            "(nor any later window of this stream and zone today)",
            stream.name,
            label,
            cap,
            time.strftime("%H:%M", time.gmtime(start)),
        )

    # -- reporting -------------------------------------------------------------------------

    def budget_report(self) -> dict[str, Any]:
        """Today's (UTC) privacy budget per stream with noise, and per zone what it spent."""
        policy = self.policy
        today = utc_day(self._clock())
        rows = self.ledger.day(today)
        streams: dict[str, Any] = {}
        for s in policy.streams:
            if s.noise is None:
                continue
            cap = s.noise.daily_cap
            zones = {
                r.zone: {
                    "spent": round(r.spent, 9),
                    "remaining": round(max(0.0, cap - r.spent), 9),
                    "releases": r.releases,
                    "withheld": r.refused,
                }
                for r in rows
                if r.stream == s.name
            }
            streams[s.name] = {
                "epsilon_per_release": dp.epsilon(s.noise),
                "daily_cap": cap,
                "zones": zones,
            }
        return {"policy": policy.name, "policy_hash": policy.hash, "day": today, "streams": streams}


def _in_unit(stat: str, value: int | float, exp: int) -> int | float:
    """A statistic of scaled integers in the quantity's SenML unit (count stays a count)."""
    if stat == "count":
        return value
    if isinstance(value, int) or value.is_integer():
        return passthrough.scaled(int(value), exp)
    return round(value * 10.0**exp, max(0, -exp) + 2)
