# The node's configuration: one JSON file on the board's flash, written by provisioning
# (`edgeveil node provision` / `deploy`). A missing or invalid file raises ConfigError with a
# message that names the key and says what to do; the application prints it and waits instead
# of crash-looping (app.main).
#
# {
#   "node_id": 4660,                       1..4294967295, unique per gateway registry
#   "secret": "<32..128 hex digits>",     the node secret (16..64 bytes); never printed
#   "zone": "plein-noord",                 where the node hangs, up to 32 bytes
#   "link": {"type": "serial", "port": "uart", "uart": 1, "baudrate": 115200, "tx": 17, "rx": 16}
#        or {"type": "serial", "port": "console"}   (the USB REPL line itself)
#        or {"type": "lora", "chip": "sx1276", "spi": 1, "sck": 5, "mosi": 27, "miso": 19,
#            "cs": 18, "dio0": 26, "reset": 14, "freq_khz": 868100, "sf": 9, ...}  (_lora_link)
#   "sensors": [{"type": "bme280", "i2c": 0, "scl": 22, "sda": 21, "address": 118}, ...],
#   "intervals": {"reading_s": 300, "status_s": 3600, "scan_s": 300, "scan_window_s": 10},
#   "retransmit": {"ack_timeout_ms": 2000, "max_retries": 5, "queue": 16},
#   "watchdog_ms": 30000,
#   "sleep": false                         light sleep between cycles when nothing is pending
#   "board": "a1b2c3d4e5f6"                the chip this identity is bound to (hex of
#                                          machine.unique_id()), written by the first deploy
#   "epoch": 16                            the key epoch deploy started the board at (0..255,
#                                          default 0); the node's own epoch is kept with its
#                                          counter (counter.py) and may be higher (a re-key)
# }
#
# The node runs only a configuration deploy bound to its chip (load()) and gave counter state
# (check_continuity()): two boards with one identity, or one board that lost its counters,
# would seal different frames under the same key and nonce (issue 12).

import binascii
import json

from .airtime import max_frame, time_on_air_us
from .dutycycle import SUB_BANDS, describe_sub_bands, sub_band

CONFIG_FILE = "edgeveil.json"

SENSOR_TYPES = ("bme280", "sht4x", "scd4x", "pms5003", "pir", "battery", "ble_scan")
# Keys each sensor type needs (beyond "type"), and the optional ones with their defaults.
_SENSOR_KEYS = {
    "bme280": (("i2c", "scl", "sda"), {"address": 0x76, "freq": 100000}),
    "sht4x": (("i2c", "scl", "sda"), {"address": 0x44, "freq": 100000}),
    "scd4x": (("i2c", "scl", "sda"), {"address": 0x62, "freq": 100000}),
    "pms5003": (("uart", "rx", "tx"), {}),
    "pir": (("pin",), {}),
    "battery": (("pin",), {"ratio_num": 2, "ratio_den": 1}),
    "ble_scan": ((), {"max_devices": 64}),
}
_INTERVALS = {"reading_s": 300, "status_s": 3600, "scan_s": 300, "scan_window_s": 10}
_RETRANSMIT = {"ack_timeout_ms": 2000, "max_retries": 5, "queue": 16}
_PORTS = ("uart", "console")
_LINK_TYPES = ("serial", "lora")


class ConfigError(Exception):
    """The configuration is missing or wrong; the message says where and what to do."""


def _int(value, where, lo, hi):
    if type(value) is not int or value < lo or value > hi:
        raise ConfigError(
            where + ": must be a whole number " + str(lo) + ".." + str(hi) + ", got " + repr(value)
        )
    return value


def _zone(zone, where):
    if type(zone) is not str or len(zone.encode()) > 32:
        raise ConfigError(where + ": must be text of at most 32 bytes")
    return zone


# A configuration update's settings (SPEC.md section 7.7) and their least values: what the
# node applies (app.Node.apply_config) and how this file bounds the same settings
_UPDATE_LEAST = {
    "reading_interval_s": 1,
    "status_interval_s": 1,
    "scan_window_s": 1,
    "max_retries": 0,
}


