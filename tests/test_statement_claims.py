"""Every sentence of a shipped policy's statement is true of the running mechanism: each shipped
policy is rendered, and what its statement says of each stream is checked against the privacy
engine's behaviour on generated traffic. A change of mechanism without a
change of wording fails here, as does a change of wording the mechanism does not follow.

The facts come from the statement itself (its JSON form, and the English text where the claim
is a sentence), never from the policy file: the test holds the statement to the engine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.live import DEMO_POLICY
from gateway.privacy import PolicyEngine, PrivacyLedger
from gateway.privacy import policy as policy_mod
from gateway.privacy.engine import SUPPRESSED, WITHHELD
from gateway.privacy.explain import statement_json, statement_text
from gateway.privacy.ledger import utc_day
from gateway.privacy.policy import Noise, Policy
from gateway.records import Record
from protocol import Event, Observations, Readings, Status
from protocol.messages import EVENT_CODES
from protocol.quantities import quantity_id

T0 = 1_800_057_600  # midnight UTC
GW = "gw-claims"
SHIPPED = {"default": policy_mod.default(), "demo": policy_mod.load(DEMO_POLICY)}
# how the English statement says each event code (gateway/privacy/explain.py's words)
EVENT_WORDS = {
    "boot": "restarts",
    "sensor_fault": "a failing sensor",
    "low_battery": "low battery",
    "queue_overflow": "lost messages",
    "config_applied": "new settings",
    "config_rejected": "new settings",
    "time_request": "requests for the time",
    "counter_low": "a box that must soon be replaced",
    "motion": "movement noticed by its motion sensor",
}


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[PrivacyLedger]:
    with PrivacyLedger.open(tmp_path / "privacy.db", today=utc_day(T0)) as led:
        yield led


def streams(shipped: Policy, action: str) -> list[dict[str, Any]]:
    return [s for s in statement_json(shipped)["streams"] if s["action"] == action]


def of(records: list[Record], name: str) -> list[Record]:
    return [r for r in records if r.stream == name]


@pytest.mark.parametrize("name", SHIPPED)
def test_aggregates_come_as_the_statement_says(name: str, ledger: PrivacyLedger) -> None:
    """Each aggregate stream: released once per stated window (aligned to the clock, with the
    window's start as its time), per stated group, with the stated statistics; summaries of
    fewer than k readings suppressed where the statement says so."""
    shipped = SHIPPED[name]
    text = flat(statement_text(shipped, "en"))
    for fact in streams(shipped, "aggregate"):
        if fact["message"] != "readings":
            continue
        assert fact["released"]["en"] in text
        window = fact["window_minutes"] * 60
        clock = Clock(T0)
        engine = PolicyEngine(shipped, GW, ledger, clock)
        qid = quantity_id(fact["what"]["quantities"][0])
        k = fact["k"] or 1
        for n in range(k):
            engine.process(1, "plein", n, Readings({qid: 100 + n}), T0 + 1 + n)
            engine.process(2, "markt", 100 + n, Readings({qid: 200 + n}), T0 + 1 + n)
        assert of(engine.release_due(T0 + window - 1), fact["name"]) == []  # not before its end
        released = of(engine.release_due(T0 + window), fact["name"])
        groups = {r.zone if fact["group_by"] == "zone" else r.node_id for r in released}
        assert groups == ({"plein", "markt"} if fact["group_by"] == "zone" else {1, 2})
        assert {r.time for r in released} == {float(T0)}
        names = {m.name.rsplit("_", 1)[1] for r in released for m in r.measurements}
        assert names == set(fact["statistics"])
        if fact["k"] is not None:  # "Summaries of fewer than {k} readings are not published"
            assert f"Summaries of fewer than {fact['k']} readings are not published" in text
            engine.process(1, "plein", 999, Readings({qid: 1}), T0 + window + 1)
            (few,) = of(engine.release_due(T0 + 2 * window), fact["name"])
            assert {m.value for m in few.measurements} == {SUPPRESSED}


@pytest.mark.parametrize("name", SHIPPED)
def test_people_counts_are_protected_as_the_statement_says(
    name: str, ledger: PrivacyLedger
) -> None:
    """k applies to the published (noisy) count: a small true count with upward noise is
    published, a larger one with downward noise is withheld; the budget pays for the stated
    number of counts a day; no address and no pseudonym leaves."""
    shipped = SHIPPED[name]
    text = flat(statement_text(shipped, "en"))
    (fact,) = [s for s in streams(shipped, "aggregate") if s["message"] == "observations"]
    k, window = fact["k"], fact["window_minutes"] * 60
    assert f"only when the published (noisy) count is at least {k}" in text
    assert "a small true count can be published and a larger one withheld" in text
    shifts = iter([+2, -3])  # the noise of the first and the second window

    def noisy(n: int, _noise: Noise) -> int:
        return max(0, n + next(shifts))

    engine = PolicyEngine(shipped, GW, ledger, Clock(T0), noisy_count=noisy)
    small, large = k - 2, k + 2
    addresses = [bytes([2, i, 0, 0, 0, 7]) for i in range(large)]
    engine.process(1, "plein", 1, Observations(0, [(a, -60) for a in addresses[:small]]), T0 + 1)
    (first,) = of(engine.release_due(T0 + window), fact["name"])
    engine.process(1, "plein", 2, Observations(0, [(a, -60) for a in addresses]), T0 + window + 1)
    (second,) = of(engine.release_due(T0 + 2 * window), fact["name"])
    assert [m.value for m in first.measurements] == [k]  # true k - 2, published as k
    assert [m.value for m in second.measurements] == [SUPPRESSED]  # true k + 2, below k
    # nothing that names a device: the count only
    leaked = [m for r in (first, second) for m in r.measurements if m.name != "devices"]
    assert leaked == [] and fact["forward_pseudonyms"] is False
    # the budget: "enough for at most {releases} ... per day"
    releases = fact["max_releases_per_day"]
    assert f"enough for at most {releases} counts per zone per day" in text
    windows_per_day = 1440 // fact["window_minutes"]
    withheld_said = "withheld until the next day" in text
    assert withheld_said == (releases < windows_per_day)


@pytest.mark.parametrize("name", SHIPPED)
def test_the_daily_budget_runs_out_when_and_only_when_the_statement_says(
    name: str, ledger: PrivacyLedger
) -> None:
    shipped = SHIPPED[name]
    (fact,) = [s for s in streams(shipped, "aggregate") if s["message"] == "observations"]
    window, releases = fact["window_minutes"] * 60, fact["max_releases_per_day"]
    engine = PolicyEngine(shipped, GW, ledger, Clock(T0), noisy_count=lambda n, _noise: n)
    engine.add_node(1, "plein")
    outcomes = []
    for w in range(min(releases + 1, 1440 * 60 // window)):
        (record,) = of(engine.release_due(T0 + (w + 1) * window), fact["name"])
        outcomes.append(record.measurements[0].value)
    published = [v for v in outcomes if v != WITHHELD]
    assert len(published) == min(releases, 1440 * 60 // window)
    assert outcomes[len(published) :] == [WITHHELD] * (len(outcomes) - len(published))


@pytest.mark.parametrize("name", SHIPPED)
def test_what_passes_per_box_is_what_the_statement_lists(name: str, ledger: PrivacyLedger) -> None:
    """Pass streams: a status leaves as it arrives; exactly the events the statement names
    leave (motion included only if it says so), each as it happens."""
    shipped = SHIPPED[name]
    engine = PolicyEngine(shipped, GW, ledger, Clock(T0))
    facts = {s["message"]: s for s in streams(shipped, "pass")}
    status = engine.process(1, "plein", 1, Status({"battery_mv": 3900}), T0 + 1)
    assert [r.kind for r in status] == (["status"] if "status" in facts else [])
    said = flat(facts["event"]["what"]["en"]) if "event" in facts else ""
    for code, event in enumerate(EVENT_CODES):
        records = engine.process(1, "plein", 10 + code, Event(code, 1), T0 + 1)
        assert bool(records) == (EVENT_WORDS[event] in said), event
