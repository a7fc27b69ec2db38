"""Seeded scenarios: the world an emulated node lives in, repeatable from one seed.

A scenario answers, for a world time t (seconds since the fleet started):

- the air around the node (environment): a day/night sinusoid for temperature and humidity, a
  slow pressure drift, particulate matter with rush-hour bumps, CO2 that follows occupancy, all
  with smooth noise;
- the people nearby (crowd): BLE devices that arrive, stay a while and leave, each with a
  random private address that rotates like a phone's, plus a few fixed beacons;
- motion in front of the PIR (people arriving);
- the battery voltage;
- faults: garbage bytes on the line, written bytes lost, reboots and power cuts at random
  points, clock drift.

Everything environmental is a pure function of (seed, t): a node that reboots finds the world
where it left it, and two runs with the same seed see the same world. Random decisions that
depend on what the node does (which write is lost) come from `random.Random` streams seeded by
(seed, node, boot). Only locally administered addresses are generated (first octet 0b01xxxx10
or 0b11xxxx10), never a vendor OUI, and advertising data carries the company id 0xFFFF, which
the Bluetooth SIG reserves for tests.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

__all__ = [
    "FAULT_NAMES",
    "SCENARIOS",
    "Conditions",
    "CrowdProfile",
    "Device",
    "EnvironmentProfile",
    "FaultProfile",
    "LineFaults",
    "PowerEvent",
    "Scenario",
    "ScenarioProfile",
    "parse_faults",
]

_MASK64 = (1 << 64) - 1


def _mix(*keys: int | str) -> int:
    """A 64-bit hash of the keys (splitmix64 chain): the same on every run and platform,
    unlike hash(), which is salted per process for str."""
    h = 0x9E3779B97F4A7C15
    for key in keys:
        if isinstance(key, str):
            for b in key.encode():
                h = _splitmix(h ^ b)
        else:
            h = _splitmix(h ^ (key & _MASK64))
            h = _splitmix(h ^ ((key >> 64) & _MASK64))
    return h


def _splitmix(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _unit(*keys: int | str) -> float:
    """Uniform in [0, 1), a pure function of the keys."""
    return (_mix(*keys) >> 11) / float(1 << 53)


def smooth_noise(x: float, *keys: int | str) -> float:
    """Value noise in [-1, 1]: random at whole x, cosine-interpolated between."""
    i = math.floor(x)
    f = x - i
    a = _unit(*keys, i) * 2 - 1
    b = _unit(*keys, i + 1) * 2 - 1
    w = (1 - math.cos(math.pi * f)) / 2
    return a + (b - a) * w


def rng_for(*keys: int | str) -> random.Random:
    """A random stream for one purpose (seed, node, boot, what), independent of the others."""
    return random.Random(_mix(*keys))  # noqa: S311 - simulation, not security


# ---------------------------------------------------------------------------------------------
# Profiles


@dataclass(frozen=True)
class EnvironmentProfile:
    temperature_c: tuple[float, float] = (21.0, 1.5)  # mean, day/night amplitude
    humidity_pct: tuple[float, float] = (45.0, 6.0)  # mean, amplitude (opposite phase)
    pressure_hpa: tuple[float, float] = (1013.0, 4.0)  # mean, slow drift amplitude
    pm25_ugm3: tuple[float, float] = (6.0, 4.0)  # base, rush-hour bump
    co2_ppm: tuple[float, float] = (450.0, 35.0)  # base, added per person present
    warmest_hour: float = 15.0
    noise: float = 0.3  # amplitude of smooth noise, in each quantity's unit x this factor
    day_s: float = 86400.0  # length of a simulated day (compress it for fast tests)
    start_hour: float = 10.0  # time of day at world time 0


@dataclass(frozen=True)
class CrowdProfile:
    arrivals_per_min: float = 2.0  # at the busiest hour; nights are quieter
    night_factor: float = 0.1
    dwell_s: float = 120.0  # mean time a device stays in range
    rotate_s: float = 60.0  # private address rotation (phones: ~15 min; short for tests)
    beacons: int = 1  # fixed devices with a static random address
    rssi_dbm: tuple[int, int] = (-95, -45)  # far, near
    bucket_s: float = 30.0  # arrivals are drawn per bucket of this length


FAULT_NAMES = ("garbage", "drop", "reboot", "power-cut", "drift")


@dataclass(frozen=True)
class FaultProfile:
    garbage: float = 0.0  # probability that garbage bytes go on the line around a write
    drop: float = 0.0  # probability that one write (one frame) is lost
    reboot_s: float = 0.0  # mean seconds between reset-button reboots (0: never)
    power_cut_s: float = 0.0  # mean seconds between power cuts (0: never)
    drift_ppm: float = 0.0  # clock drift magnitude; each node gets its own sign and share
    power_off_s: tuple[float, float] = (0.2, 1.5)  # how long the power stays off

    def enabled(self) -> list[str]:
        values = (self.garbage, self.drop, self.reboot_s, self.power_cut_s, self.drift_ppm)
        return [name for name, v in zip(FAULT_NAMES, values, strict=True) if v]


# The value a fault gets when named without one (--faults drop).
FAULT_DEFAULTS = {
    "garbage": 0.2,
    "drop": 0.1,
    "reboot": 20.0,
    "power-cut": 30.0,
    "drift": 20000.0,
}
_FAULT_HELP = {
    "garbage": "probability 0..1 per write",
    "drop": "probability 0..1 per write",
    "reboot": "mean seconds between reboots",
    "power-cut": "mean seconds between power cuts",
    "drift": "clock drift in ppm (parts per million)",
}


def parse_faults(text: str) -> FaultProfile:
    """Parse "drop,garbage=0.5,power-cut=10" (or "all", or "none") into a FaultProfile (the
    faults not named are off); ValueError with a one-line message for anything else."""
    text = text.strip()
    if text in ("", "none"):
        return FaultProfile()
    if text == "all":
        text = ",".join(FAULT_NAMES)
    changes: dict[str, float] = {}
    for item in text.split(","):
        name, _, raw = item.strip().partition("=")
        if name not in FAULT_DEFAULTS:
            raise ValueError(f"unknown fault {name!r} (known: {', '.join(FAULT_NAMES)}, all, none)")
        if raw:
            try:
                value = float(raw)
            except ValueError:
                raise ValueError(f"{name}={raw}: {_FAULT_HELP[name]}, not a number") from None
        else:
            value = FAULT_DEFAULTS[name]
        if not math.isfinite(value):
            raise ValueError(f"{name}={raw}: must be a finite number")
        if name in ("garbage", "drop") and not 0 <= value <= 1:
            raise ValueError(f"{name}={raw}: {_FAULT_HELP[name]}")
        if name in ("reboot", "power-cut") and value <= 0:
            raise ValueError(f"{name}={raw}: {_FAULT_HELP[name]}, more than 0")
        if name == "drift" and not -500_000 < value < 500_000:
            raise ValueError(f"{name}={raw}: {_FAULT_HELP[name]}, within +-500000")
        changes[name] = value
    return FaultProfile(
        garbage=changes.get("garbage", 0.0),
        drop=changes.get("drop", 0.0),
        reboot_s=changes.get("reboot", 0.0),
        power_cut_s=changes.get("power-cut", 0.0),
        drift_ppm=changes.get("drift", 0.0),
    )


def format_faults(faults: FaultProfile) -> str:
    """The --faults text that gives this profile back ("none" when nothing is enabled)."""
    values = {
        "garbage": faults.garbage,
        "drop": faults.drop,
        "reboot": faults.reboot_s,
        "power-cut": faults.power_cut_s,
        "drift": faults.drift_ppm,
    }
    parts = [f"{name}={values[name]!r}" for name in FAULT_NAMES if values[name]]
    return ",".join(parts) or "none"


@dataclass(frozen=True)
class ScenarioProfile:
    name: str
    description: str
    environment: EnvironmentProfile = field(default_factory=EnvironmentProfile)
    crowd: CrowdProfile = field(default_factory=CrowdProfile)
    faults: FaultProfile = field(default_factory=FaultProfile)
    motion_per_min: float = 0.5  # PIR triggers without a BLE device (people without phones)
    battery_mv: tuple[int, int] = (4100, 3500)  # full, after one simulated day


SCENARIOS: dict[str, ScenarioProfile] = {
    p.name: p
    for p in (
        ScenarioProfile(
            "office",
            "indoors by day: mild temperature swing, a few people coming and going",
        ),
        ScenarioProfile(
            "street",
            "outdoors: large day/night swing, traffic particulates, many passers-by",
            environment=EnvironmentProfile(
                temperature_c=(14.0, 6.0),
                humidity_pct=(70.0, 15.0),
                pressure_hpa=(1009.0, 8.0),
                pm25_ugm3=(12.0, 20.0),
                co2_ppm=(420.0, 2.0),
                noise=0.6,
            ),
            crowd=CrowdProfile(arrivals_per_min=12.0, dwell_s=25.0, rotate_s=45.0, beacons=0),
            motion_per_min=3.0,
        ),
        ScenarioProfile(
            "night",
            "a closed building: cooling down, nobody there, one beacon",
            environment=EnvironmentProfile(temperature_c=(17.0, 2.0), start_hour=23.0),
            crowd=CrowdProfile(arrivals_per_min=0.05, night_factor=1.0),
            motion_per_min=0.0,
        ),
        ScenarioProfile(
            "stress",
            "office with every fault on: line garbage, lost frames, reboots, power cuts, drift",
            faults=FaultProfile(
                garbage=0.3, drop=0.15, reboot_s=20.0, power_cut_s=30.0, drift_ppm=20000.0
            ),
            crowd=CrowdProfile(arrivals_per_min=6.0, dwell_s=40.0, rotate_s=20.0),
        ),
    )
}


# ---------------------------------------------------------------------------------------------
# What the node's sensors see


@dataclass(frozen=True)
class Conditions:
    temperature_c: float
    humidity_pct: float
    pressure_pa: float
    co2_ppm: float
    pm1_ugm3: float
    pm25_ugm3: float
    pm10_ugm3: float
    people: int  # devices in range (the crowd)


@dataclass(frozen=True)
class Device:
    """One BLE advertiser in range: address as MicroPython gives it (most significant octet
    first), address type (1: random), RSSI in dBm, raw advertising data."""

    address: bytes
    addr_type: int
    rssi: int
    adv_data: bytes


@dataclass(frozen=True)
class _Visit:
    key: tuple[int, int]  # (bucket, index)
    arrive: float
    leave: float
    rssi: float
    phase: float  # offset of its address rotation


@dataclass(frozen=True)
class PowerEvent:
    at: float  # world time, seconds
    kind: str  # "reboot" (reset button) or "power-cut"
    off_s: float  # power-cut: how long the node stays off


class Scenario:
    """The world of one node: a profile, the fleet seed and the node's index in the fleet."""

    def __init__(
        self,
        profile: ScenarioProfile | str = "office",
        seed: int = 0,
        node: int = 0,
        faults: FaultProfile | None = None,
    ) -> None:
        if isinstance(profile, str):
            try:
                profile = SCENARIOS[profile]
            except KeyError:
                raise ValueError(
                    f"unknown scenario {profile!r} (known: {', '.join(SCENARIOS)})"
                ) from None
        if faults is not None:
            profile = replace(profile, faults=faults)
        self.profile = profile
        self.seed = seed
        self.node = node
        self._visits: dict[int, list[_Visit]] = {}

    @property
    def name(self) -> str:
        return self.profile.name

    @property
    def faults(self) -> FaultProfile:
        return self.profile.faults

    # -- time of day -------------------------------------------------------------------

    def _day_phase(self, t: float) -> float:
        """0..1 through the simulated day (0 = midnight)."""
        env = self.profile.environment
        return (env.start_hour / 24.0 + t / env.day_s) % 1.0

    def activity(self, t: float) -> float:
        """How busy the place is, night_factor..1: a bell over the working day."""
        hour = self._day_phase(t) * 24.0
        day = max(0.0, math.sin(math.pi * (hour - 7.0) / 12.0)) if 7.0 <= hour <= 19.0 else 0.0
        night = self.profile.crowd.night_factor
        return night + (1.0 - night) * day

    # -- environment -------------------------------------------------------------------

    def _noise(self, t: float, channel: str, period_s: float) -> float:
        return smooth_noise(t / period_s, self.seed, self.node, channel)

    def conditions(self, t: float) -> Conditions:
        env = self.profile.environment
        hour = self._day_phase(t) * 24.0
        diurnal = math.cos(2 * math.pi * (hour - env.warmest_hour) / 24.0)  # 1 at warmest
        k = env.noise
        temperature = env.temperature_c[0] + env.temperature_c[1] * diurnal
        temperature += k * self._noise(t, "temperature", 90.0)
        humidity = env.humidity_pct[0] - env.humidity_pct[1] * diurnal
        humidity += 3 * k * self._noise(t, "humidity", 60.0)
        pressure_hpa = env.pressure_hpa[0] + env.pressure_hpa[1] * self._noise(
            t, "pressure", env.day_s / 4
        )
        pressure_hpa += 0.3 * k * self._noise(t, "pressure-fast", 30.0)
        rush = math.exp(-(((hour - 8.5) / 1.2) ** 2)) + math.exp(-(((hour - 17.5) / 1.5) ** 2))
        pm25 = env.pm25_ugm3[0] + env.pm25_ugm3[1] * rush
        pm25 *= 1 + 0.5 * k * self._noise(t, "pm", 20.0)
        pm25 = max(0.0, pm25)
        people = len(self.devices(t))
        co2 = env.co2_ppm[0] + env.co2_ppm[1] * people + 15 * k * self._noise(t, "co2", 45.0)
        return Conditions(
            temperature_c=temperature,
            humidity_pct=min(100.0, max(0.0, humidity)),
            pressure_pa=pressure_hpa * 100.0,
            co2_ppm=max(400.0, co2),
            pm1_ugm3=pm25 * 0.7,
            pm25_ugm3=pm25,
            pm10_ugm3=pm25 * 1.6 + 2,
            people=people,
        )

    def battery_mv(self, t: float) -> int:
        full, day_later = self.profile.battery_mv
        days = t / self.profile.environment.day_s
        mv = full - (full - day_later) * min(days, 2.0)
        mv += 8 * self._noise(t, "battery", 10.0)
        return max(3000, round(mv))

    # -- crowd -------------------------------------------------------------------------

    def _bucket(self, k: int) -> list[_Visit]:
        visits = self._visits.get(k)
        if visits is not None:
            return visits
        crowd = self.profile.crowd
        rng = rng_for(self.seed, self.node, "crowd", k)
        start = k * crowd.bucket_s
        mean = crowd.arrivals_per_min * self.activity(start) * crowd.bucket_s / 60.0
        visits = []
        for j in range(_poisson(rng, mean)):
            arrive = start + rng.random() * crowd.bucket_s
            dwell = min(rng.expovariate(1.0 / crowd.dwell_s), 4 * crowd.dwell_s)
            far, near = crowd.rssi_dbm
            rssi = far + (near - far) * rng.random() ** 0.7
            visits.append(_Visit((k, j), arrive, arrive + dwell, rssi, rng.random()))
        if len(self._visits) > 512:
            self._visits.clear()
        self._visits[k] = visits
        return visits

    def _present(self, t: float) -> list[_Visit]:
        crowd = self.profile.crowd
        # the world did not start with the fleet: people arrived before t = 0 too
        first = math.floor((t - 4 * crowd.dwell_s) / crowd.bucket_s)
        last = math.floor(t / crowd.bucket_s)
        return [
            v for k in range(first, last + 1) for v in self._bucket(k) if v.arrive <= t < v.leave
        ]

    def devices(self, t: float) -> list[Device]:
        """The BLE advertisers in range at world time t."""
        crowd = self.profile.crowd
        out = []
        for v in self._present(t):
            epoch = math.floor(t / crowd.rotate_s + v.phase)
            address = _private_address(self.seed, self.node, v.key[0], v.key[1], epoch)
            rssi = v.rssi + 4 * smooth_noise(t / 5.0, self.seed, "rssi", v.key[0], v.key[1])
            payload = _mix(self.seed, "adv", v.key[0], v.key[1], epoch).to_bytes(8, "big")[:4]
            out.append(Device(address, 1, _clamp_rssi(rssi), _adv_data(payload)))
        for b in range(crowd.beacons):
            address = _static_address(self.seed, self.node, b)
            rssi = -70 + 10 * _unit(self.seed, self.node, "beacon", b)
            rssi += 2 * smooth_noise(t / 7.0, self.seed, "beacon-rssi", b)
            adv = _adv_data(b"\xbe\xac" + bytes([b, 0]))
            out.append(Device(address, 1, _clamp_rssi(rssi), adv))
        return out

    def motion(self, t: float, hold_s: float = 2.0) -> bool:
        """The PIR output at world time t: high for hold_s after someone arrives."""
        for v in self._present(t):
            if v.arrive <= t < v.arrive + hold_s:
                return True
        rate = self.profile.motion_per_min * self.activity(t)
        if rate <= 0:
            return False
        # people without a phone: one chance per hold_s slot
        slot = math.floor(t / hold_s)
        return _unit(self.seed, self.node, "motion", slot) < rate * hold_s / 60.0

    # -- faults ------------------------------------------------------------------------

    def drift_factor(self) -> float:
        """How fast this node's clock runs against real time (1.0: exact)."""
        ppm = self.faults.drift_ppm
        if not ppm:
            return 1.0
        share = 0.5 + 0.5 * _unit(self.seed, self.node, "drift")  # 50..100 % of the magnitude
        sign = 1 if _unit(self.seed, self.node, "drift-sign") < 0.5 else -1
        return 1.0 + sign * share * ppm / 1e6

    def line_faults(self, boot: int) -> LineFaults:
        return LineFaults(self.faults, rng_for(self.seed, self.node, "line", boot))

    def power_events(self) -> Iterator[PowerEvent]:
        """Reboots and power cuts of this node, in world-time order, forever."""
        f = self.faults
        rng = rng_for(self.seed, self.node, "power")
        kinds = [(k, s) for k, s in (("reboot", f.reboot_s), ("power-cut", f.power_cut_s)) if s]
        if not kinds:
            return
        nxt = {kind: rng.expovariate(1.0 / mean) for kind, mean in kinds}
        means = dict(kinds)
        while True:
            kind = min(nxt, key=lambda k: nxt[k])
            at = nxt[kind]
            off = rng.uniform(*f.power_off_s) if kind == "power-cut" else 0.0
            yield PowerEvent(at, kind, off)
            # the next event of this kind counts from when the node is back
            nxt[kind] = at + off + max(1.0, rng.expovariate(1.0 / means[kind]))
            for other, when in nxt.items():
                if other != kind and when < at + off:
                    nxt[other] = at + off + rng.random()


