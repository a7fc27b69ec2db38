"""The LoRa channel simulator (firmware/host/radio.py): the model's rules, one at a time."""

from __future__ import annotations

import math

import pytest

from firmware.host.radio import (
    BELOW_SENSITIVITY,
    BOR_2016,
    COLLISION,
    GATEWAY_TRANSMITTING,
    HATA_URBAN_868,
    RANDOM_LOSS,
    SNR_FLOOR_DB,
    Channel,
    Radio,
    airtime_us,
    loss_counts,
    noise_floor_dbm,
)

SF9 = Radio(868_100_000, sf=9)
CAPTURE_DB = 6.0
FRAME = bytes(30)


def channel_with(*nodes: tuple[str, float, float], capture: bool = True) -> Channel:
    """A gateway at the origin and nodes at (x, y) metres."""
    channel = Channel(seed=3, capture=capture)
    channel.add_gateway("gw", 0, 0)
    for name, x, y in nodes:
        channel.add_node(name, x, y)
    return channel


def outcome(channel: Channel, until_us: int) -> dict[str, str]:
    """Per source: "received" or the loss reason at the gateway."""
    return {
        tx.source: "received" if "gw" in tx.receptions else tx.losses["gw"]
        for tx in channel.settle(until_us)
    }


def test_airtime_matches_the_semtech_calculator() -> None:
    # Semtech LoRa calculator, explicit header, CRC on, preamble 8, CR 4/5
    assert airtime_us(Radio(sf=7), 20) == 56_576
    assert airtime_us(Radio(sf=9), 30) == 226_304
    # SF12 at 125 kHz: symbols of 32.8 ms turn on the low data rate optimisation
    assert airtime_us(Radio(sf=12), 51) == 2_465_792


def test_noise_floor_and_snr() -> None:
    assert noise_floor_dbm(125_000) == pytest.approx(-117.03, abs=0.01)
    channel = channel_with(("n", 500, 0))
    tx = channel.transmit("n", FRAME, SF9, 0)
    (done,) = channel.settle(tx.end_us)
    rx = done.receptions["gw"]
    assert rx.rssi_dbm == pytest.approx(14 - HATA_URBAN_868.loss_db(500), abs=0.05)
    assert rx.snr_db == pytest.approx(rx.rssi_dbm - noise_floor_dbm(125_000), abs=0.1)


def test_far_node_is_below_sensitivity_and_a_higher_sf_reaches_it() -> None:
    # at 2.5 km the SNR is about -14 dB: under SF9's -12.5 dB floor, over SF10's -15 dB
    channel = channel_with(("far", 2500, 0))
    snr = 14 - HATA_URBAN_868.loss_db(2500) - noise_floor_dbm(125_000)
    assert SNR_FLOOR_DB[10] < snr < SNR_FLOOR_DB[9]
    channel.transmit("far", FRAME, SF9, 0)
    assert outcome(channel, 10**7) == {"far": BELOW_SENSITIVITY}
    channel.transmit("far", FRAME, Radio(868_100_000, sf=10), 10**7)
    assert outcome(channel, 2 * 10**7) == {"far": "received"}


def test_overlap_on_same_frequency_and_sf_collides_without_capture() -> None:
    channel = channel_with(("a", 400, 0), ("b", 410, 0), capture=False)
    first = channel.transmit("a", FRAME, SF9, 0)
    channel.transmit("b", FRAME, SF9, first.end_us - 1)  # overlaps by one microsecond
    assert outcome(channel, 10**7) == {"a": COLLISION, "b": COLLISION}


def test_back_to_back_frames_do_not_collide() -> None:
    channel = channel_with(("a", 400, 0), ("b", 410, 0), capture=False)
    first = channel.transmit("a", FRAME, SF9, 0)
    channel.transmit("b", FRAME, SF9, first.end_us)
    assert outcome(channel, 10**7) == {"a": "received", "b": "received"}


def test_capture_keeps_a_frame_6_db_stronger_than_the_rest() -> None:
    # exponent 3.72: 6 dB is a distance ratio of 10^(6/37.2) = 1.45
    ratio_6db = 10 ** (CAPTURE_DB / (10 * HATA_URBAN_868.exponent))
    near, far = 300.0, 300.0 * ratio_6db * 1.02  # a little over 6 dB apart
    channel = channel_with(("near", near, 0), ("far", far, 0))
    channel.transmit("near", FRAME, SF9, 0)
    channel.transmit("far", FRAME, SF9, 1000)
    assert outcome(channel, 10**7) == {"near": "received", "far": COLLISION}

    # a little under 6 dB: neither survives
    channel = channel_with(("near", near, 0), ("far", 300.0 * ratio_6db * 0.98, 0))
    channel.transmit("near", FRAME, SF9, 0)
    channel.transmit("far", FRAME, SF9, 1000)
    assert outcome(channel, 10**7) == {"near": COLLISION, "far": COLLISION}


