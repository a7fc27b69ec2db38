"""Privacy policies: a declarative TOML file that says, per stream, what may leave the gateway.

A policy is a list of streams. Each stream selects some data (a message type, and for readings
some quantities) and says what happens to it:

- pass:       forwarded per message, per node (only for data that is not personal: node health)
- aggregate:  collected over tumbling windows (1..60 minutes), grouped by zone (or node), and
              released once per window as statistics (count, sum, mean, min, max, percentiles);
              for observations the statistic is the number of distinct devices
- and, for counts derived from people or devices: small-count suppression (k) and differential
  privacy (discrete Laplace noise from OpenDP, epsilon per release, a daily cap per stream).

Everything a policy does not select is dropped (default deny). Device identifiers in
observations are replaced by keyed pseudonyms (keyed BLAKE2s under a random key kept in RAM and
replaced every `key_rotation_minutes`, at most 24 h) before anything else sees them; a stream
forwards pseudonyms only with `forward_pseudonyms = true`, which no default policy sets.

The policy also carries the register fields a city's sensor register asks for (Amsterdam's:
sensor type, organisation, contact, goal, legal ground, personal data, active until), from
which `edgeveil policy explain` writes the public transparency statement.

A loaded policy is immutable and has a hash (SHA-256 of its canonical JSON form) that every
forwarded message and the published statement carry.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import tomllib
from dataclasses import asdict, dataclass, field
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Any

from protocol.messages import EVENT_CODES
from protocol.quantities import QUANTITIES

from ..config import read_toml
from ..errors import ConfigError

MESSAGES = ("readings", "observations", "status", "event")
UNSET = "not set"  # how a policy marks a register field not filled in yet
STATISTICS = ("count", "sum", "mean", "min", "max", "p50", "p90", "p95", "p99")
DISTINCT = "distinct_devices"  # the statistic of observation streams
GROUP_BY = ("zone", "node")
MECHANISMS = ("discrete_laplace",)
QUANTITY_NAMES = tuple(q[1] for q in QUANTITIES)
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


@dataclass(frozen=True)
class Noise:
    """Differential privacy for a stream's released counts (and sums)."""

    mechanism: str = "discrete_laplace"
    epsilon: float = 0.5  # per release (one window of one zone)
    daily_cap: float = 2.0  # total epsilon per stream and zone per UTC day; beyond: refused
    max_contribution: int = 1  # per device per window (enforced): the sensitivity of a count


@dataclass(frozen=True)
class Stream:
    name: str
    message: str  # one of MESSAGES
    quantities: tuple[str, ...] = ()  # readings streams: which quantities; () = none
    action: str = "aggregate"  # "aggregate" or "pass"
    window_minutes: int = 15
    group_by: str = "zone"
    statistics: tuple[str, ...] = ("mean",)
    k: int | None = None  # suppress released counts below k
    noise: Noise | None = None
    pseudonym_bits: int = 64  # observations: truncation of the keyed pseudonym
    key_rotation_minutes: int | None = None  # None: every window
    forward_pseudonyms: bool = False
    retention: str = "not stored: released once per window, then discarded"
    events: tuple[str, ...] = ()  # event streams: which event names; () = all

    @property
    def personal(self) -> bool:
        """Whether the stream's input is personal data (device identifiers)."""
        return self.message == "observations"

    @property
    def rotation_minutes(self) -> int:
        return self.key_rotation_minutes or self.window_minutes


@dataclass(frozen=True)
class Register:
    """Fields of a public sensor register (Amsterdam's "sensorenregister" and the like)."""

    # each is text, or a table of texts by language ({ en = "...", nl = "..." }) so that a
    # statement in any of its languages quotes the operator in that language; a value
    # starting with "not set" is a field not filled in (the statement says so in its language)
    sensor_type: str | dict[str, str] = "environmental sensor node (edgeveil)"
    organisation: str | dict[str, str] = "not set"
    contact: str | dict[str, str] = "not set"
    goal: str | dict[str, str] = "not set"
    legal_ground: str | dict[str, str] = "not set"
    active_until: str = "not set"  # YYYY-MM-DD

    def text(self, name: str, language: str) -> str | None:
        """The field in `language` (else in English, else in the first language given);
        None when it is not filled in."""
        value = getattr(self, name)
        if isinstance(value, dict):
            value = value.get(language) or value.get("en") or next(iter(value.values()), "")
        return None if str(value).startswith(UNSET) else str(value)


