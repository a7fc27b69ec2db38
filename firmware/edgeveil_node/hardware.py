# Builds the node's hardware from its configuration: buses, drivers, the link, the watchdog.
# Only this module (and main.py) touches `machine`; the application gets finished objects, so
# the same application runs on a board, on a PC (firmware/host shims) and in tests.
#
# Each driver and link module is imported only when the configuration names it: code costs
# heap on a board (about twice its .mpy size), and a node with a BME280 on a serial line has no
# use for the LoRa link or the particle sensor's driver (docs/firmware/ram.md).

import machine

from .link import DOWNLINK_FILE

# machine.reset_cause() -> protocol reset cause (protocol/messages.py RESET_CAUSES)
_RESET_CAUSES = (
    ("PWRON_RESET", 1),
    ("HARD_RESET", 2),
    ("WDT_RESET", 3),
    ("DEEPSLEEP_RESET", 4),
    ("SOFT_RESET", 5),
    ("BROWNOUT_RESET", 6),
)


class Hardware:
    def __init__(self):
        self.sensors = []  # drivers with read_into(), in configuration order
        self.pir = None
        self.battery = None
        self.scanner = None
        self.link = None
        self.wdt = None
        self.reset_cause = 0
        self.failed = []  # first quantity id of each sensor that did not start (-1: BLE)


def reset_cause():
    cause = machine.reset_cause()
    for name, code in _RESET_CAUSES:
        if getattr(machine, name, None) == cause:
            return code
    return 0


def build(config, keys):
    hw = Hardware()
    hw.reset_cause = reset_cause()
    buses = {}
    for spec in config.sensors:
        kind = spec["type"]
        driver = _driver(spec, buses)  # constructing touches no bus
        try:
            driver.start()
        except OSError as exc:
            # a missing sensor must not stop the others: the application reports it
            hw.failed.append(driver.QUANTITIES[0] if driver.QUANTITIES else -1)
            print("edgeveil: sensor", kind, "did not start:", exc)
            continue
        if kind == "ble_scan":
            hw.scanner = driver
            continue
        if kind == "pir":
            hw.pir = driver
        elif kind == "battery":
            hw.battery = driver
        hw.sensors.append(driver)
    if config.link["type"] == "lora":
        from .lora_link import LoRaLink  # noqa: PLC0415

        hw.link = LoRaLink(_lora_modem(config.link), keys, config.link, window_file=DOWNLINK_FILE)
    else:
        from .serial_link import SerialLink  # noqa: PLC0415

        hw.link = SerialLink(_port(config.link), keys, DOWNLINK_FILE)
    if config.watchdog_ms:
        hw.wdt = machine.WDT(timeout=config.watchdog_ms)
    return hw


def _port(link):
    from .serial_link import ConsolePort, UartPort  # noqa: PLC0415

    if link["port"] == "console":
        return ConsolePort()
    kwargs = {"baudrate": link["baudrate"]}
    for pin in ("tx", "rx"):
        if pin in link:
            kwargs[pin] = link[pin]
    return UartPort(machine.UART(link["uart"], **kwargs))


def _lora_modem(link):
    """The modem of micropython-lib's `lora` packages (lora-sx127x or lora-sx126x, with
    lora-sync), imported here so that a serial-only board does not need them."""
    kwargs = {}
    for pin in ("sck", "mosi", "miso"):
        if pin in link:
            kwargs[pin] = machine.Pin(link[pin])
    spi = machine.SPI(link["spi"], **kwargs)
    cs = machine.Pin(link["cs"], machine.Pin.OUT, value=1)  # NSS idles high

    def optional_pin(name, mode):
        return machine.Pin(link[name], mode) if name in link else None

    from .lora_link import modem_config  # noqa: PLC0415

    reset = optional_pin("reset", machine.Pin.OUT)
    if link["chip"] == "sx1276":
        from lora import SX1276  # noqa: PLC0415

        return SX1276(
            spi,
            cs,
            dio0=optional_pin("dio0", machine.Pin.IN),
            dio1=optional_pin("dio1", machine.Pin.IN),
            reset=reset,
            lora_cfg=modem_config(link),
        )
    from lora import SX1262  # noqa: PLC0415

    return SX1262(
        spi,
        cs,
        busy=machine.Pin(link["busy"], machine.Pin.IN),
        dio1=optional_pin("dio1", machine.Pin.IN),
        dio3_tcxo_millivolts=link.get("tcxo_mv"),
        reset=reset,
        lora_cfg=modem_config(link),
    )


def _i2c(spec, buses):
    key = (spec["i2c"], spec["scl"], spec["sda"])
    if key not in buses:
        buses[key] = machine.I2C(
            spec["i2c"],
            scl=machine.Pin(spec["scl"]),
            sda=machine.Pin(spec["sda"]),
            freq=spec["freq"],
        )
    return buses[key]


def _driver(spec, buses):
    kind = spec["type"]
    if kind == "bme280":
        from .drivers.bme280 import BME280  # noqa: PLC0415

        return BME280(_i2c(spec, buses), spec["address"])
    if kind == "sht4x":
        from .drivers.sht4x import SHT4x  # noqa: PLC0415

        return SHT4x(_i2c(spec, buses), spec["address"])
    if kind == "scd4x":
        from .drivers.scd4x import SCD4x  # noqa: PLC0415

        return SCD4x(_i2c(spec, buses), spec["address"])
    if kind == "pms5003":
        from .drivers.pms5003 import PMS5003  # noqa: PLC0415

        uart = machine.UART(spec["uart"], baudrate=9600, tx=spec["tx"], rx=spec["rx"], rxbuf=256)
        return PMS5003(uart)
    if kind == "pir":
        from .drivers.pir import PIR  # noqa: PLC0415

        return PIR(machine.Pin(spec["pin"], machine.Pin.IN))
    if kind == "battery":
        from .drivers.battery import Battery  # noqa: PLC0415

        pin = machine.Pin(spec["pin"])
        # ESP32: without 11 dB attenuation the ADC saturates near 1 V; the RP2040 has no such
        # setting (its ADC always spans 0..3.3 V)
        attn = getattr(machine.ADC, "ATTN_11DB", None)
        adc = machine.ADC(pin) if attn is None else machine.ADC(pin, atten=attn)
        return Battery(adc, spec["ratio_num"], spec["ratio_den"])
    import bluetooth  # noqa: PLC0415 - only boards with BLE have it

    from .drivers.ble_scan import BLEScanner  # noqa: PLC0415

    return BLEScanner(bluetooth.BLE(), spec["max_devices"])
