"""The privacy engine at unit level: pseudonyms, windows, statistics, suppression, the budget
ledger, default deny, pass streams, reload, memory bounds, and that no address given to the
engine ever comes out of it (records, SenML, reprs, logs). Fast and without network: the clock
is driven by hand, the noise is injected where a test needs exact numbers."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import logging
import pickle
import random
import statistics
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest

from gateway import config as config_mod
from gateway import senml
from gateway.errors import ConfigError
from gateway.privacy import PolicyEngine, PrivacyLedger, dp, passthrough
from gateway.privacy import policy as policy_mod
from gateway.privacy import windows as windows_mod
from gateway.privacy.engine import SUPPRESSED, WITHHELD, check
from gateway.privacy.ledger import utc_day
from gateway.privacy.passthrough import event_record, status_record
from gateway.privacy.policy import Noise, Policy
from gateway.privacy.pseudonyms import Pseudonymizer, rotation_seconds
from gateway.privacy.windows import MAX_SAMPLES, Stats, StreamWindows, percentile
from gateway.records import Measurement, Record, Topics, message_id
from gateway.service import load_policy
from protocol import Event, Message, Observations, Readings, Status
from protocol.quantities import quantity_id

T0 = 1_800_000_000  # a whole hour (and so a whole 15-minute window), UTC
W = 900  # 15 minutes
GW = "gw-1"
TOPICS = Topics("edgeveil", "site", GW)
ADDR = bytes.fromhex("a1b2c3d4e5f6")

POLICY = """
name = "test policy"

[[streams]]
name = "environment"
message = "readings"
quantities = ["temperature", "humidity"]
window_minutes = 15
statistics = ["count", "sum", "mean", "min", "max", "p50", "p90", "p95", "p99"]

[[streams]]
name = "people"
message = "observations"
window_minutes = 15
k = 2
noise = { epsilon = 0.5, daily_cap = 1.0 }