class LineFaults:
    """What the line does to the bytes a node writes: drop a write, add garbage around it."""

    def __init__(self, faults: FaultProfile, rng: random.Random) -> None:
        self.faults = faults
        self.rng = rng
        self.dropped = 0
        self.garbage = 0

    @property
    def active(self) -> bool:
        return bool(self.faults.garbage or self.faults.drop)

    def garbage_bytes(self) -> bytes:
        rng = self.rng
        n = rng.randint(1, 24)
        data = bytes(rng.randrange(256) for _ in range(n))
        self.garbage += n
        return data

    def on_write(self, data: bytes) -> list[bytes]:
        """The pieces that reach the line for one write of `data` (maybe none)."""
        f = self.faults
        rng = self.rng
        if f.drop and rng.random() < f.drop:
            self.dropped += 1
            return []
        if f.garbage and rng.random() < f.garbage:
            where = rng.random()
            if where < 0.45:
                return [self.garbage_bytes(), data]
            if where < 0.9:
                return [data, self.garbage_bytes()]
            # noise in the middle of the write: that frame will not pass its CRC
            cut = rng.randrange(len(data) + 1)
            return [data[:cut], self.garbage_bytes(), data[cut:]]
        return [data]

    def on_receive(self, data: bytes) -> bytes:
        """What the node receives of bytes the gateway wrote (noise works both ways)."""
        f = self.faults
        if f.garbage and self.rng.random() < f.garbage / 2:
            return self.garbage_bytes() + data
        return data


