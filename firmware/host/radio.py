"""A LoRa radio channel simulator: where emulated nodes and packet forwarders meet.

Pure Python, deterministic for a seed, in simulated time (integer microseconds; it never reads
the wall clock). Callers register each transmission when it starts (`transmit`), move time on,
and collect the finished ones with `settle(now_us)`: each says, per receiver, whether it was
received (RSSI, SNR) or lost and why.

    channel = Channel(seed=1)
    channel.add_gateway("gw", 0, 0)
    channel.add_node("n1", 800, 300)
    tx = channel.transmit("n1", frame, Radio(868_100_000, sf=9), start_us=0)
    for done in channel.settle(tx.end_us):
        done.receptions["gw"]          # Reception(rssi_dbm=..., snr_db=...) or absent
        done.losses.get("gw")          # "collision", "below sensitivity", ...

The model (each choice is a parameter; the defaults are cited):

- Path loss: log-distance, PL(d) = PL(d0) + 10 n log10(d / d0) + X, X ~ N(0, sigma) drawn once
  per link (shadowing belongs to the place, not to the packet). Two parameter sets:
  HATA_URBAN_868, the Okumura-Hata model for a small/medium city (Hata 1980; COST 231 final
  report, section 4.4.1) at 868 MHz, gateway antenna 15 m, node 1.5 m, which is log-linear in d:
  130.2 dB at 1 km, exponent 3.72 (Hata is fitted for 1-20 km; closer links are extrapolated);
  and BOR_2016, the measurement of Bor et al., "Do LoRa Low-Power Wide-Area Networks Scale?"
  (MSWiM 2016): 127.41 dB at 40 m, exponent 2.08, sigma 3.57 dB (a built-up area, ground level).
- Noise floor: -174 dBm/Hz + 10 log10(BW) + a 6 dB noise figure (-117 dBm at 125 kHz);
  SNR = RSSI - noise floor. A frame is demodulated when its SNR is at least the SX1276's floor
  for its spreading factor (SX1276 datasheet rev. 7, section 4.1.1.2, table 13: SF7 -7.5 dB in
  steps of 2.5 dB to SF12 -20 dB).
- Airtime: the firmware's own calculation (firmware/edgeveil_node/airtime.py: SX1276
  datasheet section 4.1.1.7, explicit header, CRC on, low data rate optimisation when a symbol
  lasts 16 ms or more, as micropython-lib's `lora` does).
- Collisions: frames that overlap in time on the same frequency, spreading factor and bandwidth
  interfere. With capture (the default) a frame survives if its power at the receiver is at
  least 6 dB above the sum of the others overlapping it (the co-SF threshold of Bor et al. 2016
  and Goursaud & Gorce, "Dedicated networks for IoT: PHY/MAC state of the art and challenges",
  EAI 2015); the timing condition of Bor et al. (the stronger frame must start within the
  weaker one's preamble) is not modelled. Without capture every overlapped frame is lost.
  Different spreading factors are treated as orthogonal (in reality quasi-orthogonal: a frame
  of another SF about 16 dB or more stronger can still destroy it; Croce et al., IEEE Comm.
  Letters 2018); different frequencies do not interact.
- Uplinks (from nodes) and downlinks (from gateways, inverted IQ as in LoRaWAN) do not
  interfere with each other; a gateway is half-duplex: it receives nothing while it transmits.
- Random loss: an optional probability per frame and receiver (fading, interference from
  outside the simulation), after everything above.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from firmware.edgeveil_node import airtime as firmware_airtime  # one formula for node and sim

__all__ = [
    "BOR_2016",
    "CAPTURE_THRESHOLD_DB",
    "HATA_URBAN_868",
    "SNR_FLOOR_DB",
    "Channel",
    "PathLoss",
    "Radio",
    "Reception",
    "Station",
    "Transmission",
    "airtime_us",
    "noise_floor_dbm",
]

THERMAL_NOISE_DBM_PER_HZ = -174.0
NOISE_FIGURE_DB = 6.0
# SX1276 datasheet rev. 7, section 4.1.1.2, table 13: lowest SNR the demodulator works at
SNR_FLOOR_DB = {7: -7.5, 8: -10.0, 9: -12.5, 10: -15.0, 11: -17.5, 12: -20.0}
CAPTURE_THRESHOLD_DB = 6.0  # Bor et al. 2016; Goursaud & Gorce 2015

# why a frame did not reach a receiver
BELOW_SENSITIVITY = "below sensitivity"
COLLISION = "collision"
GATEWAY_TRANSMITTING = "gateway transmitting"
RANDOM_LOSS = "random loss"
LOSS_REASONS = (BELOW_SENSITIVITY, COLLISION, GATEWAY_TRANSMITTING, RANDOM_LOSS)
KEEP_DOWNLINKS_US = 10_000_000


@dataclass(frozen=True)
class PathLoss:
    """Log-distance path loss with log-normal shadowing."""

    name: str
    d0_m: float
    loss_at_d0_db: float
    exponent: float
    shadowing_db: float = 0.0

    def loss_db(self, distance_m: float, shadow_db: float = 0.0) -> float:
        d = max(distance_m, 1.0)  # no antenna sits on top of another
        return self.loss_at_d0_db + 10 * self.exponent * math.log10(d / self.d0_m) + shadow_db


# Okumura-Hata, small/medium city, f = 868 MHz, h_b = 15 m, h_m = 1.5 m:
# 69.55 + 26.16 log f - 13.82 log h_b - a(h_m) + (44.9 - 6.55 log h_b) log d_km
HATA_URBAN_868 = PathLoss("hata-urban-868", 1000.0, 130.2, 3.72, 0.0)
BOR_2016 = PathLoss("bor-2016", 40.0, 127.41, 2.08, 3.57)
PATH_LOSS_MODELS = {m.name: m for m in (HATA_URBAN_868, BOR_2016)}


@dataclass(frozen=True)
class Radio:
    """The LoRa settings of one transmission (or of a receiver)."""

    freq_hz: int = 868_100_000
    sf: int = 9
    bw_hz: int = 125_000
    coding_rate: int = 5  # 4/5
    preamble: int = 8

    def __post_init__(self) -> None:
        if self.sf not in SNR_FLOOR_DB:
            raise ValueError(f"spreading factor must be 7..12, got {self.sf}")
        if self.bw_hz not in (125_000, 250_000, 500_000):
            raise ValueError(f"bandwidth must be 125000, 250000 or 500000 Hz, got {self.bw_hz}")
        if not 5 <= self.coding_rate <= 8:
            raise ValueError(f"coding rate must be 5..8 (4/5..4/8), got {self.coding_rate}")

    @property
    def datr(self) -> str:
        """The Semtech packet forwarder's name for it, e.g. "SF9BW125"."""
        return f"SF{self.sf}BW{self.bw_hz // 1000}"

    @property
    def codr(self) -> str:
        return f"4/{self.coding_rate}"

    def same_channel(self, other: Radio) -> bool:
        return (self.freq_hz, self.sf, self.bw_hz) == (other.freq_hz, other.sf, other.bw_hz)




