"""The gateway's configuration: one TOML file, validated at start.

Every error names the key and the problem, in one line (ConfigError). Everything has a default,
so `edgeveil demo` and a first start need no file at all.

The keys are described once, in the Section and Key tables below (ROOT and what it holds): the
loader reads every key through its description (type, default, range, choices; a key no table
describes is refused), and scripts/config_reference.py writes docs/reference/config.md from the
same tables, so the reference and the loader cannot disagree.
"""

from __future__ import annotations

import ipaddress
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .lora.region import DIPOLE_GAIN_DBI, PLANS, erp_dbm, max_conducted_dbm

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")  # safe in MQTT topics and file names
NAME_RULE = "lowercase letters, digits and dashes"
_TOPIC_LEVELS = re.compile(r"^[A-Za-z0-9_-]{1,64}(/[A-Za-z0-9_-]{1,64}){0,3}$")
PAYLOAD_FORMATS = ("senml+json", "senml+cbor")
SPOOL_POLICIES = ("drop_oldest", "refuse_new")
LOG_LEVELS = ("debug", "info", "warning", "error")
SPI_CHIPS = ("sx1276", "sx1262")
LORA_CODING_RATES = ("4/5", "4/6", "4/7", "4/8")


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


# -- the keys: what the loader accepts, and what docs/reference/config.md says -------------------

# What a key takes: its type as the reference shows it; _Table.read checks each by its rule.
TEXT = "text"
NAME = "name"  # text: NAME_RULE (it goes into MQTT topics and file names)
PATH = "path"  # text: a file or directory
HEX = "hex text"  # text: a 16-bit number in hex, "10c4"
WHOLE = "whole number"
PIN = "BCM GPIO number"  # a whole number: a Raspberry Pi pin
NUMBER = "number"  # whole or with a fraction: 2.15
BOOL = "true or false"
LIST = "list of text"
LISTEN = '"host:port" or false'
TABLE = "table"  # Key.section says what it holds
TABLES = "array of tables"  # [[...]]: any number of Key.section


@dataclass(frozen=True)
class Key:
    """One key of a table: how the loader reads it, and what the reference says about it."""

    name: str
    type: str  # one of the types above
    doc: str  # what it means, for the reference
    default: Any = None  # when it is absent; None: not set. "{n}" in a text: the table's place
    required: str = ""  # when absent: this error instead of a default (what to give)
    lo: int | None = None  # a number's range, both ends allowed
    hi: int | None = None
    choices: tuple[Any, ...] = ()
    unit: str = ""
    # values that depend on the radio's chip or the region plan: a PER name, and for each of
    # its values the fields that differ, e.g. {"sx1262": {"lo": 5}}
    per: str = ""
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    section: Section | None = None  # what a TABLE or TABLES key holds

    def pick(self, value: str) -> Key:
        """This key for a table whose `per` key has `value`."""
        return replace(self, per="", variants={}, **self.variants.get(value, {}))


@dataclass(frozen=True)
class Section:
    """One TOML table: [path], or [[path]] when `array` (any number of them)."""

    path: str  # dotted, as written in the file: "lora.spi"
    doc: str
    keys: tuple[Key, ...]
    array: bool = False

    def key(self, name: str) -> Key:
        for key in self.keys:
            if key.name == name:
                return key
        raise KeyError(f"{name} is not described in [{self.path}] (gateway/config.py)")


PER = {"chip": SPI_CHIPS, "region": tuple(PLANS)}  # what Key.per names, and its values

# The tables are laid out by hand, one key to a paragraph, as a table is read.
# fmt: off
_LINK_NAME = "the link's name in logs and metrics; unique among the serial and LoRa links"
_HEX_MISSING = 'missing: give it as hex text, e.g. "10c4"'
_REGION = Key("region", TEXT, default="EU868", choices=tuple(PLANS),
              doc="the region plan transmissions keep to: channels, power and duty cycle "
                  "(check-config refuses the rest)")
