"""The gateway's configuration: one TOML file, validated at start.

Every error names the key and the problem, in one line (ConfigError). Everything has a default,
so `edgeveil demo` and a first start need no file at all. `examples/gateway.toml` shows every
key with its default and meaning.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .lora.region import DIPOLE_GAIN_DBI, PLANS, erp_dbm, max_conducted_dbm

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")  # safe in MQTT topics and file names
_TOPIC_LEVELS = re.compile(r"^[A-Za-z0-9_-]{1,64}(/[A-Za-z0-9_-]{1,64}){0,3}$")
PAYLOAD_FORMATS = ("senml+json", "senml+cbor")
SPOOL_POLICIES = ("drop_oldest", "refuse_new")
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class UsbMatch:
    """Select a serial port by USB identity, so it survives re-enumeration (ttyUSB0 -> 1)."""

    vid: int
    pid: int
    serial_number: str | None = None


@dataclass(frozen=True)
class SerialPortConfig:
    """One serial link: a pyserial URL (a device path is one) or a USB match."""

    name: str
    url: str | None = None
    usb: UsbMatch | None = None
    baudrate: int = 115200


@dataclass(frozen=True)
class PacketForwarderConfig:
    """A UDP server for Semtech packet forwarders (SX1302/SX1303 concentrator gateways)."""

    name: str
    host: str = "0.0.0.0"  # noqa: S104 - concentrators on the site network reach it
    port: int = 1700
    gateways: tuple[str, ...] = ()  # allowed gateway EUIs, 16 upper-case hex digits
    # (EUI, host) for gateways given as "EUI@host": accepted from that address only; the
    # others are tied to the address they are first heard from (gateway.lora.forwarder)
    fixed_hosts: tuple[tuple[str, str], ...] = ()
    acks: bool = False  # acknowledgements and time sync as downlinks (airtime, duty cycle)
    dedupe_ms: int = 200  # copies of one frame from several gateways merged within this
    tx_power_dbm: int = 14  # conducted, at the concentrator's antenna port
    region: str = "EU868"  # the plan downlinks must keep to (gateway.lora.region)
    antenna_gain_dbi: float = 2.15  # for the ERP limit: conducted + gain - 2.15
    # RX2, when RX1 cannot be used (duty cycle, another downlink, a late uplink): the nodes'
    # rx2_freq_khz and rx2_sf must match; the region plan's RX2 channel by default
    rx2: bool = True
    rx2_freq_hz: int = 869_525_000
    rx2_sf: int = 12


@dataclass(frozen=True)
class SpiRadioConfig:
    """A single-channel LoRa HAT on SPI (SX1276 or SX1262), driven through LoRaRF."""

    name: str
    chip: str  # "sx1276" or "sx1262"
    freq_hz: int
    sf: int = 7
    bw_khz: int = 125
    codr: str = "4/5"
    sync_word: int = 0x12  # private LoRa networks; 0x34 is LoRaWAN's
    bus: int = 0
    cs: int = 0
    reset_pin: int = 22
    irq_pin: int = 4  # DIO0 (SX1276) or DIO1 (SX1262), BCM numbering
    busy_pin: int | None = None  # SX1262 only
    txen_pin: int | None = None
    rxen_pin: int | None = None
    dio2_rf_switch: bool = False  # SX1262 modules whose DIO2 drives the antenna switch
    acks: bool = False
    tx_power_dbm: int = 14
    region: str = "EU868"
    antenna_gain_dbi: float = 2.15


@dataclass(frozen=True)
class MqttConfig:
    host: str = "localhost"
    port: int = 1883
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password_file: Path | None = None  # a file, so the password is never in the config
    client_id: str | None = None
    topic_prefix: str = "edgeveil"
    payload: str = "senml+json"
    keepalive_s: int = 30


@dataclass(frozen=True)
class HomeAssistantConfig:
    """Home Assistant MQTT discovery (gateway/homeassistant.py)."""

    discovery: bool = False
    prefix: str = "homeassistant"  # Home Assistant's discovery_prefix


@dataclass(frozen=True)
class SpoolConfig:
    max_messages: int = 1_000_000
    max_age_s: int = 7 * 24 * 3600
    when_full: str = "drop_oldest"


@dataclass(frozen=True)
class GatewayConfig:
    site: str = "demo-site"
    gateway_id: str = "gateway-1"
    state_dir: Path = Path("edgeveil-state")
    log_level: str = "info"
    serial: tuple[SerialPortConfig, ...] = ()
    packet_forwarders: tuple[PacketForwarderConfig, ...] = ()  # [[lora.packet_forwarder]]
    spi_radios: tuple[SpiRadioConfig, ...] = ()  # [[lora.spi]]
    mqtt: MqttConfig | None = None  # None: start the embedded broker (demo and first steps)
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    metrics_listen: str | None = "127.0.0.1:9108"
    # the privacy policy file ([privacy] policy); None: the shipped default policy
    # (gateway/policies/default.toml). Read at start and again on SIGHUP.
    privacy_policy: Path | None = None
    homeassistant: HomeAssistantConfig = field(default_factory=HomeAssistantConfig)
    source: str = ""  # the file this came from, for messages


class _Table:
    """Typed access to one TOML table that remembers which keys were read."""

    def __init__(self, data: Any, path: str, source: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(path, "must be a table", source)
        self.data: dict[str, Any] = data
        self.path = path
        self.source = source
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def get(self, name: str, kind: type, default: Any) -> Any:
        self.used.add(name)
        if name not in self.data:
            return default
        value = self.data[name]
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if not ok:
            raise ConfigError(
                self.key(name), f"must be {_KIND_NAMES[kind]}, got {value!r}", self.source
            )
        return value

    def integer(self, name: str, default: int, lo: int, hi: int) -> int:
        value: int = self.get(name, int, default)
        if not lo <= value <= hi:
            raise ConfigError(self.key(name), f"must be {lo}..{hi}, got {value}", self.source)
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value: str = self.get(name, str, default)
        if value not in choices:
            raise ConfigError(
                self.key(name), f"must be one of {', '.join(choices)}; got {value!r}", self.source
            )
        return value

    def name(self, name: str, default: str) -> str:
        value: str = self.get(name, str, default)
        if not _NAME.match(value):
            raise ConfigError(
                self.key(name),
                f"must be lowercase letters, digits and dashes (it goes into MQTT topics); "
                f"got {value!r}",
                self.source,
            )
        return value

    def choice_int(self, name: str, default: int, choices: tuple[int, ...]) -> int:
        value: int = self.get(name, int, default)
        if value not in choices:
            listed = ", ".join(str(c) for c in choices)
            raise ConfigError(self.key(name), f"must be one of {listed}; got {value}", self.source)
        return value

    def path_(self, name: str) -> Path | None:
        value: str | None = self.get(name, str, None)
        return None if value is None else Path(value)

    def table(self, name: str) -> _Table | None:
        self.used.add(name)
        if name not in self.data:
            return None
        return _Table(self.data[name], self.key(name), self.source)

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ConfigError(
                self.key(unknown[0]),
                "unknown key (check the spelling against examples/gateway.toml)",
                self.source,
            )


_KIND_NAMES = {int: "a whole number", str: "text", bool: "true or false", list: "a list"}


def _serial(item: Any, index: int, source: str) -> SerialPortConfig:
    t = _Table(item, f"serial[{index}]", source)
    name = t.name("name", f"port{index + 1}")
    url: str | None = t.get("url", str, None)
    usb_table = t.table("usb")
    usb = None
    if usb_table is not None:
        vid = _hex_id(usb_table, "vid")
        pid = _hex_id(usb_table, "pid")
        serial_number: str | None = usb_table.get("serial_number", str, None)
        usb_table.done()
        usb = UsbMatch(vid, pid, serial_number)
    if (url is None) == (usb is None):
        raise ConfigError(
            t.path,
            'give exactly one of url = "..." (a device path or pyserial URL) or '
            "usb = {vid = ..., pid = ...}",
            source,
        )
    baudrate = t.integer("baudrate", 115200, 1200, 3_000_000)
    t.done()
    return SerialPortConfig(name=name, url=url, usb=usb, baudrate=baudrate)


def _hex_id(t: _Table, name: str) -> int:
    value: str = t.get(name, str, None)
    if value is None:
        raise ConfigError(t.key(name), 'missing: give it as hex text, e.g. "10c4"', t.source)
    try:
        number = int(value, 16)
    except ValueError:
        raise ConfigError(
            t.key(name), f'must be hex text like "10c4", got {value!r}', t.source
        ) from None
    if not 0 <= number <= 0xFFFF:
        raise ConfigError(t.key(name), "must be 0000..ffff", t.source)
    return number


_EUI = re.compile(r"^[0-9A-Fa-f]{16}$")
_LISTEN = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[\w.-]+):(\d{1,5})$")
SPI_CHIPS = ("sx1276", "sx1262")
LORA_CODING_RATES = ("4/5", "4/6", "4/7", "4/8")


def _packet_forwarder(item: Any, index: int, source: str) -> PacketForwarderConfig:
    t = _Table(item, f"lora.packet_forwarder[{index}]", source)
    name = t.name("name", f"lora{index + 1}")
    listen: str | None = t.get("listen", str, None)
    if listen is None:
        # no default: the protocol has no authentication, so where it listens is a choice
        raise ConfigError(
            t.key("listen"),
            'required: the address and UDP port to listen on, e.g. "192.168.1.10:1700" (the '
            'site network\'s interface) or "0.0.0.0:1700" (every network: firewall it)',
            source,
        )
    match = _LISTEN.match(listen)
    if match is None or not 1 <= int(match[2]) <= 65535:
        raise ConfigError(
            t.key("listen"), f'must be "host:port" (e.g. "0.0.0.0:1700"), got {listen!r}', source
        )
    gateways: list[Any] = t.get("gateways", list, [])
    if not gateways:
        raise ConfigError(
            t.key("gateways"),
            'list the EUIs of your concentrators, e.g. ["AA555A0000000000"] (the gateway logs '
            "the EUI of every unknown one that sends to it)",
            source,
        )
    euis, fixed = [], []
    for entry in gateways:
        eui, at, host = entry.partition("@") if isinstance(entry, str) else (entry, "", "")
        if not isinstance(eui, str) or not _EUI.match(eui) or (at and not host):
            raise ConfigError(
                t.key("gateways"),
                f"{entry!r} is not a gateway EUI (16 hex digits, as gateway_ID in the packet "
                'forwarder\'s global_conf.json), optionally with its address: "EUI@192.168.1.20"',
                source,
            )
        euis.append(eui.upper())
        if host:
            fixed.append((eui.upper(), host))
    region = t.choice("region", "EU868", tuple(PLANS))
    plan = PLANS[region]
    config = PacketForwarderConfig(
        name=name,
        host=match[1].strip("[]"),
        port=int(match[2]),
        gateways=tuple(dict.fromkeys(euis)),
        fixed_hosts=tuple(fixed),
        acks=t.get("acks", bool, False),
        dedupe_ms=t.integer("dedupe_ms", 200, 0, 5000),
        tx_power_dbm=t.integer("tx_power_dbm", 14, 0, 27),
        region=region,
        antenna_gain_dbi=_gain(t),
        rx2=t.get("rx2", bool, True),
        rx2_freq_hz=t.integer("rx2_freq_hz", plan.rx2_freq_hz, plan.low_hz, plan.high_hz),
        rx2_sf=t.integer("rx2_sf", plan.rx2_rate.sf, 7, 12),
    )
    t.done()
    rx2_problem = plan.explain(
        config.rx2_freq_hz, plan.rx2_rate.bw_khz, config.tx_power_dbm, config.antenna_gain_dbi
    )
    if rx2_problem is not None:
        raise ConfigError(t.key("rx2_freq_hz"), f"RX2: {rx2_problem}", source)
    # a RX1 downlink goes out on the uplink's channel, which may be any of the plan's
    limit = plan.rx1_max_erp_dbm()
    most = max_conducted_dbm(limit, config.antenna_gain_dbi)
    if erp_dbm(config.tx_power_dbm, config.antenna_gain_dbi) > limit + 1e-9:
        raise ConfigError(
            t.key("tx_power_dbm"),
            f"{config.tx_power_dbm} dBm with a {config.antenna_gain_dbi:g} dBi antenna is above "
            f"the {limit:g} dBm ERP {plan.name} allows on its uplink channels: at most "
            f"{most:g} dBm",
            source,
        )
    return config


def _gain(t: _Table) -> float:
    """antenna_gain_dbi: the antenna's gain in dBi (2.15 for a dipole), as a number."""
    t.used.add("antenna_gain_dbi")
    value = t.data.get("antenna_gain_dbi", DIPOLE_GAIN_DBI)
    if isinstance(value, bool) or not isinstance(value, int | float) or not -10 <= value <= 20:
        raise ConfigError(
            t.key("antenna_gain_dbi"), f"must be a number of dBi, -10..20; got {value!r}", t.source
        )
    return float(value)