def check_update(settings):
    """A configuration update's settings by the rules of this file: ConfigError naming the
    first wrong one. The node applies updates without this module (it is dropped after boot,
    docs/firmware/ram.md); the gateway checks a remote configuration with it before sending
    anything.
    key_epoch is the gateway's own (re-keys), never a configuration an operator sends."""
    if type(settings) is not dict or not settings:
        raise ConfigError("settings: must name at least one setting")
    for name, value in settings.items():
        if name in _UPDATE_LEAST:
            _int(value, name, _UPDATE_LEAST[name], 86400000)
        elif name == "ble_scan":
            if type(value) is not bool:
                raise ConfigError("ble_scan: must be true or false")
        elif name == "zone":
            _zone(value, "zone")
        else:
            known = ", ".join(list(_UPDATE_LEAST) + ["ble_scan", "zone"])
            raise ConfigError(
                str(name) + ": not a setting a node takes remotely (known: " + known + ")"
            )


def _section(data, key, defaults):
    section = data.get(key, {})
    if type(section) is not dict:
        raise ConfigError(key + ": must be an object like " + json.dumps(defaults))
    out = {}
    for name, default in defaults.items():
        out[name] = _int(section.get(name, default), key + "." + name, 0, 86400000)
    for name in section:
        if name not in defaults:
            known = ", ".join(defaults)
            raise ConfigError(key + "." + name + ": unknown setting (known: " + known + ")")
    return out


class Config:
    """A validated configuration. Attributes mirror the JSON keys."""

    def __init__(self, data):
        if type(data) is not dict:
            raise ConfigError("the configuration must be a JSON object")
        self.node_id = _int(data.get("node_id"), "node_id", 1, 4294967295)
        self.secret = _secret(data.get("secret"))
        self.zone = _zone(data.get("zone", ""), "zone")
        self.link = _link(data.get("link", {"type": "serial", "port": "console"}))
        sensors = data.get("sensors", [])
        if type(sensors) is not list:
            raise ConfigError('sensors: must be a list of objects with a "type"')
        self.sensors = [_sensor(s, "sensors[" + str(i) + "]") for i, s in enumerate(sensors)]
        self.intervals = _section(data, "intervals", _INTERVALS)
        if self.intervals["reading_s"] < 1:
            raise ConfigError("intervals.reading_s: must be at least 1")
        self.retransmit = _section(data, "retransmit", _RETRANSMIT)
        if not 1 <= self.retransmit["queue"] <= 48:
            # well inside the gateway's replay window of 64 counters (SPEC.md, replay window)
            raise ConfigError("retransmit.queue: must be 1..48")
        self.watchdog_ms = _int(data.get("watchdog_ms", 30000), "watchdog_ms", 0, 600000)
        sleep = data.get("sleep", False)
        if type(sleep) is not bool:
            raise ConfigError("sleep: must be true or false")
        self.sleep = sleep
        board = data.get("board")
        if board is not None and (
            type(board) is not str
            or not 2 <= len(board) <= 64
            or len(board) % 2
            or board.strip("0123456789abcdef")
        ):
            raise ConfigError(
                "board: must be the bound chip's id in lower-case hex (written by edgeveil "
                "node deploy); deploy the configuration again"
            )
        self.board = board
        self.epoch = _int(data.get("epoch", 0), "epoch", 0, 255)


def check_board(config, unique_id):
    """ConfigError when `config` is bound to a chip other than the one whose
    machine.unique_id() is `unique_id`: this board must seal nothing under it."""
    here = binascii.hexlify(unique_id).decode()
    if config.board is not None and config.board != here:
        raise ConfigError(
            "this configuration (node "
            + str(config.node_id)
            + ") is bound to board "
            + config.board
            + "; this is board "
            + here
            + ": one identity per board, so this board seals nothing under it. Give it its "
            "own: edgeveil node provision, then edgeveil node deploy"
        )


def check_continuity(config, counter):
    """ConfigError when the counter state on this flash cannot be the one this identity used
    last: none at all under a configuration deploy bound to a board (deploy writes the first
    state: this flash was erased, or the files were copied by hand), or state older than the
    epoch deploy gave the configuration (a restored backup). Either way counters this
    identity already used could start again under the same keys (SPEC.md section 9). Here and
    not in app.py: this module is dropped once the node runs (docs/firmware/ram.md)."""
    if not counter.found or counter.epoch < config.epoch:
        raise ConfigError(
            "no counter state of node "
            + str(config.node_id)
            + " (key epoch "
            + str(config.epoch)
            + ") on this flash: it was erased or restored, or the files were copied by hand, "
            "and sealing now could reuse nonces. Run edgeveil node deploy: it gives the node "
            "fresh keys"
        )


def _secret(value):
    if type(value) is not str or not 32 <= len(value) <= 128 or len(value) % 2:
        raise ConfigError(
            "secret: must be 32..128 hex digits (16..64 bytes); provision the node again"
        )
    try:
        return binascii.unhexlify(value)
    except ValueError:
        raise ConfigError("secret: must contain only hex digits 0-9 a-f") from None