_ANTENNA = Key("antenna_gain_dbi", NUMBER, default=DIPOLE_GAIN_DBI, lo=-10, hi=20, unit="dBi",
               doc="the antenna's gain, for the ERP limit: ERP = tx_power_dbm + gain - 2.15 "
                   "(a dipole's)")

GATEWAY = Section("gateway", "This gateway, and where it keeps its state.", (
    Key("site", NAME, default="demo-site", doc="the site; goes into every MQTT topic"),
    Key("id", NAME, default="gateway-1", doc="this gateway, unique within the site"),
    Key("state_dir", PATH, default="edgeveil-state",
        doc="the node registry (registry.db, mode 0600), the spool (spool.db) and the privacy "
            "ledger (privacy.db); check-config prints how large it can grow"),
    Key("log_level", TEXT, default="info", choices=LOG_LEVELS, doc="how much the gateway logs"),
))

USB = Section(
    "serial.usb",
    "A serial port by its USB identity, which survives re-enumeration (ttyUSB0 becoming "
    'ttyUSB1); usually written inline: `usb = { vid = "10c4", pid = "ea60" }`. '
    "`edgeveil node list-ports` shows the identities of the ports present.", (
    Key("vid", HEX, required=_HEX_MISSING, lo=0, hi=0xFFFF, doc="the USB vendor id"),
    Key("pid", HEX, required=_HEX_MISSING, lo=0, hi=0xFFFF, doc="the USB product id"),
    Key("serial_number", TEXT, doc="the adapter's USB serial number: tells two alike apart"),
))

SERIAL = Section(
    "serial",
    "One table per serial link to nodes. Name the port by a stable path or pyserial URL "
    "(`url`) or by its USB identity (`usb`): exactly one of the two.", (
    Key("name", NAME, default="port{n}", doc=_LINK_NAME),
    Key("url", TEXT, doc="a device path (best under /dev/serial/by-id/) or a pyserial URL"),
    Key("usb", TABLE, section=USB, doc="the port's USB identity"),
    Key("baudrate", WHOLE, default=115200, lo=1200, hi=3_000_000, doc="the line speed"),
), array=True)

PACKET_FORWARDER = Section(
    "lora.packet_forwarder",
    "LoRa through concentrator gateways (SX1302/SX1303 HATs such as the RAK5146 or an SX1302 "
    "CoreCell, running Semtech's packet forwarder): this gateway is the forwarders' UDP server. "
    "Point the forwarder's server_address and serv_port_up/serv_port_down at it; one table per "
    "UDP port.", (
    Key("name", NAME, default="lora{n}", doc=_LINK_NAME),
    Key("listen", TEXT,
        required='required: the address and UDP port to listen on, e.g. "192.168.1.10:1700" '
                 '(the site network\'s interface) or "0.0.0.0:1700" (every network: firewall it)',
        doc="the address and UDP port for PUSH_DATA and PULL_DATA, as host:port; the protocol "
            "has no authentication: prefer the site network's address, firewall the port"),
    Key("gateways", LIST,
        required='list the EUIs of your concentrators, e.g. ["AA555A0000000000"] (the gateway '
                 "logs the EUI of every unknown one that sends to it)",
        doc="the allowed gateway EUIs, 16 hex digits (gateway_ID in the forwarder's "
            "global_conf.json), each tied to the address it is first heard from, or to a fixed "
            'one as "EUI@192.168.1.20"; datagrams from others are ignored, each EUI logged once'),
    Key("acks", BOOL, default=False,
        doc="send acknowledgements and time sync back as downlinks in RX1/RX2 (airtime; the "
            "region's duty cycle is kept per sub-band)"),
    Key("dedupe_ms", WHOLE, default=200, lo=0, hi=5000, unit="ms",
        doc="copies of one frame from several gateways are merged within this"),
    Key("tx_power_dbm", WHOLE, default=14, lo=0, hi=27, unit="dBm",
        doc="downlink power, conducted, at the concentrator's antenna port; with the antenna's "
            "gain it must keep to the region's ERP limit on its uplink channels"),
    _REGION,
    _ANTENNA,
    Key("rx2", BOOL, default=True,
        doc="answer in RX2 when RX1 cannot be used (duty cycle, another downlink, a late "
            "uplink)"),
    Key("rx2_freq_hz", WHOLE, unit="Hz", per="region",
        variants={name: {"default": plan.rx2_freq_hz, "lo": plan.low_hz, "hi": plan.high_hz}
                  for name, plan in PLANS.items()},
        doc="RX2's channel, the region plan's by default; the nodes' rx2_freq_khz must match"),
    Key("rx2_sf", WHOLE, lo=7, hi=12, per="region",
        variants={name: {"default": plan.rx2_rate.sf} for name, plan in PLANS.items()},
        doc="RX2's spreading factor, the region plan's by default; the nodes' rx2_sf must "
            "match"),
), array=True)

