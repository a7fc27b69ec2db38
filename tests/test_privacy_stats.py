"""Statistical tests of the differential privacy of released counts, with fixed bounds.

- The noise is the configured discrete Laplace: many noisy counts of one true count, drawn
  through `dp.noisy_count` (OpenDP), have the exact mean, variance and distribution of the
  discrete Laplace with t = scale = max_contribution / epsilon, for the default policy's people
  noise (epsilon 0.5: t = 2) and for epsilon 1.0 (t = 1), and the test tells the two apart.
- The accuracy the transparency statement promises ("accurate to about +/-N with 95%
  confidence", N = round(dp.accuracy(noise, 0.05))) holds for counts released by the engine
  over 500 windows of a seeded crowd, and the daily cap then refuses the next release.

OpenDP draws its noise from the operating system's CSPRNG (it cannot be seeded), so every
bound is set so that a correct implementation fails it with probability below about 1e-6;
what each test saw is printed (pytest -s).

The discrete Laplace with parameter t: P(X = k) = tanh(1 / 2t) e^{-|k|/t};
Var X = 2 e^{-1/t} / (1 - e^{-1/t})^2; P(|X| > m) = 2 e^{-(m+1)/t} / (1 + e^{-1/t}).
"""

from __future__ import annotations

import dataclasses
import math
import random
import statistics
from collections import Counter
from pathlib import Path

import pytest

from gateway.privacy import PolicyEngine, PrivacyLedger, dp
from gateway.privacy import policy as policy_mod
from gateway.privacy.ledger import utc_day
from gateway.privacy.policy import Noise
from protocol import Observations

DRAWS = 20_000
TRUE_COUNT = 100  # far from 0: the clamp at 0 never acts
FAIL = 1e-6  # each statistical bound fails a correct implementation about this rarely


def people_noise() -> Noise:
    stream = policy_mod.default().stream_for("observations")
    assert stream is not None and stream.noise is not None
    return stream.noise


# -- the discrete Laplace, exactly ---------------------------------------------------------------


def pmf(k: int, t: float) -> float:
    return math.tanh(1 / (2 * t)) * math.exp(-abs(k) / t)


def variance(t: float) -> float:
    q = math.exp(-1 / t)
    return 2 * q / (1 - q) ** 2


def tail(m: int, t: float) -> float:
    """P(|X| > m)."""
    return 2 * math.exp(-(m + 1) / t) / (1 + math.exp(-1 / t))


def chi2_sf_even(x: float, df: int) -> float:
    """P(chi-square with an even number df of degrees of freedom > x), in closed form."""
    assert df % 2 == 0
    term = total = 1.0
    for i in range(1, df // 2):
        term *= (x / 2) / i
        total += term
    return math.exp(-x / 2) * total


def chi_square(errors: list[int], t: float) -> tuple[float, int, int]:
    """Pearson's statistic of the errors against the exact pmf: one bin per value in
    [-m, m] (m: the last value expected at least 20 times) and one per tail; its degrees of
    freedom (2m + 2: even) and m."""
    n = len(errors)
    m = 0
    while n * pmf(m + 1, t) >= 20:
        m += 1
    seen = Counter(max(-m - 1, min(m + 1, e)) for e in errors)
    stat = 0.0
    for k in range(-m - 1, m + 2):
        expected = n * (tail(m, t) / 2 if abs(k) == m + 1 else pmf(k, t))
        stat += (seen[k] - expected) ** 2 / expected
    return stat, 2 * m + 2, m


def binomial_range(n: int, p: float, fail: float) -> tuple[int, int]:
    """The range [low, high] of Binomial(n, p) with P(X < low) and P(X > high) each at most
    fail / 2 (and as narrow as that allows)."""
    probabilities = [math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1)]
    low, below = 0, 0.0
    while below + probabilities[low] <= fail / 2:
        below += probabilities[low]
        low += 1
    high, above = n, 0.0
    while above + probabilities[high] <= fail / 2:
        above += probabilities[high]
        high -= 1
    return low, high


# -- (a) the noise follows the configured scale -------------------------------------------------


@pytest.mark.parametrize("epsilon", [0.5, 1.0])
def test_noisy_counts_follow_the_configured_discrete_laplace(epsilon: float) -> None:
    noise = dataclasses.replace(people_noise(), epsilon=epsilon)
    assert people_noise().epsilon == 0.5  # the default policy's people counting
    t = dp.scale(noise)
    assert t == 1 / epsilon  # max_contribution 1
    errors = [dp.noisy_count(TRUE_COUNT, noise) - TRUE_COUNT for _ in range(DRAWS)]

    exact_var = variance(t)
    mean, var = statistics.fmean(errors), statistics.variance(errors)
    stat, df, m = chi_square(errors, t)
    p_value = chi2_sf_even(stat, df)
    other = 1 / 0.5 if epsilon == 1.0 else 1 / 1.0  # the other configuration's scale
    other_stat, other_df, _ = chi_square(errors, other)
    print(
        f"\nepsilon {epsilon}: scale {t}, {DRAWS} draws: mean error {mean:+.4f} "
        f"(standard error {math.sqrt(exact_var / DRAWS):.4f}), variance {var:.4f} "
        f"(exact {exact_var:.4f}, ratio {var / exact_var:.4f}); chi-square {stat:.1f} "
        f"on {df} degrees of freedom over [-{m}, {m}] and both tails (p = {p_value:.3g}); "
        f"against scale {other}: chi-square {other_stat:.0f}"
    )
    assert abs(mean) <= 5 * math.sqrt(exact_var / DRAWS)
    assert abs(var / exact_var - 1) <= 0.10
    assert p_value > FAIL
    # the test tells the two configurations apart: the other scale's pmf is far off
    assert chi2_sf_even(other_stat, other_df) < 1e-12