[[streams]]
name = "health"
message = "status"
action = "pass"
"""


def parse(text: str) -> Policy:
    return policy_mod.parse(tomllib.loads(text), "test")


def exact(n: int, noise: Noise) -> int:
    """No noise: exact counts for tests that check numbers (the real one is dp.noisy_count)."""
    return n


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[PrivacyLedger]:
    with PrivacyLedger.open(tmp_path / "privacy.db", today=utc_day(T0)) as led:
        yield led


def engine(
    ledger: PrivacyLedger,
    text: str = POLICY,
    *,
    now: float = T0,
    noisy: Callable[[int, Noise], int] = exact,
) -> PolicyEngine:
    return PolicyEngine(parse(text), GW, ledger, Clock(now), noisy_count=noisy)


def temp(*values: int, time: int | None = None) -> Readings:
    """Readings of temperature (0.1 °C), and humidity 50.0 %RH alongside."""
    return Readings({quantity_id("temperature"): values[0], quantity_id("humidity"): 500}, time)


def seen(*addresses: bytes) -> Observations:
    return Observations(0, [(a, -60) for a in addresses])


def by_name(record: Record) -> dict[str, Any]:
    return {m.name: m.value for m in record.measurements}


def one(records: list[Record], stream: str) -> Record:
    matching = [r for r in records if r.stream == stream]
    assert len(matching) == 1, records
    return matching[0]


# -- pseudonyms --------------------------------------------------------------------------------


def test_pseudonym_is_keyed_blake2s_of_the_identifier() -> None:
    keys: list[bytes] = []

    def token_bytes(n: int) -> bytes:
        keys.append(bytes(range(n)))
        return keys[-1]

    for bits in (32, 64, 128, 256):
        pz = Pseudonymizer(W, bits, token_bytes=token_bytes)
        got = pz.pseudonym(ADDR, T0)
        assert len(keys[-1]) == 32
        assert got == hashlib.blake2s(ADDR, key=keys[-1], digest_size=bits // 8).digest()
        assert got is not None and len(got) == bits // 8
        # the identifiers of sightings go straight into a window's set, the same pseudonyms
        devices: set[bytes] = set()
        assert pz.add_sightings(T0 + 1, [(ADDR, -60), (bytes(6), -70), (ADDR, -61)], devices)
        assert devices == {got, pz.pseudonym(bytes(6), T0)}


def test_pseudonyms_of_a_period_whose_key_is_gone_add_nothing() -> None:
    pz = Pseudonymizer(W, 64)
    devices: set[bytes] = set()
    assert pz.add_sightings(T0 + W, [(ADDR, -60)], devices) and len(devices) == 1
    assert not pz.add_sightings(T0 + W - 1, [(bytes(6), -60)], devices)  # an earlier period
    assert pz.expire(T0 + 2 * W)
    assert not pz.add_sightings(T0 + W + 1, [(bytes(6), -60)], devices)  # its key destroyed
    assert len(devices) == 1
    assert pz.add_sightings(T0 + 2 * W, [(bytes(6), -60)], devices) and len(devices) == 2


def test_pseudonyms_stable_within_a_period_unlinkable_across_periods(rng: random.Random) -> None:
    drawn: list[bytes] = []

    def token_bytes(n: int) -> bytes:
        drawn.append(rng.randbytes(n))
        return drawn[-1]

    pz = Pseudonymizer(W, 64, token_bytes=token_bytes)
    first = pz.pseudonym(ADDR, T0)
    assert pz.pseudonym(ADDR, T0 + W - 0.001) == first
    assert pz.pseudonym(bytes(6), T0 + 5) != first
    old_key = pz._key
    assert old_key is not None and any(old_key)
    second = pz.pseudonym(ADDR, T0 + W)  # the next period: a new key
    assert second != first
    assert old_key == bytearray(32)  # the old key was overwritten in place ...
    assert pz._key is not old_key  # ... and dropped
    assert pz.rotations == 2 and len(drawn) == 2 and drawn[0] != drawn[1]
    # the earlier period's key is gone: no pseudonym can be made for it again
    assert pz.pseudonym(ADDR, T0 + 10) is None


def test_key_destroyed_at_the_end_of_its_period_without_any_frame() -> None:
    pz = Pseudonymizer(W, 64)
    assert pz.pseudonym(ADDR, T0 + 1) is not None
    key = pz._key
    assert not pz.expire(T0 + W - 1)
    assert pz.expire(T0 + W)
    assert key == bytearray(32) and pz._key is None
    assert pz.pseudonym(ADDR, T0 + W - 1) is None  # that period is over for good
    assert pz.pseudonym(ADDR, T0 + W + 1) is not None  # a new period draws a new key


def test_pseudonymizer_shows_and_gives_away_nothing_secret() -> None:
    pz = Pseudonymizer(W, 64, token_bytes=lambda n: b"\x42" * n)
    p = pz.pseudonym(ADDR, T0)
    assert p is not None
    text = repr(pz)
    assert "42" * 4 not in text and p.hex() not in text and "key=set" in text
    with pytest.raises(TypeError):
        pickle.dumps(pz)
    with pytest.raises(TypeError):
        copy.copy(pz)
    with pytest.raises(TypeError):
        copy.deepcopy(pz)


def test_rotation_is_whole_windows_never_longer_than_the_policy_says() -> None:
    def stream(window: int, rotation: int | None) -> policy_mod.Stream:
        return policy_mod.Stream(
            "s", "observations", window_minutes=window, key_rotation_minutes=rotation
        )

    assert rotation_seconds(stream(15, None)) == 15 * 60
    assert rotation_seconds(stream(15, 60)) == 60 * 60
    assert rotation_seconds(stream(15, 20)) == 15 * 60  # rounded down to whole windows
    assert rotation_seconds(stream(15, 5)) == 15 * 60  # never inside a window
    assert rotation_seconds(stream(7, 1440)) == 1435 * 60  # at most 24 h


# -- windows: on time, exactly once ------------------------------------------------------------


def test_window_released_exactly_once_and_on_time_with_no_frames_arriving(
    ledger: PrivacyLedger,
) -> None:
    e = engine(ledger)
    e.process(1, "plein", 1, temp(215), T0 + 10)
    e.process(1, "plein", 2, temp(225), T0 + 20)
    assert e.release_due(T0 + W - 0.001) == []  # not before its end
    records = e.release_due(T0 + W)  # at its end, though no frame came since
    env = one(records, "environment")
    assert env.kind == "aggregate" and env.time == T0
    assert env.msg_id == f"{GW}:environment:plein:{T0}"
    assert by_name(env)["temperature_count"] == 2
    assert [r for r in e.release_due(T0 + W) if r.stream == "environment"] == []  # once only
    assert [r for r in e.release_due(T0 + 10 * W) if r.stream == "environment"] == []
    # a frame for the released window is late: counted and dropped, never released again
    e.process(1, "plein", 3, temp(300, time=T0 + 30), T0 + W + 5)
    assert e.dropped["late"] == 2  # its two values
    assert all(r.time != T0 for r in e.release_due(T0 + 20 * W))


def test_observation_window_released_for_a_known_zone_when_nobody_was_seen(
    ledger: PrivacyLedger,
) -> None:
    """Whether a count is published must not tell that someone was there."""
    e = engine(ledger)
    e.add_node(7, "plein")  # as the service does for every registered node
    e.process(8, "markt", 1, Status({"battery_mv": 4000}), T0 + 5)  # known by its status
    records = e.release_due(T0 + W)
    people = sorted((r for r in records if r.stream == "people"), key=lambda r: r.zone)
    assert [r.zone for r in people] == ["markt", "plein"]
    assert all(by_name(r) == {"devices": SUPPRESSED} for r in people)  # 0 < k
    # the next window too, with no frame at all in between
    assert len([r for r in e.release_due(T0 + 2 * W) if r.stream == "people"]) == 2


def test_windows_aligned_to_the_clock_and_grouped_by_zone_or_node(ledger: PrivacyLedger) -> None:
    text = POLICY.replace('["temperature", "humidity"]', '["temperature"]')
    text += """