PINS = Section(
    "lora.spi.pins",
    "The HAT's wiring, as BCM GPIO numbers; usually written inline: "
    "`pins = { reset = 17, irq = 4 }`.", (
    Key("reset", PIN, lo=0, hi=27, per="chip",
        variants={"sx1276": {"default": 17}, "sx1262": {"default": 18}},
        doc="the radio's reset pin"),
    Key("irq", PIN, lo=0, hi=27, per="chip",
        variants={"sx1276": {"default": 4}, "sx1262": {"default": 16}},
        doc="the radio's interrupt pin: DIO0 (SX1276) or DIO1 (SX1262)"),
    Key("busy", PIN, lo=0, hi=27, per="chip",
        variants={"sx1262": {"required": "missing: an SX1262 needs its BUSY pin (BCM number)"}},
        doc="the radio's BUSY pin (SX1262 only)"),
    Key("txen", PIN, lo=0, hi=27, doc="the transmit-enable pin of the antenna switch, if any"),
    Key("rxen", PIN, lo=0, hi=27, doc="the receive-enable pin of the antenna switch, if any"),
))

SPI = Section(
    "lora.spi",
    "LoRa through a single-channel HAT on the Raspberry Pi's SPI bus (SX1276 or SX1262, driven "
    "through LoRaRF: needs `pip install 'edgeveil[lora-spi]'` and SPI enabled). It receives one "
    "channel and one spreading factor: the nodes must use the same.", (
    Key("name", NAME, default="radio{n}", doc=_LINK_NAME),
    Key("chip", TEXT, default="sx1276", choices=SPI_CHIPS,
        doc="the radio: sx1276 (Dragino LoRa/GPS HAT) or sx1262 (Waveshare SX1262 HAT)"),
    Key("freq_khz", WHOLE, lo=137_000, hi=1_020_000, unit="kHz",
        required="missing: the channel the nodes send on, e.g. 868100",
        doc="the channel the nodes send on; it must lie in one sub-band of the region plan"),
    Key("pins", TABLE, section=PINS, doc="the HAT's wiring"),
    Key("sf", WHOLE, default=7, hi=12, per="chip",
        variants={"sx1276": {"lo": 6}, "sx1262": {"lo": 5}},
        doc="the spreading factor; the nodes' must match"),
    Key("bw_khz", WHOLE, default=125, choices=(125, 250, 500), unit="kHz", doc="the bandwidth"),
    Key("codr", TEXT, default="4/5", choices=LORA_CODING_RATES, doc="the coding rate"),
    Key("sync_word", WHOLE, default=0x12, lo=0, hi=0xFF,
        doc="the sync word: 0x12 (18) for private LoRa networks, 0x34 (52) is LoRaWAN's; TOML "
            "takes it in hex as 0x12"),
    Key("bus", WHOLE, default=0, lo=0, hi=6, doc="the SPI bus: /dev/spidev{bus}.{cs}"),
    Key("cs", WHOLE, default=0, lo=0, hi=2, doc="the SPI chip select: /dev/spidev{bus}.{cs}"),
    Key("dio2_rf_switch", BOOL, default=False,
        doc="for SX1262 modules whose DIO2 drives the antenna switch"),
    Key("acks", BOOL, default=False,
        doc="send acknowledgements and time sync back to the nodes (then tx_power_dbm must keep "
            "to the region's limit for the channel)"),
    Key("tx_power_dbm", WHOLE, default=14, lo=0, unit="dBm", per="chip",
        variants={"sx1276": {"hi": 20}, "sx1262": {"hi": 22}},
        doc="transmit power, conducted; 869.4-869.65 MHz allows 27 dBm ERP in EU868"),
    _REGION,
    _ANTENNA,
), array=True)