def airtime_us(radio: Radio, payload_len: int) -> int:
    """Time on air of one frame (SX1276 datasheet section 4.1.1.7, explicit header, CRC on)."""
    us: int = firmware_airtime.time_on_air_us(
        payload_len, radio.sf, radio.bw_hz, radio.coding_rate, radio.preamble
    )
    return us


def noise_floor_dbm(bw_hz: int) -> float:
    return THERMAL_NOISE_DBM_PER_HZ + 10 * math.log10(bw_hz) + NOISE_FIGURE_DB


@dataclass(frozen=True)
class Station:
    name: str
    x_m: float
    y_m: float
    is_gateway: bool


@dataclass(frozen=True)
class Reception:
    receiver: str
    rssi_dbm: float
    snr_db: float


@dataclass
class Transmission:
    """One frame on the air and, once settled, what became of it at each receiver."""

    id: int
    source: str
    payload: bytes
    radio: Radio
    start_us: int
    end_us: int
    tx_power_dbm: float
    downlink: bool
    receptions: dict[str, Reception] = field(default_factory=dict)
    losses: dict[str, str] = field(default_factory=dict)
    settled: bool = False
    inverted_iq: bool = False  # downlinks: LoRaWAN sends them inverted (txpk "ipol")

    def overlaps(self, other: Transmission) -> bool:
        return self.start_us < other.end_us and other.start_us < self.end_us