[[streams]]
name = "hum"
message = "readings"
quantities = ["humidity"]
window_minutes = 5
group_by = "node"
statistics = ["max"]
"""
    e = engine(ledger, text, now=T0 + 301)
    e.process(1, "plein", 1, temp(215), T0 + 400)
    e.process(2, "plein", 1, temp(235), T0 + 500)
    records = e.release_due(T0 + 600)
    hum = sorted((r for r in records if r.stream == "hum"), key=lambda r: r.node_id)
    assert [(r.node_id, r.time, r.group_by) for r in hum] == [
        (1, T0 + 300, "node"),
        (2, T0 + 300, "node"),
    ]
    assert hum[0].msg_id == f"{GW}:hum:1:{T0 + 300}"
    assert senml.encode(hum[0], TOPICS, "senml+json").topic == "edgeveil/site/gw-1/node/1/hum"
    assert not [r for r in records if r.stream == "environment"]  # 15-minute window: not yet
    env = one(e.release_due(T0 + W), "environment")
    assert env.node_id == 0 and by_name(env)["temperature_mean"] == 22.5


def test_readings_timed_by_the_node_unless_its_clock_is_far_ahead(ledger: PrivacyLedger) -> None:
    e = engine(ledger)
    e.process(1, "plein", 1, temp(100, time=T0 + 5), T0 + W - 1)  # node time: this window
    e.process(1, "plein", 2, temp(200, time=T0 + 10 * W), T0 + 20)  # far ahead: arrival
    e.process(1, "plein", 3, temp(300, time=T0 + W + 30), T0 + W - 10)  # slightly: next one
    first = by_name(one(e.release_due(T0 + W), "environment"))
    assert first["temperature_count"] == 2 and first["temperature_mean"] == 15.0
    second = by_name(one(e.release_due(T0 + 2 * W), "environment"))
    assert second["temperature_count"] == 1


# -- statistics --------------------------------------------------------------------------------


def test_statistics_match_the_statistics_module(ledger: PrivacyLedger) -> None:
    rng = random.Random(7)
    values = [rng.randint(-150, 420) for _ in range(257)]
    e = engine(ledger)
    for i, v in enumerate(values):
        e.process(1 + i % 3, "plein", i, temp(v), T0 + 1 + i)
    got = by_name(one(e.release_due(T0 + W), "environment"))
    in_cel = [v / 10 for v in values]
    assert got["temperature_count"] == len(values)
    assert got["temperature_sum"] == pytest.approx(sum(in_cel), abs=1e-9)
    assert got["temperature_mean"] == pytest.approx(statistics.fmean(in_cel), abs=0.0005)
    assert got["temperature_min"] == min(in_cel) and got["temperature_max"] == max(in_cel)
    cuts = statistics.quantiles(in_cel, n=100, method="inclusive")
    for p in (50, 90, 95, 99):
        assert got[f"temperature_p{p}"] == pytest.approx(cuts[p - 1], abs=0.0005)
    assert got["temperature_p50"] == pytest.approx(statistics.median(in_cel), abs=0.0005)
    assert got["humidity_mean"] == 50.0 and got["humidity_p99"] == 50.0


def test_units_of_the_released_statistics(ledger: PrivacyLedger) -> None:
    e = engine(ledger)
    e.process(1, "plein", 1, temp(215), T0 + 1)
    env = one(e.release_due(T0 + W), "environment")
    units = {m.name: m.unit for m in env.measurements}
    assert units["temperature_mean"] == "Cel" and units["temperature_p90"] == "Cel"
    assert units["temperature_count"] == "count" and units["humidity_max"] == "%RH"
    assert by_name(env)["temperature_mean"] == 21.5  # not 21.500000000000004


def test_percentile_is_linear_between_closest_ranks() -> None:
    rng = random.Random(3)
    for n in (2, 3, 10, 101):
        data = sorted(rng.uniform(-5, 5) for _ in range(n))
        cuts = statistics.quantiles(data, n=100, method="inclusive")
        for p in range(1, 100):
            assert percentile(data, p) == pytest.approx(cuts[p - 1])
    assert percentile([4], 99) == 4.0


def test_samples_are_bounded_by_a_reservoir_and_the_rest_stays_exact() -> None:
    stats = Stats(keep_samples=True)
    n = 3 * MAX_SAMPLES
    for v in range(n):
        stats.add(v)
    assert stats.samples is not None and len(stats.samples) == MAX_SAMPLES
    got = dict(stats.compute(["count", "sum", "mean", "min", "max", "p50"]))
    assert got["count"] == n and got["sum"] == n * (n - 1) // 2
    assert got["min"] == 0 and got["max"] == n - 1 and got["mean"] == (n - 1) / 2
    assert got["p50"] == pytest.approx(n / 2, rel=0.05)  # an estimate from a uniform sample
    assert Stats(keep_samples=False).samples is None  # no percentile asked: no samples kept


# -- observations: one contribution per device and window, k, noise ------------------------------


def test_one_contribution_per_device_per_window(ledger: PrivacyLedger) -> None:
    e = engine(ledger)
    devices = [bytes([i]) * 6 for i in range(3)]
    for n in range(40):  # each device seen 40 times, by three nodes of the zone
        e.process(1 + n % 3, "plein", n, seen(*devices), T0 + 1 + n)
    assert by_name(one(e.release_due(T0 + W), "people")) == {"devices": 3}


@pytest.mark.parametrize("k", [2, 5])
@pytest.mark.parametrize("stat", policy_mod.STATISTICS)
def test_statistics_of_fewer_than_k_readings_are_suppressed_from_k_on_released(
    ledger: PrivacyLedger, stat: str, k: int
) -> None:
    """Both edges for every statistic: k - 1 readings in a window suppressed, k released."""
    text = POLICY.replace(
        'statistics = ["count", "sum", "mean", "min", "max", "p50", "p90", "p95", "p99"]',
        f'statistics = ["{stat}"]\nk = {k}',
    )
    e = engine(ledger, text)
    for window, readings in ((0, k - 1), (1, k)):
        for n in range(readings):
            e.process(1, "plein", window * 100 + n, temp(200 + n), T0 + window * W + 1 + n)
    first, second = (by_name(one(e.release_due(T0 + (w + 1) * W), "environment")) for w in (0, 1))
    assert first == {f"temperature_{stat}": SUPPRESSED, f"humidity_{stat}": SUPPRESSED}
    assert all(isinstance(v, int | float) for v in second.values()), second
    assert set(second) == set(first)


def test_small_counts_suppressed_on_the_noisy_value(ledger: PrivacyLedger) -> None:
    answers = iter([1, 2, 7])  # the "noisy" counts the mechanism returns, in turn

    def noisy(n: int, noise: Noise) -> int:
        return next(answers)

    text = POLICY.replace("daily_cap = 1.0", "daily_cap = 10.0")
    e = engine(ledger, text, noisy=noisy)
    many = [bytes([i]) * 6 for i in range(10)]
    e.process(1, "plein", 1, seen(*many), T0 + 1)  # 10 devices, but the noisy count is 1
    assert by_name(one(e.release_due(T0 + W), "people")) == {"devices": SUPPRESSED}
    e.process(1, "plein", 2, seen(ADDR), T0 + W + 1)  # 1 device, noisy 2 = k: released
    assert by_name(one(e.release_due(T0 + 2 * W), "people")) == {"devices": 2}
    assert by_name(one(e.release_due(T0 + 3 * W), "people")) == {"devices": 7}
    assert e.releases == {"released": 2, "suppressed": 1, "withheld": 0}


def test_noisy_count_from_opendp_is_a_non_negative_integer() -> None:
    noise = Noise(epsilon=0.5)
    counts = [dp.noisy_count(3, noise) for _ in range(300)]
    assert all(isinstance(c, int) and c >= 0 for c in counts)
    assert len(set(counts)) > 1  # noise indeed
    assert dp.epsilon(noise) == pytest.approx(0.5)
    assert dp.measurement(noise) is dp.measurement(Noise(epsilon=0.5))  # built once


def test_pseudonyms_forwarded_only_when_the_policy_says_so(ledger: PrivacyLedger) -> None:
    e = engine(ledger, policy_text(policy_mod.default()))
    e.process(1, "plein", 1, seen(*(bytes([i]) * 6 for i in range(9))), T0 + 1)
    people = one(e.release_due(T0 + 3600), "people")  # the default counts people hourly
    assert [m.name for m in people.measurements] == ["devices"]  # default: the count only

    text = POLICY.replace("k = 2", "k = 2\nforward_pseudonyms = true\npseudonym_bits = 32")
    text = text.replace("daily_cap = 1.0", "daily_cap = 10.0")
    e = engine(ledger, text)
    e.process(1, "plein", 1, seen(ADDR, bytes(6)), T0 + 1)
    first = one(e.release_due(T0 + W), "people")
    e.process(1, "plein", 2, seen(ADDR, bytes(6)), T0 + W + 1)
    second = one(e.release_due(T0 + 2 * W), "people")
    p1 = [m.value for m in first.measurements if m.name == "pseudonym"]
    p2 = [m.value for m in second.measurements if m.name == "pseudonym"]
    assert len(p1) == 2 and p1 == sorted(p1) and all(len(str(p)) == 8 for p in p1)
    assert not set(p1) & set(p2)  # new key each window: the same devices are unlinkable
    e.process(1, "plein", 3, seen(ADDR), T0 + 2 * W + 1)  # one device: below k
    assert by_name(one(e.release_due(T0 + 3 * W), "people")) == {"devices": SUPPRESSED}


def policy_text(policy: Policy) -> str:
    """The TOML of a policy shipped as a resource (the default)."""
    assert policy.source == "default policy"
    return (Path(policy_mod.__file__).parent.parent / "policies" / "default.toml").read_text()


# -- the budget ledger -------------------------------------------------------------------------


def test_ledger_refuses_beyond_the_daily_cap_and_persists_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state" / "privacy.db"
    day = utc_day(T0)
    with PrivacyLedger.open(path, today=day) as led:
        assert [led.try_spend("people", "plein", day, 0.5, 2.0) for _ in range(5)] == [
            True,
            True,
            True,
            True,
            False,
        ]
        assert led.try_spend("people", "markt", day, 0.5, 2.0)  # per zone
        assert led.try_spend("people", "plein", "2027-01-16", 0.5, 2.0)  # per day
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    with PrivacyLedger.open(path, today=day) as led:
        assert led.spent("people", "plein", day) == 2.0
        assert not led.try_spend("people", "plein", day, 0.5, 2.0)
        rows = {(r.zone, r.day): r for r in led.day(day)}
        assert rows[("plein", day)].releases == 4 and rows[("plein", day)].refused == 2
    with PrivacyLedger.open(path, today="2027-06-01") as led:  # 35 days on: pruned
        assert led.day(day) == []


def test_engine_withholds_a_release_beyond_the_budget_and_logs_once(
    ledger: PrivacyLedger, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    e = engine(ledger)  # epsilon 0.5, daily cap 1.0: two releases per zone and day
    e.add_node(1, "plein")
    outcomes = []
    for i in range(1, 5):
        e.process(1, "plein", i, seen(ADDR, bytes(6)), T0 + (i - 1) * W + 1)
        outcomes.append(by_name(one(e.release_due(T0 + i * W), "people"))["devices"])
    assert outcomes == [2, 2, WITHHELD, WITHHELD]
    assert e.releases["withheld"] == 2
    logged = [r.getMessage() for r in caplog.records if "privacy budget" in r.getMessage()]
    assert logged == [
        "stream people, zone plein: daily privacy budget 1.0 spent; window 08:30 not released "
        "(nor any later window of this stream and zone today)"
    ]
    report = e.budget_report()
    assert report["day"] == utc_day(T0) and report["policy_hash"] == e.policy.hash
    assert report["streams"]["people"]["zones"]["plein"] == {
        "spent": 1.0,
        "remaining": 0.0,
        "releases": 2,
        "withheld": 2,
    }
    json.dumps(report)  # publishable as it is


def test_budget_booked_before_the_count_exists_and_a_crash_never_overspends(
    ledger: PrivacyLedger,
) -> None:
    day = utc_day(T0)
    booked_when_noised: list[float] = []

    def noisy(n: int, noise: Noise) -> int:
        booked_when_noised.append(ledger.spent("people", "plein", day))
        return n

    e = engine(ledger, noisy=noisy)
    e.process(1, "plein", 1, seen(ADDR, bytes(6)), T0 + 1)
    assert by_name(one(e.release_due(T0 + W), "people")) == {"devices": 2}
    assert booked_when_noised == [0.5]  # this release's epsilon was on disk before the noise

    def crash(n: int, noise: Noise) -> int:
        raise RuntimeError("power cut between booking and publishing")

    e = engine(ledger, noisy=crash, now=T0 + W + 1)
    e.process(1, "plein", 1, seen(ADDR), T0 + W + 2)
    assert [r for r in e.release_due(T0 + 2 * W) if r.stream == "people"] == []
    assert ledger.spent("people", "plein", day) == 1.0  # wasted, not overspent
    e = engine(ledger, now=T0 + 2 * W + 1)  # after the "restart": the cap holds
    e.process(1, "plein", 1, seen(ADDR, bytes(6)), T0 + 2 * W + 2)
    # and the release says it covers only the part of its window since the restart
    assert by_name(one(e.release_due(T0 + 3 * W), "people")) == {
        "devices": WITHHELD,
        "covered": W - 1,
    }


# -- default deny, pass streams ----------------------------------------------------------------


def test_default_deny_counts_what_no_stream_selects(ledger: PrivacyLedger) -> None:
    text = POLICY.split('[[streams]]\nname = "people"', maxsplit=1)[0]  # environment only
    e = engine(ledger, text)
    values = {quantity_id("temperature"): 215, quantity_id("battery"): 4000, 40: 7}
    assert e.process(1, "plein", 1, Readings(values), T0 + 1) == []
    assert e.process(1, "plein", 2, seen(ADDR), T0 + 2) == []
    assert e.process(1, "plein", 3, Status({"battery_mv": 4000}), T0 + 3) == []
    assert e.process(1, "plein", 4, Event(0, 1), T0 + 4) == []
    assert e.dropped == {"unselected": 2, "unselected_quantity": 2, "late": 0, "overflow": 0}
    assert e.dropped_personal["unselected"] == 1  # counted apart: never a metric
    (env,) = e.release_due(T0 + W)
    assert set(by_name(env)) == {f"temperature_{s}" for s in policy_mod.STATISTICS}


def test_pass_streams_forward_per_message_with_the_policy_hash(ledger: PrivacyLedger) -> None:
    text = (
        POLICY
        + """
