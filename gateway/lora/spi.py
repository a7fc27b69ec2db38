"""LoRa through a single-channel HAT on the Raspberry Pi's SPI bus (SX1276 or SX1262).

The chip is driven by LoRaRF (PyPI `LoRaRF`, extra `edgeveil[lora-spi]`), a maintained driver
for SX126x and SX127x on a Pi (spidev + RPi.GPIO). It receives on one frequency and one
spreading factor (`[[lora.spi]]` freq_khz, sf, bw_khz): the nodes must use the same. The
transport has the outward shape of the packet forwarder transport (run(), send(), state,
stats(), task name) and delivers frames with the same RadioMeta (link = the transport's name,
no concentrator timestamp), so ingest cannot tell them apart.

Receiving is interrupt driven: the chip's RX-done line (DIO0 on SX1276, DIO1 on SX1262) wakes
LoRaRF's GPIO thread, which reads the FIFO; the frame is handed to the event loop. A packet
with a bad CRC is counted and dropped (SX1276 datasheet 4.1.6, PayloadCrcError).

Downlinks (acks = true): the chip is half duplex, so a downlink is sent at the uplink's end
+ 1 s (the node's RX1), with inverted IQ, and the radio returns to continuous receive after
it. The timing comes from this process's clock (a few ms of jitter on a Pi): the node's RX1
window must allow for it. The same EU868 duty-cycle accounting as the concentrator path.

On a machine without the HAT the transport waits (state "waiting", retried with backoff) with
one line that says what to do: SPI not enabled, LoRaRF not installed, not a Raspberry Pi, or
no chip answering on the bus.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from ..config import SpiRadioConfig
from ..metrics import Metrics
from ..transport import Backoff
from .forwarder import FRAMES_PER_WINDOW, SECOND_FRAME_GAP_US, largest_downlink
from .link import LoraLink, OnFrame, log, observations
from .radio import RX1_DELAY_US, RX1_LEAD_S, DataRate, DutyCycle, RadioMeta, time_on_air
from .region import PLANS

__all__ = ["Chip", "ChipUnavailable", "SpiTransport", "open_lorarf"]


PREAMBLE = 8  # symbols, as LoRaWAN
SECOND_FRAME_GAP_S = SECOND_FRAME_GAP_US / 1e6  # a window's second frame after the first
_TX_TIMEOUT_S = 5.0  # longer than any 255-byte packet at SF12/125 kHz (about 2.8 s)


class Chip(Protocol):
    """What this transport uses of a LoRaRF chip object (SX127x and SX126x share it)."""

    RX_CONTINUOUS: int
    STATUS_RX_DONE: int
    STATUS_CRC_ERR: int

    def onReceive(self, callback: Callable[[], None]) -> None: ...
    def request(self, timeout: int) -> bool: ...
    def status(self) -> int: ...
    def available(self) -> int: ...
    def get(self, length: int) -> bytes: ...
    def purge(self, length: int = 0) -> None: ...
    def packetRssi(self) -> float: ...
    def snr(self) -> float: ...
    def setInvertIq(self, invertIq: bool) -> None: ...
    def beginPacket(self) -> None: ...
    def put(self, data: bytes) -> None: ...
    def endPacket(self, timeout: int = 0) -> bool: ...
    def wait(self, timeout: int = 0) -> bool: ...
    def end(self) -> None: ...


class ChipUnavailable(Exception):
    """The radio cannot be used now; the message says why and what to do, in one line."""


def open_lorarf(config: SpiRadioConfig) -> Chip:
    """Open and configure the HAT's chip with LoRaRF; ChipUnavailable (one line) if not."""
    device = f"/dev/spidev{config.bus}.{config.cs}"
    if not os.path.exists(device):
        raise ChipUnavailable(
            f"SPI device {device} not found: enable SPI with raspi-config (Interface Options > "
            "SPI) or dtparam=spi=on in /boot/firmware/config.txt, then reboot"
        )
    try:
        # imported here: it opens GPIO at import, which only works on a Pi with the extra
        lorarf = importlib.import_module("LoRaRF")
    except ImportError as exc:
        raise ChipUnavailable(
            f"the LoRaRF driver cannot be imported ({exc}): install it on the Pi with "
            "pip install 'edgeveil[lora-spi]'"
        ) from None
    except RuntimeError as exc:  # RPi.GPIO on a machine that is not a Raspberry Pi
        raise ChipUnavailable(f"RPi.GPIO cannot run here (not a Raspberry Pi?): {exc}") from None
    chip: Any = lorarf.SX126x() if config.chip == "sx1262" else lorarf.SX127x()
    try:
        if config.chip == "sx1262":
            ok = chip.begin(
                config.bus,
                config.cs,
                config.reset_pin,
                config.busy_pin,
                config.irq_pin,
                _pin(config.txen_pin),
                _pin(config.rxen_pin),
            )
        else:
            ok = chip.begin(
                config.bus,
                config.cs,
                config.reset_pin,
                config.irq_pin,
                _pin(config.txen_pin),
                _pin(config.rxen_pin),
            )
    except PermissionError:
        raise ChipUnavailable(
            f"no permission to open {device} or the GPIO pins: add the gateway's user to the "
            "spi and gpio groups"
        ) from None
    except OSError as exc:
        raise ChipUnavailable(f"cannot open {device}: {exc.strerror or exc}") from None
    if not ok:
        raise ChipUnavailable(
            f"no {config.chip.upper()} answered on {device}: check that the HAT is seated and "
            f"the pins in lora.spi (reset {config.reset_pin}, irq {config.irq_pin})"
        )
    _configure(chip, config)
    return chip  # type: ignore[no-any-return]