def _link(link):
    if type(link) is not dict or link.get("type") not in _LINK_TYPES:
        raise ConfigError('link.type: must be one of "serial", "lora"')
    if link["type"] == "lora":
        return _lora_link(link)
    port = link.get("port", "console")
    if port not in _PORTS:
        raise ConfigError("link.port: must be one of " + ", ".join(_PORTS) + ", got " + repr(port))
    out = {"type": "serial", "port": port}
    if port == "uart":
        out["uart"] = _int(link.get("uart"), "link.uart", 0, 7)
        out["baudrate"] = _int(link.get("baudrate", 115200), "link.baudrate", 1200, 3000000)
        for pin in ("tx", "rx"):
            if pin in link:
                out[pin] = _int(link[pin], "link." + pin, 0, 63)
    return out


# The LoRa link's settings beyond the pins, with their defaults (docs/firmware/lora.md).
_LORA_DEFAULTS = {
    "region": "EU868",
    "freq_khz": 868100,
    "sf": 9,
    "bw_khz": 125,
    "coding_rate": 5,
    "preamble_len": 8,
    # 0x12: private LoRa networks (micropython-lib's default). 0x34 is LoRaWAN's public sync
    # word: use it only when the gateway's concentrator is set to lorawan_public, knowing that
    # every public LoRaWAN gateway in range then forwards our frames to its network server.
    "syncword": 0x12,
    "output_power": 14,
    "acks": False,
    "daily_airtime_s": 0,
    # RX2, where the gateway answers when it cannot in RX1 (LoRaWAN EU868's RX2 channel: the
    # 10 % sub-band, SF12); the gateway's lora.packet_forwarder rx2_freq_hz and rx2_sf must match
    "rx2_freq_khz": 869525,
    "rx2_sf": 12,
}
# Pins per chip: required, then optional. SX127x signals on DIO0 (and DIO1 for RX timeout);
# SX126x needs BUSY and signals on DIO1 (its datasheet 8.3.1, 13.3).
_LORA_PINS = {
    "sx1276": (("cs",), ("sck", "mosi", "miso", "dio0", "dio1", "reset")),
    "sx1262": (("cs", "busy"), ("sck", "mosi", "miso", "dio1", "reset")),
}
_LORA_OTHER = ("type", "chip", "spi", "tcxo_mv", "rx_freq_khz", "rx_sf")


def _lora_link(link):
    chip = link.get("chip")
    if chip not in _LORA_PINS:
        raise ConfigError(
            'link.chip: must be "sx1276" (SX1276/77/78/79, RFM95W) or "sx1262", got ' + repr(chip)
        )
    out = {"type": "lora", "chip": chip, "spi": _int(link.get("spi", 1), "link.spi", 0, 3)}
    _lora_pins(link, chip, out)
    for key in link:
        if key not in _LORA_DEFAULTS and key not in out and key not in _LORA_OTHER:
            raise ConfigError("link." + key + ": unknown setting for a " + chip + " LoRa link")
    _lora_radio(link, out)
    return out


def _lora_pins(link, chip, out):
    required, optional = _LORA_PINS[chip]
    for pin in required:
        if pin not in link:
            raise ConfigError("link (lora, " + chip + '): missing pin "' + pin + '"')
        out[pin] = _int(link[pin], "link." + pin, 0, 63)
    for pin in optional:
        if pin in link:
            out[pin] = _int(link[pin], "link." + pin, 0, 63)
    if "dio1" in out and "dio0" not in out and chip == "sx1276":
        raise ConfigError("link.dio1: an SX1276 needs dio0 as well to use dio1 (RX timeout)")
    if chip == "sx1262" and "tcxo_mv" in link:
        # DIO3 powers a TCXO on many SX1262 modules; the module's documentation gives the voltage
        out["tcxo_mv"] = _int(link["tcxo_mv"], "link.tcxo_mv", 1600, 3300)