LORA = Section("lora", "LoRa links, of two kinds: concentrator gateways and single-channel HATs.", (
    Key("packet_forwarder", TABLES, section=PACKET_FORWARDER, doc="concentrator gateways"),
    Key("spi", TABLES, section=SPI, doc="single-channel HATs on SPI"),
))

MQTT = Section(
    "mqtt",
    "The MQTT broker the gateway publishes to. Without an [mqtt] table the gateway starts an "
    "embedded broker on localhost (demo and first steps only).", (
    Key("host", TEXT, default="localhost", doc="the broker's host name or address"),
    Key("port", WHOLE, default=1883, lo=1, hi=65535,
        doc="the broker's port (8883 for TLS, by custom)"),
    Key("tls", BOOL, default=False,
        doc="connect with TLS 1.2+; required with ca_file, a client certificate or a password, "
            "unless the broker is on this machine"),
    Key("ca_file", PATH,
        doc="the CA to check the broker's certificate with; not set: the system's CAs"),
    Key("cert_file", PATH, doc="a client certificate, with key_file"),
    Key("key_file", PATH, doc="the client certificate's key: mode 600 (or 640 for the group)"),
    Key("username", TEXT, doc="the MQTT user name"),
    Key("password_file", PATH,
        doc="a file holding the password alone (mode 600, or 640 for the gateway's group), so "
            "it is never in the configuration; needs username"),
    Key("client_id", TEXT, doc="the MQTT client id; not set: edgeveil-{site}-{id}"),
    Key("topic_prefix", NAME, default="edgeveil", doc="the first level of every topic"),
    Key("payload", TEXT, default="senml+json", choices=PAYLOAD_FORMATS,
        doc="the payloads' format: SenML as JSON or as CBOR"),
    Key("keepalive_s", WHOLE, default=30, lo=5, hi=3600, unit="s", doc="the MQTT keep-alive"),
))

SPOOL = Section("spool", "Messages kept on disk (state_dir/spool.db) while the broker is "
                "unreachable.", (
    Key("max_messages", WHOLE, default=1_000_000, lo=1, hi=1_000_000_000,
        doc="at most this many; check-config prints how large the state directory can grow "
            "(lower it on a small card)"),
    Key("max_age_s", WHOLE, default=7 * 24 * 3600, lo=60, hi=365 * 24 * 3600, unit="s",
        doc="older messages are dropped and counted"),
    Key("when_full", TEXT, default="drop_oldest", choices=SPOOL_POLICIES,
        doc="drop_oldest: drop the oldest message (counted); refuse_new: stop acknowledging "
            "frames, so the nodes keep them"),
))

METRICS = Section("metrics", "Prometheus metrics over HTTP.", (
    Key("listen", LISTEN, default="127.0.0.1:9108",
        doc="where to serve them: http://host:port/metrics; false: off"),
))

PRIVACY = Section(
    "privacy",
    "The privacy policy: what may leave the gateway, and how (aggregated, suppressed, noised).", (
    Key("policy", PATH,
        doc="the policy file; not set: the policy shipped with edgeveil "
            "(gateway/policies/default.toml). Read at start and again on SIGHUP (systemctl "
            "reload edgeveil-gateway); `edgeveil policy explain` says it in words"),
))

HOMEASSISTANT = Section(
    "homeassistant",
    "Home Assistant MQTT discovery: zone aggregates and node health appear in Home Assistant as "
    "sensors, one device per zone and per node. Nothing per person or per device address is "
    "announced.", (
    Key("discovery", BOOL, default=False,
        doc='publish retained discovery messages; needs mqtt.payload = "senml+json"'),
    Key("prefix", TEXT, default="homeassistant",
        doc="Home Assistant's discovery_prefix: letters, digits, _ and -, in up to 4 levels "
            "separated by /"),
))
# fmt: on

