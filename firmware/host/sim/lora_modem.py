"""A simulated LoRa modem behind micropython-lib's `lora` modem API, transmitting into the channel
simulator (firmware/host/radio.py) instead of through an SX1276 on SPI.

    modem = SimModem(channel, "node-1", clock, lora_cfg={"freq_khz": 868100, "sf": 9})
    modem.send(frame)                       # blocks (on `clock`) for the time on air
    rx = modem.recv(timeout_ms=2000)        # a downlink heard in the window, or None
    rx.rssi, rx.snr, rx.valid_crc, rx.ticks_ms

The subset of the API (micropython-lib micropython/lora/lora/modem.py and lora-sync) that a
link needs: configure(lora_cfg), get_time_on_air_us(n), send(packet, tx_at_ms=None),
recv(timeout_ms=None, rx_length=0xFF, rx_packet=None), standby(), sleep(), and the low-level
calls the async modem is built from: prepare_send/start_send/poll_send and
start_recv/poll_recv. RxPacket is a bytearray with ticks_ms, rssi (dBm) and snr (in units of
0.25 dB, the SX127x/SX126x register value, as the drivers return it) and valid_crc.

Time is the `clock`'s: anything with now_us() and sleep_us(us). SimulatedTime moves only when
slept on (one modem, or a driver stepping many modems with the low-level calls); WallTime is
real time since its creation (an emulated node running against a live gateway).
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from ..radio import Channel, Radio, Transmission, airtime_us

__all__ = ["RxPacket", "SimModem", "SimulatedTime", "WallTime"]

_POLL_US = 5_000  # how often a blocking recv() looks at the channel


class Clock(Protocol):
    def now_us(self) -> int: ...

    def sleep_us(self, us: int) -> None: ...


class SimulatedTime:
    """Simulated microseconds that move only when someone sleeps on them or advances them."""

    def __init__(self, now_us: int = 0) -> None:
        self._now = now_us

    def now_us(self) -> int:
        return self._now

    def sleep_us(self, us: int) -> None:
        if us < 0:
            raise ValueError("negative sleep")
        self._now += us

    def advance_to(self, now_us: int) -> None:
        self._now = max(self._now, now_us)


class WallTime:
    """Real time, in microseconds since this object was made."""

    def __init__(self) -> None:
        self._t0 = time.monotonic_ns()

    def now_us(self) -> int:
        return (time.monotonic_ns() - self._t0) // 1000

    def sleep_us(self, us: int) -> None:
        time.sleep(max(0, us) / 1e6)


class RxPacket(bytearray):
    """A received packet and its metadata, as micropython-lib's lora.RxPacket."""

    def __init__(
        self,
        payload: bytes | int,
        ticks_ms: int | None = None,
        snr: int | None = None,
        rssi: int | None = None,
        valid_crc: bool = True,
    ) -> None:
        super().__init__(payload)
        self.ticks_ms = ticks_ms
        self.snr = snr
        self.rssi = rssi
        self.valid_crc = valid_crc


BANDWIDTHS_HZ = (125_000, 250_000, 500_000)