[[streams]]
name = "events"
message = "event"
action = "pass"

[[streams]]
name = "power"
message = "readings"
quantities = ["battery", "pressure"]
action = "pass"
"""
    )
    e = engine(ledger, text)
    h = e.policy.hash
    status = Status({"battery_mv": 4012, "uptime_s": 60, "reset_cause": 1})
    assert e.process(3, "plein", 10, status, T0 + 1) == [
        status_record(GW, 3, "plein", 10, status, T0 + 1, h)
    ]
    event = Event(1, 4)
    assert e.process(3, "plein", 11, event, T0 + 2) == [
        event_record(GW, 3, "plein", 11, event, T0 + 2, h)
    ]
    values = {quantity_id(q): v for q, v in (("temperature", 215), ("battery", 3999))}
    (readings,) = e.process(3, "plein", 12, Readings(values, T0 + 2), T0 + 3)
    assert readings == Record(
        "readings",
        3,
        "plein",
        T0 + 2,
        message_id(GW, 3, 12),
        (Measurement("battery", "V", 3.999),),
        policy=h,
    )
    payload = json.loads(senml.encode(readings, TOPICS, "senml+json").payload)
    assert payload[0]["policy"] == h and payload[0]["mid"] == f"{GW}:3:12:0"
    env = one(e.release_due(T0 + W), "environment")  # the temperature went to its window
    assert by_name(env)["temperature_count"] == 1


def test_readings_records_share_their_measurements_in_a_bounded_table(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    table: dict[tuple[int, int], Measurement] = {}
    monkeypatch.setattr(passthrough, "_MEASUREMENTS", table)
    monkeypatch.setattr(passthrough, "_MEASUREMENTS_SIZE", 3)
    t, b, unknown = quantity_id("temperature"), quantity_id("battery"), 63

    def record(values: dict[int, int], quantities: list[int] | None = None) -> Record | None:
        return passthrough.readings_record(GW, 3, "plein", 12, Readings(values), T0, quantities)

    first = record({b: 3999, t: -12, unknown: 7})
    assert first is not None and first.measurements == (
        Measurement("temperature", "Cel", -1.2),
        Measurement("battery", "V", 3.999),
        Measurement("q63", "", 7),
    )
    again = record({t: -12, b: 3999, unknown: 7})
    assert again == first
    assert all(m is n for m, n in zip(again.measurements, first.measurements, strict=True))
    assert record({t: 215}, [b]) is None  # nothing selected
    other = record({t: 215, b: 4000}, [t])  # the table is full: emptied, then filled again
    assert other is not None and other.measurements == (Measurement("temperature", "Cel", 21.5),)
    assert table == {(t, 215): other.measurements[0]}


def test_an_event_without_a_value_leaves_as_true_not_as_a_number(ledger: PrivacyLedger) -> None:
    """time_request carries no value: published as 1 it read as a value the node never sent."""
    e = engine(
        ledger, POLICY + '[[streams]]\nname = "events"\nmessage = "event"\naction = "pass"\n'
    )
    (asks,) = e.process(3, "plein", 11, Event(6), T0 + 2)
    (boot,) = e.process(3, "plein", 12, Event(0, 1), T0 + 2)
    # typed: True == 1 in Python, and the type is what decides "vb" over "v"
    assert [(m.name, m.value, type(m.value)) for m in asks.measurements] == [
        ("time_request", True, bool)
    ]
    assert [(m.name, m.value, type(m.value)) for m in boot.measurements] == [("boot", 1, int)]
    (record,) = json.loads(senml.encode(asks, TOPICS, "senml+json").payload)
    assert record["n"] == "time_request" and record["vb"] is True and "v" not in record
    (record,) = cbor2.loads(senml.encode(asks, TOPICS, "senml+cbor").payload)
    assert record[0] == "time_request" and record[4] is True and 2 not in record  # n, vb, v
    (record,) = json.loads(senml.encode(boot, TOPICS, "senml+json").payload)
    assert record["v"] == 1 and type(record["v"]) is int and "vb" not in record


def test_a_status_without_a_field_leaves_nothing(ledger: PrivacyLedger) -> None:
    """A SenML pack without records (`[]`) carried neither message id nor policy hash."""
    e = engine(ledger)
    assert e.process(3, "plein", 10, Status({}), T0 + 1) == []
    (status,) = e.process(3, "plein", 11, Status({"uptime_s": 60}), T0 + 1)
    pack = json.loads(senml.encode(status, TOPICS, "senml+json").payload)
    assert pack == [
        {
            "bn": "urn:dev:edgeveil:site:3:",
            "bt": T0 + 1,
            "mid": f"{GW}:3:11:0",
            "policy": e.policy.hash,
            "n": "uptime",
            "u": "s",
            "v": 60,
        }
    ]


# -- records as they leave ---------------------------------------------------------------------


def test_released_records_as_senml_json_and_cbor(ledger: PrivacyLedger) -> None:
    e = engine(ledger)
    e.process(1, "plein", 1, temp(215), T0 + 1)
    e.process(2, "a/b+#", 1, seen(ADDR), T0 + 2)
    e.process(3, "", 1, seen(ADDR), T0 + 3)
    records = {(r.stream, r.zone): r for r in e.release_due(T0 + W)}
    env = senml.encode(records[("environment", "plein")], TOPICS, "senml+json")
    assert env.topic == "edgeveil/site/gw-1/zone/plein/environment"
    assert env.msg_id == f"{GW}:environment:plein:{T0}" and not env.retain
    pack = json.loads(env.payload)
    assert pack[0]["bn"] == "urn:dev:edgeveil:site:gw-1:environment:"
    assert pack[0]["bt"] == T0 and pack[0]["policy"] == e.policy.hash
    assert {"n": "temperature_mean", "u": "Cel", "v": 21.5} in pack
    odd = senml.encode(records[("people", "a/b+#")], TOPICS, "senml+json")
    assert odd.topic == "edgeveil/site/gw-1/zone/a%2Fb%2B%23/people"  # no levels, no wildcards
    assert json.loads(odd.payload)[0]["vs"] == SUPPRESSED
    none = senml.encode(records[("people", "")], TOPICS, "senml+cbor")
    assert none.topic == "edgeveil/site/gw-1/zone//people"
    decoded = cbor2.loads(none.payload)
    assert decoded[0]["policy"] == e.policy.hash and decoded[0]["mid"] == f"{GW}:people::{T0}"
    assert decoded[0][3] == SUPPRESSED and decoded[0][1] == "count"  # vs, u


# -- reload ------------------------------------------------------------------------------------


def test_reload_keeps_windows_and_keys_of_streams_that_stay(ledger: PrivacyLedger) -> None:
    before = (
        POLICY
        + """
