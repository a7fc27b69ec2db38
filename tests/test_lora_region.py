"""Region plans: a downlink outside the plan, across a sub-band edge or above
the power limit is never sent, and counted by reason (the packet forwarder's cases are in
tests/test_lora_gateway.py, with its fake forwarder); check-config refuses such settings,
naming the key and the limit. Each case fails without its rule (gateway/lora/region.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gateway import config as config_mod
from gateway.config import SpiRadioConfig
from gateway.errors import ConfigError
from gateway.lora.radio import DataRate
from gateway.lora.region import EU868, erp_dbm
from gateway.lora.spi import SpiTransport

PF = '[[lora.packet_forwarder]]\nlisten = "127.0.0.1:1700"\ngateways = ["AA555A0000000000"]\n'


@pytest.mark.parametrize(
    ("freq_hz", "bw_khz", "dbm", "gain", "reason"),
    [
        (868_100_000, 125, 14, 2.15, None),  # a default channel at 14 dBm ERP
        (915_000_000, 125, 14, 2.15, "outside_plan"),  # US915's band
        (862_500_000, 125, 14, 2.15, "outside_plan"),  # below 863 MHz
        (869_980_000, 125, 14, 2.15, "outside_plan"),  # the channel's upper half beyond 870
        (868_550_000, 125, 14, 2.15, "crosses_edge"),  # 868.4875-868.6125 crosses 868.6
        (868_650_000, 125, 14, 2.15, "crosses_edge"),  # in the gap between two sub-bands
        (868_100_000, 125, 20, 2.15, "over_power"),  # 20 dBm ERP where 14 is the limit
        (868_100_000, 125, 14, 6.0, "over_power"),  # a 6 dBi antenna: 17.85 dBm ERP
        (868_100_000, 125, 10, 6.0, None),  # 13.85 dBm ERP
        (869_525_000, 125, 27, 2.15, None),  # RX2's sub-band allows 500 mW
    ],
)
def test_eu868_allows_what_etsi_allows(
    freq_hz: int, bw_khz: int, dbm: int, gain: float, reason: str | None
) -> None:
    assert EU868.refusal(freq_hz, bw_khz, dbm, gain) == reason
    assert (EU868.explain(freq_hz, bw_khz, dbm, gain) is None) == (reason is None)


def test_the_plan_knows_rx2_and_the_rx1_power_limit() -> None:
    assert (EU868.rx2_freq_hz, EU868.rx2_rate) == (869_525_000, DataRate(12, 125))
    assert EU868.rx1_max_erp_dbm() == 14
    assert erp_dbm(14, 2.15) == pytest.approx(14)


def test_an_spi_radio_on_a_channel_outside_the_plan_sends_nothing() -> None:
    config = SpiRadioConfig(name="hat", chip="sx1276", freq_hz=915_000_000, acks=True)
    transport = SpiTransport(config, lambda *_a: None)
    assert transport._refusal(bytes(20), 0, time.monotonic() + 1.0, 0.05) == "outside_plan"


def _load(tmp_path: Path, text: str) -> config_mod.GatewayConfig:
    path = tmp_path / "gateway.toml"
    path.write_text('[gateway]\nsite = "s"\nid = "g"\n' + text, encoding="utf-8")
    return config_mod.load(path)


@pytest.mark.parametrize(
    ("table", "key", "words"),
    [
        (
            PF + "tx_power_dbm = 20\n",
            "lora.packet_forwarder[0].tx_power_dbm",
            "above the 14 dBm ERP EU868 allows on its uplink channels: at most 14 dBm",
        ),
        (
            PF + "antenna_gain_dbi = 8\n",
            "lora.packet_forwarder[0].tx_power_dbm",
            "14 dBm with a 8 dBi antenna is above the 14 dBm ERP EU868 allows on its uplink "
            "channels: at most 8.15 dBm",
        ),
        (
            '[[lora.spi]]\nchip = "sx1276"\nfreq_khz = 915000\n',
            "lora.spi[0].freq_khz",
            "the 125 kHz channel at 915 MHz is outside EU868 (863-870 MHz)",
        ),
        (
            '[[lora.spi]]\nchip = "sx1276"\nfreq_khz = 868550\n',
            "lora.spi[0].freq_khz",
            "crosses a sub-band edge of EU868",
        ),
        (
            '[[lora.spi]]\nchip = "sx1276"\nfreq_khz = 868100\nacks = true\ntx_power_dbm = 17\n',
            "lora.spi[0].tx_power_dbm",
            "above the 14 dBm ERP EU868 allows in 868-868.6 MHz: at most 14 dBm",
        ),
        (
            PF + "rx2_freq_hz = 868650000\n",
            "lora.packet_forwarder[0].rx2_freq_hz",
            "RX2: the 125 kHz channel at 868.65 MHz crosses a sub-band edge of EU868",
        ),
        (
            PF + "rx2_freq_hz = 915000000\n",
            "lora.packet_forwarder[0].rx2_freq_hz",
            "must be 863000000..870000000, got 915000000",
        ),
        (
            PF + "rx2_sf = 13\n",
            "lora.packet_forwarder[0].rx2_sf",
            "must be 7..12, got 13",
        ),
        (
            PF + 'region = "US915"\n',
            "lora.packet_forwarder[0].region",
            "must be one of EU868",
        ),
    ],
)
def test_check_config_refuses_what_the_plan_does_not_allow(
    tmp_path: Path, table: str, key: str, words: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        _load(tmp_path, table)
    assert refused.value.key == key
    assert words in str(refused.value)


def test_rx2_defaults_to_the_plans_channel(tmp_path: Path) -> None:
    forwarder = _load(tmp_path, PF).packet_forwarders[0]
    assert (forwarder.rx2, forwarder.rx2_freq_hz, forwarder.rx2_sf) == (True, 869_525_000, 12)
    forwarder = _load(tmp_path, PF + "rx2 = false\nrx2_sf = 9\n").packet_forwarders[0]
    assert (forwarder.rx2, forwarder.rx2_sf) == (False, 9)


def test_the_rx2_channel_takes_more_power(tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        '[[lora.spi]]\nchip = "sx1276"\nfreq_khz = 869525\nacks = true\ntx_power_dbm = 20\n',
    )
    assert config.spi_radios[0].tx_power_dbm == 20  # 869.4-869.65 MHz: 27 dBm ERP