# ---------------------------------------------------------------------------------------------


def _poisson(rng: random.Random, mean: float) -> int:
    if mean <= 0:
        return 0
    if mean > 30:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit = math.exp(-mean)
    k, p = 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def _clamp_rssi(value: float) -> int:
    return max(-100, min(-30, round(value)))


def _private_address(seed: int, node: int, bucket: int, index: int, epoch: int) -> bytes:
    raw = _mix(seed, node, "addr", bucket, index, epoch).to_bytes(8, "big")[:6]
    # 0b01xxxx10: a BLE resolvable-private-shaped address that is also IEEE "locally
    # administered, unicast", so it can never be mistaken for a vendor OUI.
    return bytes([(raw[0] & 0x3C) | 0x42]) + raw[1:]


def _static_address(seed: int, node: int, index: int) -> bytes:
    raw = _mix(seed, node, "beacon", index).to_bytes(8, "big")[:6]
    return bytes([(raw[0] & 0x3C) | 0xC2]) + raw[1:]  # 0b11xxxx10: static random, local


def _adv_data(payload: bytes) -> bytes:
    flags = b"\x02\x01\x06"  # LE general discoverable, BR/EDR not supported
    # manufacturer specific data under company id 0xFFFF (reserved by the SIG for testing)
    manufacturer = bytes([3 + len(payload), 0xFF, 0xFF, 0xFF]) + payload
    return flags + manufacturer


def scenario_names() -> list[str]:
    return list(SCENARIOS)


def describe() -> list[str]:
    """One line per scenario, for --help."""
    return [f"{p.name}: {p.description}" for p in SCENARIOS.values()]
