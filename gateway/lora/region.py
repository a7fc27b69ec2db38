"""Region plans: what a gateway may transmit, where, and how strongly.

A plan gives its band's edges, its sub-bands (each with a duty cycle and a maximum effective
radiated power) and its RX2 channel, after the LoRaWAN Regional Parameters (RP002-1.0.4) and,
for Europe, ETSI EN 300 220-2 and ERC Recommendation 70-03 Annex 1. A downlink is never sent
outside its plan's band, across a sub-band's edge (the whole channel, centre +- half the
bandwidth, must lie in one sub-band), or above the sub-band's power limit: `refusal()` names the
reason, which the LoRa transports count (`edgeveil_lora_downlinks_total`). `gateway
check-config` refuses a configured power or frequency the plan does not allow (gateway/config.py).

Power. The limits are effective radiated power (ERP, against a half-wave dipole); a transmitter
is configured in conducted dBm at its antenna port. ERP = conducted + antenna gain (dBi) - 2.15,
so with the usual 2.15 dBi antenna the conducted power equals the ERP. Cable and connector
losses are left out on the safe side.

EU868 is the plan built; the structure takes others (US915's channel grid and dwell-time rules
would be a second RegionPlan and a second entry in PLANS).
"""

from __future__ import annotations

from dataclasses import dataclass

from firmware.edgeveil_node import dutycycle

from .radio import DataRate

__all__ = ["EU868", "PLANS", "RegionPlan", "SubBand", "erp_dbm", "max_conducted_dbm"]

DIPOLE_GAIN_DBI = 2.15  # ERP is measured against a half-wave dipole


def erp_dbm(conducted_dbm: float, antenna_gain_dbi: float) -> float:
    """Effective radiated power of a transmitter with this antenna."""
    return conducted_dbm + antenna_gain_dbi - DIPOLE_GAIN_DBI


def max_conducted_dbm(max_erp_dbm: float, antenna_gain_dbi: float) -> float:
    """The conducted power that radiates `max_erp_dbm` through this antenna."""
    return max_erp_dbm + DIPOLE_GAIN_DBI - antenna_gain_dbi


@dataclass(frozen=True, slots=True)
class SubBand:
    low_hz: int
    high_hz: int
    duty_cycle: float  # the share of any hour one transmitter may use
    max_erp_dbm: float

    def holds(self, freq_hz: int, bw_khz: int) -> bool:
        """Whether the whole channel (centre +- half the bandwidth) lies in this sub-band."""
        half = bw_khz * 500
        return self.low_hz <= freq_hz - half and freq_hz + half <= self.high_hz

    def describe(self) -> str:
        return f"{self.low_hz / 1e6:g}-{self.high_hz / 1e6:g} MHz"


@dataclass(frozen=True, slots=True)
class RegionPlan:
    name: str
    low_hz: int
    high_hz: int
    sub_bands: tuple[SubBand, ...]
    rx2_freq_hz: int
    rx2_rate: DataRate

    def sub_band(self, freq_hz: int, bw_khz: int) -> SubBand | None:
        """The sub-band that holds the whole channel, or None."""
        return next((b for b in self.sub_bands if b.holds(freq_hz, bw_khz)), None)

    def refusal(
        self, freq_hz: int, bw_khz: int, conducted_dbm: float, antenna_gain_dbi: float
    ) -> str | None:
        """Why a transmission on this channel at this power is not allowed, or None:
        "outside_plan", "crosses_edge" or "over_power"."""
        half = bw_khz * 500
        if freq_hz - half < self.low_hz or freq_hz + half > self.high_hz:
            return "outside_plan"
        band = self.sub_band(freq_hz, bw_khz)
        if band is None:
            return "crosses_edge"
        if erp_dbm(conducted_dbm, antenna_gain_dbi) > band.max_erp_dbm + 1e-9:
            return "over_power"
        return None

    def explain(
        self, freq_hz: int, bw_khz: int, conducted_dbm: float, antenna_gain_dbi: float
    ) -> str | None:
        """refusal() in words, with the limit and what to do (configuration errors)."""
        reason = self.refusal(freq_hz, bw_khz, conducted_dbm, antenna_gain_dbi)
        channel = f"the {bw_khz} kHz channel at {freq_hz / 1e6:g} MHz"
        bands = ", ".join(b.describe() for b in self.sub_bands)
        if reason == "outside_plan":
            return (
                f"{channel} is outside {self.name} ({self.low_hz / 1e6:g}-"
                f"{self.high_hz / 1e6:g} MHz); its sub-bands: {bands}"
            )
        if reason == "crosses_edge":
            return f"{channel} crosses a sub-band edge of {self.name}; its sub-bands: {bands}"
        if reason == "over_power":
            band = self.sub_band(freq_hz, bw_khz)
            assert band is not None  # noqa: S101 - refusal() found it
            most = max_conducted_dbm(band.max_erp_dbm, antenna_gain_dbi)
            return (
                f"{conducted_dbm:g} dBm with a {antenna_gain_dbi:g} dBi antenna is "
                f"{erp_dbm(conducted_dbm, antenna_gain_dbi):g} dBm ERP, above the "
                f"{band.max_erp_dbm:g} dBm ERP {self.name} allows in {band.describe()}: at "
                f"most {most:g} dBm"
            )
        return None

    def rx1_max_erp_dbm(self) -> float:
        """The power limit every uplink channel allows (a RX1 downlink goes out on the uplink's
        channel, which may be any): the lowest of the sub-bands but RX2's."""
        return min(b.max_erp_dbm for b in self.sub_bands if not b.holds(self.rx2_freq_hz, 125))


# EU863-870 (RP002 section 2.4; ETSI EN 300 220-2 sub-bands, as the node firmware keeps them in
# firmware/edgeveil_node/dutycycle.py, so node and gateway share one table)
EU868 = RegionPlan(
    name="EU868",
    low_hz=863_000_000,
    high_hz=870_000_000,
    sub_bands=tuple(
        SubBand(low * 1000, high * 1000, 1 / divisor, float(dbm))
        for low, high, divisor, dbm in dutycycle.SUB_BANDS
    ),
    rx2_freq_hz=869_525_000,
    rx2_rate=DataRate(12, 125),
)

PLANS = {plan.name: plan for plan in (EU868,)}