def test_capture_compares_with_the_sum_of_the_interferers() -> None:
    # each interferer alone is 6+ dB weaker; two of equal power add 3 dB
    ratio = 10 ** (7.5 / (10 * HATA_URBAN_868.exponent))  # 7.5 dB weaker each
    channel = channel_with(("strong", 300, 0), ("w1", 300 * ratio, 0), ("w2", 0, 300 * ratio))
    for name in ("strong", "w1", "w2"):
        channel.transmit(name, FRAME, SF9, 0)
    assert outcome(channel, 10**7)["strong"] == COLLISION  # 7.5 - 3 = 4.5 dB < 6 dB


def test_different_sf_and_frequency_are_orthogonal() -> None:
    channel = channel_with(("a", 400, 0), ("b", 0, 400), ("c", 0, -400), capture=False)
    channel.transmit("a", FRAME, SF9, 0)
    channel.transmit("b", FRAME, Radio(868_100_000, sf=10), 0)
    channel.transmit("c", FRAME, Radio(868_300_000, sf=9), 0)
    assert outcome(channel, 10**7) == {"a": "received", "b": "received", "c": "received"}


def test_gateway_is_deaf_while_it_transmits() -> None:
    channel = channel_with(("n", 400, 0))
    channel.transmit("gw", FRAME, SF9, 0)  # a downlink
    channel.transmit("n", FRAME, Radio(868_300_000, sf=7), 5000)  # another channel, too
    assert outcome(channel, 10**7) == {"n": GATEWAY_TRANSMITTING}


def test_downlink_reaches_a_listening_node_on_its_channel_only() -> None:
    channel = channel_with(("n", 400, 0))
    tx = channel.transmit("gw", FRAME, SF9, 1_000_000)
    assert channel.receive("n", SF9, 0, 999_999) is None  # window closed before it started
    assert channel.receive("n", Radio(868_300_000, sf=9), 0, 2_000_000) is None
    assert channel.receive("n", SF9, 0, 2_000_000, inverted_iq=False) is None
    got = channel.receive("n", SF9, 900_000, 1_100_000)
    assert got is tx
    assert got.receptions["n"].snr_db > SNR_FLOOR_DB[9]


def test_random_loss_is_seeded_and_near_its_probability() -> None:
    def run(seed: int) -> list[str]:
        channel = Channel(seed=seed, random_loss=0.3)
        channel.add_gateway("gw", 0, 0)
        channel.add_node("n", 200, 0)
        t = 0
        for _ in range(400):
            t = channel.transmit("n", FRAME, SF9, t).end_us + 1
        return [tx.losses.get("gw", "received") for tx in channel.settle(t)]

    first = run(5)
    assert first == run(5)
    assert first != run(6)
    lost = first.count(RANDOM_LOSS) / len(first)
    assert 0.22 < lost < 0.38  # binomial, n=400, p=0.3: 4 standard deviations
    assert set(first) == {"received", RANDOM_LOSS}


def test_shadowing_is_fixed_per_link_and_seeded() -> None:
    def rssi(seed: int) -> float:
        channel = Channel(seed=seed, path_loss=BOR_2016)
        channel.add_gateway("gw", 0, 0)
        channel.add_node("n", 100, 0)
        a = channel.transmit("n", FRAME, SF9, 0)
        b = channel.transmit("n", FRAME, SF9, a.end_us + 1)
        got = channel.settle(b.end_us)
        assert got[0].receptions["gw"].rssi_dbm == got[1].receptions["gw"].rssi_dbm
        return got[0].receptions["gw"].rssi_dbm

    mean = 14 - BOR_2016.loss_db(100)
    values = {rssi(s) for s in range(8)}
    assert len(values) > 1  # shadowing differs between places
    assert all(abs(v - mean) < 5 * BOR_2016.shadowing_db for v in values)


def test_settle_returns_each_frame_once_in_order_of_its_end() -> None:
    channel = channel_with(("a", 300, 0), ("b", 300, 0))
    long = channel.transmit("a", FRAME, Radio(sf=12), 0)
    short = channel.transmit("b", FRAME, Radio(sf=7), 10)
    assert channel.settle(short.end_us) == [short]
    assert channel.settle(short.end_us) == []
    assert channel.settle(long.end_us) == [long]
    assert loss_counts([long, short], "gw")["received"] == 2


def test_bad_use_gets_a_clear_error() -> None:
    channel = channel_with(("n", 300, 0))
    channel.settle(1000)
    with pytest.raises(ValueError, match="before the settled time"):
        channel.transmit("n", FRAME, SF9, 10)
    with pytest.raises(ValueError, match="unknown station 'x'"):
        channel.transmit("x", FRAME, SF9, 2000)
    with pytest.raises(ValueError, match=r"spreading factor must be 7\.\.12"):
        Radio(sf=13)
    with pytest.raises(ValueError, match="already on the map"):
        channel.add_node("n", 1, 1)
    assert math.isfinite(HATA_URBAN_868.loss_db(0))