[[streams]]
name = "loudness"
message = "readings"
quantities = ["noise"]
statistics = ["max"]
"""
    )
    after = POLICY.replace('["temperature", "humidity"]', '["temperature", "pressure"]')
    after = after.replace(
        'statistics = ["count", "sum", "mean", "min", "max", "p50", "p90", "p95", "p99"]',
        'statistics = ["mean"]',
    )
    after += """
[[streams]]
name = "dust"
message = "readings"
quantities = ["pm10"]
"""
    clock = Clock(T0)
    e = PolicyEngine(parse(before), GW, ledger, clock, noisy_count=exact)
    noise = {quantity_id("noise"): 5000, quantity_id("temperature"): 200}
    e.process(1, "plein", 1, Readings(noise), T0 + 10)
    e.process(1, "plein", 2, seen(ADDR), T0 + 20)
    clock.now = T0 + 30
    gone = e.reload(parse(after))
    assert [(r.stream, r.msg_id) for r in gone] == [
        ("loudness", f"{GW}:loudness:plein:{T0}:reload")
    ]
    # released at the reload: it covers the first 30 s of its window, and says so
    assert by_name(gone[0]) == {"noise_max": 50.0, "covered": 30}
    assert gone[0].policy == parse(before).hash
    later = {
        quantity_id("temperature"): 210,
        quantity_id("pressure"): 10000,
        quantity_id("pm10"): 5,
        quantity_id("humidity"): 400,
    }
    e.process(1, "plein", 3, Readings(later), T0 + 40)
    e.process(2, "plein", 1, seen(ADDR, bytes(6)), T0 + 50)  # ADDR again: same key, once
    records = e.release_due(T0 + W)
    env = one(records, "environment")
    assert by_name(env) == {"temperature_mean": 20.5, "pressure_mean": 100000}
    assert env.policy == parse(after).hash
    assert by_name(one(records, "people")) == {"devices": 2}
    assert by_name(one(records, "dust")) == {"pm10_mean": 5e-09, "covered": W - 30}  # new
    assert e.dropped["unselected_quantity"] == 1  # humidity, after the reload


def test_reload_of_a_changed_stream_releases_it_and_starts_afresh(ledger: PrivacyLedger) -> None:
    clock = Clock(T0)
    e = PolicyEngine(parse(POLICY), GW, ledger, clock, noisy_count=exact)
    e.process(1, "plein", 1, seen(ADDR), T0 + 10)
    e.process(1, "plein", 2, temp(215), T0 + 10)
    changed = parse(POLICY.replace("window_minutes = 15\nk = 2", "window_minutes = 5\nk = 2"))
    clock.now = T0 + 60
    gone = e.reload(changed)
    people = {"devices": SUPPRESSED, "covered": 60}  # its first minute, then the reload
    assert [(r.stream, by_name(r)) for r in gone] == [("people", people)]
    assert gone[0].msg_id.endswith(":reload")
    e.process(1, "plein", 3, seen(ADDR, bytes(6)), T0 + 70)
    records = e.release_due(T0 + 300)
    # the new stream's first window began before it did: covered from the reload on
    assert by_name(one(records, "people")) == {"devices": 2, "covered": 240}
    kept = one(e.release_due(T0 + W), "environment")  # kept through the reload: whole
    assert by_name(kept)["temperature_count"] == 1 and "covered" not in by_name(kept)


def test_reload_refuses_a_policy_it_cannot_apply_and_keeps_the_old(ledger: PrivacyLedger) -> None:
    e = engine(ledger)
    e.process(1, "plein", 1, temp(215), T0 + 1)
    extra = '[[streams]]\nname = "n"\nmessage = "readings"\nquantities = ["co2"]\n'
    bad = parse(POLICY + extra + "noise = { epsilon = 1.0 }\n")
    with pytest.raises(ConfigError, match="noise"):
        e.reload(bad)
    assert e.policy.name == "test policy"
    assert by_name(one(e.release_due(T0 + W), "environment"))["temperature_count"] == 1


def test_policies_the_engine_refuses() -> None:
    def refused(extra: str, match: str) -> None:
        with pytest.raises(ConfigError, match=match):
            check(parse(POLICY + extra))

    refused('[[streams]]\nname = "x"\nmessage = "event"\n', "can only")
    refused(
        '[[streams]]\nname = "status"\nmessage = "readings"\nquantities = ["co2"]\n'
        'group_by = "node"\n',
        "node topic",
    )
    refused(
        '[[streams]]\nname = "x"\nmessage = "readings"\nquantities = ["co2"]\nk = 3\n'
        "noise = { epsilon = 1.0 }\n",
        "noise",
    )
    check(policy_mod.default())


# -- memory bounds -----------------------------------------------------------------------------


def test_device_sets_are_bounded(ledger: PrivacyLedger, monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.privacy.engine as engine_mod

    monkeypatch.setattr(windows_mod, "MAX_DEVICES", 10)
    monkeypatch.setattr(engine_mod, "MAX_DEVICES", 10)
    e = engine(ledger)
    e.process(1, "plein", 1, seen(*(bytes([i]) * 6 for i in range(8))), T0 + 1)
    e.process(1, "plein", 2, seen(*(bytes([i]) * 6 for i in range(4, 15))), T0 + 2)
    assert e.dropped_personal["overflow"] == 5  # 15 distinct, 10 kept
    assert e.dropped["overflow"] == 0  # what is exported knows nothing of it
    assert by_name(one(e.release_due(T0 + W), "people")) == {"devices": 10}


def test_open_windows_are_bounded_and_old_ones_do_not_pile_up(ledger: PrivacyLedger) -> None:
    w = StreamWindows(W, released_until=T0, limit=3)
    assert all(w.get(z, T0 + 1) is not None for z in "abc")
    assert w.get("d", T0 + 1) is None and not w.late(T0 + 1)
    e = engine(ledger)
    for i in range(50):  # 50 windows, two zones, a tick per window
        for zone in ("north", "south"):
            e.process(1 if zone == "north" else 2, zone, i, temp(200), T0 + 1 + i * W)
            e.process(1 if zone == "north" else 2, zone, i, seen(ADDR), T0 + 2 + i * W)
        e.release_due(T0 + (i + 1) * W)
        open_windows = sum(len(s.windows) for s in e._states.values() if s.windows)
        assert open_windows <= 4  # the current window of each zone, per stream


# -- nothing personal crosses --------------------------------------------------------------------


def forms(address: bytes) -> list[bytes]:
    """Ways an address could be written: raw, hex either case, with colons or dashes, in
    either byte order, base64, and unkeyed hashes of it."""
    out = []
    for a in (address, address[::-1]):
        out.append(a)
        for h in (a.hex(), a.hex().upper()):
            out.append(h.encode())
            for sep in (":", "-"):
                out.append(sep.join(h[i : i + 2] for i in range(0, len(h), 2)).encode())
        out.append(base64.b64encode(a))
        out.append(hashlib.sha256(a).hexdigest().encode())
        out.append(hashlib.sha256(a).hexdigest()[:16].encode())
    return out


def test_no_address_given_to_the_engine_ever_leaves_it(
    ledger: PrivacyLedger, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    rng = random.Random(11)
    addresses = [rng.randbytes(6) for _ in range(30)] + [rng.randbytes(16) for _ in range(3)]
    text = POLICY.replace("k = 2", "k = 2\nforward_pseudonyms = true")  # the worst case
    text = text.replace("daily_cap = 1.0", "daily_cap = 100.0")
    e = PolicyEngine(parse(text), GW, ledger, Clock(T0 + 1))  # real OpenDP noise
    out: list[bytes] = []
    records: list[Record] = []
    for window in range(3):
        for i, a in enumerate(addresses):
            node = 1 + i % 4
            zone = ("plein", "markt")[node % 2]
            message: Message = seen(a, addresses[(i + 1) % len(addresses)])
            records += e.process(node, zone, i, message, T0 + window * W + 2 + i)
            records += e.process(node, zone, 100 + i, temp(200 + i), T0 + window * W + 2 + i)
        out.append(repr(e).encode())
        for s in e._states.values():  # the window state: pseudonyms only, never an address
            out.append(f"{s.windows!r} {s.pseudonymizer!r}".encode())
            if s.windows is not None:
                for w in s.windows.current.values():
                    out.append(repr(w).encode())
                    assert not set(addresses) & w.devices
                    assert all(len(p) == 8 for p in w.devices)
        records += e.release_due(T0 + (window + 1) * W)
    assert any(m.name == "pseudonym" for r in records for m in r.measurements)
    out += [repr(r).encode() for r in records]
    for r in records:
        out.append(senml.encode(r, TOPICS, "senml+json").payload)
        cbor = senml.encode(r, TOPICS, "senml+cbor")
        out += [cbor.payload, cbor.topic.encode(), cbor.msg_id.encode()]
    out.append(json.dumps(e.budget_report()).encode())
    out.append(caplog.text.encode())
    haystack = b"\n".join(out)
    for a in addresses:
        for form in forms(a):
            assert form not in haystack, (a.hex(), form)


# -- configuration -----------------------------------------------------------------------------


def test_privacy_policy_in_the_gateway_configuration(tmp_path: Path) -> None:
    assert config_mod.parse({}).privacy_policy is None
    assert load_policy(config_mod.parse({})).name == "edgeveil default"
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    config = config_mod.parse({"privacy": {"policy": str(path)}})
    assert config.privacy_policy == path and load_policy(config).name == "test policy"
    with pytest.raises(ConfigError, match=r"privacy\.polcy: unknown key"):
        config_mod.parse({"privacy": {"polcy": "x"}})
    with pytest.raises(ConfigError, match=r"the policy .* does not exist"):
        load_policy(config_mod.parse({"privacy": {"policy": str(tmp_path / "none.toml")}}))
    path.write_text(POLICY.replace("epsilon = 0.5", 'epsilon = "half"'))
    with pytest.raises(ConfigError, match=r"noise\.epsilon: must be a number"):
        load_policy(config)
    path.write_text(POLICY.replace('action = "pass"', 'action = "aggregate"'))
    with pytest.raises(ConfigError, match="can only"):  # one the engine cannot apply
        load_policy(config)