def _spi_radio(item: Any, index: int, source: str) -> SpiRadioConfig:
    t = _Table(item, f"lora.spi[{index}]", source)
    name = t.name("name", f"radio{index + 1}")
    chip = t.choice("chip", "sx1276", SPI_CHIPS)
    if "freq_khz" not in t.data:
        raise ConfigError(
            t.key("freq_khz"), "missing: the channel the nodes send on, e.g. 868100", source
        )
    freq_khz = t.integer("freq_khz", 868_100, 137_000, 1_020_000)
    pins = t.table("pins") or _Table({}, t.key("pins"), source)
    reset_pin = pins.integer("reset", 17 if chip == "sx1276" else 18, 0, 27)
    irq_pin = pins.integer("irq", 4 if chip == "sx1276" else 16, 0, 27)
    busy_pin: int | None = pins.get("busy", int, None)
    txen_pin: int | None = pins.get("txen", int, None)
    rxen_pin: int | None = pins.get("rxen", int, None)
    pins.done()
    for key, pin in (("busy", busy_pin), ("txen", txen_pin), ("rxen", rxen_pin)):
        if pin is not None and not 0 <= pin <= 27:
            raise ConfigError(pins.key(key), f"must be a BCM GPIO number 0..27, got {pin}", source)
    if chip == "sx1262" and busy_pin is None:
        raise ConfigError(
            pins.key("busy"), "missing: an SX1262 needs its BUSY pin (BCM number)", source
        )
    config = SpiRadioConfig(
        name=name,
        chip=chip,
        freq_hz=freq_khz * 1000,
        sf=t.integer("sf", 7, 5 if chip == "sx1262" else 6, 12),
        bw_khz=t.choice_int("bw_khz", 125, (125, 250, 500)),
        codr=t.choice("codr", "4/5", LORA_CODING_RATES),
        sync_word=t.integer("sync_word", 0x12, 0, 0xFF),
        bus=t.integer("bus", 0, 0, 6),
        cs=t.integer("cs", 0, 0, 2),
        reset_pin=reset_pin,
        irq_pin=irq_pin,
        busy_pin=busy_pin,
        txen_pin=txen_pin,
        rxen_pin=rxen_pin,
        dio2_rf_switch=t.get("dio2_rf_switch", bool, False),
        acks=t.get("acks", bool, False),
        tx_power_dbm=t.integer("tx_power_dbm", 14, 0, 22 if chip == "sx1262" else 20),
        region=t.choice("region", "EU868", tuple(PLANS)),
        antenna_gain_dbi=_gain(t),
    )
    t.done()
    plan = PLANS[config.region]
    channel = (config.freq_hz, config.bw_khz, config.tx_power_dbm, config.antenna_gain_dbi)
    where = plan.refusal(*channel)
    if where in ("outside_plan", "crosses_edge"):  # it receives there and answers there
        raise ConfigError(t.key("freq_khz"), str(plan.explain(*channel)), source)
    if where == "over_power" and config.acks:  # the power matters only when it transmits
        raise ConfigError(t.key("tx_power_dbm"), str(plan.explain(*channel)), source)
    return config