def _lora_radio(link, out):
    if link.get("region", "EU868") != "EU868":
        raise ConfigError('link.region: only "EU868" is supported, got ' + repr(link["region"]))
    out["region"] = "EU868"
    bw = link.get("bw_khz", 125)
    if bw not in (125, 250, 500) or type(bw) is not int:
        raise ConfigError("link.bw_khz: must be 125, 250 or 500, got " + repr(bw))
    out["bw_khz"] = bw
    out["sf"] = _int(link.get("sf", 9), "link.sf", 7, 12)
    out["coding_rate"] = _int(link.get("coding_rate", 5), "link.coding_rate", 5, 8)
    out["preamble_len"] = _int(link.get("preamble_len", 8), "link.preamble_len", 6, 65535)
    out["syncword"] = _int(link.get("syncword", 0x12), "link.syncword", 0, 255)
    band = _lora_band(link.get("freq_khz", 868100), bw, "link.freq_khz")
    out["freq_khz"] = link.get("freq_khz", 868100)
    most = SUB_BANDS[band][3]
    out["output_power"] = _int(link.get("output_power", 14), "link.output_power", -9, most)
    acks = link.get("acks", False)
    if type(acks) is not bool:
        raise ConfigError("link.acks: must be true or false")
    out["acks"] = acks
    if "rx_freq_khz" in link:
        _lora_band(link["rx_freq_khz"], bw, "link.rx_freq_khz")
        out["rx_freq_khz"] = link["rx_freq_khz"]
    if "rx_sf" in link:
        out["rx_sf"] = _int(link["rx_sf"], "link.rx_sf", 7, 12)
    out["rx2_freq_khz"] = link.get("rx2_freq_khz", 869525)
    _lora_band(out["rx2_freq_khz"], bw, "link.rx2_freq_khz")
    out["rx2_sf"] = _int(link.get("rx2_sf", 12), "link.rx2_sf", 7, 12)
    daily = _int(link.get("daily_airtime_s", 0), "link.daily_airtime_s", 0, 86400)
    longest = time_on_air_us(max_frame(out["sf"]), out["sf"], bw * 1000, out["coding_rate"])
    longest_s = -(-longest // 1000000)
    if daily and daily < longest_s:
        raise ConfigError(
            "link.daily_airtime_s: must be 0 (no budget) or at least "
            + str(longest_s)
            + " (one frame of the longest size at SF"
            + str(out["sf"])
            + "), got "
            + str(daily)
        )
    out["daily_airtime_s"] = daily


def _lora_band(freq, bw, where):
    if type(freq) is not int or sub_band(freq, bw) is None:
        raise ConfigError(
            where
            + ": the "
            + str(bw)
            + " kHz channel around "
            + repr(freq)
            + " must lie in an EU868 sub-band: "
            + describe_sub_bands()
        )
    return sub_band(freq, bw)


def _sensor(spec, where):
    if type(spec) is not dict or spec.get("type") not in SENSOR_TYPES:
        raise ConfigError(where + ".type: must be one of " + ", ".join(SENSOR_TYPES))
    kind = spec["type"]
    required, optional = _SENSOR_KEYS[kind]
    out = {"type": kind}
    for key in required:
        if key not in spec:
            raise ConfigError(where + " (" + kind + '): missing "' + key + '"')
        out[key] = _int(spec[key], where + "." + key, 0, 63)
    for key, default in optional.items():
        out[key] = _int(spec.get(key, default), where + "." + key, 0, 10000000)
    for key in spec:
        if key != "type" and key not in out:
            raise ConfigError(where + "." + key + ": unknown setting for " + kind)
    return out


def load(path=CONFIG_FILE):
    """Read and validate the configuration file; ConfigError says what is wrong."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        raise ConfigError(
            path + " not found on the board: provision this node "
            "(edgeveil node provision, then edgeveil node deploy)"
        ) from None
    try:
        data = json.loads(text)
    except ValueError:
        raise ConfigError(path + " is not valid JSON: deploy the configuration again") from None
    config = Config(data)
    if config.board is None:
        # a configuration only deploy binds and gives counter state to: a copy by hand of a
        # fresh one onto two boards would start both at counter 0 under the same keys
        raise ConfigError(
            "this configuration (node "
            + str(config.node_id)
            + ") was never deployed: it belongs to no board yet. Put it on with edgeveil node "
            "deploy (one identity per board)"
        )
    import machine  # noqa: PLC0415 - only here: Config runs on hosts without a chip

    check_board(config, machine.unique_id())
    settings = Settings()
    for name in FIELDS:
        setattr(settings, name, getattr(config, name))
    return settings


# What a Config holds, copied into Settings by load().
FIELDS = (
    "node_id",
    "secret",
    "zone",
    "link",
    "sensors",
    "intervals",
    "retransmit",
    "watchdog_ms",
    "sleep",
    "board",
    "epoch",
)


class Settings:
    """What load() returns: a validated configuration's values (FIELDS) as plain attributes.
    Unlike a Config it has no methods, so nothing in it refers back to this module: a node
    that has started drops the module (every check above) and keeps the values (app.boot)."""