# -- (c) accuracy of released counts, and (b) the daily cap, through the engine -------------------

WINDOWS_PER_ZONE = 24  # a day of the default's hourly windows
ZONES = 21  # 504 windows in all
T0 = 1_800_057_600  # midnight UTC
W = 3600


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_released_counts_are_as_accurate_as_the_statement_says(tmp_path: Path) -> None:
    """The default policy's people stream as shipped (k 5, epsilon 0.5 per hourly count, daily
    cap 12.0), fed a seeded crowd for a whole UTC day: per window and zone a known number of
    distinct devices (30..120), each seen 1..3 times by one of the zone's two nodes. (b) Every
    hourly window of the day is released in every zone, none withheld, and the ledger has spent
    24 x 0.5 per zone; the next day's first window is released again. (c) The released counts
    are within +/-N of the truth at least as often as the exact discrete Laplace says (which is
    at least 95%: the statement's promise), up to sampling."""
    assert utc_day(T0) == utc_day(T0 + WINDOWS_PER_ZONE * W - 1) != utc_day(T0 + 24 * W)
    policy = policy_mod.default()
    stream = policy.stream_for("observations")
    assert stream is not None and stream.noise is not None and stream.k == 5
    noise = stream.noise
    assert (noise.epsilon, noise.daily_cap, stream.window_minutes * 60) == (0.5, 12.0, W)
    n_bound = round(dp.accuracy(noise, 0.05))
    t = dp.scale(noise)
    exact = 1 - tail(n_bound, t)
    assert exact >= 0.95  # the statement's "+/-N with 95% confidence" holds at the rounded N

    rng = random.Random(20240611)
    clock = Clock(T0)
    zones = [f"zone-{z}" for z in range(ZONES)]
    errors: list[int] = []
    with PrivacyLedger.open(tmp_path / "privacy.db", today=utc_day(T0)) as ledger:
        engine = PolicyEngine(policy, "gw-stats", ledger, clock)  # real OpenDP noise
        counter = 0
        for w in range(WINDOWS_PER_ZONE + 1):
            start = T0 + w * W
            truth: dict[str, int] = {}
            for z, zone in enumerate(zones):
                n = truth[zone] = rng.randint(30, 120)
                devices = [rng.randbytes(6) for _ in range(n)]
                sightings = [d for d in devices for _ in range(rng.randint(1, 3))]
                rng.shuffle(sightings)
                for i in range(0, len(sightings), 12):
                    counter += 1
                    node = 2 * z + 1 + counter % 2
                    frame = Observations(0, [(a, -70) for a in sightings[i : i + 12]])
                    arrival = start + 1 + rng.random() * (W - 2)
                    assert engine.process(node, zone, counter, frame, arrival) == []
            clock.now = start + W
            released = {r.zone: r.measurements for r in engine.release_due(start + W)}
            assert set(released) == set(zones)
            if w == WINDOWS_PER_ZONE - 1:  # (b) the day's last window: the cap is spent
                rows = ledger.day(utc_day(T0))
                spent = {r.zone: (round(r.spent, 9), r.releases, r.refused) for r in rows}
                assert spent == dict.fromkeys(zones, (12.0, 24, 0))
            if w == WINDOWS_PER_ZONE:  # the next day's first window: a new day's budget
                assert all(isinstance(m[0].value, int) for m in released.values())
                break
            for zone, measurements in released.items():
                value = measurements[0].value
                assert isinstance(value, int), value  # neither suppressed nor withheld
                errors.append(value - truth[zone])

    windows = len(errors)
    assert windows == ZONES * WINDOWS_PER_ZONE
    within = sum(abs(e) <= n_bound for e in errors)
    coverage = within / windows
    low, high = binomial_range(windows, exact, FAIL)
    print(
        f"\naccuracy: {within} of {windows} released counts within +/-{n_bound} of the truth: "
        f"coverage {coverage:.3f} (exact discrete Laplace {exact:.4f}, accepted "
        f"{low / windows:.3f}..{high / windows:.3f}); mean error {statistics.fmean(errors):+.3f}, "
        f"variance {statistics.variance(errors):.2f} (exact {variance(t):.2f})"
    )
    assert coverage >= 0.92
    assert low <= within <= high