class Channel:
    """The air between the stations: see the module's documentation for the model."""

    def __init__(
        self,
        *,
        seed: int = 0,
        path_loss: PathLoss = HATA_URBAN_868,
        capture: bool = True,
        random_loss: float = 0.0,
        tx_power_dbm: float = 14.0,
    ) -> None:
        if not 0.0 <= random_loss <= 1.0:
            raise ValueError(f"random loss must be a probability 0..1, got {random_loss}")
        self.seed = seed
        self.path_loss = path_loss
        self.capture = capture
        self.random_loss = random_loss
        self.tx_power_dbm = tx_power_dbm
        self.stations: dict[str, Station] = {}
        self._on_air: list[Transmission] = []  # not settled yet, or still able to interfere
        self._next_id = 0
        self._settled_until = 0
        self._longest_us = 0
        self._gain_cache: dict[tuple[str, str], float] = {}

    # -- the map -----------------------------------------------------------------------------

    def add_node(self, name: str, x_m: float, y_m: float) -> Station:
        return self._add(Station(name, x_m, y_m, False))

    def add_gateway(self, name: str, x_m: float, y_m: float) -> Station:
        return self._add(Station(name, x_m, y_m, True))

    def _add(self, station: Station) -> Station:
        if station.name in self.stations:
            raise ValueError(f"a station named {station.name!r} is already on the map")
        self.stations[station.name] = station
        return station

    @property
    def gateways(self) -> list[Station]:
        return [s for s in self.stations.values() if s.is_gateway]

    def distance_m(self, a: str, b: str) -> float:
        sa, sb = self.stations[a], self.stations[b]
        return math.hypot(sa.x_m - sb.x_m, sa.y_m - sb.y_m)

    def link_loss_db(self, a: str, b: str) -> float:
        """Path loss between two stations, with the link's own (fixed, seeded) shadowing."""
        key = (a, b) if a <= b else (b, a)
        loss = self._gain_cache.get(key)
        if loss is None:
            shadow = 0.0
            if self.path_loss.shadowing_db:
                rng = random.Random(f"{self.seed}:shadow:{key[0]}:{key[1]}")  # noqa: S311 - a model
                shadow = rng.gauss(0.0, self.path_loss.shadowing_db)
            loss = self.path_loss.loss_db(self.distance_m(a, b), shadow)
            self._gain_cache[key] = loss
        return loss

    def rssi_dbm(self, tx: Transmission, receiver: str) -> float:
        return tx.tx_power_dbm - self.link_loss_db(tx.source, receiver)

    # -- the air -----------------------------------------------------------------------------

    def transmit(
        self,
        source: str,
        payload: bytes,
        radio: Radio,
        start_us: int,
        *,
        tx_power_dbm: float | None = None,
        inverted_iq: bool | None = None,
    ) -> Transmission:
        """Put a frame on the air from `start_us` for its airtime. Frames must be registered
        no later than they start (a downlink may be registered ahead of time)."""
        station = self.stations.get(source)
        if station is None:
            raise ValueError(f"unknown station {source!r}: add it to the map first")
        if start_us < self._settled_until:
            raise ValueError(
                f"frame from {source} starts at {start_us} us, before the settled time "
                f"{self._settled_until} us: register frames when they start"
            )
        end_us = start_us + airtime_us(radio, len(payload))
        self._longest_us = max(self._longest_us, end_us - start_us)
        tx = Transmission(
            self._next_id,
            source,
            bytes(payload),
            radio,
            start_us,
            end_us,
            self.tx_power_dbm if tx_power_dbm is None else tx_power_dbm,
            station.is_gateway,
            inverted_iq=station.is_gateway if inverted_iq is None else inverted_iq,
        )
        self._next_id += 1
        self._on_air.append(tx)
        return tx

    def settle(self, now_us: int) -> list[Transmission]:
        """The uplinks that ended by `now_us` and were not returned before, in order of their
        end, each with its receptions and losses at every gateway. (A node's modem asks for
        downlinks with `receive()`.) Call with a time that only moves forward."""
        self._settled_until = max(self._settled_until, now_us)
        done = sorted(
            (t for t in self._on_air if t.end_us <= now_us and not t.downlink and not t.settled),
            key=lambda t: (t.end_us, t.id),
        )
        gateways = self.gateways
        for tx in done:
            tx.settled = True
            for gw in gateways:
                self._resolve(tx, gw.name)
        # keep what can still overlap a frame not settled yet (and downlinks a while longer,
        # for a receive window that is asked about late)
        horizon = now_us - self._longest_us
        self._on_air = [
            t
            for t in self._on_air
            if t.end_us > horizon or (t.downlink and t.end_us > horizon - KEEP_DOWNLINKS_US)
        ]
        return done

    def receive(
        self,
        receiver: str,
        radio: Radio,
        from_us: int,
        until_us: int,
        *,
        inverted_iq: bool = True,
    ) -> Transmission | None:
        """The first downlink on `radio`'s channel (and IQ polarity) that starts within
        [from_us, until_us) and that `receiver` (a node) demodulates; None if there is none
        (yet). The frame may still be on the air: compare its end_us with the time."""
        for tx in sorted(self._on_air, key=lambda t: (t.start_us, t.id)):
            if not tx.downlink or not radio.same_channel(tx.radio):
                continue
            if tx.inverted_iq != inverted_iq:
                continue
            if not from_us <= tx.start_us < until_us:
                continue
            if receiver not in tx.receptions and receiver not in tx.losses:
                self._resolve(tx, receiver)
            if receiver in tx.receptions:
                return tx
        return None

    def transmissions_from(self, source: str) -> list[Transmission]:
        """Recent frames of `source` (those the channel still holds), oldest first."""
        return sorted((t for t in self._on_air if t.source == source), key=lambda t: t.start_us)

    # -- the model ---------------------------------------------------------------------------

    def _resolve(self, tx: Transmission, receiver: str) -> None:
        if receiver == tx.source:
            return
        rssi = self.rssi_dbm(tx, receiver)
        snr = rssi - noise_floor_dbm(tx.radio.bw_hz)
        loss = self._loss(tx, receiver, rssi, snr)
        if loss is None:
            tx.receptions[receiver] = Reception(receiver, round(rssi, 1), round(snr, 1))
        else:
            tx.losses[receiver] = loss

    def _loss(self, tx: Transmission, receiver: str, rssi: float, snr: float) -> str | None:
        if snr < SNR_FLOOR_DB[tx.radio.sf]:
            return BELOW_SENSITIVITY
        if not tx.downlink and any(
            t.downlink and t.source == receiver and t.overlaps(tx) for t in self._on_air
        ):
            return GATEWAY_TRANSMITTING
        interferers = [
            t
            for t in self._on_air
            if t.id != tx.id
            and t.downlink == tx.downlink
            and t.source != receiver
            and t.overlaps(tx)
            and t.radio.same_channel(tx.radio)
        ]
        if interferers:
            if not self.capture:
                return COLLISION
            interference_mw = sum(10 ** (self.rssi_dbm(t, receiver) / 10) for t in interferers)
            if rssi - 10 * math.log10(interference_mw) < CAPTURE_THRESHOLD_DB:
                return COLLISION
        if self.random_loss:
            rng = random.Random(f"{self.seed}:loss:{tx.id}:{receiver}")  # noqa: S311 - a model
            draw = rng.random()
            if draw < self.random_loss:
                return RANDOM_LOSS
        return None


def loss_counts(transmissions: Iterable[Transmission], receiver: str) -> dict[str, int]:
    """How many of `transmissions` `receiver` got ("received") or lost, by reason."""
    counts = dict.fromkeys(("received", *LOSS_REASONS), 0)
    for tx in transmissions:
        if receiver in tx.receptions:
            counts["received"] += 1
        elif receiver in tx.losses:
            counts[tx.losses[receiver]] += 1
    return counts