def _lora(t: _Table) -> tuple[tuple[PacketForwarderConfig, ...], tuple[SpiRadioConfig, ...]]:
    forwarders: list[Any] = t.get("packet_forwarder", list, [])
    radios: list[Any] = t.get("spi", list, [])
    t.done()
    return (
        tuple(_packet_forwarder(item, i, t.source) for i, item in enumerate(forwarders)),
        tuple(_spi_radio(item, i, t.source) for i, item in enumerate(radios)),
    )


def _mqtt(t: _Table) -> MqttConfig:
    config = MqttConfig(
        host=t.get("host", str, "localhost"),
        port=t.integer("port", 1883, 1, 65535),
        tls=t.get("tls", bool, False),
        ca_file=t.path_("ca_file"),
        cert_file=t.path_("cert_file"),
        key_file=t.path_("key_file"),
        username=t.get("username", str, None),
        password_file=t.path_("password_file"),
        client_id=t.get("client_id", str, None),
        topic_prefix=t.name("topic_prefix", "edgeveil"),
        payload=t.choice("payload", "senml+json", PAYLOAD_FORMATS),
        keepalive_s=t.integer("keepalive_s", 30, 5, 3600),
    )
    t.done()
    if config.password_file is not None and config.username is None:
        raise ConfigError(t.key("password_file"), "needs mqtt.username as well", t.source)
    material = [
        "mqtt." + name
        for name in ("ca_file", "cert_file", "password_file")
        if getattr(config, name) is not None
    ]
    if material and not config.tls and not is_loopback(config.host):
        raise ConfigError(
            t.key("tls"),
            f"must be true with {', '.join(material)} for a broker on another machine "
            f"({config.host}): without TLS the password and the data travel in plain text",
            t.source,
        )
    if (config.cert_file is None) != (config.key_file is None):
        raise ConfigError(t.key("cert_file"), "cert_file and key_file go together", t.source)
    return config