@dataclass(frozen=True)
class Policy:
    name: str
    streams: tuple[Stream, ...]
    register: Register = field(default_factory=Register)
    source: str = ""

    @property
    def contains_personal_data(self) -> bool:
        return any(s.personal for s in self.streams)

    def canonical(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("source")
        return data

    @property
    def hash(self) -> str:
        """SHA-256 (hex) of the canonical JSON form: what messages and the statement carry."""
        text = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def stream_for(self, message: str, quantity: str | None = None) -> Stream | None:
        """The stream that selects this message (and quantity), or None: dropped."""
        for s in self.streams:
            if s.message != message:
                continue
            if message == "readings" and quantity not in s.quantities:
                continue
            return s
        return None


def windows_per_day(stream: Stream) -> int:
    """A stream's windows in a UTC day."""
    return 1440 // stream.window_minutes


def releases_per_day(stream: Stream) -> int | None:
    """The releases per group and day the stream's daily cap pays for (None: no noise)."""
    if stream.noise is None:
        return None
    return math.floor(stream.noise.daily_cap / stream.noise.epsilon + 1e-9)


def budget_shortfall(stream: Stream) -> int:
    """How many of a day's windows per group the daily cap leaves withheld (0 when it covers
    them all, or the stream has no noise)."""
    releases = releases_per_day(stream)
    return 0 if releases is None else max(0, windows_per_day(stream) - releases)


def _fail(key: str, problem: str, source: str) -> ConfigError:
    return ConfigError(key, problem, source)


def _names(
    data: dict[str, Any], key: str, default: tuple[str, ...], where: str, source: str
) -> tuple[str, ...]:
    value = data.get(key, list(default))
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise _fail(f"{where}.{key}", 'must be a list of names, e.g. ["a", "b"]', source)
    return tuple(value)


def _number(data: dict[str, Any], key: str, default: float, where: str, source: str) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(f"{where}.{key}", f"must be a number, got {value!r}", source)
    return float(value)


def _stream(data: Any, index: int, source: str) -> Stream:  # noqa: PLR0912, PLR0915 - one check per key
    where = f"streams[{index}]"
    if not isinstance(data, dict):
        raise _fail(where, "must be a table", source)
    known = set(Stream.__dataclass_fields__) - {"noise"} | {"noise"}
    for key in data:
        if key not in known:
            raise _fail(f"{where}.{key}", "unknown key", source)
    name = data.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise _fail(f"{where}.name", "must be lowercase letters, digits, _ (max 32)", source)
    where = f"streams[{index}] ({name})"
    message = data.get("message")
    if message not in MESSAGES:
        raise _fail(f"{where}.message", f"must be one of {', '.join(MESSAGES)}", source)
    quantities = _names(data, "quantities", (), where, source)
    for q in quantities:
        if q not in QUANTITY_NAMES:
            raise _fail(f"{where}.quantities", f"unknown quantity {q!r}", source)
    if message == "readings" and not quantities:
        raise _fail(f"{where}.quantities", "a readings stream must name its quantities", source)
    if message != "readings" and quantities:
        raise _fail(f"{where}.quantities", "only readings streams select quantities", source)
    action = data.get("action", "aggregate")
    if action not in ("aggregate", "pass"):
        raise _fail(f"{where}.action", 'must be "aggregate" or "pass"', source)
    if action == "pass" and message == "observations":
        raise _fail(
            f"{where}.action",
            "observations are personal data: they can only be aggregated",
            source,
        )
    window = data.get("window_minutes", 15)
    if not isinstance(window, int) or isinstance(window, bool) or not 1 <= window <= 60:
        raise _fail(f"{where}.window_minutes", "must be a whole number 1..60", source)
    group_by = data.get("group_by", "zone")
    if group_by not in GROUP_BY:
        raise _fail(f"{where}.group_by", f"must be one of {', '.join(GROUP_BY)}", source)
    default_stats = (DISTINCT,) if message == "observations" else ("mean",)
    statistics = _names(data, "statistics", default_stats, where, source)
    allowed = (DISTINCT,) if message == "observations" else STATISTICS
    for s in statistics:
        if s not in allowed:
            raise _fail(f"{where}.statistics", f"{s!r} is not one of {', '.join(allowed)}", source)
    k = data.get("k")
    if k is not None and (not isinstance(k, int) or isinstance(k, bool) or not 2 <= k <= 1000):
        raise _fail(f"{where}.k", "must be a whole number 2..1000", source)
    noise = None
    if "noise" in data:
        n = data["noise"]
        if not isinstance(n, dict):
            raise _fail(f"{where}.noise", "must be a table", source)
        for key in n:
            if key not in Noise.__dataclass_fields__:
                raise _fail(f"{where}.noise.{key}", "unknown key", source)
        contribution = n.get("max_contribution", 1)
        if not isinstance(contribution, int) or isinstance(contribution, bool):
            raise _fail(f"{where}.noise.max_contribution", "must be a whole number", source)
        noise = Noise(
            mechanism=n.get("mechanism", "discrete_laplace"),
            epsilon=_number(n, "epsilon", 0.5, f"{where}.noise", source),
            daily_cap=_number(n, "daily_cap", 2.0, f"{where}.noise", source),
            max_contribution=contribution,
        )
        if noise.mechanism not in MECHANISMS:
            raise _fail(f"{where}.noise.mechanism", f"must be one of {MECHANISMS}", source)
        if not 0 < noise.epsilon <= 10:
            raise _fail(f"{where}.noise.epsilon", "must be more than 0 and at most 10", source)
        if not noise.epsilon <= noise.daily_cap <= 100:
            raise _fail(f"{where}.noise.daily_cap", "must be epsilon..100", source)
        if not 1 <= noise.max_contribution <= 100:
            raise _fail(f"{where}.noise.max_contribution", "must be 1..100", source)
    if message == "observations" and (k is None or noise is None):
        raise _fail(
            where,
            "a stream of observations (people and devices) needs both k and noise",
            source,
        )
    bits = data.get("pseudonym_bits", 64)
    if not isinstance(bits, int) or isinstance(bits, bool) or not 32 <= bits <= 256 or bits % 8:
        raise _fail(f"{where}.pseudonym_bits", "must be a multiple of 8 in 32..256", source)
    rotation = data.get("key_rotation_minutes")
    if rotation is not None and (
        not isinstance(rotation, int) or isinstance(rotation, bool) or not 1 <= rotation <= 1440
    ):
        raise _fail(f"{where}.key_rotation_minutes", "must be 1..1440 (at most 24 h)", source)
    forward = data.get("forward_pseudonyms", False)
    if not isinstance(forward, bool):
        raise _fail(f"{where}.forward_pseudonyms", "must be true or false", source)
    retention = data.get("retention", Stream.retention)
    if not isinstance(retention, str):
        raise _fail(f"{where}.retention", "must be text", source)
    events = _names(data, "events", (), where, source)
    if events and message != "event":
        raise _fail(f"{where}.events", "only event streams select events", source)
    for e in events:
        if e not in EVENT_CODES:
            raise _fail(
                f"{where}.events", f"unknown event {e!r} (known: {', '.join(EVENT_CODES)})", source
            )
    return Stream(
        name=name,
        message=message,
        quantities=quantities,
        action=action,
        window_minutes=window,
        group_by=group_by,
        statistics=statistics,
        k=k,
        noise=noise,
        pseudonym_bits=bits,
        key_rotation_minutes=rotation,
        forward_pseudonyms=forward,
        retention=retention,
        events=events,
    )


def parse(data: dict[str, Any], source: str = "") -> Policy:  # noqa: PLR0912 - one check per key
    for key in data:
        if key not in ("name", "register", "streams"):
            raise _fail(key, "unknown key (known: name, register, streams)", source)
    name = data.get("name", "unnamed")
    if not isinstance(name, str):
        raise _fail("name", "must be text", source)
    register_data = data.get("register", {})
    if not isinstance(register_data, dict):
        raise _fail("register", "must be a table", source)
    for key, value in register_data.items():
        if key not in Register.__dataclass_fields__:
            raise _fail(f"register.{key}", "unknown key", source)
        by_language = isinstance(value, dict) and key != "active_until"
        if by_language and (
            not value
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
        ):
            raise _fail(f"register.{key}", 'a table of texts by language, e.g. { en = "...", '
                        'nl = "..." }', source)  # fmt: skip
        if not by_language and not isinstance(value, str):
            raise _fail(f"register.{key}", "must be text (or a table of texts by language)", source)
    register = Register(**register_data)
    if not register.active_until.startswith(UNSET):
        try:
            date.fromisoformat(register.active_until)
        except ValueError:
            raise _fail("register.active_until", "must be a date YYYY-MM-DD", source) from None
    raw_streams = data.get("streams", [])
    if not isinstance(raw_streams, list) or not raw_streams:
        raise _fail("streams", "a policy needs at least one [[streams]] table", source)
    streams = tuple(_stream(s, i, source) for i, s in enumerate(raw_streams))
    names = [s.name for s in streams]
    for n in names:
        if names.count(n) > 1:
            raise _fail("streams", f"two streams are named {n!r}", source)
    seen: set[tuple[str, str]] = set()
    for s in streams:
        selected = [(s.message, q) for q in s.quantities] or [(s.message, "")]
        for selection in selected:
            if selection in seen:
                kind, quantity = selection
                what = f"quantity {quantity}" if quantity else f"message {kind}"
                raise _fail(f"streams ({s.name})", f"{what} is selected by two streams", source)
            seen.add(selection)
    return Policy(name=name, streams=streams, register=register, source=source)


def load(path: Path) -> Policy:
    return parse(read_toml(path, "the policy"), str(path))


def default() -> Policy:
    """The default policy shipped with edgeveil (gateway/policies/default.toml)."""
    text = resources.files("gateway.policies").joinpath("default.toml").read_text("utf-8")
    return parse(tomllib.loads(text), "default policy")
