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
#   "sensors": [{"type": "bme280", "i2c": 0, "scl": 22, "sda": 21, "address": 118}, ...],
#   "intervals": {"reading_s": 300, "status_s": 3600, "scan_s": 300, "scan_window_s": 10},
#   "retransmit": {"ack_timeout_ms": 2000, "max_retries": 5, "queue": 16},
#   "watchdog_ms": 30000,
#   "sleep": false                         light sleep between cycles when nothing is pending
# }

import binascii
import json

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


class ConfigError(Exception):
    """The configuration is missing or wrong; the message says where and what to do."""


def _int(value, where, lo, hi):
    if type(value) is not int or value < lo or value > hi:
        raise ConfigError(
            where + ": must be a whole number " + str(lo) + ".." + str(hi) + ", got " + repr(value)
        )
    return value


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
        zone = data.get("zone", "")
        if type(zone) is not str or len(zone.encode()) > 32:
            raise ConfigError("zone: must be text of at most 32 bytes")
        self.zone = zone
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

    def sensors_of(self, kind):
        return [s for s in self.sensors if s["type"] == kind]


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
    if type(link) is not dict or link.get("type") != "serial":
        raise ConfigError('link: only {"type": "serial", ...} is supported by this firmware')
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
    return Config(data)
