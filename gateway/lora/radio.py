"""What the radio says about one received frame, and what a downlink costs in airtime.

`RadioMeta` travels with a frame from a LoRa transport to ingest and back with the
acknowledgement, so the downlink goes out through the gateway that heard the node best, in
its RX1 window. It stays inside the gateway: RSSI and SNR can locate a node (a few gateways'
RSSI triangulate it), so they feed only per-gateway link metrics (histograms labelled by
gateway, never by node) and downlink routing. They are never logged per node and never
published on MQTT.

Time on air follows the Semtech SX1276 datasheet, section 4.1.1.7 (the same formula as
AN1200.13); the duty-cycle limits are those of ETSI EN 300 220-2 for the EU868 sub-bands, enforced
per gateway over a sliding hour. Formula and table are the node firmware's own modules, which run
on CPython as well.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from firmware.edgeveil_node import airtime, dutycycle

RX1_DELAY_US = 1_000_000  # the node opens RX1 1 s after its uplink ends
RX2_DELAY_US = 2_000_000  # and RX2 2 s after it, when nothing came in RX1
# A PULL_RESP must reach the gateway this long before its TX time (the packet forwarder's
# just-in-time queue needs ~30 ms; the rest is network). Later than this: not sent.
RX1_LEAD_S = 0.1
_DATR = re.compile(r"^SF(\d{1,2})BW(\d{2,3})$")
SPREADING_FACTORS = range(5, 13)
BANDWIDTHS_KHZ = (125, 250, 500)
CODING_RATES = ("4/5", "4/6", "4/7", "4/8")


@dataclass(frozen=True, slots=True)
class DataRate:
    """A LoRa data rate: spreading factor and bandwidth (kHz)."""

    sf: int
    bw_khz: int

    @property
    def datr(self) -> str:
        """The packet forwarder's notation, e.g. "SF7BW125"."""
        return f"SF{self.sf}BW{self.bw_khz}"

    @classmethod
    def parse(cls, text: str) -> DataRate:
        """'SF7BW125' -> DataRate(7, 125); ValueError naming what is wrong."""
        match = _DATR.match(text)
        if match is None:
            raise ValueError(f"data rate {text!r} is not like 'SF7BW125'")
        sf, bw = int(match[1]), int(match[2])
        if sf not in SPREADING_FACTORS:
            raise ValueError(f"spreading factor {sf} is not 5..12")
        if bw not in BANDWIDTHS_KHZ:
            raise ValueError(f"bandwidth {bw} kHz is not one of 125, 250, 500")
        return cls(sf, bw)


@dataclass(frozen=True, slots=True)
class RadioMeta:
    """One copy of a frame as a radio received it.

    `link` is the gateway that heard it: a concentrator's EUI (16 hex digits) or the name of a
    single-channel SPI transport. `tmst` is the concentrator's microsecond counter at the end
    of reception (packet forwarder only; downlinks are scheduled against it). `received` is
    the time.monotonic() at which the radio received it (for a concentrator estimated from
    its tmst, gateway.lora.forwarder.ConcentratorClock), to tell whether RX1 can still be
    reached.
    """

    link: str
    rssi: float
    snr: float | None
    freq_hz: int
    rate: DataRate
    codr: str
    tmst: int | None
    received: float
    copies: int = 1  # how many gateways heard the frame (after duplicate merging)

    def __repr__(self) -> str:
        # no RSSI/SNR in logs or tracebacks: they can locate a node
        return f"RadioMeta(link={self.link!r}, {self.rate.datr}, {self.freq_hz} Hz)"


def time_on_air(
    payload_bytes: int,
    rate: DataRate,
    codr: str = "4/5",
    *,
    preamble: int = 8,
    explicit_header: bool = True,
    crc: bool = True,
) -> float:
    """Seconds a LoRa packet takes on air (SX1276 datasheet 4.1.1.7): the node firmware's own
    formula (firmware/edgeveil_node/airtime.py), so node, gateway and simulator agree."""
    coding_rate = CODING_RATES.index(codr) + 5  # "4/5" -> 5, as micropython-lib counts it
    us = airtime.time_on_air_us(
        payload_bytes, rate.sf, rate.bw_khz * 1000, coding_rate, preamble, explicit_header, crc
    )
    return float(us) / 1e6


DUTY_CYCLE_WINDOW_S = 3600.0


def subband(freq_hz: int, bw_khz: int = 125) -> tuple[int, float] | None:
    """The EU868 sub-band holding the channel (an index into the firmware's table of ETSI EN
    300 220-2 sub-bands, firmware/edgeveil_node/dutycycle.py) and its duty-cycle limit as a
    fraction; None outside EU868."""
    index = dutycycle.sub_band(freq_hz // 1000, bw_khz)
    if index is None:
        return None
    return index, 1 / dutycycle.SUB_BANDS[index][2]


class DutyCycle:
    """Transmit airtime of one transmitter, per sub-band over a sliding hour.

    Outside the EU868 band no limit applies here (other regions limit dwell time and power,
    which their packet forwarder enforces). Memory: one entry per downlink in the last hour,
    at most limit * 3600 s / shortest packet (a few thousand).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._sent: dict[int, deque[tuple[float, float]]] = {}
        self._monotonic = clock

    def allow(self, freq_hz: int, airtime_s: float, bw_khz: int = 125) -> bool:
        """Whether `airtime_s` more keeps the sub-band within its limit; if so, counts it."""
        band = subband(freq_hz, bw_khz)
        if band is None:
            return True
        name, limit = band
        now = self._monotonic()
        sent = self._sent.setdefault(name, deque())
        while sent and sent[0][0] <= now - DUTY_CYCLE_WINDOW_S:
            sent.popleft()
        used = sum(airtime for _, airtime in sent)
        if used + airtime_s > limit * DUTY_CYCLE_WINDOW_S:
            return False
        sent.append((now, airtime_s))
        return True

    def refund(self, freq_hz: int, airtime_s: float, bw_khz: int = 125) -> None:
        """Take back the latest charge of `airtime_s` in the sub-band: the transmitter did not
        send it (a concentrator's TX_ACK said so)."""
        band = subband(freq_hz, bw_khz)
        sent = self._sent.get(band[0]) if band is not None else None
        if not sent:
            return
        for entry in reversed(sent):
            if entry[1] == airtime_s:
                sent.remove(entry)
                return

    def used(self, freq_hz: int, bw_khz: int = 125) -> float:
        """Seconds sent in the sub-band of freq_hz within the last hour."""
        band = subband(freq_hz, bw_khz)
        sent = self._sent.get(band[0]) if band is not None else None
        if not sent:
            return 0.0
        cutoff = self._monotonic() - DUTY_CYCLE_WINDOW_S
        return sum(airtime for at, airtime in sent if at > cutoff)