ROOT = Section(
    "",
    "The configuration file.",
    tuple(
        Key(s.path, TABLES if s.array else TABLE, s.doc, section=s)
        for s in (GATEWAY, SERIAL, LORA, MQTT, SPOOL, METRICS, PRIVACY, HOMEASSISTANT)
    ),
)


def sections(section: Section = ROOT) -> list[Section]:
    """Every table the loader reads, depth first, in the file's order (ROOT first)."""
    out = [section]
    for key in section.keys:
        if key.section is not None:
            out += sections(key.section)
    return out


# -- the loader: every key read through its Key --------------------------------------------------

_PYTHON: dict[str, type] = {  # what tomllib gives for each type (NUMBER: int or float)
    TEXT: str,
    NAME: str,
    PATH: str,
    HEX: str,
    WHOLE: int,
    PIN: int,
    BOOL: bool,
    LIST: list,
    TABLES: list,
    LISTEN: object,  # text or false: parse() checks it, with its own message
}
_KIND_NAMES = {int: "a whole number", str: "text", bool: "true or false", list: "a list"}


class _Table:
    """One TOML table, read by its Section; a key the Section does not describe is refused."""

    def __init__(self, data: Any, section: Section, path: str, source: str, index: int = 0) -> None:
        if not isinstance(data, dict):
            raise ConfigError(path, "must be a table", source)
        self.data: dict[str, Any] = data
        self.section = section
        self.path = path
        self.source = source
        self.index = index  # its place in an array of tables, from 0
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def read(self, name: str, per: str = "") -> Any:
        """Key `name`'s value, checked as its Key says (`per`: the value of the key it depends
        on); its default when absent. A path comes as a Path, hex text as an int."""
        key = self.section.key(name)
        key = key.pick(per) if key.per else key
        self.used.add(name)
        if name in self.data:
            return self._checked(key, self.data[name])
        if key.required:
            self._refuse_unknown()  # a misspelt key is the likelier cause: name it
            raise ConfigError(self.key(name), key.required, self.source)
        if isinstance(key.default, str):
            text = key.default.replace("{n}", str(self.index + 1))
            return Path(text) if key.type == PATH else text
        return key.default

    def _checked(self, key: Key, value: Any) -> Any:
        def error(problem: str) -> ConfigError:
            return ConfigError(self.key(key.name), problem, self.source)

        lo = -math.inf if key.lo is None else key.lo
        hi = math.inf if key.hi is None else key.hi
        if key.type == NUMBER:  # one message for the type and the range, with the unit
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not lo <= value <= hi
            ):
                raise error(f"must be a number of {key.unit}, {lo}..{hi}; got {value!r}")
            return float(value)
        kind = _PYTHON[key.type]
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if not ok:  # (not narrowed: `value` stays Any for the checks below)
            raise error(f"must be {_KIND_NAMES[kind]}, got {value!r}")
        if key.type == NAME and not _NAME.match(value):
            raise error(f"must be {NAME_RULE} (it goes into MQTT topics); got {value!r}")
        if key.type == HEX:
            try:
                number = int(value, 16)
            except ValueError:
                raise error(f'must be hex text like "10c4", got {value!r}') from None
            if not lo <= number <= hi:
                raise error(f"must be {key.lo:04x}..{key.hi:04x}")
            return number
        if key.choices and value not in key.choices:
            listed = ", ".join(str(c) for c in key.choices)
            raise error(f"must be one of {listed}; got {value if kind is int else repr(value)}")
        if (key.lo is not None or key.hi is not None) and not lo <= value <= hi:
            what = "a BCM GPIO number " if key.type == PIN else ""
            raise error(f"must be {what}{lo}..{hi}, got {value}")
        return Path(value) if key.type == PATH else value

    def table(self, name: str) -> _Table:
        """The table under key `name`; an empty one when it is absent."""
        self.used.add(name)
        return _Table(self.data.get(name, {}), self._section(name), self.key(name), self.source)

    def tables(self, name: str) -> list[_Table]:
        """The array of tables under key `name` ([[name]]); none when it is absent."""
        items: list[Any] = self.read(name) or []
        path, section = self.key(name), self._section(name)
        return [
            _Table(item, section, f"{path}[{i}]", self.source, i) for i, item in enumerate(items)
        ]

    def _section(self, name: str) -> Section:
        section = self.section.key(name).section
        if section is None:
            raise TypeError(f"{self.key(name)} is not described as a table (gateway/config.py)")
        return section

    def _refuse_unknown(self) -> None:
        """Refuse a key the Section does not describe (a typo, most likely)."""
        unknown = sorted(set(self.data) - {key.name for key in self.section.keys})
        if unknown:
            raise ConfigError(
                self.key(unknown[0]),
                "unknown key (check the spelling against examples/gateway.toml)",
                self.source,
            )

    def done(self) -> None:
        """After the table's keys are read: refuse any other."""
        self._refuse_unknown()
        unread = sorted({key.name for key in self.section.keys} - self.used)
        if unread:  # the reference would promise a key the gateway ignores
            raise RuntimeError(
                f"gateway/config.py describes {self.key(unread[0])} but never reads it"
            )