def _homeassistant(t: _Table, mqtt: MqttConfig | None) -> HomeAssistantConfig:
    config = HomeAssistantConfig(
        discovery=t.get("discovery", bool, False),
        prefix=t.get("prefix", str, "homeassistant"),
    )
    t.done()
    if not _TOPIC_LEVELS.match(config.prefix):
        raise ConfigError(
            t.key("prefix"),
            "must be Home Assistant's discovery_prefix: letters, digits, _ and -, in up to 4 "
            f"levels separated by /; got {config.prefix!r}",
            t.source,
        )
    if config.discovery and mqtt is not None and mqtt.payload != "senml+json":
        raise ConfigError(
            t.key("discovery"),
            f"needs JSON payloads (Home Assistant's templates read JSON), but mqtt.payload is "
            f'"{mqtt.payload}": set mqtt.payload = "senml+json" or discovery = false',
            t.source,
        )
    return config


def is_loopback(host: str) -> bool:
    """An address on this machine: what goes there never crosses a network."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse(data: dict[str, Any], source: str = "") -> GatewayConfig:
    """Validate a parsed TOML document."""
    root = _Table(data, "", source)
    gw = root.table("gateway") or _Table({}, "gateway", source)
    site = gw.name("site", "demo-site")
    gateway_id = gw.name("id", "gateway-1")
    state_dir = gw.path_("state_dir") or Path("edgeveil-state")
    log_level = gw.choice("log_level", "info", LOG_LEVELS)
    gw.done()
    serial_items: list[Any] = root.get("serial", list, [])
    ports = tuple(_serial(item, i, source) for i, item in enumerate(serial_items))
    lora_table = root.table("lora")
    forwarders, spi_radios = ((), ()) if lora_table is None else _lora(lora_table)
    # every link is a "port" in metrics and logs: one name space for serial and LoRa
    names = [p.name for p in ports] + [f.name for f in forwarders] + [r.name for r in spi_radios]
    for n in names:
        if names.count(n) > 1:
            raise ConfigError(
                "serial" if n in {p.name for p in ports} else "lora",
                f"two links are named {n!r}; names must differ",
                source,
            )
    mqtt_table = root.table("mqtt")
    mqtt = None if mqtt_table is None else _mqtt(mqtt_table)
    spool_table = root.table("spool") or _Table({}, "spool", source)
    spool = SpoolConfig(
        max_messages=spool_table.integer("max_messages", 1_000_000, 1, 1_000_000_000),
        max_age_s=spool_table.integer("max_age_s", 7 * 24 * 3600, 60, 365 * 24 * 3600),
        when_full=spool_table.choice("when_full", "drop_oldest", SPOOL_POLICIES),
    )
    spool_table.done()
    metrics_table = root.table("metrics") or _Table({}, "metrics", source)
    metrics_table.used.add("listen")
    listen = metrics_table.data.get("listen", "127.0.0.1:9108")
    metrics_table.done()
    metrics_listen = None if listen is False else listen
    if metrics_listen is not None and not (
        isinstance(metrics_listen, str) and re.match(r"^[\w.:\[\]-]+:\d{1,5}$", metrics_listen)
    ):
        raise ConfigError("metrics.listen", f'must be "host:port" or false, got {listen!r}', source)
    if metrics_listen is not None and not 1 <= int(metrics_listen.rpartition(":")[2]) <= 65535:
        raise ConfigError("metrics.listen", f"port must be 1..65535, got {listen!r}", source)
    privacy_table = root.table("privacy") or _Table({}, "privacy", source)
    privacy_policy = privacy_table.path_("policy")
    privacy_table.done()
    homeassistant = _homeassistant(
        root.table("homeassistant") or _Table({}, "homeassistant", source), mqtt
    )
    root.done()
    return GatewayConfig(
        site=site,
        gateway_id=gateway_id,
        state_dir=state_dir,
        log_level=log_level,
        serial=ports,
        packet_forwarders=forwarders,
        spi_radios=spi_radios,
        mqtt=mqtt,
        spool=spool,
        metrics_listen=metrics_listen,
        privacy_policy=privacy_policy,
        homeassistant=homeassistant,
        source=source,
    )


def load(path: Path | None) -> GatewayConfig:
    """Read and validate a TOML file; None gives the defaults (embedded broker, no ports)."""
    if path is None:
        return GatewayConfig()
    return parse(read_toml(path), str(path))


def read_toml(path: Path, what: str = "") -> dict[str, Any]:
    """A TOML file's contents; ConfigError in one line when it cannot be read or parsed.
    `what` names the file for the user ("the policy"), when it is not the configuration."""
    name = f"{what} {path}" if what else str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("", f"{name} does not exist") from None
    except OSError as exc:
        raise ConfigError("", f"cannot read {name}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError("", f"{name} is not UTF-8 text (a TOML file must be)") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"not valid TOML: {exc}", str(path)) from None