def _pin(pin: int | None) -> int:
    return -1 if pin is None else pin  # LoRaRF's "not connected"


def _configure(chip: Any, config: SpiRadioConfig) -> None:
    rate = DataRate(config.sf, config.bw_khz)
    cr = 4 + int(config.codr[2])  # "4/5" -> 5, LoRaRF's notation
    # low data rate optimisation when a symbol lasts 16 ms or more (SX1276 datasheet 4.1.1.6)
    ldro = (1 << rate.sf) / (rate.bw_khz * 1000) >= 0.016
    if config.chip == "sx1262" and config.dio2_rf_switch:
        chip.setDio2RfSwitch()
    chip.setFrequency(config.freq_hz)
    if config.chip == "sx1262":
        chip.setTxPower(config.tx_power_dbm, chip.TX_POWER_SX1262)
        chip.setRxGain(chip.RX_GAIN_BOOSTED)
    else:
        chip.setTxPower(config.tx_power_dbm, chip.TX_POWER_PA_BOOST)
    chip.setLoRaModulation(rate.sf, rate.bw_khz * 1000, cr, ldro)
    chip.setLoRaPacket(chip.HEADER_EXPLICIT, PREAMBLE, 255, True, False)
    chip.setSyncWord(config.sync_word)


class SpiTransport(LoraLink[SpiRadioConfig]):
    """One single-channel radio; `run()` keeps it receiving until cancelled.

    `chip_factory(config)` opens the chip (default: LoRaRF, `open_lorarf`); tests pass a
    fake chip with LoRaRF's interface, as no CI machine has the HAT.
    """

    TASK_KIND = "lora-spi"

    def __init__(
        self,
        config: SpiRadioConfig,
        on_frame: OnFrame,
        on_state: Callable[[str, str], None] | None = None,
        *,
        metrics: Metrics | None = None,
        chip_factory: Callable[[SpiRadioConfig], Chip] = open_lorarf,
    ) -> None:
        super().__init__(config, on_frame, on_state, metrics)
        self._chip_factory = chip_factory
        self._chip: Chip | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._radio_lock = threading.Lock()  # the GPIO thread reads while a downlink sends
        self._rate = DataRate(config.sf, config.bw_khz)
        self._duty = DutyCycle()
        # the last uplink answered (its `received`), downlinks sent for it, the next one's time
        self._slot: tuple[float, int, float] | None = None
        self._downlinks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        backoff = Backoff(1.0, 60.0)
        try:
            while True:
                try:
                    chip = await asyncio.to_thread(self._chip_factory, self.config)
                except ChipUnavailable as exc:
                    self._set_state("waiting", str(exc))
                    await asyncio.sleep(backoff.next_delay())
                    continue
                self._chip = chip
                chip.onReceive(self._interrupt)
                chip.request(chip.RX_CONTINUOUS)
                self._set_state("open", None)
                log.info(
                    "lora %s: %s receiving on %.3f MHz %s, acks %s",
                    self.name,
                    self.config.chip.upper(),
                    self.config.freq_hz / 1e6,
                    self._rate.datr,
                    "on" if self.config.acks else "off",
                )
                await self._loop.create_future()  # until cancelled
        finally:
            for task in list(self._downlinks):
                task.cancel()
            opened, self._chip = self._chip, None
            if opened is not None:
                await asyncio.to_thread(self._end, opened)

    async def send(self, frame: bytes, meta: RadioMeta | None) -> bool:
        """Send a sealed downlink frame in RX1 of the uplink `meta` describes."""
        chip = self._chip
        if not self.config.acks or meta is None or chip is None or meta.link != self.name:
            return False
        frames, tx_at = 0, meta.received + RX1_DELAY_US / 1e6
        if self._slot is not None and self._slot[0] == meta.received:
            _uplink, frames, tx_at = self._slot  # a second frame, right after the first
        airtime = time_on_air(len(frame), self._rate, self.config.codr, preamble=PREAMBLE)
        refusal = self._refusal(frame, frames, tx_at, airtime)
        if refusal is not None:
            return self._not_sent(refusal)
        self._slot = (meta.received, frames + 1, tx_at + airtime + SECOND_FRAME_GAP_S)
        # scheduled, not awaited: ingest goes on with other frames until RX1 comes
        task = asyncio.get_running_loop().create_task(
            self._transmit_at(tx_at, chip, frame, airtime), name=f"{self.task_name}:downlink"
        )
        self._downlinks.add(task)
        task.add_done_callback(self._downlinks.discard)
        return True

    def _refusal(self, frame: bytes, frames: int, tx_at: float, airtime: float) -> str | None:
        """Why this downlink (its window's `frames`+1-th, at `tx_at`) cannot go out, or None;
        the duty cycle is charged when it can."""
        config = self.config
        if len(frame) > largest_downlink(DataRate(config.sf, config.bw_khz)):
            return "too_big"
        if time.monotonic() > tx_at - RX1_LEAD_S:
            return "too_late"
        if frames >= FRAMES_PER_WINDOW:
            return "slot_taken"
        # check-config refuses these; a configuration made in code may not
        region = PLANS[config.region].refusal(
            config.freq_hz, config.bw_khz, config.tx_power_dbm, config.antenna_gain_dbi
        )
        if region is None and not self._duty.allow(config.freq_hz, airtime, config.bw_khz):
            region = "duty_cycle"
        return region

    async def _transmit_at(self, tx_at: float, chip: Chip, frame: bytes, airtime: float) -> None:
        await asyncio.sleep(max(0.0, tx_at - time.monotonic()))
        try:
            sent = await asyncio.to_thread(self._transmit, chip, frame)
        except Exception as exc:  # the driver's SPI or GPIO failed: count, keep the link
            log.warning("lora %s: downlink failed: %s", self.name, exc)
            sent = False
        if not sent:
            self._not_sent("tx_failed")
            return
        self._count_downlink("sent")  # counts the metric too
        self.metrics.lora_airtime.labels(self.name, self.name).inc(airtime)

    # -- in LoRaRF's GPIO thread, and in worker threads ---------------------------------------

    def _interrupt(self) -> None:
        """RX done or CRC error (called by LoRaRF from its GPIO thread)."""
        chip, loop = self._chip, self._loop
        if chip is None or loop is None:
            return
        received = time.monotonic()
        with self._radio_lock:
            status = chip.status()
            if status == chip.STATUS_CRC_ERR:
                chip.purge()
                loop.call_soon_threadsafe(self._packet, "crc_error")
                return
            if status != chip.STATUS_RX_DONE:
                return
            data = chip.get(chip.available())
            rssi, snr = chip.packetRssi(), chip.snr()
        loop.call_soon_threadsafe(self._received, data, rssi, snr, received)

    def _transmit(self, chip: Chip, frame: bytes) -> bool:
        with self._radio_lock:
            chip.setInvertIq(True)  # downlinks use inverted IQ, as LoRaWAN's
            chip.beginPacket()
            chip.put(frame)
            chip.endPacket()
            done = chip.wait(int(_TX_TIMEOUT_S))
            chip.setInvertIq(False)
            chip.request(chip.RX_CONTINUOUS)
        return done

    @staticmethod
    def _end(chip: Chip) -> None:
        try:
            chip.end()
        except Exception as exc:  # closing a radio that is gone: nothing more to do
            log.debug("lora: closing the chip: %s", exc)

    # -- on the event loop ---------------------------------------------------------------------

    def _received(self, data: bytes, rssi: float, snr: float, received: float) -> None:
        if not data:
            self._packet("empty")
            return
        counted = not observations(data)
        if counted:
            self.metrics.lora_rssi.labels(self.name, self.name).observe(rssi)
            self.metrics.lora_snr.labels(self.name, self.name).observe(snr)
        meta = RadioMeta(
            link=self.name,
            rssi=rssi,
            snr=snr,
            freq_hz=self.config.freq_hz,
            rate=self._rate,
            codr=self.config.codr,
            tmst=None,
            received=received,
        )
        if counted:
            self._packet("forwarded")
        try:
            self._on_frame(self.name, data, meta)
        except Exception:
            self.counts["callback_errors"] += 1
            log.exception("lora %s: on_frame failed", self.name)

    def _packet(self, outcome: str) -> None:
        self.counts[f"packet:{outcome}"] += 1
        self.metrics.lora_packets.labels(self.name, self.name, outcome).inc()

    def _not_sent(self, reason: str) -> bool:
        self._count_downlink(reason)
        return False