def _serial(t: _Table) -> SerialPortConfig:
    name: str = t.read("name")
    url: str | None = t.read("url")
    usb_table = t.table("usb")
    usb = None
    if "usb" in t.data:
        usb = UsbMatch(
            usb_table.read("vid"), usb_table.read("pid"), usb_table.read("serial_number")
        )
        usb_table.done()
    if (url is None) == (usb is None):
        raise ConfigError(
            t.path,
            'give exactly one of url = "..." (a device path or pyserial URL) or '
            "usb = {vid = ..., pid = ...}",
            t.source,
        )
    baudrate: int = t.read("baudrate")
    t.done()
    return SerialPortConfig(name=name, url=url, usb=usb, baudrate=baudrate)


_EUI = re.compile(r"^[0-9A-Fa-f]{16}$")
_LISTEN = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[\w.-]+):(\d{1,5})$")


def _packet_forwarder(t: _Table) -> PacketForwarderConfig:
    source = t.source
    name: str = t.read("name")
    # required, no default: the protocol has no authentication, so where it listens is a choice
    listen: str = t.read("listen")
    match = _LISTEN.match(listen)
    if match is None or not 1 <= int(match[2]) <= 65535:
        raise ConfigError(
            t.key("listen"), f'must be "host:port" (e.g. "0.0.0.0:1700"), got {listen!r}', source
        )
    gateways: list[Any] = t.read("gateways")
    if not gateways:
        raise ConfigError(t.key("gateways"), t.section.key("gateways").required, source)
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
    region: str = t.read("region")
    plan = PLANS[region]
    config = PacketForwarderConfig(
        name=name,
        host=match[1].strip("[]"),
        port=int(match[2]),
        gateways=tuple(dict.fromkeys(euis)),
        fixed_hosts=tuple(fixed),
        acks=t.read("acks"),
        dedupe_ms=t.read("dedupe_ms"),
        tx_power_dbm=t.read("tx_power_dbm"),
        region=region,
        antenna_gain_dbi=t.read("antenna_gain_dbi"),
        rx2=t.read("rx2"),
        rx2_freq_hz=t.read("rx2_freq_hz", region),
        rx2_sf=t.read("rx2_sf", region),
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


def _spi_radio(t: _Table) -> SpiRadioConfig:
    name: str = t.read("name")
    chip: str = t.read("chip")
    freq_khz: int = t.read("freq_khz")
    pins = t.table("pins")  # the defaults and the BUSY pin depend on the chip
    reset_pin: int = pins.read("reset", chip)
    irq_pin: int = pins.read("irq", chip)
    busy_pin: int | None = pins.read("busy", chip)
    txen_pin: int | None = pins.read("txen")
    rxen_pin: int | None = pins.read("rxen")
    pins.done()
    config = SpiRadioConfig(
        name=name,
        chip=chip,
        freq_hz=freq_khz * 1000,
        sf=t.read("sf", chip),
        bw_khz=t.read("bw_khz"),
        codr=t.read("codr"),
        sync_word=t.read("sync_word"),
        bus=t.read("bus"),
        cs=t.read("cs"),
        reset_pin=reset_pin,
        irq_pin=irq_pin,
        busy_pin=busy_pin,
        txen_pin=txen_pin,
        rxen_pin=rxen_pin,
        dio2_rf_switch=t.read("dio2_rf_switch"),
        acks=t.read("acks"),
        tx_power_dbm=t.read("tx_power_dbm", chip),
        region=t.read("region"),
        antenna_gain_dbi=t.read("antenna_gain_dbi"),
    )
    t.done()
    plan = PLANS[config.region]
    channel = (config.freq_hz, config.bw_khz, config.tx_power_dbm, config.antenna_gain_dbi)
    where = plan.refusal(*channel)
    if where in ("outside_plan", "crosses_edge"):  # it receives there and answers there
        raise ConfigError(t.key("freq_khz"), str(plan.explain(*channel)), t.source)
    if where == "over_power" and config.acks:  # the power matters only when it transmits
        raise ConfigError(t.key("tx_power_dbm"), str(plan.explain(*channel)), t.source)
    return config


def _lora(t: _Table) -> tuple[tuple[PacketForwarderConfig, ...], tuple[SpiRadioConfig, ...]]:
    forwarders = t.tables("packet_forwarder")
    radios = t.tables("spi")
    t.done()
    return tuple(map(_packet_forwarder, forwarders)), tuple(map(_spi_radio, radios))


def _mqtt(t: _Table) -> MqttConfig:
    config = MqttConfig(
        host=t.read("host"),
        port=t.read("port"),
        tls=t.read("tls"),
        ca_file=t.read("ca_file"),
        cert_file=t.read("cert_file"),
        key_file=t.read("key_file"),
        username=t.read("username"),
        password_file=t.read("password_file"),
        client_id=t.read("client_id"),
        topic_prefix=t.read("topic_prefix"),
        payload=t.read("payload"),
        keepalive_s=t.read("keepalive_s"),
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
    config = HomeAssistantConfig(discovery=t.read("discovery"), prefix=t.read("prefix"))
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
    root = _Table(data, ROOT, "", source)
    gw = root.table("gateway")
    site: str = gw.read("site")
    gateway_id: str = gw.read("id")
    state_dir: Path = gw.read("state_dir")
    log_level: str = gw.read("log_level")
    gw.done()
    ports = tuple(map(_serial, root.tables("serial")))
    forwarders, spi_radios = _lora(root.table("lora"))
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
    mqtt = _mqtt(mqtt_table) if "mqtt" in data else None  # None: the embedded broker
    spool_table = root.table("spool")
    spool = SpoolConfig(
        max_messages=spool_table.read("max_messages"),
        max_age_s=spool_table.read("max_age_s"),
        when_full=spool_table.read("when_full"),
    )
    spool_table.done()
    metrics_table = root.table("metrics")
    listen = metrics_table.read("listen")
    metrics_table.done()
    metrics_listen = None if listen is False else listen
    if metrics_listen is not None and not (
        isinstance(metrics_listen, str) and re.match(r"^[\w.:\[\]-]+:\d{1,5}$", metrics_listen)
    ):
        raise ConfigError("metrics.listen", f'must be "host:port" or false, got {listen!r}', source)
    if metrics_listen is not None and not 1 <= int(metrics_listen.rpartition(":")[2]) <= 65535:
        raise ConfigError("metrics.listen", f"port must be 1..65535, got {listen!r}", source)
    privacy_table = root.table("privacy")
    privacy_policy: Path | None = privacy_table.read("policy")
    privacy_table.done()
    homeassistant = _homeassistant(root.table("homeassistant"), mqtt)
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