class SimModem:
    """A LoRa modem on the simulated channel. `name` is its station on the channel's map."""

    def __init__(
        self,
        channel: Channel,
        name: str,
        clock: Clock,
        lora_cfg: dict[str, Any] | None = None,
    ) -> None:
        if name not in channel.stations:
            raise ValueError(f"station {name!r} is not on the channel's map")
        self.channel = channel
        self.name = name
        self.clock = clock
        self.radio = Radio()
        self.output_power = 14
        self.invert_iq_rx = False
        self.invert_iq_tx = False
        self.crc_errors = 0
        self.sent = 0
        self._tx_end: int | None = None  # end of the frame on the air, while sending
        self.last_tx: Transmission | None = None  # the last frame sent, as the channel has it
        self._tx_reported = True
        self._packet = b""
        self._rx_from: int | None = None  # receive window, while receiving
        self._rx_until: int | None = None
        if lora_cfg:
            self.configure(lora_cfg)

    # -- configuration -----------------------------------------------------------------------

    def configure(self, lora_cfg: dict[str, Any]) -> None:
        """Apply the lora_cfg keys the simulation models (others, e.g. pa_ramp_us, are taken
        and have no effect); ValueError as micropython-lib's ConfigError for bad values."""
        r = self.radio
        freq_hz = int(lora_cfg["freq_khz"] * 1000) if "freq_khz" in lora_cfg else r.freq_hz
        bw = lora_cfg.get("bw", r.bw_hz // 1000)  # kHz, a number or a string as "125"
        try:
            bw_hz = round(float(bw) * 1000)
        except ValueError:
            bw_hz = 0
        if bw_hz not in BANDWIDTHS_HZ:
            raise ValueError(f"Invalid lora_cfg bw: {bw!r} (the simulation has 125, 250, 500)")
        self.radio = Radio(
            freq_hz,
            sf=int(lora_cfg.get("sf", r.sf)),
            bw_hz=bw_hz,
            coding_rate=int(lora_cfg.get("coding_rate", r.coding_rate)),
            preamble=int(lora_cfg.get("preamble_len", r.preamble)),
        )
        self.output_power = lora_cfg.get("output_power", self.output_power)
        self.invert_iq_rx = bool(lora_cfg.get("invert_iq_rx", self.invert_iq_rx))
        self.invert_iq_tx = bool(lora_cfg.get("invert_iq_tx", self.invert_iq_tx))

    def get_time_on_air_us(self, payload_len: int) -> int:
        return airtime_us(self.radio, payload_len)

    def _ticks_ms(self) -> int:
        return self.clock.now_us() // 1000

    # -- sending -----------------------------------------------------------------------------

    def prepare_send(self, packet: bytes | bytearray) -> None:
        if len(packet) > 255:
            raise ValueError(f"a LoRa packet is at most 255 bytes, got {len(packet)}")
        self._packet = bytes(packet)

    def start_send(self) -> bool:
        """Put the prepared packet on the air now. Returns False: no IRQ will come (poll)."""
        now = self.clock.now_us()
        tx = self.channel.transmit(
            self.name, self._packet, self.radio, now, tx_power_dbm=self.output_power
        )
        self.last_tx = tx
        self._tx_end = tx.end_us
        self._tx_reported = False
        self.sent += 1
        return False

    def poll_send(self) -> bool | int:
        """True while sending; once, the ticks_ms when the send finished; then False."""
        if self._tx_end is None:
            return False
        if self.clock.now_us() < self._tx_end:
            return True
        if self._tx_reported:
            return False
        self._tx_reported = True
        end = self._tx_end
        self._tx_end = None
        return end // 1000

    def send(self, packet: bytes | bytearray, tx_at_ms: int | None = None) -> int:
        """Send `packet` and return the ticks_ms when it finished, as lora-sync's send()."""
        self.prepare_send(packet)
        if tx_at_ms is not None:
            self.clock.sleep_us(max(0, tx_at_ms * 1000 - self.clock.now_us()))
        self.start_send()
        self.clock.sleep_us(self.get_time_on_air_us(len(self._packet)))
        self.poll_send()
        return self._ticks_ms()

    # -- receiving ---------------------------------------------------------------------------

    def start_recv(
        self, timeout_ms: int | None = None, continuous: bool = False, rx_length: int = 0xFF
    ) -> bool:
        if continuous and timeout_ms is not None:
            raise ValueError("continuous and timeout_ms are mutually exclusive")
        now = self.clock.now_us()
        self._rx_from = now
        self._rx_until = None if timeout_ms is None else now + timeout_ms * 1000
        return False

    def poll_recv(self, rx_packet: RxPacket | None = None) -> RxPacket | bool:
        """A packet heard in the window (once it has been received completely); True while
        still receiving; False when the window closed with nothing."""
        if self._rx_from is None:
            return False
        now = self.clock.now_us()
        until = now if self._rx_until is None else min(now, self._rx_until)
        tx = self.channel.receive(
            self.name, self.radio, self._rx_from, until + 1, inverted_iq=self.invert_iq_rx
        )
        if tx is not None:
            if tx.end_us > now:
                return True  # its preamble was detected: the modem stays in RX until the end
            reception = tx.receptions[self.name]
            self._rx_from = tx.end_us  # a continuous receive goes on after it
            if self._rx_until is not None:
                self._rx_from = self._rx_until = None
            if rx_packet is None or len(rx_packet) != len(tx.payload):
                rx_packet = RxPacket(len(tx.payload))
            rx_packet[:] = tx.payload
            rx_packet.ticks_ms = tx.end_us // 1000
            rx_packet.rssi = round(reception.rssi_dbm)
            rx_packet.snr = round(reception.snr_db * 4)
            rx_packet.valid_crc = True
            return rx_packet
        if self._rx_until is not None and now >= self._rx_until:
            self._rx_from = self._rx_until = None
            return False
        return True

    def recv(
        self,
        timeout_ms: int | None = None,
        rx_length: int = 0xFF,
        rx_packet: RxPacket | None = None,
    ) -> RxPacket | None:
        """Receive one packet, or None after timeout_ms, as lora-sync's recv()."""
        self.start_recv(timeout_ms, False, rx_length)
        while True:
            got = self.poll_recv(rx_packet)
            if isinstance(got, RxPacket):
                return got
            if got is False:
                return None
            wait = _POLL_US
            if self._rx_until is not None:
                wait = max(1, min(wait, self._rx_until - self.clock.now_us()))
            self.clock.sleep_us(wait)

    def standby(self) -> None:
        self._rx_from = self._rx_until = None

    def sleep(self) -> None:
        self.standby()

    def irq_triggered(self) -> bool:
        return True  # no interrupt lines in the simulation: callers poll
